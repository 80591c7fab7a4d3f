"""The two TCG bugs of QEMU 7.2's COLO are caught by the suites, each with a diagnosis.

These run the real checkpoint suite in a child pytest against a QEMU that lacks fixes:
Debian's stock binary (no fix: the first checkpoint deadlocks, or now and then the
secondary's guest crashes first) and a build with only patch 0001 (the secondary's memory
diverges). Both must fail, loudly and in bounded time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from child_pytest import partial_series, run_child

ROOT = Path(__file__).resolve().parent.parent
PATCHES = ROOT / "patches" / "qemu-7.2"
STOCK_QEMU = Path("/usr/bin/qemu-system-x86_64")
# What the harness says of a crashed or diverged guest (logscan's labels, the suite's memory
# check): a QEMU that merely exits is not evidence of either.
DIVERGENCE_SIGNS = ("guest memory divergence", "memory check failed", "guest kernel panic",
                    "guest kernel BUG", "guest general protection fault", "guest oops",
                    "guest agent died")


def run_suite(tmp_path: Path, test: str, *options: str, timeout: float
              ) -> tuple[int | None, str, float]:
    return run_child(tmp_path, f"suites/test_checkpoint.py::{test}", *options, timeout=timeout)


DEADLOCK_ATTEMPTS = 3


@pytest.mark.skipif(not STOCK_QEMU.exists(), reason="Debian's qemu-system-x86 is not installed")
@pytest.mark.timeout(DEADLOCK_ATTEMPTS * 600 + 120)  # the child runs' own limits, and more
def test_stock_qemu_deadlock_is_diagnosed(tmp_path: Path):
    """Stock QEMU has both bugs: each run must fail with one of the two diagnoses (never
    pass, never hang). The deadlock usually comes first; when the secondary's diverged
    memory crashes its guest before the first checkpoint completes, run again."""
    outcomes = []
    for attempt in range(1, DEADLOCK_ATTEMPTS + 1):
        rc, output, seconds = run_suite(
            tmp_path / str(attempt), "test_periodic_checkpoints_follow_delay[1000]",
            "--qemu-binary", str(STOCK_QEMU), timeout=600)
        assert rc == 1, f"the suite did not fail against stock QEMU (rc {rc}):\n{output[-3000:]}"
        if "QMP unresponsive" in output and "TCG checkpoint deadlock" in output:
            print(f"stock QEMU deadlock diagnosed in {seconds:.0f}s (attempt {attempt}; "
                  f"before: {outcomes or 'none'})")
            return
        assert "guest failed" in output and any(s in output for s in DIVERGENCE_SIGNS), \
            f"stock QEMU failed without either diagnosis:\n{output[-3000:]}"
        outcomes.append(f"secondary guest crash after {seconds:.0f}s")
    pytest.fail(f"no deadlock diagnosis in {DEADLOCK_ATTEMPTS} runs: {outcomes}")


@pytest.mark.timeout(1800 + 120)  # the child run builds QEMU (about 6.5 min) the first time
def test_build_with_only_the_first_fix_is_caught(tmp_path: Path):
    only_first = partial_series(tmp_path, 1)
    rc, output, seconds = run_suite(
        tmp_path, "test_checkpoint_pause_and_integrity", "--qemu-patches", str(only_first),
        timeout=1800)
    assert rc == 1, f"divergence went unnoticed (rc {rc}):\n{output[-3000:]}"
    assert any(sign in output for sign in DIVERGENCE_SIGNS), output[-3000:]
    print(f"divergence with only the first fix caught in {seconds:.0f}s")
