"""The native crossnet-cni client (shim.c) in a simulated host, run as a runtime runs it.

`crossnet cni install` puts the native client at crossnet-cni and the Python client at
crossnet-cni-py. Same calls, same answers: with a warm helper the native client hands
the call to it; without one (or in any doubt) it runs the Python client, which answers
and starts a helper. The CNI conformance cases (test_cni.py) run through the native
client too, since they install the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .test_cni import Host, _log_lines, _wait_for, cid, left_as_found, one_host_lab

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root"),
    pytest.mark.skipif(not shutil.which("cc"), reason="needs a C compiler (cc) for the native client"),
]


class NativeHost(Host):
    def __init__(self, lab, bin_dir: Path, log: Path, info: dict):
        super().__init__(lab, bin_dir, log)
        self.info = info
        self.native = str(bin_dir / "crossnet-cni")
        self.python = str(bin_dir / "crossnet-cni-py")

    def raw(self, plugin: str, command: str | None, stdin: bytes, **env: str) -> tuple[int, bytes]:
        """One call, exactly: (exit status, stdout bytes)."""
        e = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_PATH": "/usr/lib/cni", **env}
        if command is not None:
            e["CNI_COMMAND"] = command
        proc = subprocess.run(["nsenter", f"--net=/run/netns/{self.netns}", plugin], input=stdin, env=e,
                              capture_output=True, timeout=60)
        return proc.returncode, proc.stdout

    def via(self, plugin: str, command: str, conf: dict, **env: str) -> tuple[int, dict | None, str]:
        """A call through plugin: (exit status, parsed stdout, how it was served per the log)."""
        before = len(_log_lines(self.log))
        rc, out = self.raw(plugin, command, json.dumps(conf).encode(), **env)
        lines = [x for x in _log_lines(self.log)[before:] if x.get("command")]
        assert len(lines) == 1, lines
        return rc, (json.loads(out) if out.strip() else None), lines[0]["via"]

    def start_helper(self) -> None:
        """A harmless call through the Python client starts the helper if none runs."""
        from crossnet.cni import client

        sock = Path(client.socket_path(self.state_dir))
        if not sock.exists():
            rc, _ = self.raw(self.python, "DEL", json.dumps(self.conf()).encode(), CNI_CONTAINERID=cid(),
                             CNI_IFNAME="eth0")
            assert rc == 0
        assert _wait_for(sock.exists)

    def stop_helper(self, state_dir: str | None = None) -> None:
        """Make the warm helper (of this host's state dir, or of ``state_dir``) step down: a
        request claiming other code (root namespace, so it is never served)."""
        import crossnet.cni as protocol

        state_dir = state_dir or self.state_dir
        sock = Path(protocol.socket_path(state_dir))
        if not sock.exists():
            return
        env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": cid(), "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
        real = protocol.code_id
        try:  # the request is packed in crossnet.cni (client.call is crossnet.cni.call)
            protocol.code_id = lambda: "other-code"
            assert protocol.call(state_dir, env, json.dumps(self.conf(stateDir=state_dir)).encode()) is None
        finally:
            protocol.code_id = real
        assert _wait_for(lambda: not sock.exists())


@pytest.fixture(scope="module")
def nhost(tmp_path_factory):
    yield from one_host_lab(tmp_path_factory, NativeHost)


@pytest.fixture
def nclean(nhost):
    yield from left_as_found(nhost)


def test_install_puts_native_client_first(nhost):
    assert nhost.info["client"] == "native", nhost.info
    assert Path(nhost.native).read_bytes()[:4] == b"\x7fELF"
    assert Path(nhost.python).read_text().startswith("#!/bin/sh\n")
    assert nhost.info["python_client"] == nhost.python


def test_warm_helper_serves_native_client(nhost, nclean):
    conf = nhost.conf()
    c1, n1 = cid(), nhost.new_netns()
    assert nhost.via(nhost.native, "ADD", conf, CNI_CONTAINERID=c1, CNI_NETNS=n1, CNI_IFNAME="eth0")[0] == 0
    from crossnet.cni import client

    assert _wait_for(Path(client.socket_path(nhost.state_dir)).exists), "no helper after the first ADD"
    c2, n2 = cid(), nhost.new_netns()
    env = {"CNI_CONTAINERID": c2, "CNI_NETNS": n2, "CNI_IFNAME": "eth0", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=w"}
    rc, res, via = nhost.via(nhost.native, "ADD", conf, **env)
    assert (rc, via) == (0, "server"), res
    assert res["interfaces"][1]["sandbox"] == n2
    # the Python client gives the same answer (ADD is idempotent), served by the same helper
    rc, res_py, via = nhost.via(nhost.python, "ADD", conf, **env)
    assert (rc, via) == (0, "server") and res_py == res
    for plugin in (nhost.native, nhost.python):
        assert nhost.via(plugin, "CHECK", nhost.conf(prevResult=res), **env) == (0, None, "server")
    assert nhost.via(nhost.native, "DEL", nhost.conf(prevResult=res), **env) == (0, None, "server")
    assert c2 not in nhost.allocations()
    assert nhost.via(nhost.python, "DEL", conf, **env) == (0, None, "server")
    assert nhost.via(nhost.native, "DEL", conf, CNI_CONTAINERID=c1, CNI_NETNS=n1, CNI_IFNAME="eth0") == (
        0, None, "server")


def test_no_helper_runs_python_client_which_starts_one(nhost, nclean):
    from crossnet.cni import client

    nhost.stop_helper()
    sock = Path(client.socket_path(nhost.state_dir))
    assert not sock.exists()
    c, n = cid(), nhost.new_netns()
    env = {"CNI_CONTAINERID": c, "CNI_NETNS": n, "CNI_IFNAME": "eth0"}
    rc, res, via = nhost.via(nhost.native, "ADD", nhost.conf(), **env)
    assert (rc, via) == (0, "process"), res
    assert res["ips"][0]["address"].split("/")[0] == nhost.allocations()[c]["address"]
    assert _wait_for(sock.exists), "the Python client did not start a helper"
    assert nhost.via(nhost.native, "DEL", nhost.conf(), **env) == (0, None, "server")


def _cases(h: NativeHost) -> dict[str, tuple[str | None, bytes, dict]]:
    conf = h.conf()
    js = json.dumps
    return {
        "non-ascii-stdin": ("ADD", js({**conf, "cniVersion": "9.9.9", "x": "caf\u00e9"}, ensure_ascii=False).encode(),
                            {"CNI_CONTAINERID": cid()}),
        "non-ascii-del": ("DEL", js({**conf, "x": "caf\u00e9"}, ensure_ascii=False).encode(), {"CNI_CONTAINERID": cid()}),
        "invalid-utf8": ("ADD", js(conf).encode()[:-1] + b', "x": "\xff"}', {"CNI_CONTAINERID": cid()}),
        "garbage-add": ("ADD", b"{this is not json", {"CNI_CONTAINERID": cid()}),
        "garbage-del": ("DEL", b"{this is not json", {"CNI_CONTAINERID": cid()}),
        "garbage-check": ("CHECK", b"{this is not json", {"CNI_CONTAINERID": cid()}),
        "empty-stdin": ("ADD", b"", {"CNI_CONTAINERID": cid()}),
        "not-an-object": ("DEL", b"[1, 2]", {"CNI_CONTAINERID": cid()}),
        "non-ascii-args": ("ADD", js(conf).encode(),
                           {"CNI_CONTAINERID": cid(), "CNI_ARGS": "IgnoreUnknown=1;IP=10.1.2.300;K8S_POD_NAME=caf\u00e9"}),
        "bad-ip": ("ADD", js(conf).encode(), {"CNI_CONTAINERID": cid(), "CNI_ARGS": "IP=10.1.2.300"}),
        "server-false": ("ADD", js({**conf, "server": False, "cniVersion": "4.2.0"}).encode(), {"CNI_CONTAINERID": cid()}),
        "no-state": ("DEL", js({**conf, "stateDir": "/nonexistent/crossnet"}).encode(), {"CNI_CONTAINERID": cid()}),
        "version": ("VERSION", js({"cniVersion": "0.4.0"}).encode(), {}),
        "version-unknown": ("VERSION", js({"cniVersion": "7.0.0", "n": "\u00e9"}).encode(), {}),
        "version-garbage": ("VERSION", b"garbage", {}),
        "unknown-command": ("FOO", js(conf).encode(), {"CNI_CONTAINERID": cid()}),
        "no-command": (None, js(conf).encode(), {"CNI_CONTAINERID": cid()}),
        "missing-ifname": ("ADD", js(conf).encode(), {"CNI_CONTAINERID": cid(), "CNI_IFNAME": ""}),
        "status": ("STATUS", js({**conf, "cniVersion": "1.1.0"}).encode(), {}),
    }


CASES = ["non-ascii-stdin", "non-ascii-del", "invalid-utf8", "garbage-add", "garbage-del", "garbage-check",
         "empty-stdin", "not-an-object", "non-ascii-args", "bad-ip", "server-false", "no-state", "version",
         "version-unknown", "version-garbage", "unknown-command", "no-command", "missing-ifname", "status"]


def test_cases_listed(nhost):
    assert sorted(_cases(nhost)) == sorted(CASES)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("helper", ["warm", "none"])
def test_same_answer_as_python_client(nhost, nclean, case, helper):
    """Exactly the Python client's stdout and exit status, with and without a warm helper."""
    command, stdin, env = _cases(nhost)[case]
    env = {"CNI_NETNS": nhost.new_netns(), "CNI_IFNAME": "eth0", **env}
    env = {k: v for k, v in env.items() if v != ""}
    results = []
    for plugin in (nhost.native, nhost.python):
        if helper == "none":
            nhost.stop_helper()
        else:
            nhost.start_helper()
        results.append(nhost.raw(plugin, command, stdin, **env))
    assert results[0] == results[1], results
    nhost.stop_helper()  # a helper started here must not outlive the comparison


def test_never_hands_the_call_to_another_users_socket(nhost, nclean, tmp_path):
    """Sockets at the agent's and the helper's paths whose listener is another user (a
    stateDir others can write): the native client sends them nothing (peer_is_us in
    shim.c), nor does the Python client it falls back to; the call runs in the process.
    (Its own state dir, a copy of the host's applied state: the host's helper comes and
    goes with the other tests.)"""
    import crossnet.cni as protocol
    from tests.unit.test_cni_client import foreign_listener

    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    shutil.copy(Path(nhost.state_dir) / "applied.json", state / "applied.json")
    agent, helper = (str(state / n) for n in (protocol.AGENT_SOCKET, protocol.SOCKET_NAME))
    try:
        with foreign_listener(agent, wait=2.0) as to_agent, foreign_listener(helper, wait=2.0) as to_helper:
            rc, res, via = nhost.via(nhost.native, "DEL", nhost.conf(stateDir=str(state)), CNI_CONTAINERID=cid(),
                                     CNI_IFNAME="eth0")
        assert (rc, res, via) == (0, None, "process")
        assert (to_agent["received"], to_helper["received"]) == (0, 0)
    finally:  # the helper the Python client started for that state dir (after running the call)
        _wait_for(lambda: Path(helper).exists())
        nhost.stop_helper(str(state))
