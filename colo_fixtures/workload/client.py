"""Client workload, its history, and the checker that judges the history afterwards.

Jepsen style: a client keeps one long-lived TCP connection to the guest agent and does
writes and reads continuously; every operation is recorded as an ``invoke`` followed by
``ok`` (done), ``fail`` (certainly not done: an ``ERR`` reply, or the request never fully
sent), ``timeout`` (unknown: no reply in time) or ``info`` (unknown: the connection broke
after the request went out).
The nemesis (``faults``) records its faults in the same history. After the run, ``check``
compares the history with what the surviving VM holds: every acknowledged write must be
there, no read may go back in time, and nothing that failed or was never written may show.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from colo_fixtures.core.events import phase
from colo_fixtures.core.verdicts import (
    ClientTimeout,
    ConnectionBroken,
    FailedWriteVisible,
    LostWrite,
    StaleRead,
    Verdict,
)
from colo_fixtures.core.waits import wait_for
from colo_fixtures.sut.guest import AgentClient, AgentError

Clock = Callable[[], tuple[float, float]]

# How an operation ends: ok, fail (known not to have happened: ERR, or never sent), and the
# two unknown outcomes (it may or may not have happened): timeout (no reply in time) and info
# (the connection broke after the request went out, or the client was stopped).
COMPLETIONS = ("ok", "fail", "timeout", "info")
UNKNOWN = ("timeout", "info")
FAULTS = ("kill", "stop")  # nemesis ops that break something; the rest are marks
STOPPED = "workload stopped with the operation in flight"  # an info reason, not a break
NOT_SENT = "not sent: "  # prefix of a fail reason: the connection broke before the request
CONNECT_RETRY_S = 0.2
RECONNECT_PAUSE_S = 0.1
CONNECT_ERRORS_KEPT = 50


def system_clock() -> tuple[float, float]:
    """(monotonic, wall) now."""
    return time.monotonic(), time.time()


@dataclass(frozen=True)
class Op:
    """One history entry. Completions share ``process``, ``f`` and ``key`` with their invoke."""

    index: int
    process: str  # "client-<n>" or "nemesis"
    type: str  # invoke | ok | fail | timeout | info
    f: str  # write | read, or the nemesis's fault / mark name
    key: str | None
    value: str | None  # write: value written; read ok: value read (None for NONE); nemesis: target
    seq: int | None
    time: float  # monotonic
    wall: float
    conn: int | None
    error: str | None = None


class History:
    """A thread-safe, append-only list of ``Op``; ``clock`` gives (monotonic, wall)."""

    def __init__(self, clock: Clock = system_clock):
        self._clock = clock
        self._ops: list[Op] = []
        self._lock = threading.Lock()
        self._values = itertools.count(1)

    def _append(self, at: float | None = None, **fields: Any) -> Op:
        with self._lock:
            now, wall = self._clock()
            if at is not None:  # the same moment on this history's monotonic clock
                now, wall = now - (wall - at), at
            op = Op(index=len(self._ops), time=now, wall=wall, **fields)
            self._ops.append(op)
            return op

    def new_value(self) -> str:
        """A write value unique in this history (``w1``, ``w2``, ...), even across clients."""
        with self._lock:
            return f"w{next(self._values)}"

    def invoke(self, process: str, f: str, key: str | None, value: str | None,
               conn: int | None) -> Op:
        """Record the start of a client operation."""
        return self._append(process=process, type="invoke", f=f, key=key, value=value,
                            seq=None, conn=conn)

    def complete(self, invoke: Op, type: str, value: str | None = None,
                 seq: int | None = None, error: str | None = None) -> Op:
        """Record the outcome of ``invoke``; a write's completion carries the written value."""
        if type not in COMPLETIONS:
            raise ValueError(f"completion type {type!r}: expected one of {', '.join(COMPLETIONS)}")
        if invoke.f == "write":
            value = invoke.value
        return self._append(process=invoke.process, type=type, f=invoke.f, key=invoke.key,
                            value=value, seq=seq, conn=invoke.conn, error=error)

    def nemesis(self, f: str, target: str, detail: str | None = None,
                at: float | None = None) -> Op:
        """Record a fault (or a harness mark) as an ``info`` op of process ``nemesis``;
        ``at``: its wall time when it happened elsewhere (a lab host), not now."""
        return self._append(process="nemesis", type="info", f=f, key=None, value=target,
                            seq=None, conn=None, error=detail, at=at)

    @property
    def ops(self) -> list[Op]:
        with self._lock:
            return list(self._ops)

    def __len__(self) -> int:
        with self._lock:
            return len(self._ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def pairs(self) -> list[tuple[Op, Op | None]]:
        """Each client invoke with its completion (None if it never completed)."""
        pending: dict[str, int] = {}
        result: list[tuple[Op, Op | None]] = []
        for op in self.ops:
            if op.process == "nemesis":
                continue
            if op.type == "invoke":
                pending[op.process] = len(result)
                result.append((op, None))
            elif op.process in pending:
                slot = pending.pop(op.process)
                result[slot] = (result[slot][0], op)
        return result

    def faults(self) -> list[Op]:
        """The nemesis's ops that broke something (not its bookkeeping marks)."""
        return [op for op in self.ops if op.process == "nemesis" and op.f in FAULTS]

    def to_jsonl(self, path: Path) -> None:
        """One JSON object per op, in order."""
        path.write_text("".join(json.dumps(asdict(op)) + "\n" for op in self.ops))

    @classmethod
    def from_jsonl(cls, path: Path) -> History:
        history = cls()
        history._ops = [Op(**json.loads(line)) for line in path.read_text().splitlines()
                        if line.strip()]
        used = [int(op.value[1:]) for op in history._ops
                if op.f == "write" and op.value and re.fullmatch(r"w\d+", op.value)]
        history._values = itertools.count(max(used, default=0) + 1)
        return history


# ---------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class ConnectionBreak:
    """A connection the workload lost: when, why, and its last good answer."""

    conn: int
    time: float
    wall: float
    error: str
    last_ok_time: float | None


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Client(AgentClient):
    """An agent client that remembers whether the last request line went out whole.

    The agent acts only on complete lines, so a request that failed while sending was
    certainly not applied (``fail``); one that failed afterwards may have been (``timeout``,
    ``info``).
    """

    sent = False

    def request(self, line: str) -> str:
        self.sent = False
        if "\n" in line or "\r" in line:
            raise ValueError(f"a request is one line: {line!r}")
        self.sock.sendall(line.encode("ascii") + b"\n")
        self.sent = True
        return self._readline()


class Workload:
    """One client thread doing writes and reads over ONE long-lived TCP connection.

    Writes of unique values (``History.new_value``) to ``k<i % keys>`` alternate with a read
    of the key just written. A lost connection is recorded (``broken``) and, with
    ``reconnect``, replaced by a new one (a new conn id), so the run goes on and the
    checker can say exactly when and why it broke. Failed connection attempts make no ops;
    their errors are kept in ``connect_errors`` as ``"<wall time> <reason>"`` (the latest
    last). The thread never raises: an unexpected error ends it cleanly, kept in ``crash``.
    """

    def __init__(self, connect: Callable[[], socket.socket], history: History, *,
                 keys: int = 8, op_timeout: float = 5.0, pause: float = 0.02,
                 reconnect: bool = True, process: str = "client-1",
                 health: Callable[[], None] | None = None):
        if keys < 1:
            raise ValueError(f"keys must be >= 1: {keys}")
        self.connect = connect
        self.history = history
        self.keys = [f"k{i}" for i in range(keys)]
        self.op_timeout = op_timeout
        self.pause = pause
        self.reconnect = reconnect
        self.process = process
        self.health = health  # raises the verdict of a failed system under test
        self.broken: list[ConnectionBreak] = []
        self.connect_errors: list[str] = []
        self.crash: str | None = None  # an unexpected error that ended the thread
        self._stop = threading.Event()
        self._interrupted = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn_ids = itertools.count(1)
        self._lock = threading.Lock()
        self._client: _Client | None = None
        self._conn: int | None = None
        self._last_ok: float | None = None

    def start(self) -> None:
        """Start the client thread (once)."""
        if self._thread is not None:
            raise RuntimeError(f"{self.process} already started")
        self._thread = threading.Thread(target=self._run, name=self.process, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10) -> History:
        """Stop after the operation in flight, waiting at most ``timeout`` for it; then the
        connection is shut down under it (recorded ``info``, reason ``STOPPED``) and the
        thread gets ``op_timeout`` more. RuntimeError if it still runs after that."""
        self._stop.set()
        thread = self._thread
        if thread is None:
            return self.history
        thread.join(timeout)
        if thread.is_alive():
            self._interrupted.set()
            with self._lock:
                if self._client is not None:
                    with suppress(OSError):
                        self._client.sock.shutdown(socket.SHUT_RDWR)
            thread.join(self.op_timeout)
        if thread.is_alive():
            raise RuntimeError(f"{self.process} did not stop within "
                               f"{timeout + self.op_timeout:g}s")
        return self.history

    def ok_count(self, since: float = 0.0) -> int:
        """ok completions of this client recorded at or after monotonic time ``since``."""
        return sum(1 for op in self.history.ops
                   if op.process == self.process and op.type == "ok" and op.time >= since)

    def wait_ok(self, count: int, timeout: float, since: float = 0.0) -> None:
        """Wait for ``count`` ok operations after ``since``, running ``health`` meanwhile (a
        guest crash is named as such, not as the client's timeout); ClientTimeout names what
        the client saw."""
        wait_for(f"{self.process}: {count} ok operations", lambda: self.ok_count(since) >= count,
                 timeout, health=self.health, verdict=ClientTimeout, interval=0.05,
                 seen=lambda: f"{self.ok_count(since)} ok; last ops: {self.history.ops[-3:]}; "
                              f"connection breaks: {self.broken}; last connect error: "
                              f"{self.connect_errors[-1:]}")

    # -- the thread

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # the thread must never raise
            self.crash = describe(exc)
        finally:
            self._close()

    def _loop(self) -> None:
        for n in itertools.count(1):
            if self._stop.is_set():
                return
            if self._client is None and not self._open():
                return
            key = self.keys[(n - 1) // 2 % len(self.keys)]  # each read follows its key's write
            if n % 2:
                op = self.history.invoke(self.process, "write", key, self.history.new_value(),
                                         self._conn)
            else:
                op = self.history.invoke(self.process, "read", key, None, self._conn)
            if self._perform(op):
                self._stop.wait(self.pause)
                continue
            self._close()
            if not self.reconnect:
                return
            self._stop.wait(RECONNECT_PAUSE_S)

    def _open(self) -> bool:
        """Connect (retrying until stopped); False if stopped first."""
        while not self._stop.is_set():
            try:
                sock = self.connect()
            except Exception as exc:  # any failure to connect is retried
                self.connect_errors.append(f"{time.time():.3f} {describe(exc)}")
                del self.connect_errors[:-CONNECT_ERRORS_KEPT]
                self._stop.wait(CONNECT_RETRY_S)
                continue
            with self._lock:
                self._client = _Client(sock, timeout=self.op_timeout)
                self._conn = next(self._conn_ids)
            return True
        return False

    def _close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with suppress(OSError):
                client.close()

    def _perform(self, op: Op) -> bool:
        """Run one operation and record its completion; False if the connection is lost."""
        client = self._client
        assert client is not None
        try:
            if op.f == "write":
                seq = client.put(str(op.key), str(op.value))
                done = self.history.complete(op, "ok", seq=seq)
            else:
                got = client.get(str(op.key))
                done = self.history.complete(op, "ok", value=got[1] if got else None,
                                             seq=got[0] if got else None)
        except AgentError as exc:
            if exc.reply.startswith("ERR"):
                self.history.complete(op, "fail", error=describe(exc))
                return True
            return self._lost(op, client, describe(exc))  # garbled: the stream is unusable
        except Exception as exc:  # anything else ends this connection
            timeout = isinstance(exc, TimeoutError)
            return self._lost(op, client, f"timeout after {self.op_timeout:g}s" if timeout
                              else describe(exc), "timeout" if timeout else "info")
        self._last_ok = done.time
        return True

    def _lost(self, op: Op, client: _Client, reason: str, unknown: str = "info") -> bool:
        """Record ``op`` as fail (never sent whole) or ``unknown`` (sent: timeout, or info
        when the connection broke), and the connection break."""
        if self._interrupted.is_set():
            self.history.complete(op, "info", error=STOPPED)
            return False
        if not client.sent:
            reason = NOT_SENT + reason
        done = self.history.complete(op, unknown if client.sent else "fail", error=reason)
        self.broken.append(ConnectionBreak(op.conn or 0, done.time, done.wall, reason,
                                           self._last_ok))
        return False


# ---------------------------------------------------------------------------- checker


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
    connection_error: str | None = None  # the long-lived connection did not survive

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
                     + "".join(f"; conn {b['conn']} broke at {b['at']:+.3f}s: {b['error']}"
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
        return f"the long-lived connection was replaced ({connection['connections']} used)"
    first = connection["breaks"][0]
    return f"the long-lived connection broke at {first['at']:+.3f}s: {first['error']}"


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
    """Connections used and where each broke: its first unknown outcome (``timeout``,
    ``info``) or request not sent (or, for a connection given up for a later one, its last
    completion)."""
    conns = sorted({op.conn for op in ops if op.conn is not None})
    breaks = []
    for conn in conns:
        done = [op for op in ops if op.conn == conn and op.type != "invoke"
                and op.error != STOPPED]
        lost = next((op for op in done if op.type in UNKNOWN or (
            op.type == "fail" and (op.error or "").startswith(NOT_SENT))), None)
        if lost is None and conn != conns[-1] and done:
            lost = done[-1]
        if lost is not None:
            breaks.append({"conn": conn, "at": lost.time - origin,
                           "error": lost.error or "replaced by a new connection"})
    first = conns[0] if conns else None
    return {"survived": not breaks and len(conns) <= 1, "connections": len(conns),
            "breaks": breaks,
            "first_conn_ops": sum(1 for op in ops if op.conn == first and op.type == "ok")}


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
