"""A lab host's VM network set up through its ``Host``: iproute2 argv from the HostSpec.

The one implementation for every kind of host: an SSH lab host and a namespace of the
embedded lab get the same data (``HostSpec``: bridge, tap, external interface, ifb) as
the same ``ip``/``tc`` argv lists, run through the host's backend: nothing to install on
the hosts (iproute2 is everywhere), every step shows in the log as the command it is.
What is made is recorded with the argv that undoes it (``teardown`` runs those in reverse
and tolerates what is already gone) and, in the ledger's words, in ``made``.

The steps are the seed's: br0 with the external interface and (on the primary) tap0 in
it; the secondary's tap0 up but outside the bridge until failover; on the primary, ifb0
fed by an ingress qdisc on tap0 with a u32 match-all mirred redirect (step 2). IPv6 is
turned off on br0, tap0 and the external interface (restored at teardown), as the
embedded lab does for its namespaces, so the host itself sends nothing to the VM.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from colo_fixtures.lab.hosts import CommandError, Host
from colo_fixtures.lab.namespaces import FILTER_PRIO
from colo_fixtures.lab.topology import HostSpec

# The kernel part a step needs, named when the step fails.
HINTS = {
    "create bridge": "module bridge missing? modprobe bridge",
    "create tap": "no /dev/net/tun? modprobe tun",
    "create ifb device": "module ifb missing? modprobe ifb",
    "add an ingress qdisc": "module sch_ingress missing? modprobe sch_ingress",
    "redirect": "modules cls_u32/act_mirred missing? modprobe cls_u32 act_mirred",
}
# What "already gone" looks like in iproute2's messages when undoing.
GONE = ("Cannot find device", "No such device", "does not exist", "Cannot delete qdisc with "
        "handle of zero", "Invalid handle", "No such file or directory")


@dataclass
class HostNetwork:
    """The VM network of one lab host; ``provision`` makes it, ``teardown`` removes it."""

    host: Host
    spec: HostSpec
    undo: list[tuple[str, list[str]]] = field(default_factory=list)  # (what, argv)
    # What was made, in the ledger's words (kind, name on the host): ("link", "br0"),
    # ("qdisc", "tap0/ingress"), ("filter", "tap0/ingress/10").
    made: list[tuple[str, str]] = field(default_factory=list)

    def _make(self, what: str, argv: list[str], undo: list[str] | None,
              item: tuple[str, str] | None = None) -> None:
        try:
            self.host.run(argv, timeout=30)
        except CommandError as exc:
            hint = next((h for step, h in HINTS.items() if what.startswith(step)), None)
            raise CommandError(f"{self.host.name}: cannot {what}: {exc}"
                               + (f" ({hint})" if hint else "")) from None
        if undo is not None:
            self.undo.append((what, undo))
        if item is not None:
            self.made.append(item)

    def _ip(self, *words: str) -> list[str]:
        return ["ip", *words]

    def provision(self, enslave_tap: bool) -> None:
        """Bridge, tap, external interface in the bridge, and the ifb redirect if any.
        On failure what was made is removed again and the error names the step."""
        s = self.spec
        tap = self._tap()
        try:
            self._make(f"create bridge {s.bridge}", self._ip("link", "add", "name", s.bridge,
                                                              "type", "bridge"),
                       self._ip("link", "del", s.bridge), ("link", s.bridge))
            self._make(f"create tap {tap}", self._ip("tuntap", "add", "dev", tap,
                                                        "mode", "tap"),
                       self._ip("tuntap", "del", "dev", tap, "mode", "tap"), ("link", tap))
            for made in (s.bridge, tap):
                self._quiet(made, restore=None)
            if enslave_tap:
                self.attach_tap()
            self._make(f"set {tap} up", self._ip("link", "set", tap, "up"), None)
            if s.ext_if is not None:
                self._quiet(s.ext_if, restore=self._ipv6_disabled(s.ext_if))
                self._make(f"put {s.ext_if} into {s.bridge}",
                           self._ip("link", "set", s.ext_if, "master", s.bridge),
                           self._ip("link", "set", s.ext_if, "nomaster"))
                self._make(f"set {s.ext_if} up", self._ip("link", "set", s.ext_if, "up"), None)
            self._make(f"set {s.bridge} up", self._ip("link", "set", s.bridge, "up"), None)
            if s.ifb is not None:
                self._ifb_redirect(tap, s.ifb)
        except BaseException:
            self.teardown()
            raise

    def _ipv6_disabled(self, ifname: str) -> str | None:
        result = self.host.run(["sysctl", "-n", f"net/ipv6/conf/{ifname}/disable_ipv6"],
                               check=False)
        return result.stdout.strip() if result.rc == 0 else None

    def _quiet(self, ifname: str, restore: str | None) -> None:
        """No IPv6 on a link of the VM network: the host then sends nothing into it (no
        router solicitation, MLD or DAD), so the VM sees only what clients send, as on the
        embedded lab (colo-compare handles only IPv4, and the primary's mirror must not
        get traffic before the secondary connects). ``restore`` is the value to put back."""
        if self._ipv6_disabled(ifname) is None:
            return  # no IPv6 on this host
        key = f"net/ipv6/conf/{ifname}/disable_ipv6"
        self._make(f"turn IPv6 off on {ifname}", ["sysctl", "-q", "-w", f"{key}=1"],
                   None if restore in (None, "1") else ["sysctl", "-q", "-w", f"{key}={restore}"])

    def _ifb_redirect(self, tap: str, ifb: str) -> None:
        self._make(f"create ifb device {ifb}", self._ip("link", "add", ifb, "type", "ifb"),
                   self._ip("link", "del", ifb), ("link", ifb))
        self._make(f"set {ifb} up", self._ip("link", "set", ifb, "up"), None)
        self._make(f"add an ingress qdisc on {tap}",
                   ["tc", "qdisc", "add", "dev", tap, "ingress"],
                   ["tc", "qdisc", "del", "dev", tap, "ingress"], ("qdisc", f"{tap}/ingress"))
        self._make(f"redirect {tap} ingress to {ifb}",
                   ["tc", "filter", "add", "dev", tap, "parent", "ffff:", "protocol", "ip",
                    "prio", str(FILTER_PRIO), "u32", "match", "u32", "0", "0", "action",
                    "mirred", "egress", "redirect", "dev", ifb],
                   None,  # goes with the qdisc
                   ("filter", f"{tap}/ingress/{FILTER_PRIO}"))

    def _tap(self) -> str:
        if self.spec.tap is None:
            raise ValueError(f"{self.spec.role} host has no tap")
        return self.spec.tap

    def attach_tap(self) -> None:
        """The VM's tap into the bridge (the secondary's at failover)."""
        self.host.run(self._ip("link", "set", self._tap(), "master", self.spec.bridge))

    def detach_tap(self) -> None:
        self.host.run(self._ip("link", "set", self._tap(), "nomaster"))

    def teardown(self) -> list[str]:
        """Undo in reverse; returns the steps that failed for another reason than 'gone'."""
        steps, self.undo = self.undo, []
        return run_undo(self.host, steps)


def run_undo(host: Host, steps: list[tuple[str, list[str]]]) -> list[str]:
    """Run undo ``steps`` (what, argv) on ``host`` in reverse order; return those that failed
    for another reason than the thing being gone already."""
    failed = []
    for what, argv in reversed(steps):
        result = host.run(argv, timeout=30, check=False)
        if result.rc != 0 and not any(g in result.stderr for g in GONE):
            failed.append(f"{host.name}: undo '{what}': {' '.join(argv)}: "
                          f"{result.stderr.strip()}")
    return failed

