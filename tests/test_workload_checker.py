"""The history checker on hand-made histories (what it accepts and what it must reject), and
the Workload's recording against a small in-process fake agent. Fast: no VM."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from colo_fixtures.workload.checker import check
from colo_fixtures.workload.client import Workload
from colo_fixtures.workload.history import NOT_SENT, STOPPED, History, Op


class Clock:
    """A deterministic clock: each reading advances 0.1 s, or returns the time set next."""

    def __init__(self) -> None:
        self.now = 100.0
        self.next: float | None = None

    def __call__(self) -> tuple[float, float]:
        if self.next is not None:
            self.now, self.next = self.next, None
        else:
            self.now += 0.1
        return self.now, 1_700_000_000 + self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def history(clock: Clock) -> History:
    return History(clock=clock)


def write(h: History, key: str, value: str, outcome: str = "ok", seq: int | None = None,
          conn: int = 1, process: str = "client-1") -> Op:
    op = h.invoke(process, "write", key, value, conn)
    return h.complete(op, outcome, seq=seq if outcome == "ok" else None,
                      error=None if outcome == "ok" else "boom")


def read(h: History, key: str, value: str | None, seq: int | None = None, conn: int = 1,
         process: str = "client-1") -> Op:
    op = h.invoke(process, "read", key, None, conn)
    return h.complete(op, "ok", value=value, seq=seq)


# ---------------------------------------------------------------------- valid histories


def test_valid_history_with_fault_and_reconnect(history: History):
    write(history, "k0", "w1", seq=1)
    read(history, "k0", "w1", seq=1)
    history.nemesis("kill", "primary")
    op = history.invoke("client-1", "write", "k1", "w3", 1)
    history.complete(op, "info", error="ConnectionResetError: [Errno 104] reset")
    write(history, "k1", "w5", seq=3, conn=2)
    read(history, "k1", "w5", seq=3, conn=2)
    history.nemesis("failover-done", "secondary")
    result = check(history, {"k0": (1, "w1"), "k1": (3, "w5")})
    assert result.valid, result.summary()
    assert result.connection["survived"] is False
    assert result.connection["connections"] == 2
    assert result.connection["breaks"] == [
        {"client": "client-1", "conn": 1, "at": pytest.approx(0.2),
         "error": "ConnectionResetError: [Errno 104] reset"}]
    assert result.connection["first_conn_ops"] == 2
    assert result.stats["write"] == {"ok": 2, "fail": 0, "timeout": 0, "info": 1, "pending": 0}
    assert result.stats["read"] == {"ok": 2, "fail": 0, "timeout": 0, "info": 0, "pending": 0}
    assert [f["fault"] for f in result.downtime["around_faults"]] == ["kill primary"]


@pytest.mark.parametrize("final", [(2, "w2"), (1, "w1")], ids=["appears", "absent"])
def test_indeterminate_write_may_or_may_not_appear(history: History, final):
    write(history, "k0", "w1", seq=1)
    write(history, "k0", "w2", outcome="info")
    result = check(history, {"k0": final})
    assert result.valid, result.summary()


def test_indeterminate_write_may_be_read_while_in_flight(history: History):
    write(history, "k0", "w1", seq=1)
    history.invoke("client-1", "write", "k0", "w2", 1)  # never completes
    read(history, "k0", "w2", seq=2, process="client-2")
    assert check(history, {"k0": (2, "w2")}).valid
    assert check(history, {"k0": (1, "w1")}).stats["write"]["pending"] == 1


def test_indeterminate_write_applied_after_a_later_ack_is_not_lost(history: History):
    """The agent's seq shows the timed-out write took effect after the acknowledged one."""
    write(history, "k0", "w1", outcome="info", conn=1)
    write(history, "k0", "w2", seq=2, conn=2)
    assert check(history, {"k0": (3, "w1")}).valid
    result = check(history, {"k0": (1, "w1")})
    assert result.lost_writes == [
        "lost acknowledged write: k0=w2 (seq 2, ok at +0.300s) but the survivor has k0=w1"]


def test_concurrent_clients_are_ordered_by_seq(history: History):
    first = history.invoke("client-1", "write", "k0", "w1", 1)
    write(history, "k0", "w2", seq=2, process="client-2", conn=2)
    history.complete(first, "ok", seq=3)  # both overlapped; the agent applied w1 last
    read(history, "k0", "w1", seq=3)
    assert check(history, {"k0": (3, "w1")}).valid
    assert not check(history, {"k0": (2, "w2")}).valid


def test_key_never_written_may_be_absent(history: History):
    write(history, "k0", "w1", seq=1)
    read(history, "k1", None)
    assert check(history, {"k0": (1, "w1"), "k1": None}).valid


# ---------------------------------------------------------------------- rejected histories


def test_lost_acknowledged_write_is_rejected(history: History):
    write(history, "k0", "w1", seq=1)
    write(history, "k0", "w2", seq=2)  # ok at 100.4
    history.nemesis("kill", "primary")  # at 100.5
    result = check(history, {"k0": (1, "w1")})
    assert not result.valid
    assert result.lost_writes == [
        "lost acknowledged write: k0=w2 (seq 2, ok at -0.100s) but the survivor has k0=w1"]
    assert result.errors == result.lost_writes


def test_acknowledged_write_missing_entirely_is_lost(history: History):
    write(history, "k3", "w1", seq=1)
    result = check(history, {})
    assert result.lost_writes == [
        "lost acknowledged write: k3=w1 (seq 1, ok at +0.100s) but the survivor has "
        "k3=nothing"]


def test_lost_writes_overwritten_before_any_read_are_rejected(history: History):
    """The survivor went back three records and the client overwrote every key it forgot
    before reading it: the final values all look current, the agent's seq does not."""
    for seq in range(1, 17):
        write(history, f"k{seq % 8}", f"w{seq}", seq=seq)
    history.nemesis("kill", "primary")
    for n, seq in enumerate(range(14, 24)):  # the survivor's log ended at seq 13
        write(history, f"k{(16 + n + 1) % 8}", f"x{seq}", seq=seq)
    final = {f"k{seq % 8}": (seq, f"x{seq}") for seq in range(16, 24)}
    result = check(history, final)
    assert not result.valid
    assert result.lost_writes == [
        "lost acknowledged write: k0=w16 (seq 16, ok at -0.100s) forgotten by the agent's "
        "log: k1=x14, invoked after it at +0.100s, got seq 14 (seq 14..16 lost)"]


def test_survivor_log_must_hold_every_acknowledged_write(history: History):
    """The disk log keeps every record: an acknowledged write overwritten later must still
    be there as its own record, with its key and value."""
    write(history, "k0", "w1", seq=1)
    write(history, "k0", "w2", seq=2)
    write(history, "k1", "w3", seq=3)
    final = {"k0": (2, "w2"), "k1": (3, "w3")}
    whole = {1: ("k0", "w1"), 2: ("k0", "w2"), 3: ("k1", "w3")}
    assert check(history, final, log=whole).valid
    result = check(history, final, log={2: ("k0", "w2"), 3: ("k1", "w3"), 1: ("k9", "x")})
    assert result.lost_writes == [
        "lost acknowledged write: k0=w1 (seq 1, ok at +0.100s) not in the survivor's disk "
        "log (record 1 holds k9=x)"]
    result = check(history, final, log={2: ("k0", "w2"), 3: ("k1", "w3")}, final_at=100.25)
    assert result.lost_writes == [
        "lost acknowledged write: k0=w1 (seq 1, ok at +0.100s) not in the survivor's disk "
        "log (record 1 holds nothing)"]


def test_one_seq_acknowledged_twice_is_rejected(history: History):
    first = history.invoke("client-1", "write", "k0", "w1", 1)
    write(history, "k1", "w2", seq=5, process="client-2", conn=2)
    history.complete(first, "ok", seq=5)  # concurrent, yet one record for both
    result = check(history, {"k0": (5, "w1"), "k1": (5, "w2")})
    assert result.lost_writes == [
        "lost acknowledged write: seq 5 acknowledged twice, for k0=w1 at +0.300s and "
        "k1=w2 at +0.200s"]


def test_read_going_backwards_is_stale(history: History):
    write(history, "k0", "w1", seq=1)
    write(history, "k0", "w2", outcome="info")
    read(history, "k0", "w2")
    read(history, "k0", "w1")
    result = check(history, {"k0": (2, "w2")})
    assert not result.valid
    assert result.stale_reads == ["stale read: k0 read w1 at +0.700s after w2 was read"]


def test_read_going_backwards_by_seq_is_stale(history: History):
    write(history, "k0", "w1", outcome="info", conn=1)
    write(history, "k0", "w2", seq=2, conn=2)
    read(history, "k0", "w1", seq=3, conn=2)  # applied late: fine
    read(history, "k0", "w2", seq=2, conn=2)  # back to the older record
    result = check(history, {"k0": (3, "w1")})
    assert result.stale_reads == ["stale read: k0 read w2 at +0.700s after w1 was read"]


def test_read_missing_an_acknowledged_write_is_stale(history: History):
    write(history, "k0", "w1", seq=1)
    read(history, "k0", None)
    write(history, "k0", "w3", seq=2)
    read(history, "k0", "w1", seq=1)
    result = check(history, {"k0": (2, "w3")})
    assert result.stale_reads == [
        "stale read: k0 read NONE at +0.300s after w1 was acknowledged",
        "stale read: k0 read w1 at +0.700s after w3 was acknowledged"]
    assert not result.valid


def test_failed_write_that_is_visible_is_rejected(history: History):
    write(history, "k0", "w1", outcome="fail")
    read(history, "k0", "w1")
    result = check(history, {"k0": (1, "w1")})
    assert not result.valid
    assert result.errors == ["failed write visible: k0=w1 read at +0.300s",
                             "failed write visible: the survivor has k0=w1"]


def test_phantom_final_value_is_rejected(history: History):
    write(history, "k0", "w1", seq=1)
    result = check(history, {"k0": (9, "w99"), "k5": (10, "w1")})
    assert result.errors == ["phantom value: the survivor has k0=w99, never written",
                             "phantom value: the survivor has k5=w1, never written"]
    assert not result.valid


def test_phantom_read_is_rejected(history: History):
    read(history, "k0", "w7")
    result = check(history, {})
    assert result.stale_reads == [
        "phantom read: k0 read w7 at +0.100s, a value never written"]


# ---------------------------------------------------------------------- connection, downtime


def test_connection_break_is_an_error_when_required(history: History):
    write(history, "k0", "w1", seq=1)
    history.nemesis("kill", "primary")  # at 100.3
    op = history.invoke("client-1", "write", "k0", "w2", 1)
    history.complete(op, "timeout", error="timeout after 5s")  # at 100.5
    result = check(history, {"k0": (1, "w1")}, require_connection_survives=True)
    assert not result.valid
    assert result.errors == ["client-1's long-lived connection broke at +0.200s: timeout after 5s"]
    assert check(history, {"k0": (1, "w1")}).valid


def test_surviving_connection_is_reported(history: History):
    write(history, "k0", "w1", seq=1)
    history.nemesis("stop", "primary")
    write(history, "k0", "w2", seq=2)
    result = check(history, {"k0": (2, "w2")}, require_connection_survives=True)
    assert result.valid, result.summary()
    assert result.connection == {"survived": True, "clients": 1, "connections": 1, "breaks": [],
                                 "first_conn_ops": 2}


def test_request_not_sent_is_a_break(history: History):
    write(history, "k0", "w1", seq=1)
    op = history.invoke("client-1", "write", "k0", "w2", 1)
    history.complete(op, "fail", error=NOT_SENT + "BrokenPipeError: [Errno 32] Broken pipe")
    result = check(history, {"k0": (1, "w1")})
    assert result.valid
    assert result.connection["breaks"] == [{"client": "client-1", "conn": 1,
                                            "at": pytest.approx(0.3),
                                            "error": NOT_SENT + "BrokenPipeError: [Errno 32] "
                                                                "Broken pipe"}]


def test_connection_replaced_after_an_err_is_a_break(history: History):
    write(history, "k0", "w1", seq=1)
    op = history.invoke("client-1", "write", "k0", "w2", 1)
    history.complete(op, "fail", error="AgentError: agent replied 'ERR full'")
    write(history, "k0", "w3", seq=2, conn=2)
    result = check(history, {"k0": (2, "w3")}, require_connection_survives=True)
    assert result.errors == ["client-1's long-lived connection broke at +0.300s: "
                             "AgentError: agent replied 'ERR full'"]


def test_operation_interrupted_by_stop_is_not_a_break(history: History):
    write(history, "k0", "w1", seq=1)
    op = history.invoke("client-1", "write", "k0", "w2", 1)
    history.complete(op, "info", error=STOPPED)
    result = check(history, {"k0": (1, "w1")}, require_connection_survives=True)
    assert result.valid, result.summary()
    assert result.connection["survived"] is True


def test_downtime_around_faults_is_exact(history: History, clock: Clock):
    ops: list[Op] = []
    for t, action in [(10.0, "invoke"), (10.25, "ok"), (10.5, "invoke"), (10.75, "ok"),
                      (11.0, "kill"), (11.25, "invoke"), (14.0, "timeout"), (14.5, "invoke"),
                      (15.0, "ok"), (16.0, "failover-done"), (16.5, "invoke"), (17.0, "ok")]:
        clock.next = t
        if action == "invoke":
            ops.append(history.invoke("client-1", "read", "k0", None, 1 if t < 14 else 2))
        elif action in ("kill", "failover-done"):
            history.nemesis(action, "primary")
        else:
            history.complete(ops[-1], action,
                             error="timeout after 2.75s" if action == "timeout" else None)
    result = check(history, {})
    assert result.valid, result.summary()
    assert result.downtime == {
        "max_gap_s": 4.25,
        "around_faults": [{"fault": "kill primary", "at": 0.0, "gap_s": 4.25,
                           "first_ok_after_s": 4.0}]}
    assert result.connection["breaks"] == [{"client": "client-1", "conn": 1, "at": 3.0,
                                            "error": "timeout after 2.75s"}]
    assert result.connection["first_conn_ops"] == 2


def test_downtime_without_recovery(history: History):
    write(history, "k0", "w1", seq=1)
    history.nemesis("kill", "primary")
    result = check(history, {"k0": (1, "w1")})
    assert result.downtime["around_faults"][0]["gap_s"] is None
    assert result.downtime["around_faults"][0]["first_ok_after_s"] is None
    assert result.downtime["max_gap_s"] is None


# ---------------------------------------------------------------------- history plumbing


def test_jsonl_round_trip(history: History, tmp_path: Path):
    write(history, "k0", "w1", seq=1)
    history.nemesis("stop", "secondary", "heartbeat")
    op = history.invoke("client-1", "write", "k0", "w2", 1)
    history.complete(op, "timeout", error="timeout after 5s")
    path = tmp_path / "history.jsonl"
    history.to_jsonl(path)
    again = History.from_jsonl(path)
    assert again.ops == history.ops
    assert len(again) == 5
    assert check(again, {"k0": (1, "w1")}).to_json() == check(history,
                                                               {"k0": (1, "w1")}).to_json()
    assert again.new_value() == "w3"  # values stay unique if the history goes on


def test_pairs_match_invokes_with_completions(history: History):
    write(history, "k0", "w1", seq=1)
    read(history, "k0", "w1", process="client-2")
    history.invoke("client-1", "read", "k0", None, 1)
    pairs = history.pairs()
    assert [(i.process, i.f, d.type if d else None) for i, d in pairs] == [
        ("client-1", "write", "ok"), ("client-2", "read", "ok"), ("client-1", "read", None)]


def test_summary_and_json_name_the_verdict(history: History):
    write(history, "k0", "w1", seq=1)
    history.nemesis("kill", "primary")
    result = check(history, {})
    assert result.summary().startswith("history INVALID")
    assert "lost acknowledged write: k0=w1" in result.summary()
    assert "kill primary at +0.000s: no ok op after it" in result.summary()
    read(history, "k0", None)
    assert "kill primary at +0.000s: gap 0.3s, first ok 0.2s after" in check(
        history, {"k0": (1, "w1")}).summary()
    assert result.to_json()["lost_writes"] == result.lost_writes


def test_write_acknowledged_after_the_final_read_began_is_concurrent(history: History):
    write(history, "k0", "w1", seq=1)  # ok at 100.2
    final_at = history.ops[-1].time + 0.05
    write(history, "k0", "w2", seq=2)  # invoked 100.3, ok at 100.4: after the read began
    assert check(history, {"k0": (1, "w1")}, final_at=final_at).valid
    assert not check(history, {"k0": (1, "w1")}).valid  # without the moment it counts as lost


def test_write_acknowledged_before_the_final_read_must_be_there(history: History):
    write(history, "k0", "w1", seq=1)
    write(history, "k0", "w2", seq=2)
    final_at = history.ops[-1].time + 0.05
    result = check(history, {"k0": (1, "w1")}, final_at=final_at)
    assert result.lost_writes and "k0=w2" in result.lost_writes[0]


# ---------------------------------------------------------------------- Workload, fake agent


class FakeAgent(socketserver.ThreadingTCPServer):
    """The agent's PUT/GET protocol in-process, with faults: ``err_keys`` answer
    ``ERR full``, request number ``drop_at`` is applied and the connection then closed
    unanswered, and after ``hang_after`` requests nothing more is answered."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FakeHandler)
        self.store: dict[str, tuple[int, str]] = {}
        self.seq = 0
        self.requests = 0
        self.lock = threading.Lock()
        self.err_keys: set[str] = set()
        self.drop_at: int | None = None
        self.hang_after: int | None = None
        self.released = threading.Event()  # set at teardown: hung handlers return

    def answer(self, line: str) -> str | None:
        with self.lock:
            self.requests += 1
            if self.hang_after is not None and self.requests > self.hang_after:
                return None
            word, key, *rest = line.split(" ")
            if word == "PUT" and key in self.err_keys:
                return "ERR full"
            if word == "PUT":
                self.seq += 1
                self.store[key] = (self.seq, rest[0])
                reply = f"OK {self.seq}"
            else:
                got = self.store.get(key)
                reply = f"VAL {got[0]} {got[1]}" if got else "NONE"
            return "" if self.requests == self.drop_at else reply


class FakeHandler(socketserver.StreamRequestHandler):
    server: FakeAgent

    def handle(self) -> None:
        for raw in self.rfile:
            reply = self.server.answer(raw.decode().strip())
            if reply == "":
                return  # applied, but the connection closes before the answer
            if reply is None:
                self.server.released.wait()
                return
            self.wfile.write(reply.encode() + b"\n")


@pytest.fixture
def agent() -> Iterator[FakeAgent]:
    server = FakeAgent()
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield server
    server.released.set()
    server.shutdown()
    server.server_close()


def connector(server: FakeAgent):
    return lambda: socket.create_connection(server.server_address, timeout=2)


def final_of(server: FakeAgent) -> dict[str, tuple[int, str] | None]:
    return dict(server.store)


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_workload_alternates_unique_writes_and_reads_on_one_connection(agent: FakeAgent):
    workload = Workload(connector(agent), History(), keys=3, pause=0.001)
    workload.start()
    workload.wait_ok(40, timeout=10)
    history = workload.stop()
    pairs = history.pairs()
    assert [i.f for i, _ in pairs[:4]] == ["write", "read", "write", "read"]
    assert [i.key for i, _ in pairs[:8:2]] == ["k0", "k1", "k2", "k0"]
    values = [i.value for i, _ in pairs if i.f == "write"]
    assert len(values) == len(set(values)) and values[0] == "w1"
    assert all(d is not None and d.type == "ok" and d.conn == 1 for _, d in pairs)
    assert pairs[1][1] is not None and pairs[1][1].value == "w1" and pairs[1][1].seq == 1
    result = check(history, final_of(agent), require_connection_survives=True)
    assert result.valid, result.summary()
    assert workload.broken == [] and workload.crash is None


def test_workload_records_err_as_fail_and_keeps_the_connection(agent: FakeAgent):
    agent.err_keys = {"k1"}
    workload = Workload(connector(agent), History(), keys=2, pause=0.001)
    workload.start()
    workload.wait_ok(10, timeout=10)
    history = workload.stop()
    fails = [d for _, d in history.pairs() if d is not None and d.type == "fail"]
    assert fails and all(d.key == "k1" and d.error and "ERR full" in d.error for d in fails)
    result = check(history, final_of(agent), require_connection_survives=True)
    assert result.valid, result.summary()
    assert result.stats["write"]["fail"] == len(fails)


def test_workload_reconnects_after_a_lost_connection(agent: FakeAgent):
    agent.drop_at = 5  # the third write is applied, then the connection drops
    workload = Workload(connector(agent), History(), pause=0.001)
    workload.start()
    workload.wait_ok(10, timeout=10)
    history = workload.stop()
    lost = [d for _, d in history.pairs() if d is not None and d.type == "info"]
    assert [(d.f, d.value, d.conn) for d in lost] == [("write", "w3", 1)]
    assert lost[0].error == "ConnectionError: the agent closed the connection"
    assert [(b.conn, b.error) for b in workload.broken] == [(1, lost[0].error)]
    assert workload.broken[0].last_ok_time is not None
    assert history.ops[-1].conn == 2
    result = check(history, final_of(agent))
    assert result.valid, result.summary()
    assert result.connection["survived"] is False
    assert result.connection["breaks"][0]["error"] == lost[0].error
    assert not check(history, final_of(agent), require_connection_survives=True).valid


def test_workload_times_out_and_without_reconnect_ends(agent: FakeAgent):
    agent.hang_after = 4
    workload = Workload(connector(agent), History(), op_timeout=0.3, pause=0.001,
                        reconnect=False)
    workload.start()
    wait_for(lambda: workload.broken)
    assert workload._thread is not None
    workload._thread.join(2)
    assert not workload._thread.is_alive()
    history = workload.stop()
    assert [b.error for b in workload.broken] == ["timeout after 0.3s"]
    assert history.ops[-1].type == "timeout" and history.ops[-1].error == "timeout after 0.3s"
    assert check(history, final_of(agent)).valid


def test_workload_stop_interrupts_a_hung_operation(agent: FakeAgent):
    agent.hang_after = 2
    workload = Workload(connector(agent), History(), op_timeout=30, pause=0.001)
    workload.start()
    wait_for(lambda: agent.requests >= 3)
    started = time.monotonic()
    history = workload.stop(timeout=0.2)
    assert time.monotonic() - started < 5
    assert history.ops[-1].type == "info" and history.ops[-1].error == STOPPED
    assert workload.broken == []
    assert check(history, final_of(agent), require_connection_survives=True).valid


def test_workload_records_a_request_never_sent_as_fail():
    def dead_connection() -> socket.socket:
        ours, theirs = socket.socketpair()
        theirs.close()
        return ours

    workload = Workload(dead_connection, History(), reconnect=False)
    workload.start()
    wait_for(lambda: workload.broken)
    history = workload.stop()
    assert [(op.type, op.f, op.value, op.conn) for op in history] == [
        ("invoke", "write", "w1", 1), ("fail", "write", "w1", 1)]
    reason = "not sent: BrokenPipeError: [Errno 32] Broken pipe"
    assert history.ops[-1].error == reason
    assert [(b.conn, b.error, b.last_ok_time) for b in workload.broken] == [(1, reason, None)]
    result = check(history, {})
    assert result.valid and result.connection["survived"] is False
    assert [b["error"] for b in result.connection["breaks"]] == [reason]


def test_workload_retries_connecting_without_ops():
    attempts = []

    def refuse() -> socket.socket:
        attempts.append(time.monotonic())
        raise ConnectionRefusedError(111, "Connection refused")

    workload = Workload(refuse, History())
    workload.start()
    wait_for(lambda: len(attempts) >= 2)
    history = workload.stop()
    assert len(history) == 0 and workload.broken == [] and workload.crash is None
    assert workload.connect_errors[-1].endswith("ConnectionRefusedError: [Errno 111] "
                                                "Connection refused")


def test_workloads_sharing_a_history_write_unique_values(agent: FakeAgent):
    history = History()
    workloads = [Workload(connector(agent), history, keys=2, pause=0.001, process=f"client-{n}")
                 for n in (1, 2)]
    for workload in workloads:
        workload.start()
    for workload in workloads:
        workload.wait_ok(20, timeout=10)
    for workload in workloads:
        workload.stop()
    values = [op.value for op in history.ops if op.f == "write" and op.type == "invoke"]
    assert len(values) == len(set(values))
    result = check(history, final_of(agent))
    assert result.valid, result.summary()
