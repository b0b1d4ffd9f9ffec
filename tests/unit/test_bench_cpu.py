"""`crossnet bench … --cpu N`: iperf3's client and server pinned to one CPU
(crossnet.bench.traffic). The argv each end runs, the CPU carried from the RunContext
through every throughput bench (dataplane.paired and the suites' own calls), recorded
in the results and the report, and the option's validation. No namespace, no iperf3:
tests/e2e/test_bench_cpu.py runs the real thing."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from crossnet.bench import datapathbench, dataplane, traffic
from crossnet.bench.report import render
from crossnet.bench.util import Measured, RunContext
from crossnet.errors import ConfigError

BENCH = Path(dataplane.__file__).parent


def _affinity(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-A"]


# ---------------------------------------------------------------- the argv of each end


def test_unpinned_by_default():
    assert _affinity(traffic.server_argv()) == []
    assert _affinity(traffic.client_argv("10.0.0.2", 3)) == []
    assert traffic.IperfServer("ns").cpu is None and RunContext().cpu is None


def test_pinned_server_and_client():
    assert _affinity(traffic.server_argv(5201, 1)) == ["1"]
    # the client on CPU 1, and this test's server side too (iperf3's n,m form)
    assert _affinity(traffic.client_argv("10.0.0.2", 3, 5201, 1)) == ["1,1"]
    assert _affinity(traffic.server_argv(5201, 0)) == ["0"]  # CPU 0 is a CPU, not "unset"


def test_iperf_gbps_runs_the_pinned_client_in_its_namespace(monkeypatch):
    seen: list[list[str]] = []
    end = {"end": {"sum_received": {"bits_per_second": 2.5e10}, "sum_sent": {"retransmits": 3}}}

    def run(argv, timeout):
        seen.append(list(argv))
        return Measured(list(argv), 0, json.dumps(end), "", 1.0, 1000)

    monkeypatch.setattr(traffic, "run_measured", run)
    assert traffic.iperf_gbps("cns", "10.0.0.2", 1.0, cpu=1) == (25.0, 3)
    assert seen[0][:4] == ["ip", "netns", "exec", "cns"] and _affinity(seen[0]) == ["1,1"]
    traffic.iperf_gbps("cns", "10.0.0.2", 1.0)
    assert _affinity(seen[1]) == []


def test_iperf_server_starts_pinned(monkeypatch):
    started: list[list[str]] = []

    class Proc:
        pid, returncode = 4242, None

        def poll(self):
            return None

    def popen(argv, **kw):
        started.append(list(argv))
        return Proc()

    monkeypatch.setattr(traffic.subprocess, "Popen", popen)
    monkeypatch.setattr(traffic.time, "sleep", lambda s: None)
    traffic.IperfServer("sns", cpu=0).start()
    traffic.IperfServer("sns").start()
    assert started[0][:4] == ["ip", "netns", "exec", "sns"] and _affinity(started[0]) == ["0"]
    assert _affinity(started[1]) == []


# ---------------------------------------------------------------- carried through the benches


class Recorder:
    """Fake traffic for `dataplane.paired`: the CPU of every server and run."""

    def __init__(self, monkeypatch):
        self.servers: list[tuple[str, int | None]] = []
        self.runs: list[tuple[str, int | None]] = []
        rec = self

        class Server:
            def __init__(self, netns, port=traffic.IPERF_PORT, cpu=None):
                self.netns, self.cpu = netns, cpu

            def start(self):
                rec.servers.append((self.netns, self.cpu))

            def stop(self):
                pass

        def iperf(client_ns, addr, duration, cpu=None):
            rec.runs.append((client_ns, cpu))
            return 10.0, 0

        monkeypatch.setattr(traffic, "wait_reachable", lambda ns, addr, timeout=10.0: 0.0)
        monkeypatch.setattr(traffic, "IperfServer", Server)
        monkeypatch.setattr(traffic, "ping_rtts", lambda ns, addr, count, **kw: [0.05] * count)
        monkeypatch.setattr(traffic, "iperf_gbps", iperf)


@pytest.mark.parametrize("cpu", [None, 0, 1])
def test_paired_pins_every_server_and_run(monkeypatch, cpu):
    rec = Recorder(monkeypatch)
    paths = {lb: (lb, f"{lb}-server", "10.0.0.2") for lb in ("crossnet", "underlay")}
    dataplane.paired(paths, 2, 1.0, 5, cpu=cpu)
    assert rec.servers == [("crossnet-server", cpu), ("underlay-server", cpu)]
    assert rec.runs == [("crossnet", cpu), ("underlay", cpu), ("underlay", cpu), ("crossnet", cpu)]


def test_measure_backend_takes_the_cpu_from_the_run_context(monkeypatch):
    import contextlib
    from types import SimpleNamespace

    rec = Recorder(monkeypatch)

    @contextlib.contextmanager
    def bench_lab(opts, apply=True, log=None):
        yield SimpleNamespace(hosts=[SimpleNamespace(name=f"h{i}", netns=f"l-h{i}", address=f"192.168.0.{i}")
                                     for i in range(1, 5)])

    monkeypatch.setattr(dataplane, "bench_lab", bench_lab)
    monkeypatch.setattr(dataplane, "_set_up_crossnet", lambda rc, lab, b, mtu, row: ("c1", "c2", "10.1.2.2"))
    monkeypatch.setattr(dataplane, "_note_long_lived", lambda *a: None)
    monkeypatch.setattr(dataplane, "backend_unavailable", lambda name: None)
    row = dataplane.measure_backend(RunContext(cpu=1), "host-gw", 1500, 2, 1.0, 5)
    assert row["status"] == "ok", row
    assert {c for _ns, c in rec.servers + rec.runs} == {1} and len(rec.runs) == 4


def _calls(name: str) -> list[tuple[str, int, ast.Call]]:
    out = []
    for path in sorted(BENCH.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if called == name:
                    out.append((path.name, node.lineno, node))
    return out


@pytest.mark.parametrize("name", ["paired", "iperf_gbps", "IperfServer"])
def test_every_throughput_call_of_the_benches_passes_the_cpu(name):
    calls = _calls(name)
    assert calls, f"no call of {name} in crossnet.bench"
    missing = [f"{f}:{line}" for f, line, c in calls if "cpu" not in {k.arg for k in c.keywords}]
    assert missing == [], f"{name} called without cpu= at {', '.join(missing)}"


def test_the_throughput_suites_record_the_cpu_in_their_parameters(monkeypatch):
    monkeypatch.setattr(datapathbench.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(datapathbench, "ebpf_unavailable", lambda: None)
    res = datapathbench.run(RunContext(cpu=1), ["host-gw"], repeats=1, duration=1.0, skip={"host-gw": "not now"})
    assert res["params"]["cpu"] == 1 and res["params"]["repeats"] == 1
    assert datapathbench.run(RunContext(), ["host-gw"], skip={"host-gw": "x"})["params"]["cpu"] is None

    monkeypatch.setattr(dataplane.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(dataplane, "measure_backend", lambda rc, b, mtu, *a: {"name": b, "mtu": mtu, "status": "skipped"})
    res = dataplane.run(RunContext(cpu=0), ["ovs-vxlan"], mtus=(1500,), manual_layouts=False)
    assert res["params"]["cpu"] == 0


# ---------------------------------------------------------------- the report says so


def _dp(cpu):
    return {"command": "crossnet bench dataplane", "started": "now", "machine": {},
            "dataplane": {"suite": "dataplane", "params": {"mtus": [1500], "repeats": 2, "duration_s": 1.0,
                                                           "ping_count": 5, "cpu": cpu}, "rows": []}}


def _run_header(text: str) -> str:
    return next(ln for ln in text.splitlines() if ln.startswith("Run "))


def test_report_says_when_the_figures_were_pinned():
    assert "iperf3 client and server pinned to CPU 1 (`--cpu 1`)" in _run_header(render(_dp(1), {}))
    assert "pinned" not in render(_dp(None), {})


def test_a_suite_added_from_its_own_run_says_its_own_cpu():
    res = _dp(None)
    res["wireguard"] = {"suite": "wireguard", "status": "ok", "command": "crossnet bench wireguard --cpu 0",
                        "started": "then", "params": {"repeats": 2, "duration_s": 1.0, "cpu": 0}, "rows": []}
    text = render(res, {})
    assert "pinned" not in _run_header(text)  # this run's own dataplane was not pinned
    section = text[text.index("## WireGuard"):]
    assert "pinned to CPU 0 (`--cpu 0`)" in section


def test_text_output_starts_with_the_pinned_cpu(capsys):
    from crossnet.cli.bench import _print_human

    _print_human({**_dp(1), "targets": []})
    assert capsys.readouterr().out.splitlines()[0] == "iperf3 client and server pinned to CPU 1 (--cpu 1)"
    _print_human({**_dp(None), "targets": []})
    assert "pinned" not in capsys.readouterr().out


# ---------------------------------------------------------------- the option


def test_cpu_option_accepts_a_cpu_of_this_machine(monkeypatch):
    from crossnet.cli import bench as cli_bench

    monkeypatch.setattr(cli_bench.os, "sched_getaffinity", lambda pid: {0, 1})
    assert cli_bench._cpu_option(None, None, None) is None
    assert cli_bench._cpu_option(None, None, "1") == 1
    assert cli_bench._cpu_option(None, None, " 0 ") == 0
    for bad in ("2", "-1", "x", "1.0", "", "0,1"):
        with pytest.raises(ConfigError, match=r"^--cpu: ") as exc:
            cli_bench._cpu_option(None, None, bad)
        assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match=r"0-1"):
        cli_bench._cpu_option(None, None, "7")


COMMANDS = ["dataplane", "datapath", "networks", "wireguard", "transport", "all"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_throughput_command_refuses_a_cpu_it_does_not_have(command):
    proc = subprocess.run([sys.executable, "-m", "crossnet", "bench", command, "--cpu", "4096"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("crossnet: error: --cpu: "), proc.stderr


def test_cpu_is_documented_in_every_throughput_commands_help():
    from click.testing import CliRunner

    from crossnet.cli.main import cli

    for command in COMMANDS:
        res = CliRunner().invoke(cli, ["bench", command, "--help"])
        assert res.exit_code == 0 and "--cpu" in res.output, (command, res.output)
