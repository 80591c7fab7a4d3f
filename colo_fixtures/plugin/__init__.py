"""The pytest plugin (entry point ``colo_fixtures.plugin``), four modules, bottom to top.

``options``: the options, markers, settings and inventory, the SIGTERM policy.
``session``: the session fixtures (settings, QEMU and guest builds, lab hosts, accelerator,
vm-ft build, preflight). ``colo_run``: the per-test COLO lab (``artifacts``, ``start_colo``,
``colo``, ``vmft_group``) and its teardown. ``hooks``: the verdict hooks (known issues,
nothing proved) and the report's files at the end of the run.
"""

pytest_plugins = [
    "colo_fixtures.plugin.options",
    "colo_fixtures.plugin.session",
    "colo_fixtures.plugin.colo_run",
    "colo_fixtures.plugin.hooks",
]
