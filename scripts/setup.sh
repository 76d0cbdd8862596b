#!/usr/bin/env bash
# Installs every system package sds needs to build, run its demo, its tests and its benchmarks.
# Idempotent: a second run installs nothing new. Needs root (or sudo) on Debian.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/lib.sh
. "$here/scripts/lib.sh"

need_pkgs=()
want() { need_pkgs+=("$1"); }

# Build: a C compiler for crates with C parts; pkg-config; libiscsi and libclang for sds-sys.
want build-essential
want pkg-config
want libiscsi-dev     # sds-sys: libiscsi headers, libiscsi.pc and the library it links
want libclang-dev     # sds-sys: bindgen loads libclang to read the libiscsi headers
# Clients and peers used by the demo, the tests and bench/.
want qemu-utils      # qemu-io, qemu-img, qemu-nbd
want libnbd-bin      # nbdinfo, nbdcopy, nbdsh
want nbdkit          # peer NBD server for bench/
want fio             # load and verification (nbd engine)
want python3         # Debian's python for SPDK's RPC client
want python3-libnbd  # nbdsh: raw NBD requests in tests
want python3-venv
want openssl         # test certificates
want libiscsi-bin    # iscsi-ls, iscsi-inq, iscsi-readcapacity16, iscsi-test-cu, iscsi-perf
want tgt             # tgtd, tgtadm: the foreign iSCSI array of tests/remote_iscsi.rs, the peer of bench/
# The appliance (tests/appliance.rs, scripts/package.sh): `systemd-analyze verify` on the unit,
# `man -w` on the installed page, dpkg-shlibdeps for the package's library dependencies and
# the helpers the maintainer scripts call. (cargo-deb itself comes from crates.io, installed
# by scripts/package.sh when missing.)
want systemd
want man-db
want dpkg-dev
want init-system-helpers
want prometheus      # promtool: tests/metrics.rs checks /metrics with `promtool check metrics`

apt_install_missing setup "${need_pkgs[@]}"

# qemu's iSCSI driver (qemu-io iscsi://) is qemu-block-extra, which must be exactly
# qemu-utils' version (lib.sh says how, backports included).
install_at_qemu_version setup qemu-block-extra

# SPDK's own JSON-RPC client (pure Python, from PyPI) in a private venv, so the system
# Python stays untouched. Tests find it at $SDS_TOOLS/venv/bin/spdk-rpc.
tools="${SDS_TOOLS:-$here/target/tools}"
if [ ! -x "$tools/venv/bin/python" ] || ! "$tools/venv/bin/python" -c 'import spdk.rpc' 2>/dev/null; then
    echo "setup: installing SPDK's Python RPC client into $tools/venv"
    mkdir -p "$tools"
    /usr/bin/python3 -m venv "$tools/venv"
    quiet "$tools/venv/bin/pip" install -q spdk
fi

# A fio with the libiscsi engine (Debian's has none) into target/tools/fio: tests/remote_iscsi.rs
# drives sds's iSCSI target with it, and bench/ compares through it. Built once.
"$here/scripts/build-fio-libiscsi.sh"

# The QEMU guest with the Linux kernel's own NVMe/TCP initiator and target (nvme-tcp, nvmet-tcp)
# for tests/nvmf_guest.rs: qemu-system-x86, and a kernel and initramfs built once into
# target/guest.
"$here/scripts/build-nvme-guest.sh"

# The Rust toolchain is expected from rustup; add cargo if it is missing.
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; installing Debian's rust toolchain"
    quiet $SUDO apt-get install -y -qq cargo rustc
fi
echo "setup: done"
