#!/usr/bin/env python3
"""LUNs of other arrays: what going through sds costs. Two foreign arrays, each measured straight
and through sds on the same LUN:

- iscsi: tgtd (Debian's tgt) with one LUN. "direct" is fio's libiscsi engine straight to tgtd's
  LUN; "sds-nbd" is a volume of an sds pool whose only LUN is that tgtd LUN (a remote `iscsi`
  LUN), served by sds over NBD to fio's nbd engine; "sds-iscsi" is the same volume through sds's
  own iSCSI target to fio's libiscsi engine (the same client engine as "direct").
- nbd: a second sds process is the array, exporting a volume over NBD. "direct" is fio's nbd
  engine straight to that export; "sds-nbd" is a volume of a pool on it (a remote `nbd` LUN),
  served by the first sds over NBD.

The direct jobs run on the array's LUN above the pool's own records (`PEER_OFFSET`), so they
never touch the pool's superblock or journal. Rounds interleave direct and through-sds runs
(A B A B) and medians are quoted; the issue's aim is a ratio >= 0.9x. The arrays run on the last
core (`taskset`), the sds in the middle on the same core with one reactor (`--poll adaptive`),
fio on the others: the middle sds competes with the array for its core, as a second box would
not. Its CPU time per I/O is reported too.

Needs a fio with the libiscsi engine (scripts/build-fio-libiscsi.sh builds target/tools/fio; it
has the nbd engine too, so every row uses the same fio). The table is printed and written to
bench/last-remote-speed.txt.

Usage: bench/remote_lun_speed.py [--quick] [--repeat N] [--runtime S] [--size 1G] [--sds PATH]
                                 [--only TEXT] [--arrays iscsi,nbd] [--backing ram|file]
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iscsi_peers import FIO_INITIATOR, Tgtd, escape  # noqa: E402
from processes import CLIENT_CPUS, SERVER_CPUS, cpu_seconds, free_port, prefill, stop, wait_port  # noqa: E402
from run_options import BLOCK_JOBS, ROOT, add_run_options, resolve_runs, load_average, medians, sds_binary, write_report  # noqa: E402

JOBS = BLOCK_JOBS
SDS_TARGET = "iqn.2026-11.org.sds.bench:remote"
# The pool's superblock, records and journal sit at the start of its LUN: direct jobs stay
# above this offset. The array's LUN is this much larger than the volume.
PEER_OFFSET = 64 << 20
HOST = "bench"


class Sds:
    """An sds process on a free NBD port (and iSCSI port if `iscsi`), its RPCs through the CLI."""

    def __init__(self, binary, state_dir, log, iscsi=False, prefix=()):
        self.binary = binary
        self.state = state_dir
        os.makedirs(state_dir, exist_ok=True)
        self.socket = os.path.join(state_dir, "sds.sock")
        self.port = free_port()
        self.iscsi_port = free_port() if iscsi else None
        self.log = open(log, "w")
        cmd = [*prefix, binary, "serve", "--state-dir", state_dir, "--nbd-listen", f"127.0.0.1:{self.port}",
               "--iscsi-listen", f"127.0.0.1:{self.iscsi_port}" if iscsi else "none",
               "--iscsi-target-name", SDS_TARGET, "--nvmf-listen", "none",
               "--cores", SERVER_CPUS, "--poll", "adaptive", "--log-level", "warn"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.port, self.proc)
        deadline = time.time() + 30
        while not os.path.exists(self.socket):
            if time.time() > deadline:
                raise RuntimeError(f"sds at {state_dir} opened no RPC socket")
            time.sleep(0.05)
        self.pid = self.proc.pid
        self.rpc("host_create", {"name": HOST, "addresses": ["127.0.0.1/32"]})

    def rpc(self, method, params):
        out = subprocess.run([self.binary, "--socket", self.socket, "rpc", method, json.dumps(params)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"sds {method} {params}: {out.stderr.strip() or out.stdout.strip()}")
        return json.loads(out.stdout) if out.stdout.strip() else None

    def pool_volume(self, name, lun, size):
        """Pool `{name}-pool` on LUN `lun` (already made) and volume `name` of `size` bytes, with an
        NBD virtual path for the bench host; returns its NBD URI."""
        self.rpc("pool_create", {"name": f"{name}-pool", "luns": [lun]})
        self.rpc("volume_create", {"name": name, "pool": f"{name}-pool", "size": size})
        self.rpc("vpath_create", {"host": HOST, "volume": name})
        return f"nbd://127.0.0.1:{self.port}/{name}"

    def iscsi_export(self, volume):
        """A host for fio's initiator name with a VP to `volume` at LUN 0; its libiscsi URL."""
        self.rpc("host_create", {"name": "fio", "iqn": FIO_INITIATOR})
        self.rpc("vpath_create", {"host": "fio", "volume": volume, "lun": 0})
        return f"iscsi://127.0.0.1:{self.iscsi_port}/{SDS_TARGET}/0"

    def wait_connected(self, lun, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            described = self.rpc("lun_get_luns", {"name": lun})[0]
            if described.get("remote", {}).get("state") == "connected":
                return described
            time.sleep(0.1)
        raise RuntimeError(f"remote LUN {lun} never connected: {described}")

    def stop(self):
        stop(self.proc, 20)
        self.log.close()


class Target:
    """One way to the data: `engine` (libiscsi or nbd) at `url`, `size` bytes from `offset`;
    `cpu_pid` is the process whose CPU time the run is charged (the sds in the middle)."""

    def __init__(self, name, engine, url, size, offset=0, cpu_pid=None):
        self.name, self.engine, self.url, self.size, self.offset, self.cpu_pid = name, engine, url, size, offset, cpu_pid


def run_fio(fio_binary, target, extra):
    where = ([f"--filename={escape(target.url)}", f"--initiator={FIO_INITIATOR}"] if target.engine == "libiscsi"
             else [f"--uri={target.url}"])
    cmd = ["taskset", "-c", CLIENT_CPUS, fio_binary, "--name=bench", f"--ioengine={target.engine}", *where,
           f"--size={target.size}", f"--offset={target.offset}", "--output-format=json", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"fio on {target.url}: {out.stderr.strip()[-500:]}")
    return out.stdout


def fill(fio_binary, target):
    """Writes the whole target once (a thin volume reads never-written blocks without I/O)."""
    run_fio(fio_binary, target, ["--rw=write", "--bs=1m", "--iodepth=8"])


def run_job(fio_binary, target, job, runtime):
    before = cpu_seconds(target.cpu_pid) if target.cpu_pid else 0.0
    out = run_fio(fio_binary, target, ["--time_based", f"--runtime={runtime}", "--ramp_time=1", "--lat_percentiles=1",
                                       "--norandommap", "--randrepeat=0", f"--rw={job['rw']}", f"--bs={job['bs']}",
                                       f"--iodepth={job['iodepth']}"])
    cpu = cpu_seconds(target.cpu_pid) - before if target.cpu_pid else 0.0
    data = json.loads(out[out.index("{"):])["jobs"][0]
    side = data["read"] if job["rw"] in ("randread", "read") else data["write"]
    pct = side["lat_ns"].get("percentile", {})
    ios = side["iops"] * (runtime + 1)
    return dict(iops=side["iops"], mbps=side["bw_bytes"] / 1e6, p50_us=pct.get("50.000000", 0) / 1000,
                p99_us=pct.get("99.000000", 0) / 1000, sds_cpu_us_per_io=cpu * 1e6 / ios if ios else 0.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(ap)
    ap.add_argument("--fio", help="fio with the libiscsi engine (default target/tools/fio)")
    ap.add_argument("--out", help="table file (default bench/last-remote-speed.txt)")
    ap.add_argument("--arrays", default="iscsi,nbd", help="which foreign arrays: iscsi (tgtd), nbd (a second sds)")
    ap.add_argument("--backing", choices=("ram", "file"), default="ram",
                    help="the arrays' medium: a tmpfs file (default: the array is not the bottleneck) or a file")
    args = ap.parse_args()
    fio_binary = args.fio or os.path.join(os.environ.get("SDS_TOOLS", os.path.join(ROOT, "target/tools")), "fio")
    engines = subprocess.run([fio_binary, "--enghelp"], capture_output=True, text=True).stdout \
        if os.access(fio_binary, os.X_OK) else ""
    if "libiscsi" not in engines.split() or "nbd" not in engines.split():
        print(f"skipped: {fio_binary} is not a fio with the libiscsi and nbd engines; build it with "
              "scripts/build-fio-libiscsi.sh (Debian's fio has no libiscsi)")
        return
    arrays = [a for a in args.arrays.split(",") if a]
    if "iscsi" in arrays:
        for tool in ("tgtd", "tgtadm"):
            if not shutil.which(tool):
                sys.exit(f"{tool} not found: run scripts/setup.sh")
    jobs, size = resolve_runs(args, JOBS)
    binary = sds_binary(args)
    out_path = args.out or os.path.join(ROOT, "bench/last-remote-speed.txt")
    server_prefix = ["taskset", "-c", SERVER_CPUS]

    tmp = tempfile.mkdtemp(prefix="sds-remote-speed-")
    medium = tempfile.mkdtemp(prefix="sds-remote-speed-", dir="/dev/shm") \
        if args.backing == "ram" and os.path.isdir("/dev/shm") else tmp
    direct_io = medium == tmp
    lun_bytes = PEER_OFFSET + size + (64 << 20)
    servers, groups, notes = [], {}, []
    results = {}
    try:
        if "iscsi" in arrays:
            backing = os.path.join(medium, "tgtd.img")
            print(f"filling the tgtd LUN's {lun_bytes >> 20} MiB file ...", flush=True)
            prefill(backing, lun_bytes, direct=direct_io)
            tgtd = Tgtd(backing, prefix=server_prefix, log=os.path.join(tmp, "tgtd.log"))
            servers.append(tgtd)
            sds = Sds(binary, os.path.join(tmp, "sds-iscsi"), os.path.join(tmp, "sds-iscsi.log"), iscsi=True,
                      prefix=server_prefix)
            servers.append(sds)
            sds.rpc("lun_create", {"name": "tgtd", "kind": "iscsi", "url": tgtd.url})
            sds.wait_connected("tgtd")
            uri = sds.pool_volume("onto-tgtd", "tgtd", size)
            through_nbd = Target("sds-nbd", "nbd", uri, size, cpu_pid=sds.pid)
            through_iscsi = Target("sds-iscsi", "libiscsi", sds.iscsi_export("onto-tgtd"), size, cpu_pid=sds.pid)
            print("filling the volume on the tgtd LUN through sds ...", flush=True)
            fill(fio_binary, through_nbd)
            groups["iscsi"] = [Target("direct", "libiscsi", tgtd.url, size, PEER_OFFSET), through_nbd, through_iscsi]
        if "nbd" in arrays:
            array = Sds(binary, os.path.join(tmp, "array"), os.path.join(tmp, "array.log"), prefix=server_prefix)
            servers.append(array)
            if args.backing == "ram":
                array.rpc("lun_create", {"name": "medium", "kind": "mem", "size": lun_bytes + (64 << 20),
                                         "block_size": 4096})
            else:
                array.rpc("lun_create", {"name": "medium", "kind": "file", "size": lun_bytes + (64 << 20),
                                         "block_size": 4096, "path": os.path.join(medium, "array.img")})
            export = array.pool_volume("export", "medium", lun_bytes)
            direct = Target("direct", "nbd", export, size, PEER_OFFSET)
            print("filling the array's export ...", flush=True)
            fill(fio_binary, Target("fill", "nbd", export, lun_bytes))
            sds = Sds(binary, os.path.join(tmp, "sds-nbd"), os.path.join(tmp, "sds-nbd.log"), prefix=server_prefix)
            servers.append(sds)
            sds.rpc("lun_create", {"name": "array", "kind": "nbd", "uri": export})
            sds.wait_connected("array")
            through = Target("sds-nbd", "nbd", sds.pool_volume("onto-nbd", "array", size), size, cpu_pid=sds.pid)
            fill(fio_binary, through)
            groups["nbd"] = [direct, through]

        for round_index in range(args.repeat):
            for job_name, job in jobs:
                for array_kind, targets in groups.items():
                    for target in targets:
                        r = run_job(fio_binary, target, job, args.runtime)
                        results.setdefault((job_name, array_kind, target.name), []).append(r)
                        print(f"round {round_index + 1} {job_name:18} {array_kind:5} {target.name:9} "
                              f"{r['iops']:>9.0f} IOPS p50 {r['p50_us']:7.1f} us", flush=True)
    except RuntimeError as e:
        notes.append(f"stopped early: {e}")
        print(notes[-1], file=sys.stderr)
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        if medium != tmp:
            shutil.rmtree(medium, ignore_errors=True)

    med = medians(results) if results else {}
    header = (f"{'job':18} {'array':6} {'path':9} {'IOPS':>9} {'MB/s':>8} {'p50 us':>8} {'p99 us':>8} "
              f"{'sds CPU us/IO':>14} {'x direct':>9}")
    lines = [f"remote LUNs: fio straight to the array vs through sds on the same LUN; {size >> 20} MiB, medians of "
             f"{args.repeat} rounds of {args.runtime} s; arrays and sds on cpu {SERVER_CPUS} (sds: one reactor, "
             f"--poll adaptive), fio on cpu {CLIENT_CPUS}; array medium: {args.backing}",
             "iscsi: tgtd; direct = fio libiscsi to tgtd; sds-nbd / sds-iscsi = an sds volume on that tgtd LUN "
             "served over NBD / sds's iSCSI target",
             "nbd: a second sds exporting a volume; direct = fio nbd to it; sds-nbd = an sds volume on that export "
             "(remote nbd LUN) over NBD",
             f"load average at the end: {load_average()}", "", header, "-" * len(header)]
    for job_name, _ in jobs:
        for array_kind in groups:
            base = med.get((job_name, array_kind, "direct"))
            for target in groups[array_kind]:
                m = med.get((job_name, array_kind, target.name))
                if m is None:
                    continue
                ratio = f"{m['iops'] / base['iops']:.2f}x" if base and base["iops"] and target.name != "direct" else ""
                cpu = f"{m['sds_cpu_us_per_io']:.1f}" if target.cpu_pid else ""
                lines.append(f"{job_name:18} {array_kind:6} {target.name:9} {m['iops']:>9.0f} {m['mbps']:>8.1f} "
                             f"{m['p50_us']:>8.1f} {m['p99_us']:>8.1f} {cpu:>14} {ratio:>9}")
    lines += [""] + notes
    text = "\n".join(lines).rstrip() + "\n"
    write_report(text, out_path)


if __name__ == "__main__":
    main()
