"""vm-ft launch mode: nodes.local.cfg (read back with the real libconfig), argv, env, steps."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from colo_fixtures.lab.topology import local_topology
from colo_fixtures.sut.vmft.node import (
    MIRROR_SOCK,
    REDIRECTOR_SOCK,
    VmftVm,
    colo_start_steps,
    vmft_env,
    vmft_node,
)
from colo_fixtures.sut.vmft.paxos import SYNC_PERIOD, DareTimers, NodesConfig

# Reads every key the way rdma-paxos does: typed lookups, the DARE timers in their group.
READER_C = r"""
#include <libconfig.h>
#include <stdio.h>
int main(int argc, char **argv) {
    config_t cfg; config_init(&cfg);
    if (!config_read_file(&cfg, argv[1])) {
        printf("ERROR line %d: %s\n", config_error_line(&cfg), config_error_text(&cfg));
        return 1;
    }
    const char *ints[] = {"req_log", "sys_log", "stat_log", "control_tsc", "colo_debug",
                          "colo_gettime", "recheck_num", "e1000_speedup", "batching",
                          "sync_type"};
    const char *name; int value; double period; long long big;
    if (!config_lookup_string(&cfg, "db_name", &name)) return 2;
    printf("db_name=%s\n", name);
    for (unsigned i = 0; i < sizeof ints / sizeof *ints; i++) {
        if (!config_lookup_int(&cfg, ints[i], &value))
            return printf("missing %s\n", ints[i]), 3;
        printf("%s=%d\n", ints[i], value);
    }
    config_setting_t *dare = config_lookup(&cfg, "dare_global_config");
    if (!dare) return 4;
    const char *floats[] = {"hb_period", "rc_info_period", "retransmit_period",
                            "log_pruning_period"};
    for (unsigned i = 0; i < 4; i++) {
        if (!config_setting_lookup_float(dare, floats[i], &period))
            return printf("missing %s\n", floats[i]), 5;
        printf("%s=%g\n", floats[i], period);
    }
    const char *longs[] = {"elec_timeout_low", "elec_timeout_high"};
    for (unsigned i = 0; i < 2; i++) {
        if (!config_setting_lookup_int64(dare, longs[i], &big))
            return printf("missing %s\n", longs[i]), 6;
        printf("%s=%lld\n", longs[i], big);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def libconfig_reader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not shutil.which("gcc") or not Path("/usr/include/libconfig.h").exists():
        pytest.skip("gcc or libconfig-dev missing: run tools/bootstrap")
    folder = tmp_path_factory.mktemp("reader")
    (folder / "reader.c").write_text(READER_C)
    subprocess.run(["gcc", "-o", str(folder / "reader"), str(folder / "reader.c"), "-lconfig"],
                   check=True, capture_output=True)
    return folder / "reader"


def read_back(reader: Path, text: str, tmp_path: Path) -> dict[str, str]:
    cfg = tmp_path / "nodes.local.cfg"
    cfg.write_text(text)
    result = subprocess.run([str(reader), str(cfg)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    return dict(line.split("=", 1) for line in result.stdout.splitlines())


def test_default_config_is_the_seeds_and_libconfig_reads_every_key(libconfig_reader, tmp_path):
    values = read_back(libconfig_reader, NodesConfig().render(), tmp_path)
    assert values == {
        "db_name": "node_test", "req_log": "1", "sys_log": "1", "stat_log": "1",
        "control_tsc": "1", "colo_debug": "1", "colo_gettime": "0", "recheck_num": "10",
        "e1000_speedup": "1", "batching": "1", "sync_type": "1",
        "hb_period": "0.1", "rc_info_period": "0.05", "retransmit_period": "0.04",
        "log_pruning_period": "0.05", "elec_timeout_low": "1000000",
        "elec_timeout_high": "3000000"}


def test_settings_reach_the_file_with_strict_types(libconfig_reader, tmp_path):
    config = NodesConfig(sync_type=SYNC_PERIOD, colo_debug=0,
                         dare=DareTimers(hb_period=1, elec_timeout_low=10000,  # type: ignore[arg-type]
                                         elec_timeout_high=30000, rc_info_period=0.01,
                                         retransmit_period=0.02, log_pruning_period=0.03))
    values = read_back(libconfig_reader, config.render(), tmp_path)
    assert values["sync_type"] == "2" and values["colo_debug"] == "0"
    assert values["hb_period"] == "1" and values["elec_timeout_low"] == "10000"


def test_the_reader_rejects_a_broken_file(libconfig_reader, tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("db_name = node_test\n")  # unquoted, no semicolon
    result = subprocess.run([str(libconfig_reader), str(cfg)], capture_output=True, text=True)
    assert result.returncode == 1 and result.stdout.startswith("ERROR line")


@pytest.mark.parametrize(("config", "message"), [
    (NodesConfig(sync_type=3), "sync_type = 3: 1 (idle check) or 2"),
    (NodesConfig(colo_debug=2), "colo_debug = 2: 0 or 1"),
    (NodesConfig(db_name='a"b'), "db_name 'a\"b'"),
    (NodesConfig(recheck_num=-1), "recheck_num = -1"),
    (NodesConfig(dare=DareTimers(elec_timeout_low=5, elec_timeout_high=5)),
     "elec_timeout_low/high = 5/5: 0 < low < high"),
    (NodesConfig(dare=DareTimers(hb_period=0)), "hb_period = 0: seconds > 0"),
])
def test_bad_config_values_are_refused(config, message):
    with pytest.raises(ValueError, match=r"^(nodes\.local\.cfg|dare_global_config) ") as info:
        config.render()
    assert message in str(info.value) and "\n" not in str(info.value)


VM = VmftVm(image=Path("/img/base.raw"), active=Path("/scratch/active.qcow2"),
            hidden=Path("/scratch/hidden.qcow2"), accel="tcg")
BINARY, FIRMWARE, LIBS = Path("/v/qemu/x86_64-softmmu/qemu-system-x86_64"), \
    Path("/v/qemu/pc-bios"), Path("/v/rdma-paxos/target")


def node(role: str, tmp_path: Path, **kw):
    topo = local_topology("master", "abcdef0123", sentinel=True)
    return vmft_node(role, tmp_path, BINARY, FIRMWARE, LIBS, VM, topo.host(role), topo.ports,
                     **kw), topo


def test_primary_node(tmp_path, monkeypatch):
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    primary, _ = node("primary", tmp_path)
    argv = primary.argv
    assert argv[:5] == [str(BINARY), "-L", str(FIRMWARE), "-name", "primary"]
    assert "-S" in argv and "-qmp" not in argv  # QMP is added on a socket by QemuProcess
    assert argv[argv.index("-device", argv.index("-netdev")) + 1] == \
        "e1000,id=e0,netdev=hn0,mac=52:a4:00:12:78:66"
    assert "tap,id=hn0,ifname=tap0,script=no,downscript=no,vhost=off" in argv
    assert ("if=virtio,id=colo-disk0,driver=quorum,read-pattern=fifo,vote-threshold=1,"
            "children.0.file.filename=/img/base.raw,children.0.driver=raw") in argv
    assert primary.cwd == tmp_path / "primary" / "qemu" and primary.cwd.is_dir()
    # QEMU reads ../rdma-paxos/target/nodes.local.cfg from its working directory.
    assert (primary.cwd / "../rdma-paxos/target/nodes.local.cfg").resolve() == primary.config
    assert primary.config.read_text() == NodesConfig().render()
    assert primary.env == {"LD_LIBRARY_PATH": str(LIBS), "group_size": "3",
                           "dare_log_file": str(tmp_path / "primary" / "dare.log"),
                           "mgid": "ff0e::ffff:e101:101"}


def test_secondary_node_uses_the_fixed_shm_sockets(tmp_path, monkeypatch):
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/lib")
    secondary, _ = node("secondary", tmp_path)
    argv = secondary.argv
    assert argv[4] == "secondary" and "-S" not in argv
    assert f"socket,id=red0,path={MIRROR_SOCK}" in argv
    assert f"socket,id=red1,path={REDIRECTOR_SOCK}" in argv
    assert "filter-redirector,id=f1,netdev=hn0,queue=tx,indev=red0" in argv
    assert "filter-redirector,id=f2,netdev=hn0,queue=rx,outdev=red1" in argv
    assert argv[-2:] == ["-incoming", "tcp:10.22.1.3:8888"]
    assert "e1000,netdev=hn0,mac=52:a4:00:12:78:66" in argv
    assert any("driver=replication,mode=secondary" in a and "/scratch/active.qcow2" in a
               for a in argv)
    assert secondary.env["LD_LIBRARY_PATH"] == f"{LIBS}:/opt/lib"


def test_sentinel_node_and_group_env(tmp_path):
    sentinel, _ = node("sentinel", tmp_path, group_size=5, mgid="ff0e::1")
    assert sentinel.argv[4] == "sentinel" and "-netdev" not in sentinel.argv
    assert sentinel.env["group_size"] == "5" and sentinel.env["mgid"] == "ff0e::1"
    topo = local_topology("master", "abcdef0123", sentinel=True)
    with pytest.raises(ValueError, match="unknown vm-ft role 'witness'"):
        vmft_node("witness", tmp_path, BINARY, FIRMWARE, LIBS, VM, topo.host("sentinel"),
                  topo.ports)
    with pytest.raises(ValueError, match="group_size 2: vm-ft needs at least 3 nodes"):
        vmft_env("primary", LIBS, tmp_path / "d.log", group_size=2)


def test_colo_start_steps_follow_the_seed():
    topo = local_topology("master", "abcdef0123", sentinel=True)
    steps = colo_start_steps(topo.secondary, topo.ports, 20000)
    assert [(role, cmd) for role, cmd, _ in steps] == [
        ("secondary", "nbd-server-start"), ("secondary", "nbd-server-add"),
        ("primary", "human-monitor-command"), ("primary", "x-blockdev-change"),
        ("primary", "migrate-set-capabilities"), ("primary", "migrate-set-parameters"),
        ("primary", "migrate")]
    assert steps[0][2] == {"addr": {"type": "inet", "data": {"host": "10.22.1.3",
                                                            "port": "8889"}}}
    assert steps[2][2]["command-line"] == (
        "drive_add -n buddy driver=replication,mode=primary,file.driver=nbd,"
        "file.host=10.22.1.3,file.port=8889,file.export=colo-disk0,node-name=node0")
    assert steps[5][2] == {"x-checkpoint-delay": 20000}
    assert steps[6][2] == {"uri": "tcp:10.22.1.3:8888"}


def test_direct_kernel_boot_of_the_harness_guest(tmp_path):
    topo = local_topology("master", "abcdef0123", sentinel=True)
    vm = VmftVm(image=Path("/img/p.raw"), kernel=Path("/g/vmlinuz"), initrd=Path("/g/initrd"),
                append="console=ttyS0", accel="tcg")
    primary = vmft_node("primary", tmp_path, BINARY, FIRMWARE, LIBS, vm, topo.primary,
                        topo.ports)
    argv = primary.argv
    assert argv[argv.index("-kernel"):argv.index("-kernel") + 6] == [
        "-kernel", "/g/vmlinuz", "-append", "console=ttyS0", "-initrd", "/g/initrd"]
    assert "-boot" not in argv and argv[5:7] == ["-machine", "accel=tcg"]
    sentinel = vmft_node("sentinel", tmp_path, BINARY, FIRMWARE, LIBS, vm, topo.host("sentinel"),
                         topo.ports)
    assert "-kernel" not in sentinel.argv and "-boot" in sentinel.argv
