"""The host's state directory: what `apply` programmed and the IPAM pool.

Layout under the state dir (default /var/lib/crossnet, `--state-dir`, env
CROSSNET_STATE_DIR):

    applied.json     cluster, this host, derived values and the resources crossnet created
    ipam.json        container address allocations (crossnet.ipam.AddressPool)
    lock             serialises apply/reset/attach on this host

Every file crossnet writes here is created 0600 (write_json_atomic, open_lock_file) and
the directory itself 0700. A state dir that someone other than the user running
crossnet could write (group/other write bit, another owner, or a parent others can
rename it out of) is refused with one line (ConfigError, exit 2) before anything is read
or locked: whoever can write it can forge applied.json (what `reset` deletes) or take
the lock. A state dir others may only read (e.g. 0755 made by `mkdir -p`) is accepted:
its files are 0600, so nobody else can open them, let alone flock the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

from crossnet.errors import ConfigError


PRETTY_MAX = 16 * 1024  # larger documents are written compact (see write_json_atomic)


def write_json_atomic(path: Path, data: Any) -> None:
    """Atomically replace path with data as JSON (fsync of file and directory).
    Indented for people while small; above PRETTY_MAX bytes compact, because only
    the compact form uses json's C encoder: applied.json of 1,000 peers took 0.2 s
    to indent (a fifth of the apply), a 200-container ipam.json 5 ms per write."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    if len(text) <= PRETTY_MAX:
        text = json.dumps(data, indent=2, sort_keys=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_json(path: Path) -> Any | None:
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


def check_state_dir(root: str | os.PathLike[str]) -> None:
    """Refuse (ConfigError) a state dir that others than this user can write: the dir
    itself group/other writable or owned by someone else, or a parent directory that is
    world-writable without the sticky bit or owned by another non-root user (they could
    move the state dir away and put their own in its place)."""
    root = Path(root)
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"state dir {root}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"state dir {root} is not a directory")
    euid = os.geteuid()
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != euid:
        raise ConfigError(f"state dir {root} belongs to uid {st.st_uid}, not to uid {euid} running crossnet: "
                          f"chown {euid} it")
    if mode & 0o022:
        raise ConfigError(f"state dir {root} is writable by others (mode {mode:04o}): chmod 0700 it")
    for parent in Path(os.path.abspath(root)).parents:
        try:
            pst = os.stat(parent)
        except OSError:
            continue
        pmode = stat.S_IMODE(pst.st_mode)
        if pst.st_uid not in (0, euid):
            raise ConfigError(f"state dir {root}: its parent {parent} belongs to uid {pst.st_uid}, who could "
                              f"replace the state dir: use a state dir under directories only root can write")
        if pmode & 0o002 and not pmode & stat.S_ISVTX:
            raise ConfigError(f"state dir {root}: its parent {parent} is writable by everyone (mode {pmode:04o}) "
                              f"without the sticky bit: chmod o-w it")


def ensure_state_dir(root: str | os.PathLike[str]) -> Path:
    """Create the state dir 0700 (parents as mkdir -p does) or check an existing one."""
    root = Path(root)
    if not root.exists():
        try:
            root.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                root.mkdir(mode=0o700)
                os.chmod(root, 0o700)  # mkdir's mode is filtered by the umask
        except OSError as exc:
            raise ConfigError(f"state dir {root}: cannot create it: {exc.strerror}") from None
    check_state_dir(root)
    return root


def _private(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def open_lock_file(path: str | os.PathLike[str]) -> int:
    """File descriptor of the lock file ``path``, created 0600. An existing one that
    others could open (an older crossnet created it 0644) is replaced first by a fresh
    private file: whoever opened the old one keeps a descriptor of an unlinked inode
    and blocks nobody. Lock it with lock_fd() (which re-checks the inode)."""
    path = Path(path)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(10):
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise ConfigError(f"lock file {path}: {exc.strerror}") from None
        st = os.fstat(fd)
        if _private(st):
            return fd
        os.close(fd)
        tfd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(tfd)
        try:
            now = os.stat(path, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):  # not already replaced by another crossnet
                os.replace(tmp, path)  # mkstemp: 0600, owned by us
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    raise ConfigError(f"lock file {path}: cannot make it private (someone keeps replacing it)")


def lock_fd(path: str | os.PathLike[str], operation: int = fcntl.LOCK_EX) -> int:
    """open_lock_file + flock(operation); retried when the file was replaced while we
    waited (so two processes never hold locks on different inodes of the same path).
    Close the descriptor to unlock. Raises BlockingIOError with LOCK_NB when held."""
    for _ in range(10):
        fd = open_lock_file(path)
        try:
            fcntl.flock(fd, operation)
            st = os.fstat(fd)
            try:
                now = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise ConfigError(f"lock file {path}: replaced again and again while waiting for it")


class StateDir:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    @property
    def applied_path(self) -> Path:
        return self.root / "applied.json"

    @property
    def ipam_path(self) -> Path:
        return self.root / "ipam.json"

    def load_applied(self) -> dict | None:
        return read_json(self.applied_path)

    def save_applied(self, data: dict) -> None:
        backend = str((data.get("context") or {}).get("backend") or "")
        if backend.startswith("ovs") and "ovs_rundir" not in data:
            # which Open vSwitch this host uses, for `crossnet trace --peer-state-dir` on
            # another host (it must never guess; crossnet.trace_ovs.find_rundir)
            from crossnet.ovs.db import rundir

            data = {**data, "ovs_rundir": os.path.abspath(rundir())}
        write_json_atomic(self.applied_path, data)

    def clear(self) -> None:
        for path in (self.applied_path, self.ipam_path, Path(str(self.ipam_path) + ".lock")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock for apply/reset (attach takes the IPAM lock instead)."""
        ensure_state_dir(self.root)
        fd = lock_fd(self.root / "lock")
        try:
            yield
        finally:
            os.close(fd)
