"""The subnet rules (crossnet.leases), pure: the file's carving in order, a store's
choice of a subnet, and the refusal to renumber. The same rules serve `apply`
(host.check_subnet_kept), the static store and the etcd store; the etcd store's
transactions are tested against a real etcd in test_store_etcd.py."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from crossnet.errors import ConfigError
from crossnet.leases import (
    CarveError,
    SubnetsExhausted,
    carve_subnets,
    check_kept,
    choose_subnet,
)

N = IPv4Network
NET = N("10.32.0.0/16")


# ---------------------------------------------------------------- a store's choice


def test_choice_keeps_what_the_host_had_while_it_is_free():
    taken = {N("10.32.0.0/24"), N("10.32.1.0/24")}
    # its previous subnet, free: kept even though a lower one is free
    assert choose_subnet(NET, 24, taken, wanted=[N("10.32.9.0/24")]) == N("10.32.9.0/24")
    # taken by another host: the lowest free one
    assert choose_subnet(NET, 24, taken, wanted=[N("10.32.1.0/24")]) == N("10.32.2.0/24")
    # held by this host itself (a record under its own name): kept
    assert choose_subnet(NET, 24, taken, wanted=[N("10.32.1.0/24")], mine=[N("10.32.1.0/24")]) == N("10.32.1.0/24")
    # the first wanted that is usable wins; None and foreign shapes are skipped
    wanted = [None, N("10.33.0.0/24"), N("10.32.4.0/25"), N("10.32.0.0/24"), N("10.32.7.0/24"), N("10.32.8.0/24")]
    assert choose_subnet(NET, 24, taken, wanted=wanted) == N("10.32.7.0/24")


def test_choice_avoids_subnets_other_hosts_remember_until_nothing_else_is_left():
    net = N("10.40.0.0/28")  # four /30
    taken = {N("10.40.0.0/30")}
    remembered = [N("10.40.0.4/30"), N("10.40.0.8/30")]
    assert choose_subnet(net, 30, taken, avoid=remembered) == N("10.40.0.12/30")
    assert choose_subnet(net, 30, taken | {N("10.40.0.12/30")}, avoid=remembered) == N("10.40.0.4/30")
    with pytest.raises(SubnetsExhausted, match=r"^network 10\.40\.0\.0/28 has no free /30 subnet left \(4 hosts hold all 4\)$"):
        choose_subnet(net, 30, {N(f"10.40.0.{i}/30") for i in (0, 4, 8, 12)})


def test_hostile_store_keys_block_nothing():
    """A key naming a /16 or a subnet of another network (a hostile or stale record)
    does not make the whole network look full."""
    taken = {N("10.32.0.0/16"), N("10.99.0.0/24"), N("10.32.0.0/25")}
    assert choose_subnet(NET, 24, taken) == N("10.32.0.0/24")


@st.composite
def store_histories(draw):
    """A network and a sequence of joins / leaves / expiries of hosts h0..h7."""
    plen = draw(st.integers(26, 29))
    ops = draw(st.lists(st.tuples(st.sampled_from(["join", "leave", "expire"]), st.integers(0, 7)), max_size=40))
    return N(f"10.50.0.0/{plen}"), ops


@settings(max_examples=300, deadline=None)
@given(store_histories())
def test_a_fake_store_never_gives_one_subnet_to_two_hosts_and_keeps_returning_hosts(history):
    """A store that only does what crossnet.store.etcd does around the rules: live
    leases, the subnet each host had last (forgotten on --release), local state."""
    net, ops = history
    live: dict[str, IPv4Network] = {}  # host -> subnet of its live lease
    remembered: dict[str, IPv4Network] = {}  # <prefix>/hosts/<name>
    local: dict[str, IPv4Network] = {}  # the host's own persisted lease
    for op, i in ops:
        name = f"h{i}"
        if op == "join":
            before = dict(live)
            try:
                sub = choose_subnet(net, 30, set(live.values()),
                                    wanted=[live.get(name), local.get(name), remembered.get(name)],
                                    mine=[live[name]] if name in live else [],
                                    avoid=[s for h, s in remembered.items() if h != name])
            except SubnetsExhausted:
                assert len(set(live.values()) - {live.get(name)}) == 1 << (30 - net.prefixlen)
                continue
            assert sub.subnet_of(net) and sub.prefixlen == 30
            if name in before:
                assert sub == before[name]  # a live host keeps its subnet
            elif remembered.get(name) is not None and remembered[name] not in before.values():
                assert sub == remembered[name]  # coming back: its subnet again while free
            live[name] = remembered[name] = local[name] = sub
        elif op == "leave":  # agent --release: the store forgets it, so does the host
            live.pop(name, None)
            remembered.pop(name, None)
            local.pop(name, None)
        else:  # lease expired: the store remembers, the host keeps its local state
            live.pop(name, None)
        assert len(set(live.values())) == len(live)  # never two live hosts on one subnet


# ---------------------------------------------------------------- the file's carving


@st.composite
def files(draw):
    """A network, a block length and hosts in file order, some pinned."""
    plen = draw(st.integers(16, 24))
    sublen = draw(st.integers(plen + 1, min(plen + 5, 30)))
    net = N(f"10.0.0.0/{plen}")
    blocks = list(net.subnets(new_prefix=sublen))
    count = draw(st.integers(1, min(len(blocks), 12)))
    hosts = []
    for i in range(count):
        pin = draw(st.one_of(st.none(), st.sampled_from(blocks)))
        hosts.append((f"h{i}", pin))
    return net, sublen, hosts


@settings(max_examples=300, deadline=None)
@given(files())
def test_carving_gives_distinct_blocks_keeps_pins_and_appends_move_nobody(case):
    net, sublen, hosts = case
    try:
        got = carve_subnets(net, sublen, hosts)
    except CarveError as exc:
        # the one error a pin can cause here: an earlier host's block, named on this host's field
        assert exc.field == "subnet" and hosts[exc.index][1] is not None
        assert exc.owner is not None and exc.owner < exc.index
        assert "already the block of host" in str(exc)
        return
    blocks = list(got.values())
    assert all(b.subnet_of(net) and b.prefixlen == sublen for b in blocks)
    assert not any(a.overlaps(b) for i, a in enumerate(blocks) for b in blocks[i + 1:])  # never two hosts one block
    for name, pin in hosts:
        if pin is not None:
            assert got[name] == pin
    for k in range(len(hosts)):  # appending hosts never moves the earlier ones
        assert carve_subnets(net, sublen, hosts[:k]) == {n: got[n] for n, _ in hosts[:k]}


@settings(max_examples=200, deadline=None)
@given(files(), st.data())
def test_a_pin_on_an_earlier_hosts_block_is_an_error_of_that_pin(case, data):
    net, sublen, hosts = case
    try:
        got = carve_subnets(net, sublen, hosts)
    except CarveError:
        return
    owner = data.draw(st.integers(0, len(hosts) - 1))
    clash = hosts + [("late", got[hosts[owner][0]])]
    with pytest.raises(CarveError) as info:
        carve_subnets(net, sublen, clash)
    assert (info.value.index, info.value.field, info.value.owner) == (len(hosts), "subnet", owner)


# ---------------------------------------------------------------- never renumber


def test_check_kept_passes_when_nothing_is_held_or_nothing_moved():
    check_kept(0, "a", None, N("10.32.0.0/24"), start_over="x")
    check_kept(0, "a", N("10.32.0.0/24"), N("10.32.0.0/24"), start_over="x")
    check_kept(0, "a", "10.32.0.0/24", N("10.32.0.0/24"), start_over="x")  # as recorded in a state file


def test_check_kept_names_the_field_and_the_way_out():
    with pytest.raises(ConfigError) as info:
        check_kept(2, "b", N("10.32.1.0/24"), N("10.32.2.0/24"), source="c.yaml", start_over="do X")
    assert str(info.value) == (
        "c.yaml: hosts[2].subnet: the cluster file now gives host b 10.32.2.0/24, but it holds 10.32.1.0/24 "
        "(hosts inserted, removed or reordered before it, or network changed); keep it by pinning "
        "'subnet: 10.32.1.0/24' on host b (and adding new hosts at the end of the list), or do X"
    )
    assert info.value.exit_code == 2


@settings(max_examples=200, deadline=None)
@given(files(), st.integers(0, 3))
def test_inserting_a_host_is_refused_for_every_host_it_moves(case, at):
    """What `apply` and the static store do with an edited file: every host whose block
    the edit moves is refused, every other one passes."""
    net, sublen, hosts = case
    assume(at <= len(hosts))
    try:
        before = carve_subnets(net, sublen, hosts)
        after = carve_subnets(net, sublen, hosts[:at] + [("new", None)] + hosts[at:])
    except CarveError:
        return
    for i, (name, _) in enumerate(hosts):
        index = i + (i >= at)
        if after[name] == before[name]:
            check_kept(index, name, before[name], after[name], start_over="x")
        else:
            with pytest.raises(ConfigError, match=rf"^hosts\[{index}\]\.subnet: "):
                check_kept(index, name, before[name], after[name], start_over="x")
