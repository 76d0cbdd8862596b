#!/usr/bin/env bash
# Installs every system package sds needs to build, run its demo, its tests and its benchmarks.
# Idempotent: a second run installs nothing new. Needs root (or sudo) on Debian.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Runs a command with its output kept aside, shown only when it fails (apt and dpkg are chatty
# even with -qq, and CI logs should show what went wrong, not what went right).
quiet() {
    local log
    log="$(mktemp)"
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        return 1
    fi
    rm -f "$log"
}

need_pkgs=()
want() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$1"); }

# Build: a C compiler for crates with C parts; pkg-config.
want build-essential
want pkg-config
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
want tgt             # tgtd: the peer iSCSI target for bench/ and the conformance comparison

if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "setup: installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    quiet $SUDO apt-get update -qq
    quiet $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi

# qemu's iSCSI driver (qemu-io iscsi://) is qemu-block-extra, which must be exactly
# qemu-utils' version. qemu-utils may come from bookworm-backports; when that version is not
# installable from the configured suites, the backports suite is added through a temporary
# source list for this one install and removed again.
qemu_version="$(dpkg-query -W -f='${Version}' qemu-utils)"
if [ "$(dpkg-query -W -f='${Version}' qemu-block-extra 2>/dev/null || true)" != "$qemu_version" ]; then
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-cache madison qemu-block-extra 2>/dev/null | awk '{print $3}' | grep -qxF "$qemu_version"; then
        quiet $SUDO apt-get update -qq
    fi
    temp_list=""
    if ! apt-cache madison qemu-block-extra 2>/dev/null | awk '{print $3}' | grep -qxF "$qemu_version"; then
        codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
        temp_list="/etc/apt/sources.list.d/sds-setup-backports.list"
        echo "deb http://deb.debian.org/debian ${codename}-backports main" | $SUDO tee "$temp_list" >/dev/null
        trap '$SUDO rm -f "$temp_list"' EXIT
        quiet $SUDO apt-get update -qq
    fi
    echo "setup: installing qemu-block-extra=$qemu_version"
    quiet $SUDO apt-get install -y -qq --no-install-recommends "qemu-block-extra=$qemu_version"
    if [ -n "$temp_list" ]; then
        $SUDO rm -f "$temp_list"
        trap - EXIT
    fi
fi

# SPDK's own JSON-RPC client (pure Python, from PyPI) in a private venv, so the system
# Python stays untouched. Tests find it at $SDS_TOOLS/venv/bin/spdk-rpc.
here="$(cd "$(dirname "$0")/.." && pwd)"
tools="${SDS_TOOLS:-$here/target/tools}"
if [ ! -x "$tools/venv/bin/python" ] || ! "$tools/venv/bin/python" -c 'import spdk.rpc' 2>/dev/null; then
    echo "setup: installing SPDK's Python RPC client into $tools/venv"
    mkdir -p "$tools"
    /usr/bin/python3 -m venv "$tools/venv"
    quiet "$tools/venv/bin/pip" install -q spdk
fi

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
