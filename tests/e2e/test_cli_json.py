"""End to end: every command's real -o json against its shape (crossnet.cli.shapes,
docs/json.md), in one lab built by `crossnet lab up -o json`: one JSON object on stdout,
progress on stderr, times in RFC 3339 UTC, errors as {ok: false, error}."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from crossnet.cli.shapes import check_output
from crossnet.lab.manager import Lab, crossnet_argv
from tests.conftest import LabFactory

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]


def run(argv: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(crossnet_argv(*argv), capture_output=True, text=True, timeout=300, env=env,
                          stdin=subprocess.DEVNULL, check=False)


@pytest.fixture(scope="module")
def built(request, lab_sweep):
    factory = LabFactory.for_test(request)
    name = factory.new_name()
    res = run(["lab", "up", "--name", name, "--hosts", "2", "--containers", "1", "-o", "json"], factory.env)
    assert res.returncode == 0, res.stderr[-2000:]
    lab = Lab.open(name)
    st = json.loads(lab.crossnet("h2", "status", "-o", "json").stdout)
    values = {"@cluster@": lab.plan.cluster_file, "@c1@": lab.hosts[0].containers[0],
              "@c2addr@": st["containers"][0]["address"].split("/")[0]}
    return name, res, factory.env, values


def test_lab_up_json_and_progress(built):
    name, res, _, _ = built
    assert check_output("lab up", res.stdout) == []
    assert json.loads(res.stdout)["lab"] == name
    progress = res.stderr.splitlines()
    assert all(x.startswith("· ") for x in progress), progress  # nothing but progress on stderr
    assert {f"· apply on h{i}: ready" for i in (1, 2)} <= {x.split(" (")[0] for x in progress}


@pytest.mark.parametrize("command, argv", [
    ("status", ["status"]),
    ("check", ["check"]),
    ("gc", ["gc", "--dry-run"]),
    ("apply", ["apply", "-f", "@cluster@", "--dry-run"]),
    ("keygen", ["keygen"]),
    ("trace", ["trace", "@c1@", "@c2addr@"]),
])
def test_host_commands(built, command, argv):
    """Each command run in host h1 of the lab, -o json given before the subcommand (the
    global option) for half of them."""
    name, _, _, values = built
    lab = Lab.open(name)
    argv = [values.get(a, a) for a in argv]
    args = ["-o", "json", *argv] if len(argv) % 2 else [*argv, "-o", "json"]
    res = lab.crossnet("h1", *args, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert check_output(command, res.stdout) == []


def test_attach_detach(built):
    name, _, _, _ = built
    lab = Lab.open(name)
    c = lab.hosts[0].containers[0]
    res = lab.crossnet("h1", "attach", c, "-o", "json", check=False)
    assert res.returncode == 0 and check_output("attach", res.stdout) == []
    res = lab.crossnet("h1", "attach", "nosuch-netns", "-o", "json", check=False)
    assert res.returncode == 2 and json.loads(res.stdout)["error"]["kind"] == "bad_input"
    assert check_output("attach", res.stdout) == []
    res = lab.crossnet("h1", "detach", "never-attached", "-o", "json", check=False)  # idempotent: nothing to do
    assert res.returncode == 0 and check_output("detach", res.stdout) == []


def test_lab_commands(built):
    name, _, env, _ = built
    out = {}
    for command, argv in [("lab check", ["lab", "check", "--name", name]), ("lab list", ["lab", "list"]),
                          ("lab trace", ["lab", "trace", "--name", name, "h1-c1", "h2-c1"])]:
        res = run([*argv, "-o", "json"], env)
        assert res.returncode == 0, (argv, res.stderr[-2000:])
        assert check_output(command, res.stdout) == [], argv
        out[command] = json.loads(res.stdout)
    pairs = out["lab check"]["pairs"]
    assert {(p["src_host"], p["dst_host"]) for p in pairs} == {("h1", "h2"), ("h2", "h1")}


def test_errors_are_one_object(built):
    name, _, env, _ = built
    for argv in (["lab", "check", "--name", "nosuch"], ["lab", "up", "--name", name, "--backend", "foo"],
                 ["lab", "up", "--name", name]):  # the last: the lab exists
        res = run([*argv, "-o", "json"], env)
        data = json.loads(res.stdout)
        assert res.returncode in (1, 2) and data["ok"] is False and check_output("lab up", res.stdout) == []
        assert res.stderr.splitlines()[-1] == f"crossnet: error: {data['error']['message']}"


def test_lab_down_json(built):
    name, _, env, _ = built
    res = run(["lab", "down", "--name", name, "-o", "json"], env)
    assert res.returncode == 0 and check_output("lab down", res.stdout) == []
    assert json.loads(res.stdout)["lab"] == name
