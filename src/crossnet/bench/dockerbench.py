"""`crossnet bench control` row docker-run: the time a network adds to `docker run --rm
IMAGE true` on a simulated host with a real dockerd, crossnet's network driver
(`crossnet docker-plugin`, network `crossnet`) vs Docker's own default bridge network
(`bridge`), both over `--network none`, interleaved in the same run (docs/docker.md).

Also in the same run: a user-defined network of Docker's own bridge driver. dockerd
gives every user-defined network (any name but bridge/host/none), whatever its driver,
its embedded DNS server: per container a re-exec of dockerd (setup-resolver) and 11
iptables runs in the container's namespace, which the default `bridge` skips. That row
tells the driver's own cost apart from that one (``added_ratio_user``)."""

from __future__ import annotations

import json
from typing import Any

from crossnet.bench.util import RunContext, interleaved_runs, runtime_run_bench

USER_BRIDGE = "crossnet-bench-userbr"  # `docker network create -d bridge` (subnet: Docker's choice)
NETWORKS = {"none": "none", "docker bridge": "bridge", "docker user bridge": USER_BRIDGE,
            "crossnet driver": "crossnet"}


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
        d.run("network", "create", "-d", "bridge", USER_BRIDGE)
        rc.log(f"docker: warm-up, then {runs} × run --rm per network (interleaved)")
        out.update(interleaved_runs(lambda net: d.argv("run", "--rm", "--network", net, ld.IMAGE, "true"),
                                    NETWORKS, runs, what="docker run", ref="docker bridge", mine="crossnet driver"))
        out["added_ratio_user"] = user_ratio(out["added_s"])
        out["plugin_ms"] = plugin_timings(str(d.plugin_socket))

    return runtime_run_bench("dockerd", "dockerd not installed (apt-get install docker.io)", "docker-plugin", backend,
                             runs, measure)


def user_ratio(added: dict[str, float]) -> float | None:
    """crossnet's driver / Docker's user-defined bridge, time added over --network none
    (None when the user-defined bridge added nothing: noise)."""
    from crossnet.bench.util import ratio

    return ratio(added.get("crossnet driver"), added.get("docker user bridge"))


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
