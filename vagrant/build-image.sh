#!/bin/bash
# Builds the guest for VM test runs from Debian's archive alone: a bookworm
# root with the stock kernel and its matching headers, BCC and the test
# tools, as a raw ext4 disk plus the kernel and initrd to boot it with.
#   vagrant/build-image.sh OUTDIR        (needs root, ~3-4 min, ~1.5 GB)
# The image is keyed by its package list and this script: an existing image
# with the same key is reused.
set -euo pipefail
OUT=${1:?usage: build-image.sh OUTDIR}
HERE=$(cd "$(dirname "$0")" && pwd)
PACKAGES="linux-image-amd64,linux-headers-amd64,python3-bpfcc,libbpf1,python3-pyroute2,python3-pytest,python3-numpy,python3-scapy,iproute2,kmod,procps,udev"
KEY=$(printf '%s\n' "$PACKAGES" | cat - "$HERE/build-image.sh" "$HERE/guest-init" | sha256sum | cut -c1-16)

mkdir -p "$OUT"
if [ -e "$OUT/disk-$KEY.raw" ] && [ -e "$OUT/vmlinuz-$KEY" ] && [ -e "$OUT/initrd-$KEY" ]; then
	echo "vm image: reusing $OUT/disk-$KEY.raw"
	exit 0
fi
for tool in mmdebstrap mkfs.ext4; do
	command -v $tool >/dev/null || { echo "vm image: $tool missing (apt install mmdebstrap e2fsprogs)" >&2; exit 8; }
done
ROOTFS=$(mktemp -d "$OUT/rootfs.XXXXXX")
# --one-file-system: never follow a mount a killed mmdebstrap left behind
trap 'rm -rf --one-file-system "$ROOTFS" "$OUT"/disk-*.raw.part' EXIT
echo "vm image: debootstrapping bookworm into $ROOTFS (a few minutes)"
mmdebstrap --quiet --variant=minbase --include="$PACKAGES" \
	--customize-hook='echo xdpnn-vm > "$1/etc/hostname"' \
	bookworm "$ROOTFS"
install -m 0755 "$HERE/guest-init" "$ROOTFS/sbin/xdpnn-init"
mkdir -p "$ROOTFS/project" "$ROOTFS/results"
# One image in the cache: drop those of other keys.
rm -f "$OUT"/disk-*.raw "$OUT"/vmlinuz-* "$OUT"/initrd-*
cp "$ROOTFS"/boot/vmlinuz-* "$OUT/vmlinuz-$KEY"
cp "$ROOTFS"/boot/initrd.img-* "$OUT/initrd-$KEY"
# Built under a temporary name: an interrupted build is never reused.
mkfs.ext4 -q -F -L xdpnn-root -d "$ROOTFS" "$OUT/disk-$KEY.raw.part" 3G >/dev/null
mv "$OUT/disk-$KEY.raw.part" "$OUT/disk-$KEY.raw"
echo "vm image: $OUT/disk-$KEY.raw ($(du -sh "$OUT/disk-$KEY.raw" | cut -f1) used)"
