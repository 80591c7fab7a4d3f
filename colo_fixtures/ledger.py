"""The run ledger: every resource a test makes is a JSON line when made and when removed.

Kinds: ``netns``, ``link``, ``qdisc``, ``filter`` (the local lab, see ``net``), ``process``
(a QEMU on this machine: ``<pid>@<start time in clock ticks>``, so a reused PID is never
hit) and ``dir`` (a scratch directory). ``clean`` removes what a killed run left, from
the ledger only: processes first (SIGKILL, by PID, only if the start time matches), then
directories, then the network in reverse order of creation. The inventory profile's
items on SSH hosts (``ssh-process``, ``ssh-dir``, ``ssh-network``: JSON naming the host's
SSH details and the PID and start time, path or undo steps) are removed over SSH the same
way. ``tools/janitor`` runs it on every ledger under the report directory whose run is no
longer alive.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

from colo_fixtures.net import read_ledger, remove_items

NETWORK_KINDS = ("netns", "link", "qdisc", "filter")
LEDGER_NAME = "ledger.jsonl"


def write_entry(path: Path, op: str, kind: str, name: str) -> None:
    """Append one ``created``/``removed`` line, stamped with this run's PID and the time."""
    entry = {"op": op, "kind": kind, "name": name, "pid": os.getpid(),
             "time": round(time.time(), 3)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(entry) + "\n")


def stat_fields(text: str) -> list[str]:
    """The fields of a /proc/<pid>/stat text after the command name (state, ppid, ...)."""
    return text.rsplit(")", 1)[-1].split()


def stat_start_ticks(fields: list[str]) -> int | None:
    """The start time (field 22 of /proc/<pid>/stat) among ``stat_fields``, if there."""
    return int(fields[19]) if len(fields) > 19 else None


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, ...), or None if
    the process is gone."""
    try:
        return stat_fields(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return None


def start_ticks(pid: int) -> int | None:
    """The process's start time (field 22 of /proc/<pid>/stat), None if it is gone."""
    fields = proc_stat(pid)
    return stat_start_ticks(fields) if fields else None


def is_gone(pid: int) -> bool:
    """Whether ``pid`` no longer runs (a zombie counts: only its reaping is left)."""
    fields = proc_stat(pid)
    return fields is None or fields[0] == "Z"


def process_name(pid: int) -> str:
    """The ledger name of a running local process."""
    return f"{pid}@{start_ticks(pid)}"


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


def run_alive(path: Path) -> int | None:
    """The PID of the run that wrote ``path`` if that run still runs, else None."""
    pids = set()
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            pids.add(int(json.loads(line)["pid"]))
        except (ValueError, KeyError, TypeError):
            continue
    for pid in pids:
        if pid != os.getpid() and start_ticks(pid) is not None:
            return pid
    return None


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
    if remote:  # the inventory profile's hosts (imported here: it is a higher layer)
        from colo_fixtures.inventory_lab import clean_remote

        left = clean_remote(remote)
        failed += left
        done += [item for item in remote if item not in left]
    failed += [i for i in items if i[0] not in (*NETWORK_KINDS, "process", "dir")
               and not i[0].startswith("ssh-")]
    for kind, name in done:
        write_entry(path, "removed", kind, name)
    return failed
