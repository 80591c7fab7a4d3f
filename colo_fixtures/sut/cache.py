"""Content-addressed build cache shared by pytest runs and xdist workers.

A build is keyed by a hash of everything that determines its output. The first
process to need it builds under an exclusive file lock; the others wait on the
lock and then find the finished entry. An entry is complete only once its
``DONE`` marker exists, so a build killed half-way is rebuilt, never reused.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

DONE = "DONE"


class CacheError(RuntimeError):
    """A cached build could not be produced."""


def hash_parts(parts: Iterable[str | bytes]) -> str:
    """A short stable digest of strings and bytes, each length-prefixed."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:16]


def hash_tree(root: Path, ignore: Callable[[Path], bool] = lambda p: False) -> str:
    """Digest of every regular file's relative path and content below ``root``."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(root)
        if ignore(rel):
            continue
        h.update(str(rel).encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


@contextmanager
def file_lock(path: Path, timeout: float, what: str):
    """Hold an exclusive ``flock`` on ``path``; fail after ``timeout`` seconds naming ``what``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CacheError(
                        f"waited {timeout:.0f}s for the lock {path} held by another {what}; "
                        "if no other run is active, delete the lock file"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached_build(
    cache_dir: Path,
    kind: str,
    key: str,
    build: Callable[[Path], None],
    timeout: float = 3600,
) -> Path:
    """Return ``cache_dir/kind/key``, running ``build(dir)`` into it once if it is not complete.

    ``build`` gets an empty directory and must fill it; if it raises, the partial
    entry is kept for inspection (the next call rebuilds it) and the error propagates.
    """
    entry = cache_dir / kind / key
    if (entry / DONE).exists():
        return entry
    with file_lock(cache_dir / kind / f"{key}.lock", timeout, f"{kind} build"):
        if (entry / DONE).exists():
            return entry
        if entry.exists():
            shutil.rmtree(entry)
        entry.mkdir(parents=True)
        build(entry)
        (entry / DONE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    return entry
