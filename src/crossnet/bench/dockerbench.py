"""`crossnet bench control` row docker-run: the time a network adds to `docker run --rm
IMAGE true` on a simulated host with a real dockerd, crossnet's network driver
(`crossnet docker-plugin`, network `crossnet`) vs Docker's own default bridge network
(`bridge`), both over `--network none`, interleaved in the same run (docs/docker.md)."""

from __future__ import annotations

import json
from typing import Any

from crossnet.bench.util import RunContext, interleaved_runs, runtime_run_bench

NETWORKS = {"none": "none", "docker bridge": "bridge", "crossnet driver": "crossnet"}


def run(rc: RunContext, runs: int = 10, backend: str = "vxlan") -> dict[str, Any]:
    from crossnet.lab import docker as ld

    def measure(lab: Any, out: dict[str, Any]) -> None:
        d = ld.host_docker(lab.plan, lab.hosts[0])
        d.base.mkdir(parents=True, exist_ok=True, mode=0o700)
        d.config.write_text(json.dumps(ld.PLUGIN_DAEMON_JSON) + "\n")
        d.start_plugin()
        d.start_daemon()
        d.ensure_image()
        d.wait_network()
        rc.log(f"docker: warm-up, then {runs} × run --rm per network (interleaved)")
        out.update(interleaved_runs(lambda net: d.argv("run", "--rm", "--network", net, ld.IMAGE, "true"),
                                    NETWORKS, runs, what="docker run", ref="docker bridge", mine="crossnet driver"))
        out["plugin_ms"] = plugin_timings(str(d.plugin_socket))

    return runtime_run_bench("dockerd", "dockerd not installed (apt-get install docker.io)", "docker-plugin", backend,
                             runs, measure)


def plugin_timings(socket_path: str) -> dict[str, Any]:
    """The plugin's own time per request (GET /crossnet.Timings): {request: {n, mean_ms}},
    or {} when it does not answer."""
    from crossnet.runtime.dockerplugin import TIMINGS_PATH
    from crossnet.unixhttp import UnixHTTPConnection

    conn = UnixHTTPConnection(socket_path, timeout=5.0)
    try:
        conn.request("GET", TIMINGS_PATH)
        data = json.loads(conn.getresponse().read())
    except (OSError, ValueError):
        return {}
    finally:
        conn.close()
    return data if isinstance(data, dict) else {}
