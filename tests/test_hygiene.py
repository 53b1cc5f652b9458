"""Tests use kerneleft's public names only: no ``from kerneleft.x import _y``, no ``import kerneleft._mod``, no
``kerneleft.x._y`` / ``alias._y`` attribute (or ``monkeypatch.setattr(alias, "_y", ...)``) on a kerneleft import."""
import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def _private(dotted: str) -> bool:
    """A dotted name with a component starting with ``_`` (dunders such as ``__version__`` are public)."""
    return any(p.startswith("_") and not (p.startswith("__") and p.endswith("__")) for p in dotted.split("."))


def private_uses(source: str) -> list[str]:
    """``line: name`` for every private kerneleft name that ``source`` imports or reaches by attribute."""
    tree = ast.parse(source)
    aliases: set[str] = set()          # local names bound to kerneleft modules or objects
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "kerneleft":
                    aliases.add(a.asname or "kerneleft")
                    if _private(a.name):
                        found.append(f"{node.lineno}: {a.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "kerneleft":
            for a in node.names:
                aliases.add(a.asname or a.name)
                if _private(f"{node.module}.{a.name}"):
                    found.append(f"{node.lineno}: {node.module}.{a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and _root(node.value) in aliases:
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("setattr") and len(node.args) >= 2
              and _root(node.args[0]) in aliases and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str) and _private(node.args[1].value)):
            found.append(f"{node.lineno}: setattr({ast.unparse(node.args[0])}, {node.args[1].value!r})")
    return sorted(set(found))


def _root(node) -> str | None:
    """The leftmost name of ``a.b.c`` (None for anything else)."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


@pytest.mark.parametrize("path", sorted(TESTS.glob("*.py")), ids=lambda p: p.name)
def test_tests_use_public_names_only(path):
    assert private_uses(path.read_text()) == [], path.name


@pytest.mark.parametrize("snippet,hit", [
    ("from kerneleft._gauss_closed import block_det", "kerneleft._gauss_closed.block_det"),
    ("from kerneleft.samplers import _wishart_identity as w", "kerneleft.samplers._wishart_identity"),
    ("import kerneleft._gauss_quad", "kerneleft._gauss_quad"),
    ("from kerneleft import samplers\nsamplers._wishart_identity(1)", "samplers._wishart_identity"),
    ("import kerneleft.maps as m\nm._set_pdeathsig = None", "m._set_pdeathsig"),
    ("from kerneleft.reproduce.cache import ResultCache\nResultCache._store(1)", "ResultCache._store"),
    ("from kerneleft import samplers\nmonkeypatch.setattr(samplers, '_x', 1)", "setattr(samplers, '_x')"),
])
def test_private_uses_are_found(snippet, hit):
    assert [u.split(": ", 1)[1] for u in private_uses(snippet)] == [hit]


def test_public_and_foreign_names_pass():
    assert private_uses("import kerneleft\nfrom kerneleft import __version__, samplers\nsamplers.wishart_identity\n"
                        "import threading\nthreading._shutdown\nx = obj._y\nsetattr(obj, '_z', 1)") == []
