"""Checked AST -> :class:`CompiledPolicy`: indexes plus generated closures.

Conditions are turned into Python source once and compiled with ``compile()`` (as Jinja2
does for templates), so a request runs plain Python: no AST walking, no parsing, no regex
compilation. Literal values never appear in the generated text; they are bound as
constants (``_k0``, ``_k1``...), so policy text cannot inject code.

Rules are indexed by permission (exact names, ``ns:`` prefixes, ``*``) and, per
(principal, permission), the applicable rules are resolved once and cached in a bounded
table: the hot path is one dict lookup and a few closure calls.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import (
    ROUND_FLOOR,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
)
from typing import Any

from policyengine import ast
from policyengine.permissions import permission_matches, validate_permission

__all__ = ["CompiledPolicy", "CompiledRule", "EvalError", "FileMoney", "Principal",
           "compile_policy"]

Test = Callable[[dict[str, Any], "Principal", Any], bool]

#: Entries kept in the per-(principal, permission) plan cache before it is reset.
PLAN_CACHE_SIZE = 65536


class EvalError(Exception):
    """A condition could not be evaluated for this request (fail closed applies)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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


def _matches(s: Any, rx: re.Pattern[str]) -> bool:
    return rx.fullmatch(_str(s, "matches")) is not None


_RUNTIME: dict[str, Any] = {
    "_lt": _lt, "_le": _le, "_gt": _gt, "_ge": _ge, "_eq": _eq, "_ne": _ne, "_b": _b,
    "_in_lit": _in_lit, "_in_dyn": _in_dyn, "_startswith": _startswith,
    "_endswith": _endswith, "_contains": _contains, "_matches": _matches, "_has": _has,
}
_CMP = {"<": "_lt", "<=": "_le", ">": "_gt", ">=": "_ge", "==": "_eq", "!=": "_ne"}


def glob_to_regex(glob: str) -> re.Pattern[str]:
    """``*`` any run of characters, ``?`` one character, everything else literal."""
    out = []
    for ch in glob:
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


# ---- code generation ---------------------------------------------------------------------

class _Gen:
    """Builds the source of one rule's test and its constants."""

    def __init__(self, money: FileMoney, to_base: Callable[[ast.MoneyLit], Decimal],
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
                return f"_matches({subject}, {self.const(glob_to_regex(glob.value))})", True
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


def _build_many(sources: Sequence[str], consts: dict[str, Any]) -> tuple[Test, ...]:
    namespace: dict[str, Any] = dict(_RUNTIME)
    namespace.update(consts)
    body = ",\n".join(f"lambda c, p, r: {src}" for src in sources)
    code = compile(f"({body},)", "<policy conditions>", "eval")
    fns: tuple[Test, ...] = eval(code, namespace)  # generated from a checked AST only
    return fns


# ---- compiled structures -------------------------------------------------------------------

@dataclass(frozen=True)
class FileMoney:
    """How one file reads money: its base currency, default currency and rates."""

    file: str
    base: str | None
    default: str | None
    rates: Any  # a RateSource, or None without a base currency


class _ChainedRates:
    """Ask several rate tables in turn; ``no_rate`` only if none knows the pair."""

    def __init__(self, tables: list[Any]) -> None:
        self.tables = tables

    def _first(self, method: str, from_code: str, to_code: str, now: float | None) -> Any:
        last: Exception | None = None
        for table in self.tables:
            fn = getattr(table, method, None)
            if fn is None:
                continue
            try:
                return fn(from_code, to_code, now)
            except ValueError as exc:  # RateError: try the next table
                last = exc
                if getattr(exc, "code", "") == "stale_rate":
                    raise
        if last is None:
            raise AttributeError(method)
        raise last

    def rate(self, from_code: str, to_code: str, now: float | None = None) -> Decimal:
        return self._first("rate", from_code, to_code, now)  # type: ignore[no-any-return]

    def rate_fraction(self, from_code: str, to_code: str, now: float | None = None
                      ) -> tuple[int, int]:
        """Exact cross rates (see :func:`policyengine.rates.convert`)."""
        return self._first("rate_fraction", from_code, to_code, now)  # type: ignore[no-any-return]


@dataclass
class CompiledRule:
    """One rule, ready to run. ``test`` is None for an unconditional rule."""

    qid: str
    effect: str  # permit | forbid | approval
    kind: str  # rule | role | limit | approval_over
    patterns: tuple[str, ...]
    roles: frozenset[str]
    agents: frozenset[str]
    test: Test | None
    conditions: tuple[ast.Condition, ...]  # kept for explain, which compiles them lazily
    amount_limit: Decimal | None = None  # limit cap / approval threshold, in base currency
    uses_amount: bool = False
    money: FileMoney | None = None
    order: int = 0
    span: ast.Span = ast.NOSPAN
    _clauses: tuple[tuple[str, str, Test], ...] | None = None

    @property
    def clauses(self) -> tuple[tuple[str, str, Test], ...]:
        """(when|unless, source text, test) per condition: explain's view of the rule."""
        if self._clauses is None:
            money = self.money or FileMoney("", None, None, None)
            out = []
            for cond in self.conditions:
                g = _Gen(money, _to_base(money))
                out.append((cond.kind, _expr_text(cond.expr),
                            _build_many([g.boolean(cond.expr)], g.consts)[0]))
            self._clauses = tuple(out)
        return self._clauses

    def scoped_to(self, principal: Principal) -> bool:
        if not self.roles and not self.agents:
            return True
        return principal.id in self.agents or not self.roles.isdisjoint(principal.roles)


@dataclass
class Plan:
    """The rules that can decide one (principal, permission), in evaluation order."""

    principal: Principal
    forbids: tuple[CompiledRule, ...]
    limits: tuple[CompiledRule, ...]
    permits: tuple[CompiledRule, ...]
    approvals: tuple[CompiledRule, ...]
    uses_amount: bool


@dataclass
class CompiledPolicy:
    """Everything a request needs, indexed. Immutable once built (caches aside)."""

    rules: tuple[CompiledRule, ...]
    principals: dict[str, Principal]
    money: dict[str, FileMoney]  # by file name
    tz: str
    tools: Any = None  # a CompiledTools (tool governance)
    budgets: tuple[Any, ...] = ()  # BudgetSpec
    delegation: ast.DelegationDecl | None = None
    files: tuple[ast.PolicyFile, ...] = ()
    _exact: dict[str, list[CompiledRule]] = field(default_factory=dict)
    _prefix: dict[str, list[CompiledRule]] = field(default_factory=dict)
    _global: list[CompiledRule] = field(default_factory=list)
    _plans: dict[tuple[str, str], Plan] = field(default_factory=dict)
    _budgeted: dict[str, bool] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def default_currency(self) -> str | None:
        """The first ``default_currency`` declared (for checks outside any one file)."""
        return next((m.default for m in self.money.values() if m.default), None)

    @property
    def rates(self) -> Any:
        """One RateSource over every file's rates (the first that knows a pair wins)."""
        tables = [m.rates for m in self.money.values() if m.rates is not None]
        return _ChainedRates(tables) if tables else None

    def index(self) -> None:
        for rule in self.rules:
            for pat in set(rule.patterns):
                if pat == "*":
                    self._global.append(rule)
                elif pat.endswith(":*"):
                    self._prefix.setdefault(pat[:-1], []).append(rule)
                else:
                    self._exact.setdefault(pat, []).append(rule)

    def candidates(self, permission: str) -> list[CompiledRule]:
        """Rules with a pattern matching ``permission``, in declaration order."""
        found: dict[int, CompiledRule] = {}
        for rule in self._exact.get(permission, ()):
            found[rule.order] = rule
        i = permission.find(":")
        while i >= 0:
            for rule in self._prefix.get(permission[: i + 1], ()):
                found[rule.order] = rule
            i = permission.find(":", i + 1)
        for rule in self._global:
            found[rule.order] = rule
        return [found[k] for k in sorted(found)]

    def budgeted(self, permission: str) -> bool:
        """True when some budget's pattern covers ``permission`` (cached)."""
        hit = self._budgeted.get(permission)
        if hit is None:
            hit = any(permission_matches(p, permission) for b in self.budgets
                      for p in b.patterns)
            if len(self._budgeted) >= PLAN_CACHE_SIZE:
                self._budgeted.clear()
            self._budgeted[permission] = hit
        return hit

    def principal(self, principal_id: str) -> Principal:
        p = self.principals.get(principal_id)
        return p if p is not None else Principal(principal_id, frozenset(), {})

    def plan(self, principal_id: str, permission: str) -> Plan:
        key = (principal_id, permission)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        who = self.principal(principal_id)
        validate_permission(permission)  # callers check first; this is the last guard
        rules = [r for r in self.candidates(permission) if r.scoped_to(who)]
        plan = Plan(
            who,
            tuple(r for r in rules if r.effect == "forbid" and r.kind != "limit"),
            tuple(r for r in rules if r.kind == "limit"),
            tuple(r for r in rules if r.effect == "permit"),
            tuple(r for r in rules if r.effect == "approval"),
            any(r.uses_amount for r in rules),
        )
        if len(self._plans) >= PLAN_CACHE_SIZE:
            with self._lock:  # a hostile stream of names cannot grow memory without bound
                self._plans.clear()
        self._plans[key] = plan
        return plan


# ---- compile -------------------------------------------------------------------------------

def _qualify(namespace: str, ident: str) -> str:
    return f"{namespace}.{ident}"


def _expr_text(e: ast.Expr) -> str:
    from policyengine.fmt import format_expr
    return format_expr(e)


def compile_policy(files: Sequence[ast.PolicyFile], *,
                   rates: Mapping[str, Any] | None = None) -> CompiledPolicy:
    """Compile checked files into a :class:`CompiledPolicy`.

    ``rates`` maps a file name to the :class:`~policyengine.rates.RateSource` built from
    that file's ``rate`` / ``rates`` statements (see :func:`policyengine.engine.build_rates`).
    Money is per file: a file's amounts are read in its own base currency.
    """
    rates = rates or {}
    money: dict[str, FileMoney] = {}
    for f in files:
        base = next((st.code for st in f.statements if isinstance(st, ast.CurrencyDecl)), None)
        default = next((st.code for st in f.statements
                        if isinstance(st, ast.DefaultCurrencyDecl)), None)
        money[f.name] = FileMoney(f.name, base, default, rates.get(f.name))
    tz = next((st.zone for f in files for st in f.statements if isinstance(st, ast.TzDecl)),
              "UTC")
    delegation = next((st for f in files for st in f.statements
                       if isinstance(st, ast.DelegationDecl)), None)

    roles: dict[str, tuple[str, ...]] = {}
    agent_roles: dict[str, set[str]] = {}
    agent_attrs: dict[str, dict[str, Any]] = {}
    for f in files:
        for st in f.statements:
            if isinstance(st, ast.RoleDecl):
                roles[st.name] = st.patterns
            elif isinstance(st, ast.AgentDecl):
                agent_roles.setdefault(st.id, set()).update(st.roles)
                agent_attrs.setdefault(st.id, {}).update(
                    {k: v.value for k, v in st.attributes})
    principals = {aid: Principal(aid, frozenset(r), agent_attrs.get(aid, {}))
                  for aid, r in agent_roles.items()}

    rules: list[CompiledRule] = []
    order = 0

    def add(rule: CompiledRule) -> None:
        nonlocal order
        rule.order = order
        order += 1
        rules.append(rule)

    for name, patterns in roles.items():
        add(CompiledRule(f"role:{name}", "permit", "role", patterns, frozenset({name}),
                         frozenset(), None, ()))
    # Every condition of the policy set becomes one lambda in one generated module:
    # a single compile() instead of one per rule.
    pending: list[tuple[CompiledRule, str]] = []
    consts: dict[str, Any] = {}

    for f in files:
        fm = money[f.name]
        for st in f.statements:
            if isinstance(st, (ast.Rule, ast.LimitDecl, ast.ApprovalOverDecl)):
                rule, source, rule_consts = _compile_rule(st, f.namespace, fm, f"_r{order}_")
                add(rule)
                if source is not None:
                    pending.append((rule, source))
                    consts.update(rule_consts)
    if pending:
        tests = _build_many([src for _, src in pending], consts)
        for (rule, _), test in zip(pending, tests, strict=True):
            rule.test = test
    from policyengine.egress import compile_tools
    policy = CompiledPolicy(tuple(rules), principals, money, tz, tools=compile_tools(files),
                            budgets=_budget_specs(files), delegation=delegation,
                            files=tuple(files))
    policy.index()
    return policy


def _budget_specs(files: Sequence[ast.PolicyFile]) -> tuple[Any, ...]:
    from policyengine.budgets import BudgetSpec
    specs = []
    for f in files:
        file_tz = next((st.zone for st in f.statements if isinstance(st, ast.TzDecl)), "UTC")
        for st in f.statements:
            if isinstance(st, ast.BudgetDecl):
                specs.append(BudgetSpec(
                    _qualify(f.namespace, st.id), st.patterns, st.limit, st.unit, st.window,
                    st.rolling_seconds, st.subject, st.tz or file_tz,
                    st.overdraft if st.overdraft is not None else Decimal(0)))
    return tuple(specs)


_FLOOR = Context(prec=100, rounding=ROUND_FLOOR, Emax=999, Emin=-999,
                 traps=[InvalidOperation, Overflow, DivisionByZero])


def _to_base(fm: FileMoney) -> Callable[[ast.MoneyLit], Decimal]:
    """Money literals (caps, thresholds) in the base currency, rounded *down* to its
    minor unit: a limit never rounds up. (Spends round up: see the evaluator.)"""
    quantum: Decimal | None = None
    if fm.base is not None:
        from policyengine.money import decimal_places
        quantum = Decimal(1).scaleb(-decimal_places(fm.base))

    def to_base(m: ast.MoneyLit) -> Decimal:
        if fm.base is None or quantum is None:
            return m.amount
        value = m.amount
        if m.currency != fm.base:
            # Converted once, at compile time, with the table as of its own date: a
            # literal is part of the policy, not of a request.
            try:
                rate = fm.rates.rate(m.currency, fm.base, getattr(fm.rates, "as_of", None))
            except ValueError as exc:
                from policyengine.source import PolicyError, Problem
                raise PolicyError([Problem(
                    "E127", f"cannot convert {m.amount} {m.currency} to {fm.base}: {exc}",
                    m.span.file, m.span.line, m.span.column)]) from None
            value = _FLOOR.multiply(value, rate)
        return value.quantize(quantum, context=_FLOOR)
    return to_base


def _compile_rule(st: ast.Rule | ast.LimitDecl | ast.ApprovalOverDecl, ns: str,
                  fm: FileMoney, prefix: str
                  ) -> tuple[CompiledRule, str | None, dict[str, Any]]:
    """The rule (its ``test`` still unset) and the source and constants of its test."""
    qid = _qualify(ns, st.id)
    to_base = _to_base(fm)
    gen = _Gen(fm, to_base, prefix)
    source = gen.conditions(st.conditions) if st.conditions else None
    roles = frozenset(s.name for s in st.scope if s.kind == "role")
    agents = frozenset(s.name for s in st.scope if s.kind == "agent")
    if isinstance(st, ast.LimitDecl):
        rule = CompiledRule(qid, "forbid", "limit", st.patterns, roles, agents, None,
                            st.conditions, to_base(st.cap), True, fm, span=st.span)
    elif isinstance(st, ast.ApprovalOverDecl):
        rule = CompiledRule(qid, "approval", "approval_over", st.patterns, roles, agents, None,
                            st.conditions, to_base(st.threshold), True, fm, span=st.span)
    else:
        rule = CompiledRule(qid, st.effect, "rule", st.patterns, roles, agents, None,
                            st.conditions, None, gen.uses_amount, fm, span=st.span)
    return rule, source, gen.consts
