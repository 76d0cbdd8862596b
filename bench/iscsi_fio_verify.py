#!/usr/bin/env python3
"""Data integrity over iSCSI with fio's libiscsi engine: random writes of mixed sizes at
queue depth 32 with `verify=crc32c`, then the whole region read back and checked, on a file
volume and on a RAM volume of sds, each reached as a LUN of one host.

Debian's fio has no libiscsi engine: scripts/build-fio-libiscsi.sh builds one into
target/tools/fio (this script says so and stops when it is missing).

Usage: bench/iscsi_fio_verify.py [--sds PATH] [--fio PATH] [--size MiB]
"""
import argparse, os, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iscsi_peers import escape, Sds  # noqa: E402

INITIATOR = "iqn.2026-11.org.sds.bench:verify"


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sds", help="sds binary (default target/release/sds, built)")
    ap.add_argument("--fio", default=os.path.join(root, "target/tools/fio"),
                    help="fio with the libiscsi engine (default target/tools/fio)")
    ap.add_argument("--size", type=int, default=256, help="MiB written and verified per volume (default 256)")
    args = ap.parse_args()
    if not os.access(args.fio, os.X_OK):
        sys.exit(f"{args.fio}: no fio with the libiscsi engine; run scripts/build-fio-libiscsi.sh")
    binary = args.sds or os.path.join(root, "target/release/sds")
    if not args.sds:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=root, check=True)
    size = args.size << 20
    failed = False
    with tempfile.TemporaryDirectory(prefix="sds-fio-verify-") as tmp:
        sds = Sds(binary, os.path.join(tmp, "state"))
        try:
            backing = os.path.join(tmp, "file.img")
            with open(backing, "wb") as f:
                f.truncate(size + (64 << 20))
            sds.volume("file", "file", size, path=backing)
            sds.volume("ram", "mem", size)
            urls = {"file": sds.export("file", [INITIATOR], lun=0)}
            # One host, a second LUN: its VP to the RAM volume.
            sds.rpc("vpath_create", {"host": "file-h0", "volume": "ram", "lun": 1})
            urls["ram"] = urls["file"][:-1] + "1"
            for name, url in urls.items():
                cmd = [args.fio, "--name=verify", "--ioengine=libiscsi", f"--filename={escape(url)}",
                       f"--initiator={INITIATOR}", "--rw=randwrite", "--bsrange=4k-256k",
                       "--iodepth=32", f"--size={size}", "--verify=crc32c", "--verify_fatal=1",
                       "--do_verify=1", "--randrepeat=0"]
                out = subprocess.run(cmd, capture_output=True, text=True)
                ok = out.returncode == 0 and " err= 0" in out.stdout
                summary = [line.strip() for line in out.stdout.splitlines()
                           if line.strip().startswith(("read:", "write:"))]
                print(f"{name:5} {'verified' if ok else 'FAILED'}  " + "  |  ".join(summary))
                if not ok:
                    failed = True
                    print(out.stdout[-3000:], out.stderr[-3000:], sep="\n")
        finally:
            sds.stop()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
