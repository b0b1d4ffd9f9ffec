"""The one setns(2) helper (no pyroute2 import: the CLI and CNI fast paths use it)."""

from __future__ import annotations

import os

from crossnet.netlink.const import CLONE_NEWNET

_libc = None


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """Move the CALLING THREAD into the namespace open at `fd` (a network namespace
    by default); OSError with the kernel's errno on failure."""
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, nstype) != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
