#!/usr/bin/env bash
# Builds every fuzz target in fuzz/ and runs each for a bounded time, then prints per target
# the executions run and whether it crashed. Exits non-zero if any target crashed.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 60)
#
# Env: SDS_FUZZ_SANITIZER (none, the default, or address), SDS_FUZZ_TARGETS (a space-separated
# subset of the targets). The corpus grows in fuzz/corpus/TARGET across runs; crashes land in
# fuzz/artifacts/TARGET and each run's log in fuzz/artifacts/logs (all ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET]" >&2
    exit 2
fi

# cargo-fuzz passes nightly-only flags (-Z, sanitizer-coverage) to cargo and rustc; the one
# stable toolchain on our machines accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
# The parsers under test hold no unsafe code, so Rust's own bounds and overflow checks (on,
# with -a) catch what AddressSanitizer would, at several times the executions per second.
sanitizer="${SDS_FUZZ_SANITIZER:-none}"
host=$(rustc -vV | sed -n 's/^host: //p')
build_flags=(-O -a -s "$sanitizer" --target "$host")
cargo_fuzz_version=0.13.2

# Each target and the longest input libFuzzer may make for it: a few headers for the fixed
# 28-byte request, enough for many options (and an oversized option's length) for the
# handshake, and a JSON-RPC stream of several requests.
declare -A max_len=(
    [nbd_request]=4096
    [nbd_info_request]=4096
    [nbd_handshake]=16384
    [nbd_options]=16384
    [rpc_request]=16384
    [cli_size]=64
    [pool_on_disk]=4097
    [nbd_starttls]=4096
    [scsi_cdb]=4096
    [iscsi_pdu]=16384
    [iscsi_params]=16384
    [iscsi_login]=16384
    [nvmf_pdu]=16384
    [nvmf_capsule]=8400
)
read -ra targets <<<"${SDS_FUZZ_TARGETS:-nbd_request nbd_info_request nbd_handshake nbd_options rpc_request cli_size pool_on_disk nbd_starttls iscsi_pdu iscsi_params iscsi_login scsi_cdb nvmf_pdu nvmf_capsule}"
# A parser run on at most 16 KiB has no business near these: a larger allocation or RSS is a
# bug (an allocation sized by the input), reported as a crash.
rss_limit_mb=1024
malloc_limit_mb=256

started=$SECONDS
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== fuzz.sh: installing cargo-fuzz $cargo_fuzz_version"
    cargo install cargo-fuzz --locked --version "$cargo_fuzz_version"
fi
installed=$SECONDS

echo "== fuzz.sh: building ${targets[*]} (sanitizer: $sanitizer)"
cargo fuzz build "${build_flags[@]}"
built=$SECONDS
binaries=fuzz/target/$host/release

# Seeds: one well-formed input per target, so every run starts from the valid protocol and
# libFuzzer mutates from there. Written on every run (cheap), never committed.
python3 - <<'PY'
import json, os, struct

def seed(target, name, data):
    directory = os.path.join("fuzz", "corpus", target)
    os.makedirs(directory, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(directory, "seed-" + name), "wb") as f:
        f.write(data)

REQUEST_MAGIC = 0x25609513
def request(flags, command, cookie, offset, length):
    return struct.pack(">IHHQQI", REQUEST_MAGIC, flags, command, cookie, offset, length)
seed("nbd_request", "read", request(0, 0, 1, 4096, 4096))
seed("nbd_request", "write-fua-flush-disc",
     request(1, 1, 2, 0, 512) + request(0, 3, 3, 0, 0) + request(0, 2, 4, 0, 0))
seed("nbd_request", "trim-zeroes-unknown",
     request(0, 4, 5, 1 << 20, 1 << 20) + request(2, 6, 6, 0, 8192) + request(0, 9, 7, 0, 0))

def info(name, infos):
    name = name.encode()
    return (struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos))
            + b"".join(struct.pack(">H", i) for i in infos))
seed("nbd_info_request", "go", info("vol0", [3, 1]))
seed("nbd_info_request", "empty", info("", []))

IHAVEOPT = b"IHAVEOPT"
def option(code, data=b""):
    return IHAVEOPT + struct.pack(">II", code, len(data)) + data
# Two bytes of read cap and failing write (both off), then the client's flags and options.
seed("nbd_handshake", "list-info-go", b"\0\0" + struct.pack(">I", 3) + option(3)
     + option(6, info("a", [1, 2, 3])) + option(7, info("vol0", [3])))
seed("nbd_handshake", "export-name", b"\0\0" + struct.pack(">I", 1) + option(1, b"vol0"))
seed("nbd_handshake", "unknown-oversized-abort", b"\x05\0" + struct.pack(">I", 3)
     + option(8) + option(7, info("nope", [])) + IHAVEOPT + struct.pack(">II", 3, 1 << 20)
     + option(2))

def call(method, params=None, id_=1):
    request = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        request["params"] = params
    return json.dumps(request, indent=1)
# The first byte is the read size: 0 is one read, 7 cuts the stream into 7-byte reads.
seed("rpc_request", "volume-create", "\0" + call("volume_create", {
    "name": "vol0", "pool": "pool0", "size": 1 << 30, "block_size": 4096, "thin": True}))
seed("rpc_request", "pipelined", "\x07" + call("pool_create", {
    "name": "pool0", "luns": ["disk0", "fast"], "extent_size": 1 << 20})
     + call("lun_create", {"name": "fast", "kind": "mem", "size": 1 << 31}, "x")
     + '{"jsonrpc":"2.0","method":"bdev_get_bdevs"}')

seed("cli_size", "units", "1.5GiB")
seed("cli_size", "plain", "4096")
# Client flags, an option that needs TLS, then STARTTLS (with a TLS slot free).
seed("nbd_starttls", "list-then-starttls", b"\x00\x01" + struct.pack(">I", 1)
     + b"IHAVEOPT" + struct.pack(">II", 3, 0) + b"IHAVEOPT" + struct.pack(">II", 5, 0))
# A checkpoint block and a journal block of sequence 1, epoch 1, with one entry (512-byte LUN).
def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF
checkpoint = bytearray(512)
checkpoint[0:4] = struct.pack("<I", 0x53444350)
checkpoint[8:32] = struct.pack("<QQQ", 7, 3, 2)
checkpoint[4:8] = struct.pack("<I", crc32c(bytes(checkpoint[8:32])))
seed("pool_on_disk", "checkpoint", b"\x02" + bytes(checkpoint))
journal = bytearray(512)
journal[0:4] = struct.pack("<I", 0x53444a42)
journal[8:16] = struct.pack("<Q", 1)
journal[16:20] = struct.pack("<I", 1)
journal[24:32] = struct.pack("<Q", 1)
journal[32:40] = struct.pack("<Q", 5)
journal[40:56] = b"\x11" * 16
journal[56:64] = struct.pack("<Q", 9)
journal[64:72] = struct.pack("<Q", 42)
journal[72] = 1
journal[4:8] = struct.pack("<I", crc32c(bytes(journal[8:])))
seed("pool_on_disk", "journal", b"\x02" + bytes(journal))
# SCSI: READ(10) and INQUIRY VPD CDBs; an UNMAP list with one descriptor; PR OUT REGISTER.
seed("scsi_cdb", "cdbs", b"\x00" + bytes([0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0] + [0] * 6)
     + bytes([0x12, 1, 0x83, 0, 255, 0] + [0] * 10))
seed("scsi_cdb", "unmap", b"\x02" + struct.pack(">HH4xQI4x", 22, 16, 8, 16))
seed("scsi_cdb", "pr-out", b"\x03" + bytes([0, 0, 0]) + struct.pack(">QQ8x", 0, 0xABCD))

# iSCSI: a discovery login as libiscsi sends it (security stage with AuthMethod=None, then
# the operational stage), SendTargets and a logout; the same text alone for the negotiation.
def text(pairs):
    return b"".join(k.encode() + b"=" + v.encode() + b"\0" for k, v in pairs)
def pad(data):
    return data + b"\0" * (-len(data) % 4)
def login(csg, nsg, transit, data, itt=0):
    flags = (0x80 if transit else 0) | (csg << 2) | nsg
    return (struct.pack(">BBBBB", 0x43, flags, 0, 0, 0) + struct.pack(">I", len(data))[1:]
            + bytes([0x40, 0, 0, 1, 0, 0]) + struct.pack(">HIHHII", 0, itt, 0, 0, 1, 0)
            + b"\0" * 16 + pad(data))
def text_request(data, itt):
    return (struct.pack(">BBBBB", 0x04, 0x80, 0, 0, 0) + struct.pack(">I", len(data))[1:]
            + b"\0" * 8 + struct.pack(">IIII", itt, 0xFFFFFFFF, 1, 2) + b"\0" * 16 + pad(data))
def logout(itt):
    return (bytes([0x46, 0x80, 0, 0, 0, 0, 0, 0]) + b"\0" * 8
            + struct.pack(">IHHII", itt, 0, 0, 2, 3) + b"\0" * 16)
operational = [("HeaderDigest", "None,CRC32C"), ("DataDigest", "None"),
               ("MaxRecvDataSegmentLength", "262144"), ("InitialR2T", "No"),
               ("ImmediateData", "Yes"), ("MaxBurstLength", "16776192"),
               ("FirstBurstLength", "262144"), ("MaxOutstandingR2T", "1"),
               ("ErrorRecoveryLevel", "0"), ("DefaultTime2Wait", "2"),
               ("DefaultTime2Retain", "0"), ("IFMarker", "No"), ("OFMarker", "No")]
first = text([("InitiatorName", "iqn.b"), ("SessionType", "Discovery"), ("AuthMethod", "None")])
seed("iscsi_login", "discovery", b"\0\0" + login(0, 1, True, first)
     + login(1, 3, True, text(operational)) + text_request(text([("SendTargets", "All")]), 1)
     + logout(2))
chap = text([("InitiatorName", "iqn.a"), ("SessionType", "Discovery"), ("AuthMethod", "CHAP,None")])
seed("iscsi_login", "chap", b"\0\0" + login(0, 1, True, chap) + login(0, 1, False, text([("CHAP_A", "5")]))
     + login(0, 1, True, text([("CHAP_N", "u"), ("CHAP_R", "0x" + "00" * 16),
                               ("CHAP_I", "1"), ("CHAP_C", "0x" + "11" * 16)])))
seed("iscsi_params", "libiscsi", text(operational))
seed("iscsi_pdu", "login", b"\0" + login(0, 1, True, first))
seed("iscsi_pdu", "text-digests", b"\x03" + text_request(text([("SendTargets", "All")]), 1)[:48]
     + struct.pack("<I", crc32c(text_request(text([("SendTargets", "All")]), 1)[:48]))
     + pad(text([("SendTargets", "All")]))
     + struct.pack("<I", crc32c(pad(text([("SendTargets", "All")])))))
# NVMe/TCP: byte 0 the terms (bit 2 host to controller, bit 0/1 digests), then PDUs.
def nvme_sqe(opcode, cid, nsid, slba, blocks, sgl_len, sgl_id):
    return (struct.pack("<BBHI", opcode, 0x40, cid, nsid) + bytes(16)
            + struct.pack("<QIxxxB", 0, sgl_len, sgl_id)
            + struct.pack("<QI", slba, blocks - 1) + bytes(12))
def tcp_pdu(kind, header, data=b"", flags=0):
    hlen = 8 + len(header)
    pdo = hlen if data else 0
    return struct.pack("<BBBBI", kind, flags, hlen, pdo, hlen + len(data)) + header + data
write = nvme_sqe(0x01, 1, 1, 0, 1, 512, 0x01)
seed("nvmf_pdu", "capsules", b"\x04" + tcp_pdu(4, write, bytes(512))
     + tcp_pdu(4, nvme_sqe(0x02, 2, 1, 8, 8, 4096, 0x5a))
     + tcp_pdu(6, struct.pack("<HHII4x", 2, 0, 0, 4), b"abcd", 0x04))
seed("nvmf_pdu", "c2h", b"\x00" + tcp_pdu(7, struct.pack("<HHII4x", 2, 0, 0, 4), b"abcd", 0x0c)
     + tcp_pdu(5, struct.pack("<QHHHH", 0, 1, 1, 2, 0))
     + tcp_pdu(9, struct.pack("<HHII4x", 3, 7, 0, 65536)))
seed("nvmf_capsule", "write", b"\x00" + write + bytes(512))
seed("nvmf_capsule", "dsm", b"\x01" + nvme_sqe(0x09, 3, 1, 0, 1, 32, 0x01)[:40]
     + struct.pack("<II", 1, 4) + bytes(16) + struct.pack("<IIQ", 0, 8, 16) + bytes(16))

PY

failed=()
report=()
total_runs=0
for target in "${targets[@]}"; do
    if [ -z "${max_len[$target]:-}" ]; then
        echo "fuzz.sh: unknown target $target" >&2
        exit 2
    fi
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target" fuzz/artifacts/logs
    log="fuzz/artifacts/logs/$target.log"
    args=(
        -max_total_time="$seconds"
        -max_len="${max_len[$target]}"
        -rss_limit_mb="$rss_limit_mb"
        -malloc_limit_mb="$malloc_limit_mb"
        -timeout=10
        -print_final_stats=1
    )
    if [ -f "fuzz/dicts/$target.dict" ]; then
        args+=(-dict="$PWD/fuzz/dicts/$target.dict")
    fi
    echo "== fuzz.sh: $target for ${seconds}s"
    # The binary cargo fuzz built, run directly: `cargo fuzz run` would first rebuild it if
    # anything in the tree changed since the build above.
    status=0
    "$binaries/$target" "${args[@]}" -artifact_prefix="$PWD/fuzz/artifacts/$target/" \
        "$PWD/fuzz/corpus/$target" >"$log" 2>&1 || status=$?
    # libFuzzer ends a clean run with "Done N runs in S second(s)"; a crash ends it early, and
    # the last "#N" status line says how far it got.
    done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1 || true)
    if [ "$status" -eq 0 ] && [ -n "$done_line" ]; then
        runs=$(awk '{print $2}' <<<"$done_line")
        took=$(awk '{print $5}' <<<"$done_line")
        result="ok"
    else
        runs=$(grep -oE '^#[0-9]+' "$log" | tail -n 1 | tr -d '#' || true)
        runs=${runs:-0}
        took="-"
        result="CRASH (exit $status)"
        failed+=("$target")
        echo "---- last lines of $log"
        tail -n 40 "$log"
        artifact=$(grep -oE "$PWD/fuzz/artifacts/[^ ]+" "$log" | tail -n 1 || true)
        if [ -n "$artifact" ]; then
            echo "---- reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run ${build_flags[*]} $target $artifact"
        fi
    fi
    total_runs=$((total_runs + runs))
    report+=("$(printf '%-18s %12s runs in %4s s   %s' "$target" "$runs" "$took" "$result")")
done

echo "== fuzz.sh: results (${seconds}s per target)"
printf '%s\n' "${report[@]}"
echo "total: $total_runs runs; install $((installed - started))s, build $((built - installed))s, run $((SECONDS - built))s"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz.sh: crashes in ${failed[*]}" >&2
    exit 1
fi
echo "fuzz.sh: no crashes"
