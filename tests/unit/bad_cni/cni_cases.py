"""Bad inputs of crossnet-cni: network configurations (stdin) and CNI_* environments that
must each end in one CNI error with the spec's code (never 199, never a traceback) and
change nothing. Used by tests/unit/test_cni_bad_input.py (plugin.run, no kernel) and
tests/e2e/test_bad_input.py (the installed plugin in a lab host, every client path,
kernel state and state dir compared before and after each case).

A case is data: the command, what to change in a valid ADD environment, the stdin
(bytes, or a dict/list serialised as JSON; ``BASE`` marks "the valid configuration
with these fields replaced/removed") and the expected code. ``{NETNS}``, ``{FILE}``,
``{DIR}`` and ``{STATE}`` in values stand for the test's container namespace, a regular
file, a directory and the host's state dir.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

CID = "5" * 64
DROP = object()  # remove this key


@dataclass
class Case:
    id: str
    code: int
    command: str = "ADD"
    env: dict[str, Any] = field(default_factory=dict)  # CNI_* changes (DROP removes)
    conf: dict[str, Any] | None = None  # changes to the valid configuration (DROP removes)
    stdin: bytes | None = None  # raw stdin instead of a configuration
    nul: bool = False  # holds a NUL in an environment value: only through the helper/agent JSON

    def environ(self, netns: str, file: str, directory: str) -> dict[str, str]:
        env = {"CNI_COMMAND": self.command, "CNI_CONTAINERID": CID, "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
               "CNI_PATH": "/usr/lib/cni"}
        for k, v in self.env.items():
            if v is DROP:
                env.pop(k, None)
            else:
                env[k] = v.replace("{NETNS}", netns).replace("{FILE}", file).replace("{DIR}", directory)
        return env

    def stdin_bytes(self, state_dir: str, version: str = "1.0.0") -> bytes:
        if self.stdin is not None:
            return self.stdin
        conf: dict[str, Any] = {"cniVersion": version, "name": "crossnet", "type": "crossnet-cni",
                                "stateDir": state_dir}
        for k, v in (self.conf or {}).items():
            if v is DROP:
                conf.pop(k, None)
            else:
                conf[k] = json.loads(json.dumps(v).replace("{STATE}", state_dir))
        return json.dumps(conf).encode()


def _c(id: str, code: int, **kw: Any) -> Case:
    return Case(id, code, **kw)


DECODE = [
    _c("stdin-empty", 6, stdin=b""),
    _c("stdin-blank", 6, stdin=b" \n\t "),
    _c("stdin-not-json", 6, stdin=b"{this is not json"),
    _c("stdin-list", 6, stdin=b"[1, 2]"),
    _c("stdin-string", 6, stdin=b'"crossnet"'),
    _c("stdin-number", 6, stdin=b"42"),
    _c("stdin-null", 6, stdin=b"null"),
    _c("stdin-binary", 6, stdin=b"\xff\xfe\x00\x01"),
    _c("stdin-utf16", 6, stdin='{"cniVersion":"1.0.0","name":"x"}'.encode("utf-16")),
    _c("stdin-latin1", 6, stdin=b'{"cniVersion":"1.0.0","name":"caf\xe9"}'),
    _c("stdin-nested-100000-lists", 6, stdin=b"[" * 100_000),
    _c("stdin-nested-100000-objects", 6, stdin=b'{"a":' * 100_000),
    _c("stdin-nested-100000-closed", 6, stdin=b"[" * 100_000 + b"]" * 100_000),
    _c("stdin-nested-33-in-field", 6, stdin=b'{"cniVersion":"1.0.0","name":"x","z":' + b"[" * 33 + b"]" * 33 + b"}"),
    _c("stdin-trailing-garbage", 6, stdin=b'{"cniVersion":"1.0.0","name":"x"} {}'),
    _c("stdin-duplicate-key", 6, stdin=b'{"cniVersion":"1.0.0","name":"a","name":"b"}'),
    _c("stdin-duplicate-statedir", 6, stdin=b'{"cniVersion":"1.0.0","name":"a","stateDir":"/a","stateDir":"/b"}'),
    _c("stdin-nan", 6, stdin=b'{"cniVersion":"1.0.0","name":"a","serverIdleSeconds":NaN}'),
    _c("stdin-infinity", 6, stdin=b'{"cniVersion":"1.0.0","name":"a","serverIdleSeconds":Infinity}'),
    _c("stdin-huge-int", 6, stdin=b'{"cniVersion":"1.0.0","name":"a","x":' + b"9" * 5000 + b"}"),
    _c("stdin-over-1mib", 6, stdin=b'{"cniVersion":"1.0.0","name":"a","pad":"' + b"x" * (1 << 20) + b'"}'),
    _c("stdin-raw-control-char", 6, stdin=b'{"cniVersion":"1.0.0","name":"a\x01"}'),
    _c("stdin-raw-nul", 6, stdin=b'{"cniVersion":"1.0.0",\x00"name":"a"}'),
    _c("stdin-single-quotes", 6, stdin=b"{'cniVersion':'1.0.0'}"),
    _c("stdin-unterminated-string", 6, stdin=b'{"cniVersion":"1.0.0","name":"a'),
    _c("stdin-bad-escape", 6, stdin=b'{"cniVersion":"1.0.0","name":"\\x41"}'),
    _c("del-stdin-not-json", 6, command="DEL", stdin=b"{"),
    _c("check-stdin-nested", 6, command="CHECK", stdin=b"[" * 5000),
    _c("status-stdin-not-json", 6, command="STATUS", stdin=b"}", env={"CNI_CONTAINERID": DROP, "CNI_IFNAME": DROP}),
    _c("gc-stdin-list", 6, command="GC", stdin=b"[]", env={"CNI_CONTAINERID": DROP, "CNI_IFNAME": DROP}),
]

VERSION = [
    _c("version-missing", 1, conf={"cniVersion": DROP}),
    _c("version-number", 1, conf={"cniVersion": 1}),
    _c("version-list", 1, conf={"cniVersion": ["1.0.0"]}),
    _c("version-empty", 1, conf={"cniVersion": ""}),
    _c("version-unknown", 1, conf={"cniVersion": "9.9.9"}),
    _c("version-too-old", 1, conf={"cniVersion": "0.2.0"}),
    _c("version-garbage", 1, conf={"cniVersion": "1.0.0; rm -rf /"}),
    _c("check-needs-040", 1, command="CHECK", conf={"cniVersion": "0.3.1"}),
    _c("status-needs-110", 1, command="STATUS", conf={"cniVersion": "1.0.0"},
       env={"CNI_CONTAINERID": DROP, "CNI_IFNAME": DROP}),
]

_PREV = {
    "ips-number": {"ips": 5},
    "interfaces-number": {"interfaces": 7},
    "routes-bool": {"routes": True},
    "interfaces-string": {"interfaces": "abc"},
    "ips-string": {"ips": "abc"},
    "routes-object": {"routes": {"dst": "0.0.0.0/0"}},
    "interface-number": {"interfaces": [5]},
    "interface-no-name": {"interfaces": [{}]},
    "interface-name-number": {"interfaces": [{"name": 5}]},
    "interface-name-empty": {"interfaces": [{"name": ""}]},
    "interface-mac-number": {"interfaces": [{"name": "eth0", "mac": 5}]},
    "interface-sandbox-list": {"interfaces": [{"name": "eth0", "sandbox": []}]},
    "interface-mtu-negative": {"interfaces": [{"name": "eth0", "mtu": -1}]},
    "interface-mtu-string": {"interfaces": [{"name": "eth0", "mtu": "1500"}]},
    "ip-number": {"ips": [5]},
    "ip-empty": {"ips": [{}]},
    "ip-no-prefix": {"ips": [{"address": "10.0.0.1"}]},
    "ip-garbage": {"ips": [{"address": "bad/24"}]},
    "ip-prefix-33": {"ips": [{"address": "10.0.0.1/33"}]},
    "ip-address-number": {"ips": [{"address": 167772161}]},
    "ip-gateway-garbage": {"ips": [{"address": "10.0.0.1/24", "gateway": "x"}]},
    "ip-gateway-number": {"ips": [{"address": "10.0.0.1/24", "gateway": 5}]},
    "ip-interface-out-of-range": {"ips": [{"address": "10.0.0.1/24", "interface": 0}]},
    "ip-interface-negative": {"interfaces": [{"name": "eth0"}], "ips": [{"address": "10.0.0.1/24", "interface": -1}]},
    "ip-interface-bool": {"interfaces": [{"name": "eth0"}], "ips": [{"address": "10.0.0.1/24", "interface": True}]},
    "ip-interface-string": {"interfaces": [{"name": "eth0"}], "ips": [{"address": "10.0.0.1/24", "interface": "0"}]},
    "ip-version-5": {"ips": [{"address": "10.0.0.1/24", "version": "5"}]},
    "route-number": {"routes": [5]},
    "route-empty": {"routes": [{}]},
    "route-dst-no-prefix": {"routes": [{"dst": "0.0.0.0"}]},
    "route-gw-garbage": {"routes": [{"dst": "0.0.0.0/0", "gw": "x"}]},
    "route-mtu-string": {"routes": [{"dst": "0.0.0.0/0", "mtu": "x"}]},
    "dns-string": {"dns": "x"},
    "dns-nameservers-string": {"dns": {"nameservers": "1.1.1.1"}},
    "version-number": {"cniVersion": 5},
}

CONFIG = [
    _c("name-missing", 7, conf={"name": DROP}),
    _c("name-number", 7, conf={"name": 5}),
    _c("name-empty", 7, conf={"name": ""}),
    _c("name-space", 7, conf={"name": "my net"}),
    _c("name-leading-dash", 7, conf={"name": "-net"}),
    _c("name-slash", 7, conf={"name": "a/b"}),
    _c("name-too-long", 7, conf={"name": "n" * 300}),
    _c("name-newline", 7, conf={"name": "net\n"}),
    _c("type-number", 7, conf={"type": 5}),
    _c("type-empty", 7, conf={"type": ""}),
    _c("statedir-number", 7, conf={"stateDir": 17}),
    _c("statedir-empty", 7, conf={"stateDir": ""}),
    _c("statedir-relative", 7, conf={"stateDir": "var/lib/crossnet"}),
    _c("statedir-nul", 7, conf={"stateDir": "/var/lib/cross\u0000net"}),
    _c("statedir-list", 7, conf={"stateDir": ["/var/lib/crossnet"]}),
    _c("ipam-host-local", 2, conf={"ipam": {"type": "host-local"}}),
    _c("ipam-string", 2, conf={"ipam": "host-local"}),
    _c("dns-string", 7, conf={"dns": "8.8.8.8"}),
    _c("dns-nameservers-string", 7, conf={"dns": {"nameservers": "8.8.8.8"}}),
    _c("dns-nameservers-number", 7, conf={"dns": {"nameservers": [8]}}),
    _c("dns-domain-number", 7, conf={"dns": {"domain": 5}}),
    _c("dns-search-object", 7, conf={"dns": {"search": {}}}),
    _c("dns-options-null", 7, conf={"dns": {"options": [None]}}),
    _c("runtimeconfig-string", 7, conf={"runtimeConfig": "x"}),
    _c("runtimeconfig-list", 7, conf={"runtimeConfig": []}),
    _c("runtimeconfig-ips-string", 7, conf={"runtimeConfig": {"ips": "10.0.0.1"}}),
    _c("runtimeconfig-ips-number", 7, conf={"runtimeConfig": {"ips": [5]}}),
    _c("runtimeconfig-ips-null", 7, conf={"runtimeConfig": {"ips": [None]}}),
    _c("runtimeconfig-ips-garbage", 7, conf={"runtimeConfig": {"ips": ["not-an-ip"]}}),
    _c("runtimeconfig-ips-ipv6", 7, conf={"runtimeConfig": {"ips": ["fd00::5/64"]}}),
    _c("runtimeconfig-ips-two", 7, conf={"runtimeConfig": {"ips": ["10.1.1.1/24", "10.1.1.2/24"]}}),
    _c("runtimeconfig-mac-number", 7, conf={"runtimeConfig": {"mac": 5}}),
    _c("runtimeconfig-mac-garbage", 7, conf={"runtimeConfig": {"mac": "zz:zz"}}),
    _c("runtimeconfig-mac-multicast", 7, conf={"runtimeConfig": {"mac": "01:00:5e:00:00:01"}}),
    _c("runtimeconfig-mac-zero", 7, conf={"runtimeConfig": {"mac": "00:00:00:00:00:00"}}),
    _c("runtimeconfig-mac-broadcast", 7, conf={"runtimeConfig": {"mac": "ff:ff:ff:ff:ff:ff"}}),
    _c("args-string", 7, conf={"args": "x"}),
    _c("args-cni-string", 7, conf={"args": {"cni": "x"}}),
    _c("args-cni-ips-string", 7, conf={"args": {"cni": {"ips": "10.0.0.1"}}}),
    _c("args-cni-ips-number", 7, conf={"args": {"cni": {"ips": [1]}}}),
    _c("args-cni-ips-garbage", 7, conf={"args": {"cni": {"ips": ["10.0.0.300"]}}}),
    _c("capabilities-string", 7, conf={"capabilities": "ips"}),
    _c("capabilities-value-string", 7, conf={"capabilities": {"ips": "yes"}}),
    _c("logfile-number", 7, conf={"logFile": 5}),
    _c("logfile-relative", 7, conf={"logFile": "cni.log"}),
    _c("logfile-nul", 7, conf={"logFile": "/tmp/a\u0000b"}),
    _c("server-string", 7, conf={"server": "no"}),
    _c("server-number", 7, conf={"server": 0}),
    _c("server-null", 7, conf={"server": None}),
    _c("idle-negative", 7, conf={"serverIdleSeconds": -1}),
    _c("idle-zero", 7, conf={"serverIdleSeconds": 0}),
    _c("idle-string", 7, conf={"serverIdleSeconds": "300"}),
    _c("idle-bool", 7, conf={"serverIdleSeconds": True}),
    _c("idle-huge", 7, conf={"serverIdleSeconds": 10 ** 30}),
    _c("valid-attachments-string", 7, conf={"cni.dev/valid-attachments": "x"}),
    _c("valid-attachments-number", 7, conf={"cni.dev/valid-attachments": [5]}),
    _c("valid-attachments-id-number", 7, conf={"cni.dev/valid-attachments": [{"containerID": 5, "ifname": "eth0"}]}),
    _c("gc-valid-attachments-string", 7, command="GC", conf={"cniVersion": "1.1.0", "cni.dev/valid-attachments": "x"},
       env={"CNI_CONTAINERID": DROP, "CNI_IFNAME": DROP}),
    *[_c(f"prevresult-{k}", 7, conf={"prevResult": v}) for k, v in _PREV.items()],
    _c("prevresult-number", 7, conf={"prevResult": 5}),
    _c("prevresult-list", 7, conf={"prevResult": []}),
    _c("prevresult-null", 7, conf={"prevResult": None}),
    _c("check-prevresult-ips-number", 7, command="CHECK", conf={"prevResult": {"ips": 5}}),
    _c("del-prevresult-interfaces-number", 7, command="DEL", conf={"prevResult": {"interfaces": 7}}),
]

ENV = [
    _c("command-missing", 4, env={"CNI_COMMAND": DROP}),
    _c("command-empty", 4, env={"CNI_COMMAND": ""}),
    _c("command-lowercase", 4, env={"CNI_COMMAND": "add"}),
    _c("command-unknown", 4, env={"CNI_COMMAND": "FROB"}),
    _c("command-newline", 4, env={"CNI_COMMAND": "ADD\n"}),
    _c("containerid-missing", 4, env={"CNI_CONTAINERID": DROP}),
    _c("containerid-empty", 4, env={"CNI_CONTAINERID": ""}),
    _c("containerid-dotdot", 4, env={"CNI_CONTAINERID": "../etc"}),
    _c("containerid-space", 4, env={"CNI_CONTAINERID": "a b"}),
    _c("containerid-leading-dash", 4, env={"CNI_CONTAINERID": "-abc"}),
    _c("containerid-newline", 4, env={"CNI_CONTAINERID": "abc\n"}),
    _c("containerid-semicolon", 4, env={"CNI_CONTAINERID": "a;b"}),
    _c("containerid-non-ascii", 4, env={"CNI_CONTAINERID": "caf\u00e9"}),
    _c("containerid-too-long", 4, env={"CNI_CONTAINERID": "a" * 2000}),
    _c("del-containerid-slash", 4, command="DEL", env={"CNI_CONTAINERID": "a/b"}),
    _c("netns-missing", 4, env={"CNI_NETNS": DROP}),
    _c("netns-empty", 4, env={"CNI_NETNS": ""}),
    _c("netns-nonexistent-path", 4, env={"CNI_NETNS": "/nonexistent/netns"}),
    _c("netns-nonexistent-name", 4, env={"CNI_NETNS": "no-such-netns-xyz"}),
    _c("netns-regular-file", 4, env={"CNI_NETNS": "{FILE}"}),
    _c("netns-directory", 4, env={"CNI_NETNS": "{DIR}"}),
    _c("netns-dev-null", 4, env={"CNI_NETNS": "/dev/null"}),
    _c("netns-uts-namespace", 4, env={"CNI_NETNS": "/proc/self/ns/uts"}),
    _c("netns-too-long", 4, env={"CNI_NETNS": "/" + "a" * 5000}),
    _c("check-netns-regular-file", 4, command="CHECK", env={"CNI_NETNS": "{FILE}"}),
    _c("ifname-missing", 4, env={"CNI_IFNAME": DROP}),
    _c("ifname-empty", 4, env={"CNI_IFNAME": ""}),
    _c("ifname-16-chars", 4, env={"CNI_IFNAME": "a" * 16}),
    _c("ifname-dot", 4, env={"CNI_IFNAME": "."}),
    _c("ifname-dotdot", 4, env={"CNI_IFNAME": ".."}),
    _c("ifname-slash", 4, env={"CNI_IFNAME": "a/b"}),
    _c("ifname-colon", 4, env={"CNI_IFNAME": "eth0:1"}),
    _c("ifname-space", 4, env={"CNI_IFNAME": "eth 0"}),
    _c("ifname-tab", 4, env={"CNI_IFNAME": "eth\t0"}),
    _c("ifname-newline", 4, env={"CNI_IFNAME": "eth0\n"}),
    _c("ifname-non-ascii", 4, env={"CNI_IFNAME": "\u00e9th0"}),
    _c("ifname-multibyte-16-bytes", 4, env={"CNI_IFNAME": "\u00e9" * 8}),
    _c("check-ifname-slash", 4, command="CHECK", env={"CNI_IFNAME": "../x"}),
    _c("del-ifname-too-long", 4, command="DEL", env={"CNI_IFNAME": "x" * 40}),
    _c("path-missing", 4, env={"CNI_PATH": DROP}),
    _c("path-empty", 4, env={"CNI_PATH": ""}),
    _c("args-garbage", 4, env={"CNI_ARGS": "garbage"}),
    _c("args-empty-key", 4, env={"CNI_ARGS": "=x"}),
    _c("args-unknown", 4, env={"CNI_ARGS": "FOO=bar"}),
    _c("args-duplicate", 4, env={"CNI_ARGS": "IP=10.0.0.1;IP=10.0.0.2"}),
    _c("args-duplicate-ignoreunknown", 4, env={"CNI_ARGS": "IgnoreUnknown=1;IgnoreUnknown=1"}),
    _c("args-ip-garbage", 4, env={"CNI_ARGS": "IP=not-an-ip"}),
    _c("args-ip-ipv6", 4, env={"CNI_ARGS": "IgnoreUnknown=1;IP=fd00::5"}),
    _c("args-ip-two", 4, env={"CNI_ARGS": "IP=10.0.0.1,10.0.0.2"}),
    _c("args-mac-garbage", 4, env={"CNI_ARGS": "MAC=zz"}),
    _c("args-mac-multicast", 4, env={"CNI_ARGS": "MAC=01:00:5e:00:00:01"}),
    _c("args-mac-zero", 4, env={"CNI_ARGS": "MAC=00:00:00:00:00:00"}),
    _c("args-podname-control", 4, env={"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web\x1b[2J"}),
    _c("args-podname-too-long", 4, env={"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=" + "w" * 300}),
    _c("args-too-long", 4, env={"CNI_ARGS": "IgnoreUnknown=1;X=" + "x" * 70000}),
    _c("nul-netns", 4, env={"CNI_NETNS": "{NETNS}\u0000x"}, nul=True),
    _c("nul-containerid", 4, env={"CNI_CONTAINERID": CID + "\u0000"}, nul=True),
    _c("nul-ifname", 4, env={"CNI_IFNAME": "eth0\u0000"}, nul=True),
    _c("nul-args", 4, env={"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=a\u0000b"}, nul=True),
    _c("nul-path", 4, env={"CNI_PATH": "/usr/lib/cni\u0000"}, nul=True),
]

CASES: list[Case] = DECODE + VERSION + CONFIG + ENV
assert len({c.id for c in CASES}) == len(CASES), "duplicate case ids"
