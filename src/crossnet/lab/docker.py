"""A real Docker engine on simulated lab hosts (``crossnet lab up --runtime docker``).

Every simulated host gets its own ``dockerd`` (Debian's docker.io), started as::

    nsenter --mount=D/mntns --net=/run/netns/<host> dockerd --config-file D/daemon.json --data-root D/data
        --exec-root D/exec --pidfile D/docker.pid -H unix://D/docker.sock --storage-driver vfs
        --iptables=false

- ``nsenter --net`` (not ``ip netns exec``, which remounts /sys and hides the cgroup
  mounts dockerd needs);
- its own data/exec root, pidfile and API socket, and its own containerd (started by
  dockerd);
- its own mount namespace (made once per host by ``unshare --mount=D/mntns``, kept
  across dockerd restarts: a restarted dockerd needs the sandbox netns mounts of its
  live-restored containers) in which ``/run/docker/plugins`` (legacy plugin discovery, a
  fixed path in dockerd) is the host's ``D/plugins`` directory: every simulated host
  finds *its own* ``crossnet.sock`` (``crossnet docker-plugin``), and ``/run/containerd``
  (where the containerd shims put their sockets) is ``D/containerd-run``; the mounts
  dockerd makes (netns files, shm) vanish with that namespace;
- ``D/daemon.json`` is written by ``crossnet docker-config --write`` in the host (the
  tutorial's bridge method: ``bridge``, ``fixed-cidr``, ``mtu``, ``default-gateway``);
- ``--iptables=false``: Docker's own rules would set the FORWARD policy to DROP inside
  the host namespace, which routed backends (vxlan, host-gw) need open.

The image is the busybox rootfs tarball of crossnet.lab.podman (built once, cached),
``docker import``-ed once per dockerd. Containers are started with plain ``docker run``.
``D/docker ARGS`` runs this host's docker client by hand.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossnet.check import Endpoint
from crossnet.errors import CrossnetError
from crossnet.lab import netns as ns
from crossnet.lab import podman
from crossnet.lab.services import HostService, register_service

IMAGE = "local/crossnet-busybox:1"
DOCKER_CLI = "/usr/bin/docker"  # the client shipped with docker.io (same API version as its dockerd)
DOCKERD = "dockerd"
BACKENDS = ("bridge", "host-gw", "vxlan")  # what `crossnet docker-config` supports
NETWORK = "crossnet"  # --runtime docker-plugin: the Docker network of crossnet's driver
# --runtime docker-plugin: containers survive a dockerd restart (the driver's e2e restarts it)
PLUGIN_DAEMON_JSON = {"live-restore": True}
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
DOCKER_TIMEOUT = 120.0


def docker_cli() -> str:
    return DOCKER_CLI if os.path.exists(DOCKER_CLI) else (shutil.which("docker") or "docker")


@dataclass
class HostDocker(podman.RuntimeHost):
    """dockerd of one simulated host."""

    plugin_exec: tuple[str, ...] = ()  # argv prefix of the plugin (lab.netns.host_exec; default ip netns exec)

    @property
    def socket(self) -> Path:
        return self.base / "docker.sock"

    @property
    def pidfile(self) -> Path:
        return self.base / "docker.pid"

    @property
    def config(self) -> Path:
        return self.base / "daemon.json"

    @property
    def plugin_dir(self) -> Path:
        return self.base / "plugins"

    @property
    def log_path(self) -> Path:
        return self.base / "dockerd.log"

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}

    def argv(self, *args: str) -> list[str]:
        return [docker_cli(), "-H", f"unix://{self.socket}", *args]

    def run(self, *args: str, timeout: float = DOCKER_TIMEOUT, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess:
        try:
            proc = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout, input=input,
                                  stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise CrossnetError(f"{self.netns}: docker {' '.join(args[:2])} timed out after {timeout:.0f}s") from None
        if check and proc.returncode != 0:
            err = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            raise CrossnetError(f"{self.netns}: docker {' '.join(args[:2])} failed: {err[-1] if err else proc.returncode}")
        return proc

    # ---- daemon -------------------------------------------------------------------------
    def write_config(self, extra: dict[str, Any] | None = None) -> None:
        """daemon.json by `crossnet docker-config --write` (the host must be applied),
        plus lab-only keys (`extra`, e.g. live-restore)."""
        self.base.mkdir(parents=True, exist_ok=True, mode=0o700)
        proc = subprocess.run(
            [sys.executable, "-m", "crossnet", "--state-dir", self.state_dir, "docker-config", "--write",
             str(self.config)], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            err = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            raise CrossnetError(f"{self.netns}: crossnet docker-config --write failed: {err[-1] if err else proc.returncode}")
        if extra:
            cfg = json.loads(self.config.read_text())
            cfg.update(extra)
            self.config.write_text(json.dumps(cfg, indent=2) + "\n")

    def daemon_argv(self) -> list[str]:
        argv = [
            "nsenter", f"--mount={self.mount_ns}", f"--net={self.netns_path}", DOCKERD,
            "--data-root", str(self.base / "data"),
            "--exec-root", str(self.base / "exec"),
            "--pidfile", str(self.pidfile),
            "-H", f"unix://{self.socket}",
            "--storage-driver", "vfs",
            "--iptables=false",
        ]
        if self.config.exists():
            argv[4:4] = ["--config-file", str(self.config)]
        return argv

    @property
    def mount_ns(self) -> Path:
        return self.base / "mntns"

    def ensure_mount_ns(self) -> None:
        """The host's own mount namespace, kept (bind-mounted at D/mntns) across dockerd
        restarts: a restarted dockerd must see the netns bind mounts (sandbox keys) its
        predecessor made there, or it tears down the endpoints of live-restored
        containers. In it, /run/docker/plugins = D/plugins and /run/containerd =
        D/containerd-run."""
        if _is_mount_point(self.mount_ns):
            return
        self.mount_ns.touch()
        script = ('mkdir -p /run/docker/plugins /run/containerd && mount --bind "$0/plugins" /run/docker/plugins'
                  ' && mount --bind "$0/containerd-run" /run/containerd')
        proc = subprocess.run(["unshare", f"--mount={self.mount_ns}", "--propagation", "private", "--",
                               "sh", "-c", script, str(self.base)], capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise CrossnetError(f"{self.netns}: cannot make dockerd's mount namespace: "
                                f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")

    def pid(self) -> int | None:
        return _read_pid(self.pidfile)

    def ping(self) -> bool:
        from crossnet.unixhttp import UnixHTTPConnection

        conn = UnixHTTPConnection(str(self.socket), timeout=5.0)
        try:
            conn.request("GET", "/_ping", headers={"Host": "docker"})
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def start_daemon(self, timeout: float = START_TIMEOUT) -> int:
        """Start this host's dockerd (if not running) and wait until its API answers."""
        if shutil.which(DOCKERD) is None:
            raise CrossnetError("dockerd not found: install Docker (apt-get install docker.io; scripts/install does)")
        pid = self.pid()
        if pid is not None and self.ping():
            return pid
        for d in ("data", "exec", "plugins", "containerd-run"):
            (self.base / d).mkdir(parents=True, exist_ok=True, mode=0o700)
        self.ensure_mount_ns()
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(self.daemon_argv(), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise CrossnetError(f"{self.netns}: dockerd exited ({proc.returncode}): {self._last_log_line()}")
            if self.socket.exists() and self.ping():
                self._write_client_script()
                return proc.pid
            time.sleep(0.1)
        with contextlib.suppress(OSError):
            os.kill(proc.pid, signal.SIGKILL)
        raise CrossnetError(f"{self.netns}: dockerd not ready after {timeout:.0f}s: {self._last_log_line()}")

    def stop_daemon(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM dockerd and wait until it (and the containerd it started) is gone."""
        pid = self.pid()
        if pid is None:
            return
        _signal_and_wait(pid, signal.SIGTERM, timeout) or _signal_and_wait(pid, signal.SIGKILL, 5.0)

    def restart_daemon(self) -> int:
        self.stop_daemon()
        return self.start_daemon()

    def _last_log_line(self) -> str:
        return _last_line(self.log_path)

    def _write_client_script(self) -> None:
        script = self.base / "docker"
        script.write_text(
            "#!/bin/sh\n# docker client of simulated host " + self.netns + " (written by crossnet lab)\n"
            f"exec {shlex.join(self.argv())} \"$@\"\n"
        )
        script.chmod(0o755)

    # ---- crossnet docker-plugin ------------------------------------------------------------
    @property
    def plugin_socket(self) -> Path:
        return self.plugin_dir / "crossnet.sock"

    @property
    def plugin_pidfile(self) -> Path:
        return self.base / "plugin.pid"

    def start_plugin(self, timeout: float = 30.0) -> int:
        """`crossnet docker-plugin` in the host namespace, serving D/plugins/crossnet.sock
        (= /run/docker/plugins/crossnet.sock for this host's dockerd)."""
        pid = _read_pid(self.plugin_pidfile)
        if pid is not None and self.plugin_socket.exists():
            return pid
        self.plugin_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        proc = ns.spawn(self.netns, [sys.executable, "-m", "crossnet", "--state-dir", self.state_dir, "docker-plugin",
                                     "--socket", str(self.plugin_socket), "--docker-host", f"unix://{self.socket}"],
                        self.base / "plugin.log", prefix=self.plugin_exec or None)
        self.plugin_pidfile.write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise CrossnetError(f"{self.netns}: crossnet docker-plugin exited ({proc.returncode}): "
                                    f"{_last_line(self.base / 'plugin.log')}")
            if self.plugin_socket.exists():
                return proc.pid
            time.sleep(0.05)
        raise CrossnetError(f"{self.netns}: crossnet docker-plugin did not create {self.plugin_socket} in {timeout:.0f}s")

    def stop_plugin(self) -> None:
        pid = _read_pid(self.plugin_pidfile)
        if pid is not None:
            _signal_and_wait(pid, signal.SIGTERM, 10.0) or _signal_and_wait(pid, signal.SIGKILL, 5.0)
        with contextlib.suppress(FileNotFoundError):
            self.plugin_pidfile.unlink()

    # ---- image / containers -----------------------------------------------------------
    def ensure_image(self) -> None:
        if self.run("image", "inspect", IMAGE, check=False).returncode == 0:
            return
        self.run("import", "--change", 'CMD ["/bin/sh"]', str(podman.image_tarball()), IMAGE, timeout=300)

    def wait_network(self, timeout: float = 60.0) -> None:
        """Wait for the `crossnet` network `crossnet docker-plugin` creates itself once
        dockerd answers (--create-network: this host's subnet and gateway)."""
        deadline = time.monotonic() + timeout
        while self.run("network", "inspect", NETWORK, check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise CrossnetError(f"{self.netns}: crossnet docker-plugin did not create the Docker network "
                                    f"{NETWORK!r} in {timeout:.0f}s: {_last_line(self.base / 'plugin.log')}")
            time.sleep(0.1)

    def start(self, name: str, *, network: str | None = None, command: Sequence[str] = ("sleep", "1000000"),
              extra: Sequence[str] = ()) -> str:
        args = ["run", "-d", "--name", name, "--hostname", name]
        if network:
            args += ["--network", network]
        proc = self.run(*args, *extra, IMAGE, *command)
        return proc.stdout.strip().splitlines()[-1]

    def teardown(self) -> None:
        """Remove every container, stop dockerd, unmount and delete the per-host
        directory. Idempotent."""
        if self.pid() is not None:
            ids = self.container_ids()
            if ids:
                with contextlib.suppress(CrossnetError):
                    self.run("rm", "-f", *ids, check=False, timeout=180)
            if self.plugin_pidfile.exists():
                with contextlib.suppress(CrossnetError):
                    self.run("network", "rm", NETWORK, check=False, timeout=60)
            self.stop_daemon()
        self.stop_plugin()
        ns.unmount_under(self.base)
        shutil.rmtree(self.base, ignore_errors=True)


def _last_line(path: Path) -> str:
    """The last error line of a log (else its last line)."""
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errs = [ln for ln in lines if "level=error" in ln or "level=fatal" in ln or "failed" in ln or "error" in ln]
    return (errs or lines or ["no log"])[-1][-300:]


def _is_mount_point(path: Path) -> bool:
    want = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as fh:
            return any(line.split()[4] == want for line in fh)
    except OSError:
        return False


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 1 and _alive(pid) else None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _signal_and_wait(pid: int, sig: int, timeout: float) -> bool:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return not _alive(pid)


# ---- lab integration ------------------------------------------------------------------
def host_docker(plan: Any, host: Any) -> HostDocker:
    return HostDocker(host.netns, Path(plan.lab_dir) / "hosts" / host.name / "docker", host.state_dir,
                      tuple(ns.host_exec(host.netns, plan)))


def _start_service(plan: Any, host: Any) -> None:
    """Before `crossnet apply`: only the directory (dockerd needs the applied state
    for its daemon.json; it starts with the containers)."""
    host_docker(plan, host).base.mkdir(parents=True, exist_ok=True, mode=0o700)


def _stop_service(plan: Any, host: Any) -> None:
    host_docker(plan, host).teardown()


def start_containers(plan: Any, host: Any) -> dict[str, str]:
    """--runtime docker: daemon.json by `crossnet docker-config --write` (Docker's default
    bridge network = crossnet's bridge). --runtime docker-plugin: `crossnet docker-plugin`,
    which creates the network `crossnet` itself once dockerd (live-restore) answers. Then dockerd, the image, and the host's lab containers with plain
    `docker run`; returns {name: container id}."""
    d = host_docker(plan, host)
    plugin = podman.runtime_of(plan) == "docker-plugin"
    if plugin:
        d.base.mkdir(parents=True, exist_ok=True, mode=0o700)
        d.config.write_text(json.dumps(PLUGIN_DAEMON_JSON, indent=2) + "\n")
        d.start_plugin()
    else:
        d.write_config()
    d.start_daemon()
    d.ensure_image()
    if plugin:
        d.wait_network()
    network = NETWORK if plugin else None
    return {name: d.start(name, network=network, command=("sh", "-c", podman.SERVE)) for name in host.containers}


def endpoints(plan: Any) -> list[Endpoint]:
    """Every lab container as a ping endpoint: its network namespace (/proc/PID/ns/net
    of the container's process) and the address Docker gave it."""
    eps = []
    for h in plan.hosts:
        d = host_docker(plan, h)
        for name in h.containers:
            info = d.inspect(name)
            pid = (info.get("State") or {}).get("Pid") or 0
            addrs = [str(n.get("IPAddress")) for n in ((info.get("NetworkSettings") or {}).get("Networks") or {}).values()
                     if n.get("IPAddress")]
            if not pid or not addrs:
                raise CrossnetError(f"{h.name}: docker container {name} is not running or has no address")
            eps.append(Endpoint(name, f"/proc/{pid}/ns/net", addrs[0]))
    return eps


def http_check(plan: Any, eps: Sequence[Endpoint], timeout: float = 5.0) -> list[dict[str, Any]]:
    """From the first container of every host, `docker exec … wget` the page served by
    the first container of every other host (busybox httpd)."""
    by_name = {e.name: e for e in eps}
    firsts = [(h, h.containers[0], by_name[h.containers[0]].address) for h in plan.hosts
              if h.containers and h.containers[0] in by_name]
    return podman.http_matrix(firsts, lambda host, name, *cmd, timeout: host_docker(plan, host).exec(
        name, *cmd, timeout=timeout), timeout=timeout)


SERVICE = register_service(HostService("docker", _start_service, _stop_service,
                                       enabled=lambda plan: podman.runtime_of(plan) in ("docker", "docker-plugin")))
