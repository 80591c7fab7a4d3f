"""Metrics as data: the figures every test wrote, gathered into one JSON per run, summarised,
and compared with an earlier run to flag regressions.

Each test writes its figures as ``<report-dir>/artifacts/<test>/<name>.json``
(``ColoRun.write_metrics``). ``collect`` reads them all; ``summarise`` turns the ones a lab
engineer watches (checkpoint pause, failover times, client downtime, resume) into
``p50``/``max`` per figure; ``regressions`` compares two summaries.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from colo_fixtures.report.plots import run_figures

METRICS_NAME = "metrics.json"
RUN_PLOT = "metrics.png"  # every watched figure of the run, one dot per test
SKIP = {"history.json"}  # not figures


@dataclass(frozen=True)
class Figure:
    """A watched figure: where it comes from and which direction is worse."""

    name: str
    source: str  # the metrics file stem, e.g. "failover"
    key: str  # a key in it (dots go into nested objects, "*" into every item of a list)
    unit: str
    floor: float  # a change smaller than this (in ``unit``) is noise, never a regression
    also: tuple[tuple[str, str], ...] = ()  # more (source, key) places of the same figure

    def places(self) -> tuple[tuple[str, str], ...]:
        return ((self.source, self.key), *self.also)


# Failovers also happen in the resume test and in every repeated cycle.
_FAILOVER = (("resume", "{}"), ("cycles", "cycles.*.{}"))


def _failover(name: str, key: str, floor: float) -> Figure:
    return Figure(name, "failover", key, "s", floor,
                  tuple((source, path.format(key)) for source, path in _FAILOVER))


FIGURES: tuple[Figure, ...] = (
    Figure("checkpoint pause p50", "checkpoint-pause", "pause_p50_ms", "ms", 20),
    # The tail of one test's ~30 pauses moves with the machine's load: three nightlies of
    # the same code on 2 cores with two workers gave a max (and p95) of 100, 200.8, 84 ms.
    Figure("checkpoint pause p95", "checkpoint-pause", "pause_p95_ms", "ms", 150),
    Figure("checkpoint pause max", "checkpoint-pause", "pause_max_ms", "ms", 150),
    Figure("forced checkpoint pause", "forced-checkpoint", "pause_seconds", "s", 0.02),
    Figure("migrate to COLO", "colo-start", "migrate_to_colo_seconds", "s", 0.5),
    _failover("COLO_EXIT after fault", "colo_exit_s", 0.2),
    _failover("failover done after fault", "failover_done_s", 0.2),
    _failover("first ok op after fault", "first_ok_after_s", 0.2),
    _failover("client downtime", "client_downtime_s", 0.3),
    Figure("hang detected after", "failover", "hang_detected_s", "s", 0.5),
    Figure("resume disk mirror", "resume", "resume.mirror_s", "s", 0.5,
           (("cycles", "cycles.*.resume.mirror_s"),)),
    Figure("resume migrate to COLO", "resume", "resume.migrate_to_colo_s", "s", 0.5,
           (("cycles", "cycles.*.resume.migrate_to_colo_s"),)),
)


def collect(artifacts: Path, since: float = 0.0) -> dict[str, dict[str, Any]]:
    """Every test folder's metrics files written at or after ``since`` (epoch seconds: this
    run's, when earlier runs' folders are still there): {test folder: {file stem: content}}."""
    tests: dict[str, dict[str, Any]] = {}
    for path in sorted(artifacts.glob("*/*.json")):
        if path.name in SKIP or path.stat().st_mtime < since:
            continue
        try:
            tests.setdefault(path.parent.name, {})[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a file torn by a kill is not a figure
    return tests


def _lookup(data: Any, key: str) -> list[float]:
    """The numbers at ``key`` in ``data`` ("a.b": nested; "a.*.b": in each item of list a)."""
    head, _, rest = key.partition(".")
    if head == "*":
        items = data if isinstance(data, list) else []
    elif isinstance(data, dict) and head in data:
        items = [data[head]]
    else:
        return []
    if rest:
        return [value for item in items for value in _lookup(item, rest)]
    return [float(item) for item in items
            if isinstance(item, int | float) and not isinstance(item, bool)]


def figure_values(tests: dict[str, dict[str, Any]]) -> dict[str, list[float]]:
    """Each watched figure's values, one per test that reported it."""
    found = {}
    for figure in FIGURES:
        values = [value for files in tests.values() for source, key in figure.places()
                  if source in files for value in _lookup(files[source], key)]
        if values:
            found[figure.name] = values
    return found


UNITS = {figure.name: figure.unit for figure in FIGURES}


def summarise(tests: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """p50, max and count of each watched figure over every test that reported it."""
    return _summary(figure_values(tests))


def _summary(values: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {name: {"p50": statistics.median(found), "max": max(found),  # type: ignore[dict-item]
                   "count": len(found), "unit": UNITS[name]}
            for name, found in values.items()}


def write_run(report_dir: Path, info: dict[str, Any] | None = None,
              since: float = 0.0) -> Path | None:
    """Gather the figures written since ``since`` into ``<report-dir>/metrics.json`` and
    return its path (None, and nothing written, when no test wrote any)."""
    tests = collect(report_dir / "artifacts", since)
    if not tests:
        return None
    values = figure_values(tests)
    run = {"written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(info or {}),
           "summary": _summary(values), "tests": tests}
    path = report_dir / METRICS_NAME
    path.write_text(json.dumps(run, indent=2, sort_keys=True) + "\n")
    run_figures(values, UNITS, report_dir / RUN_PLOT)
    return path


@dataclass(frozen=True)
class Regression:
    figure: str
    statistic: str
    before: float
    after: float
    unit: str

    def __str__(self) -> str:
        change = (self.after - self.before) / self.before * 100 if self.before else float("inf")
        return (f"{self.figure} {self.statistic}: {self.before:.3g} -> {self.after:.3g} "
                f"{self.unit} (+{change:.0f}%)")


def regressions(before: dict[str, Any], after: dict[str, Any],
                threshold: float = 0.5) -> list[Regression]:
    """Figures whose p50 grew by more than ``threshold`` (0.5 = 50%) and by more than the
    figure's noise floor, from summary ``before`` to summary ``after`` (all figures are
    times: larger is worse)."""
    floors = {figure.name: figure.floor for figure in FIGURES}
    found = []
    for name, now in after.items():
        then = before.get(name)
        if not then or name not in floors:
            continue
        old, new = float(then["p50"]), float(now["p50"])
        if new - old > floors[name] and new > old * (1 + threshold):
            found.append(Regression(name, "p50", old, new, now.get("unit", "")))
    return found
