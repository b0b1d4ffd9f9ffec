"""The agent's DNS of the named networks (crossnet.agent.netdns, docs/dns.md): the
``network`` field of published containers (validated as hostile input), containers of a
named network kept only inside their host's subnet of it, one server per named network
answering only for its own containers (started and stopped as networks come and go),
and peers' subnets of the named networks checked against this host's own routes."""

from __future__ import annotations

import logging
import re
import socket
from ipaddress import IPv4Address, IPv4Network
from types import SimpleNamespace

import pytest
from dnslib import QTYPE, RCODE, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from crossnet import networks
from crossnet.dns import resolv as dns_resolv
from crossnet.state import StateDir
from crossnet.store import HostRecord, clean_containers
from crossnet.store.records import LocalView, PeerBook, check_record, filter_containers

# ---- the published `network` field ------------------------------------------------------------
NAME = re.compile(r"[a-z][a-z0-9]{0,11}")
hostile = st.one_of(st.none(), st.just("default"), st.sampled_from(["blue", "red", "n0", "abcdefghijkl"]),
                    st.text(max_size=20), st.integers(), st.booleans(), st.lists(st.text(max_size=3), max_size=2),
                    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
                    st.sampled_from(["Blue", "1net", "abcdefghijklm", "blue\n", "../x", "bl ue", ""]))


@settings(max_examples=300, deadline=None)
@given(hostile)
def test_published_network_field_is_a_network_name_or_the_entry_is_dropped(net):
    entry = {"id": "c1", "address": "10.33.1.5", "name": "web"}
    got = clean_containers([{**entry, "network": net}, {"id": "c2", "address": "10.32.1.5"}])
    assert {"id": "c2", "address": "10.32.1.5"} in got  # the other entry is never affected
    mine = [c for c in got if c["id"] == "c1"]
    if net is None or net == "default":
        assert mine == [entry]  # the top-level network's: no field
    elif isinstance(net, str) and NAME.fullmatch(net):
        assert mine == [{**entry, "network": net}]
    else:
        assert mine == []  # cannot be placed in any network: never served, never pinged
    assert clean_containers(got) == got  # what is read back is what was published


def test_containers_of_a_named_network_are_kept_only_inside_their_hosts_subnet_of_it():
    published = {
        "h2": [{"id": "a", "address": "10.32.2.5"},  # top level
               {"id": "b", "address": "10.33.2.5", "network": "blue"},  # inside h2's blue subnet
               {"id": "c", "address": "10.32.2.6", "network": "blue"},  # a top-level address claimed for blue
               {"id": "d", "address": "10.34.2.5", "network": "red"},  # h2 has no valid red subnet
               {"id": "e", "address": "10.33.2.1", "network": "blue"}],  # blue's gateway on h2
        "evil": [{"id": "x", "address": "10.33.9.5", "network": "blue"}],  # no valid record
    }
    kept, dropped = filter_containers(published, {"h2": IPv4Network("10.32.2.0/24")},
                                      {"h2": {"blue": IPv4Network("10.33.2.0/24")},
                                       "evil": {"blue": IPv4Network("10.33.9.0/24")}})
    assert kept == {"h2": [{"id": "a", "address": "10.32.2.5"}, {"id": "b", "address": "10.33.2.5", "network": "blue"}]}
    assert dropped == 4


# ---- peers' subnets of the named networks against this host's routes ---------------------------
BLUE = IPv4Network("10.33.0.0/16")
VIEW = LocalView(network=IPv4Network("10.32.0.0/16"), subnet_len=24, name="h1", address=IPv4Address("10.56.0.1"),
                 subnet=IPv4Network("10.32.1.0/24"),
                 foreign=(IPv4Network("0.0.0.0/0"), IPv4Network("10.56.0.0/20"), IPv4Network("10.33.99.0/24")),
                 connected=(IPv4Network("10.56.0.0/20"),),
                 networks={"blue": (BLUE, 24, IPv4Network("10.33.1.0/24"))})


def peer(blue: str) -> HostRecord:
    sub = IPv4Network("10.32.2.0/24")
    return HostRecord("h2", IPv4Address("10.56.0.2"), sub, {}, key=sub, created=3,
                      networks={"blue": IPv4Network(blue)})


def test_a_peers_named_network_subnet_over_a_route_this_host_did_not_make_is_refused(caplog):
    assert check_record(peer("10.33.2.0/24").key, peer("10.33.2.0/24"), VIEW) is None
    bad = peer("10.33.99.0/24")
    why = check_record(bad.key, bad, VIEW)
    assert why == "networks.blue: 10.33.99.0/24 overlaps this host's route 10.33.99.0/24"
    book = PeerBook()
    book.load([bad])
    with caplog.at_level(logging.WARNING, logger="crossnet.agent"):
        assert book.select(VIEW) == {} and book.select(VIEW) == {}  # not programmed
    lines = [r.getMessage() for r in caplog.records if "rejected store record" in r.getMessage()]
    assert len(lines) == 1 and "networks.blue: 10.33.99.0/24 overlaps" in lines[0], lines  # one line, once


# ---- one server per named network -------------------------------------------------------------
def free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
        try:
            for addr in ("127.0.0.2", "127.0.0.3"):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    with socket.socket(socket.AF_INET, kind) as s:
                        s.bind((addr, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


class FakeStore:
    """Carries containers (a channel between hosts); its watch reports nothing until stopped."""

    def containers_at(self):
        return {}, 1

    def watch_containers(self, since, stop, on_open=None):
        stop.wait()
        return iter(())


def ctx(gateway: str, network: str) -> SimpleNamespace:
    return SimpleNamespace(backend="vxlan", gateway=IPv4Address(gateway), network=IPv4Network(network))


def query(name: str, server: str, port: int, qtype: str = "A") -> DNSRecord:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((server, 0))  # from the gateway address, as the host's own queries go (127/8: from 127.0.0.1)
        s.settimeout(2)
        s.sendto(DNSRecord.question(name, qtype).pack(), (server, port))
        return DNSRecord.parse(s.recv(4096))


@pytest.fixture
def agent(tmp_path):
    from crossnet.agent import netdns

    for name in ("blue", "red"):  # their state dirs (crossnet.networks.record made them)
        (tmp_path / "networks" / name).mkdir(parents=True)

    published = {"h1": [{"id": "t", "address": "10.32.1.5", "name": "top"},
                        {"id": "b", "address": "10.33.1.5", "name": "bweb", "network": "blue"}],
                 "h2": [{"id": "r", "address": "10.34.2.5", "name": "rweb", "network": "red"},
                        {"id": "b2", "address": "10.33.2.5", "name": "bweb", "network": "blue"}]}
    a = SimpleNamespace(state=StateDir(tmp_path), cfg=SimpleNamespace(dns_domain="crossnet.local"), store=FakeStore(),
                        dns=SimpleNamespace(scope="cluster", server=SimpleNamespace(port=free_port())),
                        nets={"blue": ctx("127.0.0.2", "10.33.0.0/16"), "red": ctx("127.0.0.3", "10.34.0.0/16")},
                        net_dns={}, cluster_containers=lambda: {"hosts": published})
    yield a
    netdns.stop_all(a)


def test_each_named_network_has_its_own_server_answering_only_for_its_containers(agent):
    from crossnet.agent import netdns

    port = agent.dns.server.port
    netdns.sync(agent)
    assert sorted(agent.net_dns) == ["blue", "red"]
    blue = query("bweb.crossnet.local", "127.0.0.2", port)
    assert blue.header.rcode == RCODE.NOERROR
    assert sorted(str(r.rdata) for r in blue.rr if r.rtype == QTYPE.A) == ["10.33.1.5", "10.33.2.5"]  # both hosts
    for name in ("rweb", "top"):  # another network's name, the top-level network's name
        assert query(f"{name}.crossnet.local", "127.0.0.2", port).header.rcode == RCODE.NXDOMAIN
    red = query("rweb.crossnet.local", "127.0.0.3", port)
    assert [str(r.rdata) for r in red.rr] == ["10.34.2.5"]
    assert query("bweb.crossnet.local", "127.0.0.3", port).header.rcode == RCODE.NXDOMAIN
    # containers of blue get blue's gateway (CNI `dns`, attach --network's resolv.conf)
    blue_state = networks.state_of(agent.state, "blue")
    assert dns_resolv.cni_dns(blue_state, None) == {"nameservers": ["127.0.0.2"], "search": ["crossnet.local"]}
    assert dns_resolv.served(networks.state_of(agent.state, "red"))["listen"] == ["127.0.0.3"]
    assert dns_resolv.served(agent.state) is None  # the top-level network's is not theirs

    # blue goes (netfollow removed it): its server stops, red's runs on
    del agent.nets["blue"]
    netdns.sync(agent)
    assert sorted(agent.net_dns) == ["red"]
    assert dns_resolv.served(blue_state) is None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        assert s.connect_ex(("127.0.0.2", port)) != 0  # nothing listens there any more
    assert [str(r.rdata) for r in query("rweb.crossnet.local", "127.0.0.3", port).rr] == ["10.34.2.5"]
    # blue comes back (added at run time): served again
    agent.nets["blue"] = ctx("127.0.0.2", "10.33.0.0/16")
    netdns.sync(agent)
    assert sorted(agent.net_dns) == ["blue", "red"]
    assert query("bweb.crossnet.local", "127.0.0.2", port).header.rcode == RCODE.NOERROR


def test_no_named_servers_without_the_agents_dns_or_a_store_channel(agent):
    from crossnet.agent import netdns

    agent.dns = SimpleNamespace(scope="host", server=agent.dns.server)  # the cluster file: peers unknown
    netdns.sync(agent)
    assert agent.net_dns == {}
    agent.dns = None  # the agent does not serve DNS (crossnet dns serve does)
    netdns.sync(agent)
    assert agent.net_dns == {}


def test_a_named_network_container_is_published_with_its_network(tmp_path, monkeypatch):
    """What the agent publishes: the top-level network's containers and each named network's."""
    from crossnet import containers
    from crossnet.agent import netdns

    state = StateDir(tmp_path)
    for name in ("blue", "red"):
        (tmp_path / "networks" / name).mkdir(parents=True)
    (tmp_path / "networks" / "Bad").mkdir()  # not a network name: not a network
    listed = {str(tmp_path): [{"id": "t", "address": "10.32.1.5/24", "name": "top"}],
              str(tmp_path / "networks" / "blue"): [{"id": "b", "address": "10.33.1.5/24", "name": "bweb"},
                                                    {"id": "s", "address": "10.33.1.6/24", "state": "stale"}],
              str(tmp_path / "networks" / "red"): []}
    monkeypatch.setattr(containers, "list_containers", lambda st: listed[str(st.root)])
    assert netdns.local_containers(state) == [
        {"id": "b", "address": "10.33.1.5", "name": "bweb", "network": "blue"},
        {"id": "t", "address": "10.32.1.5", "name": "top"}]


def test_the_top_level_dns_reads_only_the_top_level_networks_containers():
    from crossnet.dns.service import of_network

    hosts = {"h1": [{"id": "t", "address": "10.32.1.5"}, {"id": "b", "address": "10.33.1.5", "network": "blue"}]}
    assert of_network(hosts, None) == {"h1": [{"id": "t", "address": "10.32.1.5"}]}
    assert of_network(hosts, "blue") == {"h1": [{"id": "b", "address": "10.33.1.5", "network": "blue"}]}
    assert of_network(hosts, "red") == {"h1": []}


