"""The shape of every command's `-o json` output (docs/json.md lists them; the tests
check real outputs against them).

A shape is
- a type name: "str", "int", "number", "bool", "time" (RFC 3339 UTC, `...Z`), "any";
  a trailing "?" allows null;
- a dict {field: shape}: an object with at least these fields (fields may be added,
  never removed or renamed; "field?" as a key: the field may be absent);
- a one-item list [shape]: a list of such items;
- a tuple of shapes: any one of them.

Every command prints one JSON object; on failure it prints ERROR instead."""

from __future__ import annotations

import json
import re
from typing import Any

ERROR = {"ok": "bool", "error": {"message": "str", "kind": "str", "exit_code": "int", "option?": "str"}}

PAIR = {"src": "str", "dst": "str", "ok": "bool", "rtt_ms": "number?", "error": "str?",
        "src_host": "str?", "dst_host": "str?"}
CONTAINER = {"id": "str", "netns": "str?", "address": "str?", "ifname": "str", "host_if": "str?", "name": "str?",
             "state": "str", "missing?": "str", "complete?": "str"}
APPLY = {"host": "str", "backend": "str", "dry_run": "bool", "changed": "bool",
         "changes": [{"action": "str", "command": "str"}], "subnet": "str?", "mtu": "int?", "elapsed_s": "number"}
HOP = {"host": "str", "device": "str?", "kind": "str", "detail": "str?", "netns": "str?"}
TRACE = {"src": "str", "dst": "str", "src_address": "str?", "dst_address": "str?", "src_host": "str?",
         "dst_host": "str?", "backend": "str?", "transport": "str?", "tunnel": "str?", "complete": "bool",
         "verified": "bool", "flagged": ["any"], "warnings": ["str"], "hops": [HOP]}
LAB_HOST = {"name": "str", "netns": "str", "address": "str", "subnet": "str?", "underlay_subnet": "str",
            "gateway": "str?", "state_dir": "str",
            "containers": [{"id": "str", "netns": "str", "address": "str?"}]}
LAB_SUMMARY = {"lab": "str", "name": "str", "underlay": "str", "backend": "str", "phase": "str?", "applied": "bool",
               "block": "str", "network": "str?", "mtu": "int?", "dir": "str", "cluster_file": "str",
               "fabric": {"netns": "str", "kind": "str", "address": "str"}, "hosts": [LAB_HOST]}
LAB_DOWN = {"lab": "str", "name": "str", "existed": "bool", "namespaces_removed": ["str"], "processes_killed": "int",
            "errors": ["str"]}
PROBLEM = {"field": "str", "message": "str"}
EXPOSE = {"network": "str", "exposed": "bool", "address": "str", "dry_run": "bool", "changed": "bool",
          "agent_resync": "bool", "changes": [{"action": "str", "command": "str"}]}

SHAPES: dict[str, Any] = {
    "apply": APPLY,
    "reset": {"changed": "bool", "changes": [{"action": "str", "command": "str"}]},
    "attach": {"id": "str", "netns": "str", "address": "str", "cidr": "str", "gateway": "str", "ifname": "str",
               "host_if": "str", "mtu": "int", "mac": "str", "changed": "bool"},
    "detach": {"id": "str", "detached": "bool", "address?": "str", "host_if?": "str?", "asked_as?": "str"},
    "status": {"host": "str", "cluster": "str", "backend": "str", "address": "str", "iface": "str", "subnet": "str",
               "gateway": "str", "bridge": "str?", "mtu": "int", "underlay_mtu": "int", "masquerade": "bool",
               "datapath": {"datapath": "str", "configured": "str", "layout": "str", "why": "str?",
                            "counters?": "any"},
               "interrupted": "bool", "drift": ["any"], "path_mtu_measured_at": "time?",
               "peers": [{"name": "str", "address": "str", "subnet": "str", "programmed": "bool"}],
               "connections?": [{"peer": "str", "address": "str", "transport": "str", "encrypted": "bool",
                                 "since": "time?"}],
               "containers": [CONTAINER], "dns": {"served": "bool", "text": "str"}},
    "check": {"host": "str", "ok": "bool", "peer_containers": "str", "note": "str?",
              "stale": [{"id": "str", "address": "str", "netns": "str?"}],
              "incomplete": [{"id": "str", "address": "str", "netns": "str?", "complete": "str?"}],
              "networks": ["str"],
              "pairs": [dict(PAIR, dst_address="str", kind="str", network="str", dst_network="str")],
              "isolation?": [dict(PAIR, dst_address="str", kind="str", network="str", dst_network="str",
                                  reached="bool")]},
    "gc": {"dry_run": "bool", "collected": [{"id": "str", "reason": "str", "address": "str?", "network?": "str"}]},
    "validate": {"ok": "bool", "file": "str", "cluster": "str?", "backend": "str?", "hosts": ["str"],
                 "problems": [PROBLEM]},
    "trace": TRACE,
    "keygen": {"public_key": "str", "created": "bool", "rotated": "bool"},
    "expose": EXPOSE,
    "hide": EXPOSE,
    "cni install": {"network": "str", "conflist": "str", "plugin": "str", "host": "str", "subnet": "str",
                    "portmap": "bool", "warnings": ["str"]},
    "etcd init": {"result": "str", "key": "str", "config": {"network": "str", "backend": "str"}},
    "etcd show": {"config": ({"network": "str", "backend": "str"}, "any?"), "revision": "int",
                  "hosts": [{"name": "str", "address": "str", "subnet": "str", "lease": "str"}], "remembered": "any"},
    "token list": {"tokens": [{"id": "str", "state": "str", "created": "time?", "expires": "time?"}]},
    "lab up": LAB_SUMMARY,
    "lab down": (LAB_DOWN, {"labs": [LAB_DOWN]}),
    "lab list": {"labs": [{"lab": "str", "name": "str", "phase": "str", "underlay": "str?", "backend": "str?",
                           "hosts": "int", "block": "str?", "applied": "bool?", "namespaces": "str",
                           "created_at": "time?", "dir": "str"}]},
    "lab check": {"lab": "str", "backend": "str", "underlay": "str", "ok": "bool", "pairs": [PAIR]},
    "lab demo": ({"lab": "str", "backend": "str", "underlay": "str", "applied": "bool", "ok": "bool",
                  "hosts": [{"name": "str", "address": "str", "subnet": "str?"}],
                  "containers": [{"name": "str", "host": "str", "address": "str?"}], "pairs": [PAIR],
                  "runtime": "str", "elapsed_s": "number"},
                 dict(ERROR, lab="str", backend="str", underlay="str", pairs=["any"])),
    "lab trace": TRACE,
}
# commands whose -o json has its own documented format, not described here
OWN_FORMAT = {"bench all": "docs/benchmarks.md", "bench dataplane": "docs/benchmarks.md", "bench mesh": "docs/benchmarks.md",
              "bench control": "docs/benchmarks.md", "bench transport": "docs/benchmarks.md",
              "bench networks": "docs/benchmarks.md", "bench wireguard": "docs/benchmarks.md",
              "bench datapath": "docs/benchmarks.md"}

_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
_TYPES = {"str": str, "int": int, "number": (int, float), "bool": bool}


def problems(shape: Any, value: Any, where: str = "$") -> list[str]:
    """Where `value` does not match `shape` (empty: it matches)."""
    if isinstance(shape, tuple):
        alts = [problems(s, value, where) for s in shape]
        return [] if any(not a for a in alts) else min(alts, key=len)
    if isinstance(shape, str):
        name, nullable = shape.rstrip("?"), shape.endswith("?")
        if value is None:
            return [] if nullable or name == "any" else [f"{where}: null, expected {name}"]
        if name == "any":
            return []
        if name == "time":
            return [] if isinstance(value, str) and _TIME.match(value) else [f"{where}: {value!r} is not RFC 3339 UTC"]
        t = _TYPES[name]
        if isinstance(value, bool) and name != "bool" or not isinstance(value, t):
            return [f"{where}: {type(value).__name__} {value!r:.40}, expected {name}"]
        return []
    if isinstance(shape, list):
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {type(value).__name__}"]
        return [p for i, v in enumerate(value) for p in problems(shape[0], v, f"{where}[{i}]")]
    if not isinstance(value, dict):
        return [f"{where}: expected an object, got {type(value).__name__}"]
    out = []
    for key, sub in shape.items():
        name = key.rstrip("?")
        if name not in value:
            if not key.endswith("?"):
                out.append(f"{where}.{name}: missing")
            continue
        out += problems(sub, value[name], f"{where}.{name}")
    return out


def time_problems(value: Any, where: str = "$") -> list[str]:
    """Every time field (crossnet.cli.contract.TIME_KEYS) at any depth is RFC 3339 UTC or null."""
    from crossnet.cli.contract import TIME_KEYS

    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in time_problems(v, f"{where}[{i}]")]
    if not isinstance(value, dict):
        return []
    out = []
    for k, v in value.items():
        if k in TIME_KEYS and not isinstance(v, (bool, dict, list)):
            out += problems("time?", v, f"{where}.{k}")
        else:
            out += time_problems(v, f"{where}.{k}")
    return out


def check_output(command: str, text: str) -> list[str]:
    """Problems of one command's stdout: one JSON object of its shape (or the error
    shape), times in RFC 3339 UTC."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        return [f"not one JSON document: {exc}"]
    if not isinstance(value, dict):
        return [f"not a JSON object: {type(value).__name__}"]
    shape = ERROR if value.get("ok") is False and isinstance(value.get("error"), dict) and command != "lab demo" \
        else SHAPES[command]
    return problems(shape, value) + time_problems(value)


def _doc(shape: Any) -> Any:
    if isinstance(shape, tuple):
        return {"one of": [_doc(s) for s in shape]}
    if isinstance(shape, list):
        return [_doc(shape[0])]
    if isinstance(shape, dict):
        return {k: _doc(v) for k, v in shape.items()}
    return shape


def render(command: str) -> str:
    """The shape of `command` (or "error") as docs/json.md shows it."""
    return json.dumps(_doc(SHAPES[command] if command != "error" else ERROR), indent=2)
