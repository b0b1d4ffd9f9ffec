"""`crossnet cni install` / `crossnet docker-config` outputs (files only, no kernel)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossnet.cni import install as cni_install
from crossnet.cni.install import (
    conflist,
    docker_daemon_config,
    install,
    merge_daemon_json,
    plan_daemon_json,
    wrapper_script,
)
from crossnet.errors import ConfigError

CONTEXT = {"host": "h1", "backend": "vxlan", "bridge": "cn0", "subnet": "10.32.1.0/24", "mtu": 1450,
           "gateway": "10.32.1.1", "network": "10.32.0.0/16"}


@pytest.fixture
def state_dir(tmp_path):
    d = tmp_path / "state"
    d.mkdir()
    (d / "applied.json").write_text(json.dumps({"version": 1, "host": "h1", "context": CONTEXT, "resources": []}))
    return d


def test_conflist_with_portmap():
    c = conflist("crossnet", "/var/lib/crossnet")
    assert c["cniVersion"] == "1.0.0" and c["name"] == "crossnet"
    assert [p["type"] for p in c["plugins"]] == ["crossnet-cni", "portmap"]
    assert c["plugins"][0]["stateDir"] == "/var/lib/crossnet"
    assert c["plugins"][1]["capabilities"] == {"portMappings": True}
    assert [p["type"] for p in conflist("x", "/s", portmap=False)["plugins"]] == ["crossnet-cni"]


def test_conflist_rejects_bad_name():
    with pytest.raises(ConfigError):
        conflist("a/b", "/s")


def test_install_writes_conflist_and_working_wrapper(tmp_path, state_dir):
    res = install(str(state_dir), conf_dir=str(tmp_path / "net.d"), bin_dir=str(tmp_path / "bin"), name="cx")
    conf = json.loads((tmp_path / "net.d" / "10-cx.conflist").read_text())
    assert conf["name"] == "cx" and conf["plugins"][0]["stateDir"] == str(state_dir)
    plugin = tmp_path / "bin" / "crossnet-cni"
    assert os.access(plugin, os.X_OK)
    assert res["host"] == "h1" and res["subnet"] == "10.32.1.0/24"
    proc = subprocess.run([str(plugin)], input=b'{"cniVersion":"1.0.0"}', capture_output=True,
                          env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"}, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "1.0.0" in json.loads(proc.stdout)["supportedVersions"]


def test_install_needs_applied_state(tmp_path):
    with pytest.raises(ConfigError):
        install(str(tmp_path / "nothing"), conf_dir=str(tmp_path / "n"), bin_dir=str(tmp_path / "b"))


def test_wrapper_uses_real_interpreter_with_S():
    text = wrapper_script()
    assert text.startswith("#!/bin/sh\n")
    assert f"exec {os.path.realpath(sys.executable)} -S -c " in text
    assert "from crossnet.cni.client import main" in text


@pytest.mark.parametrize("stdin,version", [(b'{"cniVersion":"1.0.0"}', "1.0.0"),
                                           (b'{ "cniVersion" : "0.4.0",\n "name": "x"}', "0.4.0"),
                                           (b"", "1.1.0"), (b"garbage", "1.1.0"), (b'{"cniVersion":"7.0.0"}', "1.1.0")])
def test_wrapper_answers_version_itself(tmp_path, stdin, version):
    from crossnet.cni.plugin import SUPPORTED_VERSIONS

    w = tmp_path / "crossnet-cni"
    w.write_text(wrapper_script(python="/nonexistent/python"))  # must not be needed for VERSION
    w.chmod(0o755)
    proc = subprocess.run([str(w)], input=stdin, capture_output=True, timeout=10,
                          env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")


def applied_from(cluster_file: str, host: str, monkeypatch) -> dict:
    """applied.json as `crossnet apply -f cluster_file` writes it on `host`: the real
    context (crossnet.host.build_context) from the cluster file, with the NIC's kernel
    facts (MTU 1500, a MAC) supplied instead of read from this machine."""
    from crossnet.backends import get_backend
    from crossnet.config import load_cluster
    from crossnet.host import build_context
    from crossnet.netlink import iproute as nl

    cluster = load_cluster(os.path.join(EXAMPLES, cluster_file))
    spec = cluster.host(host)
    nic = nl.LinkInfo(index=2, name=spec.iface, kind=None, mtu=1500, mac="52:54:00:00:00:01", up=True, master=None,
                      info_data={})
    monkeypatch.setattr(nl, "link_info", lambda ipr, name=None, index=None: nic if name == spec.iface else None)
    ctx = build_context(cluster, host, SimpleNamespace(ipr=None), get_backend(cluster.backend))
    return {"version": 1, "host": host, "cluster": cluster.to_dict(), "context": ctx.to_json(), "resources": []}


def test_docker_config_overlay(monkeypatch):
    applied = applied_from("vxlan.yaml", "host2", monkeypatch)
    cfg = docker_daemon_config(applied)
    assert cfg == {"bridge": "cn0", "fixed-cidr": "10.32.1.0/24", "mtu": 1450, "ip-masq": False}


def test_docker_config_bridge_uses_the_lans_router(monkeypatch):
    """Bridge backend: Docker's containers route via lan.gateway of the cluster file (the
    LAN's router), not the host's own address that crossnet puts on br0."""
    applied = applied_from("bridge.yaml", "host1", monkeypatch)
    assert applied["context"]["gateway"] == "10.211.55.10"  # br0: host1's LAN address
    cfg = docker_daemon_config(applied)
    assert cfg == {"bridge": "br0", "fixed-cidr": "10.211.55.64/26", "mtu": 1500, "ip-masq": False,
                   "default-gateway": "10.211.55.1"}
    assert docker_daemon_config(applied_from("bridge.yaml", "host2", monkeypatch))["default-gateway"] == "10.211.55.1"


def test_docker_config_bridge_without_cluster_in_state_is_an_error(monkeypatch):
    applied = applied_from("bridge.yaml", "host1", monkeypatch)
    del applied["cluster"]
    with pytest.raises(ConfigError, match="lan.gateway"):
        docker_daemon_config(applied)


def test_cli_docker_config_bridge(tmp_path, monkeypatch):
    state = tmp_path / "state"
    state.mkdir()
    (state / "applied.json").write_text(json.dumps(applied_from("bridge.yaml", "host2", monkeypatch)))
    res = _cli("--state-dir", str(state), "docker-config")
    cfg = json.loads(res.output)
    assert cfg["default-gateway"] == "10.211.55.1" and cfg["bridge"] == "br0"
    assert cfg["fixed-cidr"] == "10.211.55.128/26"


def test_merge_daemon_json_keeps_other_keys(tmp_path):
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps({"log-driver": "journald", "mtu": 1450}))
    change = merge_daemon_json(str(path), {"bridge": "cn0", "mtu": 1450})
    assert change.merged == {"log-driver": "journald", "mtu": 1450, "bridge": "cn0"}
    assert json.loads(path.read_text()) == change.merged
    assert not change.conflicts


def test_merge_daemon_json_never_silently_overwrites_a_value_the_user_set(tmp_path):
    path = tmp_path / "daemon.json"
    original = json.dumps({"log-driver": "journald", "mtu": 9000, "bridge": "docker1"})
    path.write_text(original)
    with pytest.raises(ConfigError) as exc:
        merge_daemon_json(str(path), {"bridge": "cn0", "mtu": 1450, "fixed-cidr": "10.32.1.0/24"})
    msg = str(exc.value)
    assert "mtu: 9000 (crossnet: 1450)" in msg and 'bridge: "docker1" (crossnet: "cn0")' in msg and "--force" in msg
    assert "\n" not in msg and "fixed-cidr" not in msg  # one line; only the keys that differ
    assert path.read_text() == original and not (tmp_path / "daemon.json.crossnet.bak").exists()
    change = merge_daemon_json(str(path), {"bridge": "cn0", "mtu": 1450}, force=True)
    assert json.loads(path.read_text()) == {"log-driver": "journald", "mtu": 1450, "bridge": "cn0"}
    assert (tmp_path / "daemon.json.crossnet.bak").read_text() == original  # the backup
    assert set(change.conflicts) == {"mtu", "bridge"}


def test_merge_daemon_json_diff_and_no_rewrite_when_unchanged(tmp_path):
    path = tmp_path / "daemon.json"
    first = merge_daemon_json(str(path), {"bridge": "cn0", "mtu": 1450})
    assert first.diff().startswith("--- /dev/null\n+++ ") and '+  "mtu": 1450' in first.diff()
    assert not (tmp_path / "daemon.json.crossnet.bak").exists()  # nothing to back up
    before = path.stat().st_mtime_ns
    again = merge_daemon_json(str(path), {"bridge": "cn0", "mtu": 1450})
    assert not again.changed and again.diff() == "" and path.stat().st_mtime_ns == before
    path.write_text(json.dumps({"bridge": "cn0", "mtu": 1450, "debug": True}))
    more = merge_daemon_json(str(path), {"bridge": "cn0", "mtu": 1450, "fixed-cidr": "10.32.1.0/24"})
    assert '+  "fixed-cidr": "10.32.1.0/24"' in more.diff() and f"--- {path}" in more.diff()
    assert json.loads((tmp_path / "daemon.json.crossnet.bak").read_text())["debug"] is True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(existing=st.dictionaries(st.sampled_from(["mtu", "bridge", "fixed-cidr", "debug", "log-level"]),
                                st.one_of(st.integers(0, 9999), st.text(max_size=8), st.booleans()), max_size=5),
       cfg=st.dictionaries(st.sampled_from(["mtu", "bridge", "fixed-cidr", "default-gateway"]),
                           st.one_of(st.integers(0, 9999), st.text(max_size=8)), max_size=4))
def test_plan_daemon_json_properties(existing, cfg):
    change = plan_daemon_json("daemon.json", json.dumps(existing), cfg)
    # conflicts are exactly the keys the file sets to another value; other keys are kept
    assert set(change.conflicts) == {k for k in cfg if k in existing and existing[k] != cfg[k]}
    assert all(change.merged[k] == v for k, v in cfg.items())
    assert all(change.merged[k] == v for k, v in existing.items() if k not in cfg)
    assert change.changed == (change.merged != existing)
    assert (change.diff() == "") == (not change.changed)


def test_merge_daemon_json_refuses_bip_and_garbage(tmp_path):
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps({"bip": "172.18.0.1/16"}))
    with pytest.raises(ConfigError):
        merge_daemon_json(str(path), {"bridge": "cn0"})
    path.write_text("{oops")
    with pytest.raises(ConfigError):
        merge_daemon_json(str(path), {"bridge": "cn0"})


def _cli(*args):
    from crossnet.cli.main import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False, standalone_mode=False)


def test_cli_docker_config_prints_and_writes(tmp_path, state_dir):
    res = _cli("--state-dir", str(state_dir), "docker-config")
    assert json.loads(res.output)["bridge"] == "cn0"
    target = tmp_path / "etc" / "daemon.json"
    _cli("--state-dir", str(state_dir), "docker-config", "--write", str(target))
    assert json.loads(target.read_text())["fixed-cidr"] == "10.32.1.0/24"


def test_cli_cni_install_json(tmp_path, state_dir):
    res = _cli("--state-dir", str(state_dir), "cni", "install", "--conf-dir", str(tmp_path / "n"),
               "--bin-dir", str(tmp_path / "b"), "--no-portmap", "-o", "json")
    out = json.loads(res.output)
    assert out["portmap"] is False and out["conflist"].endswith("10-crossnet.conflist")


# ---- the native client (shim.c) or, without a compiler, the Python client


def _version(plugin) -> dict:
    proc = subprocess.run([str(plugin)], input=b'{"cniVersion":"0.4.0"}', capture_output=True,
                          env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"}, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.skipif(not shutil.which("cc"), reason="needs a C compiler (cc)")
def test_install_native_client(tmp_path, state_dir, no_prebuilt):
    bin_dir = tmp_path / "bin"
    res = install(str(state_dir), conf_dir=str(tmp_path / "net.d"), bin_dir=str(bin_dir))
    assert res["client"] == "native" and res["client_note"] is None
    plugin, py = bin_dir / "crossnet-cni", bin_dir / "crossnet-cni-py"
    assert plugin.read_bytes()[:4] == b"\x7fELF" and oct(plugin.stat().st_mode & 0o777) == "0o755"
    assert py.read_text() == wrapper_script() and os.access(py, os.X_OK)
    assert _version(plugin) == _version(py)
    # idempotent, and no temporary files left behind
    res2 = install(str(state_dir), conf_dir=str(tmp_path / "net.d"), bin_dir=str(bin_dir))
    assert res2["client"] == "native"
    assert sorted(p.name for p in bin_dir.iterdir()) == ["crossnet-cni", "crossnet-cni-py"]


@pytest.fixture
def no_prebuilt(monkeypatch):
    """A development checkout: no native client built at install time (scripts/install's)."""
    monkeypatch.setattr(cni_install, "prebuilt_client", lambda prefix=None: None)


def test_install_without_compiler_uses_python_client(tmp_path, state_dir, monkeypatch, no_prebuilt):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no cc anywhere
    bin_dir = tmp_path / "bin"
    res = install(str(state_dir), conf_dir=str(tmp_path / "net.d"), bin_dir=str(bin_dir))
    assert res["client"] == "python" and "no C compiler" in res["client_note"]
    assert (bin_dir / "crossnet-cni").read_text() == (bin_dir / "crossnet-cni-py").read_text() == wrapper_script()
    monkeypatch.undo()
    assert _version(bin_dir / "crossnet-cni")["cniVersion"] == "0.4.0"
    assert sorted(p.name for p in bin_dir.iterdir()) == ["crossnet-cni", "crossnet-cni-py"]


def test_install_python_client_on_request_and_failed_build(tmp_path, state_dir, monkeypatch, no_prebuilt):
    res = install(str(state_dir), conf_dir=str(tmp_path / "n"), bin_dir=str(tmp_path / "b"), native=False)
    assert res["client"] == "python"
    assert (tmp_path / "b" / "crossnet-cni").read_text() == wrapper_script()
    # a compiler that fails: Python client, no temporary file left
    fake = tmp_path / "fakecc"
    fake.mkdir()
    (fake / "cc").write_text("#!/bin/sh\necho 'shim.c:1: error: broken' >&2\nexit 1\n")
    (fake / "cc").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake))
    res = install(str(state_dir), conf_dir=str(tmp_path / "n"), bin_dir=str(tmp_path / "b2"))
    assert res["client"] == "python" and "broken" in res["client_note"]
    assert sorted(p.name for p in (tmp_path / "b2").iterdir()) == ["crossnet-cni", "crossnet-cni-py"]


@pytest.mark.skipif(not shutil.which("cc"), reason="needs a C compiler (cc) to build the prebuilt client")
def test_install_copies_the_prebuilt_client_and_never_compiles(tmp_path, state_dir, monkeypatch):
    """scripts/install builds the native client once (build_prebuilt into the prefix);
    `cni install` copies it, with no compiler on PATH, and the copy finds the Python
    client next to wherever it was put (its fallback is relative to the executable)."""
    prefix = tmp_path / "prefix"
    assert cni_install.build_prebuilt(str(prefix)) == 0
    built = prefix / "libexec" / "crossnet" / "crossnet-cni"
    assert cni_install.prebuilt_client(str(prefix)) == built
    monkeypatch.setattr(sys, "prefix", str(prefix))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no cc: nothing may be compiled
    for n in (1, 2):  # two hosts' bin dirs from the same build
        bin_dir = tmp_path / f"bin{n}"
        res = install(str(state_dir), conf_dir=str(tmp_path / f"net{n}.d"), bin_dir=str(bin_dir))
        assert (res["client"], res["client_note"], res["client_source"]) == ("native", None, "prebuilt")
        plugin = bin_dir / "crossnet-cni"
        assert plugin.read_bytes() == built.read_bytes() and oct(plugin.stat().st_mode & 0o777) == "0o755"
        assert sorted(p.name for p in bin_dir.iterdir()) == ["crossnet-cni", "crossnet-cni-py"]
        # a command the native client does not serve goes to the Python client next to it:
        # replace that one by a marker script to see which file ran
        (bin_dir / "crossnet-cni-py").write_text(f"#!/bin/sh\necho fallback-{n} \"$CNI_COMMAND\"\n")
        proc = subprocess.run([str(plugin)], input=b"{}", capture_output=True, timeout=30,
                              env={"CNI_COMMAND": "NOSUCH", "PATH": "/usr/bin:/bin"})
        assert proc.stdout.decode().split() == [f"fallback-{n}", "NOSUCH"], proc


def test_cli_cni_install_reports_client(tmp_path, state_dir):
    res = _cli("--state-dir", str(state_dir), "cni", "install", "--conf-dir", str(tmp_path / "n"),
               "--bin-dir", str(tmp_path / "b"), "--no-native", "-o", "json")
    out = json.loads(res.output)
    assert out["client"] == "python" and out["python_client"].endswith("crossnet-cni-py")
    res = _cli("--state-dir", str(state_dir), "cni", "install", "--conf-dir", str(tmp_path / "n"),
               "--bin-dir", str(tmp_path / "b"), "--no-native")
    assert "(Python client: --no-native)" in res.output


def test_shim_defines_come_from_the_python_code():
    from crossnet.cni import client
    from crossnet.cni.install import shim_defines
    from crossnet.cni.plugin import SUPPORTED_VERSIONS

    d = dict(x[2:].split("=", 1) for x in shim_defines('/o"d\\d/x?'))
    assert d["CN_VERSIONS"] == '"' + " ".join(SUPPORTED_VERSIONS) + '"'
    assert d["CN_COMMANDS"] == '"' + " ".join(client.SERVER_COMMANDS) + '"'
    assert d["CN_FALLBACK"] == '"/o\\042d\\134d/x\\077"'


def test_cli_docker_config_write_shows_diff_refuses_conflicts_exit_2(tmp_path, state_dir):
    target = tmp_path / "daemon.json"
    target.write_text(json.dumps({"mtu": 1400, "debug": True}))

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "crossnet", "--state-dir", str(state_dir), "docker-config",
                               "--write", str(target), *extra], capture_output=True, text=True, timeout=60)

    refused = run()
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        f"crossnet: error: --write: {target} already sets mtu: 1400 (crossnet: 1450); not overwriting values set "
        f"there: rerun with --force to replace them (the old file is kept as {target}.crossnet.bak)"]
    assert json.loads(target.read_text()) == {"mtu": 1400, "debug": True}
    forced = run("--force")
    assert forced.returncode == 0, forced.stderr
    assert '-  "mtu": 1400' in forced.stdout and '+  "mtu": 1450,' in forced.stdout  # the diff
    assert "replaced (--force): mtu: 1400 (crossnet: 1450)" in forced.stderr
    assert json.loads((tmp_path / "daemon.json.crossnet.bak").read_text()) == {"mtu": 1400, "debug": True}
    again = run()
    assert again.returncode == 0 and again.stdout == "" and "up to date" in again.stderr


def test_install_labels_the_network_for_podman_network_inspect(tmp_path, state_dir):
    install(str(state_dir), conf_dir=str(tmp_path / "net.d"), bin_dir=str(tmp_path / "bin"), name="cx")
    conf = json.loads((tmp_path / "net.d" / "10-cx.conflist").read_text())
    assert conf["args"]["podman_labels"] == {"crossnet.subnet": "10.32.1.0/24", "crossnet.gateway": "10.32.1.1",
                                             "crossnet.network": "10.32.0.0/16", "crossnet.backend": "vxlan",
                                             "crossnet.mtu": "1450"}
    assert "args" not in conflist("x", "/s")  # nothing to label: no key at all
    if not shutil.which("podman"):
        pytest.skip("podman is not installed (scripts/install installs it)")
    # real podman reads the list (and asks the installed plugin for its VERSION); it shows
    # the labels for a plugin that is not one of its own drivers
    (tmp_path / "containers.conf").write_text(
        f'[network]\nnetwork_backend = "cni"\ncni_plugin_dirs = ["{tmp_path / "bin"}", "/usr/lib/cni", "/opt/cni/bin"]\n'
        f'network_config_dir = "{tmp_path / "net.d"}"\n')
    proc = subprocess.run(["podman", "network", "inspect", "cx"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "CONTAINERS_CONF": str(tmp_path / "containers.conf")})
    assert proc.returncode == 0, proc.stderr
    [net] = json.loads(proc.stdout)
    assert net["driver"] == "crossnet-cni" and net["labels"]["crossnet.subnet"] == "10.32.1.0/24"


@pytest.mark.parametrize("which", ["conflist", "crossnet-cni", "crossnet-cni-py"])
def test_install_never_overwrites_a_file_crossnet_did_not_write(tmp_path, state_dir, which):
    """An admin's conflist of the same network name, or another program's crossnet-cni /
    crossnet-cni-py in the bin dir: refused in one line naming it, and nothing written."""
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    conf_dir.mkdir()
    bin_dir.mkdir()
    foreign = conf_dir / "10-cx.conflist" if which == "conflist" else bin_dir / which
    text = ('{"cniVersion": "1.0.0", "name": "cx", "plugins": [{"type": "bridge"}]}\n' if which == "conflist"
            else "#!/bin/sh\necho the admin's own plugin\n")
    foreign.write_text(text)
    with pytest.raises(ConfigError) as err:
        install(str(state_dir), conf_dir=str(conf_dir), bin_dir=str(bin_dir), name="cx", native=False)
    option = "--name" if which == "conflist" else "--bin-dir"
    assert str(err.value) == (f"{option}: {foreign} exists and was not written by crossnet; "
                              "remove it first (crossnet does not overwrite it)")
    assert foreign.read_text() == text
    assert sorted(p.name for d in (conf_dir, bin_dir) for p in d.iterdir()) == [foreign.name]


def test_install_again_replaces_the_files_crossnet_wrote(tmp_path, state_dir):
    kw = {"conf_dir": str(tmp_path / "net.d"), "bin_dir": str(tmp_path / "bin"), "name": "cx", "native": False}
    install(str(state_dir), **kw)
    res = install(str(state_dir), portmap=False, **kw)
    assert [p["type"] for p in json.loads((tmp_path / "net.d" / "10-cx.conflist").read_text())["plugins"]] == [
        "crossnet-cni"]
    assert res["client"] == "python"


# ---- killed at every step (CROSSNET_TEST_CRASH_AT: the process SIGKILLs itself at its N-th crash point)


def _install_proc(state_dir, conf, bins, *extra, crash_at=None):
    env = {**os.environ, "CROSSNET_TEST_CRASH_AT": str(crash_at or 0)}
    return subprocess.run([sys.executable, "-m", "crossnet", "--state-dir", str(state_dir), "cni", "install",
                           "--conf-dir", str(conf), "--bin-dir", str(bins), "--name", "cx", *extra],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


@pytest.mark.parametrize("native", [pytest.param(True, marks=pytest.mark.skipif(
    not shutil.which("cc") and not cni_install.prebuilt_client(), reason="needs the native client")), False])
@pytest.mark.parametrize("before", ["nothing", "an older install"])
def test_cni_install_killed_at_every_step_never_leaves_a_conflist_without_its_plugin(tmp_path, state_dir, native,
                                                                                   before):
    """`cni install` killed at each of its steps: a conflist is there only complete (the
    one being installed, or the one before) and only once the plugin it names is in the
    bin dir (a runtime that sees the network can run it; the conflist used to be written
    first); the next install completes and leaves no temporary file behind (a kill
    between a temporary's write and its rename used to leave it for good)."""
    from crossnet.cni.install import is_ours_plugin

    extra = () if native else ("--no-native",)
    conf, bins = tmp_path / "net.d", tmp_path / "bin"
    files = {conf / "10-cx.conflist", bins / "crossnet-cni", bins / "crossnet-cni-py"}
    for n in range(1, 30):
        for d in (conf, bins):
            shutil.rmtree(d, ignore_errors=True)
        old = None
        if before != "nothing":
            assert _install_proc(state_dir, conf, bins, "--no-portmap", *extra).returncode == 0
            old = (conf / "10-cx.conflist").read_text()
        res = _install_proc(state_dir, conf, bins, *extra, crash_at=n)
        if res.returncode == 0:
            break
        assert res.returncode == -9, (n, res.returncode, res.stderr)
        listed = conf / "10-cx.conflist"
        if listed.exists():
            doc = json.loads(listed.read_text())
            assert listed.read_text() == old or [p["type"] for p in doc["plugins"]] == ["crossnet-cni", "portmap"], n
            for plugin in (bins / "crossnet-cni", bins / "crossnet-cni-py"):
                assert is_ours_plugin(plugin) and os.access(plugin, os.X_OK), (n, plugin)
        again = _install_proc(state_dir, conf, bins, *extra)
        assert again.returncode == 0, (n, again.stderr)
        assert {p for d in (conf, bins) for p in d.iterdir()} == files, (n, sorted(os.listdir(conf)),
                                                                          sorted(os.listdir(bins)))
        assert [p["type"] for p in json.loads((conf / "10-cx.conflist").read_text())["plugins"]] == [
            "crossnet-cni", "portmap"], n
    else:
        pytest.fail("cni install never ran through")
    assert n >= 5, n  # each file written, then renamed
