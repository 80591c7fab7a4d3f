"""Accelerator choice: a real, time-boxed KVM boot probe, falling back to TCG with a reason.

On some hosts /dev/kvm exists but a guest never runs (it spins and prints nothing), so
the device node alone proves nothing. The probe boots the guest kernel under KVM and
waits for its first console line. The verdict is cached per host boot.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from colo_fixtures.sut.build import QemuBuild


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def probe_kvm(qemu: QemuBuild, kernel: Path, timeout: float = 8.0) -> tuple[bool, str]:
    """Boot ``kernel`` under KVM; (True, reason) if it printed within ``timeout`` seconds."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    with tempfile.TemporaryDirectory(prefix="colo-kvm-probe-") as tmp:
        console = Path(tmp) / "console.log"
        argv = [str(qemu.binary), *qemu.firmware_args(), "-accel", "kvm", "-nodefaults",
                "-display", "none", "-m", "128", "-kernel", str(kernel),
                "-append", "console=ttyS0 panic=-1", "-no-reboot", "-serial", f"file:{console}"]
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)
        try:
            while time.monotonic() - started < timeout:
                if console.exists() and b"Linux version" in console.read_bytes():
                    return True, f"a KVM guest booted in {time.monotonic() - started:.1f}s"
                if proc.poll() is not None:
                    err = (proc.stderr.read().decode(errors="replace").strip().splitlines()
                           if proc.stderr else [])
                    last = err[-1] if err else proc.returncode
                    return False, f"QEMU with -accel kvm exited: {last}"
                time.sleep(0.1)
            return False, (f"a KVM guest printed nothing within {timeout:g}s "
                           "(/dev/kvm exists but does not run guests)")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def choose_accel(requested: str, qemu: QemuBuild, kernel: Path,
                 cache_dir: Path) -> tuple[str, str]:
    """(accel, reason) for ``requested`` in auto|tcg|kvm; auto probes KVM once per host boot."""
    if requested == "tcg":
        return "tcg", "requested with --accel tcg"
    if requested == "kvm":
        return "kvm", "requested with --accel kvm"
    verdict_file = cache_dir / "kvm-probe.json"
    try:
        cached = json.loads(verdict_file.read_text())
        if cached.get("boot_id") == _boot_id():
            ok, reason = cached["ok"], cached["reason"]
            return ("kvm" if ok else "tcg"), f"{reason} (probe cached for this boot)"
    except (OSError, ValueError, KeyError):
        pass
    ok, reason = probe_kvm(qemu, kernel)
    cache_dir.mkdir(parents=True, exist_ok=True)
    verdict_file.write_text(json.dumps({"boot_id": _boot_id(), "ok": ok, "reason": reason}))
    return ("kvm" if ok else "tcg"), reason
