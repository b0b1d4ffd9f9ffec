"""The static store: the cluster file behind the Store interface."""

from __future__ import annotations

import os
import threading
import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from crossnet.errors import ConfigError
from crossnet.store import NotInitialized, StoreError
from crossnet.store.static import StaticStore

CLUSTER = """\
name: t6
backend: vxlan
network: 10.32.0.0/16
vxlan: {{vni: 7}}
hosts:
  - {{name: a, address: 192.0.2.1}}
  - {{name: b, address: 192.0.2.2}}
{extra}"""


def write(path, extra=""):
    path.write_text(CLUSTER.format(extra=extra))


def test_config_and_acquire(tmp_path):
    f = tmp_path / "c.yaml"
    write(f)
    s = StaticStore(f)
    cfg = s.get_config()
    assert (str(cfg.network), cfg.backend, cfg.vni, cfg.name) == ("10.32.0.0/16", "vxlan", 7, "t6")
    lease = s.acquire(cfg, "b", IPv4Address("192.0.2.2"), {})
    assert lease.subnet == IPv4Network("10.32.1.0/24")
    s.renew(lease)
    s.release(lease)
    with pytest.raises(StoreError, match="no host named"):
        s.acquire(cfg, "zz", IPv4Address("192.0.2.9"), {})
    with pytest.raises(StoreError, match="has address"):
        s.acquire(cfg, "a", IPv4Address("192.0.2.9"), {})
    snap = s.snapshot()
    assert [(h.name, str(h.subnet)) for h in snap.hosts] == [("a", "10.32.0.0/24"), ("b", "10.32.1.0/24")]
    assert all("vtep_mac" in h.data for h in snap.hosts)


def test_missing_file_and_bridge(tmp_path):
    with pytest.raises(NotInitialized):
        StaticStore(tmp_path / "nope.yaml").get_config()
    f = tmp_path / "b.yaml"
    f.write_text("backend: bridge\nlan: {cidr: 10.1.0.0/24, gateway: 10.1.0.1}\nhosts: [{name: a, address: 10.1.0.10}]\n")
    with pytest.raises(ConfigError, match="bridge"):
        StaticStore(f).get_config()


def test_watch_reports_file_changes(tmp_path):
    f = tmp_path / "c.yaml"
    write(f)
    s = StaticStore(f, poll_interval=0.05)
    stop = threading.Event()
    snap = s.snapshot()

    def change():
        time.sleep(0.2)
        write(f, "  - {name: c, address: 192.0.2.3}\n")
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))

    threading.Thread(target=change, daemon=True).start()
    t0 = time.monotonic()
    for batch in s.watch(snap.revision, stop):
        assert [(e.kind, e.record.name) for e in batch] == [("put", "c")]
        break
    assert time.monotonic() - t0 < 5


def test_no_container_channel(tmp_path):
    """The cluster file is no channel between hosts: peers' containers are unknown
    (`crossnet check` pings their gateways instead), publishing is a no-op."""
    f = tmp_path / "c.yaml"
    write(f)
    s = StaticStore(f)
    lease = s.acquire(s.get_config(), "a", IPv4Address("192.0.2.1"), {})
    assert s.publish_containers(lease, [{"id": "c1", "address": "10.32.0.2"}]) is None
    assert s.containers() is None


def test_renumbering_a_running_host_is_refused(tmp_path, caplog):
    """Inserting a host before others would move their subnets: the agent holding the
    old subnet refuses to start on it, and a running watch ignores such an edit (it
    would hand one host's subnet to another) while still following appends."""
    f = tmp_path / "c.yaml"
    write(f)
    s = StaticStore(f, poll_interval=0.05)
    cfg = s.get_config()
    held = s.acquire(cfg, "b", IPv4Address("192.0.2.2"), {}).subnet
    assert s.acquire(cfg, "b", IPv4Address("192.0.2.2"), {}, previous=held).subnet == held

    stop = threading.Event()
    snap = s.snapshot()

    def bump(text):
        f.write_text(text)
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))

    inserted = CLUSTER.format(extra="").replace("hosts:\n", "hosts:\n  - {name: z, address: 192.0.2.9}\n")

    def edits():
        time.sleep(0.2)
        bump(inserted)  # z first: a and b would move
        time.sleep(0.3)
        bump(CLUSTER.format(extra="  - {name: c, address: 192.0.2.3}\n"))  # appended: fine

    threading.Thread(target=edits, daemon=True).start()
    with caplog.at_level("ERROR", logger="crossnet.agent"):
        for batch in s.watch(snap.revision, stop):
            assert [(e.kind, e.record.name) for e in batch] == [("put", "c")]
            break
    assert "hosts[2].subnet" in caplog.text or "hosts[1].subnet" in caplog.text
    assert "ignoring this edit" in caplog.text

    bump(inserted)
    with pytest.raises(ConfigError, match=r"hosts\[2\]\.subnet: .*gives host b 10\.32\.2\.0/24, but it holds 10\.32\.1\.0/24"):
        s.acquire(cfg, "b", IPv4Address("192.0.2.2"), {}, previous=held)
    with pytest.raises(StoreError, match="ignoring this edit"):
        s.snapshot()  # the agent's periodic resync reads the snapshot: refused too
