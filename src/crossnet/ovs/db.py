"""OVSDB access through ovsdbapp (transactions, no ovs-vsctl), plus the two OpenFlow /
unixctl helpers OVSDB cannot replace (`ovs-ofctl` for flows, `ovs-appctl` for the
tunnel neighbour cache).

Which Open vSwitch: the one whose run directory is ``$OVS_RUNDIR`` (the lab sets it,
with OVS_DBDIR/OVS_LOGDIR/OVS_SYSCONFDIR, for every crossnet command of a simulated
host), else the system's ``/var/run/openvswitch``. Its ``db.sock`` is the OVSDB
socket, ``ovs-vswitchd.pid`` tells whether the switch daemon runs. ``ovs-ofctl`` and
``ovs-appctl`` find their sockets through the same environment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

from crossnet.errors import ApplyError

SYSTEM_RUNDIR = "/var/run/openvswitch"
OVS_ENV_VARS = ("OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR")
START_HINT = (
    "start it with `/usr/share/openvswitch/scripts/ovs-ctl start` "
    "or `systemctl start openvswitch-switch`"
)
DEFAULT_TIMEOUT = 15.0
OFCTL_TIMEOUT = 30.0

# ovsdbapp/ovs log connection retries and failed transactions at WARNING/ERROR on the
# root handler; crossnet reports failures itself, as one-line errors.
for _name in ("ovsdbapp", "ovsdbapp.backend.ovs_idl.transaction", "ovs", "reconnect", "jsonrpc", "stream"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)


class OvsNotRunning(ApplyError):
    """No reachable ovsdb-server / ovs-vswitchd."""


def rundir() -> str:
    return os.environ.get("OVS_RUNDIR") or SYSTEM_RUNDIR


def db_socket() -> str:
    return os.path.join(rundir(), "db.sock")


def pid_from_file(path: str, comm: str | None = None) -> int | None:
    """The pid in an OVS pidfile if that process is alive (and, with `comm`, is that program)."""
    try:
        with open(path) as fh:
            pid = int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    name = stat[stat.find("(") + 1 : stat.rfind(")")]
    state = stat.rsplit(")", 1)[1].split()[0]
    if state in ("Z", "X"):
        return None
    if comm is not None and not comm.startswith(name) and not name.startswith(comm[:15]):
        return None
    return pid


def vswitchd_pid() -> int | None:
    return pid_from_file(os.path.join(rundir(), "ovs-vswitchd.pid"), "ovs-vswitchd")


def _where() -> str:
    rd = rundir()
    return f"OVS_RUNDIR={rd}" if os.environ.get("OVS_RUNDIR") else rd


def require_running() -> None:
    """Raise OvsNotRunning (saying how to start it) unless both daemons are up."""
    sock = db_socket()
    if not os.path.exists(sock):
        raise OvsNotRunning(f"Open vSwitch is not running (no OVSDB socket {sock}); {START_HINT}")
    if vswitchd_pid() is None:
        raise OvsNotRunning(f"Open vSwitch: ovs-vswitchd is not running (no live pid in {_where()}); {START_HINT}")


_CLASS_LOCK = threading.Lock()


class OvsDb:
    """One OVSDB connection (ovsdbapp `OvsdbIdl` on its own Connection thread).

    ovsdbapp keeps the connection in a class attribute, so every OvsDb gets a
    private subclass: several databases (lab hosts) can be open in one process."""

    def __init__(self, socket: str | None = None, timeout: float = DEFAULT_TIMEOUT, check_vswitchd: bool = True):
        from crossnet.optdeps import needed

        with needed("ovsdbapp"):
            from ovsdbapp.backend.ovs_idl import connection
            from ovsdbapp.schema.open_vswitch import impl_idl

        self.socket = socket or db_socket()
        self.timeout = timeout
        if socket is None and check_vswitchd:
            require_running()
        elif not os.path.exists(self.socket):
            raise OvsNotRunning(f"Open vSwitch is not running (no OVSDB socket {self.socket}); {START_HINT}")
        remote = f"unix:{self.socket}"
        try:
            idl = connection.OvsdbIdl.from_server(remote, "Open_vSwitch")
            self._conn = connection.Connection(idl, timeout=timeout)
            with _CLASS_LOCK:
                cls = type("CrossnetOvsdbIdl", (impl_idl.OvsdbIdl,), {"_ovsdb_connection": None})
            self.api = cls(self._conn)
        except Exception as exc:  # noqa: BLE001 - ovs raises bare Exception on connect failures
            raise OvsNotRunning(f"cannot connect to OVSDB at {remote}: {exc}; {START_HINT}") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.stop(timeout=2)

    def __enter__(self) -> OvsDb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transactions --------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """All commands added to the yielded txn commit atomically at the end; then
        wait (bounded) until ovs-vswitchd has applied the new configuration."""
        from ovsdbapp import exceptions as ovs_exc

        try:
            with self.api.transaction(check_error=True) as txn:
                yield txn
        except ovs_exc.TimeoutException as exc:
            raise ApplyError(f"OVSDB transaction timed out after {self.timeout:.0f}s (is ovs-vswitchd running?): {exc}") from None
        except RuntimeError as exc:
            raise ApplyError(f"OVSDB transaction failed: {exc}") from None

    # ---- reads (from the IDL's replica, kept current by the connection thread) ------
    def _rows(self, table: str) -> list[Any]:
        return list(self.api.tables[table].rows.values())

    def _by_name(self, table: str, name: str) -> Any | None:
        for row in self._rows(table):
            if row.name == name:
                return row
        return None

    def root(self) -> Any:
        rows = self._rows("Open_vSwitch")
        if not rows:
            raise ApplyError("OVSDB has no Open_vSwitch row (database not initialised: `ovs-vsctl --no-wait init`)")
        return rows[0]

    def bridge(self, name: str) -> Any | None:
        return self._by_name("Bridge", name)

    def port(self, name: str) -> Any | None:
        return self._by_name("Port", name)

    def interface(self, name: str) -> Any | None:
        return self._by_name("Interface", name)

    def bridges(self) -> list[str]:
        return sorted(r.name for r in self._rows("Bridge"))

    def bridge_of_port(self, port: str) -> str | None:
        for br in self._rows("Bridge"):
            if any(p.name == port for p in br.ports):
                return br.name
        return None

    def ports_of(self, bridge: str) -> list[str]:
        br = self.bridge(bridge)
        return sorted(p.name for p in br.ports) if br is not None else []

    def datapath_types(self) -> list[str]:
        return list(self.root().datapath_types)


_SHARED: dict[str, OvsDb] = {}
_SHARED_LOCK = threading.Lock()


def shared() -> OvsDb:
    """One connection per process and OVSDB socket (an IDL replica kept current by its
    thread), so long-running callers (the agent) do not open one per apply. Checks
    every time that ovsdb-server and ovs-vswitchd run."""
    require_running()
    sock = db_socket()
    with _SHARED_LOCK:
        handle = _SHARED.get(sock)
        thread = getattr(getattr(handle, "_conn", None), "thread", None)
        if handle is None or thread is None or not thread.is_alive():
            handle = OvsDb(sock)
            _SHARED[sock] = handle
        return handle


def one(value: Any) -> Any:
    """An optional OVSDB column (list of 0 or 1 values) as a value or None."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def init_db(socket: str, timeout: float = DEFAULT_TIMEOUT) -> None:
    """What `ovs-vsctl --no-wait init` does: make sure the Open_vSwitch root row exists."""
    db = OvsDb(socket, timeout=timeout, check_vswitchd=False)
    try:
        if db._rows("Open_vSwitch"):
            return
        from ovsdbapp.backend.ovs_idl import command

        class _Init(command.BaseCommand):
            def run_idl(self, txn: Any) -> None:
                if not self.api.tables["Open_vSwitch"].rows:
                    txn.insert(self.api.tables["Open_vSwitch"])

        # a plain transaction (the vsctl one would wait for ovs-vswitchd, not started yet)
        from ovsdbapp.backend.ovs_idl import transaction as base_txn

        txn = base_txn.Transaction(db.api, db._conn, timeout=timeout, check_error=True, log_errors=False)
        txn.add(_Init(db.api))
        txn.commit()
    finally:
        db.close()


# ---- OpenFlow and unixctl (no OVSDB equivalent) -------------------------------------
def _run(argv: list[str], input: str | None = None, timeout: float = OFCTL_TIMEOUT) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, input=input, text=True, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise ApplyError(f"{argv[0]} not found (install openvswitch-switch / openvswitch-common)") from None
    except subprocess.TimeoutExpired:
        raise ApplyError(f"{' '.join(argv[:3])} timed out after {timeout:.0f}s") from None


def ofctl(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return _run(["ovs-ofctl", *args], input=input)


def appctl(*args: str, target: str = "ovs-vswitchd") -> subprocess.CompletedProcess:
    return _run(["ovs-appctl", "-t", target, *args])


def last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit code {proc.returncode}"


# ---- kernel datapath detection ------------------------------------------------------
def kernel_datapath_available() -> bool:
    """True when the openvswitch kernel module is loaded (or auto-loads): the generic
    netlink family `ovs_datapath` resolves. ovs-vswitchd performs the same check."""
    forced = os.environ.get("CROSSNET_OVS_DATAPATH")
    if forced in ("system", "netdev"):
        return forced == "system"
    if os.path.isdir("/sys/module/openvswitch"):
        return True
    try:
        from pyroute2.netlink.exceptions import NetlinkError
        from pyroute2.netlink.generic import GenericNetlinkSocket
    except ImportError:  # pragma: no cover
        return False
    sock = GenericNetlinkSocket()
    try:
        sock.discovery("ovs_datapath")
        return True
    except NetlinkError:
        return False
    except Exception:  # noqa: BLE001 - any failure means: not usable
        return False
    finally:
        sock.close()


def datapath_type() -> str:
    """OVSDB `datapath_type` for crossnet's bridges: `system` (kernel module) or `netdev` (userspace)."""
    return "system" if kernel_datapath_available() else "netdev"
