"""Helpers for the end-to-end tests of named networks under a store (docs/networks.md,
"Under a store"): test_networks_store.py, test_networks_auto_switch.py and
test_networks_ovs_agent.py. A lab built by `lab up --store etcd` gets its named
networks through `crossnet etcd init --force` (the lab's own settings kept), its
containers moved into them with `attach --network`, and every pair checked.

Not collected by pytest (no ``test_`` prefix)."""

from __future__ import annotations

import json
import time

from crossnet.check import Endpoint, ping_matrix
from crossnet.lab.etcd import lab_etcd

NETS = {"blue": "10.33.0.0/16", "red": "10.34.0.0/16", "green": "10.35.0.0/16"}


def init(lab, *names: str) -> dict:
    """`crossnet etcd init --force` with the lab's settings and the named networks `names`."""
    from crossnet.store.etcd import EtcdStore

    cfg = EtcdStore(lab_etcd(lab.plan).client(), "/crossnet").get_config()  # what the lab wrote: kept
    args = ["etcd", "init", "--etcd", lab.etcd_url, "--force", "--ttl", str(cfg.ttl), "--network", str(cfg.network),
            "--name", cfg.name, "--subnet-len", str(cfg.subnet_len), "--vni", str(cfg.vxlan.vni), "--port",
            str(cfg.vxlan.port), "--backend", cfg.backend, *(["--mtu", str(cfg.mtu)] if cfg.mtu else []), "-o", "json"]
    for n in names:
        args += ["--network-name", n, "--network-cidr", NETS[n]]
    return json.loads(lab.crossnet("h1", *args).stdout)


def programmed(lab, names) -> dict | None:
    """host -> its network -> subnet, once every host has every network of `names`."""
    out = {}
    for h in lab.hosts:
        st = lab.status(h.name)
        nets = st.get("networks") or {}
        if sorted(nets) != sorted(names):
            return None
        out[h.name] = {n: nets[n]["subnet"] for n in names}
    return out


def put(lab, h, container: str, network: str) -> Endpoint:
    """Move one of the lab's containers from the default network to `network`."""
    lab.crossnet(h.name, "detach", container)
    lab.crossnet(h.name, "attach", container, "--network", network)
    st = lab.status(h.name)
    c = next(c for c in st["networks"][network]["containers"] if c["id"] == container)
    return Endpoint(f"{h.name}/{network}", container, c["address"].split("/")[0])


def config_health(lab) -> dict[str, object]:
    """host -> its agent's health `config` problem (None: nothing to report)."""
    return {h.name: ((lab.status(h.name).get("agent_health") or {}).get("errors") or {}).get("config")
            for h in lab.hosts}


def same_network_only(members: dict[str, list[Endpoint]], settle: float = 20.0) -> list:
    """Every pair of `members` (network -> its containers): those of one network ping
    (after at most `settle` s: devices and handshakes of a change still settling), those
    of different networks never -- not once, in any round. Returns the last round's pairs."""
    net_of = {e.name: n for n, eps in members.items() for e in eps}
    everyone = [e for eps in members.values() for e in eps]
    deadline = time.monotonic() + settle
    while True:
        pairs = ping_matrix(everyone, count=1, timeout=1.0, workers=12)
        assert len(pairs) == len(everyone) * (len(everyone) - 1), pairs
        crossed = [(p.src, p.dst) for p in pairs if p.ok and net_of[p.src] != net_of[p.dst]]
        assert not crossed, f"pairs of different networks that reached each other: {crossed}"
        missing = [(p.src, p.dst) for p in pairs if not p.ok and net_of[p.src] == net_of[p.dst]]
        if not missing:
            return pairs
        assert time.monotonic() < deadline, f"same-network pairs that do not ping: {missing}"
        time.sleep(1.0)
