"""One guest in plain QEMU (TCG, user networking) for the harness's own integration tests.

The agent's port is forwarded to 127.0.0.1:<free port>; QEMU is stopped by PID and reaped.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from colo_fixtures.sut.guest.agent import AGENT_PORT, AgentClient, AgentError
from colo_fixtures.sut.guest.image import GuestImage, kernel_cmdline
from colo_fixtures.sut.qemu import tail

QEMU = "qemu-system-x86_64"
BOOT_TIMEOUT = 90.0  # TCG on a busy 2-core host; a quiet host boots in a few seconds

requires_qemu = pytest.mark.skipif(
    not shutil.which(QEMU) or not shutil.which("qemu-img"),
    reason=f"{QEMU}/qemu-img missing: apt-get install qemu-system-x86 qemu-utils")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_disk(path: Path, size: int = 64 << 20) -> Path:
    """A zeroed sparse raw disk of ``size`` bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.truncate(size)
    return path


@dataclass
class Guest:
    proc: subprocess.Popen[bytes]
    port: int
    disk: Path
    console: Path
    qemu_log: Path
    ready_seconds: float = 0.0

    def diagnosis(self) -> str:
        state = "running" if self.proc.poll() is None else f"exited rc={self.proc.returncode}"
        return (f"QEMU pid {self.proc.pid} {state}\n--- console {self.console}:\n"
                f"{tail(self.console)}\n--- qemu log:\n{tail(self.qemu_log, 10)}")

    def connect(self, timeout: float = 5.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def client(self, timeout: float = 10.0) -> AgentClient:
        return AgentClient.connect("127.0.0.1", self.port, timeout)

    def wait_console(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str]:
        """The first match of ``pattern`` in the console; fails with the console's tail."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.console.read_text(errors="replace") if self.console.exists() else ""
            if match := re.search(pattern, text):
                return match
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no {pattern!r} on the console after {timeout:.0f}s\n"
                            + self.diagnosis())
            time.sleep(0.1)

    def wait_agent(self, timeout: float) -> None:
        """Until a PING through the host forward succeeds (slirp accepts before the guest)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.client(timeout=2.0) as c:
                    c.ping()
                return
            except (OSError, AgentError) as e:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"agent not answering after {timeout:.0f}s ({e})\n"
                                + self.diagnosis())
                time.sleep(0.2)

    def wait_ready(self, timeout: float = BOOT_TIMEOUT) -> None:
        started = time.monotonic()
        self.wait_console("colo-agent: ready", timeout)
        self.ready_seconds = time.monotonic() - started
        self.wait_agent(30)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal QEMU by PID, then SIGKILL if it lingers; always reaps it."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL by PID and reap."""
        self.stop(signal.SIGKILL)


def start_qemu(image: GuestImage, disk: Path, workdir: Path, extra_append: str = "") -> Guest:
    """Start QEMU on ``disk``; the agent is not necessarily up yet."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    console, qemu_log = workdir / "console.log", workdir / "qemu.log"
    append = kernel_cmdline("10.0.2.15/24", gateway="10.0.2.2") + extra_append
    argv = [
        QEMU, "-accel", "tcg", "-m", "256", "-nodefaults", "-no-user-config", "-display", "none",
        "-no-reboot", "-serial", f"file:{console}",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", append,
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:{AGENT_PORT}",
        "-device", "virtio-net-pci,netdev=n0",
        "-drive", f"if=none,id=d0,file={disk},format=raw", "-device", "virtio-blk-pci,drive=d0",
    ]
    with qemu_log.open("wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
    return Guest(proc, port, disk, console, qemu_log)


@contextmanager
def booted(image: GuestImage, disk: Path, workdir: Path) -> Iterator[Guest]:
    """A running guest whose agent answers; QEMU is stopped on exit, even on failure."""
    guest = start_qemu(image, disk, workdir)
    try:
        guest.wait_ready()
        yield guest
    finally:
        guest.stop()
