"""One QEMU process: argv from data, QMP over a unix socket, logs in its own folder.

Every QMP command and reply is appended to ``qmp.jsonl`` (the transcript); every
event is kept with QEMU's own timestamp. Stopping is graceful (``quit``) and then
forceful (SIGKILL); nothing is left running and the socket file is removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError

from colo_fixtures.core.verdicts import HarnessError, QemuError, QmpTimeout
from colo_fixtures.core.waits import wait_for
from colo_fixtures.lab.hosts import Host, LocalHost, Process
from colo_fixtures.lab.ledger import write_entry
from colo_fixtures.sut.qmp import SyncQmp
from colo_fixtures.sut.trace import TraceRecord, read_trace

log = logging.getLogger("colo.qmp")


__all__ = ["QemuError", "QemuProcess", "QmpEvent", "QmpTimeout", "stop_all", "tail"]


def tail(path: Path, lines: int = 20) -> str:
    """Last ``lines`` lines of a text file, or a note that it is missing."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path.name} missing)"
    return "\n".join(text.splitlines()[-lines:]) or f"({path.name} empty)"


@dataclass(frozen=True)
class QmpEvent:
    """A QMP event with QEMU's timestamp (seconds since the epoch)."""

    name: str
    data: dict[str, Any]
    timestamp: float

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> QmpEvent:
        stamp = message.get("timestamp", {})
        seconds = stamp.get("seconds", 0) + stamp.get("microseconds", 0) / 1e6
        return cls(message.get("event", "?"), message.get("data", {}), seconds or time.time())


@dataclass
class QemuProcess:
    """A QEMU started from ``argv`` (which must not contain -qmp/-serial/-D: they are added)
    on ``host`` (this machine by default).

    ``workdir`` (on this machine) receives argv.txt, stderr.log, console.log, trace.log and
    qmp.jsonl. ``sockdir`` is a short private directory on the host for the QMP socket. On
    a remote host QEMU writes its logs to ``host_dir`` there, and ``sync_logs`` copies them
    into ``workdir`` (every read of a log syncs first).
    """

    name: str
    argv: Sequence[str]
    workdir: Path
    sockdir: Path
    host: Host = field(default_factory=LocalHost)
    env: dict[str, str] | None = None
    cwd: Path | None = None
    host_dir: Path | None = None  # where logs are written on a remote host
    ledger: Path | None = None  # the run ledger that records the process
    events: list[QmpEvent] = field(default_factory=list)
    process: Process | None = None
    killed: str | None = None  # why a stop had to SIGKILL it (None: it quit, or a fault)
    _qmp: SyncQmp | None = None
    _ledger_name: tuple[str, str] | None = None

    def on_host(self, local_log: Path) -> Path:
        """Where QEMU writes the log that ``local_log`` mirrors."""
        if self.host.is_local or self.host_dir is None:
            return local_log
        return self.host_dir / local_log.name

    def sync_logs(self) -> None:
        """Copy the console, stderr and trace logs from a remote host (no-op locally)."""
        if self.host.is_local:
            return
        for log in (self.console_log, self.stderr_log, self.trace_log):
            with contextlib.suppress(Exception):  # evidence is best effort on a dead link
                self.host.follow(self.on_host(log), log)

    def trace_records(self) -> list[TraceRecord]:
        """This QEMU's trace log as it is now (copied from a remote host first: reading the
        local copy alone over SSH judged a stale trace)."""
        self.sync_logs()
        return read_trace(self.trace_log)

    @property
    def qmp_path(self) -> Path:
        return self.sockdir / f"{self.name}.qmp"

    @property
    def console_log(self) -> Path:
        return self.workdir / f"{self.name}-console.log"

    @property
    def stderr_log(self) -> Path:
        return self.workdir / f"{self.name}-stderr.log"

    @property
    def trace_log(self) -> Path:
        return self.workdir / f"{self.name}-trace.log"

    @property
    def transcript(self) -> Path:
        return self.workdir / f"{self.name}-qmp.jsonl"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise HarnessError(f"{self.name}: not started")
        return self.process.pid

    def full_argv(self) -> list[str]:
        """The argv as run, with the harness's QMP, serial and log plumbing added."""
        return [
            *self.argv,
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-serial", f"file:{self.on_host(self.console_log)}",
            "-D", str(self.on_host(self.trace_log)),
            "-msg", "timestamp=on",
            "-display", "none",
            "-monitor", "none",
        ]

    def __enter__(self) -> QemuProcess:
        """``with QemuProcess(...) as vm:`` starts it and connects QMP; the block's end stops
        it (quit, then SIGKILL if it must), also after an exception."""
        self.start()
        try:
            self.connect(timeout=30)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the process; QMP is connected lazily by ``connect``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.host.is_local and self.host_dir is not None:
            self.host.make_dir(self.host_dir)
        self.host.make_dir(self.sockdir, private=True)
        argv = self.full_argv()
        (self.workdir / f"{self.name}-argv.txt").write_text("\n".join(argv) + "\n")
        self.process = self.host.spawn(argv, self.on_host(self.stderr_log), self.env, self.cwd)
        log.info("%s: started on %s, pid %d (argv in %s-argv.txt)", self.name, self.host.name,
                 self.process.pid, self.name)
        if self.ledger is not None:
            self._ledger_name = self.host.ledger_name(self.process.pid)
            write_entry(self.ledger, "created", *self._ledger_name)

    def _record_gone(self) -> None:
        if self.ledger is not None and self._ledger_name is not None:
            write_entry(self.ledger, "removed", *self._ledger_name)
            self._ledger_name = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def connect(self, timeout: float) -> None:
        """Connect QMP, waiting up to ``timeout`` for the socket; diagnose a dead process."""
        errors: list[Exception] = []

        def connected() -> bool:
            if not self.alive():
                raise QemuError(f"{self.name} exited before QMP answered\n{self.diagnosis()}")
            if not self.host.exists(self.qmp_path):
                return False
            qmp = SyncQmp(self.name)
            try:
                qmp.connect(self.host.connect_unix(self.qmp_path), timeout=5)
            except Exception as exc:  # connection refused while QEMU starts up
                errors.append(exc)
                qmp.close()
                return False
            self._qmp = qmp
            return True

        wait_for(f"{self.name}: QMP at {self.qmp_path} answering", connected, timeout,
                 seen=lambda: f"last error: {errors[-1] if errors else None}",
                 diagnosis=self.diagnosis)

    def _log(self, record: dict[str, Any]) -> None:
        with self.transcript.open("a") as out:
            out.write(json.dumps(record, default=str) + "\n")

    def qmp(self, command: str, timeout: float = 30, diagnose: bool = True,
            **arguments: Any) -> Any:
        """Run a QMP command and return its result; QMP errors and timeouts raise QemuError
        (a timeout's message carries the diagnosis unless ``diagnose`` is False: a heartbeat
        probe must not spend time gathering logs)."""
        if self._qmp is None:
            raise HarnessError(f"{self.name}: QMP not connected")
        started = time.time()
        record: dict[str, Any] = {"t": started, "execute": command, "arguments": arguments}
        failure: str | None = None
        error: type[QemuError] = QemuError
        try:
            record["result"] = result = self._qmp.execute(command, arguments, timeout)
        except ExecuteError as exc:
            record["error"] = str(exc)
            failure = f"{self.name}: {command} failed: {exc}"
        except TimeoutError:
            record["error"] = "timeout"
            error = QmpTimeout
            failure = (f"{self.name}: QMP unresponsive: {command} got no answer within "
                       f"{timeout:g}s")
        record["seconds"] = round(time.time() - started, 6)
        log.debug("%s: %s %s -> %s in %.3f s", self.name, command,
                  json.dumps(arguments, default=str) if arguments else "",
                  record.get("error", "ok"), record["seconds"])
        # The command first, then the events that arrived while it ran.
        self._log(record)
        self._collect()
        if failure is not None:
            if record["error"] == "timeout" and diagnose:
                failure += "\n" + self.diagnosis()
            raise error(failure)
        return result

    def hmp(self, command_line: str, timeout: float = 30) -> str:
        """A human monitor command through QMP; returns the monitor's text output."""
        reply = self.qmp("human-monitor-command", timeout=timeout, **{"command-line": command_line})
        return str(reply)

    def _collect(self, wait: float = 0.0) -> list[QmpEvent]:
        if self._qmp is None:
            return []
        fresh = [QmpEvent.from_message(m) for m in self._qmp.drain(wait)]
        for event in fresh:
            self._log({"t": event.timestamp, "event": event.name, "data": event.data})
        self.events.extend(fresh)
        return fresh

    def poll_events(self, wait: float = 0.0) -> list[QmpEvent]:
        """Events that arrived since the last call, waiting up to ``wait`` seconds for one."""
        return self._collect(wait)

    def wait_event(self, name: str, timeout: float,
                   match: Callable[[QmpEvent], bool] = lambda e: True,
                   since: float = 0.0, health: Callable[[], None] | None = None) -> QmpEvent:
        """First event ``name`` (with timestamp >= ``since``) satisfying ``match``, or QemuError;
        ``health`` runs while it waits (the pair's health check, raising its own verdict)."""
        seen = 0

        def arrived() -> QmpEvent | None:
            nonlocal seen
            new = self.events[seen:]  # what another thread appends meanwhile comes next time
            seen += len(new)
            for event in new:
                if event.name == name and event.timestamp >= since and match(event):
                    return event
            if not self.alive():
                raise QemuError(f"{self.name} exited while waiting for {name}\n"
                                f"{self.diagnosis()}")
            self.poll_events(wait=0.2)
            return None

        return wait_for(f"{self.name}: a {name} event", arrived, timeout, health=health,
                        diagnosis=self.diagnosis, interval=0)

    def console_has(self, text: str) -> bool:
        """True once the serial console log contains ``text``."""
        try:
            return text.encode() in self.host.read_bytes(self.on_host(self.console_log))
        except FileNotFoundError:
            return False

    def signal(self, signum: int) -> None:
        """Send ``signum`` to this QEMU (fault injection)."""
        self.arm_signal(signum)()

    def arm_signal(self, signum: int) -> Callable[[], None]:
        """A trigger that sends ``signum`` when called, prepared now: on a remote host the
        round trips happen here, so the trigger acts within one packet's latency."""
        process = self.process
        if process is None:
            raise HarnessError(f"{self.name}: not started")
        arm = getattr(process, "arm", None)
        return arm(signum) if arm is not None else lambda: process.send_signal(signum)

    def log_sizes(self) -> dict[Path, int]:
        """How far the console and stderr logs go now, by this machine's copy of each (a
        remote host is asked for the sizes only: nothing is copied)."""
        return {log: self.host.size(self.on_host(log))
                for log in (self.console_log, self.stderr_log)}

    def stop(self, timeout: float = 10) -> int | None:
        """``quit`` over QMP, then SIGKILL after ``timeout``; close QMP; remove the socket."""
        if self.process is None:
            return None
        try:
            if self.alive() and self._qmp is not None:
                with contextlib.suppress(Exception):
                    self.qmp("quit", timeout=min(timeout, 5))
        finally:  # even when an interrupt lands in the quit, nothing stays running
            self._end(self.process, timeout)
        return self.process.returncode

    def _end(self, process: Process, grace: float) -> None:
        """Wait ``grace`` seconds for the exit, SIGKILL, reap, close QMP, remove the socket."""
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self._had_to_kill(process, f"still running {grace:g}s after quit")
            process.wait(timeout=30)
        if self.alive():
            self._had_to_kill(process, "still alive after its exit was reaped")
        process.wait()
        log.info("%s: stopped, exit status %s", self.name, process.returncode)
        self._record_gone()
        self.close_qmp()
        if self.host.is_local:
            self.qmp_path.unlink(missing_ok=True)
        else:
            with contextlib.suppress(Exception):
                self.host.run(["rm", "-f", str(self.qmp_path)], check=False)

    def _had_to_kill(self, process: Process, why: str) -> None:
        self.killed = why
        log.warning("%s: had to be killed (SIGKILL): %s", self.name, why)
        process.kill()

    def kill(self) -> None:
        """SIGKILL without ceremony and reap (a fault, or teardown of a hung process)."""
        if self.alive():
            log.info("%s: SIGKILL", self.name)
            self.process.kill()  # type: ignore[union-attr]
        if self.process is not None:
            self.process.wait(timeout=30)
            self._record_gone()
        self.close_qmp()

    def close_qmp(self) -> None:
        if self._qmp is not None:
            with contextlib.suppress(Exception):
                self._collect()
            self._qmp.close()
            self._qmp = None

    def diagnosis(self) -> str:
        """What a failed wait needs: exit status, last events, console and stderr tails."""
        self.sync_logs()
        code = self.process.returncode if self.process else None
        status = "running" if self.alive() else f"exited with {code}"
        if self.process is not None and self.process.returncode is not None \
                and self.process.returncode < 0:
            status += f" ({signal.Signals(-self.process.returncode).name})"
        events = ", ".join(f"{e.name}@{e.timestamp:.3f}" for e in self.events[-8:]) or "none"
        return (f"--- {self.name} (pid {self.process and self.process.pid}): {status}\n"
                f"last QMP events: {events}\n"
                f"--- console tail ({self.console_log}):\n{tail(self.console_log, 15)}\n"
                f"--- stderr tail ({self.stderr_log}):\n{tail(self.stderr_log, 10)}")


def stop_all(processes: Sequence[QemuProcess], timeout: float = 10) -> None:
    """Stop each QEMU in order. One that fails to stop does not keep the others running, and
    neither does an interrupt: every stop runs, then the interrupt propagates."""

    def stop_one(process: QemuProcess) -> None:
        with contextlib.suppress(Exception):
            process.stop(timeout=timeout)

    with contextlib.ExitStack() as stack:
        for process in reversed(processes):  # the stack runs the last pushed first
            stack.callback(stop_one, process)
