"""The vm-ft build machinery on a small C tree laid out like vm-ft.

The tree has what the real one has where the mechanism is concerned: ``rdma-paxos/target``
with a makefile that calls ``gcc`` by name and builds ``libinterpose.so`` from two objects
sharing a tentative definition (a multiple-definition link error under gcc >= 10 unless
``-fcommon`` is added), and ``qemu/`` with a ``configure`` that takes the seed's flags and
a ``--python``, and a makefile that links ``x86_64-softmmu/qemu-system-x86_64`` against
libinterpose and libnl like the seed's ``--extra-ldflags``. The tree is no part of vm-ft.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from colo_fixtures.sut.build import BuildError
from colo_fixtures.sut.cache import hash_tree
from colo_fixtures.sut.vmft.build import build_vmft, seed_configure_flags

RSM_H = """\
#ifndef RSM_H
#define RSM_H
int rsm_calls; /* a tentative definition in a header, as in rdma-paxos */
int rsm_submit(int n);
#endif
"""
A_C = '#include "rsm.h"\nint rsm_submit(int n) { rsm_calls++; return n * 2; }\n'
B_C = '#include "rsm.h"\nint rsm_count(void) { return rsm_calls; }\n'
PAXOS_MAKEFILE = """\
all: libinterpose.so

libinterpose.so: a.o b.o
\tgcc -shared -Wl,-soname,libinterpose.so a.o b.o -o libinterpose.so

%.o: ../src/%.c
\tgcc -fPIC -I../src/include/rsm-interface -c -o $@ $<
"""
MAIN_C = """\
#include <stdio.h>
#include <netlink/netlink.h>
#include "rsm.h"
int main(void) {
    struct nl_sock *sock = nl_socket_alloc(); /* libnl-3, as the seed links it */
    printf("vm-ft stand-in: %s submit=%d\\n", MESSAGE, rsm_submit(21));
    nl_socket_free(sock);
    return 0;
}
"""
CONFIGURE = """\
#!/bin/sh
# A configure with QEMU 2.5's interface for the options the seed uses.
set -e
for arg in "$@"; do
  case "$arg" in
    --python=*) python="${arg#--python=}" ;;
    --extra-ldflags=*) ldflags="${arg#--extra-ldflags=}" ;;
    --extra-cflags=*) cflags="${arg#--extra-cflags=}" ;;
    --target-list=x86_64-softmmu|--disable-werror|--disable-guest-agent) ;;
    *) echo "ERROR: unknown option $arg"; exit 1 ;;
  esac
done
version=$("$python" -c "import sys; sys.stdout.write('%d.%d' % sys.version_info[:2])")
case "$version" in 2.*) ;; *) echo "ERROR: Python 2 required, $python is $version"; exit 1 ;; esac
printf 'CFLAGS=%s\\nLDFLAGS=%s\\n' "$cflags" "$ldflags" > config-host.mak
echo "configure: python $version"
"""
QEMU_MAKEFILE = """\
include config-host.mak
x86_64-softmmu/qemu-system-x86_64: main.c
\tmkdir -p x86_64-softmmu
\tgcc $(CFLAGS) -DMESSAGE='"$(shell cat message)"' -o $@ main.c $(LDFLAGS)
"""
# Stands in for a Python 2 (Debian 12 ships none): answers the version probe only.
PYTHON2 = "#!/bin/sh\nprintf 2.7\n"


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "vm-ft"
    write(root / "rdma-paxos/src/include/rsm-interface/rsm.h", RSM_H)
    write(root / "rdma-paxos/src/a.c", A_C)
    write(root / "rdma-paxos/src/b.c", B_C)
    write(root / "rdma-paxos/target/makefile", PAXOS_MAKEFILE)
    write(root / "qemu/main.c", MAIN_C)
    write(root / "qemu/message", "unpatched\n")
    write(root / "qemu/configure", CONFIGURE, 0o755)
    write(root / "qemu/Makefile", QEMU_MAKEFILE)
    return root


@pytest.fixture
def python2(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "python2"
    write(path, PYTHON2, 0o755)
    return path


def run_built(build) -> str:
    env = {**os.environ, "LD_LIBRARY_PATH": str(build.library_dir)}
    return subprocess.run([str(build.qemu_binary)], env=env, capture_output=True, text=True,
                          check=True, cwd=build.tree / "qemu").stdout


def test_builds_rdma_paxos_then_qemu_linked_with_libinterpose(tree, python2, tmp_path):
    before = hash_tree(tree)
    build = build_vmft(tree, tmp_path / "cache", python2=python2)
    assert run_built(build) == "vm-ft stand-in: unpatched submit=42\n"
    assert (build.library_dir / "libinterpose.so").is_file()
    log = build.log.read_text()
    assert "rdma-paxos" in log and "-fcommon" in log and f"--python={python2}" in log
    assert hash_tree(tree) == before, "the user's tree was modified"
    # Cached: the same inputs give the same entry without building again.
    stamp = build.log.stat().st_mtime_ns
    again = build_vmft(tree, tmp_path / "cache", python2=python2)
    assert again == build and build.log.stat().st_mtime_ns == stamp


def test_without_fcommon_the_first_linker_error_is_reported(tree, python2, tmp_path):
    with pytest.raises(BuildError) as caught:
        build_vmft(tree, tmp_path / "cache", cflags=(), python2=python2)
    message = str(caught.value)
    assert message.startswith("rdma-paxos make failed (exit 2): ")
    assert "multiple definition of `rsm_calls'" in message
    assert caught.value.log is not None and caught.value.log.is_file()
    assert "\n" not in message


def test_patch_dir_is_applied_to_a_copy(tree, python2, tmp_path):
    patches = tmp_path / "patches"
    write(patches / "0001-message.patch", textwrap.dedent("""\
        --- a/qemu/message
        +++ b/qemu/message
        @@ -1 +1 @@
        -unpatched
        +patched by the lab
        """))
    before = hash_tree(tree)
    build = build_vmft(tree, tmp_path / "cache", patch_dir=patches, python2=python2)
    assert run_built(build) == "vm-ft stand-in: patched by the lab submit=42\n"
    assert build.patches == ("0001-message.patch",)
    assert (tree / "qemu/message").read_text() == "unpatched\n"
    assert hash_tree(tree) == before
    plain = build_vmft(tree, tmp_path / "cache", python2=python2)
    assert plain.key != build.key


def test_patch_that_does_not_apply_names_the_patch(tree, python2, tmp_path):
    patches = tmp_path / "patches"
    write(patches / "0001-stale.patch", "--- a/qemu/message\n+++ b/qemu/message\n"
                                         "@@ -1 +1 @@\n-something else\n+x\n")
    with pytest.raises(BuildError, match=r"^0001-stale.patch does not apply"):
        build_vmft(tree, tmp_path / "cache", patch_dir=patches, python2=python2)


def test_python3_given_as_python2_is_refused_before_building(tree, tmp_path):
    with pytest.raises(BuildError, match=r"is Python 3\.\d+, not 2\.x: QEMU 2\.5's configure"):
        build_vmft(tree, tmp_path / "cache", python2=Path("/usr/bin/python3"))
    assert not (tmp_path / "cache").exists()


def test_not_a_vmft_tree_is_refused(tmp_path, python2):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BuildError, match=r"is not a vm-ft tree: missing qemu/configure, "
                                         r"rdma-paxos/target \(point --vmft-root"):
        build_vmft(tmp_path / "empty", tmp_path / "cache", python2=python2)


def test_seed_configure_flags():
    flags = seed_configure_flags(Path("/v"), ("-fcommon",))
    assert flags == [
        "--disable-werror", "--target-list=x86_64-softmmu",
        "--extra-ldflags=-Wl,--no-as-needed -lnl-3 -lnl-cli-3 -lnl-route-3 -lnl-3 -lnl-cli-3 "
        "-lnl-route-3 -L/v/rdma-paxos/target -linterpose",
        "--extra-cflags=-I/v/rdma-paxos/src/include/rsm-interface -I/usr/include/libnl3 "
        "-fcommon"]
