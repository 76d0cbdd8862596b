#!/usr/bin/env bash
# Builds a fio with the libiscsi engine (Debian's fio has nbd, io_uring and libaio but not
# libiscsi) from Debian's own fio source package, into target/tools/fio. Used only by bench/
# (bench/iscsi_speed.py), never by CI. Idempotent: a second run with the binary present does
# nothing. Needs root (or sudo) on Debian for the -dev packages and the temporary deb-src list.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
tools="${SDS_TOOLS:-$here/target/tools}"
out="$tools/fio"

if [ -x "$out" ] && "$out" --enghelp 2>/dev/null | grep -qw libiscsi; then
    echo "build-fio-libiscsi: $out already has the libiscsi engine"
    exit 0
fi

# shellcheck source=scripts/lib.sh
. "$here/scripts/lib.sh"
apt_install_missing build-fio-libiscsi build-essential pkg-config dpkg-dev libiscsi-dev libnbd-dev \
    liburing-dev libaio-dev zlib1g-dev

work="$(mktemp -d)"
at_exit 'rm -rf "$work"'

# apt-get source needs a deb-src line; add one for the running suite only while fetching.
# apt refuses two entries for one source with different Signed-By values: reuse the keyring
# the system's own debian.sources names, if it names one.
keyring="$(sed -n 's/^Signed-By:[[:space:]]*//Ip' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)"
options=""
if [ -n "$keyring" ]; then options="[signed-by=$keyring] "; fi
add_temp_apt_source sds-fio-src "deb-src ${options}http://deb.debian.org/debian $(debian_codename) main"
echo "build-fio-libiscsi: fetching Debian's fio source"
(cd "$work" && quiet apt-get source -qq --download-only fio && quiet dpkg-source -x ./fio_*.dsc fio-src)
remove_temp_apt_source sds-fio-src

echo "build-fio-libiscsi: building"
cd "$work/fio-src"
quiet ./configure --enable-libiscsi --enable-libnbd
quiet make -j"$(nproc)" fio
"./fio" --enghelp 2>/dev/null | grep -qw libiscsi || { echo "build-fio-libiscsi: built fio lacks libiscsi" >&2; exit 1; }
mkdir -p "$tools"
install -m 0755 fio "$out"
echo "build-fio-libiscsi: $out"
