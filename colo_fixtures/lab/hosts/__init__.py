"""Host backends: where commands and QEMUs run (this machine, a lab namespace, or SSH)."""

from colo_fixtures.lab.hosts.base import CommandError, Host, Process, Result
from colo_fixtures.lab.hosts.local import LocalHost, LocalNamespaceHost, namespace_hosts

__all__ = ["CommandError", "Host", "LocalHost", "LocalNamespaceHost", "Process", "Result",
           "namespace_hosts"]
