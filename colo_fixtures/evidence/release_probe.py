"""Are client replies released by comparison? A COLO health invariant, probed with requests.

colo-compare holds each of the primary's packets until the secondary's matching packet
arrives and releases it then; a packet it never gets a match for is released only when the
next checkpoint flushes its queues (the periodic one, or the one its own timeout forces).
So when the secondary's output never reaches colo-compare (its NIC frozen, a redirector
dead), every reply waits for a checkpoint and is released inside that checkpoint's pause,
while the primary's guest keeps serving: nothing else shows it until that secondary takes
over with a dead NIC.

The probe sends deterministic requests (a GET of a key no workload writes: both guests
answer byte for byte the same) one after another and asks, of each reply, whether it came
inside a checkpoint the request was already waiting for. A healthy reply comes within
milliseconds, from a running primary; it lands in such a window only if a checkpoint began
in the millisecond before the primary sent it. Most probes landing there is the invariant
broken. Which way it broke is in the primary's trace: checkpoints colo-compare asked for
right after judging two replies different (``evidence.miscompare``) mean it compares and
judges identical replies unequal (SpuriousMiscompare); other checkpoints mean the
secondary's replies never reached it (SecondaryOutputLost).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from colo_fixtures.core.events import phase
from colo_fixtures.core.verdicts import SecondaryOutputLost, SpuriousMiscompare
from colo_fixtures.evidence.miscompare import Miscompare, miscompares
from colo_fixtures.sut.colo_pair import ColoPair
from colo_fixtures.sut.guest.agent import AgentClient
from colo_fixtures.sut.trace import Checkpoint, checkpoints

log = logging.getLogger("colo.probe")

PROBE_KEY = "release_probe"  # no workload writes it: GET answers the same on both sides
PROBES = 5
RELEASE_SLACK_S = 0.005  # from the flush (before the primary resumes) to the client


@dataclass(frozen=True)
class Probe:
    """One request's wall-clock send and reply times."""

    sent: float
    replied: float

    @property
    def latency(self) -> float:
        return self.replied - self.sent


def released_by(probe: Probe, points: list[Checkpoint]) -> Checkpoint | None:
    """The checkpoint that released ``probe``'s reply: one requested while the request
    waited, whose pause the reply came in (before the primary resumed, plus slack)."""
    for point in points:
        end = point.resumed if point.resumed is not None else float("inf")
        if probe.sent <= point.requested <= probe.replied <= end + RELEASE_SLACK_S:
            return point
    return None


def probe_replies(agent: AgentClient, count: int = PROBES) -> list[Probe]:
    """``count`` deterministic round trips, one after another."""
    probes = []
    for _ in range(count):
        sent = time.time()
        agent.get(PROBE_KEY)
        probes.append(Probe(sent, time.time()))
    return probes


def check_released_by_compare(probes: list[Probe], points: list[Checkpoint],
                              secondary: str, asked: list[Miscompare] | None = None,
                              ) -> list[Checkpoint | None]:
    """Raise if most probes' replies were released by a checkpoint: SpuriousMiscompare if
    colo-compare asked for most of those after an unmatched comparison (``asked``),
    SecondaryOutputLost otherwise; return, per probe, the checkpoint that released it
    (None: released by comparison).

    Most, not all: a reply the flush released reaches the client within milliseconds of
    the primary's resume, where a healthy reply to a request that came during the pause
    lands too, so one probe can be judged either way (seen: 1 of 5 judged compared, with
    latencies 316, 285, 294, 297, 300 ms at x-checkpoint-delay 300). A healthy probe waits
    for a checkpoint only if one begins in the few milliseconds it takes."""
    releases = [released_by(p, points) for p in probes]
    by_checkpoint = sum(1 for r in releases if r is not None)
    latencies = ", ".join(f"{p.latency * 1000:.0f}" for p in probes)
    log.info("release probe: %d of %d replies released by comparison (latencies %s ms)",
             len(probes) - by_checkpoint, len(probes), latencies)
    if probes and by_checkpoint * 2 > len(probes):
        requests = {round(m.requested, 6): m for m in asked or []}
        unmatched = [requests[round(r.requested, 6)] for r in releases
                     if r is not None and round(r.requested, 6) in requests]
        if unmatched and len(unmatched) * 2 > by_checkpoint:
            sizes = "; ".join(f"primary {m.primary_bytes} / secondary {m.secondary_bytes} "
                              "bytes" for m in unmatched[:3])
            raise SpuriousMiscompare(
                f"{by_checkpoint} of {len(probes)} deterministic replies were released by a "
                f"checkpoint (latencies {latencies} ms), {len(unmatched)} of them asked for "
                f"by colo-compare right after judging the two sides' replies different "
                f"({sizes}): both guests send the same reply, so colo-compare judges equal "
                "replies unequal")
        raise SecondaryOutputLost(
            f"{by_checkpoint} of {len(probes)} deterministic replies were released by a "
            f"checkpoint (latencies {latencies} ms), not by colo-compare: {secondary}'s "
            "output does not reach colo-compare (its NIC or its redirector is dead), "
            "although the primary serves")
    return releases


def check_output_compared(agent: AgentClient, pair: ColoPair,
                          count: int = PROBES) -> list[Checkpoint | None]:
    """Send ``count`` probes through ``agent``, then judge them against the primary's
    checkpoints (read after the last reply, so that every release is in them)."""
    with phase("check: deterministic replies are released by colo-compare"):
        probes = probe_replies(agent, count)
        records = pair.primary.trace_records()  # read after the last reply: every release
        points = checkpoints(records)
        asked = miscompares(records, probes[0].sent)
        return check_released_by_compare(probes, points, pair.secondary.name, asked)
