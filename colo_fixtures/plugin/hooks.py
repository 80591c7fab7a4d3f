"""The run's verdict and report hooks: known issues judged on the call phase only, a run
that proved nothing, how often each known issue fired, the report's files at the end.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from colo_fixtures.core.verdicts import MemoryDivergence, never_excused
from colo_fixtures.evidence.known_issues import Evidence, covering
from colo_fixtures.evidence.ramcheck import divergence_now
from colo_fixtures.plugin.colo_run import (
    KNOWN_LINE_PROPERTY,
    STARTED_KEY,
    save_nic_state,
)
from colo_fixtures.plugin.options import SETTINGS_KEY
from colo_fixtures.plugin.session import LACKS_COLO
from colo_fixtures.report import allure_glue as report
from colo_fixtures.report.categories import write_categories
from colo_fixtures.report.metrics import write_run

SESSION_START = time.time()


@pytest.hookimpl(trylast=True)  # after options' pytest_configure has loaded the settings
def pytest_configure(config: pytest.Config) -> None:
    """Phases become Allure steps; the run-wide counters are registered (xdist: on the
    controller, which sees every report)."""
    report.show_phases_as_steps()
    config.pluginmanager.register(NothingProved(), "colo-nothing-proved")
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(KnownIssueCount(config.stash[SETTINGS_KEY].report_dir),
                                      "colo-known-issues")


class NothingProved:
    """Skipping a test whose QEMU lacks COLO is right; a run where that skipped every test
    proved nothing, and exits 1 saying so (xdist: the controller sees every report)."""

    def __init__(self) -> None:
        self.ran = 0
        self.lacks_colo = 0

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call":
            self.ran += 1
        elif report.skipped and LACKS_COLO in str(report.longrepr):
            self.lacks_colo += 1

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.lacks_colo and not self.ran and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            print(f"\ncolo: every test skipped because the QEMU binary {LACKS_COLO} (see "
                  "the skip reasons): nothing was proved, exit status 1")


def pytest_sessionfinish(session: pytest.Session) -> None:
    alluredir = session.config.getoption("allure_report_dir", None)
    report.write_environment(alluredir)
    write_categories(alluredir)
    if hasattr(session.config, "workerinput"):
        return  # xdist: the controller gathers every worker's figures once
    s = session.config.stash[SETTINGS_KEY]
    with contextlib.suppress(OSError):
        path = write_run(s.report_dir, {"profile": s.colo_profile, "tests_collected":
                                        session.testscollected}, since=SESSION_START)
        if path is not None:
            print(f"\ncolo: run metrics in {path}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """A test failing while the RAM check (``--colo-ramcheck``) already shows the sides'
    RAM differ fails with that MemoryDivergence, the failure chained to it: the divergence
    is the cause of the guest crash, the dead agent or the lost write that followed."""
    try:
        return (yield)
    except Exception as exc:
        if isinstance(exc, MemoryDivergence):
            raise
        divergence = None
        try:
            divergence = divergence_behind(item, exc)
        except Exception as missed:  # the RAM check is evidence here: never hide the failure
            warnings.warn(f"RAM check after the failure failed: {missed!r}", stacklevel=1)
        if divergence is None:
            raise
        raise divergence from exc


def divergence_behind(item: pytest.Item, exc: BaseException) -> MemoryDivergence | None:
    """The RAM check's verdict on ``item``'s COLO labs that compare RAM, if it differs."""
    folder = getattr(item, "funcargs", {}).get("artifacts")
    if not isinstance(folder, Path):
        return None
    for colo in item.stash.get(STARTED_KEY, []):
        if getattr(colo, "ramcheck", False):  # a stand-in lab of the harness's tests has none
            divergence = divergence_now(colo.pair, folder, exc)
            if divergence is not None:
                colo.ram_divergence_raised = True
                return divergence
    return None


KNOWN_ISSUE_PROPERTY = "colo_known_issue"  # user property: the issue that excused a failure


@pytest.hookimpl(hookwrapper=True, trylast=True)  # innermost: Allure sees the verdict
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Known issues excuse only the call phase of a test they cover, only the failure types
    they name, and only with their evidence on the survivor; a COLO violation, a setup or
    teardown error, or any other failure stays a failure. ``--runxfail`` excuses nothing."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:  # a failure or a pytest-timeout: the teardown keeps the evidence
        item.stash[report.FAILED_KEY] = True
        folder = getattr(item, "funcargs", {}).get("artifacts")
        if isinstance(folder, Path):
            rep.sections.append(("artifacts", f"this test's evidence (harness.log, QEMU "
                                 f"logs, consoles, traces, QMP): {folder}"))
    if rep.when != "call" or item.config.option.runxfail:
        return
    issues = covering(item.nodeid)
    if rep.passed:
        strict = [issue.name for issue in issues if issue.strict]
        if strict:
            rep.outcome = "failed"
            rep.longrepr = (f"[XPASS(strict)] known issue {', '.join(strict)} no longer "
                            "happens: remove it from colo_fixtures/evidence/known_issues.py")
            item.stash[report.FAILED_KEY] = True
        return
    if not rep.failed or call.excinfo is None:
        return
    folder = getattr(item, "funcargs", {}).get("artifacts")
    evidence = _evidence_once(item, folder if isinstance(folder, Path) else None)
    exc = call.excinfo.value
    if never_excused(exc):
        if issues:
            rep.sections.append(("known issue", f"{type(exc).__name__} is a COLO violation: "
                                 "no known issue excuses it"))
        return
    why_not = []
    for issue in issues:
        where, why = issue.excuse(item.nodeid, exc, evidence)
        if where is not None:
            rep.outcome = "skipped"
            rep.wasxfail = f"known issue {issue.name} ({where}): {issue.reason}"
            rep.user_properties.append((KNOWN_ISSUE_PROPERTY, issue.name))
            return
        why_not.append(why)
    if why_not:
        rep.sections.append(("known issue", "not excused: " + "; ".join(why_not)))


def _evidence_once(item: pytest.Item, folder: Path | None) -> Callable[[], Evidence]:
    """Gather the failed test's evidence on first use, while its QEMUs still run; each
    NIC's virtio queues go into virtio.txt."""
    cache: list[Evidence] = []

    def gather() -> Evidence:
        if not cache:
            cache.append(_gather_evidence(item, folder))
        return cache[0]

    return gather


def _gather_evidence(item: pytest.Item, folder: Path | None) -> Evidence:
    labs = item.stash.get(STARTED_KEY, [])
    if not labs:
        return Evidence()
    pair = labs[-1].pair
    survivor, virtio, tap = save_nic_state(pair, folder)
    logs = {process.name: [process.stderr_log, process.console_log, process.trace_log]
            for process in pair.processes}
    for process in pair.processes:
        with contextlib.suppress(Exception):
            process.sync_logs()
    return Evidence(survivor=survivor, logs=logs, virtio=virtio, tap_tx_since_failover=tap)


class KnownIssueCount:
    """How often each known issue excused a failure, and in how many tests (passed or not)
    the analyzer met a known log line: printed at the end and written to the report dir."""

    def __init__(self, report_dir: Path) -> None:
        self.report_dir = report_dir
        self.excused: dict[str, list[str]] = {}
        self.lines: dict[str, list[str]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for name, value in report.user_properties:
            target = {KNOWN_ISSUE_PROPERTY: self.excused, KNOWN_LINE_PROPERTY: self.lines}.get(
                name)
            if target is not None and report.nodeid not in target.setdefault(str(value), []):
                target[str(value)].append(report.nodeid)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not (self.excused or self.lines):
            return
        terminalreporter.section("COLO known issues")
        for name, tests in sorted(self.excused.items()):
            terminalreporter.line(f"{name}: excused {len(tests)} failure(s): {', '.join(tests)}")
        for name, tests in sorted(self.lines.items()):
            terminalreporter.line(f"{name}: its log line seen in {len(tests)} test(s): "
                                  f"{', '.join(tests)}")
        with contextlib.suppress(OSError):
            self.report_dir.mkdir(parents=True, exist_ok=True)
            (self.report_dir / "known-issues.json").write_text(json.dumps(
                {"excused": self.excused, "log_lines_seen": self.lines}, indent=2) + "\n")
