"""Trace log parsing and the checkpoint reconstruction, on lines in QEMU's log format."""

from __future__ import annotations

import pytest

from colo_fixtures.colo import describe_stall
from colo_fixtures.trace import (
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
4242@1700000002.000500:colo_vm_state_change Change 'run' => 'stop'
4242@1700000002.100500:colo_vm_state_change Change 'stop' => 'run'
"""


def test_parse_trace_lines():
    records = parse_trace(PRIMARY)
    assert len(records) == 13  # the non-trace line is skipped
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


def test_percentile_nearest_rank():
    values = [0.01 * i for i in range(1, 101)]
    assert percentile(values, 0.5) == pytest.approx(0.50)
    assert percentile(values, 0.95) == pytest.approx(0.95)
    assert percentile([3.0], 0.95) == 3.0
    with pytest.raises(ValueError):
        percentile([], 0.5)
