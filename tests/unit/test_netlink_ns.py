"""crossnet.netlink.ns: where a namespace lives and the one socket-in-a-namespace helper
(used by check, trace.verify and transport.probe)."""

from __future__ import annotations

import os
import socket

import pytest

from crossnet.errors import CrossnetError
from crossnet.netlink import ns
from crossnet.transport import probe


def test_a_name_lives_under_run_netns_and_a_path_is_kept():
    assert ns.netns_location("cn-h1") == "/run/netns/cn-h1"
    assert ns.netns_location("/proc/1/ns/net") == "/proc/1/ns/net"


def test_netns_path_names_the_missing_namespace():
    with pytest.raises(CrossnetError, match="'cnx-no-such-ns'.*not found"):
        ns.netns_path("cnx-no-such-ns")
    assert ns.netns_path("/proc/self/ns/net") == "/proc/self/ns/net"


def test_a_socket_in_a_namespace_leaves_the_callers_thread_where_it_was():
    before = os.readlink("/proc/thread-self/ns/net")
    with ns.socket_in_netns(f"/proc/{os.getpid()}/ns/net", socket.AF_INET, socket.SOCK_DGRAM) as s:
        assert s.family == socket.AF_INET
        assert not s.get_inheritable()
    assert os.readlink("/proc/thread-self/ns/net") == before


def test_no_namespace_means_this_one():
    for spec in (None, ""):
        with ns.socket_in_netns(spec, socket.AF_INET, socket.SOCK_DGRAM) as s:
            assert s.family == socket.AF_INET


def test_a_missing_namespace_is_an_oserror():
    with pytest.raises(FileNotFoundError):
        ns.socket_in_netns("cnx-no-such-ns", socket.AF_INET, socket.SOCK_DGRAM)


def test_an_echo_from_a_missing_namespace_is_no_answer():
    # it raised CrossnetError (probe resolved the name through iproute.netns_path) although
    # echo() promises None for "no such namespace"
    assert probe.echo("192.0.2.1", 100, timeout=0.1, netns="cnx-no-such-ns") is None
