"""Run a single-member etcd server (Debian `etcd-server`) for the lab and the tests.

It listens on the given addresses (inside a lab namespace when `netns` is set, or on
127.0.0.1) and, always, on a unix socket in its run directory, which the root
namespace (tests, `crossnet lab`) can use whatever namespace etcd runs in:
``unix://<run_dir>/localhost:<port>``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, TypeVar

from crossnet.errors import CrossnetError
from crossnet.store.etcdclient import EtcdClient, EtcdError

ETCD_BINARY = "etcd"
T = TypeVar("T")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def etcd_available() -> bool:
    return shutil.which(ETCD_BINARY) is not None


def retry_port_races(start: Callable[[int], T | None], attempts: int = 3, what: str = "etcd") -> T:
    """``start(attempt)`` (1, 2, …) on ports free_port() finds, again while it returns None:
    None means etcd exited while starting, most likely because another process took a
    port between free_port() and etcd binding it (tests run in parallel). Anything else
    ``start`` raises (a timeout, a bad flag) ends it at once. The one retry of every local
    etcd of the tests: EtcdServer.on_free_ports, the TLS and mesh fixtures."""
    for attempt in range(1, attempts + 1):
        got = start(attempt)
        if got is not None:
            return got
    raise CrossnetError(f"{what} exited while starting, {attempts} times (ports taken by other processes?)")


class EtcdServer:
    def __init__(self, run_dir: str | os.PathLike[str], listen: list[str] | None = None, port: int = 2379,
                 peer_port: int = 2380, netns: str | None = None, name: str = "crossnet"):
        self.run_dir = Path(run_dir)
        self.listen = listen or ["127.0.0.1"]
        self.port = port
        self.peer_port = peer_port
        self.netns = netns
        self.name = name
        self.proc: subprocess.Popen | None = None

    @classmethod
    def on_free_ports(cls, run_dir: str | os.PathLike[str], name: str = "crossnet", attempts: int = 3,
                      wait: float = 20.0) -> EtcdServer:
        """A local etcd (tests) started on 127.0.0.1 ports free right now, and started again
        on new ports (in ``run_dir``/try<N>) when it exits while starting: a port that
        free_port() found can be taken by another process (tests run in parallel) before
        etcd binds it. A start that times out is not tried again."""
        def start(attempt: int) -> EtcdServer | None:
            srv = cls(Path(run_dir) / f"try{attempt}", port=free_port(), peer_port=free_port(), name=name)
            try:
                return srv.start(wait)
            except CrossnetError:
                exited = srv.proc is not None and srv.proc.poll() is not None
                srv.stop()
                if not exited:
                    raise
                return None

        return retry_port_races(start, attempts, what=f"etcd {name} (logs: {run_dir}/try*/etcd.log)")

    # ---- addresses
    @property
    def client_urls(self) -> list[str]:
        return [f"http://{a}:{self.port}" for a in self.listen]

    @property
    def url(self) -> str:
        """Comma-separated client URLs (what agents get as --etcd)."""
        return ",".join(self.client_urls)

    @property
    def socket_path(self) -> Path:
        return self.run_dir / f"localhost:{self.port}"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "etcd.log"

    @property
    def pid_path(self) -> Path:
        return self.run_dir / "etcd.pid"

    def client(self, timeout: float = 5.0) -> EtcdClient:
        return EtcdClient(self.unix_url, timeout=timeout)

    # ---- life cycle
    def argv(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [
            ETCD_BINARY,
            "--name", self.name,
            "--data-dir", str(self.run_dir / "data"),
            "--listen-client-urls", ",".join([*self.client_urls, f"unix://localhost:{self.port}"]),
            "--advertise-client-urls", self.client_urls[0],
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            "--initial-cluster-state", "new",
            "--snapshot-count", "5000",
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return argv

    def start(self, wait: float = 20.0) -> EtcdServer:
        if not etcd_available():
            raise CrossnetError("etcd is not installed (Debian: apt-get install etcd-server)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), cwd=self.run_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_path.write_text(f"{self.proc.pid}\n")
        if wait:
            self.wait_ready(wait)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        client = self.client(timeout=1.0)
        last = "not started"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise CrossnetError(f"etcd exited with code {self.proc.returncode}: {' | '.join(tail)[-400:]}")
            try:
                client.range("/")
                return
            except EtcdError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise CrossnetError(f"etcd did not become ready within {timeout:.0f}s ({last}); see {self.log_path}")

    @property
    def pid(self) -> int | None:
        if self.proc is not None:
            return self.proc.pid
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        pid = self.pid
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self, timeout: float = 10.0) -> None:
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._alive(pid):
            time.sleep(0.05)
        if self._alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            end = time.monotonic() + 5
            while time.monotonic() < end and self._alive(pid):
                time.sleep(0.05)
        self.proc = None
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()

    def _alive(self, pid: int) -> bool:
        if self.proc is not None and self.proc.pid == pid:
            return self.proc.poll() is None
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except (OSError, IndexError):
            return False
