"""Trace log parsing and the checkpoint reconstruction, on lines in QEMU's log format."""

from __future__ import annotations

import pytest

from colo_fixtures.sut.colo_pair import describe_stall
from colo_fixtures.sut.trace import (
    ProtocolViolation,
    check_protocol,
    check_rdma_migration,
    checkpoints,
    colo_message,
    intervals,
    parse_trace,
    percentile,
)

# The primary's view of two checkpoints, as QEMU 7.2's log backend prints them.
PRIMARY = """\
4242@1700000000.000100:colo_receive_message Receive 'checkpoint-ready' message
4242@1700000000.000300:colo_vm_state_change Change 'stop' => 'run'
4242@1700000001.000000:colo_send_message Send 'checkpoint-request' message
4242@1700000001.000900:colo_receive_message Receive 'checkpoint-reply' message
4242@1700000001.001000:colo_vm_state_change Change 'run' => 'stop'
4242@1700000001.002000:colo_send_message Send 'vmstate-send' message
qemu-system-x86_64: some unrelated message
4242@1700000001.040000:colo_send_message Send 'vmstate-size' message
4242@1700000001.050000:colo_receive_message Receive 'vmstate-received' message
4242@1700000001.055000:colo_receive_message Receive 'vmstate-loaded' message
4242@1700000001.061000:colo_vm_state_change Change 'stop' => 'run'
4242@1700000002.000000:colo_send_message Send 'checkpoint-request' message
4242@1700000002.000400:colo_receive_message Receive 'checkpoint-reply' message
4242@1700000002.000500:colo_vm_state_change Change 'run' => 'stop'
4242@1700000002.001000:colo_send_message Send 'vmstate-send' message
4242@1700000002.050000:colo_send_message Send 'vmstate-size' message
4242@1700000002.090000:colo_receive_message Receive 'vmstate-received' message
4242@1700000002.100000:colo_receive_message Receive 'vmstate-loaded' message
4242@1700000002.100500:colo_vm_state_change Change 'stop' => 'run'
"""


def test_parse_trace_lines():
    records = parse_trace(PRIMARY)
    assert len(records) == 18  # the non-trace line is skipped
    first = records[0]
    assert first.tid == 4242
    assert first.timestamp == pytest.approx(1700000000.0001)
    assert first.name == "colo_receive_message"
    assert colo_message(first) == "checkpoint-ready"
    assert colo_message(records[1]) is None


def test_checkpoints_and_pauses():
    points = checkpoints(parse_trace(PRIMARY))
    assert len(points) == 2  # the initial stop=>run is not a checkpoint
    assert points[0].pause == pytest.approx(0.060, abs=1e-5)
    assert points[1].pause == pytest.approx(0.100, abs=1e-5)
    assert intervals(points) == [pytest.approx(1.0, abs=1e-5)]


def test_unfinished_checkpoint_has_no_pause():
    text = PRIMARY + "4242@1700000003.000000:colo_send_message Send 'checkpoint-request' message\n"
    points = checkpoints(parse_trace(text))
    assert len(points) == 3
    assert points[-1].resumed is None and points[-1].pause is None


def test_stall_after_vmstate_loaded_is_named_the_tcg_deadlock():
    text = "\n".join(PRIMARY.splitlines()[:10]) + "\n"  # ends at 'vmstate-loaded'
    records = parse_trace(text)
    points = checkpoints(records)
    last = [m for m in map(colo_message, records) if m][-1]
    message = describe_stall(points, last)
    assert "checkpoint #1 after 'vmstate-loaded'" in message
    assert "TCG checkpoint deadlock" in message
    assert "before its first checkpoint" in describe_stall([], None)
    under_kvm = describe_stall(points, last, "kvm")
    assert "not that known bug" in under_kvm and "0001 fixes it" not in under_kvm


def test_percentile_nearest_rank():
    values = [0.01 * i for i in range(1, 101)]
    assert percentile(values, 0.5) == pytest.approx(0.50)
    assert percentile(values, 0.95) == pytest.approx(0.95)
    assert percentile([3.0], 0.95) == 3.0
    with pytest.raises(ValueError):
        percentile([], 0.5)


SECONDARY = """\
77@1700000000.000100:colo_vm_state_change Change 'stop' => 'run'
77@1700000000.000200:colo_send_message Send 'checkpoint-ready' message
77@1700000001.000100:colo_receive_message Receive 'checkpoint-request' message
77@1700000001.000200:colo_vm_state_change Change 'run' => 'stop'
77@1700000001.000300:colo_send_message Send 'checkpoint-reply' message
77@1700000001.001000:colo_receive_message Receive 'vmstate-send' message
77@1700000001.040000:colo_receive_message Receive 'vmstate-size' message
77@1700000001.041000:colo_send_message Send 'vmstate-received' message
77@1700000001.041100:colo_flush_ram_cache_begin dirty_pages 2278
77@1700000001.045000:colo_flush_ram_cache_end
77@1700000001.046000:colo_vm_state_change Change 'stop' => 'run'
77@1700000001.046100:colo_send_message Send 'vmstate-loaded' message
77@1700000002.000100:colo_receive_message Receive 'checkpoint-request' message
77@1700000002.100000:colo_failover_set_state new state require
77@1700000002.100100:colo_failover_set_state new state active
77@1700000002.100200:colo_vm_state_change Change 'stop' => 'run'
77@1700000002.100300:colo_failover_set_state new state completed
"""


def test_primary_protocol_walks_every_checkpoint():
    report = check_protocol(parse_trace(PRIMARY), "primary")
    assert (report.checkpoints, report.unfinished, report.failover) == (2, False, ())


def test_secondary_protocol_with_unfinished_checkpoint_and_failover():
    report = check_protocol(parse_trace(SECONDARY), "secondary")
    assert report.checkpoints == 1 and report.unfinished
    assert report.failover == ("require", "active", "completed")


def test_first_out_of_order_event_is_named():
    lines = PRIMARY.splitlines()
    swapped = [*lines[:5], lines[7], lines[6], lines[5], *lines[8:]]  # size before send
    with pytest.raises(ProtocolViolation) as info:
        check_protocol(parse_trace("\n".join(swapped)), "primary")
    message = str(info.value)
    assert message.startswith("primary: send:vmstate-size at 1700000001.040000")
    assert "where send:vmstate-send was due" in message


def test_message_after_failover_and_failover_out_of_order_are_violations():
    late = SECONDARY + "77@1700000003.0:colo_send_message Send 'checkpoint-reply' message\n"
    late = late.replace("1700000003.0:", "1700000003.000000:")
    with pytest.raises(ProtocolViolation, match="no COLO message after failover"):
        check_protocol(parse_trace(late), "secondary")
    skipped = SECONDARY.replace("new state active", "new state completed", 1)
    with pytest.raises(ProtocolViolation, match="where failover:active was due"):
        check_protocol(parse_trace(skipped), "secondary")


# An rdma: migration as QEMU 7.2's log backend prints the qemu_rdma_* events.
RDMA_SOURCE = """\
900@1700000100.000100:qemu_rdma_resolve_host_trying Trying 10.0.0.2 => 10.0.0.2
900@1700000100.000900:qemu_rdma_registration_start 0
900@1700000100.001000:qemu_rdma_registration_stop 0
900@1700000100.050000:qemu_rdma_write_flush sent total: 32
900@1700000100.060000:qemu_rdma_registration_start 16
900@1700000100.070000:qemu_rdma_registration_stop 16
900@1700000100.200000:qemu_rdma_registration_start 16
900@1700000100.210000:qemu_rdma_registration_stop 16
900@1700000100.300000:qemu_rdma_close
"""
RDMA_DESTINATION = """\
901@1700000099.900000:qemu_rdma_dest_init_trying 10.0.0.2 => 10.0.0.2
901@1700000100.000200:qemu_rdma_accept_incoming_migration
901@1700000100.000300:qemu_rdma_accept_incoming_migration_accepted
901@1700000100.000950:qemu_rdma_registration_handle_wait
901@1700000100.000960:qemu_rdma_registration_handle_ram_blocks
901@1700000100.001100:qemu_rdma_registration_handle_finished
901@1700000100.070100:qemu_rdma_registration_handle_finished
901@1700000100.210100:qemu_rdma_registration_handle_finished
"""


def test_rdma_migration_sequence_on_both_sides():
    source = check_rdma_migration(parse_trace(RDMA_SOURCE), "source")
    assert (source.events, source.rounds) == (9, 3)
    destination = check_rdma_migration(parse_trace(RDMA_DESTINATION), "destination")
    assert (destination.events, destination.rounds) == (8, 3)


@pytest.mark.parametrize(("side", "text", "message"), [
    ("source", "", "source: rdma migration never reached qemu_rdma_resolve_host_trying after "
                   "the start (seen: no qemu_rdma_* event)"),
    ("destination", RDMA_DESTINATION.replace("accept_incoming_migration_accepted", "close"),
     "destination: rdma migration never reached qemu_rdma_accept_incoming_migration_accepted "
     "after "
     "qemu_rdma_accept_incoming_migration"),
    ("source", RDMA_SOURCE.replace("1700000100.070000:qemu_rdma_registration_stop",
                                   "1700000100.070000:qemu_rdma_registration_start"),
     "source: registration_start at 1700000100.070000 (qemu_rdma_registration_start '16') "
     "where registration_stop was due"),
    ("source", RDMA_SOURCE.rsplit("900@1700000100.210000", 1)[0],
     "source: registration_start at 1700000100.200000 never stopped"),
])
def test_rdma_migration_violations(side, text, message):
    with pytest.raises(ProtocolViolation) as info:
        check_rdma_migration(parse_trace(text), side)
    assert str(info.value).startswith(message)
