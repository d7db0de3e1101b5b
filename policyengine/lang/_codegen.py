"""Condition expressions -> Python source text plus the constants it names.

Literal values never appear in the generated text; they are bound as constants (``_k0``,
``_k1``...), so policy text cannot inject code. The names the text calls (``_lt``, ``_in_lit``,
``_has``...) are the runtime helpers of :mod:`policyengine.decide._runtime`.

A comparison with an integer literal (or ``==`` / ``!=`` with a string literal, or ``in`` a
list of string literals) is written inline behind one ``type(x) is`` test, the helper's
own fast path: ``((True if _v0 > _k1 else False) if type(_v0 := c[_k0]) is int else
_gt(_v0, _k1))``. Every other type still goes through the helper, so the semantics are the
helper's; the common case saves a Python call. The comparison is written as the test of
a conditional expression because CPython 3.11 specialises a comparison (two small
integers, two strings: no call into the types' rich comparison) only when a conditional
jump follows it; a bare ``_v0 > _k1`` stays generic (about 5% of a condition's cost).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from policyengine._glob import Glob
from policyengine.lang import ast

__all__ = ["Branch", "ConditionCodegen", "Recorder"]

#: Runs an atom's evaluation (the thunk) and notes its outcome; returns what it returned.
Recorder = Callable[[Callable[[], Any]], Any]
#: Coverage hook: an atom of a condition -> the recorder of its outcomes.
Branch = Callable[[ast.Expr], Recorder]

_CMP = {"<": "_lt", "<=": "_le", ">": "_gt", ">=": "_ge", "==": "_eq", "!=": "_ne"}


def _fast_type(e: ast.Expr, op: str) -> str | None:
    """``int`` or ``str`` when ``e`` is a literal whose comparison by ``op`` with a value of
    the same type is plain Python comparison (the runtime helpers' own fast path), so the
    generated code may compare inline after one ``type(x) is`` test and call the helper
    only for every other type. Strings only for ``==`` / ``!=`` (they have no order)."""
    if not isinstance(e, ast.Literal):
        return None
    t = type(e.value)
    if t is int:
        return "int"
    if t is str and op in ("==", "!="):
        return "str"
    return None


class _LiteralValue(ast.ExprVisitor[Any]):
    """The value of a list literal's item: a literal's own, money in the file's base
    currency."""

    def __init__(self, to_base: Callable[[ast.MoneyLit], Decimal]) -> None:
        self.to_base = to_base

    def literal(self, e: ast.Literal) -> Any:
        return e.value

    def money(self, e: ast.MoneyLit) -> Any:
        return self.to_base(e)


class ConditionCodegen(ast.ExprVisitor[tuple[str, bool]]):
    """Builds the source of one rule's test and its constants."""

    def __init__(self, money: object, to_base: Callable[[ast.MoneyLit], Decimal],
                 prefix: str = "_k", branch: Branch | None = None) -> None:
        self.consts: dict[str, Any] = {}
        #: Coverage only (``policyengine test --coverage``): called once per condition
        #: atom at compile time; the recorder it returns wraps the atom's evaluation. The
        #: code compiled for decisions never has it.
        self.branch = branch
        self.prefix = prefix
        self.uses_amount = False
        #: Whether the source reads ``principal.*`` (``p``): a test that does not may be
        #: called with any principal (the plan cache passes None, see ``decide.Plan``).
        self.reads_principal = False
        self.locals = 0
        self.file_money = money
        self.to_base = to_base
        #: A list's items as values (made on first use: few conditions have lists).
        self.values: _LiteralValue | None = None

    def local(self) -> str:
        """A fresh local name of the test (``_v0``...), for a value checked then used."""
        self.locals += 1
        return f"_v{self.locals - 1}"

    def const(self, value: Any) -> str:
        name = f"{self.prefix}{len(self.consts)}"
        self.consts[name] = value
        return name

    def boolean(self, e: ast.Expr) -> str:
        code, known_bool = self.expr(e)
        if not known_bool:
            code = f"_b({code})"
        if self.branch is not None and not isinstance(e, (ast.And, ast.Or, ast.Not)):
            # An atom of the condition: its recorder sees each outcome (true, false, or
            # an error, re-raised) of the atom's own evaluation.
            code = f"{self.const(self.branch(e))}(lambda: {code})"
        return code

    def expr(self, e: ast.Expr) -> tuple[str, bool]:
        """Return (python source, statically known to be a bool)."""
        return self.visit(e)

    def literal(self, e: ast.Literal) -> tuple[str, bool]:
        if isinstance(e.value, bool):
            return ("True" if e.value else "False"), True
        return self.const(e.value), False

    def money(self, e: ast.MoneyLit) -> tuple[str, bool]:
        return self.const(self.to_base(e)), False

    def amount(self, e: ast.Amount) -> tuple[str, bool]:
        self.uses_amount = True
        return f"r.amount({self.const(self.file_money)})", False

    def path(self, e: ast.Path) -> tuple[str, bool]:
        if e.root == "context":
            code = "c"
            segs = e.segments
        elif e.root == "grant":
            # The grant lives in the request state (built when a plan needs it, like the
            # amount): ``r.grant`` is the engine's view of the delegation.
            self.uses_amount = True
            code = "r.grant"
            segs = e.segments
        else:
            self.reads_principal = True
            head, segs = e.segments[0], e.segments[1:]
            code = {"id": "p.id", "roles": "p.roles", "attributes": "p.attributes"}[head]
        for seg in segs:
            code += f"[{self.const(seg)}]"
        return code, False

    def list(self, e: ast.ListExpr) -> tuple[str, bool]:
        items = tuple(self._literal_value(i) for i in e.items)
        return self.const(list(items)), False

    def compare(self, e: ast.Compare) -> tuple[str, bool]:
        left, _ = self.visit(e.left)
        right, _ = self.visit(e.right)
        fast = _fast_type(e.right, e.op)
        if fast is not None and _fast_type(e.left, e.op) is None:
            v = self.local()
            return (f"((True if {v} {e.op} {right} else False) if type({v} := {left}) "
                    f"is {fast} else {_CMP[e.op]}({v}, {right}))"), True
        fast = _fast_type(e.left, e.op)
        if fast is not None and _fast_type(e.right, e.op) is None:
            v = self.local()
            return (f"((True if {left} {e.op} {v} else False) if type({v} := {right}) "
                    f"is {fast} else {_CMP[e.op]}({left}, {v}))"), True
        return f"{_CMP[e.op]}({left}, {right})", True

    def in_(self, e: ast.In) -> tuple[str, bool]:
        item, _ = self.visit(e.item)
        if isinstance(e.collection, ast.ListExpr):
            values = tuple(self._literal_value(i) for i in e.collection.items)
            strings = (frozenset(values) if all(type(v) is str for v in values)
                       else None)
            if strings is not None:
                v, names = self.local(), self.const(strings)
                code = (f"({v} in {names} if type({v} := {item}) is str "
                        f"else _in_lit({v}, {names}, {self.const(values)}))")
            else:
                code = f"_in_lit({item}, {self.const(strings)}, {self.const(values)})"
        else:
            coll, _ = self.visit(e.collection)
            code = f"_in_dyn({item}, {coll})"
        return (f"(not {code})" if e.negated else code), True

    def not_(self, e: ast.Not) -> tuple[str, bool]:
        return f"(not {self.boolean(e.expr)})", True

    def and_(self, e: ast.And) -> tuple[str, bool]:
        return "(" + " and ".join(self.boolean(i) for i in e.items) + ")", True

    def or_(self, e: ast.Or) -> tuple[str, bool]:
        return "(" + " or ".join(self.boolean(i) for i in e.items) + ")", True

    def call(self, e: ast.Call) -> tuple[str, bool]:
        if e.name == "has":
            path = e.args[0]
            assert isinstance(path, ast.Path)
            if path.root == "context":
                return f"_has(c, {self.const(path.segments)})", True
            self.reads_principal = True
            return f"_has(p.attributes, {self.const(path.segments[1:])})", True
        if e.name == "matches":
            subject, _ = self.visit(e.args[0])
            glob = e.args[1]
            assert isinstance(glob, ast.Literal) and isinstance(glob.value, str)
            return f"_matches({subject}, {self.const(Glob(glob.value))})", True
        args = ", ".join(self.visit(a)[0] for a in e.args)
        return f"_{e.name}({args})", True

    def _literal_value(self, e: ast.Expr) -> Any:
        # Non-literal list items (evaluated through a tiny closure at request time) would
        # cost more than they are worth; the checker restricts lists to literals, and
        # any other node is a TypeError of the visitor.
        values = self.values
        if values is None:
            values = self.values = _LiteralValue(self.to_base)
        return values.visit(e)

    def conditions(self, conds: Sequence[ast.Condition]) -> str:
        parts = []
        for cond in conds:
            b = self.boolean(cond.expr)
            parts.append(b if cond.kind == "when" else f"(not {b})")
        return " and ".join(parts)
