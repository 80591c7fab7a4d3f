"""Every knob of the harness, read once from command line, environment and ini.

Precedence, highest first: command line option, environment variable, ini value
(``[tool.pytest.ini_options]`` or ``pytest.ini``), built-in default. Each knob is
declared once in ``KNOBS``; the pytest options, the ini keys and the environment
names are derived from that table, and ``load_settings`` validates every value
into the frozen ``Settings`` before anything starts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PATCHES = PROJECT_ROOT / "patches" / "qemu-7.2"
RAMCHECK_PATCHES = PROJECT_ROOT / "patches" / "qemu-7.2-ramcheck"  # on top, for --colo-ramcheck


def default_cache_dir() -> Path:
    """``$COLO_CACHE_DIR``, else ``$XDG_CACHE_HOME/colo-harness``, else ``~/.cache/...``."""
    if env := os.environ.get("COLO_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "colo-harness"
ACCELS = ("auto", "tcg", "kvm")
PROFILES = ("local", "inventory")


class SettingsError(ValueError):
    """A knob has a bad value; the message is one line naming the knob and the fix."""


def _path(value: str) -> Path:
    return Path(value).expanduser()


def _existing_file(value: str) -> Path:
    path = _path(value)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    if not os.access(path, os.X_OK):
        raise ValueError(f"not executable: {path}")
    return path.resolve()


def _readable_file(value: str) -> Path:
    path = _path(value)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    return path.resolve()


def _existing_dir(value: str) -> Path:
    path = _path(value)
    if not path.is_dir():
        raise ValueError(f"no such directory: {path}")
    return path.resolve()


def _dir(value: str) -> Path:
    """A directory the harness writes into: may not exist yet, but is no file."""
    path = _path(value)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is not a directory: name a directory")
    return path


def _patch_series(value: str) -> Path:
    """A patch series: a ``series`` file or at least one ``*.patch``."""
    path = _existing_dir(value)
    if not (path / "series").is_file() and not any(path.glob("*.patch")):
        raise ValueError(f"{path} holds no series file and no *.patch: for QEMU without "
                         "patches give --qemu-binary (e.g. /usr/bin/qemu-system-x86_64)")
    return path


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return parse


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an integer") from None
        if not low <= number <= high:
            raise ValueError(f"{number} is outside {low}..{high}")
        return number

    return parse


def _float_range(low: float, high: float) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a number") from None
        if not low <= number <= high:
            raise ValueError(f"{number:g} is outside {low:g}..{high:g}")
        return number

    return parse


def _patterns(value: str) -> tuple[str, ...]:
    patterns = tuple(p.strip() for p in value.split(",") if p.strip())
    bad = [p for p in patterns if not re.fullmatch(r"[A-Za-z0-9_*?]+", p)]
    if bad:
        raise ValueError(f"{', '.join(map(repr, bad))} is not a trace event pattern "
                         "(letters, digits, _, * and ?; several separated by commas)")
    return patterns


def _flags(value: str) -> tuple[str, ...]:
    """Whitespace-separated compiler or configure flags, each starting with '-'."""
    words = tuple(value.split())
    bad = [w for w in words if not w.startswith("-")]
    if bad:
        raise ValueError(f"{', '.join(map(repr, bad))} is not a flag (flags start with '-'; "
                         "separate several with spaces)")
    return words


def _word(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", value):
        raise ValueError(f"{value!r} is not a device name (letters, digits, _ . : -)")
    return value


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{value!r} is not a boolean (use true/false)")


@dataclass(frozen=True)
class Knob:
    """One setting: its option, ini key and environment variable are derived from ``name``."""

    name: str
    parse: Callable[[str], Any]
    default: str | None
    help: str
    metavar: str = "VALUE"
    flag: bool = False
    env_aliases: tuple[str, ...] = ()  # further environment names, after ``env``

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def ini(self) -> str:
        return "colo_" + self.name.removeprefix("colo_")

    @property
    def env(self) -> str:
        return "COLO_" + self.name.removeprefix("colo_").upper()

    @property
    def negation(self) -> str:
        """A flag's option that turns it off (over the environment and ini)."""
        return "--no-" + self.name.replace("_", "-")

    def from_env(self, env: Mapping[str, str]) -> tuple[str, str] | None:
        """(value, variable) of the first of ``env`` and ``env_aliases`` that is set."""
        for name in (self.env, *self.env_aliases):
            if env.get(name):
                return env[name], name
        return None


KNOBS: tuple[Knob, ...] = (
    Knob("qemu_binary", _existing_file, None,
         "use this qemu-system-x86_64 instead of building one", "PATH"),
    Knob("qemu_src", _existing_dir, None,
         "build QEMU from this source tree instead of Debian's 7.2 source package", "DIR"),
    Knob("qemu_patches", _patch_series, str(DEFAULT_PATCHES),
         "patch series applied before building (a directory of *.patch, optional 'series')",
         "DIR"),
    Knob("colo_ramcheck", _bool, "false",
         "build QEMU with patches/qemu-7.2-ramcheck/ too (its own cached build): both sides "
         "trace a digest of every MiB of guest RAM at each checkpoint, and a test fails at "
         "the first checkpoint where they differ; lengthens each checkpoint's pause",
         flag=True),
    Knob("accel", _choice(ACCELS), "auto",
         "accelerator: auto probes KVM with a time-boxed boot and falls back to TCG",
         "auto|tcg|kvm"),
    Knob("guest_memory", _int_range(64, 65536), "256", "guest RAM in MiB", "MIB"),
    Knob("checkpoint_delay", _int_range(10, 3_600_000), "20000",
         "default x-checkpoint-delay in ms (suites pick their own short delays explicitly)", "MS"),
    Knob("replication_rate", _int_range(0, 100_000), "0",
         "limit the embedded lab's replication link to this many Mbit/s each way (tbf): a "
         "slower lab network, e.g. to see checkpoint pauses grow; 0 = unlimited", "MBIT"),
    Knob("colo_profile", _choice(PROFILES), "local",
         "lab profile: local (network namespaces on this machine) or inventory (lab hosts "
         "over SSH, from --inventory)", "local|inventory"),
    Knob("inventory", _readable_file, None,
         "inventory file (TOML) of the lab hosts, for --colo-profile inventory", "PATH"),
    Knob("report_dir", _dir, str(PROJECT_ROOT / "reports"),
         "where per-test artifacts and metrics are written", "DIR"),
    Knob("cache_dir", _dir, None,
         "build cache for QEMU and the guest (default ~/.cache/colo-harness)", "DIR"),
    Knob("keep_on_failure", _bool, "false",
         "keep scratch disks and sockets of failed tests for inspection", flag=True),
    Knob("pcap", _bool, "false",
         "record the replication link (packet headers, tcpdump on the primary's host) for "
         "every COLO lab; the pcap is attached to the test (pytest's own --capture is "
         "about output)", flag=True),
    Knob("colo_trace", _patterns, None,
         "extra trace events enabled at run time through QMP on every QEMU, as the seed's "
         "debug step (e.g. 'qemu_rdma*,colo_compare*'); their log is attached", "PATTERNS"),
    Knob("colo_cycles", _int_range(1, 1000), "3",
         "failover → resume cycles of the repeated-cycles test (16 in nightly runs)", "N"),
    Knob("colo_clients", _int_range(1, 64), "2",
         "concurrent clients of each suite's workload, each on its own connection and keys "
         "(4 in nightly runs)", "N"),
    Knob("wait_timeout", _float_range(1, 3600), "60",
         "seconds any single wait (boot, QMP, COLO state) may take before it is diagnosed",
         "SECONDS"),
    Knob("vmft_root", _existing_dir, None,
         "a vm-ft checkout (qemu/, rdma-paxos/) to build and run the vm-ft suites against",
         "DIR", env_aliases=("VMFT_ROOT",)),
    Knob("vmft_patches", _existing_dir, None,
         "the lab's patch directory for its vm-ft tree, applied to a copy, never in place",
         "DIR"),
    Knob("vmft_cflags", _flags, "-fcommon",
         "extra C flags for rdma-paxos and the vm-ft QEMU (-fcommon: gcc >= 10)", "FLAGS"),
    Knob("vmft_configure", _flags, "--disable-guest-agent",
         "extra flags for the vm-ft QEMU's configure, after the seed's", "FLAGS"),
    Knob("python2", _existing_file, None,
         "Python 2 for QEMU 2.5's configure (default: python2 or python2.7 on PATH)", "PATH"),
    Knob("ssh_accept_new", _bool, "false",
         "SSH profile: accept unknown host keys and add them to known_hosts (default: refuse)",
         flag=True),
    Knob("rdma_device", _word, None,
         "the RDMA device vm-ft uses (default: the first under /sys/class/infiniband)", "NAME"),
)


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one run."""

    qemu_binary: Path | None = None
    qemu_src: Path | None = None
    qemu_patches: Path = DEFAULT_PATCHES
    colo_ramcheck: bool = False
    accel: str = "auto"
    guest_memory: int = 256
    checkpoint_delay: int = 20000
    replication_rate: int = 0
    colo_profile: str = "local"
    inventory: Path | None = None
    report_dir: Path = PROJECT_ROOT / "reports"
    cache_dir: Path = field(default_factory=default_cache_dir)
    keep_on_failure: bool = False
    pcap: bool = False
    colo_trace: tuple[str, ...] = ()
    colo_cycles: int = 3
    colo_clients: int = 2
    wait_timeout: float = 60.0
    vmft_root: Path | None = None
    vmft_patches: Path | None = None
    vmft_cflags: tuple[str, ...] = ("-fcommon",)
    vmft_configure: tuple[str, ...] = ("--disable-guest-agent",)
    python2: Path | None = None
    ssh_accept_new: bool = False
    rdma_device: str | None = None


def load_settings(
    cli: Mapping[str, Any],
    ini: Mapping[str, str | None],
    env: Mapping[str, str],
) -> Settings:
    """Resolve every knob by precedence and validate it; raise SettingsError on the first bad one.

    ``cli`` maps knob names to command-line values (None when not given), ``ini`` maps
    knob names to ini strings (None or "" when unset), ``env`` is the process environment.
    """
    values: dict[str, Any] = {}
    for knob in KNOBS:
        cli_value = cli.get(knob.name)
        if cli_value is not None:
            raw = str(cli_value).lower() if knob.flag else str(cli_value)
            source = knob.negation if cli_value is False else knob.option
        elif (found := knob.from_env(env)) is not None:
            raw, source = found[0], f"${found[1]}"
        elif ini.get(knob.name):
            raw, source = str(ini[knob.name]), f"ini {knob.ini}"
        elif knob.default is not None:
            raw, source = knob.default, "default"
        else:
            continue
        try:
            values[knob.name] = knob.parse(raw)
        except ValueError as exc:
            raise SettingsError(f"{source}: {exc} ({knob.help})") from None
    settings = Settings(**values)
    _check_combinations(settings)
    return settings


def _check_combinations(settings: Settings) -> None:
    if settings.qemu_binary and settings.qemu_src:
        raise SettingsError(
            "--qemu-binary and --qemu-src both given: choose a binary or a tree to build"
        )
    if settings.colo_profile == "inventory" and settings.inventory is None:
        raise SettingsError("--colo-profile inventory needs --inventory PATH (the lab's TOML "
                            "file; see tools/inventory.example.toml)")
    if settings.replication_rate and settings.colo_profile != "local":
        raise SettingsError(f"--replication-rate {settings.replication_rate} shapes the "
                            "embedded lab's link only: on lab hosts, shape the real "
                            "replication link (or drop --replication-rate)")
    if settings.inventory is not None and settings.colo_profile != "inventory":
        raise SettingsError(f"--inventory {settings.inventory} is only read by the inventory "
                            "profile: add --colo-profile inventory (or drop --inventory)")
