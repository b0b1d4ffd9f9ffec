"""Measurements that must run *inside* a simulated host's network namespace:

    ip netns exec LAB-h1 python -m crossnet.bench.worker < request.json > result.json

Requests (JSON on stdin):

- ``{"mode": "attach", "state_dir": S, "names": [netns...], "cli": false, "detach": true}``
  times ``crossnet.containers.attach`` per container in this process (``cli``: runs
  ``crossnet attach NAME`` as a user would, one process per container, and with
  ``"breakdown": true`` first times what such a process spends before its attach:
  interpreter start, site, imports), then detach.
- ``{"mode": "cni", "cni_path": P, "plugins": [{"label", "plugin", "conf", "netns": [...]}, ...]}``
  executes each CNI plugin binary the way a runtime does (env CNI_*, config on
  stdin), ADD for container i of every plugin in turn (interleaved, so drift hits
  both alike), then DEL in the same way.

Prints one JSON object: latencies in ms, peak RSS, errors.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


# the modules `crossnet attach` imports (cli.host's attach() imports the last three)
ATTACH_MODULES = ("crossnet.cli.main", "crossnet.cli.host", "crossnet.containers", "crossnet.host", "crossnet.runtime")


def _import_ms(env: dict[str, str], runs: int, top: int = 8) -> dict[str, float]:
    """`python -X importtime` of the attach path (site included): self time per
    top-level package, median over `runs`, ms; the `top` largest, then the rest."""
    from crossnet.bench.util import percentile, run_measured

    per: dict[str, list[float]] = {}
    for _ in range(runs):
        res = run_measured([sys.executable, "-X", "importtime", "-c", "import " + ", ".join(ATTACH_MODULES)],
                           timeout=60, env=env)
        if not res.ok:
            continue
        tot: dict[str, float] = {}
        for line in res.stderr.splitlines():
            parts = line.split("|")
            if len(parts) != 3 or not parts[0].startswith("import time:") or not parts[0].split(":")[1].strip().isdigit():
                continue
            pkg = parts[2].strip().split(".")[0]
            tot[pkg] = tot.get(pkg, 0.0) + int(parts[0].split(":")[1]) / 1000
        for k, v in tot.items():
            per.setdefault(k, []).append(v)
    med = sorted(((k, percentile(v, 50)) for k, v in per.items()), key=lambda kv: -kv[1])
    out = {k: round(v, 2) for k, v in med[:top]}
    if med[top:]:
        out["(other)"] = round(sum(v for _k, v in med[top:]), 2)
    return out


BREAKDOWN_RUNS = 5


def _breakdown_probes(cli: list[str]) -> dict[str, list[str]]:
    """Ever larger prefixes of what a CLI attach does, each a process of its own."""
    py = sys.executable
    return {
        "interpreter_ms": [py, "-S", "-c", "pass"],  # bare interpreter
        "site_ms": [py, "-c", "pass"],  # + site and the .pth files of site-packages
        "cli_import_ms": [py, "-c", "import crossnet.cli.main"],  # + click, the CLI entry
        "attach_imports_ms": [py, "-c", "import " + ", ".join(ATTACH_MODULES)],  # + what attach imports
        "cli_version_ms": [*cli, "--version"],  # the console script and click, no command
    }


def _attach(req: dict[str, Any]) -> dict[str, Any]:
    from crossnet.bench.util import crossnet_cli, run_measured, vm_hwm_kb

    names: list[str] = req["names"]
    out: dict[str, Any] = {"attach_ms": [], "detach_ms": [], "errors": [], "addresses": 0, "rss_kb": []}
    state_dir = req["state_dir"]
    if req.get("cli"):
        env = {**os.environ, "CROSSNET_STATE_DIR": state_dir}
        cli = crossnet_cli()
        # where a CLI attach's time goes: before each of the first attaches, one round of
        # the probes (interleaved with the attaches they explain, so load drift hits all alike)
        probes = _breakdown_probes(cli) if req.get("breakdown") else {}
        times: dict[str, list[float]] = {k: [] for k in probes}
        for i, n in enumerate(names):
            if i < BREAKDOWN_RUNS:
                for k, argv in probes.items():
                    res = run_measured(argv, timeout=60, env=env)
                    if res.ok:
                        times[k].append(res.wall_s * 1000)
            res = run_measured([*cli, "attach", n, "-o", "json"], timeout=60, env=env)
            if not res.ok:
                out["errors"].append(f"attach {n}: {res.error_line()}")
                continue
            out["attach_ms"].append(res.wall_s * 1000)
            out["rss_kb"].append(res.maxrss_kb)
        if probes:
            from crossnet.bench.util import percentile

            k = min(BREAKDOWN_RUNS, len(out["attach_ms"]))
            out["breakdown"] = {
                "runs": k,
                **{key: round(percentile(v, 50), 2) if v else None for key, v in times.items()},
                # the CLI attaches the probes were interleaved with
                "attach_ms": round(percentile(out["attach_ms"][:k], 50), 2) if k else None,
                "import_self_ms": _import_ms(env, 3),
                "modules": list(ATTACH_MODULES),
                "cli": cli,
            }
        if req.get("detach", True):
            for n in names:
                res = run_measured([*cli, "detach", n, "-o", "json"], timeout=60, env=env)
                if res.ok:
                    out["detach_ms"].append(res.wall_s * 1000)
                else:
                    out["errors"].append(f"detach {n}: {res.error_line()}")
        return out

    from crossnet import containers
    from crossnet.host import load_context
    from crossnet.state import StateDir

    state = StateDir(state_dir)
    ctx, backend = load_context(state)
    addrs = set()
    profiler = None
    if req.get("profile"):
        try:
            from pyinstrument import Profiler

            profiler = Profiler()
            profiler.start()
        except ImportError:
            profiler = None
    for n in names:
        t0 = time.perf_counter()
        try:
            att = containers.attach(state, ctx, backend, n, f"/run/netns/{n}")
        except Exception as exc:  # noqa: BLE001
            out["errors"].append(f"attach {n}: {exc}")
            continue
        out["attach_ms"].append((time.perf_counter() - t0) * 1000)
        addrs.add(att.address)
    if profiler is not None:
        profiler.stop()
        text = profiler.output_text(unicode=True, color=False, show_all=False)
        out["profile"] = "\n".join(ln for ln in text.splitlines() if ln.strip())
    out["addresses"] = len(addrs)
    if req.get("detach", True):
        for n in names:
            t0 = time.perf_counter()
            try:
                containers.detach(state, ctx, backend, n)
            except Exception as exc:  # noqa: BLE001
                out["errors"].append(f"detach {n}: {exc}")
                continue
            out["detach_ms"].append((time.perf_counter() - t0) * 1000)
    out["rss_kb"] = [vm_hwm_kb() or 0]
    return out


def _cni_call(command: str, plugin: str, conf: dict[str, Any], netns: str, cid: str, cni_path: str,
              ifname: str = "eth0") -> tuple[float, int, str, int]:
    from crossnet.bench.util import run_measured

    env = {
        **os.environ,
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_PATH": cni_path,
        "CNI_ARGS": "IgnoreUnknown=1",
    }
    res = run_measured([plugin], timeout=60, env=env, input=json.dumps(conf))
    return res.wall_s * 1000, res.returncode, (res.stdout + res.stderr)[-400:], res.maxrss_kb


def _cni(req: dict[str, Any]) -> dict[str, Any]:
    import hashlib

    plugins = req["plugins"]
    cni_path = req["cni_path"]
    out: dict[str, Any] = {p["label"]: {"add_ms": [], "del_ms": [], "errors": [], "rss_kb": []} for p in plugins}
    count = min(len(p["netns"]) for p in plugins)
    for command, key in (("ADD", "add_ms"), ("DEL", "del_ms")):
        for i in range(count):
            for p in plugins:
                ns = p["netns"][i]
                cid = hashlib.sha256(f"{p['label']}/{ns}".encode()).hexdigest()
                ms, rc, text, rss = _cni_call(command, p["plugin"], p["conf"], f"/run/netns/{ns}", cid, cni_path)
                rec = out[p["label"]]
                if rc != 0:
                    rec["errors"].append(f"{command} {ns}: rc {rc}: {text.strip()[-200:]}")
                    continue
                rec[key].append(ms)
                rec["rss_kb"].append(rss)
    return out


def main() -> None:
    req = json.load(sys.stdin)
    mode = req.get("mode")
    if mode == "attach":
        result = _attach(req)
    elif mode == "cni":
        result = _cni(req)
    else:
        result = {"error": f"unknown mode {mode!r}"}
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
