#!/usr/bin/env python3
"""What a first write after a snapshot costs, against a plain overwrite (fio over NBD).

A snapshot copies nothing when it is taken; the first write to each extent the origin then
shares with it copies the whole extent (read it, write the copy, commit its record, on the
provisioning thread) before the write itself runs. Two measures, on a file-LUN volume
filled beforehand (every extent mapped), each run once plain and once right after a fresh
snapshot:

  first write per extent, QD1: one 4 KiB write at the start of every extent (fio
      rw=write:<extent - 4k>), so after a snapshot every write pays one copy: mean latency;
  4k randwrite QD32, a few seconds: what a workload sees right after a snapshot (every
      extent copied once, early in the run): IOPS.

The ratio after / plain is the cost. Rounds alternate plain and after; medians are reported.

Usage: bench/snapshot_cost.py [--repeat 3] [--size 256M] [--extent-size 1M] [--time 5]
                              [--sds PATH] [--json FILE]
"""
import argparse, json, os, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "bench"


def rpc(binary, sock, method, params):
    out = subprocess.run([binary, "--socket", sock, "rpc", method, json.dumps(params)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"sds {method} {params}: {out.stderr.strip() or out.stdout.strip()}")
    return json.loads(out.stdout) if out.stdout.strip() else None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def size_bytes(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def fio(uri, args):
    cmd = ["fio", "--name=job", "--ioengine=nbd", f"--uri={uri}", "--output-format=json", *args]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}:\n{out.stderr}{out.stdout}")
    job = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]["write"]
    return {"iops": job["iops"], "lat_us": job["clat_ns"]["mean"] / 1000.0}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", default="256M", help="volume size")
    parser.add_argument("--extent-size", default="1M")
    parser.add_argument("--time", type=int, default=5, help="seconds of the randwrite runs")
    parser.add_argument("--sds", help="the sds binary [default: build target/release/sds]")
    parser.add_argument("--json", help="also write the results to this file")
    opts = parser.parse_args()
    binary = opts.sds
    if not binary:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        binary = os.path.join(ROOT, "target", "release", "sds")
    size, extent = size_bytes(opts.size), size_bytes(opts.extent_size)
    tmp = tempfile.mkdtemp(prefix="sds-snapshot-cost-")
    state = os.path.join(tmp, "state")
    sock = os.path.join(state, "sds.sock")
    port = free_port()
    log = open(os.path.join(tmp, "sds.log"), "w")
    server = subprocess.Popen([binary, "serve", "--state-dir", state, "--nbd-listen",
                               f"127.0.0.1:{port}", "--iscsi-listen", "none", "--nvmf-listen",
                               "none", "--log-level", "warn"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 20
        while not os.path.exists(sock) and time.time() < deadline:
            time.sleep(0.05)
        # Room for the volume, one full copy of it and the metadata.
        rpc(binary, sock, "lun_create", {"name": "l", "kind": "file", "size": 3 * size,
                                         "path": os.path.join(tmp, "lun.img")})
        rpc(binary, sock, "pool_create", {"name": "p", "luns": ["l"], "extent_size": extent})
        rpc(binary, sock, "volume_create", {"name": "v", "pool": "p", "size": size})
        rpc(binary, sock, "host_create", {"name": HOST, "addresses": ["127.0.0.1/32"]})
        rpc(binary, sock, "vpath_create", {"host": HOST, "volume": "v"})
        uri = f"nbd://127.0.0.1:{port}/v"
        fio(uri, ["--rw=write", "--bs=1M", "--iodepth=4", f"--size={size}"])
        per_extent = ["--rw=write:%d" % (extent - 4096), "--bs=4k", "--iodepth=1",
                      f"--size={size}"]
        randwrite = ["--rw=randwrite", "--bs=4k", "--iodepth=32", f"--size={size}",
                     "--time_based=1", f"--runtime={opts.time}"]
        results = {k: [] for k in ("first_plain", "first_after", "rand_plain", "rand_after")}
        snapshots = 0

        def free_extents():
            return rpc(binary, sock, "pool_get_pools", {"name": "p"})[0]["free_extents"]

        def after_snapshot(args):
            nonlocal snapshots
            snapshots += 1
            name = f"s{snapshots}"
            rpc(binary, sock, "snapshot_create", {"volume": "v", "name": name})
            free = free_extents()
            result = fio(uri, args)
            # The extents copied: proof that the run paid for copy-on-write.
            result["copied_extents"] = free - free_extents()
            rpc(binary, sock, "snapshot_delete", {"name": name})
            return result

        for round_index in range(opts.repeat):
            results["first_plain"].append(fio(uri, per_extent))
            results["first_after"].append(after_snapshot(per_extent))
            if results["first_after"][-1]["copied_extents"] != size // extent:
                raise RuntimeError(f"expected {size // extent} extents copied: {results['first_after'][-1]}")
            results["rand_plain"].append(fio(uri, randwrite))
            results["rand_after"].append(after_snapshot(randwrite))
            print(f"round {round_index + 1}: " + ", ".join(
                f"{k} {v[-1]['iops']:.0f} IOPS {v[-1]['lat_us']:.0f} us" for k, v in results.items()),
                flush=True)
        med = {k: {m: statistics.median(r[m] for r in v) for m in ("iops", "lat_us")}
               for k, v in results.items()}
        summary = {
            "extent_bytes": extent,
            "volume_bytes": size,
            "first_write_latency_us": {"plain": med["first_plain"]["lat_us"],
                                       "after_snapshot": med["first_after"]["lat_us"]},
            "first_write_cost_ratio": med["first_after"]["lat_us"] / med["first_plain"]["lat_us"],
            "randwrite_qd32_iops": {"plain": med["rand_plain"]["iops"],
                                    "after_snapshot": med["rand_after"]["iops"]},
            "randwrite_qd32_ratio": med["rand_after"]["iops"] / med["rand_plain"]["iops"],
            "extents_copied_per_run": results["first_after"][-1]["copied_extents"],
        }
        print(json.dumps(summary, indent=2))
        if opts.json:
            with open(opts.json, "w") as f:
                json.dump({"summary": summary, "runs": results}, f, indent=2)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
