"""The one wait helper: value, health check while waiting, typed verdict on timeout."""

from __future__ import annotations

import socket

import pytest

from colo_fixtures.core.verdicts import ClientTimeout, ColoNotRunning, GuestCrash, QemuError
from colo_fixtures.core.waits import wait_for
from colo_fixtures.workload.client import Workload
from colo_fixtures.workload.history import History


def test_returns_the_probes_first_value():
    answers = iter([None, False, 0, "done"])
    assert wait_for("x", lambda: next(answers), 5, interval=0) == 0  # 0 is a value


def test_timeout_raises_the_given_verdict_with_what_was_seen_and_the_diagnosis():
    with pytest.raises(ColoNotRunning) as info:
        wait_for("COLO running", lambda: None, 0.2, verdict=ColoNotRunning,
                 seen=lambda: "modes ('?', '?')", diagnosis=lambda: "primary: stderr tail")
    assert str(info.value) == ("COLO running: not within 0.2s (modes ('?', '?'))\n"
                               "primary: stderr tail")
    with pytest.raises(QemuError, match=r"^a QMP event: not within 0.1s$"):
        wait_for("a QMP event", lambda: None, 0.1)


def test_the_health_check_runs_while_waiting_and_its_verdict_wins():
    calls = []

    def health():
        calls.append(1)
        if len(calls) == 2:
            raise GuestCrash("secondary guest failed: Kernel panic")

    with pytest.raises(GuestCrash, match="Kernel panic"):
        wait_for("client ops", lambda: None, 5, health=health, verdict=ClientTimeout,
                 interval=0.05)
    assert len(calls) == 2  # the first at once, the second half a second later


def test_a_client_wait_names_a_crash_not_a_timeout():
    """A guest crash on the survivor while the client waits is a GuestCrash: the client's
    timeout (which a known issue may excuse) is never what the report shows for it."""
    def crashed():
        raise GuestCrash("secondary guest failed: general protection fault")

    def never() -> socket.socket:
        raise OSError("connection refused")

    workload = Workload(never, History(), health=crashed)
    with pytest.raises(GuestCrash):
        workload.wait_ok(1, timeout=5)
    quiet = Workload(never, History())
    with pytest.raises(ClientTimeout, match=r"client-1: 1 ok operations: not within 0.2s"):
        quiet.wait_ok(1, timeout=0.2)
