# The README's commands.  Each target runs the idempotent set-up first.
.PHONY: setup demo test bench vm-test clean default-model traffic-model

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

# Captures real servers and clients (xdpnn capture, namespaces of its own),
# trains a flow-mode model (models/traffic-default.npz) and a headers-mode
# one on it, and measures both on a capture of another seed they never saw.
TRAFFIC ?= results/traffic
traffic-model: setup
	.venv/bin/xdpnn capture --out $(TRAFFIC)/train --seed 1 --flows 40 --seconds 120
	.venv/bin/xdpnn capture --out $(TRAFFIC)/unseen --seed 2 --flows 20 --seconds 60
	.venv/bin/xdpnn train --data pcaps:$(TRAFFIC)/train --input flow --hidden 128 --seed 0 \
		--out models/traffic-default.npz
	.venv/bin/xdpnn train --data pcaps:$(TRAFFIC)/train --input headers --hidden 64 \
		--epochs 30 --seed 0 --out models/traffic-headers.npz
	.venv/bin/xdpnn evaluate --model models/traffic-default.npz --pcaps $(TRAFFIC)/unseen
	.venv/bin/xdpnn evaluate --model models/traffic-headers.npz --pcaps $(TRAFFIC)/unseen
