"""The two iSCSI targets bench/ compares, started and stopped the same way: tgtd (Debian's tgt,
a file or RAM-backed LUN) and sds (a pool, a volume, hosts for the initiator names and virtual
paths at LUN 0). Shared by iscsi_conformance.py and iscsi_speed.py.

tgtd ignores SIGTERM: it is stopped through its own control channel (tgtadm delete target
--force, then delete system), on a private control port so that several runs never meet.
"""
import json, os, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from processes import cpu_seconds, free_port, stop, wait_port  # noqa: E402,F401
# libiscsi's iscsi-test-cu logs in with these two names (its defaults): the sds side gives each
# a host and a virtual path, since a login from an initiator with no VP is refused.
CU_INITIATOR = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test"
CU_INITIATOR_2 = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2"
TGT_TARGET = "iqn.2026-11.org.sds.bench:tgtd"
SDS_TARGET = "iqn.2026-11.org.sds.bench:sds"
# fio's libiscsi engine logs in with this name unless told otherwise; sds gives it a host.
FIO_INITIATOR = "iqn.2019-04.org.fio:fio"


def escape(url):
    """fio splits its filename option at ':'; libiscsi URLs carry them escaped."""
    return url.replace(":", "\\:")


class Tgtd:
    """tgtd on a free port with one LUN (LUN 1: tgtd's LUN 0 is its own controller LU)."""

    name = "tgtd"
    lun = 1

    def __init__(self, backing, prefix=None, log=os.devnull, bsoflags=None):
        """`bsoflags="direct"` opens the backing file with O_DIRECT (tgtd's default goes through
        the page cache); tgtd then fails misaligned I/O, which 4k-aligned fio jobs never send."""
        self.log = open(log, "w")
        # A control port another tgtd holds, or an iSCSI port taken since free_port() found it,
        # makes tgtd exit: try a few, each with fresh ports.
        for attempt in range(5):
            self.port = free_port()
            # A control port of our own: /var/run/tgtd/socket.N must not be another tgtd's.
            # tgtd exits (status 34) with one of 32768 or more: it keeps it in a short.
            self.control = str(10000 + (os.getpid() * 7 + attempt * 1009) % 20000)
            cmd = ["tgtd", "-f", "-C", self.control, "--iscsi", f"portal=127.0.0.1:{self.port}"]
            self.proc = subprocess.Popen(([*prefix, *cmd] if prefix else cmd), stdout=self.log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
            try:
                wait_port(self.port, self.proc)
                break
            except RuntimeError:
                self.stop(close_log=False)
                if attempt == 4:
                    self.log.close()
                    raise
        try:
            self.admin("--op", "new", "--mode", "target", "--tid", "1", "-T", TGT_TARGET)
            self.admin("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", str(self.lun), "-b", backing,
                       *(["--bsoflags", bsoflags] if bsoflags else []))
            self.admin("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
        except Exception:
            self.stop()
            raise
        self.pid = self.proc.pid
        self.url = f"iscsi://127.0.0.1:{self.port}/{TGT_TARGET}/{self.lun}"

    def admin(self, *args):
        subprocess.run(["tgtadm", "-C", self.control, "--lld", "iscsi", *args], check=True, capture_output=True)

    def stop(self, close_log=True):
        if self.proc.poll() is None:
            subprocess.run(["tgtadm", "-C", self.control, "--op", "delete", "--mode", "target", "--tid", "1", "--force"],
                           capture_output=True)
            subprocess.run(["tgtadm", "-C", self.control, "--op", "delete", "--mode", "system"], capture_output=True)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if close_log:
            self.log.close()


class Sds:
    """sds serving iSCSI on a free port (NBD off), with the bench's own stable target name."""

    name = "sds"

    def __init__(self, binary, state_dir, prefix=None, log=os.devnull, extra=()):
        self.binary = binary
        self.port = free_port()
        self.socket = os.path.join(state_dir, "sds.sock")
        self.log = open(log, "w")
        cmd = [binary, "serve", "--state-dir", state_dir, "--nbd-listen", "none",
               "--iscsi-listen", f"127.0.0.1:{self.port}", "--iscsi-target-name", SDS_TARGET, "--nvmf-listen", "none", "--log-level", "warn", *extra]
        self.proc = subprocess.Popen(([*prefix, *cmd] if prefix else cmd), stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_port(self.port, self.proc)
            deadline = time.time() + 20
            while not os.path.exists(self.socket) and time.time() < deadline:
                time.sleep(0.05)
        except Exception:
            self.stop()
            raise
        self.pid = self.proc.pid

    def rpc(self, method, params):
        out = subprocess.run([self.binary, "--socket", self.socket, "rpc", method, json.dumps(params)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"sds {method} {params}: {out.stderr.strip() or out.stdout.strip()}")
        return out.stdout

    def volume(self, name, kind, size, path=None, block_size=4096, volume_block_size=None):
        """A pool on one LUN (a file at `path`, or RAM) of `block_size`-byte blocks, and a
        volume of `size` bytes on it (of `volume_block_size`-byte blocks: the LUN's if None)."""
        lun = {"name": f"{name}-lun", "kind": kind, "block_size": block_size}
        if kind == "file":
            lun["path"] = path
        else:
            # The pool's own records take room beside the volume's data.
            lun["size"] = size + (64 << 20)
        self.rpc("lun_create", lun)
        self.rpc("pool_create", {"name": f"{name}-pool", "luns": [f"{name}-lun"]})
        volume = {"name": name, "pool": f"{name}-pool", "size": size}
        if volume_block_size:
            volume["block_size"] = volume_block_size
        self.rpc("volume_create", volume)

    def export(self, volume, initiators, lun=0):
        """A host per initiator name, each with a virtual path to `volume` at `lun`."""
        for index, iqn in enumerate(initiators):
            host = f"{volume}-h{index}"
            self.rpc("host_create", {"name": host, "iqn": iqn})
            self.rpc("vpath_create", {"host": host, "volume": volume, "lun": lun})
        return f"iscsi://127.0.0.1:{self.port}/{SDS_TARGET}/{lun}"

    def stop(self):
        stop(self.proc, 20)
        self.log.close()
