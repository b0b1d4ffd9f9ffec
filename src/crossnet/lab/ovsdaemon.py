"""A private Open vSwitch (ovsdb-server + ovs-vswitchd) inside a network namespace,
with everything in one directory: what each simulated lab host runs.

OVS_RUNDIR, OVS_DBDIR, OVS_LOGDIR and OVS_SYSCONFDIR all point at that directory,
for the daemons and for every ovs-* command (use ``instance.env()``): per-daemon
flags are not enough, each bridge's ``<br>.mgmt``/``<br>.snoop`` sockets go to the
run dir and would collide between instances.

    inst = OvsInstance("/run/crossnet/lab/x/hosts/h1/ovs", netns="x-h1")
    inst.start()          # idempotent; returns when both daemons answer
    inst.stop()           # `exit` over unixctl, then WAIT for the pids to be gone

Stopping waits for the processes to exit (``ovs-appctl exit`` returns earlier):
restarting too early fails with "already running as pid N", and deleting the
namespace under a live daemon leaves it behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from crossnet.errors import CrossnetError
from crossnet.lab.procs import wait_gone
from crossnet.ovs import db as ovsdb

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class OvsDaemonError(CrossnetError):
    pass


@dataclass
class OvsInstance:
    directory: str
    netns: str | None = None  # name (/run/netns/NAME) or path; None: this namespace

    # ---- paths and environment ------------------------------------------------------
    @property
    def dir(self) -> Path:
        return Path(self.directory)

    @property
    def db_path(self) -> Path:
        return self.dir / "conf.db"

    @property
    def db_socket(self) -> str:
        return str(self.dir / "db.sock")

    def pidfile(self, daemon: str) -> Path:
        return self.dir / f"{daemon}.pid"

    def log(self, daemon: str) -> Path:
        return self.dir / f"{daemon}.log"

    def env(self) -> dict[str, str]:
        """OVS_RUNDIR/OVS_DBDIR/OVS_LOGDIR/OVS_SYSCONFDIR: give these to every ovs-* and
        crossnet command that should talk to this instance."""
        return {var: self.directory for var in ovsdb.OVS_ENV_VARS}

    def pid(self, daemon: str) -> int | None:
        return ovsdb.pid_from_file(str(self.pidfile(daemon)), daemon)

    def running(self) -> bool:
        return self.pid("ovsdb-server") is not None and self.pid("ovs-vswitchd") is not None

    def _argv(self, argv: list[str]) -> list[str]:
        if self.netns is None:
            return argv
        return ["ip", "netns", "exec", self.netns, *argv]

    def _run(self, argv: list[str], timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                self._argv(argv), env={**os.environ, **self.env()}, text=True, capture_output=True,
                timeout=timeout, stdin=subprocess.DEVNULL, cwd=self.directory, check=False,
            )
        except FileNotFoundError as exc:
            raise OvsDaemonError(f"{argv[0]} not found: install openvswitch-switch ({exc})") from None
        except subprocess.TimeoutExpired:
            raise OvsDaemonError(f"{argv[0]} did not start within {timeout:.0f}s (see {self.directory})") from None

    def _where(self) -> str:
        return f"{self.netns}: " if self.netns else ""

    # ---- start ----------------------------------------------------------------------
    def start(self) -> None:
        """Start ovsdb-server and ovs-vswitchd unless running; return when ready."""
        self.start_ovsdb()
        self.start_vswitchd()

    def start_ovsdb(self) -> None:
        if self.pid("ovsdb-server") is not None:
            return
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        if not self.db_path.exists():
            proc = self._run(["ovsdb-tool", "create", str(self.db_path), SCHEMA])
            if proc.returncode != 0:
                raise OvsDaemonError(f"{self._where()}ovsdb-tool create failed: {proc.stderr.strip()}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.db_socket)  # stale socket of a killed server
        proc = self._run([
            "ovsdb-server", str(self.db_path),
            f"--remote=punix:{self.db_socket}",
            f"--pidfile={self.pidfile('ovsdb-server')}",
            f"--log-file={self.log('ovsdb-server')}",
            "--detach", "--no-chdir",
        ])
        if proc.returncode != 0:
            raise OvsDaemonError(f"{self._where()}ovsdb-server failed to start: {_tail(proc)}")
        # --detach returns once the server listens; initialise the root row like `ovs-vsctl init`
        ovsdb.init_db(self.db_socket)

    def start_vswitchd(self) -> None:
        if self.pid("ovs-vswitchd") is not None:
            return
        if self.pid("ovsdb-server") is None:
            raise OvsDaemonError(f"{self._where()}ovsdb-server is not running in {self.directory}")
        proc = self._run([
            "ovs-vswitchd", f"unix:{self.db_socket}",
            f"--pidfile={self.pidfile('ovs-vswitchd')}",
            f"--log-file={self.log('ovs-vswitchd')}",
            "--detach", "--no-chdir",
        ])
        if proc.returncode != 0:
            raise OvsDaemonError(f"{self._where()}ovs-vswitchd failed to start: {_tail(proc)}")
        # --detach returns after the first configuration pass; make sure it answers
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            ok = self._run(["ovs-appctl", "-t", "ovs-vswitchd", "version"], timeout=5).returncode == 0
            if ok or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not ok:
            raise OvsDaemonError(f"{self._where()}ovs-vswitchd does not answer (see {self.log('ovs-vswitchd')})")

    # ---- stop -----------------------------------------------------------------------
    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop both daemons (switch first) and wait until their processes are gone."""
        self.stop_vswitchd(timeout=timeout)
        self.stop_ovsdb(timeout=timeout)

    def stop_vswitchd(self, timeout: float = STOP_TIMEOUT, cleanup: bool = False) -> None:
        """`cleanup`: also delete the datapath and its internal (tap) ports, as
        `ovs-appctl exit --cleanup` does; without it they outlive the daemon."""
        self._stop("ovs-vswitchd", ["exit", "--cleanup"] if cleanup else ["exit"], timeout)

    def stop_ovsdb(self, timeout: float = STOP_TIMEOUT) -> None:
        self._stop("ovsdb-server", ["exit"], timeout)

    def _stop(self, daemon: str, command: list[str], timeout: float) -> None:
        pid = self.pid(daemon)
        if pid is None:
            return
        self._run(["ovs-appctl", "-t", daemon, *command], timeout=timeout)
        if wait_gone(pid, timeout):
            return
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if wait_gone(pid, wait):
                return
        raise OvsDaemonError(f"{self._where()}{daemon} (pid {pid}) did not exit")


def _tail(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else f"exit code {proc.returncode}"


__all__ = ["OvsDaemonError", "OvsInstance", "wait_gone"]
