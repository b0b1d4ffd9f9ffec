"""`crossnet expose` / `crossnet hide` on this host (docs/expose.md): record the choice in
`<state-dir>/expose.json`, then program the host through the one path
(crossnet.program.program_host, from the context applied.json recorded), so the change is
in the kernel and in applied.json when the command returns (the CLI then asks an agent
serving the state dir to re-sync: its own record keeps it too)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crossnet import expose, program
from crossnet.backends import get_backend
from crossnet.backends.base import HostContext
from crossnet.errors import CrossnetError
from crossnet.netlink import iproute as nl
from crossnet.plan.env import Env
from crossnet.plan.reconciler import Change, pending
from crossnet.state import StateDir, crash_point

RECORD_OWN = ("version", "host", "context", "resources")  # what record_header writes itself


@dataclass
class Result:
    network: str
    exposed: bool  # after the command
    address: str
    dry_run: bool = False
    changes: list[Change] = field(default_factory=list)
    agent: bool = False  # an agent was asked to re-sync

    def to_json(self) -> dict[str, Any]:
        return {"network": self.network, "exposed": self.exposed, "address": self.address,
                "dry_run": self.dry_run, "changed": bool(self.changes), "agent_resync": self.agent,
                "changes": [{"action": c.action, "command": c.resource.describe()} for c in self.changes]}


def status(state: StateDir) -> dict[str, Any] | None:
    """The `expose` part of `crossnet status` (expose.status_of); None when the host is
    not configured."""
    try:
        applied, ctx, previous = _recorded(state)
    except CrossnetError:
        return None
    return expose.status_of(ctx, previous, _named(applied, str(state.root)))


def _named(applied: dict, root: str) -> dict[str, HostContext]:
    """The named networks' contexts applied.json recorded (docs/networks.md)."""
    out = {}
    for name, data in ((applied.get("networks") or {}) if isinstance(applied.get("networks"), dict) else {}).items():
        one = HostContext.from_json(data)
        one.state_dir = root
        out[name] = one
    return out


def _target(ctx: HostContext, named: dict[str, HostContext], network: str | None) -> tuple[str, HostContext, str | None]:
    """--network -> (its name, its context, the name `expose.resources` takes for it)."""
    name = expose.lookup(ctx, network, list(named))
    return (name, ctx, None) if name == ctx.cluster_name else (name, named[name], name)


def _recorded(state: StateDir) -> tuple[dict, HostContext, list]:
    from crossnet.host import load_previous

    applied, previous = load_previous(state)
    if not applied:
        raise CrossnetError(f"this host is not configured yet (no {state.applied_path}); "
                            "run `crossnet apply -f CLUSTER` or `crossnet agent` first")
    ctx = HostContext.from_json(applied["context"])
    ctx.state_dir = str(state.root)
    return applied, ctx, previous


def set_exposed(state: StateDir, network: str | None, on: bool, dry_run: bool = False) -> Result:
    """Expose (`on`) or hide this host's network NAME (None: its only one)."""
    if dry_run:  # read only: no lock file, no state dir created
        applied, ctx, previous = _recorded(state)
        name, one, net = _target(ctx, _named(applied, str(state.root)), network)
        names = _changed(expose.load(state.root), name, on)
        want = expose.resources(one, names, network=net)
        have = [r for r in previous if r.key() in {x.key() for x in expose.resources(one, [name], network=net)}]
        with nl.open_ipr() as ipr:
            changes = pending(want, have, Env(ipr))
        return Result(name, on, str(expose.address(one)), True, changes)
    with state.lock():
        applied, ctx, previous = _recorded(state)
        named = _named(applied, str(state.root))
        name, one, _net = _target(ctx, named, network)
        before = expose.load(state.root)
        expose.save(state.root, _changed(before, name, on))
        crash_point()  # test hook (CROSSNET_TEST_CRASH_AT): recorded, not programmed yet
        backend = get_backend(ctx.backend)
        source = {k: v for k, v in applied.items() if k not in RECORD_OWN and k not in program.record_extras(ctx)}
        try:
            with nl.open_ipr() as ipr:
                done = program.program_host(state, Env(ipr), ctx, backend, previous, source,
                                            check_underlay=False, protect_routes=False, always_record=True,
                                            networks=named)  # the named networks stay as they are
        except Exception:
            expose.save(state.root, before)  # failed (rolled back): the record says what the kernel has
            raise
    return Result(name, on, str(expose.address(one)), False, done.changes)


def _changed(names: list[str], name: str, on: bool) -> list[str]:
    return sorted(set(names) | {name}) if on else [n for n in names if n != name]

