"""The agent's disk log: one 512-byte sector per acknowledged PUT, CRC-checked."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

SECTOR = 512
MAGIC = b"COLOKV01"
_RECORD = struct.Struct("<8sQII64s256s")  # the 344 bytes covered by the CRC


@dataclass(frozen=True)
class KvRecord:
    """One acknowledged PUT as stored on disk."""

    seq: int
    key: str
    value: str


def encode_record(seq: int, key: str, value: str) -> bytes:
    """The 512-byte sector the agent writes for record ``seq``."""
    k, v = key.encode("ascii"), value.encode("ascii")
    body = _RECORD.pack(MAGIC, seq, len(k), len(v), k, v)
    return (body + struct.pack("<I", zlib.crc32(body))).ljust(SECTOR, b"\0")


def _decode_record(sector: bytes, seq: int) -> KvRecord | None:
    if len(sector) < _RECORD.size + 4:
        return None
    magic, rseq, klen, vlen, key, value = _RECORD.unpack_from(sector)
    crc, = struct.unpack_from("<I", sector, _RECORD.size)
    if magic != MAGIC or rseq != seq or not (1 <= klen <= 63 and 1 <= vlen <= 255):
        return None
    if crc != zlib.crc32(sector[: _RECORD.size]):
        return None
    return KvRecord(seq, key[:klen].decode("ascii", "replace"), value[:vlen].decode("ascii",
                                                                                   "replace"))


def parse_disk_records(data: bytes) -> list[KvRecord]:
    """Records 1, 2, ... of a raw disk image, up to the first invalid sector."""
    records = []
    seq = 1
    while (record := _decode_record(data[seq * SECTOR:(seq + 1) * SECTOR], seq)) is not None:
        records.append(record)
        seq += 1
    return records


def disk_store(records: Iterable[KvRecord]) -> dict[str, KvRecord]:
    """The key-value state the agent rebuilds from ``records`` (last write wins)."""
    return {r.key: r for r in records}
