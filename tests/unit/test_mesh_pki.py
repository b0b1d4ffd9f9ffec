"""crossnet.mesh.pki: the cluster CA, member certificates from CSRs, the CA pin."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import stat
import subprocess

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from crossnet.errors import ConfigError
from crossnet.mesh import pki


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki") / "ca"
    return d, pki.create_ca(d)


def _csr_with(key, cn="evil", sans=None):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_create_ca_files_modes_and_shape(ca):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    d, authority = ca
    assert mode(d) == 0o700
    assert mode(d / pki.CA_KEY) == 0o600
    assert mode(d / pki.CA_CERT) == 0o644
    cert = authority.cert
    assert isinstance(authority.key, ec.EllipticCurvePrivateKey) and authority.key.curve.name == "secp256r1"
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days >= 3650


def test_key_is_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        pki.create_ca(tmp_path / "ca")
    finally:
        os.umask(old)
    assert mode(tmp_path / "ca" / pki.CA_KEY) == 0o600
    assert not [p for p in (tmp_path / "ca").iterdir() if p.name.startswith(".")]  # no temp files left


def test_pin_is_sha256_of_spki_like_kubeadm(ca):
    """The pin equals what openssl computes from ca.crt (kubeadm's documented recipe)."""
    from cryptography.hazmat.primitives import serialization

    d, authority = ca
    spki = authority.cert.public_key().public_bytes(serialization.Encoding.DER,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
    assert authority.pin == "sha256:" + hashlib.sha256(spki).hexdigest()
    if shutil.which("openssl"):
        pub = subprocess.run(["openssl", "x509", "-pubkey", "-noout", "-in", str(d / pki.CA_CERT)],
                             capture_output=True, check=True).stdout
        der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub,
                             capture_output=True, check=True).stdout
        assert authority.pin == "sha256:" + hashlib.sha256(der).hexdigest()


def test_create_ca_refuses_to_replace(ca):
    d, _ = ca
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    with pytest.raises(pki.PkiError, match="already exists"):
        pki.create_ca(d)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def test_load_ca_round_trip_and_refusals(ca, tmp_path):
    d, authority = ca
    loaded = pki.load_ca(d)
    assert loaded.pin == authority.pin and loaded.key is not None
    # a host that only trusts the CA
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(d / pki.CA_CERT, only / pki.CA_CERT)
    assert pki.load_ca(only, need_key=False).key is None
    with pytest.raises(pki.PkiError, match="no such key"):
        pki.load_ca(only)
    # a key of another CA next to this certificate
    other = pki.create_ca(tmp_path / "other")
    pki.write_key(only / pki.CA_KEY, other.key)
    with pytest.raises(pki.PkiError, match="does not belong"):
        pki.load_ca(only)
    # a key readable by others
    os.chmod(only / pki.CA_KEY, 0o644)
    with pytest.raises(pki.PkiError, match="readable by others"):
        pki.load_key(only / pki.CA_KEY)
    # a member certificate is no CA
    pki.write_cert(only / pki.CA_CERT, authority.issue(pki.make_csr(pki.generate_key(), "h1"), "h1", "10.0.0.1"))
    with pytest.raises(pki.PkiError, match="not a CA"):
        pki.load_ca(only, need_key=False)


def test_issue_member_cert_sans_usages(ca):
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    _, authority = ca
    key = pki.generate_key()
    cert = authority.issue(pki.make_csr(key, "host2"), "host2", "10.1.2.3")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    assert san.get_values_for_type(x509.DNSName) == ["host2"]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "host2"
    eku = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    pki.check_member_cert(cert, authority.cert, key=key, address="10.1.2.3", name="host2")


def test_issued_cert_passes_openssl_verify_for_server_and_client(ca, tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("needs openssl")
    d, authority = ca
    cert = authority.issue(pki.make_csr(pki.generate_key(), "h9"), "h9", "192.0.2.9")
    pki.write_cert(tmp_path / "m.crt", cert)
    for purpose in ("sslserver", "sslclient"):
        out = subprocess.run(["openssl", "verify", "-purpose", purpose, "-CAfile", str(d / pki.CA_CERT),
                              str(tmp_path / "m.crt")], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    pki.create_ca(tmp_path / "other")
    out = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "other" / pki.CA_CERT),
                          str(tmp_path / "m.crt")], capture_output=True, text=True)
    assert out.returncode != 0


def test_csr_contents_other_than_the_key_are_ignored(ca):
    """A CSR asking for other names/addresses gets only what the CA decides."""
    from cryptography import x509

    _, authority = ca
    key = pki.generate_key()
    csr = _csr_with(key, cn="root", sans=[x509.IPAddress(ipaddress.ip_address("8.8.8.8")), x509.DNSName("etcd")])
    cert = authority.issue(csr, "host3", "10.0.0.3")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(v) for v in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.3"]
    assert san.get_values_for_type(x509.DNSName) == ["host3"]
    assert "root" not in cert.subject.rfc4514_string()


def test_csr_must_be_signed_by_its_key_and_strong(ca):
    from cryptography.hazmat.primitives.asymmetric import rsa

    _, authority = ca
    good = pki.make_csr(pki.generate_key(), "h1")
    tampered = good[:-1] + bytes([good[-1] ^ 1])
    with pytest.raises(ConfigError, match="^csr: "):
        authority.issue(tampered, "h1", "10.0.0.1")
    with pytest.raises(ConfigError, match="^csr: "):
        authority.issue(b"not a csr", "h1", "10.0.0.1")
    weak = _csr_with(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    with pytest.raises(ConfigError, match="csr: key type not accepted"):
        authority.issue(weak, "h1", "10.0.0.1")


def test_check_member_cert_refuses_foreign_or_mismatched(ca, tmp_path):
    _, authority = ca
    other = pki.create_ca(tmp_path / "other")
    key = pki.generate_key()
    foreign = other.issue(pki.make_csr(key, "h1"), "h1", "10.0.0.1")
    with pytest.raises(pki.PkiError, match="not signed by the cluster CA"):
        pki.check_member_cert(foreign, authority.cert, key=key)
    mine = authority.issue(pki.make_csr(key, "h1"), "h1", "10.0.0.1")
    with pytest.raises(pki.PkiError, match="does not certify this host's key"):
        pki.check_member_cert(mine, authority.cert, key=pki.generate_key())
    with pytest.raises(pki.PkiError, match="does not name address 10.0.0.2"):
        pki.check_member_cert(mine, authority.cert, key=key, address="10.0.0.2")
    with pytest.raises(pki.PkiError, match="does not name host h2"):
        pki.check_member_cert(mine, authority.cert, key=key, name="h2")


def test_save_member_modes_and_refusals(ca, tmp_path):
    _, authority = ca
    key = pki.generate_key()
    cert = authority.issue(pki.make_csr(key, "h1"), "h1", "10.0.0.1")
    d = tmp_path / "m"
    pki.save_member(d, key, cert, authority.cert)
    assert mode(d) == 0o700 and mode(d / pki.MEMBER_KEY) == 0o600
    assert mode(d / pki.MEMBER_CERT) == 0o644 and mode(d / pki.CA_CERT) == 0o644
    assert pki.load_key(d / pki.MEMBER_KEY).private_numbers() == key.private_numbers()
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    with pytest.raises(pki.PkiError, match="already holds a member certificate"):
        pki.save_member(d, pki.generate_key(), cert, authority.cert)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    # a directory that trusts another cluster's CA is not taken over
    other = pki.create_ca(tmp_path / "other")
    with pytest.raises(pki.PkiError, match="another cluster's CA"):
        pki.save_member(tmp_path / "other", key, cert, authority.cert)
    assert not (tmp_path / "other" / pki.MEMBER_KEY).exists()
    assert other.pin == pki.load_ca(tmp_path / "other").pin


def test_issue_self_on_the_ca_host(tmp_path):
    authority = pki.create_ca(tmp_path / "pki")
    cert = pki.issue_self(authority, tmp_path / "pki", "host1", "10.0.0.1")
    pki.check_member_cert(cert, authority.cert, key=pki.load_key(tmp_path / "pki" / pki.MEMBER_KEY),
                          address="10.0.0.1", name="host1")
    assert sorted(p.name for p in (tmp_path / "pki").iterdir()) == ["ca.crt", "ca.key", "member.crt", "member.key"]


def test_ca_without_key_cannot_sign(ca):
    _, authority = ca
    with pytest.raises(pki.PkiError, match="cannot sign"):
        pki.CA(authority.cert, None).issue(pki.make_csr(pki.generate_key(), "h1"), "h1", "10.0.0.1")


@given(st.binary(min_size=32, max_size=32), st.booleans(), st.booleans())
def test_parse_pin_accepts_every_spelling_of_a_pin(digest, prefix, upper):
    hexpin = digest.hex().upper() if upper else digest.hex()
    text = ("SHA256:" if upper else "sha256:") + hexpin if prefix else hexpin
    assert pki.parse_pin(f" {text} ") == "sha256:" + digest.hex()


@settings(max_examples=300)
@given(st.text(max_size=80))
def test_parse_pin_refuses_everything_else_naming_the_field(text):
    body = text.strip().lower().removeprefix("sha256:")
    if len(body) == 64 and all(c in "0123456789abcdef" for c in body):
        assert pki.parse_pin(text).endswith(body)
    else:
        with pytest.raises(ConfigError, match=r"^--ca-pin: expected sha256:<64 hex digits>"):
            pki.parse_pin(text)


@given(st.text(max_size=40))
@example("h2\n")  # "$" matched before a trailing newline: a joiner named itself "h2\n" (CN, members list)
def test_validate_name_matches_cluster_file_rule(name):
    import re

    ok = re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?", name) is not None
    if ok:
        assert pki.validate_name(name) == name
    else:
        with pytest.raises(ConfigError, match="^name: "):
            pki.validate_name(name)


@given(st.one_of(st.ip_addresses(), st.text(max_size=40)))
def test_validate_address(value):
    text = str(value)
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        ip = None
    if ip is not None and not ip.is_multicast and not ip.is_unspecified:
        assert pki.validate_address(text) == str(ip)
    else:
        with pytest.raises(ConfigError, match="^address: "):
            pki.validate_address(text)


def test_crl_lists_the_revoked_serials_and_is_signed_by_the_ca(ca, tmp_path):
    from cryptography import x509

    _, ca = ca
    key = pki.generate_key()
    revoked = ca.issue(pki.load_csr(pki.make_csr(key, "h4")), "h4", "10.0.0.4")
    kept = ca.issue(pki.load_csr(pki.make_csr(key, "h5")), "h5", "10.0.0.5")
    crl = x509.load_pem_x509_crl(pki.make_crl(ca, [revoked.serial_number, revoked.serial_number]))
    assert crl.is_signature_valid(ca.cert.public_key())
    assert crl.get_revoked_certificate_by_serial_number(revoked.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(kept.serial_number) is None
    assert len(crl) == 1
    # openssl agrees: the revoked certificate fails CRL checking, the other passes
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    (tmp_path / "crl.pem").write_bytes(pki.make_crl(ca, [revoked.serial_number]))
    for cert, ok in ((revoked, False), (kept, True)):
        (tmp_path / "c.pem").write_bytes(pki.cert_pem(cert))
        res = subprocess.run(["openssl", "verify", "-crl_check", "-CAfile", str(tmp_path / "ca.pem"),
                              "-CRLfile", str(tmp_path / "crl.pem"), str(tmp_path / "c.pem")],
                             capture_output=True, text=True, check=False)
        assert (res.returncode == 0) == ok, res.stdout + res.stderr
    empty = x509.load_pem_x509_crl(pki.make_crl(ca, []))
    assert len(empty) == 0 and empty.is_signature_valid(ca.cert.public_key())
    assert pki.crl_serials(tmp_path / "crl.pem") == [revoked.serial_number]
    assert pki.crl_serials(tmp_path / "missing.pem") is None
    assert pki.crl_serials(tmp_path / "c.pem") is None  # a certificate, not a CRL


def test_crl_needs_the_ca_key(ca):
    _, ca = ca
    with pytest.raises(pki.PkiError):
        pki.make_crl(pki.CA(ca.cert, None), [1])


@pytest.mark.parametrize(("address", "kind"), [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("169.254.1.2", "link-local"), ("fe80::1", "link-local"),
])
def test_a_joining_hosts_loopback_or_link_local_address_is_refused(address, kind):
    with pytest.raises(ConfigError) as info:
        pki.validate_joiner_address(address)
    assert str(info.value) == f"address: {address} is a {kind} address; expected the joining host's underlay address"
    assert pki.validate_joiner_address("10.0.0.2") == "10.0.0.2"
    assert pki.validate_joiner_address("fd00::2") == "fd00::2"
