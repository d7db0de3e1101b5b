"""The reverse-query index: the compiled policy's rule index read backwards, what
every query reads (the pattern keys per scope, the holders of each role, which rules
read the principal, the answer cache). The queries' own parts are in
:mod:`.permissions` and :mod:`.principals`; :class:`~policyengine.decide._query.QueryIndex`
puts them together."""

from __future__ import annotations

import gc
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from policyengine.decide._query.answers import Access
from policyengine.decide._query.folding import (
    COMPOUND,
    EMPTY,
    READS_PRINCIPAL,
    READS_REQUEST,
    Folded,
    Folder,
    Line,
    Sig,
    Subject,
    extended,
    negated,
    over_cap,
    plain_guard,
    reads_of,
    region_lines,
    sig_of,
    value_class,
)
from policyengine.decide._runtime import Principal
from policyengine.permissions import matches

if TYPE_CHECKING:
    from policyengine.decide._compiled import CompiledPolicy, CompiledRule

__all__ = ["ANSWER_CACHE_SIZE", "FEW", "IndexCore", "paused"]

_T = TypeVar("_T")

#: Answers kept per compiled policy (principals, permissions, tool lookups together);
#: past that, the oldest goes first.
ANSWER_CACHE_SIZE = 16384
#: A role held by no more agents than this is "few-held" (see QueryIndex._several).
FEW = 64


class IndexCore:
    """The compiled policy's rule index, read backwards; built on first query.

    What every query needs is built here: the pattern keys sorted, per scope. What only
    some queries need (each scope's permit patterns, which rules read the principal,
    the holders of each role) is worked out when first asked, then kept: the parts of
    one query only in its own class (:mod:`.permissions`, :mod:`.principals`)."""

    def __init__(self, policy: CompiledPolicy) -> None:
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
        #: The patterns of the unscoped permits.
        self.unscoped_permits = frozenset(unscoped_permits)
        self.role_keys: dict[str, list[str]] = dict(role_keys)
        self.agent_keys: dict[str, list[str]] = dict(agent_keys)
        #: The rules named under two nested patterns (``a:*, a:b``): a region may meet
        #: them twice.
        self.nested = frozenset(
            r.order for r in [r for r in policy.rules if len(r.patterns) > 1] if any(
                p != q and matches(p, q) for p in r.patterns for q in r.patterns))
        #: Per rule with conditions (by order), whether they read the principal (its id,
        #: roles or attributes): found when a query first meets the rule.
        self._personal: dict[int, bool] = {}
        #: Guards (folded conditions) of the rules that do not read the principal, as
        #: queries fold them (a plain one, see plain_guard, when the rule is classified).
        self.guards: dict[int, Folded] = {}
        #: Lines per set of rules (by their orders) none of which reads the principal.
        self._lines: dict[tuple[int, ...], tuple[tuple[Line, ...], Sig]] = {}
        #: Texts of the guards of the rules that do not read the principal.
        self.texts: dict[int, str] = {}
        self._holders: dict[str, frozenset[str]] | None = None
        #: ``FEW`` when made, and :meth:`wide_partners`.
        self._wide: tuple[int, dict[str, frozenset[str]]] | None = None
        #: Per attribute name: each declared agent's value class, and the agents by class.
        self._attribute_of: dict[str, dict[str, Any]] = {}
        self._attribute_classes: dict[str, list[frozenset[str]]] = {}
        self._answers: dict[tuple[str, ...], Any] = {}
        self._order: deque[tuple[str, ...]] = deque()
        self._lock = threading.Lock()

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
        """Per widely held role (more than ``FEW`` holders) that shares a holder with
        another one, those others. Made with the holders (at the index build): when no
        two of a permission's roles are partners, every agent holding two of them holds a
        few-held one, and principals_with finds them, and how many agents hold any, from
        the few-held roles' holders alone, without joining 10,000 holders at the
        question (about 0.3 ms). One union of the widely held roles' holders when none
        share (the common case); else those that do are compared pairwise."""
        found = self._wide
        if found is not None and found[0] == FEW:
            return found[1]
        holders = self.holders
        wide = sorted([r for r, ids in holders.items() if len(ids) > FEW])
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
        self._wide = (FEW, done)
        return done

    def attribute_class_of(self, name: str) -> dict[str, Any]:
        """Per declared agent having attribute ``name``, its value class (see
        :func:`value_class`); made on first use."""
        found = self._attribute_of.get(name)
        if found is None:
            found = self._attribute_of[name] = {
                aid: value_class(p.attributes[name], aid)
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
                read = reads_of(e)
                found = read & READS_PRINCIPAL != 0
                if read == READS_REQUEST and type(e) not in COMPOUND:  # a plain guard
                    self.guards[rule.order] = over_cap(
                        rule, e if cond.kind == "when" else negated(e))
            else:
                reads = [reads_of(c.expr) for c in conditions]
                found = any(read & READS_PRINCIPAL for read in reads)
                if not found:
                    plain = plain_guard(rule, reads)
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
    def subject(self, kind: str, name: str) -> Subject:
        if kind == "agent":
            return Subject(kind, name, self.policy.principal(name), True, True)
        if kind == "role":
            return Subject(kind, name, Principal("", frozenset({name}), {}), False, False)
        return Subject(kind, name, Principal("", frozenset(), {}), False, True)

    def lines(self, rules: Sequence[CompiledRule], folder: Folder,
              key: tuple[int, ...] | None) -> tuple[tuple[Line, ...], Sig]:
        """:func:`_lines` of ``rules`` (in any order, repeats allowed) and what an answer
        compares of them (status and residuals), kept under ``key`` when given: a key
        names one set of rules none of which reads the principal, whose lines are then
        the same for every principal the rules apply to."""
        found = self._lines.get(key) if key is not None else None
        if found is None:
            by_order = {r.order: r for r in rules}
            state = extended(EMPTY, [by_order[k] for k in sorted(by_order)], folder,
                            frozenset())
            found = (region_lines(state, folder), sig_of(state))
            if key is not None:
                if len(self._lines) >= ANSWER_CACHE_SIZE:
                    self._lines.clear()  # tuples of a few strings, made again on next use
                self._lines[key] = found
        return found

    def access(self, subject: Subject, permission: str) -> tuple[Access, ...]:
        """The lines of ``subject`` for one concrete permission."""
        folder = Folder(subject, self)
        rules = self.policy.applicable(subject.principal, permission)
        key = None if any(self.personal(r) for r in rules) else tuple(r.order for r in rules)
        return tuple(Access(subject.name, subject.kind, permission, (), s, w, u, r)
                     for s, w, u, r in self.lines(rules, folder, key)[0])


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
