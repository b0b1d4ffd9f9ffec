"""The agent's health as `crossnet status` shows it (text and ``-o json`` ``agent_health``):
running or not, synced, store reachable, lease TTL (and what is left of it), and — the
point of it — a clear line when the agent is NOT running on a host where it should:
the state dir says the host is managed by an agent (``agent.json``: it holds a lease;
``applied.json`` written by an agent on a store) or belongs to a mesh
(``mesh/launch.json``: `crossnet launch`) while the agent's socket does not answer.

Pure functions of the state dir's files and the agent's ``/v1/status`` ``agent`` part
(None when it does not answer): unit-tested with fakes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

STORE_PARTS = ("keepalive", "watch")  # crossnet.agent.metrics.STORE_PARTS: what fails when the store is away


def lease_left(agent: Any) -> float | None:
    """Seconds the agent's lease has left: its TTL minus the time since the last renewal
    (``agent.lease_renewed``, monotonic), 0 once past; None without a TTL'd lease."""
    lease, renewed = agent.lease, getattr(agent, "lease_renewed", None)
    if lease is None or not lease.ttl or renewed is None:
        return None
    import time

    return round(max(0.0, lease.ttl - (time.monotonic() - renewed)), 3)


def expected(state_root: str | Path, applied: dict | None) -> tuple[str, str] | None:
    """(why an agent should serve this host, how to start it) or None (a host that
    `crossnet apply` manages needs no agent)."""
    root = Path(state_root)
    if (root / "mesh" / "launch.json").exists():
        return ("this host belongs to a mesh (crossnet launch)",
                "`crossnet launch` (or `systemctl start crossnet-launch`) starts it again")
    how = "start it: `systemctl start crossnet-agent` (or `crossnet agent ...` as before)"
    if (root / "agent.json").exists():
        return "an agent holds this host's lease (agent.json)", how
    source = (applied or {}).get("source") or {}
    store = source.get("store") if isinstance(source, dict) else None
    if isinstance(store, dict) and store.get("kind"):
        return f"this host was programmed by an agent on {store.get('where') or store['kind']}", how
    return None


def summary(state_root: str | Path, applied: dict | None, agent: dict | None) -> dict[str, Any] | None:
    """``agent_health`` of `crossnet status -o json` (None: no agent runs and none should)."""
    want = expected(state_root, applied)
    if agent is None:
        if want is None:
            return None
        why, how = want
        return {"running": False, "expected": True, "problem": f"the agent is not running: {why}; {how}"}
    from crossnet.logjson import rfc3339  # the one time format of every log and -o json

    errors = agent.get("errors") or {}
    synced_at = agent.get("synced_at")
    store_errors = {k: v for k, v in errors.items() if k in STORE_PARTS and v}
    out = {
        "running": True,
        "expected": want is not None,
        "pid": agent.get("pid"),
        "synced": bool(agent.get("synced")),
        "synced_at": rfc3339(synced_at) if isinstance(synced_at, (int, float)) else None,
        "store": agent.get("store"),
        "store_reachable": not store_errors,
        "lease_ttl": agent.get("ttl"),
        "lease_ttl_left": agent.get("ttl_left"),
        "healthy": bool(agent.get("healthy")),
        "errors": errors,
        "problem": None,
    }
    if not out["synced"]:
        out["problem"] = "the agent has not synced yet (start-up in progress, or the store does not answer)"
    elif store_errors:
        out["problem"] = "store unreachable (" + "; ".join(f"{k}: {v}" for k, v in sorted(store_errors.items())) + \
                         "): the data plane is kept as it is"
    return out


def text(h: dict[str, Any] | None) -> str | None:
    """One line for `crossnet status` (rich markup: red when something is wrong)."""
    if h is None:
        return None
    from rich.markup import escape as esc  # store errors and paths are not markup

    if not h["running"]:
        return f"[red]agent: NOT RUNNING — {esc(h['problem'])}[/]"
    parts = [f"agent: running (pid {h.get('pid')})"]
    parts.append(f"synced {h['synced_at']}" if h["synced"] and h.get("synced_at") else
                 "synced" if h["synced"] else "[red]not synced[/]")
    parts.append(f"store {esc(str(h.get('store') or '?'))} " + ("reachable" if h["store_reachable"] else "[red]unreachable[/]"))
    if h.get("lease_ttl"):
        left = h.get("lease_ttl_left")
        parts.append(f"lease ttl {h['lease_ttl']} s" + (f" ({left:.1f} s left)" if isinstance(left, (int, float)) else ""))
    other = {k: v for k, v in (h.get("errors") or {}).items() if k not in STORE_PARTS and v}
    line = ", ".join(parts)
    if other:
        line += " [red]errors: " + esc("; ".join(f"{k}: {v}" for k, v in sorted(other.items()))) + "[/]"
    if h.get("problem"):
        line += f"\n[yellow]agent: {esc(h['problem'])}[/]"
    return line


__all__ = ["STORE_PARTS", "expected", "lease_left", "summary", "text"]
