"""The loop of the kill-at-every-step tests: a command run with CROSSNET_TEST_CRASH_AT=N
SIGKILLs itself at its N-th crash point; for N = 1, 2, ... until it runs through, each
killed run must have died of that SIGKILL and is followed by the test's recovery and
checks."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable

import pytest


def killed_at_every_step(run: Callable[[int], subprocess.CompletedProcess | int], recover: Callable[[int], None],
                         max_steps: int, what: str, *, killed: tuple[int, ...] = (-signal.SIGKILL,)) -> int:
    """For n = 1 .. max_steps: ``run(n)`` (the command killed at its n-th crash point: a
    completed process or its return code); exit 0 ends the loop and n is returned (the
    caller checks the completed state and that enough crash points were passed);
    otherwise the return code must be one of ``killed``, then ``recover(n)`` runs. Never
    ran through: the test fails naming ``what``."""
    for n in range(1, max_steps + 1):
        res = run(n)
        code = res if isinstance(res, int) else res.returncode
        if code == 0:
            return n
        assert code in killed, (what, n, code, getattr(res, "stderr", None))
        recover(n)
    pytest.fail(f"{what} never ran through ({max_steps} crash points tried)")
