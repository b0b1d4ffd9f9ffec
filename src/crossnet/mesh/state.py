"""Where a host keeps its mesh credentials: `<state-dir>/mesh/` (docs/mesh.md).

    mesh/                0700
        tokens.json      0600  join tokens (verifiers only) — hosts that sign joins
        pki/             0700
            ca.crt       0644  cluster CA certificate
            ca.key       0600  cluster CA key — hosts that sign joins
            member.crt   0644  this host's certificate (etcd peer/client TLS, join endpoint)
            member.key   0600  this host's key, made here, never sent
            revoked.crl  0600  the certificates of forgotten hosts (etcd's CRL files)
        launch.json      0600  this host's launch (crossnet.mesh.launch), written last
    launch.lock          0600  (in the state dir) held by `crossnet launch` while it makes the above

A first launch or join killed before launch.json leaves only files of this list (and
the temporaries of their atomic writers): `half_made` tells such a state crossnet made
from anything else, `remove_half_made` removes exactly that (docs/mesh.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from crossnet.errors import ConfigError, CrossnetError
from crossnet.mesh import pki
from crossnet.mesh.token import DEFAULT_TTL, JoinToken, TokenStore


class MeshDir:
    def __init__(self, state_root: str | os.PathLike[str]):
        self.root = Path(state_root) / "mesh"

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    @property
    def tokens_path(self) -> Path:
        return self.root / "tokens.json"

    @property
    def member_cert(self) -> Path:
        return self.pki_dir / pki.MEMBER_CERT

    @property
    def member_key(self) -> Path:
        return self.pki_dir / pki.MEMBER_KEY

    @property
    def ca_cert(self) -> Path:
        return self.pki_dir / pki.CA_CERT

    def is_member(self) -> bool:
        return self.member_cert.exists()

    def can_sign(self) -> bool:
        return (self.pki_dir / pki.CA_KEY).exists()

    def tokens(self) -> TokenStore:
        return TokenStore(self.tokens_path)

    def init_cluster(self, name: str, address: str) -> pki.CA:
        """The first host: a new cluster CA and this host's own member certificate.
        Refuses when this host already belongs to a mesh; leaves nothing on failure."""
        pki.validate_name(name)
        pki.validate_address(address)
        if self.is_member() or self.ca_cert.exists():
            raise CrossnetError(f"{self.root}: this host already belongs to a mesh (CA pin "
                                f"{pki.ca_pin(pki.load_cert(self.ca_cert))})" if self.ca_cert.exists()
                                else f"{self.root}: this host already holds a member certificate")
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        ca = pki.create_ca(self.pki_dir)
        try:
            pki.issue_self(ca, self.pki_dir, name, address)
        except BaseException:
            for f in (pki.CA_CERT, pki.CA_KEY):
                (self.pki_dir / f).unlink(missing_ok=True)
            raise
        return ca

    def load_ca(self, need_key: bool = True) -> pki.CA:
        if not self.ca_cert.exists():
            raise CrossnetError(f"{self.root}: this host belongs to no mesh (no cluster CA); "
                                f"`crossnet launch` creates or joins one")
        return pki.load_ca(self.pki_dir, need_key=need_key)

    def create_join_token(self, ttl: int | str = DEFAULT_TTL, description: str = "") -> JoinToken:
        """A new token in this host's store, with the CA pin: what `token create` prints."""
        ca = self.load_ca(need_key=True)  # only a host that can sign joins hands out tokens
        return JoinToken(self.tokens().create(ttl, description), ca.pin)


# ---------------------------------------------------------------- a launch killed before launch.json

FIRST, JOIN, BARE = "first", "join", "bare"
LAUNCH_LOCK = "launch.lock"
PKI_FILES = (pki.CA_CERT, pki.CA_KEY, pki.MEMBER_CERT, pki.MEMBER_KEY, pki.CRL)
# before launch.json: (directory relative to mesh/, its files, the files whose temporaries
# may be left there, its subdirectories); a temporary is .NAME.XXXXXXXX.tmp: pki's
# _write_private (8 hex digits), crossnet.state.write_text_atomic (mkstemp: 8 of a-z0-9_)
_LAYOUT = ((".", (), ("launch.json",), ("pki",)), ("pki", PKI_FILES, PKI_FILES, ()))
_TEMP_RE = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")


@dataclass(frozen=True)
class HalfMade:
    """What `<state-dir>/mesh` holds, launch.json absent. kind: FIRST (the CA key: a first
    launch), JOIN (no CA key; a CA or member certificate: a join), BARE (only crossnet's
    directories or temporaries), None (no mesh directory, or an empty one: nothing to do;
    or `why` says what crossnet did not write there). files and dirs (deepest first) are
    what remove_half_made removes."""
    kind: str | None
    why: str | None = None
    files: tuple[Path, ...] = ()
    dirs: tuple[Path, ...] = ()


def _own(st: os.stat_result, kind: int) -> bool:
    return stat.S_IFMT(st.st_mode) == kind and st.st_uid == os.geteuid()


def half_made(root: str | os.PathLike[str]) -> HalfMade:
    """Classify the mesh directory `root` of a host without launch.json (a first launch or
    join killed before it). Only what crossnet writes until then counts as its own:
    directories `.` and `pki`, the files of _LAYOUT and their writers' temporaries, each
    checked with lstat (no symlink followed): a regular file with one link or a directory,
    owned by this user. Anything else (another file, a symlink, a FIFO, an etcd data dir,
    launch.json itself) gives why (one line naming it) and nothing to remove."""
    root = Path(root)
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return HalfMade(None)
    if not _own(st, stat.S_IFDIR):
        return HalfMade(None, f"{root.name} is not a directory crossnet made ({_what(st)})")
    files: list[Path] = []
    dirs = [root]
    for rel, names, temps_of, subdirs in _LAYOUT:
        d = root / rel
        if d not in dirs:
            continue  # (no pki directory)
        for name in sorted(os.listdir(d)):
            path, shown = d / name, (name if rel == "." else f"{rel}/{name}")
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            temp = _TEMP_RE.fullmatch(name)
            if name in subdirs:
                if not _own(st, stat.S_IFDIR):
                    return HalfMade(None, f"{shown} is not a directory crossnet made ({_what(st)})")
                dirs.insert(0, path)
            elif name in names or (temp is not None and temp.group(1) in temps_of):
                if not _own(st, stat.S_IFREG) or st.st_nlink != 1:
                    return HalfMade(None, f"{shown} is not a file crossnet wrote ({_what(st)})")
                files.append(path)
            else:
                return HalfMade(None, f"{shown} is not a file crossnet writes before launch.json")
    if not files and dirs == [root]:
        return HalfMade(None)
    certs = {p.name for p in files if p.parent != root}
    kind = FIRST if pki.CA_KEY in certs else JOIN if certs & {pki.CA_CERT, pki.MEMBER_CERT, pki.MEMBER_KEY} else BARE
    return HalfMade(kind, None, tuple(files), tuple(dirs))


def _what(st: os.stat_result) -> str:
    """Why an entry of the right name is not crossnet's (`_own` failed, or hard links)."""
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    kind = {stat.S_IFDIR: "a directory", stat.S_IFREG: "a regular file", stat.S_IFIFO: "a FIFO",
            stat.S_IFSOCK: "a socket"}.get(stat.S_IFMT(st.st_mode), "a device")
    if st.st_uid != os.geteuid():
        return f"{kind} owned by uid {st.st_uid}"
    if stat.S_ISREG(st.st_mode) and st.st_nlink != 1:
        return f"{st.st_nlink} hard links"
    return kind


def remove_half_made(found: HalfMade) -> None:
    """Remove what half_made found (its files, then its directories, deepest first); a
    directory that is not empty by then (something new appeared) is left and refused."""
    for path in found.files:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    for d in found.dirs:
        try:
            os.rmdir(d)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise CrossnetError(f"{d}: cannot remove the half-made mesh state: {exc.strerror}") from None


@contextlib.contextmanager
def launch_lock(state_root: str | os.PathLike[str]) -> Iterator[None]:
    """Held (`<state-dir>/launch.lock`, crossnet.state.lock_fd) by `crossnet launch` while
    it makes a first launch's or a join's mesh state, until its supervisor runs: another
    `crossnet launch` on this state dir meanwhile is refused instead of taking that state
    for a half-made one. The lock file is removed at the end (still held), and so are the
    state directories this call created while they are empty."""
    from crossnet.state import drop_lock_file, ensure_state_dir, lock_fd

    root = Path(state_root)
    missing = [d for d in (root, *root.parents) if not d.exists()]
    ensure_state_dir(root)
    path = root / LAUNCH_LOCK
    try:
        fd = lock_fd(path, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(f"--state-dir: another `crossnet launch` is making this host's mesh state in {root}; "
                          f"nothing changed") from None
    try:
        yield
    finally:
        try:
            drop_lock_file(path, missing)
        finally:
            os.close(fd)
