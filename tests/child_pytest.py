"""A suite test run in a child pytest, against another QEMU (a partial series, a mutant,
stock Debian), and the partial series such runs build: shared by the tests that prove the
suites catch a bug."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from colo_fixtures.sut.build import patch_series

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "patches" / "qemu-7.2"
KEPT = ("COLO_CACHE_DIR",)  # a child of a run with its own cache uses that cache


def partial_series(folder: Path, count: int) -> Path:
    """A patch folder holding the shipped series' first ``count`` patches: the build
    without the later fixes."""
    series = folder / "patches"
    series.mkdir(parents=True)
    first = patch_series(SHIPPED)[:count]
    for patch in first:
        shutil.copy(patch, series / patch.name)
    (series / "series").write_text("".join(p.name + "\n" for p in first))
    return series


def run_child(folder: Path, target: str, *options: str, timeout: float
              ) -> tuple[int | None, str, float]:
    """``pytest target`` under TCG with its reports in ``folder``; its exit status (None:
    it ran past ``timeout``), its output (also in child-pytest.log) and its seconds. A
    child past its time gets SIGTERM (its teardowns stop its QEMUs and lab), then SIGKILL.
    It gets none of this run's COLO_ or PYTEST_ variables but the cache's place."""
    folder.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pytest", target, "-p", "no:cacheprovider", "-q", "--accel",
            "tcg", "--report-dir", str(folder / "reports"), *options]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("COLO_", "PYTEST_")) or k in KEPT}
    log = folder / "child-pytest.log"
    started = time.monotonic()
    with log.open("w") as out:
        child = subprocess.Popen(argv, cwd=ROOT, env=env, text=True, stdout=out,
                                 stderr=subprocess.STDOUT)
        try:
            returncode: int | None = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            stop(child)
    return returncode, log.read_text(errors="replace"), time.monotonic() - started


def stop(child: subprocess.Popen) -> None:
    """End a child pytest still running: SIGTERM lets its teardowns stop its QEMUs and
    lab; SIGKILL after 180 s."""
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(timeout=180)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
