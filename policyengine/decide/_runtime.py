"""What generated condition code runs against: the small typed helpers it calls, the
principal it reads, and the one ``compile()`` that turns condition sources into functions.

The code generator (:mod:`policyengine.lang._codegen`) writes calls to the names in
:data:`RUNTIME`; this module is the other half of that contract.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from policyengine._glob import Glob
from policyengine.errors import PolicyEngineError

__all__ = ["RUNTIME", "EvalError", "Principal", "Test", "build_many"]

Test = Callable[[dict[str, Any], "Principal", Any], bool]


class EvalError(PolicyEngineError):
    """A condition could not be evaluated for this request (fail closed applies).

    Never leaves the engine: it becomes a diagnostic of the decision."""

    def __init__(self, code: str, message: str, detail: str | None = None) -> None:
        super().__init__(code, message)
        #: The more specific code behind ``code`` (``negative_amount`` behind
        #: ``invalid_amount``), or None.
        self.detail = detail


class Principal:
    """Who is asking, as the policy knows them."""

    __slots__ = ("attributes", "id", "roles")

    def __init__(self, id: str, roles: frozenset[str], attributes: dict[str, Any]) -> None:
        self.id = id
        self.roles = roles
        self.attributes = attributes


# ---- runtime helpers the generated code calls ---------------------------------------------

_NUMERIC = (int, float, Decimal)


def _num(v: Any, op: str) -> Any:
    t = type(v)
    if t is int:
        return v
    if t is Decimal:
        if not v.is_finite():
            raise EvalError("type_error", f"'{op}' needs a finite number, got {v}")
        return v
    if t is float and math.isfinite(v):
        # 0.3 from JSON is the binary float 0.30000000000000004...; compare the decimal
        # the sender wrote, so that `risk >= 0.3` holds for 0.3.
        return Decimal(repr(v))
    raise EvalError("type_error", f"'{op}' needs a number, got {t.__name__}")


def _lt(a: Any, b: Any) -> bool:
    return bool(_num(a, "<") < _num(b, "<"))


def _le(a: Any, b: Any) -> bool:
    return bool(_num(a, "<=") <= _num(b, "<="))


def _gt(a: Any, b: Any) -> bool:
    return bool(_num(a, ">") > _num(b, ">"))


def _ge(a: Any, b: Any) -> bool:
    return bool(_num(a, ">=") >= _num(b, ">="))


def _eq(a: Any, b: Any) -> bool:
    """Equality without Python's surprises: ``True != 1``, ``1 == 1.0 == Decimal(1)``."""
    ta, tb = type(a), type(b)
    if ta is tb:
        if ta is float or ta is Decimal:
            # NaN equals nothing and is unequal to everything: a forbid on '==' or a
            # permit on '!=' would silently flip. Non-finite numbers are errors instead.
            return bool(_num(a, "==") == _num(b, "=="))
        return bool(a == b)
    if ta is not bool and tb is not bool and ta in _NUMERIC and tb in _NUMERIC:
        return bool(_num(a, "==") == _num(b, "=="))
    return False


def _ne(a: Any, b: Any) -> bool:
    return not _eq(a, b)


def _b(v: Any) -> bool:
    if v is True or v is False:
        return v  # type: ignore[no-any-return]
    raise EvalError("type_error", f"expected true or false, got {type(v).__name__}")


_COLLECTIONS = (list, tuple, set, frozenset)


def _in_lit(x: Any, strings: frozenset[str] | None, items: tuple[Any, ...]) -> bool:
    if strings is not None and type(x) is str:
        return x in strings
    return any(_eq(x, i) for i in items)


def _in_dyn(x: Any, coll: Any) -> bool:
    if type(coll) not in _COLLECTIONS:
        raise EvalError("type_error", f"'in' needs a list, got {type(coll).__name__}")
    if type(x) is str and type(coll) in (set, frozenset):
        return x in coll
    return any(_eq(x, i) for i in coll)


def _str(v: Any, fn: str) -> str:
    if type(v) is str:
        return v
    raise EvalError("type_error", f"{fn}() needs a string, got {type(v).__name__}")


def _startswith(s: Any, p: Any) -> bool:
    return _str(s, "startswith").startswith(_str(p, "startswith"))


def _endswith(s: Any, p: Any) -> bool:
    return _str(s, "endswith").endswith(_str(p, "endswith"))


def _contains(coll: Any, x: Any) -> bool:
    if type(coll) is str:
        return _str(x, "contains") in coll
    return _in_dyn(x, coll)


def _has(value: Any, keys: tuple[str, ...]) -> bool:
    """True when every key of the path is present (in nested objects); never an error."""
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return False
        value = value[key]
    return True


def _matches(s: Any, glob: Glob) -> bool:
    return glob.match(_str(s, "matches"))


RUNTIME: dict[str, Any] = {
    "_lt": _lt, "_le": _le, "_gt": _gt, "_ge": _ge, "_eq": _eq, "_ne": _ne, "_b": _b,
    "_in_lit": _in_lit, "_in_dyn": _in_dyn, "_startswith": _startswith,
    "_endswith": _endswith, "_contains": _contains, "_matches": _matches, "_has": _has,
}

def build_many(sources: Sequence[str], consts: dict[str, Any]) -> tuple[Test, ...]:
    namespace: dict[str, Any] = dict(RUNTIME)
    namespace.update(consts)
    body = ",\n".join(f"lambda c, p, r: {src}" for src in sources)
    code = compile(f"({body},)", "<policy conditions>", "eval")
    fns: tuple[Test, ...] = eval(code, namespace)  # generated from a checked AST only
    return fns
