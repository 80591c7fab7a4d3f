"""Failover and resume under running clients: nothing acknowledged is lost.

Each test starts a pair, runs a client workload (``--colo-clients`` clients, each over one
long-lived TCP connection doing writes and reads of its own keys), injects a fault through
the nemesis, fails over as the upstream recipe says, and lets the checker judge the
history against what the survivor holds: the keys it serves and its disk's write log,
where every acknowledged write must be its own record. After every resume the new
secondary's disk must equal the primary's. Failover times (fault → COLO_EXIT on the
survivor, → failover commands done, → first ok client operation) and client downtime go
into ``failover.json`` per test.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import allure
import pytest

from colo_fixtures.core.verdicts import (
    ConnectionBroken,
    SpuriousMiscompare,
    require_memory_clean,
)
from colo_fixtures.evidence.consistency import compare_replicas, survivor_log
from colo_fixtures.evidence.miscompare import miscompares
from colo_fixtures.evidence.release_probe import check_output_compared
from colo_fixtures.workload.checker import CheckResult, check

pytestmark = [pytest.mark.colo, pytest.mark.failover, allure.epic("COLO"),
              allure.feature("failover")]

DELAY_MS = 2000
QUIET_DELAY_MS = 20000  # no periodic checkpoint while a new connection opens
# Over SSH the harness sees the primary's STOP event 50-250 ms late (measured here), and a
# checkpoint pauses the VM for 50-70 ms: a kill reacting to STOP from here lands after it.
# A side's VM stopping for a checkpoint, as its own trace log says it.
CHECKPOINT_STOP = "colo_vm_state_change Change 'run' => 'stop'"
IDLE_AFTER_RESUME_S = 0.3  # an idle kill comes this long after a checkpoint resumed
IDLE_TRIES = 5  # checkpoints waited out for an idle moment before SpuriousMiscompare
HEARTBEAT_S = 0.5  # the harness's QMP heartbeat period
HEARTBEAT_MISSES = 3  # unanswered heartbeats before a peer is declared hung


def start_with_traffic(start_colo, ops: int = 20, clients: int | None = None):
    """A pair and a running workload (``--colo-clients`` clients unless ``clients``), each
    client past ``ops`` ok operations."""
    colo = start_colo(DELAY_MS)
    colo.wait_agent_ready()
    workload = colo.workload(clients)
    workload.wait_ok(ops, timeout=60)
    return colo, workload


def kill_during_checkpoint(colo, process) -> tuple[float, bool]:
    """SIGKILL ``process`` the moment its own VM stops for a checkpoint (its trace's
    run => stop), by a trigger on its host.

    Returns the fault time and whether it landed inside a checkpoint (``in_checkpoint``).
    """
    sides = colo.pair.sides
    at = colo.faults.kill_on_trace(process, CHECKPOINT_STOP, DELAY_MS / 1000 * 3 + 10,
                                   "during a checkpoint")
    return at, in_checkpoint(colo, at, sides)


def in_checkpoint(colo, at: float, sides) -> bool:
    """Whether wall time ``at`` fell inside a checkpoint: inside one of the primary's trace
    (requested, not resumed yet), or while a side's own trace shows its VM stopped for one.
    The primary traces a checkpoint request after sending it: the secondary has been seen
    to stop for it 7 ms before that trace line, so each side's own state counts too."""
    return any(c.requested <= at and (c.resumed is None or at < c.resumed)
               for c in colo.pair.checkpoints()) or any(stopped_at(side, at) for side in sides)


def stopped_at(process, at: float) -> bool:
    """Whether ``process``'s own trace shows its VM stopped for a checkpoint at ``at``."""
    changes = [r for r in process.trace_records()
               if r.name == "colo_vm_state_change" and r.timestamp <= at]
    return bool(changes) and changes[-1].message.endswith("'run' => 'stop'")


def kill_while_idle(colo, process) -> tuple[float, bool]:
    """SIGKILL ``process`` while both VMs run: a moment after the primary resumed from a
    checkpoint, long before the next one is due, and no checkpoint asked for since (up to
    IDLE_TRIES checkpoints are waited out for one; SpuriousMiscompare if none leaves such a
    moment). Returns the fault time and whether it nevertheless fell inside a checkpoint
    (colo-compare can ask for one at any moment)."""
    pair = colo.pair
    gaps: list[float] = []
    for _ in range(IDLE_TRIES):
        resumed = len([c for c in pair.checkpoints() if c.resumed is not None])
        last = pair.wait_checkpoints(resumed + 1, timeout=DELAY_MS / 1000 * 2 + 30)[-1]
        time.sleep(IDLE_AFTER_RESUME_S)
        assert last.resumed is not None
        since = [c for c in pair.checkpoints() if c.requested > last.resumed]
        if not since:
            at = colo.faults.kill(process, "while idle")
            return at, in_checkpoint(colo, at, pair.sides)
        gaps.append(since[0].requested - last.resumed)
    raise SpuriousMiscompare(
        f"no idle moment to kill in: colo-compare asked for a checkpoint "
        f"{', '.join(f'{g * 1000:.0f}' for g in gaps)} ms after each of the last "
        f"{IDLE_TRIES} resumes (x-checkpoint-delay {DELAY_MS} ms); the client's replies wait "
        "for those checkpoints (see the primary's trace: colo_compare_ip_info before each "
        "request)")


def fail_over(colo, victim: str, fault: str) -> dict[str, Any]:
    """Inject ``fault`` (kill | kill-while-idle | kill-in-checkpoint | hang) into ``victim``
    and fail over."""
    pair = colo.pair
    process = pair.primary if victim == "primary" else pair.secondary
    figures: dict[str, Any] = {"victim": victim, "fault": fault}
    if fault == "kill":
        at = colo.faults.kill(process)
    elif fault == "kill-while-idle":
        at, figures["in_checkpoint"] = kill_while_idle(colo, process)
    elif fault == "kill-in-checkpoint":
        at, figures["in_checkpoint"] = kill_during_checkpoint(colo, process)
    elif fault == "hang":
        at = colo.faults.stop(process)
        declared = pair.wait_unresponsive(process, HEARTBEAT_S, HEARTBEAT_MISSES)
        figures["hang_detected_s"] = declared - at
        if victim == "secondary":
            # Fence first: the primary's drive_del would wait for ever on the NBD requests
            # a frozen secondary never answers.
            colo.faults.kill(process, "fenced before the failover: declared hung")
    else:
        raise ValueError(f"unknown fault {fault!r}")
    if victim == "primary":
        # A frozen primary is taken over as it is (it holds nothing the secondary needs)...
        times = pair.failover_to_secondary(since=at)
        if fault == "hang":  # ... and fenced after, so that it never runs on beside it
            colo.faults.kill(process, "fenced after the takeover: declared hung")
    else:
        times = pair.failover_to_primary(since=at)
    colo.faults.mark("failover-done", times.survivor)
    figures.update(times.since(at))
    return figures


def client_figures(result, fault: int) -> dict[str, Any]:
    """What the client saw of fault number ``fault`` (in the history's order): its first ok
    operation after the fault, and the gap between ok operations around it."""
    around = result.downtime["around_faults"]
    seen = around[fault] if around else {}
    return {"first_ok_after_s": seen.get("first_ok_after_s"),
            "client_downtime_s": seen.get("gap_s")}


def survivor_memcheck(colo, figures: dict[str, Any]) -> None:
    """The serving VM's own memory check (the agent's MEM), recorded, then asserted clean."""
    mem = figures["survivor_memcheck"] = colo.agent().mem()
    require_memory_clean(mem, "the survivor")


def check_survivor(colo, scratch: Path, **options: Any) -> CheckResult:
    """The history against what the VM serving alone holds: every written key read back
    through its agent, then its disk's whole write log (a live export), read after the keys,
    so every write acknowledged before the reads began must be in both."""
    final, final_at = colo.final_state()
    log = {r.seq: (r.key, r.value) for r in survivor_log(colo.pair, scratch)}
    return check(colo.history, final, final_at=final_at, log=log, **options)


def verify_survivor(colo, workload, figures: dict[str, Any], scratch: Path, fault: int) -> None:
    """After fault number ``fault``: the client goes on, the survivor holds every write it
    saw acknowledged (keys and disk log), and its memory check is clean."""
    workload.wait_ok(5, timeout=60, since=colo.history.ops[-1].time)
    snapshot = check_survivor(colo, scratch)
    figures.update(client_figures(snapshot, fault), history_valid=snapshot.valid)
    snapshot.assert_valid(f"after failover {fault + 1}")
    survivor_memcheck(colo, figures)


def judge(colo, workload, figures: dict[str, Any], scratch: Path,
          name: str = "failover") -> None:
    """Let the client run on, stop it, check the history against the survivor, report."""
    workload.wait_ok(20, timeout=60, since=colo.history.ops[-1].time)
    workload.stop()
    result = check_survivor(colo, scratch, require_connection_survives=True)
    figures.update(client_figures(result, 0), connection=result.connection,
                   operations=result.stats)
    try:
        survivor_memcheck(colo, figures)
    finally:
        colo.write_metrics(name, figures)
    allure.attach(result.summary(), "checker", allure.attachment_type.TEXT)
    result.assert_valid()
    assert colo.pair.primary.qmp("query-status")["status"] == "running"


@allure.story("failover after SIGKILL while idle")
@pytest.mark.parametrize("victim", ["primary", "secondary"])
def test_failover_after_kill(start_colo, victim, tmp_path):
    # One client: concurrent clients' replies differ between the replicas (the agent numbers
    # their writes in the order its threads take them), so colo-compare checkpoints after
    # nearly every reply and leaves no idle moment to kill in.
    colo, workload = start_with_traffic(start_colo, clients=1)
    figures = fail_over(colo, victim, "kill-while-idle")
    assert figures["colo_exit_s"] is not None, "the survivor emitted no COLO_EXIT"
    judge(colo, workload, figures, tmp_path)
    assert not figures["in_checkpoint"], (
        "the kill timed between checkpoints fell inside one (colo-compare asked for a "
        "checkpoint in that moment): this run did not test an idle failover")


@allure.story("failover after SIGKILL during a checkpoint")
@pytest.mark.parametrize("victim", ["primary", "secondary"])
def test_failover_during_checkpoint(start_colo, victim, tmp_path):
    colo, workload = start_with_traffic(start_colo)
    figures = fail_over(colo, victim, "kill-in-checkpoint")
    judge(colo, workload, figures, tmp_path)
    assert figures["in_checkpoint"], "the kill missed the checkpoint it was timed on"


@allure.story("a hung peer is detected by the heartbeat and failed over")
@pytest.mark.parametrize("victim", ["primary", "secondary"])
def test_failover_after_hang(start_colo, victim, tmp_path):
    colo, workload = start_with_traffic(start_colo)
    figures = fail_over(colo, victim, "hang")
    limit = HEARTBEAT_S * (HEARTBEAT_MISSES + 2) * 2
    assert figures["hang_detected_s"] < limit, f"hang detected late: {figures}"
    judge(colo, workload, figures, tmp_path)


def resume_and_verify(colo, workload, cycle: int, scratch: Path) -> dict[str, Any]:
    """Resume replication, wait for checkpoints and for the client to go on, check that the
    new secondary's output reaches colo-compare, then, in a quiet window of the client, that
    its disk equals the primary's (DiskDivergence naming the differing offsets)."""
    pair = colo.pair
    resumed = pair.resume(DELAY_MS)
    colo.faults.mark("resume-done", pair.primary.name)
    pair.wait_checkpoints(len(pair.checkpoints()) + 2, timeout=DELAY_MS / 1000 * 4 + 30)
    workload.wait_ok(10, timeout=60, since=colo.history.ops[-1].time)
    with workload.hold():  # no client traffic: its checkpoints would blur the probe
        check_output_compared(colo.agent(), pair)  # the new secondary's output is compared
        comparison = compare_replicas(pair, scratch)
    comparison.require_identical(f"after resume {cycle}, the primary's and the new "
                                 "secondary's disks")
    return {"cycle": cycle, **resumed, "disks_identical": comparison.identical,
            "disk_compare_s": comparison.window_s}


@allure.story("resume replication after failover")
def test_resume_replication(start_colo, tmp_path):
    colo, workload = start_with_traffic(start_colo)
    figures = fail_over(colo, "primary", "kill")
    try:
        verify_survivor(colo, workload, figures, tmp_path / "survivor", 0)
        figures["resume"] = resume_and_verify(colo, workload, 1, tmp_path / "compare")
        workload.stop()
        result = check_survivor(colo, tmp_path / "survivor", require_connection_survives=True)
        figures.update(connection=result.connection)
        survivor_memcheck(colo, figures)
    finally:
        colo.write_metrics("resume", figures)
    result.assert_valid()
    assert colo.pair.colo_modes() == ("primary", "secondary")


def traffic_around_checkpoint(start_colo, checkpointed: bool):
    """A pair and a workload whose connection a checkpoint has (or has not yet) covered.

    filter-rewriter keeps a sequence-number offset for a connection opened since the last
    checkpoint and drops it at the next one; the two cases take different paths.
    """
    colo = start_colo(DELAY_MS)
    colo.wait_agent_ready()
    pair = colo.pair
    if not checkpointed:
        # Open right after a checkpoint and keep the next periodic one far away: raising
        # x-checkpoint-delay forces a checkpoint now and the next one only in QUIET_DELAY_MS
        # (a 2 s period let a slow lab, over SSH, checkpoint the connection while it opened).
        # The first cycle's fault comes before it; resume sets DELAY_MS again.
        count = len(pair.checkpoints())
        pair.set_checkpoint_delay(QUIET_DELAY_MS)
        pair.wait_checkpoints(count + 1, timeout=DELAY_MS / 1000 * 2 + 30)
    # One client when no checkpoint may cover it: concurrent clients make colo-compare
    # checkpoint at once (see test_failover_after_kill).
    workload = colo.workload(None if checkpointed else 1)
    workload.wait_ok(5, timeout=60)
    opened = colo.history.ops[0].wall
    if checkpointed:
        pair.wait_checkpoints(len(pair.checkpoints()) + 1, timeout=DELAY_MS / 1000 * 2 + 30)
        workload.wait_ok(10, timeout=60)
    covering = [c.requested - opened for c in pair.checkpoints() if c.requested > opened]
    if covering and not checkpointed:
        asked = miscompares(pair.primary.trace_records(), opened)
        if asked:  # one client's identical replies: only a wrong comparison asks for these
            raise SpuriousMiscompare(
                f"colo-compare asked for {len(asked)} checkpoint(s) within "
                f"{asked[-1].requested - opened:.3f} s of a TCP connection opening (one client, "
                f"x-checkpoint-delay {QUIET_DELAY_MS} ms), each right after judging its "
                "replies different ("
                + "; ".join(m.describe(opened) for m in asked[:3]) + "): for a connection "
                "opened since the last checkpoint filter-rewriter must shift the secondary's "
                "sequence numbers to the primary's")
    assert bool(covering) == checkpointed, (
        f"wanted a connection checkpointed={checkpointed}, but "
        + (f"checkpoints came {', '.join(f'{t:+.3f}' for t in covering)} s after it opened "
           f"with x-checkpoint-delay {QUIET_DELAY_MS} ms" if covering
           else "no checkpoint came after it opened"))
    return colo, workload


@allure.story("repeated failover and resume cycles, alternating sides")
@pytest.mark.slow  # --colo-cycles: 3 by default, 16 in tools/nightly
@pytest.mark.parametrize("connection", ["checkpointed", "opened-since-checkpoint"])
def test_repeated_cycles(start_colo, colo_settings, connection, tmp_path):
    cycles = colo_settings.colo_cycles
    colo, workload = traffic_around_checkpoint(start_colo, connection == "checkpointed")
    reports: list[dict[str, Any]] = []

    def record(**extra: Any) -> None:  # after every cycle: a failing run keeps its count
        colo.write_metrics("cycles", {
            "cycles": reports, "wanted": cycles,
            "reached": sum(1 for r in reports if r.get("history_valid")), **extra})

    for cycle in range(1, cycles + 1):
        victim = "primary" if cycle % 2 else "secondary"
        try:
            figures = fail_over(colo, victim, "kill")
            reports.append(figures)
            # The checker passes after every failover, not only at the end; the client runs
            # on meanwhile, so writes acknowledged after the final reads began are concurrent.
            verify_survivor(colo, workload, figures, tmp_path / "survivor", cycle - 1)
            figures["resume"] = resume_and_verify(colo, workload, cycle, tmp_path / "compare")
        except Exception as exc:  # the verdict propagates as it is, its cycle recorded
            record(failed=f"cycle {cycle} ({victim} killed): {str(exc).splitlines()[0]}")
            raise
        record()
    workload.stop()
    result = check_survivor(colo, tmp_path / "survivor")
    record(connection=result.connection, downtime=result.downtime)
    allure.attach(result.summary(), "checker", allure.attachment_type.TEXT)
    result.assert_valid()
    if not result.connection["survived"]:
        raise ConnectionBroken(
            "a long-lived client connection did not survive the cycles: "
            + "; ".join(f"{b['client']} conn {b['conn']} broke at {b['at']:+.3f}s ({b['error']})"
                        for b in result.connection["breaks"]))
