"""End to end: tc objects and pins crossnet's eBPF datapath did not create (docs/ebpf.md,
"tc filters and pins crossnet did not create").

Two namespaces joined by a veth (h1's end is its underlay NIC u0); crossnet.ebpf's host
resources (host-gw: crossnet's filter on u0's ingress, pref 1000 handle 1) are applied,
dry-run, checked and reset in new processes in h1's network namespace, as the CLI runs
them. The admin's filters are real tc bpf filters from a tiny object compiled here
(`pass`: continue with the next filter; `drop`: drop), so "still working" is a ping that
the admin's drop filter stops.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")]

ADDR = {"h1": "192.168.78.1", "h2": "192.168.78.2"}

ADMIN_C = r"""
struct __sk_buff;
__attribute__((section("pass"), used)) int adm_pass(struct __sk_buff *skb) { return -1; }
__attribute__((section("drop"), used)) int adm_drop(struct __sk_buff *skb) { return 2; }
char _license[] __attribute__((section("license"), used)) = "GPL";
"""

DRIVER = r"""
import json, sys
from crossnet.backends.base import HostContext
from crossnet.errors import CrossnetError
from crossnet.host import drift_line
from crossnet.plan.env import Env
from crossnet.plan.reconciler import pending, reconcile, teardown
from crossnet.plan.resources import Resource
from crossnet.netlink.iproute import open_ipr
from crossnet.ebpf import host, problem
op, ctx, previous = sys.argv[1], HostContext.from_json(json.loads(sys.argv[2])), json.loads(sys.argv[3])
previous = [Resource.from_json(d) for d in previous]
out = None
try:
    with open_ipr() as ipr:
        env = Env(ipr)
        if op == "problem":
            out = problem()
        elif op == "apply":
            out = [r.to_json() for r in reconcile(host.host_resources(ctx), previous, env).resources]
        elif op == "dry-run":
            out = [str(c) for c in pending(host.host_resources(ctx), previous, env)]
        elif op == "drift":
            out = [drift_line(r, env) for r in previous if not r.check(env)]
        elif op == "reset":
            teardown(previous, env)
except CrossnetError as exc:
    out = {"error": str(exc)}
print(json.dumps(out))
"""


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


class Lab:
    def __init__(self, prefix: str, state_root: str, obj: str) -> None:
        self.prefix, self.state_root, self.obj = prefix, state_root, obj
        self.n = 0

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def tc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("tc", "-n", self.ns("h1"), *args, check=check)

    def fresh_state(self) -> dict:
        """A context with a state directory of its own (so pins of one test never meet another's)."""
        self.n += 1
        return {"cluster_name": self.prefix, "backend": "host-gw", "host": "h1", "address": ADDR["h1"],
                "iface": "u0", "subnet": "10.78.1.0/24", "network": "10.78.0.0/16", "gateway": "169.254.1.1",
                "prefixlen": 32, "bridge": "", "underlay_mtu": 1500, "mtu": 1500, "masquerade": False,
                "peers": [], "state_dir": os.path.join(self.state_root, f"s{self.n}")}

    def crossnet(self, op: str, ctx: dict, previous: list | None = None):
        proc = sh("nsenter", f"--net=/run/netns/{self.ns('h1')}", sys.executable, "-c", DRIVER, op,
                  json.dumps(ctx), json.dumps(previous or []))
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def filters(self, direction: str = "ingress") -> str:
        return self.tc("filter", "show", "dev", "u0", direction).stdout

    def admin_filter(self, verb: str, direction: str, pref: int, section: str, *extra: str) -> None:
        self.tc("filter", verb, "dev", "u0", direction, "pref", str(pref), *extra, "bpf", "da",
                "obj", self.obj, "sec", section)

    def clsact(self) -> bool:
        return "clsact" in self.tc("qdisc", "show", "dev", "u0").stdout

    def ping_h1(self) -> bool:
        return sh("ip", "netns", "exec", self.ns("h2"), "ping", "-c", "1", "-W", "1", ADDR["h1"],
                  check=False).returncode == 0

    def clean(self, ctx: dict | None = None) -> None:
        """Remove the clsact (and every filter on it) and the pins of ctx's state dir left by
        a failed test."""
        from crossnet.ebpf.host import host_dir, unpin

        self.tc("qdisc", "del", "dev", "u0", "clsact", check=False)
        if ctx is not None and host_dir(ctx["state_dir"]).is_dir():
            for d in host_dir(ctx["state_dir"]).iterdir():
                unpin(str(d))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    for tool in ("nsenter", "ip", "tc", "clang", "bpftool"):
        if not shutil.which(tool):
            pytest.skip(f"needs {tool}")
    tmp = tmp_path_factory.mktemp("ebpf-foreign")
    (tmp / "adm.c").write_text(ADMIN_C)
    sh("clang", "-O2", "-target", "bpf", "-c", str(tmp / "adm.c"), "-o", str(tmp / "adm.o"))
    lab = Lab("ebf" + secrets.token_hex(2), str(tmp / "state"), str(tmp / "adm.o"))
    try:
        for h in ("h1", "h2"):
            sh("ip", "netns", "add", lab.ns(h))
        sh("ip", "link", "add", f"{lab.prefix}a", "netns", lab.ns("h1"), "type", "veth", "peer", "name",
           f"{lab.prefix}b", "netns", lab.ns("h2"))
        for h, dev in (("h1", f"{lab.prefix}a"), ("h2", f"{lab.prefix}b")):
            sh("ip", "-n", lab.ns(h), "link", "set", dev, "name", "u0")
            sh("ip", "-n", lab.ns(h), "addr", "add", f"{ADDR[h]}/24", "dev", "u0")
            sh("ip", "-n", lab.ns(h), "link", "set", "u0", "up")
            sh("ip", "-n", lab.ns(h), "link", "set", "lo", "up")
        why = lab.crossnet("problem", lab.fresh_state())
        if why:
            pytest.skip(f"eBPF datapath unavailable here: {why}")
        assert lab.ping_h1()
        yield lab
    finally:
        for h in ("h1", "h2"):
            subprocess.run(["ip", "netns", "del", lab.ns(h)], capture_output=True)


def _pin_dirs(records: list) -> list[str]:
    return [r["pin_dir"] for r in records if r["kind"] == "ebpf-programs"]


def _ours(text: str) -> list[str]:
    return [line for line in text.splitlines() if "crossnet:cn_to_container:" in line]


def test_an_admins_clsact_and_filters_keep_working_and_reset_removes_only_crossnets(lab):
    """Item 1: the admin's clsact with an ingress filter that drops IPv4 (before crossnet's
    priority) and an egress filter exists before apply: apply adds crossnet's filter next to
    them and changes none of them (same program ids: never re-created), the drop still
    drops; reset removes crossnet's filter and pins only, keeps the clsact it did not add."""
    ctx = lab.fresh_state()
    lab.clean()
    lab.tc("qdisc", "add", "dev", "u0", "clsact")
    lab.admin_filter("add", "ingress", 10, "drop", "protocol", "ip")
    lab.admin_filter("add", "egress", 5, "pass")
    ingress, egress = lab.filters("ingress"), lab.filters("egress")
    assert not lab.ping_h1()  # the admin's filter works
    try:
        records = lab.crossnet("apply", ctx)
        assert isinstance(records, list), records
        after = lab.filters("ingress")
        assert len(_ours(after)) == 1
        assert [line for line in after.splitlines() if "pref 1000" not in line] == ingress.splitlines()
        assert lab.filters("egress") == egress
        assert not lab.ping_h1()  # still working
        assert lab.crossnet("drift", ctx, records) == []
        lab.crossnet("reset", ctx, records)
        assert lab.filters("ingress") == ingress and lab.filters("egress") == egress
        assert lab.clsact()
        assert not any(os.path.exists(d) for d in _pin_dirs(records))
        assert not lab.ping_h1()
        lab.tc("filter", "del", "dev", "u0", "ingress", "pref", "10")
        assert lab.ping_h1()  # it was the admin's filter that dropped
    finally:
        lab.clean(ctx)


def test_a_clsact_crossnet_added_stays_while_an_admins_filter_uses_it(lab):
    """crossnet adds the clsact (none before); the admin then puts an egress filter on it:
    reset removes crossnet's filter and keeps the qdisc with the admin's filter."""
    ctx = lab.fresh_state()
    lab.clean()
    try:
        records = lab.crossnet("apply", ctx)
        assert isinstance(records, list), records
        assert lab.clsact() and len(_ours(lab.filters())) == 1
        lab.admin_filter("add", "egress", 5, "pass")
        egress = lab.filters("egress")
        lab.crossnet("reset", ctx, records)
        assert lab.clsact() and lab.filters("ingress") == "" and lab.filters("egress") == egress
        assert not any(os.path.exists(d) for d in _pin_dirs(records))
    finally:
        lab.clean(ctx)


@pytest.mark.parametrize("extra", [("handle", "1"), ("handle", "7", "protocol", "ip")], ids=["same-handle", "other-protocol"])
def test_an_admins_filter_at_crossnets_priority_is_refused_changing_nothing(lab, extra):
    """Item 2: a filter of the admin's at pref 1000 (at crossnet's handle 1: `replace`
    overwrote it silently; with another protocol: the kernel refused the second protocol
    after the pins were loaded): apply and --dry-run refuse with one line naming the
    device and the filter, before anything changes (no pin, the filter as it was)."""
    from crossnet.ebpf.host import host_dir

    ctx = lab.fresh_state()
    lab.clean()
    lab.tc("qdisc", "add", "dev", "u0", "clsact")
    lab.admin_filter("add", "ingress", 1000, "pass", *extra)
    before = lab.filters()
    handle = f"{int(extra[1]):#x}"
    protocol = "0x0800" if "ip" in extra else "0x0003"
    want = (f"ebpf: u0 ingress already has a tc filter crossnet did not create at crossnet's priority "
            f"(pref 1000): bpf handle {handle} protocol {protocol} 'adm.o:[pass]'; crossnet does not replace or "
            "delete filters it did not create: move it to another pref (`tc filter show dev u0 ingress`), then "
            "apply again")
    try:
        assert lab.crossnet("dry-run", ctx) == {"error": want}
        assert lab.crossnet("apply", ctx) == {"error": want}
        assert "\n" not in want
        assert lab.filters() == before and lab.clsact()
        assert not host_dir(ctx["state_dir"]).exists()
    finally:
        lab.clean(ctx)


def test_a_filter_replaced_by_hand_is_drift_apply_refuses_and_reset_keeps_it_and_foreign_pins(lab):
    """Items 2 and 3: after apply the admin replaces crossnet's filter with their own at the
    same pref/handle. status' drift says apply refuses and why; apply (a repair) and
    --dry-run refuse, leaving it; reset removes crossnet's pins but keeps the admin's filter,
    the clsact it uses, and pins outside crossnet's own directories (in /sys/fs/bpf and in
    /sys/fs/bpf/crossnet/ itself)."""
    from crossnet.ebpf.host import BASE, host_dir

    ctx = lab.fresh_state()
    lab.clean()
    foreign_pins = [f"/sys/fs/bpf/{lab.prefix}-adm", f"{BASE}/{lab.prefix}adm"]
    try:
        records = lab.crossnet("apply", ctx)
        assert isinstance(records, list), records
        for pin in foreign_pins:
            sh("bpftool", "map", "create", pin, "type", "array", "key", "4", "value", "4", "entries", "1", "name", "adm")
        lab.admin_filter("replace", "ingress", 1000, "drop", "handle", "1")
        before = lab.filters()
        assert not _ours(before) and "adm.o:[drop]" in before
        drift = lab.crossnet("drift", ctx, records)
        tc_drift = [d for d in drift if "tc filter replace dev u0" in d]
        assert len(tc_drift) == 1 and len(drift) == 1, drift
        assert "# apply refuses: ebpf: u0 ingress already has a tc filter crossnet did not create" in tc_drift[0]
        assert "bpf handle 0x1 protocol 0x0003 'adm.o:[drop]'" in tc_drift[0]
        for op in ("dry-run", "apply"):
            out = lab.crossnet(op, ctx, records)
            assert isinstance(out, dict) and out["error"].startswith("ebpf: u0 ingress already has a tc filter"), out
        assert lab.filters() == before
        assert not lab.ping_h1()  # the admin's drop filter runs
        lab.crossnet("reset", ctx, records)
        assert lab.filters() == before and lab.clsact()
        assert not host_dir(ctx["state_dir"]).exists()
        assert all(os.path.exists(pin) for pin in foreign_pins)
    finally:
        for pin in foreign_pins:
            if os.path.exists(pin):
                os.unlink(pin)
        lab.clean(ctx)


@pytest.mark.parametrize("extra", [("handle", "1"), ("handle", "7", "protocol", "ip")], ids=["same-handle", "other-protocol"])
def test_an_admins_filter_at_pref_1000_in_another_chain_is_left_alone_not_refused(lab, extra):
    """A filter of the admin's at pref 1000 in chain 1 (the kernel keeps a priority list
    per chain: it takes neither crossnet's handle nor its protocol slot, crossnet's replace
    and del act on chain 0) was refused like one at crossnet's slot. Now apply puts
    crossnet's filter in chain 0 beside it, changes nothing of it, no drift; reset removes
    crossnet's filter only and keeps the clsact the admin's filter uses."""
    ctx = lab.fresh_state()
    lab.clean()
    lab.tc("qdisc", "add", "dev", "u0", "clsact")
    lab.admin_filter("add", "ingress", 1000, "pass", "chain", "1", *extra)
    before = lab.filters()
    assert "chain 1" in before and "adm.o:[pass]" in before
    try:
        dry = lab.crossnet("dry-run", ctx)
        assert isinstance(dry, list) and any("tc filter replace dev u0 ingress pref 1000" in c for c in dry), dry
        records = lab.crossnet("apply", ctx)
        assert isinstance(records, list), records
        after = lab.filters()
        [ours] = _ours(after)
        assert "chain 0" in ours
        assert [line for line in after.splitlines() if "chain 1" in line] == before.splitlines()
        assert lab.crossnet("drift", ctx, records) == []
        lab.crossnet("reset", ctx, records)
        assert lab.filters() == before and lab.clsact()
    finally:
        lab.clean(ctx)
