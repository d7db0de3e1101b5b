"""Run-time validation of a request's context against the ``schema`` declarations that
cover its permission (docs/language.md, "Context schemas").

Each schema is compiled once, with the policy, into nested closures: a request's context
is then walked only as deep as the schema declares, with ``type()`` tests and set
lookups (no parsing, no regex compilation). A plan holds the one validator of its
permission (or None: an undeclared context costs one attribute test). The first problem
found is the ``invalid_request`` message, naming the path (``context.country: ...``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from policyengine.lang import ast

__all__ = ["ContextCheck", "compile_schema", "combine"]

#: A compiled check: None when the context fits, else what is wrong (path first).
ContextCheck = Callable[[dict[str, Any]], "str | None"]
# A value's check: None, or (the path below the value, e.g. ".id" or "[2]", the problem).
_Check = Callable[[Any], "tuple[str, str] | None"]

_AMOUNT = re.compile(r"[0-9]+(\.[0-9]+)?\Z")
_MISSING = object()


def _kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _string(v: Any) -> tuple[str, str] | None:
    return None if isinstance(v, str) else ("", f"expected a string, got {_kind(v)}")


def _int(v: Any) -> tuple[str, str] | None:
    if isinstance(v, int) and not isinstance(v, bool):
        return None
    if type(v) is Decimal and v.is_finite() and v == v.to_integral_value():
        return None  # an exact JSON reader gives 3 as int, but 3.0 may arrive as Decimal
    return "", f"expected an int, got {_kind(v)}"


def _decimal(v: Any) -> tuple[str, str] | None:
    if isinstance(v, bool):
        return "", "expected a number, got bool"
    if isinstance(v, int):
        return None
    if isinstance(v, Decimal) and v.is_finite():
        return None
    if isinstance(v, float) and math.isfinite(v):
        return None
    return "", f"expected a number, got {_kind(v)}"


def _money(v: Any) -> tuple[str, str] | None:
    """An amount as ``context.amount`` takes it: a decimal string (``"12.50"``), an
    integer or an exact decimal, never negative and never a binary float."""
    if isinstance(v, str):
        if _AMOUNT.match(v) is not None:
            return None
        return "", f"expected an amount like \"12.50\", got {v[:40]!r}"
    if isinstance(v, int) and not isinstance(v, bool):
        return None if v >= 0 else ("", "an amount is never negative")
    if isinstance(v, Decimal) and v.is_finite():
        return None if v >= 0 else ("", "an amount is never negative")
    return "", f"expected an amount (a decimal string or an integer), got {_kind(v)}"


def _bool(v: Any) -> tuple[str, str] | None:
    return None if type(v) is bool else ("", f"expected true or false, got {_kind(v)}")


_SCALARS: dict[str, _Check] = {"string": _string, "int": _int, "decimal": _decimal,
                               "money": _money, "bool": _bool}
#: The exact type that fits a scalar without a call (the common case, tested inline).
_FAST: dict[str, type] = {"string": str, "int": int, "decimal": int, "bool": bool}


def _enum(values: tuple[str, ...]) -> _Check:
    allowed = frozenset(values)
    shown = ", ".join(f'"{v}"' for v in values)

    def check(v: Any) -> tuple[str, str] | None:
        if isinstance(v, str) and str.__str__(v) in allowed:
            return None
        got = repr(v[:40]) if isinstance(v, str) else _kind(v)
        return "", f"expected one of {shown}, got {got}"
    return check


def _list(item: _Check) -> _Check:
    def check(v: Any) -> tuple[str, str] | None:
        if not isinstance(v, list):
            return "", f"expected a list, got {_kind(v)}"
        for i, x in enumerate(list.__iter__(v)):
            problem = item(x)
            if problem is not None:
                return f"[{i}]{problem[0]}", problem[1]
        return None
    return check


def _record(fields: Sequence[ast.SchemaField]) -> _Check:
    parts = tuple((f.name, f.optional, _fast(f.type), _allowed(f.type), _type(f.type))
                  for f in fields)

    def check(v: Any) -> tuple[str, str] | None:
        if not isinstance(v, dict):
            return "", f"expected an object, got {_kind(v)}"
        get = dict.get  # a dict subclass's own get() is not called
        for name, optional, fast, allowed, field_check in parts:
            value = get(v, name, _MISSING)
            if type(value) is fast:
                continue
            if allowed is not None and type(value) is str and value in allowed:
                continue  # an enum's value, without a call
            if value is _MISSING:
                if optional:
                    continue
                return f".{name}", "missing (the schema requires it)"
            problem = field_check(value)
            if problem is not None:
                return f".{name}{problem[0]}", problem[1]
        return None
    return check


def _allowed(t: ast.SchemaType) -> frozenset[str] | None:
    return frozenset(t.values) if t.values and t.item is None else None


def _fast(t: ast.SchemaType) -> type | None:
    return _FAST.get(t.kind) if t.item is None and not t.values else None


def _type(t: ast.SchemaType) -> _Check:
    if t.item is not None:
        return _list(_type(t.item))
    if t.values:
        return _enum(t.values)
    if t.kind == "{}":
        return _record(t.fields)
    return _SCALARS[t.kind]  # the checker refuses any other name (E150)


def compile_schema(decl: ast.SchemaDecl) -> ContextCheck:
    """The check of one ``schema`` declaration."""
    record = _record(decl.fields)

    def check(context: dict[str, Any]) -> str | None:
        try:
            problem = record(context)
        except Exception as exc:  # a hostile value (a subclass that raises)
            return f"context: cannot be validated ({type(exc).__name__})"
        return None if problem is None else f"context{problem[0]}: {problem[1]}"
    return check


def combine(checks: Sequence[ContextCheck]) -> ContextCheck | None:
    """One check for a permission several schemas cover (each must pass)."""
    if not checks:
        return None
    if len(checks) == 1:
        return checks[0]
    every = tuple(checks)

    def check(context: dict[str, Any]) -> str | None:
        for c in every:
            problem = c(context)
            if problem is not None:
                return problem
        return None
    return check
