#!/bin/sh
# Runs inside the headless test VM (started by vagrant/vm-test.sh): mounts
# what the tests need, runs pytest on the read-only project share, leaves
# the exit code in the results share and powers off.  The runner writes
# pytest's arguments to results/pytest-args.
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t bpf bpf /sys/fs/bpf
mount -t 9p -o trans=virtio,version=9p2000.L results /results
hostname xdpnn-vm
ip link set lo up
args=$(cat /results/pytest-args)
echo "xdpnn-vm: kernel $(uname -r), pytest $args"
eval "set -- $args"  # the runner shell-quoted them
# The project's folders as the xdpnn package, mapped as pyproject.toml's
# package-dir lines map them ("xdpnn.loader" = "loader"); the share is
# read-only, so nothing is installed from it.
mkdir -p /tmp/pkg/xdpnn
sed -n 's/^"xdpnn\.\([a-z_]*\)" = "\([a-z_]*\)"$/\1 \2/p' /project/pyproject.toml |
while read -r name dir; do ln -s "/project/$dir" "/tmp/pkg/xdpnn/$name"; done
export PYTHONPATH=/tmp/pkg
cd /project
# Under emulation, 1000 inputs per golden shape instead of up to 10000.
export XDPNN_GOLDEN_SAMPLES_MAX=1000
PYTHONDONTWRITEBYTECODE=1 python3 -m pytest -p no:cacheprovider -rs "$@"
echo $? > /results/exit-code
sync
echo o > /proc/sysrq-trigger
# Wait for the power-off with builtins only: running a program from the disk
# now would read a device that is going away.
while :; do :; done
