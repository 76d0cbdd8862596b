#!/usr/bin/env bash
# Installs every system package sds needs to build, run its demo, its tests and its benchmarks.
# Idempotent: a second run installs nothing new. Needs root (or sudo) on Debian.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

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

if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "setup: installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi

# SPDK's own JSON-RPC client (pure Python, from PyPI) in a private venv, so the system
# Python stays untouched. Tests find it at $SDS_TOOLS/venv/bin/spdk-rpc.
here="$(cd "$(dirname "$0")/.." && pwd)"
tools="${SDS_TOOLS:-$here/target/tools}"
if [ ! -x "$tools/venv/bin/python" ] || ! "$tools/venv/bin/python" -c 'import spdk.rpc' 2>/dev/null; then
    echo "setup: installing SPDK's Python RPC client into $tools/venv"
    mkdir -p "$tools"
    /usr/bin/python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install -q spdk
fi

# The Rust toolchain is expected from rustup; add cargo if it is missing.
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; installing Debian's rust toolchain"
    $SUDO apt-get install -y -qq cargo rustc
fi
echo "setup: done"
