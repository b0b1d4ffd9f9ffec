"""crossnet.mesh.token: token strings, join tokens with a CA pin, the token store."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossnet.errors import ConfigError, CrossnetError
from crossnet.mesh import token as tk

PIN = "sha256:" + "ab" * 32
ALNUM = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=20)


class Clock:
    def __init__(self, t=1_800_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def snapshot(path):
    st_ = os.stat(path)
    return path.read_bytes(), st_.st_mtime_ns, st_.st_ino


# ---------------------------------------------------------------- strings

def test_a_token_id_with_a_trailing_newline_is_refused():
    # the id of a join request is not stripped ("$" matched before the newline)
    with pytest.raises(ConfigError, match=r"^token_id: expected 6 characters a-z0-9$"):
        tk.validate_id("abcdef\n", "token_id")
    assert tk.validate_id("abcdef", "token_id") == "abcdef"


def test_generated_tokens_have_the_bootstrap_token_shape():
    seen = set()
    for _ in range(200):
        t = tk.Token.generate()
        assert re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", str(t))
        seen.add(str(t))
        assert t.secret not in repr(t)
    assert len(seen) == 200


def test_join_token_carries_the_pin_and_round_trips():
    t = tk.Token.generate()
    jt = tk.JoinToken(t, PIN)
    assert str(jt) == f"{t.id}.{t.secret}.{'ab' * 32}"
    assert tk.parse_join_token(str(jt)) == jt
    assert tk.parse_join_token(str(t), ca_pin=PIN) == jt
    assert tk.parse_join_token(str(jt), ca_pin=PIN.upper().replace("SHA256", "sha256")) == jt
    assert tk.join_command(jt, "10.0.0.1") == f"crossnet launch --token {jt} 10.0.0.1"
    assert t.secret not in repr(jt)


def test_join_token_pin_missing_or_conflicting():
    t = tk.Token.generate()
    with pytest.raises(ConfigError, match="^--token: the token carries no CA pin"):
        tk.parse_join_token(str(t))
    with pytest.raises(ConfigError, match="^--ca-pin: differs from the CA pin inside --token"):
        tk.parse_join_token(f"{t}.{'ab' * 32}", ca_pin="sha256:" + "cd" * 32)
    with pytest.raises(ConfigError, match=r"^--token \(ca pin"):
        tk.parse_join_token(f"{t}.abc")


def _message(text):
    try:
        tk.parse_token(text)
    except ConfigError as exc:
        return str(exc)
    raise AssertionError(f"{text!r} parsed")


# one representative of each way a token can be malformed
TOKEN_MESSAGES = {_message(t) for t in ("", "x", "abcdef", "abcdef.x", "abcdef.0123456789abcdef.x.y")}


@settings(max_examples=300)
@given(st.lists(ALNUM, min_size=1, max_size=4).map(".".join) | st.text(max_size=60))
def test_malformed_tokens_name_the_field_and_never_echo_the_input(text):
    """Every refusal is one of a few fixed lines: the input (maybe a secret) is never echoed."""
    try:
        t = tk.parse_token(text)
    except ConfigError as exc:
        assert str(exc) in TOKEN_MESSAGES
        assert str(exc).startswith("--token: ")
        return
    parts = text.strip().split(".")
    assert (t.id, t.secret) == (parts[0], parts[1]) and len(parts) in (2, 3)
    assert re.fullmatch(r"[a-z0-9]{6}", t.id) and re.fullmatch(r"[a-z0-9]{16}", t.secret)


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.ABC-_", max_size=30))
def test_parse_token_field_name_is_the_callers(text):
    try:
        tk.parse_token(text, field="token")
    except ConfigError as exc:
        assert str(exc).startswith("token: ")


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800),
                                           ("3600", 3600), (" 2H ", 7200), (60, 60)])
def test_parse_ttl(text, seconds):
    assert tk.parse_ttl(text) == seconds


@given(st.text(max_size=12) | st.integers())
def test_parse_ttl_refusals_name_the_field(value):
    try:
        s = tk.parse_ttl(value)
    except ConfigError as exc:
        assert str(exc).startswith("--ttl: ")
    else:
        assert 1 <= s <= tk.MAX_TTL


# ---------------------------------------------------------------- store

@pytest.fixture
def store(tmp_path):
    return tk.TokenStore(tmp_path / "mesh" / "tokens.json", clock=Clock())


def test_store_keeps_no_secret_and_is_0600(store):
    t = store.create(ttl=3600, description="for host2")
    raw = store.path.read_text()
    assert t.secret not in raw and str(t) not in raw
    doc = json.loads(raw)
    rec = doc["tokens"][t.id]
    assert rec["verifier"] == hashlib.sha256(b"crossnet-join-token-v1\0" + str(t).encode()).hexdigest()
    assert rec["expires"] - rec["created"] == 3600
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.path.parent).st_mode) == 0o700


def test_default_ttl_is_24h(store):
    t = store.create()
    [row] = store.list()
    assert row["id"] == t.id and row["state"] == "valid"
    rec = json.loads(store.path.read_text())["tokens"][t.id]
    assert rec["expires"] - rec["created"] == 24 * 3600


def test_verify_distinct_errors_and_no_write(store):
    good = store.create(ttl=60)
    revoked = store.create(ttl=60)
    expiring = store.create(ttl=10)
    assert store.revoke(revoked.id) is True
    assert store.revoke(revoked.id) is False
    store.clock.t += 30
    before = snapshot(store.path)
    assert store.verify(good)["id"] == good.id
    assert store.verify(str(good))["id"] == good.id
    cases = {
        "unknown": tk.Token("zzzzzz", good.secret),
        "wrong-secret": tk.Token(good.id, "0" * 16),
        "revoked": revoked,
        "expired": expiring,
    }
    messages = set()
    for code, t in cases.items():
        with pytest.raises(tk.TokenError) as info:
            store.verify(t)
        assert info.value.code == code
        msg = str(info.value)
        assert "\n" not in msg and t.id in msg and t.secret not in msg
        messages.add(msg.split(t.id, 1)[1])
    assert len(messages) == 4
    assert snapshot(store.path) == before  # verification never writes


def test_wrong_secret_is_reported_before_token_state(store):
    """Someone without the secret learns nothing about a revoked/expired token."""
    t = store.create(ttl=10)
    store.revoke(t.id)
    store.clock.t += 100
    with pytest.raises(tk.TokenError) as info:
        store.verify(tk.Token(t.id, "1" * 16))
    assert info.value.code == "wrong-secret"


def test_verify_proof_hmac(store):
    t = store.create()
    msg = b"transcript"
    proof = hmac.new(t.verifier, msg, "sha256").digest()
    assert store.verify_proof(t.id, msg, proof)["id"] == t.id
    with pytest.raises(tk.TokenError) as info:
        store.verify_proof(t.id, msg + b"x", proof)
    assert info.value.code == "wrong-secret"
    with pytest.raises(ConfigError, match="^token_id: "):
        store.verify_proof("BAD", msg, proof)


def test_revoke_and_list(store):
    a = store.create(ttl=100, description="a")
    b = store.create(ttl=1000)
    store.clock.t += 1
    c = store.create(ttl=1)
    store.revoke(b.id)
    store.clock.t += 200
    rows = {r["id"]: r for r in store.list()}
    assert {i: r["state"] for i, r in rows.items()} == {a.id: "expired", b.id: "revoked", c.id: "expired"}
    assert rows[a.id]["description"] == "a" and rows[b.id]["revoked"]
    assert all(set(r) == {"id", "state", "created", "expires", "revoked", "description"} for r in rows.values())
    with pytest.raises(tk.TokenError, match="is not known") as info:
        store.revoke("abc123")
    assert info.value.code == "unknown"
    with pytest.raises(ConfigError, match="^token id: "):
        store.revoke("ABC")


def test_old_ended_tokens_are_pruned_on_create(store):
    old = store.create(ttl=60)
    store.clock.t += tk.PRUNE_AFTER + 120
    new = store.create()
    assert [r["id"] for r in store.list()] == [new.id]
    with pytest.raises(tk.TokenError) as info:
        store.verify(old)
    assert info.value.code == "unknown"


def test_empty_and_corrupt_store(store):
    with pytest.raises(tk.TokenError) as info:
        store.verify(tk.Token.generate())
    assert info.value.code == "unknown"
    assert store.list() == []
    store.path.parent.mkdir(parents=True, exist_ok=True)
    for bad in ("{", '{"version": 2, "tokens": {}}', '{"version": 1, "tokens": {"x": {}}}', "[]"):
        store.path.write_text(bad)
        with pytest.raises(CrossnetError, match="not a crossnet token store"):
            store.verify(tk.Token.generate())
        with pytest.raises(CrossnetError, match="not a crossnet token store"):
            store.create()
        assert store.path.read_text() == bad


def test_create_validates_ttl_and_description(store):
    with pytest.raises(ConfigError, match="^--ttl: "):
        store.create(ttl="forever")
    with pytest.raises(ConfigError, match="^--ttl: "):
        store.create(ttl=0)
    with pytest.raises(ConfigError, match="^--description: "):
        store.create(description="a\nb")
    assert not store.path.exists()
