"""Partial evaluation for the reverse queries: a rule's conditions folded for one
subject (what the policy knows of the principal folded into true or false, what only a
request can tell left as a residual), and the status lines of a region decided by the
rules that fold so. See the package docstring."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import TYPE_CHECKING, Any, Union

from policyengine.decide._runtime import Principal, build_many
from policyengine.lang import ast

if TYPE_CHECKING:
    from policyengine.decide._compiled import CompiledRule
    from policyengine.decide._query.index import IndexCore


# ---- partial evaluation ----------------------------------------------------------------------

class _Err:
    """A sub-condition the policy alone shows to fail to evaluate (fail closed)."""

    __slots__ = ()


ERR = _Err()
MISSING = object()
#: What folding gives: known true or false, a known evaluation error, or a residual.
Folded = Union[bool, _Err, ast.Expr]  # noqa: UP007 - a runtime alias on Python 3.10


@dataclass(frozen=True)
class Subject:
    """Whose answer is being worked out. ``principal`` is what scopes see (an id no
    agent has for a role or anyone); ``id_known`` and ``attrs_known`` say which of
    ``principal.*`` conditions may be folded."""

    kind: str
    name: str
    principal: Principal
    id_known: bool
    attrs_known: bool


class Folder(ast.ExprVisitor[Folded]):
    """Folds rule conditions for one subject, memoised by rule: with the index for the
    rules whose conditions do not read the principal (they fold alike for everyone),
    with this folder for the others. Folding is a visit of the condition (one method per
    node kind: ``not``, ``and``, ``or`` and a boolean literal fold, every other node is
    evaluated when the policy knows it, else left as a residual), for :attr:`rule`."""

    def __init__(self, subject: Subject, index: IndexCore) -> None:
        self.subject = subject
        self.index = index
        self.rules: dict[int, Folded] = {}
        self.texts: dict[int, str] = {}
        self.substitute = True
        #: Set when a guard asked for reads the principal.
        self.read_principal = False
        #: The rule whose conditions are being folded (its file's money).
        self.rule: CompiledRule | None = None

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

    def literal(self, e: ast.Literal) -> Folded:
        value = e.value
        return value if isinstance(value, bool) else self.leaf(e)

    def not_(self, e: ast.Not) -> Folded:
        inner = self.visit(e.expr)
        if isinstance(inner, bool):
            return not inner
        if inner is ERR:
            return ERR
        return negated(inner)  # type: ignore[arg-type]

    def and_(self, e: ast.And) -> Folded:
        return _chain(ast.And, [self.visit(i) for i in e.items], e.items)

    def or_(self, e: ast.Or) -> Folded:
        return _chain(ast.Or, [self.visit(i) for i in e.items], e.items)

    def leaf(self, e: ast.Expr) -> Folded:
        """A node that is no ``and``, ``or`` or ``not``: its value when the policy knows
        it, else a residual."""
        if self.known(e):
            assert self.rule is not None
            return self._evaluate(e, self.rule)
        # a rule that does not read the principal has nothing to write in
        return self._substitute(e) if self.substitute else e

    money = amount = path = call = list = compare = in_ = leaf

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
                value = who.attributes.get(e.segments[1], MISSING)
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
        self.rule = rule
        parts: list[Folded] = []
        originals: list[ast.Expr] = []
        for cond in rule.conditions:
            expr = cond.expr if cond.kind == "when" else ast.Not(cond.expr)
            originals.append(expr)
            parts.append(self.visit(expr))
        out = _chain(ast.And, parts, originals)
        if out is ERR:
            out = rule.effect != "permit"
        out = memo[rule.order] = over_cap(rule, out)
        return out


#: The canonical printer of conditions, imported when first needed (loading the engine
#: does not load the formatter).
_FORMAT: list[Callable[[ast.Expr], str]] = []


def _format(e: ast.Expr) -> str:
    if not _FORMAT:
        from policyengine.lang._fmt import format_expr
        _FORMAT.append(format_expr)
    return _FORMAT[0](e)


def over_cap(rule: CompiledRule, guard: Folded) -> Folded:
    """``guard`` and, for a limit or an approval over a threshold, the amount over the
    cap (already in the file's base currency: the checker gives every file with amount
    rules one)."""
    if rule.amount_limit is None or guard is False:
        return guard
    base = rule.money.base if rule.money is not None else None
    over = ast.Compare(">", ast.Amount(), ast.MoneyLit(rule.amount_limit, base or ""))
    return over if guard is True else _chain(ast.And, [guard, over], [over, over])


def plain_guard(rule: CompiledRule, reads: Sequence[int]) -> Folded | None:
    """The guard of a rule whose every condition reads the request and none reads the
    principal (``reads``: what each condition reads), nor has ``and``, ``or`` or ``not``
    on top, so nothing in it folds: its conditions as they are (``unless`` ones
    negated). None for any other rule."""
    parts: list[Folded] = []
    for cond, read in zip(rule.conditions, reads, strict=True):
        e = cond.expr
        if read != READS_REQUEST or type(e) in COMPOUND:
            return None
        parts.append(e if cond.kind == "when" else negated(e))
    return over_cap(rule, _chain(ast.And, parts, parts))  # type: ignore[arg-type]


#: ``not (a OP b)`` is ``a INVERSE b``: the same answer on every pair of values, and the
#: same error on values that do not compare (numbers are exact, so the order is total).
_INVERSE = {"==": "!=", "!=": "==", "<": ">=", "<=": ">", ">": "<=", ">=": "<"}


def negated(e: ast.Expr) -> ast.Expr:
    """``not e``, written the way a person would: ``x not in [..]``, ``a != b``."""
    if isinstance(e, ast.In):
        return ast.In(e.item, e.collection, not e.negated)
    if isinstance(e, ast.Compare):
        return ast.Compare(_INVERSE[e.op], e.left, e.right)
    if isinstance(e, ast.Not):
        return e.expr
    return ast.Not(e)


def _chain(join: type[ast.And | ast.Or], parts: Sequence[Folded],
           originals: Sequence[ast.Expr]) -> Folded:
    """``a and b and ...`` (``join`` is ``ast.And``) or ``a or b or ...`` (``ast.Or``)
    folded left to right, as the engine evaluates it. A part known to be the
    operator's identity (true for ``and``, false for ``or``) drops out, one known to be
    the other value decides the whole; an error decides it when nothing before it is
    left, else its original stays (it errs at run time only if what is left before it
    lets it be reached) and ends the chain: whatever follows is reached only through
    it, so a known value after it decides nothing (``a and <error> and false`` errs when
    ``a`` holds; folding it to false would answer a forbid "never applies" where
    ``authorize`` fails closed). A residual ``and`` among the parts of an ``and`` is
    spliced into it (a rule's guard is the ``and`` of its conditions); a residual ``or``
    among the parts of an ``or`` stays as written (printed in parentheses)."""
    identity = join is ast.And
    rest: list[ast.Expr] = []
    for value, original in zip(parts, originals, strict=True):
        if value is identity:
            continue
        if type(value) is bool:  # the other value
            return value
        if value is ERR:
            if not rest:
                return ERR
            rest.append(original)  # errors at run time only if the rest lets it be reached
            break  # and what follows is reached only past the error: it decides nothing
        if identity and isinstance(value, ast.And):
            rest.extend(value.items)
        else:
            rest.append(value)  # type: ignore[arg-type]
    if not rest:
        return identity
    return rest[0] if len(rest) == 1 else join(tuple(rest))


#: One status line of a region before it is given a principal and pattern:
#: (status, when, unless, rules).
Line = tuple[str, "str | Text | None", "str | Text | None", tuple[str, ...]]


#: What two regions' lines are compared by: per line, its status and the rules whose
#: guards its ``when`` and ``unless`` print. A narrower region has every rule
#: of the wider one and more, so two regions print the same lines exactly when their
#: lines are made of the same rules: the texts need not be printed to compare them.
Sig = tuple[tuple[str, Any, Any], ...]


class Text:
    """A residual's policy text, printed when first read and kept: the guards of
    ``first`` joined by ``or``; with ``second`` too, ``first and second``, each side in
    parentheses when it is an ``or``."""

    __slots__ = ("_text", "first", "folder", "second")

    def __init__(self, folder: Folder, first: tuple[CompiledRule, ...],
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
State = Union[tuple[tuple["CompiledRule", ...], tuple["CompiledRule", ...],  # noqa: UP007
                     tuple["CompiledRule", ...], bool, bool], None]

EMPTY: State = ((), (), (), False, False)


def _by_order(rule: CompiledRule) -> int:
    return rule.order


def _add(rules: tuple[CompiledRule, ...], rule: CompiledRule) -> tuple[CompiledRule, ...]:
    if rules and rules[-1].order > rule.order:
        return tuple(sorted((*rules, rule), key=_by_order))
    return (*rules, rule)


def extended(state: State, rules: Iterable[CompiledRule], folder: Folder,
            nested: frozenset[int]) -> State:
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


def sig_of(state: State) -> Sig:
    """What :func:`region_lines` prints, by the rules each residual is made of."""
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


def region_lines(state: State, folder: Folder, printed: bool = False
                  ) -> tuple[Line, ...]:
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
    text: Callable[..., str | Text] = folder.residual if printed else partial(Text, folder)
    out: list[Line] = []
    if not a_true:
        unless = (*forbids, *approvals)
        out.append(("allowed", text(p_rules) if p_rules else None,
                    text(unless) if unless else None, ids))
    if approvals:
        a_rules = () if a_true else approvals
        if p_rules and a_rules:
            when: str | Text | None = text(p_rules, a_rules)
        else:
            when = text(p_rules or a_rules) if p_rules or a_rules else None
        out.append(("pending_approval", when, text(forbids) if forbids else None, ids))
    return tuple(out)


def _paren(text: str, needed: bool) -> str:
    return f"({text})" if needed else text


NONE: frozenset[int] = frozenset()


class Rows:
    """The lines of the regions under one widest permit pattern, in pattern order: per
    region listed, (its pattern, the narrower patterns it excludes, its status lines);
    ``count``: how many lines in all."""

    __slots__ = ("count", "rows")

    def __init__(self, rows: list[tuple[str, tuple[str, ...], tuple[Line, ...]]],
                 count: int | None = None) -> None:
        self.rows = rows
        self.count = sum([len(row[2]) for row in rows]) if count is None else count


#: What an expression reads (bits): the principal, the request (``context``, ``amount``,
#: ``grant``).
READS_PRINCIPAL = 1
READS_REQUEST = 2
COMPOUND = (ast.And, ast.Or, ast.Not)
_CONSTANT = (ast.Literal, ast.MoneyLit)


def reads_of(e: ast.Expr) -> int:
    kind = type(e)
    if kind is ast.Path:
        return READS_PRINCIPAL if e.root == "principal" else READS_REQUEST  # type: ignore[union-attr]
    if kind is ast.Compare:
        left, right = e.left, e.right  # type: ignore[union-attr]
        if type(left) is ast.Path and type(right) in _CONSTANT:  # ``context.n > 3``
            return READS_PRINCIPAL if left.root == "principal" else READS_REQUEST
        return reads_of(left) | reads_of(right)
    if kind is ast.Literal or kind is ast.MoneyLit:
        return 0
    if kind is ast.Amount:
        return READS_REQUEST
    out = 0
    for c in ast.children(e):
        out |= reads_of(c)
    return out


def writes_in(e: ast.Expr) -> bool:
    """Whether every part of ``e`` below ``and``, ``or`` and ``not`` that reads the
    principal reads the request too (so it folds to a residual for every agent)."""
    kind = type(e)
    if kind is ast.And or kind is ast.Or:
        return all(writes_in(i) for i in e.items)  # type: ignore[union-attr]
    if kind is ast.Not:
        return writes_in(e.expr)  # type: ignore[union-attr]
    read = reads_of(e)
    return not read & READS_PRINCIPAL or bool(read & READS_REQUEST)


#: An attribute a principal does not have (one value class: it fails to evaluate alike).
ABSENT = ("absent",)


#: An id equal to none of the literals it is compared with.
OTHER_ID = ("other",)


def value_class(value: Any, aid: str) -> Any:
    """Agents whose values have the same class fold alike: the same type and value
    (a decimal by its digits, ``1`` and ``True`` apart), absent alike; a value of any
    other type is its agent's own class."""
    if value is MISSING:
        return ABSENT
    kind = type(value)
    if kind is str or kind is int or kind is bool:
        return (kind.__name__, value)
    if kind is Decimal:
        return ("Decimal", str(value))
    return ("agent", aid)
