"""End to end: the CLI's bad-input corpus (tests/e2e/bad_inputs/cli.yaml) run inside a
lab host namespace. For every case: the exit code (2 for bad input, 1 for a failure),
stderr exactly one line `crossnet: error: ...`, no traceback or internal error, and
h1's kernel state (links, addresses, routes, nft) and state dir exactly as before.

One vxlan lab (`fi` + 4 characters, 2 hosts, applied, one container each) serves the
module and is removed at the end, pass or fail. Nothing here touches the root namespace.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from crossnet.cli.contract import wants_json
from crossnet.lab.manager import crossnet_argv
from tests.conftest import LabFactory
from tests.unit.test_bad_input_cluster import YAML_CASES, materialize

from .kstate import diff, snapshot

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root"),
]

CASES = yaml.safe_load((Path(__file__).parent / "bad_inputs" / "cli.yaml").read_text())


class FiLabFactory(LabFactory):
    PREFIX = "fi"
    SUFFIX_LEN = 4


@pytest.fixture(scope="module")
def env(request, lab_sweep, tmp_path_factory):
    """The lab, h1, and the placeholder values of the corpus."""
    factory = FiLabFactory.for_test(request)
    lab = factory(hosts=2, underlay="l2", backend="vxlan", containers=1)
    h1 = next(h for h in lab.hosts if h.name == "h1")
    work = tmp_path_factory.mktemp("badcli")
    regular = work / "regular.txt"
    regular.write_text("not a namespace\n")
    damaged = {"damaged": "garbage", "damaged_list": "[1]", "damaged_dir": None}
    for name, content in damaged.items():
        (work / name).mkdir()
        if content is None:
            (work / name / "applied.json").mkdir()
        else:
            (work / name / "applied.json").write_text(content)
    subnet = ipaddress.ip_network(lab.status("h1")["subnet"])
    cluster = yaml.safe_load(Path(lab.plan.cluster_file).read_text())
    values = {
        "C": h1.containers[0],
        "file": str(regular),
        "dir": str(work),
        "cluster": lab.plan.cluster_file,
        "net": str(subnet.network_address),
        "bcast": str(subnet.broadcast_address),
        "gw": str(subnet.network_address + 1),
        "long": "x" * 5000,
        "fresh": str(work / "fresh-state"),
        **{name: str(work / name) for name in damaged},
        "h1addr": str(next(h["address"] for h in cluster["hosts"] if h["name"] == "h1")),
    }
    return {"lab": lab, "h1": h1, "work": work, "values": values, "cluster": cluster}


def _lab_variant(env: dict, spec: str) -> str:
    """The lab's cluster file with PATH set to the raw YAML text VALUE."""
    path, _, raw = spec.partition("=")
    data = yaml.safe_load(yaml.safe_dump(env["cluster"]))
    steps = [int(i) if i else k for k, i in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path)]
    target = data
    for step in steps[:-1]:
        target = target[step]
    target[steps[-1]] = "@@VALUE@@"
    text = yaml.safe_dump(data, sort_keys=False).replace("'@@VALUE@@'", raw)
    out = env["work"] / f"lab-{hashlib.sha1(spec.encode()).hexdigest()[:10]}.yaml"
    out.write_text(text)
    return str(out)


def expand(env: dict, text: str) -> str:
    for key, value in env["values"].items():
        text = text.replace(f"@{key}@", value)

    def complex_(m: re.Match) -> str:
        kind, arg = m.group(1), m.group(2)
        if kind == "bad":
            case = next(c for c in YAML_CASES if c["id"] == arg)
            return str(materialize(case, env["work"]))
        return _lab_variant(env, arg)

    return re.sub(r"@(bad|lab):(.*?)@", complex_, text)


def state_snapshot(root: Path) -> dict:
    """Every file of the state dir: its mode and content (the lock file's content only)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (oct(st.st_mode), hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
    return out


def test_corpus_size():
    assert len(CASES) >= 100


@pytest.mark.parametrize("case", CASES, ids=lambda c: " ".join(map(str, c["argv"]))[:60] or "(empty)")
def test_bad_cli_input(env, case):
    lab, h1 = env["lab"], env["h1"]
    argv = [expand(env, str(a)) for a in case["argv"]]
    extra = {k: expand(env, v) for k, v in (case.get("env") or {}).items()}
    message = expand(env, case["message"])
    state = Path(h1.state_dir)
    before_k, before_s = snapshot(h1.netns), state_snapshot(state)
    cmd = ["env", *(f"{k}={v}" for k, v in extra.items()), *crossnet_argv(*argv)]
    res = lab.run("h1", cmd, timeout=60)
    lines = res.stderr.splitlines()
    assert res.returncode == case.get("exit", 2), (res.returncode, res.stderr[-2000:])
    assert len(lines) == 1, res.stderr[-2000:]
    assert lines[0].startswith("crossnet: error: "), lines[0]
    assert "internal error" not in lines[0] and "Traceback" not in res.stderr
    assert message in lines[0], (message, lines[0])
    if wants_json(argv):  # -o json: the error as one JSON object on stdout too (docs/json.md)
        assert json.loads(res.stdout)["error"]["message"] == lines[0].removeprefix("crossnet: error: ")
    else:
        assert res.stdout == "", res.stdout[-500:]
    assert diff(before_k, snapshot(h1.netns)) == []
    assert state_snapshot(state) == before_s
    if "fresh" in str(case.get("env")):
        assert not Path(env["values"]["fresh"]).exists()  # a failing command creates no state dir


def test_corpus_left_the_lab_working(env):
    """After every bad input, h1's container still reaches h2's."""
    lab = env["lab"]
    assert all(p.ok for p in lab.check())
