"""A COLO suite run leaves nothing behind: no namespace, QEMU, scratch dir or socket."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pyroute2 import netns

from colo_fixtures.lab.ledger import start_ticks

ROOT = Path(__file__).resolve().parent.parent


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if text.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def run_and_check_nothing_left(reports: Path, *options: str) -> subprocess.CompletedProcess:
    """Run one suite test; then everything its ledgers say it made (namespaces, scratch
    directories, QEMUs) is recorded as removed and is gone. Judged by the run's own
    records, so another harness run on this machine cannot confound it."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest",
         "suites/test_checkpoint.py::test_colo_running_on_both_sides",
         "-p", "no:cacheprovider", "-q", "--report-dir", str(reports), *options],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    made: list[dict] = []
    for ledger in reports.glob("artifacts/*/ledger.jsonl"):
        made += [json.loads(line) for line in ledger.read_text().splitlines() if line]
    created = {(e["kind"], e["name"]) for e in made if e["op"] == "created"}
    removed = {(e["kind"], e["name"]) for e in made if e["op"] == "removed"}
    kinds = {kind for kind, _ in created}
    assert {"netns", "dir"} <= kinds, (kinds, result.stdout[-2000:])
    assert created <= removed, f"made and never removed: {sorted(created - removed)}"
    namespaces = set(netns.listnetns())
    for kind, name in created:
        if kind == "netns":
            assert name not in namespaces, name
        elif kind == "dir":
            assert not Path(name).exists(), name
        elif kind == "process":
            pid, ticks = name.split("@")
            assert start_ticks(int(pid)) != int(ticks), f"QEMU {name} still runs"
    assert processes_mentioning(str(reports)) == []
    return result


def test_failed_run_cleans_up_too(tmp_path: Path):
    """A wait that runs out (a 1 s limit, shorter than the guest's boot) fails the test with
    its diagnosis; the teardown still removes everything."""
    reports = tmp_path / "reports"
    result = run_and_check_nothing_left(reports, "--wait-timeout", "1")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    assert "within 1s" in result.stdout or "within 2s" in result.stdout, result.stdout[-3000:]
    artifacts = next((reports / "artifacts").iterdir())
    assert (artifacts / "diagnosis.txt").is_file()
    assert not list(artifacts.glob("*.qmp")), "a QMP socket was left in the artifacts"


def test_suite_run_cleans_up(tmp_path: Path):
    reports = tmp_path / "reports"
    result = run_and_check_nothing_left(reports)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    ledger = next(reports.glob("artifacts/*/ledger.jsonl")).read_text()
    assert '"kind": "process"' in ledger, "the run recorded no QEMU"
    artifacts = next((reports / "artifacts").iterdir())
    for name in ("primary-argv.txt", "secondary-argv.txt", "primary-qmp.jsonl",
                 "primary-console.log", "secondary-console.log", "primary-trace.log",
                 "colo-start.json", "ledger.jsonl"):
        assert (artifacts / name).is_file(), f"{name} missing from {artifacts}"
    assert not list(artifacts.glob("*.qmp")), "a QMP socket was left in the artifacts"
