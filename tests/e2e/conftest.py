"""Fixtures shared by the end-to-end test modules."""

from __future__ import annotations

import secrets

import pytest

from crossnet.lab.manager import Lab, down, up
from crossnet.lab.topology import LabOptions


@pytest.fixture
def make_lab():
    """make(**LabOptions) -> Lab with a unique `tf` name; every lab is brought down
    by the finalizer, even when the test fails."""
    made: list[str] = []

    def make(*, apply: bool = True, **kw) -> Lab:
        name = "tf" + secrets.token_hex(3)[:5]
        made.append(name)
        return up(LabOptions(name=name, **kw), apply=apply)

    yield make
    for name in made:
        down(name)
