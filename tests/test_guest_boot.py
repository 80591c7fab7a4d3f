"""Integration: build the real guest image and boot it in QEMU (TCG, user-mode networking)."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
from standalone_guest import BOOT_TIMEOUT, booted, make_disk, requires_qemu, start_qemu

from colo_fixtures.sut.guest.agent import AgentError
from colo_fixtures.sut.guest.image import GuestImage
from colo_fixtures.sut.guest.records import KvRecord, parse_disk_records

HEARTBEAT = re.compile(r"colo-agent: hb=(\d+) uptime_ms=\d+ keys=(\d+) seq=(\d+) "
                       r"memrounds=(\d+) memerrors=(\d+)")

pytestmark = requires_qemu


def test_put_get_mem_and_heartbeat(image: GuestImage, tmp_path: Path, record_property):
    disk = make_disk(tmp_path / "disk.img")
    with booted(image, disk, tmp_path / "vm") as guest, guest.client() as c:
        record_property("boot_to_agent_ready_s", round(guest.ready_seconds, 2))
        print(f"boot to agent ready: {guest.ready_seconds:.2f}s (kernel {image.kernel_version})")
        guest.wait_console(r"colo-agent: ready port=7000 disk=/dev/vda replayed=0", 1)

        assert c.ping() > 0
        first = c.clock_ns()
        assert c.clock_ns() > first > 10**9  # ns since boot, moving
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
    disk = make_disk(tmp_path / "disk.img")
    with booted(image, disk, tmp_path / "first") as guest, guest.client() as c:
        assert c.put("survivor", "v1") == 1
        assert c.put("survivor", "v2") == 2
        assert c.put("other", "x") == 3
        guest.kill()  # no shutdown: only what was synced counts

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
    disk = make_disk(tmp_path / "tiny.img", 4096)  # sector 0 + records 1..7
    with booted(image, disk, tmp_path / "vm") as guest, guest.client() as c:
        assert [c.put(f"k{i}", "v") for i in range(7)] == list(range(1, 8))
        with pytest.raises(AgentError) as info:
            c.put("k7", "v")
        assert info.value.reply == "ERR full"
        assert c.get("k6") == (7, "v")
    assert [r.seq for r in parse_disk_records(disk.read_bytes())] == list(range(1, 8))


def test_agent_exit_is_reported_and_powers_off(image: GuestImage, tmp_path: Path):
    disk = make_disk(tmp_path / "disk.img", 1 << 20)
    guest = start_qemu(image, disk, tmp_path / "vm", " colo.disk=/dev/vdz")
    try:
        guest.wait_console(r"colo-agent: cannot use disk /dev/vdz", BOOT_TIMEOUT)
        guest.wait_console(r"colo-agent: exited rc=1", 10)
        try:
            assert guest.proc.wait(30) == 0, guest.diagnosis()
        except subprocess.TimeoutExpired:
            pytest.fail("QEMU still running 30s after the agent exited\n" + guest.diagnosis())
    finally:
        guest.stop()
