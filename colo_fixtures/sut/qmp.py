"""A synchronous face on qemu.qmp's QMPClient: its own event loop, timeouts, one caller at
a time, and interrupts (Ctrl-C, SIGTERM) that never stop a teardown."""


from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient


class SyncQmp:
    """A synchronous face on qemu.qmp's QMPClient, with its own event loop and timeouts."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.client = QMPClient(name)
        self.interrupted: BaseException | None = None
        # One caller at a time: a second thread running the same loop fails ("This event
        # loop is already running") or, racing the first, corrupts the client's state.
        self._lock = threading.Lock()

    def run(self, awaitable: Any, timeout: float) -> Any:
        with self._lock:
            return self._run(awaitable, timeout)

    def _run(self, awaitable: Any, timeout: float) -> Any:
        try:
            return self.loop.run_until_complete(asyncio.wait_for(awaitable, timeout))
        except (KeyboardInterrupt, SystemExit) as exc:
            # Ctrl-C (or SIGTERM, which the plugin turns into KeyboardInterrupt) may land
            # inside one of qemu.qmp's background tasks: that task is dead, and disconnect()
            # raises this same exception again. close() must not let it stop a teardown, and
            # the tasks the interrupt orphaned must not print their errors at exit.
            self.interrupted = exc
            self.loop.set_exception_handler(lambda loop, context: None)
            raise

    def connect(self, address: Path | socket.socket, timeout: float) -> None:
        """Connect to a QMP unix socket path, or over an already connected socket (a
        channel to a remote host's QMP socket)."""
        target = address if isinstance(address, socket.socket) else str(address)
        self.run(self.client.connect(target), timeout)

    def execute(self, command: str, arguments: dict[str, Any], timeout: float) -> Any:
        return self.run(self.client.execute(command, arguments or None), timeout)

    def drain(self, wait: float = 0.0) -> list[dict[str, Any]]:
        """Events received so far; with ``wait``, block up to that long for a first one."""
        self.run(asyncio.sleep(0.005), 1)
        messages = [dict(m) for m in self.client.events.clear()]
        if not messages and wait > 0:
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                messages.append(dict(self.run(self.client.events.get(), wait)))
        return messages

    def close(self) -> None:
        """Disconnect and close the loop; never raises again an interrupt already raised."""
        with self._lock:
            try:  # not self.run: it would take a fresh Ctrl-C here for an old one and
                # swallow it
                self.loop.run_until_complete(asyncio.wait_for(self.client.disconnect(), 5))
            except BaseException as exc:
                if not isinstance(exc, Exception) and exc is not self.interrupted:
                    raise
            finally:
                self.loop.close()
