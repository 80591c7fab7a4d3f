"""Disk consistency: after a checkpoint the replicas' disks are identical, byte for byte.

In a quiet window (no client writes) after a forced checkpoint, the primary's disk, the
secondary's base and the secondary's live view (a temporary read-only NBD export of its
quorum node) are compared with ``qemu-img compare`` and by per-MiB digests, so that a
difference names its offset. The secondary's active and hidden layers must be empty again.
"""

from __future__ import annotations

import time

import allure
import pytest

from colo_fixtures.disks import allocated_bytes, digest, images_identical, raw_copy
from colo_fixtures.guest import disk_store, parse_disk_records

pytestmark = [pytest.mark.colo, pytest.mark.disk, allure.epic("COLO"), allure.feature("disk")]

DELAY_MS = 20000  # long: the forced checkpoint is the only one in the quiet window


@allure.story("replicas identical in a quiet window after a checkpoint")
def test_replicas_identical_after_checkpoint(start_colo, tmp_path):
    colo = start_colo(DELAY_MS)
    colo.wait_agent_ready()
    agent = colo.agent()
    acked = {f"k{i}": (agent.put(f"k{i}", f"v{i}-{j}"), f"v{i}-{j}")
             for j in range(3) for i in range(10)}
    pair = colo.pair
    primary, secondary = pair.primary_replica, pair.secondary_replica
    pri_host, sec_host = pair.hosts[primary.host.role], pair.hosts[secondary.host.role]
    disks = secondary.secondary_disks

    def layer_bytes() -> dict[str, int]:
        return {"active": allocated_bytes(sec_host, disks.active),
                "hidden": allocated_bytes(sec_host, disks.hidden)}

    # The writes since the last checkpoint sit in the layers: the measurement sees them.
    layers_before = layer_bytes()
    before = len(pair.checkpoints())
    pair.set_checkpoint_delay(DELAY_MS)  # forces a checkpoint now
    pair.wait_checkpoints(before + 1, timeout=30)
    window_start = time.time()
    layers = layer_bytes()
    with pair.live_export(pair.secondary) as live:
        sources = {"primary disk": (pri_host, str(primary.primary_disk)),
                   "secondary base": (sec_host, str(disks.base)),
                   "secondary live view": (pri_host, live)}
        digests = {name: digest(raw_copy(host, source, tmp_path / f"{i}.raw"), name)
                   for i, (name, (host, source)) in enumerate(sources.items())}
        same_base, base_msg = images_identical(pri_host, str(primary.primary_disk),
                                               str(disks.base))
        same_live, live_msg = images_identical(pri_host, str(primary.primary_disk), live)
    window = time.time() - window_start
    checkpoints_in_window = len(pair.checkpoints()) - before - 1

    reference = digests["primary disk"]
    mismatches = {name: [hex(o) for o in reference.differing_offsets(d)]
                  for name, d in digests.items() if name != "primary disk"}
    stored = disk_store(parse_disk_records((tmp_path / "0.raw").read_bytes()))
    colo.write_metrics("disk-consistency", {
        "window_s": window, "checkpoints_in_window": checkpoints_in_window,
        "size": reference.size, "layers_allocated_bytes": layers,
        "layers_allocated_bytes_before_checkpoint": layers_before,
        "mismatching_offsets": mismatches, "qemu_img_compare": {"base": base_msg,
                                                                "live": live_msg}})
    assert not any(mismatches.values()), f"replicas differ at {mismatches}"
    assert same_base and same_live, f"qemu-img compare: {base_msg} / {live_msg}"
    assert layers_before["active"] > 0, f"writes never reached the active layer: {layers_before}"
    assert layers == {"active": 0, "hidden": 0}, f"layers not emptied by checkpoint: {layers}"
    for key, (seq, value) in acked.items():
        assert stored[key].value == value and stored[key].seq == seq, f"{key} not on disk"
