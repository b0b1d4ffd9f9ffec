"""`crossnet uninstall` (crossnet.uninstall): removes exactly what scripts/install and
crossnet's own install commands added, nothing else; refuses a configured host."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from crossnet import uninstall
from crossnet.errors import ConfigError, CrossnetError


def _tree(root: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, n), root))
    return out


def _manifest(prefix: Path, bin_dir: Path, **kw) -> dict:
    doc = {"version": 1, "prefix": str(prefix), "bin_dir": str(bin_dir),
           "links": [str(bin_dir / "crossnet"), str(bin_dir / "crossnet-cni")], "packages_added": [], **kw}
    path = prefix / uninstall.MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return doc


@pytest.fixture
def installed(tmp_path):
    """A fake installation: a venv that runs this crossnet (its sys.path in a .pth), the
    manifest scripts/install writes, the command links."""
    root = tmp_path / "root"
    prefix, bin_dir = root / "opt" / "crossnet", root / "usr" / "local" / "bin"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True, timeout=120)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))
    purelib.mkdir(parents=True, exist_ok=True)
    (purelib / "crossnet-test.pth").write_text("\n".join(p for p in sys.path if p and os.path.isdir(p)) + "\n")
    bin_dir.mkdir(parents=True)
    for name in ("crossnet", "crossnet-cni"):
        (prefix / "bin" / name).write_text(f"#!{prefix}/bin/python\nfrom crossnet.cli.main import main; main()\n")
        (prefix / "bin" / name).chmod(0o755)
        os.symlink(prefix / "bin" / name, bin_dir / name)
    doc = _manifest(prefix, bin_dir)
    return root, prefix, bin_dir, doc


def _run(prefix: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(prefix / "bin" / "python"), "-m", "crossnet", *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd="/", check=False)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_uninstall_removes_everything_install_and_crossnet_added(installed, tmp_path):
    root, prefix, bin_dir, _ = installed
    state = root / "var" / "lib" / "crossnet"
    state.mkdir(parents=True)
    units, cni_bin, cni_conf = root / "etc" / "systemd" / "system", root / "opt" / "cni" / "bin", root / "etc" / "cni" / "net.d"
    units.mkdir(parents=True)
    cni_bin.mkdir(parents=True)
    cni_conf.mkdir(parents=True)
    # what was there before crossnet: a foreign unit, plugin, conflist, command
    (units / "other.service").write_text("[Service]\nExecStart=/bin/true\n")
    (cni_bin / "portmap").write_text("#!/bin/sh\n")
    (cni_conf / "87-podman.conflist").write_text(json.dumps({"name": "podman", "plugins": [{"type": "bridge"}]}))
    (bin_dir / "other-tool").write_text("#!/bin/sh\n")
    # what scripts/install added: the prefix and the two links
    before = {p for p in _tree(root) if not p.startswith("opt/crossnet")} - {"usr/local/bin/crossnet",
                                                                            "usr/local/bin/crossnet-cni"}
    # crossnet's own install commands, run from the installation (a configured host first)
    (state / "applied.json").write_text(json.dumps({"version": 1, "host": "h1", "resources": [],
                                                    "context": {"host": "h1", "subnet": "10.32.1.0/24"}}))
    _run(prefix, "--state-dir", str(state), "cni", "install", "--bin-dir", str(cni_bin), "--conf-dir", str(cni_conf))
    _run(prefix, "--state-dir", str(state), "systemd", "install", "--agent", "--apply", "--unit-dir", str(units))
    assert {"crossnet-cni", "crossnet-cni-py"} <= set(os.listdir(cni_bin))
    assert "10-crossnet.conflist" in os.listdir(cni_conf) and "crossnet-agent.service" in os.listdir(units)
    # refused while the host is configured: nothing removed
    snapshot = _tree(root)
    proc = _run(prefix, "--state-dir", str(state), "uninstall", "--unit-dir", str(units), "--cni-bin-dir",
                str(cni_bin), "--cni-conf-dir", str(cni_conf), check=False)
    assert proc.returncode == 2 and "crossnet: error: --state-dir: this host is still configured" in proc.stderr
    assert _tree(root) == snapshot
    # after `reset` (the record gone): dry run changes nothing, then the real thing
    (state / "applied.json").unlink()
    args = ("--state-dir", str(state), "uninstall", "--unit-dir", str(units), "--cni-bin-dir", str(cni_bin),
            "--cni-conf-dir", str(cni_conf))
    dry = _run(prefix, *args, "--dry-run")
    assert _tree(root) == snapshot - {"var/lib/crossnet/applied.json"}
    assert f"remove {prefix}/" in dry.stdout
    out = _run(prefix, *args).stdout
    assert out.splitlines()[-1] == f"crossnet uninstalled (state dir {state} kept)"
    assert not prefix.exists()
    after = _tree(root)
    assert after == before, sorted(after ^ before)  # the state dir is kept (empty here)


def test_links_that_no_longer_point_into_the_prefix_are_left_alone(installed):
    root, prefix, bin_dir, doc = installed
    (bin_dir / "crossnet-cni").unlink()
    (bin_dir / "crossnet-cni").write_text("#!/bin/sh\n# someone else's\n")
    lines, steps = uninstall.plan(doc, str(root / "state"), str(root / "u"), str(root / "cb"), str(root / "cc"),
                                  packages=True, force=False)
    assert lines == [f"{bin_dir / 'crossnet-cni'}: not a link into {prefix.resolve()}, left alone"]
    real = Path(os.path.realpath(prefix))
    removing = real.parent / ".crossnet.removing"
    assert steps == [("unlink", bin_dir / "crossnet"), ("rename", (real, removing)), ("empty", removing),
                     ("drop", removing)]  # no packages added


def test_packages_are_removed_only_on_request(installed):
    root, prefix, bin_dir, _ = installed
    doc = _manifest(prefix, bin_dir, packages_added=["etcd-server", "wireguard-go"])
    args = (doc, str(root / "state"), str(root / "u"), str(root / "cb"), str(root / "cc"))
    assert not [s for s in uninstall.plan(*args, packages=False, force=False)[1] if s[0] == "apt"]
    # before the manifest goes: a run killed in apt-get can be finished (scripts/uninstall --packages)
    assert uninstall.plan(*args, packages=True, force=False)[1][-2:] == [
        ("apt", ["etcd-server", "wireguard-go"]), ("drop", prefix.parent / ".crossnet.removing")]
    assert uninstall.run([("apt", ["etcd-server"])], str(root / "u"), dry_run=True) == \
        ["apt-get remove -y etcd-server"]


def test_manifest_problems_are_one_line(tmp_path, installed):
    with pytest.raises(ConfigError, match="not installed by scripts/install"):
        uninstall.load_manifest(str(tmp_path / "nowhere"))
    prefix = installed[1]
    path = prefix / uninstall.MANIFEST
    for doc, match in (({"version": 2}, "unknown install manifest format"),
                       ([], "unknown install manifest format"),
                       ({"version": 1, "prefix": "/opt/elsewhere", "bin_dir": "/b", "links": [], "packages_added": []},
                        "names prefix '/opt/elsewhere'"),
                       ({"version": 1, "prefix": str(prefix), "bin_dir": "/b", "links": "x", "packages_added": []},
                        "field 'links'"),
                       ({"version": 1, "prefix": str(prefix), "bin_dir": "/b", "links": [1], "packages_added": []},
                        "lists of strings"),
                       ({"version": 1, "prefix": str(prefix), "bin_dir": "/b", "links": [],
                         "packages_added": ["etcd-server", "-oDebug::pkgProblemResolver=1"]},
                        "packages_added: '-oDebug::pkgProblemResolver=1' is not a Debian package name")):
        path.write_text(json.dumps(doc))
        with pytest.raises(CrossnetError, match=match):
            uninstall.load_manifest(str(prefix))
    path.write_text("{")
    with pytest.raises(CrossnetError, match="unreadable install manifest"):
        uninstall.load_manifest(str(prefix))


def test_a_prefix_that_is_not_a_venv_is_never_removed(installed):
    root, prefix, _, doc = installed
    (prefix / "pyvenv.cfg").unlink()
    with pytest.raises(CrossnetError, match="is not a virtual environment"):
        uninstall.plan(doc, str(root / "state"), str(root / "u"), str(root / "cb"), str(root / "cc"),
                       packages=False, force=False)


def test_only_conflists_of_the_shape_crossnet_writes_are_crossnets(tmp_path):
    """Every conflist naming crossnet-cni anywhere counted as crossnet's: an admin's own
    list chaining it with other plugins (bandwidth, firewall) was deleted by uninstall and
    overwritten by `cni install --name` of its network. Only what cni install writes is
    crossnet's now: crossnet-cni, then at most portmap, nothing else."""
    from crossnet.cni.install import conflist, is_ours_conflist

    def ours(doc) -> bool:
        p = tmp_path / "x.conflist"
        p.write_text(json.dumps(doc))
        return is_ours_conflist(p)

    for kw in ({}, {"portmap": False}, {"log_file": "/tmp/l", "helper": "spawn", "labels": {"crossnet.host": "h1"}}):
        assert ours(conflist("crossnet", "/var/lib/crossnet", **kw)), kw
    mine = conflist("mine", "/var/lib/crossnet")
    chained = {**mine, "plugins": [*mine["plugins"], {"type": "bandwidth", "capabilities": {"bandwidth": True}}]}
    assert not ours(chained)
    assert not ours({**mine, "plugins": [{"type": "firewall"}, *mine["plugins"]]})
    assert not ours({**mine, "plugins": [{**mine["plugins"][0], "ipam": {"type": "host-local"}}]})
    assert not ours({**mine, "disableCheck": True})
    assert not ours({"name": "podman", "plugins": [{"type": "bridge"}]})
    assert not ours([1]) and not ours({"plugins": "crossnet-cni"})


def test_the_temporaries_of_a_killed_cni_install_are_removed_a_live_ones_and_others_kept(installed):
    """A `cni install` killed before its renames leaves `.NAME.PID.tmp` next to the file
    (crossnet.state.pid_temp); uninstall removes those whose writer is gone and that
    are crossnet's (its plugin names; a conflist of crossnet's shape), nothing else."""
    from crossnet.cni.install import conflist, wrapper_script

    root, prefix, _, doc = installed
    cb, cc = root / "cb", root / "cc"
    cb.mkdir()
    cc.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    live = os.getpid()
    ours = json.dumps(conflist("cx", "/var/lib/crossnet"))
    files = {cb / f".crossnet-cni.{gone.pid}.tmp": wrapper_script(), cb / f".crossnet-cni-py.{gone.pid}.tmp": "x",
             cb / f".crossnet-cni.{live}.tmp": wrapper_script(), cb / f".portmap.{gone.pid}.tmp": "x",
             cc / f".10-cx.conflist.{gone.pid}.tmp": ours, cc / f".10-cx.conflist.{live}.tmp": ours,
             cc / f".87-podman.conflist.{gone.pid}.tmp": json.dumps({"name": "podman", "plugins": [{"type": "bridge"}]})}
    for p, text in files.items():
        p.write_text(text)
    _, steps = uninstall.plan(doc, str(root / "state"), str(root / "u"), str(cb), str(cc), packages=False, force=False)
    assert sorted(str(arg) for kind, arg in steps if kind == "unlink" and ".tmp" in str(arg)) == sorted(
        map(str, [cb / f".crossnet-cni.{gone.pid}.tmp", cb / f".crossnet-cni-py.{gone.pid}.tmp",
                  cc / f".10-cx.conflist.{gone.pid}.tmp"]))


SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "uninstall"


def _script(prefix: Path, state: Path, *args: str, crash_at: int | None = None) -> subprocess.CompletedProcess:
    """scripts/uninstall of the installation at prefix (CROSSNET_PREFIX)."""
    from crossnet.state import CRASH_ENV

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", CRASH_ENV)}
    env.update({"CROSSNET_PREFIX": str(prefix), "CROSSNET_STATE_DIR": str(state),
                **({CRASH_ENV: str(crash_at)} if crash_at else {})})
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120, env=env,
                          cwd="/", check=False)


def test_an_uninstall_killed_at_every_step_is_finished_by_running_scripts_uninstall_again(installed, tmp_path):
    """Killed while it deleted the prefix, uninstall left no `crossnet` to run again and
    scripts/uninstall refused ("not installed"): the rest stayed for good. The prefix is
    now renamed to .crossnet.removing whole, emptied, its manifest deleted last, and
    scripts/uninstall finishes such a tree itself. Killed at its N-th crash point (every
    step, every entry of the prefix), a second scripts/uninstall leaves exactly what was
    there before the install."""
    root, prefix, bin_dir, _ = installed
    state = root / "var" / "lib" / "crossnet"
    units, cni_bin, cni_conf = root / "etc" / "systemd" / "system", root / "opt" / "cni" / "bin", root / "etc" / "cni" / "net.d"
    for d in (state, units, cni_bin, cni_conf):
        d.mkdir(parents=True)
    (cni_bin / "portmap").write_text("#!/bin/sh\n")
    (root / "opt" / ".other").write_text("a neighbour of the prefix\n")
    before = {p for p in _tree(root) if not p.startswith("opt/crossnet")} - {"usr/local/bin/crossnet",
                                                                            "usr/local/bin/crossnet-cni"}
    (state / "applied.json").write_text(json.dumps({"version": 1, "host": "h1", "resources": [],
                                                    "context": {"host": "h1", "subnet": "10.32.1.0/24"}}))
    _run(prefix, "--state-dir", str(state), "cni", "install", "--bin-dir", str(cni_bin), "--conf-dir", str(cni_conf))
    _run(prefix, "--state-dir", str(state), "systemd", "install", "--agent", "--unit-dir", str(units))
    (state / "applied.json").unlink()  # `crossnet reset`
    template = tmp_path / "template"
    shutil.copytree(root, template, symlinks=True)
    args = ("--unit-dir", str(units), "--cni-bin-dir", str(cni_bin), "--cni-conf-dir", str(cni_conf))
    removing = prefix.parent / ".crossnet.removing"
    for n in range(1, 80):
        res = _script(prefix, state, *args, crash_at=n)
        if res.returncode == 0:
            assert _tree(root) == before, (n, sorted(_tree(root) ^ before))
            break
        assert res.returncode == -signal.SIGKILL, (n, res.returncode, res.stderr)
        again = _script(prefix, state, *args)
        assert again.returncode == 0, (n, again.stdout, again.stderr)
        assert _tree(root) == before, (n, sorted(_tree(root) ^ before))
        assert not removing.exists() and not prefix.exists(), n
        shutil.rmtree(root)
        shutil.copytree(template, root, symlinks=True)
    else:
        pytest.fail("uninstall never ran through")
    assert n >= 10, n  # unit, plugin files, conflist, links, rename, the prefix's entries


def test_scripts_uninstall_finishes_only_a_tree_its_manifest_names(tmp_path):
    """The .NAME.removing tree of a killed uninstall: with --packages the packages its
    manifest lists (--dry-run: only said, nothing removed); a manifest naming another
    prefix, a hostile package name, or files without a manifest: refused, nothing touched."""
    prefix = tmp_path / "opt" / "crossnet"
    removing = tmp_path / "opt" / ".crossnet.removing"
    manifest = removing / uninstall.MANIFEST

    def leftover(doc: dict | None) -> None:
        shutil.rmtree(removing, ignore_errors=True)
        (removing / "lib" / "python3" / "site-packages").mkdir(parents=True)
        (removing / "lib" / "python3" / "site-packages" / "x.py").write_text("")
        (removing / "bin").mkdir()
        os.symlink("/usr/bin/python3", removing / "bin" / "python")
        if doc is not None:
            manifest.parent.mkdir(parents=True)
            manifest.write_text(json.dumps({"version": 1, "prefix": str(prefix), "bin_dir": "/usr/local/bin",
                                            "links": [], "packages_added": [], **doc}, indent=2, sort_keys=True))

    leftover({"packages_added": ["etcd-server", "wireguard-go"]})
    snapshot = _tree(removing)
    res = _script(prefix, tmp_path / "state", "--packages", "--dry-run")
    assert res.returncode == 0 and "apt-get remove -y etcd-server wireguard-go" in res.stdout, res
    assert _tree(removing) == snapshot
    for doc, err in (({"prefix": "/opt/elsewhere"}, "names prefix '/opt/elsewhere'"),
                     ({"packages_added": ["ok", "x;rm -rf /"]}, "is not a Debian package name"),
                     (None, "holds files but no crossnet manifest")):
        leftover(doc)
        snapshot = _tree(removing)
        res = _script(prefix, tmp_path / "state", "--packages")
        assert res.returncode == 1 and err in res.stderr, (doc, res.stderr)
        assert _tree(removing) == snapshot, doc
    leftover({})
    res = _script(prefix, tmp_path / "state")
    assert res.returncode == 0 and not removing.exists(), res.stderr
    assert os.listdir(tmp_path / "opt") == []
    res = _script(prefix, tmp_path / "state")
    assert res.returncode == 1 and "crossnet is not installed in" in res.stderr


def test_a_new_installation_removes_the_tree_a_killed_uninstall_left_and_nothing_foreign(installed):
    """Reinstalled after an uninstall killed past its rename: the next uninstall removes
    the old .crossnet.removing first (its manifest names this prefix, or it holds no file);
    a directory of that name that is not such a tree is refused, nothing planned."""
    root, prefix, _, doc = installed
    removing = prefix.parent / ".crossnet.removing"
    args = (doc, str(root / "state"), str(root / "u"), str(root / "cb"), str(root / "cc"))
    (removing / "share" / "crossnet").mkdir(parents=True)  # killed while removing the empty directories
    steps = uninstall.plan(*args, packages=False, force=False)[1]
    assert steps[-4:] == [("rmtree", removing), ("rename", (Path(os.path.realpath(prefix)), removing)),
                          ("empty", removing), ("drop", removing)]
    (removing / uninstall.MANIFEST).write_text(json.dumps({**doc, "prefix": str(prefix)}))
    assert uninstall.plan(*args, packages=False, force=False)[1][-4] == ("rmtree", removing)
    for foreign in ({**doc, "prefix": "/opt/other"}, "not json"):
        (removing / uninstall.MANIFEST).write_text(json.dumps(foreign) if isinstance(foreign, dict) else foreign)
        with pytest.raises(CrossnetError, match=r"\.crossnet\.removing exists and is not what an interrupted"):
            uninstall.plan(*args, packages=False, force=False)
    (removing / uninstall.MANIFEST).unlink()
    (removing / "data").write_text("someone's")
    with pytest.raises(CrossnetError, match="is not what an interrupted uninstall"):
        uninstall.plan(*args, packages=False, force=False)
