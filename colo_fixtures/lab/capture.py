"""A packet capture of the replication link (``--pcap``): tcpdump on the primary's host,
headers only, for the whole life of a COLO lab; the pcap is attached to the test.

The replication link carries the migration stream, the NBD writes and colo-proxy's mirrored
packets, so the capture shows every checkpoint's exchange and where a failover cut it. Only
the first ``SNAPLEN`` bytes of each packet are kept (checkpoints move megabytes).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from colo_fixtures.lab.hosts import Host
from colo_fixtures.lab.hosts.base import Process
from colo_fixtures.lab.ledger import write_entry

SNAPLEN = 128
START_TIMEOUT = 10.0
PCAP_HEADER = 24  # bytes of a pcap file's global header: tcpdump writes it when it starts


class CaptureError(RuntimeError):
    """tcpdump could not start (the message has its own words)."""


class Capture:
    """tcpdump -i ``interface`` on ``host`` into ``path`` (on that host), copied to ``local``."""

    def __init__(self, host: Host, interface: str, path: Path, local: Path,
                 ledger: Path | None = None):
        self.host, self.interface, self.path, self.local = host, interface, path, local
        self.ledger = ledger
        self.log = path.with_name(path.stem + "-tcpdump.log")  # on the host
        self.process: Process | None = None
        self._entry: tuple[str, str] | None = None

    def start(self) -> None:
        argv = ["tcpdump", "-i", self.interface, "-n", "-U", "-s", str(SNAPLEN),
                "-w", str(self.path)]
        self.process = self.host.spawn(argv, self.log)
        self._entry = self.host.ledger_name(self.process.pid)
        if self.ledger is not None:
            write_entry(self.ledger, "created", *self._entry)
        deadline = time.monotonic() + START_TIMEOUT
        while self.host.size(self.path) < PCAP_HEADER:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self._log_tail()
                raise CaptureError(f"tcpdump on {self.host.name}/{self.interface} did not "
                                   f"start: {tail or 'no output'} (is tcpdump installed? "
                                   "run tools/bootstrap)")
            time.sleep(0.05)

    def _log_tail(self) -> str:
        try:
            lines = self.host.read_bytes(self.log).decode(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def stop(self) -> Path | None:
        """End tcpdump (SIGINT flushes the file) and bring the pcap here; its local path."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except Exception:  # any host's timeout: it must go
                process.kill()
                process.wait(timeout=10)
        if self.ledger is not None and self._entry is not None:
            write_entry(self.ledger, "removed", *self._entry)
        try:
            self.host.fetch(self.path, self.local)
        except FileNotFoundError:  # tcpdump died before writing it (sftp left an empty copy)
            self.local.unlink(missing_ok=True)
        return self.local if self.local.exists() else None
