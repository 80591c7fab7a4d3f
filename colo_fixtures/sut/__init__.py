"""The system under test: QEMU built and cached, its processes and QMP, the COLO pair, disks,
guest, vm-ft; readers of what QEMU writes (trace, consoles).
"""
