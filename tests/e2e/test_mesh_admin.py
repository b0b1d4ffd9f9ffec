"""`crossnet launch` administration end to end (docs/mesh.md), in a 4-host L3 lab typed by
hand (real etcd members in the host namespaces):

* two hosts joining at the same moment into a 2-voter mesh make exactly 3 voters (the
  voter lock: both used to see 2 voters and both became the third);
* `status` says how each peer is reached (backend, underlay next hop: the router here);
* `status` on a launched host (the client of the race) that is down and has no applied
  state says what is down;
* after `crossnet forget` of that host, its certificate and key are refused by every remaining
  member's etcd client and peer ports (the CRL), while they worked just before.

Tests run in file order, each leaving the mesh as the next expects.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.e2e.agentlab import launched_lab
from tests.e2e.test_mesh_launch import _launch, _status, _token_line, _wait

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def lab4(request, lab_sweep):
    yield from launched_lab(request)  # 4 hosts, L3


def test_two_hosts_joining_at_once_into_two_voters_make_exactly_three(lab4):
    lab = lab4
    token, addr = _token_line(_launch(lab, "h1").stdout)
    assert "joined the mesh as a voter" in _launch(lab, "h2", "--token", token, addr).stdout
    results: dict[str, subprocess.CompletedProcess] = {}
    start = threading.Barrier(2)

    def join(h: str) -> None:
        start.wait()
        results[h] = _launch(lab, h, "--token", token, addr, check=False, timeout=180)

    threads = [threading.Thread(target=join, args=(h,)) for h in ("h3", "h4")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    for h, res in results.items():
        assert res.returncode == 0, (h, res.stdout, res.stderr)
    roles = sorted("voter" if "as a voter" in r.stdout else "client" for r in results.values())
    assert roles == ["client", "voter"], {h: r.stdout for h, r in results.items()}
    st = _wait(lambda: (s := _status(lab, "h1"))["store"] == "ok" and len(s["members"]) == 4 and s, 60,
               "4 members")
    assert sorted(m["role"] for m in st["members"]) == ["client", "voter", "voter", "voter"], st["members"]
    assert all(m["healthy"] for m in st["members"]), st["members"]


def _default_gateway(lab, host: str) -> str:
    out = subprocess.run(["ip", "-n", lab.plan.host(host).netns, "-j", "route", "show", "default"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]["gateway"]


def test_status_says_how_each_peer_is_reached(lab4):
    lab = lab4
    gw = _default_gateway(lab, "h1")
    st = _wait(lambda: (s := _status(lab, "h1"))["store"] == "ok" and len(s["peers"]) == 4 and s, 60, "4 peers")
    via = {p["name"]: p["via"] for p in st["peers"]}
    assert via["h1"]["text"] == "this host"
    for h in ("h2", "h3", "h4"):  # L3 underlay: every peer is behind h1's router
        assert via[h] == {"backend": "vxlan", "next_hop": gw, "text": f"vxlan, via router {gw}"}, via[h]
    text = lab.crossnet("h1", "status").stdout
    assert f"vxlan, via router {gw}" in text


def _client(lab) -> str:
    """The one of h3/h4 that lost the race for the voter slot."""
    return next(m["name"] for m in _status(lab, "h1")["members"] if m["role"] == "client")


def test_status_of_a_launched_host_that_is_down_without_applied_state(lab4):
    lab = lab4
    h = _client(lab)
    lab.crossnet(h, "stop")
    lab.crossnet(h, "reset")
    assert not (Path(lab.plan.host(h).state_dir) / "applied.json").exists()
    res = lab.crossnet(h, "status", check=False)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    first = res.stdout.splitlines()[0]
    assert first.startswith(f"{h}: not programmed (no applied state): crossnet launch is not running here"), first
    assert "NOT running" in res.stdout
    js = json.loads(lab.crossnet(h, "status", "-o", "json").stdout)
    assert js["programmed"] is False and js["mesh"]["running"] is False and js["host"] == h
    assert "not running" in js["reason"]
    # the rest of the mesh is fine and says the host is down
    _wait(lambda: {p["name"]: p["state"] for p in _status(lab, "h1")["peers"]}.get(h) == "down", 60, f"{h} down")


PROBE = """
import http.client, json, ssl, sys
pki, urls = sys.argv[1], sys.argv[2:]
ctx = ssl.create_default_context(cafile=pki + "/ca.crt")
ctx.load_cert_chain(pki + "/member.crt", pki + "/member.key")
out = {}
for url in urls:
    host, port = url.rsplit(":", 1)
    try:
        c = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=5)
        c.request("GET", "/version")
        out[url] = c.getresponse().status
    except Exception as exc:
        out[url] = type(exc).__name__
print(json.dumps(out))
"""


def _probe(lab, host: str, pki_dir: str, urls: list[str]) -> dict:
    res = subprocess.run(lab.argv(host, [sys.executable, "-c", PROBE, pki_dir, *urls]), capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(res.stdout)


def test_forgotten_host_certificate_is_refused_by_every_remaining_member(lab4):
    lab = lab4
    gone = _client(lab)  # stopped by the previous test: a host that is gone
    pki_dir = str(Path(lab.plan.host(gone).state_dir) / "mesh" / "pki")
    voters = [m["name"] for m in _status(lab, "h1")["members"] if m["role"] == "voter"]
    assert len(voters) == 3 and gone not in voters, voters
    urls = [f"{lab.plan.host(h).address}:{port}" for h in voters for port in (2379, 2380)]
    # positive control: before forget, its certificate opens every client and peer port
    assert _probe(lab, gone, pki_dir, urls) == {u: 200 for u in urls}
    out = lab.crossnet("h1", "forget", gone).stdout
    assert "certificate (revoked)" in out, out

    def refused():
        got = _probe(lab, gone, pki_dir, urls)
        return got if all(v != 200 for v in got.values()) else None

    got = _wait(refused, 60, f"{gone}'s certificate refused everywhere")
    assert set(got) == set(urls)
    # the members themselves still talk to each other and to their clients
    st = _wait(lambda: (s := _status(lab, "h2"))["store"] == "ok" and s, 30, "store ok")
    assert sorted(m["name"] for m in st["members"] if m["role"] == "voter") == sorted(voters)
    assert gone not in {p["name"] for p in st["peers"]}


@pytest.mark.parametrize("backend", ["ovs-gre", "ovs-vxlan"])
def test_ovs_backends_with_store_mesh_all_pairs_ping(lab_factory, backend):
    """`lab up --store mesh --backend ovs-*`: the agent inside `crossnet launch` programs
    Open vSwitch tunnels (each host's private ovs from the lab's ovs service)."""
    lab = lab_factory(hosts=3, underlay="l2", backend=backend, containers=1, extra={"store": "mesh"})
    st = _wait(lambda: (s := _status(lab, "h2"))["store"] == "ok" and len(s["peers"]) == 3 and s, 60, "3 peers")
    assert {p["name"]: p["state"] for p in st["peers"]} == {"h1": "up", "h2": "up", "h3": "up"}
    assert {p["via"]["backend"] for p in st["peers"] if p["name"] != "h2"} == {backend}
    pairs = lab.check()
    assert len(pairs) == 6 and all(p.ok for p in pairs), [p for p in pairs if not p.ok]
    assert "Port" in lab.run("h1", ["ovs-vsctl", "show"], check=True).stdout
