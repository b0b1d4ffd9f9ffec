"""The walk: `Walker` builds the hop list by following the kernel's own decisions,
device by device (veth, bridge, routing, vxlan, WireGuard, OVS through a pluggable
tracer, NIC, peer host)."""

from __future__ import annotations

import time
from typing import Any, Callable

from crossnet.errors import CrossnetError
from crossnet.netlink.const import (
    NUD_FAILED,
    NUD_PERMANENT,
    RTN_LOCAL,
)
from crossnet.trace.model import (
    MAX_HOPS,
    OVS_KINDS,
    RTN_NAMES,
    ZERO_MAC,
    Endpoint,
    Hop,
    HostSide,
    Link,
    Neigh,
    Packet,
    View,
    fmt_route,
    link_by,
    matching_route,
    nud_name,
)
from crossnet.trace.views import wireguard_device, wireguard_peer


class Walker:
    """Builds the hop list by following the kernel's decisions, device by device."""

    def __init__(self, src: Endpoint, dst: Endpoint, hosts: dict[str, HostSide],
                 container_views: dict[str, View], ovs_tracer: Any = None):
        self.src = src
        self.dst = dst
        self.hosts = hosts
        self.cviews = container_views
        self.hops: list[Hop] = []
        self.complete = False
        self.tunnel: str | None = None
        self.warnings: list[str] = []
        self.ovs = ovs_tracer
        self.handoff: str | None = None  # where the walk left the hosts visible here
        self._steps = 0

    # -- helpers ----------------------------------------------------------------------------
    def add(self, hop: Hop) -> Hop:
        self.hops.append(hop)
        return hop

    def _budget(self) -> bool:
        self._steps += 1
        if self._steps > MAX_HOPS:
            self.warnings.append(f"stopped after {MAX_HOPS} steps (forwarding loop?)")
            return False
        return True

    @staticmethod
    def _devname(view: View) -> Callable[[int | None], str]:
        def name(idx: int | None) -> str:
            link = link_by(view, index=idx) if idx else None
            return link.name if link else f"if{idx}"

        return name

    def host_of_address(self, ip: str) -> HostSide | None:
        """The host whose underlay address (or any address) is `ip`."""
        for h in self.hosts.values():
            if str(h.ctx.address) == ip:
                return h
        for h in self.hosts.values():
            for link in h.view.links():
                if any(a.split("/")[0] == ip for a in link.addresses):
                    return h
        return None

    @staticmethod
    def _peer_of_gateway(host: HostSide, ip: str | None) -> Any:
        if not ip:
            return None
        for p in host.ctx.peers:
            try:
                if p.subnet.num_addresses > 2 and str(next(p.subnet.hosts())) == ip:
                    return p
            except (AttributeError, StopIteration):
                continue
        return None

    def _is_peer_gateway(self, host: HostSide, ip: str) -> bool:
        return self._peer_of_gateway(host, ip) is not None

    def _peer_gateway_mac(self, host: HostSide, ip: str | None) -> str | None:
        """The MAC of a peer's container gateway when the backend derives it (`gw_mac`)."""
        peer = self._peer_of_gateway(host, ip)
        if peer is None or host.backend is None:
            return None
        mac = host.backend.gw_mac(host.ctx, peer)
        return mac.lower() if mac else None

    def container_on_port(self, host: HostSide, port: str) -> Endpoint | None:
        return next((c for c in host.containers if c.host_if == port), None)

    def _nic(self, host: HostSide) -> str:
        return host.ctx.iface

    # -- the walk ---------------------------------------------------------------------------
    def run(self) -> list[Hop]:
        src_host = self.hosts.get(self.src.host or "")
        cview = self.cviews.get(self.src.id)
        if src_host is None or cview is None:
            raise CrossnetError(f"trace: cannot read the namespaces of {self.src.id}")
        pkt = Packet(src=self.src.address, dst=self.dst.address)
        r = cview.route_get(pkt.dst)
        if r is None or r.type not in (1, RTN_LOCAL):
            what = "no route" if r is None else RTN_NAMES.get(r.type, str(r.type))
            self.add(Hop(src_host.name, None, "route", f"{what} to {pkt.dst} in {self.src.id}", netns=self.src.id,
                         note="the container cannot send to this address"))
            return self.hops
        if r.type == RTN_LOCAL:
            self.add(Hop(src_host.name, "lo", "route", f"{pkt.dst} is the container's own address", netns=self.src.id))
            self.complete = True
            return self.hops
        entry = matching_route(cview.routes(), pkt.dst, r)
        out = link_by(cview, index=r.oif)
        nh = r.gateway or pkt.dst
        n = cview.neigh(nh, r.oif) if r.oif else None
        pkt.nexthop, pkt.mac = nh, (n.mac.lower() if n and n.mac else None)
        pkt.smac = (out.mac.lower() if out and out.mac else None) or (self.src.mac.lower() if self.src.mac else None)
        self.add(Hop(src_host.name, out.name if out else None, "route",
                     f"route {fmt_route(entry, self._devname(cview))}; " + self._neigh_text(nh, n),
                     netns=self.src.id))
        host_if = self.src.host_if
        self.add(Hop(src_host.name, out.name if out else self.src.ifname, "veth",
                     f"container side of the veth, peer {host_if or '?'} on {src_host.name}",
                     netns=self.src.id, expect="tx", counter=(cview.key, out.name if out else self.src.ifname)))
        hl = link_by(src_host.view, name=host_if) if host_if else None
        if hl is None:
            self.add(Hop(src_host.name, host_if, "veth", "host side of the veth not found on the host",
                         note="container not attached (run crossnet attach)"))
            return self.hops
        master = link_by(src_host.view, index=hl.master) if hl.master else None
        ovs_br = self.ovs.bridge_of(src_host, hl.name) if self.ovs is not None and master is None else None
        where = (f"port of {master.kind or 'device'} {master.name}" if master
                 else f"port of OVS bridge {ovs_br}" if ovs_br else "no master")
        self.add(Hop(src_host.name, hl.name, "veth", f"host side of {self.src.id}'s veth ({where})",
                     expect="rx", counter=(src_host.view.key, hl.name)))
        self.ingress(src_host, hl, pkt)
        return self.hops

    @staticmethod
    def _neigh_text(ip: str, n: Neigh | None) -> str:
        if n is None or not n.mac or n.state & NUD_FAILED:
            state = nud_name(n.state) if n else "no entry"
            return f"neighbour {ip}: not resolved ({state}; the first packet sends ARP)"
        return f"neighbour {ip} lladdr {n.mac.lower()} {nud_name(n.state)}"

    def ingress(self, host: HostSide, link: Link, pkt: Packet) -> None:
        """A frame arrived on `link` in `host`: bridge port, OVS port, or routed."""
        if not self._budget():
            return
        if link.master:
            master = link_by(host.view, index=link.master)
            if master is not None and master.kind == "bridge":
                self.bridge(host, master, pkt, from_port=link)
                return
            if master is not None and master.kind == "openvswitch":  # kernel datapath (ovs-system)
                self.ovs_step(host, link.name, pkt)
                return
        if self.ovs is not None and self.ovs.owns_port(host, link.name):
            self.ovs_step(host, link.name, pkt)
            return
        self.route(host, link, pkt)

    def bridge(self, host: HostSide, br: Link, pkt: Packet, from_port: Link | None) -> None:
        """A Linux bridge forwards by destination MAC: own address -> up to routing."""
        v = host.view
        local_ips = {a.split("/")[0] for a in br.addresses}
        predicted = None
        if pkt.mac is None:
            # neighbour not resolved yet: a container crossnet attached here has a known MAC
            known = next((c for c in host.containers if c.address == (pkt.nexthop or pkt.dst) and c.mac), None)
            if known is not None:
                pkt.mac = predicted = known.mac.lower()
            else:  # a peer's gateway whose MAC the backend derives (ovs: gw_mac)
                predicted = self._peer_gateway_mac(host, pkt.nexthop or pkt.dst)
                pkt.mac = predicted
        mac = pkt.mac
        entry = None
        if mac:
            entry = next((e for e in v.fdb() if e.master == br.index and e.mac == mac), None)
        is_local = (mac is not None and br.mac is not None and mac == br.mac.lower()) or (
            entry is not None and entry.state & NUD_PERMANENT and from_port is not None) or (
            mac is None and pkt.nexthop in local_ips)
        if from_port is not None and is_local:
            why = f"fdb {mac} is {br.name}'s own address" if mac else f"next hop {pkt.nexthop} is {br.name}'s address"
            self.add(Hop(host.name, br.name, "bridge", f"{why} → delivered to the host, routed",
                         expect="rx", counter=(v.key, br.name)))
            self.route(host, br, pkt)
            return
        if from_port is not None:
            prefix = ""
        elif predicted:
            prefix = (f"neighbour {pkt.nexthop or pkt.dst}: not resolved yet (ARP on the first packet); "
                      f"its MAC per crossnet is {predicted}; ")
        else:
            prefix = self._neigh_text(pkt.nexthop or pkt.dst, Neigh(pkt.nexthop or pkt.dst, mac, 0x02) if mac
                                      else None) + "; "
        expect = None if from_port is not None else "tx"  # forwarded frames do not count on the bridge device
        counter = (v.key, br.name) if expect else None
        if entry is None:
            ports = [link for link in v.links() if link.master == br.index and link is not from_port]
            text = f"{prefix}no fdb entry for {mac or 'the next hop'}: flooded to {len(ports)} port(s)"
            # where the destination is, when crossnet knows: a local container's port, else the NIC
            target = next((c for c in host.containers if (mac and c.mac and c.mac.lower() == mac)
                           or c.address == (pkt.nexthop or pkt.dst)), None)
            port = next((p for p in ports if target is not None and p.name == target.host_if), None)
            if port is None and pkt.nexthop and self._is_peer_gateway(host, pkt.nexthop):
                # towards a peer: the port into the tunnel (an OVS port or a vxlan device)
                port = next((p for p in ports if p.kind in OVS_KINDS or p.kind == "vxlan"), None)
            if port is None:
                port = next((p for p in ports if p.name == self._nic(host)), None)
            if port is not None:
                text += f", among them {port.name}"
            self.add(Hop(host.name, br.name, "bridge", text, expect=expect, counter=counter,
                         note="destination MAC not learned yet (learned from the first reply)"))
            if port is not None:
                self.egress_port(host, port, pkt)
            return
        port = link_by(v, index=entry.ifindex)
        self.add(Hop(host.name, br.name, "bridge", f"{prefix}fdb {mac} → port {port.name if port else entry.ifindex}",
                     expect=expect, counter=counter))
        if port is not None:
            self.egress_port(host, port, pkt)

    def egress_port(self, host: HostSide, port: Link, pkt: Packet) -> None:
        if not self._budget():
            return
        if port.kind == "vxlan":
            self.vxlan(host, port, pkt)
            return
        if port.kind in OVS_KINDS or (self.ovs is not None and self.ovs.owns_port(host, port.name)):
            self.ovs_step(host, port.name, pkt)
            return
        if port.name == self._nic(host):
            self.nic_out(host, port, pkt, plain=True)
            return
        c = self.container_on_port(host, port.name)
        if port.kind == "veth" and c is not None:
            self.deliver(host, port, c)
            return
        # a veth of something crossnet does not know, or another port
        self.add(Hop(host.name, port.name, "veth" if port.kind == "veth" else "nic", f"out of {port.name}",
                     expect="tx", counter=(host.view.key, port.name), note="not a port crossnet knows"))

    def deliver(self, host: HostSide, port: Link, c: Endpoint) -> None:
        self.add(Hop(host.name, port.name, "veth", f"host side of {c.id}'s veth", expect="tx",
                     counter=(host.view.key, port.name)))
        cview = self.cviews.get(c.id)
        if cview is not None:
            self.add(Hop(host.name, c.ifname, "veth", f"{c.id} receives ({c.address})", netns=c.id, expect="rx",
                         counter=(cview.key, c.ifname)))
        if c.address == self.dst.address:
            self.complete = True

    def route(self, host: HostSide, iif: Link, pkt: Packet) -> None:
        """IP forwarding in a host namespace (input route lookup on `iif`)."""
        if not self._budget():
            return
        v = host.view
        r = v.route_get(pkt.dst, iif=iif.index, src=pkt.src)
        note = None
        if r is None:
            r = v.route_get(pkt.dst)
            note = f"input route lookup from {iif.name} failed (rp_filter?); output lookup shown"
        if r is None or r.type not in (1, RTN_LOCAL):
            what = "no route" if r is None else RTN_NAMES.get(r.type, str(r.type))
            self.add(Hop(host.name, iif.name, "route", f"{what} to {pkt.dst} on {host.name}", note=note or "dropped"))
            return
        if r.type == RTN_LOCAL:
            owner = next((link for link in v.links() if any(a.split("/")[0] == pkt.dst for a in link.addresses)),
                         None) or (link_by(v, index=r.oif) if r.oif else None)
            self.add(Hop(host.name, owner.name if owner else None, "route",
                         f"local: {pkt.dst} is an address of {host.name} (delivered to the host)", note=note))
            if pkt.dst == self.dst.address:
                self.complete = True
            return
        entry = matching_route(v.routes(), pkt.dst, r)
        out = link_by(v, index=r.oif)
        nh = r.gateway or pkt.dst
        self.add(Hop(host.name, out.name if out else None, "route", f"route {fmt_route(entry, self._devname(v))}",
                     note=note))
        if out is None:
            return
        pkt.nexthop = nh
        pkt.smac = out.mac.lower() if out.mac else pkt.smac
        if out.kind == "bridge":
            n = v.neigh(nh, out.index)
            pkt.mac = n.mac.lower() if n and n.mac else None
            self.bridge(host, out, pkt, from_port=None)
        elif out.kind == "vxlan":
            self.vxlan(host, out, pkt)
        elif self._is_wireguard(host, out):
            self.wireguard(host, out, pkt)
        elif out.kind in OVS_KINDS or (self.ovs is not None and self.ovs.owns_port(host, out.name)):
            n = v.neigh(nh, out.index)
            pkt.mac = n.mac.lower() if n and n.mac else None
            self.ovs_step(host, out.name, pkt)
        elif out.kind == "veth" and self.container_on_port(host, out.name) is not None:
            # datapath ebpf: a /32 route straight to a container's routed veth (docs/datapath.md)
            self.deliver(host, out, self.container_on_port(host, out.name))
        else:
            n = v.neigh(nh, out.index)
            pkt.mac = n.mac.lower() if n and n.mac else None
            self.nic_out(host, out, pkt, plain=True, neigh=(nh, n))

    def vxlan(self, host: HostSide, dev: Link, pkt: Packet) -> None:
        v = host.view
        parts = []
        if pkt.mac is None or dev.master is None:
            n = v.neigh(pkt.nexthop or pkt.dst, dev.index)
            if dev.master is None:  # routed into the device: the neighbour entry gives the VTEP MAC
                pkt.mac = n.mac.lower() if n and n.mac else None
                parts.append(self._neigh_text(pkt.nexthop or pkt.dst, n))
        entries = [e for e in v.fdb() if e.ifindex == dev.index and e.master is None and e.dst]
        hit = [e for e in entries if e.mac == pkt.mac] or [e for e in entries if e.mac == ZERO_MAC]
        vni = dev.info.get("IFLA_VXLAN_ID")
        port = dev.info.get("IFLA_VXLAN_PORT") or 4789
        local = dev.info.get("IFLA_VXLAN_LOCAL")
        self.tunnel = self.tunnel or dev.name
        if not hit:
            parts.append(f"no fdb entry for {pkt.mac or 'the destination'}: nowhere to send it")
            self.add(Hop(host.name, dev.name, "vxlan", "; ".join(parts), expect="tx", counter=(v.key, dev.name),
                         note="dropped: missing FDB entry"))
            return
        remote = hit[0].dst
        default = hit[0].mac == ZERO_MAC
        parts.append(f"fdb {'00:00:00:00:00:00 (default)' if default else hit[0].mac} dst {remote}"
                     + (f" (+{len(hit) - 1} more)" if len(hit) > 1 else ""))
        parts.append(f"encap vxlan vni {vni} → {remote}:{port}")
        self.add(Hop(host.name, dev.name, "vxlan", "; ".join(parts), expect="tx", counter=(v.key, dev.name)))
        pkt.encap = {"type": "vxlan", "vni": vni, "port": port, "remote": remote, "local": local, "device": dev.name}
        self.underlay(host, remote, pkt, lower=dev.info.get("IFLA_VXLAN_LINK"))

    @staticmethod
    def _is_wireguard(host: HostSide, link: Link) -> bool:
        return link.kind == "wireguard" or link.name == wireguard_device(host)

    def wireguard(self, host: HostSide, dev: Link, pkt: Packet) -> None:
        """Routed into a WireGuard device: the peer whose allowed IPs hold the destination
        (read from the device: UAPI `get=1` or the kernel), its endpoint, counters."""
        peer, st = wireguard_peer(host, dev, pkt.dst)
        self.tunnel = self.tunnel or dev.name
        if peer is None:
            why = "device not readable" if st is None else f"no peer's allowed-ips hold {pkt.dst}"
            self.add(Hop(host.name, dev.name, "wireguard", f"{why}: WireGuard drops it", expect="tx",
                         counter=(host.view.key, dev.name), note="dropped: no WireGuard peer"))
            return
        name = next((p.name for p in host.ctx.peers if p.data.get("wireguard_key") == peer.public_key), "?")
        age = f"{time.time() - peer.last_handshake:.0f}s ago" if peer.last_handshake else "never"
        remote, _, port = (peer.endpoint or "?:0").rpartition(":")
        self.add(Hop(host.name, dev.name, "wireguard",
                     f"peer {name} ({peer.public_key[:8]}…) allowed-ips {','.join(peer.allowed_ips)}; "
                     f"encrypt → {peer.endpoint}; last handshake {age}; rx {peer.rx_bytes} B tx {peer.tx_bytes} B",
                     expect="tx", counter=(host.view.key, dev.name),
                     extra={"transport": "wireguard", "peer": name, "public_key": peer.public_key,
                            "endpoint": peer.endpoint, "rx_bytes": peer.rx_bytes, "tx_bytes": peer.tx_bytes,
                            "last_handshake": peer.last_handshake}))
        pkt.encap = {"type": "wireguard", "port": int(port or 0), "remote": remote,
                     "local": str(host.ctx.address), "device": dev.name}
        self.underlay(host, remote, pkt)

    def underlay(self, host: HostSide, remote: str, pkt: Packet, lower: int | None = None) -> None:
        """Encapsulated packet to `remote`: underlay route and NIC."""
        v = host.view
        r = v.route_get(remote)
        if r is None or r.oif is None:
            self.add(Hop(host.name, None, "route", f"no underlay route to {remote}", note="dropped"))
            return
        entry = matching_route(v.routes(), remote, r)
        out = link_by(v, index=r.oif)
        nh = r.gateway or remote
        n = v.neigh(nh, r.oif)
        pkt.outer_dst = remote
        detail = f"underlay route {fmt_route(entry, self._devname(v))}; {self._neigh_text(nh, n)}"
        if out is not None and out.kind == "bridge" and out.name != self._nic(host):
            # the underlay address lives on a bridge (bridge backend: br0 holds the NIC)
            self.add(Hop(host.name, out.name, "bridge", detail, expect="tx", counter=(v.key, out.name)))
            nic = link_by(v, name=self._nic(host))
            if nic is not None:
                self.nic_out(host, nic, pkt, plain=False)
            return
        self.add(Hop(host.name, out.name if out else None, "route", detail))
        if out is not None:
            self.nic_out(host, out, pkt, plain=False)

    def nic_out(self, host: HostSide, nic: Link, pkt: Packet, plain: bool,
                neigh: tuple[str, Neigh | None] | None = None) -> None:
        if plain:
            pkt.outer_dst = pkt.nexthop
            what = f"plain IP, no tunnel: {pkt.src} → {pkt.dst}"
            if neigh is not None:
                what += f"; {self._neigh_text(*neigh)}"
        else:
            e = pkt.encap or {}
            what = f"{e.get('type', 'encapsulated')} to {pkt.outer_dst}" + (
                f" udp/{e['port']}" if e.get("type") in ("vxlan", "wireguard") else "")
        self.add(Hop(host.name, nic.name, "nic", f"underlay NIC: {what}", expect="tx", counter=(host.view.key, nic.name)))
        self.remote(host, pkt)

    def remote(self, host: HostSide, pkt: Packet) -> None:
        """Continue on the host that receives the packet from the underlay."""
        target = None
        if pkt.encap and pkt.encap.get("remote"):
            target = self.host_of_address(pkt.encap["remote"])
        elif pkt.outer_dst:
            target = self.host_of_address(pkt.outer_dst)
        if target is None and self.dst.host and self.dst.host in self.hosts and self.dst.host != host.name:
            target = self.hosts[self.dst.host]
        if target is None or target is host:
            where = pkt.encap.get("remote") if pkt.encap else (pkt.outer_dst or pkt.dst)
            self.handoff = self.dst.host or where
            if self.dst.host and self.dst.host != host.name:
                self.add(Hop(self.dst.host, None, "nic",
                             f"continues on {self.dst.host} ({where}); its kernel state is not visible here",
                             note="follow it with --peer-state-dir/--peer-netns, or `crossnet lab trace`"))
            else:
                self.add(Hop(host.name, None, "nic", f"leaves {host.name} towards {where} (outside the hosts known here)"))
            return
        nic = link_by(target.view, name=self._nic(target))
        if nic is None:
            self.add(Hop(target.name, target.ctx.iface, "nic", "underlay NIC not found", note="missing"))
            return
        e = pkt.encap or {}
        how = f"{e['type']} from {e.get('local') or self.hosts[self.src.host].ctx.address}" if e else "plain IP"
        self.add(Hop(target.name, nic.name, "nic", f"underlay NIC receives: {how}", expect="rx",
                     counter=(target.view.key, nic.name)))
        dev = None
        if e.get("type") == "vxlan":
            dev = next((link for link in target.view.links() if link.kind == "vxlan"
                        and link.info.get("IFLA_VXLAN_ID") == e.get("vni")
                        and (link.info.get("IFLA_VXLAN_PORT") or 4789) == (e.get("port") or 4789)), None)
        if e and dev is None and self.ovs is not None and (self.ovs.owns_port(target, nic.name)
                                                            or not e.get("device")):
            self.ovs.ingress(self, target, nic, pkt)
            return
        if e.get("type") == "wireguard":
            wdev = wireguard_device(target)
            wl = link_by(target.view, name=wdev) if wdev else None
            if wl is None:
                self.add(Hop(target.name, None, "wireguard", "no WireGuard device here",
                             note="dropped: nothing decrypts it"))
                return
            peer, _st = wireguard_peer(target, wl, pkt.src)
            who = f"peer {peer.endpoint} ({peer.public_key[:8]}…)" if peer else "an unknown peer"
            self.add(Hop(target.name, wl.name, "wireguard",
                         f"decrypt from {who}, source {pkt.src} checked against its allowed-ips",
                         expect="rx", counter=(target.view.key, wl.name),
                         extra={"transport": "wireguard", "rx_bytes": peer.rx_bytes if peer else None,
                                "tx_bytes": peer.tx_bytes if peer else None,
                                "last_handshake": peer.last_handshake if peer else None}))
            pkt.encap = None
            pkt.mac = None
            self.ingress(target, wl, pkt)
            return
        if e.get("type") == "vxlan":
            if dev is None:
                self.add(Hop(target.name, None, "vxlan", f"no vxlan device for vni {e.get('vni')} port {e.get('port')}",
                             note="dropped: nothing decapsulates it"))
                return
            self.add(Hop(target.name, dev.name, "vxlan", f"decap vxlan vni {e.get('vni')} (from {e.get('local')})",
                         expect="rx", counter=(target.view.key, dev.name)))
            pkt.encap = None
            pkt.mac = dev.mac.lower() if dev.mac and dev.master is None else pkt.mac
            self.ingress(target, dev, pkt)
            return
        if e:
            self.add(Hop(target.name, None, "nic", f"nothing here decapsulates {e.get('type')}",
                         note="dropped (no matching tunnel)"))
            return
        self.ingress(target, nic, pkt)

    def ovs_step(self, host: HostSide, port: str, pkt: Packet) -> None:
        if self.ovs is None:
            self.add(Hop(host.name, port, "ovs", f"{port} belongs to Open vSwitch; no OVS tracer available here",
                         note="cannot follow OVS (ovs-appctl missing or OVS not reachable)"))
            return
        self.ovs.egress(self, host, port, pkt)
