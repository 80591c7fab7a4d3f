"""The guest agent's line protocol (PING, CLOCK, PUT, GET, MEM, STAT, ...) and its client."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from typing import TypeVar

AGENT_PORT = 7000
_KEY_RE = re.compile(r"[A-Za-z0-9_.:-]{1,63}")
_VALUE_RE = re.compile(r"[\x21-\x7e]{1,255}")
_T = TypeVar("_T")


class AgentError(RuntimeError):
    """The agent answered ERR or something unparsable; ``reply`` is the exact line."""

    def __init__(self, reply: str, request: str = ""):
        super().__init__(f"agent replied {reply!r}" + (f" to {request!r}" if request else ""))
        self.reply = reply
        self.request = request


def parse_pong(reply: str) -> int:
    """``PONG <uptime_ms>`` -> uptime in ms."""
    match = re.fullmatch(r"PONG (\d+)", reply)
    if not match:
        raise AgentError(reply)
    return int(match.group(1))


def parse_clock(reply: str) -> int:
    """``CLOCK <ns>`` -> the guest's monotonic clock in ns."""
    match = re.fullmatch(r"CLOCK (\d+)", reply)
    if not match:
        raise AgentError(reply)
    return int(match.group(1))


def parse_put(reply: str) -> int:
    """``OK <seq>`` -> seq."""
    match = re.fullmatch(r"OK (\d+)", reply)
    if not match:
        raise AgentError(reply)
    return int(match.group(1))


def parse_get(reply: str) -> tuple[int, str] | None:
    """``VAL <seq> <value>`` -> (seq, value); ``NONE`` -> None."""
    if reply == "NONE":
        return None
    match = re.fullmatch(r"VAL (\d+) ([\x21-\x7e]+)", reply)
    if not match:
        raise AgentError(reply)
    return int(match.group(1)), match.group(2)


def parse_fields(reply: str, word: str) -> dict[str, int]:
    """``WORD a=1 b=2`` -> {"a": 1, "b": 2}."""
    parts = reply.split(" ")
    if parts[0] != word or len(parts) < 2:
        raise AgentError(reply)
    fields: dict[str, int] = {}
    for part in parts[1:]:
        match = re.fullmatch(r"([a-z_]+)=(\d+)", part)
        if not match:
            raise AgentError(reply)
        fields[match.group(1)] = int(match.group(2))
    return fields


class AgentClient:
    """One TCP connection to the guest agent (not thread-safe: one client per thread).

    ERR or garbled replies raise AgentError, timeouts ``socket.timeout`` (TimeoutError),
    and a connection closed by the agent ConnectionError.
    """

    MAX_REPLY = 4096

    def __init__(self, sock: socket.socket, timeout: float = 5.0):
        self.sock = sock
        self.sock.settimeout(timeout)
        self._buf = b""

    @classmethod
    def connect(cls, host: str, port: int = AGENT_PORT, timeout: float = 5.0) -> AgentClient:
        """A client over a plain TCP connection from this namespace."""
        return cls(socket.create_connection((host, port), timeout=timeout), timeout)

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def request(self, line: str) -> str:
        """Send one request line, return the reply line (without ``\\n``), unchecked."""
        if "\n" in line or "\r" in line:
            raise ValueError(f"a request is one line: {line!r}")
        self.sock.sendall(line.encode("ascii") + b"\n")
        return self._readline()

    def _readline(self) -> str:
        while b"\n" not in self._buf:
            if len(self._buf) > self.MAX_REPLY:
                raise AgentError(self._buf[:200].decode("ascii", "replace"))
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("the agent closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode("ascii", "replace")

    def _call(self, line: str, parse: Callable[[str], _T]) -> _T:
        reply = self.request(line)
        try:
            return parse(reply)
        except AgentError as e:
            raise AgentError(reply, line) from e

    def ping(self) -> int:
        """The guest's uptime in ms."""
        return self._call("PING", parse_pong)

    def clock_ns(self) -> int:
        """The guest's monotonic clock in ns: a reply two replicas almost never agree on
        (their clocks run apart by microseconds even right after a checkpoint)."""
        return self._call("CLOCK", parse_clock)

    def put(self, key: str, value: str) -> int:
        """Store durably; returns the record's seq."""
        return self._call(f"PUT {key} {value}", parse_put)

    def get(self, key: str) -> tuple[int, str] | None:
        """``(seq, value)`` of the current value, or None."""
        return self._call(f"GET {key}", parse_get)

    def mem(self) -> dict[str, int]:
        """``{"rounds", "errors", "bytes"}`` of the memory checker."""
        return self._call("MEM", lambda r: parse_fields(r, "MEM"))

    def stat(self) -> dict[str, int]:
        """``{"keys", "seq", "uptime_ms", "memrounds", "memerrors"}``."""
        return self._call("STAT", lambda r: parse_fields(r, "STAT"))


def valid_key(key: str) -> bool:
    """Whether the agent accepts ``key`` (1-63 of ``[A-Za-z0-9_.:-]``)."""
    return bool(_KEY_RE.fullmatch(key))


def valid_value(value: str) -> bool:
    """Whether the agent accepts ``value`` (1-255 printable non-space ASCII)."""
    return bool(_VALUE_RE.fullmatch(value))
