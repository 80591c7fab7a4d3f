"""Run metrics: gathered from every test's figure files, summarised, compared for regressions."""

from __future__ import annotations

import json
import os
from pathlib import Path

from colo_fixtures.report.metrics import RUN_PLOT, collect, regressions, summarise, write_run


def figures(folder: Path, files: dict[str, dict]) -> None:
    folder.mkdir(parents=True)
    for stem, data in files.items():
        (folder / f"{stem}.json").write_text(json.dumps(data))


def test_collect_and_summarise(tmp_path: Path):
    artifacts = tmp_path / "artifacts"
    figures(artifacts / "test_kill_primary", {"failover": {"failover_done_s": 0.03,
                                                             "client_downtime_s": 0.4}})
    figures(artifacts / "test_kill_secondary", {"failover": {"failover_done_s": 0.05,
                                                               "client_downtime_s": 0.2}})
    figures(artifacts / "test_hang_primary", {"failover": {"failover_done_s": 2.0,
                                                             "hang_detected_s": 1.8}})
    figures(artifacts / "test_resume", {"resume": {"resume": {"mirror_s": 0.3}}})
    (artifacts / "test_resume" / "torn.json").write_text('{"half')
    tests = collect(artifacts)
    assert set(tests) == {"test_kill_primary", "test_kill_secondary", "test_hang_primary",
                          "test_resume"}
    summary = summarise(tests)
    assert summary["failover done after fault"] == {"p50": 0.05, "max": 2.0, "count": 3,
                                                    "unit": "s"}
    assert abs(summary["client downtime"]["p50"] - 0.3) < 1e-9
    assert summary["resume disk mirror"]["max"] == 0.3
    assert "checkpoint pause p50" not in summary  # nobody reported it

    path = write_run(tmp_path, {"profile": "local"})
    assert path is not None
    run = json.loads(path.read_text())
    assert run["profile"] == "local" and run["summary"] == json.loads(json.dumps(summary))
    assert run["tests"]["test_hang_primary"]["failover"]["hang_detected_s"] == 1.8
    plot = tmp_path / RUN_PLOT  # the run's figures, one dot per test
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000


def test_failovers_of_the_resume_test_and_of_every_cycle_count(tmp_path: Path):
    artifacts = tmp_path / "artifacts"
    figures(artifacts / "test_kill", {"failover": {"colo_exit_s": 0.01}})
    figures(artifacts / "test_resume", {"resume": {"colo_exit_s": 0.02,
                                                   "resume": {"mirror_s": 0.2}}})
    figures(artifacts / "test_cycles", {"cycles": {"reached": 2, "cycles": [
        {"colo_exit_s": 0.03, "resume": {"mirror_s": 0.1}},
        {"colo_exit_s": 0.5, "resume": {"mirror_s": 0.3}}, {"colo_exit_s": None}]}})
    summary = summarise(collect(artifacts))
    assert summary["COLO_EXIT after fault"] == {"p50": 0.025, "max": 0.5, "count": 4,
                                                "unit": "s"}
    assert summary["resume disk mirror"] == {"p50": 0.2, "max": 0.3, "count": 3, "unit": "s"}


def test_a_slower_figure_beyond_threshold_and_floor_is_a_regression():
    before = {"checkpoint pause p50": {"p50": 50.0, "max": 60.0, "unit": "ms"},
              "client downtime": {"p50": 0.2, "max": 0.4, "unit": "s"},
              "failover done after fault": {"p50": 0.03, "max": 0.05, "unit": "s"}}
    after = {"checkpoint pause p50": {"p50": 120.0, "max": 130.0, "unit": "ms"},  # +140%
             "client downtime": {"p50": 0.25, "max": 0.4, "unit": "s"},  # +25%: within
             "failover done after fault": {"p50": 0.09, "max": 0.1, "unit": "s"}}  # +200%,
    # but only 60 ms: below its 200 ms noise floor
    found = regressions(before, after, threshold=0.5)
    assert [(r.figure, r.before, r.after) for r in found] == [
        ("checkpoint pause p50", 50.0, 120.0)]
    assert str(found[0]) == "checkpoint pause p50 p50: 50 -> 120 ms (+140%)"
    assert regressions(after, before) == []  # faster is never a regression
    assert regressions({}, after) == []  # nothing to compare with


def test_only_this_runs_figures_are_gathered(tmp_path: Path):
    artifacts = tmp_path / "artifacts"
    figures(artifacts / "old_test", {"failover": {"failover_done_s": 9.0}})
    old = artifacts / "old_test" / "failover.json"
    os.utime(old, (1000.0, 1000.0))
    assert write_run(tmp_path, since=2000.0) is None
    figures(artifacts / "new_test", {"failover": {"failover_done_s": 0.1}})
    assert set(collect(artifacts, since=2000.0)) == {"new_test"}
