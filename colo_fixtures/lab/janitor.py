"""Remove what a killed run left, from its ledger only (never by name patterns).

Processes first (SIGKILL, by PID, only if the start time still matches, so a reused PID is
never hit), then directories, then the network in reverse order of creation; the inventory
profile's items are removed over SSH the same way. ``tools/janitor`` runs ``clean`` on every
ledger under the report directory whose run is no longer alive.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from colo_fixtures.lab.inventory_lab import clean_remote
from colo_fixtures.lab.ledger import is_gone, read_ledger, start_ticks, write_entry
from colo_fixtures.lab.namespaces import remove_items

NETWORK_KINDS = ("netns", "link", "qdisc", "filter")


def _remove_process(name: str, timeout: float = 10) -> bool:
    pid_text, _, ticks = name.partition("@")
    pid = int(pid_text)
    if str(start_ticks(pid)) != ticks:
        return False  # gone, or the PID now belongs to another process
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while not is_gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def clean(path: Path) -> list[tuple[str, str]]:
    """Remove every outstanding item of the ledger ``path``; return what could not be."""
    items = read_ledger(path)
    failed: list[tuple[str, str]] = []
    done: list[tuple[str, str]] = []
    for kind, name in reversed([i for i in items if i[0] == "process"]):
        try:
            _remove_process(name)
            done.append((kind, name))
        except (OSError, ValueError):
            failed.append((kind, name))
    for kind, name in reversed([i for i in items if i[0] == "dir"]):
        shutil.rmtree(name, ignore_errors=True)
        (failed if Path(name).exists() else done).append((kind, name))
    network = [i for i in items if i[0] in NETWORK_KINDS]
    left = remove_items(network)
    failed += left
    done += [item for item in network if item not in left]
    remote = [i for i in items if i[0].startswith("ssh-")]
    if remote:  # the inventory profile's hosts
        left = clean_remote(remote)
        failed += left
        done += [item for item in remote if item not in left]
    failed += [i for i in items if i[0] not in (*NETWORK_KINDS, "process", "dir")
               and not i[0].startswith("ssh-")]
    for kind, name in done:
        write_entry(path, "removed", kind, name)
    return failed
