"""The host's own namespace is never attached, and attachments have a correct life cycle
(issue 11): `crossnet attach` / the agent API refuse the namespace crossnet runs in (and
the initial one, PID 1's), whatever spelling names it; detach finds an attachment under
another name of its namespace; containers whose namespace is gone are `stale` in status
and check and collected by `crossnet gc` (and the agent's resync); a failed attach leaves
the IPAM as it was; a failed apply leaves a fresh state dir as it was.

Labs are named ``sn`` + 4 characters and removed at the end, pass or fail. Namespaces
the tests add carry the lab's prefix (lab down removes them). "The host" is a lab host
namespace: crossnet runs inside it (`ip netns exec`); the machine's root namespace is
never a target — the PID-1 case runs in a new PID namespace whose PID 1 sits in a lab
namespace.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from crossnet.lab.manager import crossnet_argv, one_line_error
from tests.conftest import LabFactory

from .kstate import diff, snapshot

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root"),
]


class SnLabFactory(LabFactory):
    PREFIX = "sn"
    SUFFIX_LEN = 4


@pytest.fixture(scope="module")
def lab(request, lab_sweep):
    """2 hosts, vxlan, one container each, configured from the cluster file."""
    return SnLabFactory.for_test(request)(hosts=2, backend="vxlan", containers=1)


def h(lab, name: str = "h1"):
    return next(x for x in lab.hosts if x.name == name)


def cn(lab, *args: str, host: str = "h1") -> subprocess.CompletedProcess:
    return lab.crossnet(host, *args, check=False, timeout=120)


def ipam(state_dir: str) -> dict | None:
    path = Path(state_dir) / "ipam.json"
    return json.loads(path.read_text()) if path.exists() else None


def add_ns(lab, suffix: str) -> str:
    name = f"{h(lab).netns}-{suffix}"  # lab-prefixed: lab down removes it
    subprocess.run(["ip", "netns", "add", name], check=True)
    return name


def del_ns(*names: str) -> None:
    for n in names:
        subprocess.run(["ip", "netns", "del", n], capture_output=True, check=False)


def sleeper(netns: str) -> subprocess.Popen:
    proc = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "300"], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    want = os.stat(f"/run/netns/{netns}").st_ino
    while time.monotonic() < deadline:  # `ip netns exec` entered the namespace and exec'd sleep (same pid)
        try:
            if os.stat(f"/proc/{proc.pid}/ns/net").st_ino == want:
                return proc
        except OSError:
            pass
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"sleep did not enter {netns}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def host_links(netns: str) -> set[str]:
    out = subprocess.run(["ip", "-n", netns, "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {link["ifname"] for link in json.loads(out or "[]")}


def wait_for(pred, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def in_pidns(pid1_netns: str, argv: list[str]) -> subprocess.CompletedProcess:
    """Run argv in a new PID namespace (its own /proc) whose PID 1 is a shell in the lab
    namespace pid1_netns: there /proc/1/ns/net is that lab namespace, never the machine's."""
    script = " ".join(shlex.quote(a) for a in argv) + "; rc=$?; exit $rc"  # not exec'd: PID 1 stays the shell
    return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "ip", "netns", "exec", pid1_netns,
                           "sh", "-c", script], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, check=False)


# ---------------------------------------------------------------------- the host's own namespace


def test_attach_refuses_the_host_namespace_in_every_spelling(lab):
    h1 = h(lab)
    other = add_ns(lab, "r")  # PID 1's namespace in the PID-1 case below
    proc = sleeper(h1.netns)  # a process of the host itself
    try:
        before, before_other, before_ipam = snapshot(h1.netns), snapshot(other), ipam(h1.state_dir)
        specs = [f"pid:{proc.pid}", f"/proc/{proc.pid}/ns/net", f"/run/netns/{h1.netns}", h1.netns,
                 "/proc/self/ns/net"]
        for spec in specs:
            # eth9 does not exist on the host: without the refusal, the attach would go through
            # and replace the host's default route
            for extra in ((), ("--ifname", "eth9"), ("--ip", lab.status("h1")["gateway"].rsplit(".", 1)[0] + ".77")):
                res = cn(lab, "attach", spec, *extra)
                assert res.returncode == 2, (spec, res.stdout, res.stderr)
                err = res.stderr.strip().splitlines()
                assert len(err) == 1 and err[0].startswith("crossnet: error: CONTAINER "), (spec, res.stderr)
                assert "this host's own network namespace" in err[0], err
        # /proc/1/ns/net: the initial namespace, refused although crossnet runs elsewhere
        res = in_pidns(other, lab.argv("h1", crossnet_argv("attach", "/proc/1/ns/net", "--ifname", "eth9")))
        assert res.returncode == 2, (res.stdout, res.stderr)
        assert "initial network namespace" in one_line_error(res), res.stderr
        assert diff(before, snapshot(h1.netns)) == []
        assert diff(before_other, snapshot(other)) == []
        assert ipam(h1.state_dir) == before_ipam
    finally:
        stop(proc)
        del_ns(other)


# ---------------------------------------------------------------------- detach by another name


def test_detach_finds_the_attachment_under_another_name(lab):
    h1 = h(lab)
    x = add_ns(lab, "a")
    proc = sleeper(x)
    try:
        base = {c["id"] for c in lab.status("h1")["containers"]}
        for attach_as, detach_as in ((f"pid:{proc.pid}", f"/proc/{proc.pid}/ns/net"),
                                     (f"/run/netns/{x}", x),
                                     (x, f"pid:{proc.pid}")):
            res = cn(lab, "attach", attach_as, "-o", "json")
            assert res.returncode == 0, res.stderr
            att = json.loads(res.stdout)
            assert att["host_if"] in host_links(h1.netns)
            res = cn(lab, "detach", detach_as, "-o", "json")
            assert res.returncode == 0, res.stderr
            out = json.loads(res.stdout)
            assert out["detached"] is True and out["id"] == att["id"] and out["address"] == att["address"], out
            assert out["asked_as"] != att["id"]
            assert att["host_if"] not in host_links(h1.netns)
            assert {c["id"] for c in lab.status("h1")["containers"]} == base
            assert subprocess.run(["ip", "-n", x, "-j", "addr", "show", "eth0"], capture_output=True).returncode != 0
        # text form names both
        cn(lab, "attach", x)
        res = cn(lab, "detach", f"/run/netns/{x}")
        assert res.returncode == 0 and res.stdout.strip().startswith(f"/run/netns/{x}: detached (attached as {x})")
    finally:
        stop(proc)
        del_ns(x)


# ---------------------------------------------------------------------- stale containers


def test_gone_namespace_is_stale_in_status_and_check_and_gc_collects_it(lab):
    h1 = h(lab)
    gone, kept = add_ns(lab, "s1"), add_ns(lab, "s2")
    try:
        a_gone = json.loads(cn(lab, "attach", gone, "-o", "json").stdout)
        a_kept = json.loads(cn(lab, "attach", kept, "-o", "json").stdout)
        del_ns(gone)
        wait_for(lambda: a_gone["host_if"] not in host_links(h1.netns), what="the veth to go with its namespace")
        states = {c["id"]: c["state"] for c in lab.status("h1")["containers"]}
        assert states[gone] == "stale" and states[kept] == "attached", states
        assert "stale" in cn(lab, "status").stdout
        # check: reported as stale, not probed (no nsenter/ip netns errors, no failed pair)
        res = cn(lab, "check", "-o", "json")
        data = json.loads(res.stdout)
        assert res.returncode == 0, (data, res.stderr)
        assert [s["id"] for s in data["stale"]] == [gone]
        assert all(gone not in (p["src"], p["dst"]) and a_gone["address"] != p["dst_address"] for p in data["pairs"])
        assert any(p["src"] == kept and p["ok"] for p in data["pairs"])
        text = cn(lab, "check")
        assert text.returncode == 0 and "stale" in text.stdout and gone in text.stdout
        # gc --dry-run lists it and changes nothing
        before = ipam(h1.state_dir)
        res = cn(lab, "gc", "--dry-run", "-o", "json")
        assert res.returncode == 0, res.stderr
        dry = json.loads(res.stdout)
        assert dry["dry_run"] is True and [c["id"] for c in dry["collected"]] == [gone]
        assert ipam(h1.state_dir) == before
        # gc collects it (and only it)
        res = cn(lab, "gc", "-o", "json")
        assert res.returncode == 0, res.stderr
        got = json.loads(res.stdout)["collected"]
        assert [(c["id"], c["address"]) for c in got] == [(gone, a_gone["address"])]
        ids = {c["id"] for c in lab.status("h1")["containers"]}
        assert gone not in ids and kept in ids
        assert a_kept["host_if"] in host_links(h1.netns)
        assert cn(lab, "gc").stdout.startswith("nothing to collect")
    finally:
        cn(lab, "detach", kept)
        del_ns(gone, kept)


# ---------------------------------------------------------------------- failures leave no trace


def test_failed_attach_keeps_the_ipam_pointer(lab):
    h1 = h(lab)
    bad, good = add_ns(lab, "f1"), add_ns(lab, "f2")
    try:
        subprocess.run(["ip", "-n", bad, "link", "add", "eth0", "type", "bridge"], check=True)
        before = ipam(h1.state_dir)
        kernel = snapshot(h1.netns)
        res = cn(lab, "attach", bad)
        assert res.returncode == 1 and "not made by crossnet" in res.stderr, res.stderr
        assert ipam(h1.state_dir) == before  # the entry and "last" (the next-address pointer)
        assert diff(kernel, snapshot(h1.netns)) == []
        # the next attach gets the address the failed one would have had
        first = json.loads(cn(lab, "attach", good, "-o", "json").stdout)
        assert ipam(h1.state_dir)["last"] == first["address"]
        cn(lab, "detach", good)
        subprocess.run(["ip", "-n", bad, "link", "del", "eth0"], check=True)
        again = json.loads(cn(lab, "attach", bad, "-o", "json").stdout)
        assert again["address"] != first["address"]  # round robin moved on only once
        cn(lab, "detach", bad)
    finally:
        del_ns(bad, good)


@pytest.mark.parametrize("existing", [False, True])
def test_failed_apply_leaves_a_fresh_state_dir_as_it_was(lab, existing):
    cluster = yaml.safe_load(Path(lab.plan.cluster_file).read_text())
    cluster["hosts"][0]["iface"] = "nosuch0"  # fails inside apply (the lock is held), before any change
    path = Path(lab.plan.lab_dir) / f"bad-iface-{existing}.yaml"
    path.write_text(yaml.safe_dump(cluster))
    state = Path(lab.plan.lab_dir) / f"fresh-state-{existing}" / "sub"
    if existing:
        state.mkdir(parents=True)
    before = snapshot(h(lab).netns)
    res = lab.run("h1", crossnet_argv("--state-dir", str(state), "apply", "-f", str(path), "--host", "h1"))
    assert res.returncode == 2 and "nosuch0" in one_line_error(res), res.stderr
    if existing:
        assert state.is_dir() and list(state.iterdir()) == []
    else:
        assert not state.exists() and not state.parent.exists()
    assert diff(before, snapshot(h(lab).netns)) == []


# ---------------------------------------------------------------------- through the agent


@pytest.fixture(scope="module")
def agent_lab(request, lab_sweep):
    """A 2-host etcd lab whose h1 agent resyncs every 1.5 s (collects stale containers)."""
    from crossnet.lab.services import host_env
    from crossnet.lab.etcd import lab_etcd, start_agent, stop_agent, wait_agent_ready

    lab = SnLabFactory.for_test(request)(hosts=2, backend="vxlan", containers=1, extra={"store": "etcd"})
    h1 = h(lab)
    stop_agent(h1.state_dir)
    log = str(Path(lab.plan.lab_dir) / "hosts" / "h1" / "agent-sn.log")
    proc = start_agent(h1.netns, h1.state_dir, lab_etcd(lab.plan).url, "h1", log, iface=h1.ifname,
                       extra=["--ttl", "10", "--resync", "1.5"], env=host_env(lab.plan, h1))
    wait_agent_ready(h1.state_dir, proc=proc, log_path=log)
    lab.agent_log = log
    return lab


def test_agent_refuses_the_host_namespace_and_resolves_as_the_caller(agent_lab):
    from crossnet.agent.api import call
    from crossnet.errors import CrossnetError

    lab = agent_lab
    h1 = h(lab)
    x = add_ns(lab, "ag")
    proc = sleeper(h1.netns)
    try:
        before, before_ipam = snapshot(h1.netns), ipam(h1.state_dir)
        # through the CLI (it goes through the agent) ...
        res = cn(lab, "attach", f"pid:{proc.pid}")
        assert res.returncode == 2 and "own network namespace" in one_line_error(res), res.stderr
        # ... and the API directly, every form
        for body in ({"container": f"pid:{proc.pid}"}, {"container": h1.netns},
                     {"id": "evil", "netns": f"/run/netns/{h1.netns}"},
                     {"id": "evil", "netns": f"/proc/{proc.pid}/ns/net"}):
            with pytest.raises(CrossnetError, match="own network namespace"):
                call(h1.state_dir, "POST", "/v1/attach", body)
        # a path the agent resolves to another namespace than the caller meant: 400, nothing done
        ident = os.stat(f"/run/netns/{x}")
        with pytest.raises(CrossnetError, match="another network namespace"):
            call(h1.state_dir, "POST", "/v1/attach",
                 {"id": "mismatch", "netns": f"/run/netns/{x}", "netns_id": [ident.st_dev, ident.st_ino + 1]})
        assert diff(before, snapshot(h1.netns)) == []
        assert ipam(h1.state_dir) == before_ipam
        # detach by another name, through the agent
        att = json.loads(cn(lab, "attach", f"/run/netns/{x}", "-o", "json").stdout)
        out = json.loads(cn(lab, "detach", x, "-o", "json").stdout)
        assert out["detached"] is True and out["id"] == att["id"], out
        assert att["host_if"] not in host_links(h1.netns)
    finally:
        stop(proc)
        del_ns(x)


def test_agent_collects_stale_containers_at_resync(agent_lab):
    lab = agent_lab
    h1 = h(lab)
    s = add_ns(lab, "gs")
    try:
        att = json.loads(cn(lab, "attach", s, "-o", "json").stdout)
        assert s in {c["id"] for c in lab.status("h1")["containers"]}
        del_ns(s)
        wait_for(lambda: s not in {c["id"] for c in lab.status("h1")["containers"]}, timeout=20,
                 what="the agent to collect the stale container")
        assert att["address"] not in {a["address"] for a in (ipam(h1.state_dir) or {}).get("allocations", {}).values()}
        assert f"collected stale container {s}" in Path(lab.agent_log).read_text()
    finally:
        del_ns(s)


# ---------------------------------------------------------------------- crossnet-cni and its warm helper


@pytest.fixture(scope="module")
def cnihost(tmp_path_factory):
    """A 1-host lab with crossnet-cni installed (native client + Python client)."""
    if not shutil.which("cc"):
        pytest.skip("needs a C compiler (cc) for the native client")
    from .test_cni import one_host_lab
    from .test_cni_native import NativeHost

    yield from one_host_lab(tmp_path_factory, NativeHost)


@pytest.fixture
def cniclean(cnihost):
    from .test_cni import left_as_found

    yield from left_as_found(cnihost)


def _cid() -> str:
    return os.urandom(32).hex()


@pytest.mark.parametrize("served", [True, False], ids=["helper", "local"])
@pytest.mark.parametrize("client", ["native", "python"])
def test_cni_add_refuses_the_host_namespace(cnihost, cniclean, client, served):
    """CNI_NETNS naming the host's own namespace: code 4 (CNI_NETNS is invalid), nothing
    changed (cniclean compares links, addresses, routes, nft and IPAM)."""
    host = cnihost
    plugin = host.native if client == "native" else host.python
    conf = host.conf() if served else host.conf(server=False)
    if served:
        host.start_helper()
    proc = sleeper(host.netns)
    try:
        for netns, ifname in ((f"/run/netns/{host.netns}", "eth0"), (f"/run/netns/{host.netns}", "cn9"),
                              (host.netns, "cn9"), (f"/proc/{proc.pid}/ns/net", "cn9")):
            # cn9 does not exist on the host: without the refusal the ADD would replace its default route
            rc, out, via = host.via(plugin, "ADD", conf, CNI_CONTAINERID=_cid(), CNI_NETNS=netns, CNI_IFNAME=ifname)
            assert rc == 1 and out["code"] == 4, out
            assert out["msg"].startswith("CNI_NETNS ") and "this host's own network namespace" in out["msg"], out
            assert via == ("server" if served else "process")
    finally:
        stop(proc)


def test_cni_helper_resolves_proc_paths_as_the_caller_meant(cnihost, cniclean, tmp_path):
    """A runtime in another PID namespace sends CNI_NETNS=/proc/P/ns/net; in the helper's
    PID namespace P is another process (here: one in the host's own namespace). The helper
    must not resolve it there: it leaves the call to the client, which attaches the
    container the caller meant."""
    from .test_cni import _log_lines, container_links

    host = cnihost
    host.start_helper()
    outer = sleeper(host.netns)  # P in the helper's PID namespace: a host process
    pid = outer.pid
    c = host.new_netns().rsplit("/", 1)[1]  # the container the caller means
    d = host.new_netns().rsplit("/", 1)[1]  # where the new PID namespace's PID 1 lives
    before_routes = snapshot(host.netns)["routes"]
    cont = _cid()
    conf_file = tmp_path / "conf.json"
    conf_file.write_text(json.dumps(host.conf()))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": "ADD", "CNI_CONTAINERID": cont,
           "CNI_IFNAME": "eth7", "CNI_PATH": "/usr/lib/cni", "CNI_NETNS": f"/proc/{pid}/ns/net"}
    script = f"""
echo {pid - 1} > /proc/sys/kernel/ns_last_pid
ip netns exec {c} sleep 300 &
sp=$!
[ "$sp" = {pid} ] || {{ echo "got pid $sp, wanted {pid}" >&2; kill $sp; exit 97; }}
want=$(stat -L -c %i /run/netns/{c}); n=0
while [ "$(stat -L -c %i /proc/$sp/ns/net)" != "$want" ]; do n=$((n+1)); [ $n -lt 200 ] || exit 98; sleep 0.02; done
env -i {" ".join(shlex.quote(f"{k}={v}") for k, v in env.items())} nsenter --net=/run/netns/{host.netns} {shlex.quote(host.native)} < {shlex.quote(str(conf_file))}
rc=$?
kill $sp
exit $rc
"""
    try:
        res = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "ip", "netns", "exec", d,
                              "sh", "-c", script], capture_output=True, text=True, timeout=120, check=False)
        assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)
        result = json.loads(res.stdout)
        cidr = result["ips"][0]["address"]
        # the caller's container got it, the host's own namespace did not change its routes
        assert "eth7" in container_links(c)
        addrs = subprocess.run(["ip", "-n", c, "-j", "addr", "show", "eth7"], capture_output=True, text=True,
                               check=True).stdout
        assert cidr.split("/")[0] in addrs
        after = snapshot(host.netns)["routes"]
        assert [r for r in after if '"dst": "default"' in r] == [r for r in before_routes if '"dst": "default"' in r]
        calls = [x for x in _log_lines(host.log) if x.get("command") == "ADD" and x.get("containerID") == cont]
        assert [x["via"] for x in calls] == ["process"], calls  # the helper left it to the client
    finally:
        stop(outer)
        host.via(host.python, "DEL", host.conf(), CNI_CONTAINERID=cont, CNI_IFNAME="eth7")


@pytest.mark.parametrize("served", [True, False], ids=["helper", "local"])
def test_cni_failed_add_keeps_the_ipam_pointer(cnihost, cniclean, served):
    host = cnihost
    conf = host.conf() if served else host.conf(server=False)
    if served:
        host.start_helper()
    netns = host.new_netns()
    name = netns.rsplit("/", 1)[1]
    subprocess.run(["ip", "-n", name, "link", "add", "eth0", "type", "bridge"], check=True)
    try:
        def pointer_and_entries():
            data = ipam(host.state_dir) or {}
            return data.get("last"), data.get("allocations") or {}

        before = pointer_and_entries()
        rc, out, via = host.via(host.native, "ADD", conf, CNI_CONTAINERID=_cid(), CNI_NETNS=netns, CNI_IFNAME="eth0")
        assert rc == 1 and out["code"] == 102 and "not made by crossnet" in out["msg"], out
        assert via == ("server" if served else "process")
        assert pointer_and_entries() == before
    finally:
        subprocess.run(["ip", "-n", name, "link", "del", "eth0"], check=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
