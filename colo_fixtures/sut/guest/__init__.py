"""The tiny test guest: Debian's cloud kernel, a busybox initramfs and ``colo-agent``.

``image``: ``build_guest`` produces (once, cached by a hash of its inputs) a kernel and a
gzip'd newc initramfs holding static busybox, ``/init`` and the static agent compiled from
``src/``; ``kernel_cmdline`` builds the boot parameters ``/init`` understands. ``agent``:
``AgentClient`` speaks the agent's line protocol. ``records``: ``parse_disk_records`` reads
the agent's on-disk log from a raw image, so tests can compare what the guest acknowledged
with what reached each disk.
"""
