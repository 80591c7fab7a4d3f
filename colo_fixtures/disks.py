"""Replication disks: the primary's disk, and the secondary's base, active and hidden layers.

All have the same virtual size (QEMU's replication driver requires it). Each is made
with qemu-img on the host that owns it, in that host's scratch directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from colo_fixtures.hosts import Host


@dataclass(frozen=True)
class SecondaryDisks:
    """A secondary's disks, as seen by its host."""

    base: Path
    active: Path
    hidden: Path
    size_mib: int


def make_primary_disk(host: Host, directory: Path, size_mib: int) -> Path:
    """An empty raw disk for the primary (the guest agent's log starts empty)."""
    disk = directory / "primary.raw"
    host.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), f"{size_mib}M"])
    return disk


def make_secondary_disks(host: Host, directory: Path, size_mib: int,
                         copy_of: Path | None) -> SecondaryDisks:
    """Base (a byte-identical copy of ``copy_of``, or empty when a resync will fill it) and
    empty qcow2 active and hidden layers of the same size."""
    disks = SecondaryDisks(directory / "secondary-base.raw",
                           directory / "secondary-active.qcow2",
                           directory / "secondary-hidden.qcow2", size_mib)
    size = f"{size_mib}M"
    if copy_of is not None:
        host.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "raw", str(copy_of),
                  str(disks.base)])
    else:
        host.run(["qemu-img", "create", "-q", "-f", "raw", str(disks.base), size])
    for layer in (disks.active, disks.hidden):
        host.run(["qemu-img", "create", "-q", "-f", "qcow2", str(layer), size])
    return disks


def scratch_root() -> Path:
    """Where scratch directories go: /dev/shm (tmpfs, as the seed's /mnt/ramfs) when usable."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() else Path("/tmp")
