"""Subnet carving and the persistent address pool (crossnet.ipam)."""

from __future__ import annotations

import json
import multiprocessing
import stat
import tempfile
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from crossnet.errors import IpamError
from crossnet.ipam import AddressPool, Allocation, CarveError, carve_subnets, count_free_blocks

A = IPv4Address
N = IPv4Network

# --------------------------------------------------------------------------- carving


def test_carve_in_order_lowest_first() -> None:
    result = carve_subnets(N("10.32.0.0/16"), 24, [("a", None), ("b", None), ("c", None)])
    assert result == {"a": N("10.32.0.0/24"), "b": N("10.32.1.0/24"), "c": N("10.32.2.0/24")}
    assert list(result) == ["a", "b", "c"]


def test_carve_tutorial_bridge_split() -> None:
    lan = N("10.211.55.0/24")
    reserved = [A("10.211.55.1"), A("10.211.55.10"), A("10.211.55.20")]
    reserved += [lan.network_address, lan.broadcast_address]
    result = carve_subnets(lan, 26, [("host1", None), ("host2", None)], reserved)
    assert result == {"host1": N("10.211.55.64/26"), "host2": N("10.211.55.128/26")}
    assert count_free_blocks(lan, 26, reserved) == 2


def test_carve_tutorial_bridge_split_with_per_host_addresses() -> None:
    lan = N("10.211.55.0/24")
    reserved = [lan.network_address, lan.broadcast_address, A("10.211.55.1")]
    hosts = [("host1", None), ("host2", None)]
    result = carve_subnets(lan, 26, hosts, reserved, [A("10.211.55.10"), A("10.211.55.20")])
    assert result == {"host1": N("10.211.55.64/26"), "host2": N("10.211.55.128/26")}


def test_carve_earlier_pins_and_reserved_networks_are_avoided() -> None:
    hosts = [("b", N("10.0.0.0/26")), ("a", None), ("c", None)]
    result = carve_subnets(N("10.0.0.0/24"), 26, hosts, reserved=[N("10.0.0.64/27")])
    assert result == {"b": N("10.0.0.0/26"), "a": N("10.0.0.128/26"), "c": N("10.0.0.192/26")}


def test_carve_later_pins_do_not_move_earlier_hosts() -> None:
    # a later pin on a free block: the hosts before it are carved as if it weren't there
    hosts = [("a", None), ("b", N("10.0.0.64/26")), ("c", None)]
    result = carve_subnets(N("10.0.0.0/24"), 26, hosts)
    assert result == {"a": N("10.0.0.0/26"), "b": N("10.0.0.64/26"), "c": N("10.0.0.128/26")}


def test_carve_pin_on_an_earlier_hosts_block_is_an_error_not_a_move() -> None:
    """The audit's case: appending a host pinned to a's block used to move a and b."""
    hosts = [("a", None), ("b", None), ("c", N("10.32.0.0/24"))]
    with pytest.raises(CarveError) as info:
        carve_subnets(N("10.32.0.0/16"), 24, hosts)
    err = info.value
    assert (err.index, err.field, err.owner, err.block) == (2, "subnet", 0, N("10.32.0.0/24"))
    assert str(err) == (
        "host 'c': pinned 10.32.0.0/24 is already the block of host 'a' "
        "(blocks are carved in file order)"
    )


def test_carve_address_inside_an_earlier_block_is_an_error_not_a_move() -> None:
    lan = N("10.0.0.0/24")
    hosts = [("a", None), ("b", None)]
    with pytest.raises(CarveError) as info:  # b's address lies in a's (carved) range
        carve_subnets(lan, 26, hosts, [lan.network_address], [A("10.0.0.200"), A("10.0.0.70")])
    assert (info.value.index, info.value.field, info.value.owner) == (1, "address", 0)
    assert info.value.block == N("10.0.0.64/26")
    # a host's own address and earlier addresses are avoided by its carved block
    result = carve_subnets(lan, 26, hosts, [lan.network_address], [A("10.0.0.70"), A("10.0.0.10")])
    assert result == {"a": N("10.0.0.128/26"), "b": N("10.0.0.192/26")}


def test_carve_exhaustion() -> None:
    with pytest.raises(CarveError, match=r"no free /24 left in 10.32.0.0/23 for host 'c'") as info:
        carve_subnets(N("10.32.0.0/23"), 24, [("a", None), ("b", None), ("c", None)])
    assert (info.value.index, info.value.field, info.value.owner) == (2, "subnet", None)


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        ([("a", N("10.1.0.0/24"))], "not inside"),
        ([("a", N("10.0.0.0/25"))], "not a /24"),
        ([("a", N("10.0.1.0/24")), ("b", N("10.0.1.0/24"))], "already the block of host 'a'"),
        ([("a", None), ("a", None)], "duplicate host name 'a'"),
    ],
)
def test_carve_bad_input(hosts: list[tuple[str, IPv4Network | None]], message: str) -> None:
    with pytest.raises(IpamError, match=message):
        carve_subnets(N("10.0.0.0/16"), 24, hosts)


@pytest.mark.parametrize("prefixlen", [15, 33])
def test_carve_bad_prefixlen(prefixlen: int) -> None:
    with pytest.raises(IpamError, match="does not fit"):
        carve_subnets(N("10.0.0.0/16"), prefixlen, [("a", None)])


# ---- property tests: a naive model of the rule, random hosts, random pins anywhere

Hosts = list[tuple[str, IPv4Network | None]]


@st.composite
def carve_case(draw: st.DrawFn, with_addresses: bool | None = None):  # type: ignore[no-untyped-def]
    """(network, prefixlen, hosts, reserved, addresses): pins are any block of the
    network (free, taken by an earlier host, or another pin), at any position;
    addresses (bridge-like) are random addresses of the network, or None."""
    base_len = draw(st.integers(16, 26))
    network = N((A("10.0.0.0") + draw(st.integers(0, 255)) * (1 << (32 - base_len)), base_len))
    prefixlen = draw(st.integers(base_len, min(base_len + 4, 32)))
    blocks = list(network.subnets(new_prefix=prefixlen))
    count = draw(st.integers(0, 9))
    pin = st.one_of(st.none(), st.none(), st.sampled_from(blocks))
    hosts: Hosts = [(f"h{i}", draw(pin)) for i in range(count)]
    offsets = st.integers(0, network.num_addresses - 1)
    reserved = [network.network_address + off for off in draw(st.lists(offsets, max_size=3))]
    if with_addresses is None:
        with_addresses = draw(st.booleans())
    addresses = None
    if with_addresses:
        addresses = [network.network_address + draw(offsets) for _ in hosts]
    return network, prefixlen, hosts, reserved, addresses


def carve_model(network, prefixlen, hosts, reserved, addresses):  # type: ignore[no-untyped-def]
    """The rule, written as plainly as possible: file order; a pin is kept unless it is
    an earlier host's block; an unpinned host takes the lowest block holding no
    reserved item, no address of itself or an earlier host, and no earlier block.
    Returns the blocks, or (index, field) of the first error."""
    taken: list[IPv4Network] = []
    avoid: list[IPv4Network] = [N(r) if isinstance(r, IPv4Address) else r for r in reserved]
    for i, (_, pin) in enumerate(hosts):
        address = addresses[i] if addresses else None
        if address is not None:
            if any(address in block for block in taken):
                return (i, "address")
            avoid.append(N(address))
        if pin is not None:
            if any(pin.overlaps(block) for block in taken):
                return (i, "subnet")
            block = pin
        else:
            free = (
                b
                for b in network.subnets(new_prefix=prefixlen)
                if not any(b.overlaps(x) for x in [*avoid, *taken])
            )
            block = next(free, None)
            if block is None:
                return (i, "subnet")
        taken.append(block)
    return {name: block for (name, _), block in zip(hosts, taken)}


def carve_or_error(network, prefixlen, hosts, reserved, addresses):  # type: ignore[no-untyped-def]
    try:
        return carve_subnets(network, prefixlen, hosts, reserved, addresses)
    except CarveError as exc:
        return (exc.index, exc.field)


@settings(max_examples=400, deadline=None)
@given(carve_case())
def test_carve_matches_the_model_and_never_overlaps(case) -> None:  # type: ignore[no-untyped-def]
    network, prefixlen, hosts, reserved, addresses = case
    got = carve_or_error(*case)
    assert got == carve_model(*case)
    if isinstance(got, tuple):
        return
    assert list(got) == [name for name, _ in hosts]
    subnets = list(got.values())
    for i, subnet in enumerate(subnets):
        assert subnet.prefixlen == prefixlen and subnet.subnet_of(network)  # inside the network
        assert not any(subnet.overlaps(other) for other in subnets[i + 1 :])  # no overlaps, ever
    for i, (name, pin) in enumerate(hosts):
        if pin is not None:
            assert got[name] == pin
        else:
            assert not any(r in got[name] for r in reserved)
            assert not any(a in got[name] for a in (addresses or [])[: i + 1] if a is not None)
        if addresses and addresses[i] is not None:  # no host address inside an earlier block
            assert not any(addresses[i] in got[n] for n, _ in hosts[:i])


@settings(max_examples=400, deadline=None)
@given(carve_case())
def test_carve_depends_only_on_earlier_hosts(case) -> None:  # type: ignore[no-untyped-def]
    """Every prefix of the host list carves exactly like the whole list's prefix."""
    network, prefixlen, hosts, reserved, addresses = case
    whole = carve_or_error(*case)
    for k in range(len(hosts) + 1):
        part = carve_or_error(network, prefixlen, hosts[:k], reserved, addresses[:k] if addresses else None)
        if isinstance(whole, dict):
            assert part == {name: whole[name] for name, _ in hosts[:k]}
        elif k > whole[0]:
            assert part == whole  # the same error for the same host and field
        else:
            assert isinstance(part, dict)  # the hosts before the failing one are fine


@st.composite
def append_case(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    network, prefixlen, hosts, reserved, addresses = draw(carve_case())
    before = carve_or_error(network, prefixlen, hosts, reserved, addresses)
    assume(isinstance(before, dict))
    blocks = list(network.subnets(new_prefix=prefixlen))
    used = list(before.values())
    pins = [st.none(), st.sampled_from(blocks)] + ([st.sampled_from(used)] if used else [])
    pin = draw(st.one_of(*pins))  # none, anywhere, or (often) an existing host's block
    address = None
    if addresses is not None:  # anywhere, or (often) inside an existing host's block
        area = draw(st.sampled_from(used)) if used and draw(st.booleans()) else network
        address = area[draw(st.integers(0, area.num_addresses - 1))]
    return network, prefixlen, hosts, reserved, addresses, before, pin, address


@settings(max_examples=400, deadline=None)
@given(append_case())
def test_carve_appending_a_host_never_moves_an_earlier_one(case) -> None:  # type: ignore[no-untyped-def]
    """Appending any host -- unpinned, pinned anywhere, with any address -- either keeps
    every earlier host's block or is an error on the newcomer's own field."""
    network, prefixlen, hosts, reserved, addresses, before, pin, address = case
    new_hosts = [*hosts, ("newcomer", pin)]
    new_addresses = [*addresses, address] if addresses is not None else None
    try:
        after = carve_subnets(network, prefixlen, new_hosts, reserved, new_addresses)
    except CarveError as exc:
        assert exc.index == len(hosts) and exc.field in ("subnet", "address")
        assert "'newcomer'" in str(exc)
        if exc.owner is not None:  # names the earlier host in the way, whose block it is
            assert before[hosts[exc.owner][0]] == exc.block
            assert exc.block == pin or (address is not None and address in exc.block)
        else:  # a pin needs no room, so only an unpinned newcomer can run out of space
            assert pin is None
        return
    assert {name: after[name] for name in before} == before
    if pin is not None:
        assert after["newcomer"] == pin


def carve_pins_first(network, prefixlen, hosts, reserved, addresses):  # type: ignore[no-untyped-def]
    """The old rule (before file-order carving): all pins reserved first, then the
    other hosts in file order avoiding every pin and every host's address."""
    pins = [p for _, p in hosts if p is not None]
    if any(a.overlaps(b) for i, a in enumerate(pins) for b in pins[i + 1 :]):
        return None
    avoid = [*(N(r) for r in reserved), *(N(a) for a in addresses or [] if a is not None), *pins]
    result, taken = {}, []
    for name, pin in hosts:
        if pin is None:
            pin = next(
                (b for b in network.subnets(new_prefix=prefixlen) if not any(b.overlaps(x) for x in [*avoid, *taken])),
                None,
            )
            if pin is None:
                return None
            taken.append(pin)
        result[name] = pin
    return result


@settings(max_examples=300, deadline=None)
@given(carve_case())
def test_carve_upgrade_from_pins_first_never_renumbers_silently(case) -> None:  # type: ignore[no-untyped-def]
    """A file the old pins-first rule accepted carves the same under the file-order rule,
    or is rejected (and then says which host): never a silent renumbering."""
    network, prefixlen, hosts, reserved, addresses = case
    if addresses is not None:  # the old rule checked no addresses against pins
        assume(not any(a is not None and p is not None and a in p for a in addresses for _, p in hosts))
    old = carve_pins_first(*case)
    assume(old is not None)
    new = carve_or_error(*case)
    assert new == old or isinstance(new, tuple)


# --------------------------------------------------------------------------- pool


def make_pool(tmp: Path, subnet: str = "10.32.1.0/24", **kw) -> AddressPool:  # type: ignore[no-untyped-def]
    return AddressPool(tmp / "ipam" / "pool.json", N(subnet), **kw)


def test_allocate_first_and_state_format(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, reserved=[A("10.32.1.1")])
    alloc = pool.allocate("c1", meta={"netns": "/run/netns/c1"})
    assert alloc == Allocation("c1", A("10.32.1.2"), {"netns": "/run/netns/c1"})
    data = json.loads(pool.path.read_text())
    assert data == {
        "version": 1,
        "subnet": "10.32.1.0/24",
        "last": "10.32.1.2",
        "allocations": {"c1": {"address": "10.32.1.2", "meta": {"netns": "/run/netns/c1"}}},
    }


def test_file_and_dir_modes(tmp_path: Path) -> None:
    pool = make_pool(tmp_path)
    pool.allocate("c1")
    assert stat.S_IMODE(pool.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pool.lock_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pool.path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in pool.path.parent.iterdir()) == ["pool.json", "pool.json.lock"]


def test_same_key_same_address_and_persistence(tmp_path: Path) -> None:
    first = make_pool(tmp_path).allocate("c1", meta={"a": 1})
    again = make_pool(tmp_path)  # a new instance reads the file
    assert again.allocate("c1") == first
    assert again.allocate("c1", requested=first.address) == first
    assert again.get("c1") == first
    assert again.entries() == {"c1": first}
    with pytest.raises(IpamError, match=r"'c1' already has 10.32.1.1, cannot also take 10.32.1.9"):
        again.allocate("c1", requested=A("10.32.1.9"))


def test_never_network_or_broadcast(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, subnet="10.0.0.0/29")
    got = [pool.allocate(f"k{i}").address for i in range(6)]
    assert got == [A(f"10.0.0.{i}") for i in range(1, 7)]
    with pytest.raises(IpamError, match=r"no free address left in 10.0.0.0/29 for 'k6'"):
        pool.allocate("k6")


def test_exhaustion_with_reserved(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, subnet="10.0.0.0/30", reserved=[A("10.0.0.1")])
    assert pool.allocate("a").address == A("10.0.0.2")
    with pytest.raises(IpamError, match="no free address"):
        pool.allocate("b")
    pool.release("a")
    assert pool.allocate("b").address == A("10.0.0.2")


def test_requested_address_errors(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, reserved=[A("10.32.1.1")])
    assert pool.allocate("a", requested=A("10.32.1.50")).address == A("10.32.1.50")
    cases = {
        "10.32.2.5": "requested address 10.32.2.5 is outside 10.32.1.0/24",
        "10.32.1.1": "requested address 10.32.1.1 is reserved",
        "10.32.1.0": "requested address 10.32.1.0 is reserved",
        "10.32.1.255": "requested address 10.32.1.255 is reserved",
        "10.32.1.50": "requested address 10.32.1.50 is already taken by 'a'",
    }
    for address, message in cases.items():
        with pytest.raises(IpamError, match=message):
            pool.allocate("b", requested=A(address))
    assert pool.get("b") is None


def test_round_robin_reuse_order(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, subnet="10.0.0.0/29", reserved=[A("10.0.0.1")])
    assert [pool.allocate(k).address for k in "abc"] == [
        A("10.0.0.2"),
        A("10.0.0.3"),
        A("10.0.0.4"),
    ]
    pool.release("a")
    # the released .2 is not reused right away: next after the last handed out
    assert pool.allocate("d").address == A("10.0.0.5")
    assert pool.allocate("e").address == A("10.0.0.6")
    assert pool.allocate("f").address == A("10.0.0.2")  # wraps, skipping network/gateway
    pool.release("c")
    assert pool.allocate("g").address == A("10.0.0.4")  # next free after .2 (.3 is b's)
    with pytest.raises(IpamError, match="no free address"):
        pool.allocate("h")


def test_requested_moves_the_cursor(tmp_path: Path) -> None:
    pool = make_pool(tmp_path)
    pool.allocate("a", requested=A("10.32.1.100"))
    assert pool.allocate("b").address == A("10.32.1.101")


def test_usable_range_inside_lan(tmp_path: Path) -> None:
    lan = N("10.211.55.0/24")
    pool = AddressPool(
        tmp_path / "p.json",
        lan,
        reserved=[A("10.211.55.1"), A("10.211.55.10")],
        usable=N("10.211.55.252/30"),
    )
    got = [pool.allocate(k).address for k in "abc"]
    assert got == [
        A("10.211.55.252"),
        A("10.211.55.253"),
        A("10.211.55.254"),
    ]  # .255: LAN broadcast
    with pytest.raises(IpamError, match="no free address left in 10.211.55.252/30"):
        pool.allocate("d")
    with pytest.raises(IpamError, match="outside 10.211.55.252/30"):
        pool.allocate("d", requested=A("10.211.55.20"))
    with pytest.raises(IpamError, match="not inside subnet"):
        AddressPool(tmp_path / "q.json", lan, usable=N("10.0.0.0/30"))


def test_release_and_update_meta(tmp_path: Path) -> None:
    pool = make_pool(tmp_path)
    alloc = pool.allocate("a", meta={"x": 1})
    pool.update_meta("a", {"y": 2})
    assert pool.get("a") == Allocation("a", alloc.address, {"x": 1, "y": 2})
    with pytest.raises(IpamError, match="no address allocated for 'zz'"):
        pool.update_meta("zz", {})
    assert pool.release("a") == Allocation("a", alloc.address, {"x": 1, "y": 2})
    assert pool.release("a") is None
    assert pool.get("a") is None and pool.entries() == {}


def test_state_for_another_subnet_or_corrupt(tmp_path: Path) -> None:
    make_pool(tmp_path).allocate("a")
    with pytest.raises(IpamError, match=r"state is for subnet 10.32.1.0/24, not 10.32.2.0/24"):
        make_pool(tmp_path, subnet="10.32.2.0/24").entries()
    pool = make_pool(tmp_path)
    pool.path.write_text("{not json")
    with pytest.raises(IpamError, match="unreadable IPAM state") as info:
        pool.allocate("b")
    assert "\n" not in str(info.value)
    pool.path.write_text('{"version": 1, "subnet": "10.32.1.0/24"}')
    with pytest.raises(IpamError, match="malformed IPAM state"):
        pool.get("a")


# ---- concurrency


def _worker(path: str, subnet: str, op: str, key: str, barrier, results) -> None:  # type: ignore[no-untyped-def]
    pool = AddressPool(path, N(subnet))
    barrier.wait()
    try:
        if op == "allocate":
            results.put((key, str(pool.allocate(key, meta={"pid": key}).address)))
        else:
            released = pool.release(key)
            results.put((key, str(released.address) if released else None))
    except Exception as exc:  # report instead of dying silently
        results.put((key, f"error: {exc!r}"))


def _run_concurrently(path: Path, subnet: str, op: str, keys: list[str]) -> dict[str, str | None]:
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(len(keys)), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(str(path), subnet, op, k, barrier, results)) for k in keys
    ]
    for proc in procs:
        proc.start()
    out = dict(results.get(timeout=60) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    return out


@pytest.mark.timeout(120)
def test_concurrent_processes(tmp_path: Path) -> None:
    path, subnet = tmp_path / "state" / "pool.json", "10.32.1.0/24"
    keys = [f"c{i}" for i in range(20)]
    got = _run_concurrently(path, subnet, "allocate", keys)
    assert not [v for v in got.values() if v is None or v.startswith("error")], got
    assert len(set(got.values())) == 20
    pool = AddressPool(path, N(subnet))
    assert {k: str(a.address) for k, a in pool.entries().items()} == got
    released = _run_concurrently(path, subnet, "release", keys)
    assert released == got
    assert pool.entries() == {}


# ---- property test: any allocate/release sequence

OPS = st.lists(
    st.tuples(
        st.sampled_from(["alloc", "alloc", "request", "release"]),
        st.sampled_from([f"k{i}" for i in range(8)]),
        st.integers(0, 15),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_pool_never_double_books(ops: list[tuple[str, str, int]]) -> None:
    subnet = N("10.9.9.0/28")
    reserved = {A("10.9.9.1"), A("10.9.9.7")}
    forbidden = reserved | {subnet.network_address, subnet.broadcast_address}
    with tempfile.TemporaryDirectory() as tmp:
        pool = AddressPool(Path(tmp) / "p.json", subnet, reserved=reserved)
        model: dict[str, IPv4Address] = {}
        for op, key, offset in ops:
            if op == "release":
                released = pool.release(key)
                assert (released.address if released else None) == model.pop(key, None)
                continue
            requested = subnet.network_address + offset if op == "request" else None
            try:
                alloc = pool.allocate(key, requested=requested)
            except IpamError:
                if key in model:  # only a conflicting request may fail for a known key
                    assert requested is not None and requested != model[key]
                continue
            assert model.setdefault(key, alloc.address) == alloc.address
            if requested is not None:
                assert alloc.address == requested
            current = {k: a.address for k, a in pool.entries().items()}
            assert current == model
            assert len(set(current.values())) == len(current)
            assert not forbidden & set(current.values())
        # a fresh instance sees the same state
        assert {
            k: a.address for k, a in AddressPool(Path(tmp) / "p.json", subnet).entries().items()
        } == model


def test_allocate_meta_for_is_recorded_with_a_new_address_only(tmp_path: Path) -> None:
    pool = AddressPool(tmp_path / "ipam.json", IPv4Network("10.9.0.0/29"), reserved={IPv4Address("10.9.0.1")})
    seen: list[IPv4Address] = []

    def meta_for(address: IPv4Address) -> dict:
        seen.append(address)
        return {"mac": f"m-{address}"}

    a = pool.allocate("c1", meta={"netns": "n1"}, meta_for=meta_for)
    assert seen == [a.address]
    assert pool.get("c1").meta == {"netns": "n1", "mac": f"m-{a.address}"}
    # an existing allocation keeps its meta; meta_for is not consulted
    again = pool.allocate("c1", meta={"netns": "other"}, meta_for=meta_for)
    assert again.address == a.address and seen == [a.address]
    assert pool.get("c1").meta["netns"] == "n1"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.integers(24, 32)), max_size=30),
       st.integers(0, 255), st.integers(24, 32))
def test_occupied_runs_agree_with_a_plain_scan(spans, q_start, q_len) -> None:
    """The merged-run lookup used by carve_subnets answers like scanning every span."""
    from crossnet.leases import _Occupied
    from crossnet.leases import span as _span

    nets = [IPv4Network((int(IPv4Address("10.0.0.0")) + (s & ~((1 << (32 - p)) - 1)), p)) for s, p in spans]
    occ = _Occupied(nets)
    q = IPv4Network((int(IPv4Address("10.0.0.0")) + (q_start & ~((1 << (32 - q_len)) - 1)), q_len))
    first, last = _span(q)
    overlapping = [_span(n) for n in nets if _span(n)[1] >= first and _span(n)[0] <= last]
    got = occ.conflict_end(first, last)
    if not overlapping:
        assert got is None
    else:
        assert got is not None and got >= max(e for _, e in overlapping)
        # carve_subnets skips to the first block after `got`: whatever lies between the
        # queried block and `got` must be occupied (so no free block is jumped over)
        if got > last:
            covered = set()
            for n in nets:
                s, e = _span(n)
                covered.update(range(max(s, last + 1), min(e, got) + 1))
            assert covered == set(range(last + 1, got + 1))
