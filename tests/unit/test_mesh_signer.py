"""crossnet.mesh.signer: the supervisor's certificate work without `cryptography` in
its own process (DER reads checked against cryptography; signing in the helper)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossnet.errors import ConfigError
from crossnet.mesh import pki, signer


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return pki.create_ca(tmp_path_factory.mktemp("ca"))


def test_serial_and_pin_read_without_cryptography_match_cryptography(ca, tmp_path):
    assert signer.cert_pin(ca.cert_pem) == ca.pin
    assert signer.cert_serial(ca.cert_pem) == ca.cert.serial_number
    cert = pki.issue_self(ca, tmp_path, "h1", "10.0.0.1")
    assert signer.cert_serial(pki.cert_pem(cert).decode()) == cert.serial_number


@pytest.mark.parametrize("text", ["", "not pem", "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----",
                                  "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----",
                                  "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----"])
def test_bad_certificate_text_is_a_pki_error(text):
    with pytest.raises(pki.PkiError):
        signer.cert_serial(text)
    with pytest.raises(pki.PkiError):
        signer.cert_pin(text)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=2**159 - 1), max_size=6))
def test_crl_serials_read_without_cryptography_match_cryptography(ca, tmp_path_factory, serials):
    path = tmp_path_factory.mktemp("crl") / "x.crl"
    path.write_bytes(pki.make_crl(ca, serials))
    assert signer.crl_serials(path) == pki.crl_serials(path) == sorted(set(serials))


def test_crl_serials_of_a_missing_or_garbage_file_is_none(tmp_path):
    assert signer.crl_serials(tmp_path / "none.crl") is None
    (tmp_path / "bad.crl").write_text("-----BEGIN X509 CRL-----\nMAA=\n-----END X509 CRL-----\n")
    assert signer.crl_serials(tmp_path / "bad.crl") is None


def test_helper_ca_issues_a_member_certificate_and_refuses_a_bad_csr(ca):
    helper = signer.HelperCA(ca.cert_pem.decode(), pki.key_pem(ca.key).decode())
    assert helper.pin == ca.pin and helper.key
    with pytest.raises(pki.PkiError, match="needs the CA key"):  # a CA without its key serves no joins
        from crossnet.mesh.join import JoinService

        JoinService(signer.HelperCA(ca.cert_pem.decode(), ""), tokens=None)
    key = pki.generate_key()
    cert = pki.load_cert_pem(helper.issue_pem(pki.make_csr(key, "h2"), "h2", "10.0.0.2"))
    pki.check_member_cert(cert, ca.cert, key=key, address="10.0.0.2", name="h2")
    with pytest.raises(ConfigError, match="csr: not a DER certificate signing request"):
        helper.issue_pem(b"garbage", "h2", "10.0.0.2")
    with pytest.raises(ConfigError, match="name"):
        helper.issue_pem(pki.make_csr(key, "h2"), "Bad Name", "10.0.0.2")


def test_helper_writes_the_crl_with_the_ca_of_the_directory_or_the_given_one(ca, tmp_path):
    d = tmp_path / "pki"
    own = pki.create_ca(d)
    signer.write_crl(d, [9, 7])
    assert pki.crl_serials(d / pki.CRL) == [7, 9]
    signer.write_crl(d, [3], ca.cert_pem.decode(), pki.key_pem(ca.key).decode())
    assert pki.crl_serials(d / pki.CRL) == [3]
    from cryptography import x509

    crl = x509.load_pem_x509_crl((d / pki.CRL).read_bytes())
    assert crl.is_signature_valid(ca.cert.public_key()) and not crl.is_signature_valid(own.cert.public_key())


def test_helper_answers_one_json_error_for_a_bad_request():
    out = subprocess.run([sys.executable, "-m", "crossnet.mesh.signer"], input=b'{"op": "nope"}',
                         capture_output=True, check=True).stdout
    assert b'"kind": "config"' in out and b"op: unknown operation" in out
