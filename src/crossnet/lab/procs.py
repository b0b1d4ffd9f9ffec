"""Process helpers shared by the lab, its services (OVS, etcd, agents) and tests."""

from __future__ import annotations

import contextlib
import os
import signal
import time


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone; our own zombies are reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state in ("Z", "X"):
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def exists(pid: object) -> bool:
    """True if a process with this pid exists (any owner). Non-int or <= 0: False."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_gone(pid: int, timeout: float, poll: float = 0.02) -> bool:
    """Wait (bounded) for pid to exit; True if it did."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True


def stop(pid: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> bool:
    """Signal pid and wait for it to exit, SIGKILL after `timeout`. True if it was running."""
    if not alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    if not wait_gone(pid, timeout, 0.05):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_gone(pid, 5, 0.05)
    return True
