"""The userspace WireGuard (Debian's wireguard-go), started and supervised by crossnet.

wireguard-go runs in the foreground (`-f`) as a child detached into its own session, so
it outlives the `crossnet apply` that started it; ``<run_dir>/<if>.pid`` records its pid
and start time (a recycled pid is never mistaken for it). It runs in a private mount
namespace with its own tmpfs on /run: its UAPI socket ``/run/wireguard/<if>.sock``
exists only there (not in the machine-wide /var/run/wireguard, where the devices of
simulated hosts sharing one machine would collide, and where other local users could look
for it); crossnet reaches it as ``/proc/<pid>/root/run/wireguard/<if>.sock`` (root only).
No key is ever on its command line: keys go over the socket.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from crossnet.errors import ApplyError

BINARY = "wireguard-go"
START_TIMEOUT = 5.0

# in the new mount namespace: a private /run, then exec wireguard-go (argv: the interface)
_SHELL = 'mount -t tmpfs -o mode=0700,size=1m crossnet-wg /run && exec "$0" -f "$1"'


def pid_path(run_dir: str | os.PathLike[str], ifname: str) -> Path:
    return Path(run_dir) / f"{ifname}.pid"


def log_path(run_dir: str | os.PathLike[str], ifname: str) -> Path:
    return Path(run_dir) / f"{ifname}.log"


def socket_path(pid: int, ifname: str) -> str:
    return f"/proc/{pid}/root/run/wireguard/{ifname}.sock"


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in ticks); None when gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat[stat.rfind(")") + 2:].split()
    if rest[0] in ("Z", "X"):
        return None
    return rest[19]


def read_pid(run_dir: str | os.PathLike[str], ifname: str) -> int | None:
    """The pid of the running wireguard-go for `ifname`, None when it is not running."""
    try:
        pid_s, started = pid_path(run_dir, ifname).read_text().split()
        pid = int(pid_s)
    except (OSError, ValueError):
        return None
    _reap(pid)
    return pid if _start_time(pid) == started else None


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # our own child (the agent restarted it): no zombie


def start(run_dir: str | os.PathLike[str], ifname: str, netns_check=None) -> int:
    """Start wireguard-go for `ifname` in this network namespace; wait for its UAPI
    socket. Returns the pid."""
    exe = shutil.which(BINARY)
    if exe is None:
        raise ApplyError(
            "the kernel has no WireGuard module and wireguard-go is not installed (apt-get install wireguard-go)"
        )
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "LOG_LEVEL": "error",
        "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1",
    }
    with open(log_path(run, ifname), "ab") as log:
        os.chmod(log_path(run, ifname), 0o600)
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", _SHELL, exe, ifname],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True, close_fds=True,
        )
    sock = socket_path(proc.pid, ifname)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path(run, ifname).read_text(errors="replace").strip().splitlines()[-1:]
            raise ApplyError(f"wireguard-go {ifname} exited with {proc.returncode}: {' '.join(tail) or 'no output'}")
        if os.path.exists(sock):
            break
        time.sleep(0.02)
    else:
        stop_pid(proc.pid)
        raise ApplyError(f"wireguard-go {ifname}: no UAPI socket after {START_TIMEOUT:.0f}s")
    started = _start_time(proc.pid)
    tmp = pid_path(run, ifname).with_suffix(".pid.tmp")
    tmp.write_text(f"{proc.pid} {started}\n")
    os.replace(tmp, pid_path(run, ifname))
    proc.returncode = 0  # detached: Popen's finaliser must not warn; the agent reaps via _reap
    return proc.pid


def stop_pid(pid: int, timeout: float = 3.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if _start_time(pid) is None:
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        _reap(pid)
        if _start_time(pid) is None:
            return
        time.sleep(0.02)


def stop(run_dir: str | os.PathLike[str], ifname: str) -> bool:
    """Stop the wireguard-go of `ifname` (its device and socket go with it). True when one ran."""
    pid = read_pid(run_dir, ifname)
    if pid is not None:
        stop_pid(pid)
    with contextlib.suppress(FileNotFoundError):
        pid_path(run_dir, ifname).unlink()
    return pid is not None
