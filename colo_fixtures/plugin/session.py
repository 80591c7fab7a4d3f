"""Session fixtures: the settings, the QEMU and guest builds, the inventory's hosts, the
accelerator and the vm-ft preflight (vm-ft's build is in ``vmft``).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterator
from fnmatch import fnmatch

import pytest

from colo_fixtures.config.settings import (
    DEFAULT_PATCHES,
    PROJECT_ROOT,
    RAMCHECK_PATCHES,
    Settings,
)
from colo_fixtures.lab.hosts import CommandError
from colo_fixtures.lab.inventory_lab import (
    PASSPHRASE_ENV,
    InventoryHosts,
    InventoryLabError,
    ssh_hosts,
)
from colo_fixtures.plugin.options import INVENTORY_KEY, SETTINGS_KEY
from colo_fixtures.report import allure_glue as report
from colo_fixtures.sut.accel import choose_accel
from colo_fixtures.sut.build import BuildError, QemuBuild, probe_capabilities, provide_qemu
from colo_fixtures.sut.cache import CacheError
from colo_fixtures.sut.guest.image import GuestBuildError, GuestImage, build_guest
from colo_fixtures.sut.preflight import Preflight, run_preflight
from colo_fixtures.sut.trace import RAM_DIGEST_EVENT

LACKS_COLO = "lacks COLO support"  # the skip reason of a QEMU without COLO


@pytest.fixture(scope="session")
def colo_settings(pytestconfig: pytest.Config) -> Settings:
    """The validated settings of this run."""
    return pytestconfig.stash[SETTINGS_KEY]


@pytest.fixture(scope="session")
def qemu_build(colo_settings: Settings) -> QemuBuild:
    """The QEMU binary (given, built from a tree, or Debian 7.2 + patches), capability-checked."""
    s = colo_settings
    try:
        # the shipped series' RAM-check build keeps its tree: the mutants stand on it
        build = provide_qemu(s.qemu_binary, s.qemu_src, s.qemu_patches, s.cache_dir,
                             RAMCHECK_PATCHES if s.colo_ramcheck else None,
                             keep_tree=s.colo_ramcheck and s.qemu_src is None
                             and s.qemu_patches.resolve() == DEFAULT_PATCHES.resolve())
        caps = probe_capabilities(build.binary)
    except BuildError as exc:
        if exc.log:
            report.attach_file(exc.log, "QEMU build log")
        pytest.fail(f"QEMU unavailable: {exc}", pytrace=False)
    except CacheError as exc:
        pytest.fail(f"QEMU unavailable: {exc}", pytrace=False)
    unmatched = [p for p in s.colo_trace
                 if not any(fnmatch(event, p) for event in caps.trace_events)]
    if unmatched:
        pytest.fail(f"--colo-trace {', '.join(unmatched)}: no trace event of {build.binary} "
                    "matches (see its -trace help)", pytrace=False)
    build = dataclasses.replace(build, ram_digests=RAM_DIGEST_EVENT in caps.trace_events)
    if s.colo_ramcheck and not build.ram_digests:
        pytest.fail(f"--colo-ramcheck: {build.binary} has no trace event {RAM_DIGEST_EVENT} "
                    f"(build it with {RAMCHECK_PATCHES.relative_to(PROJECT_ROOT)}/, or drop "
                    "--qemu-binary)", pytrace=False)
    missing = caps.missing()
    if missing:
        pytest.skip(f"{build.binary} (QEMU {caps.version}) {LACKS_COLO}: "
                    f"{', '.join(missing)}")
    report.environment(qemu_binary=build.binary, qemu_origin=build.origin,
                       qemu_version=caps.version, qemu_build_key=build.key or "-",
                       qemu_patches=",".join(build.patches) or "none")
    return build


@pytest.fixture(scope="session")
def guest_image(colo_settings: Settings) -> GuestImage:
    """The tiny guest (cloud kernel, busybox initramfs, colo-agent), built once and cached."""
    try:
        return build_guest(colo_settings.cache_dir)
    except (GuestBuildError, CacheError) as exc:
        pytest.fail(f"guest image unavailable: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def lab_hosts(pytestconfig: pytest.Config, colo_settings: Settings, qemu_build: QemuBuild,
              guest_image: GuestImage) -> Iterator[InventoryHosts | None]:
    """The inventory profile's hosts over SSH, checked once, with QEMU and the guest staged
    on them (None on the local profile)."""
    if colo_settings.colo_profile != "inventory":
        yield None
        return
    inventory, topo = pytestconfig.stash[INVENTORY_KEY]
    hosts = InventoryHosts(inventory, topo, ssh_hosts(inventory, colo_settings.ssh_accept_new,
                                                os.environ.get(PASSPHRASE_ENV)))
    try:
        hosts.check(qemu_build.firmware_args()[1::2])
        hosts.check_clocks()
        hosts.stage([qemu_build.binary, guest_image.kernel, guest_image.initrd])
        hosts.check_qemu(hosts.staged[qemu_build.binary])
    except (InventoryLabError, CommandError) as exc:
        hosts.close()
        pytest.fail(f"inventory {inventory.path}: {exc}", pytrace=False)
    report.environment(lab_profile="inventory", lab_inventory=inventory.path,
                       lab_hosts=", ".join(h.name for h in hosts.hosts.values()),
                       lab_clock_offsets_ms=", ".join(
                           f"{role} {offset * 1000:+.2f} (rtt {rtt * 1000:.2f})"
                           for role, (offset, rtt) in sorted(hosts.clock_offsets.items())))
    try:
        yield hosts
    finally:
        hosts.close()


class AccelFallback(UserWarning):
    """--accel auto found KVM unusable and runs the guests under TCG (slower)."""


@pytest.fixture(scope="session")
def accel(colo_settings: Settings, qemu_build: QemuBuild, guest_image: GuestImage) -> str:
    """tcg or kvm, after the time-boxed KVM boot probe when --accel auto."""
    chosen, reason = choose_accel(colo_settings.accel, qemu_build, guest_image.kernel,
                                  colo_settings.cache_dir)
    if colo_settings.accel == "auto" and chosen == "tcg":  # shown in the warnings summary
        warnings.warn(AccelFallback(f"--accel auto fell back to TCG: {reason}"), stacklevel=1)
    report.environment(accel=chosen, accel_reason=reason, guest_kernel=guest_image.kernel_version)
    return chosen


@pytest.fixture(scope="session")
def worker_id_safe(request: pytest.FixtureRequest) -> str:
    """The xdist worker id ("master" without xdist)."""
    return os.environ.get("PYTEST_XDIST_WORKER", "master")


PREFLIGHT_KEY = pytest.StashKey[Preflight]()


PREFLIGHT_MARKERS = ("rdma", "paxos")


def _preflight(config: pytest.Config) -> Preflight:
    if PREFLIGHT_KEY not in config.stash:
        s = config.stash[SETTINGS_KEY]
        config.stash[PREFLIGHT_KEY] = run_preflight(s.vmft_root, s.python2, s.rdma_device)
    return config.stash[PREFLIGHT_KEY]


@pytest.fixture(scope="session")
def preflight(pytestconfig: pytest.Config) -> Preflight:
    """What this host has for vm-ft (RDMA port 2, ifb, mirred, plug, Python 2, libraries)."""
    return _preflight(pytestconfig)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``rdma`` or ``paxos`` skip, before any fixture, with the preflight's
    one line per missing item."""
    scopes = [name for name in PREFLIGHT_MARKERS if item.get_closest_marker(name)]
    if scopes and (reason := _preflight(item.config).skip_reason(scopes)):
        pytest.skip(reason)
