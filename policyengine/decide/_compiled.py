"""Checked AST -> :class:`CompiledPolicy`: indexes plus generated closures.

Conditions are turned into Python source once (:mod:`policyengine.lang._codegen`) and
compiled with ``compile()`` (as Jinja2 does for templates, see
:mod:`policyengine.decide._runtime`), so a request runs plain Python: no AST walking, no
parsing, no regex compilation.

Rules are indexed by permission (exact names, ``ns:`` prefixes, ``*``) and, under each,
by scope (unscoped, per role, per agent). Per (principal, permission) the applicable
rules are resolved once from the index, touching only rules that can apply to that
principal, and cached in a bounded table that evicts one plan at a time (CLOCK): the hot
path is one dict lookup and a few closure calls.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
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

from policyengine.decide._approvals import DEFAULT_APPROVAL_EXPIRES, DEFAULT_APPROVAL_USES
from policyengine.decide._contexts import ContextCheck, combine, compile_schema
from policyengine.decide._runtime import EvalError, Principal, Test, build_many
from policyengine.lang import ast
from policyengine.lang._codegen import ConditionCodegen, Recorder
from policyengine.permissions import validate_permission

__all__ = ["PLAN_CACHE_SIZE", "CompileCache", "CompiledPolicy", "CompiledRule", "CoverageSink",
           "Entry", "EvalError", "FileMoney", "Plan", "PlanRules", "Principal", "compile_policy",
           "instrument_rules", "money_literals"]

#: Plans kept in the plan cache, at least (twice the policy's declared agents when that is
#: more); beyond it, one is evicted per new plan (CLOCK, see :meth:`CompiledPolicy.plan`).
#: Also the number of permissions whose rule buckets are remembered.
PLAN_CACHE_SIZE = 65536


# ---- compiled structures -------------------------------------------------------------------

@dataclass(frozen=True)
class FileMoney:
    """How one file reads money: its base currency, default currency and rates."""

    file: str
    base: str | None
    default: str | None
    rates: Any  # a RateSource, or None without a base currency


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
    approval_terms: tuple[int, int] | None = None  # (expires seconds, uses); approvals
    #: ``enforce``, or ``warn`` / ``log`` for a shadow statement: evaluated into the
    #: decision's ``shadow`` outcomes, never into its status (docs/language.md).
    mode: str = "enforce"
    _clauses: tuple[tuple[str, str, Test], ...] | None = None
    #: Whether the test reads ``principal.*`` (true unless the code generator said not).
    reads_principal: bool = True

    @property
    def clauses(self) -> tuple[tuple[str, str, Test], ...]:
        """(when|unless, source text, test) per condition: explain's view of the rule."""
        if self._clauses is None:
            money = self.money or FileMoney("", None, None, None)
            out = []
            for cond in self.conditions:
                g = ConditionCodegen(money, _to_base(money))
                out.append((cond.kind, _expr_text(cond.expr),
                            build_many([(g.boolean(cond.expr), g.consts)])[0]))
            self._clauses = tuple(out)
        return self._clauses

    def scoped_to(self, principal: Principal) -> bool:
        if not self.roles and not self.agents:
            return True
        return principal.id in self.agents or not self.roles.isdisjoint(principal.roles)


class PlanRules:
    """The rules that can decide one principal's requests under one permission class, in
    evaluation order (what the rules step runs).

    ``principal`` is what the conditions read as ``principal``: None when no rule reads
    ``principal.*`` (then these rules are shared by every principal whose plan is made
    of the same rule part, see :meth:`CompiledPolicy.plan`). A plan of permits only also
    keeps them as ``checks``, one flat tuple ``(test, rule id, test, rule id, ...)``, so
    the rules step reads the tuple instead of each rule."""

    __slots__ = ("answer", "approvals", "checks", "entry_key", "forbids", "limits",
                 "permit_checks", "permit_ids", "permits", "permitted", "principal", "schema",
                 "shadows", "uses_amount")

    def __init__(self, principal: Principal | None, forbids: tuple[CompiledRule, ...],
                 limits: tuple[CompiledRule, ...], permits: tuple[CompiledRule, ...],
                 approvals: tuple[CompiledRule, ...], uses_amount: bool,
                 shadows: tuple[CompiledRule, ...] = (),
                 checks: tuple[Any, ...] | None = None,
                 schema: ContextCheck | None = None) -> None:
        self.principal = principal
        self.forbids = forbids
        self.limits = limits
        self.permits = permits
        self.approvals = approvals
        self.uses_amount = uses_amount
        #: The shadow rules (``mode warn`` / ``mode log``) that can apply, in declaration
        #: order: empty for nearly every plan, and then the pipeline does nothing more.
        self.shadows = shadows
        #: The permits as ``(test or None, qid, ...)`` when there is nothing else (no
        #: forbid, limit, approval or shadow rule), else None; see :func:`checks_of`.
        self.checks = checks
        #: The permits as ``(test or None, qid, ...)`` whatever else there is.
        self.permit_checks: tuple[Any, ...] = (
            checks if checks is not None else tuple(x for r in permits
                                                    for x in (r.test, r.qid)))
        #: With ``checks``: the ids of every permit (the decision's rules when each of
        #: them applies), else None.
        self.permitted: tuple[str, ...] | None = (
            checks[1::2] if checks is not None else None)
        #: The ids of every permit, in order, whatever else there is: the rules of a
        #: decision when each of them applies, made once here (the rules step answers
        #: it for a plan of one permit instead of a new tuple per request).
        self.permit_ids: tuple[str, ...] = (
            self.permitted if self.permitted is not None else self.permit_checks[1::2])
        #: The check of the context the schemas covering this permission declare, or
        #: None (no schema: nothing to check).
        self.schema = schema
        #: What an :class:`Entry` of these rules decides from, (permitted, test,
        #: unconditional permits beside it), or None (see :func:`_answer`).
        self.answer = _answer(self)
        #: The key of that entry in its class's ``entries``: (test, unconditional).
        self.entry_key = None if self.answer is None else self.answer[1:]


def _answer(rules: PlanRules) -> tuple[tuple[str, ...], Test | None, bool] | None:
    """(every permit's id, the one condition or None, whether a permit is unconditional
    beside that condition) when ``rules`` are permits only, at most one of them
    conditional, with no schema, no amount and no ``principal.*`` to read; else None
    (see :class:`Plan` and :class:`Entry`)."""
    checks = rules.checks
    if (not checks or rules.principal is not None or rules.schema is not None
            or rules.uses_amount or rules.permitted is None):
        return None
    tests = [t for t in checks[::2] if t is not None]
    if len(tests) > 1:
        return None
    if not tests:
        return rules.permitted, None, False
    return rules.permitted, tests[0], len(checks) > 2


class Plan:
    """One entry of the plan cache: a principal's :class:`PlanRules` under a permission
    class, and the cache's reference bit ``used`` (set on every hit, cleared when the
    eviction hand passes; see :meth:`CompiledPolicy.plan`). The plans whose rules decide
    from an :class:`Entry` are cached as that entry instead (the pipeline never gets a
    Plan that could have been one).

    ``permitted`` and ``test`` are what such an entry decides from (the ids of the
    rules when every permit applies, and the one condition, None: none), read by
    :meth:`CompiledPolicy.plan`'s callers; None when the rules are more than that."""

    __slots__ = ("permitted", "rules", "test", "used")

    def __init__(self, rules: PlanRules) -> None:
        self.rules = rules
        self.used = False
        answer = rules.answer
        self.permitted: tuple[str, ...] | None = None
        self.test: Test | None = None
        if answer is not None:
            self.permitted, self.test = answer[0], answer[1]

    # What the rules say, for readers other than the pipeline (tests, tools).
    principal = property(lambda self: self.rules.principal)
    forbids = property(lambda self: self.rules.forbids)
    limits = property(lambda self: self.rules.limits)
    permits = property(lambda self: self.rules.permits)
    approvals = property(lambda self: self.rules.approvals)
    shadows = property(lambda self: self.rules.shadows)
    uses_amount = property(lambda self: self.rules.uses_amount)
    schema = property(lambda self: self.rules.schema)


class Entry:
    """A plan-cache entry shared by every principal whose plan under one permission class
    is permits only, at most one of them conditional (``test``; None: none), with no
    schema, no amount and no ``principal.*`` to read (a role grant, perhaps with one
    conditional permit: the common case). The pipeline decides from the entry alone.

    Why shared: with many principals active, what a decision reads per principal is what
    it costs beyond a decision of a few hot principals (each object of its own is a CPU
    cache miss). An entry is one of a handful per class, always in cache, so a hit reads
    only the cache's own dict (its slot, its key). What differs per principal, the ids
    of the rules, is resolved again when a decision's ``rules`` is first read (see
    :meth:`rule_ids`): the decision holds the entry, not the ids.

    The reference bit of CLOCK eviction is which of two twins the cache holds: ``used``
    is False for one and True for the other, ``twin`` is the other one (a first hit
    stores the used twin, the eviction hand the unused one). ``fallback`` is what a
    decision holds when ``test`` does not hold and the unconditional permits apply (an
    entry of the same class whose ``rule_ids`` are theirs), or None when there are none
    (then no permit applies)."""

    __slots__ = ("cls", "fallback", "only_unconditional", "policy", "test", "twin", "used")

    def __init__(self, policy: CompiledPolicy, cls: PermissionClass, test: Test | None,
                 used: bool, only_unconditional: bool = False) -> None:
        self.policy = policy
        self.cls = cls
        self.test = test
        self.used = used
        self.only_unconditional = only_unconditional
        self.fallback: Entry | None = None
        self.twin: Entry = self

    def rule_ids(self, principal: str) -> tuple[str, ...]:
        """The ids of the rules of ``principal``'s decision (every permit of its plan,
        or only the unconditional ones): resolved from the rule index, as when the
        entry was made (the policy's index and principals do not change)."""
        rules = self.policy.plan_rules(self.cls, principal)
        if not self.only_unconditional:
            return rules.permitted or ()
        checks = rules.checks or ()
        return tuple(checks[i + 1] for i in range(0, len(checks), 2) if checks[i] is None)

    def conditional_id(self, principal: str) -> str:
        """The id of ``principal``'s one conditional permit (``test``)."""
        checks = self.policy.plan_rules(self.cls, principal).checks or ()
        return checks[checks.index(self.test) + 1]  # type: ignore[no-any-return]


class PermissionClass:
    """What every permission matched by the same rule buckets (and the same ``schema``
    declarations) shares: the buckets, the combined context check, and the plans of the
    principals that asked, by principal id. Permissions map to their class, so the plan
    cache grows with principals x classes (a few per policy), not with principals x
    permissions."""

    __slots__ = ("buckets", "entries", "plans", "schema", "shared")

    def __init__(self, buckets: tuple[_Bucket, ...], schema: ContextCheck | None) -> None:
        self.buckets = buckets
        self.schema = schema
        #: principal id -> Plan or shared Entry. Read lock-free (a hit sets
        #: ``plan.used``, or stores an entry's used twin); written only by
        #: :class:`CompiledPolicy`, under its lock.
        self.plans: dict[str, Plan | Entry] = {}
        #: (test, any unconditional permit) -> the unused twin of that shared Entry.
        self.entries: dict[tuple[Test | None, bool], Entry] = {}
        #: With a schema: id of a rule part -> the PlanRules of every principal whose
        #: plan is that one part and reads no ``principal.*`` (the parts stay alive in
        #: ``buckets``; without a schema the part keeps them itself, ``_Part.bare``):
        #: 10,000 agents of one role share one.
        self.shared: dict[int, PlanRules] = {}


class _PatternSet:
    """Patterns indexed like rules: does any of them match a valid permission? The same
    answer as :func:`~policyengine.permissions.permission_matches` over each pattern, in a
    set lookup per ``ns:`` prefix of the permission instead of a pass over the patterns."""

    __slots__ = ("every", "exact", "prefixes")

    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = set(patterns)
        self.every = "*" in patterns
        self.exact = frozenset(p for p in patterns if not p.endswith("*"))
        self.prefixes = frozenset(p[:-1] for p in patterns if p.endswith(":*"))

    def matches(self, permission: str) -> bool:
        if self.every or permission in self.exact:
            return True
        if self.prefixes:
            i = permission.find(":")
            while i >= 0:
                if permission[: i + 1] in self.prefixes:
                    return True
                i = permission.find(":", i + 1)
        return False


class _Part:
    """Rules of one bucket for one scope (unscoped, one role, one agent), in declaration
    order and already split by effect: a plan that needs only one part uses its tuples
    as they are."""

    __slots__ = ("approvals", "bare", "checks", "entry_key", "forbids", "limits", "permits",
                 "reads_principal", "rules", "shadows", "uses_amount")

    def __init__(self, rules: list[CompiledRule]) -> None:
        self.rules = tuple(rules)
        enforced = [r for r in rules if r.mode == "enforce"]
        self.forbids = tuple(r for r in enforced if r.effect == "forbid" and r.kind != "limit")
        self.limits = tuple(r for r in enforced if r.kind == "limit")
        self.permits = tuple(r for r in enforced if r.effect == "permit")
        self.approvals = tuple(r for r in enforced if r.effect == "approval")
        self.shadows = tuple(r for r in rules if r.mode != "enforce")
        self.uses_amount = any(r.uses_amount for r in rules)
        self.refresh()

    def refresh(self) -> None:
        """Read the rules' tests again (after :func:`instrument_rules` replaced them)."""
        self.reads_principal = reads_principal(self.rules)
        self.checks = checks_of(self.forbids, self.limits, self.permits, self.approvals,
                                self.shadows)
        #: The PlanRules of every principal whose plan is this part alone, under a
        #: permission class without a schema, when no condition reads ``principal.*``
        #: (made at the first such plan; see CompiledPolicy.plan).
        self.bare: PlanRules | None = None
        #: The ``entry_key`` of ``bare`` (made, without ``bare``, at the first plan of
        #: this part alone under a class without a schema), or None: unknown yet.
        self.entry_key: tuple[tuple[Test | None, bool] | None] | None = None


class _Bucket:
    """The rules under one pattern key (an exact permission, an ``ns:`` prefix or ``*``),
    split by scope, so that resolving a plan touches only rules that can apply to the
    principal asking: the unscoped ones, the principal's own and its roles'."""

    __slots__ = ("by_agent", "by_role", "unscoped")

    def __init__(self, rules: Sequence[CompiledRule]) -> None:
        unscoped: list[CompiledRule] = []
        by_role: dict[str, list[CompiledRule]] = {}
        by_agent: dict[str, list[CompiledRule]] = {}
        for rule in rules:
            if not rule.roles and not rule.agents:
                unscoped.append(rule)
            for role in rule.roles:
                by_role.setdefault(role, []).append(rule)
            for agent in rule.agents:
                by_agent.setdefault(agent, []).append(rule)
        self.unscoped = _Part(unscoped) if unscoped else None
        self.by_role = {k: _Part(v) for k, v in by_role.items()}
        self.by_agent = {k: _Part(v) for k, v in by_agent.items()}

    def parts_for(self, who: Principal, parts: list[_Part]) -> None:
        """Append the parts of this bucket that apply to ``who``."""
        if self.unscoped is not None:
            parts.append(self.unscoped)
        if self.by_agent:
            mine = self.by_agent.get(who.id)
            if mine is not None:
                parts.append(mine)
        if self.by_role:
            by_role = self.by_role
            for role in who.roles:
                theirs = by_role.get(role)
                if theirs is not None:
                    parts.append(theirs)

    def every(self) -> list[_Part]:
        found = [self.unscoped] if self.unscoped is not None else []
        return found + list(self.by_role.values()) + list(self.by_agent.values())


@dataclass
class CompiledPolicy:
    """Everything a request needs, indexed. Immutable once built (caches aside)."""

    rules: tuple[CompiledRule, ...]
    principals: dict[str, Principal]
    money: dict[str, FileMoney]  # by file name
    tz: str
    tools: Any = None  # a CompiledTools (tool governance)
    budgets: tuple[Any, ...] = ()  # BudgetSpec
    #: Shadow budgets (``mode warn`` / ``mode log``): BudgetSpec, charged beside the
    #: enforced ones by ``engine.budgets`` but never enforced;
    #: ``shadow_modes`` gives each one's mode by id.
    shadow_budgets: tuple[Any, ...] = ()
    shadow_modes: dict[str, str] = field(default_factory=dict)
    rate_limits: tuple[Any, ...] = ()  # RateLimitSpec, enforced
    #: Shadow rate limits (``mode warn`` / ``mode log``): counted, never refusing; their
    #: modes are in ``shadow_modes``.
    shadow_rate_limits: tuple[Any, ...] = ()
    #: The LLM price table (``price`` statements): a ``PriceTable``, or None.
    prices: Any = None
    delegation: ast.DelegationDecl | None = None
    files: tuple[ast.PolicyFile, ...] = ()
    _exact: dict[str, _Bucket] = field(default_factory=dict)
    _prefix: dict[str, _Bucket] = field(default_factory=dict)
    _global: _Bucket | None = None
    #: The plan cache, two levels: permission -> its :class:`PermissionClass` (at most
    #: :data:`PLAN_CACHE_SIZE` permissions, the oldest forgotten first), whose ``plans``
    #: map principal ids to plans. Read lock-free by the pipeline; written only by
    #: :meth:`plan`, under ``_lock``.
    classes: dict[str, PermissionClass] = field(default_factory=dict)
    _class_order: deque[str] = field(default_factory=deque)
    _interned: dict[tuple[tuple[int, ...], tuple[int, ...]], PermissionClass] = field(
        default_factory=dict)
    _plan_count: int = 0
    _plan_bound: int = PLAN_CACHE_SIZE
    _clock_hand: deque[tuple[PermissionClass, str]] = field(default_factory=deque)
    _budget_patterns: _PatternSet = field(default_factory=lambda: _PatternSet(()))
    _shadow_budget_patterns: _PatternSet = field(default_factory=lambda: _PatternSet(()))
    #: permission -> :meth:`budgeted` of it, as answered before: read lock-free (the
    #: pipeline reads it before calling :meth:`budgeted`), written by :meth:`budgeted`.
    budgeted_seen: dict[str, bool] = field(default_factory=dict)
    _budgeted_order: deque[str] = field(default_factory=deque)
    _approval_terms: dict[str, tuple[int, int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    #: The policy set's one ``default_currency`` (files that declare one agree; the
    #: checker refuses two different ones): the currency of a request amount that
    #: names none. See docs/semantics.md, "Amounts and currencies".
    default_currency: str | None = None
    #: The rates of the file holding the ``delegation`` block (a grant's ``max_amount``
    #: converts with them), or of the only file that has rates when there is no block.
    delegation_rates: Any = None
    #: Per budget id, the rates of the file that declares the budget.
    budget_rates: dict[str, Any] = field(default_factory=dict)
    #: The ``log redact`` rules (RedactionRule): what the decision log must not hold.
    log_redactions: tuple[Any, ...] = ()
    #: The ``schema`` declarations: (their patterns, the compiled context check).
    schemas: tuple[tuple[_PatternSet, ContextCheck], ...] = ()
    #: The reverse-query index (``decide._query.QueryIndex``), built on the first
    #: ``permissions_of`` / ``principals_with`` / ``filter_tools`` and kept with the policy.
    query_index: Any = None
    #: The ``resource`` declarations: type -> resource id -> attributes, in declaration
    #: order (several declarations of one resource merge; a later value wins).
    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def set_index(self, exact: dict[str, _Bucket], prefix: dict[str, _Bucket],
                  every: _Bucket | None, approval_terms: dict[str, tuple[int, int]]) -> None:
        """Install the rule indexes (built per file by :func:`compile_policy`)."""
        self._exact, self._prefix, self._global = exact, prefix, every
        self._approval_terms = approval_terms
        self._plan_bound = max(PLAN_CACHE_SIZE, 2 * len(self.principals))
        self._budget_patterns = _PatternSet(p for b in self.budgets for p in b.patterns)
        self._shadow_budget_patterns = _PatternSet(p for b in self.shadow_budgets
                                                   for p in b.patterns)

    def _buckets(self, permission: str) -> list[_Bucket]:
        """The buckets whose pattern matches ``permission``: exact, each ``ns:`` prefix
        (``a:b:c`` is matched by ``a:*`` and ``a:b:*``), and ``*``."""
        found = []
        exact = self._exact.get(permission)
        if exact is not None:
            found.append(exact)
        if self._prefix:
            i = permission.find(":")
            while i >= 0:
                bucket = self._prefix.get(permission[: i + 1])
                if bucket is not None:
                    found.append(bucket)
                i = permission.find(":", i + 1)
        if self._global is not None:
            found.append(self._global)
        return found

    def pattern_buckets(self) -> dict[str, Any]:
        """Every pattern the rules name (``ns:*`` for a prefix key, ``*``) -> its rules,
        split by scope (``unscoped``, ``by_role``, ``by_agent``, ``parts_for``): the
        index the reverse queries read backwards."""
        found: dict[str, Any] = dict(self._exact)
        found.update((key + "*", b) for key, b in self._prefix.items())
        if self._global is not None:
            found["*"] = self._global
        return found

    def candidates(self, permission: str) -> list[CompiledRule]:
        """Rules with a pattern matching ``permission``, in declaration order, whoever
        they are scoped to (explain lists them all; a decision needs :meth:`plan`)."""
        found: dict[int, CompiledRule] = {}
        for bucket in self._buckets(permission):
            for part in bucket.every():
                for rule in part.rules:
                    found[rule.order] = rule
        return [found[k] for k in sorted(found)]

    def _parts(self, who: Principal, permission: str) -> list[_Part]:
        parts: list[_Part] = []
        for bucket in self._buckets(permission):
            bucket.parts_for(who, parts)
        return parts

    def applicable(self, principal: Principal, permission: str) -> list[CompiledRule]:
        """Rules with a pattern matching ``permission`` and a scope that includes
        ``principal``, in declaration order. Costs the rules that apply plus a lookup per
        pattern key and role: never a scan of the rules scoped to someone else."""
        return list(_merged(self._parts(principal, permission)))

    def approval_terms(self, rule_ids: tuple[str, ...]) -> tuple[int, int]:
        """(expires seconds, uses) of an approval asked by ``rule_ids``: the strictest of
        the rules' ``expires`` / ``uses`` (docs/approvals.md)."""
        default = (DEFAULT_APPROVAL_EXPIRES, DEFAULT_APPROVAL_USES)
        terms = [self._approval_terms.get(r, default) for r in rule_ids] or [default]
        return min(t[0] for t in terms), min(t[1] for t in terms)

    def budgeted(self, permission: str) -> bool:
        """True when some budget's pattern covers ``permission`` (a valid permission).

        Cached (bounded: past :data:`PLAN_CACHE_SIZE` permissions the oldest answer goes,
        one at a time); a miss is a set lookup per ``ns:`` prefix of the permission."""
        hit = self.budgeted_seen.get(permission)
        if hit is None:
            hit = self._budget_patterns.matches(permission)
            with self._lock:
                if permission not in self.budgeted_seen:
                    if len(self.budgeted_seen) >= PLAN_CACHE_SIZE:
                        del self.budgeted_seen[self._budgeted_order.popleft()]
                    self.budgeted_seen[permission] = hit
                    self._budgeted_order.append(permission)
        return hit

    def shadow_budgeted(self, permission: str) -> bool:
        """True when some shadow budget's pattern covers ``permission``."""
        return self._shadow_budget_patterns.matches(permission)

    def principal(self, principal_id: str) -> Principal:
        p = self.principals.get(principal_id)
        return p if p is not None else Principal(principal_id, frozenset(), {})

    @property
    def cached_plans(self) -> int:
        """How many plans the plan cache holds now (for monitoring memory)."""
        return self._plan_count

    def permission_class(self, permission: str) -> PermissionClass:
        """The :class:`PermissionClass` of a valid ``permission`` (remembered)."""
        found = self.classes.get(permission)
        if found is not None:
            return found
        validate_permission(permission)  # callers check first; this is the last guard
        buckets = tuple(self._buckets(permission))
        schemas = tuple(i for i, (patterns, _) in enumerate(self.schemas)
                        if patterns.matches(permission))
        key = (tuple(id(b) for b in buckets), schemas)
        with self._lock:
            found = self._interned.get(key)
            if found is None:
                schema = (combine([self.schemas[i][1] for i in schemas]) if self.schemas
                          else None)
                found = self._interned[key] = PermissionClass(buckets, schema)
            if permission not in self.classes:
                if len(self.classes) >= PLAN_CACHE_SIZE:
                    self.classes.pop(self._class_order.popleft(), None)
                self.classes[permission] = found
                self._class_order.append(permission)
        return found

    def plan(self, principal_id: str, permission: str) -> Plan:
        """The plan of ``(principal_id, permission)``, for readers (tests, tools): the
        cached Plan, or one made now of the same rules when the cache holds a shared
        :class:`Entry` for it (see :meth:`lookup`)."""
        found = self.lookup(principal_id, permission)
        if type(found) is Plan:
            return found
        return Plan(self.plan_rules(self.permission_class(permission), principal_id))

    def lookup(self, principal_id: str, permission: str) -> Plan | Entry:
        """What the plan cache holds for ``(principal_id, permission)``, resolved now on
        a miss (the pipeline's view of :meth:`plan`).

        Plans are kept per :class:`PermissionClass` and principal. The cache keeps at
        most :data:`PLAN_CACHE_SIZE` plans (or twice the declared agents, when more), so
        a hostile stream of names cannot grow memory without bound. When it is full,
        each new plan evicts one old plan, chosen by CLOCK (second chance): the hand
        walks the plans in the order they were added, gives a plan that was used since
        the hand last passed one more round, and evicts the first one that was not.
        Plans in use stay; nothing is ever dropped wholesale.

        A plan added while the cache has room enters with its reference bit set (no
        eviction has read a bit yet; the hand clears them on its first round), so the
        hits of a cache that never fills set nothing: for a shared entry that is a store
        under the lock saved, per principal. Once full, a new plan enters unused and
        its first hit sets the bit.
        """
        cls = self.permission_class(permission)
        found = cls.plans.get(principal_id)
        if found is not None:
            if not found.used:
                self.touch(cls, principal_id, found)
            return found
        return self.resolve(cls, principal_id)

    def touch(self, cls: PermissionClass, principal_id: str, found: Plan | Entry) -> None:
        """Set the reference bit of a cached plan found unused (a hit): a Plan's own
        bit, or an entry's used twin stored in its place."""
        if type(found) is Plan:
            found.used = True
            return
        with self._lock:  # not where eviction just took it from
            if cls.plans.get(principal_id) is found:
                cls.plans[principal_id] = found.twin  # type: ignore[union-attr]

    def _plan_parts(self, cls: PermissionClass, principal_id: str
                    ) -> tuple[Principal, list[_Part]]:
        """The principal, and the parts of the rule index its plan under ``cls`` is
        made of (the unscoped rules, its own, its roles')."""
        who = self.principal(principal_id)
        parts: list[_Part] = []
        for bucket in cls.buckets:
            bucket.parts_for(who, parts)
        return who, parts

    def plan_rules(self, cls: PermissionClass, principal_id: str) -> PlanRules:
        """The rules of ``principal_id``'s plan under ``cls``, from the rule index
        (the parts of one scope are shared, not rebuilt; nothing is cached here)."""
        who, parts = self._plan_parts(cls, principal_id)
        return self._rules_from(cls, who, parts)

    def _rules_from(self, cls: PermissionClass, who: Principal,
                    parts: list[_Part]) -> PlanRules:
        schema = cls.schema
        if len(parts) != 1:
            return _rules_of(who, _merged(parts), schema)
        part = parts[0]  # one role's or one scope's rules: split at compile time
        if part.reads_principal:
            return PlanRules(who, part.forbids, part.limits, part.permits, part.approvals,
                             part.uses_amount, part.shadows, part.checks, schema)
        # shared by the part's principals (a race makes two equal ones)
        found = part.bare if schema is None else cls.shared.get(id(part))
        if found is None:
            found = PlanRules(None, part.forbids, part.limits, part.permits,
                              part.approvals, part.uses_amount, part.shadows, part.checks,
                              schema)
            if schema is None:
                part.bare = found
            else:
                cls.shared[id(part)] = found
        return found

    def _entry(self, cls: PermissionClass, key: tuple[Test | None, bool]) -> Entry:
        """Make the shared :class:`Entry` of ``key`` (its unused twin) in ``cls``: the
        entry of the rules whose ``entry_key`` it is. Called under ``_lock``."""
        test, unconditional = key
        found = Entry(self, cls, test, False)
        found.twin = Entry(self, cls, test, True)
        found.twin.twin = found
        if unconditional:
            found.fallback = found.twin.fallback = Entry(self, cls, None, True, True)
        cls.entries[key] = found
        return found

    def resolve(self, cls: PermissionClass, principal_id: str) -> Plan | Entry:
        """What to cache for ``principal_id`` under ``cls``, resolved now from the rule
        index and cached (:meth:`lookup` after a miss; the pipeline calls it directly
        when it found the class and no plan)."""
        who, parts = self._plan_parts(cls, principal_id)
        rules: PlanRules | None = None
        if len(parts) == 1 and cls.schema is None and not parts[0].reads_principal:
            # one part alone: its entry is known without making its PlanRules
            part = parts[0]
            known = part.entry_key
            if known is None:
                known = part.entry_key = (_part_entry_key(part),)
            key = known[0]
        else:
            key = None
        if key is None:
            rules = self._rules_from(cls, who, parts)
            key = rules.entry_key  # None: more than an entry holds
        with self._lock:
            cached = cls.plans.get(principal_id)
            if cached is not None:  # another thread resolved it first
                return cached
            found = None
            if key is not None:
                found = cls.entries.get(key)
                if found is None:
                    found = self._entry(cls, key)
            room = self._plan_count < self._plan_bound
            if room:  # no eviction reads the bit yet, so it enters set (see lookup)
                self._plan_count += 1
            else:
                self._evict_one()
            plan: Plan | Entry
            if found is not None:
                plan = found.twin if room else found
            else:
                plan = Plan(rules)  # type: ignore[arg-type]
                plan.used = room
            cls.plans[principal_id] = plan
            self._clock_hand.append((cls, principal_id))
        return plan

    def is_cached(self, principal_id: str, permission: str) -> bool:
        """Does the plan cache hold ``(principal_id, permission)`` now (for monitoring,
        and for the eviction tests)?"""
        cls = self.classes.get(permission)
        return cls is not None and principal_id in cls.plans

    def forget_plans(self) -> None:
        """Empty the plan cache and make every rule part read its rules' tests again
        (after the tests were replaced: plans hold the tests they were made with)."""
        with self._lock:
            for bucket in self.pattern_buckets().values():
                for part in bucket.every():
                    part.refresh()
            self.classes.clear()
            self._class_order.clear()
            self._interned.clear()
            self._clock_hand.clear()
            self._plan_count = 0

    def _evict_one(self) -> None:
        """Evict one plan (CLOCK). The hand gives at most :data:`_SECOND_CHANCES` plans
        another round per eviction, so a miss never pays for a sweep of the whole cache."""
        hand = self._clock_hand
        for _ in range(_SECOND_CHANCES):
            key = hand.popleft()
            plans = key[0].plans
            plan = plans[key[1]]
            if not plan.used:
                del plans[key[1]]
                return
            if type(plan) is Plan:
                plan.used = False
            else:
                plans[key[1]] = plan.twin  # type: ignore[union-attr]
            hand.append(key)
        cls, principal_id = hand.popleft()
        del cls.plans[principal_id]


def _part_entry_key(part: _Part) -> tuple[Test | None, bool] | None:
    """The ``entry_key`` the shared plan rules of ``part`` alone would have (under a
    class without a schema; no condition reads ``principal.*``): the same answer as
    :func:`_answer`, read from the part without making them."""
    checks = part.checks
    if not checks or part.uses_amount:
        return None
    tests = [t for t in checks[::2] if t is not None]
    if len(tests) > 1:
        return None
    if not tests:
        return None, False
    return tests[0], len(checks) > 2


#: How many recently used plans one eviction may pass over before it evicts regardless.
_SECOND_CHANCES = 32


def reads_principal(rules: Iterable[CompiledRule]) -> bool:
    """Does any of ``rules`` have a test that reads ``principal.*``?"""
    return any(r.test is not None and r.reads_principal for r in rules)


def checks_of(forbids: tuple[CompiledRule, ...], limits: tuple[CompiledRule, ...],
              permits: tuple[CompiledRule, ...], approvals: tuple[CompiledRule, ...],
              shadows: tuple[CompiledRule, ...]) -> tuple[Any, ...] | None:
    """A plan's :attr:`Plan.checks`: its permits as one flat ``(test, qid, ...)`` tuple
    when it has no other rule (the rules step then runs them without reading the rules),
    else None. ``(None, qid)`` is an unconditional permit (a role grant)."""
    if forbids or limits or approvals or shadows:
        return None
    return tuple(x for r in permits for x in (r.test, r.qid))


def _merged(parts: list[_Part]) -> tuple[CompiledRule, ...]:
    """The rules of ``parts``, each once, in declaration order."""
    if not parts:
        return ()
    if len(parts) == 1:
        return parts[0].rules
    found: dict[int, CompiledRule] = {}
    for part in parts:
        for rule in part.rules:
            found[rule.order] = rule
    return tuple(found[k] for k in sorted(found))


def _rules_of(who: Principal, rules: tuple[CompiledRule, ...],
              schema: ContextCheck | None) -> PlanRules:
    """The plan rules of several parts' rules (merged in declaration order)."""
    forbids: list[CompiledRule] = []
    limits: list[CompiledRule] = []
    permits: list[CompiledRule] = []
    approvals: list[CompiledRule] = []
    shadows: list[CompiledRule] = []
    uses_amount = False
    for rule in rules:
        if rule.mode != "enforce":
            shadows.append(rule)
        elif rule.kind == "limit":
            limits.append(rule)
        elif rule.effect == "forbid":
            forbids.append(rule)
        elif rule.effect == "permit":
            permits.append(rule)
        elif rule.effect == "approval":
            approvals.append(rule)
        uses_amount = uses_amount or rule.uses_amount
    fs, ls, ps, aps, ss = (tuple(forbids), tuple(limits), tuple(permits),
                           tuple(approvals), tuple(shadows))
    return PlanRules(who if reads_principal(rules) else None, fs, ls, ps, aps, uses_amount, ss,
                     checks_of(fs, ls, ps, aps, ss), schema)


# ---- compile -------------------------------------------------------------------------------

def _qualify(namespace: str, ident: str) -> str:
    return f"{namespace}.{ident}"


def _expr_text(e: ast.Expr) -> str:
    from policyengine.lang._fmt import format_expr
    return format_expr(e)


def compile_policy(files: Sequence[ast.PolicyFile], *,
                   rates: Mapping[str, Any] | None = None,
                   cache: CompileCache | None = None) -> CompiledPolicy:
    """Compile checked files into a :class:`CompiledPolicy`.

    ``cache``: the files compiled by the previous call (:class:`CompileCache`), reused
    for every file that is the same object (the parse cache hands back the same
    :class:`~policyengine.lang.ast.PolicyFile` for unchanged text) with the same money
    (base currency and rates): its rules, their tests and its part of the indexes.

    ``rates`` maps a file name to the :class:`~policyengine.money.RateSource` built from
    that file's ``rate`` / ``rates`` statements (see :func:`policyengine.engine.build_rates`).
    Money is per file: a file's amounts are read in its own base currency.
    """
    rates = rates or {}
    money: dict[str, FileMoney] = {}
    default = next((st.code for f in files if ast.DefaultCurrencyDecl in f.kinds
                    for st in f.statements if isinstance(st, ast.DefaultCurrencyDecl)), None)
    for f in files:
        base = None
        if ast.CurrencyDecl in f.kinds:
            base = next(st.code for st in f.statements if isinstance(st, ast.CurrencyDecl))
        money[f.name] = FileMoney(f.name, base, default, rates.get(f.name))
    tz = next((st.zone for f in files if ast.TzDecl in f.kinds for st in f.statements
               if isinstance(st, ast.TzDecl)), "UTC")
    found = next(((f.name, st) for f in files if ast.DelegationDecl in f.kinds
                  for st in f.statements if isinstance(st, ast.DelegationDecl)), None)
    delegation = found[1] if found is not None else None
    if found is not None:
        delegation_rates = money[found[0]].rates
    else:
        with_rates = {id(m.rates): m.rates for m in money.values() if m.rates is not None}
        delegation_rates = next(iter(with_rates.values())) if len(with_rates) == 1 else None

    units: list[_FileUnit] = []
    for slot, f in enumerate(files):
        fm = money[f.name]
        key = _money_key(fm)
        unit = cache.lookup(f, key) if cache is not None else None
        if unit is None:
            unit = _FileUnit(f, fm, slot)
        elif unit.slot != slot:
            unit = unit.moved(slot)
        if cache is not None:
            cache.keep(f, key, unit)
        units.append(unit)
    if cache is not None:
        cache.done()
    from policyengine.tools._egress import compile_tools
    budgets, budget_files, shadow_budgets, shadow_modes = _budget_specs(files)
    rate_limits, shadow_rate_limits, rate_modes = _rate_limit_specs(files)
    shadow_modes.update(rate_modes)  # ids are unique per namespace: no clash
    from policyengine.tools._redaction import RedactionRule
    log_redactions = tuple(RedactionRule(st.path, st.strategy, keep=st.keep or 0)
                           for f in files if ast.LogRedact in f.kinds for st in f.statements
                           if isinstance(st, ast.LogRedact))
    rules = tuple(r for u in units for r in u.role_rules) + tuple(
        r for u in units for r in u.rules)
    prices = _price_table(files)
    policy = CompiledPolicy(rules, _merge_principals(units), money, tz, tools=compile_tools(files),
                            prices=prices,
                            budgets=budgets, delegation=delegation, files=tuple(files),
                            shadow_budgets=shadow_budgets, shadow_modes=shadow_modes,
                            rate_limits=rate_limits, shadow_rate_limits=shadow_rate_limits,
                            default_currency=default, delegation_rates=delegation_rates,
                            budget_rates={bid: money[name].rates
                                          for bid, name in budget_files.items()},
                            log_redactions=log_redactions,
                            schemas=tuple((_PatternSet(st.patterns), compile_schema(st))
                                          for f in files if ast.SchemaDecl in f.kinds
                                          for st in f.statements
                                          if isinstance(st, ast.SchemaDecl)),
                            resources=_resources(files))
    policy.set_index(_merge_buckets([u.exact for u in units]),
                     _merge_buckets([u.prefix for u in units]),
                     _merge_buckets([u.every for u in units]).get("*"),
                     {q: t for u in units for q, t in u.approval_terms.items()})
    return policy


#: A rule's ``order`` is ``rank * _RANK + slot * _SLOT + n``: role grants (rank 0) before
#: every other rule (rank 1), then by file (``slot``: its position in the set), then by
#: statement. A file that keeps its position keeps its rules' orders across a reload.
_SLOT = 1 << 24
_RANK = 1 << 48


class _FileUnit:
    """One file compiled: its role grants and rules, numbered for its position in the
    set; its part of the indexes, by pattern key (its buckets, built once); its agents.
    Reused whole by a reload while the file, its money and its position do not change."""

    __slots__ = ("agents", "approval_terms", "every", "exact", "prefix", "principals",
                 "role_rules", "rules", "slot")

    def __init__(self, f: ast.PolicyFile | None, fm: FileMoney | None, slot: int) -> None:
        self.slot = slot
        if f is None or fm is None:
            return
        roles = [st for st in f.statements if isinstance(st, ast.RoleDecl)]
        self.role_rules = tuple(
            CompiledRule(f"role:{st.name}", "permit", "role", st.patterns,
                         frozenset({st.name}), frozenset(), None, (), order=slot * _SLOT + n)
            for n, st in enumerate(roles))
        self.rules = _compile_file_rules(f, fm)
        base = _RANK + slot * _SLOT
        for n, rule in enumerate(self.rules):
            rule.order = base + n
        self.agents = [st for st in f.statements if isinstance(st, ast.AgentDecl)]
        self.principals = _principals(self.agents)
        self._index()

    def moved(self, slot: int) -> _FileUnit:
        """The same rules (tests and AST shared) numbered for another position."""
        unit = _FileUnit(None, None, slot)
        shift = (slot - self.slot) * _SLOT
        unit.role_rules = tuple(_clone(r, r.order + shift) for r in self.role_rules)
        unit.rules = tuple(_clone(r, r.order + shift) for r in self.rules)
        unit.agents = self.agents
        unit.principals = self.principals
        unit._index()
        return unit

    def _index(self) -> None:
        exact: dict[str, list[CompiledRule]] = {}
        prefix: dict[str, list[CompiledRule]] = {}
        every: list[CompiledRule] = []
        self.approval_terms: dict[str, tuple[int, int]] = {}
        for rule in self.role_rules + self.rules:
            if rule.approval_terms is not None:
                self.approval_terms[rule.qid] = rule.approval_terms
            for pat in set(rule.patterns):
                if pat == "*":
                    every.append(rule)
                elif pat.endswith(":*"):
                    prefix.setdefault(pat[:-1], []).append(rule)
                else:
                    exact.setdefault(pat, []).append(rule)
        self.exact = {k: _Bucket(v) for k, v in exact.items()}
        self.prefix = {k: _Bucket(v) for k, v in prefix.items()}
        self.every = {"*": _Bucket(every)} if every else {}


def _merge_buckets(parts: list[dict[str, _Bucket]]) -> dict[str, _Bucket]:
    """One index from the files' own: a key only one file has keeps that file's bucket
    (the common case, merged at C speed); a key several files share gets a bucket of
    their rules together, in declaration order."""
    out: dict[str, _Bucket] = {}
    shared: dict[str, list[_Bucket]] = {}
    for buckets in parts:
        if not buckets:
            continue
        if out.keys().isdisjoint(buckets):
            out.update(buckets)
            continue
        for key, bucket in buckets.items():
            if key in out:
                shared.setdefault(key, [out[key]]).append(bucket)
            else:
                out[key] = bucket
    for key, owners in shared.items():
        found = {r.order: r for b in owners for part in b.every() for r in part.rules}
        out[key] = _Bucket([found[k] for k in sorted(found)])
    return out


def _principals(agents: Iterable[ast.AgentDecl]) -> dict[str, Principal]:
    """Every agent's roles (all its declarations together) and attributes (a later
    declaration's value wins)."""
    agent_roles: dict[str, set[str]] = {}
    agent_attrs: dict[str, dict[str, Any]] = {}
    for st in agents:
        agent_roles.setdefault(st.id, set()).update(st.roles)
        agent_attrs.setdefault(st.id, {}).update({k: v.value for k, v in st.attributes})
    return {aid: Principal(aid, frozenset(r), agent_attrs.get(aid, {}))
            for aid, r in agent_roles.items()}


def _resources(files: Sequence[ast.PolicyFile]) -> dict[str, dict[str, dict[str, Any]]]:
    """The declared resources by type and id (declaration order; several declarations of
    one resource merge, a later attribute value wins)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for f in files:
        if ast.ResourceDecl not in f.kinds:
            continue
        for st in f.statements:
            if isinstance(st, ast.ResourceDecl):
                attrs = out.setdefault(st.type, {}).setdefault(st.ident, {})
                attrs.update((k, v.value) for k, v in st.attributes)
    return out


def _merge_principals(units: list[_FileUnit]) -> dict[str, Principal]:
    """The files' principals together; an agent declared in several files is built
    again from all its declarations."""
    out: dict[str, Principal] = {}
    shared: set[str] = set()
    for unit in units:
        if not out.keys().isdisjoint(unit.principals):
            shared.update(out.keys() & unit.principals.keys())
        out.update(unit.principals)
    if shared:
        out.update(_principals(st for u in units for st in u.agents if st.id in shared))
    return out


def _clone(rule: CompiledRule, order: int) -> CompiledRule:
    """A shallow copy with another ``order`` (the compiled test and AST are shared)."""
    clone = object.__new__(CompiledRule)
    clone.__dict__.update(rule.__dict__)
    clone.order = order
    return clone


def _compile_file_rules(f: ast.PolicyFile, fm: FileMoney) -> tuple[CompiledRule, ...]:
    """One file's rules with their tests: build_many compiles each distinct condition
    source of the file once (rules that differ only in their literals share it)."""
    rules: list[CompiledRule] = []
    pending: list[tuple[CompiledRule, tuple[str, dict[str, Any]]]] = []
    for st in f.statements:
        if isinstance(st, (ast.Rule, ast.LimitDecl, ast.ApprovalOverDecl)):
            rule, source, rule_consts = _compile_rule(st, f.namespace, fm)
            rules.append(rule)
            if source is not None:
                pending.append((rule, (source, rule_consts)))
    if pending:
        tests = build_many([test for _, test in pending])
        for (rule, _), test in zip(pending, tests, strict=True):
            rule.test = test
    return tuple(rules)


def _money_key(fm: FileMoney) -> tuple[Any, ...] | None:
    """What a file's compiled money literals depend on, or None when that cannot be told
    from the outside (a rate source other than a plain table: ask it again)."""
    from policyengine.money._rates import StaticRates
    rates = fm.rates
    if rates is None:
        return (fm.base, fm.default, None)
    if type(rates) is not StaticRates:
        return None
    as_of = rates.as_of
    table = tuple(sorted((code, rates.rate(code, rates.base, as_of)) for code in rates.codes))
    return (fm.base, fm.default, rates.base, as_of, rates.max_age, table)


class CompileCache:
    """Per file, what the last compile made of it (:class:`_FileUnit`), for
    ``Engine.reload``.

    Keyed by the parsed file object itself (unchanged text parses to the same object, see
    :class:`~policyengine.lang.ParseCache`) and by what its money literals were converted
    with. Holds only the files of the latest compile. Not thread-safe: one per engine,
    used under the engine's reload.
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple[ast.PolicyFile, Any, _FileUnit]] = {}
        self._next: dict[int, tuple[ast.PolicyFile, Any, _FileUnit]] = {}
        self.hits = 0

    def lookup(self, f: ast.PolicyFile, key: Any) -> _FileUnit | None:
        entry = self._entries.get(id(f))
        if key is None or entry is None or entry[0] is not f or entry[1] != key:
            return None
        self.hits += 1
        return entry[2]

    def keep(self, f: ast.PolicyFile, key: Any, unit: _FileUnit) -> None:
        if key is not None:
            self._next[id(f)] = (f, key, unit)

    def done(self) -> None:
        self._entries, self._next = self._next, {}


def _price_table(files: Sequence[ast.PolicyFile]) -> Any:
    """The policy set's LLM price table (a ``PriceTable``), or None without ``price``
    statements."""
    from policyengine.budgets.pricing import PriceTable
    from policyengine.lang._checker import price_of
    entries = [price_of(st) for f in files for st in f.statements
               if isinstance(st, ast.PriceDecl)]
    return PriceTable(entries) if entries else None


def _rate_limit_specs(files: Sequence[ast.PolicyFile]
                      ) -> tuple[tuple[Any, ...], tuple[Any, ...], dict[str, str]]:
    """The enforced rate limits (RateLimitSpec, ids qualified with their file's
    namespace), the shadow ones, and per shadow rate limit id, its mode."""
    from policyengine.budgets.ratelimit import RateLimitSpec
    enforced, shadows = [], []
    modes: dict[str, str] = {}
    for f in files:
        if ast.RateLimitDecl not in f.kinds:
            continue
        for st in f.statements:
            if isinstance(st, ast.RateLimitDecl):
                spec = RateLimitSpec(_qualify(f.namespace, st.id), st.patterns, st.count,
                                     st.per, st.burst, st.subject)
                if st.mode == "enforce":
                    enforced.append(spec)
                else:
                    shadows.append(spec)
                    modes[spec.id] = st.mode
    return tuple(enforced), tuple(shadows), modes


def _budget_specs(files: Sequence[ast.PolicyFile]
                  ) -> tuple[tuple[Any, ...], dict[str, str], tuple[Any, ...], dict[str, str]]:
    """The enforced budgets (BudgetSpec); per budget id, the name of the file declaring
    it; the shadow budgets; and per shadow budget id, its mode."""
    from policyengine.budgets import BudgetSpec
    specs = []
    shadows = []
    modes: dict[str, str] = {}
    owner: dict[str, str] = {}
    for f in files:
        if ast.BudgetDecl not in f.kinds:
            continue
        file_tz = next((st.zone for st in f.statements if isinstance(st, ast.TzDecl)), "UTC")
        for st in f.statements:
            if isinstance(st, ast.BudgetDecl):
                spec = BudgetSpec(
                    _qualify(f.namespace, st.id), st.patterns, st.limit, st.unit, st.window,
                    st.rolling_seconds, st.subject, st.tz or file_tz,
                    st.overdraft if st.overdraft is not None else Decimal(0), st.caps)
                owner[spec.id] = f.name
                if st.mode == "enforce":
                    specs.append(spec)
                else:
                    shadows.append(spec)
                    modes[spec.id] = st.mode
    return tuple(specs), owner, tuple(shadows), modes


_FLOOR = Context(prec=100, rounding=ROUND_FLOOR, Emax=999, Emin=-999,
                 traps=[InvalidOperation, Overflow, DivisionByZero])


def money_literals(fm: FileMoney) -> Callable[[ast.MoneyLit], Decimal]:
    """How the conditions of ``fm``'s file read money literals (in its base currency,
    rounded down), for code generated outside this module."""
    return _to_base(fm)


def _to_base(fm: FileMoney) -> Callable[[ast.MoneyLit], Decimal]:
    """Money literals (caps, thresholds) in the base currency, rounded *down* to its
    minor unit: a limit never rounds up. (Spends round up: see the evaluator.)"""
    quantum: Decimal | None = None
    if fm.base is not None:
        from policyengine.money._money import decimal_places
        quantum = Decimal(1).scaleb(-decimal_places(fm.base), _FLOOR)

    def to_base(m: ast.MoneyLit) -> Decimal:
        if fm.base is None or quantum is None:
            return m.amount
        value = m.amount
        if m.currency != fm.base:
            # Converted once, at compile time, with the table as of its own date: a
            # literal is part of the policy, not of a request.
            from policyengine.money._rates import source_fraction
            try:
                # The exact fraction (a cross rate is n/d), rounded once, down: at the
                # 34-digit rate() a cross rate rounded down took a cent off a limit worth
                # a whole number of cents (3 GBP at 1/3 EUR: 0.99). A source of the
                # caller's own is checked as every conversion checks it.
                numerator, denominator = source_fraction(
                    fm.rates, m.currency, fm.base, getattr(fm.rates, "as_of", None))
            except Exception as exc:  # a RateError, or a source's own as_of failing
                from policyengine.lang._source import PolicyError, Problem
                raise PolicyError([Problem(
                    "E127", f"cannot convert {m.amount} {m.currency} to {fm.base}: "
                    f"{getattr(exc, 'message', exc)}",
                    m.span.file, m.span.line, m.span.column)]) from None
            value = _FLOOR.divide(_FLOOR.multiply(value, numerator), denominator)
        return value.quantize(quantum, context=_FLOOR)
    return to_base


def _compile_rule(st: ast.Rule | ast.LimitDecl | ast.ApprovalOverDecl, ns: str,
                  fm: FileMoney) -> tuple[CompiledRule, str | None, dict[str, Any]]:
    """The rule (its ``test`` still unset) and the source and constants of its test."""
    qid = _qualify(ns, st.id)
    to_base = _to_base(fm)
    gen = ConditionCodegen(fm, to_base)
    source = gen.conditions(st.conditions) if st.conditions else None
    roles = frozenset(s.name for s in st.scope if s.kind == "role")
    agents = frozenset(s.name for s in st.scope if s.kind == "agent")
    terms = None
    if not isinstance(st, ast.LimitDecl) and st.effect == "approval":
        given = st.approval or ast.ApprovalTerms()
        terms = (given.expires if given.expires is not None else DEFAULT_APPROVAL_EXPIRES,
                 given.uses if given.uses is not None else DEFAULT_APPROVAL_USES)
    if isinstance(st, ast.LimitDecl):
        rule = CompiledRule(qid, "forbid", "limit", st.patterns, roles, agents, None,
                            st.conditions, to_base(st.cap), True, fm, span=st.span)
    elif isinstance(st, ast.ApprovalOverDecl):
        rule = CompiledRule(qid, "approval", "approval_over", st.patterns, roles, agents, None,
                            st.conditions, to_base(st.threshold), True, fm, span=st.span)
    else:
        rule = CompiledRule(qid, st.effect, "rule", st.patterns, roles, agents, None,
                            st.conditions, None, gen.uses_amount, fm, span=st.span)
    rule.approval_terms = terms
    rule.mode = st.mode
    rule.reads_principal = gen.reads_principal
    return rule, source, gen.consts


class CoverageSink:
    """What :func:`instrument_rules` reports to (the policy tests' coverage): one
    recorder per written rule (its whole guard) and one per atom of its conditions."""

    def rule(self, rule: CompiledRule) -> Recorder:  # pragma: no cover - interface
        raise NotImplementedError

    def branch(self, rule: CompiledRule, expr: ast.Expr, text: str
               ) -> Recorder:  # pragma: no cover - interface
        raise NotImplementedError


def instrument_rules(policy: CompiledPolicy, sink: CoverageSink) -> None:
    """Give every written rule of ``policy`` (role grants aside) a test that reports to
    ``sink``: the same conditions, compiled again with a recorder around the rule's guard
    and around each atom of its conditions. Only for ``policyengine test --coverage``:
    the engine never compiles these, so decisions without coverage cost nothing more.
    Mutates ``policy``'s own rules (clones; the compile cache's copies are untouched)."""
    pending: list[tuple[CompiledRule, tuple[str, dict[str, Any]]]] = []
    for i, rule in enumerate(policy.rules):
        if rule.kind == "role":
            continue
        fm = rule.money or FileMoney("", None, None, None)

        def branch(e: ast.Expr, rule: CompiledRule = rule) -> Recorder:
            return sink.branch(rule, e, _expr_text(e))

        gen = ConditionCodegen(fm, _to_base(fm), f"_c{i}_", branch)
        source = gen.conditions(rule.conditions) if rule.conditions else "True"
        guard = gen.const(sink.rule(rule))
        pending.append((rule, (f"{guard}(lambda: {source})", gen.consts)))
    if pending:
        tests = build_many([test for _, test in pending])
        for (rule, _), test in zip(pending, tests, strict=True):
            rule.test = test
    policy.forget_plans()  # plans and rule parts hold the tests they were made with
