"""A client history, Jepsen style: every operation an ``invoke`` followed by its completion.

``ok`` (done), ``fail`` (certainly not done: an ``ERR`` reply, or the request never fully
sent), ``timeout`` (unknown: no reply in time) or ``info`` (unknown: the connection broke
after the request went out). The nemesis records its faults in the same history.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

Clock = Callable[[], tuple[float, float]]

# How an operation ends: ok, fail (known not to have happened: ERR, or never sent), and the
# two unknown outcomes (it may or may not have happened): timeout (no reply in time) and info
# (the connection broke after the request went out, or the client was stopped).
COMPLETIONS = ("ok", "fail", "timeout", "info")
UNKNOWN = ("timeout", "info")
FAULTS = ("kill", "stop")  # nemesis ops that break something; the rest are marks
STOPPED = "workload stopped with the operation in flight"  # an info reason, not a break
NOT_SENT = "not sent: "  # prefix of a fail reason: the connection broke before the request


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
        self._conns = itertools.count(1)

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

    def new_conn(self) -> int:
        """A connection id unique in this history, across clients."""
        with self._lock:
            return next(self._conns)

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
        conns = [op.conn for op in history._ops if op.conn is not None]
        history._conns = itertools.count(max(conns, default=0) + 1)
        return history
