#!/usr/bin/python3
"""Crash-consistency checker for sds over a real NBD connection (libnbd).

Run with Debian's /usr/bin/python3 (python3-libnbd, installed by scripts/setup.sh).

    crash_check.py write  --uri URI --log LOG --seconds S --seed N [--depth 16]
                          [--hot-bytes H --cold-percent P]
    crash_check.py verify --uri URI --log LOG
    crash_check.py verify-snapshot --uri SNAPSHOT_URI --log LOG --name NAME

`write` keeps up to --depth asynchronous writes in flight (4 KiB to 64 KiB, 4 KiB-aligned,
random offsets over the whole volume, never two in flight that overlap; one in eight FUA, an
occasional flush). With --hot-bytes, writes land uniformly below H (overwriting) except P% that
land uniformly above it (on a large thin volume, nearly each one allocates new extents). It
appends to LOG, one line each, flushed to the OS per line (line-buffered; only the server is
killed, never the writer):

    S gen offset length fua     before the write is handed to libnbd (submitted)
    A gen                       when the server acknowledged it (success)
    E gen errno                 when the server answered it with an error

It prints `ready` once connected, and a JSON summary when it ends: when the server connection
dies (the server was SIGKILLed: expected, exit 0) or when the time is up. It exits 3 if the
server answered any write with an error while the connection was alive.

Every 4 KiB block a write carries is self-describing: a 32-byte header (magic, block number,
generation, a check word) followed by 4064 bytes derived from (block, generation), so a block
read back names exactly the write that put it there.

`verify` replays the whole LOG (every cycle so far). Writes to one block are totally ordered
(no two overlapping writes are ever in flight together), so per block the acceptable contents
are: the base (the last ACKNOWLEDGED write to it, or what an earlier verify read, or zeroes if
never written) plus every write to it submitted after that base and never acknowledged (it may
or may not have landed). It reads every block ever written (and gaps of up to 16 never-written
blocks between them, which must read as zeroes) and classifies each block:

    ok       its contents are one of the acceptable ones
    lost     zeroes, or an older write's pattern of this block, where an acknowledged write
             (or the base) is newer: acknowledged data went missing
    corrupt  anything else: garbage, a damaged pattern, another block's pattern, an unknown
             generation

It prints a JSON summary and exits 1 (with the first bad blocks) if any block is lost or
corrupt. After a clean verify, what it read is the known current state of every block that had
unacknowledged writes: it appends `R block gen` lines (gen 0 = zeroes), so later cycles start
from what is actually on disk. No writer may run during a verify.

Snapshots: the test appends `P name` to LOG before it calls snapshot_create and `Q name` after
it returned (whole lines with O_APPEND, so they fall between the writer's lines). A write
acknowledged before `P` happened before the snapshot; a write submitted after `Q` happened
after it. `verify-snapshot` reads the snapshot and accepts, per block, the base at `P` (the
last write acknowledged before it, as `verify` defines the base) or any write to the block
submitted after that base and before `Q` (or before the end of the log when there is no `Q`:
the server died during snapshot_create and the snapshot survived). Anything else is lost
(older than the base) or corrupt, as for `verify`; blocks first written after `Q` must read as
zeroes.
"""

import argparse
import errno
import hashlib
import json
import os
import random
import struct
import sys
import time

import nbd

BLOCK = 4096
MAGIC = b"SDSCRSH1"
HEADER = struct.Struct("<8sQQQ")  # magic, block, generation, check
BODY_WORDS = (BLOCK - HEADER.size) // 32
assert HEADER.size + 32 * BODY_WORDS == BLOCK
ZERO_BLOCK = bytes(BLOCK)
READ_GAP = 16  # verify reads through gaps of up to this many unwritten blocks
READ_MAX = 4 << 20
# errnos a completion reports when the connection died, not because the server refused.
DEAD_ERRNOS = {
    errno.ENOTCONN,
    errno.ECONNRESET,
    errno.EPIPE,
    errno.ESHUTDOWN,
    errno.ECONNABORTED,
}


def pattern(block, gen):
    digest = hashlib.blake2b(struct.pack("<QQ", block, gen), digest_size=32).digest()
    check = struct.unpack_from("<Q", digest)[0]
    return HEADER.pack(MAGIC, block, gen, check) + digest * BODY_WORDS


def classify(data, block):
    """What a block read back holds: ("zero", 0), ("gen", gen) or ("bad", description)."""
    if data[:8] == MAGIC:
        _, who, gen, _ = HEADER.unpack_from(data)
        if who != block:
            if data == pattern(who, gen):
                return ("bad", f"holds block {who}'s pattern (gen {gen}): misplaced")
            return ("bad", f"header names block {who} gen {gen}, body damaged")
        if data == pattern(block, gen):
            return ("gen", gen)
        return ("bad", f"header says gen {gen} but the body is damaged{torn_note(data, block)}")
    if data == ZERO_BLOCK:
        return ("zero", 0)
    return ("bad", f"garbage (first bytes {bytes(data[:16]).hex()}){torn_note(data, block)}")


def torn_note(data, block):
    """Says which 512-byte sectors are zero / pattern, to spot torn blocks."""
    sectors = "".join(
        "0" if bytes(data[s : s + 512]) == ZERO_BLOCK[:512] else "x" for s in range(0, BLOCK, 512)
    )
    return f"; 512-byte sectors (0 = zeroes, x = not): {sectors}"


def connect(uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


# ---- write ---------------------------------------------------------------------------------


def max_gen_in(log_path):
    top = 0
    try:
        with open(log_path) as f:
            for line in f:
                if line.startswith("S "):
                    top = max(top, int(line.split()[1]))
    except FileNotFoundError:
        pass
    return top


def cmd_write(args):
    rng = random.Random(args.seed)
    next_gen = max_gen_in(args.log) + 1
    log = open(args.log, "a", buffering=1)  # line-buffered: every line reaches the OS
    h = connect(args.uri)
    size = h.get_size()
    blocks = size // BLOCK
    hot_blocks = min(args.hot_bytes // BLOCK, blocks) if args.hot_bytes else blocks
    print("ready", flush=True)

    inflight = {}  # gen -> (first block, block count, buffer)
    stats = {
        "submitted": 0,
        "acknowledged": 0,
        "errors": 0,
        "unacknowledged": 0,
        "fua": 0,
        "flushes": 0,
        "first_gen": next_gen,
        "last_gen": next_gen - 1,
        "bytes_acknowledged": 0,
        "end": "time",
    }
    server_errors = []

    def completed(gen, error):
        err = error.value if hasattr(error, "value") else int(error)
        first, count, _ = inflight.pop(gen)
        if err == 0:
            log.write(f"A {gen}\n")
            stats["acknowledged"] += 1
            stats["bytes_acknowledged"] += count * BLOCK
        elif err in DEAD_ERRNOS:
            pass  # the connection died with it in flight: outcome unknown
        else:
            log.write(f"E {gen} {err}\n")
            stats["errors"] += 1
            if len(server_errors) < 5:
                server_errors.append(f"gen {gen} at block {first}+{count}: errno {err}")
        return 1

    def flushed(error):
        err = error.value if hasattr(error, "value") else int(error)
        if err and err not in DEAD_ERRNOS:
            stats["errors"] += 1
            if len(server_errors) < 5:
                server_errors.append(f"flush: errno {err}")
        return 1

    def overlaps(first, count):
        end = first + count
        for f, c, _ in inflight.values():
            if first < f + c and f < end:
                return True
        return False

    deadline = time.monotonic() + args.seconds
    since_flush = 0
    try:
        while time.monotonic() < deadline:
            while len(inflight) < args.depth:
                count = rng.randint(1, 16)
                if hot_blocks < blocks and rng.random() * 100 < args.cold_percent:
                    first = rng.randrange(hot_blocks, blocks - count + 1)
                else:
                    first = rng.randrange(0, hot_blocks - count + 1)
                if overlaps(first, count):
                    continue
                gen = next_gen
                next_gen += 1
                fua = rng.random() < 0.125
                buf = b"".join(pattern(first + i, gen) for i in range(count))
                log.write(f"S {gen} {first * BLOCK} {count * BLOCK} {int(fua)}\n")
                inflight[gen] = (first, count, buf)
                stats["submitted"] += 1
                stats["last_gen"] = gen
                stats["fua"] += fua
                h.aio_pwrite(
                    buf,
                    first * BLOCK,
                    completion=lambda e, g=gen: completed(g, e),
                    flags=nbd.CMD_FLAG_FUA if fua else 0,
                )
                since_flush += 1
                if since_flush >= 64 and rng.random() < 0.1:
                    since_flush = 0
                    stats["flushes"] += 1
                    h.aio_flush(completion=flushed)
            h.poll(-1)
        # Time is up: let what is in flight finish.
        while h.aio_in_flight() > 0:
            h.poll(-1)
    except nbd.Error as error:
        stats["end"] = f"connection lost: {error}"
    stats["unacknowledged"] = stats["submitted"] - stats["acknowledged"]
    log.close()
    if server_errors:
        stats["server_errors"] = server_errors
    print(json.dumps(stats), flush=True)
    return 3 if stats["errors"] else 0


# ---- verify --------------------------------------------------------------------------------


class BlockState:
    """Per block: the base (gen, 0 for zeroes) and unacknowledged gens submitted after it."""

    __slots__ = ("base", "pending")

    def __init__(self):
        self.base = 0
        self.pending = None


def replay(log_path, until=None):
    """Returns ({block: BlockState}, counts) from the whole log, or from its lines before
    `P until` (a snapshot's start)."""
    states = {}
    writes = {}  # gen -> (first block, count), for every S line
    acknowledged = 0
    submitted = 0
    resolved = 0
    with open(log_path) as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            kind = parts[0]
            if kind == "S":
                gen, offset, length = int(parts[1]), int(parts[2]), int(parts[3])
                first, count = offset // BLOCK, length // BLOCK
                writes[gen] = (first, count)
                submitted += 1
                for b in range(first, first + count):
                    state = states.get(b)
                    if state is None:
                        state = states[b] = BlockState()
                    if state.pending is None:
                        state.pending = [gen]
                    else:
                        state.pending.append(gen)
            elif kind == "A":
                gen = int(parts[1])
                first, count = writes[gen]
                acknowledged += 1
                for b in range(first, first + count):
                    state = states[b]
                    # Everything submitted to this block before gen finished before gen was
                    # submitted (no overlapping writes in flight), so gen supersedes it.
                    state.base = gen
                    state.pending = [g for g in state.pending if g > gen] or None
            elif kind == "E":
                pass  # answered with an error: stays unacknowledged (it may have landed)
            elif kind == "R":
                block, gen = int(parts[1]), int(parts[2])
                state = states[block]
                state.base = gen
                state.pending = None
                resolved += 1
            elif kind in ("P", "Q"):
                if until is not None and kind == "P" and parts[1] == until:
                    break
            else:
                raise SystemExit(f"{log_path}:{number}: unknown line {line!r}")
    return states, {"submitted": submitted, "acknowledged": acknowledged, "resolved": resolved}


def read_runs(h, runs, on_data, depth=8):
    """Reads every (first block, end block) run, up to `depth` reads in flight; calls
    on_data(first block, bytes) for each as it completes."""
    pending = iter(runs)
    inflight = {}
    done = []
    failures = []

    def finished(key, error):
        err = error.value if hasattr(error, "value") else int(error)
        if err:
            failures.append((key, err))
        else:
            done.append(key)
        return 1

    more = True
    while more or inflight:
        while more and len(inflight) < depth:
            run = next(pending, None)
            if run is None:
                more = False
                break
            first, end = run
            buf = nbd.Buffer((end - first) * BLOCK)
            inflight[first] = buf
            h.aio_pread(buf, first * BLOCK, completion=lambda e, k=first: finished(k, e))
        if not inflight:
            break
        h.poll(-1)
        if failures:
            first, err = failures[0]
            raise SystemExit(f"reading at block {first} failed: errno {err}")
        for first in done:
            on_data(first, inflight.pop(first).to_bytearray())
        done.clear()


def snapshot_states(log_path, name):
    """The acceptable contents of each block of snapshot `name` (see the module doc), as
    BlockStates: the base at `P name`, pending = every later gen submitted before `Q name`."""
    states, counts = replay(log_path, until=name)
    writes = {}
    seen_p = False
    with open(log_path) as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "P" and parts[1] == name:
                seen_p = True
                continue
            if not seen_p:
                if parts[0] == "S":
                    writes[int(parts[1])] = (int(parts[2]) // BLOCK, int(parts[3]) // BLOCK)
                continue
            if parts[0] == "Q" and parts[1] == name:
                break
            if parts[0] == "S":
                gen, first, count = int(parts[1]), int(parts[2]) // BLOCK, int(parts[3]) // BLOCK
                for b in range(first, first + count):
                    state = states.get(b)
                    if state is None:
                        state = states[b] = BlockState()
                    state.pending = (state.pending or []) + [gen]
    if not seen_p:
        raise SystemExit(f"{log_path}: no line P {name}")
    return states, counts


def cmd_verify(args):
    started = time.monotonic()
    if args.command == "verify-snapshot":
        states, counts = snapshot_states(args.log, args.name)
    else:
        states, counts = replay(args.log)
    h = connect(args.uri)
    # Runs of written blocks; gaps of up to READ_GAP blocks are read through (and must be zero).
    runs = []
    for b in sorted(states):
        if runs and b - runs[-1][1] <= READ_GAP and (b + 1 - runs[-1][0]) * BLOCK <= READ_MAX:
            runs[-1][1] = b + 1
        else:
            runs.append([b, b + 1])
    checked = zero_ok = unwritten_checked = with_pending = landed = 0
    lost = corrupt = 0
    bad = []
    resolutions = []
    bytes_read = 0
    counters = {"checked": 0, "zero_ok": 0, "unwritten": 0, "with_pending": 0, "landed": 0,
                "lost": 0, "corrupt": 0, "bytes_read": 0}
    bad = []
    resolutions = []

    def check(first, data):
        counters["bytes_read"] += len(data)
        data = memoryview(data)
        for i in range(len(data) // BLOCK):
            block = first + i
            piece = data[i * BLOCK : (i + 1) * BLOCK]
            state = states.get(block)
            kind, what = classify(piece, block)
            observed = what if kind == "gen" else 0
            if state is None:
                counters["unwritten"] += 1
                if kind == "zero":
                    continue
                counters["corrupt"] += 1
                if len(bad) < 10:
                    bad.append({"block": block, "offset": block * BLOCK, "problem": "corrupt",
                                "expected": "zeroes (never written)",
                                "found": what if kind == "bad" else f"gen {what}"})
                continue
            counters["checked"] += 1
            acceptable = {state.base}
            if state.pending:
                acceptable.update(state.pending)
                counters["with_pending"] += 1
            if kind != "bad" and observed in acceptable:
                if state.pending:
                    resolutions.append((block, observed))
                    counters["landed"] += observed != state.base
                if kind == "zero":
                    counters["zero_ok"] += 1
                continue
            if kind != "bad" and observed < state.base:
                problem = "lost"
            else:
                problem = "corrupt"
            counters[problem] += 1
            if len(bad) < 10:
                bad.append({
                    "block": block,
                    "offset": block * BLOCK,
                    "problem": problem,
                    "expected": f"gen {state.base}" + (f" or unacknowledged {state.pending}" if state.pending else ""),
                    "found": what if kind == "bad" else ("zeroes" if kind == "zero" else f"gen {what}"),
                })

    read_runs(h, [(a, b) for a, b in runs], check)
    lost, corrupt = counters["lost"], counters["corrupt"]
    checked, unwritten_checked, zero_ok = counters["checked"], counters["unwritten"], counters["zero_ok"]
    with_pending, landed, bytes_read = counters["with_pending"], counters["landed"], counters["bytes_read"]
    h.shutdown()
    summary = {
        "ok": lost == 0 and corrupt == 0,
        "blocks_checked": checked,
        "unwritten_blocks_checked": unwritten_checked,
        "blocks_zero_ok": zero_ok,
        "blocks_with_unacknowledged": with_pending,
        "unacknowledged_landed": landed,
        "lost": lost,
        "corrupt": corrupt,
        "writes_submitted": counts["submitted"],
        "writes_acknowledged": counts["acknowledged"],
        "bytes_read": bytes_read,
        "seconds": round(time.monotonic() - started, 3),
    }
    if bad:
        summary["first_bad"] = bad
    if summary["ok"] and args.command == "verify":
        # What was read is now the known state of every block that had unacknowledged writes.
        with open(args.log, "a") as log:
            log.writelines(f"R {block} {gen}\n" for block, gen in resolutions)
            log.flush()
            os.fsync(log.fileno())
    print(json.dumps(summary), flush=True)
    return 0 if summary["ok"] else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write")
    w.add_argument("--uri", required=True)
    w.add_argument("--log", required=True)
    w.add_argument("--seconds", type=float, default=10.0)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--depth", type=int, default=16)
    w.add_argument("--hot-bytes", type=int, default=0,
                   help="write mostly below this offset (default: the whole volume)")
    w.add_argument("--cold-percent", type=float, default=0.0,
                   help="percent of writes that go above --hot-bytes instead")
    v = sub.add_parser("verify")
    v.add_argument("--uri", required=True)
    v.add_argument("--log", required=True)
    vs = sub.add_parser("verify-snapshot")
    vs.add_argument("--uri", required=True)
    vs.add_argument("--log", required=True)
    vs.add_argument("--name", required=True)
    args = parser.parse_args()
    return cmd_write(args) if args.command == "write" else cmd_verify(args)


if __name__ == "__main__":
    sys.exit(main())
