"""Phases of a test (boot, start COLO, a fault, failover, a check), announced by any layer.

A layer says ``with phase("failover: the secondary takes over"):`` or decorates a function
with ``@phase(...)``; it knows nothing of reports. Every phase is written to the
``colo.phase`` logger with its duration and outcome, and handed to the listeners: the
reporting layer subscribes one that turns phases into nested Allure steps. Phases nest per
thread.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import ParamSpec, Protocol, TypeVar

P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger("colo.phase")


class PhaseListener(Protocol):
    """Told when a phase starts and when it ends (with the exception that ended it)."""

    def started(self, title: str) -> None: ...

    def ended(self, title: str, exc_type: type[BaseException] | None,
              exc: BaseException | None, tb: TracebackType | None) -> None: ...


_LISTENERS: list[PhaseListener] = []


def add_listener(listener: PhaseListener) -> None:
    """Subscribe ``listener`` to every phase from now on (once: a second add is ignored)."""
    if listener not in _LISTENERS:
        _LISTENERS.append(listener)


def remove_listener(listener: PhaseListener) -> None:
    if listener in _LISTENERS:
        _LISTENERS.remove(listener)


class phase:
    """One phase: a context manager, or a decorator (without the call's arguments: they are
    often large, like a whole client history)."""

    def __init__(self, title: str):
        self.title = title
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.monotonic()
        log.info("begin: %s", self.title)
        for listener in list(_LISTENERS):
            listener.started(self.title)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        took = time.monotonic() - self._started
        if exc_type is None:
            log.info("end: %s (%.3f s)", self.title, took)
        else:
            log.info("end: %s (%.3f s, %s)", self.title, took, exc_type.__name__)
        for listener in reversed(list(_LISTENERS)):
            listener.ended(self.title, exc_type, exc, tb)

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def in_phase(*args: P.args, **kwargs: P.kwargs) -> R:
            with phase(self.title):
                return func(*args, **kwargs)
        return in_phase
