#!/usr/bin/env python3
"""In-process benchmark with `sds perf` (the stack without the network, like SPDK's bdevperf).

(a) What the domain layer costs (VP checks, QoS token bucket with no limit hit, per-VP
    statistics with latency): a RAM volume, 4k random read QD32, with and without
    `--no-domain`, interleaved A B A B; the overhead is 1 - median(with) / median(without).
(b) IOPS per core through the full stack on a null LUN and on a RAM (mem) LUN, 4k random
    read QD32, against SPDK bdevperf's published figures (null bdev 10.8 M, malloc bdev
    1.95 M IOPS per core) and the ones measured on these machines (16.2 M and 1.57 M; the
    README's Benchmarks section says how).

IOPS per core is IOPS divided by the reactor threads' CPU time over the measured window
(CLOCK_THREAD_CPUTIME_ID); with busy polling that is one core per reactor, as in bdevperf.
Every run uses one reactor on the last core (the default) and busy polling.

Usage: bench/perf.py [--repeat N] [--time S] [--ramp S] [--volume-size 1G] [--sds PATH] [--json FILE]
"""
import argparse, json, os, statistics, subprocess, sys

SPDK_PUBLISHED = {"null": 10.8e6, "mem": 1.95e6}  # bdevperf, IOPS per core (null / malloc bdev)
SPDK_LOCAL = {"null": 16.2e6, "mem": 1.57e6}  # bdevperf measured on these machines, 1 core
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def perf(sds, args, time_s, ramp_s, volume_size):
    cmd = [sds, "perf", "--json", "--time", str(time_s), "--ramp", str(ramp_s),
           "--volume-size", volume_size, "--rw", "randread", "--bs", "4k", "--qd", "32", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr}{done.stdout}")
    report = json.loads(done.stdout)
    if not report["counters"]["match"]:
        raise RuntimeError(f"counters differ: {report['counters']}")
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="rounds of A B A B (default 5)")
    parser.add_argument("--time", type=float, default=3.0, help="seconds measured per run")
    parser.add_argument("--ramp", type=float, default=0.5, help="seconds of ramp per run")
    parser.add_argument("--volume-size", default="1G", help="volume size of every run")
    parser.add_argument("--sds", help="the sds binary [default: build target/release/sds]")
    parser.add_argument("--json", help="also write every run's report to this file")
    opts = parser.parse_args()

    sds = opts.sds
    if not sds:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        sds = os.path.join(ROOT, "target", "release", "sds")

    configs = [
        ("mem, domain layer", ["--lun", "mem"]),
        ("mem, --no-domain", ["--lun", "mem", "--no-domain"]),
        ("null, domain layer", ["--lun", "null"]),
        ("null, --no-domain", ["--lun", "null", "--no-domain"]),
    ]
    runs = {name: [] for name, _ in configs}
    for round_index in range(opts.repeat):
        # A B A B: alternate the order each round so neither side always goes first.
        order = configs if round_index % 2 == 0 else list(reversed(configs))
        for name, args in order:
            report = perf(sds, args, opts.time, opts.ramp, opts.volume_size)
            runs[name].append(report)
            print(f"  round {round_index + 1}/{opts.repeat} {name:20s} {report['iops'] / 1e6:7.3f} M IOPS "
                  f"{report['iops_per_core'] / 1e6:7.3f} M/core  p50 {report['latency_us']['p50']:.3f} us "
                  f"p99 {report['latency_us']['p99']:.3f} us", file=sys.stderr, flush=True)

    def median(name, key):
        return statistics.median(r[key] for r in runs[name])

    def median_lat(name, key):
        return statistics.median(r["latency_us"][key] for r in runs[name])

    rows = []
    for name, _ in configs:
        rows.append((name, median(name, "iops"), median(name, "iops_per_core"),
                     median_lat(name, "p50"), median_lat(name, "p99"), median_lat(name, "p99_9"),
                     min(r["iops"] for r in runs[name]), max(r["iops"] for r in runs[name])))

    print()
    print(f"sds perf, 4k random read QD32, 1 reactor (busy polling), {opts.volume_size} thick volume, "
          f"{opts.time:g} s runs after {opts.ramp:g} s ramp, medians of {opts.repeat} rounds A B A B")
    print()
    header = ("run", "M IOPS", "M IOPS/core", "p50 us", "p99 us", "p99.9 us", "M IOPS min..max")
    table = [header] + [(n, f"{i / 1e6:.3f}", f"{c / 1e6:.3f}", f"{p50:.3f}", f"{p99:.3f}", f"{p999:.3f}",
                         f"{lo / 1e6:.3f}..{hi / 1e6:.3f}") for n, i, c, p50, p99, p999, lo, hi in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for row in table:
        print("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))

    print()
    for lun in ("mem", "null"):
        with_domain = median(f"{lun}, domain layer", "iops")
        without = median(f"{lun}, --no-domain", "iops")
        per_round = [1 - a["iops"] / b["iops"] for a, b in zip(runs[f"{lun}, domain layer"], runs[f"{lun}, --no-domain"])]
        print(f"  (a) domain layer cost, {lun} LUN: {100 * (1 - with_domain / without):.1f}% of IOPS "
              f"(median of per-round pairs {100 * statistics.median(per_round):.1f}%, "
              f"range {100 * min(per_round):.1f}%..{100 * max(per_round):.1f}%)"
              + ("; target < 5%" if lun == "mem" else ""))
    # The null runs time the domain layer alone (a null I/O costs tens of nanoseconds, so the
    # difference stands far above the noise); set against a mem I/O it gives the share the
    # mem runs above measure directly, but with their run-to-run noise.
    cost_ns = 1e9 / median("null, domain layer", "iops") - 1e9 / median("null, --no-domain", "iops")
    mem_io_ns = 1e9 / median("mem, --no-domain", "iops")
    print(f"  (a) domain layer per I/O, from the null runs: {cost_ns:.1f} ns = "
          f"{100 * cost_ns / (mem_io_ns + cost_ns):.1f}% of the IOPS of a mem I/O ({mem_io_ns:.0f} ns without it)")
    for lun, bdev in (("null", "null bdev"), ("mem", "malloc bdev")):
        per_core = median(f"{lun}, domain layer", "iops_per_core")
        print(f"  (b) {lun} LUN, full stack: {per_core / 1e6:.3f} M IOPS/core = "
              f"{per_core / SPDK_PUBLISHED[lun]:.2f} x SPDK's published {bdev} ({SPDK_PUBLISHED[lun] / 1e6:.2f} M), "
              f"{per_core / SPDK_LOCAL[lun]:.2f} x bdevperf measured here ({SPDK_LOCAL[lun] / 1e6:.2f} M)")

    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({name: reports for name, reports in runs.items()}, f, indent=1)


if __name__ == "__main__":
    main()
