"""Preflight: each missing item is one line naming its fix; the tc probe runs for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from colo_fixtures.sut.preflight import (
    HEADERS,
    Check,
    Preflight,
    check_headers,
    check_rdma,
    check_traffic_control,
    check_vmft_tree,
    run_preflight,
)

ROOT = Path(__file__).resolve().parent.parent


def hca(sys_dir: Path, name: str, ports: dict[int, str]) -> None:
    """A sysfs-shaped /sys/class/infiniband entry (the layout the kernel exports)."""
    for port, state in ports.items():
        folder = sys_dir / name / "ports" / str(port)
        folder.mkdir(parents=True)
        (folder / "state").write_text(state + "\n")


def test_rdma_device_states(tmp_path: Path):
    sys_dir = tmp_path / "infiniband"
    assert "no RDMA device under" in check_rdma(None, sys_dir).detail
    hca(sys_dir, "mlx4_0", {1: "4: ACTIVE"})
    one_port = check_rdma(None, sys_dir)
    assert not one_port.ok and "mlx4_0 has no port 2, which DARE hard-codes" in one_port.detail
    hca(sys_dir, "mlx5_0", {1: "4: ACTIVE", 2: "1: DOWN"})
    down = check_rdma("mlx5_0", sys_dir)
    assert not down.ok and "mlx5_0 port 2 is 1: DOWN" in down.detail and "opensm" in down.detail
    absent = check_rdma("mlx5_9", sys_dir)
    assert not absent.ok and "present: mlx4_0, mlx5_0" in absent.detail
    (sys_dir / "mlx5_0/ports/2/state").write_text("4: ACTIVE\n")
    assert check_rdma("mlx5_0", sys_dir) == Check("rdma device", True, "mlx5_0 port 2 4: ACTIVE")


def test_headers_name_the_debian_packages(tmp_path: Path):
    missing = check_headers([tmp_path])
    assert not missing.ok
    assert missing.detail.startswith("headers missing: run tools/bootstrap (apt-get install ")
    assert all(pkg in missing.detail for pkg in HEADERS.values())
    for header in HEADERS:
        (tmp_path / header).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / header).write_text("")
    assert check_headers([tmp_path]).ok


def test_vmft_tree(tmp_path: Path):
    assert "pass --vmft-root DIR or set VMFT_ROOT" in check_vmft_tree(None).detail
    assert "is not a vm-ft tree: missing qemu/configure" in check_vmft_tree(tmp_path).detail
    (tmp_path / "qemu").mkdir()
    (tmp_path / "qemu/configure").write_text("")
    (tmp_path / "rdma-paxos/target").mkdir(parents=True)
    assert check_vmft_tree(tmp_path).ok


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_traffic_control_probe_is_real_and_leaves_nothing():
    before = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
    checks = {c.name: c for c in check_traffic_control()}
    after = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
    assert before == after
    assert set(checks) == {"ifb", "mirred redirect", "plug qdisc"}
    # This machine's kernel has ifb and act_mirred (the local lab uses them) but no sch_plug.
    assert checks["ifb"].ok and checks["mirred redirect"].ok
    plug = checks["plug qdisc"]
    assert plug.ok or ("CONFIG_NET_SCH_PLUG" in plug.detail and "\n" not in plug.detail)


def test_skip_reason_by_scope():
    preflight = Preflight((Check("rdma device", False, "no RDMA device"),
                           Check("plug qdisc", False, "no sch_plug"),
                           Check("python2", True, "/usr/bin/python2")))
    assert preflight.skip_reason(["rdma"]) == "vm-ft preflight: rdma device: no RDMA device"
    assert preflight.skip_reason(["rdma", "paxos"]) == (
        "vm-ft preflight: rdma device: no RDMA device; plug qdisc: no sch_plug")
    assert Preflight((Check("rdma device", True, "mlx5_0"),)).skip_reason(["rdma"]) is None


def test_every_line_is_one_line():
    for check in run_preflight().checks:
        assert "\n" not in check.line()


def test_doctor_reports_missing_items_and_exit_codes():
    result = subprocess.run([sys.executable, str(ROOT / "tools/doctor")], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "VMFT_ROOT": ""})
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("doctor: ") and len(lines) == 8, result.stdout
    assert all(line.startswith(("ok       ", "MISSING  ")) for line in lines[:-1])
    assert "MISSING  vm-ft tree: none given" in result.stdout
    assert result.returncode == (0 if lines[-1] == "doctor: ready for vm-ft" else 1)
    bad = subprocess.run([sys.executable, str(ROOT / "tools/doctor"), "--vmft-root", "/nope"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("doctor: error: --vmft-root: no such directory: /nope")


def test_rdma_suites_skip_with_the_preflight_reason_before_any_build():
    preflight = run_preflight()
    reason = preflight.skip_reason(["rdma"])
    if reason is None:
        pytest.skip("this host has an RDMA device: the rdma suites would run")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "suites/", "-m", "rdma", "-q", "-rs", "-p",
         "no:cacheprovider", "--report-dir", "/tmp/colo-preflight-report"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]
    assert " skipped" in result.stdout and " passed" not in result.stdout
    assert "error" not in result.stdout.splitlines()[-1]
    assert "vm-ft preflight: rdma device: no RDMA device under" in result.stdout
