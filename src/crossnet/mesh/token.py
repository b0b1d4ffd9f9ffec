"""Join tokens of a crossnet mesh (docs/mesh.md), after kubeadm's bootstrap tokens.

A *token* is `<id>.<secret>`: id 6 characters [a-z0-9] (public, names the token in
`list`/`revoke` and on the wire), secret 16 characters [a-z0-9] (~82 bits from
`secrets`). The *join token* a user copies is the token with the cluster CA's pin
appended — `<id>.<secret>.<64 hex>` — so one string both authenticates the joining host
(the secret) and authenticates the cluster to it (the pin, kubeadm's
--discovery-token-ca-cert-hash): `crossnet launch --token <join token> ADDR`.

The store (`tokens.json`, 0600, in the mesh state dir) never holds a secret: it keeps
`verifier = SHA-256("crossnet-join-token-v1\\0" + id + "." + secret)`, the key of the
handshake's HMAC proof (crossnet.mesh.join), with creation/expiry/revocation times.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import json
import os
import re
import secrets
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from crossnet.errors import ConfigError, CrossnetError
from crossnet.mesh.pki import PIN_PREFIX, parse_pin

ID_LEN = 6
SECRET_LEN = 16
ALPHABET = string.ascii_lowercase + string.digits
DEFAULT_TTL = 24 * 3600
MAX_TTL = 365 * 24 * 3600
PRUNE_AFTER = 7 * 24 * 3600  # expired/revoked tokens are forgotten this long after
TOKENS_FILE = "tokens.json"
_ID_RE = re.compile(rf"[a-z0-9]{{{ID_LEN}}}")  # fullmatch: "$" accepts a trailing newline
_SECRET_RE = re.compile(rf"[a-z0-9]{{{SECRET_LEN}}}")
_VERIFIER_TAG = b"crossnet-join-token-v1\0"


class TokenError(CrossnetError):
    """A token the store refuses. `code` is one of unknown, wrong-secret, revoked, expired."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- token strings

@dataclass(frozen=True)
class Token:
    id: str
    secret: str

    def __str__(self) -> str:
        return f"{self.id}.{self.secret}"

    def __repr__(self) -> str:  # never print the secret by accident
        return f"Token(id={self.id!r}, secret=<hidden>)"

    @property
    def verifier(self) -> bytes:
        return verifier(self.id, self.secret)

    @classmethod
    def generate(cls) -> Token:
        return cls("".join(secrets.choice(ALPHABET) for _ in range(ID_LEN)),
                   "".join(secrets.choice(ALPHABET) for _ in range(SECRET_LEN)))


@dataclass(frozen=True)
class JoinToken:
    token: Token
    pin: str  # "sha256:<hex>"

    def __str__(self) -> str:
        return f"{self.token}.{self.pin[len(PIN_PREFIX):]}"

    def __repr__(self) -> str:
        return f"JoinToken(id={self.token.id!r}, secret=<hidden>, pin={self.pin!r})"


def verifier(token_id: str, secret: str) -> bytes:
    return hashlib.sha256(_VERIFIER_TAG + f"{token_id}.{secret}".encode()).digest()


def validate_id(token_id: Any, field: str = "token id") -> str:
    if not isinstance(token_id, str) or not _ID_RE.fullmatch(token_id):
        raise ConfigError(f"{field}: expected {ID_LEN} characters a-z0-9")
    return token_id


def _split(text: Any, field: str) -> list[str]:
    if not isinstance(text, str):
        raise ConfigError(f"{field}: expected a token <id>.<secret>")
    parts = text.strip().split(".")
    # the messages below never repeat the input: it may hold a secret
    if not _ID_RE.fullmatch(parts[0]):
        raise ConfigError(f"{field}: the token id (before the first '.') must be {ID_LEN} characters a-z0-9")
    if len(parts) < 2 or not _SECRET_RE.fullmatch(parts[1]):
        raise ConfigError(f"{field}: the token secret (after the first '.') must be {SECRET_LEN} characters a-z0-9")
    return parts


def parse_token(text: Any, field: str = "--token") -> Token:
    """`<id>.<secret>` (a join token's pin part, if present, is ignored)."""
    parts = _split(text, field)
    if len(parts) > 3:
        raise ConfigError(f"{field}: expected <id>.<secret>[.<ca pin>], got {len(parts)} '.'-separated parts")
    return Token(parts[0], parts[1])


def parse_join_token(text: Any, ca_pin: str | None = None, field: str = "--token") -> JoinToken:
    """`<id>.<secret>.<pin hex>`, or `<id>.<secret>` with the pin given separately
    (`--ca-pin sha256:…`); when both carry a pin they must agree."""
    parts = _split(text, field)
    if len(parts) > 3:
        raise ConfigError(f"{field}: expected <id>.<secret>.<ca pin>, got {len(parts)} '.'-separated parts")
    embedded = parse_pin(parts[2], f"{field} (ca pin, after the second '.')") if len(parts) == 3 else None
    given = parse_pin(ca_pin) if ca_pin is not None else None
    if embedded is None and given is None:
        raise ConfigError(f"{field}: the token carries no CA pin; use the join token printed by "
                          f"`crossnet token create` (<id>.<secret>.<ca pin>) or add --ca-pin sha256:…")
    if embedded is not None and given is not None and embedded != given:
        raise ConfigError("--ca-pin: differs from the CA pin inside --token")
    return JoinToken(Token(parts[0], parts[1]), embedded or given)  # type: ignore[arg-type]


def join_command(join_token: JoinToken, address: str) -> str:
    """What the first host prints for the others to run."""
    return f"crossnet launch --token {join_token} {address}"


_TTL_RE = re.compile(r"^(\d+)([smhd]?)$")
_TTL_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: Any, field: str = "--ttl") -> int:
    """`90s`, `30m`, `24h`, `7d` or plain seconds → seconds (1 s .. 365 d)."""
    if isinstance(text, int) and not isinstance(text, bool):
        seconds = text
    else:
        m = _TTL_RE.match(str(text).strip().lower()) if isinstance(text, str) else None
        if m is None:
            raise ConfigError(f"{field}: expected a duration like 90s, 30m, 24h or 7d")
        seconds = int(m.group(1)) * _TTL_UNIT[m.group(2)]
    if not 1 <= seconds <= MAX_TTL:
        raise ConfigError(f"{field}: must be between 1s and {MAX_TTL // 86400}d")
    return seconds


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- the store

class TokenStore:
    """tokens.json: {"version": 1, "tokens": {id: {verifier, created, expires, revoked,
    description}}}. Writes are atomic (crossnet.state.write_json_atomic, 0600) under an
    flock; verification only reads, so a refused join changes nothing."""

    def __init__(self, path: str | os.PathLike[str], clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.clock = clock

    # -- file access
    def _load(self) -> dict[str, dict]:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise CrossnetError(f"{self.path}: {exc.strerror}") from None
        try:
            doc = json.loads(raw)
            tokens = doc["tokens"]
            if doc.get("version") != 1 or not isinstance(tokens, dict):
                raise ValueError
            for tid, rec in tokens.items():
                validate_id(tid)
                bytes.fromhex(rec["verifier"])
                float(rec["expires"])
        except (ValueError, KeyError, TypeError, ConfigError):
            raise CrossnetError(f"{self.path}: not a crossnet token store (version 1); refusing every token") from None
        return tokens

    def _save(self, tokens: dict[str, dict]) -> None:
        from crossnet.state import write_json_atomic

        write_json_atomic(self.path, {"version": 1, "tokens": tokens})

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        from crossnet.state import lock_fd

        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = lock_fd(str(self.path) + ".lock")  # 0600, never through a link (every lock of crossnet)
        try:
            yield
        finally:
            os.close(fd)

    # -- operations
    def create(self, ttl: int = DEFAULT_TTL, description: str = "") -> Token:
        ttl = parse_ttl(ttl)
        if not isinstance(description, str) or len(description) > 200 or not description.isprintable():
            raise ConfigError("--description: at most 200 printable characters")
        now = self.clock()
        with self._locked():
            tokens = self._load()
            for tid in [t for t, r in tokens.items() if _ended(r) is not None and _ended(r) + PRUNE_AFTER < now]:
                del tokens[tid]
            token = Token.generate()
            while token.id in tokens:  # 36^6 ids: a collision is rare but must not replace a token
                token = Token.generate()
            tokens[token.id] = {"verifier": token.verifier.hex(), "created": now, "expires": now + ttl,
                                "revoked": None, "description": description}
            self._save(tokens)
        return token

    def revoke(self, token_id: str) -> bool:
        """Revoke a token now; False if it already was. Unknown id: TokenError."""
        validate_id(token_id, "token id")
        with self._locked():
            tokens = self._load()
            rec = tokens.get(token_id)
            if rec is None:
                raise TokenError("unknown", f"token {token_id} is not known to this cluster")
            if rec.get("revoked") is not None:
                return False
            rec["revoked"] = self.clock()
            self._save(tokens)
        return True

    def list(self) -> list[dict]:
        """Every token the store still knows, oldest first (never a secret)."""
        now = self.clock()
        out = []
        for tid, rec in sorted(self._load().items(), key=lambda kv: (kv[1].get("created", 0), kv[0])):
            state = "revoked" if rec.get("revoked") is not None else "expired" if rec["expires"] <= now else "valid"
            out.append({"id": tid, "state": state, "created": _iso(rec.get("created")),
                        "expires": _iso(rec["expires"]), "revoked": _iso(rec.get("revoked")),
                        "description": rec.get("description", "")})
        return out

    def verify(self, token: Token | str) -> dict:
        """Check a token string against the store; raises TokenError (unknown,
        wrong-secret, revoked, expired: distinct one-line messages)."""
        if isinstance(token, str):
            token = parse_token(token)
        return self._check(token.id, lambda v: hmac.compare_digest(v, token.verifier))

    def verify_proof(self, token_id: str, message: bytes, proof: bytes) -> dict:
        """Check proof == HMAC-SHA256(verifier, message) for the stored verifier of
        token_id (the join handshake: the secret itself never travels)."""
        validate_id(token_id, "token_id")
        return self._check(token_id, lambda v: hmac.compare_digest(hmac.new(v, message, "sha256").digest(), proof))

    def _check(self, token_id: str, matches: Callable[[bytes], bool]) -> dict:
        rec = self._load().get(token_id)
        if rec is None:
            raise TokenError("unknown", f"token {token_id} is not known to this cluster")
        # the secret is checked before revealing the token's state to anyone
        if not matches(bytes.fromhex(rec["verifier"])):
            raise TokenError("wrong-secret", f"token {token_id}: wrong secret")
        if rec.get("revoked") is not None:
            raise TokenError("revoked", f"token {token_id} was revoked at {_iso(rec['revoked'])}")
        if rec["expires"] <= self.clock():
            raise TokenError("expired", f"token {token_id} expired at {_iso(rec['expires'])}; "
                                        f"make a new one with `crossnet token create`")
        return {"id": token_id, **rec}


def _ended(rec: dict) -> float | None:
    if rec.get("revoked") is not None:
        return float(rec["revoked"])
    return float(rec["expires"])
