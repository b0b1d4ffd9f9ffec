"""crossnet.mesh.join: the join handshake, as pure logic and for real over TLS on
127.0.0.1 (random port): a joining host with the right token and pin gets a certificate
for its own key; every refusal is one distinct line and writes nothing on either side."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import socket
import stat
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossnet.errors import ConfigError, CrossnetError
from crossnet.mesh import join, pki
from crossnet.mesh.launch import client_url, peer_url
from crossnet.mesh.token import JoinToken, Token, TokenStore

LOOPBACK = "127.0.0.1"


class Cluster:
    """A serving host: CA, its own member certificate for `address`, a token store and
    a JoinService that records every request it receives (method, path, raw body)."""

    def __init__(self, root, name="host1", address=LOOPBACK):
        self.root = root
        self.pki_dir = root / "pki"
        self.ca = pki.create_ca(self.pki_dir)
        pki.issue_self(self.ca, self.pki_dir, name, address)
        self.tokens = TokenStore(root / "tokens.json")
        self.service = join.JoinService(self.ca, self.tokens,
                                        members=lambda: [{"name": name, "clientURLs": [client_url(address)],
                                                          "peerURLs": [peer_url(address)], "isLearner": False}])
        self.seen: list[tuple[str, str, bytes]] = []
        handle = self.service.handle

        def recording(method, path, body):
            self.seen.append((method, path, body))
            return handle(method, path, body)

        self.service.handle = recording
        self.servers: list[join.JoinServer] = []

    def serve(self, cert=None, key=None) -> tuple[str, int]:
        srv = join.JoinServer(self.service, LOOPBACK, 0, str(cert or self.pki_dir / pki.MEMBER_CERT),
                              str(key or self.pki_dir / pki.MEMBER_KEY)).start()
        self.servers.append(srv)
        return LOOPBACK, srv.port

    def join_token(self, token: Token) -> JoinToken:
        return JoinToken(token, self.ca.pin)

    def files(self) -> dict:
        out = {}
        for p in sorted(self.root.rglob("*")):
            if p.is_file():
                s = os.stat(p)
                out[str(p.relative_to(self.root))] = (p.read_bytes(), s.st_mtime_ns, s.st_ino)
        return out

    def close(self):
        for srv in self.servers:
            srv.close()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path / "host1")
    yield c
    c.close()


@pytest.fixture
def other_cluster(tmp_path):
    c = Cluster(tmp_path / "other")
    yield c
    c.close()


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def key_material(key) -> list[bytes]:
    """Every form in which a private key could leak into a request body."""
    from cryptography.hazmat.primitives import serialization

    scalar = key.private_numbers().private_value
    raw = scalar.to_bytes(32, "big")
    forms = [raw, raw.hex().encode(), str(scalar).encode(), base64.b64encode(raw),
             key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()),
             key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                               serialization.NoEncryption()),
             pki.key_pem(key)]
    return forms + [base64.b64encode(f) for f in forms[4:6]]


# ---------------------------------------------------------------- over TLS, end to end

def test_join_over_tls_issues_a_cert_for_the_joiners_own_key(cluster, tmp_path):
    server = cluster.serve()
    token = cluster.tokens.create(ttl=600)
    store_before = cluster.tokens.path.read_bytes()
    out = tmp_path / "host2" / "pki"
    result = join.join(server, cluster.join_token(token), "host2", "10.0.0.2", str(out))

    # the joiner holds a certificate of the cluster CA for its own key, name and address
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "member.crt", "member.key"]
    assert mode(out) == 0o700 and mode(out / "member.key") == 0o600
    key = pki.load_key(out / "member.key")
    cert = pki.load_cert(out / "member.crt")
    pki.check_member_cert(cert, cluster.ca.cert, key=key, address="10.0.0.2", name="host2")
    assert pki.ca_pin(pki.load_cert(out / "ca.crt")) == cluster.ca.pin
    assert result.members == [{"name": "host1", "clientURLs": [f"https://{LOOPBACK}:2379"],
                               "peerURLs": [f"https://{LOOPBACK}:2380"], "isLearner": False}]
    assert client_url("fd00::1") == "https://[fd00::1]:2379" and peer_url("fd00::1") == "https://[fd00::1]:2380"

    # what crossed the wire: the CA fetch, a challenge, one join request
    assert [(m, p) for m, p, _ in cluster.seen] == [("GET", "/v1/ca"), ("POST", "/v1/challenge"),
                                                   ("POST", "/v1/join")]
    request = json.loads(cluster.seen[2][2])
    assert set(request) == {"protocol", "token_id", "name", "address", "csr", "nonce", "proof"}
    csr = base64.b64decode(request["csr"])
    wire = b"".join(body for _, _, body in cluster.seen) + csr + base64.b64decode(request["proof"])
    assert b"PRIVATE" not in wire
    for form in key_material(key):
        assert form not in wire
    assert token.secret.encode() not in wire and str(token).encode() not in wire
    # the CSR carries the joiner's public key: the one now certified
    assert pki.spki_der(pki.load_csr(csr).public_key()) == pki.spki_der(key.public_key())
    # a successful join does not touch the token store either (tokens are multi-use until expiry)
    assert cluster.tokens.path.read_bytes() == store_before


def test_the_same_token_joins_several_hosts(cluster, tmp_path):
    server = cluster.serve()
    jt = cluster.join_token(cluster.tokens.create())
    certs = [join.join(server, jt, f"h{i}", f"10.0.0.{i}", str(tmp_path / f"h{i}")).cert for i in (2, 3)]
    assert certs[0].serial_number != certs[1].serial_number


def _refusal_cases(cluster, other):
    good = cluster.tokens.create(ttl=600)
    revoked = cluster.tokens.create(ttl=600)
    cluster.tokens.revoke(revoked.id)
    # created two days ago with a 1 h lifetime: expired for the server's real clock
    expired = TokenStore(cluster.tokens.path, clock=lambda: time.time() - 2 * 86400).create(ttl=3600)
    foreign = other.tokens.create(ttl=600)
    return {
        "wrong-secret": cluster.join_token(Token(good.id, "0" * 16)),
        "unknown": cluster.join_token(Token("zz99zz", good.secret)),
        "expired": cluster.join_token(expired),
        "revoked": cluster.join_token(revoked),
        # a token of another cluster (its own pin): refused by the joiner before sending anything
        "ca-pin-mismatch": other.join_token(foreign),
    }


def test_refusals_are_distinct_one_line_and_change_nothing(cluster, other_cluster, tmp_path):
    server = cluster.serve()
    cases = _refusal_cases(cluster, other_cluster)
    messages = {}
    for code, jt in cases.items():
        cluster.seen.clear()
        before = cluster.files()
        out = tmp_path / f"joiner-{code}"
        with pytest.raises(join.JoinRefused) as info:
            join.join(server, jt, "host2", "10.0.0.2", str(out))
        exc = info.value
        assert exc.code == code, str(exc)
        msg = str(exc)
        assert "\n" not in msg and jt.token.secret not in msg
        messages[code] = msg
        assert not out.exists(), f"{code}: joiner wrote {list(out.rglob('*'))}"
        assert cluster.files() == before, f"{code}: serving host changed"
        if code == "ca-pin-mismatch":
            assert [(m, p) for m, p, _ in cluster.seen] == [("GET", "/v1/ca")]  # no token id, no CSR sent
            assert other_cluster.ca.pin in msg and cluster.ca.pin in msg
        else:
            assert [p for _, p, _ in cluster.seen] == ["/v1/ca", "/v1/challenge", "/v1/join"]
    assert "wrong secret" in messages["wrong-secret"]
    assert "not known" in messages["unknown"]
    assert "expired at" in messages["expired"]
    assert "revoked at" in messages["revoked"]
    assert "belongs to another cluster" in messages["ca-pin-mismatch"]
    assert len(set(messages.values())) == len(messages)


def test_impostor_with_the_public_ca_but_no_cluster_cert_is_refused(cluster, other_cluster, tmp_path):
    """Anyone can copy ca.crt (it is public) and serve it; without a certificate of that CA
    the TLS step fails and the joiner sends neither its token id nor a proof."""
    impostor = join.JoinService(cluster.ca, cluster.tokens)  # serves the right CA document...
    seen = []
    handle = impostor.handle
    impostor.handle = lambda m, p, b: (seen.append((m, p)), handle(m, p, b))[1]
    srv = join.JoinServer(impostor, LOOPBACK, 0, str(other_cluster.pki_dir / pki.MEMBER_CERT),
                          str(other_cluster.pki_dir / pki.MEMBER_KEY)).start()  # ...with another CA's cert
    try:
        with pytest.raises(join.JoinRefused) as info:
            join.join((LOOPBACK, srv.port), cluster.join_token(cluster.tokens.create()), "host2", "10.0.0.2",
                      str(tmp_path / "j"))
    finally:
        srv.close()
    assert info.value.code == "bad-server-cert"
    assert "nothing was sent" in str(info.value)
    assert seen == [("GET", "/v1/ca")]
    assert not (tmp_path / "j").exists()


def test_server_cert_must_name_the_address_joined_through(cluster, tmp_path):
    """A cluster certificate of another host (SAN 10.9.9.9) does not vouch for 127.0.0.1."""
    key = pki.generate_key()
    pki.save_member(tmp_path / "elsewhere", key, cluster.ca.issue(pki.make_csr(key, "h9"), "h9", "10.9.9.9"),
                    cluster.ca.cert)
    server = cluster.serve(tmp_path / "elsewhere" / pki.MEMBER_CERT, tmp_path / "elsewhere" / pki.MEMBER_KEY)
    with pytest.raises(join.JoinRefused) as info:
        join.request_join(server, cluster.join_token(cluster.tokens.create()), "host2", "10.0.0.2")
    assert info.value.code == "bad-server-cert"
    assert [p for _, p, _ in cluster.seen] == ["/v1/ca"]


def test_already_joined_host_is_refused_before_any_traffic(cluster, tmp_path):
    server = cluster.serve()
    jt = cluster.join_token(cluster.tokens.create())
    out = tmp_path / "j"
    join.join(server, jt, "host2", "10.0.0.2", str(out))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    cluster.seen.clear()
    with pytest.raises(pki.PkiError, match="already holds a member certificate"):
        join.join(server, jt, "host2", "10.0.0.2", str(out))
    assert cluster.seen == []
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_join_over_ipv6_loopback(tmp_path):
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no ::1")
    c = Cluster(tmp_path / "v6", address="::1")
    srv = join.JoinServer(c.service, "::1", 0, str(c.pki_dir / pki.MEMBER_CERT), str(c.pki_dir / pki.MEMBER_KEY))
    srv.start()
    try:
        jt = c.join_token(c.tokens.create())
        res = join.join(f"[::1]:{srv.port}", jt, "host2", "fd00::2", str(tmp_path / "j"))
    finally:
        srv.close()
    pki.check_member_cert(res.cert, c.ca.cert, key=res.key, address="fd00::2")


def test_server_bug_is_one_line_not_a_dropped_connection(cluster, tmp_path):
    def members():
        raise RuntimeError("boom")

    cluster.service.members = members
    server = cluster.serve()
    with pytest.raises(join.JoinRefused, match=r"refused: internal error: RuntimeError: boom$") as info:
        join.join(server, cluster.join_token(cluster.tokens.create()), "host2", "10.0.0.2", str(tmp_path / "j"))
    assert info.value.code == "server-error" and not (tmp_path / "j").exists()


def test_unreachable_endpoint_is_one_line(tmp_path):
    s = socket.socket()
    s.bind((LOOPBACK, 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    jt = JoinToken(Token.generate(), "sha256:" + "00" * 32)
    with pytest.raises(CrossnetError, match=rf"^cannot reach the join endpoint at 127.0.0.1:{port}: ") as info:
        join.join((LOOPBACK, port), jt, "host2", "10.0.0.2", str(tmp_path / "j"))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "j").exists()


def test_oversized_request_is_refused(cluster):
    import http.client
    import ssl

    host, port = cluster.serve()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=cluster.ca.cert_pem.decode())
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=5)
    conn.putrequest("POST", "/v1/join")  # declares a huge body: refused before reading it
    conn.putheader("Content-Length", str(join.MAX_BODY + 1))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 400 and json.loads(resp.read())["error"] == "request body too large"
    conn.close()
    assert cluster.seen == []


def test_joiner_in_its_own_process(cluster, tmp_path):
    """The joining side as a separate program (another host's crossnet): key made and kept there."""
    host, port = cluster.serve()
    jt = cluster.join_token(cluster.tokens.create())
    out = tmp_path / "proc" / "pki"
    code = ("import sys; from crossnet.mesh import join, token; "
            "r = join.join(sys.argv[1], token.parse_join_token(sys.argv[2]), 'host5', '10.0.0.5', sys.argv[3]); "
            "print(r.cert.serial_number)")
    proc = subprocess.run([sys.executable, "-c", code, f"{host}:{port}", str(jt), str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    cert = pki.load_cert(out / "member.crt")
    assert str(cert.serial_number) == proc.stdout.strip()
    assert mode(out / "member.key") == 0o600
    pki.check_member_cert(cert, cluster.ca.cert, key=pki.load_key(out / "member.key"), address="10.0.0.5")
    # and the refusal path of the same program: exit with the one line, nothing written
    bad = JoinToken(Token(jt.token.id, "1" * 16), jt.pin)
    proc = subprocess.run([sys.executable, "-c", code, f"{host}:{port}", str(bad), str(tmp_path / "bad")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "wrong secret" in proc.stderr
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------- pure logic (JoinService.handle)

def _request(cluster, token, name="host2", address="10.0.0.2", key=None, pin=None):
    status, doc = cluster.service.handle("POST", "/v1/challenge", b"")
    assert status == 200
    jt = JoinToken(token, pin or cluster.ca.pin)
    return join.make_join_request(jt, doc["nonce"], name, address, key or pki.generate_key())


def test_handle_issues_and_nonce_is_single_use(cluster):
    token = cluster.tokens.create()
    key = pki.generate_key()
    req = _request(cluster, token, key=key)
    body = json.dumps(req).encode()
    status, doc = cluster.service.handle("POST", "/v1/join", body)
    assert status == 200, doc
    res = join.check_join_response(doc, cluster.ca.pin, key, "host2", "10.0.0.2", "test")
    assert pki.spki_der(res.cert.public_key()) == pki.spki_der(key.public_key())
    status, doc = cluster.service.handle("POST", "/v1/join", body)  # replay
    assert (status, doc["code"]) == (403, "bad-nonce")
    status, doc = cluster.service.handle("POST", "/v1/join", json.dumps({**req, "nonce": "f" * 32}).encode())
    assert (status, doc["code"]) == (403, "bad-nonce")


def test_nonce_expires(cluster):
    now = [1000.0]
    cluster.service.clock = lambda: now[0]
    req = _request(cluster, cluster.tokens.create())
    now[0] += join.NONCE_TTL + 1
    status, doc = cluster.service.handle("POST", "/v1/join", json.dumps(req).encode())
    assert (status, doc["code"]) == (403, "bad-nonce")


def test_proof_covers_every_field_and_the_pin(cluster, other_cluster):
    """A request altered after signing, or signed for another cluster's pin, is refused."""
    token = cluster.tokens.create()
    other_csr = base64.b64encode(pki.make_csr(pki.generate_key(), "host2")).decode()
    for change in ({"name": "host9"}, {"address": "10.0.0.9"}, {"csr": other_csr}):
        req = {**_request(cluster, token), **change}
        status, doc = cluster.service.handle("POST", "/v1/join", json.dumps(req).encode())
        assert (status, doc["code"]) == (403, "wrong-secret"), change
    req = _request(cluster, token, pin=other_cluster.ca.pin)
    status, doc = cluster.service.handle("POST", "/v1/join", json.dumps(req).encode())
    assert (status, doc["code"]) == (403, "wrong-secret")


@pytest.mark.parametrize("change, field", [
    ({"protocol": "v0"}, "protocol"), ({"token_id": "BAD!"}, "token_id"), ({"name": "Host_1"}, "name"),
    ({"address": "224.0.0.1"}, "address"), ({"address": "host"}, "address"), ({"csr": "!!"}, "csr"),
    ({"csr": None}, "csr"), ({"proof": ""}, "proof"), ({"nonce": ""}, "nonce"),
])
def test_bad_requests_name_the_field_and_keep_the_nonce(cluster, change, field):
    req = {**_request(cluster, cluster.tokens.create()), **change}
    status, doc = cluster.service.handle("POST", "/v1/join", json.dumps(req).encode())
    assert status == 400 and doc["code"] == "bad-request" and doc["error"].startswith(f"{field}: "), doc


def test_bad_csr_with_valid_proof_is_a_400(cluster):
    token = cluster.tokens.create()
    req = _request(cluster, token)
    csr = b"\x30\x03\x02\x01\x00"
    jt = JoinToken(token, cluster.ca.pin)
    req["csr"] = base64.b64encode(csr).decode()
    req["proof"] = base64.b64encode(join.make_proof(jt.token, join.transcript(
        cluster.ca.pin, req["nonce"], token.id, req["name"], req["address"], csr))).decode()
    released = []
    cluster.service.admit = lambda name, address: lambda: released.append((name, address))
    status, doc = cluster.service.handle("POST", "/v1/join", json.dumps(req).encode())
    assert status == 400 and doc["error"].startswith("csr: "), doc
    assert released == [("host2", "10.0.0.2")]  # what the admit hook reserved is given back


@pytest.mark.parametrize("method, path, body, status", [
    ("GET", "/v1/nope", b"", 404), ("POST", "/v1/join", b"{", 400), ("POST", "/v1/join", b"[]", 400),
    ("GET", "/v1/join", b"", 404),
])
def test_handle_bad_paths_and_bodies(cluster, method, path, body, status):
    got, doc = cluster.service.handle(method, path, body)
    assert got == status and doc["code"] == "bad-request" and "\n" not in doc["error"]


def test_check_join_response_refuses_bad_answers(cluster, other_cluster):
    key = pki.generate_key()
    good = pki.cert_pem(cluster.ca.issue(pki.make_csr(key, "host2"), "host2", "10.0.0.2")).decode()
    ca = cluster.ca.cert_pem.decode()
    pin = cluster.ca.pin
    ok = join.check_join_response({"cert": good, "ca": ca, "members": []}, pin, key, "host2", "10.0.0.2", "t")
    assert ok.cert.serial_number
    other_key_cert = pki.cert_pem(cluster.ca.issue(pki.make_csr(pki.generate_key(), "host2"), "host2",
                                                   "10.0.0.2")).decode()
    foreign = pki.cert_pem(other_cluster.ca.issue(pki.make_csr(key, "host2"), "host2", "10.0.0.2")).decode()
    cases = [
        ({"cert": other_key_cert, "ca": ca}, "bad-response", "does not certify this host's key"),
        ({"cert": good, "ca": other_cluster.ca.cert_pem.decode()}, "ca-pin-mismatch", "another cluster"),
        ({"cert": foreign, "ca": ca}, "bad-response", "not signed by the cluster CA"),
        ({"cert": "junk", "ca": ca}, "bad-response", "not a PEM"),
        ({"ca": ca}, "bad-response", "malformed"),
        ([], "bad-response", "malformed"),
    ]
    for doc, code, text in cases:
        with pytest.raises(join.JoinRefused, match=text) as info:
            join.check_join_response(doc, pin, key, "host2", "10.0.0.2", "t")
        assert info.value.code == code
    with pytest.raises(join.JoinRefused, match="does not name address 10.0.0.3"):
        join.check_join_response({"cert": good, "ca": ca}, pin, key, "host2", "10.0.0.3", "t")


def test_admit_hook_refuses_after_the_proof_and_before_signing(cluster, tmp_path):
    """The launch command's member-list check: a taken name is refused, nothing issued."""
    calls = []

    def admit(name, address):
        calls.append((name, address))
        if name == "host1":
            raise join.JoinRefused("conflict", f"host name {name} is already a member")

    cluster.service.admit = admit
    server = cluster.serve()
    jt = cluster.join_token(cluster.tokens.create())
    with pytest.raises(join.JoinRefused, match="host name host1 is already a member") as info:
        join.join(server, jt, "host1", "10.0.0.7", str(tmp_path / "dup"))
    assert info.value.code == "conflict" and not (tmp_path / "dup").exists()
    # a wrong secret never reaches the hook
    with pytest.raises(join.JoinRefused):
        join.join(server, JoinToken(Token(jt.token.id, "2" * 16), jt.pin), "host3", "10.0.0.3", str(tmp_path / "x"))
    join.join(server, jt, "host2", "10.0.0.2", str(tmp_path / "ok"))
    assert calls == [("host1", "10.0.0.7"), ("host2", "10.0.0.2")]


def test_service_needs_the_ca_key(cluster):
    with pytest.raises(pki.PkiError, match="needs the CA key"):
        join.JoinService(pki.CA(cluster.ca.cert, None), cluster.tokens)


_FIELD = st.text(max_size=8)


@given(st.tuples(_FIELD, _FIELD, _FIELD, _FIELD, _FIELD, st.binary(max_size=8)),
       st.tuples(_FIELD, _FIELD, _FIELD, _FIELD, _FIELD, st.binary(max_size=8)))
def test_transcript_is_injective(a, b):
    assert (join.transcript(*a) == join.transcript(*b)) == (a == b)


@given(st.text(max_size=30))
def test_parse_server(text):
    try:
        host, port = join.parse_server(text)
    except ConfigError as exc:
        assert str(exc).startswith("ADDR: ")
    else:
        assert 1 <= port <= 65535 and str(ipaddress.ip_address(host)) == host


def test_parse_server_forms():
    assert join.parse_server("10.0.0.1") == ("10.0.0.1", join.JOIN_PORT)
    assert join.parse_server("10.0.0.1:7000") == ("10.0.0.1", 7000)
    assert join.parse_server("[fd00::1]:7000") == ("fd00::1", 7000)
    assert join.parse_server("fd00::1") == ("fd00::1", join.JOIN_PORT)
    for bad in ("host1", "10.0.0.1:0", "10.0.0.1:x", "[fd00::1", ""):
        with pytest.raises(ConfigError, match="^ADDR: "):
            join.parse_server(bad)


MEMBER = {"name": "host1", "clientURLs": ["https://10.0.0.1:2379"], "peerURLs": ["https://10.0.0.1:2380"],
          "isLearner": False}


@pytest.mark.parametrize("members, field", [
    ("x", "members: expected a list"),
    ([MEMBER] * (join.MAX_MEMBERS + 1), "members: expected a list"),
    (["host1"], "members[0]: expected an object"),
    ([MEMBER, {**MEMBER, "name": "h2\n"}], "members[1].name"),
    ([{**MEMBER, "name": 7}], "members[0].name"),
    ([{**MEMBER, "clientURLs": "https://10.0.0.1:2379"}], "members[0].clientURLs: expected a list"),
    ([{**MEMBER, "clientURLs": ["http://10.0.0.1:2379"]}], "members[0].clientURLs[0]: expected https://IP:PORT"),
    ([{**MEMBER, "clientURLs": ["unix:///run/docker.sock"]}], "members[0].clientURLs[0]"),
    ([{**MEMBER, "clientURLs": ["https://etcd.example.com:2379"]}], "members[0].clientURLs[0]"),
    ([{**MEMBER, "clientURLs": ["https://10.0.0.1:2379,https://10.0.0.9:2379"]}], "members[0].clientURLs[0]"),
    ([{**MEMBER, "clientURLs": ["https://user:pw@10.0.0.1:2379"]}], "members[0].clientURLs[0]"),
    ([{**MEMBER, "clientURLs": ["https://10.0.0.1:2379/v3"]}], "members[0].clientURLs[0]"),
    ([{**MEMBER, "clientURLs": ["https://10.0.0.1:0"]}], "members[0].clientURLs[0]"),
    ([{**MEMBER, "clientURLs": ["https://224.0.0.1:2379"]}], "members[0].clientURLs[0]"),
    ([{**MEMBER, "peerURLs": ["https://10.0.0.1:2380\n"]}], "members[0].peerURLs[0]"),
    ([{**MEMBER, "peerURLs": ["https://fd00::1:2380"]}], "members[0].peerURLs[0]"),  # IPv6 without brackets
    ([{**MEMBER, "peerURLs": ["https://[fe80::1%eth0]:2380"]}], "members[0].peerURLs[0]"),
    ([{**MEMBER, "peerURLs": ["https://[10.0.0.1]:2380"]}], "members[0].peerURLs[0]"),
    ([{**MEMBER, "peerURLs": ["https://10.0.0.1:02380"]}], "members[0].peerURLs[0]"),
    ([{**MEMBER, "peerURLs": ["https://10.0.0.1:2380"] * (join.MAX_URLS + 1)}], "members[0].peerURLs: expected a list"),
    ([{**MEMBER, "isLearner": "no"}], "members[0].isLearner: expected true or false"),
])
def test_check_join_response_refuses_a_hostile_member_list(cluster, members, field):
    """The member list is what the joiner's etcd client connects to and what launch.json
    keeps: every entry is checked before anything is saved (https://IP:PORT URLs only)."""
    key = pki.generate_key()
    good = pki.cert_pem(cluster.ca.issue(pki.make_csr(key, "host2"), "host2", "10.0.0.2")).decode()
    doc = {"cert": good, "ca": cluster.ca.cert_pem.decode(), "members": members}
    with pytest.raises(join.JoinRefused) as info:
        join.check_join_response(doc, cluster.ca.pin, key, "host2", "10.0.0.2", "t")
    assert info.value.code == "bad-response"
    assert str(info.value).startswith(f"t: malformed member list: {field}") and "\n" not in str(info.value)


def test_check_join_response_keeps_only_the_known_fields_of_each_member(cluster):
    key = pki.generate_key()
    good = pki.cert_pem(cluster.ca.issue(pki.make_csr(key, "host2"), "host2", "10.0.0.2")).decode()
    members = [{**MEMBER, "extra": "x" * 100}, {"name": "", "peerURLs": ["https://[fd00::3]:2380"]}]
    res = join.check_join_response({"cert": good, "ca": cluster.ca.cert_pem.decode(), "members": members},
                                   cluster.ca.pin, key, "host2", "10.0.0.2", "t")
    assert res.members == [MEMBER, {"name": "", "clientURLs": [], "peerURLs": ["https://[fd00::3]:2380"],
                                    "isLearner": False}]


def _trickle(addr, stop_after: float) -> float:
    """A client that completes TLS, then sends a request line one byte at a time: seconds
    until the server closed it (or stop_after)."""
    import ssl

    from tests.unit.trickle import trickle

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    t0 = time.monotonic()
    with socket.create_connection(addr, timeout=5) as raw, ctx.wrap_socket(raw) as s:
        return trickle(s, b"GET /v1/ca HTTP/1.1\r\nX-Pad: " + b"a" * 10_000, t0, stop_after)


def test_a_connection_that_trickles_is_cut_at_the_deadline(cluster, monkeypatch):
    """Every read within the socket timeout, never a whole request: the connection (and
    its thread) ends at the connection deadline, not whenever the client stops."""
    monkeypatch.setattr(join, "TIMEOUT", 1.0)
    monkeypatch.setattr(join._Handler, "timeout", 1.0)
    monkeypatch.setattr(join, "CONNECTION_DEADLINE", 1.5)
    addr = cluster.serve()
    assert _trickle(addr, stop_after=6.0) < 4.0


def test_connections_beyond_the_limit_are_closed_at_once(cluster, monkeypatch):
    """Idle connections (no TLS handshake) hold at most MAX_CONNECTIONS threads; the next
    one is closed at once, and a join works again once they are gone."""
    monkeypatch.setattr(join, "MAX_CONNECTIONS", 3)
    addr = cluster.serve()
    idle = [socket.create_connection(addr, timeout=5) for _ in range(3)]
    try:
        time.sleep(0.2)
        with socket.create_connection(addr, timeout=5) as extra:
            assert extra.recv(1) == b""  # closed by the server, not left waiting
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 5
    while True:
        try:
            join.request_join(addr, cluster.join_token(cluster.tokens.create()), "host2", "10.0.0.2")
            break
        except CrossnetError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_a_servers_refusal_reaches_the_terminal_as_printable_text():
    """Step 1 runs before anything is verified: whatever answers at ADDR chooses the error
    text and code the joiner prints. Control characters (terminal escapes) are escaped,
    the code is a known-looking word or bad-response."""
    exc = join._refusal(403, {"error": "\x1b]0;owned\x07token \x1b[2Jgone\r\nnext", "code": "x\x1b[2J"}, "10.0.0.1:6790")
    assert str(exc).isprintable() and "\x1b" not in str(exc)
    assert str(exc) == "join via 10.0.0.1:6790 refused: \\x1b]0;owned\\x07token \\x1b[2Jgone next"
    assert exc.code == "bad-response"
    assert join._refusal(403, {"error": "token abc: wrong secret", "code": "wrong-secret"}, "w").code == "wrong-secret"
    assert join._refusal(500, {"error": "x", "code": "a" * 65}, "w").code == "bad-response"


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "169.254.7.7", "fe80::2"])
def test_a_join_for_a_loopback_or_link_local_address_is_refused_and_issues_nothing(cluster, address):
    """The server refuses it whatever the joiner's own code checked: 400 naming the field."""
    token = cluster.tokens.create()
    req = _request(cluster, token)  # signed for 10.0.0.2 by the real client...
    req["address"] = address  # ...then rewritten by a hostile one
    before = cluster.files()
    status, doc = cluster.service.handle("POST", "/v1/join", json.dumps(req).encode())
    assert (status, doc["code"]) == (400, "bad-request")
    assert doc["error"].startswith(f"address: {address} is a ") and "\n" not in doc["error"]
    assert cluster.files() == before
    with pytest.raises(ConfigError, match=r"^address: .* expected the joining host's underlay address$"):
        join.make_join_request(JoinToken(token, cluster.ca.pin), "0" * 32, "host2", address, pki.generate_key())


def test_one_source_cannot_hold_every_connection(cluster, monkeypatch):
    """MAX_PER_SOURCE idle connections from one address are all it gets (the next is closed
    at once), while a join from another address is served; before, MAX_CONNECTIONS idle
    connections from one client had locked every joiner out for their 60 s."""
    monkeypatch.setattr(join, "MAX_PER_SOURCE", 2)
    addr = cluster.serve()
    idle = [socket.create_connection(addr, timeout=5, source_address=("127.0.0.2", 0)) for _ in range(2)]
    try:
        with socket.create_connection(addr, timeout=2, source_address=("127.0.0.2", 0)) as extra:
            assert extra.recv(1) == b""  # closed by the server, not left waiting
        res = join.request_join(addr, cluster.join_token(cluster.tokens.create()), "host2", "10.0.0.2")
        assert res.cert is not None  # from 127.0.0.1, another source
    finally:
        for s in idle:
            s.close()



# ---------------------------------------------------------------- per-source rate limit of failed joins

def _bad_proofs(addr, cluster, token_id: str, n: int, source: str = "127.0.0.2") -> list[tuple[int, str, str | None]]:
    """A client guessing secrets as fast as the server answers: on one keep-alive TLS
    connection from `source`, n times a challenge and a join whose proof is made with a
    wrong secret. (status, code, Retry-After) of each attempt's last answer."""
    import http.client
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    conn = http.client.HTTPSConnection(*addr, context=ctx, timeout=5, source_address=(source, 0))
    guess = JoinToken(Token(token_id, "0" * 16), cluster.ca.pin)
    key = pki.generate_key()
    out = []

    def post(path, doc):
        body = json.dumps(doc).encode()
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read()), resp.getheader("Retry-After")

    try:
        for _ in range(n):
            status, doc, retry = post("/v1/challenge", {})
            if status == 200:
                status, doc, retry = post("/v1/join", join.make_join_request(guess, doc["nonce"], "host2",
                                                                             "10.0.0.2", key))
            out.append((status, doc.get("code"), retry))
    finally:
        conn.close()
    return out


def _counting_verifications(cluster) -> list:
    """Every proof the token store evaluates (a token lookup and an HMAC each)."""
    calls = []
    verify = cluster.tokens.verify_proof
    cluster.tokens.verify_proof = lambda *a: (calls.append(a[0]), verify(*a))[1]
    return calls


def test_repeated_bad_proofs_from_one_source_are_refused_without_evaluation(cluster):
    """50 wrong secrets in a row from one address: the first MAX_FAILURES are evaluated
    (wrong-secret), every later one is refused with 429 `rate-limited` and Retry-After,
    without a token lookup; before, all 50 were evaluated, as fast as the server answered."""
    addr = cluster.serve()
    token = cluster.tokens.create()
    verified = _counting_verifications(cluster)
    got = _bad_proofs(addr, cluster, token.id, 50)
    n = join.MAX_FAILURES
    assert [(s, c) for s, c, _ in got[:n]] == [(403, "wrong-secret")] * n
    assert [(s, c) for s, c, _ in got[n:]] == [(429, "rate-limited")] * (50 - n)
    assert all(r is not None and 1 <= int(r) <= join.FAILURE_BACKOFF for _, _, r in got[n:])
    assert verified == [token.id] * n
    # another source still joins meanwhile, with the same token
    res = join.request_join(addr, cluster.join_token(token), "host3", "10.0.0.3")
    assert res.cert is not None and len(verified) == n + 1


def test_a_rate_limited_joiner_gets_one_line_with_when_to_retry(cluster, tmp_path):
    """Through the joiner's own code: after MAX_FAILURES wrong secrets its next join (even
    with the right token) is refused in step 1 with one printable line saying when to
    retry, nothing evaluated, nothing written; once the back-off is over it joins."""
    from crossnet.ratelimit import FailureLimit

    addr = cluster.serve()
    now = [5000.0]
    cluster.servers[-1].failures = FailureLimit(join.MAX_FAILURES, join.FAILURE_WINDOW, join.FAILURE_BACKOFF,
                                                join.MAX_SOURCES, clock=lambda: now[0])
    jt = cluster.join_token(cluster.tokens.create())
    wrong = JoinToken(Token(jt.token.id, "9" * 16), jt.pin)
    for _ in range(join.MAX_FAILURES):
        with pytest.raises(join.JoinRefused) as info:
            join.request_join(addr, wrong, "host2", "10.0.0.2")
        assert info.value.code == "wrong-secret"
        now[0] += 1
    verified = _counting_verifications(cluster)
    cluster.seen.clear()
    for token in (wrong, jt):
        with pytest.raises(join.JoinRefused) as info:
            join.join(addr, token, "host2", "10.0.0.2", str(tmp_path / "j"))
        assert info.value.code == "rate-limited"
        assert str(info.value) == (f"join via {addr[0]}:{addr[1]} refused: too many failed joins from 127.0.0.1 "
                                   f"({join.MAX_FAILURES} within 60 s); try again in 59 s")
        assert str(info.value).isprintable()
    assert verified == [] and cluster.seen == [] and not (tmp_path / "j").exists()
    now[0] += 59  # the last failure was at 5004: blocked until 5064
    res = join.join(addr, jt, "host2", "10.0.0.2", str(tmp_path / "j"))
    assert res.cert is not None and verified == [jt.token.id]


def test_successes_are_not_counted(cluster):
    """One failure short of the limit, then any number of joins: none is refused."""
    addr = cluster.serve()
    jt = cluster.join_token(cluster.tokens.create())
    wrong = JoinToken(Token(jt.token.id, "8" * 16), jt.pin)
    for _ in range(join.MAX_FAILURES - 1):
        with pytest.raises(join.JoinRefused, match="wrong secret"):
            join.request_join(addr, wrong, "host2", "10.0.0.2")
    for i in range(join.MAX_FAILURES + 1):
        assert join.request_join(addr, jt, f"h{i}", f"10.0.0.{10 + i}").cert is not None


def test_a_conflict_after_a_good_proof_is_not_a_failure(cluster):
    """The admit hook's refusal (name or address taken) comes after a valid proof: a
    host retrying it is not rate-limited."""
    cluster.service.admit = lambda name, address: (_ for _ in ()).throw(join.JoinRefused("conflict", "taken"))
    addr = cluster.serve()
    jt = cluster.join_token(cluster.tokens.create())
    for _ in range(join.MAX_FAILURES + 2):
        with pytest.raises(join.JoinRefused) as info:
            join.request_join(addr, jt, "host2", "10.0.0.2")
        assert info.value.code == "conflict"


def test_connections_faster_than_the_rate_are_closed_before_the_tls_handshake(cluster, monkeypatch):
    """Beyond CONNECT_BURST new connections (refilled at CONNECT_RATE per s) from one
    address, the next is closed at once, before any TLS handshake; another address
    still joins."""
    monkeypatch.setattr(join, "CONNECT_BURST", 3)
    monkeypatch.setattr(join, "CONNECT_RATE", 0.001)
    addr = cluster.serve()
    for _ in range(3):  # accepted: the server waits for a TLS ClientHello
        with socket.create_connection(addr, timeout=5, source_address=("127.0.0.2", 0)) as s:
            s.settimeout(0.3)
            with pytest.raises(socket.timeout):
                s.recv(1)
    with socket.create_connection(addr, timeout=5, source_address=("127.0.0.2", 0)) as extra:
        assert extra.recv(1) == b""  # closed by the server without a word of TLS
    res = join.request_join(addr, cluster.join_token(cluster.tokens.create()), "host2", "10.0.0.2")
    assert res.cert is not None  # from 127.0.0.1: its own bucket
