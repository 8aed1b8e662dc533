#!/bin/bash
# Builds a Vagrant box (libvirt provider) from Debian's archive alone, for
# machines that cannot reach a box catalogue: bookworm with the stock kernel
# and its matching headers, systemd, sshd, the QEMU guest agent and the
# `vagrant` user with Vagrant's well-known insecure key (replaced at the
# first `vagrant up`).
#   sudo vagrant/build-box.sh OUTDIR          -> OUTDIR/xdpnn-bookworm.box
#   vagrant box add --name xdpnn-bookworm OUTDIR/xdpnn-bookworm.box
#   cd vagrant && XDPNN_BOX=xdpnn-bookworm vagrant up --provider libvirt
# The box boots its kernel directly (no boot loader in the image).
set -euo pipefail
OUT=${1:?usage: build-box.sh OUTDIR}
HERE=$(cd "$(dirname "$0")" && pwd)
KEY=$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | head -1)
[ -n "$KEY" ] || { echo "build-box: Vagrant's insecure key not found: apt install vagrant" >&2; exit 8; }
for tool in mmdebstrap mkfs.ext4 qemu-img tar; do
	command -v $tool >/dev/null || { echo "build-box: $tool missing (apt install mmdebstrap e2fsprogs qemu-utils)" >&2; exit 8; }
done
# Everything `vagrant up` provisions is already in the box (setup.sh's
# packages, the Python test dependencies from Debian), so provisioning needs
# no network: the guest can run without one (see the Vagrantfile).
BASE="systemd-sysv linux-image-amd64 linux-headers-amd64 openssh-server sudo ifupdown isc-dhcp-client qemu-guest-agent rsync make kmod procps udev"
PYTHON="python3-numpy python3-scapy python3-pytest python3-sklearn"
PACKAGES=$(echo $BASE $(bash "$HERE/../scripts/setup.sh" --packages) $PYTHON | tr ' ' ,)

mkdir -p "$OUT"
WORK=$(mktemp -d "$OUT/box.XXXXXX")
# --one-file-system: never follow a mount a killed mmdebstrap left behind
trap 'rm -rf --one-file-system "$WORK"' EXIT
echo "build-box: debootstrapping bookworm (a few minutes)"
mmdebstrap --quiet --variant=minbase --include="$PACKAGES" \
	--customize-hook='chroot "$1" useradd -m -s /bin/bash vagrant' \
	--customize-hook="install -d -m 700 \"\$1/home/vagrant/.ssh\" && install -m 600 $KEY \"\$1/home/vagrant/.ssh/authorized_keys\"" \
	--customize-hook='chroot "$1" chown -R vagrant:vagrant /home/vagrant/.ssh' \
	--customize-hook='echo "vagrant ALL=(ALL) NOPASSWD: ALL" > "$1/etc/sudoers.d/vagrant"' \
	--customize-hook='printf "auto lo\niface lo inet loopback\nauto eth0\niface eth0 inet dhcp\n" > "$1/etc/network/interfaces"' \
	--customize-hook='echo "/dev/vda / ext4 defaults 0 1" > "$1/etc/fstab"; echo xdpnn > "$1/etc/hostname"' \
	--customize-hook='printf "127.0.0.1 localhost\n127.0.1.1 xdpnn\n" > "$1/etc/hosts"' \
	bookworm "$WORK/rootfs"
cp "$WORK"/rootfs/boot/vmlinuz-* "$WORK/vmlinuz"
cp "$WORK"/rootfs/boot/initrd.img-* "$WORK/initrd"
mkfs.ext4 -q -F -d "$WORK/rootfs" "$WORK/disk.raw" 8G
qemu-img convert -O qcow2 "$WORK/disk.raw" "$WORK/box.img"
echo '{"provider": "libvirt", "format": "qcow2", "virtual_size": 8}' > "$WORK/metadata.json"
cat > "$WORK/Vagrantfile" <<'BOX'
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.kernel = File.expand_path("vmlinuz", __dir__)
    lv.initrd = File.expand_path("initrd", __dir__)
    lv.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
  end
end
BOX
tar -C "$WORK" -czf "$OUT/xdpnn-bookworm.box" metadata.json Vagrantfile box.img vmlinuz initrd
echo "build-box: $OUT/xdpnn-bookworm.box ($(du -h "$OUT/xdpnn-bookworm.box" | cut -f1))"
echo "build-box: add it with: vagrant box add --name xdpnn-bookworm $OUT/xdpnn-bookworm.box"
