"""Bad input end to end: the corpus of tests/unit/bad_cni against a real lab host (one
host, vxlan, crossnet-cni installed as a runtime would run it), and property-based
fuzzing of the plugin there.

After every case the host is compared with how it was before: its links, addresses,
routes and nft ruleset (tests/e2e/kstate.py), every regular file of its state dir byte
for byte (applied.json, ipam.json and its lock, ...), and the test's container
namespace holds nothing but `lo`. Paths: the native client with the warm helper, the
Python client running the call in-process (`"server": false`), the helper's socket
directly (NUL bytes, which no process environment can hold), and a running
`crossnet agent` (its API corpus, and CNI calls through its /v1/cni).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.unit.bad_cni import api_cases
from tests.unit.bad_cni.cni_cases import CASES, Case
from tests.unit.test_agentapi_limits import exchange

from .test_cni import NET, Host, cid, container_links, one_host_lab

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]

KNOWN_CODES = {1, 2, 3, 4, 5, 6, 7, 11, 50, 100, 101, 102, 103, 104}


class BadHost(Host):
    def __init__(self, lab, bin_dir, log, work: Path):
        super().__init__(lab, bin_dir, log)
        self.python_plugin = str(bin_dir / "crossnet-cni-py")
        self.file = work / "regular-file"
        self.file.write_text("not a namespace\n")
        self.dir = work / "a-directory"
        self.dir.mkdir()
        self.container = self.new_netns()
        self.made.clear()  # kept for the whole module; removed by the fixture

    def state_files(self, drop_last: bool = False) -> dict[str, bytes]:
        out = {}
        for p in sorted(Path(self.state_dir).iterdir()):
            if p.is_file() and not p.is_symlink():
                data = p.read_bytes()
                if drop_last and p.name == "ipam.json":  # the round-robin pointer moves with every ADD
                    doc = json.loads(data)
                    doc.pop("last", None)
                    data = json.dumps(doc, sort_keys=True).encode()
                out[p.name] = data
        return out

    def everything(self, drop_last: bool = False) -> tuple:
        return self.kernel(), self.state_files(drop_last), container_links(os.path.basename(self.container))

    def run(self, plugin: str, env: dict[str, str], stdin: bytes) -> tuple[int, dict | None, bytes]:
        proc = subprocess.run(["nsenter", f"--net=/run/netns/{self.netns}", plugin], input=stdin,
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env}, capture_output=True, timeout=60)
        out = proc.stdout.decode().strip()
        return proc.returncode, json.loads(out) if out else None, proc.stderr

    def via_helper_socket(self, env: dict[str, str], stdin: bytes) -> tuple[int, dict | None, bytes]:
        """The request a client sends, made by crossnet.cni.client.call from the host's
        namespace (so a NUL can be in a value): the helper's (or agent's) answer."""
        code = ("import json, sys; from crossnet.cni.client import call; "
                "r = call(sys.argv[1], json.loads(sys.argv[2]), sys.stdin.buffer.read()); print(json.dumps(r))")
        proc = subprocess.run(["nsenter", f"--net=/run/netns/{self.netns}", sys.executable, "-c", code,
                               self.state_dir, json.dumps(env)], input=stdin, capture_output=True, timeout=60,
                              env={**os.environ})
        assert proc.returncode == 0, proc.stderr
        res = json.loads(proc.stdout)
        assert res is not None, "the helper did not answer"
        rc, text = res
        return rc, json.loads(text) if text else None, proc.stderr


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    work = tmp_path_factory.mktemp("bad-input")
    gen = one_host_lab(tmp_path_factory, lambda lab, bin_dir, log, info: BadHost(lab, bin_dir, log, work))
    h = next(gen)
    try:
        # warm up: one good ADD/DEL, so the helper runs and ipam.json exists before the corpus
        c = cid()
        assert h.cni("ADD", cid=c, netns=h.container)[0] == 0
        assert h.cni("DEL", cid=c, netns=h.container) == (0, None)
        yield h
    finally:
        subprocess.run(["ip", "netns", "del", os.path.basename(h.container)], capture_output=True)
        for ns in h.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        next(gen, None)


def _expect_error(rc: int, out: dict | None, stderr: bytes, code: int, what: str) -> str | None:
    if rc != 1 or not isinstance(out, dict) or set(out) != {"cniVersion", "code", "msg", "details"}:
        return f"{what}: rc {rc}, stdout {out!r}, stderr {stderr[-300:]!r}"
    if out["code"] != code or "\n" in out["msg"] or "Traceback" in out["details"] or b"Traceback" in stderr:
        return f"{what}: expected code {code}, got {out}"
    return None


def _run_corpus(host: BadHost, mode: str) -> list[str]:
    failures = []
    before = host.everything()
    for case in CASES:
        if case.nul != (mode == "socket"):
            continue
        env = case.environ(host.container, str(host.file), str(host.dir))
        conf_case = case.conf is not None or case.stdin is None
        if mode == "local" and conf_case and "server" not in (case.conf or {}):
            case = Case(case.id, case.code, case.command, case.env, {**(case.conf or {}), "server": False})
        stdin = case.stdin_bytes(host.state_dir)
        if mode == "socket":
            rc, out, err = host.via_helper_socket(env, stdin)
        else:
            rc, out, err = host.run(host.plugin if mode in ("native", "agent") else host.python_plugin, env, stdin)
        problem = _expect_error(rc, out, err, case.code, case.id)
        after = host.everything()
        if after != before:
            problem = (problem or "") + f" {case.id}: left state behind: " + _what_changed(before, after)
            before = after
        if problem:
            failures.append(problem)
    return failures


def _what_changed(before: tuple, after: tuple) -> str:
    from .kstate import diff

    out = []
    if before[0] != after[0]:
        out += diff(before[0], after[0])
    if before[1] != after[1]:
        out.append(f"state files {sorted(k for k in set(before[1]) | set(after[1]) if before[1].get(k) != after[1].get(k))}")
    if before[2] != after[2]:
        out.append(f"container namespace links {before[2]} -> {after[2]}")
    return "; ".join(out)


@pytest.mark.parametrize("mode", ["native", "local", "socket"])
def test_cni_corpus(host, mode):
    """Every bad input: one CNI error with the spec's code, nothing changed. native: the
    compiled client and the warm helper; local: the Python client running the call
    itself; socket: the helper's request carrying NUL bytes in CNI_* values."""
    failures = _run_corpus(host, mode)
    assert not failures, f"{len(failures)} case(s):\n" + "\n".join(failures)


def test_malformed_prev_result_leaves_nothing(host):
    """The issue's reproduction: ADD with prevResult {"ips":5} / {"interfaces":7} /
    {"routes":true} returned 199 and left the veth, address and IPAM entry;
    {"interfaces":"abc"} gave interfaces "a", "b", "c"."""
    before = host.everything()
    for prev in ({"ips": 5}, {"interfaces": 7}, {"routes": True}, {"interfaces": "abc"}):
        rc, out = host.cni("ADD", host.conf(prevResult=prev), cid=cid(), netns=host.container)
        assert rc == 1 and out["code"] == 7 and "prevResult." in out["msg"], out
        assert host.everything() == before
    # a well-formed one is extended (not list("abc"))
    c = cid()
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "lo0"}], "ips": [{"address": "192.168.7.2/24",
                                                                             "interface": 0}]}
    rc, res = host.cni("ADD", host.conf(prevResult=prev), cid=c, netns=host.container)
    assert rc == 0, res
    assert [i["name"] for i in res["interfaces"]][0] == "lo0" and len(res["interfaces"]) == 3
    assert res["ips"][0] == prev["ips"][0] and res["ips"][1]["interface"] == 2
    assert host.cni("DEL", host.conf(prevResult=res), cid=c, netns=host.container) == (0, None)
    after = host.everything(drop_last=True)
    assert after[0] == before[0] and after[2] == before[2]


# ---------------------------------------------------------------------- fuzzing


def _fuzz_inputs():
    from tests.unit.test_cni_bad_input import configs, environs

    return configs, environs


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)
@given(data=st.data())
def test_fuzz_plugin_in_the_lab(host, data):
    """Random configurations and CNI_* environments through the installed plugin in the
    lab host: a known CNI error (never 199) or success; after a successful ADD a DEL
    with the same input; either way the host as before (the IPAM's round-robin pointer
    aside, which a successful ADD moves by design)."""
    configs, environs = _fuzz_inputs()
    before = host.everything(drop_last=True)
    netns_choices = [host.container, str(host.file), str(host.dir), "/nonexistent", "/dev/null"]
    if data.draw(st.booleans()):  # random bad input
        env = data.draw(environs(netns_choices, ["ADD"] * 4 + ["DEL", "CHECK", "STATUS", "GC", "VERSION", "add"]))
        conf = data.draw(configs())
    else:  # random good input: names, versions, a requested MAC, prevResult of another plugin
        env = {"CNI_COMMAND": "ADD", "CNI_NETNS": host.container, "CNI_PATH": "/usr/lib/cni",
               "CNI_CONTAINERID": data.draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,70}", fullmatch=True)),
               "CNI_IFNAME": data.draw(st.from_regex(r"[A-Za-z0-9_.-]{1,15}", fullmatch=True)
                                       .filter(lambda n: n not in (".", "..", "lo"))),
               "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=" + data.draw(st.from_regex(r"[a-z0-9-]{0,30}",
                                                                                     fullmatch=True))}
        conf = {"cniVersion": data.draw(st.sampled_from(["0.3.1", "0.4.0", "1.0.0", "1.1.0"])), "name": NET,
                "type": "crossnet-cni"}
        if data.draw(st.booleans()):
            conf["runtimeConfig"] = {"mac": "02:42:" + ":".join(f"{b:02x}" for b in data.draw(
                st.lists(st.integers(0, 255), min_size=4, max_size=4)))}
        if data.draw(st.booleans()):
            conf["prevResult"] = {"interfaces": [{"name": "net0"}], "ips": [{"address": "192.168.9.2/24",
                                                                              "interface": 0}]}
    conf["stateDir"] = host.state_dir  # a real host: valid input really attaches
    conf.pop("logFile", None)  # never let random text name a file to append to
    stdin = json.dumps(conf).encode()
    # a NUL cannot be in a process environment: such calls go to the helper's socket
    call = host.via_helper_socket if any("\0" in v for v in env.values()) else \
        (lambda e, i: host.run(host.plugin, e, i))
    rc, out, err = call(env, stdin)
    cmd = env.get("CNI_COMMAND")
    event(f"{cmd}: {'ok' if rc == 0 else (out or {}).get('code')}")
    if cmd == "VERSION":
        assert rc == 0
    elif rc == 0:
        assert cmd in ("ADD", "DEL", "CHECK", "STATUS", "GC"), (env, out)
        if cmd == "ADD":
            rc2, out2, err2 = call({**env, "CNI_COMMAND": "DEL"}, stdin)
            assert rc2 == 0, (env, conf, out2, err2)
    else:
        assert isinstance(out, dict) and out.get("code") in KNOWN_CODES, (env, conf, out, err)
        assert "\n" not in out["msg"] and b"Traceback" not in err
    after = host.everything(drop_last=True)
    assert after == before, (env, conf, _what_changed(before, after))


# ---------------------------------------------------------------------- the agent


def _api(sock: str, raw: bytes) -> bytes:
    return exchange(sock, raw, timeout=15)


@pytest.fixture(scope="module")
def agent(host):
    """`crossnet agent -f` (the static store: the lab's cluster file) on the host; it
    adopts what `apply` made. Stopped with SIGTERM (the data plane stays)."""
    import yaml

    from crossnet.lab.etcd import wait_agent_ready

    cluster = Path(host.state_dir).parent / "bad-input-cluster.yaml"
    cluster.write_text(yaml.safe_dump(host.lab.plan.cluster_dict(), sort_keys=False))
    log = Path(host.state_dir).parent / "bad-input-agent.log"
    argv = ["ip", "netns", "exec", host.netns, sys.executable, "-m", "crossnet", "--state-dir", host.state_dir,
            "agent", "-f", str(cluster), "--name", host.plan.name, "--iface", host.plan.ifname, "--resync", "300"]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_agent_ready(host.state_dir, timeout=60, proc=proc, log_path=str(log))
        yield os.path.join(host.state_dir, "agent.sock")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_agent_api_corpus(host, agent):
    """Every bad request to a real agent: a 4xx with one JSON line (never 500), nothing
    changed; a regular file or a directory as netns is 400 naming it."""
    failures = []
    before = host.everything()
    for case in api_cases.CASES:
        raw = _api(agent, case.request(host.container, str(host.file), str(host.dir)))
        head, sep, body = raw.partition(b"\r\n\r\n")
        try:
            status = int(head.split(b" ", 2)[1])
            data = json.loads(body)
            ok = (status in case.status and set(data) == {"error"} and isinstance(data["error"], str)
                  and "\n" not in data["error"])
        except (ValueError, IndexError):
            status, data, ok = None, raw[:200], False
        if not ok:
            failures.append(f"{case.id}: {status} {data!r}")
        after = host.everything()
        if after != before:
            failures.append(f"{case.id}: left state behind: {_what_changed(before, after)}")
            before = after
    assert not failures, f"{len(failures)} case(s):\n" + "\n".join(failures)
    for path in (str(host.file), str(host.dir)):
        raw = _api(agent, api_cases.post("/v1/attach", {"id": "bad1", "netns": path}))
        assert raw.startswith(b"HTTP/1.0 400 ") and path.encode() in raw, raw


def test_cni_corpus_through_the_agent(host, agent):
    """With the agent running, the native client hands calls to its /v1/cni: the same
    answers, nothing changed."""
    failures = _run_corpus(host, "agent")
    assert not failures, f"{len(failures)} case(s):\n" + "\n".join(failures)
