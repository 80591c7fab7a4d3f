# The two commands a lab engineer needs: `make colo` and `make test`.
PYTEST := .venv/bin/pytest

.PHONY: colo test setup lint clean-leftovers

colo: setup  ## set up, build what is not cached, run the COLO suites on the embedded lab
	$(PYTEST) suites/ -m colo $(PYTEST_ARGS)

test: setup  ## set up, then the harness's own tests
	$(PYTEST) tests/ $(PYTEST_ARGS)

setup:
	tools/bootstrap

lint: setup
	.venv/bin/ruff check colo_fixtures suites tests tools conftest.py
