#!/usr/bin/env python3
"""libiscsi's conformance suite (iscsi-test-cu --test=SCSI,iSCSI --dataloss) against tgtd and,
with --sds, against sds, side by side: passed / failed / skipped per target and the name of
every failing or skipped test, with the reason the suite printed. The table is printed and
written to bench/last-iscsi-conformance.txt (--out to change).

CUnit counts a skipped test as passed, so the counts come from the verbose log, not from its
summary: a test whose block says [SKIPPED] and not FAILED is a skip.

Both targets get a 128 MiB file-backed LUN of 512-byte blocks on 4096-byte physical ones;
sds gives libiscsi's two initiator names (its --initiator-name and --initiator-name-2) a host
each, with a virtual path at LUN 0.

Usage: bench/iscsi_conformance.py [--sds [PATH]] [--size MiB] [--test SCSI,iSCSI] [--out FILE]
"""
import argparse, os, re, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iscsi_peers import CU_INITIATOR, CU_INITIATOR_2, Sds, Tgtd  # noqa: E402
from run_options import write_report  # noqa: E402

# A run of the whole suite takes about 20 s on tgtd; a target that hangs a test is cut off.
SUITE_TIMEOUT_S = 1800

TEST_LINE = re.compile(r"^\s*Test: (\S+) \.\.\.(.*)$")
SUITE_LINE = re.compile(r"^Suite: (\S+)")


def parse(log):
    """Every test of a verbose iscsi-test-cu log as (suite.test, outcome, reason): outcome is
    passed, failed or skipped. A test's block runs from its "Test:" line to the next test or
    suite; CUnit ends it with "passed" or "FAILED"."""
    tests, suite, current = [], "?", None

    def close():
        if current is None:
            return
        name, lines = current
        text = "\n".join(lines)
        # CUnit's verdict is the first "passed" or "FAILED" that starts the block or a line;
        # a test may print "[FAILED] ..." for a step it then tolerates, or after its verdict.
        verdict = re.search(r"^\s*(passed|FAILED)\b", text, re.M)
        if verdict is None:
            tests.append((name, "failed", "no verdict (the run was cut off here)"))
        elif verdict.group(1) == "FAILED":
            messages = re.findall(r"\[FAILED\]\s*(.*)", text[:verdict.start()])
            asserts = re.findall(r"^\s*1\. (\S+)\s+-\s+(.*)$", text, re.M)
            reason = messages[0] if messages else (" ".join(asserts[0]) if asserts else "")
            tests.append((name, "failed", reason.strip()))
        elif "[SKIPPED]" in text:
            tests.append((name, "skipped", re.search(r"\[SKIPPED\]\s*(.*)", text).group(1).strip()))
        else:
            tests.append((name, "passed", ""))

    for line in log.splitlines():
        m = SUITE_LINE.match(line)
        if m:
            close()
            current, suite = None, m.group(1)
            continue
        m = TEST_LINE.match(line)
        if m:
            close()
            current = (f"{suite}.{m.group(1)}", [m.group(2)])
            continue
        if line.startswith("Run Summary"):
            close()
            current = None
            continue
        if current is not None:
            current[1].append(line)
    close()
    return tests


def run_suite(url, tests, log_path):
    cmd = ["iscsi-test-cu", f"--test={tests}", "--dataloss", "--verbose",
           f"--initiator-name={CU_INITIATOR}", f"--initiator-name-2={CU_INITIATOR_2}", url]
    started = time.time()
    note = ""
    # Straight into the log file (kept with --logs), not through a pipe held in memory.
    with open(log_path, "w") as log:
        try:
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=SUITE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            note = f"cut off after {SUITE_TIMEOUT_S} s"
    with open(log_path, errors="replace") as log:
        text = log.read()
    return parse(text), time.time() - started, note


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sds", nargs="?", const="", default=None,
                    help="also run against sds (binary PATH; default target/release/sds, built)")
    ap.add_argument("--size", type=int, default=128, help="LUN size in MiB (default 128)")
    ap.add_argument("--test", default="SCSI,iSCSI", help="iscsi-test-cu --test families (default SCSI,iSCSI)")
    ap.add_argument("--sds-lun-block", type=int, choices=(512, 4096), default=512,
                    help="block size of the sds LUN under its 512-byte volume (default 512, as tgtd; with 4096, GetLBAStatus.UnmapSingle trips on its own arithmetic for 8 logical blocks per physical block)")
    ap.add_argument("--out", help="table file (default bench/last-iscsi-conformance.txt)")
    ap.add_argument("--logs", help="keep the raw logs in this directory")
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out_path = args.out or os.path.join(root, "bench/last-iscsi-conformance.txt")
    for tool in ("iscsi-test-cu", "tgtd", "tgtadm"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: run scripts/setup.sh")
    sds_binary = None
    if args.sds is not None:
        sds_binary = args.sds or os.path.join(root, "target/release/sds")
        if not args.sds:
            subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=root, check=True)

    tmp = tempfile.mkdtemp(prefix="sds-conformance-")
    logs = args.logs or tmp
    os.makedirs(logs, exist_ok=True)
    size = args.size << 20
    results = {}
    try:
        backing = os.path.join(tmp, "tgtd.img")
        with open(backing, "wb") as f:
            f.truncate(size)
        tgtd = Tgtd(backing, log=os.path.join(logs, "tgtd-server.log"))
        try:
            print(f"iscsi-test-cu against tgtd ({tgtd.url}) ...", flush=True)
            results["tgtd"] = run_suite(tgtd.url, args.test, os.path.join(logs, "tgtd.log"))
        finally:
            tgtd.stop()
        if sds_binary:
            state = os.path.join(tmp, "sds-state")
            os.makedirs(state)
            sds_file = os.path.join(tmp, "sds.img")
            # The pool's superblock, journal and map take room beside the volume's blocks.
            with open(sds_file, "wb") as f:
                f.truncate(size + (64 << 20))
            try:
                sds = Sds(sds_binary, state, log=os.path.join(logs, "sds-server.log"))
            except RuntimeError as e:
                results["sds"] = ([], 0.0, f"could not start: {e}")
            else:
                try:
                    # 512-byte logical blocks on a 4096-byte LUN, the geometry tgtd reports
                    # (READ CAPACITY(16) exponent 3): libiscsi skips its unaligned-UNMAP and
                    # data-out-size tests on a LUN with fewer than 2 blocks per physical one.
                    sds.volume("cu", "file", size, path=sds_file, block_size=args.sds_lun_block,
                               volume_block_size=512)
                    url = sds.export("cu", [CU_INITIATOR, CU_INITIATOR_2])
                    print(f"iscsi-test-cu against sds ({url}) ...", flush=True)
                    results["sds"] = run_suite(url, args.test, os.path.join(logs, "sds.log"))
                except RuntimeError as e:
                    results["sds"] = ([], 0.0, f"could not set up: {e}")
                finally:
                    sds.stop()
    finally:
        if not args.logs:
            shutil.rmtree(tmp, ignore_errors=True)

    lines = [f"iscsi-test-cu --test={args.test} --dataloss, {args.size} MiB file-backed LUN of 512-byte "
             f"blocks (sds: on a {args.sds_lun_block}-byte LUN), "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", ""]
    header = f"{'target':8} {'tests':>6} {'passed':>7} {'failed':>7} {'skipped':>8} {'time s':>7}  note"
    lines += [header, "-" * len(header)]
    for target, (tests, elapsed, note) in results.items():
        count = {o: sum(1 for t in tests if t[1] == o) for o in ("passed", "failed", "skipped")}
        lines.append(f"{target:8} {len(tests):>6} {count['passed']:>7} {count['failed']:>7} {count['skipped']:>8} "
                     f"{elapsed:>7.1f}  {note}")
    for target, (tests, _, _) in results.items():
        for outcome in ("failed", "skipped"):
            chosen = [t for t in tests if t[1] == outcome]
            if chosen:
                lines += ["", f"{target}: {outcome} ({len(chosen)})"]
                lines += [f"  {name:45} {reason}" for name, _, reason in chosen]
    text = "\n".join(lines) + "\n"
    write_report(text, out_path)


if __name__ == "__main__":
    main()
