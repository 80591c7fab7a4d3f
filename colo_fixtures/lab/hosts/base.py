"""The one interface every host backend implements; suites never know which one runs."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from colo_fixtures.core.verdicts import LabError
from colo_fixtures.lab.ledger import process_name

log = logging.getLogger("colo.host")


@dataclass(frozen=True)
class Result:
    """What a finished command returned."""

    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str


class CommandError(LabError):
    """A command exited non-zero or timed out; the message names the host and the command."""


class Process(Protocol):
    """A started long-running process (``subprocess.Popen`` is one)."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


class Host(ABC):
    """A lab host with a role: runs argv lists (never shell strings), starts processes,
    and gives access to its files and unix sockets. The defaults are for hosts whose files
    are this machine's (the local backends); the SSH backend overrides them."""

    is_local = True

    def __init__(self, name: str, role: str):
        self.name = name
        self.role = role

    @abstractmethod
    def run(self, argv: list[str], timeout: float = 60, check: bool = True) -> Result:
        """Run ``argv`` to completion on this host."""

    @abstractmethod
    def spawn(self, argv: list[str], log: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Process:
        """Start ``argv`` as a long-running process; stdout and stderr go to ``log``."""

    def make_dir(self, path: Path, private: bool = False) -> None:
        path.mkdir(mode=0o700 if private else 0o777, parents=True, exist_ok=True)

    def exists(self, path: Path) -> bool:
        return path.exists()

    def read_bytes(self, path: Path) -> bytes:
        """The file's content (FileNotFoundError if it does not exist)."""
        return path.read_bytes()

    def size(self, path: Path) -> int:
        """The file's size in bytes (0 if it does not exist)."""
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0

    def fetch(self, path: Path, local: Path) -> None:
        """Copy the host's ``path`` whole to this machine's ``local`` (nothing if they are
        one)."""
        if path.resolve() != local.resolve() and path.exists():
            shutil.copyfile(path, local)

    def follow(self, path: Path, local: Path) -> None:
        """Bring ``local``, a copy of the host's log ``path``, up to date (a log only
        grows; a remote host copies only what it grew by)."""
        self.fetch(path, local)

    def ledger_name(self, pid: int) -> tuple[str, str]:
        """How the run ledger records process ``pid`` of this host: (kind, name), enough for
        the janitor to find exactly this process again (a reused PID is never hit)."""
        return "process", process_name(pid)

    def connect_unix(self, path: Path, timeout: float = 5.0) -> socket.socket:
        """A socket connected to the host's unix socket ``path`` (QMP)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError:
            sock.close()
            raise
        sock.settimeout(None)
        return sock

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, role={self.role!r})"


def popen(argv: list[str], log: Path, env: dict[str, str] | None,
          cwd: Path | None) -> subprocess.Popen[bytes]:
    """A detached local process (its own session) appending stdout and stderr to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                cwd=cwd, env={**os.environ, **env} if env else None,
                                start_new_session=True)


def log_exit(name: str, argv: list[str], rc: int, seconds: float) -> None:
    """A command's end in the harness log: host, program, exit status, duration."""
    log.debug("%s: %s exited %d in %.3f s", name, argv[0], rc, seconds)


def run_local(name: str, argv: list[str], launch: list[str], timeout: float,
              check: bool) -> Result:
    """Run ``launch`` (``argv`` as started on this machine) and report it as ``argv``."""
    log.debug("%s: %s", name, shlex.join(argv))
    started = time.monotonic()
    try:
        done = subprocess.run(launch, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        log.warning("%s: %s timed out after %gs", name, argv[0], timeout)
        raise CommandError(f"{name}: {argv[0]} timed out after {timeout:g}s "
                           f"({' '.join(argv)})") from None
    log_exit(name, argv, done.returncode, time.monotonic() - started)
    result = Result(tuple(argv), done.returncode, done.stdout, done.stderr)
    if check and result.rc != 0:
        last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or [""]
        raise CommandError(f"{name}: {' '.join(argv)} exited {result.rc}: {last[0]}")
    return result
