"""The nemesis: one small API that injects faults and records each in the client history.

Every fault is written to the history as a ``nemesis`` op (Jepsen style), so the checker
can measure downtime around it and the report can show when it happened.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any, Protocol

from colo_fixtures.qemu import QemuError, QemuProcess
from colo_fixtures.report import step
from colo_fixtures.workload import FAULTS  # what breaks something (SIGCONT does not)


class Recorder(Protocol):
    """Where faults are recorded (``workload.History``)."""

    def nemesis(self, f: str, target: str, detail: str | None = None) -> Any: ...


class Faults:
    """Kill, stop and continue QEMU processes; each call returns the fault's wall time."""

    def __init__(self, history: Recorder, before_fault: Callable[[], None] | None = None):
        self.history = history
        self.before_fault = before_fault  # e.g. note the logs' sizes for the log analyzer

    def _signal(self, process: QemuProcess, signum: int, f: str, detail: str | None) -> float:
        if not process.alive():
            raise QemuError(f"cannot {f} {process.name}: it is not running")
        return self.armed(process, signum, f, detail)()

    def armed(self, process: QemuProcess, signum: int, f: str, detail: str | None = None,
              timed: bool = False) -> Callable[[], float]:
        """Prepare the fault now and return its trigger (which returns the fault's wall
        time): what takes round trips to a remote host is done before the moment counts.

        ``timed``: the trigger will be pulled at a precise moment (inside a checkpoint), so
        the log sizes are noted now, not then (on remote hosts that takes tens of ms, more
        than a checkpoint lasts): unstamped fault-consequence lines written between now
        and the fault are then excused too (stamped ones are still judged by time)."""
        fire = process.arm_signal(signum)
        note_logs = f in FAULTS and self.before_fault is not None
        if note_logs and timed:
            self.before_fault()  # type: ignore[misc]
            note_logs = False

        def trigger() -> float:
            if note_logs:
                self.before_fault()  # type: ignore[misc]
            # Recorded before the signal goes out: the survivor may log the loss of its peer
            # within milliseconds, and the log analyzer excuses only what follows the fault.
            with step(f"fault: {f} {process.name}" + (f" ({detail})" if detail else "")):
                op = self.history.nemesis(f, process.name, detail)
                fire()
            return op.wall

        return trigger

    def kill(self, process: QemuProcess, detail: str | None = None) -> float:
        """SIGKILL: the host dies without a word."""
        return self.prepare_kill(process, detail)()

    def prepare_kill(self, process: QemuProcess,
                     detail: str | None = None) -> Callable[[], float]:
        """A SIGKILL made ready now, to be triggered at a precise moment (inside a
        checkpoint); the trigger returns the fault's wall time once the process is gone."""
        if not process.alive():
            raise QemuError(f"cannot kill {process.name}: it is not running")
        trigger = self.armed(process, signal.SIGKILL, "kill", detail, timed=True)

        def kill() -> float:
            at = trigger()
            process.process.wait(timeout=30)  # type: ignore[union-attr]
            return at

        return kill

    def stop(self, process: QemuProcess, detail: str | None = None) -> float:
        """SIGSTOP: the host hangs; its sockets stay open and nothing answers."""
        return self._signal(process, signal.SIGSTOP, "stop", detail)

    def cont(self, process: QemuProcess, detail: str | None = None) -> float:
        """SIGCONT after ``stop``."""
        return self._signal(process, signal.SIGCONT, "cont", detail)

    def mark(self, f: str, target: str, detail: str | None = None) -> float:
        """Record a harness action (failover done, resume done) on the same timeline."""
        at = time.time()
        self.history.nemesis(f, target, detail)
        return at
