"""Unit tests never probe this machine for the eBPF datapath (crossnet.ebpf.problem loads
a program into the real kernel): a routed network's programs are absent unless a test
says otherwise (tests/unit/test_datapath.py patches crossnet.ebpf.problem).

``helper_mode``: network configs validated in crossnet.netconfig's helper process, as in
`crossnet launch`'s and the agent's process."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_ebpf_probe(monkeypatch):
    from crossnet import datapath

    monkeypatch.setattr(datapath, "_why_not", {"ebpf": "unit tests do not probe for eBPF"})


@pytest.fixture
def helper_mode():
    from crossnet import helper, netconfig

    netconfig.use_helper()
    try:
        yield
    finally:
        netconfig.use_helper(False)
        while helper._warm:  # a prestarted helper a failed test left
            proc, _ = helper._warm.popitem()[1]
            proc.kill()
            proc.communicate()
