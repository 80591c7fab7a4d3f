"""Known issues are data: matching tests get a strict xfail, others are left alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from colo_fixtures.known_issues import KNOWN_ISSUES, KnownIssue, mark_known_issues


class Item:
    """The part of a pytest item that marking uses."""

    def __init__(self, nodeid: str):
        self.nodeid = nodeid
        self.markers: list = []

    def add_marker(self, marker) -> None:
        self.markers.append(marker)


def test_one_parametrization_can_be_named():
    items = [Item("suites/a.py::test_x[fresh]"), Item("suites/a.py::test_x[old]")]
    mark_known_issues(items, (KnownIssue("suites/a.py::test_x[fresh]", "broken", "x"),))  # type: ignore[arg-type]
    assert [len(i.markers) for i in items] == [1, 0]


def test_matching_tests_and_their_parameters_are_marked_strict():
    items = [Item("suites/a.py::test_x"), Item("suites/a.py::test_x[3]"),
             Item("suites/a.py::test_xy")]
    mark_known_issues(items, (KnownIssue("suites/a.py::test_x", "broken", "x"),))  # type: ignore[arg-type]
    assert [len(i.markers) for i in items] == [1, 1, 0]
    mark = items[0].markers[0]
    assert mark.name == "xfail"
    assert mark.kwargs == {"reason": "broken", "strict": True}


def test_every_known_issue_names_an_existing_suite_test():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for issue in KNOWN_ISSUES:
        path, name = issue.test.split("::")
        assert f"def {name.split('[')[0]}(" in (root / path).read_text(), issue.test
        assert issue.strict and len(issue.reason) > 40


def test_known_log_message_is_recognised_and_others_are_not():
    from colo_fixtures.known_issues import known_log_message

    line = ("2026-11-28T19:27:39.371229Z qemu-system-x86_64: virtio: zero sized buffers are "
            "not allowed")
    issue = known_log_message(line)
    assert issue is not None and "cause not identified" in issue.reason
    assert issue.explains_failure
    assert known_log_message("qemu-system-x86_64: Can't receive COLO message") is None
    bogus = known_log_message("2026-11-29T01:02:46.533229Z qemu-system-x86_64: virtio: bogus "
                              "descriptor or out of resources")
    assert bogus is not None and bogus is not issue and bogus.explains_failure


BROKEN_NIC = ("2026-11-28T21:51:35.998773Z qemu-system-x86_64: virtio: zero sized buffers "
              "are not allowed\n")


def test_a_failure_explained_by_a_known_message_is_an_expected_failure(tmp_path: Path):
    tests = tmp_path / "test_explained.py"
    tests.write_text(
        "def test_explained(artifacts):\n"
        f"    (artifacts / 'secondary-stderr.log').write_text({BROKEN_NIC!r})\n"
        "    assert False, 'the client timed out after the failover'\n"
        "\n"
        "def test_unexplained(artifacts):\n"
        "    (artifacts / 'secondary-stderr.log').write_text('all quiet\\n')\n"
        "    assert False, 'a real failure'\n"
        "\n"
        "def test_lost_write_is_not_excused(artifacts):\n"
        f"    (artifacts / 'secondary-stderr.log').write_text({BROKEN_NIC!r})\n"
        "    assert False, 'lost acknowledged write: k1=w9 (seq 9) forgotten'\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(tests), "-rxf", "-p", "no:cacheprovider",
         "--report-dir", str(tmp_path / "reports"), "--rootdir", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    out = result.stdout
    assert result.returncode == 1, out
    assert "2 failed, 1 xfailed" in out
    assert "XFAIL test_explained.py::test_explained - known issue (secondary-stderr.log:1)" \
        in out
    assert "FAILED test_explained.py::test_unexplained" in out
    assert "FAILED test_explained.py::test_lost_write_is_not_excused" in out


def test_a_known_issue_excuses_only_its_symptom(tmp_path: Path):
    """The real known issue of the cycles test, on a stand-in test with its node id: its
    symptom is an expected failure; another failure, or a lost write, is a failure."""
    issue = next(i for i in KNOWN_ISSUES if "opened-since-checkpoint" in i.test)
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "test_failover.py").write_text(
        "import os\n"
        "import pytest\n"
        "\n"
        "@pytest.mark.parametrize('connection', ['opened-since-checkpoint'])\n"
        "def test_repeated_cycles(connection):\n"
        "    raise AssertionError(os.environ['FAILURE'])\n")

    def run(failure: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "suites/test_failover.py", "-rxf", "-p",
             "no:cacheprovider", "--report-dir", str(tmp_path / "reports"),
             "--rootdir", str(tmp_path)],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
            env={**os.environ, "FAILURE": failure})
        assert result.returncode == (0 if "1 xfailed" in result.stdout else 1), result.stdout
        return result.stdout

    out = run("the long-lived connection did not survive the cycles: conn 1 broke")
    assert f"XFAIL {issue.test}" in out, out
    out = run("cycle 2 (secondary killed) failed: resume: drive-mirror never ready")
    assert "1 failed" in out and "the known issue does not explain this failure" in out, out
    out = run("after cycle 1: lost acknowledged write: k0=w3 (seq 3)")
    assert "1 failed" in out and "is never a known issue" in out, out


FROZEN = """\
secondary /machine/peripheral/e0/virtio-backend: broken=False started=True vm-running=True status=ok
  queue 0 rx: inuse=0 last-avail=26 shadow-avail=256 used=26 signalled-used=0
  queue 1 tx: inuse=0 last-avail=28 shadow-avail=31 used=28 signalled-used=0
  queue 2 ctrl: inuse=0 last-avail=9 shadow-avail=9 used=9 signalled-used=0
"""
HEALTHY = """\
primary /machine/peripheral/e0/virtio-backend: broken=False started=True vm-running=True status=ok
  queue 0 rx: inuse=0 last-avail=41 shadow-avail=289 used=41 signalled-used=41
  queue 1 tx: inuse=0 last-avail=43 shadow-avail=43 used=43 signalled-used=43
  queue 2 ctrl: inuse=0 last-avail=9 shadow-avail=9 used=9 signalled-used=9
"""


def test_a_frozen_nic_is_recognised_from_its_virtio_queues():
    """The signature seen in CI (2026-11-29): every queue's signalled-used is 0 while used
    is not; a healthy NIC's signalled-used follows used; a fresh NIC (all 0) is not frozen."""
    from colo_fixtures.known_issues import frozen_nic

    assert frozen_nic(FROZEN) == "secondary"
    assert frozen_nic(HEALTHY + FROZEN.replace("secondary", "secondary2")) == "secondary2"
    assert frozen_nic(HEALTHY) is None
    assert frozen_nic(FROZEN.replace("used=26 signalled-used=0", "used=26 signalled-used=26")
                      ) is None  # one queue moved: not the freeze
    fresh = "\n".join(line.replace("used=26", "used=0").replace("used=28", "used=0")
                      .replace("used=9", "used=0") for line in FROZEN.splitlines())
    assert frozen_nic(fresh) is None
    assert frozen_nic("secondary: virtio state unavailable: QMP unresponsive") is None
