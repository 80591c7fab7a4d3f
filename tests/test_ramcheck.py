"""RAM equality at every checkpoint: the digest comparison on trace lines in the diagnostic
build's format, then the real thing. A build with only patch 0001 (the secondary's RAM
diverges under TCG) must fail as a memory divergence at its first checkpoint; the default
build must stay silent over at least 100 compared checkpoints.

Why checkpoint 2 and not 1: both guests first run when COLO starts (the primary from -S, the
secondary from -incoming), with no TLB entry yet, so every page written before checkpoint 1
was marked dirty by its first write and is sent (and restored) correctly. The bug of patch
0002 is that checkpoint 1's bitmap sync leaves those TLB entries writable without tracking:
the writes through them after it are missed, so checkpoint 2 is the first that can differ
(seen: 2 in 8 of 9 runs here, 3 in one, when the guest wrote nothing through such an entry
between the first two).
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from child_pytest import partial_series, run_child

from colo_fixtures.core.verdicts import HarnessError, MemoryDivergence
from colo_fixtures.evidence.ramcheck import (
    Session,
    check_pair,
    compare_session,
    describe,
    digests,
    ram_findings,
    split_runs,
)

ROOT = Path(__file__).resolve().parent.parent
PATCHES = ROOT / "patches" / "qemu-7.2"
MIN_CHECKPOINTS = 100
LATEST_DIVERGENCE = 5  # the guest's memory checker writes all the time: it shows at once


def line(pid: int, at: float, side: str, n: int, block: str, chunks: list[str]) -> str:
    """A colo_ram_digest line as QEMU's log backend prints it."""
    sec, usec = divmod(round(at * 1e6), 1_000_000)
    return (f"{pid}@{sec}.{usec:06d}:colo_ram_digest {side} checkpoint {n} block {block} "
            f"digests {''.join(chunks)}\n")


def chunk(value: int) -> str:
    return f"{value:016x}"


def write_logs(tmp_path: Path, primary: list[str], secondary: list[str]) -> Session:
    p, s = tmp_path / "primary-trace.log", tmp_path / "secondary-trace.log"
    p.write_text("".join(primary))
    s.write_text("".join(secondary))
    return Session("primary", "secondary", p, s, started=100.0)


def test_equal_digests_compare_every_checkpoint(tmp_path: Path):
    ram = [chunk(i) for i in range(4)]
    lines = [line(1, 100.5 + n, "primary", n, "pc.ram", ram) for n in range(3)]
    other = [line(2, 100.4 + n, "secondary", n, "pc.ram", ram) for n in range(3)]
    result = compare_session(write_logs(tmp_path, lines, other))
    assert result.compared == [0, 1, 2] and result.divergence is None
    assert describe(result) == "primary → secondary: RAM equal at 3 checkpoint(s) (0..2)"


def test_first_differing_checkpoint_names_block_and_chunks(tmp_path: Path):
    ram = [chunk(i) for i in range(20)]
    bad = list(ram)
    for i in (3, 7, *range(10, 20)):
        bad[i] = chunk(999 + i)
    primary = [line(1, 101, "primary", 0, "pc.ram", ram), line(1, 102, "primary", 1, "pc.ram", ram),
               line(1, 103, "primary", 2, "pc.ram", ram)]
    secondary = [line(2, 101, "secondary", 0, "pc.ram", ram),
                 line(2, 102, "secondary", 1, "pc.ram", bad),
                 line(2, 103, "secondary", 2, "pc.ram", ram)]
    findings, results = ram_findings([write_logs(tmp_path, primary, secondary)])
    assert results[0].checkpoint == 1 and results[0].compared == [0, 1]
    assert len(findings) == 1 and findings[0].verdict is MemoryDivergence
    assert ("RAM differs at checkpoint 1 (after loading): block pc.ram differs in 12 of 20 "
            "MiB chunks: MiB 3, 7, 10, 11, 12, 13, 14, 15 and 4 more") in findings[0].line


def test_block_on_one_side_only_and_size_mismatch_are_divergences(tmp_path: Path):
    primary = [line(1, 101, "primary", 0, "pc.ram", [chunk(1)]),
               line(1, 101, "primary", 0, "vga.vram", [chunk(2)])]
    secondary = [line(2, 101, "secondary", 0, "pc.ram", [chunk(1), chunk(5)])]
    result = compare_session(write_logs(tmp_path, primary, secondary))
    assert result.checkpoint == 0
    assert result.divergence == ("block pc.ram is 1 MiB on the primary, 2 MiB on the "
                                 "secondary; block vga.vram traced only on the primary")


def test_checkpoint_only_one_side_reached_is_not_compared(tmp_path: Path):
    """A side killed in a checkpoint traced it on one side only: nothing to compare."""
    ram = [chunk(1)]
    primary = [line(1, 101, "primary", n, "pc.ram", ram) for n in range(2)]
    secondary = [line(2, 101, "secondary", n, "pc.ram", ram) for n in range(3)]
    assert compare_session(write_logs(tmp_path, primary, secondary)).compared == [0, 1]


def test_cut_short_line_is_ignored(tmp_path: Path):
    log = tmp_path / "t.log"
    log.write_text(line(1, 101, "primary", 0, "pc.ram", [chunk(1), chunk(2)])
                   + line(1, 102, "primary", 1, "pc.ram", [chunk(1), chunk(2)])[:-9])
    assert [d.checkpoint for d in digests(log, "primary")] == [0]


def test_runs_split_at_each_colo_start_and_session_takes_its_own(tmp_path: Path):
    """A survivor that became primary again traces a new run from checkpoint 0; a session
    compares the run that began after its ``migrate``, against its own secondary."""
    old, new = [chunk(1)], [chunk(2)]
    primary = ([line(1, 101 + n, "primary", n, "pc.ram", old) for n in range(3)]
               + [line(1, 201 + n, "primary", n, "pc.ram", new) for n in range(2)])
    write_path = tmp_path / "p.log"
    write_path.write_text("".join(primary))
    assert [len(r) for r in split_runs(digests(write_path, "primary"))] == [3, 2]
    secondary = tmp_path / "s2.log"
    secondary.write_text("".join(line(3, 200.5 + n, "secondary", n, "pc.ram", new)
                                 for n in range(2)))
    result = compare_session(Session("primary", "secondary2", write_path, secondary, 200.0))
    assert result.compared == [0, 1] and result.divergence is None


def test_compared_nothing_is_the_harness_failure(tmp_path: Path):
    """A COLO start with no digest on either side (the event was off): the check did not
    run, which is the harness's failure, not a pass."""
    start = SimpleNamespace(primary=SimpleNamespace(name="primary", trace_log=tmp_path / "p.log"),
                            secondary=SimpleNamespace(name="secondary",
                                                      trace_log=tmp_path / "s.log"), at=0.0)
    findings = check_pair(SimpleNamespace(starts=[start]), tmp_path)  # type: ignore[arg-type]
    assert [f.verdict for f in findings] == [HarnessError]
    assert (tmp_path / "ramcheck.txt").read_text() == \
        "primary → secondary: RAM equal at 0 checkpoint(s)\n"


def test_a_last_checkpoint_traced_in_part_is_not_compared(tmp_path: Path):
    """Read while a side still traces its last checkpoint (or was killed inside it), that
    checkpoint lacks blocks on one side: not compared, never a divergence."""
    ram = [chunk(i) for i in range(4)]
    primary = [line(1, 101 + n, "primary", n, block, ram)
               for n in range(3) for block in ("pc.ram", "pc.bios")]
    secondary = [line(2, 101 + n, "secondary", n, block, ram)
                 for n in range(3) for block in ("pc.ram", "pc.bios")][:-1]
    result = compare_session(write_logs(tmp_path, primary, secondary))
    assert result.compared == [0, 1] and result.divergence is None


# ---------------------------------------------------------------------------- real QEMU

def run_suite(tmp_path: Path, target: str, *options: str, timeout: float
              ) -> tuple[int | None, str, float]:
    return run_child(tmp_path, target, "--colo-ramcheck", *options, timeout=timeout)


def compared_counts(report_dir: Path) -> list[int]:
    """Checkpoints compared per COLO start, from every test's ramcheck.txt."""
    counts = []
    for text in (p.read_text() for p in report_dir.rglob("ramcheck.txt")):
        counts += [int(m) for m in re.findall(r"RAM equal at (\d+) checkpoint", text)]
    return counts


@pytest.mark.timeout(1800 + 120)  # the child run builds the diagnostic QEMU the first time
def test_default_build_is_silent_over_100_checkpoints(tmp_path: Path):
    rc, output, seconds = run_suite(tmp_path, "suites/test_checkpoint.py", timeout=1800)
    assert rc == 0, f"the checkpoint suite failed with --colo-ramcheck (rc {rc}):\n" \
                    f"{output[-3000:]}"
    counts = compared_counts(tmp_path / "reports")
    assert sum(counts) >= MIN_CHECKPOINTS, \
        f"only {sum(counts)} checkpoints compared ({counts}): too few to call it silent"
    print(f"RAM equal at {sum(counts)} checkpoints in {len(counts)} COLO starts "
          f"({seconds:.0f}s)")


@pytest.mark.timeout(1800 + 120)
def test_build_with_only_the_first_fix_diverges_from_checkpoint_2(tmp_path: Path):
    only_first = partial_series(tmp_path, 1)
    rc, output, seconds = run_suite(
        tmp_path, "suites/test_checkpoint.py::test_checkpoint_pause_and_integrity",
        "--qemu-patches", str(only_first), timeout=1800)
    assert rc == 1, f"divergence went unnoticed (rc {rc}):\n{output[-3000:]}"
    texts = [p.read_text() for p in (tmp_path / "reports").rglob("ramcheck.txt")]
    assert texts, "the failed run wrote no ramcheck.txt"
    found = re.search(r"RAM differs at checkpoint (\d+) \(after loading\): block pc\.ram", texts[0])
    assert found, texts[0]
    assert 2 <= int(found[1]) <= LATEST_DIVERGENCE, texts[0]
    # the divergence is the verdict, before the secondary's guest crash it leads to
    assert re.search(r"MemoryDivergence: (log analyzer: )?RAM digest mismatch", output), \
        output[-3000:]
    print(f"{texts[0].strip()} ({seconds:.0f}s)")
