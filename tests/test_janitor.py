"""Kill pytest in the middle of a COLO test (SIGKILL: no teardown runs), then prove that
tools/janitor removes everything the run left, from its ledger alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from colo_fixtures.lab.ledger import LEDGER_NAME, is_gone, read_ledger, start_ticks
from colo_fixtures.lab.namespaces import netns_exists

ROOT = Path(__file__).resolve().parent.parent
TEST = "suites/test_checkpoint.py::test_colo_running_on_both_sides"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")


def outstanding(report_dir: Path) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    for ledger in (report_dir / "artifacts").glob(f"*/{LEDGER_NAME}"):
        items += read_ledger(ledger)
    return items


def test_janitor_cleans_up_after_a_killed_run(tmp_path: Path):
    report_dir = tmp_path / "reports"
    run = subprocess.Popen([sys.executable, "-m", "pytest", TEST, "-q", "-p", "no:cacheprovider",
                            "--report-dir", str(report_dir)], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600  # a cold cache builds QEMU first
        while sum(kind == "process" for kind, _ in outstanding(report_dir)) < 2:
            assert run.poll() is None, run.stdout.read().decode()[-3000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the run never started both QEMUs"
            time.sleep(0.2)
        time.sleep(1.0)  # well inside the test now
    finally:
        os.kill(run.pid, signal.SIGKILL)
        run.wait(30)

    left = outstanding(report_dir)
    kinds = {kind for kind, _ in left}
    assert {"process", "dir", "netns", "link"} <= kinds, left
    pids = [int(name.split("@")[0]) for kind, name in left if kind == "process"]
    namespaces = [name for kind, name in left if kind == "netns"]
    scratch = [Path(name) for kind, name in left if kind == "dir"]
    assert all(start_ticks(pid) is not None and not is_gone(pid) for pid in pids)
    assert all(netns_exists(ns) for ns in namespaces) and all(d.exists() for d in scratch)

    janitor = subprocess.run([sys.executable, str(ROOT / "tools/janitor"), "--report-dir",
                              str(report_dir)], capture_output=True, text=True, timeout=120)
    assert janitor.returncode == 0, janitor.stdout + janitor.stderr
    assert f"{len(left)} removed, 0 left" in janitor.stdout
    deadline = time.monotonic() + 10
    while not all(is_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(is_gone(pid) for pid in pids)
    assert not any(netns_exists(ns) for ns in namespaces)
    assert not any(d.exists() for d in scratch)
    assert outstanding(report_dir) == []
    again = subprocess.run([sys.executable, str(ROOT / "tools/janitor"), "--report-dir",
                            str(report_dir)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout.strip() == "janitor: nothing to clean"


def test_janitor_skips_a_live_run(tmp_path: Path):
    ledger = tmp_path / "artifacts" / "t" / LEDGER_NAME
    ledger.parent.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        entry = {"op": "created", "kind": "dir", "name": str(tmp_path / "keep"),
                 "pid": sleeper.pid}
        (tmp_path / "keep").mkdir()
        ledger.write_text(json.dumps(entry) + "\n")
        result = subprocess.run([sys.executable, str(ROOT / "tools/janitor"), "--report-dir",
                                 str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert f"skip {ledger}: its run (pid {sleeper.pid}) is still going" in result.stdout
        assert (tmp_path / "keep").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_run_tears_down_everything(tmp_path: Path, signum: int):
    """Ctrl-C (SIGINT) or a cancelled CI job (SIGTERM) in the middle of a COLO test: the
    teardown still runs, so the ledger ends with nothing outstanding and no janitor is
    needed."""
    report_dir = tmp_path / "reports"
    # As from a terminal: a job started in the background by a shell without job control
    # (a CI runner's `cmd &`) inherits SIGINT ignored, and Python then never turns Ctrl-C
    # into KeyboardInterrupt.
    run = subprocess.Popen([sys.executable, "-m", "pytest", TEST, "-q", "-p", "no:cacheprovider",
                            "--report-dir", str(report_dir)], cwd=ROOT, start_new_session=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 600
        while sum(kind == "process" for kind, _ in outstanding(report_dir)) < 2:
            assert run.poll() is None and time.monotonic() < deadline, \
                "the run never started both QEMUs"
            time.sleep(0.2)
        time.sleep(1.0)
        left_before = outstanding(report_dir)
        run.send_signal(signum)
        output = run.communicate(timeout=120)[0].decode()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(30)
    assert run.returncode != 0, output[-2000:]
    assert "KeyboardInterrupt" in output, output[-2000:]
    assert outstanding(report_dir) == [], output[-2000:]
    pids = [int(name.split("@")[0]) for kind, name in left_before if kind == "process"]
    assert pids and all(is_gone(pid) for pid in pids)
    assert not any(netns_exists(name) for kind, name in left_before if kind == "netns")
