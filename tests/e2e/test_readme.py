"""Every command of the README's `lab` blocks (tests/unit/test_readme.py parses them), run
as written — optional `[...]` parts left out — in a lab of its own (CROSSNET_LAB names it,
the way `--name` would): each exits 0."""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest

from crossnet.lab.manager import crossnet_argv
from tests.conftest import LabFactory
from tests.unit.test_readme import lab_commands

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]


def test_readme_lab_commands(request, lab_sweep):
    factory = LabFactory.for_test(request)
    env = {**factory.env, "CROSSNET_LAB": factory.new_name()}
    cmds = lab_commands()
    assert len(cmds) >= 5
    for cmd in cmds:
        argv = shlex.split(cmd)
        assert argv[0] == "crossnet"
        res = subprocess.run(crossnet_argv(*argv[1:]), capture_output=True, text=True, timeout=300, env=env,
                             stdin=subprocess.DEVNULL, check=False)
        assert res.returncode == 0, (cmd, res.stdout[-1500:], res.stderr[-1500:])
