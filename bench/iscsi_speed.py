#!/usr/bin/env python3
"""Side-by-side iSCSI benchmark: sds against tgtd on the same pre-filled file, and an sds RAM
volume against tgtd on a RAM (tmpfs) file. fio with its libiscsi engine drives both (build it
with scripts/build-fio-libiscsi.sh: Debian's fio has no libiscsi engine); the jobs run
interleaved A B A B over several rounds and the table gives medians, IOPS per server
CPU-second (utime+stime from /proc/PID/stat over the run) and the sds/tgtd ratios. The table is
printed and written to bench/last-iscsi-speed.txt.

Fairness: both servers get the same single core (the last one: `taskset` on tgtd and on sds,
whose one reactor runs there with `--cores`), fio gets the others. sds opens a file LUN with
O_DIRECT (it has no buffered mode; `lun_get_luns` shows `direct_io`), so the file rows compare it
with tgtd opened with `--bsoflags direct` (row `tgtd`): both read and write the disk. Row
`tgtd-cache` is tgtd's default, through the page cache (reads of a pre-filled file never reach
the disk there): it is shown for information, the ratios are against `tgtd`. On RAM, sds serves a
`mem` LUN and tgtd a file in /dev/shm (tmpfs: the page cache is the storage).

Usage: bench/iscsi_speed.py [--quick] [--repeat N] [--runtime S] [--size 1G] [--sds PATH]
                            [--tgtd-only] [--only TEXT] [--fio PATH] [--poll busy|adaptive]
                            [--no-cache-peer]
"""
import argparse, json, os, shutil, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iscsi_peers import FIO_INITIATOR, SDS_TARGET, Sds, Tgtd, escape  # noqa: E402
from processes import CLIENT_CPUS, SERVER_CPUS, cpu_seconds, prefill  # noqa: E402
from run_options import BLOCK_JOBS, ROOT, add_run_options, resolve_runs, load_average, medians, sds_binary, write_report  # noqa: E402

JOBS = BLOCK_JOBS
# tgtd's LUN is the whole shared file: its jobs stay above this offset, clear of the sds pool's
# superblock and records at the start of the file.
PEER_OFFSET = 16 << 20


def fio(binary, url, size, offset, args):
    cmd = ["taskset", "-c", CLIENT_CPUS, binary, "--name=bench", "--ioengine=libiscsi",
           f"--filename={escape(url)}", f"--initiator={FIO_INITIATOR}", f"--size={size}", f"--offset={offset}",
           "--output-format=json", *args]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"fio on {url}: {out.stderr.strip()[-500:]}")
    return out.stdout


def run_job(binary, target, job, runtime):
    before = cpu_seconds(target.pid)
    out = fio(binary, target.url, target.size, target.offset,
              ["--time_based", f"--runtime={runtime}", "--ramp_time=1", "--lat_percentiles=1",
               "--norandommap", "--randrepeat=0", f"--rw={job['rw']}", f"--bs={job['bs']}",
               f"--iodepth={job['iodepth']}"])
    cpu = cpu_seconds(target.pid) - before
    data = json.loads(out[out.index("{"):])["jobs"][0]
    side = data["read"] if job["rw"] in ("randread", "read") else data["write"]
    pct = side["lat_ns"].get("percentile", {})
    return dict(iops=side["iops"], mbps=side["bw_bytes"] / 1e6, p50_us=pct.get("50.000000", 0) / 1000,
                p99_us=pct.get("99.000000", 0) / 1000, cpu_s=cpu,
                iops_per_cpu_s=side["iops"] * (runtime + 1) / cpu if cpu > 0 else 0.0)


class Target:
    """One (server, LUN) pair the jobs run against."""

    def __init__(self, name, server, url, size, offset=0):
        self.name, self.server, self.url, self.size, self.offset = name, server, url, size, offset
        self.pid = server.pid


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(ap)
    ap.add_argument("--tgtd-only", action="store_true", help="run only tgtd (sds's iSCSI target not needed)")
    ap.add_argument("--fio", help="fio with the libiscsi engine (default target/tools/fio)")
    ap.add_argument("--out", help="table file (default bench/last-iscsi-speed.txt)")
    ap.add_argument("--poll", choices=("busy", "adaptive"), default="adaptive", help="sds's reactor poll mode")
    ap.add_argument("--no-cache-peer", action="store_true", help="leave out tgtd through the page cache")
    args = ap.parse_args()
    fio_binary = args.fio or os.path.join(os.environ.get("SDS_TOOLS", os.path.join(ROOT, "target/tools")), "fio")
    engines = subprocess.run([fio_binary, "--enghelp"], capture_output=True, text=True).stdout if os.access(fio_binary, os.X_OK) else ""
    if "libiscsi" not in engines.split():
        print(f"skipped: {fio_binary} is not a fio with the libiscsi engine; build it with "
              "scripts/build-fio-libiscsi.sh (Debian's fio has none)")
        return
    for tool in ("tgtd", "tgtadm"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: run scripts/setup.sh")
    jobs, size = resolve_runs(args, JOBS)
    sds_path = None if args.tgtd_only else sds_binary(args)
    out_path = args.out or os.path.join(ROOT, "bench/last-iscsi-speed.txt")
    server_prefix = ["taskset", "-c", SERVER_CPUS]

    tmp = tempfile.mkdtemp(prefix="sds-iscsi-speed-")
    ram_dir = tempfile.mkdtemp(prefix="sds-iscsi-speed-", dir="/dev/shm") if os.path.isdir("/dev/shm") else tmp
    servers, notes = [], []
    try:
        # One backing file for both servers, filled with data first, so neither reads holes.
        backing = os.path.join(tmp, "backing.img")
        file_bytes = size + (64 << 20)
        print(f"filling a {file_bytes >> 20} MiB backing file ...", flush=True)
        prefill(backing, file_bytes)
        ram_backing = os.path.join(ram_dir, "tgtd-ram.img")
        prefill(ram_backing, size, direct=False)
        groups = {"file": [], "ram": []}

        if sds_path:
            state = os.path.join(tmp, "sds-state")
            os.makedirs(state)
            try:
                sds = Sds(sds_path, state, prefix=server_prefix, log=os.path.join(tmp, "sds.log"),
                          extra=["--cores", SERVER_CPUS, "--poll", args.poll])
            except RuntimeError as e:
                notes.append(f"sds not measured: {e}")
            else:
                servers.append(sds)
                try:
                    sds.volume("vol", "file", size, path=backing)
                    sds.volume("ramvol", "mem", size)
                    sds.rpc("host_create", {"name": "fio", "iqn": FIO_INITIATOR})
                    sds.rpc("vpath_create", {"host": "fio", "volume": "vol", "lun": 0})
                    sds.rpc("vpath_create", {"host": "fio", "volume": "ramvol", "lun": 1})
                    base = f"iscsi://127.0.0.1:{sds.port}/{SDS_TARGET}"
                    file_target = Target("sds", sds, f"{base}/0", size)
                    ram_target = Target("sds-ram", sds, f"{base}/1", size)
                    print("filling the sds volumes (thin: map every extent before reading) ...", flush=True)
                    for t in (file_target, ram_target):
                        fio(fio_binary, t.url, size, 0, ["--rw=write", "--bs=1m", "--iodepth=8"])
                    groups["file"].append(file_target)
                    groups["ram"].append(ram_target)
                except RuntimeError as e:
                    notes.append(f"sds not measured: {e}")
        # The like-for-like peer first: the ratios are against the first tgtd of a group.
        tgtd = Tgtd(backing, prefix=server_prefix, bsoflags="direct")
        servers.append(tgtd)
        groups["file"].append(Target("tgtd", tgtd, tgtd.url, size, PEER_OFFSET))
        if not args.no_cache_peer:
            tgtd_cache = Tgtd(backing, prefix=server_prefix)
            servers.append(tgtd_cache)
            groups["file"].append(Target("tgtd-cache", tgtd_cache, tgtd_cache.url, size, PEER_OFFSET))
        tgtd_ram = Tgtd(ram_backing, prefix=server_prefix)
        servers.append(tgtd_ram)
        groups["ram"].append(Target("tgtd-ram", tgtd_ram, tgtd_ram.url, size))

        results = {}
        for round_index in range(args.repeat):
            for job_name, job in jobs:
                for members in groups.values():
                    for target in members:
                        r = run_job(fio_binary, target, job, args.runtime)
                        results.setdefault((job_name, target.name), []).append(r)
                        print(f"round {round_index + 1} {job_name:18} {target.name:10} {r['iops']:>9.0f} IOPS "
                              f"p50 {r['p50_us']:7.1f} us  cpu {r['cpu_s']:5.2f} s", flush=True)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        if ram_dir != tmp:
            shutil.rmtree(ram_dir, ignore_errors=True)

    med = medians(results)
    header = (f"{'job':18} {'server':10} {'IOPS':>9} {'MB/s':>8} {'p50 us':>8} {'p99 us':>8} {'CPU s':>6} "
              f"{'IOPS/CPU-s':>11} {'IOPS x':>7} {'eff x':>6}")
    lines = [f"fio libiscsi engine, {size >> 20} MiB, medians of {args.repeat} rounds of {args.runtime} s; "
             "ratios are sds / tgtd on the same backing (file, or RAM)",
             f"servers pinned to cpu {SERVER_CPUS} (sds: one reactor, --poll {args.poll}), fio to cpu {CLIENT_CPUS}; "
             "file: sds O_DIRECT vs tgtd --bsoflags direct (tgtd-cache: tgtd through the page cache, for information)",
             f"load average at the end: {load_average()}", "", header, "-" * len(header)]
    for job_name, _ in jobs:
        for group, members in groups.items():
            peer = next((t for t in members if t.name.startswith("tgtd")), None)
            for target in members:
                m = med.get((job_name, target.name))
                if m is None:
                    continue
                ratio = eff = ""
                if target.name.startswith("sds") and peer is not None:
                    b = med[(job_name, peer.name)]
                    ratio = f"{m['iops'] / b['iops']:.2f}" if b["iops"] else "-"
                    eff = f"{m['iops_per_cpu_s'] / b['iops_per_cpu_s']:.2f}" if b["iops_per_cpu_s"] else "-"
                lines.append(f"{job_name:18} {target.name:10} {m['iops']:>9.0f} {m['mbps']:>8.1f} {m['p50_us']:>8.1f} "
                             f"{m['p99_us']:>8.1f} {m['cpu_s']:>6.2f} {m['iops_per_cpu_s']:>11.0f} {ratio:>7} {eff:>6}")
    lines += [""] + notes
    text = "\n".join(lines).rstrip() + "\n"
    write_report(text, out_path)


if __name__ == "__main__":
    main()
