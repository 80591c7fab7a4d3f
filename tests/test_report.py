"""The report for real: Allure results of a real COLO run → tools/report → headless Chromium.

The categories are checked against the messages the harness's own code writes; the report
is generated twice over one history file (two nights) and opened in Debian's Chromium,
where the suites, the phases, the evidence (plots included) and the trend must be there.
A screenshot of the test page is kept as ``reports/report-screenshot.png``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from colo_fixtures.core.verdicts import ClientTimeout, Deadlock
from colo_fixtures.lab.topology import Ports
from colo_fixtures.plugin.colo_run import EVIDENCE_TITLE
from colo_fixtures.report import allure_glue as report
from colo_fixtures.report.categories import (
    CATEGORIES,
    categorise,
    exception_message,
    write_categories,
)
from colo_fixtures.report.html import ALLURE, ReportError, generate, load_results
from colo_fixtures.sut.colo_pair import describe_stall
from colo_fixtures.sut.logscan import scan, verdict_of
from colo_fixtures.sut.trace import Checkpoint
from colo_fixtures.workload.checker import check
from colo_fixtures.workload.history import History

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-quic"]
RUN = ["suites/test_failover.py::test_failover_after_kill[primary]",
       "suites/test_checkpoint.py::test_colo_running_on_both_sides"]


# ---------------------------------------------------------------- categories


def test_every_verdict_type_of_the_package_has_its_category():
    """Each Verdict subclass anywhere in colo_fixtures (a CommandError too) is matched by
    exactly the rule of its own category, also in a process that imports only categories."""
    import importlib
    import pkgutil

    import colo_fixtures
    from colo_fixtures.core import verdicts

    for module in pkgutil.walk_packages(colo_fixtures.__path__, "colo_fixtures."):
        if not module.name.startswith("colo_fixtures.plugin"):
            importlib.import_module(module.name)
    for cls in verdicts.verdict_types():
        message = exception_message(cls("x"))
        assert categorise("failed", message) == cls.category, (cls, message)
    alone = subprocess.run(
        [sys.executable, "-c", "from colo_fixtures.report.categories import CATEGORIES\n"
         "print(sum(len(c['messageRegex'].split('|')) for c in CATEGORIES))"],
        capture_output=True, text=True, check=True)
    rules = sum(len(c["messageRegex"].split("|")) for c in CATEGORIES)
    assert int(alone.stdout) == rules


def test_each_category_is_decided_by_the_verdict_type(tmp_path: Path):
    """Verdicts made by the real code land in their type's category, whatever their text
    says; an untyped assertion lands in none."""
    stall = describe_stall([Checkpoint(requested=0.0, stopped=0.01, resumed=None)],
                           "vmstate-loaded")
    history = History()
    write = history.invoke("client-1", "write", "k1", "v1", 1)
    history.complete(write, "ok", seq=1)
    lost = check(history, {"k1": None}).verdict()
    console = tmp_path / "secondary-console.log"
    console.write_text("[   12.5] Kernel panic - not syncing: Fatal exception\n")
    crash = verdict_of(scan(console, "console"))
    expected = {
        "Deadlock (QEMU stopped answering)": ("failed", exception_message(
            Deadlock(f"primary QMP unresponsive for 10s: {stall}"))),
        "Lost acknowledged write": ("failed", exception_message(lost)),  # type: ignore[arg-type]
        "Guest crash": ("failed", exception_message(crash)),
        # a verdict's text mentioning another category's words changes nothing
        "Client got no answer (VM network dead)": ("failed", exception_message(
            ClientTimeout("no answer; not a lost acknowledged write or a kernel panic"))),
        "Harness set-up failed (QEMU, guest or lab unavailable)": (
            "failed", "Failed: QEMU unavailable: no deb-src entry"),
        "Known issue (expected failure)": ("skipped", "XFAIL known issue: frozen NIC\n\n"),
        "RDMA missing (vm-ft tests skipped)": ("skipped", "no RDMA device: ibv_devices "
                                               "lists none"),
    }
    for name, (status, message) in expected.items():
        assert categorise(status, message) == name, (name, message)
    assert categorise("failed", "AssertionError: lost acknowledged write: k1") is None
    assert categorise("passed", exception_message(lost)) is None  # type: ignore[arg-type]
    names = [c["name"] for c in CATEGORIES]
    assert len(names) == len(set(names)), "two types share a category name"
    assert names.index("Lost acknowledged write") < names.index("COLO violation")
    written = json.loads(write_categories(tmp_path)  # type: ignore[arg-type]
                         .read_text())
    assert [c["name"] for c in written] == names


# ---------------------------------------------------------------- tools/report


def inner_pytest(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A pytest run of the project's own suites writing Allure results into ``folder``."""
    argv = [sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider", "-q",
            "--alluredir", str(folder / "allure-results"), "--report-dir",
            str(folder / "reports")]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900)
    (folder / "pytest.log").write_text(result.stdout + result.stderr)
    return result


def test_report_errors_are_one_line_and_name_the_fix(tmp_path: Path):
    with pytest.raises(ReportError, match=r"^no Allure results at .*: run pytest with "
                                          r"--alluredir"):
        generate(tmp_path / "none", tmp_path / "out", history=None, name="x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match=r"holds no test results"):
        generate(tmp_path / "empty", tmp_path / "out", history=None, name="x")
    results = tmp_path / "results"
    results.mkdir()
    (results / "1-result.json").write_text(json.dumps({"name": "t", "status": "passed"}))
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious\n")
    with pytest.raises(ReportError, match=r"is not an earlier report: choose another --out"):
        generate(results, keep, history=None, name="x")
    assert (keep / "notes.txt").read_text() == "precious\n"
    with pytest.raises(ReportError, match=r"the Allure command line is not installed .*"
                                          r"run tools/bootstrap"):
        generate(results, tmp_path / "out", history=None, name="x",
                 allure=tmp_path / "no-allure")


def test_junit_and_report_from_a_run_with_every_outcome(tmp_path: Path):
    """A run with a pass, a failure, an error, a skip and an xfail: the JUnit XML counts
    them as CI systems expect, and a rerun's later attempt replaces the first."""
    tests = tmp_path / "test_outcomes.py"
    tests.write_text(
        "import pytest\n"
        "def test_ok(): pass\n"
        "def test_lost(): pytest.fail('lost acknowledged write: k1=v1')\n"
        "@pytest.fixture\ndef broken(): raise RuntimeError('no lab')\n"
        "def test_broken(broken): pass\n"
        "def test_skip(): pytest.skip('no RDMA device')\n"
        "@pytest.mark.xfail(reason='known issue: frozen NIC')\n"
        "def test_known(): assert 0\n")
    result = subprocess.run([sys.executable, "-m", "pytest", str(tests), "-q", "-p",
                             "no:cacheprovider", "--alluredir", str(tmp_path / "results")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout
    made = generate(tmp_path / "results", tmp_path / "html", history=None, name="outcomes")
    assert made.statuses == {"passed": 1, "failed": 1, "broken": 1, "skipped": 2}
    suite = ET.parse(made.junit).getroot()[0]
    assert {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped")} == {
        "tests": "5", "failures": "1", "errors": "1", "skipped": "2"}
    assert "lost acknowledged write" in suite.find("testcase[@name='test_lost']/failure").get(
        "message")  # type: ignore[union-attr]
    assert "googletagmanager" not in made.index.read_text()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed: run "
                                                  "tools/bootstrap")
def test_report_of_a_real_run_in_headless_chromium(tmp_path: Path):
    """Two reports (two nights) over one history from a real COLO run, the second opened
    in Chromium: suites tree, phases as steps, plots and logs as attachments, the trend."""
    assert ALLURE.exists(), "the Allure command line is missing: run tools/bootstrap"
    run = inner_pytest(tmp_path, *RUN, "--accel", "tcg", "--pcap")
    assert run.returncode == 0, run.stdout[-3000:]
    pcaps = sorted((tmp_path / "reports" / "artifacts").glob("*/replication-1.pcap"))
    assert len(pcaps) == 2, "--pcap: one capture of the replication link per test"
    shown = subprocess.run(["tcpdump", "-r", str(pcaps[0]), "-n", "-c", "50",
                            f"tcp port {Ports().migration}"], capture_output=True, text=True)
    assert shown.returncode == 0 and len(shown.stdout.splitlines()) == 50, shown.stderr
    results = tmp_path / "allure-results"
    statuses = {test["name"]: test["status"] for test in load_results(results)}
    assert statuses["test_colo_running_on_both_sides"] == "passed", statuses
    # The failover may meet the SUT's known frozen-NIC issue (an xfail naming it, "skipped"
    # in Allure): the report must show that run as well, only without the final check.
    failover = statuses["test_failover_after_kill[primary]"]
    assert failover in ("passed", "skipped"), statuses
    history = tmp_path / "history.jsonl"
    for night in ("night-1", "night-2"):
        tool = subprocess.run([str(ROOT / "tools" / "report"), "--results", str(results),
                               "--out", str(tmp_path / night), "--history", str(history),
                               "--name", "COLO nightly"],
                              capture_output=True, text=True, timeout=300)
        assert tool.returncode == 0, tool.stderr
        assert tool.stdout.startswith("report: 2 tests ("), tool.stdout
    assert len(history.read_text().splitlines()) == 2
    shot = tmp_path / "report-screenshot.png"
    check_in_chromium(tmp_path / "night-2" / "index.html", failover, shot)
    kept = ROOT / "reports" / "report-screenshot.png"
    kept.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, kept)
    report.attach_file(shot)


def check_in_chromium(index: Path, failover: str, shot: Path) -> None:
    """Open report ``index`` in headless Chromium: the suites tree, the failover test's
    phases in order, its evidence with a rendered plot, and the trend chart. ``failover``:
    the failover test's Allure status ("skipped" is a known-issue xfail: no final check,
    the failure's evidence instead of failover.json)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(index.as_uri())
            page.get_by_text("COLO nightly").first.wait_for(timeout=20_000)
            # the suites: epic COLO, features failover and checkpoint
            page.get_by_text("COLO", exact=True).first.click()
            for feature in ("failover", "checkpoint"):
                page.get_by_text(feature, exact=True).first.wait_for(timeout=5_000)
            page.get_by_text("failover", exact=True).first.click()
            page.get_by_text("failover after SIGKILL while idle", exact=True).first.click()
            page.get_by_text("test_failover_after_kill[primary]").first.click()
            # the phases, in order
            steps = page.get_by_test_id("test-result-step-title")
            steps.first.wait_for(timeout=10_000)
            titles = steps.all_inner_texts()
            phases = ["provision:", "boot:", "start COLO:", "fault: kill primary",
                      "failover: the secondary takes over"]
            phases += ["check:"] if failover == "passed" else []
            found = [next(i for i, t in enumerate(titles) if t.startswith(p)) for p in phases]
            assert found == sorted(found), titles
            # the evidence, a plot rendered from it
            page.get_by_text(f"{EVIDENCE_TITLE}::1", exact=True).click()  # its teardown
            evidence = ["client-latency.png", "checkpoint-timeline.png", "primary-qmp.jsonl",
                        "replication-1.pcap", "secondary-console.log", "history.jsonl"]
            evidence += ["failover.json"] if failover == "passed" else ["virtio.txt",
                                                                         "diagnosis.txt"]
            for name in evidence:
                page.get_by_text(name, exact=True).first.wait_for(timeout=5_000)
            page.get_by_text("client-latency.png", exact=True).first.click()
            page.wait_for_function(
                "Array.from(document.images).some(i => i.naturalWidth > 400)", timeout=10_000)
            page.screenshot(path=str(shot), full_page=False)
            # the trend: the status dynamics chart has the earlier report and this one
            page.goto(index.as_uri() + "#charts")
            page.get_by_text("Status dynamics").first.wait_for(timeout=10_000)
            chart = page.get_by_text("Status dynamics").first.locator("xpath=../..")
            labels = chart.inner_text()
            assert "Latest" in labels and labels.count("/") >= 2, labels
            assert not errors, errors
        finally:
            browser.close()
