"""The cluster CA and member certificates of a crossnet mesh (docs/mesh.md).

- `create_ca(dir)`: the first `crossnet launch` makes a self-signed ECDSA P-256 CA
  (ca.crt 0644, ca.key 0600, directory 0700).
- A joining host makes its own key with `generate_key()` and a CSR with `make_csr()`;
  the key stays on that host (`save_member` writes it 0600 there) and only the CSR
  travels. `CA.issue(csr, name, address)` signs it: the CA — never the CSR — decides the
  subject (CN = name) and the SANs (the host's underlay IP and its name), key usage
  digitalSignature, extended usage serverAuth + clientAuth, so one certificate serves
  etcd's peer and client TLS and the join endpoint.
- `ca_pin(cert)` = "sha256:" + hex SHA-256 of the CA's SubjectPublicKeyInfo DER, the
  same value as kubeadm's --discovery-token-ca-cert-hash (so
  `openssl x509 -pubkey -noout -in ca.crt | openssl pkey -pubin -outform der | sha256sum`
  recomputes it).

`cryptography` is imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossnet.errors import ConfigError, CrossnetError

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
MEMBER_CERT = "member.crt"
MEMBER_KEY = "member.key"
CRL = "revoked.crl"  # the certificates of forgotten hosts (etcd's --client-crl-file/--peer-crl-file)

CA_DAYS = 3650
MEMBER_DAYS = 365
CLOCK_SKEW = datetime.timedelta(minutes=5)  # not_before is back-dated by this much
MAX_PEM = 16 * 1024  # a CSR or certificate larger than this is refused unparsed

PIN_PREFIX = "sha256:"
_PIN_HEX_RE = re.compile(r"[0-9a-f]{64}")  # fullmatch: "$" accepts a trailing newline
# same rule as host names in the cluster file (crossnet.config): one DNS label
HOST_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?")


class PkiError(CrossnetError):
    """A certificate or key that cannot be used (missing, unreadable, not from this CA)."""


# ---------------------------------------------------------------- validation

def validate_name(name: Any, field: str = "name") -> str:
    if not isinstance(name, str) or not HOST_NAME_RE.fullmatch(name):
        raise ConfigError(f"{field}: a host name is 1-32 characters a-z, 0-9 and '-', "
                          f"not starting or ending with '-'")
    return name


def validate_address(address: Any, field: str = "address") -> str:
    """A unicast IPv4/IPv6 underlay address (the SAN other hosts check)."""
    try:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else None
    except ValueError:
        ip = None
    if ip is None or ip.is_multicast or ip.is_unspecified:
        raise ConfigError(f"{field}: expected the host's unicast IP address, got {str(address)[:64]!r}")
    return str(ip)


def validate_joiner_address(address: Any, field: str = "address") -> str:
    """A joining host's underlay address: unicast, and neither loopback nor link-local
    (no other host reaches it there, and it would be the SAN of that host's certificate)."""
    text = validate_address(address, field)
    ip = ipaddress.ip_address(text)
    kind = "loopback" if ip.is_loopback else "link-local" if ip.is_link_local else None
    if kind:
        raise ConfigError(f"{field}: {text} is a {kind} address; expected the joining host's underlay address")
    return text


def member_url(url: Any) -> str | None:
    """`url` if it is an etcd URL of a mesh member, https://IP:PORT (IPv6 in brackets),
    exactly as `crossnet launch` advertises them; else None. No host name (no DNS), no
    http/unix scheme, no credentials, path, comma or whitespace."""
    if not isinstance(url, str) or len(url) > 64 or not url.startswith("https://"):
        return None
    host, sep, port = url[len("https://"):].rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        return None
    if (not sep or ip.version != (6 if bracketed else 4) or ip.is_multicast or ip.is_unspecified
            or getattr(ip, "scope_id", None)
            or not (port.isascii() and port.isdigit() and str(int(port)) == port and 1 <= int(port) <= 65535)):
        return None
    return url if (f"[{ip}]" if bracketed else str(ip)) == host else None


def parse_pin(text: Any, field: str = "--ca-pin") -> str:
    """Normalise a CA pin to "sha256:<64 hex>" (a bare 64-hex value is accepted)."""
    if not isinstance(text, str):
        raise ConfigError(f"{field}: expected sha256:<64 hex digits>")
    value = text.strip().lower()
    if value.startswith(PIN_PREFIX):
        value = value[len(PIN_PREFIX):]
    if not _PIN_HEX_RE.fullmatch(value):
        raise ConfigError(f"{field}: expected sha256:<64 hex digits> (the SHA-256 of the cluster CA's public key)")
    return PIN_PREFIX + value


# ---------------------------------------------------------------- keys, certs, files

def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def generate_key() -> Any:
    """A new ECDSA P-256 private key (in memory; `write_key` stores it 0600)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def spki_der(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def ca_pin(cert: Any) -> str:
    """kubeadm-style pin of a CA certificate: sha256 of its SubjectPublicKeyInfo DER."""
    return PIN_PREFIX + hashlib.sha256(spki_der(cert.public_key())).hexdigest()


def load_cert_pem(data: bytes | str, what: str = "certificate") -> Any:
    from cryptography import x509

    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_PEM:
        raise PkiError(f"{what}: larger than {MAX_PEM} bytes")
    try:
        return x509.load_pem_x509_certificate(raw)
    except ValueError:
        raise PkiError(f"{what}: not a PEM X.509 certificate") from None


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write data to path atomically with the final mode from the first byte on (no window
    in which a key file is readable by others), fsync'd."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # the umask cannot widen or narrow it
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_key(path: str | os.PathLike[str], key: Any) -> None:
    _write_private(Path(path), key_pem(key), 0o600)


def write_cert(path: str | os.PathLike[str], cert: Any) -> None:
    _write_private(Path(path), cert_pem(cert), 0o644)


def load_key(path: str | os.PathLike[str]) -> Any:
    from cryptography.hazmat.primitives import serialization

    p = Path(path)
    try:
        st = p.stat()
        data = p.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{p}: no such key file") from None
    except OSError as exc:
        raise PkiError(f"{p}: {exc.strerror}") from None
    if st.st_mode & 0o077:
        raise PkiError(f"{p}: private key is readable by others (mode {st.st_mode & 0o777:o}); expected 0600")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise PkiError(f"{p}: not an unencrypted PEM private key") from None


def load_cert(path: str | os.PathLike[str]) -> Any:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{p}: no such certificate file") from None
    except OSError as exc:
        raise PkiError(f"{p}: {exc.strerror}") from None
    return load_cert_pem(data, str(p))


# ---------------------------------------------------------------- CSR (joining host)

def make_csr(key: Any, name: str) -> bytes:
    """A DER CSR for `key` with CN = name. The CA ignores everything in it but the
    public key (and checks its self-signature): it sets subject and SANs itself."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    validate_name(name)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.DER)


def _check_public_key(pub: Any, field: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name in ("secp256r1", "secp384r1"):
        return
    if isinstance(pub, rsa.RSAPublicKey) and pub.key_size >= 2048:
        return
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return
    raise ConfigError(f"{field}: key type not accepted (ECDSA P-256/P-384, RSA >= 2048 bits or Ed25519)")


def load_csr(der: bytes, field: str = "csr") -> Any:
    from cryptography import x509

    if not isinstance(der, bytes) or not der or len(der) > MAX_PEM:
        raise ConfigError(f"{field}: expected a DER certificate signing request of at most {MAX_PEM} bytes")
    try:
        csr = x509.load_der_x509_csr(der)
        valid = csr.is_signature_valid
        pub = csr.public_key()
    except (ValueError, TypeError):
        raise ConfigError(f"{field}: not a DER certificate signing request") from None
    if not valid:
        raise ConfigError(f"{field}: signature does not match its public key (the requester must hold the key)")
    _check_public_key(pub, field)
    return csr


# ---------------------------------------------------------------- the CA

@dataclass
class CA:
    cert: Any
    key: Any | None  # None on hosts that only trust the CA (they cannot sign)

    @property
    def pin(self) -> str:
        return ca_pin(self.cert)

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    def issue(self, csr: Any, name: str, address: str, days: int = MEMBER_DAYS) -> Any:
        """Sign a member certificate for the CSR's public key (see the module doc)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        if self.key is None:
            raise PkiError("this host holds no CA key: it cannot sign member certificates")
        validate_name(name)
        ip = ipaddress.ip_address(validate_address(address))
        if isinstance(csr, bytes):
            csr = load_csr(csr)
        pub = csr.public_key()
        _check_public_key(pub, "csr")
        now = _now()
        not_after = min(now + datetime.timedelta(days=days), self.cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_encipherment=isinstance(pub, rsa.RSAPublicKey),
                content_commitment=False, data_encipherment=False, key_agreement=False,
                key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ip), x509.DNSName(name)]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
        )
        return builder.sign(self.key, hashes.SHA256())

    def issue_pem(self, csr_der: bytes, name: str, address: str) -> str:
        """issue() of a DER CSR (validated by load_csr), as PEM: what the join endpoint
        sends (`crossnet.mesh.signer.HelperCA` does the same in a helper process)."""
        return cert_pem(self.issue(load_csr(csr_der), name, address)).decode()


def make_crl(ca: CA, serials: Any) -> bytes:
    """A PEM CRL signed by the CA listing `serials` (ints). etcd reads its CRL file at
    every new TLS connection of its client and peer ports and drops those presenting
    a listed certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    if ca.key is None:
        raise PkiError("this host holds no CA key: it cannot sign the revocation list")
    now = _now()
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
               .last_update(now - CLOCK_SKEW).next_update(now + datetime.timedelta(days=CA_DAYS)))
    for serial in sorted(set(serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def crl_serials(path: str | os.PathLike[str]) -> list[int] | None:
    """The serials a CRL file lists (sorted), or None if it is missing or unreadable."""
    from cryptography import x509

    try:
        crl = x509.load_pem_x509_crl(Path(path).read_bytes())
    except (OSError, ValueError):
        return None
    return sorted(r.serial_number for r in crl)


def _ca_paths(directory: str | os.PathLike[str]) -> tuple[Path, Path]:
    d = Path(directory)
    return d / CA_CERT, d / CA_KEY


def create_ca(directory: str | os.PathLike[str], days: int = CA_DAYS) -> CA:
    """Create the cluster CA in directory (0700): ca.key 0600, ca.crt 0644. Refuses
    to replace an existing CA (that would cut every member off)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    cert_path, key_path = _ca_paths(directory)
    if cert_path.exists() or key_path.exists():
        raise PkiError(f"{cert_path.parent}: a cluster CA already exists here; not replacing it")
    key = generate_key()
    now = _now()
    # a random suffix tells two clusters' CAs apart in error messages and openssl output
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "crossnet"),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"crossnet cluster CA {secrets.token_hex(4)}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, key_encipherment=False,
            content_commitment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    Path(directory).mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    write_key(key_path, key)  # key first: a ca.crt without its key is never left behind
    try:
        write_cert(cert_path, cert)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            key_path.unlink()
        raise
    return CA(cert, key)


def load_ca(directory: str | os.PathLike[str], need_key: bool = True) -> CA:
    """Load the cluster CA from directory; with need_key=False a missing ca.key is fine
    (a host that trusts the CA but cannot sign). A key that does not belong to the
    certificate, or a certificate that is no CA, is refused."""
    cert_path, key_path = _ca_paths(directory)
    cert = load_cert(cert_path)
    _check_is_ca(cert, str(cert_path))
    key = None
    if need_key or key_path.exists():
        key = load_key(key_path)
        if spki_der(key.public_key()) != spki_der(cert.public_key()):
            raise PkiError(f"{key_path}: does not belong to {cert_path}")
    return CA(cert, key)


def _check_is_ca(cert: Any, what: str) -> None:
    from cryptography import x509

    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise PkiError(f"{what}: not a CA certificate")
    try:
        cert.verify_directly_issued_by(cert)
    except Exception as exc:  # noqa: BLE001 - ValueError, TypeError or InvalidSignature
        raise PkiError(f"{what}: not a self-signed CA certificate ({type(exc).__name__})") from None


# ---------------------------------------------------------------- checking a member certificate

def check_member_cert(cert: Any, ca_cert: Any, key: Any | None = None, address: str | None = None,
                      name: str | None = None) -> None:
    """Raise PkiError unless cert was issued by ca_cert, is valid now, carries both
    serverAuth and clientAuth, (with key) certifies exactly that key's public key and
    (with address/name) names that address/name in its SANs."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        cert.verify_directly_issued_by(ca_cert)
    except Exception:  # noqa: BLE001 - ValueError, TypeError or InvalidSignature
        raise PkiError(f"certificate of {cert.subject.rfc4514_string()} is not signed by the cluster CA") from None
    now = _now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise PkiError(f"certificate of {cert.subject.rfc4514_string()} is not valid now "
                       f"({cert.not_valid_before_utc:%Y-%m-%dT%H:%MZ} .. {cert.not_valid_after_utc:%Y-%m-%dT%H:%MZ})")
    try:
        eku = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        eku = set()
    if not {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= eku:
        raise PkiError("member certificate lacks serverAuth/clientAuth usage")
    if key is not None and spki_der(cert.public_key()) != spki_der(key.public_key()):
        raise PkiError("member certificate does not certify this host's key")
    if address is not None or name is not None:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            raise PkiError("member certificate has no subjectAltName") from None
        if address is not None and ipaddress.ip_address(address) not in san.get_values_for_type(x509.IPAddress):
            raise PkiError(f"member certificate does not name address {address}")
        if name is not None and name not in san.get_values_for_type(x509.DNSName):
            raise PkiError(f"member certificate does not name host {name}")


def save_member(directory: str | os.PathLike[str], key: Any, cert: Any, ca_cert: Any) -> None:
    """Store a joined host's credentials: ca.crt, member.key (0600), member.crt. Refuses
    to overwrite an existing member certificate; on failure removes what it wrote."""
    d = Path(directory)
    targets = [d / MEMBER_KEY, d / MEMBER_CERT]
    if any(p.exists() for p in targets):
        raise PkiError(f"{d}: this host already holds a member certificate; not replacing it")
    ca_path = d / CA_CERT
    existing_ca = ca_path.exists()
    if existing_ca and ca_pin(load_cert(ca_path)) != ca_pin(ca_cert):
        raise PkiError(f"{ca_path}: holds another cluster's CA; not replacing it")
    created_dir = not d.exists()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    written: list[Path] = []
    try:
        if not existing_ca:
            write_cert(ca_path, ca_cert)
            written.append(ca_path)
        write_key(d / MEMBER_KEY, key)
        written.append(d / MEMBER_KEY)
        write_cert(d / MEMBER_CERT, cert)
        written.append(d / MEMBER_CERT)
    except BaseException:
        for p in written:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        if created_dir:
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def issue_self(ca: CA, directory: str | os.PathLike[str], name: str, address: str) -> Any:
    """The first host's own member certificate (same path as a joiner: own key, CSR)."""
    key = generate_key()
    cert = ca.issue(make_csr(key, name), name, address)
    save_member(directory, key, cert, ca.cert)
    return cert
