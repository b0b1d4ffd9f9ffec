"""A first `crossnet launch` or a join killed before launch.json: the next run of the same
command completes it (crossnet.mesh.state.half_made / remove_half_made / launch_lock,
crossnet.cli.mesh.complete_half_made) — only when crossnet made everything under
<state-dir>/mesh; anything else is refused in one line and left as it is."""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import tempfile
from pathlib import Path

import pytest

from crossnet.errors import ConfigError, CrossnetError
from crossnet.mesh import launch as ml
from crossnet.mesh import pki
from crossnet.mesh.state import (
    BARE,
    FIRST,
    JOIN,
    HalfMade,
    MeshDir,
    half_made,
    launch_lock,
    remove_half_made,
)
from crossnet.mesh.token import JoinToken, Token
from tests.unit import planted


def killed_writer_temp(path: Path, writer: str) -> Path:
    """The temporary a writer killed before its rename leaves next to `path`: pki's
    _write_private (.NAME.<8 hex>.tmp) or crossnet.state.write_text_atomic (mkstemp)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if writer == "pki":
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(b"partial")
        os.chmod(tmp, 0o600)
        return tmp
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


def first_launch_state(state: Path) -> MeshDir:
    """What launch_first leaves when killed just before launch.json (its first crash point)."""
    m = MeshDir(state)
    ca = m.init_cluster("h1", "10.0.0.1")
    ml.write_crl(ml.Paths(state), ca, [])
    return m


def join_state(state: Path) -> MeshDir:
    """What launch_join leaves when killed just before launch.json: the signed certificate
    (another host's CA, its key not here) and the CRL."""
    ca = pki.create_ca(state.parent / f"{state.name}-cluster-ca")
    m = MeshDir(state)
    key = pki.generate_key()
    pki.save_member(m.pki_dir, key, ca.issue(pki.make_csr(key, "h2"), "h2", "10.0.0.2"), ca.cert)
    ml.write_crl(ml.Paths(state), ca, [])
    return m


def tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under root: a file's bytes, a link's target, a directory's marker."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = (f"-> {os.readlink(p)}" if p.is_symlink() else "dir" if p.is_dir()
                    else p.read_bytes() if p.is_file() else "special")
    return out


# ---------------------------------------------------------------- the classification

def test_every_step_of_a_killed_first_launch_is_crossnets_and_removed_whole(tmp_path):
    state = tmp_path / "state"
    m = MeshDir(state)
    assert half_made(m.root) == HalfMade(None)  # no mesh dir
    m.root.mkdir(parents=True)
    assert (half_made(m.root).kind, half_made(m.root).why) == (None, None)  # an empty mesh dir: nothing to do
    m.pki_dir.mkdir()
    assert half_made(m.root).kind == BARE
    killed_writer_temp(m.pki_dir / pki.CA_KEY, "pki")  # killed inside create_ca
    assert half_made(m.root).kind == BARE
    for p in m.pki_dir.iterdir():
        p.unlink()
    first_launch_state(state)
    killed_writer_temp(m.pki_dir / pki.CRL, "state")
    killed_writer_temp(m.root / "launch.json", "state")  # killed inside launch.json's write
    found = half_made(m.root)
    assert (found.kind, found.why) == (FIRST, None)
    assert sorted(str(p.relative_to(m.root)) for p in found.files) == sorted(
        [str(p.relative_to(m.root)) for p in m.root.rglob("*") if p.is_file()])
    assert found.dirs == (m.pki_dir, m.root)
    remove_half_made(found)
    assert not m.root.exists() and list(state.iterdir()) == []


def test_every_step_of_a_killed_join_is_a_join(tmp_path):
    state = tmp_path / "state"
    m = join_state(state)
    killed_writer_temp(m.root / "launch.json", "state")
    found = half_made(m.root)
    assert (found.kind, found.why) == (JOIN, None)
    assert {p.name for p in found.files} >= {pki.CA_CERT, pki.MEMBER_CERT, pki.MEMBER_KEY, pki.CRL}
    for name in (pki.CRL, pki.MEMBER_CERT, pki.MEMBER_KEY):  # killed inside save_member: ca.crt first
        (m.pki_dir / name).unlink()
        assert half_made(m.root).kind == JOIN, name
    remove_half_made(half_made(m.root))
    assert not m.root.exists()


def _plant_fifo(path: Path) -> None:
    os.mkfifo(path, 0o600)


PLANTS = {
    # name: (what to plant, relative to mesh/, the one-line reason)
    "a file of someone else's": (lambda m, t: (m.root / "notes").write_text("keep"),
                                 "notes is not a file crossnet writes before launch.json"),
    "an extra file in pki": (lambda m, t: (m.pki_dir / "ca.key.bak").write_text("keep"),
                             "pki/ca.key.bak is not a file crossnet writes before launch.json"),
    "a temporary of another name": (lambda m, t: (m.pki_dir / ".other.0123abcd.tmp").write_text("keep"),
                                    "pki/.other.0123abcd.tmp is not a file crossnet writes before launch.json"),
    "a symlink for the CA key": (lambda m, t: ((m.pki_dir / pki.CA_KEY).unlink(),
                                               planted.plant(m.pki_dir / pki.CA_KEY, "symlink", t)),
                                 "pki/ca.key is not a file crossnet wrote (a symbolic link)"),
    "a symlink for a temporary": (lambda m, t: planted.plant(m.root / ".launch.json.abcdefgh.tmp", "symlink", t),
                                  ".launch.json.abcdefgh.tmp is not a file crossnet wrote (a symbolic link)"),
    "a FIFO for the member certificate": (lambda m, t: ((m.pki_dir / pki.MEMBER_CERT).unlink(),
                                                        _plant_fifo(m.pki_dir / pki.MEMBER_CERT)),
                                          "pki/member.crt is not a file crossnet wrote (a FIFO)"),
    "a directory for the CRL": (lambda m, t: ((m.pki_dir / pki.CRL).unlink(), planted.plant(m.pki_dir / pki.CRL,
                                                                                              "dir", t)),
                                "pki/revoked.crl is not a file crossnet wrote (a directory)"),
    "a hard link for the CA key": (lambda m, t: ((m.pki_dir / pki.CA_KEY).unlink(),
                                                 os.link(t, m.pki_dir / pki.CA_KEY)),
                                   "pki/ca.key is not a file crossnet wrote (2 hard links)"),
    "an etcd data dir": (lambda m, t: (m.root / "etcd" / "data").mkdir(parents=True),
                         "etcd is not a file crossnet writes before launch.json"),
    "launch.json": (lambda m, t: (m.root / "launch.json").write_text("{}"),
                    "launch.json is not a file crossnet writes before launch.json"),
    "the supervisor's pid file": (lambda m, t: (m.root / "launch.pid").write_text("1\n"),
                                  "launch.pid is not a file crossnet writes before launch.json"),
}


@pytest.mark.parametrize("plant", list(PLANTS))
def test_anything_crossnet_did_not_write_is_refused_and_left(tmp_path, plant):
    target = tmp_path / "target"
    target.write_text("keep")
    m = first_launch_state(tmp_path / "state")
    make, why = PLANTS[plant]
    make(m, target)
    before = tree(m.root)
    found = half_made(m.root)
    assert (found.kind, found.why, found.files, found.dirs) == (None, why, (), ())
    assert tree(m.root) == before and target.read_text() == "keep"


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_a_mesh_or_pki_path_that_is_no_directory_of_crossnets_is_refused(tmp_path, kind):
    elsewhere = tmp_path / "elsewhere"
    first_launch_state(elsewhere)  # a directory crossnet made, elsewhere
    m = MeshDir(tmp_path / "state")
    m.root.parent.mkdir()
    planted.plant(m.root, kind, elsewhere / "mesh")
    assert half_made(m.root).why == f"mesh is not a directory crossnet made ({'a symbolic link' if kind == 'symlink' else 'a regular file'})"
    m2 = MeshDir(tmp_path / "state2")
    m2.root.mkdir(parents=True)
    planted.plant(m2.pki_dir, kind, elsewhere / "mesh" / "pki")
    assert half_made(m2.root).why.startswith("pki is not a directory crossnet made (")
    assert (elsewhere / "mesh" / "pki" / pki.CA_KEY).exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_file_of_another_owner_is_not_crossnets(tmp_path):
    m = join_state(tmp_path / "state")
    os.chown(m.pki_dir / pki.MEMBER_KEY, 65534, 65534)
    assert half_made(m.root).why == "pki/member.key is not a file crossnet wrote (a regular file owned by uid 65534)"


def test_a_file_appearing_while_removing_is_kept_and_refused(tmp_path):
    m = first_launch_state(tmp_path / "state")
    found = half_made(m.root)
    (m.pki_dir / "new").write_text("keep")
    with pytest.raises(CrossnetError, match=r"pki: cannot remove the half-made mesh state: Directory not empty$"):
        remove_half_made(found)
    assert (m.pki_dir / "new").read_text() == "keep"


# ---------------------------------------------------------------- the lock

def test_a_second_launch_while_one_makes_the_state_is_refused(tmp_path):
    state = tmp_path / "new" / "state"
    with launch_lock(state):
        m = first_launch_state(state)
        with pytest.raises(ConfigError) as info, launch_lock(state):
            pass
        assert str(info.value) == (f"--state-dir: another `crossnet launch` is making this host's mesh state in "
                                   f"{state}; nothing changed")
    assert not (state / "launch.lock").exists() and m.can_sign()  # removed, held, at the end
    with launch_lock(state):  # free again
        pass


def test_the_lock_leaves_nothing_when_no_mesh_state_was_made(tmp_path):
    state = tmp_path / "new" / "state"
    with pytest.raises(ConfigError), launch_lock(state):
        assert oct(os.stat(state).st_mode & 0o777) == oct(0o700)
        raise ConfigError("--dns-domain: bad")  # refused before anything was written
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the command

TOKEN = str(JoinToken(Token("a" * 6, "b" * 16), "sha256:" + "c" * 64))


@pytest.fixture
def cli(monkeypatch, tmp_path, capsys):
    """`crossnet --state-dir S launch …` with the launch itself faked: what it finds in
    the mesh dir when it starts, and the error line."""
    calls: list[tuple[str, dict]] = []
    state = tmp_path / "state"

    def seen() -> dict:
        return tree(state / "mesh") if (state / "mesh").exists() else {}

    def first(state_dir, *a, **kw):
        calls.append(("first", seen()))  # returns None: --foreground, the supervisor runs next (faked)

    def join(state_dir, *a, **kw):
        calls.append(("join", seen()))
        return "voter"

    monkeypatch.setattr(ml, "detect_underlay", lambda iface, address: ("eth0", "10.0.0.2"))
    monkeypatch.setattr(ml, "launch_first", first)
    monkeypatch.setattr(ml, "launch_join", join)
    monkeypatch.setattr(ml, "run_foreground", lambda state_dir: 0)

    def run(*args: str) -> tuple[int, list[str]]:
        from crossnet.cli.main import main

        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main(["--state-dir", str(state), "launch", "--name", "h2", "--foreground", *args])
        return info.value.code, capsys.readouterr().err.strip().splitlines()

    run.state, run.calls = state, calls  # type: ignore[attr-defined]
    return run


JOIN_ARGS = ("--token", TOKEN, "10.0.0.1")


@pytest.mark.parametrize("made, args, kind", [(first_launch_state, (), "first"), (join_state, JOIN_ARGS, "join")])
def test_the_same_command_again_removes_the_half_made_state_and_launches(cli, caplog, made, args, kind):
    made(cli.state)
    caplog.set_level(logging.WARNING, "crossnet.mesh")
    assert cli(*args)[0] == 0 and cli.calls == [(kind, {})]  # it started on an empty mesh dir
    assert [r.getMessage() for r in caplog.records] == [
        f"removing the half-made mesh state of an interrupted launch ({cli.state / 'mesh'})"]


@pytest.mark.parametrize("args", [(), JOIN_ARGS])
def test_a_bare_state_is_removed_by_either_command(cli, args):
    killed_writer_temp(cli.state / "mesh" / "pki" / pki.CA_CERT, "pki")
    assert cli(*args)[0] == 0 and cli.calls == [("join" if args else "first", {})]


@pytest.mark.parametrize("made, args, line", [
    (join_state, (), ("crossnet: error: --token: {mesh} holds the half-made state of an interrupted join; run "
                      "the join command again to complete it (`crossnet launch --token TOKEN ADDR`)")),
    (first_launch_state, JOIN_ARGS, ("crossnet: error: --token: {mesh} holds the half-made state of an interrupted "
                                     "first launch (a new mesh's CA); `crossnet launch` alone completes it, or "
                                     "remove {mesh} to join instead")),
])
def test_the_other_command_is_refused_and_changes_nothing(cli, made, args, line):
    """A half-joined host never becomes the first host of a new mesh (nor the reverse)."""
    made(cli.state)
    before = tree(cli.state)
    code, err = cli(*args)
    assert (code, err) == (2, [line.format(mesh=cli.state / "mesh")])
    assert cli.calls == [] and tree(cli.state) == before


@pytest.mark.parametrize("args", [(), JOIN_ARGS])
def test_a_foreign_file_is_refused_and_nothing_removed(cli, args, tmp_path):
    m = first_launch_state(cli.state) if not args else join_state(cli.state)
    planted.plant(m.pki_dir / "extra", "symlink", tmp_path / "target")
    before = tree(cli.state)
    code, err = cli(*args)
    assert (code, err) == (2, [(f"crossnet: error: --state-dir: {m.root} holds a half-made mesh state; remove it "
                                "first (nothing removed: pki/extra is not a file crossnet writes before launch.json)")])
    assert cli.calls == [] and tree(cli.state) == before


def test_a_launch_in_progress_is_not_taken_for_a_half_made_one(cli):
    m = first_launch_state(cli.state)
    from crossnet.state import lock_fd

    fd = lock_fd(cli.state / "launch.lock", fcntl.LOCK_EX | fcntl.LOCK_NB)  # another crossnet launch holds it
    try:
        before = tree(cli.state)
        code, err = cli()
        assert (code, err) == (2, [(f"crossnet: error: --state-dir: another `crossnet launch` is making this "
                                    f"host's mesh state in {cli.state}; nothing changed")])
        assert cli.calls == [] and tree(cli.state) == before and m.can_sign()
    finally:
        os.close(fd)
