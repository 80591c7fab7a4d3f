"""OpenSSH servers inside the embedded lab's namespaces, for the SSH backend's own tests.

Each server gets a generated ed25519 host key, its own config, authorized_keys and log in
a private directory, listens on the host's replication address, and is stopped by PID.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from colo_fixtures.lab.ledger import proc_stat
from colo_fixtures.lab.namespaces import ns_exec_argv
from colo_fixtures.lab.topology import HostSpec

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without it

requires_sshd = pytest.mark.skipif(
    not SSHD.exists() or not shutil.which("ssh-keygen") or not shutil.which("socat")
    or os.geteuid() != 0,
    reason="needs root, openssh-server, openssh-client and socat: run tools/bootstrap")


def keygen(path: Path, passphrase: str = "") -> Path:
    """A new ed25519 key pair at ``path`` (and ``path``.pub)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "colo-test",
                    "-f", str(path)], check=True, capture_output=True)
    return path


def public_key(path: Path) -> str:
    return path.with_name(path.name + ".pub").read_text().strip()


@dataclass
class Sshd:
    host: HostSpec
    address: str
    port: int
    folder: Path
    proc: subprocess.Popen[bytes]

    @property
    def log(self) -> Path:
        return self.folder / "sshd.log"

    def host_key_line(self, name: str | None = None) -> str:
        """A known_hosts line for this server's host key."""
        key = public_key(self.folder / "host_ed25519").split()[:2]
        target = name or (self.address if self.port == 22 else f"[{self.address}]:{self.port}")
        return f"{target} {key[0]} {key[1]}\n"

    def stop(self) -> None:
        """Stop the daemon and every session process it forked (found by parent PID before
        the daemon goes: afterwards they would belong to init)."""
        sessions = descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pid in sessions:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """PIDs of every process below ``pid`` (from /proc), children first."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        if fields := proc_stat(int(entry.name)):
            parents[int(entry.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


@contextmanager
def privsep_dir() -> Iterator[None]:
    """/run/sshd for the test's servers; removed again if this created it."""
    created = not PRIVSEP_DIR.exists()
    if created:
        PRIVSEP_DIR.mkdir(mode=0o755)
    try:
        yield
    finally:
        if created:
            shutil.rmtree(PRIVSEP_DIR, ignore_errors=True)


def clean_home_argv(empty: Path, argv: list[str]) -> list[str]:
    """argv that runs ``argv`` in its own mount namespace where root's home is the empty
    directory ``empty``: the sessions of a test's sshd run no start-up files of this machine's
    (a ~/.bashrc running ``pyenv rehash`` takes a lock, and a session killed while holding it
    makes every later shell wait for it). Same PID: unshare and sh exec."""
    empty.mkdir(mode=0o700, exist_ok=True)
    return ["unshare", "--mount", "--propagation", "slave", "--", "sh", "-c",
            'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh", str(empty),
            pwd.getpwuid(os.geteuid()).pw_dir, *argv]


def start_sshd(host: HostSpec, folder: Path, authorized: list[str], port: int = 22,
               timeout: float = 10, address: str | None = None) -> Sshd:
    """sshd in ``host``'s namespace on ``address`` (default: its replication address),
    accepting ``authorized``."""
    folder.mkdir(parents=True, exist_ok=True)
    keygen(folder / "host_ed25519")
    (folder / "authorized_keys").write_text("\n".join(authorized) + "\n")
    address = address or str(host.rep_addr)
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", f"ListenAddress {address}", f"HostKey {folder / 'host_ed25519'}",
        f"PidFile {folder / 'sshd.pid'}", f"AuthorizedKeysFile {folder / 'authorized_keys'}",
        "StrictModes no", "UsePAM no", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "Subsystem sftp internal-sftp", "LogLevel VERBOSE", ""]))
    log = folder / "sshd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(ns_exec_argv(host.netns, clean_home_argv(
            folder / "home", [str(SSHD), "-D", "-e", "-f", str(config)])),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    sshd = Sshd(host, address, port, folder, proc)
    deadline = time.monotonic() + timeout
    while b"Server listening" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            sshd.stop()
            pytest.fail(f"sshd in {host.netns} did not start: {log.read_text()[-500:]}")
        time.sleep(0.05)
    return sshd
