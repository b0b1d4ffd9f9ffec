"""crossnet.netconfig / crossnet.netview: a network config validated in a helper process
reads exactly like the model (issue 13: no pydantic in the long-running process)."""

from __future__ import annotations

import subprocess
import sys
from ipaddress import IPv4Network

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossnet import helper, netconfig, netview
from crossnet.errors import ConfigError, CrossnetError
from crossnet.netmodel import (
    AutoSpec,
    NamedNetwork,
    NetworkConfig,
    VxlanSpec,
    WireguardSpec,
)


@pytest.mark.parametrize("view, model", [
    (netview.VxlanView, VxlanSpec), (netview.WireguardView, WireguardSpec), (netview.AutoView, AutoSpec),
    (netview.NamedNetworkView, NamedNetwork), (netview.NetworkConfigView, NetworkConfig),
])
def test_every_view_has_its_models_fields(view, model):
    assert list(view.model_fields) == list(model.model_fields)


# ---- views read like the model (encode/decode without the process: many examples)

names = st.sampled_from(["blue", "red", "web1", "db"])
named_nets = st.lists(
    st.builds(dict, name=names, network=st.sampled_from(["10.64.0.0/16", "10.80.0.0/16", "172.20.0.0/16"]),
              subnet_len=st.none() | st.sampled_from([24, 26]), vni=st.none() | st.integers(100, 200),
              masquerade=st.none() | st.booleans()),
    max_size=2, unique_by=(lambda n: n["name"], lambda n: n["network"], lambda n: n["vni"] or -1))
configs = st.fixed_dictionaries(
    {"network": st.sampled_from(["10.32.0.0/12", "192.168.0.0/16"]),
     "backend": st.sampled_from(["vxlan", "host-gw", "wireguard", "auto"])},
    optional={"subnet_len": st.sampled_from([24, 25]), "ttl": st.integers(2, 600), "masquerade": st.booleans(),
              "mtu": st.none() | st.integers(1280, 9000), "bridge": st.none() | st.just("cnx0"),
              "vxlan": st.fixed_dictionaries({}, optional={"vni": st.integers(1, 50), "port": st.integers(1, 65535)}),
              "wireguard": st.fixed_dictionaries({}, optional={"port": st.integers(1, 60000),
                                                               "keepalive": st.integers(0, 60)}),
              "auto": st.fixed_dictionaries({}, optional={"encrypt": st.booleans()}),
              "dns_domain": st.just("example.test"), "networks": named_nets})


def _valid(data):
    try:
        return NetworkConfig.parse(data)
    except ConfigError:
        return None


def _same(model, view):
    assert view.to_json() == model.to_json()
    for kw in ({}, {"mode": "json"}, {"exclude_unset": True}, {"exclude_none": True, "mode": "json"},
               {"exclude": {"networks"}}):
        assert view.model_dump(**kw) == model.model_dump(**kw), kw
    assert view.transport_settings() == model.transport_settings()
    assert (view.vni, view.port, view.bridge_name) == (model.vni, model.port, model.bridge_name)
    assert [view.network_vni(i) for i in range(len(view.networks))] == \
        [model.network_vni(i) for i in range(len(model.networks))]
    assert [n.bridge_name() for n in view.networks] == [n.bridge_name() for n in model.networks]
    assert isinstance(view.network, IPv4Network) and isinstance(view.auto.probe_network, IPv4Network)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_a_decoded_view_reads_like_the_model(data):
    model = _valid(data)
    if model is None:
        return
    view = netview.NetworkConfigView.decode(netview.encode(model))
    _same(model, view)
    # and a model built from the view's input is the same model (fields set included)
    again = NetworkConfig(**netview.as_input({k: getattr(view, k) for k in type(view).model_fields}))
    assert again.to_json() == model.to_json() and again.model_dump() == model.model_dump()


def test_views_are_frozen_and_copy_with_update():
    model = NetworkConfig.parse({"network": "10.32.0.0/12", "networks": [{"name": "blue", "network": "10.64.0.0/16"}]})
    view = netview.NetworkConfigView.decode(netview.encode(model))
    with pytest.raises(AttributeError):
        view.backend = "host-gw"
    net = view.networks[0].model_copy(update={"vni": 7})
    assert (net.vni, view.networks[0].vni, net.name) == (7, None, "blue")
    assert net.model_dump(mode="json", exclude_none=True) == {"name": "blue", "network": "10.64.0.0/16", "vni": 7}


# ---- through the real helper process

GOOD = {"network": "10.32.0.0/12", "backend": "vxlan", "subnet_len": 24, "ttl": 30, "wireguard": {"port": 5000},
        "networks": [{"name": "blue", "network": "10.64.0.0/16"}]}


def test_parse_in_the_helper_is_the_models_config(helper_mode):
    view = netconfig.parse(GOOD, "etcd /crossnet/config")
    assert isinstance(view, netview.NetworkConfigView)
    _same(NetworkConfig.parse(GOOD), view)


@pytest.mark.parametrize("bad", [
    {"network": "10.32.0.0/33"},
    {"network": "10.32.0.0/12", "backend": "bridge"},
    {"network": "10.32.0.0/12", "vxlan": {"vni": 0}},
    {"network": "10.32.0.0/12", "surprise": 1},
    {"network": "10.32.0.0/12", "networks": [{"name": "a", "network": "10.32.0.0/16"}]},
    ["not", "an", "object"],
])
def test_a_bad_config_is_the_same_one_line_error_either_way(bad, helper_mode):
    with pytest.raises(ConfigError) as inline:
        NetworkConfig.parse(bad, "etcd k")
    with pytest.raises(ConfigError) as helped:
        netconfig.parse(bad, "etcd k")
    assert str(helped.value) == str(inline.value) and "\n" not in str(helped.value)


def test_build_keeps_the_fields_set_and_validates_kept_networks(helper_mode):
    view = netconfig.parse(GOOD)
    data = {k: getattr(view, k) for k in type(view).model_fields}
    data["networks"] = [*view.networks, netconfig.named(name="red", network="10.80.0.0/16", subnet_len=24, vni=9,
                                                         bridge="cn-red", wireguard_port=None)]
    built = netconfig.build(**data)
    assert built.to_json()["wireguard"] == {"port": 5000}  # only what was given, as the store wrote it
    assert [n.name for n in built.networks] == ["blue", "red"]
    data["networks"] = [*view.networks, netconfig.named(name="blue", network="10.80.0.0/16")]
    with pytest.raises(ConfigError, match=r"networks\[1\].name: duplicate network name 'blue'"):
        netconfig.build(**data)


@pytest.mark.parametrize("fields, error", [
    ({"name": "red", "network": "10.80.0.0/33"}, ValueError),
    ({"name": 5, "network": "10.80.0.0/16"}, TypeError),
    ({"name": "red"}, ValueError),
])
def test_named_refuses_what_the_model_refuses(fields, error, helper_mode):
    with pytest.raises(error):
        netconfig.named(**fields)
    netconfig.use_helper(False)
    with pytest.raises(ValueError):  # pydantic's ValidationError
        netconfig.named(**fields)


@pytest.mark.parametrize("field, value", [("subnet_len", "24"), ("vni", True), ("wireguard_port", 1.5)])
def test_named_in_helper_mode_takes_integers_only(field, value, helper_mode):
    """crossnet wrote these records itself (integers); the model would coerce "24"."""
    with pytest.raises(TypeError, match=field):
        netconfig.named(name="red", network="10.80.0.0/16", **{field: value})


def test_a_helper_that_fails_is_one_line(monkeypatch):
    with pytest.raises(CrossnetError, match=r"^network config helper failed \(exit 1\): .*No module named") as exc:
        helper.run("crossnet.no_such_helper", {}, "network config helper", 10)
    assert "\n" not in str(exc.value)


def test_the_long_running_process_never_imports_pydantic():
    """What `crossnet launch`'s process imports (its agent included) and a config read in
    helper mode: no pydantic (the e2e mesh tests check the running process's mappings)."""
    code = ("import sys\n"
            "import crossnet.mesh.launch, crossnet.mesh.supervise, crossnet.agent.core, crossnet.agent.netfollow\n"
            "import crossnet.store.etcd, crossnet.netstore, crossnet.networks, crossnet.agent.netdns\n"
            "from crossnet import netconfig\n"
            "netconfig.use_helper()\n"
            "cfg = netconfig.parse({'network': '10.32.0.0/12', 'networks': [{'name': 'b', 'network': '10.64.0.0/16'}]})\n"
            "crossnet.netstore.effective(cfg, [netconfig.named(name='c', network='10.80.0.0/16')])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'pydantic_core', 'yaml')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


# ---- a helper started ahead (the agent's start-up: the model imports while it connects)

def test_a_prestarted_helper_serves_the_next_request_then_helpers_start_per_request(helper_mode):
    netconfig.prestart()
    proc, _ = helper._warm[netconfig.HELPER_MODULE]
    assert netconfig.parse(GOOD).to_json() == NetworkConfig.parse(GOOD).to_json()
    assert proc.returncode == 0 and netconfig.HELPER_MODULE not in helper._warm  # it served, once
    assert netconfig.parse(GOOD).name == "crossnet"  # a new one per request


def test_prestart_does_nothing_when_configs_are_validated_in_process():
    netconfig.prestart()
    assert netconfig.HELPER_MODULE not in helper._warm


@pytest.mark.parametrize("how", ["stale", "dead"])
def test_a_stale_or_dead_prestarted_helper_is_replaced(how, helper_mode, monkeypatch):
    netconfig.prestart()
    proc, _ = helper._warm[netconfig.HELPER_MODULE]
    if how == "stale":
        monkeypatch.setattr(helper, "WARM_MAX_AGE", 0.0)
    else:
        proc.kill()
        proc.wait(timeout=10)
    assert netconfig.parse(GOOD).to_json() == NetworkConfig.parse(GOOD).to_json()
    assert proc.poll() is not None and netconfig.HELPER_MODULE not in helper._warm


def test_an_unused_helper_gives_up_waiting():
    code = ("from crossnet import helper\n"
            "helper.WARM_WAIT = 1\n"
            "helper.serve_stdin(lambda req: req, {})\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.wait(timeout=20) != 0  # SIGALRM, though its stdin stays open
    finally:
        proc.kill()
        proc.communicate()
