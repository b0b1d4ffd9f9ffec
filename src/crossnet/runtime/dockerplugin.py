"""`crossnet docker-plugin`: Docker's remote network driver and IPAM driver (legacy v1
plugin protocol: JSON over HTTP on a unix socket, found by dockerd at
/run/docker/plugins/crossnet.sock), so that::

    docker network create -d crossnet --ipam-driver crossnet crossnet
    docker run --network crossnet ...

puts containers on the cross-host network with addresses from this host's crossnet
subnet. The IPAM is crossnet's own (the AddressPool `crossnet attach` and crossnet-cni
use): a Docker endpoint is an IPAM entry keyed ``docker:<endpoint id prefix>`` (its
meta: endpoint, network, host-side veth, MAC, container name), listed by `crossnet
status`.

Protocol mapping:
- IpamDriver.RequestPool: this host's subnet (the network containers live in), only
  IPv4; without ``--subnet`` the pool 0.0.0.0/0 with crossnet's gateway in its data
  (libnetwork's route-overlap loop, docs/docker.md); RequestAddress: the gateway (crossnet's) or an allocation in the shared pool
  (``--ip``: that address, "address in use" when taken); ReleaseAddress releases it.
- NetworkDriver.CreateNetwork records the network (``<state-dir>/docker-networks.json``:
  survives plugin restarts); CreateEndpoint binds the endpoint to the allocated address;
  Join creates the veth pair in the host namespace (host side on crossnet's bridge via
  the backend, MTU of the backend) and hands Docker the peer (SrcName), which Docker
  moves into the container and configures; DeleteEndpoint marks the veth retired (its
  alias) and the plugin's writer thread deletes it right after the answer (a plugin
  killed in between: its next start removes the marked veths); the IPAM entry, with its
  endpoint binding, goes with ReleaseAddress. Every handler is idempotent.
- Errors: ``{"Err": "one line"}`` (the IPAM protocol's key is ``Error``); no subnet
  yet: "run crossnet apply/launch first".

Every request is validated (crossnet runs as root; the socket is root-only): ids are
hex/alnum of bounded length, addresses parse and lie in this host's subnet, the body is a
bounded JSON object.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from crossnet.errors import ConfigError, CrossnetError, IpamError

DEFAULT_SOCKET = "/run/docker/plugins/crossnet.sock"
CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
ADDRESS_SPACE = "crossnet"
GATEWAY_TYPE = "com.docker.network.gateway"
KEY_PREFIX = "docker:"
MAX_BODY = 64 * 1024
_ID = re.compile(r"[A-Za-z0-9]{1,128}")
ANY_POOL = "0.0.0.0/0"  # RequestPool's answer without --subnet (see request_pool)
GATEWAY_LABEL = "com.docker.network.gateway"  # libnetwork's netlabel.Gateway in a pool's data
TIMINGS_PATH = "/crossnet.Timings"  # not Docker's: per-request handler times (crossnet bench docker-run)
NOT_READY = "this host has no crossnet subnet yet: run crossnet apply/launch first"
RETIRED_ALIAS = "crossnet:docker-retired"  # a deleted endpoint's host veth, removed after the answer


class PluginError(Exception):
    """Answered as {"Err": message}."""


class Kernel(Protocol):
    """What the driver does to the host (real: NetlinkKernel; unit tests: a fake)."""

    def create_veth(self, ctx: Any, backend: Any, host_if: str, peer: str, mac: str) -> None: ...

    def create_routed_veth(self, ctx: Any, host_if: str, peer: str, mac: str, address: str) -> None: ...

    def delete_veth(self, ctx: Any, backend: Any, host_if: str) -> bool: ...

    def retire_veth(self, ctx: Any, backend: Any, host_if: str) -> Any: ...

    def reap_veth(self, token: Any) -> None: ...


def _id(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise PluginError(f"{field}: expected an id (letters and digits, 1-128), got {str(value)[:40]!r}")
    return value


def _obj(body: dict[str, Any], field: str) -> dict[str, Any]:
    value = body.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PluginError(f"{field}: expected an object")
    return value


def _str(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 256:
        raise PluginError(f"{field}: expected a string")
    return value


class DockerPlugin:
    """The protocol's handlers; `context()` gives (HostContext, Backend, AddressPool) or
    raises CrossnetError when the host is not configured."""

    def __init__(self, context: Callable[[], tuple[Any, Any, Any]], kernel: Kernel, networks_path: str,
                 names: Callable[[str, str], None] | None = None):
        self._context = context
        self.kernel = kernel
        self.networks_path = networks_path
        self.names = names  # called (network id, endpoint id) after a Join: learn the container's name
        self._lock = threading.Lock()
        self._files = StatCache()
        self._deleted: dict[str, None] = {}  # endpoints deleted, entry not yet released (insertion order)
        # CreateEndpoint's binding (IPAM key -> (pool, meta)) until the writer thread has put
        # it in the IPAM file: the write (an fsync) is off the request path (flush())
        self._pending: dict[str, tuple[Any, dict[str, Any]]] = {}
        self._reap: list[Any] = []  # DeleteEndpoint's retired veths (retire_veth's tokens): the writer deletes them
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self.timings: dict[str, list[float]] = {}  # path -> [count, total seconds] (GET /crossnet.Timings)
        self.routes: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "/Plugin.Activate": lambda _b: {"Implements": ["NetworkDriver", "IpamDriver"]},
            "/NetworkDriver.GetCapabilities": lambda _b: {"Scope": "local", "ConnectivityScope": "global"},
            "/NetworkDriver.CreateNetwork": self.create_network,
            "/NetworkDriver.DeleteNetwork": self.delete_network,
            "/NetworkDriver.CreateEndpoint": self.create_endpoint,
            "/NetworkDriver.EndpointOperInfo": self.endpoint_oper_info,
            "/NetworkDriver.DeleteEndpoint": self.delete_endpoint,
            "/NetworkDriver.Join": self.join,
            "/NetworkDriver.Leave": self.leave,
            "/NetworkDriver.DiscoverNew": lambda _b: {},
            "/NetworkDriver.DiscoverDelete": lambda _b: {},
            "/NetworkDriver.ProgramExternalConnectivity": lambda _b: {},
            "/NetworkDriver.RevokeExternalConnectivity": lambda _b: {},
            "/IpamDriver.GetCapabilities": lambda _b: {"RequiresMACAddress": False, "RequiresRequestReplay": False},
            "/IpamDriver.GetDefaultAddressSpaces": lambda _b: {"LocalDefaultAddressSpace": ADDRESS_SPACE,
                                                                "GlobalDefaultAddressSpace": ADDRESS_SPACE},
            "/IpamDriver.RequestPool": self.request_pool,
            "/IpamDriver.ReleasePool": self.release_pool,
            "/IpamDriver.RequestAddress": self.request_address,
            "/IpamDriver.ReleaseAddress": self.release_address,
        }

    # ---- dispatch -----------------------------------------------------------------------
    def handle(self, path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON answer) for one request. Errors: {"Err": "one line"} (the
        IPAM protocol spells it {"Error": ...})."""
        err_key = "Error" if path.startswith("/IpamDriver.") else "Err"
        if path == TIMINGS_PATH:
            return 200, self.timing_report()
        fn = self.routes.get(path)
        if fn is None:
            return 404, {err_key: f"unknown endpoint {_one_line(path)[:80]!r}"}
        try:
            if len(raw) > MAX_BODY:
                raise PluginError(f"request body larger than {MAX_BODY} bytes")
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                raise PluginError("request body is not JSON") from None
            if body is None:
                body = {}
            if not isinstance(body, dict):
                raise PluginError("request body must be a JSON object")
            with self._lock:
                t0 = time.monotonic()
                try:
                    return 200, fn(body)
                finally:
                    t = self.timings.setdefault(path, [0, 0.0])
                    t[0] += 1
                    t[1] += time.monotonic() - t0
        except (PluginError, CrossnetError) as exc:
            return 200, {err_key: _one_line(str(exc))}
        except Exception as exc:  # noqa: BLE001 - Docker gets one line, the plugin keeps serving
            return 200, {err_key: _one_line(f"crossnet: {type(exc).__name__}: {exc}")}

    def timing_report(self) -> dict[str, Any]:
        """{path: {"n": requests, "mean_ms": handler time}} since the plugin started (the
        handler only: HTTP and JSON around it not included)."""
        with self._lock:
            return {p.lstrip("/"): {"n": int(n), "mean_ms": round(total / n * 1000, 3)}
                    for p, (n, total) in sorted(self.timings.items()) if n}

    def context(self) -> tuple[Any, Any, Any]:
        try:
            return self._context()
        except ConfigError:
            raise
        except CrossnetError:
            raise PluginError(NOT_READY) from None

    # ---- IPAM ---------------------------------------------------------------------------
    def _pool_id(self, pool: Any) -> str:
        return f"{ADDRESS_SPACE}/{pool.subnet}"

    def _check_pool_id(self, body: dict[str, Any], pool: Any) -> None:
        pid = _str(body, "PoolID")
        if pid != self._pool_id(pool) and pid.startswith(f"{ADDRESS_SPACE}/") and pid != f"{ADDRESS_SPACE}/{ANY_POOL}":
            raise PluginError(f"PoolID: this Docker network was made for subnet {pid.split('/', 1)[1][:40]}, but this "
                              f"host's crossnet subnet is now {pool.subnet}: remove the network once no container "
                              "uses it (docker network rm) and restart crossnet docker-plugin to recreate it")
        if pid != self._pool_id(pool):
            raise PluginError(f"PoolID: unknown pool {pid[:60]!r} (this host's crossnet pool is {self._pool_id(pool)})")

    def request_pool(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("V6"):
            raise PluginError("V6: crossnet hands out IPv4 addresses only")
        space = _str(body, "AddressSpace")
        if space not in ("", ADDRESS_SPACE):
            raise PluginError(f"AddressSpace: unknown address space {space[:40]!r} (use {ADDRESS_SPACE!r})")
        if _str(body, "SubPool"):
            raise PluginError("SubPool (--ip-range) is not supported: crossnet hands out this host's subnet")
        ctx, _backend, pool = self.context()
        want = _str(body, "Pool")
        if not want:
            # No --subnet: libnetwork (requestPoolHelper, local scope) releases and re-requests a
            # pool that overlaps a route of the host, forever, and this host's subnet always has
            # one (crossnet's bridge). It skips that check for the pool 0.0.0.0/0 (what Docker's
            # null IPAM answers) and takes the gateway from the pool's data: docs/docker.md
            return {"PoolID": self._pool_id(pool), "Pool": ANY_POOL,
                    "Data": {GATEWAY_LABEL: f"{ctx.gateway}/{pool.subnet.prefixlen}"}}
        try:
            net = ipaddress.IPv4Network(want)
        except ValueError:
            raise PluginError(f"Pool: {want[:60]!r} is not an IPv4 network") from None
        if net != pool.subnet and net != ctx.subnet:
            raise PluginError(f"Pool: {net} is not this host's crossnet subnet {ctx.subnet} (leave --subnet out)")
        return {"PoolID": self._pool_id(pool), "Pool": str(pool.subnet), "Data": {}}

    def release_pool(self, body: dict[str, Any]) -> dict[str, Any]:
        _str(body, "PoolID")
        return {}

    def request_address(self, body: dict[str, Any]) -> dict[str, Any]:
        ctx, _backend, pool = self.context()
        self._check_pool_id(body, pool)
        opts = _obj(body, "Options")
        want = _str(body, "Address")
        addr = None
        if want:
            try:
                addr = ipaddress.IPv4Address(want.split("/")[0])
            except ValueError:
                raise PluginError(f"Address: {want[:60]!r} is not an IPv4 address") from None
        plen = pool.subnet.prefixlen
        from crossnet import datapath

        cplen = 32 if datapath.routed(ctx) else plen  # routed (datapath ebpf): the container gets a /32
        if opts.get("RequestAddressType") == GATEWAY_TYPE:
            if addr is not None and addr != ctx.gateway:
                raise PluginError(f"Address: the gateway is crossnet's {ctx.gateway}, not {addr} (leave --gateway out)")
            return {"Address": f"{ctx.gateway}/{plen}", "Data": {}}
        if addr is not None and addr not in pool.usable:
            raise PluginError(f"Address: {addr} is outside this host's subnet {pool.usable}")
        try:
            # not durable over a power loss: the endpoint dies with the machine (Docker makes a new one)
            alloc = pool.allocate(f"{KEY_PREFIX}{secrets.token_hex(8)}", addr, meta={"docker": True}, durable=False)
        except IpamError as exc:
            if addr is not None and "already taken" in str(exc):
                raise PluginError(f"Address: {addr} is in use ({str(exc).split('by ')[-1]})") from None
            raise PluginError(str(exc)) from None
        return {"Address": f"{alloc.address}/{cplen}", "Data": {}}

    def release_address(self, body: dict[str, Any]) -> dict[str, Any]:
        ctx, _backend, pool = self.context()
        self._check_pool_id(body, pool)
        want = _str(body, "Address")
        try:
            addr = ipaddress.IPv4Address(want.split("/")[0])
        except ValueError:
            raise PluginError(f"Address: {want[:60]!r} is not an IPv4 address") from None
        if addr == ctx.gateway:
            return {}
        for key, alloc in self._entries(pool).items():
            if key.startswith(KEY_PREFIX) and alloc.address == addr:
                pool.release(key)
                pending = self._pending.pop(key, None)
                self._deleted.pop(alloc.meta.get("endpoint") or (pending[1].get("endpoint") if pending else None), None)
        return {}

    # ---- network driver -------------------------------------------------------------------
    def _networks(self) -> dict[str, Any]:
        return dict(self._files.get(self.networks_path, _read_networks))

    def _entries(self, pool: Any) -> dict[str, Any]:
        """pool.entries(), parsed again only when the IPAM file changed (read-only use:
        every change goes through the pool's own locked read-modify-write)."""
        return self._files.get(str(pool.path), lambda _p: pool.entries(), key=id(pool))

    def _save_networks(self, nets: dict[str, Any]) -> None:
        from pathlib import Path

        from crossnet.state import write_json_atomic

        write_json_atomic(Path(self.networks_path), {"version": 1, "networks": nets})

    def _network(self, body: dict[str, Any]) -> str:
        nid = _id(body, "NetworkID")
        if nid not in self._networks():
            raise PluginError(f"NetworkID: unknown network {nid[:12]} (not created with this plugin)")
        return nid

    def create_network(self, body: dict[str, Any]) -> dict[str, Any]:
        nid = _id(body, "NetworkID")
        ctx, _backend, pool = self.context()
        v4 = body.get("IPv4Data") or []
        if not isinstance(v4, list) or len(v4) != 1 or not isinstance(v4[0], dict):
            raise PluginError("IPv4Data: expected one IPv4 pool (create the network with --ipam-driver crossnet)")
        got = _str(v4[0], "Pool")
        if got == ANY_POOL:  # created without --subnet (request_pool): the gateway must be crossnet's
            gw = _str(v4[0], "Gateway")
            if gw != f"{ctx.gateway}/{pool.subnet.prefixlen}":
                raise PluginError(f"IPv4Data: gateway {gw[:40]!r} is not this host's crossnet gateway "
                                  f"{ctx.gateway}/{pool.subnet.prefixlen}")
        elif got != str(pool.subnet):
            raise PluginError(f"IPv4Data: pool {got[:40]!r} is not this host's crossnet subnet {pool.subnet} "
                              "(create the network with --ipam-driver crossnet)")
        if body.get("IPv6Data"):
            raise PluginError("IPv6Data: crossnet's network is IPv4 only")
        nets = self._networks()
        if nid not in nets:
            nets[nid] = {"subnet": str(pool.subnet), "gateway": str(ctx.gateway)}
            self._save_networks(nets)
        return {}

    def delete_network(self, body: dict[str, Any]) -> dict[str, Any]:
        nid = _id(body, "NetworkID")
        nets = self._networks()
        if nets.pop(nid, None) is not None:
            self._save_networks(nets)
        return {}

    def _endpoint(self, pool: Any, eid: str) -> tuple[str, Any] | None:
        import dataclasses

        entries = self._entries(pool)
        for key, (_pool, meta) in list(self._pending.items()):
            if meta.get("endpoint") == eid:
                if key not in entries:  # released meanwhile
                    return None
                return key, dataclasses.replace(entries[key], meta={**entries[key].meta, **meta})
        for key, alloc in entries.items():
            if key.startswith(KEY_PREFIX) and alloc.meta.get("endpoint") == eid and key not in self._pending:
                return key, alloc
        return None

    def flush(self) -> None:
        """Write the pending endpoint bindings to the IPAM file and delete the retired
        veths (the writer thread; at shutdown; tests). An entry released meanwhile is
        skipped."""
        with self._lock:
            items = dict(self._pending)
            reap, self._reap = self._reap, []
        for token in reap:
            try:
                self.kernel.reap_veth(token)
            except Exception as exc:  # noqa: BLE001 - still marked: the next plugin start removes it
                sys.stderr.write(f"crossnet docker-plugin: deleting a veth: {_one_line(str(exc))}\n")
        for key, (pool, meta) in items.items():
            with contextlib.suppress(IpamError):
                pool.update_meta(key, meta, durable=False)  # as the allocation (request_address)
        with self._lock:
            for key, item in items.items():
                if self._pending.get(key) is item:
                    del self._pending[key]

    def _write_soon(self) -> None:
        if self._writer is None:
            def run() -> None:
                while True:
                    self._wake.wait()
                    self._wake.clear()
                    try:
                        self.flush()
                    except Exception as exc:  # noqa: BLE001 - logged; the next binding retries all
                        sys.stderr.write(f"crossnet docker-plugin: writing endpoint bindings: {_one_line(str(exc))}\n")

            self._writer = threading.Thread(target=run, name="crossnet-docker-ipam", daemon=True)
            self._writer.start()
        self._wake.set()

    def create_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        from crossnet.containers import container_mac, host_ifname

        nid = self._network(body)
        eid = _id(body, "EndpointID")
        iface = _obj(body, "Interface")
        _ctx, _backend, pool = self.context()
        want = _str(iface, "Address")
        if not want:
            raise PluginError("Interface.Address: missing (create the network with --ipam-driver crossnet)")
        try:
            addr = ipaddress.IPv4Interface(want).ip
        except ValueError:
            raise PluginError(f"Interface.Address: {want[:60]!r} is not an IPv4 address") from None
        mac = _str(iface, "MacAddress")
        if mac and not re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", mac):
            raise PluginError(f"Interface.MacAddress: {mac[:40]!r} is not a MAC address")
        found = self._endpoint(pool, eid)
        if found is None:
            found = next(((k, a) for k, a in self._entries(pool).items()
                          if k.startswith(KEY_PREFIX) and a.address == addr and not a.meta.get("endpoint")
                          and k not in self._pending), None)
        if found is None or found[1].address != addr:
            raise PluginError(f"Interface.Address: {addr} was not handed out by crossnet's IPAM "
                              "(create the network with --ipam-driver crossnet)")
        key, alloc = found
        self._deleted.pop(eid, None)
        meta = {"endpoint": eid, "network": nid, "host_if": host_ifname(eid), "ifname": "eth0",
                "mac": mac.lower() or container_mac(addr)}
        if any(alloc.meta.get(k) != v for k, v in meta.items()):
            # written by the writer thread, not before the answer: a plugin killed before it
            # only loses the binding (Join of this endpoint fails; Delete/Release work without)
            self._pending[key] = (pool, meta)
            self._write_soon()
        return {} if mac else {"Interface": {"MacAddress": meta["mac"]}}

    def endpoint_oper_info(self, body: dict[str, Any]) -> dict[str, Any]:
        self._network(body)
        eid = _id(body, "EndpointID")
        _ctx, _backend, pool = self.context()
        found = self._endpoint(pool, eid)
        if found is None:
            return {"Value": {}}
        alloc = found[1]
        return {"Value": {"address": str(alloc.address), "host_if": alloc.meta.get("host_if"),
                          "name": alloc.meta.get("name")}}

    def join(self, body: dict[str, Any]) -> dict[str, Any]:
        from crossnet.containers import temp_ifname

        nid = self._network(body)
        eid = _id(body, "EndpointID")
        _str(body, "SandboxKey")
        ctx, backend, pool = self.context()
        found = self._endpoint(pool, eid)
        if found is None:
            raise PluginError(f"EndpointID: unknown endpoint {eid[:12]}")
        _key, alloc = found
        peer = temp_ifname(eid)
        from crossnet import datapath

        routed = datapath.routed(ctx)
        if routed:  # datapath ebpf: no bridge, a /32 route to the container via its host veth
            self.kernel.create_routed_veth(ctx, alloc.meta["host_if"], peer, alloc.meta["mac"], str(alloc.address))
        else:
            self.kernel.create_veth(ctx, backend, alloc.meta["host_if"], peer, alloc.meta["mac"])
        if self.names is not None:
            self.names(nid, eid)
        return {"InterfaceName": {"SrcName": peer, "DstPrefix": "eth"}, **join_routes(ctx, routed),
                "DisableGatewayService": False}

    def leave(self, body: dict[str, Any]) -> dict[str, Any]:
        self._network(body)
        _id(body, "EndpointID")
        return {}  # the veth goes with DeleteEndpoint (or with the container's namespace)

    def delete_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        from crossnet.containers import host_ifname, recorded_host_if

        _id(body, "NetworkID")  # also for a network deleted meanwhile: still remove the veth
        eid = _id(body, "EndpointID")
        ctx, backend, pool = self.context()
        found = self._endpoint(pool, eid)
        host_if = found[1].meta.get("host_if") if found else host_ifname(eid)
        if found is None and any(recorded_host_if(key, alloc) == host_if for key, alloc in self._entries(pool).items()):
            return {}  # no binding, and the veth of that name is another attachment's (crossnet-cni, attach)
        # the veth is marked (its alias) and the writer thread deletes it after the answer:
        # the kernel's deletion (an RCU barrier, ~15-30 ms) is off the request path; a
        # plugin killed before that leaves a marked veth, which the next start removes
        # (NetlinkKernel.sweep_retired). Backends without the fast path: deleted here.
        token = self.kernel.retire_veth(ctx, backend, host_if)
        if token is not None:
            self._reap.append(token)
            self._write_soon()
        # the entry (address and endpoint binding) stays until IPAM ReleaseAddress, which
        # follows: no IPAM write here (a second DeleteEndpoint finds no veth; idempotent)
        if found is not None:
            self._deleted[eid] = None
            while len(self._deleted) > 4096:
                del self._deleted[next(iter(self._deleted))]
        return {}

    def subnet_gateway(self) -> tuple[str, str]:
        """(this host's subnet, crossnet's gateway) for the network the plugin creates
        (crossnet.runtime.dockernet); CrossnetError while the host has none."""
        with self._lock:
            try:
                ctx, _backend, pool = self.context()
            except PluginError as exc:
                raise CrossnetError(str(exc)) from None
            return str(pool.subnet), str(ctx.gateway)

    def endpoint_exists(self, eid: str) -> bool:
        with self._lock:
            try:
                _ctx, _backend, pool = self.context()
            except PluginError:
                return False
            return eid not in self._deleted and self._endpoint(pool, eid) is not None

    def set_name(self, eid: str, name: str) -> None:
        """Record the container's name on its endpoint's IPAM entry (`crossnet status`)."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", name):
            return
        with self._lock:
            try:
                _ctx, _backend, pool = self.context()
            except PluginError:
                return
            found = self._endpoint(pool, eid)
            if found is not None and found[1].meta.get("name") != name:
                pool.update_meta(found[0], {"name": name})


def join_routes(ctx: Any, routed: bool) -> dict[str, Any]:
    """Join's gateway and routes: crossnet's gateway on the bridge; routed (datapath
    ebpf, the container has a /32): the link-local gateway 169.254.1.1 with a connected
    (RouteType 1: ``dev eth0``) route to it, which libnetwork adds before the default
    route via the gateway (it looks that gateway's direct route up); the host veth
    answers its ARP (proxy ARP)."""
    from crossnet import datapath

    if not routed:
        return {"Gateway": str(ctx.gateway), "StaticRoutes": []}
    return {"Gateway": datapath.GATEWAY, "StaticRoutes": [{"Destination": f"{datapath.GATEWAY}/32", "RouteType": 1}]}


def _one_line(msg: str) -> str:
    return " ".join(msg.split())[:400] or "error"


def _read_networks(path: str) -> dict[str, Any]:
    from crossnet.state import read_json

    data = read_json(path) if os.path.exists(path) else None
    nets = (data or {}).get("networks") if isinstance(data, dict) else None
    return {k: v for k, v in (nets or {}).items() if isinstance(k, str) and _ID.fullmatch(k) and isinstance(v, dict)}


class StatCache:
    """What a loader made of a file, made again only when the file changed: its
    (inode, mtime, size) differ. crossnet replaces its state files by rename (a new
    inode), so a write by any process is seen; a missing file is not cached."""

    def __init__(self) -> None:
        self._items: dict[Any, tuple[tuple[int, int, int], Any]] = {}

    def get(self, path: str, load: Callable[[str], Any], key: Any = None) -> Any:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return load(path)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        hit = self._items.get((path, key))
        if hit is not None and hit[0] == stamp:
            return hit[1]
        value = load(path)
        self._items[(path, key)] = (stamp, value)
        return value


# ---- the real kernel ------------------------------------------------------------------------
class NetlinkKernel:
    """Join/DeleteEndpoint's kernel work. Backends that plug a port in as a plain bridge
    port (Backend.attach_port, all of today's) take the fast path: one warm raw
    rtnetlink socket (crossnet.netlink.raw), the veth pair created up, with its MTU,
    MAC and bridge master in one request; others go through pyroute2 and the backend."""

    def __init__(self) -> None:
        self._rtnl: Any = None
        self._reaper: Any = None  # reap_veth's socket
        self._reap_lock = threading.Lock()

    def _plain(self, backend: Any) -> bool:
        from crossnet.backends.base import Backend

        return (type(backend).attach_port is Backend.attach_port
                and type(backend).detach_port is Backend.detach_port)

    def _call(self, fn: Callable[[Any], Any]) -> Any:
        """fn(raw socket), on a fresh socket once more if the warm one failed (not for
        the kernel refusing a request: RtnlError)."""
        from crossnet.netlink import raw as nlraw

        for attempt in (0, 1):
            if self._rtnl is None:
                self._rtnl = nlraw.Rtnl()
            try:
                return fn(self._rtnl)
            except nlraw.RtnlError:
                raise
            except OSError:
                self._rtnl.sock.close()
                self._rtnl = None
                if attempt:
                    raise
        return None

    def create_veth(self, ctx: Any, backend: Any, host_if: str, peer: str, mac: str) -> None:
        if self._plain(backend):
            self._call(lambda r: _raw_create_veth(r, ctx, host_if, peer, mac))
            return
        from crossnet.containers import NotReady
        from crossnet.netlink import iproute as nl
        from crossnet.plan.env import Env

        with nl.open_ipr() as ipr:
            if nl.ifindex(ipr, ctx.bridge) is None:
                raise NotReady(f"the container bridge {ctx.bridge!r} does not exist: run crossnet apply/launch first")
            if nl.ifindex(ipr, host_if) is not None:  # a retried Join: start over with a fresh pair
                ipr.link("del", index=nl.ifindex(ipr, host_if))
            if nl.ifindex(ipr, peer) is not None:
                ipr.link("del", index=nl.ifindex(ipr, peer))
            ipr.link("add", ifname=host_if, kind="veth", mtu=ctx.mtu,
                     peer={"ifname": peer, "address": mac, "mtu": ctx.mtu})
            host_idx = nl.require_index(ipr, host_if)
            backend.attach_port(ctx, Env(ipr), host_if)
            ipr.link("set", index=host_idx, state="up")

    def create_routed_veth(self, ctx: Any, host_if: str, peer: str, mac: str, address: str) -> None:
        """datapath ebpf's veth: no master, up, proxy ARP (the gateway 169.254.1.1), the
        /32 route to ``address`` via it, then the from-container program (crossnet.datapath)."""
        from crossnet import datapath
        from crossnet.ifname import check_ifname
        from crossnet.netlink import raw as nlraw

        check_ifname(host_if, "host_if")
        container = ipaddress.IPv4Address(address)

        def make(rtnl: Any) -> int:
            _raw_create_veth(rtnl, ctx, host_if, peer, mac, routed=True)
            index = rtnl.ifindex(host_if)
            if index is None:
                raise CrossnetError(f"{host_if} vanished during Join")
            with open(f"/proc/sys/net/ipv4/conf/{host_if}/proxy_arp", "w") as fh:
                fh.write("1\n")
            rtnl.call([nlraw.host_route(f"{container}/32", index)])
            return index

        index = self._call(make)  # the veth just made: its program without lookups
        self._call(lambda rtnl: datapath.container_attached(ctx, host_if, new=(rtnl, index, container)))

    def retire_veth(self, ctx: Any, backend: Any, host_if: str) -> int | None:
        """DeleteEndpoint's part on the request path: mark the host veth (RETIRED_ALIAS)
        and return its index for reap_veth (its peer, back in this namespace, is down:
        the bridge port carries nothing meanwhile). None when it is gone already, or
        deleted here: routed veths (their /32 route and program go at once, the address
        may come back at once) and backends without the fast path."""
        from crossnet import datapath
        from crossnet.netlink import raw as nlraw

        if datapath.routed(ctx) or not self._plain(backend):
            self.delete_veth(ctx, backend, host_if)
            return None

        def mark(rtnl: Any) -> int | None:
            index = rtnl.ifindex(host_if)
            if index is None:
                return None
            try:
                rtnl.call([nlraw.link_alias(index, RETIRED_ALIAS, host_if)])
            except nlraw.RtnlError as exc:
                if exc.errno == nlraw.ENODEV:
                    return None
                raise CrossnetError(str(exc.strerror)) from None
            return index

        return self._call(mark)

    def reap_veth(self, token: int) -> None:
        """Delete a retired veth by its index (the writer thread's own socket: never the
        request path's)."""
        from crossnet.netlink import raw as nlraw

        with self._reap_lock:
            if self._reaper is None:
                self._reaper = nlraw.Rtnl()
            try:
                self._reaper.call([nlraw.link_del_index(token, f"interface {token}")])
            except nlraw.RtnlError as exc:
                if exc.errno != nlraw.ENODEV:
                    raise CrossnetError(str(exc.strerror)) from None
            except OSError:
                self._reaper.sock.close()
                self._reaper = None
                raise

    def sweep_retired(self) -> list[str]:
        """Delete the veths a previous plugin retired but did not delete (killed in
        between): at start. Returns their names."""
        from crossnet.netlink import iproute as nl

        gone = []
        with nl.open_ipr() as ipr:
            for link in ipr.get_links():
                if link.get_attr("IFLA_IFALIAS") == RETIRED_ALIAS:
                    with contextlib.suppress(Exception):
                        ipr.link("del", index=link["index"])
                        gone.append(link.get_attr("IFLA_IFNAME"))
        return gone

    def delete_veth(self, ctx: Any, backend: Any, host_if: str) -> bool:
        from crossnet import datapath

        datapath.container_detached(ctx, host_if)  # routed: its program and map entry first
        if self._plain(backend) or datapath.routed(ctx):
            return bool(self._call(lambda r: _raw_delete(r, host_if)))
        from crossnet.containers import _remove_host_veth

        return _remove_host_veth(ctx, backend, host_if)


def _raw_delete(rtnl: Any, name: str) -> bool:
    """Delete interface ``name``: True if it was there."""
    from crossnet.netlink import raw as nlraw

    try:
        rtnl.call([nlraw.link_del(name)])
    except nlraw.RtnlError as exc:
        if exc.errno == nlraw.ENODEV:
            return False
        raise CrossnetError(str(exc.strerror)) from None
    return True


def _raw_create_veth(rtnl: Any, ctx: Any, host_if: str, peer: str, mac: str, routed: bool = False) -> None:
    import errno

    from crossnet.containers import NotReady
    from crossnet.netlink import raw as nlraw

    bridge = None if routed else rtnl.ifindex(ctx.bridge)
    if bridge is None and not routed:
        raise NotReady(f"the container bridge {ctx.bridge!r} does not exist: run crossnet apply/launch first")
    try:
        rtnl.call([nlraw.veth_create(host_if, ctx.mtu, None, bridge, peer, mac, None)])
        return
    except nlraw.RtnlError as exc:
        if exc.errno != errno.EEXIST:
            raise CrossnetError(str(exc.strerror)) from None
    _raw_delete(rtnl, host_if)  # a retried Join: start over with a fresh pair
    _raw_delete(rtnl, peer)
    try:
        rtnl.call([nlraw.veth_create(host_if, ctx.mtu, None, bridge, peer, mac, None)])
    except nlraw.RtnlError as exc:
        raise CrossnetError(str(exc.strerror)) from None


# ---- the server -----------------------------------------------------------------------------
def make_plugin(state_dir: str, docker_host: str | None = None) -> DockerPlugin:
    from crossnet.containers import pool_for
    from crossnet.host import load_context
    from crossnet.state import StateDir

    state = StateDir(state_dir)
    cache = StatCache()

    def load(_path: str) -> tuple[Any, Any, Any]:
        ctx, backend = load_context(state)
        return ctx, backend, pool_for(state, ctx)

    def context() -> tuple[Any, Any, Any]:  # read again only when applied.json changed
        return cache.get(str(state.applied_path), load)

    kernel = NetlinkKernel()
    try:
        kernel.sweep_retired()
    except Exception as exc:  # noqa: BLE001 - serving matters more; said once
        sys.stderr.write(f"crossnet docker-plugin: removing retired veths: {_one_line(str(exc))}\n")
    plugin = DockerPlugin(context, kernel, os.path.join(state_dir, "docker-networks.json"))
    if docker_host:
        plugin.names = lambda nid, eid: threading.Thread(
            target=_learn_name, args=(plugin, docker_host, nid, eid), daemon=True).start()
    return plugin


def _learn_name(plugin: DockerPlugin, socket_path: str, nid: str, eid: str, tries: int = 40) -> None:
    """After a Join: ask dockerd which container the endpoint belongs to (GET
    /networks/ID lists endpoints with container names once the join completed)."""
    from crossnet.runtime.engines import EngineClient

    client = EngineClient(socket_path, "docker")
    for i in range(tries):
        # not at once: a `docker run --rm` container is often gone by then, and dockerd is
        # not asked while it is still tearing it down (crossnet bench docker-run)
        time.sleep(0.5 if i == 0 else 0.25)
        if not plugin.endpoint_exists(eid):  # gone already (docker run --rm): nothing to name
            return
        try:
            status, data = client.request("GET", f"/networks/{nid}")
        except CrossnetError:
            continue
        if status != 200 or not isinstance(data, dict):
            continue
        for c in (data.get("Containers") or {}).values():
            if isinstance(c, dict) and c.get("EndpointID") == eid and isinstance(c.get("Name"), str):
                plugin.set_name(eid, c["Name"])
                return


def serve(plugin: DockerPlugin, socket_path: str, ready: Callable[[], None] | None = None,
          verbose: bool = False) -> None:
    """Serve the plugin on a unix socket until SIGTERM/SIGINT."""
    import signal
    import socketserver
    from http.server import BaseHTTPRequestHandler

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY:
                status, answer = 200, {"Err": f"request body larger than {MAX_BODY} bytes",
                                       "Error": f"request body larger than {MAX_BODY} bytes"}
                self.close_connection = True
            else:
                status, answer = plugin.handle(self.path, self.rfile.read(length))
            if verbose or "Err" in answer or "Error" in answer:
                sys.stderr.write(f"{self.path} -> {json.dumps(answer)[:300]}\n")
                sys.stderr.flush()
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST

        def log_message(self, fmt: str, *args: Any) -> None:
            pass

        def address_string(self) -> str:
            return "docker"

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    from crossnet import unixsock

    os.makedirs(os.path.dirname(socket_path) or ".", mode=0o755, exist_ok=True)
    # another process's socket is never taken over, a file that is not a socket never removed
    sock, mine = unixsock.bind_for("--socket", socket_path, "(another crossnet docker-plugin?); stop it first, "
                                   "or choose another --socket", backlog=Server.request_queue_size)
    server = Server(socket_path, Handler, bind_and_activate=False)
    unixsock.adopt(server, sock)

    def stop(_sig: int, _frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        if ready is not None:
            ready()
        server.serve_forever(poll_interval=0.5)
    finally:
        unixsock.release(socket_path, mine)  # before closing: only this server's socket, not a successor's
        server.server_close()
        plugin.flush()
