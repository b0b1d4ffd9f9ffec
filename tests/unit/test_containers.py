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
