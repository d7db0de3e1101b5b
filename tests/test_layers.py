"""The layout is the architecture: a layer imports only layers below it (docs/architecture.md).

Every import in the package is checked, lazy ones inside functions included, so a stage
that starts reaching upwards (a leaf importing the engine, the language importing the
decision stage) fails here instead of growing an import cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "policyengine"

# Lowest first. A module belongs to the first layer with a matching prefix; it may import
# its own layer and every layer before it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("leaf", ("policyengine.errors", "policyengine.decision", "policyengine.permissions",
              "policyengine._json", "policyengine._glob", "policyengine._lazy",
              "policyengine._storeurl", "policyengine._pgtables", "policyengine._files",
              "policyengine._visible",
              "policyengine.money",
              "policyengine.budgets", "policyengine.tokens", "policyengine.audit",
              "policyengine.tools._patterns",
              "policyengine.tools._redaction", "policyengine.tools._http",
              "policyengine.decide._approvals")),
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


# -- no private name crosses a module --------------------------------------------------
# A name starting with ``_`` is its module's own (docs/architecture.md). What another
# module needs is a public name, in a private module (``_x.py``, the package's own) when
# users should not import it. Checked mechanically:
#   * ``from policyengine.m import _name`` in another module (``_name`` not a submodule);
#   * ``m._name`` where ``m`` is a policyengine module imported here;
#   * ``obj._name`` (``self`` included), or ``getattr(obj, "_name")`` and its kin, where
#     no class or object of this module defines the attribute ``_name`` but one in another
#     module does. Types are not inferred: an attribute name defined both here and
#     elsewhere passes.
# Private names of other libraries (a socket inside a client) and the namedtuple API
# (``_fields``, ``_make``, ``_replace``, ``_asdict``) are not this rule's business.

NAMEDTUPLE_API = frozenset({"_asdict", "_field_defaults", "_fields", "_make", "_replace"})


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_module(name: str) -> bool:
    base = PACKAGE.parent / name.replace(".", "/")
    return base.with_suffix(".py").exists() or base.is_dir()


def _defined_attributes(tree: ast.AST) -> set[str]:
    """Private attribute names a module defines: assigned to an attribute, or named in a
    class body (methods, class attributes, ``__slots__`` entries)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    names.add(stmt.name)
                elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    names.add(stmt.target.id)
                elif isinstance(stmt, ast.Assign):
                    targets = [t.id for t in stmt.targets if isinstance(t, ast.Name)]
                    names.update(targets)
                    if "__slots__" in targets:
                        names.update(c.value for c in ast.walk(stmt.value)
                                     if isinstance(c, ast.Constant) and isinstance(c.value, str))
    return {n for n in names if _private(n)}


def _attribute_owners() -> dict[str, set[str]]:
    owners: dict[str, set[str]] = {}
    for path in MODULES:
        for name in _defined_attributes(ast.parse(path.read_text("utf-8"))):
            owners.setdefault(name, set()).add(_module_name(path))
    return owners


OWNERS = _attribute_owners()


def _crossings(path: Path, module: str) -> list[str]:
    """Every use in ``path`` (module ``module``) of a private name of another module."""
    tree = ast.parse(path.read_text("utf-8"))
    found: list[str] = []
    modules: dict[str, str] = {}  # local name -> the policyengine module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("policyengine"):
                    local = alias.asname or alias.name.split(".")[0]
                    modules[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.module \
                and node.module.startswith("policyengine"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if _is_module(full):
                    modules[alias.asname or alias.name] = full
                elif _private(alias.name) and node.module != module:
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
    own = _defined_attributes(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("getattr", "setattr", "hasattr", "delattr") \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
            name = node.args[1].value
            if isinstance(name, str) and _private(name) and name not in own \
                    and name in OWNERS:
                found.append(f"line {node.lineno}: {node.func.id}(..., {name!r}) (defined in "
                             f"{', '.join(sorted(OWNERS[name]))})")
            continue
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        value = node.value
        if isinstance(value, ast.Name) and value.id in modules:
            target = modules[value.id]
            if target != module and not _is_module(f"{target}.{node.attr}"):
                found.append(f"line {node.lineno}: {value.id}.{node.attr} ({target})")
        elif node.attr not in own and node.attr not in NAMEDTUPLE_API \
                and node.attr in OWNERS:
            found.append(f"line {node.lineno}: {ast.unparse(value)}.{node.attr} (defined in "
                         f"{', '.join(sorted(OWNERS[node.attr]))})")
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_no_private_name_crosses_a_module(path: Path) -> None:
    crossings = _crossings(path, _module_name(path))
    assert not crossings, (f"{_module_name(path)} uses private names of other modules: "
                           f"{crossings} (give the name no leading _ in its module, in a "
                           "private module if users should not import it)")


def test_a_private_name_crossing_a_module_is_caught(tmp_path: Path) -> None:
    """The check itself: each kind of crossing is reported, the module's own uses and
    the public names of private modules are not."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import policyengine.decide._evaluator as evaluator\n"
        "from policyengine.decide import _evaluator\n"
        "from policyengine.decide._evaluator import _PARSED_KEPT, run_rule\n"
        "from policyengine.engine import Engine\n"
        "class Own:\n"
        "    __slots__ = ('_mine',)\n"
        "def f(engine: Engine, own: Own, rows: tuple[int, int]) -> object:\n"
        "    own._mine = rows._fields\n"
        "    return (evaluator._PARSED_KEPT, _evaluator.run_rule, engine._pipeline,\n"
        "            own._mine, run_rule, getattr(engine, '_policy'), getattr(own, '_mine'))\n",
        "utf-8")
    # (where an attribute is defined is left out: other modules may come to define it)
    assert [c.split(" (defined in ")[0] for c in _crossings(probe, "policyengine.probe")] == [
        "line 3: from policyengine.decide._evaluator import _PARSED_KEPT",
        "line 9: evaluator._PARSED_KEPT (policyengine.decide._evaluator)",
        "line 9: engine._pipeline",
        "line 10: getattr(..., '_policy')",
    ]


# -- the outer layer's way below the public API ----------------------------------------
# cli.py and _conformance.py drive the Engine and the public API; below it they use only
# the private modules docs/architecture.md names for each (a package's entry for them:
# its subcommand, its conformance kind's runner). The doc's list and the imports are held
# to each other both ways, so neither can drift from the other.

ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def _named_in_docs(outer: str) -> set[str]:
    """The private modules the architecture's bullet for ``outer`` names."""
    text = ARCHITECTURE.read_text("utf-8")
    start = text.index(f"\n* `{outer}`: ") + 1
    end = len(text)
    for stop in ("\n* ", "\n\n"):
        found = text.find(stop, start)
        if found != -1:
            end = min(end, found)
    names = set()
    for quoted in re.findall(r"`([\w.]+)`", text[start:end]):
        module = f"policyengine.{quoted}"
        if any(_private(part) for part in quoted.split(".")) and _is_module(module):
            names.add(module)
    return names


def _private_modules_imported(path: Path) -> set[str]:
    return {name for name, _ in _imports(path)
            if any(_private(part) for part in name.split(".")[1:])}


@pytest.mark.parametrize("outer", ["cli.py", "_conformance.py"])
def test_the_outer_layer_uses_only_the_private_modules_the_docs_name(outer: str) -> None:
    used = _private_modules_imported(PACKAGE / outer)
    named = _named_in_docs(outer)
    assert used == named, (f"{outer} imports private modules docs/architecture.md does not "
                           f"name: {sorted(used - named)}; the docs name ones it does not "
                           f"import: {sorted(named - used)}")


def test_a_private_import_the_docs_do_not_name_is_caught(tmp_path: Path) -> None:
    """The check itself: a private module is told apart from a private name in a public
    module and from a public module."""
    probe = tmp_path / "probe.py"
    probe.write_text("from policyengine.lang._source import PolicyError\n"
                     "from policyengine.lang import Problem\n"
                     "from policyengine import _json, tokens\n"
                     "import policyengine.audit._cli\n", "utf-8")
    assert _private_modules_imported(probe) == {
        "policyengine.lang._source", "policyengine._json", "policyengine.audit._cli"}
    assert "policyengine.tokens._cli" in _named_in_docs("cli.py")
