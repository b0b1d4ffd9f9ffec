"""Shared helpers of the benchmark suites: statistics, bounded subprocesses that
also report their peak RSS, machine facts, unique lab names, run context."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import re
import secrets
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

LAB_PREFIX = "b"  # bench labs: b + 7 random [a-z0-9]
_ALPHABET = string.ascii_lowercase + string.digits


class Skip(Exception):
    """A measurement that cannot run here (feature not landed, tool missing)."""


# ---------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """q in [0, 100], linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def summary(values: Sequence[float], digits: int = 4) -> dict[str, Any]:
    """median/min/max/mean/p50/p90/p99 and the samples themselves."""
    vals = [float(v) for v in values]
    if not vals:
        return {"n": 0}
    r = lambda x: round(x, digits)  # noqa: E731
    return {
        "n": len(vals),
        "median": r(percentile(vals, 50)),
        "p50": r(percentile(vals, 50)),
        "p90": r(percentile(vals, 90)),
        "p99": r(percentile(vals, 99)),
        "min": r(min(vals)),
        "max": r(max(vals)),
        "mean": r(sum(vals) / len(vals)),
        "samples": [r(v) for v in vals],
    }


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return round(a / b, digits)


# ---------------------------------------------------------------- interleaved rounds


def round_ratios(a: list[float], b: list[float]) -> list[float]:
    """Per round a_i ÷ b_i (the two runs of one round are seconds apart)."""
    return [x / y for x, y in zip(a, b) if y > 0]


def pair_ratios(a: list[float], b: list[float]) -> list[float]:
    """Per pair of rounds (one in each order: `dataplane.paired` reverses the order every other
    round) the geometric mean of a_i ÷ b_i. Whichever of two paths runs first in a round
    measures a little lower here (seen as ratios alternating between rounds), so a
    single round, or an odd count of them, is biased by the order; a pair is not. Rounds
    pair by their index (0-1, 2-3, ...): a pair with a failed baseline run (≤ 0) is left
    out whole, so a failure never pairs two rounds of the same order."""
    n = min(len(a), len(b))
    return [math.sqrt(a[i] / b[i] * a[i + 1] / b[i + 1]) for i in range(0, n - 1, 2) if b[i] > 0 and b[i + 1] > 0]


def median_ratio(a: list[float], b: list[float]) -> float | None:
    """The target figure: median over pairs of rounds (`pair_ratios`); one round: its ratio."""
    rs = pair_ratios(a, b) or round_ratios(a, b)
    return round(percentile(rs, 50), 3) if rs else None


# ---------------------------------------------------------------- subprocesses


@dataclass
class Measured:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    maxrss_kb: int  # peak RSS of the child (and the descendants it waited for)
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def error_line(self) -> str:
        for text in (self.stderr, self.stdout):
            lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
            if lines:
                return lines[-1][:300]
        return f"exit code {self.returncode}"


def run_measured(argv: Sequence[str], *, timeout: float, env: dict[str, str] | None = None,
                 input: str | None = None, cwd: str | None = None) -> Measured:
    """Run argv to completion (killed after `timeout` s) and return its output, wall
    time and peak RSS (os.wait4 gives the rusage of exactly this child)."""
    argv = list(argv)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                stdout=out, stderr=err, env=env, cwd=cwd, text=True, start_new_session=True)
        timed_out = threading.Event()

        def _kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, _kill)
        timer.daemon = True
        timer.start()
        try:
            if input is not None:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.write(input)
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
            while True:
                try:
                    _, status, usage = os.wait4(proc.pid, 0)
                    break
                except InterruptedError:
                    continue
        except BaseException:
            _kill()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(proc.pid, 0)
            proc.returncode = -9
            raise
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(argv, proc.returncode, out.read(), err.read(), wall, int(usage.ru_maxrss),
                        timed_out.is_set())


def runtime_run_bench(binary: str, missing: str, runtime: str, backend: str, runs: int,
                      measure: Callable[[Any, dict[str, Any]], None]) -> dict[str, Any]:
    """A `… run --rm` row (podman, docker): a one-host lab of `backend` with the lab
    runtime `runtime`, `measure(lab, out)` fills `out` (interleaved_runs); skipped when
    `binary` is missing (`missing` says what to install), failed with a clean reason."""
    if not shutil.which(binary):
        return {"status": "skipped", "reason": missing}
    out: dict[str, Any] = {"status": "ok", "backend": backend, "runs": runs, "load_before": loadavg()}
    t0 = time.monotonic()
    try:
        with bench_lab({"hosts": 1, "containers": 0, "backend": backend, "extra": {"runtime": runtime}}) as lab:
            measure(lab, out)
    except Skip as exc:
        return {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a failed row, reported
        out.update(status="failed", reason=clean_error(exc))
    out["elapsed_s"] = round(time.monotonic() - t0, 1)
    return out


def interleaved_runs(argv_for: Callable[[str], list[str]], nets: dict[str, str], runs: int, *,
                     env: dict[str, str] | None = None, what: str = "run",
                     ref: str | None = None, mine: str | None = None) -> dict[str, Any]:
    """`container run --rm` timings per network: one warm-up per network (a failure
    raises), then `runs` rounds over every network (interleaved, so load drifts hit all
    alike). ``nets``: label -> network (the label "none" is the baseline). Returns
    run_s (summary per label), added_s (median over "none"), errors, and added_ratio
    (``mine`` / ``ref`` of added_s, when both are given and the reference added > 0)."""
    for net in nets.values():
        res = run_measured(argv_for(net), timeout=180, env=env)
        if not res.ok:
            raise RuntimeError(f"{what} --network {net}: {res.error_line()}")
    times: dict[str, list[float]] = {k: [] for k in nets}
    errors: list[str] = []
    for _ in range(runs):
        for label, net in nets.items():
            res = run_measured(argv_for(net), timeout=180, env=env)
            if res.ok:
                times[label].append(res.wall_s)
            else:
                errors.append(f"{label}: {res.error_line()}")
    out: dict[str, Any] = {"run_s": {k: summary(v, 4) for k, v in times.items()}}
    none = out["run_s"]["none"].get("median")
    out["added_s"] = {k: round(v["median"] - none, 4) for k, v in out["run_s"].items() if k != "none" and v.get("n")}
    out["errors"] = errors[:5]
    if ref is not None and mine is not None:
        x, r = out["added_s"].get(mine), out["added_s"].get(ref)
        out["added_ratio"] = ratio(x, r) if x is not None and r else None
    return out


def netns_argv(netns: str, argv: Sequence[str], env: dict[str, str] | None = None) -> list[str]:
    prefix = ["ip", "netns", "exec", netns]
    if env:
        prefix += ["env", *(f"{k}={v}" for k, v in env.items())]
    return [*prefix, *argv]


def sh(argv: Sequence[str], timeout: float = 30.0, check: bool = True, input: str | None = None,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """A short bounded command (used by the hand-built baselines)."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input,
                          env=env, stdin=None if input is not None else subprocess.DEVNULL)
    if check and proc.returncode != 0:
        msg = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}").splitlines()[-1]
        raise RuntimeError(f"{' '.join(argv)}: {msg}")
    return proc


def crossnet_cli() -> list[str]:
    """How a user runs crossnet: the console script when installed, else python -m."""
    exe = shutil.which("crossnet")
    return [exe] if exe else [sys.executable, "-m", "crossnet"]


def vm_hwm_kb(pid: int | str = "self") -> int | None:
    """Peak resident set size (VmHWM) of a running process."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# ---------------------------------------------------------------- machine facts


def loadavg() -> list[float]:
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return []


def _first_line(argv: list[str]) -> str | None:
    if not shutil.which(argv[0]):
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0].strip() if text else None


def machine_facts() -> dict[str, Any]:
    cpu = None
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_mb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem_mb = int(line.split()[1]) // 1024
    try:
        import pyroute2

        pyroute2_version = pyroute2.__version__
    except Exception:  # noqa: BLE001
        pyroute2_version = None
    from crossnet import __version__ as crossnet_version

    return {
        "hostname": platform.node(),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_mb": mem_mb,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "crossnet": crossnet_version,
        "pyroute2": pyroute2_version,
        "iperf3": _first_line(["iperf3", "--version"]),
        "ovs": _first_line(["ovs-vswitchd", "--version"]),
        "podman": _first_line(["podman", "--version"]),
        "loadavg": loadavg(),
    }


def git_revision(path: str | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=path)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, cwd=path)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


# ---------------------------------------------------------------- labs


CREATED_LABS: list[str] = []  # every lab this process built (for the results / leak checks)


def new_lab_name() -> str:
    from crossnet.lab import manager, netns

    existing = set(netns.list_netns())
    for _ in range(100):
        name = LAB_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(7))
        if not manager.lab_dir(name).exists() and not any(n.startswith(f"{name}-") for n in existing):
            return name
    raise RuntimeError("cannot find a free bench lab name")


@contextlib.contextmanager
def bench_lab(opts_kw: dict[str, Any], *, apply: bool = True, log: Callable[[str], None] | None = None
              ) -> Iterator[Any]:
    """A lab named b<random>, removed on exit whatever happens."""
    from crossnet.lab import manager
    from crossnet.lab.topology import LabOptions

    name = new_lab_name()
    CREATED_LABS.append(name)
    opts = LabOptions(name=name, **opts_kw)
    lab = None
    try:
        lab = manager.up(opts, apply=apply, log=log)
        yield lab
    finally:
        with contextlib.suppress(Exception):
            manager.down(name)


# ---------------------------------------------------------------- run context


@dataclass
class RunContext:
    quick: bool = False
    log: Callable[[str], None] = lambda _m: None
    memory: list[dict[str, Any]] = field(default_factory=list)
    profile: bool = False  # profile slow paths with pyinstrument when a target is missed
    cpu: int | None = None  # iperf3's client and server pinned to this CPU (`--cpu`), else unpinned

    def note_memory(self, process: str, what: str, maxrss_kb: int | None) -> None:
        if maxrss_kb:
            self.memory.append({"process": process, "what": what, "peak_rss_mb": round(maxrss_kb / 1024, 1)})


def clean_error(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    text = re.sub(r"\s+", " ", text)
    return text[:400]


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
