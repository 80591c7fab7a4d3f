"""The history checker on hand-made histories: what it accepts and what it must reject."""

from __future__ import annotations

from pathlib import Path

import pytest

from colo_fixtures.workload import History, check


class Clock:
    """A deterministic clock: each reading advances 0.1 s unless set."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> tuple[float, float]:
        self.now += 0.1
        return self.now, 1_700_000_000 + self.now


@pytest.fixture
def history() -> History:
    return History(clock=Clock())


def write(h: History, key: str, value: str, outcome: str = "ok", seq: int | None = None,
          conn: int = 1) -> None:
    op = h.invoke("client-1", "write", key, value, conn)
    h.complete(op, outcome, seq=seq if outcome == "ok" else None,
               error=None if outcome == "ok" else "boom")


def read(h: History, key: str, value: str | None, conn: int = 1) -> None:
    op = h.invoke("client-1", "read", key, None, conn)
    h.complete(op, "ok", value=value)


def test_valid_history_with_fault_and_reconnect(history: History):
    write(history, "k0", "w1", seq=1)
    read(history, "k0", "w1")
    history.nemesis("kill", "primary")
    op = history.invoke("client-1", "write", "k1", "w3", 1)
    history.complete(op, "info", error="ConnectionResetError")
    write(history, "k1", "w5", seq=3, conn=2)
    read(history, "k1", "w5", conn=2)
    result = check(history, {"k0": (1, "w1"), "k1": (3, "w5")})
    assert result.valid, result.summary()
    assert result.connection["survived"] is False
    assert result.connection["breaks"][0]["conn"] == 1
    assert result.stats["write"] == {"ok": 2, "fail": 0, "info": 1, "pending": 0}


def test_connection_break_is_an_error_when_required(history: History):
    write(history, "k0", "w1", seq=1)
    history.nemesis("kill", "primary")
    write(history, "k0", "w2", outcome="info")
    result = check(history, {"k0": (1, "w1")}, require_connection_survives=True)
    assert not result.valid
    assert result.errors[-1].startswith("the long-lived connection broke at +0.")


@pytest.mark.parametrize("final", [(2, "w2"), (1, "w1")])
def test_indeterminate_write_may_or_may_not_appear(history: History, final):
    write(history, "k0", "w1", seq=1)
    write(history, "k0", "w2", outcome="info")
    result = check(history, {"k0": final})
    assert result.valid, result.summary()


def test_lost_acknowledged_write_is_rejected(history: History):
    write(history, "k0", "w1", seq=1)
    write(history, "k0", "w2", seq=2)
    history.nemesis("kill", "primary")
    result = check(history, {"k0": (1, "w1")})
    assert not result.valid
    assert result.lost_writes == [
        "lost acknowledged write: k0=w2 (seq 2, ok at -0.100s) but the survivor has k0=w1"]


def test_acknowledged_write_missing_entirely_is_lost(history: History):
    write(history, "k3", "w1", seq=1)
    result = check(history, {})
    assert result.lost_writes and "survivor has k3=nothing" in result.lost_writes[0]


def test_read_going_backwards_is_stale(history: History):
    write(history, "k0", "w1", seq=1)
    write(history, "k0", "w2", outcome="info")
    read(history, "k0", "w2")
    read(history, "k0", "w1")
    result = check(history, {"k0": (2, "w2")})
    assert not result.valid
    assert result.stale_reads[0].startswith("stale read: k0 read w1 at")
    assert "after w2 was read" in result.stale_reads[0]


def test_read_missing_an_acknowledged_write_is_stale(history: History):
    write(history, "k0", "w1", seq=1)
    read(history, "k0", None)
    result = check(history, {"k0": (1, "w1")})
    assert result.stale_reads == [result.stale_reads[0]]
    assert "read NONE" in result.stale_reads[0] and "after w1 was acknowledged" in \
        result.stale_reads[0]


def test_failed_write_that_is_visible_is_rejected(history: History):
    write(history, "k0", "w1", outcome="fail")
    result = check(history, {"k0": (1, "w1")})
    assert not result.valid
    assert result.errors == ["failed write visible: the survivor has k0=w1"]


def test_phantom_final_value_is_rejected(history: History):
    write(history, "k0", "w1", seq=1)
    result = check(history, {"k0": (9, "w99")})
    assert result.errors == ["phantom value: the survivor has k0=w99, never written"]


def test_downtime_around_a_fault_is_exact(history: History):
    write(history, "k0", "w1", seq=1)  # ok at 100.2
    history.nemesis("kill", "primary")  # at 100.3
    write(history, "k0", "w2", seq=2)  # ok at 100.5
    result = check(history, {"k0": (2, "w2")})
    fault = result.downtime["around_faults"][0]
    assert fault["fault"] == "kill primary"
    assert fault["gap_s"] == pytest.approx(0.3)
    assert fault["first_ok_after_s"] == pytest.approx(0.2)
    assert result.downtime["max_gap_s"] == pytest.approx(0.3)


def test_jsonl_round_trip(history: History, tmp_path: Path):
    write(history, "k0", "w1", seq=1)
    history.nemesis("stop", "secondary", "heartbeat")
    path = tmp_path / "history.jsonl"
    history.to_jsonl(path)
    again = History.from_jsonl(path)
    assert again.ops == history.ops
    assert check(again, {"k0": (1, "w1")}).valid


def test_pairs_match_invokes_with_completions(history: History):
    write(history, "k0", "w1", seq=1)
    history.invoke("client-1", "read", "k0", None, 1)
    pairs = history.pairs()
    assert [(i.f, d.type if d else None) for i, d in pairs] == [("write", "ok"), ("read", None)]


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
