"""systemd units of crossnet, as text generated here (nothing to lose from a wheel), and
their installation by ``crossnet systemd install|uninstall`` (docs/production.md).

- ``crossnet-agent.service``: ``crossnet agent`` (Type=notify: READY=1 after the first
  full sync, WATCHDOG=1 pings, crossnet.sdnotify); its options in
  ``/etc/crossnet/agent.env`` (``CROSSNET_ETCD=...``, ``CROSSNET_AGENT_ARGS=...``).
- ``crossnet-apply.service``: oneshot ``crossnet apply -f CLUSTER`` at boot, before the
  container runtimes start their containers.
- ``crossnet-launch.service``: the mesh supervisor, ``crossnet launch --foreground``
  (after a first ``crossnet launch`` wrote the mesh's state).

Capabilities: the agent programs links, routes, neighbours, nft and sysctls
(CAP_NET_ADMIN), enters container network namespaces (setns) and gives wireguard-go a
private mount namespace (CAP_SYS_ADMIN), reads another process's /proc/PID/ns/net
(CAP_SYS_PTRACE), sends raw ARP/probes (CAP_NET_RAW) and serves DNS on port 53
(CAP_NET_BIND_SERVICE). Nothing else is kept.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from crossnet.errors import ConfigError, CrossnetError
from crossnet.state import left_over, replace_file

SYSTEM_UNIT_DIR = "/etc/systemd/system"
MARKER = "# Installed by `crossnet systemd install`; `crossnet systemd uninstall` removes it."
RUNTIMES = "docker.service podman.service containerd.service crio.service"
UNITS = {"agent": "crossnet-agent.service", "apply": "crossnet-apply.service", "launch": "crossnet-launch.service",
         # the CNI plugin's warm helper, started by systemd on the first call (socket activation)
         "cni": "crossnet-cni-helper.socket", "cni-service": "crossnet-cni-helper.service"}
WATCHDOG_SEC = 60
CAPABILITIES = "CAP_NET_ADMIN CAP_NET_RAW CAP_SYS_ADMIN CAP_SYS_PTRACE CAP_NET_BIND_SERVICE"

# Sandboxing that leaves network administration intact: /proc/sys stays writable
# (sysctls: no ProtectKernelTunables), /etc/netns is written for containers' resolv.conf.
_HARDENING = f"""\
CapabilityBoundingSet={CAPABILITIES}
NoNewPrivileges=yes
ProtectSystem=full
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths=-/etc/netns -{{state_dir}} -/run
ProtectControlGroups=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET
RestrictRealtime=yes
LockPersonality=yes
SystemCallArchitectures=native
"""


@dataclass
class UnitOptions:
    exe: str = "/usr/local/bin/crossnet"
    state_dir: str = "/var/lib/crossnet"
    cluster_file: str = "/etc/crossnet/cluster.yaml"
    env_file: str = "/etc/crossnet/agent.env"

    def validate(self) -> UnitOptions:
        for label, value in (("--exec", self.exe), ("--state-dir", self.state_dir),
                             ("--cluster-file", self.cluster_file), ("--env-file", self.env_file)):
            if not value.startswith("/"):
                raise ConfigError(f"{label}: must be an absolute path, got {value!r}")
            if any(c.isspace() or c in "\"'\\%$;" or not c.isprintable() for c in value):
                raise ConfigError(f"{label}: {value!r} holds white space, quotes or %$\\; (not allowed in a unit file)")
        return self

    def command(self, *args: str) -> str:
        return " ".join([self.exe, "--state-dir", self.state_dir, *args])


def _unit(o: UnitOptions, description: str, unit: str, service: str) -> str:
    """One unit file: the marker, [Unit] (after the network is online), [Service] with the
    hardening, [Install] in multi-user.target."""
    return f"""{MARKER}
[Unit]
Description={description}
Wants=network-online.target
{unit}
[Service]
{service}{_HARDENING.format(state_dir=o.state_dir)}
[Install]
WantedBy=multi-user.target
"""


def agent_unit(o: UnitOptions) -> str:
    return _unit(o, "crossnet agent: keeps this host's container network programmed", f"""\
After=network-online.target crossnet-apply.service
Before={RUNTIMES}
Conflicts=crossnet-launch.service
""", f"""\
Type=notify
NotifyAccess=main
EnvironmentFile=-{o.env_file}
ExecStart={o.command("agent")} $CROSSNET_AGENT_ARGS
WatchdogSec={WATCHDOG_SEC}
Restart=on-failure
RestartSec=2
# exit 2: bad configuration, restarting does not help
RestartPreventExitStatus=2
TimeoutStartSec=120
TimeoutStopSec=30
""")


def apply_unit(o: UnitOptions) -> str:
    return _unit(o, "crossnet: program this host from the static cluster file at boot", f"""\
After=network-online.target
Before={RUNTIMES} crossnet-agent.service
ConditionPathExists={o.cluster_file}
""", f"""\
Type=oneshot
RemainAfterExit=yes
ExecStart={o.command("apply", "-f", o.cluster_file)}
""")


def launch_unit(o: UnitOptions) -> str:
    return _unit(o, "crossnet mesh: etcd member and agent of this host (crossnet launch)", f"""\
After=network-online.target
Before={RUNTIMES}
Conflicts=crossnet-agent.service
ConditionPathExists={o.state_dir}/mesh/launch.json
""", f"""\
Type=simple
ExecStart={o.command("launch", "--foreground")}
# SIGTERM to the supervisor, which stops etcd and the agent; what is left after the timeout is killed
KillMode=mixed
Restart=on-failure
RestartSec=2
RestartPreventExitStatus=2
TimeoutStopSec=45
""")


def cni_socket_unit(o: UnitOptions) -> str:
    return f"""{MARKER}
[Unit]
Description=crossnet-cni warm helper socket (CNI calls of this host's runtimes)
ConditionPathExists={o.state_dir}/applied.json

[Socket]
ListenStream={o.state_dir}/cni.sock
SocketMode=0600
RemoveOnStop=yes
Service=crossnet-cni-helper.service

[Install]
WantedBy=sockets.target
"""


def cni_service_unit(o: UnitOptions) -> str:
    # started by crossnet-cni-helper.socket only (no [Install]); exits after 5 idle
    # minutes or when crossnet's files change, and the socket starts it again
    return f"""{MARKER}
[Unit]
Description=crossnet-cni warm helper (serves CNI ADD/DEL/CHECK without an interpreter start per call)
Requires=crossnet-cni-helper.socket
After=crossnet-cni-helper.socket crossnet-apply.service

[Service]
Type=simple
ExecStart={o.command("cni", "serve")}
Restart=no
{_HARDENING.format(state_dir=o.state_dir)}"""


RENDER = {"agent": agent_unit, "apply": apply_unit, "launch": launch_unit,
          "cni": cni_socket_unit, "cni-service": cni_service_unit}


def render(which: list[str], opts: UnitOptions) -> dict[str, str]:
    """File name -> text of the chosen units."""
    opts.validate()
    return {UNITS[w]: RENDER[w](opts) for w in which}


def _is_ours(path: Path) -> bool:
    try:
        with open(path) as fh:
            return fh.readline().rstrip("\n") == MARKER
    except OSError:
        return False


def _systemctl(*args: str) -> None:
    proc = subprocess.run(["systemctl", *args], check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CrossnetError(f"systemctl {' '.join(args)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")


def install(units: dict[str, str], unit_dir: str, reload: bool, dry_run: bool = False) -> list[str]:
    """Write the units (a file of the same name not written by crossnet is refused, before
    any unit is written);
    `systemctl daemon-reload` when ``reload``. Returns what was (or would be) done."""
    d = Path(unit_dir)
    if not d.is_dir():
        raise ConfigError(f"--unit-dir: {unit_dir} is not a directory")
    for name in units:  # all checked before any is written: a refusal leaves nothing half-installed
        path = d / name
        if (path.exists() or path.is_symlink()) and not _is_ours(path):
            raise ConfigError(f"--unit-dir: {path} exists and was not installed by crossnet; remove it first")
    done = []
    for name, text in units.items():
        path = d / name
        if path.exists() and path.read_text() == text:
            done.append(f"{path}: up to date")
            continue
        done.append(f"write {path}")
        if not dry_run:
            replace_file(path, text, 0o644)  # whole or not at all; a killed run's temporary swept
    if reload:
        done.append("systemctl daemon-reload")
        if not dry_run:
            _systemctl("daemon-reload")
    return done


def uninstall(names: list[str], unit_dir: str, systemd: bool, dry_run: bool = False) -> list[str]:
    """Stop and disable (``systemd``), then remove the units crossnet installed; others are left alone."""
    d = Path(unit_dir)
    done = []
    ours = [n for n in names if _is_ours(d / n)]
    for n in names:
        if (d / n).exists() and n not in ours:
            done.append(f"{d / n}: not installed by crossnet, left alone")
    if systemd and ours:
        done.append(f"systemctl disable --now {' '.join(ours)}")
        if not dry_run:
            _systemctl("disable", "--now", *ours)
    for n in ours:
        done.append(f"remove {d / n}")
        if not dry_run:
            (d / n).unlink()
    for tmp in left_over(d, "|".join(map(re.escape, names))):  # a killed install's temporaries
        done.append(f"remove {tmp}")
        if not dry_run:
            tmp.unlink(missing_ok=True)
    if systemd and ours:
        done.append("systemctl daemon-reload")
        if not dry_run:
            _systemctl("daemon-reload")
    return done


def next_steps(names: list[str]) -> str:
    # a socket-activated service is started by its socket, not enabled itself
    names = [n for n in names if not (n.endswith(".service") and n[:-8] + ".socket" in names)]
    return "then: systemctl enable --now " + " ".join(shlex.quote(n) for n in names)
