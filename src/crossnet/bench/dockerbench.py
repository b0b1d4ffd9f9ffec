"""`crossnet bench control` row docker-run: the time a network adds to `docker run --rm
IMAGE true` on a simulated host with a real dockerd, crossnet's network driver
(`crossnet docker-plugin`, network `crossnet`) vs Docker's own default bridge network
(`bridge`), both over `--network none`, interleaved in the same run (docs/docker.md)."""

from __future__ import annotations

import json
import shutil
import time
from typing import Any

from crossnet.bench.util import (
    RunContext,
    Skip,
    bench_lab,
    clean_error,
    interleaved_runs,
    loadavg,
)

NETWORKS = {"none": "none", "docker bridge": "bridge", "crossnet driver": "crossnet"}


def run(rc: RunContext, runs: int = 10, backend: str = "vxlan") -> dict[str, Any]:
    if not shutil.which("dockerd"):
        return {"status": "skipped", "reason": "dockerd not installed (apt-get install docker.io)"}
    from crossnet.lab import docker as ld

    out: dict[str, Any] = {"status": "ok", "backend": backend, "runs": runs, "load_before": loadavg()}
    t0 = time.monotonic()
    try:
        with bench_lab({"hosts": 1, "containers": 0, "backend": backend, "extra": {"runtime": "docker-plugin"}}) as lab:
            d = ld.host_docker(lab.plan, lab.hosts[0])
            d.base.mkdir(parents=True, exist_ok=True, mode=0o700)
            d.config.write_text(json.dumps(ld.PLUGIN_DAEMON_JSON) + "\n")
            d.start_plugin()
            d.start_daemon()
            d.ensure_image()
            d.create_network()
            rc.log(f"docker: warm-up, then {runs} × run --rm per network (interleaved)")
            out.update(interleaved_runs(lambda net: d.argv("run", "--rm", "--network", net, ld.IMAGE, "true"),
                                        NETWORKS, runs, what="docker run", ref="docker bridge", mine="crossnet driver"))
    except Skip as exc:
        return {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001
        out.update(status="failed", reason=clean_error(exc))
    out["elapsed_s"] = round(time.monotonic() - t0, 1)
    return out
