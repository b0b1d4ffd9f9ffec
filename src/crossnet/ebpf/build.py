"""Compiling the eBPF object (bpf/crossnet_tc.c) with Debian's clang.

- Installed (scripts/install): compiled once into ``<prefix>/libexec/crossnet/crossnet_tc.o``
  (like the native CNI client), from the source shipped as package data.
- A checkout / development environment (scripts/test): the same, into that environment's
  prefix; and if it is missing there, built once on first use into a cache directory
  keyed by the source's hash (``/var/cache/crossnet/ebpf/<sha256>/``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CLANG = "clang"
OBJECT_NAME = "crossnet_tc.o"
PREBUILT = Path("libexec", "crossnet", OBJECT_NAME)
CACHE_DIR = Path(os.environ.get("CROSSNET_EBPF_CACHE", "/var/cache/crossnet/ebpf"))
# Debian's multiarch include dir holds asm/types.h for the kernel headers
CFLAGS = ("-O2", "-g", "-Wall", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu")


def source() -> Path:
    return Path(__file__).with_name("bpf") / "crossnet_tc.c"


def source_hash() -> str:
    return hashlib.sha256(source().read_bytes()).hexdigest()


def compile_object(target: Path, clang: str = CLANG) -> str | None:
    """Compile the source to target (atomically). None on success, else why not."""
    compiler = shutil.which(clang)
    if not compiler:
        return f"no {clang} to compile the eBPF programs (Debian: apt install clang libbpf-dev)"
    src = source()
    if not src.is_file():
        return f"{src} is missing"
    if not Path("/usr/include/bpf/bpf_helpers.h").is_file():
        return "no libbpf headers to compile the eBPF programs (Debian: apt install libbpf-dev)"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        try:
            # debug info (BTF needs -g) names no build directory: neither clang's working
            # directory (scripts/install runs in the checkout) nor where the source lies
            proc = subprocess.run([compiler, *CFLAGS, f"-fdebug-prefix-map={src.parent}=crossnet/ebpf/bpf",
                                   f"-fdebug-prefix-map={os.getcwd()}=.", "-c", str(src), "-o", tmp],
                                  capture_output=True, text=True, errors="replace", timeout=300, cwd=src.parent)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{clang} failed: {exc}"
        if proc.returncode != 0:
            lines = [x for x in proc.stderr.splitlines() if "error" in x] or proc.stderr.splitlines()
            return f"{clang} failed: {lines[0] if lines else f'exit {proc.returncode}'}"
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        return None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def prebuilt(prefix: str | None = None) -> Path | None:
    path = Path(prefix or sys.prefix) / PREBUILT
    return path if path.is_file() else None


def find_object(build: bool = True) -> tuple[Path | None, str | None]:
    """(the object, None) or (None, why there is none). The prebuilt one of this
    installation first; else the cache's for this source, compiled now if build."""
    path = prebuilt()
    if path is not None:
        return path, None
    if not source().is_file():
        return None, f"{source()} is missing"
    cached = CACHE_DIR / source_hash() / OBJECT_NAME
    if cached.is_file():
        return cached, None
    if not build:
        return None, f"the eBPF object is not built yet ({cached})"
    why = compile_object(cached)
    return (None, why) if why else (cached, None)


def build_prebuilt(prefix: str | None = None) -> int:
    """scripts/install and scripts/test: compile the object into <prefix>/libexec/crossnet/.
    Exit status for the script (a missing clang is an error there: it installs it)."""
    why = compile_object(Path(prefix or sys.prefix) / PREBUILT)
    if why:
        print(f"crossnet: error: eBPF programs not built: {why}", file=sys.stderr)
        return 1
    return 0
