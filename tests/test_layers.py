"""The layout is the architecture: a layer imports only layers below it (docs/architecture.md).

Every import in the package is checked, lazy ones inside functions included, so a stage
that starts reaching upwards (a leaf importing the engine, the language importing the
decision stage) fails here instead of growing an import cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "policyengine"

# Lowest first. A module belongs to the first layer with a matching prefix; it may import
# its own layer and every layer before it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("leaf", ("policyengine.errors", "policyengine.decision", "policyengine.permissions",
              "policyengine._json", "policyengine._glob", "policyengine._lazy",
              "policyengine.money",
              "policyengine.budgets", "policyengine.tokens", "policyengine.audit",
              "policyengine.tools._patterns",
              "policyengine.tools._redaction", "policyengine.tools._http")),
    ("lang", ("policyengine.lang",)),
    ("tool governance", ("policyengine.tools",)),
    ("decide", ("policyengine.decide",)),
    ("engine", ("policyengine.engine",)),
    ("app", ("policyengine",)),
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer")  # pragma: no cover


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported policyengine module, line) for every import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names
                      if a.name.startswith("policyengine")]
        elif isinstance(node, ast.ImportFrom) and node.module \
                and node.module.startswith("policyengine"):
            for alias in node.names:  # ``from policyengine import ast`` names a module
                sub = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() or \
                    (PACKAGE.parent / sub.replace(".", "/")).is_dir()
                found.append((sub if is_module else node.module, node.lineno))
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_imports_point_down(path: Path) -> None:
    importer = _module_name(path)
    rank = _layer(importer)
    upward = [f"line {line}: {name} ({LAYERS[_layer(name)][0]})"
              for name, line in _imports(path) if _layer(name) > rank]
    assert not upward, (f"{importer} ({LAYERS[rank][0]}) imports upwards: {upward} "
                        "(a new leaf module belongs in LAYERS above)")


def test_every_module_has_a_layer_and_the_leaves_exist() -> None:
    names = {_module_name(p) for p in MODULES}
    for _, prefixes in LAYERS:
        for prefix in prefixes:
            assert any(n == prefix or n.startswith(prefix + ".") for n in names), prefix


def test_a_leaf_importing_the_engine_is_caught(tmp_path: Path) -> None:
    """The check itself: an upward import is reported."""
    fake = PACKAGE / "money" / "_upward_probe.py"
    assert _layer(_module_name(fake)) == 0
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from policyengine.engine import Engine\n", "utf-8")
    assert [(n, _layer(n)) for n, _ in _imports(probe)] == [("policyengine.engine", 4)]
