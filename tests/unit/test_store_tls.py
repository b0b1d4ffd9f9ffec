"""The etcd client over TLS with a client certificate (etcd --client-cert-auth)."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from crossnet.errors import ConfigError
from crossnet.store.etcdclient import EtcdClient, EtcdUnavailable
from crossnet.lab.etcdserver import etcd_available, free_port, retry_port_races


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory):
    if not etcd_available() or not shutil.which("openssl"):
        pytest.skip("needs etcd and openssl")
    d = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=t6-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=t6-{name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-extfile", "san.cnf", "-out", f"{name}.pem", cwd=d)

    def start(attempt: int):
        """(process, log, url) answering, or None when etcd exited while starting."""
        port, peer = free_port(), free_port()
        url = f"https://127.0.0.1:{port}"
        log = open(d / f"etcd{attempt}.log", "wb")  # noqa: SIM115 - closed in the finalizer below
        proc = subprocess.Popen(
            ["etcd", "--name", "t6tls", "--data-dir", str(d / f"data{attempt}"), "--listen-client-urls", url,
             "--advertise-client-urls", url, "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", f"t6tls=http://127.0.0.1:{peer}", "--cert-file", str(d / "server.pem"),
             "--key-file", str(d / "server.key"), "--client-cert-auth", "--trusted-ca-file", str(d / "ca.pem")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        client = EtcdClient(url, cert=str(d / "client.pem"), key=str(d / "client.key"), cacert=str(d / "ca.pem"),
                            timeout=1)
        deadline = time.monotonic() + 20
        while proc.poll() is None:
            try:
                client.range("/")
                return proc, log, url
            except EtcdUnavailable:
                if time.monotonic() > deadline:
                    proc.kill()
                    log.close()
                    raise
                time.sleep(0.1)
        log.close()
        return None

    proc, log, url = retry_port_races(start, what=f"etcd with TLS (logs: {d}/etcd*.log)")
    try:
        yield url, d
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def test_tls_with_client_cert(tls_etcd):
    url, d = tls_etcd
    c = EtcdClient(url, cert=str(d / "client.pem"), key=str(d / "client.key"), cacert=str(d / "ca.pem"))
    c.put("/t6tls/k", "v")
    assert c.get("/t6tls/k").value == b"v"
    lease, _ = c.lease_grant(5)
    assert c.lease_keepalive(lease) == 5


def test_tls_without_client_cert_or_unknown_ca(tls_etcd):
    url, d = tls_etcd
    with pytest.raises(EtcdUnavailable, match="TLS|connection|closed"):
        EtcdClient(url, cacert=str(d / "ca.pem"), timeout=2).range("/")
    with pytest.raises(EtcdUnavailable, match="TLS"):
        EtcdClient(url, cert=str(d / "client.pem"), key=str(d / "client.key"), timeout=2).range("/")


def test_bad_key_file(tls_etcd):
    _, d = tls_etcd
    with pytest.raises(ConfigError, match="cannot load TLS files"):
        EtcdClient("https://127.0.0.1:1", cert=str(d / "client.pem"), key=str(d / "server.csr"))
