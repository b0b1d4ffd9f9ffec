"""The host's state directory: what `apply` programmed and the IPAM pool.

Layout under the state dir (default /var/lib/crossnet, `--state-dir`, env
CROSSNET_STATE_DIR):

    applied.json     cluster, this host, derived values and the resources crossnet created
    journal.json     written (fsync'd) by `apply` BEFORE it changes the kernel: everything it
                     may own once done, with what it must restore (the NIC's addresses and
                     routes, old sysctl values); an apply killed half-way leaves it, and the
                     next apply or reset works from it; replaced by applied.json at the end
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
import re
import signal
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

from crossnet.errors import ConfigError, CrossnetError

PRETTY_MAX = 16 * 1024  # larger documents are written compact (see write_json_atomic)


def write_json_atomic(path: Path, data: Any, sync_dir: bool = True) -> None:
    """Atomically replace path with data as JSON (fsync of file and directory:
    write_text_atomic).
    Indented for people while small; above PRETTY_MAX bytes compact, because only
    the compact form uses json's C encoder: applied.json of 1,000 peers took 0.2 s
    to indent (a fifth of the apply), a 200-container ipam.json 5 ms per write."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    if len(text) <= PRETTY_MAX:
        text = json.dumps(data, indent=2, sort_keys=True)
    write_text_atomic(path, text + "\n", sync_dir)


def write_text_atomic(path: Path, text: str, sync_dir: bool = True) -> None:
    """Atomically replace ``path`` with ``text``: a private (0600) temporary file in the
    same directory (created 0700 if missing), fsync'd, renamed over it, then the
    directory fsync'd so the rename itself is durable (state files, private keys).
    ``sync_dir=False``: no directory fsync — still atomic and never torn, but after a
    power loss the file may be its previous version (for a write whose loss then does
    not matter)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if not sync_dir:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def left_over(directory: str | os.PathLike[str], name_re: str) -> list[Path]:
    """The temporaries ``.NAME.PID.tmp`` (:func:`pid_temp`; crossnet.dns.resolv too) in
    `directory`, NAME matching `name_re`, that a killed crossnet left: their writer, named
    in the file name, is gone (a live one's are not listed)."""
    out = []
    pattern = re.compile(rf"\.({name_re})\.([0-9]+)\.tmp")
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    for entry in sorted(entries):
        m = pattern.fullmatch(entry)
        if m is None or int(m.group(2)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(2)), 0)
            continue  # still writing it
        except ProcessLookupError:
            out.append(Path(directory) / entry)
        except OSError:
            continue
    return out


def remove_left_over(directory: str | os.PathLike[str], name_re: str) -> None:
    """Delete the temporaries :func:`left_over` lists (a killed writer's)."""
    for tmp in left_over(directory, name_re):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def pid_temp(path: Path) -> Path:
    """The temporary a file outside the state dir (a CNI conflist or plugin, a systemd
    unit) is written under before its rename: in the same directory, hidden, named after
    the file and this process, so a killed writer's is found by :func:`left_over` (runtimes
    read only *.conf, *.conflist and *.json from the CNI conf dir, systemd only unit
    suffixes)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def fsync_path(path: str | Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_pid_temp(path: Path) -> Path:
    """A fresh :func:`pid_temp` for `path` (its directory made; a killed writer's left-overs swept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_left_over(path.parent, re.escape(path.name))
    tmp = pid_temp(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a left-over of an earlier process with this pid
    return tmp


def replace_file(path: Path, text: str, mode: int) -> None:
    """Replace `path` with `text`, whole or not at all: written (O_EXCL, never through a
    symlink) and fsync'd under :func:`pid_temp`, given `mode`, renamed over it, the
    directory fsync'd. For files outside the state dir with a public mode
    (:func:`write_text_atomic` is for the state dir's private files)."""
    tmp = new_pid_temp(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        crash_point()  # test hook (CROSSNET_TEST_CRASH_AT): written, not in place yet
        os.replace(tmp, path)
        crash_point()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_path(path.parent)


CRASH_ENV = "CROSSNET_TEST_CRASH_AT"
_crash: dict = {"at": None, "step": 0}


def crash_point(label: str = "") -> None:
    """Test hook: with CROSSNET_TEST_CRASH_AT=N in the environment, the process kills
    itself (SIGKILL, no clean-up of any kind) at the N-th crash point it passes. The
    crash points sit between the kernel changes and state writes of `apply` (and of what
    runs through it: `expose`/`hide`, the named networks' records), of `attach`/`detach`
    (crossnet.containers, /etc/netns resolv.conf), the file writes of `cni install`, the
    steps of `uninstall` (each entry of the prefix it deletes) and the steps of `crossnet
    launch` (first host, join, the bootstrap), `stop` and `forget` (crossnet.mesh.launch;
    a detached supervisor does not inherit it), so a test can enumerate N = 1, 2, ...
    until the command completes and check that
    every interruption is recoverable. A labelled crash point (the supervisor's promotion
    steps, which run after an agent's uncounted applies) is also reached by name:
    CROSSNET_TEST_CRASH_AT=<label> kills at that label's first pass. Costs one dict
    lookup when unset."""
    at = _crash["at"]
    if at is None:
        value = os.environ.get(CRASH_ENV, "")
        at = _crash["at"] = int(value) if value.isdigit() else value
    if not at:
        return
    if isinstance(at, str):
        if label and label == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return
    _crash["step"] += 1
    if _crash["step"] == at:
        os.kill(os.getpid(), signal.SIGKILL)


def _current_format(name: str, data: dict | None, path: Path) -> dict | None:
    """A state file in the format this crossnet writes (crossnet.stateformat)."""
    if data is None:
        return None
    from crossnet.stateformat import upgrade

    return upgrade(name, data, path)


class DamagedStateFile(CrossnetError, ValueError):
    """A state file that cannot be read or is not JSON (a ValueError too, so callers that
    treat a torn file as missing keep doing so)."""


def read_json(path: Path) -> Any | None:
    """The JSON document at ``path``, None when it does not exist; a CrossnetError (one
    line, exit 1) when it cannot be read or is not JSON (a damaged state file)."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DamagedStateFile(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise DamagedStateFile(f"{path}: damaged state file, not JSON ({exc}); restore it or move it away") from None


def root_problem(root: str | os.PathLike[str]) -> str | None:
    """Why ``root`` cannot be a state dir (it, or the nearest existing parent, is not a
    directory), or None. A state dir that does not exist yet is fine: it is created."""
    text = os.fspath(root)
    if not text:
        return "must not be empty"
    path = Path(text).absolute()
    for candidate in (path, *path.parents):
        try:
            st = os.stat(candidate)
        except (FileNotFoundError, NotADirectoryError):  # look at the parents
            continue
        except (OSError, ValueError) as exc:
            return f"{text}: {getattr(exc, 'strerror', None) or exc}"
        if stat.S_ISDIR(st.st_mode):
            return None
        if candidate == path:
            return f"{text} is not a directory"
        return f"{text}: {candidate} is not a directory"
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


def drop_lock_file(path: Path, made: list[Path]) -> None:
    """Remove a lock file while still holding it (a process that opened it meanwhile finds
    it unlinked, lock_fd, and takes a new one), then the directories ``made`` for it
    (deepest first), each only while empty."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    for d in made:
        try:
            d.rmdir()
        except OSError:
            break


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
    def journal_path(self) -> Path:
        return self.root / "journal.json"

    @property
    def ipam_path(self) -> Path:
        return self.root / "ipam.json"

    def load_applied(self) -> dict | None:
        data = read_json(self.applied_path)
        if data is not None and not isinstance(data, dict):
            raise DamagedStateFile(f"{self.applied_path}: damaged state file, expected a JSON object")
        return _current_format("applied.json", data, self.applied_path)

    def save_applied(self, data: dict) -> None:
        """The complete record of what crossnet owns: it supersedes the journal."""
        write_json_atomic(self.applied_path, data)
        crash_point()
        self.clear_journal()

    def load_journal(self) -> dict | None:
        data = read_json(self.journal_path)
        if data is not None and not isinstance(data, dict):
            raise DamagedStateFile(f"{self.journal_path}: damaged state file, expected a JSON object")
        return _current_format("journal.json", data, self.journal_path)

    def save_journal(self, data: dict) -> None:
        """Write-ahead record (fsync'd file and directory) of an apply in progress."""
        write_json_atomic(self.journal_path, data)

    def clear_journal(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.journal_path.unlink()

    def clear(self) -> None:
        for path in (self.applied_path, self.journal_path, self.ipam_path, Path(str(self.ipam_path) + ".lock")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock for apply/reset (attach takes the IPAM lock instead).

        The state dir is created 0700 or checked (ensure_state_dir: nobody else may write
        it) and the lock file is private (lock_fd: 0600, an old 0644 one is replaced).
        A state dir this call found without a lock file, and that records nothing when the
        block ends (no applied.json, no ipam.json: a failed apply on a fresh state dir, a
        reset of nothing), is left as it was: the lock file is removed (still holding the
        lock; a process waiting for it finds it unlinked and takes the new one) and so are
        the directories created for it, when empty."""
        path = self.root / "lock"
        for _ in range(10):
            missing = [d for d in (self.root, *self.root.parents) if not d.exists()]
            ensure_state_dir(self.root)
            fresh = not path.exists()
            try:
                fd = lock_fd(path)
                break
            except ConfigError:
                if self.root.is_dir():
                    raise
                # its creator removed the fresh directory meanwhile: make it again
        else:
            raise ConfigError(f"state dir {self.root}: removed again and again while waiting for its lock")
        try:
            yield
        finally:
            try:
                if fresh and not self.applied_path.exists() and not self.ipam_path.exists():
                    drop_lock_file(path, missing)
            finally:
                os.close(fd)
