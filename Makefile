# The README's commands.  Each target runs the idempotent set-up first.
.PHONY: setup demo test bench vm-test clean default-model

PYTEST_ARGS ?=

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/xdpnn demo

bench: setup
	.venv/bin/xdpnn bench

test: setup
	.venv/bin/python -m pytest -q -rs $(PYTEST_ARGS)

# The suite's kernel-dependent tests inside a VM with Debian's stock kernel
# (headless QEMU; the guest image is built once and cached in .vm/).
vm-test:
	bash vagrant/vm-test.sh

clean:
	rm -rf .venv .pytest_cache build *.egg-info .vm

# Retrains the demo's model on scikit-learn's digits; seed 0 gives the same weights.
default-model: setup
	.venv/bin/xdpnn train --data digits --hidden 128 --seed 0 --out models/digits-default.npz
