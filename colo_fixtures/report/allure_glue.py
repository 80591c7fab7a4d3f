"""Evidence into the report: Allure attachments and environment, when allure-pytest is active.

Without ``--alluredir`` the attachments are no-ops and artifacts stay in the per-test folder.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import allure
import pytest

from colo_fixtures.core import events
from colo_fixtures.core.harness_log import HARNESS_LOG

P = ParamSpec("P")
R = TypeVar("R")
FAILED_KEY = pytest.StashKey[bool]()
_ENVIRONMENT: dict[str, str] = {}

_TYPES = {".json": allure.attachment_type.JSON, ".jsonl": allure.attachment_type.TEXT,
          ".png": allure.attachment_type.PNG, ".pcap": allure.attachment_type.PCAP}


def attach_file(path: Path, name: str | None = None) -> None:
    """Attach one file (text unless its suffix says otherwise)."""
    if path.is_file():
        allure.attach.file(str(path), name=name or path.name,
                           attachment_type=_TYPES.get(path.suffix, allure.attachment_type.TEXT))


def attach_run(folder: Path) -> None:
    """Attach every file of a test's artifact folder (argv, consoles, stderr, traces, QMP);
    the harness log is attached once it is complete, after the last teardown."""
    for path in sorted(folder.iterdir()):
        if path.name != HARNESS_LOG:
            attach_file(path)


class AllureSteps:
    """Turns the harness's phases (``core.events``) into nested Allure steps: timed, and
    marked failed where the failure happened. One stack per thread."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _stack(self) -> list[Any]:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    def started(self, title: str) -> None:
        context = allure.step(title)
        context.__enter__()
        self._stack().append(context)

    def ended(self, title: str, exc_type: type[BaseException] | None,
              exc: BaseException | None, tb: TracebackType | None) -> None:
        if stack := self._stack():
            stack.pop().__exit__(exc_type, exc, tb)


STEPS = AllureSteps()


def show_phases_as_steps() -> None:
    """Report every phase from now on as an Allure step (a no-op without ``--alluredir``)."""
    events.add_listener(STEPS)


def fixture_title(title: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Name a fixture in the report (put it under ``@pytest.fixture``). ``allure.title``
    cannot do it in a plugin module: that is imported before allure-pytest registers the
    hook behind ``allure.title``, which then decorates nothing. The listener reads this
    attribute when the fixture runs."""
    def name(func: Callable[P, R]) -> Callable[P, R]:
        func.__allure_display_name__ = title  # type: ignore[attr-defined]
        return func
    return name


def environment(**values: object) -> None:
    """Record values for Allure's environment.properties (written at session end)."""
    _ENVIRONMENT.update({key: str(value) for key, value in values.items()})


def test_failed(item: pytest.Item) -> bool:
    return item.stash.get(FAILED_KEY, False)


def write_environment(alluredir: str | None) -> Path | None:
    """Write environment.properties into the Allure results folder, if there is one."""
    if not alluredir or not _ENVIRONMENT:
        return None
    path = Path(alluredir) / "environment.properties"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{key}={value}" for key, value in sorted(_ENVIRONMENT.items())]
    lines.append(f"kernel={os.uname().release}")
    path.write_text("\n".join(lines) + "\n")
    return path
