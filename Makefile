# The README's commands.  Each target runs the idempotent set-up first.
.PHONY: setup demo test clean

PYTEST_ARGS ?=

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/xdpnn demo

test: setup
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf .venv .pytest_cache build *.egg-info
