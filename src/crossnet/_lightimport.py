"""Start-up time of short-lived crossnet processes (CLI, CNI plugin, agent).

``import pyroute2.<anything>`` normally runs pyroute2/__init__.py first, which imports
every netlink family pyroute2 knows (conntrack, ipdb, ndb, nl80211, plan9, ...): about
0.2 s on these machines, more than everything crossnet itself needs.

:func:`install` puts a one-shot finder on ``sys.meta_path``: when pyroute2 is first
imported, the package object is created without running that ``__init__``; submodules
import as usual. The package gets a module-level ``__getattr__`` that serves the names
crossnet uses (``IPRoute``, ``NetNS``, ``NetlinkError``...) from their submodules and
runs the real ``__init__`` on first access to anything else, so code written against
``from pyroute2 import X`` keeps working. Nothing is imported until pyroute2 is (the CNI
client's start-up stays at builtin modules only).
"""

import importlib.machinery
import sys

# names taken from the package -> the submodule that defines them
_FAST = {
    "IPRoute": "pyroute2.iproute",
    "NetNS": "pyroute2.iproute",
    "AsyncIPRoute": "pyroute2.iproute",
    "NetlinkError": "pyroute2.netlink.exceptions",
}


def _submodule(name):
    __import__(name)
    return sys.modules[name]


class _LightLoader:
    def __init__(self, real):
        self.real = real

    def create_module(self, spec):
        return None  # default module object

    def exec_module(self, pkg):
        real, state = self.real, {"full": False}

        def __getattr__(name):
            if name in _FAST:
                value = getattr(_submodule(_FAST[name]), name)
                setattr(pkg, name, value)
                return value
            if name == "__version__":  # what the real __init__ exports, from where it takes it
                value = getattr(_submodule("pyroute2.config.version"), "__version__", "unknown")
                setattr(pkg, name, value)
                return value
            if name.startswith("__"):
                raise AttributeError(name)
            if importlib.machinery.PathFinder.find_spec(f"pyroute2.{name}", pkg.__path__) is not None:
                return _submodule(f"pyroute2.{name}")  # a submodule
            if not state["full"]:
                state["full"] = True
                real.exec_module(pkg)  # the real __init__, into the same module object
                return getattr(pkg, name)
            raise AttributeError(f"module 'pyroute2' has no attribute {name!r}")

        pkg.__getattr__ = __getattr__


class _Finder:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "pyroute2":
            return None
        uninstall()
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not spec.submodule_search_locations:
            return spec
        spec.loader = _LightLoader(spec.loader)
        return spec


def install():
    """Import pyroute2 light from now on (no-op when it is imported already)."""
    if "pyroute2" not in sys.modules and _Finder not in sys.meta_path:
        sys.meta_path.insert(0, _Finder)


def uninstall():
    if _Finder in sys.meta_path:
        sys.meta_path.remove(_Finder)
