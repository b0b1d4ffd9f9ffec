"""Pure logic of `crossnet launch` (crossnet.mesh.launch): underlay defaults, voter/client
roles, endpoint lists, --initial-cluster, promotion, the quorum line, etcd's argv, the
token store in etcd (with a fake client), and bad input at the CLI (exit 2, one line,
nothing created)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossnet.errors import ConfigError, CrossnetError
from crossnet.lab.mesh import parse_join_line
from crossnet.mesh import launch as ml

LINKS = {1: "lo", 2: "eth0", 3: "eth1"}


# ---------------------------------------------------------------- underlay defaults

def test_default_route_interface_wins():
    addrs = {2: ["10.0.0.5"], 3: ["192.168.1.5"]}
    assert ml.pick_underlay(3, LINKS, addrs) == ("eth1", "192.168.1.5")


def test_no_default_route_falls_back_to_the_single_interface_with_an_address():
    assert ml.pick_underlay(None, LINKS, {2: ["10.0.0.5"]}) == ("eth0", "10.0.0.5")
    # a default route through an interface without an address does not count
    assert ml.pick_underlay(3, LINKS, {2: ["10.0.0.5"]}) == ("eth0", "10.0.0.5")


@pytest.mark.parametrize("addrs", [{}, {2: ["10.0.0.5"], 3: ["192.168.1.5"]}])
def test_no_default_route_and_zero_or_several_candidates_asks_for_address(addrs):
    with pytest.raises(ConfigError) as exc:
        ml.pick_underlay(None, LINKS, addrs)
    msg = str(exc.value)
    assert msg.startswith("--address:") and "pass --address" in msg and "\n" not in msg


def test_explicit_iface_and_address():
    addrs = {2: ["10.0.0.5", "10.0.0.6"], 3: ["192.168.1.5"]}
    assert ml.pick_underlay(3, LINKS, addrs, iface="eth0") == ("eth0", "10.0.0.5")
    assert ml.pick_underlay(3, LINKS, addrs, address="10.0.0.6") == ("eth0", "10.0.0.6")
    assert ml.pick_underlay(None, LINKS, addrs, iface="eth1", address="192.168.1.5") == ("eth1", "192.168.1.5")
    for kw, field in (({"iface": "eth9"}, "--iface"), ({"address": "10.9.9.9"}, "--address"),
                      ({"address": "nope"}, "--address"), ({"iface": "eth1", "address": "10.0.0.5"}, "--address"),
                      ({"iface": "lo"}, "--iface")):
        with pytest.raises(ConfigError, match=f"^{field}:"):
            ml.pick_underlay(2, LINKS, addrs, **kw)


# ---------------------------------------------------------------- roles, endpoints, promotion

def _m(name, ip, learner=False):
    return {"ID": str(abs(hash(name))), "name": name, "clientURLs": [f"https://{ip}:2379"],
            "peerURLs": [f"https://{ip}:2380"], **({"isLearner": True} if learner else {})}


def test_role_is_voter_until_max_voters():
    assert ml.role_for([], 3) == "voter"
    assert ml.role_for([_m("a", "10.0.0.1"), _m("b", "10.0.0.2")], 3) == "voter"
    three = [_m("a", "10.0.0.1"), _m("b", "10.0.0.2"), _m("c", "10.0.0.3")]
    assert ml.role_for(three, 3) == "client"
    assert ml.role_for(three, 5) == "voter"
    # a learner is a host's member still catching up, promoted by that host: its slot is taken
    assert ml.role_for(three[:2] + [_m("l", "10.0.0.9", learner=True)], 3) == "client"
    assert ml.role_for(three[:1] + [_m("l", "10.0.0.9", learner=True)], 3) == "voter"


def test_endpoint_list_is_the_voters_own_first():
    ms = [_m("b", "10.0.0.2"), _m("a", "10.0.0.1"), _m("l", "10.0.0.9", learner=True)]
    assert ml.endpoint_list(ms) == ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
    assert ml.endpoint_list(ms, own="https://10.0.0.2:2379") == ["https://10.0.0.2:2379", "https://10.0.0.1:2379"]
    assert ml.endpoint_list(ms, own="https://10.0.0.7:2379") == ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]


@given(st.lists(st.integers(1, 250), unique=True, max_size=7), st.integers(1, 250))
def test_endpoint_list_properties(ips, own_ip):
    ms = [_m(f"h{i}", f"10.0.0.{i}") for i in ips]
    own = f"https://10.0.0.{own_ip}:2379"
    eps = ml.endpoint_list(ms, own)
    assert sorted(eps) == sorted({f"https://10.0.0.{i}:2379" for i in ips})
    assert (eps[0] == own) == (own_ip in ips) if eps else not ips


def test_client_hosts_are_spread_over_the_voters():
    """Every client used to send its keep-alives and watches to the voter with the smallest
    address; each now starts at a voter picked by its name (the others follow, in order)."""
    ms = [_m("a", "10.0.0.1"), _m("b", "10.0.0.2"), _m("c", "10.0.0.3")]
    firsts = {ml.endpoint_list(ms, spread=f"h{i}")[0] for i in range(30)}
    assert firsts == {f"https://10.0.0.{i}:2379" for i in (1, 2, 3)}
    eps = ml.endpoint_list(ms, spread="h5")
    assert eps == ml.endpoint_list(list(reversed(ms)), spread="h5")  # the member list's order does not matter
    i = eps.index("https://10.0.0.1:2379")
    assert eps[i:] + eps[:i] == ["https://10.0.0.1:2379", "https://10.0.0.2:2379", "https://10.0.0.3:2379"]
    # a voter still uses its own member first
    assert ml.endpoint_list(ms, own="https://10.0.0.3:2379", spread="c")[0] == "https://10.0.0.3:2379"


@given(st.lists(st.integers(1, 250), unique=True, max_size=7), st.text(min_size=1, max_size=20))
def test_spread_endpoint_list_is_a_rotation_of_the_sorted_voters(ips, name):
    ms = [_m(f"h{i}", f"10.0.0.{i}") for i in ips]
    plain = ml.endpoint_list(ms)
    eps = ml.endpoint_list(ms, spread=name)
    assert sorted(eps) == sorted(plain)
    assert eps == ml.endpoint_list(ms, spread=name)
    if eps:
        k = plain.index(eps[0])
        assert eps == plain[k:] + plain[:k]


def test_initial_cluster_names_the_new_member():
    # etcd's member add answer: the new member has no name yet
    ms = [_m("h1", "10.0.0.1"), {"ID": "9", "peerURLs": ["https://10.0.0.2:2380"]}]
    assert ml.initial_cluster(ms, "h2", "https://10.0.0.2:2380") == \
        "h1=https://10.0.0.1:2380,h2=https://10.0.0.2:2380"
    assert ml.initial_cluster([_m("h1", "10.0.0.1")], "h2", "https://10.0.0.2:2380") == \
        "h1=https://10.0.0.1:2380,h2=https://10.0.0.2:2380"


def test_promotion_candidate_is_the_live_client_with_the_smallest_name():
    hosts = [{"name": "h5", "role": "client"}, {"name": "h4", "role": "client"},
             {"name": "h1", "role": "voter"}, {"name": "h6", "role": "client"}]
    assert ml.promotion_candidate(hosts, {"h1", "h5", "h6"}) == "h5"  # h4's presence lease expired
    assert ml.promotion_candidate(hosts, {"h1"}) is None
    assert ml.promotion_candidate(hosts[2:3], {"h1", "h4"}) is None


@pytest.mark.parametrize("reachable,voters,line", [
    (3, 3, None), (2, 3, None), (1, 3, "store unavailable: quorum lost (1/3 voters)"),
    (0, 3, "store unavailable: quorum lost (0/3 voters)"), (1, 1, None),
    (1, 2, "store unavailable: quorum lost (1/2 voters)"), (3, 5, None), (2, 5, "store unavailable: quorum lost (2/5 voters)"),
])
def test_quorum_text(reachable, voters, line):
    assert ml.quorum_text(reachable, voters) == line


def test_etcd_argv_is_tls_everywhere_with_client_cert_auth():
    argv = ml.etcd_argv("h1", "10.0.0.1", "/s/mesh/etcd/data", "/s/mesh/pki", "h1=https://10.0.0.1:2380", "new",
                        "crossnet-abc")
    joined = " ".join(argv)
    assert "http://" not in joined and "unix://" not in joined
    for flag in ("--client-cert-auth", "--peer-client-cert-auth"):
        assert flag in argv
    assert argv[argv.index("--trusted-ca-file") + 1] == "/s/mesh/pki/ca.crt"
    assert argv[argv.index("--peer-trusted-ca-file") + 1] == "/s/mesh/pki/ca.crt"
    assert argv[argv.index("--listen-client-urls") + 1] == "https://10.0.0.1:2379"
    assert argv[argv.index("--listen-peer-urls") + 1] == "https://10.0.0.1:2380"
    assert argv[argv.index("--initial-cluster-state") + 1] == "new"


def test_etcd_argv_compacts_the_history_of_the_heartbeats():
    """Every heartbeat is a revision: without auto-compaction etcd's history (memory, data
    file) grows for ever and the backend quota eventually refuses every write."""
    argv = ml.etcd_argv("h1", "10.0.0.1", "/s/d", "/s/pki", "h1=https://10.0.0.1:2380", "new", "t")
    assert argv[argv.index("--auto-compaction-mode") + 1] == "periodic"
    assert argv[argv.index("--auto-compaction-retention") + 1] == "1h"


def test_parse_join_line():
    assert parse_join_line("mesh created on h1 (10.0.0.1); on every other host run:\n"
                           "  crossnet launch --token ab12cd.0123456789abcdef.ff 10.0.0.1\n") == \
        ("ab12cd.0123456789abcdef.ff", "10.0.0.1")
    with pytest.raises(CrossnetError):
        parse_join_line("nothing")


# ---------------------------------------------------------------- the token store in etcd

class FakeEtcd:
    """Just enough of EtcdClient for EtcdTokenStore: get, txn with mod/create compares."""

    def __init__(self):
        self.value: bytes | None = None
        self.rev = 0

    def get(self, key):
        from crossnet.store.etcdclient import KV

        return None if self.value is None else KV(key, self.value, 1, self.rev, 1, 0)

    @staticmethod
    def cmp_mod(key, rev):
        return ("mod", rev)

    @staticmethod
    def cmp_create(key, rev):
        return ("create", rev)

    @staticmethod
    def op_put(key, value):
        return value

    def txn(self, compare, success, failure=None):
        kind, rev = compare[0]
        ok = (self.value is None) if kind == "create" else (rev == self.rev)
        if ok:
            self.rev += 1
            self.value = success[0].encode()
        return ok, [], self.rev


def test_etcd_token_store_create_verify_revoke_keeps_no_secret():
    etcd = FakeEtcd()
    store = ml.EtcdTokenStore(etcd)
    tok = store.create(600)
    assert store.verify(tok)["id"] == tok.id
    assert tok.secret not in etcd.value.decode()
    other = ml.EtcdTokenStore(etcd)
    assert [t["id"] for t in other.list()] == [tok.id]
    assert store.revoke(tok.id)
    from crossnet.mesh.token import TokenError

    with pytest.raises(TokenError, match="revoked"):
        other.verify(tok)


def test_etcd_token_store_refuses_a_lost_update():
    etcd = FakeEtcd()
    a, b = ml.EtcdTokenStore(etcd), ml.EtcdTokenStore(etcd)
    a.create(600)
    tokens = b._load()  # b read ...
    a.create(600)  # ... a wrote in between
    with pytest.raises(CrossnetError, match="changed at the same time"):
        b._save(tokens)
    assert len(json.loads(etcd.value)["tokens"]) == 2


# ---------------------------------------------------------------- bad input at the CLI

def _cli(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "crossnet", "--state-dir", str(tmp_path / "state"), *args],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("args,field", [
    (["launch", "--token", "ab12cd.0123456789abcdef"], "--token"),  # no ADDR
    (["launch", "10.0.0.1"], "--token"),  # ADDR without a token
    (["launch", "--token", "nope", "10.0.0.1"], "--token"),
    (["launch", "--token", "ab12cd.0123456789abcdef", "10.0.0.1"], "--token"),  # no pin
    (["launch", "--address", "203.0.113.77"], "--address"),  # not on this host
    (["launch", "--iface", "nonexistent0"], "--iface"),
    (["token", "create", "--ttl", "forever"], "--ttl"),
])
def test_bad_input_is_one_line_exit_2_and_creates_nothing(tmp_path, args, field):
    proc = _cli(tmp_path, *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"crossnet: error: {field}"), lines
    assert not (tmp_path / "state").exists()


def test_commands_on_a_host_that_never_launched(tmp_path):
    for args in (["token", "list"], ["forget", "h9"]):
        proc = _cli(tmp_path, *args)
        assert proc.returncode == 1 and "never launched" in proc.stderr, proc.stderr
    proc = _cli(tmp_path, "stop")
    assert proc.returncode == 0 and "not running" in proc.stdout
    assert not (tmp_path / "state").exists()


def test_retrying_rides_out_an_election_but_not_a_real_error():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise CrossnetError("https://10.0.0.1:2379: etcdserver: leader changed")
        return "ok"

    assert ml.retrying(flaky, timeout=5, interval=0.01) == "ok" and len(calls) == 3
    calls.clear()

    def bad():
        calls.append(1)
        raise CrossnetError("https://10.0.0.1:2379: etcdserver: permission denied")

    with pytest.raises(CrossnetError, match="permission denied"):
        ml.retrying(bad, timeout=5, interval=0.01)
    assert len(calls) == 1

    def always():
        raise CrossnetError("etcdserver: request timed out")

    with pytest.raises(CrossnetError, match="timed out"):
        ml.retrying(always, timeout=0.1, interval=0.01)


# ---------------------------------------------------------------- voter admission is atomic

class FakeCluster:
    """Just enough of EtcdClient for launch.admit: a lock key created in a transaction on
    a lease, the member list and `member add` (slow, to widen any race)."""

    def __init__(self, voters: int):
        import threading

        self.members = [{"name": f"v{i}", "ID": str(i), "peerURLs": [f"https://10.0.0.{i}:2380"]}
                        for i in range(voters)]
        self.keys: dict[str, tuple[str, int]] = {}
        self.leases = 0
        self.mu = threading.Lock()
        self.behind = 0  # promote calls refused as "not in sync" before one succeeds
        self.promoted: list[str] = []

    def lease_grant(self, ttl):
        with self.mu:
            self.leases += 1
            return self.leases, ttl

    def lease_revoke(self, lease):
        with self.mu:
            self.keys = {k: v for k, v in self.keys.items() if v[1] != lease}
        return True

    @staticmethod
    def cmp_create(key, rev):
        return ("absent", key)

    @staticmethod
    def op_put(key, value, lease=0):
        return (key, value, lease)

    def txn(self, compare, success, failure=None):
        with self.mu:
            ok = all(k not in self.keys for _, k in compare)
            if ok:
                for key, value, lease in success:
                    self.keys[key] = (value, lease)
            return ok, [], 0

    def call(self, path, body):
        import time

        if path == "cluster/member/list":
            with self.mu:
                return {"members": [dict(m) for m in self.members]}
        if path == "cluster/member/promote":
            with self.mu:
                if self.behind > 0:
                    self.behind -= 1
                    raise CrossnetError(f"etcd cluster/member/promote: etcdserver: {ml.NOT_IN_SYNC}")
                [m] = [m for m in self.members if m["ID"] == body["ID"]]
                assert m.get("isLearner"), "etcd refuses to promote a voter"
                m["isLearner"] = False
                self.promoted.append(body["ID"])
                return {"members": [dict(m) for m in self.members]}
        assert path == "cluster/member/add"
        time.sleep(0.05)
        with self.mu:
            if body.get("isLearner") and any(m.get("isLearner") for m in self.members):  # etcd 3.4: one at a time
                raise CrossnetError(f"etcd cluster/member/add: etcdserver: {ml.TOO_MANY_LEARNERS}")
            self.members.append({"name": "", "ID": str(len(self.members)), "peerURLs": body["peerURLs"],
                                 "isLearner": body.get("isLearner", False)})
            return {"members": [dict(m) for m in self.members]}


def test_two_hosts_joining_at_once_make_exactly_one_more_voter():
    import threading

    cluster = FakeCluster(voters=2)
    roles: dict[str, str] = {}

    def join(name: str, peer: str) -> None:
        roles[name] = ml.admit(cluster, peer, 3, name)[0]

    threads = [threading.Thread(target=join, args=(f"h{i}", f"https://10.0.1.{i}:2380")) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(roles.values()) == ["client", "client", "client", "voter"]
    assert len(cluster.members) == 3 and len(ml.voters_of(cluster.members)) == 2  # the new one: a learner
    assert cluster.members[-1]["isLearner"] is True
    assert ml.VOTER_LOCK not in cluster.keys  # released


def test_voter_lock_is_released_when_member_add_fails():
    cluster = FakeCluster(voters=1)

    def refuse(path, body):
        if path == "cluster/member/add":
            raise CrossnetError("etcd: peerURL exists")
        return FakeCluster.call(cluster, path, body)

    cluster.call = refuse
    with pytest.raises(CrossnetError):
        ml.admit(cluster, "https://10.0.1.1:2380", 3, "h1")
    assert ml.VOTER_LOCK not in cluster.keys


@pytest.mark.parametrize("value, want", [
    (None, []), ('{"serials": [3, 1, 3]}', [1, 3]), ('{"serials": "x"}', []), ('[1]', []),
    ('{"serials": [2, -2, 0, "7", true, 1.5]}', [2]),
])
def test_revoked_serials_from_a_hostile_store_keep_only_positive_ints(value, want):
    from crossnet.store.etcdclient import KV

    class One:
        def get(self, key):
            assert key == ml.REVOKED_KEY
            return None if value is None else KV(key, value.encode(), 1, 1, 1, 0)

    assert ml.revoked_serials(One()) == want


def test_etcd_argv_checks_the_crl_on_client_and_peer_ports():
    argv = ml.etcd_argv("h1", "10.0.0.1", "/s/d", "/s/pki", "h1=https://10.0.0.1:2380", "new", "t")
    assert argv[argv.index("--client-crl-file") + 1] == "/s/pki/revoked.crl"
    assert argv[argv.index("--peer-crl-file") + 1] == "/s/pki/revoked.crl"


def test_a_join_refused_during_an_election_is_tried_again_but_quorum_loss_is_final():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise CrossnetError("join via 10.0.0.3:6790 refused: store unavailable: cannot reach etcd (timed out)")
        return "joined"

    assert ml.join_riding_out_elections(flaky, timeout=10, interval=0.01) == "joined" and len(calls) == 3
    for final in ("join via 10.0.0.3:6790 refused: store unavailable: quorum lost (1/3 voters)",
                  "join via 10.0.0.3:6790 refused: token abc123: wrong secret",
                  "10.0.0.3:6790 belongs to another cluster"):
        calls.clear()

        def refuse(msg=final):
            calls.append(1)
            raise CrossnetError(msg)

        with pytest.raises(CrossnetError):
            ml.join_riding_out_elections(refuse, timeout=10, interval=0.01)
        assert len(calls) == 1, final


# ---------------------------------------------------------------- launch --encrypt (backend auto)

@pytest.mark.parametrize("args", [
    ["launch", "--encrypt"],  # default backend vxlan
    ["launch", "--encrypt", "--backend", "host-gw"],
    ["launch", "--encrypt", "--backend", "auto", "--token", "ab12cd.0123456789abcdef", "--ca-pin",
     "sha256:" + "0" * 64, "10.0.0.1"],  # joining: the mesh's setting is the first host's
])
def test_launch_encrypt_is_first_host_and_auto_only(tmp_path, args):
    proc = _cli(tmp_path, *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crossnet: error: --encrypt: "), lines
    assert not (tmp_path / "state").exists()


def test_launch_encrypt_reaches_the_store_config(tmp_path):
    """launch_first records it, bootstrap writes it as auto.encrypt: the agents read it there."""
    from crossnet.errors import ConfigError

    with pytest.raises(ConfigError, match="^--encrypt: only with --backend auto, not 'vxlan'$"):
        ml.launch_first(str(tmp_path / "v"), "h1", "eth0", "192.0.2.1", "10.32.0.0/12", 24, "vxlan", 1, 30,
                        spawn=False, encrypt=True)
    assert not (tmp_path / "v").exists()
    ml.launch_first(str(tmp_path / "a"), "h1", "eth0", "192.0.2.1", "10.32.0.0/12", 24, "auto", 1, 30,
                    spawn=False, encrypt=True)
    n = ml.Paths(tmp_path / "a").load()["network"]
    assert n["encrypt"] is True
    cfg = ml.network_config(n)
    assert cfg.backend == "auto" and cfg.auto.encrypt and cfg.to_json()["auto"] == {"encrypt": True}
    plain = ml.network_config({**n, "encrypt": False})
    assert not plain.auto.encrypt and "auto" not in plain.to_json()


# ---------------------------------------------------------------- the supervisor's idle requests

class RecordingEtcd:
    """The real EtcdClient's request building (txn, range, put, member list, leases) over
    an in-memory key space; every request that would hit etcd is recorded in `calls`,
    every write (a raft proposal: an fsync on each voter) in `writes`. `expire(lease)`
    does what etcd does when a lease runs out: drops it and its keys."""

    def __init__(self, members: list[dict], kv: dict[str, str]):
        from crossnet.store.etcdclient import EtcdClient

        self.client = EtcdClient("http://10.0.0.1:2379")
        self.client.call = self.call  # type: ignore[method-assign]
        self.members, self.kv, self.calls = members, dict(kv), []
        self.key_lease: dict[str, int] = {}
        self.leases: dict[int, int] = {}  # id -> granted TTL
        self.writes = 0
        self.rev = 1  # the store revision: bumped by each key written or deleted, as in etcd

    def set(self, key: str, value: str) -> None:
        self.kv[key] = value
        self.rev += 1

    def expire(self, lease: int) -> None:
        del self.leases[lease]
        for k in [k for k, lid in self.key_lease.items() if lid == lease]:
            del self.kv[k], self.key_lease[k]
            self.rev += 1

    def _put(self, req: dict) -> None:
        from crossnet.store.etcdclient import unb64

        key, lease = unb64(req["key"]).decode(), int(req.get("lease", 0))
        assert not lease or lease in self.leases, "put on a lease that does not exist"
        self.kv[key] = unb64(req["value"]).decode()
        self.key_lease[key] = lease
        self.writes += 1
        self.rev += 1

    def _kvs(self, req: dict) -> list[dict]:
        from crossnet.store.etcdclient import b64, unb64

        key = unb64(req["key"]).decode()
        end = unb64(req["range_end"]).decode() if req.get("range_end") else None
        keys = [k for k in sorted(self.kv) if (key <= k < end if end else k == key)]
        return [{"key": b64(k), "value": b64(self.kv[k]), "mod_revision": "1", "lease": str(self.key_lease.get(k, 0))}
                for k in keys]

    def call(self, path: str, body: dict, timeout: float | None = None) -> dict:
        from crossnet.store.etcdclient import unb64

        self.calls.append(path)
        header = {"header": {"revision": str(self.rev)}}
        if path == "cluster/member/list":
            return {"members": [dict(m) for m in self.members], **header}
        if path == "kv/range":
            return {"kvs": self._kvs(body), **header}
        if path == "kv/put":
            self._put(body)
            return header
        if path == "lease/grant":
            lid = 1000 + len(self.calls)
            self.leases[lid] = int(body["TTL"])
            self.writes += 1
            return {"ID": str(lid), "TTL": body["TTL"], **header}
        if path == "lease/keepalive":  # answered by the leader from memory: not a write
            lid = int(body["ID"])
            return {"result": {"ID": str(lid), "TTL": str(self.leases[lid]), **header} if lid in self.leases else {}}
        if path == "kv/lease/timetolive":
            lid = int(body["ID"])
            return ({"ID": str(lid), "TTL": str(self.leases[lid] - 4), "grantedTTL": str(self.leases[lid]), **header}
                    if lid in self.leases else {"ID": str(lid), "TTL": "-1", **header})
        if path == "lease/revoke":
            from crossnet.store.etcdclient import GRPC_NOT_FOUND, EtcdError

            if int(body["ID"]) not in self.leases:
                raise EtcdError("etcdserver: requested lease not found", code=GRPC_NOT_FOUND)
            self.expire(int(body["ID"]))
            self.writes += 1
            return header
        if path == "kv/deleterange":
            gone = [k for k in self.kv if k == unb64(body["key"]).decode()]
            for k in gone:
                del self.kv[k]
                self.key_lease.pop(k, None)
                self.rev += 1
            self.writes += 1
            return {"deleted": str(len(gone)), **header}
        assert path == "kv/txn" and not body["compare"], path
        responses = []
        for op in body["success"]:
            if "request_put" in op:
                self._put(op["request_put"])
                responses.append({"response_put": {}})
            else:
                responses.append({"response_range": {"kvs": self._kvs(op["request_range"])}})
        return {"succeeded": True, "responses": responses, **header}


def _supervisor(tmp_path, role: str, etcd: RecordingEtcd) -> ml.Supervisor:
    paths = ml.Paths(tmp_path)
    paths.root.mkdir(parents=True)
    paths.save({"name": "h4" if role == "client" else "h1", "address": "10.0.0.4" if role == "client" else "10.0.0.1",
                "role": role, "endpoints": ["https://10.0.0.1:2379"]})
    sup = ml.Supervisor(str(tmp_path))
    sup._serial, sup._crl = 77, []  # the member certificate's serial, the CRL file written at launch
    sup.client = lambda timeout=5.0: etcd.client  # type: ignore[method-assign]
    return sup


VOTERS = [{"name": f"h{i}", "ID": str(i), "peerURLs": [f"https://10.0.0.{i}:2380"],
           "clientURLs": [f"https://10.0.0.{i}:2379"]} for i in (1, 2, 3)]


@pytest.mark.parametrize("role", ["voter", "client"])
def test_an_idle_supervisor_tick_writes_nothing_and_sends_only_the_lease_keepalive(tmp_path, role):
    """Each write is a raft proposal (an fsync on every voter) and each request costs etcd
    CPU (TLS + its HTTP gateway): an idle tick refreshes the host's presence lease (no
    write), whatever the role; the revocation and member lists only when the store's
    revision moved; the host record and its `alive/` key are written once; the mesh
    config is read once."""
    etcd = RecordingEtcd(VOTERS, {f"{ml.MESH_PREFIX}/config": json.dumps({"voters": 3})})
    sup = _supervisor(tmp_path, role, etcd)
    sup.tick()
    assert etcd.calls[:2] == ["lease/grant", "kv/txn"]
    etcd.calls.clear()
    writes = etcd.writes
    for _ in range(3):
        sup.tick()
    assert etcd.calls == ["lease/keepalive"] * 3  # nothing written: no revocation or member list re-read
    assert etcd.writes == writes  # the heartbeat Put of every tick is gone
    rec = json.loads(etcd.kv[f"{ml.MESH_PREFIX}/hosts/{sup.name}"])
    assert rec["name"] == sup.name and rec["role"] == role and rec["serial"] == 77 and rec["seen"] > 0
    assert etcd.key_lease[f"{ml.ALIVE_PREFIX}{sup.name}"] == sup._lease and etcd.leases[sup._lease] == ml.ALIVE_TTL
    assert etcd.key_lease[f"{ml.MESH_PREFIX}/hosts/{sup.name}"] == 0  # the record outlives the lease (forget's serial)
    assert sorted(sup.st["endpoints"]) == [f"https://10.0.0.{i}:2379" for i in (1, 2, 3)]


def test_an_expired_presence_lease_is_granted_again_and_status_reads_its_age(tmp_path):
    """Quorum lost for longer than ALIVE_TTL (or etcd restored from scratch): the keep-alive
    answers TTL 0, the next tick writes the record on a new lease; liveness (promotion,
    `status`) is the lease: alive_hosts lists it, presence_age reads its age."""
    etcd = RecordingEtcd(VOTERS, {f"{ml.MESH_PREFIX}/config": json.dumps({"voters": 3})})
    sup = _supervisor(tmp_path, "client", etcd)
    sup.tick()
    first = sup._lease
    assert ml.alive_hosts(etcd.client) == {"h4": first}
    assert ml.presence_age(etcd.client, first) == 4 and ml.presence_age(etcd.client, None) is None
    etcd.expire(first)
    assert ml.alive_hosts(etcd.client) == {} and ml.presence_age(etcd.client, first) is None
    assert ml.promotion_candidate(ml.mesh_hosts(etcd.client), ml.alive_hosts(etcd.client)) is None
    sup.tick()
    assert sup._lease != first and ml.alive_hosts(etcd.client) == {"h4": sup._lease}
    assert ml.promotion_candidate(ml.mesh_hosts(etcd.client), ml.alive_hosts(etcd.client)) == "h4"
    # forget/release: the record, the lease and its key go
    assert ml.remove_host_records(etcd.client, "h4") == ["mesh record"]
    assert ml.alive_hosts(etcd.client) == {} and sup._lease not in etcd.leases


def test_the_tick_still_follows_the_revocation_list_and_refuses_a_hostile_one(tmp_path, monkeypatch):
    from crossnet.mesh import signer

    written = []
    monkeypatch.setattr(signer, "write_crl", lambda pki_dir, serials, *ca: written.append((serials, ca)))
    etcd = RecordingEtcd(VOTERS, {ml.REVOKED_KEY: json.dumps({"serials": [9, 5]}),
                                  f"{ml.MESH_PREFIX}/ca": json.dumps({"cert": "C", "key": "K"})})
    sup = _supervisor(tmp_path, "voter", etcd)
    sup.tick()
    assert written == [([5, 9], ("C", "K"))] and sup._crl == [5, 9]
    sup.tick()  # unchanged: not signed again
    assert len(written) == 1
    etcd.set(ml.REVOKED_KEY, json.dumps({"serials": [9, 5, 12]}))  # a forget elsewhere: read at the next tick
    etcd.calls.clear()
    sup.tick()
    assert etcd.calls[:3] == ["lease/keepalive", "kv/range", "cluster/member/list"] and written[-1][0] == [5, 9, 12]
    etcd.set(ml.REVOKED_KEY, "not json")
    with pytest.raises(CrossnetError, match="not a revocation list"):
        sup.tick()
    assert sup._crl == [5, 9, 12] and len(written) == 2  # the CRL file is left as it was
    with pytest.raises(CrossnetError, match="not a revocation list"):
        sup.tick()  # read again (and refused again) at every tick until it is fixed


def test_a_membership_change_is_read_at_the_next_tick_after_a_write(tmp_path):
    """The member list (endpoints, promotion) is no longer read at every tick: every change
    of it comes with a write (a joiner's or promoted host's record, `forget`'s revocation
    and record removal, `stop --release`'s, an expired presence lease's `alive/` key), which
    moves the revision the keep-alive answers; the next tick then reads it."""
    etcd = RecordingEtcd(VOTERS, {f"{ml.MESH_PREFIX}/config": json.dumps({"voters": 3})})
    sup = _supervisor(tmp_path, "voter", etcd)
    sup.tick()
    assert sorted(sup.st["endpoints"]) == [f"https://10.0.0.{i}:2379" for i in (1, 2, 3)]
    etcd.members = VOTERS[:2]  # h3 removed (its member) ...
    sup.tick()
    assert len(sup.st["endpoints"]) == 3  # ... nothing written yet: not read (at most CRL_TICKS ticks late)
    etcd.set(f"{ml.MESH_PREFIX}/hosts/h3", "{}")  # ... the write that comes with it
    etcd.calls.clear()
    sup.tick()
    assert etcd.calls == ["lease/keepalive", "kv/range", "cluster/member/list"]
    assert sorted(sup.st["endpoints"]) == [f"https://10.0.0.{i}:2379" for i in (1, 2)]


def test_the_revocation_list_is_read_at_least_every_crl_ticks(tmp_path):
    """A member that answers the keep-alive may lag behind the one that served the last
    read: nothing written is trusted for CRL_TICKS ticks at most."""
    etcd = RecordingEtcd(VOTERS, {ml.REVOKED_KEY: json.dumps({"serials": []})})
    sup = _supervisor(tmp_path, "voter", etcd)
    sup.tick()
    etcd.calls.clear()
    for _ in range(ml.CRL_TICKS):
        sup.tick()
    assert etcd.calls.count("kv/range") == 1 and etcd.calls[-3:] == ["lease/keepalive", "kv/range",
                                                                         "cluster/member/list"]


# ---------------------------------------------------------------- the detached supervisor's entry

def test_the_detached_supervisor_runs_without_the_cli(tmp_path):
    """The supervisor is started as `python -m crossnet.mesh.supervise` (still reading as
    `launch --foreground` for running_pid), and what it runs loads no click."""
    argv = ml.supervisor_argv(str(tmp_path))
    assert argv[1:3] == ["-m", "crossnet.mesh.supervise"] and argv[-2:] == ["launch", "--foreground"]
    code = ("import sys; import crossnet.mesh.supervise, crossnet.mesh.launch, crossnet.agent.core, "
            "crossnet.agent.api, crossnet.store.etcd, crossnet.dns.service, crossnet.mesh.join, crossnet.logjson; "
            "print(sorted(m for m in sys.modules if m == 'click' or m.startswith(('click.', 'crossnet.cli'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    # on a host that never launched: one line, exit 1, nothing created
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stderr.strip().startswith("crossnet: error: ") and "never launched" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "mesh").exists()
    bad = subprocess.run([sys.executable, "-m", "crossnet.mesh.supervise", "--state-dir"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "usage:" in bad.stderr


def test_the_idle_supervisor_sleeps_until_etcd_exits_or_it_is_asked_to_stop(tmp_path):
    """The supervisor's loop has no 0.5 s poll: it sleeps until its next tick unless its
    attention event is set — by a thread blocked on etcd's pidfd when etcd exits (it is
    restarted at once), by the agent thread's exit, by SIGTERM (request_stop)."""
    sup = _supervisor(tmp_path, "voter", RecordingEtcd(VOTERS, {}))
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        sup._watch_exit(proc)
        assert not sup._poll_child  # the pidfd is there: nothing polls
        assert not sup._attention.wait(0.3)  # nothing to look at while etcd runs
        proc.stdin.close()  # etcd exits
        assert sup._attention.wait(10)
        assert proc.wait(5) == 0  # reaped by Popen as before: the watcher only waits for it
    finally:
        proc.kill()
        proc.wait()
    sup._attention.clear()
    sup.request_stop()
    assert sup._stop.is_set() and sup._attention.is_set()


@pytest.mark.parametrize(("outcome", "code"), [(0, 0), (RuntimeError("boom"), 1)])
def test_the_agent_thread_wakes_the_supervisor_when_it_ends_and_reads_as_ended_then(outcome, code):
    """on_exit runs on the agent thread itself, which is still alive then: poll() must
    already give the exit code, or the woken supervisor would not restart the agent
    until its next tick."""
    import threading

    class Agent:
        def run(self):
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

    seen: list = []
    woke = threading.Event()
    at = ml.AgentThread.__new__(ml.AgentThread)  # without the etcd store its __init__ connects
    at.agent, at.returncode, at.ended = Agent(), None, False
    at.on_exit = lambda: (seen.append(at.poll()), woke.set())
    at._thread = threading.Thread(target=at._main, daemon=True)
    assert at.start().poll() in (None, code)
    assert woke.wait(10)
    assert seen == [code] and at.poll() == code


class _RecordingAgent:
    """Stands in for the supervisor's AgentThread: records endpoint changes and stops."""

    def __init__(self):
        self.endpoints: list[list[str]] = []
        self.stopped = 0

    def poll(self):
        return None

    def set_endpoints(self, endpoints):
        self.endpoints.append(list(endpoints))

    def stop(self, timeout=15.0):
        self.stopped += 1

    def send_signal(self, sig):
        self.stopped += 1


@pytest.mark.parametrize("role", ["voter", "client"])
def test_new_voters_reach_the_running_agent_without_a_restart(tmp_path, role):
    """When the voters change, the agent gets the new endpoints and keeps running: a
    restart took its API socket away for a moment (a `crossnet attach` at that moment
    failed with 'no crossnet agent is running': a CI failure) and dropped its watches."""
    etcd = RecordingEtcd(VOTERS, {f"{ml.MESH_PREFIX}/config": json.dumps({"voters": 3})})
    sup = _supervisor(tmp_path, role, etcd)
    agent = _RecordingAgent()
    sup.agent, sup.agent_endpoints = agent, sup.endpoints()  # type: ignore[assignment]
    sup.start_agent = lambda: pytest.fail("the agent was restarted")  # type: ignore[method-assign]
    sup.tick()
    assert sup.agent is agent and agent.stopped == 0
    assert len(agent.endpoints) == 1 and sorted(agent.endpoints[0]) == [f"https://10.0.0.{i}:2379" for i in (1, 2, 3)]
    assert sup.agent_endpoints == agent.endpoints[0] == sup.endpoints()
    if role == "voter":
        assert agent.endpoints[0][0] == "https://10.0.0.1:2379"  # its own member first
    sup.tick()
    assert len(agent.endpoints) == 1  # nothing changed: nothing sent


# ---------------------------------------------------------------- what a joiner accepts back

def test_endpoint_list_keeps_only_https_ip_urls():
    """etcd's member list (every tick, and a join response) names what this host's clients
    connect to: a member advertising http://, unix:// or a host name is never used."""
    ms = [{"name": "a", "clientURLs": ["https://10.0.0.1:2379", "http://10.0.0.1:2379"], "peerURLs": []},
          {"name": "b", "clientURLs": ["unix:///run/docker.sock", "https://etcd.example.com:2379",
                                      "https://10.0.0.2:2379,https://10.0.0.9:2379"]},
          {"name": "c", "clientURLs": ["https://[fd00::3]:2379"]}]
    assert ml.endpoint_list(ms) == ["https://10.0.0.1:2379", "https://[fd00::3]:2379"]


def test_a_join_answer_without_a_voter_url_leaves_nothing(tmp_path, monkeypatch):
    """The serving host's member list gives the joiner no etcd endpoint: one line, and the
    state dir (member key and certificate) is not created."""
    from crossnet.mesh import join, pki
    from crossnet.mesh.token import JoinToken, Token

    ca = pki.create_ca(tmp_path / "ca")
    key = pki.generate_key()
    cert = ca.issue(pki.make_csr(key, "h2"), "h2", "10.0.0.2")
    learner = {"name": "h1", "clientURLs": ["https://10.0.0.1:2379"], "peerURLs": [], "isLearner": True}
    monkeypatch.setattr(join, "request_join", lambda *a, **k: join.JoinResult(key, cert, ca.cert, [learner]))
    token = JoinToken(Token("ab12cd", "0123456789abcdef"), ca.pin)
    state = tmp_path / "state"
    with pytest.raises(CrossnetError) as info:
        ml.launch_join(str(state), "10.0.0.1", token, "h2", "eth0", "10.0.0.2", spawn=False)
    assert str(info.value) == "10.0.0.1: the join answer names no voter's client URL (https://IP:PORT); nothing was saved"
    assert not state.exists()


# ---------------------------------------------------------------- a joiner's name and address

class FakeKV:
    """Just enough of EtcdClient for launch.admit_joiner: range/get, leases, and
    transactions of create-if-absent compares and puts."""

    def __init__(self, hosts=()):
        import threading

        self.keys: dict[str, tuple[str, int]] = {f"{ml.MESH_PREFIX}/hosts/{h['name']}": (json.dumps(h), 0)
                                                 for h in hosts}
        self.leases = 0
        self.mu = threading.Lock()

    def range(self, key, prefix=False):
        from types import SimpleNamespace

        with self.mu:
            return [SimpleNamespace(key=k.encode(), value=v.encode(), lease=lease)
                    for k, (v, lease) in sorted(self.keys.items()) if (k.startswith(key) if prefix else k == key)], 0

    def get(self, key):
        kvs, _ = self.range(key)
        return kvs[0] if kvs else None

    def lease_grant(self, ttl):
        with self.mu:
            self.leases += 1
            return self.leases, ttl

    cmp_create = staticmethod(FakeCluster.cmp_create)
    op_put = staticmethod(FakeCluster.op_put)
    txn = FakeCluster.txn
    lease_revoke = FakeCluster.lease_revoke

    def delete(self, key):
        with self.mu:
            return self.keys.pop(key, None) is not None


def test_one_name_and_one_address_per_joiner_even_before_its_first_record():
    """Two hosts joining at once with one name (or one address): the first is admitted and
    reserves both until its own record is written; the other is refused. The same host
    asking again (a retried join) is admitted; a refusal writes nothing."""
    from crossnet.mesh import join

    kv = FakeKV(hosts=[{"name": "h1", "address": "10.0.0.1"}])
    ml.admit_joiner(kv, "h2", "10.0.0.2")
    before = dict(kv.keys)
    for name, address, text in [("h2", "10.0.0.3", "host name 'h2' is being joined by 10.0.0.2"),
                                ("h3", "10.0.0.2", "address 10.0.0.2 is being joined by 'h2'"),
                                ("h1", "10.0.0.9", "host name 'h1' is already taken by 10.0.0.1"),
                                ("h4", "10.0.0.1", "address 10.0.0.1 is already taken by 'h1'")]:
        with pytest.raises(join.JoinRefused) as info:
            ml.admit_joiner(kv, name, address)
        assert (info.value.code, str(info.value)) == ("conflict", text)
        assert kv.keys == before
    assert ml.admit_joiner(kv, "h2", "10.0.0.2") is None  # the same joiner again: already reserved
    release = ml.admit_joiner(kv, "h1", "10.0.0.1")  # a member re-joining with its own name and address
    assert all(lease for k, (_, lease) in kv.keys.items() if "/joining/" in k)  # reservations expire
    release()  # the certificate could not be issued: the reservation goes at once
    assert kv.keys == before


def test_two_hosts_joining_at_once_with_one_name_one_is_refused():
    import threading

    from crossnet.mesh import join

    kv = FakeKV()
    out: dict[str, str] = {}

    def one(address: str) -> None:
        try:
            ml.admit_joiner(kv, "h2", address)
            out[address] = "admitted"
        except join.JoinRefused as exc:
            out[address] = exc.code

    threads = [threading.Thread(target=one, args=(f"10.0.0.{i}",)) for i in range(2, 8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(out.values()) == ["admitted"] + ["conflict"] * 5


def test_forget_gives_the_hosts_join_reservation_back():
    """`forget`/`stop --release` soon after a join: the name and address are free again at
    once (not only when the reservation's lease ends); another joiner's address is kept."""
    kv = FakeKV()
    ml.admit_joiner(kv, "h2", "10.0.0.2")
    ml.admit_joiner(kv, "h3", "10.0.0.3")
    kv.keys[f"{ml.JOINING_PREFIX}address/10.0.0.2"] = ("h3", 0)  # (not h2's any more)
    ml.remove_host_records(kv, "h2")
    assert sorted(k for k in kv.keys if "/joining/" in k) == [f"{ml.JOINING_PREFIX}address/10.0.0.2",
                                                             f"{ml.JOINING_PREFIX}address/10.0.0.3",
                                                             f"{ml.JOINING_PREFIX}name/h3"]
    ml.remove_host_records(kv, "h3")
    assert [k for k in kv.keys if "/joining/" in k] == [f"{ml.JOINING_PREFIX}address/10.0.0.2"]


# ---------------------------------------------------------------- a join killed half-way

def test_the_member_a_killed_join_added_is_found_by_its_peer_url():
    own = "https://10.0.0.9:2380"
    added = [_m("h1", "10.0.0.1"), {"name": "", "ID": "9", "peerURLs": [own]}]
    assert ml.added_member_cluster(added, "h9", own) == "h1=https://10.0.0.1:2380,h9=https://10.0.0.9:2380"
    assert ml.added_member_cluster([_m("h1", "10.0.0.1")], "h9", own) is None
    assert ml.added_member_cluster([_m("h1", "10.0.0.1"), {"name": "", "ID": "8",
                                    "peerURLs": ["https://10.0.0.8:2380"]}], "h9", own) is None


def _pending_join(tmp_path, monkeypatch, cluster, role=ml.JOINING) -> ml.Paths:
    paths = ml.Paths(tmp_path)
    paths.root.mkdir(parents=True)
    paths.save({"version": 1, "name": "h9", "address": "10.0.0.9", "iface": "eth0", "role": role,
                "voters": 3, "endpoints": ["https://10.0.0.0:2379"], "bootstrapped": True,
                "cluster_token": "crossnet-x", "cluster_state": "existing"})
    monkeypatch.setattr(ml, "etcd_client", lambda *a, **kw: cluster)
    return paths


@pytest.mark.parametrize("added_before", [True, False])
def test_a_rerun_of_a_killed_join_starts_the_added_member_or_adds_it_once(tmp_path, monkeypatch, added_before):
    """Killed after `member add` (added_before): the re-run records the member it finds
    and adds none (a second add would leave 2 members for one host, one never started);
    killed before: the re-run adds it, once."""
    cluster = FakeCluster(voters=1)
    own = "https://10.0.0.9:2380"
    if added_before:
        cluster.members.append({"name": "", "ID": "9", "peerURLs": [own]})
    paths = _pending_join(tmp_path, monkeypatch, cluster)
    assert ml.finish_pending(str(tmp_path), spawn=False) == "voter"
    assert [m["peerURLs"] for m in cluster.members].count([own]) == 1
    assert len(cluster.members) == 2
    st = paths.load()
    assert st["role"] == "voter" and st["initial_cluster"] == "h9=https://10.0.0.9:2380,v0=https://10.0.0.0:2380"
    assert cluster.keys == {}  # the voter lock given back when it was taken


def test_a_rerun_of_a_killed_join_into_a_full_cluster_is_a_client(tmp_path, monkeypatch):
    cluster = FakeCluster(voters=3)
    paths = _pending_join(tmp_path, monkeypatch, cluster)
    assert ml.finish_pending(str(tmp_path), spawn=False) == "client"
    assert len(cluster.members) == 3 and paths.load()["role"] == "client"
    assert "initial_cluster" not in paths.load()


# ---------------------------------------------------------------- a promotion killed half-way

OWN = "https://10.0.0.9:2380"


@pytest.mark.parametrize("pending", [ml.JOINING, ml.PROMOTING])
def test_what_a_pending_join_or_promotion_becomes_from_the_member_list(pending):
    """Its member found by peer URL (added, never started): a voter with that member's
    --initial-cluster, whichever was pending; none: a join is decided under the voter lock
    (None), a promotion is a client again (the supervisor promotes it again if still wanted)."""
    v0 = {"name": "v0", "ID": "0", "peerURLs": ["https://10.0.0.0:2380"]}
    added = [v0, {"name": "", "ID": "9", "peerURLs": [OWN]}]
    assert ml.settle_pending(pending, added, "h9", OWN) == ("voter", "h9=https://10.0.0.9:2380,v0=https://10.0.0.0:2380")
    learner = [v0, {"name": "", "ID": "9", "peerURLs": [OWN], "isLearner": True}]  # as member_add adds it
    assert ml.settle_pending(pending, learner, "h9", OWN) == ("voter", "h9=https://10.0.0.9:2380,v0=https://10.0.0.0:2380")
    expected = ("client", None) if pending == ml.PROMOTING else (None, None)
    for members in ([v0], [v0, {"name": "", "ID": "8", "peerURLs": ["https://10.0.0.8:2380"]}]):
        assert ml.settle_pending(pending, members, "h9", OWN) == expected


@pytest.mark.parametrize("added_before", [True, False])
def test_a_restart_after_a_killed_promotion_starts_the_added_member_or_is_a_client(tmp_path, monkeypatch,
                                                                                   added_before):
    """A supervisor killed while promoting this host (launch.json: PROMOTING). After
    `member add` (1 voter + this never-started one: quorum lost): the next start records
    the member it finds, with a new data dir, and adds none. Before: a client again, no
    member added (not even by a second promotion here: that is the supervisor's call)."""
    cluster = FakeCluster(voters=1)
    if added_before:
        cluster.members.append({"name": "", "ID": "9", "peerURLs": [OWN]})
    paths = _pending_join(tmp_path, monkeypatch, cluster, role=ml.PROMOTING)
    (paths.etcd_dir / "data").mkdir(parents=True)  # left from an earlier life of this host
    assert ml.finish_pending(str(tmp_path), spawn=False) == ("voter" if added_before else "client")
    assert len(cluster.members) == (2 if added_before else 1)
    st = paths.load()
    if added_before:
        assert st["role"] == "voter" and st["cluster_state"] == "existing"
        assert st["initial_cluster"] == "h9=https://10.0.0.9:2380,v0=https://10.0.0.0:2380"
        assert not (paths.etcd_dir / "data").exists()
    else:
        assert st["role"] == "client" and "initial_cluster" not in st
    assert cluster.keys == {}  # no voter lock taken


def _promoting_supervisor(tmp_path, monkeypatch, cluster) -> tuple[ml.Supervisor, list]:
    paths = _pending_join(tmp_path, monkeypatch, cluster, role="client")
    sup = ml.Supervisor(str(tmp_path))
    started: list[str] = []
    monkeypatch.setattr(sup, "start_etcd", lambda: started.append(sup.st["initial_cluster"]))
    monkeypatch.setattr(sup, "wait_etcd", lambda: None)
    monkeypatch.setattr(sup, "heartbeat", lambda: None)
    assert paths.load()["role"] == "client"
    return sup, started


def test_a_promotion_records_its_role_before_member_add_then_starts_the_member(tmp_path, monkeypatch):
    """launch.json says PROMOTING when `member add` runs (killed there, the next start
    settles it from the member list); then voter, the member's --initial-cluster, etcd."""
    cluster = FakeCluster(voters=1)
    sup, started = _promoting_supervisor(tmp_path, monkeypatch, cluster)
    seen = []
    add = cluster.call

    def call(path, body):
        if path == "cluster/member/add":
            seen.append(sup.paths.load()["role"])
        return add(path, body)

    cluster.call = call
    sup.promote(cluster, 2)
    assert seen == [ml.PROMOTING]
    assert sup.paths.load()["role"] == "voter" and sup.st["role"] == "voter"
    assert started == ["h9=https://10.0.0.9:2380,v0=https://10.0.0.0:2380"] and len(cluster.members) == 2


def test_a_promotion_whose_slot_was_taken_or_whose_member_add_failed_is_settled(tmp_path, monkeypatch):
    """Another host took the slot: a client again, nothing started. `member add` failed
    (its answer may be lost: the member may exist): PROMOTING stays until the next read of
    the member list (maintain), which starts the member found by its peer URL."""
    cluster = FakeCluster(voters=2)
    sup, started = _promoting_supervisor(tmp_path, monkeypatch, cluster)
    sup.promote(cluster, 2)
    assert sup.paths.load()["role"] == "client" and started == [] and len(cluster.members) == 2

    cluster = FakeCluster(voters=1)
    add = cluster.call

    def lost_answer(path, body):
        out = add(path, body)
        if path == "cluster/member/add":
            raise CrossnetError("etcd: request timed out")
        return out

    cluster.call = lost_answer
    with pytest.raises(CrossnetError, match="timed out"):
        sup.promote(cluster, 2)
    assert sup.paths.load()["role"] == ml.PROMOTING and started == []
    sup._want = 2
    sup.maintain(cluster)
    assert sup.paths.load()["role"] == "voter" and len(cluster.members) == 2
    assert started == ["h9=https://10.0.0.9:2380,v0=https://10.0.0.0:2380"]


@pytest.mark.parametrize(("at", "code"), [("promote-added", -9), ("2", -9), ("promote-none", 0)])
def test_a_labelled_crash_point_is_reached_by_its_name_or_its_count(at, code):
    """The supervisor's promotion steps run after its agent's applies (uncounted, timed by
    the agent): the test hook reaches them by label; counted points still count them."""
    prog = ("from crossnet.state import crash_point\n"
            "crash_point('promote-recorded'); crash_point('promote-added'); print('passed')")
    p = subprocess.run([sys.executable, "-c", prog], env={**__import__("os").environ, "CROSSNET_TEST_CRASH_AT": at},
                       capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == code and p.stdout == ("passed\n" if code == 0 else ""), (p.returncode, p.stdout, p.stderr)


def test_status_says_what_a_pending_role_is():
    assert ml.role_text("voter", True) == "voter"
    assert ml.role_text(ml.PROMOTING, False) == ("promoting: a promotion to voter not completed; "
                                                 "`crossnet launch` completes it")
    assert ml.role_text(ml.JOINING, False).startswith("joining: a join not completed; ")
    line = ml.format_status({"name": "h9", "address": "10.0.0.9", "role": ml.PROMOTING, "running": True,
                             "store": "ok", "members": [], "peers": []}).splitlines()[0]
    assert line == ("mesh: this host h9 (10.0.0.9, promoting: a promotion to voter not completed; its supervisor "
                    "settles it at its next membership read), running; store ok")


class FakeMesh(FakeKV):
    """FakeKV with an etcd member list (`member list`, `member remove`): for forget."""

    def __init__(self, hosts, members):
        super().__init__(hosts)
        self.members = members

    def call(self, path, body):
        if path == "cluster/member/list":
            return {"members": [dict(m) for m in self.members]}
        assert path == "cluster/member/remove"
        self.members = [m for m in self.members if m["ID"] != body["ID"]]
        return {}


def test_forget_removes_the_never_started_member_of_a_host_killed_while_promoting(tmp_path, monkeypatch):
    """A host killed after its promotion's (or join's) `member add` has a member with no
    name yet: forget finds it by the peer URL of the host's recorded address (it only
    matched names: the cluster kept a voter that never starts)."""
    mesh = FakeMesh([{"name": "h9", "address": "10.0.0.9", "role": "client"}],
                    [{"name": "h1", "ID": "1", "peerURLs": ["https://10.0.0.1:2380"]},
                     {"name": "h2", "ID": "2", "peerURLs": ["https://10.0.0.2:2380"]},
                     {"name": "", "ID": "9", "peerURLs": [OWN]}])
    paths = ml.Paths(tmp_path)
    paths.root.mkdir(parents=True)
    paths.save({"version": 1, "name": "h1", "address": "10.0.0.1", "iface": "eth0", "role": "voter",
                "endpoints": ["https://10.0.0.1:2379"]})
    monkeypatch.setattr(ml, "etcd_client", lambda *a, **kw: mesh)
    assert ml.forget(str(tmp_path), "h9") == ["etcd member", "mesh record"]
    assert [m["name"] for m in mesh.members] == ["h1", "h2"]


@pytest.mark.parametrize("how", ["reservation", "address"])
def test_forget_finds_a_killed_joiners_learner_without_any_record(tmp_path, monkeypatch, how):
    """A joiner killed between `member add` and its first record leaves a learner with no
    name and no host record: `forget NAME` found nothing ("no host") and the learner kept
    a voter's slot. Now found by the address its join reserved (within JOIN_RESERVE_TTL s)
    or, once that expired, by `forget ADDRESS`."""
    mesh = FakeMesh([], [{"name": "h1", "ID": "1", "peerURLs": ["https://10.0.0.1:2380"]},
                         {"name": "", "ID": "9", "peerURLs": [OWN], "isLearner": True}])
    if how == "reservation":
        mesh.keys[f"{ml.JOINING_PREFIX}name/h9"] = ("10.0.0.9", 7)
        mesh.keys[f"{ml.JOINING_PREFIX}address/10.0.0.9"] = ("h9", 7)
    paths = ml.Paths(tmp_path)
    paths.root.mkdir(parents=True)
    paths.save({"version": 1, "name": "h1", "address": "10.0.0.1", "iface": "eth0", "role": "voter",
                "endpoints": ["https://10.0.0.1:2379"]})
    monkeypatch.setattr(ml, "etcd_client", lambda *a, **kw: mesh)
    if how == "address":
        with pytest.raises(ConfigError, match="^HOST: no host 'h9' in this mesh$"):
            ml.forget(str(tmp_path), "h9")  # nothing names it any more
    assert ml.forget(str(tmp_path), "h9" if how == "reservation" else "10.0.0.9")[0] == "etcd member"
    assert [m["name"] for m in mesh.members] == ["h1"] and not any("joining" in k for k in mesh.keys)
    with pytest.raises(ConfigError, match="^HOST: this is this host"):
        mesh.keys[f"{ml.MESH_PREFIX}/hosts/h1"] = (json.dumps({"name": "h1", "address": "10.0.0.1"}), 0)
        ml.forget(str(tmp_path), "10.0.0.1")


def test_only_an_etcd_on_this_hosts_data_dir_is_taken_for_a_left_member():
    data = "/var/lib/crossnet/mesh/etcd/data"
    argv = ml.etcd_argv("h1", "10.0.0.1", data, "/var/lib/crossnet/mesh/pki", "h1=https://10.0.0.1:2380",
                        "existing", "crossnet-x")
    assert ml.runs_member_of(b"\0".join(a.encode() for a in argv) + b"\0", data)
    assert ml.runs_member_of(b"\0".join(a.encode() for a in ["/usr/bin/etcd", *argv[1:]]), data)
    assert not ml.runs_member_of(b"\0".join(a.encode() for a in argv), data + "2")  # another state dir's
    assert not ml.runs_member_of(b"\0".join(a.encode() for a in ["sleep", *argv[1:]]), data)  # a reused pid
    assert not ml.runs_member_of(b"etcd\0--data-dir", data)
    assert not ml.runs_member_of(b"", data)


# ---------------------------------------------------------------- learners

def test_promote_learner_waits_until_the_member_caught_up_and_never_promotes_twice(monkeypatch):
    """A member added by a join or promotion is a learner (no quorum share while it is not
    running); its host asks for the promotion once its etcd runs, retried while etcd says
    the learner is not in sync with the leader."""
    monkeypatch.setattr(ml.time, "sleep", lambda s: None)
    cluster = FakeCluster(voters=1)
    ml.member_add(cluster, OWN)
    assert cluster.members[-1]["isLearner"] is True and len(ml.voters_of(cluster.members)) == 1
    cluster.behind = 3
    assert ml.promote_learner(cluster, OWN) is True
    assert cluster.promoted == ["1"] and len(ml.voters_of(cluster.members)) == 2
    assert ml.promote_learner(cluster, OWN) is False and cluster.promoted == ["1"]  # a voter already
    with pytest.raises(CrossnetError, match="no etcd member with this host's peer URL"):
        ml.promote_learner(cluster, "https://10.0.0.77:2380")  # forgotten meanwhile


def test_promote_learner_gives_up_at_its_deadline_or_on_another_error(monkeypatch):
    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr(ml.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(ml.time, "sleep", lambda s: None)
    cluster = FakeCluster(voters=1)
    ml.member_add(cluster, OWN)
    cluster.behind = 1000
    with pytest.raises(CrossnetError, match="in sync"):
        ml.promote_learner(cluster, OWN, timeout=60)
    assert cluster.members[-1]["isLearner"] is True
    cluster.behind = 0
    cluster.call = lambda path, body: (_ for _ in ()).throw(CrossnetError("etcd: permission denied")) \
        if path == "cluster/member/promote" else FakeCluster.call(cluster, path, body)
    with pytest.raises(CrossnetError, match="permission denied"):
        ml.promote_learner(cluster, OWN)


def test_a_started_learner_is_promoted_before_its_etcd_is_waited_for_and_the_mark_cleared(tmp_path, monkeypatch):
    """finish_pending marks launch.json `learner` with the member it starts; the
    supervisor's wait for its etcd promotes it first (a learner does not answer that
    read), then clears the mark: a restart after that does not ask again. Killed before
    the mark was cleared, the next start finds a voter and only clears it."""
    monkeypatch.setattr(ml.time, "sleep", lambda s: None)
    cluster = FakeCluster(voters=1)
    paths = _pending_join(tmp_path, monkeypatch, cluster)
    assert ml.finish_pending(str(tmp_path), spawn=False) == "voter"
    assert paths.load()["learner"] is True and cluster.members[-1]["isLearner"] is True
    sup = ml.Supervisor(str(tmp_path))
    read = []

    class Own:  # this host's own etcd: answers only once its member is a voter
        def range(self, key, prefix=False):
            read.append(cluster.members[-1]["isLearner"])
            return [], 0

    monkeypatch.setattr(ml, "etcd_client", lambda p, eps, **kw: Own() if eps == ["https://10.0.0.9:2379"] else cluster)
    cluster.behind = 2
    sup.wait_etcd()
    assert read == [False] and cluster.promoted == ["1"]
    assert "learner" not in paths.load() and "learner" not in sup.st
    sup2 = ml.Supervisor(str(tmp_path))
    sup2.wait_etcd()
    assert cluster.promoted == ["1"]  # not asked again

    st = paths.load()
    st["learner"] = True  # killed after the promotion, before the mark was cleared
    paths.save(st)
    sup3 = ml.Supervisor(str(tmp_path))
    sup3.wait_etcd()
    assert cluster.promoted == ["1"] and "learner" not in paths.load()


def test_status_names_a_learner_member_as_such():
    """A joining or promoted host's member is an etcd learner until its host promotes it:
    `status` says `learner`, not `voter` (it has no vote yet)."""
    voter, learner = _m("h1", "10.0.0.1"), _m("", "10.0.0.2", learner=True)
    rows = [ml.member_row(m, {"https://10.0.0.1:2379"}, voter["ID"]) for m in (voter, learner)]
    assert rows == [{"name": "h1", "role": "voter", "healthy": True, "leader": True, "url": "https://10.0.0.1:2379"},
                    {"name": "(starting)", "role": "learner", "healthy": False, "leader": False,
                     "url": "https://10.0.0.2:2379"}]
    text = ml.format_status({"name": "h1", "address": "10.0.0.1", "role": "voter", "running": True, "store": "ok",
                             "members": rows, "peers": []})
    assert "  (starting)       learner UNHEALTHY" in text.splitlines()


def test_a_join_waits_for_another_hosts_learner_then_is_a_client_if_it_stays_one(monkeypatch):
    """etcd 3.4 holds one learner at a time ("too many learner members in cluster"): a join
    waits for the other host's learner to be promoted (normally within a second or two),
    and if it is never promoted (its host died before its etcd started) becomes a client
    instead of failing the join; no member is added for it."""
    now = [0.0]
    monkeypatch.setattr(ml.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(ml.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    cluster = FakeCluster(voters=1)
    cluster.members.append({"name": "", "ID": "8", "peerURLs": ["https://10.0.0.8:2380"], "isLearner": True})
    role, members = ml.admit(cluster, OWN, 5, "h9")
    assert role == "client" and len(members) == 2 and now[0] > ml.LEARNER_WAIT
    assert ml.VOTER_LOCK not in cluster.keys  # given back

    now[0] = 0.0
    sleep = ml.time.sleep

    def promoted_meanwhile(s):  # the other host's learner is promoted after a second
        sleep(s)
        if now[0] >= 1.0:
            cluster.members[1]["isLearner"] = False

    monkeypatch.setattr(ml.time, "sleep", promoted_meanwhile)
    role, members = ml.admit(cluster, OWN, 5, "h9")
    assert role == "voter" and members[-1]["peerURLs"] == [OWN] and members[-1]["isLearner"] is True
    assert 1.0 <= now[0] < ml.LEARNER_WAIT


def test_a_supervisor_never_waits_on_another_hosts_learner(tmp_path, monkeypatch):
    """A client's promotion runs in its supervisor's tick, which also keeps its presence
    lease (15 s): while another host's learner is pending, maintain tries no promotion, and
    a promotion that meets one (a race) does not wait the join's LEARNER_WAIT: a client."""
    cluster = FakeCluster(voters=1)
    cluster.members.append({"name": "", "ID": "8", "peerURLs": ["https://10.0.0.8:2380"], "isLearner": True})
    sup, started = _promoting_supervisor(tmp_path, monkeypatch, cluster)
    tried = []
    monkeypatch.setattr(sup, "promote", lambda c, want: tried.append(want))
    monkeypatch.setattr(ml, "promotion_candidate", lambda hosts, alive: "h9")
    monkeypatch.setattr(ml, "mesh_hosts", lambda c: [])
    monkeypatch.setattr(ml, "alive_hosts", lambda c: {})
    sup._want = 3
    sup.maintain(cluster)
    assert tried == []  # 2 members < 3 voters wanted, but a learner is pending
    cluster.members[1]["isLearner"] = False
    sup.maintain(cluster)
    assert tried == [3]  # promoted meanwhile: a slot is free

    cluster.members[1]["isLearner"] = True
    sup2, started2 = _promoting_supervisor(tmp_path / "again", monkeypatch, cluster)
    waited = []
    monkeypatch.setattr(ml.time, "sleep", lambda s: waited.append(s))
    sup2.promote(cluster, 3)
    assert 0.5 not in waited and sup2.paths.load()["role"] == "client" and started2 == []  # no retry (0.05: the fake)
    assert len(cluster.members) == 2


# ---------------------------------------------------------------- a learner whose host never started it

GONE = "https://10.0.0.8:2380"  # the peer URL of a joiner killed right after `member add`


def _unstarted(mid="8", peer=GONE):
    return {"name": "", "ID": mid, "peerURLs": [peer], "isLearner": True}  # as member_add leaves it


def test_an_unstarted_learner_is_stale_only_after_the_bound_and_never_a_voter_own_or_named_one():
    voter = {"name": "v0", "ID": "0", "peerURLs": ["https://10.0.0.0:2380"], "clientURLs": ["https://10.0.0.0:2379"]}
    named = {"name": "h7", "ID": "7", "peerURLs": ["https://10.0.0.7:2380"], "clientURLs": ["https://10.0.0.7:2379"],
             "isLearner": True}  # its etcd started: its host promotes it on its next start
    own = _unstarted("9", OWN)
    members = [voter, named, own, _unstarted()]
    stale, seen = ml.stale_learners(members, {}, 100.0, OWN, 300.0)
    assert stale == [] and seen == {("8", (GONE,)): 100.0}
    stale, seen = ml.stale_learners(members, seen, 399.0, OWN, 300.0)
    assert stale == [] and seen == {("8", (GONE,)): 100.0}  # first seen kept, not yet stale
    stale, seen = ml.stale_learners(members, seen, 400.0, OWN, 300.0)
    assert stale == [_unstarted()]
    started = dict(_unstarted(), name="h8", clientURLs=["https://10.0.0.8:2379"])
    assert ml.stale_learners([voter, started], seen, 1000.0, OWN, 300.0) == ([], {})  # started: forgotten
    # the same ID with other peer URLs (member update) is watched anew
    stale, seen = ml.stale_learners([_unstarted(peer="https://10.0.0.6:2380")], seen, 1000.0, OWN, 300.0)
    assert stale == [] and seen == {("8", ("https://10.0.0.6:2380",)): 1000.0}


@given(members=st.lists(st.fixed_dictionaries({
    "ID": st.sampled_from(["1", "2", "3", "4"]),
    "name": st.sampled_from(["", "h1", None]),
    "peerURLs": st.sampled_from([[OWN], [GONE], ["https://10.0.0.6:2380"], []]),
    "clientURLs": st.sampled_from([[], ["https://10.0.0.8:2379"]]),
    "isLearner": st.booleans()}), max_size=5),
    seen=st.dictionaries(st.tuples(st.sampled_from(["1", "2", "9"]), st.sampled_from([(OWN,), (GONE,)])),
                         st.floats(0, 2000)),
    now=st.floats(0, 2000), bound=st.floats(0.001, 1000))
def test_stale_learners_property(members, seen, now, bound):
    stale, seen2 = ml.stale_learners(members, seen, now, OWN, bound)
    for m in stale:
        assert m in members and m["isLearner"] and not m["name"] and not m["clientURLs"]
        assert OWN not in m["peerURLs"]
        key = (m["ID"], tuple(m["peerURLs"]))
        assert key in seen and now - seen[key] >= bound  # only a learner seen before, for the bound
    keys = {(m["ID"], tuple(m["peerURLs"])) for m in members}
    assert set(seen2) <= keys and all(t <= now for t in seen2.values())
    for m in members:  # and every unstarted learner but this host's own, seen for the bound, is stale
        key = (m["ID"], tuple(m["peerURLs"]))
        if m["isLearner"] and not m["name"] and not m["clientURLs"] and m["peerURLs"] and OWN not in m["peerURLs"]:
            assert key in seen2
            if key in seen and now - seen[key] >= bound:
                assert m in stale


@pytest.mark.parametrize("text", ["0", "-5", "nan", "inf", "abc", "", "1e999", " "])
def test_the_stale_learner_bound_knob_is_a_positive_number(text):
    assert ml.stale_learner_bound({}) == ml.STALE_LEARNER_S == ml.JOIN_RESERVE_TTL
    assert ml.stale_learner_bound({ml.STALE_LEARNER_ENV: "12.5"}) == 12.5
    with pytest.raises(ConfigError) as exc:
        ml.stale_learner_bound({ml.STALE_LEARNER_ENV: text})
    assert str(exc.value).startswith("CROSSNET_STALE_LEARNER_S: ") and "\n" not in str(exc.value)


class RemovingCluster(FakeCluster):
    """FakeCluster with `member remove` (etcd's "member not found" for an unknown ID)."""

    def __init__(self, voters: int):
        super().__init__(voters)
        self.removed: list[str] = []
        self.before_remove = lambda: None  # another voter acting between the re-check and the remove

    def call(self, path, body):
        if path == "cluster/member/remove":
            self.before_remove()
            with self.mu:
                if not any(m["ID"] == body["ID"] for m in self.members):
                    raise CrossnetError("etcd cluster/member/remove: etcdserver: member not found")
                self.members = [m for m in self.members if m["ID"] != body["ID"]]
                self.removed.append(body["ID"])
                return {"members": [dict(m) for m in self.members]}
        return super().call(path, body)


def test_a_stale_learner_is_rechecked_before_its_removal_and_a_second_remover_is_harmless():
    cluster = RemovingCluster(voters=1)
    cluster.members.append(_unstarted())
    assert ml.remove_stale_learner(cluster, _unstarted()) is True and cluster.removed == ["8"]
    assert ml.remove_stale_learner(cluster, _unstarted()) is False  # gone already: nothing asked

    cluster.members.append(_unstarted())  # another voter removes it between the re-check and the remove
    cluster.before_remove = lambda: cluster.members.pop()
    assert ml.remove_stale_learner(cluster, _unstarted()) is False and len(cluster.members) == 1  # no error
    cluster.before_remove = lambda: None

    for changed in ({"name": "h8", "clientURLs": ["https://10.0.0.8:2379"]}, {"isLearner": False},
                    {"peerURLs": ["https://10.0.0.6:2380"]}):  # started, promoted, or another member by now
        cluster.members[1:] = [dict(_unstarted(), **changed)]
        assert ml.remove_stale_learner(cluster, _unstarted()) is False
        assert len(cluster.members) == 2
    cluster.call = lambda path, body: (_ for _ in ()).throw(CrossnetError("etcd: permission denied")) \
        if path == "cluster/member/remove" else RemovingCluster.call(cluster, path, body)
    cluster.members[1:] = [_unstarted()]
    with pytest.raises(CrossnetError, match="permission denied"):
        ml.remove_stale_learner(cluster, _unstarted())


def _voter_supervisor(tmp_path, monkeypatch, cluster, role="voter") -> ml.Supervisor:
    _pending_join(tmp_path, monkeypatch, cluster, role=role)
    sup = ml.Supervisor(str(tmp_path))
    monkeypatch.setattr(ml, "mesh_hosts", lambda c: [])
    monkeypatch.setattr(ml, "alive_hosts", lambda c: {})
    monkeypatch.setattr(sup, "promote", lambda c, want: None)
    sup._want = 3
    return sup


def test_a_voters_supervisor_removes_a_learner_never_started_after_the_bound(tmp_path, monkeypatch, caplog):
    """A joiner killed right after `member add`: its learner (no name) takes a voter's slot
    and, etcd's one learner, blocks every `member add`. The voters' maintain removes it
    once seen so for the bound (one line naming its peer URL); then a join is a voter again.
    Never this host's own member, a voter, or a client's doing."""
    monkeypatch.setenv(ml.STALE_LEARNER_ENV, "20")
    now = [1000.0]
    monkeypatch.setattr(ml.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(ml.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    cluster = RemovingCluster(voters=1)
    ml.admit(cluster, GONE, 3, "h8")  # the joiner's `member add`, then it was killed
    own = {"name": "h9", "ID": "9", "peerURLs": [OWN], "clientURLs": ["https://10.0.0.9:2379"]}
    cluster.members.append(own)
    client = _voter_supervisor(tmp_path / "client", monkeypatch, cluster, role="client")
    sup = _voter_supervisor(tmp_path, monkeypatch, cluster)
    assert sup._stale_bound == ml.STALE_LEARNER_S  # until run() reads the knob
    sup._stale_bound = ml.stale_learner_bound(ml.os.environ)
    assert sup._stale_bound == 20.0
    caplog.set_level("WARNING", logger="crossnet.mesh")
    for _ in range(4):  # 15 s: kept
        sup.maintain(cluster)
        client.maintain(cluster)
        now[0] += 5.0
    assert [m["peerURLs"] for m in cluster.members] == [["https://10.0.0.0:2380"], [GONE], [OWN]]
    assert sup._unstarted  # watched: the tick reads the member list every time meanwhile
    sup.maintain(cluster)  # 20 s
    assert cluster.removed == ["1"] and [m["peerURLs"] for m in cluster.members] == [["https://10.0.0.0:2380"], [OWN]]
    lines = [r.getMessage() for r in caplog.records if "removed the etcd learner" in r.getMessage()]
    assert lines == [f"removed the etcd learner {GONE}: never started in 20s (its host gone after `member add`)"]
    assert sup._unstarted == {}
    now[0] += 1000.0
    client.maintain(cluster)
    assert cluster.removed == ["1"]  # a client never removes anything
    role, members = ml.admit(cluster, "https://10.0.0.7:2380", 3, "h7")
    assert role == "voter" and members[-1]["peerURLs"] == ["https://10.0.0.7:2380"]  # not a client after 15 s

    # this host's own member, a learner never started (its promotion pending): never removed
    sup.st["learner"] = True
    cluster.members = [cluster.members[0], _unstarted("9", OWN)]
    sup._unstarted = {}
    for _ in range(3):
        sup.maintain(cluster)
        now[0] += 1000.0
    assert cluster.removed == ["1"]


@pytest.mark.parametrize("role", [ml.JOINING, ml.PROMOTING, "learner"])
def test_a_host_back_after_its_learner_was_removed_re_adds_itself_or_is_a_client(tmp_path, monkeypatch, role):
    """Killed after `member add` and back after the voters removed its learner: a join
    (launch.json `joining`) is admitted again (a voter: the slot is free), a promotion is a
    client again, and a host killed after recording `voter` + `learner` (its etcd never
    started) is a client instead of starting an etcd for a member that is gone."""
    cluster = RemovingCluster(voters=1)
    paths = _pending_join(tmp_path, monkeypatch, cluster, role=ml.JOINING if role == "learner" else role)
    if role == "learner":
        assert ml.finish_pending(str(tmp_path), spawn=False) == "voter" and paths.load()["learner"] is True
        (paths.etcd_dir / "data").mkdir(parents=True)
    else:
        ml.admit(cluster, OWN, 3, "h9")  # then killed
    assert len(cluster.members) == 2
    assert ml.remove_stale_learner(cluster, cluster.members[1]) is True and len(cluster.members) == 1
    if role == "learner":
        sup = ml.Supervisor(str(tmp_path))
        sup.settle_removed_learner()
        st = paths.load()
        assert st["role"] == "client" and "learner" not in st and st["endpoints"] == ["https://10.0.0.0:2379"]
        assert not (paths.etcd_dir / "data").exists() and len(cluster.members) == 1
        return
    got = ml.finish_pending(str(tmp_path), spawn=False)
    assert got == ("voter" if role == ml.JOINING else "client") and paths.load()["role"] == got
    assert [m["peerURLs"] for m in cluster.members].count([OWN]) == (1 if role == ml.JOINING else 0)


def test_a_started_learner_keeps_its_member_when_its_host_comes_back(tmp_path, monkeypatch):
    """settle_removed_learner leaves a host whose member is still there (or whose member
    list cannot be read) as it is."""
    cluster = RemovingCluster(voters=1)
    paths = _pending_join(tmp_path, monkeypatch, cluster)
    assert ml.finish_pending(str(tmp_path), spawn=False) == "voter"
    before = paths.load()
    ml.Supervisor(str(tmp_path)).settle_removed_learner()
    assert paths.load() == before and len(cluster.members) == 2
    monkeypatch.setattr(ml, "retrying", lambda fn, **kw: (_ for _ in ()).throw(CrossnetError("no leader")))
    cluster.members.pop()
    ml.Supervisor(str(tmp_path)).settle_removed_learner()
    assert paths.load() == before


def test_a_bad_stale_learner_knob_stops_a_launch_before_anything_and_never_status(tmp_path, monkeypatch):
    """CROSSNET_STALE_LEARNER_S is the supervisor's: a bad value is refused in one line by
    the launching commands before the handshake or any file, and by the supervisor before
    it starts anything; `status`/`forget` (which build a Supervisor for its endpoints) never
    read it."""
    from crossnet.mesh import join

    monkeypatch.setenv(ml.STALE_LEARNER_ENV, "-1")
    monkeypatch.setattr(join, "request_join", lambda *a: pytest.fail("handshake with a bad knob"))
    state = tmp_path / "j"
    with pytest.raises(ConfigError, match=r"^CROSSNET_STALE_LEARNER_S: '-1' is not a positive number of seconds$"):
        ml.launch_join(str(state), "10.0.0.1", None, "h9", "eth0", "10.0.0.9", spawn=False)
    with pytest.raises(ConfigError, match="^CROSSNET_STALE_LEARNER_S: "):
        ml.launch_first(str(state), "h1", "eth0", "10.0.0.1", "10.32.0.0/12", 24, "vxlan", 3, 30, spawn=False)
    assert not state.exists()
    cluster = FakeCluster(voters=1)
    paths = _pending_join(tmp_path, monkeypatch, cluster, role="voter")
    before = paths.load()
    with pytest.raises(ConfigError, match="^CROSSNET_STALE_LEARNER_S: "):
        ml.launch_again(str(tmp_path), spawn=False)
    sup = ml.Supervisor(str(tmp_path))  # what status and forget do
    monkeypatch.setattr(sup, "start_etcd", lambda: pytest.fail("etcd started with a bad knob"))
    with pytest.raises(ConfigError, match="^CROSSNET_STALE_LEARNER_S: "):
        sup.run()
    assert paths.load() == before and not paths.pidfile.exists()
