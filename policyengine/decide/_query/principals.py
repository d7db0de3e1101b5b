"""``principals_with``'s part of the index: the agents that may exercise a permission,
grouped by the roles and values that decide their lines, so that each group is worked
out once. See the package docstring."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from functools import partial
from typing import TYPE_CHECKING, Any

from policyengine.decide._query.answers import Access, Entries, renamed, written
from policyengine.decide._query.folding import (
    ABSENT,
    EMPTY,
    MISSING,
    NONE,
    OTHER_ID,
    READS_PRINCIPAL,
    READS_REQUEST,
    Folder,
    State,
    Subject,
    extended,
    reads_of,
    region_lines,
    value_class,
    writes_in,
)
from policyengine.decide._query.index import FEW, IndexCore
from policyengine.decide._runtime import Principal
from policyengine.lang import ast

if TYPE_CHECKING:
    from policyengine.decide._compiled import CompiledPolicy, CompiledRule

__all__ = ["PrincipalQueries"]


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
        read = reads_of(e)
        if read & READS_PRINCIPAL and not read & READS_REQUEST:  # folded to a value
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
            values: Any = tuple(sorted((k, value_class(v, aid)) for k, v in attrs.items()))
        else:
            values = tuple([value_class(attrs.get(n, MISSING), aid)
                            for n in self.attributes])
        return (aid if aid in self.ids else OTHER_ID, who.roles if self.roles else None,
                values)

    def split(self, groups: list[Collection[str]], index: IndexCore
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
                        found_sets.setdefault(by_value.get(aid, ABSENT), set()).add(aid)
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


class PrincipalQueries(IndexCore):
    """The groups and lines of ``principals_with`` (see :meth:`principals`)."""

    def __init__(self, policy: CompiledPolicy) -> None:
        super().__init__(policy)
        #: Per rule reading the principal (by order), whether only to write its values
        #: into a residual (see written_in).
        self._written_in: dict[int, bool] = {}
        #: The declared agents' ids, sorted (made when first needed: see _ordered).
        self._sorted_agents: list[str] | None = None

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
            if len(ids) <= FEW:
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
            if len(ids) <= FEW:
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
                writes_in(c.expr) for c in rule.conditions)
        return found

    def _written(self, lines: Sequence[Access], aid: str) -> Iterator[Access]:
        """``lines`` (worked out for another agent with the same roles, see
        :meth:`written_in`) for the agent ``aid``: the same lines, their residuals printed
        with its own values when read."""
        return written(lines, aid, Folder(self.subject("agent", aid), self))

    def _sharing(self, permission: str, every: Sequence[CompiledRule],
                 classify: Callable[[Principal], Any] | None = None
                 ) -> Callable[[Subject], tuple[Access, ...]]:
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
        base: dict[Any, State] = {}

        def access(subject: Subject) -> tuple[Access, ...]:
            folder = Folder(subject, self)
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
                state = base[bkey] = extended(EMPTY, unscoped, folder, NONE)
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
                state = extended(state, [found[k] for k in sorted(found)], folder, NONE)
            name, kind = subject.name, subject.kind
            return tuple([Access(name, kind, permission, (), s, w, u, ids)
                          for s, w, u, ids in region_lines(state, folder)])
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
                    out.extend(renamed(lines, aid, "agent"))
            out.extend(tail)
            return tuple(out)
        return Entries(total, make)
