"""Disk evidence: do the replicas hold the same bytes, and does a survivor hold every write?"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from colo_fixtures.core.events import phase
from colo_fixtures.core.verdicts import DiskDivergence
from colo_fixtures.lab.hosts import LocalHost
from colo_fixtures.sut.colo_pair import ColoPair
from colo_fixtures.sut.disks import allocated_bytes, digest, images_identical, raw_copy
from colo_fixtures.sut.guest.records import KvRecord, disk_store, parse_disk_records
from colo_fixtures.sut.qemu import QemuProcess


@dataclass(frozen=True)
class ReplicaComparison:
    """The primary's disk against the secondary's base and live view, after a checkpoint."""

    size: int
    mismatching_offsets: dict[str, list[str]]
    qemu_img_compare: dict[str, str]
    identical: bool
    layers_before: dict[str, int]
    layers_after: dict[str, int]
    checkpoints_in_window: int
    window_s: float
    store: dict[str, KvRecord]

    def require_identical(self, what: str = "replicas") -> None:
        """Raise DiskDivergence naming the first differing offsets, if the disks differ."""
        if not self.identical:
            raise DiskDivergence(f"{what} differ at {self.mismatching_offsets}: "
                                 f"{self.qemu_img_compare}")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["store"] = {key: record.value for key, record in self.store.items()}
        return data


@phase("check: the replicas' disks are identical")
def compare_replicas(pair: ColoPair, scratch: Path) -> ReplicaComparison:
    """Force a checkpoint, then in the quiet window after it (the caller stops client writes
    first) compare the primary's disk, the secondary's base and its live view: by
    ``qemu-img compare`` and by per-MiB digests, and check the secondary's layers are empty."""
    primary, secondary = pair.primary_replica, pair.secondary_replica
    assert primary is not None and secondary is not None, "compare_replicas needs COLO running"
    disks = secondary.secondary_disks
    pri_host, sec_host = pair.hosts[primary.host.role], pair.hosts[secondary.host.role]
    primary_disk = _primary_source(pair, primary.process)

    def layers() -> dict[str, int]:
        assert disks is not None
        return {"active": allocated_bytes(sec_host, disks.active),
                "hidden": allocated_bytes(sec_host, disks.hidden)}

    layers_before = layers()
    before = len(pair.checkpoints())
    delay = pair.primary.qmp("query-migrate-parameters")["x-checkpoint-delay"]
    pair.set_checkpoint_delay(delay)  # forces a checkpoint now
    pair.wait_checkpoints(before + 1, timeout=30)
    started = time.time()
    layers_after = layers()
    scratch.mkdir(parents=True, exist_ok=True)
    with pair.live_export(pair.secondary) as live, primary_disk as pri_source:
        sources = {"primary disk": pri_source, "secondary base": str(disks.base),
                   "secondary live view": live}
        hosts = {"primary disk": pri_host, "secondary base": sec_host,
                 "secondary live view": pri_host}
        copies = {name: raw_copy(hosts[name], source, scratch / f"{i}.raw",
                                 host_dir=pair.scratch / "copies")
                  for i, (name, source) in enumerate(sources.items())}
        digests = {name: digest(copy, name) for name, copy in copies.items()}
        messages = {}
        same = True
        for name in ("secondary base", "secondary live view"):
            if pri_host.is_local and sec_host.is_local:  # the images themselves
                identical, messages[name] = images_identical(pri_host, pri_source,
                                                             sources[name])
            else:  # hosts apart: their byte-exact copies, here
                identical, messages[name] = images_identical(
                    LocalHost(), str(copies["primary disk"]), str(copies[name]))
            same = same and identical
    reference = digests["primary disk"]
    mismatches = {name: [hex(offset) for offset in reference.differing_offsets(d)]
                  for name, d in digests.items() if name != "primary disk"}
    identical = same and not any(mismatches.values())
    store = disk_store(parse_disk_records((scratch / "0.raw").read_bytes()))
    return ReplicaComparison(reference.size, mismatches, messages, identical, layers_before,
                             layers_after, len(pair.checkpoints()) - before - 1,
                             time.time() - started, store)


def _primary_source(pair: ColoPair, process: QemuProcess) -> AbstractContextManager[str]:
    """The primary's disk as a path (born a primary) or a live NBD export (a former secondary,
    whose disk is a chain of layers)."""
    replica = pair.replica_of(process)
    if replica.primary_disk is not None:
        return nullcontext(str(replica.primary_disk))
    return pair.live_export(process)


@phase("check: read the survivor's disk store")
def survivor_log(pair: ColoPair, scratch: Path) -> list[KvRecord]:
    """Every key-value record on the disk of the VM now running alone (its live view), in
    seq order: the agent's whole write log."""
    survivor = pair.primary_replica
    assert survivor is not None
    host = pair.hosts[survivor.host.role]
    scratch.mkdir(parents=True, exist_ok=True)
    with pair.live_export(survivor.process) as live:
        image = raw_copy(host, live, scratch / "survivor.raw", host_dir=pair.scratch / "copies")
    return parse_disk_records(image.read_bytes())
