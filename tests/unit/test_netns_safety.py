"""Pure parts of issue 11's namespace and life-cycle fixes: the host-namespace refusal,
identities of namespace files, stale detection and alias lookup (regular files stand in
for namespace files: identity is (st_dev, st_ino) either way), IPAM undo / conditional
release, the state dir lock that leaves a fresh state dir as it was, and the CNI
client's target identity. The kernel side is tested in tests/e2e/test_netns_safety.py."""

from __future__ import annotations

import os
import threading
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossnet import containers
from crossnet.errors import ConfigError
from crossnet.ipam import AddressPool
from crossnet.state import StateDir

NET = IPv4Network("10.32.0.0/24")


# ---------------------------------------------------------------------- host namespace


def test_own_namespace_is_refused_naming_the_field() -> None:
    own = containers.netns_ident("/proc/self/ns/net")
    assert own in containers.own_namespaces()
    with pytest.raises(containers.HostNamespace) as exc:
        containers.refuse_host_netns(own, "CONTAINER 'pid:1'")
    assert isinstance(exc.value, ConfigError) and exc.value.exit_code == 2
    msg = str(exc.value)
    assert msg.startswith("CONTAINER 'pid:1' is this host's own network namespace") and "\n" not in msg


def test_initial_namespace_is_listed_when_readable() -> None:
    init = containers.netns_ident("/proc/1/ns/net")
    if init is None:
        pytest.skip("/proc/1/ns/net is not readable here")
    assert init in containers.own_namespaces()


def test_check_target_passes_other_files_and_missing_ones(tmp_path) -> None:
    f = tmp_path / "ns"
    f.write_text("")
    st_ = f.stat()
    assert containers.check_target(str(f), "netns") == (st_.st_dev, st_.st_ino)
    assert containers.check_target(str(tmp_path / "missing"), "netns") is None
    with pytest.raises(containers.HostNamespace):
        containers.check_target("/proc/self/ns/net", "netns")
    with pytest.raises(containers.HostNamespace):
        containers.check_target("/proc/thread-self/ns/net", "netns")


# ---------------------------------------------------------------------- stale, aliases


def _alloc(key: str, path: str | None, ident: tuple[int, int] | None = None, host_if: str | None = None):
    meta = {}
    if path is not None:
        meta["netns"] = path
    if ident is not None:
        meta["netns_id"] = list(ident)
    if host_if is not None:
        meta["host_if"] = host_if
    return SimpleNamespace(key=key, address=IPv4Address("10.32.0.5"), meta=meta)


def test_stale_needs_the_namespace_and_its_veth_gone(tmp_path) -> None:
    f = tmp_path / "ns"
    f.write_text("")
    ident = containers.netns_ident(str(f))
    a = _alloc("c", str(f), ident, "cnvaaaa")
    assert containers.stale_reason(a, set()) is None  # there
    f.unlink()
    assert containers.stale_reason(a, {"cnvaaaa"}) is None  # veth alive: the namespace lives on elsewhere
    assert "is gone" in containers.stale_reason(a, set())
    # the path now names another namespace (a name re-used, a PID re-used)
    other = tmp_path / "keep"
    other.write_text("")  # keeps the old inode number from being reused for the new file
    f.write_text("")
    if containers.netns_ident(str(f)) != ident:
        assert "now another network namespace" in containers.stale_reason(a, set())
    # records without a path cannot be judged: never stale
    assert containers.stale_reason(_alloc("x", None), set()) is None


def _ctx():
    return SimpleNamespace(gateway=IPv4Address("10.32.0.1"), backend="vxlan", subnet=NET, prefixlen=16)


def test_find_attachments_and_resolve_key_match_the_identity_not_the_spelling(tmp_path) -> None:
    state = StateDir(tmp_path / "state")
    ns_file = tmp_path / "ns1"
    ns_file.write_text("")
    alias = tmp_path / "alias"
    os.link(ns_file, alias)  # another name of the same file: like /proc/N/ns/net vs /run/netns/NAME
    ident = containers.netns_ident(str(ns_file))
    pool = containers.pool_for(state, _ctx())
    pool.allocate("pid-42", meta={"netns": str(ns_file), "netns_id": list(ident)})
    other = tmp_path / "ns2"
    other.write_text("")
    pool.allocate("other", meta={"netns": str(other), "netns_id": list(containers.netns_ident(str(other)))})
    assert containers.find_attachments(state, _ctx(), str(alias)) == ["pid-42"]
    assert containers.resolve_key(state, _ctx(), str(alias), str(alias)) == "pid-42"
    assert containers.resolve_key(state, _ctx(), "other", str(alias)) == "other"  # attached under that id
    assert containers.resolve_key(state, _ctx(), "nope", None) == "nope"
    assert containers.resolve_key(state, _ctx(), "nope", str(tmp_path / "missing")) == "nope"
    # two ids on one namespace: refused, naming them
    pool.allocate("second", meta={"netns": str(alias), "netns_id": list(ident)})
    with pytest.raises(ConfigError, match="pid-42, second"):
        containers.resolve_key(state, _ctx(), "x", str(ns_file))


# ---------------------------------------------------------------------- IPAM undo


def test_undo_moves_the_pointer_back(tmp_path) -> None:
    pool = AddressPool(tmp_path / "ipam.json", NET, reserved={IPv4Address("10.32.0.1")})
    a = pool.allocate("a")
    failed = pool.allocate("b")
    pool.undo(failed)
    assert pool.get("b") is None
    assert pool.allocate("c").address == failed.address  # as if b had never been tried
    assert pool.get("a") == a


def test_undo_after_a_later_allocation_only_removes_the_entry(tmp_path) -> None:
    pool = AddressPool(tmp_path / "ipam.json", NET)
    failed = pool.allocate("b")
    later = pool.allocate("c")
    pool.undo(failed)
    assert pool.get("b") is None and pool.get("c") == later
    assert pool.allocate("d").address == later.address + 1


def test_undo_leaves_an_existing_or_replaced_entry(tmp_path) -> None:
    pool = AddressPool(tmp_path / "ipam.json", NET)
    first = pool.allocate("a")
    again = pool.allocate("a")  # existing: not created by this call
    pool.undo(again)
    assert pool.get("a") == first
    pool.release("a")
    pool.allocate("a", requested=IPv4Address("10.32.0.200"))
    pool.undo(first)  # an entry re-made with another address meanwhile
    assert pool.get("a").address == IPv4Address("10.32.0.200")


def test_undo_after_release_still_moves_the_pointer_back(tmp_path) -> None:
    pool = AddressPool(tmp_path / "ipam.json", NET)
    failed = pool.allocate("a")
    pool.release("a")  # e.g. the CNI plugin's detach after a late failure
    pool.undo(failed)
    assert pool.allocate("b").address == failed.address


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["alloc", "release", "fail"]), max_size=25))
def test_a_failed_attach_never_changes_what_comes_next(tmp_path_factory, ops) -> None:
    """Two pools given the same operations, one also with failed attempts (allocate +
    undo) in between, hand out the same addresses."""
    d = tmp_path_factory.mktemp("p")
    with_failures = AddressPool(d / "a.json", IPv4Network("10.32.0.0/28"))
    clean = AddressPool(d / "b.json", IPv4Network("10.32.0.0/28"))
    n = 0
    for op in ops:
        n += 1
        if op == "alloc":
            if len(clean.entries()) >= 13:
                continue
            assert with_failures.allocate(f"k{n}").address == clean.allocate(f"k{n}").address
        elif op == "release" and clean.entries():
            key = sorted(clean.entries())[0]
            clean.release(key)
            with_failures.release(key)
        elif op == "fail" and len(clean.entries()) < 13:
            with_failures.undo(with_failures.allocate(f"failed{n}"))
    assert with_failures.entries() == clean.entries()


def test_release_if_only_the_expected_entry(tmp_path) -> None:
    pool = AddressPool(tmp_path / "ipam.json", NET)
    seen = pool.allocate("a", meta={"netns": "/x"})
    pool.update_meta("a", {"netns": "/y"})  # re-attached meanwhile
    assert pool.release_if("a", seen) is None and pool.get("a") is not None
    seen = pool.get("a")
    assert pool.release_if("a", seen, before=lambda cur: False) is None and pool.get("a") is not None
    calls = []
    assert pool.release_if("a", seen, before=lambda cur: calls.append(cur.key) or True) == seen
    assert calls == ["a"] and pool.get("a") is None


# ---------------------------------------------------------------------- state dir lock


def test_lock_on_a_missing_state_dir_leaves_nothing_when_nothing_is_recorded(tmp_path) -> None:
    state = StateDir(tmp_path / "a" / "b")
    with pytest.raises(RuntimeError):
        with state.lock():
            assert (tmp_path / "a" / "b" / "lock").exists()
            raise RuntimeError("apply failed")
    assert not (tmp_path / "a").exists()


def test_lock_on_an_empty_state_dir_leaves_it_empty(tmp_path) -> None:
    state = StateDir(tmp_path)
    with state.lock():
        pass
    assert list(tmp_path.iterdir()) == []


def test_lock_stays_when_something_is_recorded_or_it_was_there(tmp_path) -> None:
    state = StateDir(tmp_path / "s")
    with state.lock():
        state.save_applied({"version": 1})
    assert (tmp_path / "s" / "lock").exists()
    state.applied_path.unlink()
    with state.lock():  # the lock file was there before: left alone
        pass
    assert (tmp_path / "s" / "lock").exists()


def test_a_waiter_takes_the_new_lock_file_after_the_creator_removed_its_own(tmp_path) -> None:
    """flock is per open file: a process that waited on the removed lock file must not
    think it holds the lock while a third one locks the new file."""
    state = StateDir(tmp_path / "s")
    inside = threading.Event()
    order: list[str] = []
    seen_inode: list[int] = []

    def waiter() -> None:
        inside.wait(5)
        with state.lock():
            order.append("waiter")
            seen_inode.append(os.stat(tmp_path / "s" / "lock").st_ino)
            state.save_applied({"version": 1})  # records something: the lock file stays

    t = threading.Thread(target=waiter)
    t.start()
    with state.lock():
        inside.set()
        time.sleep(0.3)  # the waiter is blocked on this lock file
        order.append("first")
    t.join(10)
    assert order == ["first", "waiter"]
    assert (tmp_path / "s" / "lock").exists() and seen_inode[0] == os.stat(tmp_path / "s" / "lock").st_ino


# ---------------------------------------------------------------------- CNI target identity


def test_cni_target_id_names_the_namespace_as_this_process_resolves_it(tmp_path, monkeypatch) -> None:
    from crossnet.cni.client import request_bytes, target_id

    own = os.stat("/proc/self/ns/net")
    assert target_id({"CNI_NETNS": "/proc/self/ns/net"}) == [own.st_dev, own.st_ino]
    assert target_id({}) is None and target_id({"CNI_NETNS": ""}) is None
    assert target_id({"CNI_NETNS": str(tmp_path / "missing")}) is None
    assert target_id({"CNI_NETNS": "surely-no-such-netns-name"}) is None  # a name: /run/netns/NAME
    monkeypatch.chdir(tmp_path)
    Path("rel").mkdir()
    (tmp_path / "rel" / "ns").write_text("")
    st_ = os.stat(tmp_path / "rel" / "ns")
    assert target_id({"CNI_NETNS": "rel/ns"}) == [st_.st_dev, st_.st_ino]  # relative to this process's cwd
    import json

    body = json.loads(request_bytes({"CNI_NETNS": "rel/ns", "CNI_COMMAND": "ADD"}, b"{}"))
    assert body["target"] == [st_.st_dev, st_.st_ino]
    assert json.loads(request_bytes({"CNI_COMMAND": "DEL"}, b"{}"))["target"] is None


def test_agent_checks_the_callers_namespace_identity(tmp_path) -> None:
    from crossnet.agent.api import _same_namespace

    f = tmp_path / "ns"
    f.write_text("")
    st_ = f.stat()
    _same_namespace({}, str(f))  # no identity sent: nothing to compare
    _same_namespace({"netns_id": [st_.st_dev, st_.st_ino]}, str(f))
    with pytest.raises(ConfigError, match="another network namespace"):
        _same_namespace({"netns_id": [st_.st_dev, st_.st_ino + 1]}, str(f))
    with pytest.raises(ConfigError, match="netns_id"):
        _same_namespace({"netns_id": "abc"}, str(f))


def test_resolve_key_finds_a_removed_runtime_container_by_its_recorded_name(tmp_path) -> None:
    """`detach docker:NAME` after `docker rm`: the runtime no longer knows NAME (no netns),
    the record attach made is keyed by the container id and carries the name."""
    state = StateDir(tmp_path / "state")
    pool = containers.pool_for(state, _ctx())
    cid = "ab" * 32
    pool.allocate(cid, meta={"netns": "/proc/999999999/ns/net", "name": "web"})
    pool.allocate("docker:0123456789ab", meta={"name": "web"})  # a Docker driver endpoint: never detached by name
    pool.allocate("cd" * 32, meta={"name": "db"})
    assert containers.resolve_key(state, _ctx(), "docker:web", None) == cid
    assert containers.resolve_key(state, _ctx(), "podman:web", None) == cid
    assert containers.resolve_key(state, _ctx(), "docker:gone", None) == "docker:gone"
    assert containers.resolve_key(state, _ctx(), "web", None) == "web"  # not a runtime spec
    assert containers.resolve_key(state, _ctx(), "docker:", None) == "docker:"
    pool.allocate("ef" * 32, meta={"name": "web"})
    with pytest.raises(ConfigError, match=f"{cid}, {'ef' * 32}"):
        containers.resolve_key(state, _ctx(), "docker:web", None)


def test_a_named_networks_veth_is_not_the_top_level_networks() -> None:
    """One container id attached to ``default`` and to ``blue``: both networks named the
    host veth cnv+hash(id), so blue's attach took default's veth as its own. A named
    network's name is in the hash; the top-level network's names are as before (running
    attachments keep theirs), every name is a routed-veth name (crossnet.datapath)."""
    import hashlib
    import re

    cid = "ab" * 32
    top = containers.host_ifname(cid)
    assert top == "cnv" + hashlib.sha1(cid.encode()).hexdigest()[:10]
    names = {top, containers.host_ifname(cid, "blue"), containers.host_ifname(cid, "red")}
    assert len(names) == 3 and all(re.fullmatch(r"cnv[0-9a-f]{10}", n) for n in names)
    # a top-level key that spells "network/id" is not the named network's attachment of id
    assert containers.host_ifname(f"blue/{cid}") != containers.host_ifname(cid, "blue")
