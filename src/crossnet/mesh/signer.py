"""The mesh's certificate signing in a short-lived helper process, so that the
long-running `crossnet launch --foreground` never loads `cryptography` (~8 MB RSS of
the issue-13 budget "etcd member + agent ≤ 80 MB"; docs/mesh.md, "Resources").

- `cert_serial(pem)` / `cert_pin(pem)`: a certificate's serial number and the CA pin
  (sha256 of its SubjectPublicKeyInfo DER) read with a minimal DER walk — what the
  supervisor needs of its own and the CA's certificate, no signature checking (the
  files are its own, checked when they were written).
- `HelperCA`: the join endpoint's CA (`JoinService` asks it for `pin`, `cert_pem`,
  `issue_pem`): signing a CSR runs ``python -m crossnet.mesh.signer`` with the request
  (CA certificate and key included) on its stdin — never on a command line — and the
  certificate on its stdout. The helper validates the CSR exactly as in-process
  signing does (`pki.CA.issue_pem`).
- `write_crl(pki_dir, serials, ca_cert_pem, ca_key_pem)`: the revocation list file,
  signed by the helper (without ca_*: the CA files in pki_dir).

Protocol: one JSON object in, one out: ``{"cert": PEM}`` / ``{"ok": true}`` or
``{"error": text, "kind": "config"|"pki"|"error"}`` (exit 0 either way).
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
from pathlib import Path

from crossnet.errors import ConfigError
from crossnet.mesh import pki

HELPER_TIMEOUT = 30.0


# ---------------------------------------------------------------- DER, just enough

def pem_der(pem: bytes | str, label: str = "CERTIFICATE") -> bytes:
    """The DER bytes of the first PEM block with `label`."""
    text = pem.decode("ascii", "replace") if isinstance(pem, bytes) else pem
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    start = text.find(begin)
    stop = text.find(end, start + 1)
    if start < 0 or stop < 0:
        raise pki.PkiError(f"not a PEM {label.lower()}")
    try:
        return base64.b64decode("".join(text[start + len(begin):stop].split()), validate=True)
    except ValueError:
        raise pki.PkiError(f"PEM {label.lower()}: bad base64") from None


def _tlv(buf: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the DER element at pos."""
    if pos + 2 > len(buf):
        raise pki.PkiError("certificate: truncated DER")
    tag, n = buf[pos], buf[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if not 1 <= k <= 4 or pos + k > len(buf):
            raise pki.PkiError("certificate: bad DER length")
        n = int.from_bytes(buf[pos:pos + k], "big")
        pos += k
    if pos + n > len(buf):
        raise pki.PkiError("certificate: truncated DER")
    return tag, pos, pos + n


def _tbs_fields(der: bytes) -> list[tuple[int, int, int, int]]:
    """(tag, element start, value start, end) of the elements of a certificate's
    TBSCertificate, the optional [0] version skipped: serialNumber, signature, issuer,
    validity, subject, subjectPublicKeyInfo, …"""
    tag, start, _ = _tlv(der, 0)  # Certificate
    if tag != 0x30:
        raise pki.PkiError("certificate: not a DER SEQUENCE")
    tag, pos, end = _tlv(der, start)  # TBSCertificate
    if tag != 0x30:
        raise pki.PkiError("certificate: not a DER SEQUENCE")
    out = []
    while pos < end:
        t, s, e = _tlv(der, pos)
        if not (t == 0xA0 and not out):
            out.append((t, pos, s, e))
        pos = e
    if len(out) < 6 or out[0][0] != 0x02 or out[5][0] != 0x30:
        raise pki.PkiError("certificate: not an X.509 certificate")
    return out


def cert_serial(pem: bytes | str) -> int:
    der = pem_der(pem)
    _, _, s, e = _tbs_fields(der)[0]
    return int.from_bytes(der[s:e], "big", signed=True)


def cert_pin(pem: bytes | str) -> str:
    """pki.ca_pin without cryptography: sha256 of the SubjectPublicKeyInfo DER."""
    der = pem_der(pem)
    _, start, _, end = _tbs_fields(der)[5]
    return pki.PIN_PREFIX + hashlib.sha256(der[start:end]).hexdigest()


def crl_serials(path: str | os.PathLike[str]) -> list[int] | None:
    """pki.crl_serials without cryptography: the serials a PEM CRL file lists (sorted),
    or None if it is missing or unreadable."""
    try:
        der = pem_der(Path(path).read_text(), "X509 CRL")
        tag, start, _ = _tlv(der, 0)  # CertificateList
        tag2, pos, end = _tlv(der, start)  # TBSCertList
        if tag != 0x30 or tag2 != 0x30:
            return None
        fields = []
        while pos < end:
            t, s, e = _tlv(der, pos)
            fields.append((t, s, e))
            pos = e
        if fields and fields[0][0] == 0x02:  # version
            fields = fields[1:]
        # signature, issuer, thisUpdate, [nextUpdate], [revokedCertificates], [[0] extensions]
        rest = fields[3:]
        if rest and rest[0][0] in (0x17, 0x18):
            rest = rest[1:]
        serials: list[int] = []
        if rest and rest[0][0] == 0x30:
            _, pos, end = rest[0]
            while pos < end:
                _, s, e = _tlv(der, pos)  # one revoked entry
                t, vs, ve = _tlv(der, s)
                if t != 0x02:
                    return None
                serials.append(int.from_bytes(der[vs:ve], "big", signed=True))
                pos = e
        return sorted(serials)
    except (OSError, pki.PkiError, UnicodeDecodeError):
        return None


# ---------------------------------------------------------------- calling the helper

def _run(request: dict) -> dict:
    from crossnet import helper

    return helper.run("crossnet.mesh.signer", request, "certificate helper", HELPER_TIMEOUT, {"pki": pki.PkiError})


class HelperCA:
    """The cluster CA for `JoinService`, signing through the helper process."""

    def __init__(self, cert_pem: str, key_pem: str):
        self._cert_pem = cert_pem
        self._key_pem = key_pem
        self.pin = cert_pin(cert_pem)

    @property
    def key(self) -> bool | None:  # JoinService only asks whether this CA can sign (None: it cannot)
        return True if self._key_pem else None

    @property
    def cert_pem(self) -> bytes:
        return self._cert_pem.encode()

    def issue_pem(self, csr_der: bytes, name: str, address: str) -> str:
        return str(_run({"op": "issue", "ca_cert": self._cert_pem, "ca_key": self._key_pem, "name": name,
                         "address": address, "csr": base64.b64encode(csr_der).decode()})["cert"])


def write_crl(pki_dir: str | os.PathLike[str], serials: list[int], ca_cert_pem: str | None = None,
              ca_key_pem: str | None = None) -> None:
    _run({"op": "crl", "dir": str(pki_dir), "serials": sorted(int(s) for s in serials),
          "ca_cert": ca_cert_pem, "ca_key": ca_key_pem})


# ---------------------------------------------------------------- the helper process

def _ca(req: dict) -> pki.CA:
    if req.get("ca_cert") and req.get("ca_key"):
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        return pki.CA(pki.load_cert_pem(req["ca_cert"], "ca"), load_pem_private_key(req["ca_key"].encode(), None))
    return pki.load_ca(req["dir"], need_key=True)


def serve(req: dict) -> dict:
    if req.get("op") == "issue":
        csr = base64.b64decode(req["csr"])
        return {"cert": _ca(req).issue_pem(csr, req["name"], req["address"])}
    if req.get("op") == "crl":
        from crossnet.state import write_text_atomic

        write_text_atomic(Path(req["dir"]) / pki.CRL, pki.make_crl(_ca(req), req["serials"]).decode())
        return {"ok": True}
    raise ConfigError(f"op: unknown operation {str(req.get('op'))[:32]!r}")


def main() -> int:
    from crossnet import helper

    return helper.serve_stdin(serve, {ConfigError: "config", pki.PkiError: "pki"})


if __name__ == "__main__":
    sys.exit(main())
