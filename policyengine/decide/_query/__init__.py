"""Reverse queries: what may a principal do, who may do something, which tools may it call.

The rule index of :class:`~policyengine.decide.CompiledPolicy` is read backwards. The
patterns rules name form a tree (two patterns are nested or disjoint), so the permission
space splits into *regions*: a pattern minus the narrower patterns rules name. Every
permission of a region is decided by the same rules, so one answer per region is exact.
For each region the principal holds a permit in, the rules that can decide it are
partially evaluated: what the policy already knows (the principal's id, roles and
attributes, literals) is folded into true or false, and what only a request can tell
(``context.*``, ``amount``, ``grant.*``) stays as a *residual*, printed as policy text.

An answer line says: a request for a permission the line covers is ``allowed`` (or
``pending_approval``) exactly when its ``when`` holds and its ``unless`` does not. The
equivalence with ``authorize`` holds on every request whose conditions evaluate without
error; an error fails closed in ``authorize`` (a forbid applies, a permit does not), so
``authorize`` may refuse what a line lists, never allow what no line lists. Budgets are
state, not policy: a listed permission may still meet an exhausted budget.

Answers are computed once per principal (per permission for :func:`principals_with`) and
kept with the compiled policy in a bounded table: a reload starts afresh. An answer is
complete when returned (its length exact, every line decided); its :class:`Access` lines,
which carry the principal's name, are made when it is first read, so an answer made of
regions worked out before (at index build: those under ``*`` of every role granted it;
for a principal with other scopes there, those regions with its other rules laid over
them) costs no per-line work until then.
"""

from __future__ import annotations

import gc
import threading
from bisect import bisect_left
from collections import defaultdict, deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import FrozenInstanceError, dataclass
from decimal import Decimal
from functools import partial
from itertools import chain, islice
from typing import TYPE_CHECKING, Any, TypeVar, Union

from policyengine.decide._runtime import Principal, build_many
from policyengine.lang import ast
from policyengine.permissions import permission_matches, validate_permission

if TYPE_CHECKING:
    from policyengine.decide._compiled import CompiledPolicy, CompiledRule

__all__ = ["Access", "FilteredTools", "Permissions", "Principals", "QueryIndex", "ToolAccess",
           "filter_tools", "index_of", "paused", "permissions_of", "principals_with"]

_T = TypeVar("_T")

#: Answers kept per compiled policy (principals, permissions, tool lookups together);
#: past that, the oldest goes first.
ANSWER_CACHE_SIZE = 16384

STATUSES = ("allowed", "pending_approval")


# ---- answers ---------------------------------------------------------------------------------

class Access:
    """One line of a reverse-query answer: ``principal`` (of ``kind`` ``agent``, ``role``
    or ``anyone``) gets ``status`` for every permission ``pattern`` matches and no pattern
    of ``excluding`` matches, when ``when`` holds and ``unless`` does not (policy text;
    None: no such condition).

    Immutable. The residual texts are printed from each rule's guard when first read
    (then kept): working an answer out decides every line, its status and the rules its
    residuals are made of, without printing any policy text."""

    __slots__ = ("_unless", "_when", "excluding", "kind", "pattern", "principal", "rules",
                 "status")

    principal: str
    kind: str
    pattern: str
    excluding: tuple[str, ...]
    status: str
    rules: tuple[str, ...]
    _when: str | _Text | None
    _unless: str | _Text | None

    def __init__(self, principal: str, kind: str, pattern: str, excluding: tuple[str, ...],
                 status: str, when: str | _Text | None, unless: str | _Text | None,
                 rules: tuple[str, ...]) -> None:
        _set(self, "principal", principal)
        _set(self, "kind", kind)
        _set(self, "pattern", pattern)
        _set(self, "excluding", excluding)
        _set(self, "status", status)
        _set(self, "_when", when)
        _set(self, "_unless", unless)
        _set(self, "rules", rules)

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    @property
    def when(self) -> str | None:
        w = self._when
        return w if w is None or type(w) is str else str(w)

    @property
    def unless(self) -> str | None:
        u = self._unless
        return u if u is None or type(u) is str else str(u)

    def _fields(self) -> tuple[Any, ...]:
        return (self.principal, self.kind, self.pattern, self.excluding, self.status,
                self.when, self.unless, self.rules)

    def __eq__(self, other: object) -> bool:
        if type(other) is not Access:
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        names = ("principal", "kind", "pattern", "excluding", "status", "when", "unless",
                 "rules")
        return "Access(" + ", ".join(
            f"{n}={v!r}" for n, v in zip(names, self._fields(), strict=True)) + ")"

    def __reduce__(self) -> tuple[Any, ...]:
        return Access, self._fields()  # copied or pickled with its texts printed

    def replace(self, principal: str, kind: str) -> Access:
        """This line for another principal (its residual texts shared, printed once)."""
        return Access(principal, kind, self.pattern, self.excluding, self.status,
                      self._when, self._unless, self.rules)

    def covers(self, permission: str) -> bool:
        """Whether this line speaks for ``permission``: its pattern matches it and none of
        the narrower patterns it excludes does."""
        return permission_matches(self.pattern, permission) and not any(
            permission_matches(x, permission) for x in self.excluding)

    @property
    def unconditional(self) -> bool:
        """True when the line depends on nothing a request carries."""
        return self._when is None and self._unless is None

    def to_dict(self) -> dict[str, Any]:
        return {"principal": self.principal, "kind": self.kind, "pattern": self.pattern,
                "excluding": list(self.excluding), "status": self.status,
                "when": self.when, "unless": self.unless, "rules": list(self.rules)}

    def __str__(self) -> str:
        text = f"{self.status} {self.pattern}"
        if self.excluding:
            text += " except " + ", ".join(self.excluding)
        if self._when is not None:
            text += f" when {self.when}"
        if self._unless is not None:
            text += f" unless {self.unless}"
        return text


_set = object.__setattr__
_new = object.__new__
_SET_PRINCIPAL, _SET_KIND, _SET_PATTERN, _SET_EXCLUDING, _SET_STATUS, _SET_WHEN, \
    _SET_UNLESS, _SET_RULES = (Access.__dict__[name].__set__ for name in (
        "principal", "kind", "pattern", "excluding", "status", "_when", "_unless", "rules"))


def _renamed(lines: Iterable[Access], name: str, kind: str) -> Iterator[Access]:
    """``lines`` for another principal (as :meth:`Access.replace`, slot by slot)."""
    for line in lines:
        a = _new(Access)
        _SET_PRINCIPAL(a, name)
        _SET_KIND(a, kind)
        _SET_PATTERN(a, line.pattern)
        _SET_EXCLUDING(a, line.excluding)
        _SET_STATUS(a, line.status)
        _SET_WHEN(a, line._when)
        _SET_UNLESS(a, line._unless)
        _SET_RULES(a, line.rules)
        yield a


def _made(name: str, kind: str, parts: list[_Rows]) -> Iterator[Access]:
    """The lines of ``parts`` for one principal, as :class:`Access` objects: each set
    slot by slot, as ``Access(...)`` would, without the call of its ``__init__`` (an
    answer read through makes thousands)."""
    for part in parts:
        for key, ex, region_lines in part.rows:
            for status, when, unless, rule_ids in region_lines:
                a = _new(Access)
                _SET_PRINCIPAL(a, name)
                _SET_KIND(a, kind)
                _SET_PATTERN(a, key)
                _SET_EXCLUDING(a, ex)
                _SET_STATUS(a, status)
                _SET_WHEN(a, when)
                _SET_UNLESS(a, unless)
                _SET_RULES(a, rule_ids)
                yield a


def _subject_text(kind: str, name: str, declared: bool = True) -> str:
    if kind == "agent":
        # An id no agent statement declares holds no role: only rules for anyone apply.
        return f"agent {_quote(name)}" if declared else f"undeclared principal {_quote(name)}"
    if kind == "role":
        return f"role {name}"
    return "anyone else"


def _quote(s: str) -> str:
    import json
    return json.dumps(s, ensure_ascii=False)


class Entries(Sequence[Access]):
    """The lines of an answer, complete and immutable: its length is exact from the
    start, every line decided; the :class:`Access` objects, which carry the principal's
    name, are made when it is first read (then kept), so a 10,000-line answer whose
    regions were worked out before costs no per-line work until it is read. Compares
    equal to a tuple of the same lines."""

    __slots__ = ("_items", "_length", "_make")

    def __init__(self, length: int, make: Callable[[], Iterable[Access]]) -> None:
        self._length = length
        self._make: Callable[[], Iterable[Access]] | None = make
        self._items: tuple[Access, ...] | None = None

    def _all(self) -> tuple[Access, ...]:
        items = self._items
        if items is None:
            make = self._make
            items = tuple(make()) if make is not None else ()
            self._items = items
            self._make = None
        return items

    def head(self, n: int) -> tuple[Access, ...]:
        """The first ``n`` lines, made without the rest when not read yet."""
        make = self._make
        if self._items is None and make is not None:
            return tuple(islice(make(), n))
        return self._all()[:n]

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i: Any) -> Any:
        return self._all()[i]

    def __iter__(self) -> Iterator[Access]:
        return iter(self._all())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Entries):
            return self._all() == other._all()
        if isinstance(other, tuple):
            return self._all() == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._all())

    def __repr__(self) -> str:
        return repr(self._all())

    def __reduce__(self) -> tuple[Any, ...]:
        return tuple, (self._all(),)  # copied or pickled as the tuple of its lines


@dataclass(frozen=True, slots=True)
class Permissions:
    """What ``engine.permissions_of`` answers: every line of what ``principal`` may do.
    ``total`` counts every line; ``truncated`` is True when a ``limit`` left some out.
    ``entries`` is an immutable sequence of the lines, made when first read (a tuple of
    the first lines with a ``limit``)."""

    principal: str
    kind: str
    entries: Sequence[Access]
    total: int
    truncated: bool
    #: False for a principal id no agent statement declares (its text says so).
    declared: bool = True

    def lookup(self, permission: str) -> tuple[Access, ...]:
        """The lines that speak for ``permission`` (an allowed line, a pending one, both
        or none)."""
        return tuple(a for a in self.entries if a.covers(permission))

    def to_dict(self) -> dict[str, Any]:
        return {"principal": self.principal, "kind": self.kind,
                "entries": [a.to_dict() for a in self.entries], "total": self.total,
                "truncated": self.truncated}

    def __str__(self) -> str:
        head = f"{_subject_text(self.kind, self.principal, self.declared)}: {self.total} " + (
            "entry" if self.total == 1 else "entries")
        if self.truncated:
            head += f" (truncated to {len(self.entries)})"
        return "\n".join([head, *(f"  {a}" for a in self.entries)])


@dataclass(frozen=True, slots=True)
class Principals:
    """What ``engine.principals_with`` answers: every principal that may exercise
    ``permission`` (declared agents by id, then roles, then ``anyone`` for the principals
    the policy does not declare), each line with its status and residual."""

    permission: str
    entries: Sequence[Access]
    total: int
    truncated: bool

    def to_dict(self) -> dict[str, Any]:
        return {"permission": self.permission, "entries": [a.to_dict() for a in self.entries],
                "total": self.total, "truncated": self.truncated}

    def __str__(self) -> str:
        head = f"{self.permission}: {self.total} " + ("entry" if self.total == 1 else "entries")
        if self.truncated:
            head += f" (truncated to {len(self.entries)})"
        lines = [head]
        for a in self.entries:
            cond = str(a)[len(a.status) + 1 + len(a.pattern):]
            lines.append(f"  {_subject_text(a.kind, a.principal)}: {a.status}{cond}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class ToolAccess:
    """One tool given to ``filter_tools``: its ``name``, the tool statement binding it
    (``tool``: its qualified id, None when none does), the ``permission`` it is bound to
    and the principal's lines for that permission (empty: it may not call it)."""

    name: str | None
    tool: str | None
    permission: str | None
    access: tuple[Access, ...]

    @property
    def callable(self) -> bool:
        return bool(self.access)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "tool": self.tool, "permission": self.permission,
                "callable": self.callable, "access": [a.to_dict() for a in self.access]}


@dataclass(frozen=True, slots=True)
class FilteredTools:
    """What ``engine.filter_tools`` answers: ``kept``, the tools given (the same objects,
    in order) that ``principal`` may call; ``tools``, one :class:`ToolAccess` per tool
    given, kept or not."""

    principal: str
    transport: str
    kept: tuple[Any, ...]
    tools: tuple[ToolAccess, ...]
    #: False for a principal id no agent statement declares (its text says so).
    declared: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"principal": self.principal, "transport": self.transport,
                "kept": [t.name for t in self.tools if t.callable],
                "tools": [t.to_dict() for t in self.tools]}

    def __str__(self) -> str:
        lines = [f"{_subject_text('agent', self.principal, self.declared)}: "
                 f"{len(self.kept)} of {len(self.tools)} tools callable"]
        for i, t in enumerate(self.tools):
            # A tool given without a usable name is shown by its place in the list.
            name = t.name if t.name else f"tool #{i} (no name)"
            if t.permission is None:
                lines.append(f"  {name}: dropped (no {self.transport} tool binds it)")
            elif not t.access:
                lines.append(f"  {name} -> {t.permission}: dropped")
            else:
                for a in t.access:
                    cond = str(a)[len(a.status) + 1 + len(a.pattern):]
                    lines.append(f"  {name} -> {t.permission}: {a.status}{cond}")
        return "\n".join(lines)


# ---- partial evaluation ----------------------------------------------------------------------

class _Err:
    """A sub-condition the policy alone shows to fail to evaluate (fail closed)."""

    __slots__ = ()


ERR = _Err()
_MISSING = object()
#: What folding gives: known true or false, a known evaluation error, or a residual.
Folded = Union[bool, _Err, ast.Expr]  # noqa: UP007 - a runtime alias on Python 3.10


@dataclass(frozen=True)
class _Subject:
    """Whose answer is being worked out. ``principal`` is what scopes see (an id no
    agent has for a role or anyone); ``id_known`` and ``attrs_known`` say which of
    ``principal.*`` conditions may be folded."""

    kind: str
    name: str
    principal: Principal
    id_known: bool
    attrs_known: bool


class _Folder:
    """Folds rule conditions for one subject, memoised by rule: with the index for the
    rules whose conditions do not read the principal (they fold alike for everyone),
    with this folder for the others."""

    def __init__(self, subject: _Subject, index: QueryIndex) -> None:
        self.subject = subject
        self.index = index
        self.rules: dict[int, Folded] = {}
        self.texts: dict[int, str] = {}
        self.substitute = True
        #: Set when a guard asked for reads the principal.
        self.read_principal = False

    def known(self, e: ast.Expr) -> bool:
        if isinstance(e, ast.Path):
            if e.root != "principal":
                return False
            head = e.segments[0]
            if head == "id":
                return self.subject.id_known
            if head == "attributes":
                return self.subject.attrs_known
            return True  # roles
        if isinstance(e, ast.Amount):
            return False
        if isinstance(e, ast.Call) and e.name == "has":
            path = e.args[0]
            return (isinstance(path, ast.Path) and path.root == "principal"
                    and self.subject.attrs_known)
        return all(self.known(c) for c in ast.children(e))

    def fold(self, e: ast.Expr, rule: CompiledRule) -> Folded:
        if isinstance(e, ast.Literal) and isinstance(e.value, bool):
            return e.value
        if isinstance(e, ast.Not):
            inner = self.fold(e.expr, rule)
            if isinstance(inner, bool):
                return not inner
            if inner is ERR:
                return ERR
            return _negated(inner)  # type: ignore[arg-type]
        if isinstance(e, ast.And):
            return _conj([self.fold(i, rule) for i in e.items], e.items)
        if isinstance(e, ast.Or):
            return _disj([self.fold(i, rule) for i in e.items], e.items)
        if self.known(e):
            return self._evaluate(e, rule)
        # a rule that does not read the principal has nothing to write in
        return self._substitute(e) if self.substitute else e

    def _substitute(self, e: ast.Expr) -> ast.Expr:
        """``e`` with what the policy knows of the principal written in: its id and the
        string, number and boolean attributes it has, as literals (``context.owner ==
        principal.id`` -> ``context.owner == "bot"``). Compared the same way either way;
        a missing attribute stays a path (it fails to evaluate, as before)."""
        if isinstance(e, ast.Path):
            if e.root != "principal":
                return e
            who = self.subject.principal
            head = e.segments[0]
            if head == "id" and self.subject.id_known and len(e.segments) == 1:
                return ast.Literal(who.id)
            if head == "attributes" and self.subject.attrs_known and len(e.segments) == 2:
                value = who.attributes.get(e.segments[1], _MISSING)
                if type(value) in (str, int, bool, Decimal):
                    return ast.Literal(value)
            return e
        if isinstance(e, ast.Compare):
            return ast.Compare(e.op, self._substitute(e.left), self._substitute(e.right))
        if isinstance(e, ast.In):
            return ast.In(self._substitute(e.item), self._substitute(e.collection),
                          e.negated)
        if isinstance(e, ast.Call) and e.name != "has":
            return ast.Call(e.name, tuple(self._substitute(a) for a in e.args))
        return e

    def _evaluate(self, e: ast.Expr, rule: CompiledRule) -> Folded:
        from policyengine.decide._compiled import FileMoney, money_literals
        from policyengine.lang._codegen import ConditionCodegen
        money = rule.money or FileMoney("", None, None, None)
        gen = ConditionCodegen(money, money_literals(money))
        test = build_many([(gen.boolean(e), gen.consts)])[0]
        try:
            return test({}, self.subject.principal, None) is True
        except Exception:
            return ERR

    def text(self, rule: CompiledRule) -> str:
        """The policy text of ``rule``'s guard (not True or False), formatted once."""
        index = self.index
        found = index.texts.get(rule.order)  # never holds a rule reading the principal
        if found is None:
            found = self.texts.get(rule.order)
            if found is None:
                guard = self.guard(rule)  # which finds whether the rule reads the principal
                memo = self.texts if index.personal(rule) else index.texts
                found = memo[rule.order] = _format(guard)  # type: ignore[arg-type]
        return found

    def either(self, rules: Sequence[CompiledRule]) -> str | None:
        """``g1 or g2 or ...`` over the guards of ``rules`` (None for no rule)."""
        if not rules:
            return None
        if len(rules) == 1:
            return self.text(rules[0])
        return " or ".join(self.text(r) for r in rules)

    def residual(self, first: tuple[CompiledRule, ...],
                 second: tuple[CompiledRule, ...] = ()) -> str:
        """The policy text of a residual: the guards of ``first`` joined by ``or``; with
        ``second`` too, ``first and second``, each side in parentheses when it is an
        ``or``."""
        if not second and len(first) == 1:
            return self.text(first[0])
        text = self.either(first) or ""
        if second:
            other = self.either(second) or ""
            text = (f"{_paren(text, len(first) > 1 or self.is_or(first[0]))} and "
                    f"{_paren(other, len(second) > 1 or self.is_or(second[0]))}")
        return text

    def is_or(self, rule: CompiledRule) -> bool:
        return isinstance(self.guard(rule), ast.Or)

    def guard(self, rule: CompiledRule) -> Folded:
        """When ``rule`` applies to the subject: its conditions folded, and for a limit or
        an approval over a threshold, the amount over the cap (fail closed: a known
        error makes a forbid or approval apply and a permit not)."""
        if not rule.conditions and rule.amount_limit is None:
            return True
        index = self.index
        found = index.guards.get(rule.order)  # never holds a rule that reads the principal
        if found is not None:
            return found
        found = self.rules.get(rule.order)
        if found is not None:
            self.read_principal = True
            return found
        personal = index.personal(rule)  # first asked: a plain guard is kept then
        if personal:
            self.read_principal = True
        else:
            found = index.guards.get(rule.order)
            if found is not None:
                return found
        memo = self.rules if personal else index.guards
        self.substitute = personal
        parts: list[Folded] = []
        originals: list[ast.Expr] = []
        for cond in rule.conditions:
            expr = cond.expr if cond.kind == "when" else ast.Not(cond.expr)
            originals.append(expr)
            parts.append(self.fold(expr, rule))
        out = _conj(parts, originals)
        if out is ERR:
            out = rule.effect != "permit"
        out = memo[rule.order] = _over_cap(rule, out)
        return out


#: The canonical printer of conditions, imported when first needed (loading the engine
#: does not load the formatter).
_FORMAT: list[Callable[[ast.Expr], str]] = []


def _format(e: ast.Expr) -> str:
    if not _FORMAT:
        from policyengine.lang._fmt import format_expr
        _FORMAT.append(format_expr)
    return _FORMAT[0](e)


def _over_cap(rule: CompiledRule, guard: Folded) -> Folded:
    """``guard`` and, for a limit or an approval over a threshold, the amount over the
    cap (already in the file's base currency: the checker gives every file with amount
    rules one)."""
    if rule.amount_limit is None or guard is False:
        return guard
    base = rule.money.base if rule.money is not None else None
    over = ast.Compare(">", ast.Amount(), ast.MoneyLit(rule.amount_limit, base or ""))
    return over if guard is True else _conj([guard, over], [over, over])


def _plain_guard(rule: CompiledRule, reads: Sequence[int]) -> Folded | None:
    """The guard of a rule whose every condition reads the request and none reads the
    principal (``reads``: what each condition reads), nor has ``and``, ``or`` or ``not``
    on top, so nothing in it folds: its conditions as they are (``unless`` ones
    negated). None for any other rule."""
    parts: list[Folded] = []
    for cond, read in zip(rule.conditions, reads, strict=True):
        e = cond.expr
        if read != _REQUEST or type(e) in _COMPOUND:
            return None
        parts.append(e if cond.kind == "when" else _negated(e))
    return _over_cap(rule, _conj(parts, parts))  # type: ignore[arg-type]


#: ``not (a OP b)`` is ``a INVERSE b``: the same answer on every pair of values, and the
#: same error on values that do not compare (numbers are exact, so the order is total).
_INVERSE = {"==": "!=", "!=": "==", "<": ">=", "<=": ">", ">": "<=", ">=": "<"}


def _negated(e: ast.Expr) -> ast.Expr:
    """``not e``, written the way a person would: ``x not in [..]``, ``a != b``."""
    if isinstance(e, ast.In):
        return ast.In(e.item, e.collection, not e.negated)
    if isinstance(e, ast.Compare):
        return ast.Compare(_INVERSE[e.op], e.left, e.right)
    if isinstance(e, ast.Not):
        return e.expr
    return ast.Not(e)


def _conj(parts: Sequence[Folded], originals: Sequence[ast.Expr]) -> Folded:
    """``a and b and ...`` folded left to right, as the engine evaluates it."""
    rest: list[ast.Expr] = []
    for value, original in zip(parts, originals, strict=True):
        if value is True:
            continue
        if value is False:
            return False
        if value is ERR:
            if not rest:
                return ERR
            rest.append(original)  # errors at run time only if the rest holds
            continue
        if isinstance(value, ast.And):
            rest.extend(value.items)
        else:
            rest.append(value)  # type: ignore[arg-type]
    if not rest:
        return True
    return rest[0] if len(rest) == 1 else ast.And(tuple(rest))


def _disj(parts: Sequence[Folded], originals: Sequence[ast.Expr]) -> Folded:
    """``a or b or ...`` folded left to right."""
    rest: list[ast.Expr] = []
    for value, original in zip(parts, originals, strict=True):
        if value is False:
            continue
        if value is True:
            return True
        if value is ERR:
            if not rest:
                return ERR
            rest.append(original)
            continue
        rest.append(value)  # type: ignore[arg-type]
    if not rest:
        return False
    return rest[0] if len(rest) == 1 else ast.Or(tuple(rest))


#: One status line of a region before it is given a principal and pattern:
#: (status, when, unless, rules).
_Line = tuple[str, "str | _Text | None", "str | _Text | None", tuple[str, ...]]


#: What two regions' lines are compared by: per line, its status and the rules whose
#: guards its ``when`` and ``unless`` print. A narrower region has every rule
#: of the wider one and more, so two regions print the same lines exactly when their
#: lines are made of the same rules: the texts need not be printed to compare them.
_Sig = tuple[tuple[str, Any, Any], ...]


class _Text:
    """A residual's policy text, printed when first read and kept: the guards of
    ``first`` joined by ``or``; with ``second`` too, ``first and second``, each side in
    parentheses when it is an ``or``."""

    __slots__ = ("_text", "first", "folder", "second")

    def __init__(self, folder: _Folder, first: tuple[CompiledRule, ...],
                 second: tuple[CompiledRule, ...] = ()) -> None:
        self.folder = folder
        self.first = first
        self.second = second
        self._text: str | None = None

    def __str__(self) -> str:
        text = self._text
        if text is None:
            text = self._text = self.folder.residual(self.first, self.second)
        return text


#: The rules deciding one region, split by effect, each in declaration order: enforced
#: ones whose guard is not False (permits, forbids and limits, approvals), and whether
#: some permit's and some approval's guard is True. None: a forbid always applies.
_State = Union[tuple[tuple["CompiledRule", ...], tuple["CompiledRule", ...],  # noqa: UP007
                     tuple["CompiledRule", ...], bool, bool], None]

_EMPTY: _State = ((), (), (), False, False)


def _by_order(rule: CompiledRule) -> int:
    return rule.order


def _add(rules: tuple[CompiledRule, ...], rule: CompiledRule) -> tuple[CompiledRule, ...]:
    if rules and rules[-1].order > rule.order:
        return tuple(sorted((*rules, rule), key=_by_order))
    return (*rules, rule)


def _extend(state: _State, rules: Iterable[CompiledRule], folder: _Folder,
            nested: frozenset[int]) -> _State:
    """``state`` with ``rules`` added (``nested``: the rules that may already be in it,
    named under two nested patterns)."""
    if state is None:
        return None
    permits, forbids, approvals, p_true, a_true = state
    guard = folder.guard
    for rule in rules:
        if rule.mode != "enforce":
            continue  # shadow rules (mode warn / mode log) never decide
        if rule.order in nested and (rule in permits or rule in forbids
                                     or rule in approvals):
            continue
        g = guard(rule)
        if g is False:
            continue
        effect = rule.effect
        if effect == "permit":
            permits = _add(permits, rule)
            p_true = p_true or g is True
        elif effect == "forbid":
            if g is True:
                return None
            forbids = _add(forbids, rule)
        else:
            approvals = _add(approvals, rule)
            a_true = a_true or g is True
    return permits, forbids, approvals, p_true, a_true


def _sig(state: _State) -> _Sig:
    """What :func:`_region_lines` prints, by the rules each residual is made of."""
    if state is None or not state[0]:
        return ()
    permits, forbids, approvals, p_true, a_true = state
    p_rules = () if p_true else permits
    if not approvals:
        return (("allowed", p_rules, forbids),)
    pending = ("pending_approval", (p_rules, () if a_true else approvals), forbids)
    if a_true:
        return (pending,)
    return (("allowed", p_rules, (*forbids, *approvals)), pending)


def _region_lines(state: _State, folder: _Folder, printed: bool = False
                  ) -> tuple[_Line, ...]:
    """The status lines of a region decided by the rules of ``state``.

    Allowed when some permit's guard holds and no forbid's or approval's does; pending
    when some permit's and some approval's guard hold and no forbid's does. The texts
    are made of each guard's own text (printed once per rule and subject), printed now
    when ``printed``, else when read."""
    if state is None or not state[0]:
        return ()
    permits, forbids, approvals, p_true, a_true = state
    ids = tuple([r.qid for r in (*permits, *forbids, *approvals)])
    p_rules = () if p_true else permits
    text: Callable[..., str | _Text] = folder.residual if printed else partial(_Text, folder)
    out: list[_Line] = []
    if not a_true:
        unless = (*forbids, *approvals)
        out.append(("allowed", text(p_rules) if p_rules else None,
                    text(unless) if unless else None, ids))
    if approvals:
        a_rules = () if a_true else approvals
        if p_rules and a_rules:
            when: str | _Text | None = text(p_rules, a_rules)
        else:
            when = text(p_rules or a_rules) if p_rules or a_rules else None
        out.append(("pending_approval", when, text(forbids) if forbids else None, ids))
    return tuple(out)


def _paren(text: str, needed: bool) -> str:
    return f"({text})" if needed else text


# ---- the index read backwards ----------------------------------------------------------------

def _rep(pattern: str) -> str:
    """A stand-in permission for the region of ``pattern``: what the rule index finds for
    it is exactly the rules of every permission in the region (``a:*`` stands in as the
    invalid permission ``a:*``, which no exact key equals)."""
    return pattern


def _ancestors(pattern: str) -> list[str]:
    """The wider patterns that match every permission ``pattern`` matches, nearest
    first: ``a:b:c`` -> ``a:b:*``, ``a:*``, ``*``."""
    if pattern == "*":
        return []
    stem = pattern[:-2] if pattern.endswith(":*") else pattern
    out = []
    i = stem.rfind(":")
    while i >= 0:
        out.append(stem[: i + 1] + "*")
        i = stem.rfind(":", 0, i)
    out.append("*")
    return out


_NONE: frozenset[int] = frozenset()
#: A role held by no more agents than this is "few-held" (see QueryIndex._several).
_FEW = 64


class _Rows:
    """The lines of the regions under one widest permit pattern, in pattern order: per
    region listed, (its pattern, the narrower patterns it excludes, its status lines);
    ``count``: how many lines in all."""

    __slots__ = ("count", "rows")

    def __init__(self, rows: list[tuple[str, tuple[str, ...], tuple[_Line, ...]]],
                 count: int | None = None) -> None:
        self.rows = rows
        self.count = sum([len(row[2]) for row in rows]) if count is None else count


def _first_pattern(rows: _Rows) -> str:
    return rows.rows[0][0]


def _first_pattern_of_row(row: tuple[str, tuple[str, ...], tuple[_Line, ...]]) -> str:
    return row[0]


#: Up to this many roles, a principal's scopes are looked up role by role (cheaper than
#: reading the pattern keys around a permit pattern).
_FEW_ROLES = 4


def _parts_of(bucket: Any, who: Principal) -> list[Any]:
    """The parts of ``bucket`` that apply to ``who`` (as ``parts_for``, in another
    order when a role's: the rules are put in declaration order after), going through
    the bucket's roles instead of the principal's when it has fewer (an agent holding 50
    roles meets buckets of one role)."""
    parts: list[Any] = []
    if bucket.unscoped is not None:
        parts.append(bucket.unscoped)
    if bucket.by_agent:
        mine = bucket.by_agent.get(who.id)
        if mine is not None:
            parts.append(mine)
    by_role = bucket.by_role
    if by_role:
        roles = who.roles
        if len(by_role) < len(roles):
            parts.extend([part for role, part in by_role.items() if role in roles])
        else:
            parts.extend([by_role[role] for role in roles if role in by_role])
    return parts


class QueryIndex:
    """The compiled policy's rule index, read backwards; built on first query.

    What every query needs is built here: the pattern keys sorted, per scope. What only
    some queries need (each scope's permit patterns, which rules read the principal,
    the holders of each role) is worked out when first asked, then kept."""

    def __init__(self, policy: CompiledPolicy, prepare: bool = True) -> None:
        self.policy = policy
        buckets = policy.pattern_buckets()
        self.buckets = buckets
        self.keys = keys = sorted(buckets)
        # Per scope (unscoped, each role, each agent), the sorted pattern keys holding
        # rules of that scope: the narrower patterns that can split a principal's
        # regions are found by bisection in its scopes' lists only.
        role_keys: defaultdict[str, list[str]] = defaultdict(list)
        agent_keys: defaultdict[str, list[str]] = defaultdict(list)
        unscoped_keys: list[str] = []
        unscoped_permits: list[str] = []
        for key in keys:
            b = buckets[key]
            u = b.unscoped
            if u is not None:
                unscoped_keys.append(key)
                if u.permits:
                    unscoped_permits.append(key)
            if b.by_role:
                for r in b.by_role:
                    role_keys[r].append(key)
            if b.by_agent:
                for a in b.by_agent:
                    agent_keys[a].append(key)
        self.unscoped_keys = unscoped_keys
        self.role_keys: dict[str, list[str]] = dict(role_keys)
        self.agent_keys: dict[str, list[str]] = dict(agent_keys)
        #: The rules named under two nested patterns (``a:*, a:b``): a region may meet
        #: them twice.
        self.nested = frozenset(
            r.order for r in [r for r in policy.rules if len(r.patterns) > 1] if any(
                p != q and permission_matches(p, q) for p in r.patterns for q in r.patterns))
        #: Per rule with conditions (by order), whether they read the principal (its id,
        #: roles or attributes): found when a query first meets the rule.
        self._personal: dict[int, bool] = {}
        #: Per rule reading the principal (by order), whether only to write its values
        #: into a residual (see written_in).
        self._written_in: dict[int, bool] = {}
        #: Guards (folded conditions) of the rules that do not read the principal, as
        #: queries fold them (a plain one, see _plain_guard, when the rule is classified).
        self.guards: dict[int, Folded] = {}
        #: Per scope (``""``: unscoped, ``role NAME``, ``agent ID``): its permit patterns
        #: (a role's and an agent's found when first asked).
        self._permits: dict[str, frozenset[str]] = {"": frozenset(unscoped_permits)}
        #: Per (widest permit pattern, the scopes with rules there): its regions' lines.
        self._subtrees: dict[tuple[str, tuple[str, ...]], _Rows] = {}
        #: Lines per set of rules (by their orders) none of which reads the principal.
        self._lines: dict[tuple[int, ...], tuple[tuple[_Line, ...], _Sig]] = {}
        #: Texts of the guards of the rules that do not read the principal.
        self.texts: dict[int, str] = {}
        self._holders: dict[str, frozenset[str]] | None = None
        #: ``_FEW`` when made, and :meth:`wide_partners`.
        self._wide: tuple[int, dict[str, frozenset[str]]] | None = None
        #: The declared agents' ids, sorted (made when first needed: see _ordered).
        self._sorted_agents: list[str] | None = None
        #: Per attribute name: each declared agent's value class, and the agents by class.
        self._attribute_of: dict[str, dict[str, Any]] = {}
        self._attribute_classes: dict[str, list[frozenset[str]]] = {}
        self._answers: dict[tuple[str, ...], Any] = {}
        self._order: deque[tuple[str, ...]] = deque()
        self._lock = threading.Lock()
        if prepare:
            self._prepare()

    @property
    def holders(self) -> dict[str, frozenset[str]]:
        """The declared agents holding each role (made on first use: principals_with
        and the index build's choice of shared regions read it), as sets: principals_with
        joins and splits them without hashing each agent again."""
        found = self._holders
        if found is None:
            held: defaultdict[str, list[str]] = defaultdict(list)
            for aid, p in self.policy.principals.items():
                for r in p.roles:
                    held[r].append(aid)
            found = self._holders = {r: frozenset(ids) for r, ids in held.items()}
            self.wide_partners()
        return found

    def wide_partners(self) -> dict[str, frozenset[str]]:
        """Per widely held role (more than ``_FEW`` holders) that shares a holder with
        another one, those others. Made with the holders (at the index build): when no
        two of a permission's roles are partners, every agent holding two of them holds a
        few-held one, and principals_with finds them, and how many agents hold any, from
        the few-held roles' holders alone, without joining 10,000 holders at the
        question (about 0.3 ms). One union of the widely held roles' holders when none
        share (the common case); else those that do are compared pairwise."""
        found = self._wide
        if found is not None and found[0] == _FEW:
            return found[1]
        holders = self.holders
        wide = sorted([r for r, ids in holders.items() if len(ids) > _FEW])
        partners: defaultdict[str, set[str]] = defaultdict(set)
        seen: set[str] = set()
        for r in wide:
            ids = holders[r]
            if not seen.isdisjoint(ids):
                for other in wide:
                    if other == r:
                        break
                    if not holders[other].isdisjoint(ids):
                        partners[r].add(other)
                        partners[other].add(r)
            seen.update(ids)
        done = {r: frozenset(others) for r, others in partners.items()}
        self._wide = (_FEW, done)
        return done

    def attribute_class_of(self, name: str) -> dict[str, Any]:
        """Per declared agent having attribute ``name``, its value class (see
        :func:`_value_class`); made on first use."""
        found = self._attribute_of.get(name)
        if found is None:
            found = self._attribute_of[name] = {
                aid: _value_class(p.attributes[name], aid)
                for aid, p in self.policy.principals.items()
                if p.attributes and name in p.attributes}
        return found

    def attribute_classes(self, name: str) -> list[frozenset[str]]:
        """The declared agents having attribute ``name``, by value class (agents
        lacking it are in none); made on first use."""
        found = self._attribute_classes.get(name)
        if found is None:
            by_class: defaultdict[Any, set[str]] = defaultdict(set)
            for aid, c in self.attribute_class_of(name).items():
                by_class[c].add(aid)
            found = self._attribute_classes[name] = [frozenset(v) for v in by_class.values()]
        return found

    def personal(self, rule: CompiledRule) -> bool:
        """Whether ``rule``'s conditions read the principal (its id, roles or attributes:
        then two agents whose roles meet the same rules may get different answers).
        Found once per rule; a rule that does not, and whose guard needs no folding,
        has its guard kept then too."""
        found = self._personal.get(rule.order)
        if found is None:
            conditions = rule.conditions
            if not conditions:
                return False
            if len(conditions) == 1:  # the common case, without the lists
                cond = conditions[0]
                e = cond.expr
                read = _reads(e)
                found = read & _PRINCIPAL != 0
                if read == _REQUEST and type(e) not in _COMPOUND:  # a plain guard
                    self.guards[rule.order] = _over_cap(
                        rule, e if cond.kind == "when" else _negated(e))
            else:
                reads = [_reads(c.expr) for c in conditions]
                found = any(read & _PRINCIPAL for read in reads)
                if not found:
                    plain = _plain_guard(rule, reads)
                    if plain is not None:
                        self.guards[rule.order] = plain
            self._personal[rule.order] = found
        return found

    # -- cache --
    def cached(self, key: tuple[str, ...]) -> Any:
        return self._answers.get(key)

    def keep(self, key: tuple[str, ...], value: Any) -> Any:
        with self._lock:
            found = self._answers.get(key)
            if found is not None:
                return found
            if len(self._answers) >= ANSWER_CACHE_SIZE:
                self._answers.pop(self._order.popleft(), None)
            self._answers[key] = value
            self._order.append(key)
        return value

    # -- subjects --
    def subject(self, kind: str, name: str) -> _Subject:
        if kind == "agent":
            return _Subject(kind, name, self.policy.principal(name), True, True)
        if kind == "role":
            return _Subject(kind, name, Principal("", frozenset({name}), {}), False, False)
        return _Subject(kind, name, Principal("", frozenset(), {}), False, True)

    def _role_permits(self, role: str) -> frozenset[str]:
        found = self._permits.get("role " + role)
        if found is None:
            buckets = self.buckets
            found = self._permits["role " + role] = frozenset(
                [k for k in self.role_keys.get(role, ()) if buckets[k].by_role[role].permits])
        return found

    def _agent_permits(self, aid: str) -> frozenset[str]:
        found = self._permits.get("agent " + aid)
        if found is None:
            buckets = self.buckets
            found = self._permits["agent " + aid] = frozenset(
                [k for k in self.agent_keys.get(aid, ()) if buckets[k].by_agent[aid].permits])
        return found

    def permit_patterns(self, subject: _Subject) -> set[str]:
        """The patterns of the enforced permits in the subject's scopes."""
        who = subject.principal
        found = set(self._permits[""])
        for r in who.roles:
            if r in self.role_keys:
                found.update(self._role_permits(r))
        if subject.kind == "agent" and who.id in self.agent_keys:
            found.update(self._agent_permits(who.id))
        return found

    def _lists(self, subject: _Subject) -> list[list[str]]:
        """The sorted pattern keys of the subject's scopes (unscoped, its roles, itself)."""
        who = subject.principal
        lists = [self.unscoped_keys]
        lists.extend(self.role_keys[r] for r in who.roles if r in self.role_keys)
        if subject.kind == "agent" and who.id in self.agent_keys:
            lists.append(self.agent_keys[who.id])
        return lists

    def regions(self, subject: _Subject, tops: Iterable[str]) -> list[str]:
        """The patterns whose regions can differ for ``subject`` among ``tops`` (patterns
        of its permits): the tops and every narrower pattern one of its rules names, in
        sorted order, which puts every pattern after the wider ones (``a:*`` before
        ``a:b``: ``*`` sorts before every character a permission may hold)."""
        found = set(tops)
        lists: list[list[str]] | None = None
        every = self.keys
        for top in list(found):
            if top == "*":
                for keys in lists or self._lists(subject):
                    found.update(keys)
                continue
            if not top.endswith(":*"):
                continue
            stem = top[:-1]
            end = top[:-2] + ";"  # the first string after every one starting with stem
            if len(subject.principal.roles) > _FEW_ROLES and (
                    bisect_left(every, end) - bisect_left(every, stem)
                    < len(subject.principal.roles)):
                # fewer pattern keys under ``top`` than scopes (an agent holding 50
                # roles): those keys are read, not every scope's list
                found.update([k for k in every[bisect_left(every, stem):
                                               bisect_left(every, end)]
                              if self._in_scope(subject, k)])
                continue
            if lists is None:
                lists = self._lists(subject)
            for keys in lists:
                found.update(keys[bisect_left(keys, stem):bisect_left(keys, end)])
        return sorted(found)

    def _applicable(self, who: Principal, key: str) -> list[CompiledRule]:
        """``policy.applicable(who, key)`` for a region's pattern: the rules of ``key``
        and every wider pattern in ``who``'s scopes, in declaration order, each bucket's
        roles gone through instead of the principal's when it has fewer (see
        :func:`_parts_of`)."""
        buckets = self.buckets
        found: dict[int, CompiledRule] = {}
        for pattern in (key, *_ancestors(key)):
            b = buckets.get(pattern)
            if b is not None:
                for part in _parts_of(b, who):
                    for r in part.rules:
                        found[r.order] = r
        return [found[k] for k in sorted(found)]

    def _in_scope(self, subject: _Subject, key: str) -> bool:
        """Whether the pattern ``key`` holds a rule of the subject's scopes."""
        b = self.buckets[key]
        who = subject.principal
        return b.unscoped is not None or bool(
            b.by_role and not who.roles.isdisjoint(b.by_role)) or bool(
            subject.kind == "agent" and b.by_agent and who.id in b.by_agent)

    def _scopes(self, subject: _Subject, top: str) -> tuple[str, ...]:
        """The subject's scopes (its roles, itself) with a rule at, under or above the
        pattern ``top``: with the unscoped rules, all that decides the regions under it."""
        who = subject.principal
        named: list[str] = []
        stem = "" if top == "*" else top[:-1] if top.endswith(":*") else None
        buckets = self.buckets
        wider = [buckets[a] for a in _ancestors(top) if a in buckets]
        if stem != "" and len(who.roles) > _FEW_ROLES:
            # Few pattern keys at or under ``top`` and many roles (an agent holding 50):
            # the scopes are read off those keys' rules, not looked up role by role
            if stem is None:
                under = [top] if top in buckets else []
                few = len(wider) + len(under) < len(who.roles)
            else:
                every = self.keys
                lo = bisect_left(every, stem)
                hi = bisect_left(every, top[:-2] + ";")
                few = len(wider) + hi - lo < len(who.roles)
                under = every[lo:hi] if few else []
            if few:
                roles: set[str] = set()
                mine = False
                for b in chain(wider, [buckets[k] for k in under]):
                    if b.by_role:
                        roles.update(who.roles.intersection(b.by_role))
                    if b.by_agent and subject.kind == "agent" and who.id in b.by_agent:
                        mine = True
                named = [f"role {r}" for r in sorted(roles)]
                if mine:
                    named.append(f"agent {who.id}")
                return tuple(named)
        candidates = [(f"role {r}", self.role_keys.get(r, ()), r, True)
                      for r in sorted(who.roles)]
        if subject.kind == "agent":
            candidates.append((f"agent {who.id}", self.agent_keys.get(who.id, ()), who.id,
                               False))
        for label, keys, name, is_role in candidates:
            if any(name in (b.by_role if is_role else b.by_agent) for b in wider):
                named.append(label)
                continue
            i = bisect_left(keys, top if stem is None else stem)
            if i < len(keys) and (keys[i] == top if stem is None
                                  else keys[i].startswith(stem)):
                named.append(label)
        return tuple(named)

    def _groups(self, subject: _Subject) -> dict[str, list[str]]:
        """The subject's permit patterns, by the widest pattern holding each."""
        tops = self.permit_patterns(subject)
        groups: dict[str, list[str]] = {}
        for top in tops:
            widest = top
            for a in _ancestors(top):
                if a in tops:
                    widest = a
            groups.setdefault(widest, []).append(top)
        return groups

    def permissions(self, subject: _Subject) -> Entries:
        """Every line of ``subject``, complete (its length exact, every line decided):
        per widest permit pattern, the regions under it, kept per (pattern, the
        subject's scopes that have rules there) when no rule involved reads the
        principal (then every principal with those scopes there has the same lines).
        The lines are made for the subject when the answer is first read."""
        folder = _Folder(subject, self)
        found_all: list[_Rows] = []
        for widest, inside in self._groups(subject).items():
            ckey = (widest, self._scopes(subject, widest))
            found = self._subtrees.get(ckey)
            if found is None:
                found = self._overlaid(subject, folder, ckey)
            if found is None:
                found = self._work(subject, folder, ckey, self.regions(subject, inside))
            if found.rows:
                found_all.append(found)
        if len(found_all) > 1:
            # Two widest patterns are disjoint, so the regions under each form one run
            # of the sorted patterns: ordering the runs orders every line.
            found_all.sort(key=_first_pattern)
        return Entries(sum([part.count for part in found_all]),
                       partial(_made, subject.name, subject.kind, found_all))

    def _work(self, subject: _Subject, folder: _Folder, ckey: tuple[str, tuple[str, ...]],
              regions: list[str], printed: bool = False) -> _Rows:
        found, mine = self._subtree(subject, folder, regions, printed)
        if not mine:
            self._share(ckey, found)
        return found

    def _share(self, ckey: tuple[str, tuple[str, ...]], found: _Rows) -> None:
        if len(self._subtrees) >= ANSWER_CACHE_SIZE:
            self._subtrees.clear()
        self._subtrees[ckey] = found

    def _scope_keys(self, labels: Iterable[str], widest: str) -> list[str] | None:
        """The pattern keys at which the scopes ``labels`` (``role NAME``, ``agent ID``)
        have rules under ``widest``; None when one of them has a rule at ``widest`` or
        a wider pattern (then every region under ``widest`` may change)."""
        found: list[str] = []
        above = [b for b in (self.buckets.get(a) for a in (widest, *_ancestors(widest)))
                 if b is not None]
        for label in labels:
            kind, _, name = label.partition(" ")
            if kind == "role":
                keys = self.role_keys.get(name, ())
                if any(name in b.by_role for b in above):
                    return None
            else:
                keys = self.agent_keys.get(name, ())
                if any(name in b.by_agent for b in above):
                    return None
            if widest == "*":
                found.extend(keys)
            elif widest.endswith(":*"):
                found.extend(keys[bisect_left(keys, widest[:-1]):
                                  bisect_left(keys, widest[:-2] + ";")])
        return found

    def _overlaid(self, subject: _Subject, folder: _Folder,
                  ckey: tuple[str, tuple[str, ...]]) -> _Rows | None:
        """The regions under ``ckey``'s widest pattern for ``subject``, made from those
        already worked out for fewer of its scopes there (``base``: none of them, or one,
        such as a role granting ``*`` whose regions the index build worked out) with the
        rules of its other scopes laid over them; None when no such regions are kept, or
        when another scope has a rule at or above the widest pattern.

        The rules the other scopes add sit at a few pattern keys (``extra``). A region no
        such key matches is decided by the same rules as in ``base``, and so is listed
        (or not) as there, with the same lines: only the regions under each widest extra
        key (a *root*) are worked out again, starting from what holds just above the root
        (the rules of the patterns wider than it), and spliced in place of the base rows
        under that root. The row whose lines hold just above a root is the only row
        outside the root that excludes patterns under it: its exclusions there are
        replaced too. Answers a principal holding ``*`` and a role with rules of its own
        in microseconds instead of working out every region (about 5 µs each)."""
        widest, scopes = ckey
        choice: tuple[_Rows, list[str]] | None = None
        for label in ((), *((s,) for s in scopes)):
            base = self._subtrees.get((widest, label))
            if base is None:
                continue
            extra = self._scope_keys([s for s in scopes if s not in label], widest)
            if extra is not None and (choice is None or len(extra) < len(choice[1])):
                choice = (base, extra)
        if choice is None:
            return None
        base, extra = choice
        roots: list[str] = []
        for key in sorted(set(extra)):
            if roots:
                last = roots[-1]
                if key == last or (last[-1] == "*" and key.startswith(last[:-1])):
                    continue  # under the previous root
            roots.append(key)
        old = base.rows
        rows = list(old)
        runs: list[tuple[int, int, list[tuple[str, tuple[str, ...], tuple[_Line, ...]]]]] = []
        count = base.count
        who = subject.principal
        mine = False
        for root in roots:
            if root[-1] == "*":
                lo, hi = root[:-1], root[:-2] + ";"
            else:
                lo, hi = root, root + "\0"
            begin = bisect_left(old, lo, key=_first_pattern_of_row)
            end = bisect_left(old, hi, key=_first_pattern_of_row)
            # what holds just above the root: the rules of the wider patterns, and the
            # listed row whose lines those are (the nearest wider listed pattern)
            folder.read_principal = False
            wider = _ancestors(root)
            state = _extend(_EMPTY, self.policy.applicable(who, _rep(wider[0])), folder,
                            _NONE)
            held = _sig(state)
            mine = mine or folder.read_principal
            h = -1
            for a in wider:
                i = bisect_left(old, a, key=_first_pattern_of_row)
                if i < len(old) and old[i][0] == a:
                    h = i
                    break
                if a == widest:
                    break
            if held and h < 0:
                return None  # not as expected: work every region out instead
            above: list[str] = []
            found, personal = self._subtree(subject, folder, self.regions(subject, [root]),
                                            start=(held, (root, above, ())))
            mine = mine or personal
            if h >= 0:
                hkey, ex, lines = rows[h]
                i = bisect_left(ex, lo)
                j = bisect_left(ex, hi)
                if above or i < j:
                    rows[h] = (hkey, (*ex[:i], *above, *ex[j:]), lines)
            count += found.count - sum([len(row[2]) for row in old[begin:end]])
            runs.append((begin, end, found.rows))
        out: list[tuple[str, tuple[str, ...], tuple[_Line, ...]]] = []
        at = 0
        for begin, end, new in runs:
            out.extend(rows[at:begin])
            out.extend(new)
            at = end
        out.extend(rows[at:])
        made = _Rows(out, count)
        if not mine:
            self._share(ckey, made)
        return made

    def _prepare(self) -> None:
        """Work out now the regions that cost the most at a question or that several
        principals share: those under ``*`` for each role and agent granted ``*`` (every
        unscoped rule splits them: the largest answers), under the unscoped permits'
        patterns, and under the patterns of each role that two or more agents hold, most
        held first; within two regions per pattern key of the policy in all, with their
        residuals printed. What a role's regions hold is kept for every principal whose
        scopes have the same rules there (see :meth:`permissions`): an agent holding a
        role granting ``*`` and no other role with rules gets its answer from them, and
        one with other roles (or rules of its own) under ``*`` from them with those rules
        laid over (see :meth:`_overlaid`)."""
        budget = 2 * len(self.keys)
        subjects: list[_Subject] = []
        every = self.buckets.get("*")
        if every is not None:
            subjects.extend(self.subject("role", r) for r, part in
                            sorted(every.by_role.items()) if part.permits)
            subjects.extend(self.subject("agent", a) for a, part in
                            sorted(every.by_agent.items()) if part.permits)
        if self._permits[""]:
            subjects.append(self.subject("anyone", "*"))
        # the holders of each role, made now (principals_with reads them too): no more
        # than counting them
        held = self.holders
        shared = sorted([r for r, ids in held.items() if len(ids) > 1],
                        key=lambda r: (-len(held[r]), r))
        subjects.extend(self.subject("role", r) for r in shared)
        for subject in subjects:
            folder = _Folder(subject, self)
            for widest, inside in self._groups(subject).items():
                ckey = (widest, self._scopes(subject, widest))
                if ckey in self._subtrees:
                    continue
                regions = self.regions(subject, inside)
                if len(regions) > budget:
                    continue
                budget -= len(regions)
                # printed now: every holder's answer shows them
                self._work(subject, folder, ckey, regions, printed=True)

    def _subtree(self, subject: _Subject, folder: _Folder, regions: list[str],
                 printed: bool = False, start: tuple[_Sig, Any] | None = None
                 ) -> tuple[_Rows, bool]:
        """The lines of ``regions`` (under one widest pattern: see :meth:`regions`), and
        whether a rule involved reads the principal (``printed``: the residuals printed
        now, else when first read). ``start``: what holds just above the first region
        and the row whose lines those are (see :meth:`_overlaid`), else nothing."""
        policy = self.policy
        who = subject.principal
        nested = self.nested
        buckets = self.buckets
        rows: list[tuple[str, list[str], tuple[_Line, ...]]] = []
        folder.read_principal = False
        # The regions come sorted, each after the wider ones and every ``a:*`` followed
        # by all the patterns under it. The open ``a:*`` regions form a stack of (the
        # prefix of what it matches, the rules deciding it (see _State), and the listed
        # region whose lines hold for it: what its lines are made of (_Sig), its row).
        # A region whose lines are made of the same as those that hold for the region
        # around it is not listed apart.
        stack: list[tuple[str, _State, _Sig, Any]] = []
        many = len(who.roles) > _FEW_ROLES
        for key in regions:
            while stack and not key.startswith(stack[-1][0]):
                stack.pop()
            if stack:
                _, above, held, row = stack[-1]
                # the parent region's rules and this pattern's own: any pattern between
                # the two has no rule in the subject's scope (it would be a region)
                if many:
                    parts = _parts_of(buckets[key], who)
                else:
                    parts = []
                    buckets[key].parts_for(who, parts)
                if len(parts) == 1:
                    rules: Sequence[CompiledRule] = parts[0].rules
                else:  # a rule scoped to two of the subject's roles
                    rules = list({r.order: r for part in parts for r in part.rules}.values())
                state = _extend(above, rules, folder, nested)
            else:
                # a widest region: every wider pattern's rules, from the index
                rules = self._applicable(who, key) if many else policy.applicable(
                    who, _rep(key))
                state = _extend(_EMPTY, rules, folder, _NONE)
                held, row = start if start is not None else ((), None)
            sig = _sig(state)
            if sig != held:
                if held:
                    row[1].append(key)  # the regions come sorted: so do the exclusions
                row = (key, [], _region_lines(state, folder, printed))
                rows.append(row)
            if key[-1] == "*":
                stack.append((key[:-1], state, sig, row))
        # whether a guard that decides a line read the principal (the guards of the rules
        # a region meets after a forbid that always applies decide nothing)
        mine = folder.read_principal
        return _Rows([(key, tuple(ex) if ex else (), lines) for key, ex, lines in rows]), mine

    def lines(self, rules: Sequence[CompiledRule], folder: _Folder,
              key: tuple[int, ...] | None) -> tuple[tuple[_Line, ...], _Sig]:
        """:func:`_lines` of ``rules`` (in any order, repeats allowed) and what an answer
        compares of them (status and residuals), kept under ``key`` when given: a key
        names one set of rules none of which reads the principal, whose lines are then
        the same for every principal the rules apply to."""
        found = self._lines.get(key) if key is not None else None
        if found is None:
            by_order = {r.order: r for r in rules}
            state = _extend(_EMPTY, [by_order[k] for k in sorted(by_order)], folder,
                            frozenset())
            found = (_region_lines(state, folder), _sig(state))
            if key is not None:
                if len(self._lines) >= ANSWER_CACHE_SIZE:
                    self._lines.clear()  # tuples of a few strings, made again on next use
                self._lines[key] = found
        return found

    def access(self, subject: _Subject, permission: str) -> tuple[Access, ...]:
        """The lines of ``subject`` for one concrete permission."""
        folder = _Folder(subject, self)
        rules = self.policy.applicable(subject.principal, permission)
        key = None if any(self.personal(r) for r in rules) else tuple(r.order for r in rules)
        return tuple(Access(subject.name, subject.kind, permission, (), s, w, u, r)
                     for s, w, u, r in self.lines(rules, folder, key)[0])

    def _groups_by_roles(self, agents: set[str], scoped: set[str], union: set[str] | None
                         ) -> list[Collection[str]]:
        """``agents`` (declared ones) grouped by the roles of ``scoped`` they hold
        (``union``: their holders, when known). When no agent holds two of them (the
        common case), the groups are the roles' holders, found with set operations,
        without a step per agent; else the agents holding two or more are found with set
        operations too, and only they are grouped one by one (10,000 agents of whom 50
        hold two: 1.5 ms instead of 7)."""
        holders = self.holders
        held = [holders[r] for r in scoped if r in holders]
        if union is None:
            union = set().union(*held)
        within = union is agents or union <= agents
        groups: list[Collection[str]]
        extra = sum(map(len, held)) - len(union)  # roles held beyond the first
        if not extra and within:
            groups = [ids for ids in held if ids]
            if len(union) < len(agents):
                groups.append(agents - union)
            return groups
        several = self._several(held, frozenset(scoped), extra)
        several.intersection_update(agents)
        groups = []
        for ids in held:
            # holding this role alone of ``scoped``
            only: AbstractSet[str] = ids if within else agents.intersection(ids)
            if several and not several.isdisjoint(only):
                only = only - several
            if only:
                groups.append(only)
        if not within or len(union) < len(agents):  # some hold none of the roles
            rest = agents - union
            if rest:
                groups.append(rest)
        groups.extend(self._by_roles_held(several, frozenset(scoped).intersection))
        return groups

    def _held_apart(self, scoped: set[str]) -> list[Collection[str]] | None:
        """The holders of the roles ``scoped``, grouped by the roles of ``scoped`` they
        hold, without joining them (see :meth:`wide_partners`); None when two of those
        roles widely held share a holder (then :meth:`_groups_by_roles` finds them)."""
        holders = self.holders
        partners = self.wide_partners()
        if partners and any(r in partners and not partners[r].isdisjoint(scoped)
                            for r in scoped):
            return None
        held = [holders[r] for r in scoped if r in holders]
        keep = frozenset(scoped).intersection
        declared = self.policy.principals
        several: set[str] = set()
        for ids in held:
            if len(ids) <= _FEW:
                for aid in ids:
                    if aid not in several and len(keep(declared[aid].roles)) > 1:
                        several.add(aid)
        groups: list[Collection[str]] = []
        for ids in held:
            if several and not several.isdisjoint(ids):
                only = ids - several
                if only:
                    groups.append(only)
            elif ids:
                groups.append(ids)
        groups.extend(self._by_roles_held(several, keep))
        return groups

    def _by_roles_held(self, several: Iterable[str],
                       keep: Callable[[Iterable[str]], frozenset[str]]
                       ) -> Iterable[list[str]]:
        """``several`` (agents) grouped by ``keep`` of their roles."""
        declared = self.policy.principals
        found: dict[frozenset[str], list[str]] = {}
        for aid in several:
            signature = keep(declared[aid].roles)
            group = found.get(signature)
            if group is None:
                found[signature] = [aid]
            else:
                group.append(aid)
        return found.values()

    def _several(self, held: list[frozenset[str]], scoped: frozenset[str], extra: int
                 ) -> set[str]:
        """The agents holding two or more of the roles ``scoped`` (``held``: their
        holders; ``extra``: how many roles they hold beyond the first, all told). The
        holders of the few-held roles are looked at one by one; when the roles they hold
        beyond the first make up ``extra``, no other agent holds two, and the widely held
        roles are not gone through (120 roles of 10,000 agents, 50 of them holding two:
        about 0.1 ms instead of 1); else found with set operations over every holder."""
        declared = self.policy.principals
        several: set[str] = set()
        counted = 0
        for ids in held:
            if len(ids) <= _FEW:
                for aid in ids:
                    if aid not in several:
                        k = len(scoped.intersection(declared[aid].roles))
                        if k > 1:
                            several.add(aid)
                            counted += k - 1
        if counted == extra:
            return several
        seen: set[str] = set()
        several = set()
        for ids in held:
            several.update(seen.intersection(ids))
            seen.update(ids)
        return several

    def _ordered(self, ids: dict[str, Any]) -> Iterable[str]:
        """``ids`` (agents) sorted: a large part of every agent is read off the
        agents sorted once (its groups come in set order: sorting 10,000 ids in that
        order cost about 1 ms more than reading them off)."""
        declared = self.policy.principals
        if len(ids) * 8 < len(declared):
            return sorted(ids)
        found = self._sorted_agents
        if found is None or len(found) != len(declared):
            found = self._sorted_agents = sorted(declared)
        out = [aid for aid in found if aid in ids]
        # a rule may name an agent the policy does not declare
        return out if len(out) == len(ids) else sorted(ids)

    def written_in(self, rule: CompiledRule) -> bool:
        """Whether ``rule`` reads the principal only to write its values into a residual:
        every part of its conditions (below ``and``, ``or``, ``not``) that reads the
        principal also reads the request, so folding it for any agent leaves the same
        residual with that agent's id or attributes written in (or the path, when an
        attribute is missing), never true or false. Found once per rule."""
        found = self._written_in.get(rule.order)
        if found is None:
            found = self._written_in[rule.order] = all(
                _writes_in(c.expr) for c in rule.conditions)
        return found

    def _written(self, lines: Sequence[Access], aid: str) -> Iterator[Access]:
        """``lines`` (worked out for another agent with the same roles, see
        :meth:`written_in`) for the agent ``aid``: the same lines, their residuals printed
        with its own values when read."""
        folder = _Folder(self.subject("agent", aid), self)
        for line in lines:
            yield Access(aid, "agent", line.pattern, line.excluding, line.status,
                         _rewritten(line._when, folder), _rewritten(line._unless, folder),
                         line.rules)

    def _sharing(self, permission: str, every: Sequence[CompiledRule],
                 classify: Callable[[Principal], Any] | None = None
                 ) -> Callable[[_Subject], tuple[Access, ...]]:
        """:meth:`access` for ``permission`` (``every``: its candidate rules, none of
        which reads the principal but to write its values in: see :meth:`written_in`),
        for many subjects in turn: the unscoped rules are
        folded into a state once, and each subject's lines are that state with the rules
        of its roles and its own laid over it (a permission fifty unscoped forbids decide,
        asked for 120 groups of agents and roles: each group's rules are not gone
        through again). With ``classify`` (some rule decides on the principal: see
        :func:`_classifier`), that state is folded once per value class of the agents
        and once per role or ``anyone``, since it may differ between them."""
        unscoped = [r for r in every if not r.roles and not r.agents]
        by_role: dict[str, list[CompiledRule]] = {}
        by_agent: dict[str, list[CompiledRule]] = {}
        for r in every:
            for role in r.roles:
                by_role.setdefault(role, []).append(r)
            for aid in r.agents:
                by_agent.setdefault(aid, []).append(r)
        base: dict[Any, _State] = {}

        def access(subject: _Subject) -> tuple[Access, ...]:
            folder = _Folder(subject, self)
            who = subject.principal
            if classify is None:
                bkey: Any = None
            elif subject.kind == "agent":
                bkey = ("agent", classify(who))
            else:
                bkey = (subject.kind, subject.name)
            if bkey in base:
                state = base[bkey]
            else:
                state = base[bkey] = _extend(_EMPTY, unscoped, folder, _NONE)
            found: dict[int, CompiledRule] = {}
            for role in who.roles:
                mine = by_role.get(role)
                if mine is not None:
                    for r in mine:
                        found[r.order] = r
            if subject.kind == "agent":
                for r in by_agent.get(who.id, ()):
                    found[r.order] = r
            if found:
                state = _extend(state, [found[k] for k in sorted(found)], folder, _NONE)
            name, kind = subject.name, subject.kind
            return tuple([Access(name, kind, permission, (), s, w, u, ids)
                          for s, w, u, ids in _region_lines(state, folder)])
        return access

    def principals(self, permission: str) -> Entries:
        """The lines of ``principals_with(permission)``: complete (the length is exact,
        every principal's lines are decided); the lines of agents that share them are
        made for each agent when the answer is first read."""
        policy = self.policy
        every = policy.candidates(permission)
        candidates = [r for r in every if r.effect == "permit" and r.mode == "enforce"]
        everyone = any(not r.roles and not r.agents for r in candidates)
        roles: set[str] = set()
        for r in candidates:
            roles.update(r.roles)
        # Agents whose roles meet the same rules and whom no rule names get the same
        # lines, unless a condition reads the principal.
        scoped: set[str] = set()
        named: set[str] = set()
        personal = False
        # whether every rule that reads the principal only writes its values into a
        # residual (``context.owner == principal.id``): then agents whose roles meet the
        # same rules get lines of the same shape, each with its own values written in
        written = True
        deciding: list[CompiledRule] = []
        for r in every:
            scoped.update(r.roles)
            named.update(r.agents)
            if self.personal(r):
                personal = True
                if not self.written_in(r):
                    written = False
                    deciding.append(r)
        templated = personal and written
        classify: _Classes | None = None
        if templated:
            personal = False
        elif personal:
            # some rule decides on the principal (``principal.attributes.tier ==
            # "vip"``): agents with the same roles and the same values of what those
            # rules read fold alike, each group worked out once
            classify = _classifier(deciding)
            if classify is not None:
                personal = False
                templated = True  # the lines of the rules that write values in
        look = partial(self.access, permission=permission) if personal else \
            self._sharing(permission, every, classify.of if classify is not None else None)
        # with no agent named and no unscoped permit, the agents are the holders of the
        # roles the permits name: when the rules name no other role, those are the
        # holders of every role the rules name, and when no two of those roles widely
        # held share a holder, the groups are found without joining the holders
        holding = not (everyone or named) and scoped == roles
        groups = self._held_apart(scoped) if holding and not personal else None
        parts: list[tuple[tuple[Access, ...], Collection[str]]] = []
        if groups is None:
            agents: set[str] = set()
            for r in candidates:
                agents.update(r.agents)
            if everyone:
                agents.update(policy.principals)
            else:
                holders = self.holders
                agents.update(*[holders[role] for role in roles if role in holders])
            alone = agents if personal else agents & named
            # per agent worked out alone, and per group of agents sharing lines: their
            # lines (for the first agent of the group) and the agents
            parts.extend([(look(self.subject("agent", aid)), (aid,)) for aid in alone])
            if not personal:
                rest = agents - alone if alone else agents
                groups = self._groups_by_roles(rest, scoped, agents if holding else None)
        by_role = {role: look(self.subject("role", role)) for role in sorted(roles)}
        if groups is not None:
            if classify is not None:
                groups = classify.split(groups, self)
            # no rule reads the principal: the agents holding one role of those the rules
            # name (and named by none) get that role's lines, under their own names
            shared = not personal and not templated
            keep = frozenset(scoped).intersection
            declared = policy.principals
            for ids in groups:
                first = next(iter(ids))
                who = declared.get(first) if shared else None
                if who is not None:
                    mine = keep(who.roles)
                    if len(mine) == 1:
                        (role,) = mine
                        if role in by_role:
                            parts.append((by_role[role], ids))
                            continue
                parts.append((look(self.subject("agent", first)), ids))
        parts = [part for part in parts if part[0]]
        tail: list[Access] = []
        for role in sorted(roles):
            tail.extend(by_role[role])
        if everyone:
            tail.extend(look(self.subject("anyone", "*")))
        total = sum(len(lines) * len(ids) for lines, ids in parts) + len(tail)

        def make() -> tuple[Access, ...]:
            lines_of = {aid: lines for lines, ids in parts for aid in ids}
            out: list[Access] = []
            for aid in self._ordered(lines_of):
                lines = lines_of[aid]
                if lines[0].principal == aid and lines[0].kind == "agent":
                    out.extend(lines)
                elif templated:
                    out.extend(self._written(lines, aid))
                else:
                    out.extend(_renamed(lines, aid, "agent"))
            out.extend(tail)
            return tuple(out)
        return Entries(total, make)


#: What an expression reads (bits): the principal, the request (``context``, ``amount``,
#: ``grant``).
_PRINCIPAL = 1
_REQUEST = 2
_COMPOUND = (ast.And, ast.Or, ast.Not)
_CONSTANT = (ast.Literal, ast.MoneyLit)


def _reads(e: ast.Expr) -> int:
    kind = type(e)
    if kind is ast.Path:
        return _PRINCIPAL if e.root == "principal" else _REQUEST  # type: ignore[union-attr]
    if kind is ast.Compare:
        left, right = e.left, e.right  # type: ignore[union-attr]
        if type(left) is ast.Path and type(right) in _CONSTANT:  # ``context.n > 3``
            return _PRINCIPAL if left.root == "principal" else _REQUEST
        return _reads(left) | _reads(right)
    if kind is ast.Literal or kind is ast.MoneyLit:
        return 0
    if kind is ast.Amount:
        return _REQUEST
    out = 0
    for c in ast.children(e):
        out |= _reads(c)
    return out


def _writes_in(e: ast.Expr) -> bool:
    """Whether every part of ``e`` below ``and``, ``or`` and ``not`` that reads the
    principal reads the request too (so it folds to a residual for every agent)."""
    kind = type(e)
    if kind is ast.And or kind is ast.Or:
        return all(_writes_in(i) for i in e.items)  # type: ignore[union-attr]
    if kind is ast.Not:
        return _writes_in(e.expr)  # type: ignore[union-attr]
    read = _reads(e)
    return not read & _PRINCIPAL or bool(read & _REQUEST)


class _Reads:
    """What the parts of some rules' conditions that read the principal but not the
    request read of it (those parts fold to true, false or an error, alike for agents
    whose values there are alike)."""

    __slots__ = ("all_attributes", "attributes", "exact", "ids", "roles")

    def __init__(self) -> None:
        self.ids: set[Any] = set()  # literals principal.id is compared with (== != in)
        self.attributes: set[str] = set()
        self.all_attributes = False
        self.roles = False
        self.exact = False  # principal.id read otherwise: each agent its own class

    def leaf(self, e: ast.Expr) -> None:
        kind = type(e)
        if kind is ast.And or kind is ast.Or:
            for i in e.items:  # type: ignore[union-attr]
                self.leaf(i)
            return
        if kind is ast.Not:
            self.leaf(e.expr)  # type: ignore[union-attr]
            return
        read = _reads(e)
        if read & _PRINCIPAL and not read & _REQUEST:  # folded to a value
            self.walk(e)

    def walk(self, e: ast.Expr) -> None:
        kind = type(e)
        if kind is ast.Compare and e.op in ("==", "!="):  # type: ignore[union-attr]
            left, right = e.left, e.right  # type: ignore[union-attr]
            if _is_id(left) and type(right) is ast.Literal:
                self.ids.add(right.value)
                return
            if _is_id(right) and type(left) is ast.Literal:
                self.ids.add(left.value)
                return
        elif (kind is ast.In and _is_id(e.item)  # type: ignore[union-attr]
              and type(e.collection) is ast.ListExpr  # type: ignore[union-attr]
              and all(type(i) is ast.Literal
                      for i in e.collection.items)):  # type: ignore[union-attr]
            self.ids.update(i.value for i in e.collection.items)  # type: ignore
            return
        elif kind is ast.Path:
            if e.root == "principal":  # type: ignore[union-attr]
                segments = e.segments  # type: ignore[union-attr]
                head = segments[0] if segments else ""
                if head == "roles":
                    self.roles = True
                elif head == "attributes":
                    if len(segments) > 1:
                        self.attributes.add(segments[1])
                    else:
                        self.all_attributes = True
                else:
                    self.exact = True
            return
        for c in ast.children(e):
            self.walk(c)


def _is_id(e: ast.Expr) -> bool:
    return (type(e) is ast.Path and e.root == "principal"
            and e.segments == ("id",))


#: An attribute a principal does not have (one value class: it fails to evaluate alike).
_ABSENT = ("absent",)
#: An id equal to none of the literals it is compared with.
_OTHER_ID = ("other",)


def _value_class(value: Any, aid: str) -> Any:
    """Agents whose values have the same class fold alike: the same type and value
    (a decimal by its digits, ``1`` and ``True`` apart), absent alike; a value of any
    other type is its agent's own class."""
    if value is _MISSING:
        return _ABSENT
    kind = type(value)
    if kind is str or kind is int or kind is bool:
        return (kind.__name__, value)
    if kind is Decimal:
        return ("Decimal", str(value))
    return ("agent", aid)


class _Classes:
    """The value classes of agents for some rules deciding on the principal (see
    :class:`_Reads`): agents of one class with the same roles get the same lines (the
    values the rules write into residuals aside)."""

    __slots__ = ("attributes", "every_attribute", "ids", "roles")

    def __init__(self, reads: _Reads) -> None:
        self.ids = frozenset(v for v in reads.ids if type(v) is str)
        self.attributes = sorted(reads.attributes)
        self.every_attribute = reads.all_attributes
        self.roles = reads.roles

    def of(self, who: Principal) -> Any:
        """The class of one agent (also what the unscoped state is kept under)."""
        attrs = who.attributes
        aid = who.id
        if self.every_attribute:
            values: Any = tuple(sorted((k, _value_class(v, aid)) for k, v in attrs.items()))
        else:
            values = tuple([_value_class(attrs.get(n, _MISSING), aid)
                            for n in self.attributes])
        return (aid if aid in self.ids else _OTHER_ID, who.roles if self.roles else None,
                values)

    def split(self, groups: list[Collection[str]], index: QueryIndex
              ) -> list[Collection[str]]:
        """``groups`` (of agents with the same roles) split by class: with set
        operations (the agents an id literal names, then each attribute's classes, found
        once per attribute for every agent), one by one only when the rules read the
        roles or every attribute (10,000 agents: about 0.1 ms instead of 9)."""
        declared = index.policy.principals
        if self.roles or self.every_attribute:
            out: list[Collection[str]] = []
            for ids in groups:
                found: dict[Any, list[str]] = {}
                for aid in ids:
                    found.setdefault(self.of(declared[aid]), []).append(aid)
                out.extend(found.values())
            return out
        parts: list[AbstractSet[str]] = []
        named = self.ids
        for ids in groups:
            rest = ids if isinstance(ids, AbstractSet) else set(ids)
            if named:
                alone = named.intersection(rest)
                if alone:
                    rest = rest - alone
                    parts.extend({aid} for aid in alone)
            if rest:
                parts.append(rest)
        for name in self.attributes:
            classes = index.attribute_classes(name)
            if not classes:
                continue  # no agent has it: absent alike
            split: list[AbstractSet[str]] = []
            for part in parts:
                if len(part) == 1:
                    split.append(part)
                    continue
                if len(classes) <= len(part) // 4:
                    rest = part
                    for members in classes:
                        inside = rest & members
                        if inside:
                            split.append(inside)
                            rest = rest - inside
                            if not rest:
                                break
                    if rest:
                        split.append(rest)  # absent
                else:
                    by_value = index.attribute_class_of(name)
                    found_sets: dict[Any, set[str]] = {}
                    for aid in part:
                        found_sets.setdefault(by_value.get(aid, _ABSENT), set()).add(aid)
                    split.extend(found_sets.values())
            parts = split
        return list(parts)


def _classifier(rules: Sequence[CompiledRule]) -> _Classes | None:
    """The value classes of agents for ``rules`` (those deciding on the principal).
    None when the rules read the id otherwise than against literals (each agent is
    then worked out alone)."""
    reads = _Reads()
    for r in rules:
        for c in r.conditions:
            reads.leaf(c.expr)
    return None if reads.exact else _Classes(reads)


def _rewritten(text: str | _Text | None, folder: _Folder) -> str | _Text | None:
    """A residual's text printed with ``folder``'s principal (see
    QueryIndex._written)."""
    if isinstance(text, _Text):
        return _Text(folder, text.first, text.second)
    return text


def paused(work: Callable[[], _T]) -> _T:
    """``work()`` with the cyclic garbage collector paused: an answer allocates tens of
    thousands of small objects, none of them garbage, and each collection they trigger
    would otherwise scan the whole compiled policy (a 10,000-rule answer took 0.4 s
    instead of 0.05 s when a full collection fell into it). Reference counting still
    frees everything as usual."""
    if not gc.isenabled():
        return work()
    gc.disable()
    try:
        return work()
    finally:
        gc.enable()


def index_of(policy: CompiledPolicy) -> QueryIndex:
    found: QueryIndex | None = policy.query_index
    if found is None:
        found = paused(lambda: QueryIndex(policy))
        policy.query_index = found
    return found


# ---- the three queries -----------------------------------------------------------------------

def _check_limit(limit: int | None) -> None:
    if limit is not None and (type(limit) is not int or limit < 0):
        raise ValueError("limit must be a non-negative integer or None")


def _principal_id(principal: Any) -> str:
    if type(principal) is not str:
        raise TypeError(f"principal must be a string, not {type(principal).__name__}")
    if not principal or len(principal) > 256:
        raise ValueError("principal id must be 1 to 256 characters")
    return principal


def _cut(entries: Sequence[Access], limit: int | None) -> tuple[Sequence[Access], bool]:
    if limit is None or len(entries) <= limit:
        return entries, False
    if isinstance(entries, Entries):
        return entries.head(limit), True
    return tuple(entries[:limit]), True



def permissions_of(policy: CompiledPolicy, principal: str | None = None, *,
                   role: str | None = None, limit: int | None = None) -> Permissions:
    """Every permission pattern ``principal`` (or a holder of only ``role``) may exercise,
    with status and residual conditions. See the module docstring."""
    _check_limit(limit)
    if (principal is None) == (role is None):
        raise TypeError("give exactly one of principal or role=")
    if principal is not None:
        kind, name = "agent", _principal_id(principal)
    else:
        if type(role) is not str or not role:
            raise TypeError("role must be a non-empty string")
        kind, name = "role", role
    index = index_of(policy)
    key = ("permissions", kind, name)
    entries = index.cached(key)
    if entries is None:
        subject = index.subject(kind, name)
        entries = index.keep(key, paused(lambda: index.permissions(subject)))
    shown, truncated = _cut(entries, limit)
    return Permissions(name, kind, shown, len(entries), truncated,
                       kind != "agent" or name in policy.principals)


def principals_with(policy: CompiledPolicy, permission: str, *, limit: int | None = None
                    ) -> Principals:
    """Every principal that may exercise ``permission``: declared agents, roles (a holder
    of only that role) whose own rules permit it, and ``anyone`` when an unscoped permit
    does."""
    _check_limit(limit)
    validate_permission(permission)
    index = index_of(policy)
    key = ("principals", permission)
    entries = index.cached(key)
    if entries is None:
        entries = index.keep(key, paused(lambda: index.principals(permission)))
    shown, truncated = _cut(entries, limit)
    return Principals(permission, shown, len(entries), truncated)


#: Cached for a tool name no tool statement binds.
_UNBOUND = object()


def _tool_name(tool: Any) -> str | None:
    if type(tool) is str:
        return tool
    name = tool.get("name") if isinstance(tool, dict) else getattr(tool, "name", None)
    return name if type(name) is str else None


def filter_tools(policy: CompiledPolicy, principal: str, tools: Iterable[Any], *,
                 transport: str = "mcp") -> FilteredTools:
    """The tools of ``tools`` that ``principal`` may call through ``transport`` (``mcp``
    or ``function``): bound by a tool statement to a permission the principal has a line
    for (allowed or pending, whatever its residual)."""
    name = _principal_id(principal)
    if transport not in ("mcp", "function"):
        raise ValueError("transport must be 'mcp' or 'function'")
    index = index_of(policy)
    named = policy.tools.named if policy.tools is not None else ()
    kept: list[Any] = []
    out: list[ToolAccess] = []
    subject: _Subject | None = None
    for tool in tools:
        tool_name = _tool_name(tool)
        binding = None
        if tool_name is not None:
            bkey = ("tool", transport, tool_name)
            binding = index.cached(bkey)
            if binding is None:
                binding = index.keep(bkey, next(
                    (n for n in named if n.kind == transport and n.name.matches(tool_name)),
                    _UNBOUND))
            if binding is _UNBOUND:
                binding = None
        if binding is None:
            out.append(ToolAccess(tool_name, None, None, ()))
            continue
        key = ("access", name, binding.permission)
        lines = index.cached(key)
        if lines is None:
            if subject is None:
                subject = index.subject("agent", name)
            lines = index.keep(key, index.access(subject, binding.permission))
        out.append(ToolAccess(tool_name, binding.qid, binding.permission, lines))
        if lines:
            kept.append(tool)
    return FilteredTools(name, transport, tuple(kept), tuple(out),
                         name in policy.principals)

