#!/usr/bin/env python3
"""Synchronous mirrors: what a two-leg mirror costs against a plain volume on the same LUNs, and
how fast a resync copies. On RAM LUNs (`mem`) and on file LUNs (O_DIRECT, same disk):

- 4k randwrite QD32 through NBD (fio's nbd engine) on a plain volume in pool A and on a mirror
  whose legs are in pool A (same LUN as the plain volume) and pool B; rounds interleaved, medians.
  The issue's aim: mirror >= 0.8x the plain volume's IOPS.
- Resync: a leg split off and added back (`mirror_add_leg`: a full copy of the volume while
  nothing else runs); its rate is what `mirror_get_mirrors` reports at the end (bytes copied /
  time). The reference is the LUN's sequential bandwidth measured by fio on the same medium (1 MiB
  writes, QD8, O_DIRECT on a file beside the LUNs; a file in /dev/shm for RAM): the aim is a
  resync >= 0.7x that.

The server runs on the last core (`taskset`, one reactor), fio on the others. The table is printed
and written to bench/last-mirror-speed.txt.

Usage: bench/mirror_speed.py [--quick] [--repeat N] [--runtime S] [--size 1G] [--sds PATH]
                             [--only TEXT]
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import fill, fio  # noqa: E402
from processes import CLIENT_CPUS, SERVER_CPUS, free_port, prefill, stop, wait_port  # noqa: E402
from run_options import ROOT, add_run_options, resolve_runs, load_average, medians, sds_binary  # noqa: E402

JOBS = [("4k randwrite QD32", dict(rw="randwrite", bs="4k", iodepth=32))]
HOST = "bench"


def rpc(binary, sock, method, params):
    out = subprocess.run([binary, "--socket", sock, "rpc", method, json.dumps(params)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"sds {method} {params}: {out.stderr.strip() or out.stdout.strip()}")
    return json.loads(out.stdout) if out.stdout.strip() else None


def seq_write_mbps(path, size, direct):
    """fio's sequential 1 MiB write bandwidth (QD8) on a scratch file `path` of `size` bytes."""
    cmd = ["taskset", "-c", CLIENT_CPUS, "fio", "--name=seq", f"--filename={path}", f"--size={size}", "--rw=write",
           "--bs=1m", "--iodepth=8", "--ioengine=libaio" if direct else "--ioengine=psync", f"--direct={int(direct)}",
           "--output-format=json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    data = json.loads(out[out.index("{"):])["jobs"][0]
    os.unlink(path)
    return data["write"]["bw_bytes"] / 1e6


def resync_mbps(binary, sock, mirror, leg):
    """Splits `leg` off `mirror` and adds it back; the full copy's rate in MB/s."""
    rpc(binary, sock, "mirror_split_leg", {"mirror": mirror, "leg": leg})
    rpc(binary, sock, "mirror_add_leg", {"mirror": mirror, "volume": leg})
    deadline = time.time() + 600
    while time.time() < deadline:
        m = rpc(binary, sock, "mirror_get_mirrors", {"name": mirror})[0]
        if m["state"] == "healthy" and not m["resync"]["running"]:
            return m["resync"]["rate_bytes_per_s"] / 1e6
        time.sleep(0.1)
    raise RuntimeError(f"mirror {mirror} did not become healthy")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(ap)
    ap.add_argument("--out", help="table file (default bench/last-mirror-speed.txt)")
    ap.add_argument("--kinds", default="mem,file", help="LUN kinds to run on (mem, file)")
    args = ap.parse_args()
    jobs, size = resolve_runs(args, JOBS)
    binary = sds_binary(args)
    out_path = args.out or os.path.join(ROOT, "bench/last-mirror-speed.txt")
    kinds = [k for k in args.kinds.split(",") if k]

    tmp = tempfile.mkdtemp(prefix="sds-mirror-speed-")
    shm = tempfile.mkdtemp(prefix="sds-mirror-speed-", dir="/dev/shm")
    server = None
    results, reference = {}, {}
    try:
        # Pool A holds the plain volume and one leg, pool B the other leg.
        lun_bytes = {"A": 2 * size + (64 << 20), "B": size + (64 << 20)}
        if "file" in kinds:
            print("measuring the disk's sequential write bandwidth, filling the LUN files ...", flush=True)
            reference["file"] = seq_write_mbps(os.path.join(tmp, "scratch"), size, True)
            for pool, nbytes in lun_bytes.items():
                prefill(os.path.join(tmp, f"file-{pool}.img"), nbytes)
        if "mem" in kinds:
            reference["mem"] = seq_write_mbps(os.path.join(shm, "scratch"), size, False)
        state = os.path.join(tmp, "state")
        os.makedirs(state)
        sock = os.path.join(state, "sds.sock")
        port = free_port()
        cmd = ["taskset", "-c", SERVER_CPUS, binary, "serve", "--state-dir", state, "--nbd-listen", f"127.0.0.1:{port}",
               "--iscsi-listen", "none", "--nvmf-listen", "none", "--cores", SERVER_CPUS, "--log-level", "warn"]
        log = open(os.path.join(tmp, "sds.log"), "w")
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(port, server)
        rpc(binary, sock, "host_create", {"name": HOST, "addresses": ["127.0.0.1/32"]})
        targets = {}
        for kind in kinds:
            for pool, nbytes in lun_bytes.items():
                lun = {"name": f"{kind}-{pool}", "kind": kind, "block_size": 4096}
                if kind == "file":
                    lun["path"] = os.path.join(tmp, f"file-{pool}.img")
                else:
                    lun["size"] = nbytes
                rpc(binary, sock, "lun_create", lun)
                rpc(binary, sock, "pool_create", {"name": f"{kind}-p{pool}", "luns": [f"{kind}-{pool}"]})
            for volume, pool in ((f"{kind}-plain", "A"), (f"{kind}-legA", "A"), (f"{kind}-legB", "B")):
                rpc(binary, sock, "volume_create", {"name": volume, "pool": f"{kind}-p{pool}", "size": size})
            rpc(binary, sock, "mirror_create", {"name": f"{kind}-mirror", "legs": [f"{kind}-legA", f"{kind}-legB"]})
            for volume in (f"{kind}-plain", f"{kind}-mirror"):
                rpc(binary, sock, "vpath_create", {"host": HOST, "volume": volume})
                uri = f"nbd://127.0.0.1:{port}/{volume}"
                print(f"filling {volume} ...", flush=True)
                fill(uri, size)
                targets[(kind, "plain" if volume.endswith("plain") else "mirror")] = uri
        for round_index in range(args.repeat):
            for name, job in jobs:
                for (kind, what), uri in targets.items():
                    r = fio(uri, size, args.runtime, 0, job)
                    results.setdefault((name, kind, what), []).append(r)
                    print(f"round {round_index + 1} {name} {kind:4} {what:6} {r['iops']:>9.0f} IOPS "
                          f"p50 {r['p50_us']:7.1f} us", flush=True)
            for kind in kinds:
                mbps = resync_mbps(binary, sock, f"{kind}-mirror", f"{kind}-legB")
                results.setdefault(("resync", kind, "mirror"), []).append(dict(mbps=mbps))
                print(f"round {round_index + 1} resync {kind:4} {mbps:9.1f} MB/s "
                      f"(sequential write {reference[kind]:.1f} MB/s)", flush=True)
    finally:
        if server:
            stop(server, 20)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)

    med = medians(results)
    lines = [f"two-leg mirror vs plain volume on the same LUNs, {size >> 20} MiB volumes, medians of {args.repeat} "
             f"rounds of {args.runtime} s; server on cpu {SERVER_CPUS}, fio on cpu {CLIENT_CPUS}",
             f"load average at the end: {load_average()}", "",
             f"{'job':20} {'LUNs':5} {'plain IOPS':>11} {'mirror IOPS':>12} {'mirror/plain':>13}"]
    for name, _ in jobs:
        for kind in kinds:
            plain, mirror = med.get((name, kind, "plain")), med.get((name, kind, "mirror"))
            if plain and mirror:
                lines.append(f"{name:20} {kind:5} {plain['iops']:>11.0f} {mirror['iops']:>12.0f} "
                             f"{mirror['iops'] / plain['iops']:>12.2f}x")
    lines += ["", f"{'resync (full copy)':20} {'LUNs':5} {'MB/s':>11} {'seq write MB/s':>15} {'ratio':>7}"]
    for kind in kinds:
        r = med.get(("resync", kind, "mirror"))
        if r:
            lines.append(f"{'':20} {kind:5} {r['mbps']:>11.1f} {reference[kind]:>15.1f} "
                         f"{r['mbps'] / reference[kind]:>6.2f}x")
    table = "\n".join(lines)
    print("\n" + table)
    with open(out_path, "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
