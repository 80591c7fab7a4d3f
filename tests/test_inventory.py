"""The TOML inventory: a valid lab parses; every bad one is a one-line, line-numbered error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from colo_fixtures.config.inventory import InventoryError, SshTarget, load_inventory

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "tools" / "inventory.example.toml"

GOOD = """\
[lab]
scratch = "/mnt/ramfs/colo"
vm_address = "192.168.100.10"

[hosts.primary]
ssh = "root@lab-a.example:2222"
key = "id_lab"
replication = { interface = "ib0", address = "10.22.1.2" }
external = { interface = "eth1", bridge = "br0", tap = "tap0" }

[hosts.secondary]
ssh = "colo@10.0.0.3"
key = "id_lab"
replication = { interface = "ib0", address = "10.22.1.3" }
external = { interface = "eth1", bridge = "br0", tap = "tap0" }

[hosts.sentinel]
ssh = "root@lab-c.example"
key = "id_lab"
replication = { interface = "ib0", address = "10.22.1.4" }
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "id_lab").write_text("not a real key\n")
    path = tmp_path / "lab.toml"
    path.write_text(text)
    return path


def test_a_three_host_lab(tmp_path: Path):
    inventory = load_inventory(write(tmp_path, GOOD))
    assert list(inventory.hosts) == ["primary", "secondary", "sentinel"]
    primary = inventory.host("primary")
    assert primary.ssh == SshTarget("root", "lab-a.example", 2222)
    assert primary.key == tmp_path / "id_lab"
    assert (primary.replication_if, primary.replication_addr) == ("ib0", "10.22.1.2")
    assert (primary.external_if, primary.bridge, primary.tap) == ("eth1", "br0", "tap0")
    assert inventory.host("secondary").ssh == SshTarget("colo", "10.0.0.3", 22)
    assert inventory.scratch == Path("/mnt/ramfs/colo")
    assert inventory.vm_address == "192.168.100.10"
    with pytest.raises(ValueError, match="no client host in the inventory"):
        inventory.host("client")


def test_the_shipped_example_is_valid(tmp_path: Path):
    # The example's key path points at the engineer's home; give it a file to find.
    text = EXAMPLE.read_text().replace("~/.ssh/colo_lab", str(tmp_path / "key"))
    (tmp_path / "key").write_text("")
    copy = tmp_path / "example.toml"
    copy.write_text(text)
    inventory = load_inventory(copy)
    assert set(inventory.hosts) == {"primary", "secondary", "sentinel"}


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda t: t.replace('scratch = "/mnt', 'scratch = "mnt'),
     "lab.toml:2: lab.scratch = 'mnt/ramfs/colo': an absolute path on the lab hosts"),
    (lambda t: t.replace("[hosts.sentinel]", "[hosts.witness]"),
     "lab.toml:17: unknown role 'witness' (roles: primary, secondary, sentinel, client)"),
    (lambda t: t.replace('address = "10.22.1.3"', 'address = "10.22.1.2"'),
     "lab.toml:11: address 10.22.1.2 of secondary is also primary's: every address must be "
     "unique"),
    (lambda t: t.replace('key = "id_lab"\nreplication = { interface = "ib0", address = '
                         '"10.22.1.4" }', 'key = "missing_key"\nreplication = { interface = '
                         '"ib0", address = "10.22.1.4" }'),
     "lab.toml:19: hosts.sentinel.key: no such file"),
    (lambda t: t.replace('ssh = "colo@10.0.0.3"', 'ssh = "10.0.0.3"'),
     "lab.toml:12: hosts.secondary.ssh = '10.0.0.3': expected user@host[:port]"),
    (lambda t: t.replace("lab-a.example:2222", "lab-a.example:70000"),
     "lab.toml:6: hosts.primary.ssh port 70000 is outside 1..65535"),
    (lambda t: t.replace('vm_address = "192.168.100.10"', 'vm_address = "192.168.100.300"'),
     "lab.toml:3: lab.vm_address = '192.168.100.300' is not an IP address"),
    (lambda t: t.replace('tap = "tap0" }\n', 'tap = "tap0" }\nrdma_port = 2\n', 1),
     "lab.toml:10: unknown key 'rdma_port' in [hosts.primary]"),
    (lambda t: t.replace('tap = "tap0" }\n', 'tap = "tap0" }\nrdma_device = "mlx5_0"\n', 1),
     "lab.toml:10: hosts.primary.rdma_device is not read by the harness"),
    (lambda t: t.replace('[lab]\n', '[lab]\nimages = "/srv/images"\n'),
     "lab.toml:2: lab.images is not read by the harness"),
    (lambda t: t.replace('[lab]\n', '[lab]\nimages = [1\n'),
     "lab.toml:3: not valid TOML"),
    (lambda t: t.replace('external = { interface = "eth1", bridge = "br0", tap = "tap0" }\n\n'
                         '[hosts.sentinel]', '\n[hosts.sentinel]'),
     "lab.toml:11: [hosts.secondary] needs external = { interface = ..., bridge = ..., "
     "tap = ... }"),
    (lambda t: t.split("[hosts.secondary]")[0],
     "lab.toml:1: no [hosts.secondary] table: the lab needs a primary and a secondary"),
    (lambda t: t.replace("[lab]", "[labs]"), "lab.toml:1: unknown table [labs]"),
    (lambda t: t.replace('tap = "tap0" }\n', 'tap = "tap0; reboot" }\n', 1),
     "lab.toml:9: hosts.primary.external = 'tap0; reboot' is not an interface name"),
])
def test_bad_inventories_are_one_line_errors(tmp_path: Path, edit, expected):
    path = write(tmp_path, edit(GOOD))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    message = str(info.value)
    assert message.startswith(str(tmp_path / expected.split(":", 1)[0]) + ":" +
                              expected.split(":", 1)[1]), message
    assert "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing touched


def test_missing_file(tmp_path: Path):
    with pytest.raises(InventoryError, match=r"nope.toml: cannot read the inventory: No such "):
        load_inventory(tmp_path / "nope.toml")


def test_example_is_shipped():
    assert EXAMPLE.is_file() and shutil.which("true")
