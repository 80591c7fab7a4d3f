"""The checker: judges a client history against what the surviving VM holds.

Every acknowledged write must be there, no read may go back in time, and nothing that failed
or was never written may show. A violation is its typed verdict (lost write, stale read,
failed write visible).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from colo_fixtures.core.events import phase
from colo_fixtures.core.verdicts import (
    ConnectionBroken,
    FailedWriteVisible,
    LostWrite,
    StaleRead,
    Verdict,
)
from colo_fixtures.workload.history import COMPLETIONS, NOT_SENT, STOPPED, UNKNOWN, History, Op


@dataclass(frozen=True)
class CheckResult:
    """The checker's verdict on one history."""

    valid: bool
    errors: list[str]  # every error below, gravest first
    lost_writes: list[str]
    stale_reads: list[str]  # stale and phantom reads
    visible: list[str]  # failed writes or never-written values seen
    connection: dict[str, Any]
    downtime: dict[str, Any]
    stats: dict[str, dict[str, int]]
    connection_error: str | None = None  # a client's long-lived connection did not survive

    def verdict(self) -> Verdict | None:
        """The typed verdict of an invalid history (its gravest kind), else None."""
        for errors, kind in ((self.lost_writes, LostWrite), (self.stale_reads, StaleRead),
                             (self.visible, FailedWriteVisible)):
            if errors:
                return kind(self.summary())
        if self.connection_error is not None:
            return ConnectionBroken(self.summary())
        return None

    def assert_valid(self, context: str = "") -> None:
        """Raise the typed verdict of an invalid history (``context`` leads its message)."""
        verdict = self.verdict()
        if verdict is not None:
            raise type(verdict)(f"{context}{': ' if context else ''}{verdict}")

    def summary(self) -> str:
        """A few lines for a report: verdict, counts, connection, downtime, first errors."""
        lines = [f"history {'valid' if self.valid else 'INVALID'}: "
                 + ", ".join(f"{f} {counts}" for f, counts in self.stats.items())]
        lines.append(f"connection survived: {self.connection['survived']}"
                     + "".join(f"; {b['client']} conn {b['conn']} broke at {b['at']:+.3f}s: "
                               f"{b['error']}"
                               for b in self.connection["breaks"]))
        lines.append(f"longest gap between ok ops: {self.downtime['max_gap_s']}s")
        for fault in self.downtime["around_faults"]:
            if fault["first_ok_after_s"] is None:
                lines.append(f"{fault['fault']} at {fault['at']:+.3f}s: no ok op after it")
            else:
                lines.append(f"{fault['fault']} at {fault['at']:+.3f}s: gap {fault['gap_s']}s, "
                             f"first ok {fault['first_ok_after_s']}s after")
        lines += self.errors[:10]
        if len(self.errors) > 10:
            lines.append(f"... and {len(self.errors) - 10} more errors")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Version = tuple[int, int | None]  # (position of the write among the key's writes, agent seq)


@dataclass
class _KeyState:
    """Per key: writes in invocation order and the newest version ok reads have shown."""

    writes: list[tuple[Op, Op | None]] = field(default_factory=list)
    floor: Version | None = None

    def position(self, value: str | None) -> int | None:
        """Index of the write of ``value`` (-1 for no value, None if never written)."""
        if value is None:
            return -1
        return next((i for i, (invoke, _) in enumerate(self.writes) if invoke.value == value),
                    None)

    def failed(self, position: int) -> bool:
        done = self.writes[position][1] if position >= 0 else None
        return done is not None and done.type == "fail"

    def last_acked(self, moment: float) -> Version | None:
        """Version of the newest write acknowledged ok at or before ``moment``."""
        last = None
        for position, (_, done) in enumerate(self.writes):
            if done is not None and done.type == "ok" and done.time <= moment:
                version = (position, done.seq)
                if last is None or _older(last, version):
                    last = version
        return last


def _older(a: Version, b: Version) -> bool:
    """Whether version ``a`` took effect before ``b``.

    The agent's seq orders writes exactly where both are known (an indeterminate write
    applied late gets a higher seq than the acknowledged write after it); otherwise the
    order writes were invoked in stands in for it (right for one sequential client).
    """
    (a_pos, a_seq), (b_pos, b_seq) = a, b
    if a_seq is not None and b_seq is not None:
        return a_seq < b_seq or (a_seq == b_seq and a_pos != b_pos)
    return a_pos < b_pos


@phase("check: the client history against what the survivor holds")
def check(history: History, final: Mapping[str, tuple[int, str] | None], *,
          final_at: float | None = None, log: Mapping[int, tuple[str, str]] | None = None,
          require_connection_survives: bool = False) -> CheckResult:
    """Judge ``history`` against ``final`` (key → (seq, value) or None, from the survivor).

    ``final_at`` is the monotonic time the final reads began. With a client still running,
    a write acknowledged after that moment was concurrent with the final read and need not
    be in ``final``; without it, every acknowledged write in the history must be.
    ``log`` (seq → (key, value)) is the survivor's whole write log, read from its disk:
    then every acknowledged write must be there as its own record, overwritten or not.
    """
    ops = history.ops
    faults = history.faults()
    origin = faults[0].time if faults else (ops[0].time if ops else 0.0)
    pairs = history.pairs()
    states: dict[str, _KeyState] = {}
    for invoke, done in pairs:
        if invoke.f == "write":
            states.setdefault(str(invoke.key), _KeyState()).writes.append((invoke, done))

    def rel(moment: float) -> str:
        return f"{moment - origin:+.3f}s"

    visible: list[str] = []
    stale = _check_reads(pairs, states, rel, visible)
    lost = _check_write_order(pairs, rel) + _check_final(states, final, final_at, rel, visible)
    if log is not None:
        lost += _check_log(pairs, log, final_at, rel)
    connection = _connection(ops, origin)
    broken = None
    if require_connection_survives and not connection["survived"]:
        broken = _broken_connection_error(connection)
    errors = lost + stale + visible + ([broken] if broken else [])
    return CheckResult(not errors, errors, lost, stale, visible, connection,
                       _downtime(ops, faults, origin), _stats(pairs), broken)


def _broken_connection_error(connection: dict[str, Any]) -> str:
    if not connection["breaks"]:
        return (f"a long-lived connection was replaced ({connection['connections']} used by "
                f"{connection['clients']} client(s))")
    first = connection["breaks"][0]
    return (f"{first['client']}'s long-lived connection broke at {first['at']:+.3f}s: "
            f"{first['error']}")


def _stats(pairs: list[tuple[Op, Op | None]]) -> dict[str, dict[str, int]]:
    stats: dict[str, dict[str, int]] = {}
    for invoke, done in pairs:
        counts = stats.setdefault(invoke.f, {**dict.fromkeys(COMPLETIONS, 0), "pending": 0})
        counts[done.type if done else "pending"] += 1
    return stats


def _check_reads(pairs: list[tuple[Op, Op | None]], states: dict[str, _KeyState],
                 rel: Callable[[float], str], visible: list[str]) -> list[str]:
    """Stale and phantom reads; failed writes seen by a read go to ``visible``."""
    stale: list[str] = []
    for invoke, done in pairs:
        if invoke.f != "read" or done is None or done.type != "ok":
            continue
        key, shown = invoke.key, done.value or "NONE"
        state = states.get(str(key), _KeyState())
        position = state.position(done.value)
        if position is None:
            stale.append(f"phantom read: {key} read {shown} at {rel(done.time)}, "
                         "a value never written")
            continue
        if state.failed(position):
            visible.append(f"failed write visible: {key}={shown} read at {rel(done.time)}")
        version = (position, done.seq if done.value is not None else None)
        required = state.last_acked(invoke.time)
        if required is not None and _older(version, required):
            stale.append(f"stale read: {key} read {shown} at {rel(done.time)} after "
                         f"{state.writes[required[0]][0].value} was acknowledged")
        elif state.floor is not None and _older(version, state.floor):
            stale.append(f"stale read: {key} read {shown} at {rel(done.time)} after "
                         f"{state.writes[state.floor[0]][0].value} was read")
        if state.floor is None or _older(state.floor, version):
            state.floor = version
    return stale


def _check_write_order(pairs: list[tuple[Op, Op | None]],
                       rel: Callable[[float], str]) -> list[str]:
    """Lost acknowledged writes the agent's write log shows, whatever was written after.

    The agent numbers its durable records one after another (seq), across keys. A write
    invoked after another was acknowledged must get a higher seq, and no two acknowledged
    writes share one: a survivor that went back in its log hands out a seq again, even if
    every key it forgot was overwritten before anyone read it. (Pairs are in invocation
    order, so a seq seen again from a write invoked after the first was acknowledged is the
    order check's to report.)
    """
    acked = [(invoke, done, done.seq) for invoke, done in pairs if invoke.f == "write"
             and done is not None and done.type == "ok" and done.seq is not None]
    lost: list[str] = []
    by_seq: dict[int, tuple[Op, Op]] = {}
    for invoke, done, seq in acked:
        other = by_seq.setdefault(seq, (invoke, done))
        if other[0] is not invoke and other[1].time >= invoke.time:  # overlapping writes
            lost.append(f"lost acknowledged write: seq {seq} acknowledged twice, for "
                        f"{other[0].key}={other[0].value} at {rel(other[1].time)} and "
                        f"{invoke.key}={invoke.value} at {rel(done.time)}")
    completed = sorted(acked, key=lambda write: write[1].time)
    newest: tuple[Op, Op, int] | None = None  # the highest seq acknowledged so far
    reported: set[int] = set()
    index = 0
    for invoke, _done, seq in sorted(acked, key=lambda write: write[0].time):
        while index < len(completed) and completed[index][1].time < invoke.time:
            if newest is None or completed[index][2] > newest[2]:
                newest = completed[index]
            index += 1
        if newest is None or seq > newest[2] or newest[2] in reported:
            continue
        gone, gone_done, gone_seq = newest
        reported.add(gone_seq)
        lost.append(f"lost acknowledged write: {gone.key}={gone.value} (seq {gone_seq}, "
                    f"ok at {rel(gone_done.time)}) forgotten by the agent's log: "
                    f"{invoke.key}={invoke.value}, invoked after it at {rel(invoke.time)}, got "
                    f"seq {seq} (seq {seq}..{gone_seq} lost)")
    return lost


def _check_log(pairs: list[tuple[Op, Op | None]], log: Mapping[int, tuple[str, str]],
               final_at: float | None, rel: Callable[[float], str]) -> list[str]:
    """Acknowledged writes missing from the survivor's write log (exact: seq, key, value)."""
    lost = []
    for invoke, done in pairs:
        if invoke.f != "write" or done is None or done.type != "ok" or done.seq is None:
            continue
        if final_at is not None and done.time > final_at:
            continue  # concurrent with the read of the log
        record = log.get(done.seq)
        if record != (invoke.key, invoke.value):
            holds = "nothing" if record is None else f"{record[0]}={record[1]}"
            lost.append(f"lost acknowledged write: {invoke.key}={invoke.value} (seq {done.seq}, "
                        f"ok at {rel(done.time)}) not in the survivor's disk log (record "
                        f"{done.seq} holds {holds})")
    return lost


def _check_final(states: dict[str, _KeyState], final: Mapping[str, tuple[int, str] | None],
                 final_at: float | None, rel: Callable[[float], str],
                 visible: list[str]) -> list[str]:
    """Lost acknowledged writes; phantom and failed values in ``final`` go to ``visible``."""
    lost: list[str] = []
    for key in sorted(set(states) | set(final)):
        state = states.get(key, _KeyState())
        got = final.get(key)
        value = got[1] if got else None
        position = state.position(value)
        if position is None:
            visible.append(f"phantom value: the survivor has {key}={value}, never written")
            continue
        if state.failed(position):
            visible.append(f"failed write visible: the survivor has {key}={value}")
        acked = state.last_acked(float("inf") if final_at is None else final_at)
        if acked is not None and _older((position, got[0] if got else None), acked):
            invoke, done = state.writes[acked[0]]
            assert done is not None
            lost.append(f"lost acknowledged write: {key}={invoke.value} (seq {done.seq}, ok at "
                        f"{rel(done.time)}) but the survivor has {key}={value or 'nothing'}")
    return lost


def _connection(ops: list[Op], origin: float) -> dict[str, Any]:
    """Connections used, per client, and where each broke: its first unknown outcome
    (``timeout``, ``info``) or request not sent (or, for a connection given up for a later
    one, its last completion). It survived when no client broke or replaced its connection."""
    by_client: dict[str, list[int]] = {}
    for op in ops:
        if op.conn is not None and op.conn not in by_client.setdefault(op.process, []):
            by_client[op.process].append(op.conn)
    breaks = []
    for client, conns in by_client.items():
        for conn in conns:
            done = [op for op in ops if op.conn == conn and op.type != "invoke"
                    and op.error != STOPPED]
            lost = next((op for op in done if op.type in UNKNOWN or (
                op.type == "fail" and (op.error or "").startswith(NOT_SENT))), None)
            if lost is None and conn != conns[-1] and done:
                lost = done[-1]
            if lost is not None:
                breaks.append({"client": client, "conn": conn, "at": lost.time - origin,
                               "error": lost.error or "replaced by a new connection"})
    firsts = {conns[0] for conns in by_client.values()}
    return {"survived": not breaks and all(len(c) <= 1 for c in by_client.values()),
            "clients": len(by_client), "connections": sum(len(c) for c in by_client.values()),
            "breaks": sorted(breaks, key=lambda b: b["at"]),
            "first_conn_ops": sum(1 for op in ops if op.conn in firsts and op.type == "ok")}


def _downtime(ops: list[Op], faults: list[Op], origin: float) -> dict[str, Any]:
    """The longest gap between ok completions, and the gap around each fault."""
    oks = [op.time for op in ops if op.process != "nemesis" and op.type == "ok"]
    gaps = [b - a for a, b in itertools.pairwise(oks)]
    around = []
    for fault in faults:
        before = [t for t in oks if t <= fault.time]
        after = [t for t in oks if t > fault.time]
        around.append({
            "fault": f"{fault.f} {fault.value}", "at": fault.time - origin,
            "gap_s": round(after[0] - before[-1], 6) if before and after else None,
            "first_ok_after_s": round(after[0] - fault.time, 6) if after else None})
    return {"max_gap_s": round(max(gaps), 6) if gaps else None, "around_faults": around}
