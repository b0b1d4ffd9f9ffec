"""Member certificates of crossnet.mesh.pki are what etcd needs: a two-member etcd
cluster on 127.0.0.1 with peer and client TLS (client-cert-auth on both) from one
cluster CA replicates a write; a certificate of another CA and plaintext are refused."""

from __future__ import annotations

import subprocess
import time

import pytest

from crossnet.lab.etcdserver import etcd_available, free_port, retry_port_races
from crossnet.mesh import pki
from crossnet.store.etcdclient import EtcdClient, EtcdError, EtcdUnavailable

LOOPBACK = "127.0.0.1"


def _member(ca, directory, name):
    key = pki.generate_key()
    pki.save_member(directory, key, ca.issue(pki.make_csr(key, name), name, LOOPBACK), ca.cert)
    return directory


def _stop(procs) -> None:
    for proc, log in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _start(root, ca, names):
    """(procs, ports, clients) of a cluster up and answering, or None when a member exited
    while starting (a port free_port() found was taken before etcd bound it: another test
    process's outgoing connection, on a machine running tests in parallel)."""
    ports = {n: (free_port(), free_port()) for n in names}
    cluster = ",".join(f"{n}=https://{LOOPBACK}:{ports[n][1]}" for n in names)
    procs = []
    try:
        for n in names:
            d = _member(ca, root / n / "pki", n)
            client, peer = ports[n]
            log = open(root / f"{n}.log", "ab")  # noqa: SIM115 - closed with the process (_stop)
            procs.append((subprocess.Popen(
                ["etcd", "--name", n, "--data-dir", str(root / n / "data"),
                 "--listen-client-urls", f"https://{LOOPBACK}:{client}",
                 "--advertise-client-urls", f"https://{LOOPBACK}:{client}",
                 "--listen-peer-urls", f"https://{LOOPBACK}:{peer}",
                 "--initial-advertise-peer-urls", f"https://{LOOPBACK}:{peer}",
                 "--initial-cluster", cluster, "--initial-cluster-state", "new",
                 "--initial-cluster-token", "crossnet-mesh-test",
                 "--cert-file", str(d / pki.MEMBER_CERT), "--key-file", str(d / pki.MEMBER_KEY),
                 "--client-cert-auth", "--trusted-ca-file", str(d / pki.CA_CERT),
                 "--peer-cert-file", str(d / pki.MEMBER_CERT), "--peer-key-file", str(d / pki.MEMBER_KEY),
                 "--peer-client-cert-auth", "--peer-trusted-ca-file", str(d / pki.CA_CERT)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL), log))
        clients = {}
        for n in names:
            d = root / n / "pki"
            clients[n] = EtcdClient(f"https://{LOOPBACK}:{ports[n][0]}", cert=str(d / pki.MEMBER_CERT),
                                    key=str(d / pki.MEMBER_KEY), cacert=str(d / pki.CA_CERT), timeout=2)
        deadline = time.monotonic() + 30
        for n in names:
            while True:
                try:
                    clients[n].put("/crossnet-test/ready", n)
                    break
                except EtcdError:
                    if any(p.poll() is not None for p, _ in procs):
                        _stop(procs)
                        return None
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
    except BaseException:
        _stop(procs)
        raise
    return procs, ports, clients


@pytest.fixture(scope="module")
def mesh_etcd(tmp_path_factory):
    if not etcd_available():
        pytest.skip("needs etcd")

    def start(_attempt: int):
        root = tmp_path_factory.mktemp("meshetcd")  # a new CA and data dirs per attempt
        ca = pki.create_ca(root / "ca")
        started = _start(root, ca, ["m1", "m2"])
        return None if started is None else (root, ca, started)

    root, ca, (procs, ports, clients) = retry_port_races(start, what="etcd members m1, m2")
    try:
        yield root, ca, ports, clients
    finally:
        _stop(procs)


def test_write_on_one_member_is_read_on_the_other(mesh_etcd):
    """Raft traffic between the members runs over peer TLS with the mesh certificates."""
    _, _, _, clients = mesh_etcd
    clients["m1"].put("/crossnet-test/k", "v1")
    deadline = time.monotonic() + 10
    while True:
        kv = clients["m2"].get("/crossnet-test/k")
        if kv is not None and kv.value == b"v1":
            break
        assert time.monotonic() < deadline, "write did not replicate"
        time.sleep(0.1)


def test_certificate_of_another_ca_is_refused(mesh_etcd, tmp_path):
    root, ca, ports, _ = mesh_etcd
    other = pki.create_ca(tmp_path / "other")
    d = _member(other, tmp_path / "intruder", "m9")
    intruder = EtcdClient(f"https://{LOOPBACK}:{ports['m1'][0]}", cert=str(d / pki.MEMBER_CERT),
                          key=str(d / pki.MEMBER_KEY), cacert=str(root / "ca" / pki.CA_CERT), timeout=2)
    with pytest.raises(EtcdUnavailable, match="TLS error|connection closed|reset"):
        intruder.put("/crossnet-test/evil", "x")
    # no client certificate at all
    anonymous = EtcdClient(f"https://{LOOPBACK}:{ports['m1'][0]}", cacert=str(root / "ca" / pki.CA_CERT),
                           timeout=2)
    with pytest.raises(EtcdUnavailable, match="TLS error|connection closed|reset"):
        anonymous.put("/crossnet-test/evil", "x")
    # plaintext on the TLS port
    plain = EtcdClient(f"http://{LOOPBACK}:{ports['m1'][0]}", timeout=2)
    with pytest.raises(EtcdError):
        plain.put("/crossnet-test/evil", "x")


def test_client_refuses_a_server_outside_the_cluster_ca(mesh_etcd, tmp_path):
    """A client that trusts only the cluster CA refuses etcd servers with other CAs' certs."""
    _, _, ports, _ = mesh_etcd
    other = pki.create_ca(tmp_path / "other")
    d = _member(other, tmp_path / "c", "m8")
    client = EtcdClient(f"https://{LOOPBACK}:{ports['m2'][0]}", cert=str(d / pki.MEMBER_CERT),
                        key=str(d / pki.MEMBER_KEY), cacert=str(d / pki.CA_CERT), timeout=2)
    with pytest.raises(EtcdUnavailable, match="TLS|certificate"):
        client.get("/crossnet-test/k")


def test_a_member_whose_port_was_taken_is_started_again_elsewhere(tmp_path, monkeypatch):
    """The fixture's retry: a port that free_port() found and another process took before
    etcd bound it (a flaky CI error: 'connection refused' from a member that had exited)."""
    import socket
    import sys

    if not etcd_available():
        pytest.skip("needs etcd")
    taken = socket.socket()
    taken.bind((LOOPBACK, 0))
    taken.listen()
    try:
        real = free_port
        ports = iter([taken.getsockname()[1]])
        monkeypatch.setattr(sys.modules[__name__], "free_port", lambda: next(ports, None) or real())
        ca = pki.create_ca(tmp_path / "a" / "ca")
        assert _start(tmp_path / "a", ca, ["m1"]) is None  # m1 could not listen: gone, stopped
        started = _start(tmp_path / "b", pki.create_ca(tmp_path / "b" / "ca"), ["m1"])
        assert started is not None
        procs, _, clients = started
        try:
            assert clients["m1"].get("/crossnet-test/ready").value == b"m1"
        finally:
            _stop(procs)
    finally:
        taken.close()
