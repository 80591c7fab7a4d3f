"""Client workload, its history, and the checker that judges the history afterwards.

Jepsen style: a client keeps one long-lived TCP connection to the guest agent and does
writes and reads continuously; every operation is recorded as an ``invoke`` followed by
``ok`` (done), ``fail`` (certainly not done) or ``info`` (unknown: a timeout or a lost
connection after the request went out). The nemesis (``faults``) records its faults in the
same history. After the run, ``check`` compares the history with what the surviving VM
holds: every acknowledged write must be there, and no read may go back in time.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from colo_fixtures.guest import AgentClient, AgentError

Clock = Callable[[], tuple[float, float]]


def system_clock() -> tuple[float, float]:
    """(monotonic, wall) now."""
    return time.monotonic(), time.time()


@dataclass(frozen=True)
class Op:
    """One history entry. Completions share ``process``, ``f`` and ``key`` with their invoke."""

    index: int
    process: str  # "client-<n>" or "nemesis"
    type: str  # invoke | ok | fail | info
    f: str  # write | read, or the nemesis's fault / action name
    key: str | None
    value: str | None  # write: value written; read ok: value read (None for NONE)
    seq: int | None
    time: float  # monotonic
    wall: float
    conn: int | None
    error: str | None = None


class History:
    """A thread-safe, append-only list of ``Op``."""

    def __init__(self, clock: Clock = system_clock):
        self._clock = clock
        self._ops: list[Op] = []
        self._lock = threading.Lock()

    def _append(self, **fields: Any) -> Op:
        with self._lock:
            now, wall = self._clock()
            op = Op(index=len(self._ops), time=now, wall=wall, **fields)
            self._ops.append(op)
            return op

    def invoke(self, process: str, f: str, key: str | None, value: str | None,
               conn: int | None) -> Op:
        return self._append(process=process, type="invoke", f=f, key=key, value=value,
                            seq=None, conn=conn)

    def complete(self, invoke: Op, type: str, value: str | None = None,
                 seq: int | None = None, error: str | None = None) -> Op:
        if type not in ("ok", "fail", "info"):
            raise ValueError(f"completion type {type!r}: expected ok, fail or info")
        if invoke.f == "write":
            value = invoke.value
        return self._append(process=invoke.process, type=type, f=invoke.f, key=invoke.key,
                            value=value, seq=seq, conn=invoke.conn, error=error)

    def nemesis(self, f: str, target: str, detail: str | None = None) -> Op:
        return self._append(process="nemesis", type="info", f=f, key=None, value=target,
                            seq=None, conn=None, error=detail)

    @property
    def ops(self) -> list[Op]:
        with self._lock:
            return list(self._ops)

    def __len__(self) -> int:
        return len(self._ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def pairs(self) -> list[tuple[Op, Op | None]]:
        """Each client invoke with its completion (None if it never completed)."""
        pending: dict[str, Op] = {}
        result: list[tuple[Op, Op | None]] = []
        slots: dict[int, int] = {}
        for op in self.ops:
            if op.process == "nemesis":
                continue
            if op.type == "invoke":
                pending[op.process] = op
                slots[op.index] = len(result)
                result.append((op, None))
            elif op.process in pending:
                start = pending.pop(op.process)
                result[slots[start.index]] = (start, op)
        return result

    def faults(self) -> list[Op]:
        """The nemesis's ops that broke something (not its bookkeeping marks)."""
        return [op for op in self.ops if op.process == "nemesis" and op.f in FAULTS]

    def to_jsonl(self, path: Path) -> None:
        path.write_text("".join(json.dumps(asdict(op)) + "\n" for op in self.ops))

    @classmethod
    def from_jsonl(cls, path: Path) -> History:
        history = cls()
        history._ops = [Op(**json.loads(line)) for line in path.read_text().splitlines()
                        if line.strip()]
        return history


FAULTS = ("kill", "stop")


@dataclass(frozen=True)
class ConnectionBreak:
    """A connection the workload lost: when, why, and its last good answer."""

    conn: int
    time: float
    wall: float
    error: str
    last_ok_time: float | None


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Workload:
    """One client thread doing writes and reads over ONE long-lived TCP connection.

    A lost connection is recorded (``broken``) and, with ``reconnect``, replaced by a new
    one, so the run goes on and the checker can say exactly when and why it broke.
    """

    def __init__(self, connect: Callable[[], socket.socket], history: History, *,
                 keys: int = 8, op_timeout: float = 5.0, pause: float = 0.02,
                 reconnect: bool = True, process: str = "client-1"):
        self.connect = connect
        self.history = history
        self.keys = [f"k{i}" for i in range(keys)]
        self.op_timeout = op_timeout
        self.pause = pause
        self.reconnect = reconnect
        self.process = process
        self.broken: list[ConnectionBreak] = []
        self.connect_errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn_ids = itertools.count(1)
        self._last_ok: float | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.process, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10) -> History:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout + self.op_timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"{self.process} did not stop within "
                                   f"{timeout + self.op_timeout:g}s")
        return self.history

    def ok_count(self, since: float = 0.0) -> int:
        """ok completions of this client recorded at or after monotonic time ``since``."""
        return sum(1 for op in self.history.ops
                   if op.process == self.process and op.type == "ok" and op.time >= since)

    def wait_ok(self, count: int, timeout: float, since: float = 0.0) -> None:
        """Wait for ``count`` ok operations after ``since``; TimeoutError names what was seen."""
        deadline = time.monotonic() + timeout
        while self.ok_count(since) < count:
            if time.monotonic() > deadline:
                last = self.history.ops[-3:]
                raise TimeoutError(f"{self.process}: {self.ok_count(since)} of {count} ok "
                                   f"operations within {timeout:g}s; last ops: {last}; "
                                   f"connection breaks: {self.broken}")
            time.sleep(0.05)

    def _open(self) -> tuple[AgentClient, int] | None:
        while not self._stop.is_set():
            try:
                return AgentClient(self.connect(), timeout=self.op_timeout), next(self._conn_ids)
            except (OSError, RuntimeError) as exc:
                self.connect_errors.append(describe(exc))
                self._stop.wait(0.2)
        return None

    def _run(self) -> None:
        opened = self._open()
        counter = itertools.count(1)
        while opened is not None and not self._stop.is_set():
            client, conn = opened
            n = next(counter)
            key = self.keys[(n - 1) // 2 % len(self.keys)]  # each read follows its key's write
            if n % 2:
                op = self.history.invoke(self.process, "write", key, f"w{n}", conn)
            else:
                op = self.history.invoke(self.process, "read", key, None, conn)
            if self._perform(client, op):
                self._stop.wait(self.pause)
                continue
            client.close()
            if not self.reconnect:
                return
            opened = self._open()

    def _perform(self, client: AgentClient, op: Op) -> bool:
        """Run one operation and record its completion; False if the connection is lost."""
        try:
            if op.f == "write":
                seq = client.put(str(op.key), str(op.value))
                done = self.history.complete(op, "ok", seq=seq)
            else:
                got = client.get(str(op.key))
                done = self.history.complete(op, "ok", value=got[1] if got else None,
                                             seq=got[0] if got else None)
            self._last_ok = done.time
            return True
        except AgentError as exc:
            self.history.complete(op, "fail", error=describe(exc))
            return True
        except (OSError, ConnectionError, TimeoutError, ValueError) as exc:
            reason = describe(exc) if not isinstance(exc, TimeoutError) else (
                f"timeout after {self.op_timeout:g}s")
            done = self.history.complete(op, "info", error=reason)
            self.broken.append(ConnectionBreak(op.conn or 0, done.time, done.wall, reason,
                                               self._last_ok))
            return False


# ---------------------------------------------------------------------------- checker


@dataclass(frozen=True)
class CheckResult:
    """The checker's verdict on one history."""

    valid: bool
    errors: list[str]
    lost_writes: list[str]
    stale_reads: list[str]
    connection: dict[str, Any]
    downtime: dict[str, Any]
    stats: dict[str, dict[str, int]]

    def summary(self) -> str:
        lines = [f"history {'valid' if self.valid else 'INVALID'}: "
                 + ", ".join(f"{f} {counts}" for f, counts in self.stats.items())]
        lines.append(f"connection survived: {self.connection['survived']}"
                     + "".join(f"; conn {b['conn']} broke at {b['at']:+.3f}s: {b['error']}"
                               for b in self.connection["breaks"]))
        for fault in self.downtime["around_faults"]:
            lines.append(f"{fault['fault']} at {fault['at']:+.3f}s: gap {fault['gap_s']}s, "
                         f"first ok {fault['first_ok_after_s']}s after")
        lines += self.errors[:10]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _KeyState:
    """Per key: writes in invocation order and what reads have shown so far."""

    writes: list[tuple[Op, Op | None]] = field(default_factory=list)
    read_floor: int = -1  # position in ``writes`` of the newest value an ok read returned


def _write_position(state: _KeyState, value: str | None) -> int | None:
    for position, (invoke, _) in enumerate(state.writes):
        if invoke.value == value:
            return position
    return None


def _last_acked_before(state: _KeyState, moment: float) -> int:
    """Position of the last write acknowledged ok at or before ``moment`` (-1 if none)."""
    last = -1
    for position, (_, done) in enumerate(state.writes):
        if done is not None and done.type == "ok" and done.time <= moment:
            last = position
    return last


def check(history: History, final: Mapping[str, tuple[int, str] | None], *,
          final_at: float | None = None,
          require_connection_survives: bool = False) -> CheckResult:
    """Judge ``history`` against ``final`` (key → (seq, value) or None, from the survivor).

    ``final_at`` is the monotonic time the final reads began. With a client still running,
    a write acknowledged after that moment was concurrent with the final read and need not
    be in ``final``; without it, every acknowledged write in the history must be.
    """
    ops = history.ops
    origin = (history.faults()[0].time if history.faults()
              else (ops[0].time if ops else 0.0))
    errors: list[str] = []
    lost: list[str] = []
    stale: list[str] = []
    states: dict[str, _KeyState] = {}
    stats: dict[str, dict[str, int]] = {}
    pairs = history.pairs()
    for invoke, done in pairs:
        counts = stats.setdefault(invoke.f, {"ok": 0, "fail": 0, "info": 0, "pending": 0})
        counts[done.type if done else "pending"] += 1
        if invoke.f == "write":
            states.setdefault(str(invoke.key), _KeyState()).writes.append((invoke, done))

    def rel(moment: float) -> str:
        return f"{moment - origin:+.3f}s"

    for invoke, done in pairs:
        if invoke.f != "read" or done is None or done.type != "ok":
            continue
        state = states.get(str(invoke.key), _KeyState())
        required = _last_acked_before(state, invoke.time)
        position = _write_position(state, done.value) if done.value is not None else -1
        if done.value is not None and position is None:
            stale.append(f"phantom read: {invoke.key} read {done.value} at {rel(done.time)}, "
                         "a value never written")
            continue
        assert position is not None
        if position >= 0 and state.writes[position][1] is not None \
                and state.writes[position][1].type == "fail":
            errors.append(f"failed write visible: {invoke.key}={done.value} read at "
                          f"{rel(done.time)}")
        if position < required:
            expected = state.writes[required][0].value
            stale.append(f"stale read: {invoke.key} read {done.value or 'NONE'} at "
                         f"{rel(done.time)} after {expected} was acknowledged")
        elif position < state.read_floor:
            newer = state.writes[state.read_floor][0].value
            stale.append(f"stale read: {invoke.key} read {done.value or 'NONE'} at "
                         f"{rel(done.time)} after {newer} was read")
        state.read_floor = max(state.read_floor, position)

    for key in sorted(set(states) | set(final)):
        state = states.get(key, _KeyState())
        got = final.get(key)
        value = got[1] if got else None
        acked = _last_acked_before(state, float("inf") if final_at is None else final_at)
        position = _write_position(state, value) if value is not None else -1
        if value is not None and position is None:
            errors.append(f"phantom value: the survivor has {key}={value}, never written")
            continue
        assert position is not None
        if position >= 0 and state.writes[position][1] is not None \
                and state.writes[position][1].type == "fail":
            errors.append(f"failed write visible: the survivor has {key}={value}")
        if position < acked:
            invoke, done = state.writes[acked]
            assert done is not None
            lost.append(f"lost acknowledged write: {key}={invoke.value} (seq {done.seq}, ok at "
                        f"{rel(done.time)}) but the survivor has {key}={value or 'nothing'}")

    connection = _connection(ops, origin)
    if require_connection_survives and not connection["survived"]:
        first = connection["breaks"][0]
        errors.append(f"the long-lived connection broke at {first['at']:+.3f}s: "
                      f"{first['error']}")
    all_errors = lost + stale + errors
    return CheckResult(not all_errors, all_errors, lost, stale, connection,
                       _downtime(ops, history.faults(), origin), stats)


def _connection(ops: list[Op], origin: float) -> dict[str, Any]:
    conns = sorted({op.conn for op in ops if op.conn is not None})
    breaks = []
    for conn in conns:
        lost = next((op for op in ops if op.conn == conn and op.type == "info"), None)
        if lost is not None:
            breaks.append({"conn": conn, "at": lost.time - origin, "error": lost.error})
    first = conns[0] if conns else None
    return {"survived": not breaks and len(conns) <= 1, "connections": len(conns),
            "breaks": breaks,
            "first_conn_ops": sum(1 for op in ops if op.conn == first and op.type == "ok")}


def _downtime(ops: list[Op], faults: list[Op], origin: float) -> dict[str, Any]:
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
