"""Replication disks: the primary's disk, and the secondary's base, active and hidden layers.

All have the same virtual size (QEMU's replication driver requires it). Each is made
with qemu-img on the host that owns it, in that host's scratch directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from colo_fixtures.lab.hosts import Host


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


SCRATCH_MIN_FREE = 1 << 30  # a lab's disks and their copies take a few hundred MiB


def scratch_root(tmpfs: Path = Path("/dev/shm")) -> Path:
    """Where scratch directories go: /dev/shm (tmpfs, as the seed's /mnt/ramfs) when it is
    there, writable and has a GiB free; /tmp otherwise."""
    try:
        usable = os.access(tmpfs, os.W_OK) and shutil.disk_usage(tmpfs).free >= SCRATCH_MIN_FREE
    except OSError:
        usable = False
    return tmpfs if usable else Path("/tmp")


REGION = 1 << 20  # digest granularity: a mismatch is named to the MiB


@dataclass(frozen=True)
class DiskDigest:
    """Per-region SHA-256 of a disk's contents, so two disks can be compared by offset."""

    source: str
    size: int
    regions: tuple[str, ...]

    def differing_offsets(self, other: DiskDigest) -> list[int]:
        """Byte offsets of the regions whose contents differ (a size difference counts)."""
        offsets = [i * REGION for i, (a, b) in enumerate(zip(self.regions, other.regions,
                                                             strict=False)) if a != b]
        shorter = min(len(self.regions), len(other.regions))
        longer = max(len(self.regions), len(other.regions))
        return offsets + [i * REGION for i in range(shorter, longer)]


def raw_copy(host: Host, source: str, dest: Path, fmt: str = "raw",
             host_dir: Path | None = None) -> Path:
    """A raw copy of ``source`` (file or nbd:// URI) made on ``host``, in this machine's file
    ``dest``; force-share (-U) lets it read an image a running QEMU holds. A remote host
    writes the copy into its ``host_dir``; it is fetched and removed there."""
    target = dest if host.is_local or host_dir is None else host_dir / dest.name
    argv = ["qemu-img", "convert", "-f", fmt, "-O", "raw", source, str(target)]
    if not source.startswith("nbd://"):
        argv.insert(2, "-U")
    if target != dest:
        host.make_dir(host_dir)  # type: ignore[arg-type]
    host.run(argv, timeout=300)
    if target != dest:
        try:
            host.fetch(target, dest)
        finally:
            host.run(["rm", "-f", "--", str(target)], check=False)
    return dest


def digest(path: Path, source: str | None = None) -> DiskDigest:
    """Per-region digests of a raw image file."""
    regions = []
    with path.open("rb") as image:
        for chunk in iter(lambda: image.read(REGION), b""):
            regions.append(hashlib.sha256(chunk).hexdigest())
    return DiskDigest(source or str(path), path.stat().st_size, tuple(regions))


def allocated_bytes(host: Host, image: Path) -> int:
    """Bytes holding data in this qcow2 layer alone (``qemu-img map``, backing not followed)."""
    result = host.run(["qemu-img", "map", "-U", "--output=json", "-f", "qcow2", str(image)])
    return sum(extent["length"] for extent in json.loads(result.stdout)
               if extent.get("data") and extent.get("depth", 0) == 0)


def images_identical(host: Host, first: str, second: str) -> tuple[bool, str]:
    """``qemu-img compare`` (force-share for files) run on ``host``: (identical, its message)."""
    argv = ["qemu-img", "compare", "-f", "raw", "-F", "raw", first, second]
    if not (first.startswith("nbd://") and second.startswith("nbd://")):
        argv.insert(2, "-U")
    result = host.run(argv, timeout=300, check=False)
    if result.rc not in (0, 1):
        raise RuntimeError(f"qemu-img compare {first} {second} failed: "
                           f"{(result.stderr or result.stdout).strip()}")
    return result.rc == 0, (result.stdout or result.stderr).strip()
