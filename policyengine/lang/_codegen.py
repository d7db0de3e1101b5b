"""Condition expressions -> Python source text plus the constants it names.

Literal values never appear in the generated text; they are bound as constants (``_k0``,
``_k1``...), so policy text cannot inject code. The names the text calls (``_lt``, ``_in_lit``,
``_has``...) are the runtime helpers of :mod:`policyengine.decide._runtime`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from policyengine._glob import Glob
from policyengine.lang import ast

__all__ = ["ConditionCodegen"]

_CMP = {"<": "_lt", "<=": "_le", ">": "_gt", ">=": "_ge", "==": "_eq", "!=": "_ne"}


class ConditionCodegen:
    """Builds the source of one rule's test and its constants."""

    def __init__(self, money: object, to_base: Callable[[ast.MoneyLit], Decimal],
                 prefix: str = "_k") -> None:
        self.consts: dict[str, Any] = {}
        self.prefix = prefix
        self.uses_amount = False
        self.money = money
        self.to_base = to_base

    def const(self, value: Any) -> str:
        name = f"{self.prefix}{len(self.consts)}"
        self.consts[name] = value
        return name

    def boolean(self, e: ast.Expr) -> str:
        code, known_bool = self.expr(e)
        return code if known_bool else f"_b({code})"

    def expr(self, e: ast.Expr) -> tuple[str, bool]:
        """Return (python source, statically known to be a bool)."""
        if isinstance(e, ast.Literal):
            if isinstance(e.value, bool):
                return ("True" if e.value else "False"), True
            return self.const(e.value), False
        if isinstance(e, ast.MoneyLit):
            return self.const(self.to_base(e)), False
        if isinstance(e, ast.Amount):
            self.uses_amount = True
            return f"r.amount({self.const(self.money)})", False
        if isinstance(e, ast.Path):
            if e.root == "context":
                code = "c"
                segs = e.segments
            else:
                head, segs = e.segments[0], e.segments[1:]
                code = {"id": "p.id", "roles": "p.roles", "attributes": "p.attributes"}[head]
            for seg in segs:
                code += f"[{self.const(seg)}]"
            return code, False
        if isinstance(e, ast.ListExpr):
            items = tuple(self._literal_value(i) for i in e.items)
            return self.const(list(items)), False
        if isinstance(e, ast.Compare):
            left, _ = self.expr(e.left)
            right, _ = self.expr(e.right)
            return f"{_CMP[e.op]}({left}, {right})", True
        if isinstance(e, ast.In):
            item, _ = self.expr(e.item)
            if isinstance(e.collection, ast.ListExpr):
                values = tuple(self._literal_value(i) for i in e.collection.items)
                strings = (frozenset(values) if all(type(v) is str for v in values)
                           else None)
                code = f"_in_lit({item}, {self.const(strings)}, {self.const(values)})"
            else:
                coll, _ = self.expr(e.collection)
                code = f"_in_dyn({item}, {coll})"
            return (f"(not {code})" if e.negated else code), True
        if isinstance(e, ast.Not):
            return f"(not {self.boolean(e.expr)})", True
        if isinstance(e, ast.And):
            return "(" + " and ".join(self.boolean(i) for i in e.items) + ")", True
        if isinstance(e, ast.Or):
            return "(" + " or ".join(self.boolean(i) for i in e.items) + ")", True
        if isinstance(e, ast.Call):
            if e.name == "has":
                path = e.args[0]
                assert isinstance(path, ast.Path)
                if path.root == "context":
                    return f"_has(c, {self.const(path.segments)})", True
                return f"_has(p.attributes, {self.const(path.segments[1:])})", True
            if e.name == "matches":
                subject, _ = self.expr(e.args[0])
                glob = e.args[1]
                assert isinstance(glob, ast.Literal) and isinstance(glob.value, str)
                return f"_matches({subject}, {self.const(Glob(glob.value))})", True
            args = ", ".join(self.expr(a)[0] for a in e.args)
            return f"_{e.name}({args})", True
        raise AssertionError(f"unknown expression {e!r}")  # pragma: no cover

    def _literal_value(self, e: ast.Expr) -> Any:
        if isinstance(e, ast.Literal):
            return e.value
        if isinstance(e, ast.MoneyLit):
            return self.to_base(e)
        # Non-literal list items: evaluate through a tiny closure at request time would
        # cost more than it is worth; the checker restricts lists to literals.
        raise AssertionError("lists hold literals")  # pragma: no cover

    def conditions(self, conds: Sequence[ast.Condition]) -> str:
        parts = []
        for cond in conds:
            b = self.boolean(cond.expr)
            parts.append(b if cond.kind == "when" else f"(not {b})")
        return " and ".join(parts)
