#!/usr/bin/env bash
# Builds the Debian package of sds with cargo-deb: target/debian/sds_VERSION-1_ARCH.deb.
#
#   scripts/package.sh                      release build, then the package
#   scripts/package.sh --no-build           package the release binary already built
#   scripts/package.sh --profile dev --no-build
#                                           package target/debug/sds (what the tests do: no
#                                           second, slow optimised build on a 2-core CI)
#
# Installs cargo-deb from crates.io into ~/.cargo/bin when it is missing (kept there for the
# next run). The man pages and shell completions are made by the binary being packaged
# (`sds gen-man`, `sds gen-completions`), from its own clap definitions. What goes where is
# [package.metadata.deb] in Cargo.toml; the maintainer scripts are contrib/debian/.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        *) echo "usage: $0 [--profile PROFILE] [--no-build]" >&2; exit 2 ;;
    esac
done

export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo deb --version >/dev/null 2>&1; then
    echo "package.sh: installing cargo-deb from crates.io (once)" >&2
    cargo install cargo-deb --locked
fi

if [ "$build" = 1 ]; then
    cargo build --locked --profile "$profile" --bin sds
fi
case "$profile" in
    release) out=release ;;
    dev|test) out=debug ;;
    *) out="$profile" ;;
esac
binary="target/$out/sds"
[ -x "$binary" ] || { echo "package.sh: $binary is not built (drop --no-build)" >&2; exit 1; }

rm -rf target/assets
"$binary" gen-man target/assets/man
gzip -9n target/assets/man/*.1
"$binary" gen-completions target/assets/completions

# --fast: a quicker compression; the package is for the machine that builds it or a local
# repository, where build time matters more than a few MB.
cargo deb --no-build --profile "$profile" --fast --output target/debian/
