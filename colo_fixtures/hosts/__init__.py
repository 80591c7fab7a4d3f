"""Host backends: where commands and QEMUs run (a local namespace now, SSH later)."""

from colo_fixtures.hosts.base import CommandError, Host, Result
from colo_fixtures.hosts.local import LocalNamespaceHost

__all__ = ["CommandError", "Host", "LocalNamespaceHost", "Result"]
