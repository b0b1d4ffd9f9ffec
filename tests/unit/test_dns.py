"""Container DNS, the pure parts: names, the table (round robin, PTR), the answers, hostile
queries, the forwarder against a fake upstream, resolv.conf handling, the domain setting."""

from __future__ import annotations

import contextlib
import json
import os
import time
from ipaddress import IPv4Address, IPv4Network

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from crossnet import dns
from crossnet.dns import RoundRobin, Table, name_problem
from crossnet.dns import resolv as dns_resolv
from crossnet.dns.server import Forwarder, fit, local_answer, parse_query, udp_limit
from crossnet.errors import ConfigError
from crossnet.state import StateDir

NET = IPv4Network("10.32.0.0/16")
HOSTS = {
    "h1": [{"id": "a", "address": "10.32.0.2", "name": "web"}, {"id": "b", "address": "10.32.0.3", "name": "db"},
           {"id": "c", "address": "10.32.0.4"}],
    "h2": [{"id": "d", "address": "10.32.1.2", "name": "Web"}],
}


def table(hosts=HOSTS, domain="crossnet.local") -> Table:
    return Table.build(domain, hosts, [NET])


def ask(t: Table, name: str, qtype: str = "A", rr: RoundRobin | None = None) -> DNSRecord | None:
    return local_answer(t, DNSRecord.question(name, qtype), rr or RoundRobin())


def addrs(reply: DNSRecord) -> list[str]:
    return [str(r.rdata) for r in reply.rr]


# ---- names -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["web", "web-1", "a_b", "x.y", "A1", "a" * 63])
def test_good_names(name):
    assert name_problem(name) is None


@pytest.mark.parametrize("name", ["", "-web", "web-", "a..b", "a b", "we/b", "a" * 64, "é", "x\x00", ".", None, 5,
                                  "web\n", "a\n.b", "web\n\n"])
def test_bad_names(name):
    assert name_problem(name)


@pytest.mark.parametrize("domain", ["", "bad domain", "10.in-addr.arpa", "x" * 121])
def test_bad_domains(domain):
    assert dns.domain_problem(domain)


def test_runtime_name():
    assert dns.runtime_name("podman:web", None) == "web"
    assert dns.runtime_name("docker:web_1", None) == "web_1"
    assert dns.runtime_name("podman:-bad", None) is None  # not a DNS name: none recorded
    assert dns.runtime_name("netns1", None) is None
    assert dns.runtime_name("netns1", "api") == "api"
    with pytest.raises(ConfigError, match="^--name: "):
        dns.runtime_name("netns1", "no good")


# ---- the table -------------------------------------------------------------------------
def test_same_name_on_two_hosts_gives_both_addresses_round_robin():
    t = table()
    assert t.addresses("WEB.crossnet.local.") == (IPv4Address("10.32.0.2"), IPv4Address("10.32.1.2"))
    rr = RoundRobin()
    firsts = [addrs(ask(t, "web.crossnet.local", rr=rr)) for _ in range(4)]
    assert all(sorted(f) == ["10.32.0.2", "10.32.1.2"] for f in firsts)
    assert [f[0] for f in firsts] == ["10.32.0.2", "10.32.1.2", "10.32.0.2", "10.32.1.2"]


def test_ptr():
    t = table()
    reply = ask(t, dns.reverse_name("10.32.0.3"), "PTR")
    assert addrs(reply) == ["db.crossnet.local."] and reply.header.aa
    assert ask(t, "4.0.32.10.in-addr.arpa", "PTR").header.rcode == RCODE.NXDOMAIN  # unnamed container
    # a reverse name inside the network is never forwarded, even when unknown
    assert ask(t, "9.9.32.10.in-addr.arpa", "PTR").header.rcode == RCODE.NXDOMAIN
    assert ask(t, "32.10.in-addr.arpa", "PTR") is not None
    assert ask(t, "1.0.0.10.in-addr.arpa", "PTR") is None  # outside the network: forwarded
    assert ask(t, "10.in-addr.arpa", "PTR") is None


def test_unknown_and_other_types():
    t = table()
    assert ask(t, "nope.crossnet.local").header.rcode == RCODE.NXDOMAIN
    nodata = ask(t, "web.crossnet.local", "AAAA")
    assert nodata.header.rcode == RCODE.NOERROR and not nodata.rr
    assert ask(t, "crossnet.local", "SOA").header.rcode == RCODE.NOERROR
    assert ask(t, "example.com") is None  # not ours: the forwarder's
    assert ask(t, "crossnet.local.example.com") is None
    assert ask(table(domain="corp.example"), "web.corp.example").rr


def test_rejected_entries_are_counted_not_served():
    t = table({"h": [{"id": "a", "address": "10.32.0.2", "name": "bad name"},
                     {"id": "b", "address": "nope", "name": "ok"},
                     {"id": "c", "address": "10.32.0.5", "name": "fine"},
                     {"id": "d", "address": "10.32.0.6", "name": "web\n"}]})  # "$" matched before the newline
    assert t.rejected == 3 and list(t.names) == ["fine.crossnet.local"]
    assert ask(t, "6.0.32.10.in-addr.arpa", "PTR").header.rcode == RCODE.NXDOMAIN  # no PTR carrying a newline


@settings(max_examples=300, deadline=None)
@given(st.lists(st.fixed_dictionaries({"id": st.text(max_size=5), "address": st.one_of(
    st.ip_addresses(v=4).map(str), st.text(max_size=20)), "name": st.one_of(st.none(), st.text(max_size=70))}),
    max_size=20))
def test_table_takes_any_published_list(items):
    t = table({"h": items})
    good = [c for c in items if c["name"] and name_problem(c["name"]) is None and _is_v4(c["address"])]
    for c in good:
        assert IPv4Address(c["address"]) in t.addresses(f"{c['name']}.crossnet.local")
        assert f"{c['name'].lower()}.crossnet.local" in t.ptr[IPv4Address(c["address"])]
    assert t.rejected == sum(1 for c in items if c["name"]) - len(good)


def _is_v4(text: str) -> bool:
    try:
        IPv4Address(text)
        return True
    except ValueError:
        return False


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_names_that_pass_are_dns_labels(name):
    if name_problem(name) is None:
        assert all(1 <= len(label) <= 63 for label in name.split("."))
        assert name.isascii() and " " not in name and len(name) <= 63
        assert DNSRecord.question(f"{name}.crossnet.local").pack()  # encodes on the wire


@settings(max_examples=200, deadline=None)
@given(st.ip_addresses(v=4))
def test_reverse_name_round_trip(addr):
    net, one = dns.parse_reverse(dns.reverse_name(addr))
    assert one == addr and net.prefixlen == 32
    assert dns.in_reverse_zones(dns.reverse_name(addr), [NET]) == (addr in NET)


# ---- hostile queries ------------------------------------------------------------------
def test_oversized_and_garbage_queries():
    assert parse_query(b"\x00" * 2000) == (None, None)  # too long: dropped, no answer
    assert parse_query(b"\x12") == (None, None)  # not even a header
    _, err = parse_query(b"\x12\x34\x01\x00" + b"\x00\x01" + b"\x00" * 6 + b"\x07garbage")
    assert err is not None and DNSRecord.parse(err).header.rcode == RCODE.FORMERR
    assert DNSRecord.parse(err).header.id == 0x1234
    resp = DNSRecord.question("web.crossnet.local").reply().pack()
    assert parse_query(resp) == (None, None)  # a response: never answered (no reflection loop)


def test_two_questions_and_other_opcodes():
    q = DNSRecord.question("a.crossnet.local")
    q.add_question(*DNSRecord.question("b.crossnet.local").questions)
    _, err = parse_query(q.pack())
    assert DNSRecord.parse(err).header.rcode == RCODE.FORMERR
    q = DNSRecord.question("a.crossnet.local")
    q.header.opcode = 4  # NOTIFY
    _, err = parse_query(q.pack())
    assert DNSRecord.parse(err).header.rcode == RCODE.NOTIMP


def test_udp_answer_cut_to_the_clients_size():
    many = {"h": [{"id": str(i), "address": f"10.32.{i // 200}.{i % 200 + 2}", "name": "big"} for i in range(100)]}
    t = table(many)
    q = DNSRecord.question("big.crossnet.local")
    reply = local_answer(t, q, RoundRobin())
    assert len(reply.rr) == 32  # at most MAX_ANSWERS records, whatever the name has
    cut = DNSRecord.parse(fit(reply, udp_limit(q)))
    assert len(fit(reply, udp_limit(q))) <= 512 and cut.header.tc and not cut.rr
    q.add_ar(EDNS0(udp_len=4096))
    assert udp_limit(q) == 1232
    assert len(DNSRecord.parse(fit(reply, None)).rr) == 32  # TCP: all of them


# ---- forwarder -------------------------------------------------------------------------
class FakeUpstream:
    """Answers queries as `behaviour[server]` says: "ok", "timeout", "wrong-id", "wrong-q", "garbage"."""

    def __init__(self, behaviour):
        self.behaviour, self.calls = behaviour, []

    def __call__(self, data, server, port, timeout):
        self.calls.append((server, port, timeout))
        q = DNSRecord.parse(data)
        how = self.behaviour[server]
        if how == "timeout":
            time.sleep(min(timeout, 0.05))
            raise TimeoutError("no answer")
        if how == "garbage":
            return b"\x00\x01"
        if how == "wrong-q":
            q = DNSRecord(q.header, q=DNSRecord.question("other.example").q)
        reply = q.reply()
        reply.add_answer(*DNSRecord.question("x").reply().rr)
        from dnslib import RR, A

        reply.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("192.0.2.7"), ttl=30))
        if how == "wrong-id":
            reply.header.id ^= 1
        return reply.pack()


def test_forwarder_rewrites_the_id_and_checks_the_answer():
    up = FakeUpstream({"192.0.2.1": "wrong-id", "192.0.2.2": "wrong-q", "192.0.2.3": "ok"})
    f = Forwarder(["192.0.2.1", "192.0.2.2", "192.0.2.3"], exchange=up, timeout=0.5, total=2)
    q = DNSRecord.question("example.com")
    q.header.id = 4242
    reply = f.forward(q)
    assert reply.header.id == 4242 and addrs(reply) == ["192.0.2.7"]
    assert [c[0] for c in up.calls] == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert all(c[2] <= 0.5 for c in up.calls)


def test_forwarder_all_fail_is_servfail_within_the_total():
    up = FakeUpstream({"192.0.2.1": "timeout", "192.0.2.2": "garbage", "192.0.2.3": "timeout"})
    f = Forwarder(["192.0.2.1", "192.0.2.2", "192.0.2.3"], exchange=up, timeout=0.05, total=0.5)
    t0 = time.monotonic()
    reply = f.forward(DNSRecord.question("example.com"))
    assert reply.header.rcode == RCODE.SERVFAIL and time.monotonic() - t0 < 0.5 and f.failures == 1
    assert Forwarder([]).forward(DNSRecord.question("x.example")).header.rcode == RCODE.SERVFAIL


def test_resolv_conf_upstreams():
    text = "# c\nnameserver 10.0.0.1\nnameserver ::1\nnameserver 10.32.0.1 # ours\nnameserver bogus\n" \
           "search x\nnameserver 10.0.0.2\nnameserver 10.0.0.3\nnameserver 10.0.0.4\nnameserver 10.0.0.1\n"
    assert dns.parse_resolv_conf(text, exclude=["10.32.0.1"]) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


# ---- what containers are told ----------------------------------------------------------
HELD: list[int] = []


@pytest.fixture(autouse=True)
def _let_go():
    yield
    while HELD:
        os.close(HELD.pop())


def served_state(tmp_path, alive=True) -> StateDir:
    """A state dir whose DNS is served (the serving lock held by this process) or whose
    server died (its dns.json left behind, the lock free)."""
    state = StateDir(tmp_path / "state")
    dns_resolv.write_info(state, {"pid": os.getpid(), "domain": "crossnet.local", "listen": ["10.32.0.1"],
                                  "scope": "cluster", "upstreams": [], "names": 2, "port": 53})
    fd = dns_resolv.hold(state)
    if alive:
        HELD.append(fd)
    else:
        os.close(fd)
    return state


def test_one_server_per_state_dir(tmp_path):
    state = served_state(tmp_path)
    with pytest.raises(BlockingIOError):
        dns_resolv.hold(state)
    os.close(HELD.pop())
    assert dns_resolv.served(state) is None  # let go: a dead server's file is not believed
    os.close(dns_resolv.hold(state))


def test_cni_dns(tmp_path):
    state = served_state(tmp_path)
    assert dns_resolv.cni_dns(state, {"nameservers": ["8.8.8.8"], "search": ["corp"], "options": ["ndots:2"]}) == {
        "nameservers": ["10.32.0.1", "8.8.8.8"], "search": ["crossnet.local", "corp"], "options": ["ndots:2"]}
    assert dns_resolv.cni_dns(state, None) == {"nameservers": ["10.32.0.1"], "search": ["crossnet.local"]}
    assert dns_resolv.status_of(state)["served"] is True
    # a dead server's file: nothing served, the configuration's dns as it was
    dead = served_state(tmp_path / "d", alive=False)
    assert dns_resolv.cni_dns(dead, {"nameservers": ["8.8.8.8"]}) == {"nameservers": ["8.8.8.8"]}
    assert dns_resolv.status_of(dead)["served"] is False


def test_netns_resolv_conf_written_and_removed_only_if_ours(tmp_path):
    state, etc = served_state(tmp_path), str(tmp_path / "etc-netns")
    assert dns_resolv.netns_name("/run/netns/c1") == "c1" and dns_resolv.netns_name("/proc/1/ns/net") is None
    assert dns_resolv.install(state, "/proc/12/ns/net", etc=etc) is None  # not a named netns
    meta = dns_resolv.install(state, "/run/netns/c1", etc=etc)
    path = f"{etc}/c1/resolv.conf"
    assert meta == {"resolv_conf": path, "resolv_conf_dir": f"{etc}/c1"}  # what the attachment records
    text = open(path).read()
    assert "nameserver 10.32.0.1\n" in text and "search crossnet.local\n" in text
    assert dns_resolv.install(state, "/run/netns/c1", etc=etc) is None  # exists: never replaced
    assert dns_resolv.remove(meta, etc=etc) and not os.path.exists(os.path.dirname(path))
    # the admin's own file (or one edited since): left alone
    os.makedirs(f"{etc}/c2")
    with open(f"{etc}/c2/resolv.conf", "w") as fh:
        fh.write("nameserver 1.1.1.1\n")
    assert dns_resolv.install(state, "/run/netns/c2", etc=etc) is None
    assert not dns_resolv.remove({"resolv_conf": f"{etc}/c2/resolv.conf"}, etc=etc)
    assert os.path.exists(f"{etc}/c2/resolv.conf")
    assert not dns_resolv.remove({"resolv_conf": "/etc/passwd"}, etc=etc)  # outside: never
    assert not dns_resolv.remove({}, etc=etc)
    path = dns_resolv.install(state, "/run/netns/c3", etc=etc)["resolv_conf"]
    assert dns_resolv.remove_named("c3", etc=etc) and not os.path.exists(path)
    assert os.path.isdir(f"{etc}/c3")  # no record of the directory: left
    assert not dns_resolv.remove_named("c3", etc=etc, directory=True) and not os.path.exists(f"{etc}/c3")  # the lab's
    assert not dns_resolv.remove_named("c2", etc=etc) and not dns_resolv.remove_named("../c2", etc=etc)


def test_an_admins_netns_directory_is_never_removed_only_the_one_crossnet_made(tmp_path):
    """/etc/netns/NAME made by the admin (empty: the namespace's /etc overrides to come, or
    none yet): attach wrote resolv.conf into it, and detach removed the file and then the
    directory because it was empty -- the admin's directory. Now the attachment records
    whether crossnet created the directory, and only such a one is removed; a record from
    before (no `resolv_conf_dir`) removes no directory."""
    state, etc = served_state(tmp_path), str(tmp_path / "etc-netns")
    os.makedirs(f"{etc}/c4")
    meta = dns_resolv.install(state, "/run/netns/c4", etc=etc)
    assert meta == {"resolv_conf": f"{etc}/c4/resolv.conf"}  # the directory is not crossnet's
    assert dns_resolv.remove(meta, etc=etc)
    assert os.path.isdir(f"{etc}/c4") and os.listdir(f"{etc}/c4") == []
    # forged or stale records: a directory other than the file's, or outside, is never removed
    os.makedirs(f"{etc}/c5")
    assert not dns_resolv.remove({"resolv_conf": f"{etc}/c4/resolv.conf", "resolv_conf_dir": f"{etc}/c5"}, etc=etc)
    assert not dns_resolv.remove({"resolv_conf": "/tmp/x/resolv.conf", "resolv_conf_dir": "/tmp/x"}, etc=etc)
    assert os.path.isdir(f"{etc}/c4") and os.path.isdir(f"{etc}/c5")
    # crossnet's directory, its file already gone (the namespace removed): the directory goes
    meta = dns_resolv.install(state, "/run/netns/c6", etc=etc)
    os.unlink(meta["resolv_conf"])
    assert not dns_resolv.remove(meta, etc=etc) and not os.path.exists(f"{etc}/c6")
    # a file where the directory would be: nothing written, nothing raised (as before)
    open(f"{etc}/c8", "w").close()
    assert dns_resolv.install(state, "/run/netns/c8", etc=etc) is None and os.path.isfile(f"{etc}/c8")
    # crossnet's directory the admin has put a file into since: stays, with the file
    meta = dns_resolv.install(state, "/run/netns/c7", etc=etc)
    open(f"{etc}/c7/hosts", "w").close()
    assert dns_resolv.remove(meta, etc=etc) and os.listdir(f"{etc}/c7") == ["hosts"]


def test_not_served_no_resolv_conf(tmp_path):
    state = StateDir(tmp_path / "state")
    assert dns_resolv.install(state, "/run/netns/c1", etc=str(tmp_path / "etc")) is None
    assert not (tmp_path / "etc").exists()


# ---- the domain setting ----------------------------------------------------------------
def test_network_config_dns_domain():
    from crossnet.store import NetworkConfig

    cfg = NetworkConfig(network="10.32.0.0/16")
    assert cfg.dns_domain == "crossnet.local" and "dns_domain" not in cfg.to_json()
    cfg = NetworkConfig(network="10.32.0.0/16", dns_domain="Corp.Example.")
    assert cfg.to_json()["dns_domain"] == "corp.example"
    assert NetworkConfig.from_json(json.loads(json.dumps(cfg.to_json()))).dns_domain == "corp.example"
    with pytest.raises(ConfigError, match="dns_domain"):
        NetworkConfig.from_json({"network": "10.32.0.0/16", "dns_domain": "no good"}, source="etcd")


def test_cluster_file_dns_domain():
    import yaml

    from crossnet.config import parse_cluster as parse

    def parse_cluster(text):
        return parse(yaml.safe_load(text))

    base = "backend: vxlan\nnetwork: 10.32.0.0/16\nhosts:\n  - {name: a, address: 192.0.2.1}\n"
    assert parse_cluster(base).dns_domain == "crossnet.local"
    assert parse_cluster(base + "dns_domain: lab.example\n").dns_domain == "lab.example"
    with pytest.raises(ConfigError, match="dns_domain"):
        parse_cluster(base + "dns_domain: 'a b'\n")


def test_agent_api_refuses_a_bad_name():
    from crossnet.agent.api import BadRequest, check_body

    with pytest.raises(BadRequest, match="^name: "):
        check_body("/v1/attach", {"id": "x", "netns": "/run/netns/x", "name": "a b"})
    check_body("/v1/attach", {"id": "x", "netns": "/run/netns/x", "name": "web"})


def test_etcd_init_and_launch_refuse_a_bad_domain(tmp_path):
    """Checked before anything is contacted or created: one line naming the option, exit 2."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "crossnet", "etcd", "init", "--etcd", "http://192.0.2.1:2379",
                          "--network", "10.32.0.0/16", "--dns-domain", "a b"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "CROSSNET_STATE_DIR": str(tmp_path / "s")})
    assert out.returncode == 2 and out.stderr.startswith("crossnet: error: --dns-domain: "), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    from crossnet.mesh.launch import launch_first

    with pytest.raises(ConfigError, match="^--dns-domain: "):
        launch_first(str(tmp_path / "m"), "h1", "eth0", "192.0.2.1", "10.32.0.0/12", 24, "vxlan", 1, 30,
                     spawn=False, dns_domain="-bad-")
    assert not (tmp_path / "m").exists()


# ---- the hand-packed fast path gives the general path's answers -------------------------
FAST_NAMES = ["web.crossnet.local", "WEB.Crossnet.Local", "db.crossnet.local.", "nope.crossnet.local",
              "crossnet.local", "example.com", "a.b.crossnet.local", "3.0.32.10.in-addr.arpa"]


@settings(max_examples=400, deadline=None)
@given(name=st.one_of(st.sampled_from(FAST_NAMES), st.text(alphabet="abcW.-_", min_size=1, max_size=20).map(
    lambda s: s + ".crossnet.local")), qtype=st.sampled_from(["A", "AAAA", "MX", "PTR", "ANY"]),
    rd=st.booleans(), edns=st.booleans(), ident=st.integers(0, 65535))
def test_fast_answer_equals_the_general_answer(name, qtype, rd, edns, ident):
    from crossnet.dns.server import fast_answer

    t = table()
    try:
        q = DNSRecord.question(name, qtype)
        wire = q.pack()
    except Exception:  # noqa: BLE001 - not encodable (an empty label): not a query
        return
    q.header.id, q.header.rd = ident, int(rd)
    if edns:
        q.add_ar(EDNS0(udp_len=1232))
    wire = bytes(q.pack())
    fast = fast_answer(t, wire, RoundRobin())
    slow = local_answer(t, DNSRecord.parse(wire), RoundRobin())
    if fast is None:
        # declined: only what the general path must handle (other types, not ours, reverse names)
        assert qtype not in ("A", "AAAA") or slow is None or "in-addr.arpa" in name.lower()
        return
    f = DNSRecord.parse(fast)
    assert slow is not None
    for attr in ("id", "qr", "aa", "tc", "rd", "ra", "rcode", "opcode"):
        assert getattr(f.header, attr) == getattr(slow.header, attr), attr
    assert f.questions == slow.questions
    assert [(str(r.rname), r.rtype, str(r.rdata), r.ttl) for r in f.rr] == \
        [(str(r.rname), r.rtype, str(r.rdata), r.ttl) for r in slow.rr]


@pytest.mark.parametrize("wire", [
    b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03web\xc0\x0c\x00\x01\x00\x01",  # compression in a query
    b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03we",  # cut short
    b"\x00\x01\x81\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03web\x00\x00\x01\x00\x01",  # a response
    b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01\x03web\x00\x00\x01\x00\x01\x00\x00\x01",  # bad OPT
    b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03web\x00\x00\x01\x00\x01junk",  # trailing bytes
])
def test_fast_answer_declines_odd_queries(wire):
    from crossnet.dns.server import fast_answer

    assert fast_answer(table(), wire, RoundRobin()) is None


def test_store_keeps_only_dns_names():
    """Published and read container entries carry a name only when DNS may serve it."""
    from crossnet.store import clean_containers

    got = clean_containers([{"id": "a", "address": "10.32.0.2", "name": "web"},
                            {"id": "b", "address": "10.32.0.3", "name": "bad name;rm"},
                            {"id": "c", "address": "10.32.0.4", "name": 7}])
    assert got == [{"id": "a", "address": "10.32.0.2", "name": "web"}, {"id": "b", "address": "10.32.0.3"},
                   {"id": "c", "address": "10.32.0.4"}]


# ---- hostile TCP clients (a real server on 127.0.0.1) -------------------------------------
@pytest.fixture
def tcp_server(monkeypatch):
    """A DnsServer on 127.0.0.1 (a free port), TCP_IDLE cut to 0.5 s, answering HOSTS."""
    import socket

    from crossnet.dns import server as dns_server

    monkeypatch.setattr(dns_server, "TCP_IDLE", 0.5)
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        srv = dns_server.DnsServer(["127.0.0.1"], Forwarder([]), port=port, table=table())
        try:
            srv.start()
        except OSError:  # the UDP port is taken: another one
            continue
        break
    else:
        raise RuntimeError("no free port")
    yield srv
    srv.stop()


def _closed_by_peer(conn, wait: float) -> bool:
    """The server closed ``conn`` (EOF or reset) within ``wait`` seconds."""
    import select

    if not select.select([conn], [], [], wait)[0]:
        return False
    try:
        return conn.recv(1) == b""
    except OSError:
        return True


def _tcp_query(port: int, name: str) -> DNSRecord:
    import socket
    import struct

    wire = DNSRecord.question(name).pack()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(struct.pack("!H", len(wire)) + wire)
        size = struct.unpack("!H", c.recv(2, socket.MSG_WAITALL))[0]
        return DNSRecord.parse(c.recv(size, socket.MSG_WAITALL))


def test_a_tcp_client_trickling_its_query_is_cut_off_at_the_idle_limit(tcp_server):
    """A length prefix announcing 200 bytes, then one byte every 0.2 s: each read came
    within TCP_IDLE, so the connection was held until the query was complete (200 bytes:
    40 s here, 16 minutes with the real 5 s) — 32 such clients took every TCP slot.
    The whole query must arrive within TCP_IDLE of the first byte awaited."""
    import socket
    import struct

    conn = socket.create_connection(("127.0.0.1", tcp_server.port), timeout=5)
    try:
        conn.sendall(struct.pack("!H", 200))
        sent = 0
        while sent < 40:  # 8 s of trickling; the server must hang up long before
            try:
                conn.send(b"\x00")
            except OSError:
                break
            sent += 1
            if _closed_by_peer(conn, 0.2):
                break
        assert sent < 40, "the server kept a connection that sent one byte every 0.2 s for 8 s"
    finally:
        conn.close()
    assert sorted(addrs(_tcp_query(tcp_server.port, "web.crossnet.local"))) == ["10.32.0.2", "10.32.1.2"]


def test_tcp_connections_that_never_send_are_closed_and_udp_keeps_answering(tcp_server):
    """MAX_TCP idle connections: UDP still answers meanwhile; each idle one is closed after
    TCP_IDLE, and a TCP query is answered again afterwards."""
    import socket

    from crossnet.dns import server as dns_server

    idle = [socket.create_connection(("127.0.0.1", tcp_server.port), timeout=5) for _ in range(dns_server.MAX_TCP)]
    try:
        reply = DNSRecord.parse(DNSRecord.question("db.crossnet.local").send("127.0.0.1", tcp_server.port, timeout=2))
        assert addrs(reply) == ["10.32.0.3"]
        assert all(_closed_by_peer(c, 5) for c in idle)
    finally:
        for c in idle:
            c.close()
    assert addrs(_tcp_query(tcp_server.port, "db.crossnet.local")) == ["10.32.0.3"]


def test_one_client_cannot_hold_every_tcp_slot(tcp_server):
    """One container opening MAX_TCP connections that never send had taken every TCP slot
    (for 4 * TCP_IDLE each, again and again): TCP DNS was shut for the host's other
    containers. A source holds at most MAX_TCP_PER_SOURCE connections; its next ones are
    closed at once and another source is answered meanwhile."""
    import socket
    import struct

    from crossnet.dns import server as dns_server

    idle = [socket.create_connection(("127.0.0.1", tcp_server.port), timeout=5) for _ in range(dns_server.MAX_TCP)]
    try:
        held = dns_server.MAX_TCP_PER_SOURCE
        assert not any(_closed_by_peer(c, 0) for c in idle[:held])
        assert all(_closed_by_peer(c, 0.3) for c in idle[held:])  # at once, well before TCP_IDLE
        wire = DNSRecord.question("db.crossnet.local").pack()
        with socket.create_connection(("127.0.0.1", tcp_server.port), timeout=5,
                                      source_address=("127.0.0.2", 0)) as other:
            other.sendall(struct.pack("!H", len(wire)) + wire)
            size = struct.unpack("!H", other.recv(2, socket.MSG_WAITALL))[0]
            assert addrs(DNSRecord.parse(other.recv(size, socket.MSG_WAITALL))) == ["10.32.0.3"]
        assert not any(_closed_by_peer(c, 0) for c in idle[:held])  # still within TCP_IDLE: held
    finally:
        for c in idle:
            c.close()


# ---- who may ask: the network's containers only (no open resolver) -----------------------
def _service_on_loopback(tmp_path):
    """A DnsService for the container network 127.0.0.0/29 listening on 127.0.0.1 (a free
    port), its upstream a fake that counts what it is asked."""
    import socket

    from crossnet.dns.service import DnsService

    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\n")
    asked = []

    def upstream(wire, server, port, timeout):
        asked.append(server)
        q = DNSRecord.parse(wire)
        return q.reply().pack()

    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        svc = DnsService(StateDir(str(tmp_path / "state")), "crossnet.local", [IPv4Network("127.0.0.0/29")],
                         ["127.0.0.1"], lambda: None, port=port, resolv_conf=str(resolv))
        svc.server.forwarder.exchange = upstream
        try:
            svc.server.start()
        except OSError:
            continue
        return svc, port, asked
    raise RuntimeError("no free port")


def _udp_ask(port, name, source, wait=1.0):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(wait)
        s.sendto(DNSRecord.question(name).pack(), ("127.0.0.1", port))
        try:
            return DNSRecord.parse(s.recv(4096))
        except TimeoutError:
            return None


def test_queries_from_outside_the_container_network_get_no_answer_and_are_never_forwarded(tmp_path):
    """The server listens on the gateway address, which the underlay (any host with a route
    to it) and other networks' containers can reach: it had forwarded their queries to the
    host's resolvers (an open resolver, a reflector for spoofed sources) and answered
    crossnet's names. Now only sources inside the network get anything."""
    import socket
    import struct

    svc, port, asked = _service_on_loopback(tmp_path)
    try:
        assert _udp_ask(port, "example.org", "127.0.0.9") is None  # outside 127.0.0.0/29
        assert _udp_ask(port, "db.crossnet.local", "127.0.0.9") is None
        assert asked == []
        with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.9", 0)) as c:
            wire = DNSRecord.question("example.org").pack()
            with contextlib.suppress(OSError):
                c.sendall(struct.pack("!H", len(wire)) + wire)
            assert _closed_by_peer(c, 2.0)
        assert asked == []
        inside = _udp_ask(port, "example.org", "127.0.0.2")
        assert inside is not None and inside.header.rcode == RCODE.NOERROR and asked == ["192.0.2.53"]
        assert _udp_ask(port, "db.crossnet.local", "127.0.0.3").header.rcode == RCODE.NXDOMAIN
    finally:
        svc.server.stop()


def test_netns_resolv_conf_temporaries_of_a_killed_writer_are_swept_never_a_live_ones(tmp_path):
    """install writes under a temporary name in /etc/netns (never in /etc/netns/NAME, whose
    every file `ip netns exec` bind-mounts) and links it into place; a writer killed before
    the link leaves its temporary, which the next install or remove of that name sweeps --
    unless its writer (the pid in its name) is still alive."""
    import subprocess
    from pathlib import Path

    from crossnet.dns import MARKER

    state, etc = served_state(tmp_path), str(tmp_path / "etc-netns")
    os.makedirs(etc)
    proc = subprocess.Popen(["true"])
    proc.wait()  # a pid that is gone
    dead = f"{etc}/.c1.resolv.conf.{proc.pid}.tmp"
    live = f"{etc}/.c1.resolv.conf.{os.getppid()}.tmp"
    other = f"{etc}/.c10.resolv.conf.{proc.pid}.tmp"  # another namespace's: not this name's
    for p in (dead, live, other):
        open(p, "w").close()
    rec = dns_resolv.install(state, "/run/netns/c1", etc=etc)
    path = f"{etc}/c1/resolv.conf"
    assert rec == {"resolv_conf": path, "resolv_conf_dir": f"{etc}/c1"} and Path(path).read_text().startswith(MARKER)
    assert sorted(os.listdir(etc)) == sorted(["c1", os.path.basename(live), os.path.basename(other)])
    assert os.listdir(f"{etc}/c1") == ["resolv.conf"]  # the temporary never in the bind-mounted directory
    # recorded but never written (an attach killed in between): the empty directory goes
    os.unlink(path)
    assert not dns_resolv.remove(rec, etc=etc) and not os.path.exists(f"{etc}/c1")
    # remove_named of a directory crossnet recorded nothing in: an empty one stays
    os.makedirs(f"{etc}/c4")
    assert not dns_resolv.remove_named("c4", etc=etc) and os.path.isdir(f"{etc}/c4")


def test_detach_is_never_blocked_by_what_replaced_crossnets_resolv_conf(tmp_path):
    """detach removes the recorded resolv.conf before it releases the entry: a file that
    replaced crossnet's (binary, not UTF-8) is left alone without an error."""
    etc = str(tmp_path / "etc-netns")
    os.makedirs(f"{etc}/c5")
    with open(f"{etc}/c5/resolv.conf", "wb") as fh:
        fh.write(b"\xff\xfe\x00binary\n")
    assert not dns_resolv.remove({"resolv_conf": f"{etc}/c5/resolv.conf"}, etc=etc)
    assert os.path.exists(f"{etc}/c5/resolv.conf")


def test_the_claim_recorded_before_install_names_the_directory_only_when_crossnet_will_create_it(tmp_path):
    """attach records dns_resolv.claim before install writes (an attach killed in between
    leaves a record detach completes): the directory is in it only when it does not exist
    yet, so a killed attach's empty directory goes with detach and an admin's stays."""
    state, etc = served_state(tmp_path), str(tmp_path / "etc-netns")
    mine = dns_resolv.claim(state, "/run/netns/c7", etc=etc)
    assert mine == {"resolv_conf": f"{etc}/c7/resolv.conf", "resolv_conf_dir": f"{etc}/c7"}
    os.makedirs(f"{etc}/c7")  # install made the directory, then the attach was killed
    assert not dns_resolv.remove(mine, etc=etc) and not os.path.exists(f"{etc}/c7")
    os.makedirs(f"{etc}/c8")  # the admin's
    theirs = dns_resolv.claim(state, "/run/netns/c8", etc=etc)
    assert theirs == {"resolv_conf": f"{etc}/c8/resolv.conf"}
    assert dns_resolv.install(state, "/run/netns/c8", etc=etc) == theirs
    assert dns_resolv.remove(theirs, etc=etc) and os.path.isdir(f"{etc}/c8")
    open(f"{etc}/c9", "w").close()  # a file where the directory would be: nothing written, nothing raised
    assert dns_resolv.install(state, "/run/netns/c9", etc=etc) is None and os.path.isfile(f"{etc}/c9")
