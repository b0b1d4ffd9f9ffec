"""Loading, pinning, attaching, counting and removing crossnet's tc eBPF programs
(docs/ebpf.md). The host part is reconciler resources (``host_resources``); the
per-container part is ``attach_container`` (``attach_new_veth`` for a veth just made) and
``forget_veth`` before the veth is deleted, called where the routed container veth is made
and removed (crossnet.datapath); ``detach_container`` undoes an attach on a veth that stays.

Pins live under ``/sys/fs/bpf/crossnet/<hash of the state directory>/`` (``progs/``,
``maps/``): lab hosts share one bpffs mount, and the hash keeps their programs apart.
The tc filters hold the programs, so traffic does not stop when crossnet exits or the
agent restarts; the pins let the next run find the programs and maps in place.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import ipaddress
import os
import re
import socket
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar

from pyroute2.netlink.exceptions import NetlinkError

from crossnet.ebpf import bpfsys, maps
from crossnet.errors import ApplyError, CrossnetError
from crossnet.ifname import check as check_ifname
from crossnet.netlink import iproute as nl
from crossnet.netlink import raw as nlraw
from crossnet.netlink.const import (
    ETH_P_ALL,
    NLMSG_HDRLEN,
    TC_EGRESS,
    TC_INGRESS,
    TCA_CHAIN,
    TCMSG_SIZE,
)
from crossnet.plan.env import Env
from crossnet.plan.resources import Resource

if TYPE_CHECKING:
    from crossnet.backends.base import HostContext

BPFTOOL = "bpftool"
BPFFS = Path("/sys/fs/bpf")
BASE = BPFFS / "crossnet"
BPF_FS_TYPE = "bpf"
TC_PREF = 1000  # crossnet's filter priority on an interface's clsact ingress
TC_HANDLE = 1
FILTER_PREFIX = "crossnet:"  # tc filter name: crossnet:<program>:<prog id>
_PIN_DIR = re.compile(r"^/sys/fs/bpf/crossnet/[0-9a-f]{16}/[0-9a-f]{16}$")


# ---------------------------------------------------------------- bpffs and pins


def host_dir(state_dir: str) -> Path:
    """The bpffs directory of the host whose state directory is state_dir."""
    digest = hashlib.sha256(os.path.realpath(state_dir or "/var/lib/crossnet").encode()).hexdigest()[:16]
    return BASE / digest


def pin_dir(state_dir: str, obj: str | Path) -> str:
    """Where the programs of object obj are pinned for that host: one subdirectory per
    object content, so a new object (upgrade) is a new set of resources, loaded and
    attached before the old set is removed."""
    return str(host_dir(state_dir) / _object_digest(str(obj)))


_digests: dict[tuple[str, int, int], str] = {}  # (path, mtime_ns, size) -> digest: once per process (every peer asks)


def _object_digest(obj: str) -> str:
    st = os.stat(obj)
    key = (obj, st.st_mtime_ns, st.st_size)
    if key not in _digests:
        _digests[key] = hashlib.sha256(Path(obj).read_bytes()).hexdigest()[:16]
    return _digests[key]


def current_pin_dir(state_dir: str) -> str:
    """The pin directory in use for that host (the only one; during an upgrade the
    current object's). CrossnetError when the programs are not loaded."""
    from crossnet.ebpf import build

    base = host_dir(state_dir)
    dirs = sorted(str(d) for d in base.iterdir() if d.is_dir()) if base.is_dir() else []
    if len(dirs) == 1:
        return dirs[0]
    obj, _ = build.find_object(build=False)
    if obj is not None and pin_dir(state_dir, obj) in dirs:
        return pin_dir(state_dir, obj)
    raise CrossnetError(f"crossnet's eBPF programs are not loaded for {state_dir or 'this host'} "
                        f"(nothing pinned under {base}): apply the host first")


def _valid_pin_dir(path: str) -> str:
    """Records are hostile: only crossnet's own pin directories are loaded into or removed."""
    if not isinstance(path, str) or not _PIN_DIR.fullmatch(path):  # not .match: "$" accepts a trailing newline
        raise ApplyError(f"ebpf: pin directory {path!r} is not {BASE}/<16 hex digits>/<16 hex digits>")
    return path


def _mounts(mountinfo: str | None) -> list[tuple[str, str, str]]:
    """(mount point, fs type, source) of each line of /proc/self/mountinfo (or the text)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return []
    out = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5 or "-" not in fields[5:]:
            continue
        sep = fields.index("-", 5)
        if len(fields) > sep + 2:
            out.append((fields[4], fields[sep + 1], fields[sep + 2]))
    return out


def bpffs_mounted(mountinfo: str | None = None) -> bool:
    """Whether /sys/fs/bpf is a bpffs mount in this mount namespace."""
    return any(point == str(BPFFS) and fstype == BPF_FS_TYPE for point, fstype, _ in _mounts(mountinfo))


def private_sysfs(mountinfo: str | None = None, netns_dir: str = "/run/netns") -> str | None:
    """The namespace name when /sys is the private sysfs `ip netns exec NAME` mounts (its
    source is NAME): a bpffs mounted under it vanishes, pins included, with the process."""
    for point, fstype, source in reversed(_mounts(mountinfo)):
        if point == "/sys":
            return source if fstype == "sysfs" and source != "sysfs" and os.path.exists(f"{netns_dir}/{source}") else None
    return None


def ensure_bpffs() -> str | None:
    """Mount bpffs on /sys/fs/bpf if it is not (nowhere else). None, or why not."""
    mountinfo = None
    with contextlib.suppress(OSError):
        mountinfo = Path("/proc/self/mountinfo").read_text()
    if bpffs_mounted(mountinfo):
        return None
    netns = private_sysfs(mountinfo)
    if netns:
        return (f"no bpffs on {BPFFS} in this mount namespace, whose /sys is the private one of "
                f"`ip netns exec {netns}`: pins would vanish with this process; run crossnet with "
                f"`nsenter --net=/run/netns/{netns}` instead")
    if not BPFFS.is_dir():
        return f"{BPFFS} does not exist (no sysfs?)"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.mount(b"bpf", str(BPFFS).encode(), b"bpf", 0, b"mode=0700") != 0:
        err = ctypes.get_errno()
        return f"cannot mount bpffs on {BPFFS}: {os.strerror(err)}"
    return None


def _bpftool(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([BPFTOOL, *args], capture_output=True, text=True, errors="replace", timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        return subprocess.CompletedProcess([BPFTOOL, *args], 127, "", str(exc))


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [x.strip() for x in (proc.stderr or proc.stdout or "").splitlines() if x.strip()]
    return lines[-1] if lines else f"exit {proc.returncode}"


def load_command(obj: str, directory: str) -> list[str]:
    return [BPFTOOL, "prog", "loadall", obj, f"{directory}/progs", "type", "classifier", "pinmaps", f"{directory}/maps"]


def load(obj: str, directory: str) -> None:
    """Load every program of obj and pin programs and maps under directory."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    proc = _bpftool(*load_command(obj, directory)[1:])
    if proc.returncode != 0:
        unpin(directory)
        raise ApplyError(f"the kernel refuses crossnet's eBPF programs ({obj}): {_last_line(proc)}")


def unpin(directory: str) -> None:
    """Remove the pins under directory (and it, and its parent when empty; BASE, shared
    by every host of a lab, stays). Objects still used by a tc filter stay loaded until
    the filter goes."""
    d = Path(directory)
    for sub in ("progs", "maps"):
        for pin in (d / sub).glob("*") if (d / sub).is_dir() else ():
            with contextlib.suppress(FileNotFoundError):
                pin.unlink()
        with contextlib.suppress(FileNotFoundError, OSError):
            (d / sub).rmdir()
    for empty in (d, d.parent) if d.parent != BASE else (d,):
        with contextlib.suppress(FileNotFoundError, OSError):
            empty.rmdir()


def remove_host(state_dir: str) -> int:
    """Remove every pin directory of the host whose state directory is state_dir (for a
    host that goes away without `reset`, e.g. `crossnet lab down`); how many were
    removed. Only its `<16 hex digits>` subdirectories are touched."""
    base = host_dir(state_dir)
    removed = 0
    for d in sorted(base.iterdir()) if base.is_dir() else ():
        if d.is_dir() and re.fullmatch(r"[0-9a-f]{16}", d.name):
            unpin(str(d))
            removed += 1
    with contextlib.suppress(FileNotFoundError, OSError):
        base.rmdir()
    return removed


def trial_load(obj: Path) -> str | None:
    """Load the programs once into a scratch directory and remove them: None if the
    kernel accepts them, else why not."""
    scratch = str(BASE / f"probe-{os.getpid()}")  # bpffs refuses dots in names
    try:
        load(str(obj), scratch)
    except (ApplyError, OSError) as exc:
        return str(exc)
    finally:
        unpin(scratch)
    return None


def _pins(directory: str) -> list[str]:
    return [f"{directory}/progs/{p}" for p in maps.PROGRAMS] + [
        f"{directory}/maps/{m}" for m in (maps.CONFIG_MAP, maps.VETHS_MAP, maps.VTEPS_MAP, maps.STATS_MAP)]


@contextlib.contextmanager
def _pinned(path: str):
    try:
        fd = bpfsys.obj_get(path)
    except OSError as exc:
        raise CrossnetError(f"eBPF object {path} is not pinned ({exc.strerror}): apply the host first") from None
    try:
        yield fd
    finally:
        os.close(fd)


def _pinned_prog_id(directory: str, program: str) -> int | None:
    try:
        with _pinned(f"{directory}/progs/{program}") as fd:
            return bpfsys.prog_id(fd)
    except (CrossnetError, OSError):
        return None


# ---------------------------------------------------------------- tc (pyroute2)


def _filters(ipr, index: int, parent: int = TC_INGRESS) -> list:
    try:
        return [m for m in ipr.get_filters(index=index, parent=parent) if nl.attr(m, "TCA_KIND")]
    except NetlinkError as exc:
        if exc.code in (errno.EINVAL, errno.ENOENT, errno.ENODEV):
            return []
        raise


def _filter_name(msg) -> str:
    opts = nl.attr(msg, "TCA_OPTIONS")
    return (opts.get_attr("TCA_BPF_NAME") if opts is not None else None) or ""


def _chain(msg) -> int:
    """The filter's chain (TCA_CHAIN). pyroute2 0.9 does not decode it: read from the
    message's own bytes (nlmsghdr, struct tcmsg, then the attributes). None: chain 0."""
    decoded = nl.attr(msg, "TCA_CHAIN")
    if decoded is not None:
        return decoded
    data, start = getattr(msg, "data", None), getattr(msg, "offset", 0)
    if not data:
        return 0
    end = min(len(data), start + msg["header"]["length"])
    # the attributes follow struct nlmsghdr and struct tcmsg
    found = nlraw.find_attr(data, start + NLMSG_HDRLEN + TCMSG_SIZE, end, TCA_CHAIN)
    return struct.unpack_from("=I", data, found[0])[0] if found and found[1] - found[0] >= 4 else 0


def _at_our_slot(msg) -> bool:
    """In crossnet's slot: chain 0 (where its replace and del act), pref 1000. Each chain
    has its own priorities: pref 1000 of chain 1 neither holds crossnet's handle nor
    decides the protocol of chain 0's pref 1000."""
    return (msg["info"] >> 16) == TC_PREF and _chain(msg) == 0


def _ours(msg) -> bool:
    return _at_our_slot(msg) and nl.attr(msg, "TCA_KIND") == "bpf" and _filter_name(msg).startswith(FILTER_PREFIX)


def foreign_filters(ipr, index: int) -> list[str]:
    """The filters on index's ingress at crossnet's slot (chain 0, pref 1000) that crossnet
    did not create (no `crossnet:` name), each as `KIND handle H protocol P [NAME]`:
    `replace` would overwrite one at crossnet's handle, and the kernel refuses a second
    kind or protocol at one priority of a chain. A dump's header line of each priority
    (handle 0, no filter: the kernel drops a list with its last filter) is not counted."""
    out = []
    for m in _filters(ipr, index):
        if not _at_our_slot(m) or not m["handle"] or _ours(m):
            continue
        kind, proto = nl.attr(m, "TCA_KIND"), socket.ntohs(m["info"] & 0xFFFF)
        name = _filter_name(m)
        out.append(f"{kind} handle {m['handle']:#x} protocol {proto:#06x}" + (f" {name!r}" if name else ""))
    return out


def foreign_filter_error(dev: str, found: list[str]) -> str:
    return (f"ebpf: {dev} ingress already has a tc filter crossnet did not create at crossnet's priority "
            f"(pref {TC_PREF}): {'; '.join(found)}; crossnet does not replace or delete filters it did not "
            f"create: move it to another pref (`tc filter show dev {dev} ingress`), then apply again")


def has_clsact(ipr, index: int) -> bool:
    return any(nl.attr(q, "TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=index))


def tc_attached(ipr, index: int, program: str, prog_id: int | None) -> bool:
    """Our filter on index's ingress runs exactly the pinned program (id in its name)."""
    want = f"{FILTER_PREFIX}{program}:{prog_id}"
    return prog_id is not None and any(_ours(m) and _filter_name(m) == want for m in _filters(ipr, index))


def tc_attach(ipr, index: int, directory: str, program: str, dev: str = "") -> bool:
    """Add clsact if missing and (re)place crossnet's filter running the pinned program on
    ingress. Returns whether the clsact qdisc was added here. Refuses (ApplyError, nothing
    changed) when a filter crossnet did not create holds its priority. One dump (the
    ingress filters): whether clsact is there, `add` says (EEXIST)."""
    found = foreign_filters(ipr, index)
    if found:
        raise ApplyError(foreign_filter_error(dev or f"interface {index}", found))
    added = False
    try:
        ipr.tc("add", "clsact", index)
        added = True
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise
    with _pinned(f"{directory}/progs/{program}") as fd:
        name = f"{FILTER_PREFIX}{program}:{bpfsys.prog_id(fd)}"
        ipr.tc("replace-filter", "bpf", index, TC_HANDLE, fd=fd, name=name, parent=TC_INGRESS,
               prio=TC_PREF, protocol=ETH_P_ALL, direct_action=True)
    return added


def tc_detach(ipr, index: int, remove_clsact: bool) -> None:
    """Remove crossnet's filter (only if it is ours) and, when remove_clsact, the clsact
    qdisc too unless some other filter still uses it."""
    if any(_ours(m) for m in _filters(ipr, index)):
        with contextlib.suppress(NetlinkError):
            ipr.tc("del-filter", "bpf", index, TC_HANDLE, parent=TC_INGRESS, prio=TC_PREF, protocol=ETH_P_ALL)
    if remove_clsact and has_clsact(ipr, index) and not _filters(ipr, index) and not _filters(ipr, index, TC_EGRESS):
        with contextlib.suppress(NetlinkError):
            ipr.tc("del", "clsact", index)


# ---------------------------------------------------------------- resources


@dataclass
class BpfPrograms(Resource):
    """crossnet's programs and maps, loaded from the object and pinned under pin_dir."""

    kind: ClassVar[str] = "ebpf-programs"
    pin_dir: str
    obj: str

    def key(self) -> str:
        return f"ebpf-programs:{self.pin_dir}"

    def describe(self) -> str:
        return f"mount -t bpf bpf {BPFFS} 2>/dev/null; " + " ".join(load_command(self.obj, self.pin_dir))

    def check(self, env: Env) -> bool:
        return all(os.path.exists(p) for p in _pins(self.pin_dir))

    def ensure(self, env: Env) -> None:
        _valid_pin_dir(self.pin_dir)
        from crossnet.ebpf.build import OBJECT_NAME

        if not isinstance(self.obj, str) or Path(self.obj).name != OBJECT_NAME or not Path(self.obj).is_file():
            raise ApplyError(f"ebpf: {self.obj!r} is not a {OBJECT_NAME} file")
        why = ensure_bpffs()
        if why:
            raise ApplyError(why)
        unpin(self.pin_dir)  # a partial set from an interrupted load
        load(self.obj, self.pin_dir)

    def remove(self, env: Env) -> None:
        unpin(_valid_pin_dir(self.pin_dir))


@dataclass
class BpfConfig(Resource):
    """The programs' configuration map: one entry per container network of this host (the
    top-level one first, then ``more``: the named networks, docs/networks.md), each with
    its CIDR, the underlay's and its vxlan device's ifindexes and that device's VNI; then
    an empty entry. ``local``/``port``: the vxlan devices' local address and UDP port when
    the programs encapsulate themselves (backend vxlan); port 0: they leave it to the
    devices."""

    kind: ClassVar[str] = "ebpf-config"
    pin_dir: str
    network: str
    iface: str
    vxlan: str | None = None
    more: list = field(default_factory=list)  # the named networks' [network, vxlan device or None, vni]
    vni: int = 0
    local: str | None = None
    port: int = 0

    def key(self) -> str:
        return f"ebpf-config:{self.pin_dir}"

    def entries(self) -> list[tuple[ipaddress.IPv4Network, str | None, int]]:
        """(network, vxlan device, vni) of every slot, checked (records are hostile)."""
        out = []
        for item in [[self.network, self.vxlan, self.vni], *(self.more if isinstance(self.more, list) else [None])]:
            try:
                net, vx, *rest = item
                vni = rest[0] if rest else 0
                if len(rest) > 1 or type(vni) is not int or not 0 <= vni < 2**24:
                    raise ValueError("vni is not a number below 2**24")
                if vx is not None:
                    check_ifname(vx, "vxlan")
                out.append((ipaddress.IPv4Network(net), vx, vni))
            except (TypeError, ValueError, CrossnetError) as exc:
                raise ApplyError(f"ebpf: bad network entry {str(item)[:80]!r} in the configuration: {exc}") from None
        if len(out) > maps.MAX_NETWORKS - 1:
            raise ApplyError(f"ebpf: {len(out)} networks, the programs hold at most {maps.MAX_NETWORKS - 1}")
        return out

    def encap(self) -> tuple[ipaddress.IPv4Address, int]:
        """(local address, port) for the programs' own VXLAN, checked; (0.0.0.0, 0): none."""
        if not self.port and self.local is None:
            return ipaddress.IPv4Address(0), 0
        try:
            if type(self.port) is not int or not 0 < self.port < 2**16:
                raise ValueError(f"port {self.port!r} is not a UDP port")
            if not isinstance(self.local, str):
                raise ValueError(f"local address {self.local!r} is not a string")
            return ipaddress.IPv4Address(self.local), self.port
        except (TypeError, ValueError) as exc:
            raise ApplyError(f"ebpf: bad vxlan encapsulation in the configuration: {exc}") from None

    def slots(self, index: Callable[[str], int]) -> list[maps.Config]:
        """The map's entries, in slot order; ``index`` gives a device's ifindex."""
        underlay = index(self.iface)
        local, port = self.encap()
        out = []
        for net, vx, vni in self.entries():
            if vx and port:  # the programs make and take apart this device's VXLAN
                out.append(maps.Config(net, underlay, index(vx), vni, local, port))
            else:
                out.append(maps.Config(net, underlay, index(vx) if vx else 0))
        return out

    def describe(self) -> str:
        def hexs(raw: bytes) -> str:
            return " ".join(f"{b:02x}" for b in raw)

        lines = []
        # the packed slots with their ifindex fields shown as placeholders (the kernel knows them)
        for slot, ((net, vxlan, _), one) in enumerate(zip(self.entries(), self.slots(lambda _dev: 0))):
            devices = {"underlay": self.iface, "vxlan": vxlan}
            value = " ".join(f"<ifindex of {devices[f]}, 4 bytes little endian>" if devices.get(f) else hexs(raw)
                             for f, raw in maps.config_fields(one.pack()))
            lines.append(f"bpftool map update pinned {self.pin_dir}/maps/{maps.CONFIG_MAP} key hex "
                         f"{hexs(maps.config_key(slot))} value hex {value}  # {net}")
        return "; ".join(lines)

    def want(self, env: Env) -> list[maps.Config]:
        return self.slots(env.require_index)

    def check(self, env: Env) -> bool:
        try:
            want = self.want(env)
            with _pinned(f"{self.pin_dir}/maps/{maps.CONFIG_MAP}") as fd:
                have = [bpfsys.map_lookup(fd, maps.config_key(i), maps.CONFIG_SIZE) for i in range(len(want) + 1)]
            return (all(raw is not None and maps.Config.unpack(raw) == w for raw, w in zip(have, want))
                    and have[-1] in (None, maps.EMPTY_CONFIG))
        except (CrossnetError, OSError):
            return False

    def ensure(self, env: Env) -> None:
        _valid_pin_dir(self.pin_dir)
        want = self.want(env)
        with _pinned(f"{self.pin_dir}/maps/{maps.CONFIG_MAP}") as fd:
            for slot, one in enumerate(want):  # in place: a packet meanwhile at worst takes the stack
                bpfsys.map_update(fd, maps.config_key(slot), one.pack())
            for slot in range(len(want), maps.MAX_NETWORKS):  # the end of the list (a network removed)
                if bpfsys.map_lookup(fd, maps.config_key(slot), maps.CONFIG_SIZE) in (None, maps.EMPTY_CONFIG):
                    break
                bpfsys.map_update(fd, maps.config_key(slot), maps.EMPTY_CONFIG)
        prune_veths(env.ipr, self.pin_dir)
        prune_vteps(self.pin_dir, {w.vxlan for w in want if w.port})

    def remove(self, env: Env) -> None:
        """Nothing: the map goes with the pins (BpfPrograms) and the filters."""


@dataclass
class BpfVtep(Resource):
    """A peer's VTEP for the programs' own VXLAN (cn_vteps): on vxlan device ``dev``, the
    next hop the FIB gives for the peer's subnet (its .0 address: the device's static
    neighbour) -> the peer's underlay address (the device's FDB entry for that neighbour's
    MAC). Without the entry the programs hand such packets to the device."""

    kind: ClassVar[str] = "ebpf-vtep"
    pin_dir: str
    dev: str
    nexthop: str
    underlay: str

    def key(self) -> str:
        return f"ebpf-vtep:{self.dev}:{self.nexthop}"

    def _addresses(self) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
        """(next hop, underlay address), checked (records are hostile)."""
        try:
            check_ifname(self.dev, "vxlan")
            if not isinstance(self.nexthop, str) or not isinstance(self.underlay, str):
                raise ValueError("addresses are strings")
            return ipaddress.IPv4Address(self.nexthop), ipaddress.IPv4Address(self.underlay)
        except (TypeError, ValueError, CrossnetError) as exc:
            raise ApplyError(f"ebpf: bad VTEP entry {self.dev!r} {self.nexthop!r} -> {self.underlay!r}: {exc}") from None

    def describe(self) -> str:
        nexthop, underlay = self._addresses()
        return (f"bpftool map update pinned {self.pin_dir}/maps/{maps.VTEPS_MAP} key hex <ifindex of {self.dev}, "
                f"4 bytes little endian> {' '.join(f'{b:02x}' for b in nexthop.packed)} value hex "
                f"{' '.join(f'{b:02x}' for b in underlay.packed)}  # {self.nexthop} -> {self.underlay}")

    def check(self, env: Env) -> bool:
        try:
            nexthop, underlay = self._addresses()
            idx = env.index(self.dev)
            if idx is None:
                return False
            with _pinned(f"{self.pin_dir}/maps/{maps.VTEPS_MAP}") as fd:
                return bpfsys.map_lookup(fd, maps.vtep_key(idx, nexthop), 4) == maps.vtep_value(underlay)
        except (CrossnetError, OSError, ValueError):
            return False

    def ensure(self, env: Env) -> None:
        _valid_pin_dir(self.pin_dir)
        nexthop, underlay = self._addresses()
        with _pinned(f"{self.pin_dir}/maps/{maps.VTEPS_MAP}") as fd:
            bpfsys.map_update(fd, maps.vtep_key(env.require_index(self.dev), nexthop), maps.vtep_value(underlay))

    def remove(self, env: Env) -> None:
        """The entry (the map goes with the pins; a device gone: prune_vteps drops its entries)."""
        nexthop, _ = self._addresses()
        idx = env.index(self.dev)
        if idx is None:
            return
        with contextlib.suppress(CrossnetError, OSError), _pinned(f"{_valid_pin_dir(self.pin_dir)}/maps/{maps.VTEPS_MAP}") as fd:
            bpfsys.map_delete(fd, maps.vtep_key(idx, nexthop))


@dataclass
class TcProgram(Resource):
    """clsact + crossnet's direct-action bpf filter on dev's ingress running a pinned program."""

    kind: ClassVar[str] = "ebpf-tc"
    dev: str
    pin_dir: str
    program: str

    def key(self) -> str:
        return f"ebpf-tc:{self.dev}:ingress"

    def describe(self) -> str:
        return (f"tc qdisc add dev {self.dev} clsact 2>/dev/null; tc filter replace dev {self.dev} ingress "
                f"pref {TC_PREF} handle {TC_HANDLE} bpf da pinned {self.pin_dir}/progs/{self.program}")

    def check(self, env: Env) -> bool:
        idx = env.index(self.dev)
        return idx is not None and tc_attached(env.ipr, idx, self.program, _pinned_prog_id(self.pin_dir, self.program))

    def conflict(self, env: Env) -> str | None:
        """An admin's filter at crossnet's priority (pref 1000) on the device: refused before
        anything changes (Resource.preflight), recorded or not — crossnet's filter may have
        been replaced by hand since apply, and `replace` would overwrite it."""
        idx = env.index(self.dev)
        found = foreign_filters(env.ipr, idx) if idx is not None else []
        return foreign_filter_error(self.dev, found) if found else None

    def prepare(self, env: Env) -> None:
        idx = env.index(self.dev)
        if idx is not None and not has_clsact(env.ipr, idx):
            self.saved.setdefault("clsact_added", True)

    def ensure(self, env: Env) -> None:
        _valid_pin_dir(self.pin_dir)
        if self.program not in maps.PROGRAMS:
            raise ApplyError(f"ebpf: unknown program {self.program!r}")
        if tc_attach(env.ipr, env.require_index(self.dev), self.pin_dir, self.program, self.dev):
            self.saved["clsact_added"] = True

    def remove(self, env: Env) -> None:
        idx = env.index(self.dev)
        if idx is not None:
            tc_detach(env.ipr, idx, bool(self.saved.get("clsact_added")))


# ---------------------------------------------------------------- the API (docs/ebpf.md)


def host_resources(ctx: HostContext) -> list[Resource]:
    """This host's desired eBPF resources: programs + maps pinned, configuration filled
    from ctx, the to-container program where other hosts' container packets arrive: the
    underlay NIC (host-gw; vxlan: the frames it takes apart itself) and the vxlan device
    (what the device decapsulated: frames the NIC's program left to the stack)."""
    obj = _object()
    directory = pin_dir(ctx.state_dir, obj)
    vxlan = vxlan_device(ctx)
    own = own_vxlan(ctx)
    out: list[Resource] = [BpfPrograms(directory, str(obj)),
                           BpfConfig(directory, str(ctx.network), ctx.iface, vxlan, vni=ctx.vni if own else 0,
                                     local=str(ctx.address) if own else None, port=ctx.port if own else 0)]
    out.append(TcProgram(ctx.iface, directory, "cn_to_container"))
    if vxlan:
        out.append(TcProgram(vxlan, directory, "cn_to_container"))
    return out


def own_vxlan(ctx: HostContext) -> bool:
    """The programs make and take apart the VXLAN frames themselves: backend vxlan (backend
    auto's vxlan peers keep the device's encapsulation)."""
    return ctx.backend == "vxlan"


def _object() -> Path:
    from crossnet.ebpf import build

    obj, why = build.find_object()
    if obj is None:
        raise CrossnetError(f"datapath ebpf: {why}")
    return obj


def vtep_resources(ctx: HostContext, dev: str, nexthop: str, underlay: str) -> list[Resource]:
    """A vxlan peer's entry for the programs' own encapsulation (backend vxlan)."""
    if not own_vxlan(ctx):
        return []
    return [BpfVtep(pin_dir(ctx.state_dir, _object()), dev, nexthop, underlay)]


def vxlan_device(ctx: HostContext) -> str | None:
    """The vxlan device the programs forward to and from: backend vxlan's, and backend
    auto's unless it encrypts everything (no vxlan device then). auto's WireGuard device
    (cnwg0) is no target: the from-container program passes packets routed into it to the
    stack, and decrypted packets reach the containers through the stack (docs/datapath.md)."""
    encrypt = bool((ctx.auto or {}).get("encrypt", False))  # = crossnet.backends.auto.settings (no import: layering)
    if ctx.backend == "vxlan" or (ctx.backend == "auto" and not encrypt):
        return f"cnvx{ctx.vni}"
    return None


def one_program_set(resources: list[Resource]) -> list[Resource]:
    """Several networks on one host share one set of programs (docs/networks.md): each
    network's backend resources list it, so keep the first BpfPrograms and TcProgram of a
    key, and ONE BpfConfig holding every network (in the order they come, the top-level
    one first) where the last of them was: after every network's vxlan device."""
    configs = [r for r in resources if isinstance(r, BpfConfig)]
    if len(configs) < 2:
        return resources
    first = configs[0]
    merged = BpfConfig(first.pin_dir, first.network, first.iface, first.vxlan,
                       [*first.more, *([c.network, c.vxlan, c.vni] for c in configs[1:] if c.pin_dir == first.pin_dir)],
                       vni=first.vni, local=first.local, port=first.port)
    seen: set[str] = set()
    out: list[Resource] = []
    for r in resources:
        if isinstance(r, BpfConfig):
            if r is configs[-1]:
                out.append(merged)
            continue
        if isinstance(r, (BpfPrograms, TcProgram)):
            if r.key() in seen:
                continue
            seen.add(r.key())
        out.append(r)
    return out


def attach_container(ctx: HostContext, host_ifname: str) -> None:
    """Run the from-container program on the container's host-side veth (this netns) and
    allow it as a redirect target. The host's resources must be applied first."""
    check_ifname(host_ifname, "host_ifname")
    directory = current_pin_dir(ctx.state_dir)
    with nl.open_ipr() as ipr:
        index = nl.require_index(ipr, host_ifname)
        info = nl.link_info(ipr, index=index)
        if info is None or info.kind != "veth":
            raise CrossnetError(f"ebpf: {host_ifname} is not a veth")
        address = container_address(ipr, index, ipaddress.IPv4Network(str(ctx.network)))
        with _pinned(f"{directory}/maps/{maps.VETHS_MAP}") as fd:
            bpfsys.map_update(fd, maps.ifindex_key(index), maps.veth_value(address))
        tc_attach(ipr, index, directory, "cn_from_container", host_ifname)


def attach_new_veth(ctx: HostContext, rtnl, index: int, address: ipaddress.IPv4Address, host_ifname: str) -> None:
    """attach_container for a host veth the caller has just created (attach's fast path,
    raw netlink on the caller's socket ``rtnl``): nothing can be on it yet, so no lookup
    of its kind, route or filters; its redirect-target entry, then clsact and crossnet's
    filter added, not replaced (EEXIST: it is not that fresh, and the attach fails: attach
    rolls its veth back, the docker plugin's endpoint goes with DeleteEndpoint)."""
    directory = current_pin_dir(ctx.state_dir)
    with _pinned(f"{directory}/maps/{maps.VETHS_MAP}") as fd:
        bpfsys.map_update(fd, maps.ifindex_key(index), maps.veth_value(address))
    with _pinned(f"{directory}/progs/cn_from_container") as fd:
        name = f"{FILTER_PREFIX}cn_from_container:{bpfsys.prog_id(fd)}"
        rtnl.call([nlraw.clsact_add(index, host_ifname),
                   nlraw.bpf_filter_add(index, TC_INGRESS, TC_PREF, TC_HANDLE, fd, name, host_ifname)])


def container_address(ipr, index: int, network: ipaddress.IPv4Network) -> ipaddress.IPv4Address | None:
    """The container behind veth index: the /32 route inside the network through it
    (routed veths: made before attach_container). None when there is not exactly one."""
    found = [r.dst for r in nl.routes(ipr) if r.oif == index and r.dst and r.dst.endswith("/32")
             and ipaddress.IPv4Address(r.dst.split("/")[0]) in network]
    return ipaddress.IPv4Address(found[0].split("/")[0]) if len(found) == 1 else None


def detach_container(ctx: HostContext, host_ifname: str) -> None:
    """Undo attach_container on a veth that stays: its filter (and clsact unless another
    filter uses it), then forget_veth (its entry and stale ones). Idempotent: a veth
    already gone is fine."""
    check_ifname(host_ifname, "host_ifname")
    with nl.open_ipr() as ipr:
        index = nl.ifindex(ipr, host_ifname)
        if index is not None:
            tc_detach(ipr, index, remove_clsact=True)
    forget_veth(ctx, host_ifname)


def forget_veth(ctx: HostContext, host_ifname: str) -> None:
    """detach_container for a routed veth the caller deletes next (detach, CNI DEL, the
    docker plugin): its qdisc and filter go with it, so only its redirect-target entry
    and stale ones are removed, over raw netlink (one index lookup, one dump read for
    indexes and kinds: no pyroute2, no filter or qdisc dump). Idempotent."""
    check_ifname(host_ifname, "host_ifname")
    try:
        directory = current_pin_dir(ctx.state_dir)
    except CrossnetError:
        return  # nothing loaded: no map to clean
    with nlraw.Rtnl() as rtnl:
        index = rtnl.ifindex(host_ifname)
        with contextlib.suppress(CrossnetError), _pinned(f"{directory}/maps/{maps.VETHS_MAP}") as fd:
            if index is not None:
                bpfsys.map_delete(fd, maps.ifindex_key(index))
            _prune_veth_entries(fd, lambda: {i for i, kind in rtnl.link_kinds().items() if kind == "veth"})


def prune_veths(ipr, directory: str) -> None:
    """Drop allowed-veth entries whose interface no longer exists (a veth deleted with its
    container before detach): an index the kernel reuses is never a redirect target."""
    with contextlib.suppress(CrossnetError), _pinned(f"{directory}/maps/{maps.VETHS_MAP}") as fd:
        _prune_veth_entries(fd, lambda: {l.index for l in nl.all_links(ipr) if l.kind == "veth"})


def _prune_veth_entries(fd: int, present_veths: Callable[[], set[int]]) -> None:
    """Delete the entries of the veths map ``fd`` whose index is not a present veth. The
    keys are read before the interfaces: an attach running meanwhile makes its veth before
    its entry, so an entry too new for the key list is never taken for a stale one."""
    keys = bpfsys.map_keys(fd, 4)
    present = present_veths()
    for key in keys:
        if int.from_bytes(key, "little") not in present:
            bpfsys.map_delete(fd, key)


def prune_vteps(directory: str, devices: set[int]) -> None:
    """Drop VTEP entries of vxlan devices the configuration no longer names (a network
    removed, a device made anew under another ifindex): a reused index never sends a
    container's packet to an old peer address."""
    with contextlib.suppress(CrossnetError, OSError), _pinned(f"{directory}/maps/{maps.VTEPS_MAP}") as fd:
        for key in bpfsys.map_keys(fd, 8):
            if int.from_bytes(key[:4], "little") not in devices:
                bpfsys.map_delete(fd, key)


def counters(ctx: HostContext) -> dict[str, int]:
    """The programs' counters summed over CPUs (names: crossnet.ebpf.maps.COUNTERS, plus
    the totals redirect and pass); all zero when the programs are not loaded."""
    return counters_at(ctx.state_dir)


def loaded(state_dir: str) -> bool:
    """Whether crossnet's programs are pinned for the host of state_dir."""
    try:
        current_pin_dir(state_dir)
    except (CrossnetError, OSError):
        return False
    return True


def counters_at(state_dir: str) -> dict[str, int]:
    """counters() of the host whose state directory is state_dir."""
    values: dict[str, int] = {}
    with contextlib.suppress(CrossnetError):
        with _pinned(f"{current_pin_dir(state_dir)}/maps/{maps.STATS_MAP}") as fd:
            cpus = bpfsys.possible_cpus()
            for i, name in enumerate(maps.COUNTERS):
                raw = bpfsys.map_lookup(fd, maps.counter_key(i), 8 * cpus)
                values[name] = maps.percpu_sum(raw, cpus) if raw else 0
    return maps.summarise(values)
