"""The pytest plugin (entry point ``colo_fixtures.plugin``), five modules, bottom to top.

- ``options``: the options, markers, settings and inventory, the SIGTERM policy.
- ``session``: the session fixtures (settings, QEMU and guest builds, lab hosts,
  accelerator, preflight).
- ``colo_run``: the per-test COLO run (``artifacts``, ``start_colo``, ``colo``) and its
  teardown, which keeps every log and runs the log analyzer.
- ``vmft``: vm-ft's build and its group of three nodes.
- ``hooks``: the verdict hooks (known issues, a run that proved nothing) and the report's
  files at the end of the run.
"""

pytest_plugins = [
    "colo_fixtures.plugin.options",
    "colo_fixtures.plugin.session",
    "colo_fixtures.plugin.colo_run",
    "colo_fixtures.plugin.vmft",
    "colo_fixtures.plugin.hooks",
]
