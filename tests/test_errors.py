"""One error tree: every error derives from PolicyEngineError, reads ``code: message``, and
every code the package can produce is listed exactly once in docs/errors.md.

Codes are collected from the source, not from a list kept by hand: a new code that is not
documented (or a documented code nothing produces any more) fails here.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest

import policyengine
from policyengine import (
    ApprovalError,
    Engine,
    InvalidPermission,
    Money,
    MoneyError,
    PolicyEngineError,
    PolicyError,
    RateError,
    StaticRates,
    TokenError,
    convert,
    tokens,
)
from policyengine.budgets import BudgetError, BudgetSpec, Ledger
from policyengine.errors import PolicyEngineError as RootFromErrorsModule
from policyengine.tools import HostPattern, JsonPath, RedactionError, ToolPatternError

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "policyengine"
ERRORS_DOC = REPO / "docs" / "errors.md"
# Parameters that carry a code: the decision's or error's, or a diagnostic's.
CODE_PARAMS = ("code", "diag", "diagnostic")
CODE = re.compile(r"^(?:[EW]\d{3}|[a-z][a-z0-9]*(?:_[a-z0-9]+)*)$")
# Functions whose parameter named ``code`` is a currency code, not an error code.
CURRENCY_CODE_FUNCTIONS = frozenset({
    "_currency_code", "_currency_known", "_lookup", "_trusted", "_unknown", "decimal_places",
    "trusted_money",
    "get_currency", "is_currency", "spec_of", "AmountSpec", "Currency",
})


# Codes the collector cannot follow because they travel as data; each must still appear as
# a literal in the named file.
THROUGH_DATA = {
    "ambiguous_body": "policyengine/tools/_egress.py",  # _parse_body returns (code, message)
    "io_error": "policyengine/_visible.py",  # error_of returns (code, message)
    # The pipeline's steps return facts as tuples (status, code, reason, ...); the last
    # step builds the Decision from them.
    "permitted": "policyengine/decide/_evaluator.py",
    "no_permit": "policyengine/decide/_evaluator.py",
    "approval_required": "policyengine/decide/_evaluator.py",
    "subject_mismatch": "policyengine/decide/_pipeline.py",
    "not_delegated": "policyengine/decide/_pipeline.py",
    "delegation_amount_exceeded": "policyengine/decide/_pipeline.py",
    "redaction_failed": "policyengine/decide/_pipeline.py",
}


def _modules() -> Iterator[object]:
    for info in pkgutil.walk_packages(policyengine.__path__, "policyengine."):
        if not info.name.endswith("__main__"):  # importing it runs the command line
            yield importlib.import_module(info.name)


# Exceptions that never reach users: the service turns a refusal (HTTP status, code,
# message) into its error reply inside server/. A public name only because the service's
# wire modules share it (no private name crosses a module, tests/test_layers.py). A store
# URL the budget, approval and revocation stores cannot read is raised again under each
# store's own code (invalid_store_url, invalid_approval_store, invalid_revocations); a file
# that cannot be read, under the reader's (invalid_rate_table, invalid_key).
INTERNAL_EXCEPTIONS = frozenset({"policyengine.server._app.RefusalError",
                                 "policyengine._storeurl.StoreUrlError",
                                 "policyengine._files.UnreadableFileError"})


def _package_exceptions() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for module in _modules():
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__ == module.__name__  # type: ignore[attr-defined]
                    and not name.startswith("_")
                    and f"{obj.__module__}.{name}" not in INTERNAL_EXCEPTIONS):
                found[f"{obj.__module__}.{name}"] = obj
    return [found[k] for k in sorted(found)]


def test_the_root_is_exported_from_the_package() -> None:
    assert PolicyEngineError is RootFromErrorsModule
    assert "PolicyEngineError" in policyengine.__all__


@pytest.mark.parametrize("exc_type", _package_exceptions(), ids=lambda t: t.__qualname__)
def test_every_public_exception_derives_from_the_root(exc_type: type[BaseException]) -> None:
    assert issubclass(exc_type, PolicyEngineError)


def test_built_in_bases_callers_rely_on_are_kept() -> None:
    for exc_type in (MoneyError, RateError, TokenError, InvalidPermission, RedactionError,
                     ToolPatternError):
        assert issubclass(exc_type, ValueError), exc_type
    assert issubclass(ApprovalError, LookupError)
    from policyengine.budgets import BudgetInputError
    assert issubclass(BudgetInputError, ValueError) and issubclass(BudgetInputError, BudgetError)


def _raise_policy_error() -> None:
    Engine.from_source("permit p: a:b when context.x > ", name="bad.policy")


def _raise_money_error() -> None:
    Money.parse("1.001", "USD")


def _raise_rate_error() -> None:
    convert(Money.parse("1", "EUR"), "USD", StaticRates("USD", {}))


def _raise_token_error() -> None:
    tokens.verify(tokens.KeySet.generate(), "not-a-token")


def _raise_budget_error() -> None:
    ledger = Ledger([BudgetSpec("calls", ("a:*",), Decimal(1), "calls", "day")])
    ledger.record("bot", "a:b", 2, "calls")


def _raise_approval_error() -> None:
    from policyengine import MemoryApprovalStore
    MemoryApprovalStore().approve("apr_unknown")


def _raise_invalid_permission() -> None:
    from policyengine.permissions import validate_permission
    validate_permission("no colon")


def _raise_redaction_error() -> None:
    JsonPath.compile("$[")


def _raise_tool_pattern_error() -> None:
    HostPattern.compile("*.com")


def _raise_not_authorized() -> None:
    Engine.from_source("").ensure_authorized("bot", "a:b")


RAISERS: dict[str, Callable[[], None]] = {
    "PolicyError": _raise_policy_error,
    "MoneyError": _raise_money_error,
    "RateError": _raise_rate_error,
    "TokenError": _raise_token_error,
    "BudgetError": _raise_budget_error,
    "ApprovalError": _raise_approval_error,
    "InvalidPermission": _raise_invalid_permission,
    "RedactionError": _raise_redaction_error,
    "ToolPatternError": _raise_tool_pattern_error,
    "NotAuthorized": _raise_not_authorized,
}


@pytest.mark.parametrize("name", sorted(RAISERS))
def test_str_reads_code_colon_message(name: str) -> None:
    with pytest.raises(PolicyEngineError) as info:
        RAISERS[name]()
    err = info.value
    assert name in [c.__name__ for c in type(err).__mro__]
    assert CODE.match(err.code), err.code
    assert err.message
    assert str(err) == f"{err.code}: {err.message}"


def test_policy_error_message_is_the_full_report() -> None:
    with pytest.raises(PolicyError) as info:
        _raise_policy_error()
    assert info.value.message == info.value.render()
    assert str(info.value).startswith(f"{info.value.code}: bad.policy:1:")


# ---- every code, collected from the source ----------------------------------------------

def _literals(node: ast.AST | None) -> Iterator[str]:
    """String literals a code expression can evaluate to (through ``a if c else b``)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, ast.IfExp):
        yield from _literals(node.body)
        yield from _literals(node.orelse)


def _code_positions(trees: dict[Path, ast.Module]) -> dict[str, set[int]]:
    """Callables (functions, methods, classes) with a parameter named ``code``: position."""
    takes: dict[str, set[int]] = {}
    classes = {obj.__name__: obj for module in _modules() for obj in vars(module).values()
               if inspect.isclass(obj) and obj.__module__.startswith("policyengine")}
    for name, cls in classes.items():  # constructors, inherited ones included
        if name in CURRENCY_CODE_FUNCTIONS:
            continue
        try:
            params = list(inspect.signature(cls).parameters)
        except (TypeError, ValueError):  # pragma: no cover - builtin signatures
            continue
        for param in CODE_PARAMS:
            if param in params:
                takes.setdefault(name, set()).add(params.index(param))
    for tree in trees.values():
        for fn in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
            names = [a.arg for a in fn.args.posonlyargs + fn.args.args]
            if names and names[0] in ("self", "cls"):
                names = names[1:]
            for param in CODE_PARAMS:
                if param in names and fn.name not in CURRENCY_CODE_FUNCTIONS:
                    takes.setdefault(fn.name, set()).add(names.index(param))
    return takes


def collected_codes() -> dict[str, set[str]]:
    """Every code string the package can produce, with where it appears."""
    trees = {p: ast.parse(p.read_text("utf-8")) for p in sorted(PACKAGE.rglob("*.py"))}
    takes = _code_positions(trees)
    found: dict[str, set[str]] = {}

    def add(values: Iterator[str], where: str) -> None:
        for value in values:
            found.setdefault(value, set()).add(where)

    for path, tree in trees.items():
        rel = path.relative_to(REPO).as_posix()
        for node in ast.walk(tree):
            where = f"{rel}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and re.fullmatch(r"[EW]\d{3}", node.value):
                add(iter([node.value]), where)
            elif isinstance(node, ast.Call):
                func = node.func
                name = (func.id if isinstance(func, ast.Name)
                        else func.attr if isinstance(func, ast.Attribute) else "")
                if name == "__init__" and isinstance(func, ast.Attribute) \
                        and isinstance(func.value, ast.Call):  # super().__init__(code, ...)
                    positions = {0}
                else:
                    positions = takes.get(name, set())
                for pos in positions:
                    if pos < len(node.args):
                        add(_literals(node.args[pos]), where)
                for kw in node.keywords:
                    if kw.arg in CODE_PARAMS and name not in CURRENCY_CODE_FUNCTIONS:
                        add(_literals(kw.value), where)
            elif isinstance(node, ast.FunctionDef) and node.name not in CURRENCY_CODE_FUNCTIONS:
                args = node.args.args
                for arg, default in zip(args[len(args) - len(node.args.defaults):],
                                        node.args.defaults, strict=True):
                    if arg.arg in CODE_PARAMS:
                        add(_literals(default), where)
            elif isinstance(node, ast.Assign) and path.name != "_codegen.py":
                # (the code generator's ``code`` is generated Python text, not an error code)
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id == "code":
                        add(_literals(node.value), where)
                    elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                        for t, v in zip(target.elts, node.value.elts, strict=False):
                            if isinstance(t, ast.Name) and t.id == "code":
                                add(_literals(v), where)
            elif isinstance(node, ast.Compare) and path.name != "_codegen.py" \
                    and isinstance(node.left, ast.Name) \
                    and node.left.id == "code":
                for comparator in node.comparators:
                    add(_literals(comparator), where)
    for code, file in THROUGH_DATA.items():
        if f'"{code}"' in (REPO / file).read_text("utf-8"):
            found.setdefault(code, set()).add(file)
    return {code: places for code, places in found.items() if CODE.match(code)}


def _cell_codes(cell: str) -> list[str]:
    """The codes a first cell lists: one (``E001``, `` `expired` ``) or several
    (`` `a`, `b` ``); none for a row describing codes listed elsewhere
    (``*evaluation code*``)."""
    m = re.fullmatch(r"`?([A-Za-z0-9_]+)`?", cell)
    if m:
        return [m.group(1)]
    codes = re.findall(r"`([A-Za-z0-9_]+)`", cell)
    rest = re.sub(r"`[A-Za-z0-9_]+`", "", cell)
    if codes and re.fullmatch(r"[\s,]*(?:(?:and|or)[\s,]*)?", rest):
        return codes
    assert not codes, f"docs/errors.md: a first cell this check cannot read: {cell!r}"
    return []


def documented_codes() -> list[str]:
    """The codes in the first cell of every row of the tables of docs/errors.md headed
    ``| code |``, a cell listing several giving each."""
    out = []
    in_code_table = False
    for line in ERRORS_DOC.read_text("utf-8").splitlines():
        if not line.startswith("|"):
            in_code_table = False
            continue
        first = line.split("|")[1].strip()
        if first == "code":
            in_code_table = True
        elif in_code_table and not set(first) <= set("- "):
            out.extend(_cell_codes(first))
    return out


def test_documented_codes_reads_every_kind_of_first_cell() -> None:
    assert _cell_codes("E001") == ["E001"]
    assert _cell_codes("`expired`") == ["expired"]
    assert _cell_codes("`a_b`, `c`, `d`") == ["a_b", "c", "d"]
    assert _cell_codes("`a`, `b` and `c`") == ["a", "b", "c"]
    assert _cell_codes("*evaluation code*") == []


def test_collector_finds_codes_of_every_kind() -> None:
    """The collector itself: codes raised directly, through helpers, by defaults, in
    assignments and comparisons, and policy problem codes."""
    codes = collected_codes()
    for code in ("E001", "W201", "too_many_decimals", "no_rate", "expired",
                 "overdraft_limit_exceeded", "idempotency_mismatch", "invalid_pattern",
                 "forbidden", "limit_exceeded", "path_traversal", "unknown_approval"):
        assert code in codes, code
    assert "USD" not in codes and "usd" not in codes


def test_docs_list_every_code_exactly_once() -> None:
    listed = documented_codes()
    twice = sorted(code for code, n in Counter(listed).items() if n > 1)
    assert not twice, f"listed more than once in docs/errors.md: {twice}"


def test_docs_list_every_code_the_package_produces() -> None:
    codes = collected_codes()
    missing = sorted(set(codes) - set(documented_codes()))
    assert not missing, "not in docs/errors.md: " + ", ".join(
        f"{c} ({sorted(codes[c])[0]})" for c in missing)


def test_docs_list_nothing_else() -> None:
    extra = sorted(set(documented_codes()) - set(collected_codes()))
    assert not extra, f"docs/errors.md lists codes nothing produces: {extra}"
