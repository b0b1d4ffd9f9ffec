"""The Open vSwitch step of `crossnet trace` (plugged into crossnet.trace.walker.Walker).

Where the kernel walk reaches a port that belongs to Open vSwitch (a container veth on
an OVS bridge of the userspace datapath has no kernel master; an OVS internal port is a
tap device), the decision is OVS's: this module asks it with

    ovs-appctl ofproto/trace BRIDGE in_port=PORT,icmp,dl_src=..,dl_dst=..,nw_src=..,nw_dst=.. --names

and reads the OpenFlow rules that matched and the datapath actions: with the userspace
datapath a `tnl_push(...)` (GRE: ip proto 47; VXLAN: udp dst 4789, vni) towards a
remote underlay address and out of the NIC; with the kernel datapath a
`set(tunnel(tun_id=..,dst=..,..)),<vport>` (the metadata tunnel vport `gre_sys` /
`vxlan_sys_4789` encapsulates, the kernel then routes the outer packet to a NIC); or an
output to a local port. On the receiving host the trace starts at
the tunnel port whose remote_ip is the sender (`in_port=gre-h1,tun_src=..,tun_dst=..`).

Counters of OVS ports (tunnel ports have no kernel device in the userspace datapath)
come from `ovs-ofctl --names dump-ports BRIDGE`, exposed as counter source
"ovs:<host>" with names "<bridge>:<port>".

Which Open vSwitch: per host, the run directory holding its `db.sock` — $OVS_RUNDIR
for the host trace runs on (the lab sets it for every command of a simulated host),
the lab's per-host OVS directory for the others (found next to the host's state dir),
else /var/run/openvswitch. All OVS access here is read-only (`ovs-vsctl list`,
`ovs-ofctl dump-ports`, `ovs-appctl ofproto/trace`); no configuration is changed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from typing import Any

from crossnet.trace.model import Hop, HostSide, Packet, link_by
from crossnet.trace.walker import Walker

SYSTEM_RUNDIR = "/var/run/openvswitch"
TIMEOUT = 15.0
TUNNEL_TYPES = ("gre", "vxlan", "geneve", "stt", "erspan", "ip6gre")


# ---- parsing (pure) ------------------------------------------------------------------------
@dataclass
class OfTrace:
    """What `ofproto/trace` said."""

    rules: list[str] = field(default_factory=list)  # "obr0: table 0 priority 0: NORMAL; -> ..."
    outputs: list[str] = field(default_factory=list)  # OpenFlow output ports named in the actions
    tunnel_remote: str | None = None  # "tunneling to X via BR"
    tunnel_via: str | None = None
    datapath_actions: str = ""
    encap: dict | None = None  # {"type": "gre"|"vxlan"|..., "remote":.., "local":.., "vni"/"key":..}
    dp_outputs: list[str] = field(default_factory=list)  # datapath ports the packet leaves by (names)
    dropped: bool = False
    error: str | None = None


_BRIDGE_RE = re.compile(r'^bridge\("([^"]+)"\)')
_RULE_RE = re.compile(r"^\s*(\d+)\.\s+(.*)$")
_TUNNEL_TO_RE = re.compile(r"tunneling to ([0-9.]+) via (\S+)")
_OUTPUT_RE = re.compile(r"\boutput:\"?([^\s,\"]+)\"?")


def parse_oftrace(text: str) -> OfTrace:
    t = OfTrace()
    bridge = None
    current: list[str] = []

    def flush() -> None:
        if bridge is not None and current:
            t.rules.append(f"{bridge}: " + "; ".join(current))

    for raw in text.splitlines():
        line = raw.rstrip()
        m = _BRIDGE_RE.match(line.strip())
        if m:
            flush()
            bridge, current = m.group(1), []
            continue
        if line.startswith("Datapath actions:"):
            t.datapath_actions = line.split(":", 1)[1].strip()
            continue
        if line.startswith(("Final flow:", "Megaflow:", "Flow:")) or not line.strip() or set(line.strip()) == {"-"}:
            continue
        if bridge is None:
            continue
        s = line.strip()
        rm = _RULE_RE.match(line)
        if rm:
            current.append(f"table {rm.group(1)} {rm.group(2)}")
            continue
        current.append(s)
        for om in _OUTPUT_RE.finditer(s):
            t.outputs.append(om.group(1))
        tm = _TUNNEL_TO_RE.search(s)
        if tm:
            t.tunnel_remote, t.tunnel_via = tm.group(1), tm.group(2)
    flush()
    if not t.datapath_actions and text.strip():
        t.error = text.strip().splitlines()[-1]
    da = t.datapath_actions
    if da in ("drop", "") or da.startswith("drop"):
        t.dropped = bool(da)
    t.encap = parse_tnl_push(da) or parse_set_tunnel(da)
    t.dp_outputs = datapath_outputs(da)
    return t


# kernel datapath: the tunnel vport's name tells the encapsulation (gre_sys, vxlan_sys_4789, genev_sys_6081)
_VPORT_TYPES = (("gre", "gre"), ("vxlan", "vxlan"), ("genev", "geneve"), ("stt", "stt"), ("erspan", "erspan"))


def parse_set_tunnel(actions: str) -> dict | None:
    """Encapsulation described by the kernel datapath's `set(tunnel(...)),<vport>`: the
    tunnel metadata (tun_id, dst, tp_dst, flags) the packet gets before it is output to
    the flow-based tunnel vport, which encapsulates it (the kernel then routes the outer
    packet). Only a `set(tunnel(...))` with a dst is an encapsulation; the vport is the
    first output after it (a name with `ofproto/trace --names`, else a datapath port
    number). `local` is there only when the tunnel has options:local_ip."""
    i = actions.find("set(tunnel(")
    while i >= 0:
        body = _balanced(actions, i + len("set(tunnel"))
        end = i + len("set(tunnel") + len(body) + 2  # after "(...)"
        if re.search(r"(?:^|,)dst=", body):
            break
        i = actions.find("set(tunnel(", end)
    else:
        return None
    enc: dict[str, Any] = {"kernel": True}
    dst = re.search(r"(?:^|,)dst=([0-9.]+)", body)
    src = re.search(r"(?:^|,)src=([0-9.]+)", body)
    if dst:
        enc["remote"] = dst.group(1)
    if src:
        enc["local"] = src.group(1)
    tun_id = re.search(r"tun_id=(0x[0-9a-f]+|\d+)", body)
    tp_dst = re.search(r"tp_dst=(\d+)", body)
    flags = re.search(r"flags\(([^)]*)\)", body)
    outs = datapath_outputs(actions[end:].lstrip(")").lstrip(","))
    vport = outs[0] if outs else None
    if vport:
        enc["vport"] = vport
    kind = next((t for prefix, t in _VPORT_TYPES if vport and vport.startswith(prefix)), None)
    if kind is None:
        kind = "vxlan" if tp_dst and tp_dst.group(1) in ("4789", "8472") else "tunnel"
    enc["type"] = kind
    key = int(tun_id.group(1), 0) if tun_id else 0
    if kind in ("vxlan", "geneve"):
        enc["vni"] = key
    elif key or (flags and "key" in flags.group(1).split("|")):
        enc["key"] = key
    if tp_dst:
        enc["port"] = int(tp_dst.group(1))
    elif kind == "vxlan" and vport and vport.startswith("vxlan_sys_") and vport[10:].isdigit():
        enc["port"] = int(vport[10:])
    return enc


def parse_tnl_push(actions: str) -> dict | None:
    """Encapsulation described by a `tnl_push(...)` datapath action."""
    i = actions.find("tnl_push(")
    if i < 0:
        return None
    body = _balanced(actions, i + len("tnl_push"))
    enc: dict[str, Any] = {}
    ip = re.search(r"ipv4\(src=([0-9.]+),dst=([0-9.]+),proto=(\d+)", body)
    if ip:
        enc["local"], enc["remote"] = ip.group(1), ip.group(2)
    if "gre(" in body or (ip and ip.group(3) == "47"):
        enc["type"] = "gre"
        key = re.search(r"key=(0x[0-9a-f]+|\d+)", body)
        if key:
            enc["key"] = int(key.group(1), 0)
        proto = re.search(r"gre\(\(flags=[^,]+,proto=(0x[0-9a-f]+)\)", body)
        if proto:
            enc["proto"] = proto.group(1)
    elif "vxlan(" in body:
        enc["type"] = "vxlan"
        vni = re.search(r"vni=(0x[0-9a-f]+|\d+)", body)
        if vni:
            enc["vni"] = int(vni.group(1), 0)
    elif "geneve(" in body:
        enc["type"] = "geneve"
    else:
        enc["type"] = "tunnel"
    udp = re.search(r"udp\(src=\d+,dst=(\d+)", body)
    if udp:
        enc["port"] = int(udp.group(1))
    outp = re.search(r"out_port\(([^)]+)\)", body)
    if outp:
        enc["out_port"] = outp.group(1)
    return enc


def kernel_encap(enc: dict, iface: dict | None, local: str | None) -> dict:
    """Complete a parse_set_tunnel() result with what OVSDB says about the tunnel port
    it left by (its type when the vport was a number, the VXLAN dst_port) and the
    outer source: options:local_ip, else this host's underlay address (what its
    peers' tunnel ports have as remote_ip)."""
    e = dict(enc)
    opts = (iface or {}).get("options") or {}
    if iface and e.get("type") not in TUNNEL_TYPES and iface.get("type") in TUNNEL_TYPES:
        e["type"] = iface["type"]
    if e.get("type") in ("vxlan", "geneve") and "vni" not in e:
        e["vni"] = e.pop("key", 0)
    if e.get("type") == "vxlan" and not e.get("port"):
        e["port"] = int(opts.get("dst_port") or 4789)
    if not e.get("local"):
        e["local"] = opts.get("local_ip") if opts.get("local_ip") not in (None, "flow") else local
    return e


def summarize_rules(rules: list[str]) -> str:
    """One line for the first bridge's OpenFlow decisions ("table 0 priority 0; NORMAL; -> ...")."""
    if not rules:
        return "no OpenFlow rule matched"
    br, _, body = rules[0].partition(": ")
    parts = []
    for p in body.split("; "):
        if p.startswith("-> tunneling from"):
            continue
        parts.append(p.replace("-> ", "→ ", 1) if p.startswith("-> ") else p)
    return f"{br}: " + ", ".join(parts)


def summarize_actions(actions: str) -> str:
    """Datapath actions with each tnl_push(...) header shortened to its essentials."""
    out = actions
    while "tnl_push(" in out:
        i = out.find("tnl_push(")
        body = _balanced(out, i + len("tnl_push"))
        enc = parse_tnl_push(out[i:i + len("tnl_push") + len(body) + 2]) or {}
        what = enc.get("type", "tunnel")
        if enc.get("vni") is not None:
            what += f" vni {enc['vni']}"
        if enc.get("key"):
            what += f" key {enc['key']}"
        short = f"tnl_push[{what} {enc.get('local')}→{enc.get('remote')} out {enc.get('out_port', '?')}]"
        out = out[:i] + short + out[i + len("tnl_push") + len(body) + 2:]
    return out


def _balanced(s: str, start: int) -> str:
    """The text inside the parentheses opening at s[start]."""
    depth = 0
    for j in range(start, len(s)):
        if s[j] == "(":
            depth += 1
        elif s[j] == ")":
            depth -= 1
            if depth == 0:
                return s[start + 1:j]
    return s[start + 1:]


def datapath_outputs(actions: str) -> list[str]:
    """Top-level output ports of datapath actions ("tnl_push(...),eth0" -> ["eth0"],
    "set(tunnel(...)),gre_sys" -> ["gre_sys"])."""
    out, depth, cur = [], 0, ""
    for ch in actions + ",":
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            tok = cur.strip()
            cur = ""
            tok = tok.removeprefix("output:")
            if tok and "(" not in tok and tok != "drop" and "=" not in tok:
                out.append(tok.strip('"'))
            continue
        cur += ch
    return out


_PORT_RE = re.compile(r'port\s+"?([^":\s]+)"?:\s+rx pkts=(\d+|\?)[^\n]*\n\s+tx pkts=(\d+|\?)')


def parse_dump_ports(text: str) -> dict[str, tuple[int, int]]:
    """`ovs-ofctl --names dump-ports BR` -> {port: (tx, rx)} (OVS's view: rx = from the port)."""
    out = {}
    for m in _PORT_RE.finditer(text):
        rx = int(m.group(2)) if m.group(2).isdigit() else 0
        tx = int(m.group(3)) if m.group(3).isdigit() else 0
        out[m.group(1)] = (tx, rx)
    return out


def parse_vsctl_tables(text: str) -> list[dict]:
    """Several `ovs-vsctl -f json list` results, one JSON document per line."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        doc = json.loads(line)
        heads = doc["headings"]
        out.append([dict(zip(heads, row)) for row in doc["data"]])
    return out


def _ovs_value(v: Any) -> Any:
    """OVSDB JSON values: ["map", [[k, v]...]], ["set", [...]], ["uuid", x], scalars."""
    if isinstance(v, list) and len(v) == 2 and v[0] == "map":
        return {k: _ovs_value(x) for k, x in v[1]}
    if isinstance(v, list) and len(v) == 2 and v[0] == "set":
        return [_ovs_value(x) for x in v[1]]
    if isinstance(v, list) and len(v) == 2 and v[0] in ("uuid", "named-uuid"):
        return v[1]
    return v


# ---- one host's Open vSwitch ---------------------------------------------------------------
def find_rundir(host: HostSide) -> str | None:
    """The OVS run directory (holding db.sock) of `host`, None if it is not known.

    Never guessed: the directory given for the host (``--peer-ovs-rundir``, the lab) or
    recorded in its applied.json by `apply` or the agent, and only for the
    host trace runs on ($OVS_RUNDIR, then the system's). Looking around the state dir
    (``*/db.sock`` next to it) read one host's OVS as another's when state and OVS dirs
    of several hosts sat side by side."""
    cands: list[str] = []
    if host.ovs_rundir:
        cands.append(str(host.ovs_rundir))
    if host.netns is None:
        if os.environ.get("OVS_RUNDIR"):
            cands.append(os.environ["OVS_RUNDIR"])
        cands.append(SYSTEM_RUNDIR)
    for c in cands:
        if os.path.exists(os.path.join(c, "db.sock")):
            return c
    return None


def rundir_problem(host: HostSide) -> str:
    """Why `host`'s Open vSwitch cannot be read (find_rundir found nothing)."""
    given = host.ovs_rundir
    if given:
        return f"no Open vSwitch at {given} (no db.sock there)"
    if host.netns is None:
        return f"no Open vSwitch run directory (db.sock) found (OVS_RUNDIR or {SYSTEM_RUNDIR})"
    return (f"Open vSwitch of host {host.name} unknown: pass --peer-ovs-rundir DIR "
            "(its run directory, holding db.sock; `crossnet apply` records it on that host)")


class OvsHost:
    def __init__(self, host: HostSide, rundir: str):
        self.host = host
        self.rundir = rundir
        self.env = {**os.environ, "OVS_RUNDIR": rundir, "OVS_DBDIR": rundir, "OVS_LOGDIR": rundir,
                    "OVS_SYSCONFDIR": rundir}
        ctl = os.path.join(rundir, "ovs-vswitchd.ctl")
        self.target = ctl if os.path.exists(ctl) else None
        self.bridges: dict[str, list[str]] = {}
        self.port_bridge: dict[str, str] = {}
        self.ifaces: dict[str, dict] = {}
        self.error: str | None = None
        self._load()

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return subprocess.CompletedProcess(argv, 1, "", str(exc))

    def _load(self) -> None:
        db = f"unix:{os.path.join(self.rundir, 'db.sock')}"
        proc = self._run(["ovs-vsctl", f"--db={db}", "--timeout=10", "-f", "json",
                          "--", "--columns=name,ports", "list", "Bridge",
                          "--", "--columns=_uuid,name,interfaces", "list", "Port",
                          "--", "--columns=_uuid,name,type,options,ofport,mac_in_use", "list", "Interface"])
        if proc.returncode != 0:
            self.error = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["ovs-vsctl failed"]
            self.error = self.error[0]
            return
        try:
            bridges, ports, ifaces = parse_vsctl_tables(proc.stdout)
        except (ValueError, KeyError):
            self.error = "cannot read ovs-vsctl output"
            return
        port_names = {_ovs_value(p["_uuid"]): p["name"] for p in ports}
        for b in bridges:
            refs = _ovs_value(b["ports"])
            refs = refs if isinstance(refs, list) else [refs]
            names = sorted(port_names.get(r, r) for r in refs)
            self.bridges[b["name"]] = names
            for n in names:
                self.port_bridge[n] = b["name"]
        for i in ifaces:
            self.ifaces[i["name"]] = {"type": i.get("type") or "", "options": _ovs_value(i.get("options")) or {},
                                      "ofport": _ovs_value(i.get("ofport")), "mac": _ovs_value(i.get("mac_in_use"))}

    def appctl(self, *args: str) -> subprocess.CompletedProcess:
        argv = ["ovs-appctl"] + (["-t", self.target] if self.target else []) + list(args)
        return self._run(argv)

    def oftrace(self, bridge: str, flow: str) -> OfTrace:
        proc = self.appctl("ofproto/trace", bridge, flow, "--names")
        if proc.returncode != 0:
            t = OfTrace()
            t.error = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["ofproto/trace failed"]
            t.error = t.error[0]
            return t
        return parse_oftrace(proc.stdout)

    def port_stats(self) -> dict[str, tuple[int, int]]:
        out = {}
        for br in self.bridges:
            proc = self._run(["ovs-ofctl", "--names", "dump-ports", br])
            if proc.returncode == 0:
                for port, v in parse_dump_ports(proc.stdout).items():
                    out[f"{br}:{br if port == 'LOCAL' else port}"] = v
        return out

    def tunnels(self) -> dict[str, dict]:
        return {n: i for n, i in self.ifaces.items() if i["type"] in TUNNEL_TYPES}

    def tunnel_to(self, remote: str, kind: str | None = None) -> str | None:
        for n, i in sorted(self.tunnels().items()):
            if i["options"].get("remote_ip") == remote and (kind is None or i["type"] == kind):
                return n
        flow = [n for n, i in self.tunnels().items() if i["options"].get("remote_ip") == "flow"
                and (kind is None or i["type"] == kind)]
        return flow[0] if flow else None


# ---- the pluggable step --------------------------------------------------------------------
class OvsTracer:
    """Implements the hooks crossnet.trace.walker.Walker calls: owns_port, egress, ingress,
    counter_sources."""

    def __init__(self, hosts: dict[str, HostSide]):
        self.ovs: dict[str, OvsHost] = {}
        self.missing: dict[str, str] = {}
        for name, h in hosts.items():
            rd = find_rundir(h)
            if rd is None:
                if str(h.ctx.backend).startswith("ovs"):
                    self.missing[name] = rundir_problem(h)
                continue
            o = OvsHost(h, rd)
            if o.error:
                self.missing[name] = o.error
                continue
            self.ovs[name] = o

    # -- hooks -----------------------------------------------------------------------------
    def counter_sources(self) -> dict[str, Any]:
        return {f"ovs:{n}": o.port_stats for n, o in self.ovs.items()}

    def bridge_of(self, host: HostSide, port: str) -> str | None:
        o = self.ovs.get(host.name)
        return o.port_bridge.get(port) if o is not None else None

    def owns_port(self, host: HostSide, port: str) -> bool:
        o = self.ovs.get(host.name)
        return o is not None and port in o.port_bridge

    def _flow(self, in_port: str, pkt: Packet, tun: dict | None = None, smac: str | None = None) -> str:
        parts = [f"in_port={in_port}"]
        if tun:
            parts += [f"tun_src={tun['local']}", f"tun_dst={tun['remote']}"]
            if tun.get("key") is not None:
                parts.append(f"tun_id={tun['key']}")
            if tun.get("vni") is not None:
                parts.append(f"tun_id={tun['vni']}")
        parts.append("icmp")
        if smac:
            parts.append(f"dl_src={smac}")
        if pkt.mac:
            parts.append(f"dl_dst={pkt.mac}")
        parts += [f"nw_src={pkt.src}", f"nw_dst={pkt.dst}", "icmp_type=8", "icmp_code=0"]
        return ",".join(parts)

    def egress(self, w: Walker, host: HostSide, port: str, pkt: Packet) -> None:
        o = self.ovs.get(host.name)
        if o is None:
            w.add(Hop(host.name, port, "ovs", f"{port} belongs to Open vSwitch, which cannot be read here",
                      note=self.missing.get(host.name, "no Open vSwitch found")))
            self._warn(w, host)
            return
        br = o.port_bridge.get(port, port if port in o.bridges else None)
        if br is None:
            w.add(Hop(host.name, port, "ovs", f"{port} is not a port of any OVS bridge", note="not in OVSDB"))
            return
        in_port = "LOCAL" if port == br else port
        smac = pkt.smac or self._src_mac(w, host, port)
        if pkt.mac is None and w.dst.mac:
            pkt.mac = w.dst.mac.lower()
        t = o.oftrace(br, self._flow(in_port, pkt, smac=smac))
        self._walk_result(w, host, o, br, in_port, t, pkt, ingress_hop=True, port_name=port)

    def ingress(self, w: Walker, host: HostSide, nic: Any, pkt: Packet) -> None:
        """Arrived on the NIC encapsulated: the tunnel port whose remote is the sender."""
        o = self.ovs.get(host.name)
        e = pkt.encap or {}
        if o is None:
            w.add(Hop(host.name, None, "ovs", "Open vSwitch of this host cannot be read",
                      note=self.missing.get(host.name, "no Open vSwitch found")))
            self._warn(w, host)
            return
        tun = o.tunnel_to(e.get("local") or "", e.get("type"))
        if tun is None:
            w.add(Hop(host.name, None, "ovs-tunnel", f"no {e.get('type', 'tunnel')} port with remote_ip {e.get('local')}",
                      note="dropped: nothing decapsulates it"))
            return
        br = o.port_bridge.get(tun)
        key = f" key {e['key']}" if e.get("key") else (f" vni {e['vni']}" if e.get("vni") is not None else "")
        w.add(Hop(host.name, tun, "ovs-tunnel", f"decap {e.get('type')}{key} from {e.get('local')} on {br}",
                  expect="rx", counter=(f"ovs:{host.name}", f"{br}:{tun}")))
        t = o.oftrace(br, self._flow(tun, pkt, tun=e, smac=pkt.smac))
        pkt.encap = None
        self._walk_result(w, host, o, br, tun, t, pkt, ingress_hop=False, port_name=tun)

    # -- helpers ---------------------------------------------------------------------------
    def _warn(self, w: Walker, host: HostSide) -> None:
        msg = f"{host.name}: {self.missing.get(host.name, 'no Open vSwitch found')}"
        if msg not in w.warnings:
            w.warnings.append(msg)

    def _src_mac(self, w: Walker, host: HostSide, port: str) -> str | None:
        c = next((c for c in host.containers if c.host_if == port), None)
        if c is not None and c.mac:
            return c.mac.lower()
        if port == w.src.host_if and w.src.mac:
            return w.src.mac.lower()
        link = link_by(host.view, name=port)
        return link.mac.lower() if link and link.mac else None

    def _walk_result(self, w: Walker, host: HostSide, o: OvsHost, br: str, in_port: str, t: OfTrace,
                     pkt: Packet, ingress_hop: bool, port_name: str) -> None:
        if t.error and not t.datapath_actions:
            w.add(Hop(host.name, br, "ovs", f"ofproto/trace failed: {t.error}", note="cannot follow OVS"))
            return
        detail = (f"ofproto/trace in_port={in_port}: {summarize_rules(t.rules)}; "
                  f"datapath: {summarize_actions(t.datapath_actions) or '-'}")
        w.add(Hop(host.name, br, "ovs", detail, expect="rx" if ingress_hop else None,
                  counter=(f"ovs:{host.name}", f"{br}:{port_name}") if ingress_hop else None,
                  note="dropped by OVS" if t.dropped else None,
                  extra={"rules": t.rules, "datapath_actions": t.datapath_actions}))
        if t.dropped:
            return
        if t.encap:
            e = dict(t.encap)
            kind = e.get("type") if e.get("type") in TUNNEL_TYPES else None
            tun = next((p for p in t.outputs if p in o.tunnels()), None) or o.tunnel_to(e.get("remote", ""), kind)
            if e.get("kernel"):
                e = kernel_encap(e, o.ifaces.get(tun) if tun else None, str(host.ctx.address))
            extra = (f" key {e['key']}" if e.get("key") else "") + (f" vni {e['vni']}" if e.get("vni") is not None else "")
            port = f":{e['port']}" if e.get("port") else ""
            via = f" via {t.tunnel_via}" if t.tunnel_via else ""
            if e.get("kernel"):
                via = f" via kernel vport {e['vport']}" if e.get("vport") else " via the kernel's tunnel vport"
            w.tunnel = w.tunnel or tun
            w.add(Hop(host.name, tun, "ovs-tunnel",
                      f"encap {e.get('type')}{extra} {e.get('local')} → {e.get('remote')}{port}{via}"
                      + (f" (gre proto {e['proto']})" if e.get("proto") else ""),
                      expect="tx", counter=(f"ovs:{host.name}", f"{o.port_bridge.get(tun, br)}:{tun}") if tun else None))
            pkt.encap = {**e}
            pkt.outer_dst = e.get("remote")
            if e.get("kernel"):
                # kernel datapath: the vport encapsulates, the kernel routes the outer
                # packet like any other (route, neighbour, NIC), then the peer host
                w.underlay(host, e.get("remote", ""), pkt)
                return
            nic_name = t.dp_outputs[0] if t.dp_outputs else host.ctx.iface
            nic = link_by(host.view, name=nic_name) or link_by(host.view, name=host.ctx.iface)
            if nic is None:
                w.add(Hop(host.name, nic_name, "nic", "underlay port not found in the kernel", note="missing"))
                return
            via = f" (port of OVS bridge {o.port_bridge[nic.name]})" if nic.name in o.port_bridge else ""
            w.add(Hop(host.name, nic.name, "nic", f"underlay NIC{via}: {e.get('type')} to {e.get('remote')}",
                      expect="tx", counter=(host.view.key, nic.name)))
            w.remote(host, pkt)
            return
        outs = [p for p in t.dp_outputs if p != port_name]
        if not outs:
            w.add(Hop(host.name, br, "ovs", "no output port", note="dropped"))
            return
        for out in outs[:1]:
            link = link_by(host.view, name=out)
            c = w.container_on_port(host, out)
            if link is not None and c is not None:
                w.deliver(host, link, c)
            elif link is not None:
                # an OVS internal port or a port into a Linux bridge: back to the kernel
                w.add(Hop(host.name, out, "ovs", f"output to {out}", expect="tx",
                          counter=(f"ovs:{host.name}", f"{o.port_bridge.get(out, br)}:{out}")))
                w.ingress(host, link, pkt)
            else:
                w.add(Hop(host.name, out, "ovs", f"output to {out} (no kernel device)"))


def make_tracer(hosts: dict[str, HostSide], host_netns: dict[str, str | None]) -> OvsTracer | None:
    """The OVS step when any host runs an OVS backend (and OVS tools exist), else None."""
    import shutil

    if not any(str(h.ctx.backend).startswith("ovs") for h in hosts.values()):
        return None
    if not shutil.which("ovs-appctl"):
        return None
    return OvsTracer(hosts)


__all__ = [
    "OvsHost",
    "OvsTracer",
    "datapath_outputs",
    "find_rundir",
    "rundir_problem",
    "kernel_encap",
    "make_tracer",
    "parse_dump_ports",
    "parse_oftrace",
    "parse_set_tunnel",
    "parse_tnl_push",
]
