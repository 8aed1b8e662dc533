#!/bin/bash
# The headless VM runner: builds or reuses the guest image (build-image.sh),
# boots it with QEMU, shares the project read-only, runs pytest inside as
# root and returns pytest's exit code.  The guest's console is saved to
# .vm/console.log.  No network for the guest beyond what tests build in it.
#   vagrant/vm-test.sh [PYTEST ARGS...]     (default: the VM selection below)
# Environment: XDPNN_VM_ACCEL=auto|kvm|tcg (auto: KVM where it boots the
# guest's kernel, QEMU's emulator otherwise), XDPNN_VM_TIMEOUT seconds (5400).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/.vm
NEED_MB=4500
ACCEL=${XDPNN_VM_ACCEL:-auto}
TIMEOUT=${XDPNN_VM_TIMEOUT:-5400}
# Under the emulator every BPF compile takes most of a minute, so the VM
# runs what differs between kernels, one test of each kind: the verifier on
# a small and the largest default shape, the parser twin, the counters, the
# datapath on veth with forwarding, redirect and malformed frames, swaps
# through a new inner map, detach through BPF links, the shared
# header against the compiler, serving replies (checksums: the helper
# differs between kernels), an added model behind a tail call (maps shared
# by pin), the flow table, a model chosen by port, tail-call stages at
# every layer boundary and inside layers, CPUMAP stages (a program of
# expected attach type BPF_XDP_CPUMAP), a multi-bit first layer, and the
# generators (pktgen exists only here).  The host runs the whole suite.
DEFAULT_ARGS="-q --durations=0 \
 'tests/test_golden.py::test_kernel_class_equals_reference[256-32-16-2-payload]' \
 'tests/test_golden.py::test_kernel_class_equals_reference[784-256-256-10-payload]' \
 'tests/test_golden.py::test_headers_mode_input_equals_twin[256]' \
 tests/test_golden.py::test_counters_add_up \
 tests/test_netns.py::test_forwards_23_packets_intact_and_counts_each_class \
 tests/test_netns.py::test_malformed_frames_are_counted_by_reason_and_forwarded_untouched \
 tests/test_netns.py::test_headers_mode_classifies_all_ipv4_like_the_twin \
 tests/test_netns.py::test_swap_replaces_the_model_in_place \
 tests/test_golden.py::test_swapped_in_model_is_the_one_run \
 tests/test_detach.py::test_detach_after_the_interface_moved_to_another_namespace \
 tests/test_netns.py::test_redirect_sends_a_class_out_of_its_target_with_or_without_a_peer \
 tests/test_shared.py::test_parsed_values_are_what_the_compiler_sees \
 tests/test_traffic.py::test_live_frames_cycle_the_inputs_in_order \
 tests/test_traffic.py::test_pktgen_sends_an_exact_count \
 'tests/test_serve.py::test_kernel_reply_equals_twin[256-32-16-4]' \
 tests/test_serve_netns.py::test_malformed_requests_get_their_error_reply_or_are_dropped \
 tests/test_serve.py::test_kernel_reply_equals_twin_with_an_added_model \
 tests/test_flow.py::test_kernel_flow_records_classes_and_counters_equal_the_twin \
 tests/test_port_models.py::test_a_port_goes_to_its_model_with_its_actions_until_removed \
 'tests/test_stages.py::test_stages_bit_exact_at_every_boundary[0-1|1-2|2-3|3-4|4-5]' \
 tests/test_cpumap_stages.py::test_cpumap_stages_real_frames \
 'tests/test_multibit.py::test_kernel_equals_reference[payload-shape0-signed-4]' \
 'tests/test_stages.py::test_split_stages_bit_exact[3 stages-vh]'"
[ $# -gt 0 ] && ARGS=$(printf '%q ' "$@") || ARGS=$DEFAULT_ARGS

case $ACCEL in auto|kvm|tcg) ;; *)
	echo "vm-test: XDPNN_VM_ACCEL must be auto, kvm or tcg, not '$ACCEL'" >&2
	exit 2 ;;
esac
if [ "$(id -u)" != 0 ]; then
	echo "vm-test: needs root (Debian packages, the image's root file system): use sudo" >&2
	exit 9
fi
mkdir -p "$OUT"
free_mb=$(df --output=avail -m "$OUT" | tail -1 | tr -d ' ')
if [ ! -e "$OUT"/disk-*.raw ] && [ "$free_mb" -lt "$NEED_MB" ]; then
	echo "vm-test: WARNING: the guest image needs ${NEED_MB} MB free in $OUT, found ${free_mb} MB" >&2
	echo "vm-test: SKIPPED: not enough disk for the guest image (${free_mb} of ${NEED_MB} MB)" >&2
	exit 0
fi
# What the runner needs from Debian, installed when missing.
missing=""
for p in qemu-system-x86 qemu-utils mmdebstrap e2fsprogs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "vm-test: installing Debian packages:$missing"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

bash "$ROOT/vagrant/build-image.sh" "$OUT"
DISK=$(ls -t "$OUT"/disk-*.raw | head -1)
KEY=${DISK##*/disk-}; KEY=${KEY%.raw}
# A /dev/kvm that exists may still not boot a stock kernel (some hosts offer
# only paravirtualized guests).  The probe boots the kernel with no root: it
# panics within seconds where KVM works, and fails or hangs where it does not.
kvm_boots() {
	[ -w /dev/kvm ] || return 1
	timeout 20 qemu-system-x86_64 -accel kvm -cpu host -m 256 -nographic -no-reboot -nic none \
		-kernel "$OUT/vmlinuz-$KEY" -append "console=ttyS0 panic=-1" </dev/null 2>&1 |
		grep -q "Kernel panic"
}
if [ "$ACCEL" = auto ]; then
	if kvm_boots; then
		ACCEL=kvm
	else
		ACCEL=tcg
		echo "vm-test: KVM cannot boot the guest's kernel here: using QEMU's emulator (slower)"
	fi
fi
[ "$ACCEL" = kvm ] && CPU=host || CPU=max
RUN=$(mktemp -d "$OUT/run.XXXXXX")
trap 'rm -rf --one-file-system "$RUN"' EXIT
mkdir "$RUN/results"
echo "$ARGS" > "$RUN/results/pytest-args"
# A copy-on-write layer keeps the cached image pristine between runs.
qemu-img create -q -f qcow2 -b "$DISK" -F raw "$RUN/overlay.qcow2"

echo "vm-test: booting Debian's stock kernel ($ACCEL), running pytest $ARGS"
start=$(date +%s)
set +e
timeout "$TIMEOUT" qemu-system-x86_64 -accel "$ACCEL" -cpu "$CPU" -smp 2 -m 3072 \
	-nographic -no-reboot -nic none \
	-kernel "$OUT/vmlinuz-$KEY" -initrd "$OUT/initrd-$KEY" \
	-append "root=/dev/vda rw console=ttyS0 init=/sbin/xdpnn-init panic=-1 quiet" \
	-drive file="$RUN/overlay.qcow2",if=virtio,format=qcow2 \
	-virtfs local,path="$ROOT",mount_tag=project,security_model=none,readonly=on \
	-virtfs local,path="$RUN/results",mount_tag=results,security_model=none \
	</dev/null > "$OUT/console.log" 2>&1 &
qemu=$!
tail -n +1 -f "$OUT/console.log" --pid=$qemu &
wait $qemu
status=$?
set -e
sleep 0.5
echo "vm-test: guest ran $(( $(date +%s) - start )) s; console log in $OUT/console.log"
if [ $status -eq 124 ]; then
	echo "vm-test: the VM did not finish within $TIMEOUT s" >&2
	exit 1
fi
if [ ! -s "$RUN/results/exit-code" ]; then
	echo "vm-test: the VM stopped without reporting pytest's exit code (QEMU exit $status); see $OUT/console.log" >&2
	exit 1
fi
exit "$(cat "$RUN/results/exit-code")"
