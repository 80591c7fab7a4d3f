"""The client: one thread per client, each over one long-lived TCP connection to the guest
agent, doing writes and reads continuously and recording them in a ``History``; a
``ClientPool`` runs several at once, each on keys of its own."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from colo_fixtures.core.verdicts import ClientTimeout
from colo_fixtures.core.waits import wait_for
from colo_fixtures.sut.guest.agent import AgentClient, AgentError
from colo_fixtures.workload.history import NOT_SENT, STOPPED, History, Op

CONNECT_RETRY_S = 0.2
RECONNECT_PAUSE_S = 0.1
CONNECT_ERRORS_KEPT = 50


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
                 reconnect: bool = True, process: str = "client-1", key_prefix: str = "k",
                 health: Callable[[], None] | None = None):
        if keys < 1:
            raise ValueError(f"keys must be >= 1: {keys}")
        self.connect = connect
        self.history = history
        self.keys = [f"{key_prefix}{i}" for i in range(keys)]
        self.op_timeout = op_timeout
        self.pause = pause
        self.reconnect = reconnect
        self.process = process
        self.health = health  # raises the verdict of a failed system under test
        self.broken: list[ConnectionBreak] = []
        self.connect_errors: list[str] = []
        self.crash: str | None = None  # an unexpected error that ended the thread
        self._stop = threading.Event()
        self._running = threading.Event()  # cleared by hold(): no new operation
        self._running.set()
        self._idle = threading.Event()  # set by the thread while held between operations
        self._interrupted = threading.Event()
        self._thread: threading.Thread | None = None
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
        self.ask_stop()
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

    def hold(self) -> AbstractContextManager[None]:
        """A quiet window: no new operation while inside, the connection kept open. Entering
        waits for the operation in flight (it ends within ``op_timeout``)."""
        return quiet_window([self])

    def _quiet(self) -> bool:
        thread = self._thread
        return thread is None or not thread.is_alive() or self._idle.is_set()

    def ask_stop(self) -> None:
        """Ask the thread to stop after the operation in flight (``stop`` waits for it)."""
        self._stop.set()

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
            if self._stop.is_set() or not self._wait_running():
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

    def _wait_running(self) -> bool:
        """Stay idle while held (``hold``); False if stopped meanwhile."""
        if self._running.is_set():
            return True
        self._idle.set()
        while not self._running.wait(0.05):
            if self._stop.is_set():
                return False
        self._idle.clear()
        return True

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
                self._conn = self.history.new_conn()
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


class ClientPool:
    """Several ``Workload`` clients at once, one shared history: client ``n`` is process
    ``client-<n>`` and writes only its own keys (``c<n>k<i>``), so every key has one writer
    and the checker's per-key order holds; the write log's order spans them all. Its methods
    apply to every client (``wait_ok``: each client makes ``count`` ok operations)."""

    def __init__(self, clients: list[Workload]):
        if not clients:
            raise ValueError("a client pool needs at least one client")
        self.clients = clients
        self.history = clients[0].history

    @classmethod
    def of(cls, count: int, connect: Callable[[], socket.socket], history: History,
           **options: Any) -> ClientPool:
        """``count`` clients on ``history`` (one keeps the single client's names: client-1,
        keys k<i>)."""
        if count < 1:
            raise ValueError(f"clients must be >= 1: {count}")
        return cls([Workload(connect, history, process=f"client-{n}",
                             key_prefix="k" if count == 1 else f"c{n}k", **options)
                    for n in range(1, count + 1)])

    @property
    def broken(self) -> list[ConnectionBreak]:
        return [b for client in self.clients for b in client.broken]

    @property
    def connect_errors(self) -> list[str]:
        return sorted(e for client in self.clients for e in client.connect_errors)

    @property
    def crash(self) -> str | None:
        return next((f"{c.process}: {c.crash}" for c in self.clients if c.crash), None)

    def start(self) -> None:
        for client in self.clients:
            client.start()

    def stop(self, timeout: float = 10) -> History:
        """Stop every client (all are asked first, then each is waited for)."""
        for client in self.clients:
            client.ask_stop()
        for client in self.clients:
            client.stop(timeout)
        return self.history

    def wait_ok(self, count: int, timeout: float, since: float = 0.0) -> None:
        """Wait until every client made ``count`` ok operations after ``since``."""
        deadline = time.monotonic() + timeout
        for client in self.clients:
            client.wait_ok(count, max(deadline - time.monotonic(), 0.1), since)

    def hold(self) -> AbstractContextManager[None]:
        """A quiet window of every client at once (``Workload.hold``)."""
        return quiet_window(self.clients)


@contextmanager
def quiet_window(clients: list[Workload]) -> Iterator[None]:
    """No client starts an operation while inside; entering waits for those in flight."""
    for client in clients:
        client._running.clear()
    try:
        for client in clients:
            wait_for(f"{client.process}: the operation in flight to end", client._quiet,
                     client.op_timeout + 5, verdict=ClientTimeout, interval=0.01,
                     seen=lambda: f"last ops: {clients[0].history.ops[-2:]}")
        yield
    finally:
        for client in clients:
            client._running.set()
