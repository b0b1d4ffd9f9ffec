"""Where a host keeps its mesh credentials: `<state-dir>/mesh/` (docs/mesh.md).

    mesh/                0700
        tokens.json      0600  join tokens (verifiers only) — hosts that sign joins
        pki/             0700
            ca.crt       0644  cluster CA certificate
            ca.key       0600  cluster CA key — hosts that sign joins
            member.crt   0644  this host's certificate (etcd peer/client TLS, join endpoint)
            member.key   0600  this host's key, made here, never sent
"""

from __future__ import annotations

import os
from pathlib import Path

from crossnet.errors import CrossnetError
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
