#!/bin/bash
# xdpnn set-up: installs what is missing and nothing else; running it twice
# changes nothing.  Needs root (apt, kernel headers link, /usr/local/bin).
#   Debian packages: BCC for Debian's python3, libbpf, pyroute2 (netlink and
#     namespaces), iproute2 (the tests check state with it), venv, vagrant
#     (the suite validates vagrant/Vagrantfile)
#   kernel headers for BCC: linux-headers-$(uname -r), or a documented fallback
#   .venv: a venv over Debian's python3 (it sees bcc), with xdpnn installed
# With everything present it needs no network (the offline Vagrant box
# relies on that).  `setup.sh --packages` prints the Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
say() { echo "setup: $*"; }
PKGS="python3-bpfcc libbpf1 python3-pyroute2 python3-prometheus-client iproute2 python3-venv python3-pip python3-setuptools python3-wheel vagrant"
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
	apt-get install -y -qq --no-install-recommends $missing >/dev/null
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
	.venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation -e ".[test]"
	touch .venv/.installed
fi
.venv/bin/python -c "import bcc, numpy, scapy" || {
	echo "setup: the venv cannot import bcc, numpy and scapy" >&2
	exit 8
}

# --- the command on root's PATH ------------------------------------------------
LINK=/usr/local/bin/xdpnn
if [ ! -e "$LINK" ] && [ ! -L "$LINK" ]; then
	ln -s "$ROOT/.venv/bin/xdpnn" "$LINK"
	say "linked $LINK -> $ROOT/.venv/bin/xdpnn"
elif [ "$(readlink "$LINK")" != "$ROOT/.venv/bin/xdpnn" ]; then
	say "$LINK belongs to another checkout or program; use $ROOT/.venv/bin/xdpnn"
fi
