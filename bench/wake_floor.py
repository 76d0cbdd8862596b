#!/usr/bin/env python3
"""The floor of a queue-depth-1 round trip on this machine, what no server can beat: the smallest
server there is (receive a 48-byte request, send a 48+4096-byte reply over loopback TCP, the
shape of an iSCSI 4k READ) against the smallest client, pinned like the iSCSI and NBD benches
(server on the last core, client on the others). Each side either sleeps in the kernel while it
waits or polls without sleeping; the table gives round trips per second, microseconds per round
trip, the server's CPU per round trip and its round trips per CPU-second: the most IOPS per
server CPU-second any server could show at QD1 against a client that sleeps as fio does.

bench/iscsi_speed.py's QD1 rows are read against it: a server that sleeps between commands pays
the VM's wake-up on every one, and its IOPS per CPU-second cannot pass the "sleep / sleep" row;
a server that polls spends a whole core, so its IOPS per CPU-second is its IOPS, which cannot
pass the "poll / sleep" row less the client's own work.

Usage: bench/wake_floor.py [--seconds S] [--rounds N] [--out PATH]  (needs cc)
"""
import argparse, os, shutil, statistics, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from processes import CLIENT_CPUS, SERVER_CPUS, free_port  # noqa: E402
from run_options import ROOT, load_average, write_report  # noqa: E402

MODES = [("sleep", "sleep"), ("poll", "sleep"), ("sleep", "poll"), ("poll", "poll")]


def build(tmp):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        sys.exit("no C compiler (cc): run scripts/setup.sh")
    binary = os.path.join(tmp, "wake_floor")
    subprocess.run([cc, "-O2", "-o", binary, os.path.join(ROOT, "bench/wake_floor.c")], check=True)
    return binary


def one_round(binary, server_mode, client_mode, seconds):
    port = str(free_port())
    server = subprocess.Popen(["taskset", "-c", SERVER_CPUS, binary, "server", port, server_mode],
                              stdout=subprocess.PIPE, text=True)
    try:
        if server.stdout.readline().strip() != "listening":
            raise RuntimeError("the server did not start")
        client = subprocess.run(["taskset", "-c", CLIENT_CPUS, binary, "client", port, client_mode,
                                 str(seconds)], capture_output=True, text=True, timeout=seconds + 30)
        if client.returncode != 0:
            raise RuntimeError(f"client: {client.stderr.strip()}")
        out, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    c = dict(zip(*[iter(client.stdout.split())] * 2))
    s = dict(zip(*[iter(out.split())] * 2))
    trips, elapsed, cpu = int(c["trips"]), float(c["seconds"]), float(s["cpu_s"])
    return dict(rate=trips / elapsed, us=elapsed / trips * 1e6, cpu_us=cpu / trips * 1e6,
                per_cpu_s=trips / cpu if cpu > 0 else 0.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="length of one round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per mode (medians are shown)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/last-wake-floor.txt"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="sds-wake-floor-")
    try:
        binary = build(tmp)
        results = {mode: [] for mode in MODES}
        for r in range(args.rounds):
            for mode in MODES:
                res = one_round(binary, *mode, args.seconds)
                results[mode].append(res)
                print(f"round {r + 1} server {mode[0]:5s} client {mode[1]:5s} {res['rate']:9.0f} trips/s "
                      f"{res['us']:7.1f} us  server cpu {res['cpu_us']:6.1f} us/trip", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [f"loopback TCP round trips, 48-byte request and 4144-byte reply, medians of {args.rounds} rounds of "
             f"{args.seconds:g} s; server on cpu {SERVER_CPUS}, client on cpu {CLIENT_CPUS}",
             f"load average at the end: {load_average()}", "",
             f"{'server':8s} {'client':8s} {'trips/s':>10s} {'us/trip':>9s} {'server CPU us/trip':>19s} {'trips/CPU-s':>12s}",
             "-" * 71]
    for mode in MODES:
        med = {k: statistics.median(x[k] for x in results[mode]) for k in results[mode][0]}
        lines.append(f"{mode[0]:8s} {mode[1]:8s} {med['rate']:10.0f} {med['us']:9.1f} {med['cpu_us']:19.1f} "
                     f"{med['per_cpu_s']:12.0f}")
    write_report("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
