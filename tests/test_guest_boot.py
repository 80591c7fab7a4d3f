"""Integration: build the real guest image and boot it in QEMU (TCG, user-mode networking)."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from colo_fixtures.cache import default_cache_dir
from colo_fixtures.guest import (
    AGENT_PORT,
    AgentClient,
    AgentError,
    GuestImage,
    KvRecord,
    build_guest,
    kernel_cmdline,
    parse_disk_records,
)
from colo_fixtures.qemu import tail

QEMU = "qemu-system-x86_64"
BOOT_TIMEOUT = 90.0  # TCG on a busy 2-core host; a quiet host boots in a few seconds
HEARTBEAT = re.compile(r"colo-agent: hb=(\d+) uptime_ms=\d+ keys=(\d+) seq=(\d+) "
                       r"memrounds=(\d+) memerrors=(\d+)")

pytestmark = pytest.mark.skipif(not shutil.which(QEMU) or not shutil.which("qemu-img"),
                                reason=f"{QEMU}/qemu-img missing: apt-get install "
                                       "qemu-system-x86 qemu-utils")


@pytest.fixture(scope="module")
def image() -> GuestImage:
    return build_guest(default_cache_dir())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_disk(path: Path, size: str) -> Path:
    subprocess.run(["qemu-img", "create", "-f", "raw", str(path), size], check=True,
                   capture_output=True)
    return path


@dataclass
class Guest:
    proc: subprocess.Popen[bytes]
    port: int
    console: Path
    qemu_log: Path
    ready_seconds: float = 0.0

    def diagnosis(self) -> str:
        state = "running" if self.proc.poll() is None else f"exited rc={self.proc.returncode}"
        return (f"QEMU {state}\n--- console {self.console}:\n{tail(self.console)}"
                f"\n--- qemu log:\n{tail(self.qemu_log, 10)}")

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


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal QEMU by PID, then SIGKILL if it lingers; always reaps it."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def start_qemu(image: GuestImage, disk: Path, workdir: Path, extra_append: str = "") -> Guest:
    """Start QEMU on ``disk`` with the agent forwarded to 127.0.0.1:<free port>."""
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
    return Guest(proc, port, console, qemu_log)


@contextmanager
def booted(image: GuestImage, disk: Path, workdir: Path) -> Iterator[Guest]:
    """A running guest whose agent answers; QEMU is stopped on exit, even on failure."""
    started = time.monotonic()
    guest = start_qemu(image, disk, workdir)
    try:
        guest.wait_console("colo-agent: ready", BOOT_TIMEOUT)
        guest.ready_seconds = time.monotonic() - started
        guest.wait_agent(30)
        yield guest
    finally:
        stop(guest.proc)


def test_put_get_mem_and_heartbeat(image: GuestImage, tmp_path: Path, record_property):
    disk = make_disk(tmp_path / "disk.img", "64M")
    with booted(image, disk, tmp_path / "vm") as guest, guest.client() as c:
        record_property("boot_to_agent_ready_s", round(guest.ready_seconds, 2))
        print(f"boot to agent ready: {guest.ready_seconds:.2f}s (kernel {image.kernel_version})")
        guest.wait_console(r"colo-agent: ready port=7000 disk=/dev/vda replayed=0", 1)

        assert c.ping() > 0
        assert c.get("greeting") is None
        assert c.put("greeting", "hello-colo") == 1
        assert c.get("greeting") == (1, "hello-colo")
        assert c.put("greeting", "again") == 2
        assert c.get("greeting") == (2, "again")
        assert c.request("PUT no-value") == "ERR bad-request"
        with pytest.raises(AgentError) as info:
            c.put("bad key", "v")
        assert info.value.reply == "ERR bad-request"

        seqs: list[int] = []
        def writer(n: int) -> None:
            with guest.client() as own:
                seqs.extend(own.put(f"w{n}", f"{i}") for i in range(3))
        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(seqs) == list(range(3, 15))

        first = c.mem()
        time.sleep(1.5)
        second = c.mem()
        assert first["bytes"] == 8 << 20
        assert second["rounds"] > first["rounds"] > 0
        assert second["errors"] == 0
        stat = c.stat()
        assert (stat["keys"], stat["seq"], stat["memerrors"]) == (5, 14, 0)

        hb = guest.wait_console(r"colo-agent: hb=\d+ uptime_ms=\d+ keys=5 seq=14 .*", 10)
        fields = HEARTBEAT.fullmatch(hb.group(0).strip())
        assert fields and int(fields.group(4)) > 0 and fields.group(5) == "0", hb.group(0)
        assert "MEMCHECK FAIL" not in guest.console.read_text(errors="replace")


def test_put_survives_restart(image: GuestImage, tmp_path: Path):
    disk = make_disk(tmp_path / "disk.img", "64M")
    with booted(image, disk, tmp_path / "first") as guest, guest.client() as c:
        assert c.put("survivor", "v1") == 1
        assert c.put("survivor", "v2") == 2
        assert c.put("other", "x") == 3
        stop(guest.proc, signal.SIGKILL)  # no shutdown: only what was synced counts

    records = parse_disk_records(disk.read_bytes())
    assert records == [KvRecord(1, "survivor", "v1"), KvRecord(2, "survivor", "v2"),
                       KvRecord(3, "other", "x")]

    with booted(image, disk, tmp_path / "second") as guest, guest.client() as c:
        guest.wait_console(r"colo-agent: ready port=\d+ disk=/dev/vda replayed=3", 1)
        assert c.get("survivor") == (2, "v2")
        assert c.get("other") == (3, "x")
        assert c.put("survivor", "v3") == 4
        assert c.stat()["keys"] == 2


def test_full_disk_replies_err_full(image: GuestImage, tmp_path: Path):
    disk = make_disk(tmp_path / "tiny.img", "4K")  # sector 0 + records 1..7
    with booted(image, disk, tmp_path / "vm") as guest, guest.client() as c:
        assert [c.put(f"k{i}", "v") for i in range(7)] == list(range(1, 8))
        with pytest.raises(AgentError) as info:
            c.put("k7", "v")
        assert info.value.reply == "ERR full"
        assert c.get("k6") == (7, "v")
    assert [r.seq for r in parse_disk_records(disk.read_bytes())] == list(range(1, 8))


def test_agent_exit_is_reported_and_powers_off(image: GuestImage, tmp_path: Path):
    disk = make_disk(tmp_path / "disk.img", "1M")
    guest = start_qemu(image, disk, tmp_path / "vm", " colo.disk=/dev/vdz")
    try:
        guest.wait_console(r"colo-agent: cannot use disk /dev/vdz", BOOT_TIMEOUT)
        guest.wait_console(r"colo-agent: exited rc=1", 10)
        try:
            assert guest.proc.wait(30) == 0, guest.diagnosis()
        except subprocess.TimeoutExpired:
            pytest.fail("QEMU still running 30s after the agent exited\n" + guest.diagnosis())
    finally:
        stop(guest.proc)
