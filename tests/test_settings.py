"""Settings: precedence, validation, one-line errors, and the pytest option wiring."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from colo_fixtures.config.settings import KNOBS, Settings, SettingsError, load_settings

NO_CLI: dict = {}
NO_INI: dict = {}


def test_defaults():
    settings = load_settings(NO_CLI, NO_INI, {})
    assert settings.accel == "auto"
    assert settings.checkpoint_delay == 20000
    assert settings.guest_memory == 256
    assert settings.colo_profile == "local"
    assert settings.keep_on_failure is False
    assert settings.qemu_patches.name == "qemu-7.2"


def test_precedence_cli_over_env_over_ini():
    ini = {"checkpoint_delay": "3000", "guest_memory": "512"}
    env = {"COLO_CHECKPOINT_DELAY": "2000"}
    assert load_settings(NO_CLI, ini, env).checkpoint_delay == 2000
    assert load_settings(NO_CLI, ini, env).guest_memory == 512
    assert load_settings({"checkpoint_delay": "1000"}, ini, env).checkpoint_delay == 1000


def test_trace_patterns_are_a_tuple():
    assert load_settings({"colo_trace": "qemu_rdma*, colo_compare*"}, NO_INI, {}).colo_trace == (
        "qemu_rdma*", "colo_compare*")
    assert load_settings(NO_CLI, NO_INI, {}).colo_trace == ()


def test_flag_from_env_and_cli():
    assert load_settings(NO_CLI, NO_INI, {"COLO_KEEP_ON_FAILURE": "yes"}).keep_on_failure
    assert load_settings({"keep_on_failure": True}, NO_INI, {}).keep_on_failure
    assert not load_settings({"keep_on_failure": False}, NO_INI, {}).keep_on_failure
    # --no-pcap (False) turns off what the environment or the ini turned on
    assert not load_settings({"pcap": False}, {"pcap": "true"}, {"COLO_PCAP": "1"}).pcap
    assert load_settings({"pcap": None}, NO_INI, {"COLO_PCAP": "1"}).pcap


def test_names_of_colo_knobs_are_not_doubled():
    knobs = {knob.name: knob for knob in KNOBS}
    assert (knobs["colo_profile"].env, knobs["colo_profile"].ini) == ("COLO_PROFILE",
                                                                      "colo_profile")
    assert knobs["colo_cycles"].option == "--colo-cycles"
    assert knobs["pcap"].negation == "--no-pcap"
    assert load_settings(NO_CLI, NO_INI, {"COLO_CYCLES": "16"}).colo_cycles == 16


@pytest.mark.parametrize(("cli", "env", "expected"), [
    ({"accel": "hvf"}, {}, "--accel: 'hvf' is not one of auto, tcg, kvm"),
    ({}, {"COLO_GUEST_MEMORY": "lots"}, "$COLO_GUEST_MEMORY: 'lots' is not an integer"),
    ({"checkpoint_delay": "0"}, {}, "--checkpoint-delay: 0 is outside 10..3600000"),
    ({"qemu_binary": "/nonexistent/qemu"}, {}, "--qemu-binary: no such file: /nonexistent/qemu"),
    ({"qemu_src": "/nonexistent"}, {}, "--qemu-src: no such directory: /nonexistent"),
    ({"colo_profile": "ssh"}, {}, "--colo-profile: 'ssh' is not one of local, inventory"),
    ({"colo_profile": "inventory"}, {}, "--colo-profile inventory needs --inventory PATH"),
    ({"inventory": "/nonexistent/lab.toml", "colo_profile": "inventory"}, {},
     "--inventory: no such file: /nonexistent/lab.toml"),
    ({"inventory": __file__}, {}, "only read by the inventory profile: add --colo-profile"),
    ({"inventory": __file__, "colo_profile": "inventory", "replication_rate": "100"}, {},
     "--replication-rate 100 shapes the embedded lab's link only"),
    ({"replication_rate": "fast"}, {}, "--replication-rate: 'fast' is not"),
    ({}, {"COLO_KEEP_ON_FAILURE": "maybe"}, "'maybe' is not a boolean"),
    ({"colo_trace": "colo*,rm -rf"}, {}, "--colo-trace: 'rm -rf' is not a trace event pattern"),
    ({}, {"VMFT_ROOT": "/nonexistent"}, "$VMFT_ROOT: no such directory: /nonexistent"),
    ({"vmft_cflags": "-fcommon O2"}, {}, "--vmft-cflags: 'O2' is not a flag"),
    ({"rdma_device": "mlx5_0;reboot"}, {}, "--rdma-device: 'mlx5_0;reboot' is not a device name"),
    ({"python2": "/nonexistent/python2"}, {}, "--python2: no such file"),
    ({"report_dir": __file__}, {}, "--report-dir: " + __file__ + " exists and is not a dir"),
    ({}, {"COLO_CACHE_DIR": __file__}, "$COLO_CACHE_DIR: " + __file__ + " exists and is not"),
    ({"qemu_patches": str(Path(__file__).parent)}, {},
     "holds no series file and no *.patch: for QEMU without patches give --qemu-binary"),
])
def test_bad_values_are_one_line_errors(cli, env, expected):
    with pytest.raises(SettingsError) as info:
        load_settings(cli, NO_INI, env)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_vmft_root_from_vmft_root_or_colo_variable(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    assert load_settings(NO_CLI, NO_INI, {"VMFT_ROOT": str(a)}).vmft_root == a
    both = {"VMFT_ROOT": str(a), "COLO_VMFT_ROOT": str(b)}
    assert load_settings(NO_CLI, NO_INI, both).vmft_root == b
    assert load_settings({"vmft_root": str(a)}, NO_INI, both).vmft_root == a
    settings = load_settings({"vmft_cflags": " -fcommon  -O1 "}, NO_INI, {})
    assert settings.vmft_cflags == ("-fcommon", "-O1")
    assert load_settings(NO_CLI, NO_INI, {}).vmft_cflags == ("-fcommon",)


def test_binary_and_source_are_exclusive(tmp_path: Path):
    binary = tmp_path / "qemu"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    with pytest.raises(SettingsError, match="choose a binary or a tree"):
        load_settings({"qemu_binary": str(binary), "qemu_src": str(tmp_path)}, NO_INI, {})


def test_every_knob_is_a_settings_field():
    fields = set(Settings.__dataclass_fields__)
    assert {knob.name for knob in KNOBS} == fields


def test_settings_are_frozen():
    settings = load_settings(NO_CLI, NO_INI, {})
    with pytest.raises(AttributeError):
        settings.accel = "kvm"  # type: ignore[misc]


def _pytest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", *args], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parent.parent, timeout=120)


def test_bad_option_is_a_usage_error_before_anything_starts():
    result = _pytest("suites/", "-m", "colo", "--accel", "hvf", "--collect-only", "-q")
    assert result.returncode == 4, result.stdout + result.stderr
    assert "--accel: 'hvf' is not one of auto, tcg, kvm" in result.stderr


def test_options_are_grouped_in_help():
    result = _pytest("--help")
    assert result.returncode == 0
    section = result.stdout.split("COLO harness", 1)[1]
    for knob in KNOBS:
        assert knob.option in section


def test_suites_collect_with_strict_markers():
    result = _pytest("suites/", "-m", "colo", "--collect-only", "-q")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "suites/test_checkpoint.py::test_colo_running_on_both_sides" in result.stdout
