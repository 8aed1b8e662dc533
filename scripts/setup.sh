#!/bin/bash
# xdpnn set-up: installs what is missing and nothing else; running it twice
# changes nothing.  Needs root (apt, kernel headers link, /usr/local/bin).
#   Debian packages: BCC for Debian's python3, libbpf, pyroute2 (netlink and
#     namespaces), iproute2 (the tests check state with it), venv, vagrant
#     (the suite validates vagrant/Vagrantfile)
#   kernel headers for BCC: linux-headers-$(uname -r), or a documented fallback
#   .venv: a venv over Debian's python3 (it sees bcc), with this checkout
#     installed editable: what `make test` and `make demo` run
#   /opt/xdpnn: a root-owned venv with a copy of xdpnn, behind
#     /usr/local/bin/xdpnn (refreshed when the sources change)
# With everything present it needs no network (the offline Vagrant box
# relies on that).  `setup.sh --packages` prints the Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
say() { echo "setup: $*"; }
# gcc and libc6-dev: the user-space baselines and servers (bench, serve-userspace)
# are C compiled at run time for each model.
PKGS="python3-bpfcc libbpf1 python3-pyroute2 python3-prometheus-client iproute2 python3-venv python3-pip python3-setuptools python3-wheel vagrant gcc libc6-dev"
# `xdpnn capture`: real servers and clients, run only inside its namespaces
# (chrony replaces systemd-timesyncd, which Debian makes it conflict with).
PKGS="$PKGS dnsmasq-base dnsutils chrony nginx-light openssh-server openssh-client curl wget openssl ngtcp2-server ngtcp2-client iperf3 iputils-ping ethtool"
if [ "${1:-}" = --packages ]; then
	echo "$PKGS"
	exit 0
fi

if [ "$(id -u)" != 0 ]; then
	echo "setup: needs root (apt, kernel headers): run it with sudo" >&2
	exit 9
fi

# --- Debian packages --------------------------------------------------------
KVER=$(uname -r)
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
HEADERS_DIR=/lib/modules/$KVER/build
if [ ! -e "$HEADERS_DIR/include" ]; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	if apt-cache show "linux-headers-$KVER" >/dev/null 2>&1; then
		missing="$missing linux-headers-$KVER"
	else
		say "no linux-headers-$KVER package for this kernel: using Debian's linux-headers-amd64 (UAPI headers are enough for XDP code)"
		missing="$missing linux-headers-amd64"
		HEADERS_FALLBACK=1
	fi
fi
if [ -n "$missing" ]; then
	say "installing Debian packages:$missing"
	export DEBIAN_FRONTEND=noninteractive
	[ -n "${HEADERS_FALLBACK:-}" ] || apt-get update -qq
	# Debian starts a server's service on install (nginx, sshd, chrony...):
	# policy-rc.d refuses, so nothing listens outside xdpnn's namespaces.
	# One left by someone else is kept as it is.
	policy=/usr/sbin/policy-rc.d
	if [ ! -e $policy ]; then
		printf '#!/bin/sh\n# xdpnn setup: no service starts during its apt-get install\nexit 101\n' > $policy
		chmod 755 $policy
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	apt-get install -y -qq --no-install-recommends $missing >/dev/null
	if [ "$(trap -p EXIT)" ]; then rm -f $policy; trap - EXIT; fi
fi
if [ -n "${HEADERS_FALLBACK:-}" ]; then
	# Debian splits its headers into an arch folder and a common folder;
	# BCC finds them through build/ and source/ (BCC_KERNEL_SOURCE alone
	# cannot express the split).
	arch=$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -1)
	common=${arch%-amd64}-common
	mkdir -p "/lib/modules/$KVER"
	ln -sfn "$arch" "/lib/modules/$KVER/build"
	ln -sfn "$common" "/lib/modules/$KVER/source"
	say "linked /lib/modules/$KVER/{build,source} to $(basename "$arch") and $(basename "$common")"
fi

# --- the venv ---------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
	say "creating .venv (Debian's python3, with its site packages for bcc)"
	/usr/bin/python3 -m venv --system-site-packages .venv
fi
if [ ! -e .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
	say "installing xdpnn and its Python dependencies into .venv"
	# Debian's setuptools builds the package (no build environment to fetch);
	# dependencies already installed, from pip or Debian, are not fetched.
	# The onnx extra (onnx, qonnx, onnxruntime: ~320 MB) serves `xdpnn import`,
	# `xdpnn export` and tests/test_import.py.
	.venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation -e ".[test,onnx]"
	touch .venv/.installed
fi
.venv/bin/python -c "import bcc, numpy, pyroute2, scapy" || {
	echo "setup: the venv cannot import bcc, numpy, pyroute2 and scapy" >&2
	exit 8
}

# --- the command on root's PATH ------------------------------------------------
# `sudo xdpnn` runs as root, so it must run code only root can change: a copy
# of this checkout installed into a root-owned venv, never a link into the
# checkout, whose files whoever owns or can write them could edit.
INSTALL=/opt/xdpnn
LINK=/usr/local/bin/xdpnn
umask 022
source_hash=$(find bpf loader trainer traffic models pyproject.toml -type f \
	! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
if [ "$(cat "$INSTALL/source-hash" 2>/dev/null)" != "$source_hash" ]; then
	say "installing a copy of xdpnn into $INSTALL (root-owned) for $LINK"
	[ -x "$INSTALL/venv/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$INSTALL/venv"
	wheels=$(mktemp -d)
	.venv/bin/python -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation \
		-w "$wheels" . >/dev/null
	# Dependencies first (a no-op once present), then this checkout's code.
	"$INSTALL/venv/bin/python" -m pip install -q --disable-pip-version-check \
		"$(ls "$wheels"/xdpnn-*.whl)[onnx]"
	"$INSTALL/venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
		--force-reinstall "$wheels"/xdpnn-*.whl
	rm -rf "$wheels"
	echo "$source_hash" > "$INSTALL/source-hash"
fi
target=$(readlink "$LINK" 2>/dev/null || true)
if [ "$target" = "$INSTALL/venv/bin/xdpnn" ]; then
	:
elif [ ! -e "$LINK" ] && [ ! -L "$LINK" ] || [[ "$target" == */.venv/bin/xdpnn ]]; then
	# (a link into a checkout's .venv is what earlier set-ups made)
	ln -sfn "$INSTALL/venv/bin/xdpnn" "$LINK"
	say "linked $LINK -> $INSTALL/venv/bin/xdpnn"
else
	say "$LINK belongs to another program; use $INSTALL/venv/bin/xdpnn"
fi
