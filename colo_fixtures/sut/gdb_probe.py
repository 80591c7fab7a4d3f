"""gdb on a running QEMU: the net state QMP cannot show (see ``gdb/net_state.gdbpy``).

For a failed test whose VM network went dead: each NIC's ``receive_disabled`` and queued
packets, the tap's read poll, virtio-net's ``tx_waiting`` and TX bottom half, every
filter's own queue. gdb stops the process for the few seconds it reads; it needs QEMU's
debug info (the harness's builds have it).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "gdb" / "net_state.gdbpy"
MARKER = "=== net state ===\n"  # what the script prints first


def net_state(pid: int, timeout: float = 60) -> str:
    """The net state of QEMU ``pid`` on this machine, or one line saying why there is none."""
    if shutil.which("gdb") is None:
        return "no gdb on this machine (apt-get install gdb)"
    try:
        done = subprocess.run(["gdb", "-p", str(pid), "-batch", "-nx", "-ex",
                               f"python exec(open({str(SCRIPT)!r}).read())"],
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return f"gdb on pid {pid} did not finish within {timeout:g}s"
    text = done.stdout.partition(MARKER)[2]
    lines = [line for line in text.splitlines() if line and not line.startswith("[Inferior ")]
    if not lines:
        return f"gdb on pid {pid} printed nothing (rc {done.returncode}): " + (
            done.stderr.strip().splitlines() or ["no error"])[-1]
    return "\n".join(lines)
