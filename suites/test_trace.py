"""Trace events: controlled through QMP, parsed from the -D log, and the COLO protocol checked.

Each checkpoint's message sequence is walked on both sides (checkpoint-request →
checkpoint-reply → vmstate-send → vmstate-size → vmstate-received → vmstate-loaded, with
the VM stopping and resuming around it), and after a failover the state machine
require → active → completed; the first event out of order fails the test.
"""

from __future__ import annotations

import allure
import pytest

from colo_fixtures.qemu import QemuError
from colo_fixtures.trace import check_protocol, read_trace

pytestmark = [pytest.mark.colo, pytest.mark.trace, allure.epic("COLO"), allure.feature("trace")]

DELAY_MS = 1000


def event_states(process, pattern: str) -> dict[str, bool]:
    return {e["name"]: e["state"] == "enabled"
            for e in process.qmp("trace-event-get-state", name=pattern)}


@allure.story("trace events are switched through QMP and read back")
def test_trace_event_state_via_qmp(start_colo):
    colo = start_colo(DELAY_MS)
    primary = colo.pair.primary
    for pattern in ("qemu_rdma*", "colo_compare*", "colo*"):
        primary.qmp("trace-event-set-state", name=pattern, enable=True)
        states = event_states(primary, pattern)
        assert states and all(states.values()), f"{pattern}: not all enabled: {states}"
    primary.qmp("trace-event-set-state", name="qemu_rdma*", enable=False)
    assert not any(event_states(primary, "qemu_rdma*").values())
    assert all(event_states(primary, "colo_compare*").values()), "disabling one touched another"
    with pytest.raises(QemuError, match='unknown event "no_such_event"'):
        primary.qmp("trace-event-set-state", name="no_such_event", enable=True)


@allure.story("every checkpoint follows the COLO protocol on both sides")
def test_checkpoint_protocol_on_both_sides(start_colo):
    colo = start_colo(DELAY_MS)
    colo.wait_agent_ready()
    agent = colo.agent()
    for i in range(10):  # traffic, so colo-compare adds checkpoints of its own
        agent.put(f"k{i}", "v")
        agent.ping()
    pair = colo.pair
    pair.wait_checkpoints(len(pair.checkpoints()) + 5, timeout=60)
    reports = {side.name: check_protocol(read_trace(side.trace_log), side.name)
               for side in pair.sides}
    colo.write_metrics("protocol", {name: vars(r) for name, r in reports.items()})
    primary, secondary = reports["primary"], reports["secondary"]
    assert primary.checkpoints >= 5
    # The secondary may be one step behind or ahead inside the checkpoint in flight.
    assert abs(primary.checkpoints - secondary.checkpoints) <= 1, reports


@allure.story("failover follows require → active → completed")
def test_failover_state_machine(start_colo):
    colo = start_colo(DELAY_MS)
    colo.wait_agent_ready()
    pair = colo.pair
    pair.wait_checkpoints(len(pair.checkpoints()) + 2, timeout=60)
    survivor = pair.secondary
    at = colo.faults.kill(pair.primary)
    pair.failover_to_secondary(since=at)
    report = check_protocol(read_trace(survivor.trace_log), "secondary")
    colo.write_metrics("failover-protocol", vars(report))
    assert report.failover == ("require", "active", "completed")
    assert report.checkpoints >= 2
