"""crossnet.mesh.state: the mesh directory in the state dir, first host and joiner."""

from __future__ import annotations

import os
import stat

import pytest

from crossnet.errors import ConfigError, CrossnetError
from crossnet.mesh import join, pki
from crossnet.mesh.state import MeshDir
from crossnet.mesh.token import parse_join_token


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_first_host_then_joiner_layout(tmp_path):
    first = MeshDir(tmp_path / "h1")
    ca = first.init_cluster("h1", "127.0.0.1")
    assert first.is_member() and first.can_sign()
    jt = first.create_join_token(ttl="1h")
    assert parse_join_token(str(jt)) == jt and jt.pin == ca.pin
    layout = {str(p.relative_to(first.root)): mode(p) for p in first.root.rglob("*")}
    assert layout == {"pki": 0o700, "pki/ca.crt": 0o644, "pki/ca.key": 0o600, "pki/member.crt": 0o644,
                      "pki/member.key": 0o600, "tokens.json": 0o600, "tokens.json.lock": 0o600}
    assert mode(first.root) == 0o700

    srv = join.JoinServer(join.JoinService(first.load_ca(), first.tokens()), "127.0.0.1", 0,
                          str(first.member_cert), str(first.member_key)).start()
    try:
        second = MeshDir(tmp_path / "h2")
        join.join(("127.0.0.1", srv.port), jt, "h2", "10.0.0.2", str(second.pki_dir))
    finally:
        srv.close()
    assert second.is_member() and not second.can_sign()
    assert second.load_ca(need_key=False).pin == ca.pin
    with pytest.raises(pki.PkiError, match="no such key"):
        second.create_join_token()  # a host without the CA key hands out no tokens
    assert not second.tokens_path.exists()


def test_init_refuses_a_host_already_in_a_mesh(tmp_path):
    m = MeshDir(tmp_path)
    ca = m.init_cluster("h1", "10.0.0.1")
    before = {p: p.read_bytes() for p in m.root.rglob("*") if p.is_file()}
    with pytest.raises(CrossnetError, match=f"already belongs to a mesh \\(CA pin {ca.pin}\\)"):
        m.init_cluster("h1", "10.0.0.1")
    assert {p: p.read_bytes() for p in m.root.rglob("*") if p.is_file()} == before


def test_bad_input_and_no_mesh(tmp_path):
    m = MeshDir(tmp_path)
    with pytest.raises(ConfigError, match="^name: "):
        m.init_cluster("H1", "10.0.0.1")
    with pytest.raises(ConfigError, match="^address: "):
        m.init_cluster("h1", "nowhere")
    assert not m.root.exists()
    with pytest.raises(CrossnetError, match="belongs to no mesh"):
        m.create_join_token()
    assert not m.root.exists()
