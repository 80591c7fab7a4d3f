"""Replication disks: the primary's disk, the secondary's base copy, active and hidden layers.

All four have the same virtual size (QEMU's replication driver requires it). Each is
made with qemu-img on the host that owns it, in that host's scratch directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from colo_fixtures.hosts import Host


@dataclass(frozen=True)
class ReplicationDisks:
    """Paths of one COLO pair's disks, as seen by the hosts that own them."""

    primary: Path
    secondary_base: Path
    active: Path
    hidden: Path
    size_mib: int


def make_replication_disks(primary: Host, primary_dir: Path, secondary: Host,
                           secondary_dir: Path, size_mib: int = 64) -> ReplicationDisks:
    """Create the primary disk (raw), its copy on the secondary, and empty qcow2 layers."""
    disks = ReplicationDisks(
        primary=primary_dir / "primary.raw",
        secondary_base=secondary_dir / "secondary-base.raw",
        active=secondary_dir / "secondary-active.qcow2",
        hidden=secondary_dir / "secondary-hidden.qcow2",
        size_mib=size_mib,
    )
    size = f"{size_mib}M"
    primary.run(["qemu-img", "create", "-q", "-f", "raw", str(disks.primary), size])
    # The secondary starts from a byte-identical copy of the primary's disk.
    secondary.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "raw", str(disks.primary),
                   str(disks.secondary_base)])
    for layer in (disks.active, disks.hidden):
        secondary.run(["qemu-img", "create", "-q", "-f", "qcow2", str(layer), size])
    return disks


def scratch_root() -> Path:
    """Where scratch directories go: /dev/shm (tmpfs, as the seed's /mnt/ramfs) when usable."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() else Path("/tmp")
