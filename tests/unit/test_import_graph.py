"""The import graph of crossnet: no cycle, and production code never imports the lab.

Every module under src/crossnet is parsed with `ast`; every Import/ImportFrom anywhere in
the file counts (inside functions too: a lazy import is still a dependency), relative
names resolved. `from X import Y` depends on X.Y when that is a module, else on X;
importing a module also runs its parent packages' __init__ (those are edges too, except
the importer's own ancestors, which are already running).
"""

from __future__ import annotations

import ast
from pathlib import Path

import crossnet

SRC = Path(crossnet.__file__).parent
ROOT = "crossnet"

# Cycles tolerated for now: none (issue 12 broke the last ones). Each entry would be one
# strongly connected component of the graph; nothing else may form a cycle, and an entry
# that no longer matches must be taken out of this list.
ALLOWED_CYCLES: set[frozenset[str]] = set()

# lab-only code (process supervision for OVS/etcd/podman/agents in namespaces) and the
# code that may use it: the lab itself, the benchmarks (which run in labs) and the
# `crossnet lab` / `crossnet bench` commands
LAB = "crossnet.lab"
LAB_SIDE = ("crossnet.lab", "crossnet.bench", "crossnet.cli.lab", "crossnet.cli.bench")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = [ROOT, *path.relative_to(SRC).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if _is_package(path) else mod.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = package.split(".")
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.add(sub if sub in mods else base)
        for t in targets:
            if not _within(t, ROOT):
                continue
            while t not in mods:  # `import crossnet.x.y` of a name defined in crossnet.x
                t = t.rpartition(".")[0]
            own = set(_ancestors(mod))
            for dep in [t, *_ancestors(t)]:
                if dep != mod and dep not in own and dep in mods:
                    graph[mod].add(dep)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Tarjan's algorithm (iterative); components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[frozenset[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = set()
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.add(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        out.append(frozenset(comp))
    return out


def test_graph_sees_lazy_and_relative_imports():
    g = import_graph()
    assert "crossnet.runtime.engines" in g["crossnet.runtime.spec"]  # inside resolve()
    assert "crossnet.backends" in g["crossnet.config"]
    assert "crossnet.lab.ovsdaemon" in g["crossnet.lab.ovs"]
    assert "crossnet.lab" in g["crossnet.cli.lab"]  # parent package of crossnet.lab.topology
    assert "crossnet.backends.base" in g["crossnet.backends"]  # under TYPE_CHECKING: counted all the same


def test_scc_finds_cycles():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    cycles = set(strongly_connected(import_graph()))
    new = [sorted(c) for c in cycles - ALLOWED_CYCLES]
    assert not new, f"import cycles: {new}"
    stale = [sorted(c) for c in ALLOWED_CYCLES - cycles]
    assert not stale, f"these cycles are gone: take them out of ALLOWED_CYCLES: {stale}"


def test_production_code_never_imports_the_lab():
    g = import_graph()
    bad = sorted((m, d) for m, deps in g.items() if not any(_within(m, p) for p in LAB_SIDE)
                 for d in deps if _within(d, LAB))
    assert not bad, f"production modules importing lab-only code: {bad}"


# ---- docs/design.md's module map names every module, and its layers hold

DESIGN = Path(__file__).resolve().parents[2] / "docs" / "design.md"
# an edge that goes "up" the map on purpose: names Backend for type checking only
UPWARD_OK = {("crossnet.backends", "crossnet.backends.base")}


def design_map() -> dict[str, int]:
    """module -> index of its group in docs/design.md's table (`.x` after a full name
    in the same cell means a sibling module, or a submodule of a package)."""
    import re

    mods = _modules()
    out: dict[str, int] = {}
    group = -1
    for line in DESIGN.read_text().splitlines():
        if not line.startswith("| "):
            continue
        cell = line.split("|")[1]
        if cell.strip().startswith("**"):
            group += 1
            continue
        base = None
        for tok in re.findall(r"`([^`]+)`", cell):
            if tok.startswith("crossnet.") or tok == "crossnet":
                name = tok
                base = tok if tok in mods and _is_package(mods[tok]) else tok.rpartition(".")[0]
            elif tok.startswith(".") and base:
                name = base + tok
            else:
                continue
            out[name] = group
    return out


def test_design_map_names_every_module():
    named = design_map()
    assert sorted(set(_modules()) - set(named)) == []
    assert sorted(set(named) - set(_modules())) == []


def test_imports_follow_the_layers_of_the_design_map():
    layer = design_map()
    up = sorted((m, d) for m, deps in import_graph().items() for d in deps
                if layer[d] > layer[m] and (m, d) not in UPWARD_OK)
    assert not up, f"imports from a layer to one below it in docs/design.md: {up}"
