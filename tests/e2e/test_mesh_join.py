"""The mesh join handshake between simulated hosts (lab namespaces, L3 underlay): h1
serves the join endpoint on its underlay address, h2 joins with the join token, h3
with a token of another cluster / a wrong secret is refused and keeps nothing, and once
it has guessed too often, is refused with `rate-limited` while h2 still joins. tcpdump
on the router side of h2's link sees the whole exchange: TLS only, no plaintext HTTP,
no token, no certificate or key in the clear."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crossnet.mesh import join, pki
from crossnet.mesh.token import JoinToken, Token, TokenStore
from tests.e2e.pcap import Capture

pytestmark = pytest.mark.e2e

SERVER = """
import sys
from crossnet.mesh import join, pki, token
d = sys.argv[1]
ca = pki.load_ca(d + "/pki")
srv = join.JoinServer(join.JoinService(ca, token.TokenStore(d + "/tokens.json")), sys.argv[2], int(sys.argv[3]),
                      d + "/pki/member.crt", d + "/pki/member.key").start()
print("ready", flush=True)
sys.stdin.read()
srv.close()
"""

JOINER = """
import json, sys
from crossnet.errors import CrossnetError
from crossnet.mesh import join, token
try:
    r = join.join(sys.argv[1], token.parse_join_token(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
except CrossnetError as exc:
    print(json.dumps({"error": str(exc), "code": getattr(exc, "code", None)}))
    sys.exit(1)
print(json.dumps({"serial": r.cert.serial_number}))
"""


@pytest.fixture
def mesh_lab(lab_factory, tmp_path):
    lab = lab_factory(hosts=3, underlay="l3", backend="vxlan", containers=0, apply=False)
    h1 = lab.plan.host("h1")
    mesh = Path(h1.state_dir) / "mesh"
    ca = pki.create_ca(mesh / "pki")
    pki.issue_self(ca, mesh / "pki", "h1", h1.address)
    tokens = TokenStore(mesh / "tokens.json")
    server = subprocess.Popen(lab.argv("h1", [sys.executable, "-c", SERVER, str(mesh), h1.address,
                                              str(join.JOIN_PORT)]),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert line.strip() == "ready", server.stderr.read() if server.poll() is not None else line
        yield lab, ca, tokens
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _join(lab, host, token, out):
    h = lab.plan.host(host)
    proc = lab.run(host, [sys.executable, "-c", JOINER, lab.plan.host("h1").address, str(token), host, h.address,
                          str(out)], timeout=60)
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else proc.stderr


def test_join_between_lab_hosts_is_tls_only(mesh_lab, tmp_path):
    lab, ca, tokens = mesh_lab
    token = tokens.create(ttl=600)
    jt = JoinToken(token, ca.pin)
    out = Path(lab.plan.host("h2").state_dir) / "mesh" / "pki"
    pcap = tmp_path / "join.pcap"
    cap = Capture(lab.plan.fabric.netns, lab.plan.host("h2").fabric_ifname, pcap, "tcp", "port", str(join.JOIN_PORT))
    try:
        rc, res = _join(lab, "h2", jt, out)
    finally:
        packets = cap.stop()
    assert rc == 0, res
    cert = pki.load_cert(out / pki.MEMBER_CERT)
    assert cert.serial_number == res["serial"]
    pki.check_member_cert(cert, ca.cert, key=pki.load_key(out / pki.MEMBER_KEY),
                          address=lab.plan.host("h2").address, name="h2")

    raw = b"".join(packets)
    # the capture did see the exchange (2 TLS handshakes, 3 requests): the positive control
    assert len(packets) >= 10, len(packets)
    assert b"\x16\x03\x01" in raw or b"\x16\x03\x03" in raw  # TLS handshake records
    for plaintext in (b"HTTP/1.", b"POST /v1", b"GET /v1", b"/v1/join", b"token_id", b"proof", b"-----BEGIN",
                      b"PRIVATE KEY", token.secret.encode(), token.id.encode(), ca.pin.encode()):
        assert plaintext not in raw, plaintext
    # nor the certificates in DER (TLS 1.3 encrypts the server's certificate too)
    assert pki.spki_der(cert.public_key()) not in raw


def test_hosts_without_the_right_token_are_refused_and_keep_nothing(mesh_lab, tmp_path):
    lab, ca, tokens = mesh_lab
    good = tokens.create(ttl=600)
    store_before = tokens.path.read_bytes()
    other = pki.create_ca(tmp_path / "other")
    other_tokens = TokenStore(tmp_path / "other-tokens.json")
    h3_mesh = Path(lab.plan.host("h3").state_dir) / "mesh"
    cases = {
        "ca-pin-mismatch": JoinToken(other_tokens.create(), other.pin),  # a token of another cluster
        "wrong-secret": JoinToken(Token(good.id, "x" * 16), ca.pin),
        "unknown": JoinToken(Token("abc123", good.secret), ca.pin),
    }
    for code, jt in cases.items():
        rc, res = _join(lab, "h3", jt, h3_mesh / "pki")
        assert rc == 1 and res["code"] == code, res
        assert "\n" not in res["error"]
        assert not h3_mesh.exists(), list(h3_mesh.rglob("*"))
    assert tokens.path.read_bytes() == store_before
    h1_pki = sorted(p.name for p in (Path(lab.plan.host("h1").state_dir) / "mesh" / "pki").iterdir())
    assert h1_pki == ["ca.crt", "ca.key", "member.crt", "member.key"]


def test_a_host_guessing_secrets_is_rate_limited_while_another_joins(mesh_lab):
    """h3 tries wrong secrets: after join.MAX_FAILURES refusals its next join, even with
    the right token, is refused with the one `rate-limited` line (when to retry) and it
    keeps nothing; h2, another address, joins meanwhile."""
    lab, ca, tokens = mesh_lab
    good = JoinToken(tokens.create(ttl=600), ca.pin)
    wrong = JoinToken(Token(good.token.id, "y" * 16), ca.pin)
    h3 = lab.plan.host("h3")
    h3_mesh = Path(h3.state_dir) / "mesh"
    codes = [_join(lab, "h3", wrong, h3_mesh / "pki")[1]["code"] for _ in range(join.MAX_FAILURES)]
    assert codes == ["wrong-secret"] * join.MAX_FAILURES
    for jt in (wrong, good):
        rc, res = _join(lab, "h3", jt, h3_mesh / "pki")
        assert rc == 1 and res["code"] == "rate-limited", res
        assert res["error"].startswith(f"join via {lab.plan.host('h1').address}:{join.JOIN_PORT} refused: "
                                       f"too many failed joins from {h3.address} ({join.MAX_FAILURES} within 60 s); "
                                       f"try again in "), res
        assert res["error"].endswith(" s") and res["error"].isprintable()
        assert not h3_mesh.exists()
    rc, res = _join(lab, "h2", good, Path(lab.plan.host("h2").state_dir) / "mesh" / "pki")
    assert rc == 0, res
