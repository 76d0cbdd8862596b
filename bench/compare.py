#!/usr/bin/env python3
"""Side-by-side NBD benchmark: sds against nbdkit and qemu-nbd on the same pre-filled file,
and an sds RAM volume against nbdkit's memory plugin. The same fio jobs run against every
server, interleaved A B A B over several rounds; the table gives medians and sds/peer ratios,
including IOPS per server CPU-second (on a 2-core machine the client and the transport cap raw
IOPS, so CPU efficiency and QD1 latency tell servers apart; see the README's Benchmarks).

Usage: bench/compare.py [--quick] [--repeat N] [--runtime S] [--size 1G] [--sds PATH] [--only TEXT]
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from processes import CLIENT_CPUS, SERVER_CPUS, cpu_seconds, free_port, prefill, stop, wait_port  # noqa: E402
from run_options import ROOT, add_run_options, resolve_runs, load_average, medians, sds_binary  # noqa: E402

JOBS = [
    ("4k randread QD32", dict(rw="randread", bs="4k", iodepth=32)),
    ("4k randwrite QD32", dict(rw="randwrite", bs="4k", iodepth=32)),
    ("128k seqread QD8", dict(rw="read", bs="128k", iodepth=8)),
    ("4k randread QD1", dict(rw="randread", bs="4k", iodepth=1)),
]
# Peers work above this offset so they never touch the sds pool's superblock and records.
PEER_OFFSET = 16 << 20


def fio(uri, size, runtime, offset, job):
    cmd = ["taskset", "-c", CLIENT_CPUS, "fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--size={size}",
           f"--offset={offset}", "--time_based", f"--runtime={runtime}", "--ramp_time=1",
           "--lat_percentiles=1", "--output-format=json", "--norandommap", "--randrepeat=0",
           f"--rw={job['rw']}", f"--bs={job['bs']}", f"--iodepth={job['iodepth']}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    data = json.loads(out[out.index("{"):])["jobs"][0]
    side = data["read"] if job["rw"] in ("randread", "read") else data["write"]
    pct = side["lat_ns"].get("percentile", {})
    return dict(iops=side["iops"], mbps=side["bw_bytes"] / 1e6,
                p50_us=pct.get("50.000000", 0) / 1000, p99_us=pct.get("99.000000", 0) / 1000)


class Server:
    def __init__(self, name, cmd, port, uri, offset, size, setup=None):
        self.name, self.cmd, self.port, self.uri, self.offset, self.size = name, cmd, port, uri, offset, size
        self.proc = subprocess.Popen(["taskset", "-c", SERVER_CPUS, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_port(port, self.proc)
        if setup:
            setup(self)

    def run(self, job, runtime):
        before = cpu_seconds(self.proc.pid)
        result = fio(self.uri, self.size, runtime, self.offset, job)
        result["cpu_s"] = cpu_seconds(self.proc.pid) - before
        result["iops_per_cpu_s"] = result["iops"] * (runtime + 1) / result["cpu_s"] if result["cpu_s"] > 0 else 0.0
        return result

    def stop(self):
        stop(self.proc)


def sds_rpc(sds, sock, *args):
    subprocess.run([sds, "--socket", sock, *args], check=True, capture_output=True)


def fill(uri, size, offset=0):
    subprocess.run(["taskset", "-c", CLIENT_CPUS, "fio", "--name=fill", "--ioengine=nbd", f"--uri={uri}", f"--size={size}",
                    f"--offset={offset}", "--rw=write", "--bs=1m", "--iodepth=8"], check=True, capture_output=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(ap)
    args = ap.parse_args()
    jobs, size = resolve_runs(args, JOBS)
    sds = sds_binary(args)
    for tool in ("fio", "nbdkit", "qemu-nbd"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: run scripts/setup.sh")

    tmp = tempfile.mkdtemp(prefix="sds-bench-")
    servers = []
    try:
        backing = os.path.join(tmp, "backing.img")
        file_bytes = size + 2 * PEER_OFFSET
        print(f"filling a {file_bytes >> 20} MiB backing file ...", flush=True)
        prefill(backing, file_bytes)
        state = os.path.join(tmp, "state")
        sock = os.path.join(state, "sds.sock")
        port = free_port()

        def sds_setup(server):
            deadline = time.time() + 20
            while not os.path.exists(sock) and time.time() < deadline:
                time.sleep(0.05)
            sds_rpc(sds, sock, "lun", "create", "file0", "--kind", "file", "--path", backing, "--block-size", "4096")
            sds_rpc(sds, sock, "pool", "create", "pool0", "--lun", "file0")
            sds_rpc(sds, sock, "volume", "create", "vol", "--pool", "pool0", "--size", str(size))
            sds_rpc(sds, sock, "lun", "create", "ram0", "--kind", "mem", "--size", str(size + (64 << 20)), "--block-size", "4096")
            sds_rpc(sds, sock, "pool", "create", "rampool", "--lun", "ram0")
            sds_rpc(sds, sock, "volume", "create", "ramvol", "--pool", "rampool", "--size", str(size))
            # The client (this machine) reaches the volumes only through virtual paths.
            sds_rpc(sds, sock, "rpc", "host_create", json.dumps({"name": "bench", "addresses": ["127.0.0.1/32"]}))
            for volume in ("vol", "ramvol"):
                sds_rpc(sds, sock, "rpc", "vpath_create", json.dumps({"host": "bench", "volume": volume}))
            print("filling the sds volumes (thin: map every extent before reading) ...", flush=True)
            fill(f"nbd://127.0.0.1:{port}/vol", size)
            fill(f"nbd://127.0.0.1:{port}/ramvol", size)

        sds_server = Server("sds", [sds, "serve", "--state-dir", state, "--nbd-listen", f"127.0.0.1:{port}", "--iscsi-listen", "none", "--nvmf-listen", "none", "--log-level", "warn"],
                            port, f"nbd://127.0.0.1:{port}/vol", 0, size, sds_setup)
        servers.append(sds_server)
        sds_ram = Server.__new__(Server)
        sds_ram.__dict__.update(sds_server.__dict__, name="sds-ram", uri=f"nbd://127.0.0.1:{port}/ramvol")
        p = free_port()
        nbdkit = Server("nbdkit", ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(p), "file", backing, "cache=none", "fadvise=random"],
                        p, f"nbd://127.0.0.1:{p}/", PEER_OFFSET, size)
        servers.append(nbdkit)
        p = free_port()
        # sds holds qemu's own image locks on its file LUN (so that qemu and sds never share a
        # file by accident); here they share it on purpose, each in its own part of it.
        qemu = Server("qemu-nbd", ["qemu-nbd", "-t", "-e", "8", "--cache=none", "--aio=io_uring",
                                   "-b", "127.0.0.1", "-p", str(p), "--image-opts",
                                   f"driver=raw,file.driver=file,file.filename={backing},file.locking=off"],
                      p, f"nbd://127.0.0.1:{p}/", PEER_OFFSET, size)
        servers.append(qemu)
        p = free_port()
        nbdkit_mem = Server("nbdkit-mem", ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(p), "memory", str(size)],
                            p, f"nbd://127.0.0.1:{p}/", 0, size)
        servers.append(nbdkit_mem)
        print("filling nbdkit's memory disk ...", flush=True)
        fill(nbdkit_mem.uri, size)

        groups = [("file", [sds_server, nbdkit, qemu]), ("ram", [sds_ram, nbdkit_mem])]
        results = {}
        for round_index in range(args.repeat):
            for job_name, job in jobs:
                for _, members in groups:
                    for server in members:
                        r = server.run(job, args.runtime)
                        results.setdefault((job_name, server.name), []).append(r)
                        print(f"round {round_index + 1} {job_name:18} {server.name:10} {r['iops']:>9.0f} IOPS "
                              f"p50 {r['p50_us']:7.1f} us  cpu {r['cpu_s']:5.2f} s", flush=True)

        med = medians(results)
        header = f"{'job':18} {'server':10} {'IOPS':>9} {'MB/s':>8} {'p50 us':>8} {'p99 us':>8} {'CPU s':>6} {'IOPS/CPU-s':>11} {'IOPS x':>7} {'eff x':>6}"
        print("\n" + header + "\n" + "-" * len(header))
        for job_name, _ in jobs:
            for group, members in groups:
                peers = [s.name for s in members if not s.name.startswith("sds")]
                best = max(peers, key=lambda n: med[(job_name, n)]["iops"])
                for server in members:
                    m = med[(job_name, server.name)]
                    ratio = eff = ""
                    if server.name.startswith("sds"):
                        b = med[(job_name, best)]
                        ratio = f"{m['iops'] / b['iops']:.2f}" if b["iops"] else "-"
                        eff = f"{m['iops_per_cpu_s'] / b['iops_per_cpu_s']:.2f}" if b["iops_per_cpu_s"] else "-"
                    print(f"{job_name:18} {server.name:10} {m['iops']:>9.0f} {m['mbps']:>8.1f} {m['p50_us']:>8.1f} "
                          f"{m['p99_us']:>8.1f} {m['cpu_s']:>6.2f} {m['iops_per_cpu_s']:>11.0f} {ratio:>7} {eff:>6}")
        print(f"\nmedians of {args.repeat} rounds, {args.runtime} s each; ratios are sds / the better peer "
              "(nbdkit or qemu-nbd for the file, nbdkit memory for RAM)")
        out_dir = os.path.join(ROOT, "bench/results")
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "latest.json"), "w") as f:
            json.dump({f"{j} | {s}": v for (j, s), v in med.items()}, f, indent=2)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
