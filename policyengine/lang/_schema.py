"""Context schemas (``schema PATTERNS { ... }``): their declarations checked, and every
``context.*`` path of the rules they cover typed against them.

A rule is typed when each of its permission patterns is covered (``subsumes``) by the
patterns of some schema; its conditions are then read against those schemas: a path that
is not declared (``context.contry``) is E151 with a did-you-mean hint, an operator the
declared type cannot take (``context.country < 5``, a string never in an enum) is E152.
Rules no schema covers are checked as before (a context path is "any"). Run-time
validation is the decision stage's (:mod:`policyengine.decide._contexts`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from policyengine.lang import ast
from policyengine.permissions import is_valid_pattern, pattern_subsumes

__all__ = ["SCALAR_TYPES", "check_schemas"]

#: Declared type names that take no argument.
SCALAR_TYPES = ("string", "int", "decimal", "money", "bool")
_ALL_TYPES = (*SCALAR_TYPES, "list", "enum")

Report = Callable[[str, str, ast.Span, "str | None"], None]


def _hint(word: str, options: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


# ---- declarations ------------------------------------------------------------------------

def _check_type(t: ast.SchemaType, where: str, error: Report) -> None:
    if t.kind == "{}":
        _check_fields(t.fields, where, error)
        return
    if t.item is not None:
        if t.kind != "list":
            error("E150", f"'{t.kind}[...]' is not a type", t.span,
                  "a list is written list[TYPE], like list[string]")
        _check_type(t.item, where, error)
        return
    if t.values:
        if t.kind != "enum":
            error("E150", f"'{t.kind}(...)' is not a type", t.span,
                  'an enumeration is written enum("a", "b")')
        seen: set[str] = set()
        for v in t.values:
            if v in seen:
                error("E150", f"enum value {v!r} is listed twice", t.span, None)
            seen.add(v)
        return
    if t.kind == "list":
        error("E150", "a list needs the type of its items", t.span, "write list[string]")
    elif t.kind == "enum":
        error("E150", "an enum needs its values", t.span, 'write enum("a", "b")')
    elif t.kind not in SCALAR_TYPES:
        error("E150", f"unknown type '{t.kind}' for {where}", t.span,
              _hint(t.kind, _ALL_TYPES) or "types: " + ", ".join(SCALAR_TYPES)
              + ', list[TYPE], enum("a", ...), { field: TYPE ... }')


def _check_fields(fields: Sequence[ast.SchemaField], where: str, error: Report) -> None:
    seen: set[str] = set()
    for f in fields:
        if f.name in seen:
            error("E150", f"field '{f.name}' is declared twice in {where}", f.span, None)
        seen.add(f.name)
        _check_type(f.type, f"{where}.{f.name}", error)


# ---- types of expressions against a schema -------------------------------------------------

@dataclass(frozen=True)
class _Ty:
    """What an expression is, when a schema or a literal says: ``base`` is ``string``,
    ``number``, ``bool``, ``list``, ``record`` or ``money`` (a declared money field);
    ``decl`` the declared type (None for a literal); ``what`` the path or literal text;
    ``value`` a literal's value."""

    base: str
    decl: ast.SchemaType | None = None
    what: str = ""
    value: object = None
    span: ast.Span = ast.NOSPAN


_BASE = {"string": "string", "int": "number", "decimal": "number", "money": "money",
         "bool": "bool"}


def _base(t: ast.SchemaType) -> str | None:
    if t.kind == "{}":
        return "record"
    if t.item is not None:
        return "list"
    if t.values:
        return "string"
    return _BASE.get(t.kind)  # None: an unknown type (E150 says so)


def _describe(t: ast.SchemaType) -> str:
    if t.item is not None:
        return f"list[{_describe(t.item)}]"
    if t.values:
        return "enum(" + ", ".join(f'"{v}"' for v in t.values) + ")"
    if t.kind == "{}":
        return "record"
    return t.kind


def _literal_base(v: object) -> str:
    if isinstance(v, bool):
        return "bool"
    return "string" if isinstance(v, str) else "number"


class _Typer(ast.ExprVisitor["_Ty | None"]):
    """Types a rule's conditions against the schemas covering it; reports E151 / E152.
    Reports only what a schema tells: every other type error is the checker's (E108)."""

    def __init__(self, schemas: Sequence[ast.SchemaDecl], error: Report) -> None:
        self.schemas = schemas
        self.error = error

    # -- leaves
    def literal(self, e: ast.Literal) -> _Ty | None:
        return _Ty(_literal_base(e.value), None, repr(e.value) if not isinstance(
            e.value, str) else f'"{e.value}"', e.value, e.span)

    def money(self, e: ast.MoneyLit) -> _Ty | None:
        return None

    def amount(self, e: ast.Amount) -> _Ty | None:
        return None

    def list(self, e: ast.ListExpr) -> _Ty | None:
        return _Ty("list")

    def path(self, e: ast.Path) -> _Ty | None:
        if e.root != "context" or not e.segments:
            return None
        # Declared when some covering schema declares it (a request they all cover
        # carries the fields of each); else the first schema's complaint is reported.
        complaint: tuple[str, str, str | None] | None = None
        for schema in self.schemas:
            found = self._resolve(e, schema)
            if isinstance(found, _Ty) or found is None:
                return found
            complaint = complaint or found
        if complaint is not None:
            self.error(complaint[0], complaint[1], e.span, complaint[2])
        return None

    def _resolve(self, e: ast.Path, schema: ast.SchemaDecl
                 ) -> _Ty | tuple[str, str, str | None] | None:
        fields = schema.fields
        decl: ast.SchemaType | None = None
        text = "context"
        for seg in e.segments:
            if decl is not None and _base(decl) != "record":
                return ("E152", f"{text} is declared {_describe(decl)}; it has no field "
                        f"'{seg}'", f"declared in the schema of {', '.join(schema.patterns)}")
            field = next((f for f in fields if f.name == seg), None)
            if field is None:
                names = [f.name for f in fields]
                return ("E151", f"{text}.{seg} is not in the context declared for "
                        f"{', '.join(schema.patterns)}",
                        _hint(seg, names) or ("declared: " + ", ".join(names) if names
                                              else "the record declares no field"))
            text = f"{text}.{seg}"
            decl = field.type
            fields = decl.fields
        if decl is None:  # pragma: no cover - a path has segments
            return None
        base = _base(decl)
        return _Ty(base, decl, text, span=e.span) if base is not None else None

    # -- operators
    def compare(self, e: ast.Compare) -> _Ty | None:
        left, right = self.of(e.left), self.of(e.right)
        if e.op in ("<", "<=", ">", ">="):
            for side, ty in ((e.left, left), (e.right, right)):
                if ty is None or ty.decl is None:
                    continue
                if ty.base == "money":
                    self.error("E152", f"'{e.op}' on {ty.what}, declared money: an amount "
                               "arrives as text (\"12.50\") and does not order", side.span,
                               "declare it decimal, or compare the request's amount with "
                               "'amount' (converted to the file's currency)")
                elif ty.base != "number":
                    self.error("E152", f"'{e.op}' compares numbers; {ty.what} is declared "
                               f"{_describe(ty.decl)}", side.span, None)
            return _Ty("bool")
        if left is not None and right is not None:
            self._same(e, left, right)
        return _Ty("bool")

    def _same(self, e: ast.Expr, a: _Ty, b: _Ty) -> None:
        """``a`` and ``b`` are compared with == or != (one of them declared)."""
        declared, other = (a, b) if a.decl is not None else (b, a)
        if declared.decl is None:
            return
        bases = {declared.base, other.base}
        if len(bases) > 1 and not (bases <= {"money", "string"} or bases <= {"money", "number"}):
            self.error("E152", f"{declared.what} is declared {_describe(declared.decl)}; "
                       f"comparing it with a {other.base} is an evaluation error", e.span,
                       None)
            return
        self._enum_value(declared, other)

    def _enum_value(self, declared: _Ty, other: _Ty) -> None:
        decl = declared.decl
        if decl is None or not decl.values or other.decl is not None:
            return
        if isinstance(other.value, str) and other.value not in decl.values:
            self.error("E152", f'"{other.value}" is not a value of {declared.what}, declared '
                       f"{_describe(decl)}", other.span,
                       _hint(other.value, decl.values) or "the values: "
                       + ", ".join(f'"{v}"' for v in decl.values))

    def in_(self, e: ast.In) -> _Ty | None:
        item = self.of(e.item)
        coll = self.of(e.collection)
        if coll is not None and coll.decl is not None:
            if coll.base != "list":
                self.error("E152", f"'in' looks into a list; {coll.what} is declared "
                           f"{_describe(coll.decl)}", e.collection.span,
                           "use contains(text, part) for substrings"
                           if coll.base == "string" else None)
            elif item is not None and coll.decl.item is not None:
                element = _base(coll.decl.item)
                elem_ty = _Ty(element, coll.decl.item, f"an item of {coll.what}") \
                    if element is not None else None
                if elem_ty is not None:
                    self._same(e, elem_ty, item)
        if item is not None and item.decl is not None and isinstance(
                e.collection, ast.ListExpr):
            if item.base in ("list", "record", "money"):
                self.error("E152", f"'in' tests a string, number or boolean; {item.what} is "
                           f"declared {_describe(item.decl)}", e.item.span, None)
            else:
                for lit in e.collection.items:
                    if isinstance(lit, ast.Literal):
                        lit_ty = self.literal(lit)
                        if lit_ty is not None:
                            self._same(lit, item, lit_ty)
        return _Ty("bool")

    def call(self, e: ast.Call) -> _Ty | None:
        if e.name == "has":
            if e.args and isinstance(e.args[0], ast.Path):
                self.path(e.args[0])
            return _Ty("bool")
        types = [self.of(a) for a in e.args]
        if e.name in ("startswith", "endswith", "matches"):
            for a, ty in zip(e.args, types, strict=False):
                if ty is not None and ty.decl is not None and ty.base not in ("string",):
                    self.error("E152", f"{e.name}() takes strings; {ty.what} is declared "
                               f"{_describe(ty.decl)}", a.span, None)
        elif e.name == "contains" and len(types) == 2:
            coll, item = types
            if coll is not None and coll.decl is not None:
                if coll.base not in ("list", "string"):
                    self.error("E152", f"contains() looks into a list or string; {coll.what} "
                               f"is declared {_describe(coll.decl)}", e.args[0].span, None)
                elif coll.base == "list" and coll.decl.item is not None and item is not None:
                    element = _base(coll.decl.item)
                    if element is not None:
                        self._same(e, _Ty(element, coll.decl.item, f"an item of {coll.what}"),
                                   item)
        return _Ty("bool")

    def not_(self, e: ast.Not) -> _Ty | None:
        self.boolean(e.expr)
        return _Ty("bool")

    def and_(self, e: ast.And | ast.Or) -> _Ty | None:
        for item in e.items:
            self.boolean(item)
        return _Ty("bool")

    or_ = and_

    def of(self, e: ast.Expr) -> _Ty | None:
        return self.visit(e)

    def boolean(self, e: ast.Expr) -> None:
        """``e`` stands where true or false is needed."""
        ty = self.of(e)
        if ty is not None and ty.decl is not None and ty.base != "bool":
            self.error("E152", f"{ty.what} is declared {_describe(ty.decl)}, not bool: it "
                       "cannot stand for true or false", e.span, None)


# ---- the pass -------------------------------------------------------------------------------

def check_schemas(files: Sequence[ast.PolicyFile], error: Report,
                  warn: Report | None = None) -> None:
    """Check every ``schema`` declaration, then type the rules the schemas cover. A rule
    no schema covers gets W206 (``warn``) for a context path no schema declares but
    that is one typo away from a declared field."""
    schemas: list[ast.SchemaDecl] = []
    for f in files:
        if ast.SchemaDecl not in f.kinds:
            continue
        for st in f.statements:
            if isinstance(st, ast.SchemaDecl):
                schemas.append(st)
                for p in st.patterns:
                    if not is_valid_pattern(p):
                        error("E115", f"invalid permission pattern '{p}'", st.span,
                              "use 'ns:action', 'ns:*' or '*'")
                _check_fields(st.fields, "context", error)
    if not schemas:
        return
    for f in files:
        for st in f.statements:
            if not isinstance(st, (ast.Rule, ast.LimitDecl, ast.ApprovalOverDecl)):
                continue
            if not st.conditions:
                continue
            covering = covering_schemas(st.patterns, schemas)
            if not covering:
                if warn is not None:
                    _near_misses(st.conditions, schemas, warn)
                continue
            typer = _Typer(covering, error)
            for cond in st.conditions:
                typer.boolean(cond.expr)


def _near_misses(conditions: Sequence[ast.Condition], schemas: Sequence[ast.SchemaDecl],
                 warn: Report) -> None:
    declared = {f.name for s in schemas for f in s.fields}
    stack: list[ast.Expr] = [c.expr for c in conditions]
    while stack:
        e = stack.pop()
        stack.extend(ast.children(e))
        if isinstance(e, ast.Path) and e.root == "context" and e.segments:
            head = e.segments[0]
            if head not in declared:
                near = _hint(head, declared)
                if near is not None:
                    warn("W206", f"context.{head} is declared by no schema, and this rule "
                         "is not typed (no schema covers all its permissions)", e.span,
                         near)


def covering_schemas(patterns: Sequence[str], schemas: Sequence[ast.SchemaDecl]
                     ) -> list[ast.SchemaDecl]:
    """The schemas that type a rule with these patterns: those covering one of its
    patterns, when every pattern is covered by some schema (else none: the rule also
    decides requests no schema describes)."""
    found: list[ast.SchemaDecl] = []
    for p in patterns:
        if not is_valid_pattern(p):
            return []
        here = [s for s in schemas if any(pattern_subsumes(p, w) for w in s.patterns
                                          if is_valid_pattern(w))]
        if not here:
            return []
        found.extend(s for s in here if not any(s is x for x in found))
    return found
