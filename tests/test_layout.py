"""The package layout (README "Architecture"): imports point downward only, no cycles, one home per dependency.

Every ``import`` in kerneleft — at module level or inside a function — is an edge of the import graph. Each module
has a layer (``LAYERS``); an edge may only go to the same or a lower layer, the graph must be acyclic, theories
import no Monte Carlo module, and Dask is imported by one module only.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import kerneleft

ROOT = Path(kerneleft.__file__).parent

#: module (dotted, relative to kerneleft) -> layer; a module may import only modules of its own or lower layers
LAYERS = {
    "errors": 0, "_version": 0,
    "validate": 1, "result": 1, "tensors": 1, "pairs": 1, "limits": 1,
    "_gauss_taylor": 2, "_gauss_quad": 2, "_gauss_closed": 2, "_gauss_four": 2, "maps": 2, "distributed": 2,
    "activations": 3,
    "gaussian": 4, "branch": 4, "config": 4,
    "kernel": 5,
    "coefficients": 6,
    "samplers": 7, "estimators": 7,
    "ensemble": 8,
    "theory": 9,
    "diagnostics": 10,
    "sweep": 11, "reproduce": 11,
    "cli": 12,
    "": 13, "__main__": 14,
}
MONTE_CARLO = ("samplers", "estimators", "ensemble", "distributed")   # maps: the generic parallel map (ensembles, sigma planes)


def _modules() -> dict[str, Path]:
    """dotted name relative to kerneleft ('' for the package itself) -> file."""
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _layer(module: str) -> int:
    """The layer of a module: its own entry, else its top-level package's (``theory.sigma`` -> ``theory``)."""
    if module in LAYERS:
        return LAYERS[module]
    top = module.split(".")[0]
    if top in LAYERS:
        return LAYERS[top]
    raise AssertionError(f"kerneleft.{module} has no layer in tests/test_layout.py LAYERS: add it")


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> list[str]:
    """Absolute targets (relative to kerneleft) of one ``from ... import ...``."""
    if node.level == 0:
        if not (node.module or "").startswith("kerneleft"):
            return []
        base = node.module.split(".")[1:]
    else:
        here = module.split(".") if module else []
        pkg = here if is_pkg else here[:-1]
        base = pkg[:len(pkg) - (node.level - 1)] + (node.module.split(".") if node.module else [])
    mods = _modules()
    targets = []
    for alias in node.names:
        sub = ".".join(base + [alias.name])
        targets.append(sub if sub in mods else ".".join(base))
    return targets


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                targets = _resolve(m, path.name == "__init__.py", node)
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".", 1)[1] if "." in a.name else "" for a in node.names
                           if a.name.split(".")[0] == "kerneleft"]
            else:
                continue
            graph[m].update(t for t in targets if t != m)
    return graph


def _external(module_path: Path) -> set[str]:
    """Top-level names of the third-party modules a file imports."""
    names = set()
    for node in ast.walk(ast.parse(module_path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_module_has_a_layer():
    for m in _modules():
        _layer(m)


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a closed list of nodes, or None (depth-first search; '' is the package root)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if t == "" or t not in graph:
                continue
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and m != "" and (found := visit(m)):
            return found
    return None


def _upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return [(m, t) for m, ts in graph.items() for t in ts if m != "" and _layer(t) > _layer(m)]


def test_imports_point_downward():
    up = _upward(_graph())
    assert not up, "upward imports: " + "; ".join(f"{m} ({_layer(m)}) -> {t} ({_layer(t)})" for m, t in up)


def test_no_import_cycles():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_theories_import_no_monte_carlo_module():
    bad = [(m, t) for m, ts in _graph().items() if m.split(".")[0] == "theory" for t in ts
           if t.split(".")[0] in MONTE_CARLO]
    assert not bad, f"theory modules importing Monte Carlo modules: {bad}"


def test_dask_is_imported_in_one_module_only():
    users = sorted(m for m, p in _modules().items() if "dask" in _external(p) or "distributed" in _external(p))
    assert users == ["distributed"], f"modules importing dask: {users}"


def test_the_checks_can_fail():
    """The checkers on synthetic graphs: a cycle, an upward edge and an unknown module are all found."""
    assert _find_cycle({"kernel": {"config"}, "config": {"gaussian"}, "gaussian": {"kernel"}}) == \
        ["config", "gaussian", "kernel", "config"]
    assert _find_cycle({"kernel": {"config"}, "config": set()}) is None
    assert _upward({"kernel": {"cli"}, "cli": {"kernel"}}) == [("kernel", "cli")]
    with pytest.raises(AssertionError):
        _layer("no_such_module_anywhere")
