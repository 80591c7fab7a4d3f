"""The harness log: the ``colo`` tree at DEBUG into one file per test, warnings on to pytest."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from colo_fixtures.core.events import phase
from colo_fixtures.core.harness_log import HARNESS_LOG, TREE, harness_log
from colo_fixtures.core.waits import wait_for
from colo_fixtures.lab.hosts import LocalHost


def test_commands_waits_and_phases_go_to_the_file(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    level, propagate = TREE.level, TREE.propagate
    with harness_log(tmp_path) as path:
        with phase("check: something"):
            LocalHost().run(["true"])
            wait_for("a thing", lambda: True, 1.0)
        logging.getLogger("colo.lab").warning("a warning")
    text = path.read_text()
    assert path.name == HARNESS_LOG
    assert "colo.phase INFO begin: check: something" in text
    assert "colo.host DEBUG localhost: true\n" in text
    assert "colo.host DEBUG localhost: true exited 0 in " in text
    assert "colo.wait DEBUG waited " in text and "a thing" in text
    assert "end: check: something (" in text
    # pytest's capture gets the warning, not the debug lines
    messages = [r.getMessage() for r in caplog.records]
    assert "a warning" in messages and "localhost: true" not in messages
    assert (TREE.level, TREE.propagate) == (level, propagate)
    assert not any(isinstance(h, logging.FileHandler) for h in TREE.handlers)


def test_a_failed_phase_and_a_timeout_say_so(tmp_path: Path) -> None:
    with (harness_log(tmp_path) as path, pytest.raises(Exception, match="not within"),
          phase("wait: never")):
        wait_for("nothing", lambda: None, 0.05)
    text = path.read_text()
    assert "timed out after 0.05s: nothing" in text
    assert "end: wait: never (" in text and ", QemuError)" in text
