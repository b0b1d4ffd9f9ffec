"""The tutorial's hand-built layouts, built step by step with `ip` / `ovs-vsctl` /
`nft` exactly as a user following the tutorial would type them, on two simulated
hosts of a lab built without `crossnet apply`. They are the baselines crossnet's
backends are compared with in the same run. (Subprocesses are fine here: this is
the manual method, not crossnet's code path.)

* ``manual-bridge-routes`` — tutorial method 1 as the routes variant: a Linux bridge
  per host holding the host's container gateway, the container's veth on it, and
  ``ip route add <peer subnet> via <peer host>`` (what crossnet's host-gw automates).
* ``manual-bridge-nic`` — tutorial method 1 as the bridge variant: a Linux bridge
  ``br0`` per host enslaving the NIC, the NIC's address (and default route) moved
  onto ``br0``, the containers' veths on ``br0`` with addresses of the LAN itself (what
  crossnet's bridge backend automates; no routes, one L2 segment).
* ``manual-ovs-gre`` — tutorial method 2: an OVS bridge ``obr0``
  (``datapath_type=netdev``) with a GRE port to the peer, a Linux bridge ``br0`` for
  the containers with ``obr0`` (an OVS internal port) enslaved, and
  ``ip route add <peer subnet> dev br0``. On this machine (no kernel datapath) the
  userspace datapath needs the underlay address on an OVS bridge ``br-phy`` holding
  the NIC and an nft ingress drop on the NIC (see ../shared/notes/ovs-userspace.md).
  Each host runs its own ovsdb-server + ovs-vswitchd.
* ``manual-wireguard`` — WireGuard by hand, as a wg-quick user would type it: a Linux
  bridge per host for its containers, ``wireguard-go wg0``, ``wg genkey`` / ``wg
  pubkey``, ``wg set wg0 private-key FILE listen-port … peer … allowed-ips <peer
  subnet> endpoint <peer>:…``, ``ip link set wg0 mtu 1420 up`` (wg-quick's MTU) and
  ``ip route add <peer subnet> dev wg0``. Each wireguard-go runs in a mount namespace
  with a private /run, so the UAPI sockets of the simulated hosts sharing one machine
  do not collide (``wg`` enters that mount namespace with ``nsenter``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossnet.bench.util import Skip, sh

MANUAL_NET = "10.40"  # containers of host k: 10.40.k.0/24 (inside lab namespaces only)
OVS_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
GRE_OVERHEAD = 38


@dataclass
class Built:
    """Where to send traffic once a layout is built."""

    client_ns: str
    server_ns: str
    server_addr: str
    container_mtu: int
    steps: list[str] = field(default_factory=list)  # the commands, for the report


class Layout:
    name = "manual"
    description = ""
    overhead = 0
    compares_with = ""  # crossnet backend this is the hand-built equivalent of
    diagnostic = False  # only in full runs: explains a difference, not a baseline
    diagnoses = ""

    def __init__(self, lab: Any):
        self.lab = lab
        self.steps: list[str] = []

    # -- helpers -------------------------------------------------------------------
    def _run(self, netns: str | None, argv: list[str], env: dict[str, str] | None = None,
             input: str | None = None, record: bool = True, timeout: float = 30.0) -> str:
        full = (["ip", "netns", "exec", netns] if netns else []) + argv
        if record:
            where = f"[{netns.split('-', 1)[1]}] " if netns else ""
            self.steps.append(where + " ".join(argv) + (" <<EOF ... EOF" if input else ""))
        run_env = {**os.environ, **env} if env else None
        return sh(full, timeout=timeout, input=input, env=run_env).stdout

    def container_ns(self, host) -> str:
        return f"{host.netns}-m1"

    def check_available(self) -> None:
        for tool in ("ip",):
            if not shutil.which(tool):
                raise Skip(f"{tool} not installed")

    def build(self, mtu: int) -> Built:
        raise NotImplementedError

    def teardown(self) -> None:
        """Namespaces go with the lab; stop daemons here."""

    def _container(self, host, k: int, mtu: int, bridge: str) -> str:
        """A container namespace with a veth into `bridge` (what `docker run` did)."""
        cns = self.container_ns(host)
        self._run(None, ["ip", "netns", "add", cns])
        veth = f"vm{k}"
        self._run(host.netns, ["ip", "link", "add", veth, "mtu", str(mtu), "type", "veth", "peer", "name", "eth0",
                               "mtu", str(mtu), "netns", cns])
        self._run(host.netns, ["ip", "link", "set", veth, "master", bridge, "up"])
        self._run(cns, ["ip", "link", "set", "lo", "up"])
        self._run(cns, ["ip", "link", "set", "eth0", "up"])
        addr = f"{MANUAL_NET}.{k}.2"
        self._run(cns, ["ip", "addr", "add", f"{addr}/24", "dev", "eth0"])
        self._run(cns, ["ip", "route", "add", "default", "via", f"{MANUAL_NET}.{k}.1"])
        return addr


class BridgeRoutes(Layout):
    name = "manual-bridge-routes"
    description = "tutorial, by hand: Linux bridge per host + `ip route add <peer subnet> via <peer host>`"
    compares_with = "host-gw"

    def build(self, mtu: int) -> Built:
        hosts = self.lab.hosts[:2]
        addrs = []
        for k, h in enumerate(hosts, 1):
            self._run(h.netns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            self._run(h.netns, ["ip", "link", "add", "br0", "type", "bridge"])
            self._run(h.netns, ["ip", "link", "set", "br0", "mtu", str(mtu), "up"])
            self._run(h.netns, ["ip", "addr", "add", f"{MANUAL_NET}.{k}.1/24", "dev", "br0"])
            addrs.append(self._container(h, k, mtu, "br0"))
        for k, h in enumerate(hosts, 1):
            for j, peer in enumerate(hosts, 1):
                if j != k:
                    self._run(h.netns, ["ip", "route", "add", f"{MANUAL_NET}.{j}.0/24", "via", peer.address])
        return Built(self.container_ns(hosts[0]), self.container_ns(hosts[1]), addrs[1], mtu, self.steps)


class BridgeNic(Layout):
    name = "manual-bridge-nic"
    description = ("tutorial method 1, by hand: Linux bridge br0 per host enslaving the NIC, the NIC's address and "
                   "default route moved to br0, containers on the LAN itself (no routes)")
    compares_with = "bridge"
    LAN_OFFSET = 512  # container k: LAN network + 512 + k (lab hosts sit at .10, .11, ...; peers bench at +1024)

    def _addr(self, host, k: int) -> str:
        lan = ipaddress.ip_network(host.subnet, strict=False)
        if lan.num_addresses < self.LAN_OFFSET + 8:
            raise Skip(f"the lab LAN {lan} is too small for containers at +{self.LAN_OFFSET}")
        return str(lan.network_address + self.LAN_OFFSET + k)

    def build(self, mtu: int) -> Built:
        hosts = self.lab.hosts[:2]
        addrs = []
        for k, h in enumerate(hosts, 1):
            link = json.loads(self._run(h.netns, ["ip", "-j", "link", "show", "dev", h.ifname], record=False))
            mac = link[0]["address"]
            self._run(h.netns, ["ip", "link", "add", "br0", "type", "bridge"])
            # the bridge keeps the NIC's MAC: the neighbours' ARP entries for this host stay valid
            self._run(h.netns, ["ip", "link", "set", "br0", "address", mac, "mtu", str(mtu)])
            self._run(h.netns, ["ip", "link", "set", h.ifname, "master", "br0"])
            self._run(h.netns, ["ip", "addr", "flush", "dev", h.ifname])
            self._run(h.netns, ["ip", "addr", "add", f"{h.address}/{h.prefixlen}", "dev", "br0"])
            self._run(h.netns, ["ip", "link", "set", "br0", "up"])
            if h.gateway:
                self._run(h.netns, ["ip", "route", "replace", "default", "via", h.gateway, "dev", "br0"])
            cns = self.container_ns(h)
            addr = self._addr(h, k)
            self._run(None, ["ip", "netns", "add", cns])
            veth = f"vm{k}"
            self._run(h.netns, ["ip", "link", "add", veth, "mtu", str(mtu), "type", "veth", "peer", "name", "eth0",
                                "mtu", str(mtu), "netns", cns])
            self._run(h.netns, ["ip", "link", "set", veth, "master", "br0", "up"])
            self._run(cns, ["ip", "link", "set", "lo", "up"])
            self._run(cns, ["ip", "link", "set", "eth0", "up"])
            self._run(cns, ["ip", "addr", "add", f"{addr}/{h.prefixlen}", "dev", "eth0"])
            if h.gateway:
                self._run(cns, ["ip", "route", "add", "default", "via", h.gateway])
            addrs.append(addr)
        return Built(self.container_ns(hosts[0]), self.container_ns(hosts[1]), addrs[1], mtu, self.steps)


class OvsDaemons:
    """ovsdb-server + ovs-vswitchd of one simulated host through the lab's
    crossnet.lab.ovsdaemon.OvsInstance (one directory; OVS_RUNDIR/DBDIR/LOGDIR/SYSCONFDIR
    point there, for the daemons and every ovs-vsctl call), with an ovs-vsctl wrapper."""

    def __init__(self, netns: str, base: Path):
        from crossnet.lab.ovsdaemon import OvsInstance

        self.netns = netns
        self.dir = Path(base)
        self.inst = OvsInstance(str(base), netns=netns)
        self.env = dict(self.inst.env())
        self.db = f"unix:{self.inst.db_socket}"

    def _ns(self, argv: list[str], timeout: float = 30.0) -> str:
        return sh(["ip", "netns", "exec", self.netns, *argv], timeout=timeout, env={**os.environ, **self.env}).stdout

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.inst.start()

    def vsctl(self, *args: str) -> str:
        return self._ns(["ovs-vsctl", f"--db={self.db}", "--timeout=20", *args])

    def stop(self) -> None:
        self.inst.stop()


class OvsGre(Layout):
    name = "manual-ovs-gre"
    description = ("tutorial, by hand: OVS bridge obr0 (netdev) + GRE port per peer, Linux bridge br0 with obr0 "
                   "enslaved, `ip route add <peer subnet> dev br0`")
    overhead = GRE_OVERHEAD
    compares_with = "ovs-gre"

    def __init__(self, lab: Any):
        super().__init__(lab)
        self.daemons: list[Any] = []

    def check_available(self) -> None:
        super().check_available()
        for tool in ("ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovsdb-tool", "nft"):
            if not shutil.which(tool):
                raise Skip(f"{tool} not installed (openvswitch-switch, nftables)")
        if not os.path.exists(OVS_SCHEMA):
            raise Skip(f"{OVS_SCHEMA} missing")

    def build(self, mtu: int) -> Built:
        hosts = self.lab.hosts[:2]
        inner = mtu - self.overhead
        addrs = []
        for k, h in enumerate(hosts, 1):
            d = OvsDaemons(h.netns, Path(self.lab.plan.lab_dir) / "hosts" / h.name / "bench-ovs")
            self.steps.append(f"[{h.name}] start ovsdb-server + ovs-vswitchd (own db/run dir, OVS_RUNDIR/DBDIR/"
                              "LOGDIR/SYSCONFDIR pointing at it)")
            d.start()
            self.daemons.append(d)
            vs = lambda *a, d=d, h=h: (self.steps.append(f"[{h.name}] ovs-vsctl " + " ".join(a)), d.vsctl(*a))  # noqa: E731
            # the underlay address moves onto an OVS bridge holding the NIC (userspace tunnelling)
            vs("add-br", "br-phy", "--", "set", "bridge", "br-phy", "datapath_type=netdev")
            vs("add-port", "br-phy", h.ifname, "--", "set", "interface", h.ifname, f"mtu_request={mtu}")
            vs("set", "interface", "br-phy", f"mtu_request={mtu}")
            self._run(h.netns, ["ip", "addr", "flush", "dev", h.ifname])
            self._run(h.netns, ["ip", "addr", "add", f"{h.address}/{h.prefixlen}", "dev", "br-phy"])
            self._run(h.netns, ["ip", "link", "set", "br-phy", "up"])
            self._run(h.netns, ["nft", "-f", "-"], input=(
                "table netdev benchphy {\n"
                f"  chain in {{ type filter hook ingress device {h.ifname} priority 0; policy drop; }}\n"
                "}\n"))
            # the tutorial's part
            vs("add-br", "obr0", "--", "set", "bridge", "obr0", "datapath_type=netdev")
            self._run(h.netns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            self._run(h.netns, ["ip", "link", "add", "br0", "type", "bridge"])
            self._run(h.netns, ["ip", "link", "set", "br0", "mtu", str(inner), "up"])
            self._run(h.netns, ["ip", "addr", "add", f"{MANUAL_NET}.{k}.1/24", "dev", "br0"])
            self._run(h.netns, ["ip", "link", "set", "obr0", "mtu", str(inner)])
            self._run(h.netns, ["ip", "link", "set", "obr0", "master", "br0", "up"])
            addrs.append(self._container(h, k, inner, "br0"))
        for k, h in enumerate(hosts, 1):
            d = self.daemons[k - 1]
            for j, peer in enumerate(hosts, 1):
                if j == k:
                    continue
                self.steps.append(f"[{h.name}] ovs-vsctl add-port obr0 gre{j} -- set interface gre{j} type=gre "
                                  f"options:remote_ip={peer.address}")
                d.vsctl("add-port", "obr0", f"gre{j}", "--", "set", "interface", f"gre{j}", "type=gre",
                        f"options:remote_ip={peer.address}")
                self._run(h.netns, ["ip", "route", "add", f"{MANUAL_NET}.{j}.0/24", *self.route_via(j)])
        return Built(self.container_ns(hosts[0]), self.container_ns(hosts[1]), addrs[1], inner, self.steps)

    def route_via(self, j: int) -> list[str]:
        """The tutorial: `ip route add <peer subnet> dev br0` (ARP for remote containers
        across the tunnel; the receiving host only bridges)."""
        return ["dev", "br0"]

    def teardown(self) -> None:
        for d in self.daemons:
            with contextlib.suppress(Exception):
                d.stop()
        self.daemons = []


class OvsGreVia(OvsGre):
    """Diagnostic: the tutorial's OVS layout, but peer subnets routed via the peer
    host's container gateway (as crossnet's backends route), so the receiving host
    routes every packet once more instead of only bridging it."""

    name = "manual-ovs-gre-via"
    description = ("diagnostic: manual-ovs-gre with `ip route add <peer subnet> via <peer gateway> dev br0 onlink` "
                   "(crossnet's route style) instead of `dev br0`")
    compares_with = ""
    diagnostic = True
    diagnoses = "manual-ovs-gre"  # compared with this layout in the same run

    def route_via(self, j: int) -> list[str]:
        return ["via", f"{MANUAL_NET}.{j}.1", "dev", "br0", "onlink"]


class KernelVxlan(Layout):
    name = "manual-vxlan"
    description = ("kernel VXLAN by hand: a vxlan device per host (no learning) with a static all-zero FDB entry "
                   "per peer, enslaved to the containers' Linux bridge, `ip route add <peer subnet> dev br0`")
    overhead = 50
    compares_with = "vxlan"

    def build(self, mtu: int) -> Built:
        hosts = self.lab.hosts[:2]
        inner = mtu - self.overhead
        addrs = []
        for k, h in enumerate(hosts, 1):
            self._run(h.netns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            self._run(h.netns, ["ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "local", h.address,
                                "dev", h.ifname, "dstport", "4789", "nolearning"])
            self._run(h.netns, ["ip", "link", "add", "br0", "type", "bridge"])
            self._run(h.netns, ["ip", "link", "set", "br0", "mtu", str(inner), "up"])
            self._run(h.netns, ["ip", "addr", "add", f"{MANUAL_NET}.{k}.1/24", "dev", "br0"])
            self._run(h.netns, ["ip", "link", "set", "vx0", "mtu", str(inner), "master", "br0", "up"])
            addrs.append(self._container(h, k, inner, "br0"))
        for k, h in enumerate(hosts, 1):
            for j, peer in enumerate(hosts, 1):
                if j == k:
                    continue
                self._run(h.netns, ["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vx0", "dst", peer.address])
                self._run(h.netns, ["ip", "route", "add", f"{MANUAL_NET}.{j}.0/24", "dev", "br0"])
        return Built(self.container_ns(hosts[0]), self.container_ns(hosts[1]), addrs[1], inner, self.steps)


class RoutedVethFloor(Layout):
    """Not a tutorial layout: the least a container path of a backend's shape costs on
    this machine, built by hand with nothing of crossnet's (no bridge, no nft table, no
    programs): a veth into a container namespace whose host end holds the gateway, and
    a route to the peer's containers -- via the peer host (``encap=None``, host-gw's
    shape) or over a vxlan device without learning, flannel's L3 layout (``"vxlan"``).
    `bench datapath` runs it beside the datapaths, on two hosts of its own."""

    name = "floor-routed-veth"
    description = ("the floor, by hand: a veth into the container namespace, the gateway on its host end (no bridge), "
                   "`ip route add <peer subnet> via <peer host>`; nothing of crossnet's")
    diagnostic = True
    VNI = 43

    def __init__(self, lab: Any, hosts: tuple[Any, ...] | None = None, encap: str | None = None):
        super().__init__(lab)
        self.hosts = tuple(hosts or lab.hosts[:2])
        self.encap = encap
        if encap == "vxlan":
            self.name = "floor-routed-veth-vxlan"
            self.overhead = 50
            self.description = ("the floor, by hand: a veth into the container namespace, the gateway on its host end "
                                "(no bridge), a vxlan device without learning, `ip route add <peer subnet> via "
                                "<peer's vxlan address> dev vf0 onlink` + static neighbour and FDB entries")
        elif encap is not None:
            raise ValueError(f"encap: {encap!r} is not None or 'vxlan'")

    def build(self, mtu: int) -> Built:
        inner = mtu - self.overhead
        addrs = []
        for k, h in enumerate(self.hosts, 1):
            self._run(h.netns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            cns = self.container_ns(h)
            self._run(None, ["ip", "netns", "add", cns])
            veth = f"vf{k}"
            self._run(h.netns, ["ip", "link", "add", veth, "mtu", str(inner), "type", "veth", "peer", "name", "eth0",
                                "mtu", str(inner), "netns", cns])
            self._run(h.netns, ["ip", "addr", "add", f"{MANUAL_NET}.{k}.1/24", "dev", veth])
            self._run(h.netns, ["ip", "link", "set", veth, "up"])
            self._run(cns, ["ip", "link", "set", "lo", "up"])
            self._run(cns, ["ip", "link", "set", "eth0", "up"])
            addrs.append(f"{MANUAL_NET}.{k}.2")
            self._run(cns, ["ip", "addr", "add", f"{addrs[-1]}/24", "dev", "eth0"])
            self._run(cns, ["ip", "route", "add", "default", "via", f"{MANUAL_NET}.{k}.1"])
            if self.encap == "vxlan":
                self._run(h.netns, ["ip", "link", "add", "vf0", "address", self._mac(k), "type", "vxlan", "id",
                                    str(self.VNI), "local", h.address, "dev", h.ifname, "dstport", "4789",
                                    "nolearning"])
                self._run(h.netns, ["ip", "addr", "add", f"{MANUAL_NET}.{k}.0/32", "dev", "vf0"])
                self._run(h.netns, ["ip", "link", "set", "vf0", "mtu", str(inner), "up"])
        for k, h in enumerate(self.hosts, 1):
            for j, peer in enumerate(self.hosts, 1):
                if j == k:
                    continue
                if self.encap == "vxlan":
                    self._run(h.netns, ["ip", "neigh", "add", f"{MANUAL_NET}.{j}.0", "lladdr", self._mac(j),
                                        "dev", "vf0", "nud", "permanent"])
                    self._run(h.netns, ["bridge", "fdb", "append", self._mac(j), "dev", "vf0", "dst", peer.address])
                    self._run(h.netns, ["ip", "route", "add", f"{MANUAL_NET}.{j}.0/24", "via", f"{MANUAL_NET}.{j}.0",
                                        "dev", "vf0", "onlink"])
                else:
                    self._run(h.netns, ["ip", "route", "add", f"{MANUAL_NET}.{j}.0/24", "via", peer.address])
        return Built(self.container_ns(self.hosts[0]), self.container_ns(self.hosts[1]), addrs[1], inner, self.steps)

    @staticmethod
    def _mac(k: int) -> str:
        return f"02:40:00:00:00:{k:02x}"


class ManualWireguard(Layout):
    name = "manual-wireguard"
    description = ("WireGuard by hand: wireguard-go wg0, `wg set` (key file, listen-port, a peer per host with "
                   "allowed-ips = its container subnet and its endpoint), `ip route add <peer subnet> dev wg0`, "
                   "containers on a Linux bridge")
    overhead = 80  # wg-quick's MTU: 1420 on a 1500 underlay (the same as crossnet's backend without probing)
    compares_with = "wireguard"
    PORT = 51820
    START_TIMEOUT = 10.0

    def __init__(self, lab: Any, hosts: list[Any] | None = None):
        super().__init__(lab)
        self.hosts = list(hosts) if hosts is not None else list(lab.hosts[:2])
        self.procs: list[subprocess.Popen] = []

    def check_available(self) -> None:
        super().check_available()
        for tool in ("wireguard-go", "wg", "nsenter", "unshare"):
            if not shutil.which(tool):
                raise Skip(f"{tool} not installed (wireguard-go, wireguard-tools, util-linux)")

    def _wireguard_go(self, host: Any) -> int:
        """`wireguard-go wg0` in the host, in a mount namespace with its own /run."""
        self.steps.append(f"[{host.name}] wireguard-go wg0   (in its own mount namespace: private /run)")
        argv = ["ip", "netns", "exec", host.netns, "unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount -t tmpfs -o mode=0700,size=1m bench-wg /run && exec wireguard-go -f wg0']
        env = {**os.environ, "LOG_LEVEL": "error", "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        self.procs.append(proc)
        sock = f"/proc/{proc.pid}/root/run/wireguard/wg0.sock"  # ip netns exec, unshare and sh exec: one pid
        deadline = time.monotonic() + self.START_TIMEOUT
        while not os.path.exists(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{host.name}: wireguard-go wg0 did not start (exit {proc.poll()})")
            time.sleep(0.02)
        return proc.pid

    def build(self, mtu: int) -> Built:
        inner = mtu - self.overhead
        addrs, pubs, pids, keydirs = [], [], [], []
        for k, h in enumerate(self.hosts, 1):
            self._run(h.netns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            self._run(h.netns, ["ip", "link", "add", "br0", "type", "bridge"])
            self._run(h.netns, ["ip", "link", "set", "br0", "mtu", str(inner), "up"])
            self._run(h.netns, ["ip", "addr", "add", f"{MANUAL_NET}.{k}.1/24", "dev", "br0"])
            addrs.append(self._container(h, k, inner, "br0"))
            keydir = Path(self.lab.plan.lab_dir) / "hosts" / h.name / "bench-wg"
            keydir.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = keydir / "private.key"
            self.steps.append(f"[{h.name}] umask 077; wg genkey > {key.name}; wg pubkey < {key.name}")
            key.write_text(sh(["wg", "genkey"]).stdout)
            os.chmod(key, 0o600)
            pubs.append(sh(["wg", "pubkey"], input=key.read_text()).stdout.strip())
            keydirs.append(key)
            pids.append(self._wireguard_go(h))
        for k, h in enumerate(self.hosts, 1):
            # the key file is under the lab's /run, which wireguard-go's mount namespace hides: stdin
            argv = ["wg", "set", "wg0", "listen-port", str(self.PORT), "private-key", "/dev/stdin"]
            for j, peer in enumerate(self.hosts, 1):
                if j != k:
                    argv += ["peer", pubs[j - 1], "allowed-ips", f"{MANUAL_NET}.{j}.0/24",
                             "endpoint", f"{peer.address}:{self.PORT}"]
            self.steps.append(f"[{h.name}] " + " ".join(argv) + " < private.key")
            sh(["nsenter", f"--mount=/proc/{pids[k - 1]}/ns/mnt", "--", *argv], input=keydirs[k - 1].read_text())
            self._run(h.netns, ["ip", "link", "set", "wg0", "mtu", str(inner), "up"])
            for j, _peer in enumerate(self.hosts, 1):
                if j != k:
                    self._run(h.netns, ["ip", "route", "add", f"{MANUAL_NET}.{j}.0/24", "dev", "wg0"])
        return Built(self.container_ns(self.hosts[0]), self.container_ns(self.hosts[1]), addrs[1], inner, self.steps)

    def teardown(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self.procs = []


LAYOUTS = {cls.name: cls for cls in (BridgeRoutes, BridgeNic, KernelVxlan, OvsGre, OvsGreVia, ManualWireguard)}

