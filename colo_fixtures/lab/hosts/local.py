"""Hosts on this machine: the machine itself, and a network namespace of the embedded lab."""

from __future__ import annotations

from pathlib import Path

from colo_fixtures.lab.hosts.base import Host, Process, Result, popen, run_local
from colo_fixtures.lab.namespaces import ns_exec_argv
from colo_fixtures.lab.topology import Topology


class LocalHost(Host):
    """This machine, in pytest's own network namespace."""

    def __init__(self, name: str = "localhost", role: str = "local"):
        super().__init__(name, role)

    def run(self, argv: list[str], timeout: float = 60, check: bool = True) -> Result:
        return run_local(self.name, argv, argv, timeout, check)

    def spawn(self, argv: list[str], log: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Process:
        return popen(argv, log, env, cwd)


class LocalNamespaceHost(Host):
    """Runs commands inside network namespace ``netns`` with nsenter (which execs, keeping PIDs)."""

    def __init__(self, name: str, role: str, netns: str):
        super().__init__(name, role)
        self.netns = netns

    def launcher(self, argv: list[str]) -> list[str]:
        return ns_exec_argv(self.netns, argv)

    def run(self, argv: list[str], timeout: float = 60, check: bool = True) -> Result:
        return run_local(self.name, argv, self.launcher(argv), timeout, check)

    def spawn(self, argv: list[str], log: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Process:
        return popen(self.launcher(argv), log, env, cwd)


def namespace_hosts(topo: Topology) -> dict[str, Host]:
    """A namespace host for every role of the embedded lab ``topo``."""
    return {role: LocalNamespaceHost(spec.netns, role, spec.netns)
            for role, spec in topo.hosts.items()}
