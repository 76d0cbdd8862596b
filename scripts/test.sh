#!/usr/bin/env bash
# Every test: formatting, lints, unit tests, and the integration tests that start the real
# server and drive it with real clients (qemu-io, nbdinfo, fio, SPDK's Python RPC client,
# libiscsi's tools, a QEMU guest with Linux's NVMe/TCP initiator and target).
# Installs what is missing through scripts/setup.sh first. Then the unit tests of the data path's
# unsafe code under Miri and ThreadSanitizer (scripts/sanitize.sh), and a short, bounded run of
# every fuzz target (scripts/fuzz.sh, SDS_FUZZ_SECONDS per target, 15 by default).
#
#   scripts/test.sh [--long]    --long: 300 s per fuzz target and 200 crash-test cycles
set -euo pipefail
cd "$(dirname "$0")/.."

for arg in "$@"; do
    case "$arg" in
        --long) export SDS_FUZZ_SECONDS=300 SDS_CRASH_CYCLES=200 ;;
        *)
            echo "usage: scripts/test.sh [--long]" >&2
            exit 2
            ;;
    esac
done

missing=0
for tool in qemu-io nbdinfo fio nbdkit iscsi-ls iscsi-inq iscsi-readcapacity16 iscsi-test-cu \
    qemu-system-x86_64 tgtd tgtadm promtool; do
    command -v "$tool" >/dev/null 2>&1 || missing=1
done
# qemu-io opens iscsi:// only with qemu-block-extra at exactly qemu-utils' version.
[ "$(dpkg-query -W -f='${Version}' qemu-block-extra 2>/dev/null || true)" = \
    "$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)" ] || missing=1
[ -x target/tools/venv/bin/python ] || missing=1
# The NVMe/TCP guest (scripts/build-nvme-guest.sh, run by setup.sh).
[ -f target/guest/vmlinux ] && [ -f target/guest/initramfs.cpio ] || missing=1
[ "$(cat target/guest/format 2>/dev/null || true)" = \
    "$(sed -n 's/^guest_format=//p' scripts/build-nvme-guest.sh)" ] || missing=1
/usr/bin/python3 -c 'import nbd' 2>/dev/null || missing=1
# fio with the libiscsi engine (scripts/build-fio-libiscsi.sh): tests/remote_iscsi.rs drives
# sds's iSCSI target with it.
[ -x target/tools/fio ] || missing=1
# The appliance (tests/appliance.rs): the unit's verifier, man, and the package's dpkg-shlibdeps.
for tool in systemd-analyze man dpkg-shlibdeps; do
    command -v "$tool" >/dev/null 2>&1 || missing=1
done
if [ "$missing" -ne 0 ]; then
    echo "test.sh: installing missing tools with scripts/setup.sh"
    scripts/setup.sh
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
# Integration tests each run their own server on their own port and temp dir, so they run in
# parallel; two at a time keeps the clients and servers from starving a 2-core machine.
cargo test --all-targets --locked -- --test-threads="${SDS_TEST_THREADS:-2}"
echo "== sanitize"
# Miri and ThreadSanitizer over the LUN drivers, the ring, the map and the bitmap (nightly with
# miri and rust-src; about a minute when warm, several on the first run).
scripts/sanitize.sh
echo "== fuzz"
scripts/fuzz.sh "${SDS_FUZZ_SECONDS:-15}"
