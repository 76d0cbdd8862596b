"""The options every side-by-side bench script takes (--quick, --repeat, --runtime, --size,
--sds, --only) and what they resolve to: the jobs to run, the volume size in bytes and the sds
binary (built in release mode unless given); the job mix of the block-protocol comparisons and
how a report is written. Shared by compare.py, iscsi_speed.py, nvmf_speed.py and
remote_lun_speed.py."""
import os, statistics, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE_UNITS = {"K": 10, "M": 20, "G": 30}
# The jobs iscsi_speed.py and remote_lun_speed.py run, in this order (rows of their tables).
BLOCK_JOBS = [
    ("4k randread QD32", dict(rw="randread", bs="4k", iodepth=32)),
    ("4k randwrite QD32", dict(rw="randwrite", bs="4k", iodepth=32)),
    ("4k randread QD1", dict(rw="randread", bs="4k", iodepth=1)),
    ("128k seqread QD8", dict(rw="read", bs="128k", iodepth=8)),
]


def add_run_options(ap):
    ap.add_argument("--quick", action="store_true", help="one round, 2 s per job, 256 MiB")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--runtime", type=int, default=5)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--sds", help="sds binary (default: build target/release/sds)")
    ap.add_argument("--only", help="run only the jobs whose name contains this text (e.g. 'QD32')")


def parse_size(text):
    """`1G`, `256M`, `64K` or a plain number of bytes."""
    unit = text[-1].upper()
    return int(text[:-1]) << SIZE_UNITS[unit] if unit in SIZE_UNITS else int(text)


def resolve_runs(args, jobs):
    """The jobs `--only` selects (exits when none does) and the size in bytes; `--quick` sets
    one round of 2 s on 256 MiB."""
    jobs = [j for j in jobs if not args.only or args.only in j[0]]
    if not jobs:
        sys.exit(f"no job matches {args.only!r}")
    if args.quick:
        args.repeat, args.runtime, args.size = 1, 2, "256M"
    return jobs, parse_size(args.size)


def sds_binary(args):
    """`--sds`, or target/release/sds built now."""
    if args.sds:
        return args.sds
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target/release/sds")


def medians(results):
    """{key: [run figures]} to {key: {figure: median over the runs}}."""
    return {key: {m: statistics.median(r[m] for r in runs) for m in runs[0]} for key, runs in results.items()}


def load_average():
    """The 1, 5 and 15 minute load averages, as text (for the table's header)."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def write_report(text, out_path):
    """Prints a finished report and writes it to `out_path` (a bench/last-*.txt)."""
    print("\n" + text)
    with open(out_path, "w") as f:
        f.write(text)
    print(f"written to {os.path.relpath(out_path)}")
