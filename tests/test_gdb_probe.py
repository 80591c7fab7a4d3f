"""gdb reads a running QEMU's net state (what QMP cannot show) for a failed test."""

from __future__ import annotations

from pathlib import Path

from colo_fixtures.sut.build import QemuBuild
from colo_fixtures.sut.gdb_probe import net_state
from colo_fixtures.sut.qemu import QemuProcess


def test_net_state_of_a_running_qemu(qemu_build: QemuBuild, tmp_path: Path) -> None:
    argv = [str(qemu_build.binary), *qemu_build.firmware_args(), "-accel", "tcg",
            "-nodefaults", "-m", "64", "-netdev", "user,id=hn0",
            "-device", "virtio-net-pci,netdev=hn0,romfile=",
            "-object", "filter-rewriter,id=rew0,netdev=hn0,queue=all", "-S"]
    with QemuProcess("probe", argv, tmp_path / "out", tmp_path / "sock") as vm:
        text = net_state(vm.process.pid)  # type: ignore[union-attr]
        assert vm.qmp("query-status")["status"] == "prelaunch"  # it runs on after gdb
    lines = text.splitlines()
    assert lines[0].startswith("hn0 (NET_CLIENT_DRIVER_USER): peer=virtio-net-pci")
    assert "receive_disabled=0 incoming: 0 queued" in lines[0]
    assert any("filter filter-rewriter on hn0 direction=NET_FILTER_DIRECTION_ALL" in line
               and "own queue: 0 queued" in line for line in lines)
    assert any(line.startswith("    queue pair 0: tx_waiting=0") for line in lines)


def test_no_such_process_is_one_line() -> None:
    text = net_state(2 ** 22 + 12345)
    assert len(text.splitlines()) == 1 and "printed nothing" in text
