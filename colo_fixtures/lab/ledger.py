"""The run ledger: every resource a test makes is a JSON line when made and when removed.

Kinds: ``netns``, ``link``, ``qdisc``, ``filter`` (the embedded lab, see ``embedded``),
``process`` (a QEMU on this machine: ``<pid>@<start time in clock ticks>``, so a reused PID
is never hit) and ``dir`` (a scratch directory). The inventory profile's items on SSH hosts
(``ssh-process``, ``ssh-dir``, ``ssh-network``) are JSON naming the host's SSH details and
the PID and start time, path or undo steps. ``janitor.clean`` removes what a killed run left.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import suppress
from pathlib import Path

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


def read_ledger(path: Path) -> list[tuple[str, str]]:
    """Items a ledger file records as created and not yet removed, in creation order."""
    items: list[tuple[str, str]] = []
    if not path.exists():
        return items
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            item = (str(entry["kind"]), str(entry["name"]))
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a kill
        if entry.get("op") == "removed":
            with suppress(ValueError):
                items.remove(item)
        else:
            items.append(item)
    return items
