"""crossnet-cni without a kernel: argument/config validation, error codes, result shape."""

from __future__ import annotations

import io
import json
import os
import stat
from types import SimpleNamespace

import pytest

from crossnet.cni import plugin
from crossnet.cni.plugin import CniError, Request, attachment_key, build_result, parse_cni_args, run

CID = "c" * 64


def env(command="ADD", **extra):
    base = {"CNI_COMMAND": command, "CNI_CONTAINERID": CID, "CNI_NETNS": "/run/netns/none-such",
            "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def conf(**extra):
    c = {"cniVersion": "1.0.0", "name": "crossnet", "type": "crossnet-cni", "stateDir": "/nonexistent/crossnet"}
    c.update(extra)
    return json.dumps({k: v for k, v in c.items() if v is not None}).encode()


def main_exit(monkeypatch, stdin: bytes, environ: dict) -> int:
    """plugin.main() as a runtime calls it (``stdin``, the environment ``environ``): its exit code."""
    monkeypatch.setattr("sys.stdin", SimpleNamespace(buffer=io.BytesIO(stdin), isatty=lambda: False))
    monkeypatch.setattr("os.environ", environ)
    with pytest.raises(SystemExit) as exc:
        plugin.main()
    return exc.value.code


def error_of(rc, out):
    assert rc != 0, out
    assert set(out) == {"cniVersion", "code", "msg", "details"}
    return out["code"], out["msg"]


def test_version_lists_supported_versions():
    rc, out = run({"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"1.0.0"}')
    assert rc == 0
    assert out["cniVersion"] == "1.0.0"
    assert {"0.4.0", "1.0.0", "1.1.0"} <= set(out["supportedVersions"])


def test_version_without_stdin():
    rc, out = run({"CNI_COMMAND": "VERSION"}, b"")
    assert rc == 0 and "1.0.0" in out["supportedVersions"]


NEWEST = plugin.SUPPORTED_VERSIONS[-1]
VERSION_INPUTS = [
    (b'{"cniVersion":"1.0.0"}', "1.0.0"),
    (b'{ "cniVersion" : "0.4.0",\n "name": "x"}', "0.4.0"),
    (b'{"cniVersion":"9.9.9"}', NEWEST),  # unsupported: never echoed
    (b'{"cniVersion":"0.2.0"}', NEWEST),
    (b'{"cniVersion": 5}', NEWEST),
    (b"", NEWEST),
    (b"garbage", NEWEST),  # not JSON: still an answer, not error 6
    (b"{this is not json", NEWEST),
    (b"\xff\xfe", NEWEST),
    (b"[1, 2]", NEWEST),
]


@pytest.mark.parametrize("stdin,version", VERSION_INPUTS)
def test_version_never_fails_and_never_echoes_an_unsupported_version(stdin, version):
    rc, out = run({"CNI_COMMAND": "VERSION"}, stdin)
    assert (rc, out) == (0, {"cniVersion": version, "supportedVersions": list(plugin.SUPPORTED_VERSIONS)})


@pytest.mark.parametrize("stdin,version", VERSION_INPUTS)
def test_version_text_is_the_wrappers_bytes(tmp_path, stdin, version):
    """The Python client's VERSION answer is byte for byte the shell wrapper's."""
    import subprocess

    from crossnet.cni.install import wrapper_script

    w = tmp_path / "crossnet-cni"
    w.write_text(wrapper_script(python="/nonexistent/python"))
    w.chmod(0o755)
    proc = subprocess.run([str(w)], input=stdin, capture_output=True, timeout=10,
                          env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0
    assert proc.stdout.decode() == plugin.version_text(stdin) + "\n"


@pytest.mark.parametrize("stdin,version", [(b'{"cniVersion":"9.9.9"}', NEWEST), (b"garbage", NEWEST),
                                           (b'{"cniVersion":"0.4.0"}', "0.4.0"), (b"", NEWEST)])
def test_console_script_version(stdin, version):
    """The `crossnet-cni` console script (crossnet.cni.plugin:main) answers VERSION like
    the installed clients: exit 0, the plugin's versions, an unsupported or garbage
    cniVersion replaced by the newest supported one."""
    import subprocess
    import sys

    code = "import sys; from crossnet.cni.plugin import main; sys.argv = ['crossnet-cni']; main()"
    proc = subprocess.run([sys.executable, "-c", code], input=stdin, capture_output=True, timeout=30,
                          env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == plugin.version_text(stdin) + "\n"
    assert json.loads(proc.stdout) == {"cniVersion": version, "supportedVersions": list(plugin.SUPPORTED_VERSIONS)}


@pytest.mark.parametrize("stdin", [b"{not json", b"[1, 2]", b"\xff\xfe", b""])
def test_garbage_config_is_code_6(stdin):
    code, _ = error_of(*run(env(), stdin))
    assert code == 6


@pytest.mark.parametrize("version", ["9.9.9", "0.2.0", "", None, 5])
def test_unsupported_version_is_code_1(version):
    c = json.loads(conf())
    c["cniVersion"] = version
    code, msg = error_of(*run(env(), json.dumps(c).encode()))
    assert code == 1, msg


def test_check_needs_040():
    code, msg = error_of(*run(env("CHECK"), conf(cniVersion="0.3.1")))
    assert code == 1 and "CHECK" in msg


@pytest.mark.parametrize("var", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"])
def test_missing_env_is_code_4_naming_the_variable(var):
    code, msg = error_of(*run(env(**{var: None}), conf()))
    assert code == 4 and var in msg


def test_missing_command_and_unknown_command():
    code, msg = error_of(*run(env(CNI_COMMAND=None), conf()))
    assert code == 4 and "CNI_COMMAND" in msg
    code, msg = error_of(*run(env("FROB"), conf()))
    assert code == 4 and "FROB" in msg


@pytest.mark.parametrize("ifname", ["a" * 16, "a/b", "..", "has space"])
def test_bad_ifname_is_code_4(ifname):
    code, msg = error_of(*run(env(CNI_IFNAME=ifname), conf()))
    assert code == 4 and "CNI_IFNAME" in msg


def test_bad_container_id_is_code_4():
    code, msg = error_of(*run(env(CNI_CONTAINERID="../etc"), conf()))
    assert code == 4 and "CNI_CONTAINERID" in msg


def test_missing_netns_on_add_is_code_4():
    code, msg = error_of(*run(env(), conf()))
    assert code == 4 and "CNI_NETNS" in msg


def test_ipam_section_is_unsupported_field():
    code, msg = error_of(*run(env(), conf(ipam={"type": "host-local"})))
    assert code == 2 and "ipam" in msg


def test_missing_name_is_code_7():
    code, msg = error_of(*run(env(), conf(name=None)))
    assert code == 7 and "name" in msg


def test_bad_state_dir_is_code_7():
    code, _ = error_of(*run(env(), conf(stateDir=17)))
    assert code == 7


def test_error_keeps_requested_version():
    rc, out = run(env(CNI_PATH=None), conf(cniVersion="0.4.0"))
    assert out["cniVersion"] == "0.4.0"


def test_del_without_state_succeeds_silently():
    rc, out = run(env("DEL", CNI_NETNS=None), conf())
    assert (rc, out) == (0, None)


def test_gc_without_state_succeeds():
    rc, out = run(env("GC", CNI_CONTAINERID=None, CNI_NETNS=None, CNI_IFNAME=None),
                  conf(cniVersion="1.1.0", **{"cni.dev/valid-attachments": []}))
    assert (rc, out) == (0, None)


def test_add_without_state_is_try_again_later():
    """No applied.json yet (the node's `crossnet apply` has not run): transient, code 11."""
    import os

    netns = "/proc/self/ns/net"  # must exist; the state check fails before anything is touched
    assert os.path.exists(netns)
    rc, out = run(env(CNI_NETNS=netns), conf())
    code, msg = error_of(rc, out)
    assert code == 11 and "try again later" in msg and "crossnet apply" in out["details"]


def test_unreadable_state_is_code_100(tmp_path):
    (tmp_path / "applied.json").write_text(json.dumps({"version": 1, "context": {"backend": "vxlan"}}))
    code, msg = error_of(*run(env("CHECK", CNI_NETNS="/proc/self/ns/net"), conf(stateDir=str(tmp_path))))
    assert code == 100 and "unreadable" in msg


def test_status_without_state_is_code_50():
    code, _ = error_of(*run(env("STATUS", CNI_CONTAINERID=None, CNI_NETNS=None, CNI_IFNAME=None),
                            conf(cniVersion="1.1.0")))
    assert code == 50


def test_status_needs_110():
    code, _ = error_of(*run(env("STATUS"), conf(cniVersion="1.0.0")))
    assert code == 1


# ---- CNI_ARGS


def test_parse_cni_args():
    assert parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.0.0.5;FOO=bar") == {
        "IgnoreUnknown": "1", "K8S_POD_NAME": "web", "IP": "10.0.0.5", "FOO": "bar"}
    assert parse_cni_args("") == {}
    assert parse_cni_args("IP=10.0.0.5;") == {"IP": "10.0.0.5"}


def test_unknown_cni_arg_without_ignore_is_code_4():
    with pytest.raises(CniError) as exc:
        parse_cni_args("FOO=bar")
    assert exc.value.code == 4 and "FOO" in exc.value.msg


def test_malformed_cni_arg():
    with pytest.raises(CniError) as exc:
        parse_cni_args("IP")
    assert exc.value.code == 4


def _req(cni_args="", **c):
    r = Request(env(CNI_ARGS=cni_args), conf(**c))
    r.load_conf()
    r.args = parse_cni_args(cni_args)
    return r


def test_requested_ip_sources():
    assert _req("IgnoreUnknown=1;IP=10.32.0.9").requested_ip() == ("CNI_ARGS IP", "10.32.0.9")
    assert _req(runtimeConfig={"ips": ["10.32.0.7/24"]}).requested_ip() == ("runtimeConfig.ips", "10.32.0.7")
    assert _req(args={"cni": {"ips": ["10.32.0.8"]}}).requested_ip() == ("args.cni.ips", "10.32.0.8")
    assert _req("IP=10.32.0.9", runtimeConfig={"ips": ["10.32.0.9/24"]}).requested_ip() == ("CNI_ARGS IP", "10.32.0.9")
    assert _req().requested_ip() is None


def test_requested_ip_invalid():
    with pytest.raises(CniError) as exc:
        _req("IP=10.32.0.300").requested_ip()
    assert exc.value.code == 4
    with pytest.raises(CniError) as exc:
        _req("IP=10.32.0.5,10.32.0.6").requested_ip()
    assert exc.value.code == 4


@pytest.mark.parametrize("cni_args,config,code,source", [
    ("IP=fd00::5", {}, 4, "CNI_ARGS IP"),  # was: ignored, and a random IPv4 address given
    ("IP=10.32.0.5,fd00::5", {}, 4, "CNI_ARGS IP"),
    ("", {"runtimeConfig": {"ips": ["fd00::5/64"]}}, 7, "runtimeConfig.ips"),
    ("", {"args": {"cni": {"ips": ["fd00::5"]}}}, 7, "args.cni.ips"),
])
def test_requested_ipv6_is_an_error(cni_args, config, code, source):
    with pytest.raises(CniError) as exc:
        _req(cni_args, **config).requested_ip()
    assert exc.value.code == code and exc.value.msg.startswith(source) and "IPv6" in exc.value.msg


def test_requested_ip_from_config_errors_are_code_7():
    with pytest.raises(CniError) as exc:
        _req(runtimeConfig={"ips": ["10.32.0.300/24"]}).requested_ip()
    assert exc.value.code == 7 and "runtimeConfig.ips" in exc.value.msg
    with pytest.raises(CniError) as exc:
        _req(runtimeConfig={"ips": ["10.32.0.5/24", "10.32.0.6/24"]}).requested_ip()
    assert exc.value.code == 7 and "runtimeConfig.ips" in exc.value.msg


@pytest.mark.parametrize("source,code", [("CNI_ARGS IP", 4), ("runtimeConfig.ips", 7), ("args.cni.ips", 7)])
@pytest.mark.parametrize("address,what", [("10.33.0.5", "outside"), ("10.32.0.1", "reserved")])
def test_requested_ip_outside_or_reserved_names_its_source(source, code, address, what):
    import ipaddress

    host = SimpleNamespace(ctx=SimpleNamespace(host="h1", network="10.32.0.0/16"))
    pool = SimpleNamespace(usable=ipaddress.ip_network("10.32.0.0/24"), subnet=ipaddress.ip_network("10.32.0.0/24"),
                           reserved={ipaddress.IPv4Address("10.32.0.1")})
    with pytest.raises(CniError) as exc:
        plugin._check_requested_ip(host, pool, source, address)
    assert exc.value.code == code and exc.value.msg.startswith(f"{source}: {address} is {what}")


def test_requested_mac():
    assert _req("MAC=02:AA:bb:cc:dd:ee").requested_mac() == "02:aa:bb:cc:dd:ee"
    with pytest.raises(CniError):
        _req("MAC=01:00:5e:00:00:01").requested_mac()  # multicast
    with pytest.raises(CniError):
        _req("MAC=zz").requested_mac()


def test_attachment_key():
    assert attachment_key(CID, "eth0") == CID
    assert attachment_key(CID, "net1") == f"{CID}/net1"


# ---- result


def _att():
    return SimpleNamespace(host_if="cnv0123456789", ifname="eth0", mac="02:00:00:00:00:01",
                           netns="/run/netns/x", address="10.32.0.5", prefixlen=16, gateway="10.32.0.1", mtu=1450)


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_result_shape(version):
    req = _req(cniVersion=version, dns={"nameservers": ["10.32.0.1"]})
    res = build_result(req, None, _att(), "02:00:00:00:00:02")
    assert res["cniVersion"] == version
    assert res["interfaces"][1] == {**{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/x"},
                                    **({"mtu": 1450} if version == "1.1.0" else {})}
    assert "sandbox" not in res["interfaces"][0]
    ip = res["ips"][0]
    assert ip["address"] == "10.32.0.5/16" and ip["gateway"] == "10.32.0.1" and ip["interface"] == 1
    assert ("version" in ip) == (version < "1.0.0")
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.32.0.1"}]
    assert res["dns"] == {"nameservers": ["10.32.0.1"]}


def test_result_appends_to_prev_result():
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "lo0"}], "ips": [], "routes": []}
    res = build_result(_req(prevResult=prev), None, _att(), None)
    assert [i["name"] for i in res["interfaces"]] == ["lo0", "cnv0123456789", "eth0"]
    assert res["ips"][0]["interface"] == 2


def test_internal_errors_become_json(monkeypatch):
    def boom(req):
        raise RuntimeError("kaboom")

    monkeypatch.setitem(plugin.HANDLERS, "ADD", boom)
    code, msg = error_of(*run(env(), conf()))
    assert code == 199 and "kaboom" in msg


def test_main_prints_json_and_exits_nonzero(monkeypatch, capsys):
    assert main_exit(monkeypatch, b"garbage", env()) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["code"] == 6


def test_log_file(tmp_path, monkeypatch, capsys):
    log = tmp_path / "cni.log"
    assert main_exit(monkeypatch, conf(logFile=str(log)), env("DEL", CNI_NETNS=None)) == 0
    line = json.loads(log.read_text())
    assert line["command"] == "DEL" and line["rc"] == 0


# ---- one container in two networks over one state dir: (network, id, ifname) is the attachment


def _cni_meta(network, cid=CID, ifname="eth0"):
    return {"cni": {"network": network, "containerID": cid, "ifname": ifname}}


def test_not_ours_names_the_other_owner():
    alloc = SimpleNamespace(meta=_cni_meta("net-a"))
    assert plugin.not_ours(alloc, "net-a") is None
    assert plugin.not_ours(alloc, "net-b") == "attached by network 'net-a'"
    assert plugin.not_ours(SimpleNamespace(meta={"netns": "/run/netns/x"}), "net-a") == (
        "attached by crossnet attach or the agent, not by crossnet-cni")


def test_add_of_another_network_leaves_the_attachment_as_it_was(tmp_path):
    """Network B's ADD with the (container id, ifname) of network A's attachment was taken
    as a re-ADD and re-recorded the entry as B's (B's DEL/GC then removed A's container).
    It is refused before any kernel operation (a regular file stands in for the netns:
    the refusal comes before the namespace is opened for netlink)."""
    import ipaddress

    from crossnet import containers
    from crossnet.state import StateDir

    ctx = SimpleNamespace(gateway=ipaddress.IPv4Address("10.32.0.1"), backend="vxlan",
                          subnet=ipaddress.IPv4Network("10.32.0.0/24"), prefixlen=16)
    state = StateDir(tmp_path / "state")
    ns = tmp_path / "ns"
    ns.write_text("")
    pool = containers.pool_for(state, ctx)
    a = pool.allocate(CID, meta={"netns": str(ns), "ifname": "eth0", **_cni_meta("net-a")})
    before = state.ipam_path.read_bytes()
    with pytest.raises(containers.InUse) as exc:
        containers.attach(state, ctx, None, CID, str(ns), ifname="eth0", meta=_cni_meta("net-b"), reuse=False,
                          foreign=lambda alloc: plugin.not_ours(alloc, "net-b"))
    assert str(exc.value) == (f"{CID!r} (eth0) is already attached by network 'net-a' with {a.address}; "
                              "detach it there first")
    assert state.ipam_path.read_bytes() == before
    assert plugin.made_by(pool.get(CID), "net-a")
    # the owner's own re-ADD passes that check and goes on to the kernel (setns into a
    # regular file: EINVAL), leaving the entry as it was
    with pytest.raises(OSError):
        containers.attach(state, ctx, None, CID, str(ns), ifname="eth0", meta=_cni_meta("net-a"), reuse=False,
                          foreign=lambda alloc: plugin.not_ours(alloc, "net-a"))
    assert state.ipam_path.read_bytes() == before


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_log_file_is_never_written_through_a_link_or_into_a_fifo(tmp_path, monkeypatch, kind):
    """The network's logFile (configuration the runtime hands over) was opened with a plain
    append: a link planted at the path had root append the call's line to the file it named,
    a FIFO there blocked the plugin until a reader came. Now the call runs and nothing is
    written (crossnet.logjson.append_line)."""
    log = tmp_path / "cni.log"
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    if kind == "symlink":
        log.symlink_to(victim)
    else:
        os.mkfifo(log)
    assert main_exit(monkeypatch, conf(logFile=str(log)), env("DEL", CNI_NETNS=None)) == 0
    assert victim.read_text() == "precious\n"
    assert log.is_symlink() if kind == "symlink" else stat.S_ISFIFO(os.lstat(log).st_mode)
