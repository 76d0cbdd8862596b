# Shared by scripts/setup.sh, scripts/build-nvme-guest.sh and scripts/build-fio-libiscsi.sh
# (sourced, not run): quiet apt installs, and apt sources added only for one install and
# removed again (on success and on failure) so the machine's apt configuration is left as found.
#
# Sets SUDO (empty when running as root) and DEBIAN_FRONTEND=noninteractive (CI-safe). A script
# that needs its own clean-up at exit registers it with at_exit, never with its own trap, so the
# temporary sources are still removed.

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

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

# Commands run at exit, in the order registered; one EXIT trap runs them all.
_exit_hooks=()
at_exit() { _exit_hooks+=("$1"); }
_run_exit_hooks() {
    local hook
    for hook in "${_exit_hooks[@]}"; do eval "$hook" || true; done
}
trap _run_exit_hooks EXIT

# The running Debian suite's codename.
debian_codename() { (. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}"); }

# apt_install_missing WHO PKG...: installs those of PKG that are not installed; WHO names the
# calling script in its message.
apt_install_missing() {
    local who="$1" p need=()
    shift
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
    done
    if [ ${#need[@]} -gt 0 ]; then
        echo "$who: installing ${need[*]}"
        quiet $SUDO apt-get update -qq
        quiet $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
    fi
}

# add_temp_apt_source NAME LINE: adds LINE as /etc/apt/sources.list.d/NAME.list until
# remove_temp_apt_source NAME (or the script's exit), and refreshes the package lists.
add_temp_apt_source() {
    local list="/etc/apt/sources.list.d/$1.list"
    echo "$2" | $SUDO tee "$list" >/dev/null
    at_exit "$SUDO rm -f '$list'"
    quiet $SUDO apt-get update -qq
}

# remove_temp_apt_source NAME: removes what add_temp_apt_source NAME added and refreshes the
# package lists, so later apt commands no longer see that source.
remove_temp_apt_source() {
    $SUDO rm -f "/etc/apt/sources.list.d/$1.list"
    quiet $SUDO apt-get update -qq
}

# has_version PKG VERSION: whether the configured suites offer PKG at exactly VERSION.
has_version() {
    apt-cache madison "$1" 2>/dev/null | awk '{print $3}' | grep -qxF "$2"
}

# install_at_qemu_version WHO PKG: installs PKG at exactly qemu-utils' version (qemu's
# packages share data files and modules, so they must match). qemu-utils may come from
# bookworm-backports; when that version is not installable from the configured suites, the
# backports suite is added through a temporary source list for this one install. A backports
# qemu needs backports' dependencies too (seabios, qemu-system-data: newer than the suite's);
# -t lets apt take them from there.
install_at_qemu_version() {
    local who="$1" pkg="$2" qemu_version temp="" target_release=()
    qemu_version="$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)"
    if [ -z "$qemu_version" ]; then
        echo "$who: qemu-utils is not installed; run scripts/setup.sh first" >&2
        return 1
    fi
    if [ "$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null || true)" = "$qemu_version" ]; then
        return 0
    fi
    if ! has_version "$pkg" "$qemu_version"; then
        quiet $SUDO apt-get update -qq
    fi
    if ! has_version "$pkg" "$qemu_version"; then
        temp="sds-$who-backports"
        add_temp_apt_source "$temp" "deb http://deb.debian.org/debian $(debian_codename)-backports main"
    fi
    case "$qemu_version" in
        *bpo*) target_release=(-t "$(debian_codename)-backports") ;;
    esac
    echo "$who: installing $pkg=$qemu_version"
    quiet $SUDO apt-get install -y -qq --no-install-recommends "${target_release[@]}" \
        "$pkg=$qemu_version"
    if [ -n "$temp" ]; then remove_temp_apt_source "$temp"; fi
}
