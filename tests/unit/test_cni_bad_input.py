"""crossnet-cni and bad input, without a kernel: the corpus of tests/unit/bad_cni (every
case one CNI error with the spec's code, never 199) and property-based fuzzing of the
plugin's entry point (plugin.run) and of the helper's request decoding.

Nothing here can change the machine: the state dir is an empty temporary directory
(and the default state dir is pointed at a missing one), so even an input that passes
every check stops at "this host is not configured" (code 11) before any kernel call.
The same corpus runs end to end, with kernel state compared, in tests/e2e/test_bad_input.py.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossnet import safejson
from crossnet.cni import plugin
from tests.unit.bad_cni.cni_cases import CASES, CID, Case

# every code crossnet-cni may answer (docs/cni.md "Errors"); 199 (internal error) is not one
KNOWN_CODES = {1, 2, 3, 4, 5, 6, 7, 11, 50, 100, 101, 102, 103, 104}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(state dir without crossnet state, a network namespace file, a regular file, a
    directory). The namespace is a fresh one held by a sleeping child when we may make
    one (never this process's own)."""
    d = tmp_path_factory.mktemp("bad-cni")
    state = d / "state"
    state.mkdir()
    regular = d / "regular-file"
    regular.write_text("not a namespace\n")
    directory = d / "a-directory"
    directory.mkdir()
    proc = None
    netns = "/proc/self/ns/net"
    if os.geteuid() == 0:
        proc = subprocess.Popen(["unshare", "--net", "sleep", "600"])
        netns = f"/proc/{proc.pid}/ns/net"
        for _ in range(100):  # until unshare has exec'd sleep in its new namespace
            if os.stat(netns).st_ino != os.stat("/proc/self/ns/net").st_ino:
                break
            import time

            time.sleep(0.02)
    try:
        yield str(state), netns, str(regular), str(directory)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


@pytest.fixture(autouse=True)
def no_default_state(monkeypatch, tmp_path):
    """An input without stateDir must never reach a real /var/lib/crossnet."""
    monkeypatch.setattr(plugin, "DEFAULT_STATE_DIR", str(tmp_path / "no-default-state"))


def one_error(rc, out) -> tuple[int, str]:
    assert rc == 1, (rc, out)
    assert set(out) == {"cniVersion", "code", "msg", "details"}, out
    assert out["cniVersion"] in plugin.SUPPORTED_VERSIONS
    assert "\n" not in out["msg"] and "Traceback" not in out["details"], out
    json.dumps(out)  # printable as the plugin prints it
    return out["code"], out["msg"]


def test_corpus_size():
    assert len(CASES) >= 150


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_corpus(world, case: Case):
    state, netns, regular, directory = world
    env = case.environ(netns, regular, directory)
    rc, out = plugin.run(env, case.stdin_bytes(state))
    code, msg = one_error(rc, out)
    assert code == case.code, (code, msg)
    assert len(msg) < 400, msg


@pytest.mark.parametrize("prev", [{"ips": 5}, {"interfaces": 7}, {"routes": True}, {"interfaces": "abc"}])
def test_malformed_prev_result_is_refused_before_add(world, prev):
    """Was: code 199 with a traceback after the veth, address and IPAM entry were made
    ({"interfaces": "abc"}: interfaces "a", "b", "c" in the result)."""
    state, netns, regular, directory = world
    conf = {"cniVersion": "1.0.0", "name": "crossnet", "stateDir": state, "prevResult": prev}
    env = Case("x", 7).environ(netns, regular, directory)
    code, msg = one_error(*plugin.run(env, json.dumps(conf).encode()))
    assert code == 7 and msg.startswith("network configuration: prevResult.") and "must be a list" in msg


@pytest.mark.parametrize("stdin", [b"[" * 100_000, b'{"a":' * 100_000, b"[" * 100_000 + b"]" * 100_000],
                         ids=["lists", "objects", "closed-lists"])
def test_deep_nesting_is_a_decoding_error(world, stdin):
    """Was: RecursionError, code 199."""
    state, netns, regular, directory = world
    code, msg = one_error(*plugin.run(Case("x", 6).environ(netns, regular, directory), stdin))
    assert code == 6 and "nested deeper than" in msg


def test_valid_prev_result_is_accepted(world):
    """A well-formed prevResult of another plugin (0.4.0 and 1.1.0 shapes) passes the
    checks: the call gets as far as the host's state (not configured here: code 11)."""
    state, netns, regular, directory = world
    prev = {"cniVersion": "1.1.0",
            "interfaces": [{"name": "eth1", "mac": "02:00:00:00:00:01", "sandbox": netns, "mtu": 1500}],
            "ips": [{"address": "192.168.5.4/24", "gateway": "192.168.5.1", "interface": 0},
                    {"address": "fd00::4/64", "version": "6"}],
            "routes": [{"dst": "192.168.0.0/16", "gw": "192.168.5.1", "mtu": 1400, "table": 100}],
            "dns": {"nameservers": ["192.168.5.1"], "search": ["lab"], "domain": "lab", "options": ["ndots:2"]}}
    conf = {"cniVersion": "1.1.0", "name": "crossnet", "stateDir": state, "prevResult": prev,
            "runtimeConfig": {"ips": ["10.32.0.9/24"], "mac": "02:42:0a:00:00:09", "portMappings": []},
            "capabilities": {"ips": True, "mac": True}, "dns": {"nameservers": ["1.1.1.1"]},
            "server": True, "serverIdleSeconds": 30, "logFile": str(os.path.join(state, "log"))}
    env = Case("x", 0).environ(netns, regular, directory)
    env["CNI_ARGS"] = "IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=default"
    code, msg = one_error(*plugin.run(env, json.dumps(conf).encode()))
    assert code == 11, msg


def test_build_result_keeps_prev_result():
    """A validated prevResult is extended, entry for entry (not list("abc"))."""
    from types import SimpleNamespace

    prev = {"interfaces": [{"name": "eth1"}], "ips": [{"address": "192.168.5.4/24", "interface": 0}]}
    req = plugin.Request({}, b"")
    req.conf = {"prevResult": prev}
    att = SimpleNamespace(host_if="cnvx", ifname="eth0", mac="02:00:00:00:00:02", netns="/n", mtu=1450,
                          address="10.32.0.2", prefixlen=24, gateway="10.32.0.1")
    res = plugin.build_result(req, None, att, "02:00:00:00:00:03")
    assert [i["name"] for i in res["interfaces"]] == ["eth1", "cnvx", "eth0"]
    assert res["ips"][1]["interface"] == 2


# ---------------------------------------------------------------------- bounded JSON


@pytest.mark.parametrize("text,deep", [
    (b"[" * 10, False), (b"[" * 11, True), (b'["[[[[[[[[[[[[["]', False), (b'{"a":{"b":[1,{"c":[]}]}}', False),
    (b'"\\"[[[[[[[[[[[[[[["', False), ("[" * 11, True), ("\u00e9[" * 3, False),
])
def test_depth_scan(text, deep):
    """Brackets inside strings (escaped quotes included) do not count."""
    assert safejson.too_deep(text, 10) is deep


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
                    max_leaves=30))
def test_depth_scan_agrees_with_json(value):
    """The iterative scan measures what json.loads would recurse into."""

    def depth(v):
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        return 0

    text = json.dumps(value)
    d = depth(value)
    assert not safejson.too_deep(text, d) and (d == 0 or safejson.too_deep(text, d - 1))


# ---------------------------------------------------------------------- fuzzing


def _json_values(leaf=None):
    leaf = leaf or (st.none() | st.booleans() | st.integers(-2, 70000) | st.floats(allow_nan=False)
                    | st.text(max_size=20) | st.sampled_from(["10.32.0.5/24", "eth0", "fd00::1", "1.0.0",
                                                               "02:42:0a:00:00:05", "/", "0.0.0.0/0"]))
    return st.recursive(leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                        max_leaves=8)


FIELDS = ["cniVersion", "name", "type", "stateDir", "ipam", "dns", "runtimeConfig", "args", "capabilities",
          "logFile", "server", "serverIdleSeconds", "prevResult", "cni.dev/valid-attachments"]
PREV_FIELDS = ["cniVersion", "interfaces", "ips", "routes", "dns"]


@st.composite
def configs(draw):
    """A valid configuration with a few fields replaced by random JSON (prevResult's
    fields too), or dropped."""
    conf = {"cniVersion": draw(st.sampled_from(plugin.SUPPORTED_VERSIONS)), "name": "crossnet",
            "type": "crossnet-cni"}
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)):
        if draw(st.booleans()):
            conf[key] = draw(_json_values())
        else:
            conf.pop(key, None)
    if draw(st.booleans()):
        prev = {k: draw(_json_values()) for k in draw(st.lists(st.sampled_from(PREV_FIELDS), max_size=3))}
        conf["prevResult"] = prev
    return conf


COMMANDS = ["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION", "", "add", "X"]
ENV_KEYS = ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH", "CNI_ARGS"]


@st.composite
def environs(draw, netns_choices, commands=COMMANDS):
    env = {"CNI_COMMAND": draw(st.sampled_from(commands)), "CNI_CONTAINERID": CID,
           "CNI_NETNS": draw(st.sampled_from(netns_choices)), "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
    for key in draw(st.lists(st.sampled_from(ENV_KEYS), max_size=3, unique=True)):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            env.pop(key, None)
        elif choice == 1:
            env[key] = draw(st.text(max_size=40))
        elif choice == 2:
            env[key] = draw(st.sampled_from(["IgnoreUnknown=1;IP=10.32.0.7", "IP=x;MAC=y", "a" * 16, "eth0",
                                             "../..", "K8S_POD_NAME=\x00", ";;;=", "IgnoreUnknown=true;Z=1"]))
        else:
            env[key] = draw(st.sampled_from(netns_choices))
    return env


def _check_outcome(env, stdin, rc, out):
    if env.get("CNI_COMMAND") == "VERSION":
        assert rc == 0 and out["supportedVersions"] == list(plugin.SUPPORTED_VERSIONS)
        return
    if rc == 0:
        assert out is None, out  # nothing is configured here: only DEL/GC can succeed, without output
        assert env["CNI_COMMAND"] in ("DEL", "GC")
        return
    code, _ = one_error(rc, out)
    assert code in KNOWN_CODES, out


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_plugin_entry(world, data):
    """Random configurations and environments: a known CNI error or success, never an
    internal error (199), never an exception."""
    state, netns, regular, directory = world
    env = data.draw(environs([netns, regular, directory, "/nonexistent", "/dev/null", "/proc/self/ns/uts"]))
    conf = data.draw(configs())
    if isinstance(conf, dict) and "stateDir" in conf and conf["stateDir"] is not None:
        conf["stateDir"] = data.draw(st.sampled_from([state, conf["stateDir"]])) if not isinstance(
            conf["stateDir"], str) else state  # never a real state dir
    stdin = json.dumps(conf).encode()
    rc, out = plugin.run(env, stdin)
    _check_outcome(env, stdin, rc, out)


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
       command=st.sampled_from(COMMANDS))
def test_fuzz_plugin_bytes(world, raw, command):
    """Random bytes on stdin."""
    state, netns, regular, directory = world
    env = Case("x", 0, command=command).environ(netns, regular, directory)
    rc, out = plugin.run(env, raw)
    _check_outcome(env, raw, rc, out)


@settings(max_examples=300, deadline=None)
@given(req=_json_values())
def test_fuzz_helper_request(req):
    """What the warm helper / the agent's /v1/cni unpack: a ValueError naming the field,
    or an environ of strings and stdin bytes; never another exception."""
    raw = json.dumps(req).encode()
    try:
        got = plugin.load_request(raw, 1 << 20)
        environ, stdin = plugin.unpack_request(got)
    except ValueError as exc:
        assert "\n" not in str(exc)
        return
    assert all(isinstance(k, str) and k.startswith("CNI_") and isinstance(v, str) for k, v in environ.items())
    assert isinstance(stdin, bytes)


@pytest.mark.parametrize("raw,msg", [
    (b"[" * 1000, "nested deeper"), (b"[]", "not a JSON object"), (b"{", "not valid JSON"),
    (b'{"environ": 5}', "environ: must be an object"), (b'{"environ": {"CNI_IFNAME": 5}}', "environ.CNI_IFNAME"),
    (b'{"stdin": []}', "stdin: must be a string"), (b'{"stdin": "\\ud800"}', "lone surrogate"),
])
def test_helper_request_errors(raw, msg):
    with pytest.raises(ValueError, match=msg):
        plugin.unpack_request(plugin.load_request(raw, 1 << 20))


def test_helper_reply_to_a_bad_request_is_a_decoding_error():
    reply = plugin.bad_request_reply("stdin: must be a string")
    out = json.loads(reply["stdout"])
    assert reply["rc"] == 1 and out["code"] == 6 and "stdin" in out["msg"]


def test_control_characters_in_cni_netns_stay_on_one_line():
    """Found by test_fuzz_plugin_entry: CNI_NETNS='\\n' made a two-line error message."""
    from crossnet.cni.plugin import _short

    assert _short("\n") == "\\n" and _short("a\tb") == "a\\tb" and _short("plain") == "plain"
    assert "\n" not in _short("x\n" * 100)
