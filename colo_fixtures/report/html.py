"""Allure results → one static HTML report with trends, and JUnit XML for CI systems.

The report is made by the npm ``allure`` command line (Allure 3) that ``tools/bootstrap``
installs into ``node_modules/``; nothing is downloaded at run time. It is one self-contained
``index.html`` (opens from ``file://``, no web server needed). Trends come from a history
file (JSON lines, one entry per generated report) that each generation reads and extends:
keep it next to the reports (``tools/report --history``) and every new report shows the
runs before it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ALLURE = ROOT / "node_modules" / ".bin" / "allure"
HISTORY_LIMIT = 30
GENERATE_TIMEOUT = 600
# The report page loads Google Analytics; a lab report must not call out.
ANALYTICS = re.compile(r"<script[^>]*googletagmanager[^>]*>\s*</script>\s*"
                       r"(<script>[^<]*gtag\([^<]*</script>)?", re.S)


class ReportError(Exception):
    """A one-line reason why no report was made, naming what to fix."""


@dataclass(frozen=True)
class Report:
    index: Path
    junit: Path
    results: list[dict[str, Any]]  # the tests it shows (latest attempt of each)

    @property
    def tests(self) -> int:
        return len(self.results)

    @property
    def statuses(self) -> dict[str, int]:
        return dict(Counter(str(test.get("status", "unknown")) for test in self.results))


def result_files(results: Path) -> list[Path]:
    if not results.is_dir():
        raise ReportError(f"no Allure results at {results}: run pytest with "
                          f"--alluredir {results} first")
    files = sorted(results.glob("*-result.json"))
    if not files:
        raise ReportError(f"{results} holds no test results (*-result.json): did the pytest "
                          "run collect any test?")
    return files


def load_results(results: Path) -> list[dict[str, Any]]:
    """Every test result, the latest attempt of each test (by historyId) only."""
    latest: dict[str, dict[str, Any]] = {}
    for path in result_files(results):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ReportError(f"{path}: unreadable Allure result ({exc}): remove it or rerun "
                              "the tests") from None
        key = data.get("historyId") or data.get("uuid") or path.name
        if key not in latest or data.get("stop", 0) >= latest[key].get("stop", 0):
            latest[key] = data
    return sorted(latest.values(), key=lambda d: (d.get("fullName", ""), d.get("start", 0)))


def _clear_output(out: Path) -> None:
    """``allure generate`` does not empty its output: remove an earlier report there, but
    never a folder that is something else."""
    if not out.exists():
        return
    if not out.is_dir() or (any(out.iterdir()) and not (out / "index.html").exists()):
        raise ReportError(f"{out} exists and is not an earlier report: choose another --out")
    shutil.rmtree(out)


def _config(out: Path, history: Path | None, name: str, categories: list[Any]) -> str:
    config: dict[str, Any] = {
        "name": name,
        "output": str(out),
        "plugins": {"awesome": {"options": {
            "singleFile": True, "reportName": name, "reportLanguage": "en",
            "groupBy": ["epic", "feature", "story"]}}},
    }
    if history is not None:
        config.update(historyPath=str(history), historyLimit=HISTORY_LIMIT)
    if categories:
        config["categories"] = categories
    return f"export default {json.dumps(config, indent=2)};\n"


def generate(results: Path, out: Path, *, history: Path | None, name: str,
             allure: Path = ALLURE) -> Report:
    """Make ``out/index.html`` and ``out/junit.xml`` from ``results``; extend ``history``."""
    results, out = results.resolve(), out.resolve()
    tests = load_results(results)
    if not allure.exists():
        raise ReportError(f"the Allure command line is not installed ({allure} missing): "
                          "run tools/bootstrap")
    _clear_output(out)
    categories_file = results / "categories.json"
    categories = json.loads(categories_file.read_text()) if categories_file.exists() else []
    if history is not None:
        history = history.resolve()
        history.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="colo-report-") as tmp:
        config = Path(tmp) / "allurerc.mjs"
        config.write_text(_config(out, history, name, categories))
        try:
            run = subprocess.run([str(allure), "generate", str(results), "--config",
                                  str(config), "--output", str(out)],
                                 cwd=tmp, capture_output=True, text=True,
                                 timeout=GENERATE_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise ReportError(f"allure generate took over {GENERATE_TIMEOUT}s on {results}: "
                              "is the results folder huge?") from None
    index = out / "index.html"
    if run.returncode != 0 or not index.exists():
        shutil.rmtree(out, ignore_errors=True)  # cleared above: whatever is there is ours
        last = (run.stderr.strip() or run.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise ReportError(f"allure generate failed (exit {run.returncode}): {last[0]}")
    index.write_text(ANALYTICS.sub("", index.read_text()))
    junit = write_junit(tests, out / "junit.xml")
    return Report(index, junit, tests)


def _label(test: dict[str, Any], name: str) -> str | None:
    return next((lab["value"] for lab in test.get("labels", []) if lab.get("name") == name),
                None)


def write_junit(tests: list[dict[str, Any]], path: Path) -> Path:
    """JUnit XML (one testsuite per Allure suite label) for CI systems that read only that."""
    suites: dict[str, list[dict[str, Any]]] = {}
    for test in tests:
        suite = _label(test, "suite") or _label(test, "parentSuite") or "tests"
        suites.setdefault(suite, []).append(test)
    root = ET.Element("testsuites", name="COLO harness")
    for suite_name, members in suites.items():
        suite = ET.SubElement(root, "testsuite", name=suite_name, tests=str(len(members)))
        counts = {"failures": 0, "errors": 0, "skipped": 0}
        total = 0.0
        for test in members:
            seconds = max(0, test.get("stop", 0) - test.get("start", 0)) / 1000
            total += seconds
            case = ET.SubElement(suite, "testcase", name=test.get("name", "?"),
                                 classname=test.get("fullName", "?").rsplit("#", 1)[0],
                                 time=f"{seconds:.3f}")
            details = test.get("statusDetails") or {}
            message = (details.get("message") or "").strip()
            status = test.get("status")
            tag = {"failed": "failure", "broken": "error", "skipped": "skipped"}.get(
                str(status))
            if tag is not None:
                element = ET.SubElement(case, tag, message=message.splitlines()[0][:500]
                                        if message else str(status))
                element.text = details.get("trace") or message or None
                counts[{"failure": "failures", "error": "errors"}.get(tag, "skipped")] += 1
        suite.set("time", f"{total:.3f}")
        for key, value in counts.items():
            suite.set(key, str(value))
    ET.indent(root)
    path.write_bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))
    return path
