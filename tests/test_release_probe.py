"""The COLO health invariant "replies are released by comparison, not by checkpoints":
the classification on checkpoint timelines, then on a real pair, healthy and with the
secondary's output cut off from colo-compare (its redirector f2 deleted through QMP).
"""

from __future__ import annotations

import pytest

from colo_fixtures.core.verdicts import SecondaryOutputLost, SpuriousMiscompare
from colo_fixtures.evidence.miscompare import Miscompare
from colo_fixtures.evidence.release_probe import (
    Probe,
    check_output_compared,
    check_released_by_compare,
    released_by,
)
from colo_fixtures.sut.trace import Checkpoint

# Checkpoints every second, pausing the primary 60 ms each (requested 1 ms before the stop).
POINTS = [Checkpoint(10.0 + i, 10.001 + i, 10.061 + i) for i in range(5)]


def test_reply_inside_a_checkpoint_it_waited_for_is_released_by_it():
    probe = Probe(sent=10.4, replied=11.03)  # waited 0.6 s, came during checkpoint 11.0
    assert released_by(probe, POINTS) is POINTS[1]


def test_fast_reply_between_checkpoints_is_released_by_comparison():
    assert released_by(Probe(10.3, 10.32), POINTS) is None


def test_reply_after_a_pause_it_was_held_by_is_not_a_checkpoint_release():
    """A request arriving while the primary is stopped is answered after it resumes:
    a comparison release, though a checkpoint came while it waited."""
    assert released_by(Probe(10.99, 11.08), POINTS) is None


def test_reply_in_a_checkpoint_that_began_before_the_request_is_not_its_release():
    assert released_by(Probe(11.01, 11.03), POINTS) is None


def test_unfinished_checkpoint_window_is_open():
    points = [Checkpoint(20.0, 20.001, None)]
    assert released_by(Probe(19.5, 20.02), points) is points[0]


def test_all_released_by_checkpoints_is_the_secondary_output_lost():
    probes = [Probe(10.5 + i, 11.02 + i) for i in range(3)]
    with pytest.raises(SecondaryOutputLost, match=r"3 of 3 .* secondary's output"):
        check_released_by_compare(probes, POINTS, "secondary")


def test_released_by_checkpoints_colo_compare_asked_for_is_a_spurious_miscompare():
    """Seen with mutant compare-payload-always-differs: every reply held until the
    checkpoint colo-compare asked for after judging it different from the same reply."""
    probes = [Probe(10.5 + i, 11.02 + i) for i in range(3)]
    asked = [Miscompare(p.requested - 0.001, p.requested, 120, 120) for p in POINTS[1:4]]
    with pytest.raises(SpuriousMiscompare, match=r"3 of 3 .* 3 of them asked for by "
                       r"colo-compare .*primary 120 / secondary 120 bytes"):
        check_released_by_compare(probes, POINTS, "secondary", asked)
    with pytest.raises(SecondaryOutputLost):  # one of three asked for: not the cause
        check_released_by_compare(probes, POINTS, "secondary", asked[:1])


def test_most_released_by_checkpoints_is_the_secondary_output_lost():
    """Seen 2026-12-03: four replies inside the checkpoint they waited for, the fifth just
    past its primary's resume (judged compared), all about one checkpoint period late."""
    probes = [Probe(10.75 + i, 11.02 + i) for i in range(4)] + [Probe(14.77, 15.07)]
    with pytest.raises(SecondaryOutputLost, match=r"4 of 5 .* secondary's output"):
        check_released_by_compare(probes, POINTS, "secondary")


def test_a_majority_of_compared_replies_is_healthy():
    probes = [Probe(10.5, 11.02), Probe(11.2, 11.21), Probe(11.3, 11.31)]
    assert check_released_by_compare(probes, POINTS, "secondary") == [POINTS[1], None, None]


def test_real_pair_releases_by_comparison_until_the_secondary_output_is_cut(start_colo):
    """Healthy: wait_agent_ready's probe passes. With the secondary's redirector f2 (its
    guest's output to colo-compare) deleted, every reply waits for a checkpoint."""
    colo = start_colo(1000)
    colo.wait_agent_ready()  # runs the probe: a healthy pair passes it
    releases = check_output_compared(colo.agent(), colo.pair)
    assert releases.count(None) >= len(releases) - 1, releases
    colo.pair.secondary.qmp("object-del", id="f2")
    with pytest.raises(SecondaryOutputLost,
                       match=r"of 5 .* secondary's output does not reach colo-compare"):
        check_output_compared(colo.agent(), colo.pair)
