"""Evidence into the report: Allure attachments and environment, when allure-pytest is active.

Without ``--alluredir`` the attachments are no-ops and artifacts stay in the per-test folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import allure
import pytest

FAILED_KEY = pytest.StashKey[bool]()
_ENVIRONMENT: dict[str, str] = {}

_TYPES = {".json": allure.attachment_type.JSON, ".jsonl": allure.attachment_type.TEXT,
          ".png": allure.attachment_type.PNG}


def attach_file(path: Path, name: str | None = None) -> None:
    """Attach one file (text unless its suffix says otherwise)."""
    if path.is_file():
        allure.attach.file(str(path), name=name or path.name,
                           attachment_type=_TYPES.get(path.suffix, allure.attachment_type.TEXT))


def attach_run(folder: Path) -> None:
    """Attach every file of a test's artifact folder (argv, consoles, stderr, traces, QMP)."""
    for path in sorted(folder.iterdir()):
        attach_file(path)


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
