"""RAM equality at every checkpoint, from the diagnostic build's ``colo_ram_digest`` trace.

With ``patches/qemu-7.2-ramcheck/`` each side traces, per checkpoint and RAM block, a digest
of every MiB: the primary with its VM stopped after the secondary loaded the state, the
secondary after loading, before it resumes. Checkpoint 0 is the state COLO starts from; each
side counts from there, again at every COLO start. A session (one ``migrate`` into COLO) is
compared checkpoint by checkpoint; the first checkpoint whose digests differ is a memory
divergence naming the checkpoint, the block and the MiB chunks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from colo_fixtures.core.verdicts import HarnessError, MemoryDivergence
from colo_fixtures.sut.colo_pair import ColoPair
from colo_fixtures.sut.logscan import Finding
from colo_fixtures.sut.trace import RAM_DIGEST_EVENT, TraceRecord, read_trace

RECORD = re.compile(r"^(?P<side>primary|secondary) checkpoint (?P<n>\d+) "
                    r"block (?P<block>\S+) digests (?P<digests>[0-9a-f]*)$")
DIGEST_HEX = 16  # hex digits per MiB chunk
SHOWN_CHUNKS = 8  # differing chunks named in a verdict


@dataclass(frozen=True)
class Digest:
    """One side's digests of one RAM block at one checkpoint (a hex string per MiB)."""

    side: str
    checkpoint: int
    block: str
    chunks: tuple[str, ...]
    timestamp: float


def parse_digest(record: TraceRecord) -> Digest | None:
    """The digest a trace record carries; None for other events and for a line cut short
    (a killed QEMU's last line) whose hex is not a whole number of chunks."""
    if record.name != RAM_DIGEST_EVENT:
        return None
    match = RECORD.match(record.message)
    if not match or len(match["digests"]) % DIGEST_HEX:
        return None
    hexes = match["digests"]
    chunks = tuple(hexes[i:i + DIGEST_HEX] for i in range(0, len(hexes), DIGEST_HEX))
    return Digest(match["side"], int(match["n"]), match["block"], chunks, record.timestamp)


def digests(path: Path, side: str) -> list[Digest]:
    """Every ``side`` digest in trace log ``path``, in the order written."""
    found = (parse_digest(r) for r in read_trace(path))
    return [d for d in found if d is not None and d.side == side]


def split_runs(found: list[Digest]) -> list[list[Digest]]:
    """Digests cut into COLO runs: a new run begins at each checkpoint 0 after a later one."""
    runs: list[list[Digest]] = []
    for digest in found:
        if not runs or (digest.checkpoint == 0 and runs[-1][-1].checkpoint > 0):
            runs.append([])
        runs[-1].append(digest)
    return runs


def run_after(found: list[Digest], started: float) -> list[Digest]:
    """The first COLO run whose checkpoint 0 was traced at or after ``started``."""
    for run in split_runs(found):
        if run[0].checkpoint == 0 and run[0].timestamp >= started:
            return run
    return []


@dataclass(frozen=True)
class Session:
    """One COLO start: the primary's and the secondary's trace logs, and when it began."""

    primary: str
    secondary: str
    primary_log: Path
    secondary_log: Path
    started: float  # wall time just before ``migrate``


@dataclass
class SessionResult:
    """What one session's comparison found."""

    session: Session
    compared: list[int] = field(default_factory=list)  # checkpoints both sides traced
    divergence: str | None = None  # the first difference, None if none
    checkpoint: int | None = None  # where it is


def _chunk_difference(primary: Digest, secondary: Digest) -> str | None:
    """How one block's digests differ, or None if they are equal."""
    if primary.chunks == secondary.chunks:
        return None
    if len(primary.chunks) != len(secondary.chunks):
        return (f"block {primary.block} is {len(primary.chunks)} MiB on the primary, "
                f"{len(secondary.chunks)} MiB on the secondary")
    differ = [i for i, (a, b) in enumerate(zip(primary.chunks, secondary.chunks, strict=True))
              if a != b]
    shown = ", ".join(str(i) for i in differ[:SHOWN_CHUNKS])
    more = f" and {len(differ) - SHOWN_CHUNKS} more" if len(differ) > SHOWN_CHUNKS else ""
    return (f"block {primary.block} differs in {len(differ)} of {len(primary.chunks)} "
            f"MiB chunks: MiB {shown}{more}")


def compare_session(session: Session) -> SessionResult:
    """Compare the session's checkpoints in order; stop at the first that differs."""
    result = SessionResult(session)
    by_side = {}
    for side, log, started in (("primary", session.primary_log, session.started),
                               ("secondary", session.secondary_log, session.started)):
        by_side[side] = {(d.checkpoint, d.block): d for d in run_after(digests(log, side),
                                                                       started)}
    primary, secondary = by_side["primary"], by_side["secondary"]
    last = {side: max((n for n, _ in found), default=-1) for side, found in by_side.items()}
    numbers = sorted({n for n, _ in primary} & {n for n, _ in secondary})
    for n in numbers:
        blocks = sorted({b for m, b in primary if m == n} | {b for m, b in secondary if m == n})
        problems = []
        for block in blocks:
            p, s = primary.get((n, block)), secondary.get((n, block))
            if p is None or s is None:
                lacking = "primary" if p is None else "secondary"
                if n == last[lacking] and any(m < n and b == block for m, b in
                                              by_side[lacking]):
                    return result  # its last checkpoint, still being traced (or killed)
                problems.append(f"block {block} traced only on the "
                                f"{'secondary' if p is None else 'primary'}")
            elif (problem := _chunk_difference(p, s)) is not None:
                problems.append(problem)
        result.compared.append(n)
        if problems:
            result.divergence = "; ".join(problems)
            result.checkpoint = n
            break
    return result


def describe(result: SessionResult) -> str:
    s = result.session
    head = f"{s.primary} → {s.secondary}"
    if result.divergence is None:
        return (f"{head}: RAM equal at {len(result.compared)} checkpoint(s)"
                + (f" (0..{result.compared[-1]})" if result.compared else ""))
    return (f"{head}: RAM differs at checkpoint {result.checkpoint} "
            f"({'the state COLO started from' if result.checkpoint == 0 else 'after loading'}"
            f"): {result.divergence}")


def ram_findings(sessions: Iterable[Session]) -> tuple[list[Finding], list[SessionResult]]:
    """A memory-divergence finding for the first differing checkpoint of each session."""
    findings, results = [], []
    for session in sessions:
        result = compare_session(session)
        results.append(result)
        if result.divergence is not None:
            findings.append(Finding("RAM digest mismatch", session.secondary_log, 0,
                                    describe(result), MemoryDivergence))
    return findings, results


def check_pair(pair: ColoPair, artifacts: Path) -> list[Finding]:
    """Compare both sides' RAM digests at every checkpoint of every COLO start; write what
    was compared to ramcheck.txt. Comparing nothing at all is the harness's failure."""
    sessions = [Session(s.primary.name, s.secondary.name, s.primary.trace_log,
                        s.secondary.trace_log, s.at) for s in pair.starts]
    findings, results = ram_findings(sessions)
    (artifacts / "ramcheck.txt").write_text("".join(describe(r) + "\n" for r in results))
    if sessions and not any(r.compared for r in results):
        findings.append(Finding("RAM check compared nothing", artifacts / "ramcheck.txt", 0,
                                f"{len(sessions)} COLO start(s), no checkpoint traced by "
                                f"both sides ({RAM_DIGEST_EVENT} not enabled?)",
                                HarnessError))
    return findings


def divergence_now(pair: ColoPair, artifacts: Path,
                   after: BaseException) -> MemoryDivergence | None:
    """The RAM check's verdict now, while the QEMUs still run, if the two sides' RAM
    already differs: it explains the failure ``after`` that followed (a guest crash, an
    agent that never came up, a lost write)."""
    for process in pair.processes:
        process.sync_logs()
    found = [f for f in check_pair(pair, artifacts) if f.verdict is MemoryDivergence]
    if not found:
        return None
    then = (str(after).splitlines() or [""])[0][:200]
    return MemoryDivergence(f"{'; '.join(map(str, found[:3]))} (then "
                            f"{type(after).__name__}: {then})")
