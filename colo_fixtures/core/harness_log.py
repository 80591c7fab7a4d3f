"""The harness log: what the harness did, from the ``colo`` logger tree, one file per test.

``colo.host``: every command on any host (argv, then exit status and duration);
``colo.qmp``: every QMP command with its outcome and duration; ``colo.wait``: every wait
and how it ended; ``colo.phase``: the phases of the test. While a test's file is open the
tree logs at DEBUG into it and hands only what pytest's own log capture asked for
(warnings and worse, unless ``--log-level`` says otherwise) on to the root logger.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HARNESS_LOG = "harness.log"
TREE = logging.getLogger("colo")
FORMAT = "%(asctime)s.%(msecs)03d %(threadName)s %(name)s %(levelname)s %(message)s"


class _ToRoot(logging.Handler):
    """Passes records on to the root logger's handlers (pytest's capture) while the tree's
    own propagation is off, so its debug lines go only to the file."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger().handle(record)


@contextmanager
def harness_log(folder: Path) -> Iterator[Path]:
    """Write the ``colo`` tree into ``folder/harness.log`` until the block ends."""
    path = folder / HARNESS_LOG
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    to_root = _ToRoot(min(logging.WARNING, logging.getLogger().getEffectiveLevel()))
    level, propagate = TREE.level, TREE.propagate
    TREE.setLevel(logging.DEBUG)
    TREE.propagate = False
    TREE.addHandler(to_file)
    TREE.addHandler(to_root)
    try:
        yield path
    finally:
        TREE.removeHandler(to_root)
        TREE.removeHandler(to_file)
        TREE.setLevel(level)
        TREE.propagate = propagate
        to_file.close()
