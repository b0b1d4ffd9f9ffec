"""Pure helpers of crossnet.containers (the kernel side is tested end to end)."""

from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import given
from hypothesis import strategies as st

from crossnet.containers import container_mac, host_ifname


@given(st.integers(0, 2**32 - 1))
def test_container_mac_is_local_unicast_and_encodes_the_address(value: int) -> None:
    address = IPv4Address(value)
    mac = container_mac(address)
    first = int(mac[:2], 16)
    assert first & 0x01 == 0  # unicast
    assert first & 0x02 == 2  # locally administered
    assert bytes(int(x, 16) for x in mac.split(":")[2:]) == address.packed
    assert container_mac(str(address)) == mac  # stable, str or address
    assert container_mac(address, host_side=True) != mac


def test_container_mac_known_value() -> None:
    assert container_mac("10.32.0.72") == "0a:58:0a:20:00:48"
    assert container_mac("10.32.0.72", host_side=True) == "0a:59:0a:20:00:48"


def test_host_ifname_fits_ifnamsiz() -> None:
    assert len(host_ifname("x" * 200)) <= 15
    assert host_ifname("a") != host_ifname("b")


def test_same_netns_compares_the_namespace_not_the_path(tmp_path) -> None:
    import os

    from crossnet.containers import _same_netns

    own = "/proc/self/ns/net"
    assert _same_netns(own, f"/proc/{os.getpid()}/ns/net")  # two paths, one namespace
    other = tmp_path / "file"
    other.write_text("")
    assert not _same_netns(own, str(other))
    assert not _same_netns(str(tmp_path / "gone"), str(tmp_path / "gone"))  # a missing path is nobody's


def test_attachment_json_says_which_id_it_was_asked_as() -> None:
    from crossnet.containers import Attachment

    att = Attachment("/run/netns/web", "/run/netns/web", "10.32.0.5", 24, "10.32.0.1", "eth0", "cnv0", 1450)
    assert "asked_as" not in att.to_json()
    att.asked_as = "web"
    assert att.to_json()["asked_as"] == "web" and att.to_json()["id"] == "/run/netns/web"


def test_an_entry_whose_veth_was_never_made_is_incomplete_not_attached(tmp_path, monkeypatch) -> None:
    """An attach killed after its IPAM write (no veth yet) was listed `attached` by
    status/list_containers; it is `incomplete`, with what is missing and the commands that
    finish or remove it. An entry whose namespace is gone stays `stale`, a whole one
    `attached`."""
    from types import SimpleNamespace

    from crossnet import containers
    from crossnet.state import StateDir

    state = StateDir(str(tmp_path))
    state.root.mkdir(parents=True, exist_ok=True)
    state.ipam_path.write_text("{}")
    alive, gone = tmp_path / "alive", tmp_path / "gone"
    alive.write_text("")

    def entry(key: str, address: str, netns: str) -> SimpleNamespace:
        return SimpleNamespace(key=key, address=IPv4Address(address),
                               meta={"netns": netns, "ifname": "eth0", "host_if": host_ifname(key)})

    entries = {"web": entry("web", "10.32.0.2", str(alive)), "half": entry("half", "10.32.0.3", str(alive)),
               "dead": entry("dead", "10.32.0.4", str(gone)),
               # the Docker plugin's address before Docker joins the endpoint: no namespace recorded
               "docker:0a1b": SimpleNamespace(key="docker:0a1b", address=IPv4Address("10.32.0.5"),
                                              meta={"docker": True})}
    monkeypatch.setattr(containers.HostContext, "applied", staticmethod(lambda s: SimpleNamespace()))
    monkeypatch.setattr(containers, "pool_for", lambda s, c: SimpleNamespace(entries=lambda: entries))
    monkeypatch.setattr(containers, "_host_links", lambda: {"lo", host_ifname("web")})
    monkeypatch.setattr(containers, "netns_ident", lambda p: (1, 2) if p == str(alive) else None)
    rows = {r["id"]: r for r in containers.list_containers(state)}
    assert {k: r["state"] for k, r in rows.items()} == {"web": "attached", "half": "incomplete", "dead": "stale",
                                                         "docker:0a1b": "attached"}
    assert "missing" not in rows["web"] and "complete" not in rows["dead"]
    assert rows["half"]["missing"].startswith(f"the veth {host_ifname('half')} ")
    # the id attach gave it: `attach half` resolves to it again (a path would be another id)
    assert rows["half"]["complete"] == "crossnet attach half (or crossnet detach half to remove it)"
    # a named network's entry, another interface name: the commands say so
    assert containers.incomplete("x y", SimpleNamespace(meta={"ifname": "net1"}), "blue")["complete"] == \
        "crossnet attach --network blue --ifname net1 'x y' (or crossnet detach --network blue 'x y' to remove it)"
    # a CNI attachment is completed by the runtime's ADD
    cni = SimpleNamespace(meta={"cni": {"network": "podman1", "containerID": "c0ffee", "ifname": "eth0"}})
    assert containers.incomplete("c0ffee/eth0", cni)["complete"] == \
        "the runtime's CNI ADD of network 'podman1' again (or crossnet detach c0ffee/eth0 to remove it)"
