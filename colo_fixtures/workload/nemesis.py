"""The nemesis: one small API that injects faults and records each in the client history.

Every fault is written to the history as a ``nemesis`` op (Jepsen style), so the checker
can measure downtime around it and the report can show when it happened.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any, Protocol

from colo_fixtures.core.events import phase
from colo_fixtures.sut.qemu import QemuError, QemuProcess
from colo_fixtures.workload.history import FAULTS  # what breaks something (SIGCONT does not)

# Runs on the victim's host: wait (at most $4 seconds) for the first new line of trace log
# $1 that contains $2, then SIGKILL PID $3 and print the host's time. tail -F follows the
# file by inotify; both helpers are ended by PID.
KILL_ON_LINE = r"""
fifo=$(mktemp -u "${TMPDIR:-/tmp}/colo-kill.XXXXXX") && mkfifo -m 600 "$fifo" || exit 3
tail -n0 -F -- "$1" >"$fifo" 2>/dev/null & tailer=$!
rc=1
if timeout "$4" grep -m1 -F -- "$2" <"$fifo" >/dev/null; then
  at=$(date +%s.%N)  # the moment, taken before the kill: a survivor reacts within 2 ms
  if kill -KILL "$3"; then echo "$at"; rc=0; else rc=2; fi
fi
kill "$tailer" 2>/dev/null
rm -f "$fifo"
exit $rc
"""


class Recorder(Protocol):
    """Where faults are recorded (``workload.history.History``)."""

    def nemesis(self, f: str, target: str, detail: str | None = None,
                at: float | None = None) -> Any: ...


class Faults:
    """Kill, stop and continue QEMU processes; each call returns the fault's wall time."""

    def __init__(self, history: Recorder, before_fault: Callable[[], None] | None = None):
        self.history = history
        self.before_fault = before_fault  # e.g. note the logs' sizes for the log analyzer

    def _signal(self, process: QemuProcess, signum: int, f: str, detail: str | None) -> float:
        if not process.alive():
            raise QemuError(f"cannot {f} {process.name}: it is not running")
        return self.armed(process, signum, f, detail)()

    def armed(self, process: QemuProcess, signum: int, f: str,
              detail: str | None = None) -> Callable[[], float]:
        """Prepare the fault now and return its trigger (which returns the fault's wall
        time): what takes round trips to a remote host is done before the moment counts."""
        fire = process.arm_signal(signum)

        def trigger() -> float:
            if f in FAULTS and self.before_fault is not None:
                self.before_fault()
            # Recorded before the signal goes out: the survivor may log the loss of its peer
            # within milliseconds, and the log analyzer excuses only what follows the fault.
            with phase(f"fault: {f} {process.name}" + (f" ({detail})" if detail else "")):
                op = self.history.nemesis(f, process.name, detail)
                fire()
            return op.wall

        return trigger

    def kill(self, process: QemuProcess, detail: str | None = None) -> float:
        """SIGKILL: the host dies without a word. Returns once the process is gone."""
        at = self._signal(process, signal.SIGKILL, "kill", detail)
        process.process.wait(timeout=30)  # type: ignore[union-attr]
        return at

    def kill_on_trace(self, process: QemuProcess, line: str, timeout: float,
                      detail: str | None = None) -> float:
        """SIGKILL ``process`` the moment its own trace log gets a line containing ``line``
        (e.g. its VM stopping for a checkpoint). The trigger runs on the process's host, so
        the kill lands within milliseconds there, even when that host is reached over SSH
        (where events reach the harness 50-250 ms late); returns the host's time of the
        kill."""
        if not process.alive() or process.process is None:
            raise QemuError(f"cannot kill {process.name}: it is not running")
        if self.before_fault is not None:
            self.before_fault()  # noted before arming: the fault's moment is the host's
        argv = ["sh", "-c", KILL_ON_LINE, "kill-on-trace", str(process.on_host(
            process.trace_log)), line, str(process.process.pid), f"{timeout:g}"]
        with phase(f"fault: kill {process.name} on '{line}' in its trace"):
            result = process.host.run(argv, timeout=timeout + 15, check=False)
            if result.rc != 0:
                why = {1: f"no '{line}' in its trace within {timeout:g}s",
                       2: "the kill failed (already gone?)"}.get(
                           result.rc, f"the watcher failed (exit {result.rc})")
                raise QemuError(f"{process.name} not killed: {why}: "
                                f"{result.stderr.strip() or 'no output'}")
            at = float(result.stdout.split()[-1])
            self.history.nemesis("kill", process.name, detail, at=at)
        process.process.wait(timeout=30)
        return at

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
