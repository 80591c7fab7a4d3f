"""colo_fixtures: a pytest harness that stands up QEMU COLO pairs and proves they hold."""
