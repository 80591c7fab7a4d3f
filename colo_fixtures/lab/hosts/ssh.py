"""A lab host reached over SSH (paramiko), behind the same ``Host`` interface as the local one.

- Host keys are verified against a known_hosts file by default; an unknown or changed key
  is refused with the fix in the message. Accepting new keys is an explicit choice
  (``accept_new=True``), and the accepted key is written to that known_hosts file.
- One SSH connection per host, reused by every command, transfer and channel.
- Commands are argv lists; the remote shell line is built with ``shlex.quote`` per word.
- Long-running processes are started detached with their PID recorded; ``signal``,
  ``alive`` and ``wait`` act on that PID only.
- ``connect_unix`` gives a local socket connected to a remote unix socket (QMP) through an SSH
  channel running ``socat`` on the host: no TCP port is opened for it.
- A key passphrase is used to decrypt the key and is never logged or shown in errors.

Over 400 lines: ``SshHost`` is the whole ``Host`` interface over one transport (commands,
files, processes, sockets), as ``local.py`` is for namespaces.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko

from colo_fixtures.config.inventory import SshTarget
from colo_fixtures.lab.hosts.base import CommandError, Host, Result, log, log_exit
from colo_fixtures.lab.ledger import stat_fields, stat_start_ticks

CONNECT_TIMEOUT = 10.0
RELAY_CHUNK = 65536
QUICK = frozenset({"true", "echo", "printf", "test", "mkdir", "cat"})
SLOW_SHELL_HINT = ("; a command this simple only hangs when the login shell's start-up files "
                   "on the host do (try: ssh HOST true; look at ~/.bashrc there)")


class SshError(CommandError):
    """The host cannot be reached, refuses us, or its key is not the known one."""


class _SaveNewKey(paramiko.MissingHostKeyPolicy):
    """Accept an unknown host key and append it to the known_hosts file (explicit opt-in)."""

    def __init__(self, known_hosts: Path):
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with self.known_hosts.open("a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


class SshHost(Host):
    """One lab machine over SSH. Thread-safe for concurrent commands (paramiko channels)."""

    is_local = False

    def __init__(self, name: str, role: str, target: SshTarget, key: Path, *,
                 known_hosts: Path | None = None, accept_new: bool = False,
                 passphrase: str | None = None, connect_timeout: float = CONNECT_TIMEOUT,
                 sock_factory: Callable[[], socket.socket] | None = None):
        super().__init__(name, role)
        self.target = target
        self.key = key
        self.known_hosts = known_hosts or Path.home() / ".ssh" / "known_hosts"
        self.accept_new = accept_new
        self._passphrase = passphrase
        self.connect_timeout = connect_timeout
        # How the TCP connection is opened: directly by default; the embedded lab's tests
        # pass a socket made inside the client namespace (like ssh's ProxyCommand).
        self.sock_factory = sock_factory
        self.pids: list[int] = []  # every process this host started, in order
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()
        self._sftp_client: paramiko.SFTPClient | None = None
        self._sftp_lock = threading.Lock()

    # -- connection

    def _known_name(self) -> str:
        host, port = self.target.host, self.target.port
        return host if port == 22 else f"[{host}]:{port}"

    def client(self) -> paramiko.SSHClient:
        """The shared connection, opened on first use."""
        with self._lock:
            if self._client is not None and self._client.get_transport() is not None \
                    and self._client.get_transport().is_active():  # type: ignore[union-attr]
                return self._client
            self._client = self._connect()
            return self._client

    def _connect(self) -> paramiko.SSHClient:
        where = str(self.target)
        client = paramiko.SSHClient()
        if self.known_hosts.exists():
            client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(
            _SaveNewKey(self.known_hosts) if self.accept_new else paramiko.RejectPolicy())
        try:
            secret = self._passphrase.encode() if self._passphrase is not None else None
            pkey = paramiko.PKey.from_path(self.key, passphrase=secret)
        except (OSError, paramiko.SSHException, ValueError, TypeError) as exc:
            raise SshError(f"{self.name}: cannot load SSH key {self.key}: "
                           f"{_no_secret(exc, self._passphrase)}") from None
        try:
            sock = self.sock_factory() if self.sock_factory is not None else None
        except Exception as exc:  # the factory's own one-line error (e.g. a LabError)
            raise SshError(f"{self.name}: cannot reach {where}: {exc} (check the address, "
                           "the port and that sshd runs)") from None
        try:
            client.connect(self.target.host, self.target.port, self.target.user, pkey=pkey,
                           sock=sock,  # type: ignore[arg-type]
                           timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                           auth_timeout=self.connect_timeout, allow_agent=False,
                           look_for_keys=False)
        except paramiko.BadHostKeyException:
            raise SshError(f"{self.name}: the host key of {where} does not match "
                           f"{self.known_hosts}: refusing to connect (if the host was "
                           f"reinstalled, remove its line with ssh-keygen -R "
                           f"'{self._known_name()}' -f {self.known_hosts})") from None
        except paramiko.AuthenticationException as exc:
            raise SshError(f"{self.name}: {where} refused key {self.key}: {exc} (is its public "
                           "key in the host's authorized_keys?)") from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise SshError(f"{self.name}: the host key of {where} is unknown: add it to "
                               f"{self.known_hosts} (ssh-keyscan -p {self.target.port} "
                               f"{self.target.host} >> {self.known_hosts}, after checking "
                               "its fingerprint) or accept new keys explicitly "
                               "(--ssh-accept-new)") from None
            raise SshError(f"{self.name}: SSH to {where} failed: {exc}") from None
        except (OSError, EOFError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (
                str(exc) or type(exc).__name__)
            raise SshError(f"{self.name}: cannot reach {where}: {reason} (check the address, "
                           "the port and that sshd runs)") from None
        self._no_delay(client)
        return client

    def _no_delay(self, client: paramiko.SSHClient) -> None:
        """Our small packets (QMP commands, fault triggers) go out at once: TCP_NODELAY."""
        transport = client.get_transport()
        with contextlib.suppress(OSError, AttributeError):
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]

    def close(self) -> None:
        with self._sftp_lock:
            if self._sftp_client is not None:
                self._sftp_client.close()
                self._sftp_client = None
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- commands

    def run(self, argv: list[str], timeout: float = 60, check: bool = True) -> Result:
        line = shlex.join(argv)
        log.debug("%s: %s", self.name, line)
        started = time.monotonic()
        rc, out, err = self._exec(line, timeout, argv)
        log_exit(self.name, argv, rc, time.monotonic() - started)
        result = Result(tuple(argv), rc, out, err)
        if check and rc != 0:
            last = (err.strip() or out.strip()).splitlines()[-1:] or [""]
            raise CommandError(f"{self.name}: {line} exited {rc}: {last[0]}")
        return result

    def _exec(self, line: str, timeout: float, argv: list[str]) -> tuple[int, str, str]:
        channel = self.client().get_transport().open_session()  # type: ignore[union-attr]
        try:
            channel.settimeout(timeout)
            channel.exec_command(line)
            channel.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout
            while not (channel.exit_status_ready() and not channel.recv_ready()
                       and not channel.recv_stderr_ready()):
                if time.monotonic() > deadline:
                    raise CommandError(f"{self.name}: {argv[0]} timed out after {timeout:g}s "
                                       f"({line}){SLOW_SHELL_HINT if argv[0] in QUICK else ''}")
                if channel.recv_ready():
                    out += channel.recv(RELAY_CHUNK)
                elif channel.recv_stderr_ready():
                    err += channel.recv_stderr(RELAY_CHUNK)
                else:
                    time.sleep(0.01)
            return (channel.recv_exit_status(), out.decode(errors="replace"),
                    err.decode(errors="replace"))
        finally:
            channel.close()

    def clock_offset(self, rounds: int = 10, timeout: float = 10) -> tuple[float, float]:
        """(offset, round trip) in seconds: this host's clock minus this machine's, from the
        fastest of ``rounds`` round trips over one channel (the error is at most half the
        round trip)."""
        channel = self.client().get_transport().open_session()  # type: ignore[union-attr]
        try:
            channel.settimeout(timeout)
            channel.exec_command("while read -r _; do date +%s.%N; done")
            replies = channel.makefile("rb")
            best: tuple[float, float] | None = None
            for _ in range(rounds):
                sent = time.time()
                channel.sendall(b"\n")
                line = replies.readline()
                back = time.time()
                try:
                    remote = float(line)
                except ValueError:
                    raise CommandError(f"{self.name}: date +%s.%N printed {line[:80]!r}, "
                                       "not a time (GNU date needed)") from None
                sample = (remote - (sent + back) / 2, back - sent)
                if best is None or sample[1] < best[1]:
                    best = sample
            assert best is not None
            return best
        except OSError as exc:  # socket.timeout included
            raise CommandError(f"{self.name}: clock offset not measured: {exc}") from None
        finally:
            channel.close()

    # -- long-running processes

    def spawn(self, argv: list[str], log: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> RemoteProcess:
        """Start ``argv`` detached (stdout and stderr appended to the host's file ``log``)."""
        words = ["env", *[f"{k}={v}" for k, v in (env or {}).items()], *argv]
        command = f"exec {shlex.join(words)} </dev/null >>{shlex.quote(str(log))} 2>&1"
        if cwd is not None:
            command = f"cd {shlex.quote(str(cwd))} && {command}"
        script = f"nohup sh -c {shlex.quote(command)} >/dev/null 2>&1 & echo $!"
        rc, out, err = self._exec(script, 30, argv)
        if rc != 0 or not out.strip().isdigit():
            raise CommandError(f"{self.name}: cannot start {argv[0]}: {err.strip() or out}")
        pid = int(out.strip())
        self.pids.append(pid)
        return RemoteProcess(self, pid)

    def alive(self, pid: int) -> bool:
        """Whether ``pid`` still runs (a zombie counts as gone)."""
        result = self.run(["ps", "-o", "stat=", "-p", str(pid)], check=False)
        return result.rc == 0 and not result.stdout.strip().startswith("Z")

    def start_ticks(self, pid: int) -> int | None:
        """The process's start time (field 22 of /proc/<pid>/stat), None if it is gone."""
        result = self.run(["cat", f"/proc/{pid}/stat"], check=False)
        return stat_start_ticks(stat_fields(result.stdout)) if result.rc == 0 else None

    def record(self) -> dict[str, str]:
        """How to reach this host again (the janitor's view; no secret in it)."""
        return {"ssh": str(self.target), "key": str(self.key),
                "known_hosts": str(self.known_hosts)}

    @classmethod
    def from_record(cls, record: dict[str, str], passphrase: str | None = None) -> SshHost:
        """The host a ``record()`` describes (host keys verified, never accepted anew)."""
        user, _, rest = record["ssh"].partition("@")
        host, _, port = rest.rpartition(":")
        return cls(record["ssh"], "janitor", SshTarget(user, host, int(port)),
                   Path(record["key"]), known_hosts=Path(record["known_hosts"]),
                   passphrase=passphrase)

    def ledger_name(self, pid: int) -> tuple[str, str]:
        return "ssh-process", json.dumps({**self.record(), "pid": pid,
                                          "start": self.start_ticks(pid)}, sort_keys=True)

    def kill_recorded(self, pid: int, start: int | None) -> bool:
        """SIGKILL ``pid`` if it still is the process started at ``start``; True if killed."""
        if start is None or self.start_ticks(pid) != start:
            return False
        self.run(["kill", "-KILL", str(pid)], check=False)
        return True

    def signal(self, pid: int, signame: str) -> None:
        """Send ``signame`` (e.g. TERM, KILL, STOP) to a process this host started."""
        self.arm_signal(pid, signame)()

    def arm_signal(self, pid: int, signame: str) -> Callable[[], None]:
        """Prepare ``kill -SIGNAME pid`` on the host and return the trigger: a shell there
        waits on its input, and calling the trigger sends one line, so the signal lands
        within one packet's latency (a fault timed on a 50 ms checkpoint needs that)."""
        if pid not in self.pids:
            raise CommandError(f"{self.name}: pid {pid} was not started by the harness")
        channel = self.client().get_transport().open_session()  # type: ignore[union-attr]
        channel.exec_command(f"read _ && kill -{shlex.quote(signame)} {int(pid)}")

        def fire() -> None:
            channel.sendall(b"\n")
            channel.shutdown_write()
            deadline = time.monotonic() + 10
            while not channel.exit_status_ready() and time.monotonic() < deadline:
                time.sleep(0.005)
            channel.close()

        return fire

    # -- files

    def make_dir(self, path: Path, private: bool = False) -> None:
        self.run(["mkdir", "-p", *(["-m", "700"] if private else []), str(path)])

    def exists(self, path: Path) -> bool:
        return self.run(["test", "-e", str(path)], check=False).rc == 0

    @contextlib.contextmanager
    def _sftp(self) -> Iterator[paramiko.SFTPClient]:
        """The host's one SFTP session (opened on first use), for one caller at a time."""
        with self._sftp_lock:
            if self._sftp_client is None or self._sftp_client.get_channel().closed:
                self._sftp_client = self.client().open_sftp()
            yield self._sftp_client

    def read_bytes(self, path: Path) -> bytes:
        with self._sftp() as sftp, sftp.open(str(path)) as f:
            return f.read()

    def size(self, path: Path) -> int:
        try:
            with self._sftp() as sftp:
                return sftp.stat(str(path)).st_size or 0
        except FileNotFoundError:
            return 0

    def fetch(self, path: Path, local: Path) -> None:
        """Copy ``path`` whole to ``local`` (a file of the same size is copied again: a disk
        image rewritten between two copies has the same size)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        with self._sftp() as sftp:
            sftp.get(str(path), str(local))

    def follow(self, path: Path, local: Path) -> None:
        """Bring ``local`` up to date with the log ``path``: copied from where ``local``
        ends, whole if the log was replaced by a shorter one (the harness re-reads logs
        every half second)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        have = local.stat().st_size if local.exists() else -1
        with contextlib.suppress(FileNotFoundError), self._sftp() as sftp:
            if sftp.stat(str(path)).st_size == have:
                return
            have = max(have, 0)
            with sftp.open(str(path), "rb") as remote:
                remote.seek(have)
                fresh = remote.read()
                if have and len(fresh) == 0:  # shorter than our copy: a new file
                    remote.seek(0)
                    fresh, have = remote.read(), 0
            with local.open("r+b" if have else "wb") as out:
                out.seek(have)
                out.write(fresh)
                out.truncate()

    def put(self, local: Path, path: Path) -> None:
        with self._sftp() as sftp:
            sftp.put(str(local), str(path))

    # -- channels

    def connect_unix(self, path: Path, timeout: float = 5.0) -> socket.socket:
        """A local socket whose peer is the host's unix socket ``path`` (socat on the host,
        relayed over an SSH channel). Closing the socket closes the channel."""
        channel = self.client().get_transport().open_session()  # type: ignore[union-attr]
        channel.exec_command(shlex.join(["socat", "-", f"UNIX-CONNECT:{path}"]))
        time.sleep(0.05)  # socat exits at once when nothing listens: report it like connect
        if channel.exit_status_ready():
            channel.close()
            raise ConnectionRefusedError(f"{self.name}: nothing listens on {path}")
        return self._relayed(channel)

    def connect_tcp(self, address: str, port: int, timeout: float = 5.0) -> socket.socket:
        """A local socket whose peer is a TCP connection the host opens to ``address:port``
        (an SSH direct-tcpip channel, like ``ssh -W``): traffic leaves from the host.
        ConnectionRefusedError (with the host's reason) if the host cannot connect."""
        transport = self.client().get_transport()
        assert transport is not None
        try:
            channel = transport.open_channel("direct-tcpip", (address, port), ("127.0.0.1", 0),
                                             timeout=timeout)
        except paramiko.ChannelException as exc:
            raise ConnectionRefusedError(f"{self.name} cannot connect to {address}:{port}: "
                                         f"{exc.text or exc.code}") from None
        except paramiko.SSHException as exc:
            raise TimeoutError(f"{self.name}: no TCP channel to {address}:{port} within "
                               f"{timeout:g}s: {exc}") from None
        return self._relayed(channel)

    def _relayed(self, channel: paramiko.Channel) -> socket.socket:
        ours, theirs = socket.socketpair()
        threading.Thread(target=_relay, args=(theirs, channel), daemon=True,
                         name=f"ssh-relay-{self.name}").start()
        return ours


class RemoteProcess:
    """A process started by ``SshHost.spawn``, with ``subprocess.Popen``'s surface.

    Its exit code is not visible over SSH: once gone, ``returncode`` is ``-signal`` for a
    process the harness signalled, else 255.
    """

    def __init__(self, host: SshHost, pid: int):
        self.host = host
        self.pid = pid
        self.returncode: int | None = None
        self._signalled: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not self.host.alive(self.pid):
            self.returncode = -self._signalled if self._signalled else 255
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"{self.host.name}:{self.pid}", timeout or 0)
            time.sleep(0.1)
        return code

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            self.arm(sig)()

    def arm(self, sig: int) -> Callable[[], None]:
        """A trigger that sends ``sig`` at once when called (see ``SshHost.arm_signal``)."""
        fire = self.host.arm_signal(self.pid, signal.Signals(sig).name.removeprefix("SIG"))

        def trigger() -> None:
            if self.returncode is None:
                self._signalled = sig
                fire()

        return trigger

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _relay(sock: socket.socket, channel: paramiko.Channel) -> None:
    """Copy bytes both ways until either side closes."""

    def up() -> None:
        try:
            while data := sock.recv(RELAY_CHUNK):
                channel.sendall(data)
        except OSError:
            pass
        finally:
            channel.shutdown_write()

    thread = threading.Thread(target=up, daemon=True)
    thread.start()
    try:
        while data := channel.recv(RELAY_CHUNK):
            sock.sendall(data)
    except OSError:
        pass
    finally:
        sock.close()
        channel.close()


def _no_secret(exc: BaseException, secret: str | None) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.replace(secret, "***") if secret else text
