"""crossnet.units and `crossnet systemd install|uninstall`: every unit passes
`systemd-analyze verify`; install writes only into --unit-dir (never the machine's
/etc/systemd in tests), refuses to overwrite a unit it did not write, --dry-run writes
nothing, uninstall removes only crossnet's units; the agent unit is Type=notify with a
watchdog, ordered before the container runtimes, and keeps only the capabilities the
agent needs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crossnet import units
from crossnet.errors import ConfigError

ANALYZE = shutil.which("systemd-analyze")


def run_cli(*args: str, state_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crossnet", "--state-dir", str(state_dir), *args],
                          check=False, capture_output=True, text=True, timeout=60, env={**os.environ})


def fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k] = v
    return out


@pytest.fixture
def exe(tmp_path) -> str:
    """An executable to name in ExecStart= (verify checks that it exists)."""
    return shutil.which("crossnet") or sys.executable


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_every_unit_passes_systemd_analyze_verify(tmp_path, exe):
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    proc = run_cli("systemd", "install", "--agent", "--apply", "--launch", "--cni", "--unit-dir", str(unit_dir),
                   "--exec", exe, state_dir=tmp_path / "state")
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in unit_dir.iterdir())
    assert names == sorted(units.UNITS.values())
    for name in names:
        v = subprocess.run([ANALYZE, "verify", str(unit_dir / name)], check=False, capture_output=True, text=True,
                           timeout=60, env={**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:"})
        assert v.returncode == 0, v.stderr
        assert name not in v.stderr, v.stderr  # a bad directive is only a warning naming the file


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_verify_does_catch_a_bad_directive(tmp_path, exe):
    """The check above can fail: a broken unit is reported."""
    text = units.render(["agent"], units.UnitOptions(exe=exe, state_dir=str(tmp_path)))["crossnet-agent.service"]
    bad = tmp_path / "crossnet-agent.service"
    bad.write_text(text.replace("Restart=on-failure", "Restart=sometimes"))
    v = subprocess.run([ANALYZE, "verify", str(bad)], check=False, capture_output=True, text=True, timeout=60)
    assert "crossnet-agent.service" in v.stderr and "sometimes" in v.stderr


def test_agent_unit_contents():
    f = fields(units.render(["agent"], units.UnitOptions())["crossnet-agent.service"])
    assert f["Type"] == "notify" and f["NotifyAccess"] == "main" and int(f["WatchdogSec"]) > 0
    assert f["Restart"] == "on-failure" and f["RestartPreventExitStatus"] == "2"
    assert f["ExecStart"] == "/usr/local/bin/crossnet --state-dir /var/lib/crossnet agent $CROSSNET_AGENT_ARGS"
    caps = set(f["CapabilityBoundingSet"].split())
    assert {"CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_NET_RAW"} <= caps
    assert not caps & {"CAP_SYS_MODULE", "CAP_SYS_BOOT", "CAP_SYS_RAWIO", "CAP_SETUID", "CAP_DAC_OVERRIDE"}
    for runtime in ("docker.service", "podman.service", "containerd.service"):
        assert runtime in f["Before"].split()
    assert "network-online.target" in f["After"] and "crossnet-launch.service" in f["Conflicts"]
    assert f["NoNewPrivileges"] == "yes" and "ProtectKernelTunables" not in f  # sysctls stay writable


def test_apply_unit_is_a_boot_oneshot_before_the_runtimes():
    o = units.UnitOptions(cluster_file="/etc/crossnet/prod.yaml")
    f = fields(units.render(["apply"], o)["crossnet-apply.service"])
    assert f["Type"] == "oneshot" and f["RemainAfterExit"] == "yes"
    assert f["ExecStart"] == "/usr/local/bin/crossnet --state-dir /var/lib/crossnet apply -f /etc/crossnet/prod.yaml"
    assert {"docker.service", "podman.service", "containerd.service", "crossnet-agent.service"} <= set(f["Before"].split())
    assert f["ConditionPathExists"] == "/etc/crossnet/prod.yaml" and f["WantedBy"] == "multi-user.target"


def test_launch_unit_runs_the_supervisor_in_the_foreground():
    f = fields(units.render(["launch"], units.UnitOptions())["crossnet-launch.service"])
    assert f["ExecStart"].endswith(" launch --foreground") and f["KillMode"] == "mixed"
    assert f["ConditionPathExists"] == "/var/lib/crossnet/mesh/launch.json"


@pytest.mark.parametrize("field,value", [("exe", "crossnet"), ("state_dir", "/var/lib/cross net"),
                                         ("cluster_file", "/etc/x;rm"), ("env_file", "/etc/%n")])
def test_unsafe_paths_are_refused(field, value):
    with pytest.raises(ConfigError):
        units.render(["agent"], units.UnitOptions(**{field: value}))


def test_install_dry_run_then_install_then_uninstall(tmp_path, exe):
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    state = tmp_path / "state"
    dry = run_cli("systemd", "install", "--dry-run", "--unit-dir", str(unit_dir), "--exec", exe, state_dir=state)
    assert dry.returncode == 0 and f"write {unit_dir}/crossnet-agent.service" in dry.stdout
    assert list(unit_dir.iterdir()) == []
    assert run_cli("systemd", "install", "--unit-dir", str(unit_dir), "--exec", exe, state_dir=state).returncode == 0
    assert [p.name for p in unit_dir.iterdir()] == ["crossnet-agent.service"]  # default: the agent only
    again = run_cli("systemd", "install", "--unit-dir", str(unit_dir), "--exec", exe, state_dir=state)
    assert "up to date" in again.stdout
    foreign = unit_dir / "crossnet-apply.service"
    foreign.write_text("[Service]\nExecStart=/bin/true\n")
    refused = run_cli("systemd", "install", "--apply", "--unit-dir", str(unit_dir), "--exec", exe, state_dir=state)
    assert refused.returncode == 2 and refused.stderr.startswith("crossnet: error: --unit-dir:")
    assert foreign.read_text() == "[Service]\nExecStart=/bin/true\n"
    gone = run_cli("systemd", "uninstall", "--unit-dir", str(unit_dir), state_dir=state)
    assert gone.returncode == 0, gone.stderr
    assert "not installed by crossnet, left alone" in gone.stdout
    assert [p.name for p in unit_dir.iterdir()] == ["crossnet-apply.service"]


def test_install_into_a_missing_directory_is_bad_input(tmp_path, exe):
    proc = run_cli("systemd", "install", "--unit-dir", str(tmp_path / "nope"), "--exec", exe, state_dir=tmp_path / "s")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--unit-dir" in proc.stderr


def test_cni_helper_socket_activates_the_helper(exe):
    text = units.render(["cni", "cni-service"], units.UnitOptions(exe=exe, state_dir="/var/lib/crossnet"))
    sock, svc = fields(text["crossnet-cni-helper.socket"]), fields(text["crossnet-cni-helper.service"])
    assert sock["ListenStream"] == "/var/lib/crossnet/cni.sock" and sock["SocketMode"] == "0600"
    assert sock["Service"] == "crossnet-cni-helper.service" and sock["WantedBy"] == "sockets.target"
    assert svc["ExecStart"] == f"{exe} --state-dir /var/lib/crossnet cni serve"
    assert "WantedBy" not in svc  # started by its socket only
    assert units.next_steps(list(text)) == "then: systemctl enable --now crossnet-cni-helper.socket"


def test_install_refusing_one_foreign_unit_writes_none_of_the_others(tmp_path, exe):
    """--cni is two units: the socket used to be written before the admin's service of the
    same name was found and refused, leaving a socket that activates the admin's service."""
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    foreign = unit_dir / "crossnet-cni-helper.service"
    foreign.write_text("[Service]\nExecStart=/bin/true\n")
    text = units.render(["agent", "cni", "cni-service"], units.UnitOptions(exe=exe, state_dir=str(tmp_path / "s")))
    with pytest.raises(ConfigError) as err:
        units.install(text, str(unit_dir), reload=False)
    assert str(err.value) == f"--unit-dir: {foreign} exists and was not installed by crossnet; remove it first"
    assert sorted(p.name for p in unit_dir.iterdir()) == ["crossnet-cni-helper.service"]
    assert foreign.read_text() == "[Service]\nExecStart=/bin/true\n"


def test_install_never_writes_through_a_link_at_its_temporary_name(tmp_path, exe):
    """A unit used to be written to the fixed name `.NAME.tmp` with a plain open: a symlink
    planted there (a --unit-dir others can write, or a left-over) made install write the
    unit's text, as root, into whatever file the link named."""
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    name = "crossnet-agent.service"
    (unit_dir / f".{name}.tmp").symlink_to(victim)
    for pid in (os.getpid(), 1):  # both temporaries this process could pick or sweep
        (unit_dir / f".{name}.{pid}.tmp").symlink_to(victim)
    text = units.render(["agent"], units.UnitOptions(exe=exe, state_dir=str(tmp_path / "s")))
    units.install(text, str(unit_dir), reload=False)
    assert victim.read_text() == "precious\n"
    assert (unit_dir / name).read_text() == text[name] and not (unit_dir / name).is_symlink()
    assert oct((unit_dir / name).stat().st_mode & 0o777) == "0o644"


def test_a_killed_installs_temporary_is_swept_by_the_next_install_and_by_uninstall(tmp_path, exe):
    """Temporaries are `.NAME.PID.tmp`: one whose writer is gone is a killed install's and
    is removed (a live writer's is left alone)."""
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    name = "crossnet-agent.service"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = unit_dir / f".{name}.{dead.pid}.tmp"
    live = unit_dir / f".{name}.1.tmp"  # pid 1 is alive
    for p in (killed, live):
        p.write_text("half a unit")
    text = units.render(["agent"], units.UnitOptions(exe=exe, state_dir=str(tmp_path / "s")))
    units.install(text, str(unit_dir), reload=False)
    assert not killed.exists() and live.exists()
    killed.write_text("half a unit")
    done = units.uninstall([name], str(unit_dir), systemd=False)
    assert f"remove {killed}" in done and f"remove {unit_dir / name}" in done
    assert sorted(p.name for p in unit_dir.iterdir()) == [live.name]
