#!/usr/bin/env bash
# Builds the QEMU guest that carries the Linux kernel's own NVMe/TCP initiator (nvme-tcp) and
# target (nvmet-tcp), for the tests that check sds against an implementation it did not write.
#
# This machine's kernel has no modules, but Debian's guest kernel has them all. The guest is:
#   $out/vmlinux          the uncompressed kernel ELF, booted through PVH with qboot
#                         (-bios /usr/share/qemu/qboot.rom), which skips the decompressor
#   $out/initramfs.cpio   an uncompressed newc cpio: busybox-static, the modules, and an /init
#                         that loads them and runs /test.sh, given by the test in a second cpio
#                         appended at boot (concatenated cpio archives are one initramfs)
#   $out/modules.list     the modules /init loads, in dependency order
#
# Installs what it needs (qemu-system-x86 at exactly qemu-utils' version, seabios,
# busybox-static, cpio), needs root (or sudo) for that. Idempotent: with the guest built and
# the tools installed it does nothing. CI-safe: no terminal needed.
#
#   scripts/build-nvme-guest.sh            builds into $SDS_GUEST or target/guest
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
out="${SDS_GUEST:-$here/target/guest}"
# Bump when the contents of the initramfs change, so a cached guest is rebuilt.
guest_format=2

# shellcheck source=scripts/lib.sh
. "$here/scripts/lib.sh"

# --- Tools -----------------------------------------------------------------------------------
apt_install_missing build-nvme-guest seabios busybox-static cpio xz-utils kmod
# qemu-system-x86 must be exactly qemu-utils' version, as qemu-block-extra is in setup.sh.
install_at_qemu_version build-nvme-guest qemu-system-x86

if [ -f "$out/vmlinux" ] && [ -f "$out/initramfs.cpio" ] && \
    [ "$(cat "$out/format" 2>/dev/null || true)" = "$guest_format" ]; then
    echo "build-nvme-guest: $out is up to date"
    exit 0
fi

# --- Kernel ----------------------------------------------------------------------------------
work="$(mktemp -d)"
at_exit 'rm -rf "$work"'
# The kernel the suite's linux-image-amd64 points at (bookworm: 6.1), as a .deb unpacked here,
# never installed on the host.
kernel_pkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
if [ -z "$kernel_pkg" ]; then
    quiet $SUDO apt-get update -qq
    kernel_pkg="$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
fi
echo "build-nvme-guest: fetching $kernel_pkg"
(cd "$work" && quiet apt-get download "$kernel_pkg")
deb="$(ls "$work"/linux-image-*.deb | head -n 1)"
dpkg-deb -x "$deb" "$work/kernel"
kver="$(ls "$work/kernel/lib/modules" | head -n 1)"
moddir="$work/kernel/lib/modules/$kver"

# The bzImage carries the kernel ELF as an XZ stream; booting that ELF directly through PVH
# skips the in-guest decompression (seconds under TCG).
bz="$work/kernel/boot/vmlinuz-$kver"
xz_offset="$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$bz" | head -n 1 | cut -d: -f1 || true)"
if [ -z "$xz_offset" ]; then
    echo "build-nvme-guest: no XZ payload in $bz" >&2
    exit 1
fi
tail -c +"$((xz_offset + 1))" "$bz" | xz -dc --single-stream >"$work/vmlinux" 2>/dev/null || true
if [ "$(head -c 4 "$work/vmlinux" | od -An -tx1 | tr -d ' ')" != "7f454c46" ]; then
    echo "build-nvme-guest: the payload of $bz is not an ELF kernel" >&2
    exit 1
fi

# --- Modules, in dependency order --------------------------------------------------------------
# The .deb has no modules.dep; each module's own depends= (modinfo) names what must be loaded
# before it. A depth-first walk puts every dependency ahead of its users.
find_module() {
    find "$moddir" -name "$1.ko" -o -name "$1.ko.xz" | head -n 1
}
declare -A seen=()
order=()
visit() {
    local name="${1//-/_}"
    [ -n "${seen[$name]:-}" ] && return 0
    seen[$name]=1
    local path
    path="$(find_module "$name")"
    [ -z "$path" ] && path="$(find_module "${name//_/-}")"
    if [ -z "$path" ]; then
        # Built into the kernel (configfs, for example): nothing to load.
        if grep -q "/$name.ko" "$moddir/modules.builtin" 2>/dev/null || \
            grep -q "/${name//_/-}.ko" "$moddir/modules.builtin" 2>/dev/null; then
            return 0
        fi
        echo "build-nvme-guest: module $name not found in $kernel_pkg" >&2
        exit 1
    fi
    local deps dep
    deps="$(/sbin/modinfo -F depends "$path")"
    for dep in ${deps//,/ }; do visit "$dep"; done
    order+=("$path")
}
# The kernel's NVMe/TCP initiator and target, configfs for the target's configuration,
# virtio_net for QEMU's user-mode network, crc32c for header and data digests, loop and
# null_blk as namespaces' backing, and nbd for busybox's nbd-client.
for m in configfs virtio_net virtio_pci nvme_core nvme_fabrics nvme_tcp nvmet nvmet_tcp \
    crc32c_generic loop null_blk nbd; do
    visit "$m"
done

# --- Initramfs ---------------------------------------------------------------------------------
root="$work/root"
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,mnt,modules,sys/kernel/config}
cp /bin/busybox "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
: >"$root/modules.list"
for path in "${order[@]}"; do
    base="$(basename "$path")"
    case "$base" in
        *.ko.xz)
            xz -dc "$path" >"$root/modules/${base%.xz}"
            base="${base%.xz}"
            ;;
        *) cp "$path" "$root/modules/$base" ;;
    esac
    echo "$base" >>"$root/modules.list"
done

# /init: mounts, loads the modules, brings up the network, runs the test's /test.sh, prints
# its exit status on a line the host waits for, and powers off. Every line the host parses
# starts with "SDS-GUEST:".
cat >"$root/init" <<'EOF'
#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t configfs configfs /sys/kernel/config 2>/dev/null
mount -t tmpfs tmpfs /tmp
for m in $(cat /modules.list); do
    insmod "/modules/$m" 2>/dev/null || echo "SDS-GUEST: insmod $m failed"
done
mount -t configfs configfs /sys/kernel/config 2>/dev/null
ip link set lo up
if ip link set eth0 up 2>/dev/null; then
    # QEMU's user-mode network: the guest is 10.0.2.15, the gateway 10.0.2.2 reaches the host.
    ip addr add 10.0.2.15/24 dev eth0
    ip route add default via 10.0.2.2
fi
echo "SDS-GUEST: ready"
if [ -x /test.sh ]; then
    /test.sh
    echo "SDS-GUEST: exit $?"
else
    echo "SDS-GUEST: no /test.sh"
fi
sync
poweroff -f
EOF
chmod 755 "$root/init"

mkdir -p "$out"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) >"$work/initramfs.cpio"
cp "$root/modules.list" "$work/modules.list"
mv "$work/vmlinux" "$out/vmlinux"
mv "$work/initramfs.cpio" "$out/initramfs.cpio"
mv "$work/modules.list" "$out/modules.list"
echo "$kver" >"$out/kernel-version"
echo "$guest_format" >"$out/format"
echo "build-nvme-guest: built $out (kernel $kver, $(wc -l <"$out/modules.list") modules)"
