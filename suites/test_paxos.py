"""vm-ft / PLOVER: the RDMA Paxos group behind COLO, judged from DARE's logs.

Three nodes (primary = leader p2, secondary p1, sentinel p0) on a three-host lab. Needs an
RDMA device with IB port 2 active, the plug qdisc, a vm-ft tree (``--vmft-root``) and a
Python 2 for its build: without them every test here skips with the preflight's reason
(``tools/doctor`` prints the same list). The log parser and the checks run in ``make test``
on sample logs (tests/test_paxos.py).
"""

from __future__ import annotations

import allure
import pytest

# One vm-ft group per machine (fixed /dev/shm sockets, ifb0): with xdist, --dist loadgroup
# keeps these tests on one worker.
pytestmark = [pytest.mark.colo, pytest.mark.paxos, pytest.mark.rdma,
              pytest.mark.xdist_group("vmft"), allure.epic("vm-ft"), allure.feature("RDMA Paxos")]

DELAY_MS = 2000  # sync_type 1 checkpoints on idle; the delay bounds the period


@allure.story("the primary leads the Paxos group")
def test_primary_is_elected_leader(vmft_group):
    report = vmft_group.paxos_report()
    allure.attach(repr(report), "paxos report", allure.attachment_type.TEXT)
    assert report.valid, "\n".join(report.errors)
    term = max(report.leaders)
    assert report.leaders[term] == 2, f"term {term} is led by p{report.leaders[term]}"


@allure.story("leader and backup agree on checkpoints")
def test_checkpoints_agree_between_leader_and_backup(vmft_group):
    vmft_group.start_colo(DELAY_MS)
    report = vmft_group.wait_checkpoints(5, timeout=DELAY_MS / 1000 * 10 + 60)
    allure.attach(repr(report), "paxos report", allure.attachment_type.TEXT)
    assert report.valid, "\n".join(report.errors)
    assert report.checkpoints.get(2, 0) >= 5 and report.checkpoints.get(1, 0) >= 5


@allure.story("the group survives the secondary's failover command")
def test_manual_failover_keeps_one_leader(vmft_group):
    vmft_group.start_colo(DELAY_MS)
    vmft_group.wait_checkpoints(2, timeout=DELAY_MS / 1000 * 5 + 60)
    vmft_group.processes["secondary"].kill()
    vmft_group.processes["primary"].qmp("x-colo-lost-heartbeat")
    primary = vmft_group.processes["primary"]
    assert primary.qmp("query-status")["status"] == "running"
    report = vmft_group.paxos_report()  # 2 of 3 nodes left: still a majority behind p2
    assert report.valid, "\n".join(report.errors)
    assert report.leaders[max(report.leaders)] == 2, report.leaders
