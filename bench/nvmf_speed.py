#!/usr/bin/env python3
"""NVMe/TCP against NBD on the same sds server and the same volumes: `sds perf --target
nvme-tcp://...` (sds's own initiator, like SPDK's perf) against a RAM volume and a file volume,
and fio's nbd engine against the same two volumes over NBD, interleaved over several rounds.
The table gives medians, the server's CPU time (utime+stime from /proc/PID/stat over each run),
IOPS per server CPU-second and the NVMe/TCP / NBD ratios; the issue's bar is 1.5x in IOPS and in
IOPS per server CPU-second on the RAM volume. Written to bench/last-nvmf-speed.txt.

The server runs on the last core (`taskset` and one reactor there with `--cores`), the clients
(fio, or sds perf's reactors with --cores) on the others. sds perf's reactors sleep when idle
(`--client-poll adaptive`, the default) as fio does: a client spinning on its core would take
the CPU the kernel's io_uring workers need for the file volume's I/O on a 2-core machine.

Skips with a message when the sds binary has no NVMe/TCP target (`serve --nvmf-listen`).

Usage: bench/nvmf_speed.py [--quick] [--repeat N] [--runtime S] [--size 1G] [--sds PATH]
                           [--only TEXT] [--poll busy|adaptive] [--client-poll busy|adaptive]
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import fill, fio  # noqa: E402
from processes import CLIENT_CPUS, SERVER_CPUS, cpu_seconds, free_port, prefill, stop, wait_port  # noqa: E402
from run_options import ROOT, add_run_options, resolve_runs, load_average, medians, sds_binary  # noqa: E402

# (name, rw, bs, QD, NVMe/TCP I/O queues). NBD rows run the same rw/bs/QD on one connection.
JOBS = [
    ("4k randread QD32", "randread", "4k", 32, 1),
    ("4k randread QD32 2q", "randread", "4k", 32, 2),
    ("4k randwrite QD32", "randwrite", "4k", 32, 1),
    ("4k randwrite QD32 2q", "randwrite", "4k", 32, 2),
    ("4k randread QD1", "randread", "4k", 1, 1),
]
HOST = "bench"
HOSTNQN = "nqn.2026-11.org.sds:bench-initiator"


def rpc(binary, sock, method, params):
    out = subprocess.run([binary, "--socket", sock, "rpc", method, json.dumps(params)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"sds {method} {params}: {out.stderr.strip() or out.stdout.strip()}")
    return json.loads(out.stdout) if out.stdout.strip() else None


def subsystem_of(binary, sock, host):
    """The NQN of `host`'s subsystem (one per host, `<base>:<host>`), from nvmf_get_subsystems."""
    for subsystem in rpc(binary, sock, "nvmf_get_subsystems", {}) or []:
        if subsystem.get("nqn", "").endswith(f":{host}"):
            return subsystem["nqn"]
    raise RuntimeError(f"no NVMe/TCP subsystem for host {host}")


def perf(binary, url, nsid, job, runtime, poll):
    """One sds perf --target run on namespace `nsid`, on the client cores; its figures."""
    _, rw, bs, qd, queues = job
    cores = CLIENT_CPUS.split(",")[:queues]
    cmd = [binary, "perf", "--json", "--target", url, "--hostnqn", HOSTNQN, "--nsid", str(nsid), "--rw", rw, "--bs", bs,
           "--qd", str(qd), "--queues", str(queues), "--cores", ",".join(cores), "--poll", poll,
           "--time", str(runtime), "--ramp", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"sds perf {url}: {out.stderr.strip()[-500:]}")
    report = json.loads(out.stdout)
    return dict(iops=report["iops"], mbps=report["mb_per_sec"], p50_us=report["latency_us"]["p50"],
                p99_us=report["latency_us"]["p99"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(ap)
    ap.add_argument("--poll", choices=("busy", "adaptive"), default="busy", help="the server's reactor poll mode")
    ap.add_argument("--client-poll", choices=("busy", "adaptive"), default="adaptive",
                    help="sds perf's reactor poll mode (fio, the NBD client, never spins)")
    ap.add_argument("--out", help="table file (default bench/last-nvmf-speed.txt)")
    args = ap.parse_args()
    jobs, size = resolve_runs(args, JOBS)
    binary = sds_binary(args)
    help_text = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True).stdout
    if "--nvmf-listen" not in help_text:
        print(f"skipped: {binary} has no NVMe/TCP target (serve --nvmf-listen)")
        return
    out_path = args.out or os.path.join(ROOT, "bench/last-nvmf-speed.txt")

    tmp = tempfile.mkdtemp(prefix="sds-nvmf-speed-")
    server = None
    try:
        backing = os.path.join(tmp, "backing.img")
        print(f"filling a {(size + (64 << 20)) >> 20} MiB backing file ...", flush=True)
        prefill(backing, size + (64 << 20))
        state = os.path.join(tmp, "state")
        os.makedirs(state)
        sock = os.path.join(state, "sds.sock")
        nbd_port, nvmf_port = free_port(), free_port()
        cmd = ["taskset", "-c", SERVER_CPUS, binary, "serve", "--state-dir", state, "--nbd-listen",
               f"127.0.0.1:{nbd_port}", "--iscsi-listen", "none", "--nvmf-listen", f"127.0.0.1:{nvmf_port}",
               "--cores", SERVER_CPUS, "--poll", args.poll, "--log-level", "warn"]
        log = open(os.path.join(tmp, "sds.log"), "w")
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(nvmf_port, server)
        deadline = time.time() + 20
        while not os.path.exists(sock) and time.time() < deadline:
            time.sleep(0.05)
        for name, kind in (("vol", "file"), ("ramvol", "mem")):
            lun = {"name": f"{name}-lun", "kind": kind, "block_size": 4096}
            if kind == "file":
                lun["path"] = backing
            else:
                lun["size"] = size + (64 << 20)
            rpc(binary, sock, "lun_create", lun)
            rpc(binary, sock, "pool_create", {"name": f"{name}-pool", "luns": [f"{name}-lun"]})
            rpc(binary, sock, "volume_create", {"name": name, "pool": f"{name}-pool", "size": size})
        rpc(binary, sock, "host_create", {"name": HOST, "addresses": ["127.0.0.1/32"], "nqn": HOSTNQN})
        # NSID = VP lun + 1: the file volume is namespace 1, the RAM volume namespace 2.
        rpc(binary, sock, "vpath_create", {"host": HOST, "volume": "vol", "lun": 0})
        rpc(binary, sock, "vpath_create", {"host": HOST, "volume": "ramvol", "lun": 1})
        subnqn = subsystem_of(binary, sock, HOST)
        print("filling the volumes over NBD (thin: map every extent before reading) ...", flush=True)
        for volume in ("vol", "ramvol"):
            fill(f"nbd://127.0.0.1:{nbd_port}/{volume}", size)
        targets = {
            "file": (f"nbd://127.0.0.1:{nbd_port}/vol", 1),
            "ram": (f"nbd://127.0.0.1:{nbd_port}/ramvol", 2),
        }
        results = {}
        for round_index in range(args.repeat):
            for job in jobs:
                for backing_name, (nbd_uri, nsid) in targets.items():
                    runs = [("nbd", None)] if job[4] == 1 else []
                    runs.append(("nvme-tcp", nsid))
                    for proto, ns in runs:
                        before = cpu_seconds(server.pid)
                        if proto == "nbd":
                            r = fio(nbd_uri, size, args.runtime, 0, dict(rw=job[1], bs=job[2], iodepth=job[3]))
                            window = args.runtime + 1
                        else:
                            url = f"nvme-tcp://127.0.0.1:{nvmf_port}/{subnqn}"
                            r = perf(binary, url, ns, job, args.runtime, args.client_poll)
                            window = args.runtime + 1
                        r["cpu_s"] = cpu_seconds(server.pid) - before
                        r["iops_per_cpu_s"] = r["iops"] * window / r["cpu_s"] if r["cpu_s"] > 0 else 0.0
                        results.setdefault((job[0], backing_name, proto), []).append(r)
                        print(f"round {round_index + 1} {job[0]:22} {backing_name:4} {proto:8} {r['iops']:>9.0f} IOPS "
                              f"p50 {r['p50_us']:7.1f} us  server cpu {r['cpu_s']:5.2f} s", flush=True)
    finally:
        if server:
            stop(server, 20)
        shutil.rmtree(tmp, ignore_errors=True)

    med = medians(results)
    header = (f"{'job':22} {'volume':6} {'proto':8} {'IOPS':>9} {'MB/s':>8} {'p50 us':>8} {'p99 us':>8} "
              f"{'srv CPU s':>9} {'IOPS/CPU-s':>11} {'IOPS x':>7} {'eff x':>6}")
    lines = [f"sds perf --target nvme-tcp vs fio nbd engine, same sds server and volumes, {size >> 20} MiB, "
             f"medians of {args.repeat} rounds of {args.runtime} s; ratios are NVMe/TCP / NBD (1q rows of the job)",
             f"server pinned to cpu {SERVER_CPUS} (one reactor, --poll {args.poll}), clients to cpu {CLIENT_CPUS} "
             f"(sds perf --poll {args.client_poll})",
             f"load average at the end: {load_average()}", "", header, "-" * len(header)]
    for job in jobs:
        for backing_name in ("file", "ram"):
            nbd_key = next(((k[0], backing_name, "nbd") for k in med if k[1] == backing_name and k[2] == "nbd"
                            and k[0] == job[0].replace(" 2q", "")), None)
            for proto in ("nbd", "nvme-tcp"):
                key = (job[0], backing_name, proto)
                if key not in med:
                    continue
                m = med[key]
                base = med.get(nbd_key) if nbd_key else None
                ratio = f"{m['iops'] / base['iops']:7.2f}" if base and base["iops"] else f"{'':7}"
                eff = (f"{m['iops_per_cpu_s'] / base['iops_per_cpu_s']:6.2f}"
                       if base and base["iops_per_cpu_s"] else f"{'':6}")
                lines.append(f"{job[0]:22} {backing_name:6} {proto:8} {m['iops']:>9.0f} {m['mbps']:>8.1f} "
                             f"{m['p50_us']:>8.1f} {m['p99_us']:>8.1f} {m['cpu_s']:>9.2f} {m['iops_per_cpu_s']:>11.0f} "
                             f"{ratio} {eff}")
    table = "\n".join(lines)
    print("\n" + table)
    with open(out_path, "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
