#!/usr/bin/env bash
# Runs the unit tests of the LUN drivers, the reactor's ring, the volume map, the pool's extent
# bitmap and the LUN error log under two checkers of Rust's memory model, each bounded:
#
#   Miri             every test that makes no system call Miri cannot emulate: data races
#                    (the RAM LUN written from several threads), aliasing and provenance
#                    errors, uninitialised reads. Tests that need io_uring are ignored there.
#   ThreadSanitizer  the same tests natively, io_uring included (std rebuilt with TSan).
#
#   scripts/sanitize.sh [miri|tsan|all]        (default all)
#
# Needs the nightly toolchain with the miri and rust-src components; installs them with rustup
# when missing. The first run builds a Miri sysroot and a TSan std (several minutes on two
# cores); later runs reuse them (target/miri, target/tsan) and take about a minute each.
# Env: SDS_SANITIZE_SECONDS bounds each checker (default 900).
set -euo pipefail
cd "$(dirname "$0")/.."

which="${1:-all}"
case "$which" in
    miri | tsan | all) ;;
    *)
        echo "usage: scripts/sanitize.sh [miri|tsan|all]" >&2
        exit 2
        ;;
esac
seconds="${SDS_SANITIZE_SECONDS:-900}"
toolchain=nightly
host=$(rustc -vV | sed -n 's/^host: //p')
# Module paths of the tests to run (libtest substring filters).
filters=(backend:: reactor:: volume::map volume::write_gate pool::bitmap control::lun_errors target::gather_send target::recv_buffer)
# ThreadSanitizer also runs these (their pools are formatted in memory, which Miri takes
# minutes over).
tsan_only=(volume::composite)

installed=$(rustup component list --toolchain "$toolchain" --installed 2>/dev/null || true)
if ! grep -q '^miri' <<<"$installed" || ! grep -q '^rust-src' <<<"$installed"; then
    echo "== sanitize.sh: installing the $toolchain toolchain's miri and rust-src"
    rustup toolchain install "$toolchain" --profile minimal --component miri,rust-src
fi

status=0
if [ "$which" != tsan ]; then
    echo "== sanitize.sh: Miri (${filters[*]})"
    started=$SECONDS
    if ! timeout "$seconds" cargo "+$toolchain" miri test --locked --lib -- "${filters[@]}"; then
        echo "sanitize.sh: Miri FAILED (or ran past ${seconds} s)" >&2
        status=1
    fi
    echo "== sanitize.sh: Miri took $((SECONDS - started)) s"
fi
if [ "$which" != miri ]; then
    echo "== sanitize.sh: ThreadSanitizer (${filters[*]})"
    started=$SECONDS
    # A TSan build needs std built with TSan too (-Zbuild-std), and its own target dir so it
    # never mixes with the normal build.
    if ! RUSTFLAGS="-Zsanitizer=thread" RUSTDOCFLAGS="-Zsanitizer=thread" \
        CARGO_TARGET_DIR=target/tsan TSAN_OPTIONS="halt_on_error=1" \
        timeout "$seconds" cargo "+$toolchain" test --locked -Zbuild-std --target "$host" --lib \
        -- --test-threads=2 "${filters[@]}" "${tsan_only[@]}"; then
        echo "sanitize.sh: ThreadSanitizer FAILED (or ran past ${seconds} s)" >&2
        status=1
    fi
    echo "== sanitize.sh: ThreadSanitizer took $((SECONDS - started)) s"
fi
exit "$status"
