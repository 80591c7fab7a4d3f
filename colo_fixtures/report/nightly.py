"""One nightly lab run: the suites with xdist, a dated folder, the report with its trend,
the metrics compared with the night before, old runs pruned, one screen of summary.

Layout under the nightly root (``reports/nightly`` by default)::

    history.jsonl               the report's trend history, one line per night
    latest -> <run>             the newest run
    <YYYY-mm-ddTHHMMSS>/        one run
        pytest.log              the whole pytest output
        allure-results/         results (+ categories, environment, executor)
        reports/                per-test artifacts and metrics.json
        html/index.html         the report (one file) and html/junit.xml
        mutants.log             the mutation suite's output (tests/test_mutants.py)
        mutants.jsonl           its outcomes, one line per mutant
        summary.txt             what was printed at the end
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from colo_fixtures.core.verdicts import MetricsRegression
from colo_fixtures.report.categories import categorise, exception_message
from colo_fixtures.report.html import Report, ReportError, generate
from colo_fixtures.report.metrics import METRICS_NAME, RUN_PLOT, Regression, regressions
from colo_fixtures.report.mutation import read_outcomes, verdict_of

RUN_NAME = re.compile(r"^\d{4}-\d\d-\d\dT\d{6}$")
REGRESSION_STORY = "no figure got slower than the night before"
NIGHTLY_CLIENTS = 4  # concurrent clients per workload in nightly runs (make colo: 2)
# tools/nightly's exit codes: what happened, each its own number and summary word.
EXIT_OK, EXIT_TESTS_FAILED, EXIT_USAGE, EXIT_REGRESSION = 0, 1, 2, 3
EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_NO_TESTS = 4, 5, 6
VERDICTS = {EXIT_OK: "PASSED", EXIT_TESTS_FAILED: "FAILED", EXIT_USAGE: "SET-UP/USAGE ERROR",
            EXIT_REGRESSION: "REGRESSION", EXIT_INTERNAL: "INTERNAL ERROR",
            EXIT_INTERRUPTED: "INTERRUPTED", EXIT_NO_TESTS: "NO TESTS RAN"}
# pytest's own exit codes (pytest.ExitCode) → ours
FROM_PYTEST = {1: EXIT_TESTS_FAILED, 2: EXIT_INTERRUPTED, 3: EXIT_INTERNAL, 4: EXIT_USAGE,
               5: EXIT_NO_TESTS}


@dataclass
class Night:
    """What one nightly run produced (the summary is made from this)."""

    run: Path
    pytest_rc: int = 0
    seconds: float = 0.0
    previous: Path | None = None
    regressions: list[Regression] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    before: dict[str, Any] = field(default_factory=dict)
    report: Report | None = None
    report_error: str | None = None
    failures: list[tuple[str, str | None, str]] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    mutants_rc: int | None = None  # the mutation suite's pytest exit (None: not run)
    mutation: list[dict[str, Any]] = field(default_factory=list)
    mutation_error: str | None = None  # mutants.jsonl unreadable

    @property
    def exit_code(self) -> int:
        """pytest's outcome first (an internal error is never called a regression), the
        suites' then the mutation suite's; a run that passed but made no report is an
        internal error; then the metrics."""
        for rc in (self.pytest_rc, self.mutants_rc or 0):
            if rc != 0:
                return FROM_PYTEST.get(rc, EXIT_INTERNAL)
        if self.report is None:
            return EXIT_INTERNAL
        return EXIT_REGRESSION if self.regressions else EXIT_OK


def runs(root: Path) -> list[Path]:
    """Earlier run folders, oldest first (only folders named like a run: never anything else)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()
                  and RUN_NAME.match(p.name))


def previous_metrics(root: Path, before: Path) -> Path | None:
    """The newest earlier run (named before ``before``) that wrote metrics."""
    for run in reversed(runs(root)):
        if run.name < before.name and (run / "reports" / METRICS_NAME).exists():
            return run
    return None


def pytest_argv(python: Path, run: Path, *, profile: str, inventory: Path | None,
                workers: str, cycles: int, marker: str, extra: list[str]) -> list[str]:
    """The suites, every variant: -m colo includes the slow ones, --colo-cycles the long
    repeated-cycles run, --colo-ramcheck RAM compared at every checkpoint, --colo-clients
    more concurrent clients; xdist where the profile allows it (not over SSH)."""
    argv = [str(python), "-m", "pytest", "suites/", "-m", marker, "-p", "no:cacheprovider",
            "-rfExs", "--colo-profile", profile, "--colo-cycles", str(cycles), "--colo-ramcheck",
            "--colo-clients", str(NIGHTLY_CLIENTS),
            "--alluredir", str(run / "allure-results"), "--report-dir", str(run / "reports")]
    if inventory is not None:
        argv += ["--inventory", str(inventory)]
    if profile == "local" and workers not in ("0", "1"):
        argv += ["-n", workers, "--dist", "loadgroup"]
    return argv + extra


def mutants_argv(python: Path, run: Path) -> list[str]:
    """The mutation suite (which mutants: ``COLO_MUTANTS``), its results in the report."""
    return [str(python), "-m", "pytest", "tests/test_mutants.py", "-k", "caught", "-p",
            "no:cacheprovider", "-rfE", "--alluredir", str(run / "allure-results")]


def regression_result(results: Path, night: Night, threshold: float) -> None:
    """The metrics comparison as one more test in the report: failed (and in the
    "Metrics regression" category) when a figure got slower, passed otherwise. It carries
    the run's figures: the comparison, ``metrics.png`` and ``metrics.json``."""
    now_ms = int(time.time() * 1000)
    lines = [f"compared with {night.previous.name if night.previous else 'nothing'} "
             f"(threshold +{threshold:.0%} and each figure's noise floor)"]
    for name, now in sorted(night.figures.items()):
        then = night.before.get(name)
        was = f"{then['p50']:.4g}" if then else "-"
        lines.append(f"{name:28} p50 {now['p50']:10.4g} {now.get('unit', ''):3} was {was}")
    attachment = f"{uuid.uuid4()}-attachment.txt"
    (results / attachment).write_text("\n".join(lines) + "\n")
    attachments = [{"name": "metrics vs the night before", "source": attachment,
                    "type": "text/plain"}]
    for name, kind in ((RUN_PLOT, "image/png"), (METRICS_NAME, "application/json")):
        source = night.run / "reports" / name
        if source.exists():
            copy = f"{uuid.uuid4()}-attachment{source.suffix}"
            shutil.copyfile(source, results / copy)
            attachments.append({"name": name, "source": copy, "type": kind})
    message = (exception_message(MetricsRegression(
        "metrics regression: " + "; ".join(map(str, night.regressions))))
        if night.regressions else None)
    result = {
        "uuid": str(uuid.uuid4()), "historyId": "colo-nightly-metrics-regression",
        "testCaseId": "colo-nightly-metrics-regression",
        "name": "metrics regression check", "fullName": "nightly#metrics_regression_check",
        "status": "failed" if night.regressions else "passed", "stage": "finished",
        "statusDetails": {"message": message} if message else {},
        "start": now_ms, "stop": now_ms,
        "labels": [{"name": "epic", "value": "COLO"}, {"name": "feature", "value": "metrics"},
                   {"name": "story", "value": REGRESSION_STORY},
                   {"name": "suite", "value": "nightly"}],
        "attachments": attachments,
    }
    (results / f"{result['uuid']}-result.json").write_text(json.dumps(result, indent=2))


def write_executor(results: Path, run: Path, order: int) -> None:
    """executor.json: which nightly build this report is (shown by Allure as the executor)."""
    (results / "executor.json").write_text(json.dumps({
        "name": "tools/nightly", "type": "cron", "buildName": f"COLO nightly {run.name}",
        "buildOrder": order, "reportName": f"COLO nightly {run.name}",
        "reportUrl": (run / "html" / "index.html").resolve().as_uri()}, indent=2))


def prune(root: Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` run folders; return what was removed."""
    old = runs(root)[:-keep] if keep > 0 else []
    for run in old:
        shutil.rmtree(run, ignore_errors=True)
    return old


def link_latest(root: Path, run: Path) -> None:
    latest = root / "latest"
    if latest.is_symlink() or not latest.exists():
        latest.unlink(missing_ok=True)
        latest.symlink_to(run.name)


def run_night(root: Path, pytest: list[str], *, threshold: float, keep: int,
              cwd: Path, run: Path, mutants: list[str] | None = None,
              which_mutants: str = "all") -> Night:
    """Run the suites into ``run``, then (``mutants``: its argv) the mutation suite on
    ``which_mutants``, and make everything the morning needs from them."""
    night = Night(run)
    run.mkdir(parents=True)
    night.previous = previous_metrics(root, run)
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    with (run / "pytest.log").open("w") as log:
        night.pytest_rc = subprocess.run(pytest, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, check=False).returncode
    if mutants is not None:
        outcomes = run / "mutants.jsonl"
        with (run / "mutants.log").open("w") as log:
            night.mutants_rc = subprocess.run(
                mutants, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, check=False,
                env={**env, "COLO_MUTANTS": which_mutants,
                     "COLO_MUTANT_RESULTS": str(outcomes)}).returncode
        try:
            night.mutation = read_outcomes(outcomes)
        except ValueError as exc:  # the suites' report is still made; the summary says why
            night.mutation_error = str(exc)
    night.seconds = time.monotonic() - started
    results = run / "allure-results"
    metrics = run / "reports" / METRICS_NAME
    if metrics.exists():
        night.figures = json.loads(metrics.read_text()).get("summary", {})
    if night.previous is not None:
        night.before = json.loads((night.previous / "reports" / METRICS_NAME).read_text()).get(
            "summary", {})
        night.regressions = regressions(night.before, night.figures, threshold)
    if results.is_dir():
        regression_result(results, night, threshold)
        write_executor(results, run, len(runs(root)))
    try:
        night.report = generate(results, run / "html", history=root / "history.jsonl",
                                name=f"COLO nightly {run.name}")
        for test in night.report.results:
            if test.get("status") in ("failed", "broken"):
                message = ((test.get("statusDetails") or {}).get("message") or "").strip()
                night.failures.append((test.get("fullName", test.get("name", "?")),
                                       categorise(test["status"], message),
                                       message.splitlines()[0] if message else ""))
    except ReportError as exc:
        night.report_error = str(exc)
    link_latest(root, run)
    night.removed = prune(root, keep)
    return night


def summary(night: Night, width: int = 100) -> str:
    """One screen: verdict, counts, failures by category, figures vs the night before."""
    verdict = VERDICTS[night.exit_code]
    lines = [f"COLO nightly {night.run.name}: {verdict} (pytest exit {night.pytest_rc}, "
             f"{night.seconds:.0f} s)"]
    if night.report is not None:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(night.report.statuses.items()))
        lines.append(f"  tests: {counts}")
    for name, category, message in night.failures[:8]:
        lines.append(f"  FAIL {name} [{category or 'uncategorised'}]")
        if message:
            lines.append(f"       {message[:width - 7]}")
    if len(night.failures) > 8:
        lines.append(f"  ... and {len(night.failures) - 8} more failures (see the report)")
    if night.mutants_rc is not None:
        caught = sum(1 for o in night.mutation if o["caught"])
        lines.append(f"  mutants: {caught} of {len(night.mutation)} caught with their "
                     f"diagnosis (mutation suite exit {night.mutants_rc}, "
                     f"{night.run / 'mutants.log'})")
        if night.mutation_error:
            lines.append(f"  MUTANTS unreadable: {night.mutation_error}")
        for o in night.mutation:
            if not o["caught"]:
                lines.append(f"  MUTANT {o['mutant']} ({o['kind']}): {verdict_of(o)}, found "
                             f"{o['found']}, wanted {o['wanted']}")
    was = night.previous.name if night.previous else "no earlier run"
    lines.append(f"  figures (p50 / max, vs {was}):")
    flagged = {r.figure for r in night.regressions}
    for name, now in sorted(night.figures.items()):
        then = night.before.get(name)
        before = f"was {then['p50']:.4g}" if then else ""
        mark = "  << REGRESSION" if name in flagged else ""
        lines.append(f"    {name:28} {now['p50']:9.4g} / {now['max']:<9.4g} "
                     f"{now.get('unit', ''):3} {before}{mark}")
    if not night.figures:
        lines.append("    (no test wrote figures)")
    if night.report is not None:
        lines.append(f"  report: {night.report.index}")
        lines.append(f"  junit:  {night.report.junit}")
    else:
        lines.append(f"  report: not made: {night.report_error}")
    lines.append(f"  log:    {night.run / 'pytest.log'}")
    if night.removed:
        lines.append(f"  pruned: {', '.join(p.name for p in night.removed)}")
    return "\n".join(lines)
