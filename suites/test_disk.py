"""Disk consistency: replicas identical after a checkpoint, survivors hold every write.

In a quiet window (no client writes) after a forced checkpoint, the primary's disk, the
secondary's base and the secondary's live view (a temporary read-only NBD export of its
quorum node) are compared with ``qemu-img compare`` and by per-MiB digests, so that a
difference names its offset; the secondary's active and hidden layers must be empty again.
After a failover, the survivor's disk must hold every write the client saw acknowledged.
"""

from __future__ import annotations

import allure
import pytest

from colo_fixtures.core.verdicts import LostWrite, require_memory_clean
from colo_fixtures.evidence.consistency import compare_replicas, survivor_log
from colo_fixtures.sut.guest.records import disk_store
from colo_fixtures.workload.checker import check

pytestmark = [pytest.mark.colo, pytest.mark.disk, allure.epic("COLO"), allure.feature("disk")]

DELAY_MS = 20000  # long: the forced checkpoint is the only one in the quiet window


@allure.story("replicas identical in a quiet window after a checkpoint")
def test_replicas_identical_after_checkpoint(start_colo, tmp_path):
    colo = start_colo(DELAY_MS)
    colo.wait_agent_ready()
    agent = colo.agent()
    acked = {f"k{i}": (agent.put(f"k{i}", f"v{i}-{j}"), f"v{i}-{j}")
             for j in range(3) for i in range(10)}
    comparison = compare_replicas(colo.pair, tmp_path)
    colo.write_metrics("disk-consistency", comparison.to_json())
    comparison.require_identical()
    assert comparison.layers_before["active"] > 0, "writes never reached the active layer"
    assert comparison.layers_after == {"active": 0, "hidden": 0}, (
        f"layers not emptied by the checkpoint: {comparison.layers_after}")
    for key, (seq, value) in acked.items():
        record = comparison.store.get(key)
        if record is None or (record.seq, record.value) != (seq, value):
            raise LostWrite(f"lost acknowledged write: {key}={value} (seq {seq}) is not on "
                            f"the primary's disk (found {record})")


@allure.story("the survivor's disk holds every acknowledged write")
@pytest.mark.parametrize("victim", ["primary", "secondary"])
def test_survivor_disk_holds_acknowledged_writes(start_colo, tmp_path, victim):
    colo = start_colo(2000)
    colo.wait_agent_ready()
    workload = colo.workload()
    workload.wait_ok(30, timeout=60)
    pair = colo.pair
    if victim == "primary":
        at = colo.faults.kill(pair.primary)
        pair.failover_to_secondary(since=at)
    else:
        at = colo.faults.kill(pair.secondary)
        pair.failover_to_primary(since=at)
    workload.wait_ok(10, timeout=60, since=colo.history.ops[-1].time)
    workload.stop()
    records = survivor_log(pair, tmp_path)
    final = {key: (record.seq, record.value) for key, record in disk_store(records).items()}
    # Every acknowledged write as its own record on disk, and the newest value of each key.
    result = check(colo.history, final, log={r.seq: (r.key, r.value) for r in records})
    mem = colo.agent().mem()
    colo.write_metrics("survivor-disk", {"victim": victim, "records": len(records),
                                         "survivor_memcheck": mem, "check": result.to_json()})
    result.assert_valid()
    require_memory_clean(mem, "the survivor")
