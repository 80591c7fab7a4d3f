"""tools/nightly: its pieces, then two real nights, the second with the replication link
slowed down (--replication-rate), which must be flagged as a regression."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from colo_fixtures.report.categories import categorise
from colo_fixtures.report.metrics import METRICS_NAME, RUN_PLOT, Regression
from colo_fixtures.report.nightly import (
    EXIT_REGRESSION,
    Night,
    previous_metrics,
    prune,
    pytest_argv,
    regression_result,
    runs,
    summary,
)

ROOT = Path(__file__).resolve().parent.parent
NIGHTLY = ROOT / "tools" / "nightly"
# a checkpoint-pause test and a failover: figures both ways, in about half a minute
QUICK = "test_checkpoint_pause_and_integrity or test_failover_after_kill and primary"


def test_pytest_argv_uses_xdist_only_where_the_profile_allows(tmp_path: Path):
    local = pytest_argv(Path("py"), tmp_path, profile="local", inventory=None, workers="auto",
                        cycles=16, marker="colo", extra=["-k", "x"])
    assert local[:6] == ["py", "-m", "pytest", "suites/", "-m", "colo"]
    assert local[local.index("-n"):][:4] == ["-n", "auto", "--dist", "loadgroup"]
    assert local[local.index("--colo-cycles") + 1] == "16" and local[-2:] == ["-k", "x"]
    assert "--colo-ramcheck" in local  # the nightly compares RAM at every checkpoint
    assert local[local.index("--colo-clients") + 1] == "4"
    assert local[local.index("--alluredir") + 1] == str(tmp_path / "allure-results")
    remote = pytest_argv(Path("py"), tmp_path, profile="inventory", inventory=Path("lab.toml"),
                         workers="auto", cycles=16, marker="colo", extra=[])
    assert "-n" not in remote and remote[remote.index("--inventory") + 1] == "lab.toml"


def test_runs_previous_and_prune_touch_only_run_folders(tmp_path: Path):
    names = ["2026-11-25T030000", "2026-11-26T030000", "2026-11-27T030000"]
    for name in names:
        (tmp_path / name / "reports").mkdir(parents=True)
    (tmp_path / names[0] / "reports" / METRICS_NAME).write_text("{}")
    (tmp_path / "notes").mkdir()
    (tmp_path / "history.jsonl").write_text("")
    assert [p.name for p in runs(tmp_path)] == names
    assert previous_metrics(tmp_path, tmp_path / "2026-11-28T030000") == tmp_path / names[0]
    assert previous_metrics(tmp_path, tmp_path / names[0]) is None
    removed = prune(tmp_path, keep=2)
    assert [p.name for p in removed] == names[:1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [*names[1:], "history.jsonl", "notes"]


def test_a_regression_is_a_failed_result_in_its_category(tmp_path: Path):
    night = Night(tmp_path / "2026-11-29T030000", previous=tmp_path / "2026-11-28T030000")
    night.before = {"checkpoint pause p50": {"p50": 52.0, "max": 60.0, "unit": "ms"}}
    night.figures = {"checkpoint pause p50": {"p50": 285.0, "max": 300.0, "unit": "ms"}}
    night.regressions = [Regression("checkpoint pause p50", "p50", 52.0, 285.0, "ms")]
    (night.run / "reports").mkdir(parents=True)
    (night.run / "reports" / RUN_PLOT).write_bytes(b"\x89PNG\r\n\x1a\nplot")
    regression_result(tmp_path, night, 0.5)
    result = json.loads(next(tmp_path.glob("*-result.json")).read_text())
    attached = {a["name"]: a for a in result["attachments"]}
    assert (tmp_path / attached[RUN_PLOT]["source"]).read_bytes().endswith(b"plot")
    assert result["status"] == "failed"
    assert categorise("failed", result["statusDetails"]["message"]) == \
        "Metrics regression (COLO got slower)"
    shown = (tmp_path / result["attachments"][0]["source"]).read_text()
    assert "checkpoint pause p50" in shown and "was 52" in shown
    text = summary(night)
    assert "<< REGRESSION" in text and text.splitlines()[0].endswith("s)")


def nightly(root: Path, *extra: str, mutants: str = "none") -> subprocess.CompletedProcess[str]:
    # one worker: two pairs at once on two cores make the baseline pause as slow as the
    # throttled link's (seen: 279 ms, then 380 ms: +36 %, under the threshold)
    return subprocess.run([str(NIGHTLY), "--root", str(root), "--cycles", "1", "--keep", "5",
                           "--workers", "1", "--mutants", mutants, "--", "-k", QUICK, *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200)


def test_two_nights_show_a_trend_and_a_slower_link_is_a_regression(tmp_path: Path):
    root = tmp_path / "nightly"
    first = nightly(root, mutants="checkpoint-period-stretched")  # one mutant: ~30 s
    assert first.returncode == 0, first.stdout + first.stderr
    assert "PASSED" in first.stdout and "checkpoint pause p50" in first.stdout
    assert "mutants: 1 of 1 caught with their diagnosis" in first.stdout, first.stdout
    second = nightly(root, "--replication-rate", "300")
    assert second.returncode == EXIT_REGRESSION, second.stdout + second.stderr
    assert "REGRESSION" in second.stdout.splitlines()[2]
    flagged = [line.split()[:3] for line in second.stdout.splitlines() if "<< REGRESSION" in line]
    assert ["checkpoint", "pause", "p50"] in flagged, second.stdout
    nights = runs(root)
    assert len(nights) == 2 and (root / "latest").resolve() == nights[1]
    assert len((root / "history.jsonl").read_text().splitlines()) == 2
    latest = nights[1]
    assert (latest / "html" / "index.html").exists() and (latest / "summary.txt").exists()
    junit = (latest / "html" / "junit.xml").read_text()
    assert "metrics regression check" in junit and "metrics regression:" in junit
    executor = json.loads((latest / "allure-results" / "executor.json").read_text())
    assert executor["buildName"] == f"COLO nightly {latest.name}"


@pytest.mark.parametrize(("pytest_rc", "report", "regressed", "code", "word"), [
    (0, True, False, 0, "PASSED"), (1, True, False, 1, "FAILED"),
    (4, True, False, 2, "SET-UP/USAGE ERROR"), (0, True, True, 3, "REGRESSION"),
    (3, True, True, 4, "INTERNAL ERROR"), (0, False, False, 4, "INTERNAL ERROR"),
    (2, True, False, 5, "INTERRUPTED"), (5, True, False, 6, "NO TESTS RAN"),
    (99, True, False, 4, "INTERNAL ERROR")])
def test_exit_codes_say_what_happened(tmp_path: Path, pytest_rc, report, regressed, code,
                                      word):
    """pytest's internal error (its exit 3) is never reported as a regression (ours is 3)."""
    from colo_fixtures.report.html import Report
    from colo_fixtures.report.nightly import Night, summary

    night = Night(tmp_path, pytest_rc=pytest_rc,
                  report=Report(tmp_path, tmp_path, []) if report else None,
                  regressions=[Regression("pause", "p50", 50.0, 80.0, "ms")] if regressed
                  else [])
    assert night.exit_code == code
    assert summary(night).splitlines()[0].split(": ")[1].startswith(word + " ")
