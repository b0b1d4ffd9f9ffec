"""Shared fixtures: labs (simulated hosts in network namespaces) for end-to-end tests.

    def test_something(lab_factory):
        lab = lab_factory(hosts=2, underlay="l3", backend="vxlan", containers=1)
        assert all(p.ok for p in lab.check())
        lab.crossnet("h1", "status", "-o", "json")

Every lab gets a unique name ``t`` + 5 random characters and is removed when the
test ends, pass or fail. Labs need root: tests using the fixture skip otherwise.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import string

import pytest

from crossnet.lab import procs

_ALPHABET = string.ascii_lowercase + string.digits


def _require_lab_env() -> None:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces)")
    if not shutil.which("ip"):
        pytest.skip("lab tests need iproute2 (`ip`)")


@pytest.fixture(scope="session")
def lab_sweep() -> None:
    """Once per session: remove test labs left by earlier sessions that crashed
    (test-named labs whose owning pytest process is gone, and stray namespaces)."""
    _require_lab_env()
    from crossnet.lab import manager, netns

    LabFactory.sweep()
    for ns_name in netns.list_netns():
        prefix = ns_name.split("-", 1)[0]
        if "-" in ns_name and LabFactory.matches(prefix) and not manager.lab_dir(prefix).exists():
            with contextlib.suppress(Exception):
                manager.down(prefix)


class LabFactory:
    """Creates labs with unique names (PREFIX + SUFFIX_LEN random characters);
    `cleanup()` removes all of them. Test modules that want their own prefix
    subclass it and set PREFIX/SUFFIX_LEN (and `sweepable` to narrow the sweep)."""

    PREFIX = "t"
    SUFFIX_LEN = 5

    @classmethod
    def matches(cls, name: str) -> bool:
        return re.fullmatch(rf"{cls.PREFIX}[a-z0-9]{{{cls.SUFFIX_LEN}}}", name) is not None

    @classmethod
    def sweepable(cls, manifest: dict) -> bool:
        """Whether a crashed session's lab with this manifest may be removed."""
        return True

    @classmethod
    def sweep(cls) -> None:
        """Remove labs of this prefix left by crashed test sessions (owner process gone)."""
        from crossnet.lab import manager

        for name in manager.lab_names():
            m = manager.read_manifest(name) or {}
            if cls.matches(name) and cls.sweepable(m) and not procs.exists(m.get("owner_pid")):
                with contextlib.suppress(Exception):
                    manager.down(name)

    @classmethod
    def for_test(cls, request: pytest.FixtureRequest):
        """Sweep, then a factory whose labs are removed when `request`'s scope ends
        (fixtures using it must also request the session-scoped `lab_sweep`)."""
        cls.sweep()
        factory = cls()
        request.addfinalizer(factory.cleanup)
        return factory

    def __init__(self) -> None:
        self.names: list[str] = []
        # CLI invocations made by a test should carry this so the sweep knows the owner
        self.env = {**os.environ, "CROSSNET_LAB_OWNER_PID": str(os.getpid())}

    def new_name(self) -> str:
        """Reserve a unique lab name (torn down at the end even if only the CLI used it)."""
        from crossnet.lab import manager, netns

        existing = set(netns.list_netns())
        for _ in range(100):
            name = self.PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(self.SUFFIX_LEN))
            if not manager.lab_dir(name).exists() and not any(n.startswith(f"{name}-") for n in existing):
                self.names.append(name)
                return name
        raise RuntimeError("no free test lab name")

    def __call__(self, hosts: int = 3, underlay: str = "l2", backend: str = "vxlan", containers: int = 2,
                 apply: bool = True, mtu: int | None = None, **options):
        from crossnet.lab import manager
        from crossnet.lab.topology import LabOptions

        opts = LabOptions(name=self.new_name(), hosts=hosts, underlay=underlay, backend=backend,
                          containers=containers, mtu=mtu, **options)
        return manager.up(opts, apply=apply, owner_pid=os.getpid())

    def cleanup(self) -> None:
        from crossnet.lab import manager

        errors = []
        for name in reversed(self.names):
            try:
                manager.down(name)
            except Exception as exc:  # noqa: BLE001 - remove the others, then report
                errors.append(f"{name}: {exc}")
        self.names.clear()
        if errors:
            raise RuntimeError("lab teardown failed: " + "; ".join(errors))


@pytest.fixture
def lab_factory(request: pytest.FixtureRequest, lab_sweep: None) -> LabFactory:
    factory = LabFactory()
    request.addfinalizer(factory.cleanup)
    return factory
