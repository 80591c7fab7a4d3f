"""A host that is a network namespace on this machine (the embedded "local" lab)."""

from __future__ import annotations

import subprocess

from colo_fixtures.hosts.base import CommandError, Host, Result
from colo_fixtures.net import ns_exec_argv


class LocalNamespaceHost(Host):
    """Runs commands inside network namespace ``netns`` with nsenter (which execs, keeping PIDs)."""

    def __init__(self, name: str, role: str, netns: str):
        super().__init__(name, role)
        self.netns = netns

    def launcher(self, argv: list[str]) -> list[str]:
        return ns_exec_argv(self.netns, argv)

    def run(self, argv: list[str], timeout: float = 60, check: bool = True) -> Result:
        try:
            done = subprocess.run(self.launcher(argv), capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            raise CommandError(f"{self.name}: {argv[0]} timed out after {timeout:g}s "
                               f"({' '.join(argv)})") from None
        result = Result(tuple(argv), done.returncode, done.stdout, done.stderr)
        if check and result.rc != 0:
            last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or [""]
            raise CommandError(f"{self.name}: {' '.join(argv)} exited {result.rc}: {last[0]}")
        return result
