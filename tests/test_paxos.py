"""The DARE log parser and the Paxos group checks, on lines in the documented format."""

from __future__ import annotations

from colo_fixtures.sut.vmft.paxos import check_group, parse_dare_log

PRIMARY = """\
>> Connection establish <<
[1700000000:000100] [T1] Start election
[1700000000:000200] [T1] Votes: (2, 1, 0)
[1700000000:000300] [T1] LEADER
some other DARE chatter
[LEADER 1] output_counter 12, 3ms
[LEADER 2] output_counter 20, 4ms
[LEADER 3] output_counter 25, 2ms
"""
SECONDARY = """\
>> Connection establish <<
[1700000000:000150] [T1] Vote for p2
[1700000000:000400] [T1] Follow p2
[BACKUP 1] output_counter 12, 3ms
[BACKUP 2] output_counter 20, 4ms
"""
SENTINEL = """\
[1700000000:000160] [T1] Vote for p2
[1700000000:000410] [T1] Follow p2
"""


def logs(primary: str = PRIMARY, secondary: str = SECONDARY, sentinel: str = SENTINEL):
    return {2: parse_dare_log(primary, 2), 1: parse_dare_log(secondary, 1),
            0: parse_dare_log(sentinel, 0)}


def test_parser_reads_every_documented_line():
    records = parse_dare_log(PRIMARY, 2)
    assert [r.kind for r in records] == ["connected", "election", "votes", "leader",
                                         "checkpoint", "checkpoint", "checkpoint"]
    votes = records[2]
    assert (votes.term, votes.voters, votes.time) == (1, (2, 1, 0), 1700000000.0002)
    assert records[4].checkpoint == 1 and records[4].role == "LEADER"
    follow = parse_dare_log(SECONDARY, 1)[2]
    assert (follow.kind, follow.peer, follow.term, follow.line_number) == ("follow", 2, 1, 3)
    error = parse_dare_log("[ERROR] dare_ibv.c/412/dare_init_ib_device() No HCAs available", 0)
    assert error[0].kind == "error"
    assert error[0].text == "dare_ibv.c/412/dare_init_ib_device() No HCAs available"


def test_a_healthy_group_is_valid():
    report = check_group(logs())
    assert report.valid, report.errors
    assert report.leaders == {1: 2}
    assert report.checkpoints == {2: 3, 1: 2, 0: 0}  # the backup's last one is in flight


def test_two_leaders_in_one_term_are_rejected():
    rogue = SENTINEL + "[1700000000:000500] [T1] LEADER\n"
    report = check_group(logs(sentinel=rogue))
    assert "term 1: two leaders, p0, p2" in report.errors


def test_a_missing_vote_is_rejected():
    report = check_group(logs(sentinel=SENTINEL.replace("Vote for p2", "Vote for p1")))
    assert report.errors == ["term 1: p2 counts a vote of p0, whose log has no 'Vote for p2'"]


def test_no_majority_and_wrong_leader_and_wrong_follower_are_rejected():
    minority = PRIMARY.replace("Votes: (2, 1, 0)", "Votes: (2)")
    assert "term 1: leader p2 has votes of [2], not a majority of 3" in check_group(
        logs(primary=minority)).errors
    report = check_group(logs(), leader=1)
    assert report.errors == ["term 1: p2 leads, expected the primary p1"]
    astray = SENTINEL.replace("Follow p2", "Follow p1")
    assert "term 1: p0 follows p1, but p2 leads" in check_group(logs(sentinel=astray)).errors


def test_errors_and_checkpoint_disagreement_are_rejected():
    broken = SECONDARY + "[ERROR] dare_server.c/90/poll_vote_requests() failed\n"
    assert check_group(logs(secondary=broken)).errors == [
        "p1 line 6: [ERROR] dare_server.c/90/poll_vote_requests() failed"]
    behind = "\n".join(line for line in SECONDARY.splitlines() if "BACKUP 2" not in line)
    assert check_group(logs(secondary=behind)).errors == [
        "checkpoints disagree: leader p2 logged 3, backup p1 1"]
    assert check_group({0: parse_dare_log(SENTINEL, 0)}).errors[-1] == \
        "no node ever became LEADER"
