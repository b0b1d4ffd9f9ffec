"""The eBPF host routing of ``datapath: ebpf`` (docs/ebpf.md): tc programs on the
container veths and the underlay NIC / vxlan device that forward with the kernel's FIB.

- crossnet.ebpf.build: compiles bpf/crossnet_tc.c (install time, or once into a cache)
- crossnet.ebpf.bpfsys: the bpf(2) commands crossnet uses (ctypes)
- crossnet.ebpf.maps: map layouts (configuration, counters)
- crossnet.ebpf.host: reconciler resources, container attach/detach, counters

``problem()`` is the feature detection: None when this host can run the programs.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil


def problem() -> str | None:
    """None: this host can run the eBPF datapath; else one line saying why not (no
    object and no clang, no bpftool, bpffs not mountable, the kernel refuses the programs).
    Loads the programs once into a scratch pin directory (then removes it); cached."""
    return _problem()


@functools.cache
def _problem() -> str | None:
    from crossnet.ebpf import build, host

    if platform.machine() != "x86_64":
        return f"the eBPF programs are built for x86_64 only (this host: {platform.machine()})"
    if os.geteuid() != 0:
        return "loading eBPF programs needs root"
    if not shutil.which(host.BPFTOOL):
        return f"no {host.BPFTOOL} to load the eBPF programs (Debian: apt install bpftool)"
    obj, why = build.find_object()
    if obj is None:
        return why
    why = host.ensure_bpffs()
    if why:
        return why
    return host.trial_load(obj)
