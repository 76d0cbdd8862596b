"""What every bench script needs of the servers it starts: a free port, waiting for a listener,
and a process's CPU time, the server/client CPU split, stopping a server and pre-filling a backing
file. Shared by compare.py, iscsi_peers.py, nvmf_speed.py and the scripts built on them."""
import os, signal, socket, subprocess, time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=30):
    """Waits until something accepts on 127.0.0.1:`port`; fails if `proc` exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited early (status {proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def cpu_seconds(pid):
    """utime + stime of a process, in seconds (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# Servers run on the last core and the clients on the others, as a remote host would be: on a
# 2-core machine a client sharing the server's core costs either of them up to 40% (measured
# with fio pinned on and off the reactor's core). Every server gets the same single core, so
# IOPS and IOPS per CPU-second compare like with like.
NCPU = os.cpu_count() or 1
SERVER_CPUS = str(NCPU - 1)
CLIENT_CPUS = ",".join(str(c) for c in range(NCPU - 1)) if NCPU > 1 else "0"


def stop(proc, timeout=10):
    """SIGTERM to `proc`, then SIGKILL if it has not exited within `timeout` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def prefill(path, nbytes, direct=True):
    """Writes `nbytes` of data to the file `path` (non-repeating buffers), so no server under
    test reads holes; `direct=False` for tmpfs, which has no O_DIRECT."""
    subprocess.run(["fio", "--name=prefill", f"--filename={path}", f"--size={nbytes}", "--rw=write", "--bs=1m",
                    "--ioengine=psync", f"--direct={int(direct)}", "--refill_buffers=1"], check=True, capture_output=True)
