"""The one interface every host backend implements; suites never know which one runs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    """What a finished command returned."""

    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str


class CommandError(RuntimeError):
    """A command exited non-zero or timed out; the message names the host and the command."""


class Host(ABC):
    """A lab host with a role; runs argv lists (never shell strings)."""

    def __init__(self, name: str, role: str):
        self.name = name
        self.role = role

    @abstractmethod
    def run(self, argv: list[str], timeout: float = 60, check: bool = True) -> Result:
        """Run ``argv`` to completion on this host."""

    @abstractmethod
    def launcher(self, argv: list[str]) -> list[str]:
        """The local argv that starts ``argv`` on this host as a long-running process."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, role={self.role!r})"
