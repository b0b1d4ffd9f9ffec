"""Unit tests never probe this machine for the eBPF datapath (crossnet.ebpf.problem loads
a program into the real kernel): a routed network's programs are absent unless a test
says otherwise (tests/unit/test_datapath.py patches crossnet.ebpf.problem)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_ebpf_probe(monkeypatch):
    from crossnet import datapath

    monkeypatch.setattr(datapath, "_why_not", {"ebpf": "unit tests do not probe for eBPF"})
