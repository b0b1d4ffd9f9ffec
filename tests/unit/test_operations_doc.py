"""docs/operations.md is generated from, or checked against, the code:

* "Metrics reference": the table is exactly what the agent's registry exposes (every
  metric family's exposed name, type, labels, help text), read from an AgentMetrics on
  a fake agent where every optional metric is present (lease, prober, DNS, attaches,
  CNI calls, errors). `python3 -m tests.unit.test_operations_doc` prints the table.
* "Log fields": every field of the agent's JSON log, of the CNI plugin's and of its warm
  helper's log lines is listed.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from types import SimpleNamespace

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
BEGIN, END = "<!-- metrics-table:begin -->", "<!-- metrics-table:end -->"


def full_agent(tmp: Path):
    from tests.unit.test_agent_metrics import fake_agent, per_peer_prober

    return fake_agent(lease=SimpleNamespace(ttl=10), lease_renewed=time.monotonic(), base_res=[1, 2],
                      peer_res={"s": [1]}, _local_containers=lambda: [{"id": "a"}],
                      transports=per_peer_prober(tmp),
                      dns=SimpleNamespace(server=SimpleNamespace(stats={"queries": 1})))


def families(tmp: Path) -> list[tuple[str, str, tuple[str, ...], str]]:
    """(exposed name, type, labels, help) of every metric family the agent serves."""
    from crossnet.agent.metrics import AgentMetrics

    m = AgentMetrics(full_agent(tmp))
    m.error("sync")
    m.attached(0.01, True)
    m.cni("ADD", 0.01, True)
    m.synced(0.1, 1)
    out = []
    for fam in m.registry.collect():
        labels = sorted({k for s in fam.samples for k in s.labels if k != "le"})
        name = fam.name + ("_total" if fam.type == "counter" else "")
        out.append((name, fam.type, tuple(labels), fam.documentation))
    return sorted(out)


def table(tmp: Path) -> str:
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for name, kind, labels, doc in families(tmp):
        rows.append(f"| `{name}` | {kind} | {', '.join(f'`{x}`' for x in labels) or '—'} | {doc} |")
    return "\n".join(rows)


def test_metrics_reference_is_what_the_code_registers(tmp_path):
    text = DOC.read_text()
    assert BEGIN in text and END in text, "docs/operations.md: the metrics table markers are missing"
    got = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    want = table(tmp_path)
    assert got == want, f"docs/operations.md 'Metrics reference' differs from the code; the table is:\n{want}"


def test_every_issue_metric_is_there(tmp_path):
    """The issue's list: peers known/programmed, resources programmed and repaired,
    reconcile errors, last full sync, lease TTL left, store reachable, containers attached,
    attach and CNI ADD latency histograms, per-peer transport/RTT."""
    names = {f[0]: f for f in families(tmp_path)}
    for n in ("crossnet_agent_peers", "crossnet_agent_resources_programmed", "crossnet_agent_resources_repaired_total",
              "crossnet_agent_errors_total", "crossnet_agent_last_sync_timestamp_seconds",
              "crossnet_agent_lease_ttl_left_seconds", "crossnet_agent_store_reachable",
              "crossnet_agent_containers_attached", "crossnet_agent_peer_transport", "crossnet_agent_peer_rtt_seconds"):
        assert n in names, n
    assert names["crossnet_agent_attach_duration_seconds"][1] == "histogram"
    assert names["crossnet_agent_cni_duration_seconds"][1:3] == ("histogram", ("command", "result"))


def documented_log_fields() -> set[str]:
    text = DOC.read_text().split("## Log fields", 1)[1]
    return set(re.findall(r"^\| `([a-zA-Z_]+)` \|", text, re.MULTILINE))


def test_log_fields_lists_every_field(tmp_path, capsys):
    from crossnet.agent.core import setup_logging
    from crossnet.cni import plugin, server

    fields: set[str] = set()
    root = logging.getLogger("crossnet")
    saved = (root.handlers[:], root.level, root.propagate)
    try:
        setup_logging(fmt="json")
        log = logging.getLogger("crossnet.agent")
        log.info("hello")
        try:
            raise RuntimeError("x")
        except RuntimeError:
            log.exception("failed")
    finally:
        root.handlers[:], root.level, root.propagate = saved
    for line in capsys.readouterr().err.splitlines():
        fields |= set(json.loads(line))
    path = tmp_path / "cni.log"
    stdin = json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "crossnet", "logFile": str(path)}).encode()
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0", "CNI_ARGS": ""}
    plugin._log(env, stdin, 0, None, 0.01)
    plugin._log(env, stdin, 7, {"code": 7, "msg": "bad"}, 0.01, via="server")
    server._event(str(path), "start", state_dir="/var/lib/crossnet")
    server._event(str(path), "stop", reason="idle")
    for line in path.read_text().splitlines():
        fields |= set(json.loads(line))
    missing = fields - documented_log_fields()
    assert not missing, f"docs/operations.md 'Log fields' does not list {sorted(missing)}"


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        print(table(Path(d)))
