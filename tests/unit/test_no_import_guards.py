"""A broken import is an error, never a silent fallback (guards written while modules were
built in parallel used to swallow them: plain YAML instead of the validated cluster file,
lab services or CLI groups silently missing, "not supported in this build")."""

from __future__ import annotations

import sys

import click
import pytest

from crossnet.cli import main as cli_main
from crossnet.errors import ConfigError
from crossnet.lab import manager, services
from crossnet.lab.topology import LabOptions, plan_lab


def _broken(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """Make `import module` fail the way a broken module does."""
    monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, module, None)  # import raises ModuleNotFoundError


def _plan(tmp_path, **kw):
    return plan_lab(LabOptions(name="tguard", hosts=2, **kw).validate(), 3, str(tmp_path / "lab"))


def test_lab_cluster_file_goes_through_config(tmp_path, monkeypatch):
    plan = _plan(tmp_path)
    manager.write_cluster_file(plan)
    from crossnet.config import load_cluster

    assert [h.name for h in load_cluster(plan.cluster_file).hosts] == [h.name for h in plan.hosts]
    _broken(monkeypatch, "crossnet.config")
    with pytest.raises(ImportError):
        manager.write_cluster_file(plan)


def test_lab_cluster_file_is_validated(tmp_path, monkeypatch):
    plan = _plan(tmp_path)
    monkeypatch.setattr(type(plan), "cluster_dict", lambda self: {"name": "x", "backend": "vxlan", "hosts": []})
    with pytest.raises(ConfigError):
        manager.write_cluster_file(plan)


def test_a_lab_service_module_that_does_not_import_is_an_error(monkeypatch):
    monkeypatch.setattr(services, "SERVICE_MODULES", [*services.SERVICE_MODULES, "crossnet.lab.nosuchservice"])
    with pytest.raises(ModuleNotFoundError, match="crossnet.lab.nosuchservice"):
        services.load_service_modules()


def test_lab_down_finds_services_by_name_when_their_module_moved(tmp_path):
    """Labs started before lab-only code moved under crossnet.lab recorded the old
    module path (crossnet.ovs.lab); `lab down` still stops the service."""
    stopped = []
    svc = services.HostService("tguardsvc", lambda plan, host: None, lambda plan, host: stopped.append(host.name))
    services.register_service(svc)
    try:
        manifest = _plan(tmp_path).to_dict()
        manifest["services"] = [{"name": "tguardsvc", "module": "crossnet.ovs.lab"}]
        assert manager._stop_services(manifest) == []
        assert stopped == ["h1", "h2"]
    finally:
        services.unregister_service("tguardsvc")


def test_a_cli_group_that_does_not_import_is_an_error(monkeypatch):
    monkeypatch.setitem(cli_main.COMMAND_MODULES, "crossnet.cli.nosuchgroup", ("nosuch",))
    group = cli_main.LazyGroup(name="t")
    with pytest.raises(ModuleNotFoundError, match="crossnet.cli.nosuchgroup"):
        group.list_commands(click.Context(group))


def test_runtime_specs_need_crossnet_runtimes(monkeypatch):
    from crossnet.runtime.spec import resolve

    _broken(monkeypatch, "crossnet.runtime.engines")
    with pytest.raises(ImportError):
        resolve("podman:c1")


def test_agent_does_not_turn_a_broken_backend_into_a_store_error(tmp_path, monkeypatch):
    from ipaddress import IPv4Address

    from crossnet.agent.core import Agent, AgentOptions
    from crossnet.state import StateDir
    from crossnet.store import NetworkConfig

    class OneConfigStore:
        kind = "test"

        def get_config(self):
            return NetworkConfig(network="10.32.0.0/16", backend="vxlan")

    agent = Agent(OneConfigStore(), StateDir(tmp_path), AgentOptions(api=False))
    agent.address = IPv4Address("192.0.2.1")
    _broken(monkeypatch, "crossnet.backends.vxlan")
    with pytest.raises(ModuleNotFoundError):
        agent._load_config()
