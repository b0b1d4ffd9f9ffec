"""`crossnet launch`: one command per host, an etcd member + the agent (docs/mesh.md).

Pure logic first (defaults, roles, endpoint lists, etcd argv — unit-tested), then the
cluster-side records (everything in etcd, over mutual TLS with the member
certificates), then the supervisor (`crossnet launch --foreground`), then the
commands' operations (launch, stop, forget, status, tokens).

etcd keys of the mesh (beside the agent's `<prefix>/…`, prefix `/crossnet`):

    /crossnet-mesh/config         {"voters": 3}                      written once by the first host
    /crossnet-mesh/ca             {"cert": PEM, "key": PEM}          the cluster CA (signs joins on any host)
    /crossnet-mesh/tokens         the token store document (verifiers only, crossnet.mesh.token)
    /crossnet-mesh/hosts/<name>   {"name", "address", "role", "seen", "serial"}  written at start/promotion
    /crossnet-mesh/alive/<name>   ""  on the host's presence lease (ALIVE_TTL), kept alive every HEARTBEAT s

Local state (`<state-dir>/mesh/`): `launch.json` (name, address, iface, role, …),
`launch.pid`, `launch.log`, `etcd/` (the member's data dir), `pki/` (crossnet.mesh.state).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossnet import netconfig
from crossnet.errors import ConfigError, CrossnetError
from crossnet.mesh import pki
from crossnet.mesh.state import MeshDir
from crossnet.mesh.token import JoinToken, TokenStore
from crossnet.state import CRASH_ENV, crash_point

log = logging.getLogger("crossnet.mesh")

CLIENT_PORT = 2379
PEER_PORT = 2380
MESH_PREFIX = "/crossnet-mesh"
AGENT_PREFIX = "/crossnet"
DEFAULT_NETWORK = "10.32.0.0/12"
DEFAULT_SUBNET_LEN = 24
DEFAULT_BACKEND = "vxlan"
DEFAULT_VOTERS = 3
DEFAULT_TTL = 30
HEARTBEAT = 5.0
# A host is alive while its presence lease lives: the supervisor refreshes it every HEARTBEAT s
# (a lease keep-alive is answered by the leader from memory: no raft write, no fsync on the
# voters, unlike the heartbeat `Put` it replaces); it expires 3 HEARTBEATs after the last one.
ALIVE_TTL = int(3 * HEARTBEAT)
POLL_CHILD = 0.5  # s between looks at etcd when its exit cannot be waited for (no pidfd), and join endpoint retries
CRL_TICKS = 6  # the revocation and member lists are read at least every CRL_TICKS ticks even if nothing was written
ETCD_BINARY = "etcd"
# etcd tuned for an idle LAN mesh (measured, docs/mesh.md "Resources"): raft heartbeats every
# 500 ms instead of 100 ms, election after 2.5-5 s without one (5 heartbeats: etcd's minimum
# ratio; the election bound the faults tests need is the same as with 250 ms), one OS thread for Go code,
# garbage collection at +25 % heap (GOGC=25: 34 MB instead of 37 MB measured, CPU no higher).
# --snapshot-count 5000 (3.4's default 100000; etcd_argv): the raft log etcd keeps
# in memory is bounded by it plus 5000 catch-up entries. GOMEMLIMIT=20MiB was tried: -2.5 MB,
# but the collector ran all the time (~15 % CPU): not set.
ETCD_TUNING = ["--heartbeat-interval", "500", "--election-timeout", "2500"]
# etcd keeps every revision until compacted (each write is one: agents' records, leases'
# keys; the host heartbeat was one per host every HEARTBEAT s before the presence lease):
# without compaction its memory and data file grow for ever until the 2 GB quota stops every
# write. Keep one hour of history (compacted hourly); a watch resuming from before that gets
# "compacted" and the agent re-reads a snapshot.
ETCD_COMPACTION = ["--auto-compaction-mode", "periodic", "--auto-compaction-retention", "1h"]
ETCD_ENV = {"GOMAXPROCS": "1", "GOGC": "25"}
READY_TIMEOUT = 90.0


# ====================================================================== pure logic

def pick_underlay(default_oif: int | None, links: dict[int, str], addrs: dict[int, list[str]],
                  iface: str | None = None, address: str | None = None) -> tuple[str, str]:
    """(iface, address) of the underlay. links: index -> name; addrs: index -> global
    IPv4 addresses (no prefix length). Order: --iface/--address; the interface of the
    default route; else the only non-lo interface with a global IPv4 address."""
    by_name = {n: i for i, n in links.items()}
    if address is not None:
        from crossnet.ipv4 import ipv4_address

        ip = str(ipv4_address(address, "--address"))
        owners = [i for i, a in addrs.items() if ip in a]
        if iface is not None:
            if iface not in by_name:
                raise ConfigError(f"--iface: interface {iface!r} does not exist on this host")
            if ip not in addrs.get(by_name[iface], []):
                raise ConfigError(f"--address: {ip} is not configured on {iface}")
            return iface, ip
        if not owners:
            raise ConfigError(f"--address: {ip} is not configured on any interface of this host")
        return links[owners[0]], ip
    if iface is not None:
        if iface not in by_name:
            raise ConfigError(f"--iface: interface {iface!r} does not exist on this host")
        mine = addrs.get(by_name[iface], [])
        if not mine:
            raise ConfigError(f"--iface: interface {iface!r} has no IPv4 address; pass --address")
        return iface, mine[0]
    if default_oif is not None and addrs.get(default_oif):
        return links[default_oif], addrs[default_oif][0]
    candidates = [i for i, a in addrs.items() if a and links.get(i) != "lo"]
    if len(candidates) == 1:
        return links[candidates[0]], addrs[candidates[0]][0]
    raise ConfigError("--address: cannot tell the underlay address (no default route and "
                      f"{len(candidates)} interfaces with an IPv4 address); pass --address (and --iface)")


def detect_underlay(iface: str | None = None, address: str | None = None) -> tuple[str, str]:
    """pick_underlay with this namespace's links, addresses and default route (netlink)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = {ln["index"]: ln.get_attr("IFLA_IFNAME") for ln in ipr.get_links()}
        addrs: dict[int, list[str]] = {}
        for a in ipr.get_addr(family=2):
            if a["scope"] == 0:  # global
                addrs.setdefault(a["index"], []).append(a.get_attr("IFA_ADDRESS"))
        oif = None
        with contextlib.suppress(Exception):
            routes = ipr.route("get", dst="192.0.2.1")  # a lookup only, nothing is sent
            oif = routes[0].get_attr("RTA_OIF") if routes else None
    return pick_underlay(oif, links, addrs, iface, address)


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address  # an IPv6 address goes in brackets


def client_url(address: str) -> str:
    return f"https://{_url_host(address)}:{CLIENT_PORT}"


def peer_url(address: str) -> str:
    return f"https://{_url_host(address)}:{PEER_PORT}"


def voters_of(members: Iterable[dict]) -> list[dict]:
    return [m for m in members if not m.get("isLearner")]


def role_for(members: list[dict], max_voters: int) -> str:
    """A joining host is a voter while the cluster has fewer than max_voters members: its
    voters and its learners (each a host's member still catching up, promoted by that
    host as soon as it has: a voter-to-be, whose slot is taken)."""
    return "voter" if len(members) < max_voters else "client"


def endpoint_list(members: list[dict], own: str | None = None, spread: str | None = None) -> list[str]:
    """Client URLs of the voters, no duplicates: what the agent and every etcd client of
    this host use, the first one as long as it answers. A voter's own URL comes first. A
    client host (``own`` not a voter's URL) given ``spread`` (its name) starts at a voter
    chosen by a hash of that name, the others following in order: the clients' requests
    (lease keep-alives, watches) are shared out among the voters instead of all going to
    the voter with the smallest address. Otherwise: sorted. Only https://IP:PORT URLs
    (pki.member_url): a member advertising http://, unix:// or a host name is skipped."""
    urls = sorted({u for m in voters_of(members) for u in m.get("clientURLs") or [] if pki.member_url(u)})
    if own is not None and own in urls:
        urls.remove(own)
        urls.insert(0, own)
    elif spread is not None and urls:
        import zlib

        first = zlib.crc32(spread.encode()) % len(urls)
        urls = urls[first:] + urls[:first]
    return urls


def initial_cluster(members: list[dict], name: str, own_peer: str) -> str:
    """--initial-cluster for a member added to a running cluster: every member's
    name=peerURL (learners too: etcd checks that it names every member); the member just
    added (no name yet) is this host."""
    parts = []
    for m in members:
        urls = m.get("peerURLs") or []
        if not urls:
            continue
        mname = m.get("name") or (name if own_peer in urls else "")
        if mname:
            parts.append(f"{mname}={urls[0]}")
    if f"{name}={own_peer}" not in parts:
        parts.append(f"{name}={own_peer}")
    return ",".join(sorted(parts))


def promotion_candidate(hosts: list[dict], alive: Iterable[str]) -> str | None:
    """The client host that becomes a voter when voters are missing: the live client
    (its presence lease lives: refreshed less than ALIVE_TTL s ago) with the smallest
    name; every host computes the same answer, only that one acts."""
    alive = set(alive)
    live = sorted(h["name"] for h in hosts if h.get("role") == "client" and h.get("name") in alive)
    return live[0] if live else None


def quorum_text(reachable: int, voters: int) -> str | None:
    """None when a majority of voters answers, else the status line's reason."""
    if voters and reachable > voters // 2:
        return None
    return f"store unavailable: quorum lost ({reachable}/{voters} voters)"


def etcd_argv(name: str, address: str, data_dir: str, pki_dir: str, cluster: str, state: str,
              cluster_token: str) -> list[str]:
    d = Path(pki_dir)
    return [
        ETCD_BINARY, "--name", name, "--data-dir", data_dir,
        "--listen-client-urls", client_url(address), "--advertise-client-urls", client_url(address),
        "--listen-peer-urls", peer_url(address), "--initial-advertise-peer-urls", peer_url(address),
        "--initial-cluster", cluster, "--initial-cluster-state", state,
        "--initial-cluster-token", cluster_token,
        "--cert-file", str(d / pki.MEMBER_CERT), "--key-file", str(d / pki.MEMBER_KEY),
        "--client-cert-auth", "--trusted-ca-file", str(d / pki.CA_CERT),
        "--peer-cert-file", str(d / pki.MEMBER_CERT), "--peer-key-file", str(d / pki.MEMBER_KEY),
        "--peer-client-cert-auth", "--peer-trusted-ca-file", str(d / pki.CA_CERT),
        "--client-crl-file", str(d / pki.CRL), "--peer-crl-file", str(d / pki.CRL),
        "--snapshot-count", "5000", *ETCD_TUNING, *ETCD_COMPACTION, "--logger", "zap", "--log-outputs", "stderr",
    ]


def _exited(pid: int, timeout: float) -> bool:
    """Wait (bounded) until pid has exited (gone, or a zombie: not our child to reap);
    whether it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


def runs_member_of(cmdline: bytes, data_dir: str) -> bool:
    """Whether a process's /proc cmdline is an etcd crossnet started on `data_dir` (etcd_argv):
    one left running by a supervisor that was killed alone (the OOM killer) — the next
    supervisor ends it, else its own etcd could not bind the member's ports. Anything else
    with that pid (reused) is never touched."""
    argv = cmdline.split(b"\0")
    try:
        at = argv.index(b"--data-dir")
    except ValueError:
        return False
    return (os.path.basename(argv[0]) == os.path.basename(ETCD_BINARY).encode() and at + 1 < len(argv)
            and argv[at + 1] == data_dir.encode())


# ====================================================================== local state

@dataclass
class Paths:
    state_dir: Path

    @property
    def mesh(self) -> MeshDir:
        return MeshDir(self.state_dir)

    @property
    def root(self) -> Path:
        return self.mesh.root

    @property
    def launch_json(self) -> Path:
        return self.root / "launch.json"

    @property
    def pidfile(self) -> Path:
        return self.root / "launch.pid"

    @property
    def logfile(self) -> Path:
        return self.root / "launch.log"

    @property
    def etcd_dir(self) -> Path:
        return self.root / "etcd"

    @property
    def release_marker(self) -> Path:
        return self.root / "release"

    @property
    def etcd_pidfile(self) -> Path:
        return self.etcd_dir / "etcd.pid"

    def end_left_etcd(self, timeout: float = 15.0) -> None:
        """SIGTERM (then SIGKILL) the etcd member of this state dir that outlived the
        supervisor which started it (runs_member_of)."""
        try:
            pid = int(self.etcd_pidfile.read_text().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read()
        except (OSError, ValueError):
            return
        if pid <= 1 or not runs_member_of(cmd, str(self.etcd_dir / "data")):
            return
        log.warning("an etcd member (pid %d) of this host outlived its supervisor: stopping it", pid)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if _exited(pid, timeout):
                return

    def load(self) -> dict:
        try:
            doc = json.loads(self.launch_json.read_text())
        except FileNotFoundError:
            raise CrossnetError(f"{self.root}: this host was never launched; run `crossnet launch`") from None
        except ValueError:
            raise CrossnetError(f"{self.launch_json}: not valid JSON") from None
        if not isinstance(doc, dict):
            raise CrossnetError(f"{self.launch_json}: not a JSON object")
        from crossnet.stateformat import upgrade

        return upgrade("mesh/launch.json", doc, self.launch_json)

    def save(self, st: dict) -> None:
        from crossnet.state import write_json_atomic

        write_json_atomic(self.launch_json, st)

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        if pid == os.getpid():  # the supervisor itself, just spawned with this pidfile
            return None
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            return None
        return pid if b"launch" in cmd and b"--foreground" in cmd else None


def etcd_client(paths: Paths, endpoints: list[str], timeout: float = 5.0):
    from crossnet.store.etcdclient import EtcdClient

    m = paths.mesh
    return EtcdClient(endpoints, cert=str(m.member_cert), key=str(m.member_key), cacert=str(m.ca_cert),
                      timeout=timeout)


# ====================================================================== cluster records

class EtcdTokenStore(TokenStore):
    """The token store document kept in etcd (`/crossnet-mesh/tokens`) instead of a file,
    so every host's join endpoint verifies the same tokens. Writes are compare-and-swap
    on the key's mod_revision; verification only reads."""

    KEY = f"{MESH_PREFIX}/tokens"

    def __init__(self, client: Any, clock: Callable[[], float] = time.time,
                 unavailable: Callable[[], str | None] | None = None):
        """unavailable(): why the store does not answer (e.g. the quorum line), asked
        when a read fails, so a refused join names the reason."""
        super().__init__(Path("/nonexistent/etcd-tokens"), clock)
        self.client = client
        self.unavailable = unavailable
        self._rev = 0

    def _load(self) -> dict[str, dict]:
        from crossnet.store.etcdclient import EtcdError

        try:
            kv = retrying(lambda: self.client.get(self.KEY))
        except EtcdError as exc:
            reason = self.unavailable() if self.unavailable is not None else None
            raise CrossnetError(reason or f"store unavailable: {exc}") from None
        self._rev = kv.mod_revision if kv is not None else 0
        if kv is None:
            return {}
        try:
            doc = json.loads(kv.value)
            tokens = doc["tokens"]
            if doc.get("version") != 1 or not isinstance(tokens, dict):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise CrossnetError(f"etcd {self.KEY}: not a crossnet token store; refusing every token") from None
        return tokens

    def _save(self, tokens: dict[str, dict]) -> None:
        c = self.client
        value = json.dumps({"version": 1, "tokens": tokens})
        cmp = c.cmp_mod(self.KEY, self._rev) if self._rev else c.cmp_create(self.KEY, 0)
        ok, _, _ = c.txn([cmp], [c.op_put(self.KEY, value)])
        if not ok:
            raise CrossnetError("the token store changed at the same time on another host; try again")

    @contextlib.contextmanager
    def _locked(self):
        yield


TRANSIENT = ("leader changed", "request timed out", "no leader", "cannot reach etcd", "timed out")


def retrying(fn: Callable[[], Any], timeout: float = 3.0, interval: float = 0.25) -> Any:
    """fn(), retried for `timeout` s while etcd's error is transient (an election after a
    voter died: "leader changed", "request timed out"); then the last error."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except CrossnetError as exc:
            if not any(t in str(exc) for t in TRANSIENT) or time.monotonic() + interval > deadline:
                raise
            time.sleep(interval)


TOO_MANY_LEARNERS = "too many learner members in cluster"
LEARNER_WAIT = 15.0  # s a join waits for another host's learner to be promoted (one at a time in etcd 3.4)


class LearnerPending(CrossnetError):
    """etcd holds one learner at a time (3.4): another host's member is still a learner."""


def member_add(client: Any, peer: str, timeout: float = 40.0, learner_wait: float = LEARNER_WAIT) -> list[dict]:
    """`member add` as a learner (etcd's non-voting member): it does not count towards
    the quorum until its host promotes it (promote_learner), once its etcd has caught up
    -- a host that dies between `member add` and its etcd's start (or while catching up)
    leaves the cluster its quorum (a voter added that way had cost a 1-voter cluster its
    quorum until that host came back). etcd refuses while a member started less than 5 s
    ago ("unhealthy cluster", its strict reconfiguration check): retried until timeout;
    and while another host's member is a learner (etcd 3.4 holds one at a time): retried
    for learner_wait s (it is promoted within a second or two of its etcd's start), then
    LearnerPending (its host may be gone: `admit` makes this host a client)."""
    start = time.monotonic()
    while True:
        try:
            return list(client.call("cluster/member/add", {"peerURLs": [peer], "isLearner": True})
                        .get("members", []))
        except CrossnetError as exc:
            waited = time.monotonic() - start
            if TOO_MANY_LEARNERS in str(exc):
                if waited > learner_wait:
                    raise LearnerPending(str(exc)) from None
            elif "unhealthy cluster" not in str(exc) or waited > timeout:
                raise
            time.sleep(0.5)


NOT_IN_SYNC = "can only promote a learner member which is in sync with leader"


def promote_learner(client: Any, own_peer: str, timeout: float = 60.0,
                    stopped: Callable[[], bool] = lambda: False) -> bool:
    """Promote this host's member (found by its peer URL) from learner to voter, asking
    the other members (`client`); retried while etcd says it has not caught up with the
    leader yet (or "unhealthy cluster"). True: promoted now; False: already a voter.
    CrossnetError when the member is gone (forgotten meanwhile) or the time is up."""
    deadline = time.monotonic() + timeout
    while True:
        me = member_with_peer(member_list(client), own_peer)
        if me is None:
            raise CrossnetError(f"no etcd member with this host's peer URL {own_peer} (forgotten?)")
        if not me.get("isLearner"):
            return False
        try:
            client.call("cluster/member/promote", {"ID": me["ID"]})
            return True
        except CrossnetError as exc:
            retry = NOT_IN_SYNC in str(exc) or "unhealthy cluster" in str(exc)
            if not retry or time.monotonic() > deadline or stopped():
                raise
        time.sleep(0.3)


VOTER_LOCK = f"{MESH_PREFIX}/voter-lock"
VOTER_LOCK_TTL = 60


@contextlib.contextmanager
def voter_lock(client: Any, holder: str, timeout: float = 90.0, interval: float = 0.3):
    """Only one host at a time decides whether it becomes a voter and adds itself:
    `/crossnet-mesh/voter-lock`, created in a transaction only if absent, on a lease (a
    host that dies holding it frees it after VOTER_LOCK_TTL s). Without it two hosts
    joining at once both saw 2 voters and both became the third."""
    lease, _ = client.lease_grant(VOTER_LOCK_TTL)
    deadline = time.monotonic() + timeout
    try:
        while True:
            ok, _, _ = client.txn([client.cmp_create(VOTER_LOCK, 0)], [client.op_put(VOTER_LOCK, holder, lease=lease)])
            if ok:
                break
            if time.monotonic() > deadline:
                raise CrossnetError(f"another host kept the voter lock for {timeout:.0f}s; try again")
            time.sleep(interval)
        yield
    finally:
        with contextlib.suppress(CrossnetError):
            client.lease_revoke(lease)


def admit(client: Any, own_peer: str, max_voters: int, holder: str,
          learner_wait: float = LEARNER_WAIT) -> tuple[str, list[dict]]:
    """(role, members): under the voter lock, read the member list and, while there are
    fewer than max_voters voters, `member add` this host as one — atomically with
    respect to every other joining or promoted host. Another host's learner still not
    promoted after `learner_wait` s (its host gone before its etcd started): a client (a
    client is promoted later, while voters are missing; the voters remove that learner
    after STALE_LEARNER_S, `forget` at once). A
    supervisor's promotion does not wait (learner_wait 0: its tick keeps its presence lease)."""
    with voter_lock(client, holder):
        members = retrying(lambda: member_list(client), timeout=10)
        role = role_for(members, max_voters)
        if role == "voter":
            try:
                members = member_add(client, own_peer, learner_wait=learner_wait)
            except LearnerPending:
                log.warning("another host's etcd member is still a learner (etcd holds one at a time); "
                            "this host is a client for now")
                return "client", retrying(lambda: member_list(client), timeout=10)
    return role, members


STALE_LEARNER_S = 300.0  # s an unstarted learner is kept before the voters remove it (JOIN_RESERVE_TTL)
STALE_LEARNER_ENV = "CROSSNET_STALE_LEARNER_S"  # test/ops knob: that bound, a positive number of seconds


def stale_learner_bound(environ: dict[str, str]) -> float:
    """STALE_LEARNER_S, or the positive number of seconds in CROSSNET_STALE_LEARNER_S."""
    import math

    text = environ.get(STALE_LEARNER_ENV)
    if text is None:
        return STALE_LEARNER_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{STALE_LEARNER_ENV}: {text[:40]!r} is not a positive number of seconds")
    return value


def unstarted_learner(m: dict) -> bool:
    """An etcd learner whose etcd never started: no name, no client URL (a started one
    published both; its host promotes it on its next start)."""
    return bool(m.get("isLearner")) and not m.get("name") and not m.get("clientURLs") and bool(m.get("ID")) \
        and bool(m.get("peerURLs"))


def stale_learners(members: list[dict], seen: dict[tuple, float], now: float, own_peer: str,
                   bound: float) -> tuple[list[dict], dict[tuple, float]]:
    """(stale, seen'): the learners that never started (unstarted_learner), other than
    this host's own member, seen so (first in `seen`: (ID, peer URLs) -> time) for at
    least `bound` s by `now`; seen' keeps the first-seen time of every such learner still
    in `members` (a new one: now; one that started, was promoted or removed is dropped).
    A voter, a named learner and this host's member are never stale."""
    out: dict[tuple, float] = {}
    stale = []
    for m in members:
        if not unstarted_learner(m) or own_peer in m["peerURLs"]:
            continue
        key = (str(m["ID"]), tuple(m["peerURLs"]))
        first = out[key] = min(seen.get(key, now), now)
        if now - first >= bound:
            stale.append(m)
    return stale, out


MEMBER_NOT_FOUND = "member not found"


def remove_stale_learner(client: Any, m: dict) -> bool:
    """`member remove` of a stale learner, its ID and peer URLs checked right before in a
    fresh member list: still there, still an unstarted learner with those URLs (started,
    promoted or replaced meanwhile: kept). Another voter removing it at the same moment
    ("member not found") is success. Whether this host removed it (False: gone already,
    or kept)."""
    cur = next((x for x in member_list(client) if str(x.get("ID")) == str(m["ID"])), None)
    if cur is None:
        return False
    if not unstarted_learner(cur) or list(cur["peerURLs"]) != list(m["peerURLs"]):
        return False
    try:
        member_remove(client, str(m["ID"]), timeout=5.0)
    except CrossnetError as exc:
        if MEMBER_NOT_FOUND not in str(exc):
            raise
        return False  # another voter's removal came first: no error, and no log line here
    return True


def member_remove(client: Any, member_id: str, timeout: float = 30.0) -> None:
    """`member remove`, retried while etcd answers "unhealthy cluster" (a member connected
    less than 5 s ago does not count towards the quorum its strict check wants)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.call("cluster/member/remove", {"ID": member_id})
            return
        except CrossnetError as exc:
            if "unhealthy cluster" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def member_list(client: Any) -> list[dict]:
    return list(client.call("cluster/member/list", {}).get("members", []))


def get_json(client: Any, key: str) -> Any:
    kv = client.get(key)
    return json.loads(kv.value) if kv is not None else None


def mesh_hosts(client: Any) -> list[dict]:
    kvs, _ = client.range(f"{MESH_PREFIX}/hosts/", prefix=True)
    out = []
    for kv in kvs:
        with contextlib.suppress(ValueError):
            out.append(json.loads(kv.value))
    return out


def alive_hosts(client: Any) -> dict[str, int]:
    """name -> presence lease of every host whose lease lives (its `alive/<name>` key is
    deleted by etcd with the lease)."""
    kvs, _ = client.range(ALIVE_PREFIX, prefix=True)
    return {kv.key.rsplit("/", 1)[1]: kv.lease for kv in kvs if kv.lease}


def cluster_ca_pem(client: Any) -> tuple[str, str]:
    """(certificate PEM, key PEM) of the CA, from etcd (every member can sign joins)."""
    doc = get_json(client, f"{MESH_PREFIX}/ca")
    if not doc:
        raise CrossnetError("the cluster CA is not in etcd yet")
    return doc["cert"], doc["key"]


def load_cluster_ca(client: Any) -> pki.CA:
    """The CA with its key, from etcd, loaded with `cryptography` (short-lived commands;
    the supervisor signs through crossnet.mesh.signer instead)."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    cert_text, key_text = cluster_ca_pem(client)
    cert = pki.load_cert_pem(cert_text, "ca")
    key = load_pem_private_key(key_text.encode(), None)
    return pki.CA(cert, key)


REVOKED_KEY = f"{MESH_PREFIX}/revoked"
ALIVE_PREFIX = f"{MESH_PREFIX}/alive/"


def revoked_serials(client: Any) -> list[int]:
    """The serial numbers of the member certificates of forgotten hosts."""
    kv = client.get(REVOKED_KEY)
    return serials_of(kv.value if kv is not None else None)


def serials_of(value: bytes | None) -> list[int]:
    """The serials of a revocation list document (REVOKED_KEY's value; hostile input)."""
    try:
        doc = json.loads(value) if value is not None else {}
    except ValueError:  # keep the CRL file as it is rather than trusting nothing or everything
        raise CrossnetError(f"etcd {REVOKED_KEY}: not a revocation list") from None
    serials = doc.get("serials") if isinstance(doc, dict) else None
    if not isinstance(serials, list):
        return []
    return sorted({x for x in serials if isinstance(x, int) and not isinstance(x, bool) and x > 0})


def revoke_serial(client: Any, serial: int, attempts: int = 10) -> None:
    """Add a certificate's serial to the revocation list in etcd (compare-and-swap)."""
    for _ in range(attempts):
        kv = client.get(REVOKED_KEY)
        serials = sorted(set(revoked_serials(client)) | {int(serial)})
        cmp = client.cmp_mod(REVOKED_KEY, kv.mod_revision) if kv is not None else client.cmp_create(REVOKED_KEY, 0)
        ok, _, _ = client.txn([cmp], [client.op_put(REVOKED_KEY, json.dumps({"serials": serials}))])
        if ok:
            return
    raise CrossnetError("the revocation list changed at the same time on another host; try again")


def write_crl(paths: Paths, ca: pki.CA, serials: list[int]) -> None:
    from crossnet.state import write_text_atomic

    write_text_atomic(paths.mesh.pki_dir / pki.CRL, pki.make_crl(ca, serials).decode())


JOINING_PREFIX = f"{MESH_PREFIX}/joining/"
JOIN_RESERVE_TTL = 300  # s a name and address stay reserved for a joiner that has not written its record yet


def admit_joiner(client: Any, name: str, address: str) -> Callable[[], None] | None:
    """The join endpoint's admit hook: JoinRefused("conflict") when another host holds
    `name` or `address` — a member's record (`/crossnet-mesh/hosts/`), or a joiner admitted
    less than JOIN_RESERVE_TTL s ago that has not written its record yet: admission
    reserves both in one transaction (`joining/name/<name>` = address,
    `joining/address/<address>` = name, on a lease), so two hosts joining at once with
    one name or one address cannot both get a certificate. The same name and address
    again (a retried join, a member re-joining) is admitted. Returns what gives a new
    reservation back (the join endpoint calls it when no certificate was issued)."""
    from crossnet.mesh import join

    for h in retrying(lambda: mesh_hosts(client)):
        if h.get("name") == name and h.get("address") != address:
            raise join.JoinRefused("conflict", f"host name {name!r} is already taken by {h.get('address')}")
        if h.get("address") == address and h.get("name") != name:
            raise join.JoinRefused("conflict", f"address {address} is already taken by {h.get('name')!r}")
    by_name, by_addr = f"{JOINING_PREFIX}name/{name}", f"{JOINING_PREFIX}address/{address}"
    for _ in range(3):
        held = {}
        for key in (by_name, by_addr):
            kv = retrying(lambda key=key: client.get(key))
            if kv is not None:
                held[key] = kv.value.decode() if isinstance(kv.value, bytes) else str(kv.value)
        if held.get(by_name, address) != address:
            raise join.JoinRefused("conflict", f"host name {name!r} is being joined by {held[by_name]}")
        if held.get(by_addr, name) != name:
            raise join.JoinRefused("conflict", f"address {address} is being joined by {held[by_addr]!r}")
        if len(held) == 2:
            return None  # reserved for this same name and address already
        lease, _ = client.lease_grant(JOIN_RESERVE_TTL)

        def release(lease: int = lease) -> None:
            with contextlib.suppress(CrossnetError):
                client.lease_revoke(lease)  # its keys go with it

        ok, _, _ = client.txn([client.cmp_create(by_name, 0), client.cmp_create(by_addr, 0)],
                              [client.op_put(by_name, address, lease=lease), client.op_put(by_addr, name, lease=lease)])
        if ok:
            return release
        release()
    raise join.JoinRefused("conflict", f"host name {name!r} or address {address} is being joined by another host")


def remove_host_records(client: Any, name: str) -> list[str]:
    """Everything the store holds for `name`: its subnet lease (peers drop its routes
    and tunnels), containers, remembered subnet, mesh record. Returns what was removed."""
    done = []
    kvs, _ = client.range(f"{AGENT_PREFIX}/subnets/", prefix=True)
    for kv in kvs:
        with contextlib.suppress(ValueError):
            if json.loads(kv.value).get("name") == name:
                if kv.lease:
                    with contextlib.suppress(CrossnetError):
                        client.lease_revoke(kv.lease)
                client.delete(kv.key.decode() if isinstance(kv.key, bytes) else kv.key)
                done.append("subnet")
    lease = alive_hosts(client).get(name)
    if lease:
        with contextlib.suppress(CrossnetError):
            client.lease_revoke(lease)
    extra = []  # its join's reservation (admit_joiner), if still held: its name and its address
    joining = client.get(f"{JOINING_PREFIX}name/{name}")
    if joining is not None:
        by_addr = f"{JOINING_PREFIX}address/{joining.value.decode()}"
        held = client.get(by_addr)
        if held is not None and held.value.decode() == name:
            extra.append((by_addr, None))
    for key, what in ((f"{AGENT_PREFIX}/containers/{name}", "containers"), (f"{AGENT_PREFIX}/hosts/{name}", "hosts"),
                      (f"{MESH_PREFIX}/hosts/{name}", "mesh record"), (f"{ALIVE_PREFIX}{name}", None),
                      (f"{JOINING_PREFIX}name/{name}", None), *extra):
        if client.delete(key) and what:
            done.append(what)
    return done


# ====================================================================== the supervisor

class AgentThread:
    """`crossnet agent` inside the supervisor's process: the same Agent, on a thread,
    with the member certificate; `poll()`/`stop()` like the child process it replaces."""

    def __init__(self, state_dir: str, paths: Paths, endpoints: list[str], name: str, iface: str, address: str,
                 on_exit: Callable[[], None] | None = None):
        from crossnet.agent.core import Agent, AgentOptions
        from crossnet.state import StateDir
        from crossnet.store.etcd import EtcdStore

        m = paths.mesh
        store = EtcdStore.connect(",".join(endpoints), AGENT_PREFIX, cert=str(m.member_cert), key=str(m.member_key),
                                  cacert=str(m.ca_cert))
        self.agent = Agent(store, StateDir(state_dir), AgentOptions(name=name, iface=iface, address=address))
        self.returncode: int | None = None
        self.on_exit = on_exit  # the supervisor's loop sleeps until a child exits (or its next tick)
        self.ended = False  # set before on_exit runs (the thread is still alive then)
        self._thread = threading.Thread(target=self._main, name="agent", daemon=True)

    def start(self) -> AgentThread:
        self._thread.start()
        return self

    def _main(self) -> None:
        try:
            self.returncode = self.agent.run()
        except Exception:  # the supervisor restarts it; the reason goes to the log
            log.exception("agent failed")
            self.returncode = 1
        finally:
            if self.returncode is None:
                self.returncode = 1
            self.ended = True
            if self.on_exit is not None:
                self.on_exit()

    def poll(self) -> int | None:
        if not self.ended and self._thread.is_alive():
            return None
        return self.returncode if self.returncode is not None else 1

    def set_endpoints(self, endpoints: list[str]) -> None:
        """The voters changed: the running agent uses these from its next request on."""
        self.agent.set_store_endpoints(endpoints)

    def stop(self, timeout: float = 15.0) -> None:
        self.agent.request_stop()
        self.agent.store.interrupt_watch()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the agent did not stop within %.0fs", timeout)


class Supervisor:
    """`crossnet launch --foreground`: the etcd member (voters), the join endpoint, the
    agent; heartbeat, endpoint refresh, promotion; SIGTERM stops them (data plane kept)."""

    def __init__(self, state_dir: str):
        self.state_dir = str(state_dir)
        self.paths = Paths(Path(state_dir))
        self.st = self.paths.load()
        self.etcd: subprocess.Popen | None = None
        self.agent: AgentThread | None = None
        self.agent_endpoints: list[str] = []
        self.join_server = None
        self._clients: dict[tuple, Any] = {}
        self._crl: list[int] | None = None  # the serials in this host's CRL file, once written
        self._serial: int | None = None
        self._want: int | None = None  # the mesh's number of voters (/crossnet-mesh/config)
        self._lease: int | None = None  # this host's presence lease (alive/<name>)
        self._crl_rev: int | None = None  # the store revision the revocation and member lists were last read at
        self._crl_ticks = 0  # ticks since that read
        self._stale_bound = STALE_LEARNER_S  # CROSSNET_STALE_LEARNER_S, read by run (status/forget never fail on it)
        self._unstarted: dict[tuple, float] = {}  # learners never started -> first seen (monotonic; voters)
        self._stop = threading.Event()
        # set by whatever the main loop must look at before its next tick: stop, etcd or
        # the agent exited (the loop sleeps until then, no periodic wakeup)
        self._attention = threading.Event()
        self._poll_child = False  # no pidfd for etcd: the loop looks every POLL_CHILD s

    def request_stop(self, *_args: Any) -> None:
        self._stop.set()
        self._attention.set()

    # ---- children
    @property
    def name(self) -> str:
        return self.st["name"]

    @property
    def address(self) -> str:
        return self.st["address"]

    def client(self, timeout: float = 5.0):
        """One client per endpoint list and timeout, kept: its TLS connections are reused
        (a new client per heartbeat cost a TLS handshake on both sides every few seconds,
        most of etcd's idle CPU)."""
        key = (tuple(self.endpoints()), timeout)
        c = self._clients.get(key)
        if c is None:
            if any(k[0] != key[0] for k in self._clients):
                self._clients = {}  # the endpoints changed: drop the old clients
            c = self._clients[key] = etcd_client(self.paths, list(key[0]), timeout)
        return c

    def endpoints(self) -> list[str]:
        eps = list(self.st.get("endpoints") or [])
        own = client_url(self.address)
        if self.st["role"] == "voter":
            eps = [own] + [e for e in eps if e != own]
        return eps or [own]

    def start_etcd(self) -> None:
        if not (self.paths.mesh.pki_dir / pki.CRL).exists():  # a state dir from before revocation existed
            self.sync_crl(self.client(timeout=2.0) if not self.paths.mesh.can_sign() else None)
        self.paths.etcd_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.paths.etcd_dir, 0o700)
        argv = etcd_argv(self.name, self.address, str(self.paths.etcd_dir / "data"), str(self.paths.mesh.pki_dir),
                         self.st["initial_cluster"], self.st["cluster_state"], self.st["cluster_token"])
        self.paths.end_left_etcd()
        with open(self.paths.etcd_dir / "etcd.log", "ab") as logf:
            self.etcd = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                         start_new_session=True, env={**os.environ, **ETCD_ENV})
        self.paths.etcd_pidfile.write_text(f"{self.etcd.pid}\n")
        log.info("etcd member %s started (pid %d, %s)", self.name, self.etcd.pid, self.st["cluster_state"])
        self._watch_exit(self.etcd)

    def _watch_exit(self, proc: subprocess.Popen) -> None:
        """Wake the main loop when ``proc`` exits: a thread blocked on its pidfd (it never
        reaps: Popen does). Without pidfds (Linux < 5.3) the loop polls every POLL_CHILD s."""
        try:
            fd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            self._poll_child = True
            return

        def wait() -> None:
            try:
                with selectors.DefaultSelector() as sel:
                    sel.register(fd, selectors.EVENT_READ)
                    sel.select()  # readable once the process exited
            finally:
                os.close(fd)
                self._attention.set()

        threading.Thread(target=wait, name="etcd-exit", daemon=True).start()

    def wait_etcd(self, timeout: float = 60.0) -> None:
        """Until this host's etcd member answers; a member added by a join or promotion
        (launch.json `learner`) is promoted from learner to voter first (a learner does
        not serve this read)."""
        if self.st.get("learner"):
            self.promote_own_learner(timeout)
        c = etcd_client(self.paths, [client_url(self.address)], timeout=2.0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            if self.etcd is not None and self.etcd.poll() is not None:
                raise CrossnetError(f"etcd exited with code {self.etcd.returncode}; see {self.paths.etcd_dir}/etcd.log")
            with contextlib.suppress(CrossnetError):
                c.range(f"{MESH_PREFIX}/config")
                return
            time.sleep(0.2)
        raise CrossnetError(f"etcd did not become ready within {timeout:.0f}s")

    def settle_removed_learner(self) -> None:
        """launch.json says `learner` (a join's or promotion's member, never promoted) but
        no member has this host's peer URL any more: the voters removed it (never started
        within their stale bound, STALE_LEARNER_S: this host was down that long after
        `member add`) or it was forgotten. Starting etcd for it would fail for ever; this
        host is a client instead (its supervisor promotes it again while voters are
        missing). The member list unreadable: left as it is (the start says why)."""
        own = client_url(self.address)
        others = [e for e in self.st.get("endpoints") or [] if e != own]
        if not others:
            return
        try:
            members = retrying(lambda: member_list(etcd_client(self.paths, others, timeout=2.0)), timeout=10)
        except CrossnetError as exc:
            log.warning("could not read the member list: %s", exc)
            return
        if member_with_peer(members, peer_url(self.address)) is not None:
            return
        log.warning("this host's etcd learner was removed before it started (down for longer than the voters "
                    "wait, or forgotten): this host is a client now")
        shutil.rmtree(self.paths.etcd_dir / "data", ignore_errors=True)
        self.st.update(role="client", endpoints=others)
        self.st.pop("learner", None)
        self.paths.save(self.st)

    def promote_own_learner(self, timeout: float) -> None:
        """Ask the other members to promote this host's learner once its etcd has caught
        up; `learner` cleared from launch.json once it is a voter (killed before that, the
        next start asks again: a voter already is left as it is)."""
        own = client_url(self.address)
        others = [e for e in self.st.get("endpoints") or [] if e != own]
        if others:
            c = etcd_client(self.paths, others, timeout=2.0)
            if promote_learner(c, peer_url(self.address), timeout, stopped=self._stop.is_set):
                log.info("this host's etcd member caught up: promoted from learner to voter")
        crash_point("learner-promoted")
        self.st.pop("learner", None)
        self.paths.save(self.st)

    def start_agent(self) -> None:
        """The agent runs in this process (a thread), not as a child: one Python
        interpreter for the supervisor, the join endpoint and the agent (docs/mesh.md,
        "Resources")."""
        self.agent_endpoints = self.endpoints()
        netconfig.prestart()  # the agent's first step reads the network config: its helper imports the model meanwhile
        self.agent = AgentThread(self.state_dir, self.paths, self.agent_endpoints, self.name, self.st["iface"],
                                 self.address, on_exit=self._attention.set).start()
        log.info("agent started on %s", ",".join(self.agent_endpoints))

    @staticmethod
    def _end(proc: subprocess.Popen | AgentThread | None, timeout: float = 15.0) -> None:
        if proc is None or proc.poll() is not None:
            return
        if isinstance(proc, AgentThread):
            proc.stop(timeout)
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def start_join_server(self) -> None:
        from crossnet.mesh import join, signer

        if self.join_server is not None:
            return
        client = self.client()
        ca = signer.HelperCA(*cluster_ca_pem(client))  # cryptography stays out of this process
        m = self.paths.mesh

        def members() -> list:
            return [{"name": mm.get("name"), "clientURLs": mm.get("clientURLs"), "peerURLs": mm.get("peerURLs"),
                     "isLearner": bool(mm.get("isLearner"))}
                    for mm in retrying(lambda: member_list(self.client(timeout=2.0)))]

        def admit(name: str, address: str) -> Callable[[], None] | None:
            return admit_joiner(self.client(timeout=2.0), name, address)

        def unavailable() -> str | None:
            reachable, total, _ = probe_voters(self.paths, self.endpoints(), timeout=0.7)
            return quorum_text(reachable, total)

        tokens = EtcdTokenStore(self.client(timeout=2.0), unavailable=unavailable)
        svc = join.JoinService(ca, tokens, members=members, admit=admit)
        self.join_server = join.JoinServer(svc, self.address, join.JOIN_PORT, str(m.member_cert),
                                           str(m.member_key)).start()
        log.info("join endpoint on %s:%d", self.address, join.JOIN_PORT)

    # ---- first host
    def bootstrap(self) -> None:
        from crossnet.store.etcd import EtcdStore

        c = self.client()
        EtcdStore(c, AGENT_PREFIX).init_config(network_config(self.st["network"]))
        crash_point()  # (the test hook reaches the supervisor in the foreground only: _spawn drops it)
        m = self.paths.mesh  # the CA launch_first has just created (PEM files, no cryptography here)
        ca_cert, ca_key = m.ca_cert.read_text(), (m.pki_dir / pki.CA_KEY).read_text()
        ca_doc = json.dumps({"cert": ca_cert, "key": ca_key})
        c.txn([c.cmp_create(f"{MESH_PREFIX}/ca", 0)],
              [c.op_put(f"{MESH_PREFIX}/ca", ca_doc),
               c.op_put(f"{MESH_PREFIX}/config", json.dumps({"voters": self.st["voters"]}))])
        crash_point()
        self.st["bootstrapped"] = True
        self.st["cluster_state"] = "existing"
        self.paths.save(self.st)
        crash_point()

    def print_join_command(self) -> None:
        """First launch in the foreground: no other place to say it (again by the next
        run if this one was killed before it did)."""
        from crossnet.mesh import signer
        from crossnet.mesh.token import join_command

        c = self.client()
        pin = signer.cert_pin(self.paths.mesh.ca_cert.read_text())
        jt = JoinToken(EtcdTokenStore(c).create(), pin)
        print(f"mesh created; on every other host run:\n  {join_command(jt, self.address)}", flush=True)
        self.st.pop("print_token", None)
        self.paths.save(self.st)

    # ---- periodic
    def _host_record(self) -> str:
        if self._serial is None:
            from crossnet.mesh import signer

            self._serial = signer.cert_serial(self.paths.mesh.member_cert.read_bytes())
        return json.dumps({"name": self.name, "address": self.address, "role": self.st["role"], "seen": time.time(),
                           "serial": self._serial})

    def heartbeat(self) -> None:
        """Write this host's record and its `alive/<name>` key on a new presence lease (at
        start, after a promotion, and when the lease is gone); the ticks only refresh the
        lease."""
        c = self.client(timeout=2.0)
        lease, _ = c.lease_grant(ALIVE_TTL)
        c.txn([], [c.op_put(f"{MESH_PREFIX}/hosts/{self.name}", self._host_record()),
                   c.op_put(f"{ALIVE_PREFIX}{self.name}", "", lease=lease)])
        old, self._lease = self._lease, lease
        if old is not None:
            with contextlib.suppress(CrossnetError):
                c.lease_revoke(old)

    def tick(self) -> None:
        """Every HEARTBEAT s, one request and no write whatever the mesh size (docs/mesh.md
        "Resources"): the presence lease's keep-alive (answered from the leader's memory;
        a new lease and record only if it expired). The revocation list and the member list
        (`maintain`: endpoints, promotion) are read again only when the store changed since
        the last read (the keep-alive's answer carries the store's revision: a join, a
        promotion, `forget`, `stop --release`, a revocation and a host's expired presence
        lease all write or delete keys) or CRL_TICKS ticks passed; on a voter watching a
        learner that never started (drop_stale_learners), every tick until it is gone."""
        c = self.client(timeout=2.0)
        res = c.call("lease/keepalive", {"ID": str(self._lease)}).get("result") or {} if self._lease else {}
        rev = int((res.get("header") or {}).get("revision", 0)) or None  # None: unknown, read the lists
        if int(res.get("TTL", 0)) <= 0:
            if self._lease is not None:
                log.info("presence lease expired: writing this host's record again")
            self.heartbeat()
        self._crl_ticks += 1
        if not (rev is None or self._crl_rev is None or rev > self._crl_rev or self._crl_ticks >= CRL_TICKS
                or self._unstarted):  # (an unstarted learner watched: the member list every tick)
            return
        kvs, read_rev = c.range(REVOKED_KEY)
        self.maintain(c)
        self.sync_crl(c, serials_of(kvs[0].value if kvs else None))
        self._crl_rev, self._crl_ticks = read_rev, 0

    def sync_crl(self, c: Any | None, serials: list[int] | None = None) -> None:
        """Keep <pki>/revoked.crl equal to the revocation list in etcd (c None: no cluster
        to ask, the first host's own CA signs an empty list; serials: the list already
        read)."""
        # signs in a helper process: no cryptography here
        from crossnet.mesh import signer

        if serials is None:
            serials = revoked_serials(c) if c is not None else []
        if self._crl is None:  # what the file already says (written at launch): rewritten only on a change
            self._crl = signer.crl_serials(self.paths.mesh.pki_dir / pki.CRL)
        if serials == self._crl:
            return
        signer.write_crl(self.paths.mesh.pki_dir, serials, *(cluster_ca_pem(c) if c is not None else ()))
        if self._crl is not None:
            log.info("revocation list updated: %d certificate(s) revoked", len(serials))
        self._crl = serials

    def maintain(self, c: Any) -> None:
        members = member_list(c)
        if self.st["role"] == PROMOTING:  # a promotion whose `member add` failed (its answer may be lost)
            self.settle_promotion(members)
        own = client_url(self.address)
        eps = endpoint_list(members, own if self.st["role"] == "voter" else None, spread=self.name)
        if eps and eps != self.st.get("endpoints"):
            self.st["endpoints"] = eps
            self.paths.save(self.st)
        if self.st["role"] == "client":
            if self._want is None:  # written once by the first host (bootstrap): read once
                cfg = get_json(c, f"{MESH_PREFIX}/config") or {}
                self._want = int(cfg.get("voters") or DEFAULT_VOTERS)
            # learners count (each a voter-to-be: role_for); while one is pending no promotion is
            # tried (etcd holds one at a time: the tick would wait for it, its presence lease with it)
            pending = any(m.get("isLearner") for m in members)
            if len(members) < self._want and not pending and \
                    promotion_candidate(mesh_hosts(c), alive_hosts(c)) == self.name:
                self.promote(c, self._want)
        if self.st["role"] == "voter" and not self.st.get("learner"):
            self.drop_stale_learners(c, members)
        wanted = self.endpoints()
        if self.agent is not None and wanted != self.agent_endpoints:
            # not a restart: the agent keeps its lease, its watches and its API socket
            # (a restart made `crossnet attach` fail while it was down)
            self.agent_endpoints = wanted
            self.agent.set_endpoints(wanted)
            log.info("etcd endpoints changed: the agent uses %s", ",".join(self.agent_endpoints))

    def drop_stale_learners(self, c: Any, members: list[dict]) -> None:
        """A voter removes every other host's learner that never started (no name) and
        has been seen so for the stale bound (STALE_LEARNER_S): its host was killed after
        `member add` and did not come back; it took a voter's slot and, as etcd's one
        learner, blocked every join's and promotion's `member add`. Re-checked right
        before `member remove` (remove_stale_learner); another voter doing the same is
        harmless."""
        stale, self._unstarted = stale_learners(members, self._unstarted, time.monotonic(),
                                                peer_url(self.address), self._stale_bound)
        for m in stale:
            try:
                if remove_stale_learner(c, m):
                    log.warning("removed the etcd learner %s: never started in %.0fs (its host gone after "
                                "`member add`)", m["peerURLs"][0], self._stale_bound)
                    self._unstarted.pop((str(m["ID"]), tuple(m["peerURLs"])), None)
            except CrossnetError as exc:
                log.warning("stale learner %s: %s", m["peerURLs"][0], exc)

    def promote(self, c: Any, want: int) -> None:
        """This client becomes a voter: role PROMOTING recorded BEFORE `member add` (killed
        from there on, the next start settles it: settle_pending), the member added under
        the voter lock, then settle_promotion. An error of `admit` leaves PROMOTING: the
        next read of the member list (maintain) settles it."""
        self.st["role"] = PROMOTING
        self.paths.save(self.st)
        crash_point("promote-recorded")
        _, members = admit(c, peer_url(self.address), want, self.name, learner_wait=0.0)
        crash_point("promote-added")
        self.settle_promotion(members)

    def settle_promotion(self, members: list[dict]) -> None:
        """From role PROMOTING and the member list: this host's added member found by its
        peer URL is started (`existing`, its data dir new); none (another host took the
        slot, or no `member add` happened) makes it a client again."""
        role, cluster = settle_pending(PROMOTING, members, self.name, peer_url(self.address))
        if role != "voter":
            self.st["role"] = "client"
            self.paths.save(self.st)
            return
        log.info("promoted this host to an etcd voter")
        shutil.rmtree(self.paths.etcd_dir / "data", ignore_errors=True)
        self.st.update(role="voter", cluster_state="existing", initial_cluster=cluster, learner=True)
        self.paths.save(self.st)
        crash_point("promote-saved")
        self.start_etcd()
        self.wait_etcd()
        self.heartbeat()

    # ---- main loop
    def run(self) -> int:
        self._stale_bound = stale_learner_bound(os.environ)  # a bad value: one line, nothing started
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.request_stop)
        self.paths.pidfile.write_text(f"{os.getpid()}\n")
        with contextlib.suppress(FileNotFoundError):  # a `stop --release` killed before its SIGTERM meant an
            self.paths.release_marker.unlink()  # earlier run: this one's SIGTERM (systemd's too) keeps the host
        try:
            if self.st["role"] == "voter" and self.st.get("learner"):
                self.settle_removed_learner()
            if self.st["role"] == "voter":
                self.start_etcd()
                self.wait_etcd()
                if not self.st.get("bootstrapped"):
                    self.bootstrap()
                if self.st.get("print_token"):
                    self.print_join_command()
            self._retry(self.heartbeat, "heartbeat")
            self.start_agent()
            self._retry(self.start_join_server, "join endpoint")
            last_beat = time.monotonic()
            while not self._stop.is_set():
                # asleep until the next tick, a child's exit or stop (request_stop)
                wait = HEARTBEAT - (time.monotonic() - last_beat)
                if self.join_server is None or self._poll_child:
                    wait = min(wait, POLL_CHILD)  # retried / polled as before
                self._attention.wait(max(wait, 0.0))
                self._attention.clear()
                if self._stop.is_set():
                    break
                now = time.monotonic()
                if self.etcd is not None and self.etcd.poll() is not None:
                    log.error("etcd exited (%s); restarting it", self.etcd.returncode)
                    self.st["cluster_state"] = "existing"
                    self.start_etcd()
                if self.agent is not None and self.agent.poll() is not None:
                    log.error("agent exited (%s); restarting it", self.agent.returncode)
                    self.start_agent()
                if self.join_server is None:
                    with contextlib.suppress(CrossnetError):
                        self.start_join_server()
                if now - last_beat >= HEARTBEAT:
                    last_beat = now
                    self._once(self.tick, "heartbeat/membership")
                    trim_memory()
        finally:
            release = self.paths.release_marker.exists()
            self.shutdown(release)
        return 0

    def _once(self, fn: Callable[[], None], what: str) -> bool:
        try:
            fn()
            return True
        except CrossnetError as exc:
            log.warning("%s: %s", what, exc)
            return False

    def _retry(self, fn: Callable[[], None], what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._once(fn, what):
            if time.monotonic() > deadline or self._stop.wait(0.5):
                return

    def shutdown(self, release: bool) -> None:
        self._end(self.agent)
        if self.join_server is not None:
            self.join_server.close()
        if release:
            self._release()
        elif self._lease is not None:  # stopped: not alive any more (status, promotion) at once
            with contextlib.suppress(CrossnetError):
                self.client(timeout=2.0).lease_revoke(self._lease)
        self._end(self.etcd)
        with contextlib.suppress(FileNotFoundError):
            self.paths.pidfile.unlink()
        if release:
            from crossnet.host import reset
            from crossnet.state import StateDir

            with contextlib.suppress(CrossnetError):
                reset(StateDir(self.state_dir))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(Path(self.state_dir) / "agent.json")
            log.info("released: this host left the mesh (this log: %s)", self.state_dir + "/mesh-release.log")
            with contextlib.suppress(OSError):
                os.replace(self.paths.logfile, Path(self.state_dir) / "mesh-release.log")
            shutil.rmtree(self.paths.root, ignore_errors=True)

    def _release(self) -> None:
        c = etcd_client(self.paths, self.endpoints(), timeout=3.0)
        try:
            log.info("release: removed %s", ", ".join(remove_host_records(c, self.name)) or "nothing")
            members = member_list(c)  # its member, if any: a voter's, or a promotion's not started yet
            me = next((m for m in members if is_own_member(m, self.name, peer_url(self.address))), None)
            if me is not None and len(members) > 1:
                member_remove(c, me["ID"])
                log.info("release: etcd member %s removed", self.name)
        except CrossnetError as exc:
            log.error("release: %s", exc)


def _libc() -> Any:
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _one_malloc_arena() -> None:
    """glibc gives every thread that allocates its own malloc arena (the agent's and the
    join endpoint's threads: ~8 MB RSS measured); one arena is plenty for this process."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(-8, 1)  # M_ARENA_MAX


def trim_memory() -> None:
    """Give freed heap back to the kernel (start-up and each join leave free pages that
    glibc keeps otherwise): part of the RSS budget, docs/mesh.md "Resources"."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def run_foreground(state_dir: str) -> int:
    from crossnet.agent.core import setup_logging
    from crossnet.logjson import env_format

    # one log for the supervisor and the agent it runs (credentials masked); `launch --log-format`
    setup_logging(fmt=env_format(), name="crossnet-launch")
    _one_malloc_arena()
    netconfig.use_helper()  # network configs validated in a helper: no pydantic in this process
    stale_learner_bound(os.environ)  # before a pending join's `member add`, not only in run()
    paths = Paths(Path(state_dir))
    # systemd restarting a join or promotion killed half-way (never launched: the supervisor says so)
    if paths.launch_json.exists() and paths.load().get("role") in PENDING_ROLES:
        finish_pending(state_dir, spawn=False)
    return Supervisor(state_dir).run()


# ====================================================================== operations (CLI)

def _agent_synced(state_dir: str) -> bool:
    from crossnet.agent.api import call

    try:
        return bool(call(state_dir, "GET", "/v1/status", timeout=2.0)["agent"].get("synced"))
    except (CrossnetError, KeyError, TypeError, OSError):
        return False


def supervisor_argv(state_dir: str) -> list[str]:
    """`crossnet launch --foreground`, without the CLI in the long-running process
    (crossnet.mesh.supervise)."""
    return [sys.executable, "-m", "crossnet.mesh.supervise", "--state-dir", state_dir, "launch", "--foreground"]


def _spawn(state_dir: str, timeout: float = READY_TIMEOUT) -> int:
    paths = Paths(Path(state_dir))
    argv = supervisor_argv(state_dir)
    with open(paths.logfile, "ab") as logf:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True,  # the test hook is the launching command's, not its child's
                                env={k: v for k, v in os.environ.items() if k != CRASH_ENV})
    paths.pidfile.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CrossnetError(f"crossnet launch --foreground exited with code {proc.returncode}; "
                                f"see {paths.logfile}")
        if _agent_synced(state_dir):
            return proc.pid
        time.sleep(0.2)
    raise CrossnetError(f"this host was not programmed within {timeout:.0f}s; see {paths.logfile} "
                        f"(it keeps trying: `crossnet stop` to give up)")


def check_encrypt(backend: str, encrypt: bool) -> None:
    """`launch --encrypt` is backend auto's `auto.encrypt` (docs/transport.md)."""
    if encrypt and backend != "auto":
        raise ConfigError(f"--encrypt: only with --backend auto, not {backend!r}")


def network_config(n: dict) -> Any:
    """The store's NetworkConfig of launch.json's `network` (what the first host writes;
    its daemon validates it in netconfig's helper)."""
    return netconfig.build(network=n["network"], backend=n["backend"], subnet_len=n["subnet_len"], name="crossnet",
                           ttl=n["ttl"], dns_domain=n.get("dns_domain") or "crossnet.local",
                           **({"auto": {"encrypt": True}} if n.get("encrypt") else {}),
                           **({"networks": n["networks"]} if n.get("networks") else {}),
                           datapath=n.get("datapath") or "kernel")


def launch_first(state_dir: str, name: str, iface: str, address: str, network: str, subnet_len: int, backend: str,
                 voters: int, ttl: int, spawn: bool = True, dns_domain: str = "crossnet.local",
                 encrypt: bool = False, networks: list | None = None, datapath: str = "kernel") -> JoinToken | None:
    """The first host. spawn=False (`launch --foreground`): only prepare; the caller runs
    the supervisor, which prints the join command once etcd is up. `encrypt` (backend
    auto only): every peer over WireGuard."""
    from crossnet.store import NetworkConfig

    stale_learner_bound(os.environ)  # the supervisor's knob, refused before anything is made
    check_encrypt(backend, encrypt)
    try:  # validate (the options' names in the message)
        dns_domain = NetworkConfig(network=network, backend=backend, subnet_len=subnet_len, name="crossnet", ttl=ttl,
                                   dns_domain=dns_domain, datapath=datapath).dns_domain
    except ConfigError as exc:
        for field, option in (("dns_domain", "--dns-domain"), ("datapath", "--datapath")):
            if f"config: {field}" in str(exc):
                raise ConfigError(str(exc).replace(f"config: {field}", option, 1)) from None
        raise
    if networks:  # the named networks (docs/networks.md), validated like `etcd init`'s, VNIs written out
        from crossnet import netstore

        cfg = NetworkConfig.parse({"network": network, "backend": backend, "subnet_len": subnet_len, "ttl": ttl,
                                   "networks": networks, "datapath": datapath}, source="",
                                  label=lambda f: f if f.startswith("networks") else "--" + f.replace("_", "-"))
        networks = [n.model_dump(mode="json", exclude_none=True) for n in netstore.pin_vnis(cfg, None).networks]
    paths = Paths(Path(state_dir))
    ca = paths.mesh.init_cluster(name, address)
    write_crl(paths, ca, [])  # etcd refuses every connection without a readable CRL file
    crash_point()
    paths.save({"version": 1, "name": name, "address": address, "iface": iface, "role": "voter", "voters": voters,
                "initial_cluster": f"{name}={peer_url(address)}", "cluster_state": "new",
                "cluster_token": "crossnet-" + ca.pin.split(":")[1][:16], "bootstrapped": False,
                "endpoints": [client_url(address)],
                "network": {"network": network, "subnet_len": subnet_len, "backend": backend, "ttl": ttl,
                            "dns_domain": dns_domain, **({"encrypt": True} if encrypt else {}),
                            **({"networks": networks} if networks else {}),
                            **({"datapath": datapath} if datapath != "kernel" else {})},
                "print_token": not spawn})
    crash_point()
    if not spawn:
        return None
    try:
        _spawn(state_dir)
    except BaseException:
        _abort(state_dir)
        raise
    crash_point()
    c = etcd_client(paths, [client_url(address)])
    return JoinToken(EtcdTokenStore(c).create(), ca.pin)


def _abort(state_dir: str, member_of: list[str] | None = None, name: str | None = None) -> None:
    """A launch that failed half-way: stop what runs, take back the etcd member this host
    added (else a cluster of 1 voter + 1 never started has lost its quorum), and remove
    the mesh state so `crossnet launch` can be run again."""
    paths = Paths(Path(state_dir))
    with contextlib.suppress(CrossnetError, OSError):
        stop(state_dir, release=False, timeout=20)
    if member_of and name:
        with contextlib.suppress(CrossnetError):
            c = etcd_client(paths, member_of, timeout=3.0)
            own_peer = peer_url(paths.load()["address"])
            me = next((m for m in member_list(c) if is_own_member(m, name, own_peer)), None)
            if me is not None:
                member_remove(c, me["ID"], timeout=10)
    shutil.rmtree(paths.root, ignore_errors=True)


JOIN_RETRY_S = 20.0


def join_riding_out_elections(fn: Callable[[], Any], timeout: float = JOIN_RETRY_S, interval: float = 1.0) -> Any:
    """fn() (the join handshake), again while the serving host refuses it because its
    etcd does not answer for a moment — a voter died and the others are electing a
    leader (up to 2 election timeouts). A refusal leaves nothing on either host, so a
    new handshake is safe; quorum loss and every other refusal are final."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except CrossnetError as exc:
            msg = str(exc)
            if ("refused: store unavailable" not in msg or "quorum lost" in msg
                    or time.monotonic() + interval > deadline):
                raise
            log.info("join refused for now (%s); trying again", msg)
            time.sleep(interval)


def launch_join(state_dir: str, server: str, join_token: JoinToken, name: str, iface: str, address: str,
                spawn: bool = True) -> str:
    """Handshake, then `member add` (voter while < voters), then the supervisor."""
    from crossnet.mesh import join

    stale_learner_bound(os.environ)  # the supervisor's knob, refused before the handshake
    paths = Paths(Path(state_dir))
    result = join_riding_out_elections(lambda: join.request_join(server, join_token, name, address))
    members = result.members  # checked by join.check_members
    eps = endpoint_list(members, spread=name)
    if not eps:
        raise CrossnetError(f"{server}: the join answer names no voter's client URL (https://IP:PORT); "
                            f"nothing was saved")
    pki.save_member(paths.mesh.pki_dir, result.key, result.cert, result.ca_cert)
    os.chmod(paths.root, 0o700)
    crash_point()
    st = {"version": 1, "name": name, "address": address, "iface": iface, "endpoints": eps, "bootstrapped": True,
          "cluster_token": "crossnet-" + join_token.pin.split(":")[1][:16], "cluster_state": "existing"}
    try:
        c = etcd_client(paths, eps)
        cfg = retrying(lambda: get_json(c, f"{MESH_PREFIX}/config"), timeout=10) or {}
        st["voters"] = int(cfg.get("voters") or DEFAULT_VOTERS)
        write_crl(paths, retrying(lambda: load_cluster_ca(c), timeout=10), retrying(lambda: revoked_serials(c)))
        # recorded BEFORE `member add`: a launch killed from here on is completed by the next
        # `crossnet launch` (finish_pending), which starts the member it finds added or admits again
        st["role"] = JOINING
        paths.save(st)
    except BaseException:
        shutil.rmtree(paths.root, ignore_errors=True)
        raise
    crash_point()
    return finish_pending(state_dir, spawn=spawn)


JOINING = "joining"  # launch.json's role while a join's `member add` may or may not have happened
PROMOTING = "promoting"  # the same for a client's promotion to a voter (Supervisor.promote)
PENDING_ROLES = (JOINING, PROMOTING)  # settled by the next start (finish_pending)


def is_own_member(m: dict, name: str, own_peer: str) -> bool:
    """Whether etcd member `m` is this host's: by name, or by its peer URL (a member
    added by a join or promotion that never started has no name yet)."""
    return (bool(name) and m.get("name") == name) or own_peer in (m.get("peerURLs") or [])


def member_with_peer(members: list[dict], own_peer: str) -> dict | None:
    """The member with this host's peer URL (whatever its name: none yet if never started)."""
    return next((m for m in members if is_own_member(m, "", own_peer)), None)


def added_member_cluster(members: list[dict], name: str, own_peer: str) -> str | None:
    """A join or promotion killed after `member add` (a learner that never started: no
    vote, but its host must start it, not add another): the member it added is the one
    with this host's peer URL (a learner, or a voter by now). Returns the
    --initial-cluster that starts it, or None when no member has that URL (no member was
    added)."""
    if member_with_peer(members, own_peer) is None:
        return None
    return initial_cluster(members, name, own_peer)


def settle_pending(pending: str, members: list[dict], name: str, own_peer: str) -> tuple[str | None, str | None]:
    """(role, --initial-cluster) of a host whose launch.json says JOINING or PROMOTING
    (`pending`: its `member add` may or may not have happened), from the member list:
    its member found by peer URL -> ("voter", cluster): started, never added twice; none
    -> a promotion is a client again ("client", None: the supervisor promotes it again
    while voters are missing), a join (None, None): decided and added under the voter
    lock as in a first run."""
    cluster = added_member_cluster(members, name, own_peer)
    if cluster is not None:
        return "voter", cluster
    return ("client", None) if pending == PROMOTING else (None, None)


def finish_pending(state_dir: str, spawn: bool = True) -> str:
    """The second half of a join or promotion, from launch.json's role JOINING (a first
    run, or a run that was killed) or PROMOTING (a supervisor killed while promoting this
    host): settle_pending — the member this host already added is started (its data dir
    new), not added twice; none: a join decides its role and adds the member under the
    voter lock, a promotion is a client again. Then the supervisor."""
    paths = Paths(Path(state_dir))
    st = paths.load()
    pending = st["role"]
    name, eps, own_peer = st["name"], list(st["endpoints"]), peer_url(st["address"])
    c = etcd_client(paths, eps)
    # the member list is served by any member, quorum or not (etcd 3.4)
    role, cluster = settle_pending(pending, retrying(lambda: member_list(c), timeout=10), name, own_peer)
    if role == "voter":
        log.info("the member this host's %s added earlier is started now",
                 "join" if pending == JOINING else "promotion")
    elif role is None:
        try:
            role, members = admit(c, own_peer, st["voters"], name)
        except BaseException:
            with contextlib.suppress(CrossnetError):  # no member of ours in the cluster: nothing to complete
                if added_member_cluster(member_list(c), name, own_peer) is None:
                    shutil.rmtree(paths.root, ignore_errors=True)
            raise
        crash_point()
        if role == "voter":
            cluster = initial_cluster(members, name, own_peer)
    if cluster is not None:  # a member never started: no data of its own yet
        shutil.rmtree(paths.etcd_dir / "data", ignore_errors=True)
        st["initial_cluster"], st["cluster_state"], st["learner"] = cluster, "existing", True
    st["role"] = role
    paths.save(st)
    crash_point()
    if not spawn:
        return role
    try:
        _spawn(state_dir)
    except BaseException:
        if pending == JOINING:  # a promoted host keeps its mesh state (launch_again's way)
            _abort(state_dir, eps if role == "voter" else None, name)
        raise
    return role


def launch_again(state_dir: str, spawn: bool = True) -> None:
    """A launched host whose supervisor is not running (restart): same member, same subnet."""
    stale_learner_bound(os.environ)  # the supervisor's knob, refused before anything is started
    paths = Paths(Path(state_dir))
    st = paths.load()
    if st.get("role") in PENDING_ROLES:  # a join or promotion killed half-way: completed
        finish_pending(state_dir, spawn=spawn)
        return
    st["cluster_state"] = "existing" if st.get("bootstrapped") else st.get("cluster_state", "new")
    paths.save(st)
    if spawn:
        _spawn(state_dir)


def stop(state_dir: str, release: bool, timeout: float = 60.0) -> bool:
    paths = Paths(Path(state_dir))
    pid = paths.running_pid()
    if pid is None:
        if paths.launch_json.exists():  # a supervisor killed alone: its etcd member stops too
            paths.end_left_etcd()
        return False
    if release:
        paths.release_marker.write_text("")
    else:  # one left by a `stop --release` killed before its SIGTERM is not this stop's wish
        with contextlib.suppress(FileNotFoundError):
            paths.release_marker.unlink()
    crash_point()
    os.kill(pid, signal.SIGTERM)
    crash_point()
    if not _exited(pid, timeout):
        raise CrossnetError(f"crossnet launch (pid {pid}) did not stop within {timeout:.0f}s")
    return True


def forget(state_dir: str, host: str) -> list[str]:
    paths = Paths(Path(state_dir))
    st = paths.load()
    if host == st["name"]:
        raise ConfigError("HOST: this is this host; use `crossnet stop --release`")
    c = etcd_client(paths, Supervisor(state_dir).endpoints())
    done = []
    hosts = mesh_hosts(c)
    record = next((h for h in hosts if h.get("name") == host), None)
    # a joiner killed before its first record: its member (a learner never started, no
    # name yet) is found by the peer URL of the address its join reserved, or -- the
    # reservation expired -- of the address given as HOST
    address = record.get("address") if record else reserved_address(c, host)
    if record is None and address is None and is_ipv4(host):
        address = host
        record = next((h for h in hosts if h.get("address") == host), None)
        if record is not None and isinstance(record.get("name"), str):
            host = record["name"]
            if host == st["name"]:
                raise ConfigError("HOST: this is this host; use `crossnet stop --release`")
    serial = record.get("serial") if record else None
    if isinstance(serial, int) and serial > 0:
        revoke_serial(c, serial)
        done.append("certificate (revoked)")
        write_crl(paths, load_cluster_ca(c), revoked_serials(c))  # here at once; the others within HEARTBEAT s
        crash_point()
    own_peer = peer_url(address) if isinstance(address, str) and is_ipv4(address) else ""
    for m in member_list(c):
        if is_own_member(m, host, own_peer):
            member_remove(c, m["ID"])
            done.append("etcd member")
            crash_point()
    done += remove_host_records(c, host)
    if not done:
        raise ConfigError(f"HOST: no host {host!r} in this mesh")
    return done


def is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
        return True
    except ValueError:
        return False


def reserved_address(client: Any, name: str) -> str | None:
    """The address a joiner's admission reserved for `name` (admit_joiner; held
    JOIN_RESERVE_TTL s), if still held."""
    kv = client.get(f"{JOINING_PREFIX}name/{name}")
    if kv is None:
        return None
    value = kv.value.decode() if isinstance(kv.value, bytes) else str(kv.value)
    return value if is_ipv4(value) else None


def token_store(state_dir: str) -> EtcdTokenStore:
    return EtcdTokenStore(etcd_client(Paths(Path(state_dir)), Supervisor(state_dir).endpoints()))


def probe_voters(paths: Paths, urls: list[str], timeout: float = 1.5) -> tuple[int, int, dict]:
    """(voters answering, voters, details): the member list (served by any member, quorum
    or not), then `maintenance/status` on every voter's client URL."""
    members: list[dict] = []
    with contextlib.suppress(CrossnetError):
        members = member_list(etcd_client(paths, urls, timeout=timeout))
    leaders: dict[str, str] = {}
    ids: dict[str, str] = {}
    for url in endpoint_list(members) or urls:
        try:
            s = etcd_client(paths, [url], timeout=timeout).call("maintenance/status", {})
        except CrossnetError:
            continue
        leaders[url] = str(s.get("leader", "0"))
        ids[str(s["header"]["member_id"])] = url
    total = len(voters_of(members)) or len(urls)
    return len(leaders), total, {"members": members, "leaders": leaders, "ids": ids}


def member_row(m: dict, answered: set[str], leader_id: str | None) -> dict:
    """`status`'s row of etcd member `m`: role `voter`, or `learner` (a joining or promoted
    host's member, catching up until its host promotes it: no vote yet); healthy = one of
    its client URLs answered (`answered`)."""
    urls = m.get("clientURLs") or []
    return {"name": m.get("name") or "(starting)", "role": "learner" if m.get("isLearner") else "voter",
            "healthy": any(u in answered for u in urls), "leader": str(m.get("ID")) == leader_id,
            "url": urls[0] if urls else None}


def status(state_dir: str) -> dict:
    """The mesh as this host sees it: members (voter/client, healthy, leader), peers."""
    paths = Paths(Path(state_dir))
    st = paths.load()
    sup = Supervisor(state_dir)
    out: dict[str, Any] = {"name": st["name"], "address": st["address"], "role": st["role"],
                           "running": paths.running_pid() is not None, "store": "ok", "members": [], "peers": []}
    voter_urls = sup.endpoints()
    reachable, nvoters, probe = probe_voters(paths, voter_urls)
    members, leaders, ids = probe["members"], probe["leaders"], probe["ids"]
    reason = quorum_text(reachable, nvoters)
    leader_id = next((v for v in leaders.values() if v != "0"), None)
    if reason is None and leader_id is None:
        reason = f"store unavailable: no leader ({reachable}/{nvoters} voters)"
    if reason:
        out["store"] = reason
    out["members"] = [member_row(m, set(ids.values()), leader_id) for m in members]
    if reason is None:
        c = etcd_client(paths, voter_urls, timeout=2.0)
        hosts = {h["name"]: h for h in mesh_hosts(c)}
        alive = alive_hosts(c)
        subnets = {}
        kvs, _ = c.range(f"{AGENT_PREFIX}/subnets/", prefix=True)
        for kv in kvs:
            with contextlib.suppress(ValueError):
                r = json.loads(kv.value)
                subnets[r["name"]] = r
        remembered = {}
        kvs, _ = c.range(f"{AGENT_PREFIX}/hosts/", prefix=True)
        for kv in kvs:
            with contextlib.suppress(ValueError):
                remembered[kv.key.decode().rsplit("/", 1)[1] if isinstance(kv.key, bytes) else kv.key] = \
                    json.loads(kv.value)
        cfg = get_json(c, f"{AGENT_PREFIX}/config") or {}
        hops = underlay_next_hops([(s or h).get("address") for s, h in
                                   ((subnets.get(n), hosts.get(n, {})) for n in set(hosts) | set(subnets))])
        for name in sorted(set(hosts) | set(subnets)):
            h, s = hosts.get(name, {}), subnets.get(name)
            seen = presence_age(c, alive.get(name))
            out["peers"].append({
                "name": name, "address": (s or h).get("address"),
                "subnet": (s or remembered.get(name) or {}).get("subnet"),
                "role": h.get("role", "?"), "state": "up" if s else "down",
                "last_seen": seen,
                "via": how_reached(name == st["name"], cfg.get("backend"), hops.get((s or h).get("address")))})
            if h.get("role") == "client":
                out["members"].append({"name": name, "role": "client",
                                       "healthy": seen is not None, "leader": False,
                                       "url": None})
    return out


def presence_age(client: Any, lease: int | None) -> int | None:
    """Seconds since a host last refreshed its presence lease (its granted TTL minus what
    is left, etcd's LeaseTimeToLive); None: no live lease (stopped, gone, or not refreshed
    for ALIVE_TTL s)."""
    if not lease:
        return None
    data = client.call("kv/lease/timetolive", {"ID": str(lease)})
    ttl, granted = int(data.get("TTL", -1)), int(data.get("grantedTTL", 0))
    return max(0, granted - ttl) if ttl > 0 and granted > 0 else None


def how_reached(own: bool, backend: str | None, next_hop: str | None | bool) -> dict:
    """How this host reaches a peer: the data plane (backend) and the underlay next hop —
    "direct" (same segment: no gateway on the route to its address), the router's
    address, or "unknown" (no route)."""
    if own:
        return {"backend": None, "next_hop": None, "text": "this host"}
    hop = "unknown" if next_hop is False else (next_hop or "direct")
    where = "direct on the underlay segment" if hop == "direct" else (
        "no underlay route" if hop == "unknown" else f"via router {hop}")
    return {"backend": backend, "next_hop": hop, "text": f"{backend or '?'}, {where}"}


def underlay_next_hops(addresses: Iterable[str | None]) -> dict[str, str | None | bool]:
    """address -> the gateway of this namespace's route to it (None: on-link, False: no
    route), looked up with netlink (`ip route get`, nothing sent)."""
    from pyroute2 import IPRoute

    out: dict[str, str | None | bool] = {}
    with IPRoute() as ipr:
        for a in {a for a in addresses if a}:
            try:
                ipaddress.IPv4Address(a)
                r = ipr.route("get", dst=a)
            except Exception:  # noqa: BLE001 -- a record's bad address or no route: reported as unknown
                out[a] = False
                continue
            out[a] = r[0].get_attr("RTA_GATEWAY") if r else False
    return out


def not_programmed(mesh: dict, why: str) -> dict:
    """`status` on a launched host that has no applied state (the agent never programmed
    it): what is down instead of a traceback or a bare error."""
    if not mesh["running"]:
        what = "crossnet launch is not running here (etcd member and agent are down); start it: crossnet launch"
    else:
        what = "the agent has not programmed this host yet (see <state-dir>/mesh/launch.log)"
    return {"host": mesh["name"], "programmed": False, "reason": what, "detail": why, "mesh": mesh}


def role_text(role: str, running: bool) -> str:
    """launch.json's role as `status` words it: a JOINING or PROMOTING host (its `member
    add` may or may not have happened) says so and what settles it."""
    if role not in PENDING_ROLES:
        return role
    what = "a join" if role == JOINING else "a promotion to voter"
    return (f"{role}: {what} not completed; "
            + ("its supervisor settles it at its next membership read" if running else "`crossnet launch` completes it"))


def format_status(s: dict) -> str:
    lines = [(f"mesh: this host {s['name']} ({s['address']}, {role_text(s['role'], s['running'])}), "
              f"{'running' if s['running'] else 'NOT running'}; "
              f"{'store ok' if s['store'] == 'ok' else s['store']}")]
    lines.append("members:")
    for m in s["members"]:
        lines.append(f"  {m['name']:16} {m['role']:7} {'healthy' if m['healthy'] else 'UNHEALTHY':9}"
                     f"{' leader' if m['leader'] else ''}")
    lines.append("peers:")
    for p in s["peers"]:
        seen = f"{p['last_seen']:.0f}s ago" if p["last_seen"] is not None else f"> {ALIVE_TTL}s ago"
        lines.append(f"  {p['name']:16} {p['address'] or '?':15} {p['subnet'] or '?':18} {p['state']:5} "
                     f"last seen {seen:10} {p['via']['text']}")
    return "\n".join(lines)
