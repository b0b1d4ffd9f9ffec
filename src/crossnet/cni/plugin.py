"""crossnet-cni: a CNI plugin (spec 1.0.0, plus STATUS/GC of 1.1.0) that attaches a
container to this host's crossnet network.

ADD/DEL go through :mod:`crossnet.containers` (``attach``/``detach``) with the same
IPAM pool as ``crossnet attach``: one source of truth for the host's addresses. The
host must have been configured with ``crossnet apply`` (its state dir is the network
config's ``stateDir``, default /var/lib/crossnet).

Network configuration (one entry of a conflist)::

    {"type": "crossnet-cni", "stateDir": "/var/lib/crossnet",
     "capabilities": {"ips": true, "mac": true}, "dns": {...}, "logFile": "/path"}

Requested addresses: ``CNI_ARGS`` ``IP=`` (what ``podman run --ip`` sends), the
``args.cni.ips`` convention or ``runtimeConfig.ips``; a MAC from ``MAC=`` or
``runtimeConfig.mac``.

Start-up time matters (the plugin runs on every container start): the entry point
(crossnet.cni.client) hands calls to a warm helper process when one runs for the state
dir (crossnet.cni.server, which runs :func:`run` from this module); otherwise
:func:`run_local` runs here and starts the helper. This module imports only the
standard library at import time; the netlink code is imported when a command needs it,
and the pyroute2 package without its catch-all ``__init__`` (see crossnet._lightimport).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

from crossnet.cni import (
    MAX_STDIN,  # network configuration bytes (a real one is < 4 KiB)
)

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~7 ms per call
if TYPE_CHECKING:
    from typing import Any

PLUGIN_TYPE = "crossnet-cni"
DEFAULT_STATE_DIR = "/var/lib/crossnet"
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
# who starts the warm helper (network configuration "helper"): the plugin itself, or
# someone else (systemd's crossnet-cni-helper.socket, `crossnet cni serve`, the agent)
HELPER_MODES = ("spawn", "external")
# commands (and the spec version that introduced them)
COMMANDS = {"ADD": "0.1.0", "DEL": "0.1.0", "CHECK": "0.4.0", "VERSION": "0.1.0", "STATUS": "1.1.0", "GC": "1.1.0"}
KNOWN_ARGS = {
    "IgnoreUnknown", "IP", "MAC", "K8S_POD_NAME", "K8S_POD_NAMESPACE",
    "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID",
}
VALID_ATTACHMENTS = "cni.dev/valid-attachments"

# error codes (CNI spec "Error" section; 100+ are this plugin's)
E_INCOMPATIBLE_VERSION = 1
E_UNSUPPORTED_FIELD = 2
E_UNKNOWN_CONTAINER = 3
E_INVALID_ENV = 4
E_IO = 5
E_DECODE = 6
E_INVALID_CONFIG = 7
E_TRY_AGAIN = 11  # transient: host not applied yet, container bridge missing (apply running)
E_NOT_AVAILABLE = 50  # STATUS: cannot service ADD
E_NOT_CONFIGURED = 100  # this host's crossnet state is unreadable
E_IPAM = 101  # no free address / requested address taken
E_ATTACH = 102  # kernel operation failed while attaching/detaching
E_CHECK = 103  # CHECK found the attachment not as ADD left it
E_IN_USE = 104  # ADD: the container id is attached to another live netns / CNI_IFNAME is another id's
E_INTERNAL = 199

_CONTAINER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_NETWORK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")  # the spec's rule for "name"
_MAC_RE = re.compile(r"(?i)[0-9a-f]{2}(:[0-9a-f]{2}){5}")

# bounds on what the runtime hands us (checked before anything is parsed or changed)
MAX_DEPTH = 32  # JSON nesting (a network configuration with prevResult needs 4)
MAX_CONTAINER_ID = 1024
MAX_NAME = 253
MAX_ENV = 65536  # any CNI_* variable
MAX_PATH = 4096


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


# --------------------------------------------------------------------------- parsing


def version_tuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in v.split("."))
    except (AttributeError, ValueError):
        return (0,)


def parse_cni_args(raw: str) -> dict[str, str]:
    """``K=V;K=V`` -> dict. Unknown keys are an error unless IgnoreUnknown is true; a key
    given twice is an error (which one would count?); values of the keys crossnet reads
    are printable text."""
    args: dict[str, str] = {}
    if not raw:
        return args
    for item in raw.split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CniError(E_INVALID_ENV, f"CNI_ARGS: invalid argument {_short(item)!r} (expected KEY=VALUE)")
        if key in args:
            raise CniError(E_INVALID_ENV, f"CNI_ARGS: {_short(key)} is given twice")
        args[key] = value
    ignore = args.get("IgnoreUnknown", "").lower() in ("1", "true")
    unknown = sorted(set(args) - KNOWN_ARGS)
    if unknown and not ignore:
        raise CniError(
            E_INVALID_ENV,
            f"CNI_ARGS: unknown argument {_short(unknown[0])}={_short(args[unknown[0]])!r} "
            "(set IgnoreUnknown=1 to ignore it)",
        )
    for key in sorted(KNOWN_ARGS & set(args)):
        value = args[key]
        if len(value) > MAX_NAME or not value.isprintable():
            raise CniError(E_INVALID_ENV, f"CNI_ARGS {key}: {_short(value)!r} is not printable text of at most "
                                          f"{MAX_NAME} characters")
    return args


def _short(text: str, n: int = 64) -> str:
    """Hostile input in a one-line message: control characters escaped, at most n characters."""
    if not text.isprintable():
        text = repr(text)[1:-1]  # a newline in CNI_NETNS must not split the message
    return text if len(text) <= n else text[:n] + "..."


def ifname_problem(name: Any) -> str | None:
    """Why ``name`` cannot be an interface name (crossnet.ifname, the one check), or None."""
    from crossnet import ifname

    return ifname.problem(name)


def netns_problem(path: str) -> str | None:
    """Why ``path`` is not a network namespace file (crossnet.runtime, the one check), or None."""
    from crossnet.runtime.spec import netns_problem as problem

    return problem(path)


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _want(cond: bool, field: str, what: str, value: Any) -> None:
    if not cond:
        if isinstance(value, (dict, list)):
            got = _type_name(value)
        else:
            got = _short(json.dumps(value) if not isinstance(value, str) else repr(value))
        raise CniError(E_INVALID_CONFIG, f"network configuration: {field} must be {what}, not {got}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_path(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("/") and "\0" not in value and len(value) <= MAX_PATH


def _check_cidr(field: str, value: Any) -> None:
    import ipaddress

    _want(isinstance(value, str) and "/" in value, field, "an address with prefix length (CIDR)", value)
    try:
        ipaddress.ip_interface(value)
    except ValueError:
        _want(False, field, "an address with prefix length (CIDR)", value)


def _check_ip(field: str, value: Any) -> None:
    import ipaddress

    _want(isinstance(value, str), field, "an IP address", value)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        _want(False, field, "an IP address", value)


def _check_str_list(field: str, value: Any) -> None:
    _want(isinstance(value, list), field, "a list of strings", value)
    for i, item in enumerate(value):
        _want(isinstance(item, str), f"{field}[{i}]", "a string", item)


def _check_dns(field: str, dns: Any) -> None:
    _want(isinstance(dns, dict), field, "an object", dns)
    for key in ("nameservers", "search", "options"):
        if key in dns:
            _check_str_list(f"{field}.{key}", dns[key])
    if "domain" in dns:
        _want(isinstance(dns["domain"], str), f"{field}.domain", "a string", dns["domain"])


def validate_prev_result(prev: Any) -> None:
    """``prevResult`` (another plugin's result that ADD extends and CHECK compares
    with): the spec's result shape, field by field. ADD copies its interfaces, ips,
    routes and dns into its own result: a malformed one is refused before the ADD
    changes anything."""
    f = "prevResult"
    _want(isinstance(prev, dict), f, "an object", prev)
    if "cniVersion" in prev:
        _want(isinstance(prev["cniVersion"], str), f"{f}.cniVersion", "a string", prev["cniVersion"])
    interfaces = prev.get("interfaces", [])
    _want(isinstance(interfaces, list), f"{f}.interfaces", "a list", interfaces)
    for i, iface in enumerate(interfaces):
        g = f"{f}.interfaces[{i}]"
        _want(isinstance(iface, dict), g, "an object", iface)
        _want(isinstance(iface.get("name"), str) and bool(iface.get("name")), f"{g}.name", "a non-empty string",
              iface.get("name"))
        for key in ("mac", "sandbox", "socketPath", "pciID"):
            if key in iface:
                _want(isinstance(iface[key], str), f"{g}.{key}", "a string", iface[key])
        if "mtu" in iface:
            _want(_is_int(iface["mtu"]) and iface["mtu"] >= 0, f"{g}.mtu", "a non-negative integer", iface["mtu"])
    ips = prev.get("ips", [])
    _want(isinstance(ips, list), f"{f}.ips", "a list", ips)
    for i, ip in enumerate(ips):
        g = f"{f}.ips[{i}]"
        _want(isinstance(ip, dict), g, "an object", ip)
        _check_cidr(f"{g}.address", ip.get("address"))
        if "gateway" in ip:
            _check_ip(f"{g}.gateway", ip["gateway"])
        if "version" in ip:
            _want(ip["version"] in ("4", "6"), f"{g}.version", '"4" or "6"', ip["version"])
        if "interface" in ip:
            idx = ip["interface"]
            _want(_is_int(idx) and 0 <= idx < len(interfaces), f"{g}.interface",
                  f"an index into prevResult.interfaces ({len(interfaces)} entries)", idx)
    routes = prev.get("routes", [])
    _want(isinstance(routes, list), f"{f}.routes", "a list", routes)
    for i, route in enumerate(routes):
        g = f"{f}.routes[{i}]"
        _want(isinstance(route, dict), g, "an object", route)
        _check_cidr(f"{g}.dst", route.get("dst"))
        if "gw" in route:
            _check_ip(f"{g}.gw", route["gw"])
        for key in ("mtu", "advmss", "priority", "table", "scope"):
            if key in route:
                _want(_is_int(route[key]) and route[key] >= 0, f"{g}.{key}", "a non-negative integer", route[key])
    if "dns" in prev:
        _check_dns(f"{f}.dns", prev["dns"])


def validate_conf(conf: dict[str, Any]) -> None:
    """The network configuration's fields (see Request.validate_conf)."""
    name = conf.get("name")
    if not isinstance(name, str) or not name:
        raise CniError(E_INVALID_CONFIG, "network configuration: 'name' is missing or not a string")
    if len(name) > MAX_NAME or not _NETWORK_NAME_RE.fullmatch(name):
        raise CniError(E_INVALID_CONFIG, f"network configuration: name {_short(name)!r} is not a valid network name",
                       "the spec: an alphanumeric character, then alphanumerics, '_', '.' or '-'")
    if "type" in conf:
        _want(isinstance(conf["type"], str) and bool(conf["type"]), "type", "a non-empty string", conf["type"])
    state_dir = conf.get("stateDir", DEFAULT_STATE_DIR)
    if not isinstance(state_dir, str) or not state_dir:
        raise CniError(E_INVALID_CONFIG, "network configuration: 'stateDir' must be a non-empty string")
    _want(_is_path(state_dir), "stateDir", "an absolute path", state_dir)
    if "ipam" in conf and conf["ipam"]:
        raise CniError(
            E_UNSUPPORTED_FIELD,
            f"unsupported field ipam={_short(json.dumps(conf['ipam']))}: crossnet-cni allocates from crossnet's own IPAM",
        )
    for key in ("dns", "runtimeConfig", "args", "capabilities"):
        if key in conf and not isinstance(conf[key], dict):
            raise CniError(E_INVALID_CONFIG, f"network configuration: {key!r} must be an object")
    if "capabilities" in conf:
        for key, value in conf["capabilities"].items():
            _want(isinstance(value, bool), f"capabilities.{_short(key)}", "a boolean", value)
    if "dns" in conf:
        _check_dns("dns", conf["dns"])
    rc = conf.get("runtimeConfig") or {}
    if "ips" in rc:
        _check_str_list("runtimeConfig.ips", rc["ips"])
    if "mac" in rc:
        _want(isinstance(rc["mac"], str), "runtimeConfig.mac", "a string", rc["mac"])
    cni_args = (conf.get("args") or {}).get("cni")
    if cni_args is not None:
        _want(isinstance(cni_args, dict), "args.cni", "an object", cni_args)
        if "ips" in cni_args:
            _check_str_list("args.cni.ips", cni_args["ips"])
    log_file = conf.get("logFile")
    if log_file is not None and not isinstance(log_file, str):
        raise CniError(E_INVALID_CONFIG, "network configuration: 'logFile' must be a string")
    if log_file:
        _want(_is_path(log_file), "logFile", "an absolute path", log_file)
    if "server" in conf:
        _want(isinstance(conf["server"], bool), "server", "a boolean", conf["server"])
    if "helper" in conf:
        _want(conf["helper"] in HELPER_MODES, "helper", " or ".join(map(repr, HELPER_MODES)), conf["helper"])
    if "serverIdleSeconds" in conf:
        idle = conf["serverIdleSeconds"]
        _want(isinstance(idle, (int, float)) and not isinstance(idle, bool) and 0 < idle <= 86400,
              "serverIdleSeconds", "a number of seconds (0 < n <= 86400)", idle)
    if VALID_ATTACHMENTS in conf:
        valid = conf[VALID_ATTACHMENTS]
        _want(isinstance(valid, list), VALID_ATTACHMENTS, "a list", valid)
        for i, item in enumerate(valid):
            _want(isinstance(item, dict), f"{VALID_ATTACHMENTS}[{i}]", "an object", item)
            for key in ("containerID", "ifname"):
                _want(isinstance(item.get(key), str), f"{VALID_ATTACHMENTS}[{i}].{key}", "a string", item.get(key))
    if "prevResult" in conf:
        validate_prev_result(conf["prevResult"])


class Request:
    """One plugin invocation: command, environment and network config."""

    def __init__(self, environ: dict[str, str], stdin: bytes):
        self.environ = environ
        self.command = environ.get("CNI_COMMAND", "")
        self.cni_version = "1.0.0"  # for error output until the config is read
        self.raw_stdin = stdin
        self.conf: dict[str, Any] = {}
        self.args: dict[str, str] = {}

    # ---- environment
    def env(self, name: str, required: bool = True) -> str:
        value = self.environ.get(name, "")
        if required and not value:
            raise CniError(E_INVALID_ENV, f"{name} is not set", f"CNI_COMMAND={self.command}")
        return value

    def check_env(self) -> None:
        """Every CNI_* variable: a string without NUL, at most MAX_ENV characters. (A
        process environment cannot hold NUL; the warm helper and the agent's /v1/cni get
        the variables as JSON, where it can.)"""
        for key, value in self.environ.items():
            if not key.startswith("CNI_"):
                continue
            if not isinstance(value, str):
                raise CniError(E_INVALID_ENV, f"{_short(key)}: not a string")
            if "\0" in value or len(value) > MAX_ENV:
                raise CniError(E_INVALID_ENV, f"{_short(key)}: {'contains a NUL byte' if chr(0) in value else 'too long'}")

    @property
    def container_id(self) -> str:
        cid = self.env("CNI_CONTAINERID")
        if len(cid) > MAX_CONTAINER_ID or not _CONTAINER_ID_RE.fullmatch(cid):
            raise CniError(E_INVALID_ENV, f"CNI_CONTAINERID: invalid container id {_short(cid)!r}",
                           "the spec: an alphanumeric character, then alphanumerics, '_', '.' or '-'")
        return cid

    @property
    def ifname(self) -> str:
        name = self.env("CNI_IFNAME")
        problem = ifname_problem(name)
        if problem:
            raise CniError(E_INVALID_ENV, f"CNI_IFNAME: invalid interface name {_short(name)!r}: {problem}")
        return name

    def netns_file(self, code_missing: int = E_INVALID_ENV) -> str:
        """CNI_NETNS (required) as a path that exists and is a network namespace."""
        netns = self.env("CNI_NETNS")
        if len(netns) > MAX_PATH:
            raise CniError(E_INVALID_ENV, "CNI_NETNS: path too long")
        path = netns if "/" in netns else f"/run/netns/{netns}"
        if not os.path.exists(path):
            raise CniError(code_missing, f"CNI_NETNS: network namespace {_short(netns)} does not exist")
        problem = netns_problem(path)
        if problem:
            raise CniError(E_INVALID_ENV, f"CNI_NETNS: {_short(netns)} {problem}")
        return path

    # ---- network config
    def load_conf(self, required: bool = True) -> None:
        data = self.raw_stdin
        if len(data) > MAX_STDIN:
            raise CniError(E_DECODE, f"the network configuration is larger than {MAX_STDIN} bytes")
        if not data.strip():
            if not required:
                return
            raise CniError(E_DECODE, "no network configuration on stdin")
        from crossnet.safejson import JsonInputError, loads

        try:
            conf = loads(data, "stdin", MAX_STDIN, MAX_DEPTH)
        except JsonInputError as exc:
            raise CniError(E_DECODE, f"failed to decode the network configuration: {exc}") from None
        if not isinstance(conf, dict):
            raise CniError(E_DECODE, "the network configuration is not a JSON object")
        self.conf = conf
        version = conf.get("cniVersion")
        if isinstance(version, str) and version in SUPPORTED_VERSIONS:
            self.cni_version = version

    def check_version(self) -> None:
        version = self.conf.get("cniVersion")
        if not isinstance(version, str) or not version:
            raise CniError(E_INCOMPATIBLE_VERSION, "cniVersion is missing from the network configuration")
        if version not in SUPPORTED_VERSIONS:
            raise CniError(
                E_INCOMPATIBLE_VERSION,
                f"incompatible CNI version {version}",
                f"supported versions: {', '.join(SUPPORTED_VERSIONS)}",
            )
        introduced = COMMANDS.get(self.command, "0.1.0")
        if version_tuple(version) < version_tuple(introduced):
            raise CniError(
                E_INCOMPATIBLE_VERSION, f"CNI_COMMAND {self.command} needs cniVersion {introduced} or later, got {version}"
            )

    def validate_conf(self) -> None:
        """Every field crossnet-cni reads, by type and value, before anything is done
        (code 7, naming the field; ``ipam``: code 2). Unknown fields are allowed (the
        spec lets runtimes and other plugins add their own)."""
        validate_conf(self.conf)

    @property
    def name(self) -> str:
        return self.conf["name"]

    @property
    def state_dir(self) -> str:
        return self.conf.get("stateDir", DEFAULT_STATE_DIR)

    def requested_ip(self) -> tuple[str, str] | None:
        """(source, address) asked for through CNI_ARGS IP=, runtimeConfig.ips or args.cni.ips;
        source names where it came from ("CNI_ARGS IP", "runtimeConfig.ips", "args.cni.ips")
        for error messages. IPv6 addresses are an error: crossnet gives IPv4 only."""
        candidates: list[tuple[str, str]] = []
        if self.args.get("IP"):
            candidates += [("CNI_ARGS IP", v) for v in self.args["IP"].split(",") if v]
        rc = self.conf.get("runtimeConfig") or {}
        if isinstance(rc.get("ips"), list):
            candidates += [("runtimeConfig.ips", v) for v in rc["ips"]]
        cni_args = (self.conf.get("args") or {}).get("cni") or {}
        if isinstance(cni_args, dict) and isinstance(cni_args.get("ips"), list):
            candidates += [("args.cni.ips", v) for v in cni_args["ips"]]
        if not candidates:
            return None
        import ipaddress

        v4: list[tuple[str, str]] = []
        for source, value in candidates:
            try:
                addr = ipaddress.ip_interface(str(value).strip()).ip
            except ValueError:
                raise CniError(source_code(source), f"{source}: {value!r} is not an IP address") from None
            if addr.version != 4:
                raise CniError(source_code(source),
                               f"{source}: {addr} is an IPv6 address; crossnet gives containers IPv4 addresses only")
            v4.append((source, str(addr)))
        if len({a for _, a in v4}) > 1:
            raise CniError(source_code(v4[0][0]),
                           f"{v4[0][0]}: crossnet gives a container one IPv4 address, got {', '.join(a for _, a in v4)}")
        return v4[0]

    def requested_mac(self) -> str | None:
        """A MAC asked for through CNI_ARGS MAC= or runtimeConfig.mac: unicast, not zero."""
        source, mac = "CNI_ARGS MAC", self.args.get("MAC")
        if not mac:
            source, mac = "runtimeConfig.mac", (self.conf.get("runtimeConfig") or {}).get("mac")
        if not mac:
            return None
        if not isinstance(mac, str) or not _MAC_RE.fullmatch(mac):
            raise CniError(source_code(source), f"{source}: {_short(str(mac))!r} is not a MAC address")
        if int(mac[:2], 16) & 1:
            raise CniError(source_code(source), f"{source}: {mac!r} is a multicast address")
        if int(mac.replace(":", ""), 16) == 0:
            raise CniError(source_code(source), f"{source}: {mac!r} is the all-zero address")
        return mac.lower()


def source_code(source: str) -> int:
    """Error code for a bad requested address: 4 when it came from the environment
    (CNI_ARGS), 7 when from the network configuration (runtimeConfig, args)."""
    return E_INVALID_ENV if source.startswith("CNI_ARGS") else E_INVALID_CONFIG


def attachment_key(container_id: str, ifname: str) -> str:
    """The IPAM key of a CNI attachment: the container id (what `crossnet status` shows),
    suffixed with the interface name for any interface other than eth0."""
    return container_id if ifname == "eth0" else f"{container_id}/{ifname}"


# --------------------------------------------------------------------------- core access


class Host:
    """This host's crossnet state (what `crossnet apply` recorded)."""

    def __init__(self, state_dir: str, required: bool = True):
        from crossnet.state import StateDir, read_json

        self.state = StateDir(state_dir)
        self.applied = read_json(self.state.applied_path) if os.path.isdir(state_dir) else None
        self.ctx = self.backend = None
        if not self.applied:
            if required:  # transient: the node's `crossnet apply` has not run yet
                raise CniError(
                    E_TRY_AGAIN,
                    f"this host is not configured for crossnet yet (no {self.state.applied_path}); try again later",
                    "run `crossnet apply -f CLUSTER` on this host first",
                )
            return
        from crossnet.backends import get_backend
        from crossnet.backends.base import HostContext

        try:
            self.ctx = HostContext.from_json(self.applied["context"])
            self.backend = get_backend(self.ctx.backend)
        except Exception as exc:  # noqa: BLE001
            raise CniError(E_NOT_CONFIGURED, f"unreadable crossnet state {self.state.applied_path}", repr(exc)) from None

    @property
    def configured(self) -> bool:
        return self.ctx is not None

    def pool(self):
        from crossnet.containers import pool_for

        return pool_for(self.state, self.ctx)


# --------------------------------------------------------------------------- results


def _ip_entry(version: str, cidr: str, gateway: str, iface_index: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"address": cidr, "gateway": gateway, "interface": iface_index}
    if version_tuple(version) < (1, 0, 0):
        entry = {"version": "4", **entry}
    return entry


def build_result(req: Request, host: Host, att: Any, host_mac: str | None) -> dict[str, Any]:
    version = req.cni_version
    prev = req.conf.get("prevResult") if isinstance(req.conf.get("prevResult"), dict) else {}
    interfaces = list(prev.get("interfaces") or [])
    ips = list(prev.get("ips") or [])
    routes = list(prev.get("routes") or [])
    base = len(interfaces)
    host_iface: dict[str, Any] = {"name": att.host_if}
    if host_mac:
        host_iface["mac"] = host_mac
    cont_iface: dict[str, Any] = {"name": att.ifname, "mac": att.mac, "sandbox": att.netns}
    if version_tuple(version) >= (1, 1, 0):
        host_iface["mtu"] = cont_iface["mtu"] = att.mtu
    interfaces += [host_iface, cont_iface]
    ips.append(_ip_entry(version, f"{att.address}/{att.prefixlen}", att.gateway, base + 1))
    routes.append({"dst": "0.0.0.0/0", "gw": att.gateway})
    result: dict[str, Any] = {"cniVersion": version, "interfaces": interfaces, "ips": ips, "routes": routes}
    from crossnet.dns.resolv import cni_dns
    from crossnet.state import StateDir

    result["dns"] = cni_dns(StateDir(req.state_dir), req.conf.get("dns") or prev.get("dns"))  # ours first
    return result


# --------------------------------------------------------------------------- commands


_VERSION_RE = re.compile(r'.*"cniVersion":"([0-9.]*)"', re.S)


def version_reply(stdin: bytes) -> dict[str, Any]:
    """VERSION: the plugin's supported versions, never an error. ``cniVersion`` is the one
    given on stdin when this plugin supports it (the spec: "the value of cniVersion
    specified on input"), else the newest supported one: unsupported, missing or garbage
    input gets an answer the runtime can use. The rule is the shell wrapper's and the native
    client's (whitespace removed, the last ``"cniVersion":"N.N.N"``), so every client
    answers the same bytes."""
    text = re.sub(r"[ \t\r\n]", "", stdin.decode("utf-8", "surrogateescape"))
    m = _VERSION_RE.match(text)
    version = m.group(1) if m and m.group(1) in SUPPORTED_VERSIONS else SUPPORTED_VERSIONS[-1]
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


def version_text(stdin: bytes) -> str:
    """The VERSION reply exactly as the wrapper and the native client print it (compact)."""
    return json.dumps(version_reply(stdin), separators=(",", ":"))


def cmd_version(req: Request) -> dict[str, Any]:
    return version_reply(req.raw_stdin)


def _prepare(req: Request) -> None:
    """Read and check everything of the call that every command shares: the CNI_*
    variables' form, the network configuration (decoding, version, every field) and
    CNI_ARGS. Nothing is changed before this (and the command's own checks) passed."""
    req.check_env()
    req.load_conf()
    req.check_version()
    req.validate_conf()
    req.args = parse_cni_args(req.environ.get("CNI_ARGS", ""))


def _check_requested_ip(host: Host, pool: Any, source: str, address: str) -> None:
    import ipaddress

    addr = ipaddress.IPv4Address(address)
    if addr not in pool.usable:
        raise CniError(source_code(source), f"{source}: {addr} is outside this host's container range {pool.usable}",
                       f"host {host.ctx.host}, network {host.ctx.network}")
    if addr in pool.reserved:
        raise CniError(source_code(source),
                       f"{source}: {addr} is reserved in {pool.subnet} (gateway, host or broadcast address)")


def cmd_add(req: Request) -> dict[str, Any]:
    _prepare(req)
    cid, ifname = req.container_id, req.ifname
    netns = req.env("CNI_NETNS")
    req.env("CNI_PATH")
    req.netns_file()
    asked = req.requested_ip()
    requested = asked[1] if asked else None
    mac = req.requested_mac()
    host = Host(req.state_dir)
    from crossnet import containers

    try:  # never the host's own namespace: its default route would be replaced (code 4: CNI_NETNS is invalid)
        containers.check_target(netns, f"CNI_NETNS {netns}")
    except containers.HostNamespace as exc:
        raise CniError(E_INVALID_ENV, str(exc)) from None
    from crossnet.errors import CrossnetError, IpamError

    key = attachment_key(cid, ifname)
    pool = host.pool()
    if asked:
        _check_requested_ip(host, pool, *asked)
    meta: dict[str, Any] = {"cni": {"network": req.name, "containerID": cid, "ifname": ifname}}
    if req.args.get("K8S_POD_NAME"):
        meta["name"] = req.args["K8S_POD_NAME"]  # podman sends the container name here
    try:
        att = containers.attach(host.state, host.ctx, host.backend, key, netns, requested=requested, ifname=ifname,
                                mac=mac, meta=meta, reuse=False, foreign=lambda alloc: not_ours(alloc, req.name))
    except IpamError as exc:
        raise CniError(E_IPAM, str(exc)) from None
    except containers.NotReady as exc:  # transient: `crossnet apply` has not made the bridge (yet)
        raise CniError(E_TRY_AGAIN, f"{exc}; try again later") from None
    except containers.HostNamespace as exc:  # the namespace changed under the path since the check above
        raise CniError(E_INVALID_ENV, f"CNI_NETNS: {exc}") from None
    except containers.InUse as exc:
        raise CniError(E_IN_USE, f"CNI_CONTAINERID {cid}, CNI_IFNAME {ifname}: {exc}",
                       "the spec forbids a second ADD of a (container id, interface) without DEL; "
                       "the existing attachment was left as it is") from None
    except CrossnetError as exc:
        raise CniError(E_ATTACH, str(exc)) from None
    except OSError as exc:
        raise CniError(E_ATTACH, f"attaching {ifname} in {netns} failed: {exc}") from None
    mac_before = att.mac
    try:
        host_mac = _finish_links(att, mac)
    except Exception as exc:  # noqa: BLE001 - undo the attach, then report
        _quiet_detach(host, key)
        if att.allocation is not None:
            pool.undo(att.allocation)  # the next-address pointer back where it was (a new allocation only)
        raise CniError(E_ATTACH, f"configuring {ifname} in {netns} failed: {exc}") from None
    if att.mac != mac_before:  # a requested MAC set on an interface that already existed
        pool.update_meta(key, {"mac": att.mac})
    return build_result(req, host, att, host_mac)


def _finish_links(att: Any, mac: str | None) -> str | None:
    """Set a requested MAC inside the container when the interface already existed with
    another one (a new one is created with it); return the host-side veth's MAC."""
    from crossnet.netlink import iproute as nl

    if mac and (att.mac or "").lower() != mac:
        with nl.open_ipr(att.netns) as cipr:
            cipr.link("set", index=nl.require_index(cipr, att.ifname), address=mac)
        att.mac = mac
    if att.host_mac:
        return att.host_mac
    with nl.open_ipr() as ipr:
        info = nl.link_info(ipr, att.host_if)
        return info.mac if info else None


def _quiet_detach(host: Host, key: str) -> None:
    from crossnet import containers

    try:
        containers.detach(host.state, host.ctx, host.backend, key)
    except Exception:  # noqa: BLE001
        pass


def cmd_del(req: Request) -> None:
    _prepare(req)
    cid, ifname = req.container_id, req.ifname
    if len(req.environ.get("CNI_NETNS", "")) > MAX_PATH:
        raise CniError(E_INVALID_ENV, "CNI_NETNS: path too long")
    host = Host(req.state_dir, required=False)
    if not host.configured:
        return None  # nothing of ours can exist: DEL succeeds
    from crossnet import containers
    from crossnet.errors import CrossnetError

    key = attachment_key(cid, ifname)
    alloc = host.pool().get(key)
    if alloc is not None and not made_by(alloc, req.name):
        return None  # `crossnet attach`'s, or another network's (as GC): not this network's to remove
    netns = req.environ.get("CNI_NETNS", "")
    if netns and containers.attached_elsewhere(alloc, netns):
        return None  # the id lives in another namespace (this one's ADD was refused): nothing of ours here
    try:
        containers.detach(host.state, host.ctx, host.backend, key)
    except CrossnetError as exc:
        raise CniError(E_ATTACH, str(exc)) from None
    except OSError as exc:
        raise CniError(E_ATTACH, f"detaching {cid} failed: {exc}") from None
    return None


def made_by(alloc: Any, network: str) -> bool:
    """The IPAM entry is an attachment crossnet-cni made for ``network`` (its ADD records
    ``meta.cni``); DEL and GC remove only those."""
    cni = alloc.meta.get("cni")
    return isinstance(cni, dict) and cni.get("network") == network


def not_ours(alloc: Any, network: str) -> str | None:
    """Why an existing IPAM entry under an ADD's key is not ``network``'s to re-ADD (the
    spec: an attachment is (network, container id, ifname)), or None when it is. Taking
    it over would re-record another network's (or `crossnet attach`'s) attachment as
    this network's, for this network's DEL and GC to remove."""
    if made_by(alloc, network):
        return None
    cni = alloc.meta.get("cni")
    if isinstance(cni, dict):
        return f"attached by network {_short(str(cni.get('network')))!r}"
    return "attached by crossnet attach or the agent, not by crossnet-cni"


def cmd_check(req: Request) -> None:
    _prepare(req)
    cid, ifname = req.container_id, req.ifname
    req.env("CNI_NETNS")
    req.env("CNI_PATH")
    netns_file = req.netns_file(code_missing=E_UNKNOWN_CONTAINER)  # gone: 3; not a netns: 4
    host = Host(req.state_dir)
    key = attachment_key(cid, ifname)
    alloc = host.pool().get(key)
    if alloc is None or not made_by(alloc, req.name):  # another network's is not this one's to check
        raise CniError(E_UNKNOWN_CONTAINER, f"container {cid} ({ifname}) is not attached to {req.name}")
    problems = check_attachment(host, alloc, netns_file, ifname, req.conf.get("prevResult"))
    if problems:
        raise CniError(E_CHECK, f"container {cid}: {problems[0]}", "; ".join(problems))
    return None


def check_attachment(host: Host, alloc: Any, netns: str, ifname: str, prev: Any) -> list[str]:
    from crossnet import datapath
    from crossnet.backends.base import Backend
    from crossnet.netlink import iproute as nl

    ctx = host.ctx
    routed = datapath.routed(ctx)
    cidr = f"{alloc.address}/{32 if routed else ctx.prefixlen}"
    gateway = datapath.GATEWAY if routed else str(ctx.gateway)
    host_if = alloc.meta.get("host_if")
    problems: list[str] = []
    if isinstance(prev, dict):
        prev_ips = [ip.get("address") for ip in prev.get("ips") or [] if isinstance(ip, dict)]
        if prev_ips and cidr not in prev_ips:
            problems.append(f"prevResult has {', '.join(map(str, prev_ips))}, crossnet's IPAM has {cidr}")
    with nl.open_ipr(netns) as cipr:
        info = nl.link_info(cipr, ifname)
        if info is None:
            problems.append(f"interface {ifname} is missing in {netns}")
        else:
            if not info.up:
                problems.append(f"interface {ifname} is down")
            if info.mtu != ctx.mtu:
                problems.append(f"interface {ifname} has MTU {info.mtu}, expected {ctx.mtu}")
            if cidr not in nl.addresses(cipr, info.index):
                problems.append(f"interface {ifname} lacks address {cidr}")
            default = [r for r in nl.routes(cipr) if r.dst == "0.0.0.0/0"]
            if not any(r.gateway == gateway and r.oif == info.index for r in default):
                problems.append(f"no default route via {gateway} dev {ifname}")
    with nl.open_ipr() as ipr:
        hinfo = nl.link_info(ipr, host_if) if host_if else None
        if hinfo is None:
            problems.append(f"host interface {host_if} is missing")
        else:
            if not hinfo.up:
                problems.append(f"host interface {host_if} is down")
            if routed:
                if hinfo.master:
                    problems.append(f"host interface {host_if} has a master (routed veth expected)")
                if not any(r.dst == f"{alloc.address}/32" and r.oif == hinfo.index for r in nl.routes(ipr)):
                    problems.append(f"no route {alloc.address}/32 dev {host_if}")
            elif type(host.backend).attach_port is Backend.attach_port:
                bridge = nl.ifindex(ipr, ctx.bridge)
                if bridge is None or hinfo.master != bridge:
                    problems.append(f"host interface {host_if} is not a port of {ctx.bridge}")
    return problems


def cmd_status(req: Request) -> None:
    req.check_env()
    req.load_conf()
    req.check_version()
    req.validate_conf()
    host = Host(req.state_dir, required=False)
    if not host.configured:
        raise CniError(E_NOT_AVAILABLE, f"crossnet is not configured on this host (no {host.state.applied_path})")
    from crossnet.netlink import iproute as nl

    with nl.open_ipr() as ipr:
        if nl.ifindex(ipr, host.ctx.bridge) is None:
            raise CniError(E_NOT_AVAILABLE, f"crossnet bridge {host.ctx.bridge} is missing (run `crossnet apply`)")
    return None


def cmd_gc(req: Request) -> None:
    """Remove this network's CNI attachments that the runtime no longer knows."""
    _prepare(req)
    valid = {(item["containerID"], item["ifname"]) for item in req.conf.get(VALID_ATTACHMENTS, [])}  # validated
    host = Host(req.state_dir, required=False)
    if not host.configured:
        return None
    from crossnet import containers

    stale = []
    for key, alloc in host.pool().entries().items():
        if not made_by(alloc, req.name):
            continue  # not made by this network's plugin (e.g. `crossnet attach`)
        cni = alloc.meta["cni"]
        if (cni.get("containerID"), cni.get("ifname")) not in valid:
            stale.append(key)
    errors = []
    for key in stale:
        try:
            containers.detach(host.state, host.ctx, host.backend, key)
        except Exception as exc:  # noqa: BLE001 - keep collecting
            errors.append(f"{key}: {exc}")
    if errors:
        raise CniError(E_ATTACH, f"GC could not remove {len(errors)} attachment(s)", "; ".join(errors))
    return None


HANDLERS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "VERSION": cmd_version,
            "STATUS": cmd_status, "GC": cmd_gc}


# --------------------------------------------------------------------------- entry point


def run(environ: dict[str, str], stdin: bytes) -> tuple[int, dict[str, Any] | None]:
    """Execute one invocation; returns (exit code, JSON for stdout or None)."""
    req = Request(environ, stdin)
    try:
        command = req.command
        if not command:
            raise CniError(E_INVALID_ENV, "CNI_COMMAND is not set")
        handler = HANDLERS.get(command)
        if handler is None:
            raise CniError(E_INVALID_ENV, f"CNI_COMMAND: unknown command {command!r}",
                           f"supported: {', '.join(HANDLERS)}")
        out = handler(req)
        return 0, out
    except CniError as exc:
        return 1, _error(req, exc.code, exc.msg, exc.details)
    except Exception as exc:  # noqa: BLE001 - the runtime must get a JSON error, never a traceback
        import traceback

        return 1, _error(req, E_INTERNAL, f"internal error: {exc.__class__.__name__}: {exc}",
                         traceback.format_exc(limit=5).replace("\n", " | "))


def load_request(raw: bytes, max_size: int) -> dict[str, Any]:
    """A call forwarded by a client (the warm helper's socket): ``{"environ", "stdin",
    "netns", "code"}`` as bounded JSON (ValueError with one line when malformed)."""
    from crossnet.safejson import loads

    req = loads(raw, "request", max_size, 8)
    if not isinstance(req, dict):
        raise ValueError("request: not a JSON object")
    return req


def unpack_request(req: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    """(environ, stdin) of a forwarded call (the warm helper's and the agent's /v1/cni
    requests): ``environ`` an object of strings, of which the CNI_* variables are kept
    (all the plugin reads), ``stdin`` a string (the client's bytes, undecodable ones as
    surrogate escapes). ValueError naming the field when malformed; the values
    themselves are checked by :func:`run` like a process environment and stdin."""
    environ = req.get("environ", {})
    if not isinstance(environ, dict):
        raise ValueError(f"environ: must be an object, not {_type_name(environ)}")
    env: dict[str, str] = {}
    for key, value in environ.items():
        if not isinstance(value, str):
            raise ValueError(f"environ.{_short(key)}: must be a string, not {_type_name(value)}")
        if key.startswith("CNI_"):
            env[key] = value
    stdin = req.get("stdin", "")
    if not isinstance(stdin, str):
        raise ValueError(f"stdin: must be a string, not {_type_name(stdin)}")
    try:
        data = stdin.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ValueError("stdin: holds a lone surrogate (\\ud800-\\udfff) that no byte string gives") from None
    return env, data


def bad_request_reply(msg: str) -> dict[str, Any]:
    """The helper's reply to a request it cannot read: a CNI decoding error (code 6)."""
    err = {"cniVersion": SUPPORTED_VERSIONS[-1], "code": E_DECODE, "msg": f"crossnet-cni helper: {msg}",
           "details": ""}
    return {"rc": 1, "stdout": json.dumps(err)}


def _error(req: Request, code: int, msg: str, details: str) -> dict[str, Any]:
    version = req.cni_version if req.cni_version in SUPPORTED_VERSIONS else SUPPORTED_VERSIONS[-1]
    return {"cniVersion": version, "code": code, "msg": msg, "details": details}


def _log(req_env: dict[str, str], stdin: bytes, rc: int, out: Any, elapsed: float, via: str = "process") -> None:
    from crossnet.safejson import JsonInputError, loads

    try:
        conf = loads(stdin, "stdin", MAX_STDIN, MAX_DEPTH) if stdin.strip() else {}
        path = conf.get("logFile") if isinstance(conf, dict) else None
    except JsonInputError:
        path = None
    if not _is_path(path):
        return
    # line: the shape and time format of every JSON log
    from crossnet.logjson import append_line, line

    command = req_env.get("CNI_COMMAND")
    fields = {
        "command": command,
        "containerID": req_env.get("CNI_CONTAINERID"),
        "netns": req_env.get("CNI_NETNS"),
        "ifname": req_env.get("CNI_IFNAME"),
        "args": req_env.get("CNI_ARGS"),
        "rc": rc,
        "elapsed_ms": round(elapsed * 1000, 1),
        "via": via,
    }
    if rc:
        fields["error"] = out
    text = line("crossnet.cni", f"{command} {'failed' if rc else 'ok'}", "error" if rc else "info", **fields)
    try:
        append_line(path, text)  # never through a link, never into a FIFO or device
    except (OSError, ValueError):
        pass


def output_text(out: Any) -> str | None:
    return None if out is None else json.dumps(out)


def run_local(environ: dict[str, str], stdin: bytes, spawn_for: str | None = None,
              conf: dict | None = None) -> None:
    """Run the call in this process (no helper served it); with spawn_for, first start
    the warm helper of that state dir for the next calls (crossnet.cni.server) — only
    with ``"helper": "spawn"`` (a conflist without the key: written by crossnet before
    0.2, or by hand). With ``"helper": "external"`` (what `crossnet cni install` writes)
    the helper is started by systemd (crossnet-cni-helper.socket) or is the agent."""
    started = time.perf_counter()
    if spawn_for is not None and (conf or {}).get("helper", "spawn") == "spawn":
        from crossnet.cni import DEFAULT_IDLE, spawn

        conf = conf or {}
        idle = conf.get("serverIdleSeconds", DEFAULT_IDLE)
        log_file = conf.get("logFile") if isinstance(conf.get("logFile"), str) else None
        ok = isinstance(idle, (int, float)) and not isinstance(idle, bool) and 0 < idle <= 86400
        spawn(spawn_for, float(idle) if ok else DEFAULT_IDLE, log_file if _is_path(log_file) else None)
    rc, out = run(environ, stdin)
    text = output_text(out)
    if text is not None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    _log(environ, stdin, rc, out, time.perf_counter() - started)
    sys.exit(rc)


def main() -> None:
    """Console script `crossnet-cni` (the installed wrapper calls crossnet.cni.client.main,
    which does the same through crossnet.cni.entry)."""
    from crossnet.cni import entry

    entry(version_text, run_local)


if __name__ == "__main__":
    main()
