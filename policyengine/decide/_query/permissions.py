"""``permissions_of``'s part of the index: a subject's permit patterns, the regions
under each (a pattern minus the narrower patterns its rules name) and their lines, kept
per pattern and scopes where every principal with those scopes shares them, some worked
out at the index build. See the package docstring."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from functools import partial
from itertools import chain
from typing import TYPE_CHECKING, Any

from policyengine.decide._query.answers import Entries, made
from policyengine.decide._query.folding import (
    EMPTY,
    NONE,
    Folder,
    Line,
    Rows,
    Sig,
    State,
    Subject,
    extended,
    region_lines,
    sig_of,
)
from policyengine.decide._query.index import ANSWER_CACHE_SIZE, IndexCore
from policyengine.decide._runtime import Principal

if TYPE_CHECKING:
    from policyengine.decide._compiled import CompiledPolicy, CompiledRule

__all__ = ["PermissionQueries"]


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


def _first_pattern(rows: Rows) -> str:
    return rows.rows[0][0]


def _first_pattern_of_row(row: tuple[str, tuple[str, ...], tuple[Line, ...]]) -> str:
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


class PermissionQueries(IndexCore):
    """The regions and lines of ``permissions_of`` (see :meth:`permissions`)."""

    def __init__(self, policy: CompiledPolicy) -> None:
        super().__init__(policy)
        #: Per scope (``""``: unscoped, ``role NAME``, ``agent ID``): its permit patterns
        #: (a role's and an agent's found when first asked).
        self._permits: dict[str, frozenset[str]] = {"": self.unscoped_permits}
        #: Per (widest permit pattern, the scopes with rules there): its regions' lines.
        self._subtrees: dict[tuple[str, tuple[str, ...]], Rows] = {}

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

    def permit_patterns(self, subject: Subject) -> set[str]:
        """The patterns of the enforced permits in the subject's scopes."""
        who = subject.principal
        found = set(self._permits[""])
        for r in who.roles:
            if r in self.role_keys:
                found.update(self._role_permits(r))
        if subject.kind == "agent" and who.id in self.agent_keys:
            found.update(self._agent_permits(who.id))
        return found

    def _lists(self, subject: Subject) -> list[list[str]]:
        """The sorted pattern keys of the subject's scopes (unscoped, its roles, itself)."""
        who = subject.principal
        lists = [self.unscoped_keys]
        lists.extend(self.role_keys[r] for r in who.roles if r in self.role_keys)
        if subject.kind == "agent" and who.id in self.agent_keys:
            lists.append(self.agent_keys[who.id])
        return lists

    def regions(self, subject: Subject, tops: Iterable[str]) -> list[str]:
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

    def _in_scope(self, subject: Subject, key: str) -> bool:
        """Whether the pattern ``key`` holds a rule of the subject's scopes."""
        b = self.buckets[key]
        who = subject.principal
        return b.unscoped is not None or bool(
            b.by_role and not who.roles.isdisjoint(b.by_role)) or bool(
            subject.kind == "agent" and b.by_agent and who.id in b.by_agent)

    def _scopes(self, subject: Subject, top: str) -> tuple[str, ...]:
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

    def _groups(self, subject: Subject) -> dict[str, list[str]]:
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

    def permissions(self, subject: Subject) -> Entries:
        """Every line of ``subject``, complete (its length exact, every line decided):
        per widest permit pattern, the regions under it, kept per (pattern, the
        subject's scopes that have rules there) when no rule involved reads the
        principal (then every principal with those scopes there has the same lines).
        The lines are made for the subject when the answer is first read."""
        folder = Folder(subject, self)
        found_all: list[Rows] = []
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
                       partial(made, subject.name, subject.kind, found_all))

    def _work(self, subject: Subject, folder: Folder, ckey: tuple[str, tuple[str, ...]],
              regions: list[str], printed: bool = False) -> Rows:
        found, mine = self._subtree(subject, folder, regions, printed)
        if not mine:
            self._share(ckey, found)
        return found

    def _share(self, ckey: tuple[str, tuple[str, ...]], found: Rows) -> None:
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

    def _overlaid(self, subject: Subject, folder: Folder,
                  ckey: tuple[str, tuple[str, ...]]) -> Rows | None:
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
        choice: tuple[Rows, list[str]] | None = None
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
        runs: list[tuple[int, int, list[tuple[str, tuple[str, ...], tuple[Line, ...]]]]] = []
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
            state = extended(EMPTY, self.policy.applicable(who, _rep(wider[0])), folder,
                            NONE)
            held = sig_of(state)
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
        out: list[tuple[str, tuple[str, ...], tuple[Line, ...]]] = []
        at = 0
        for begin, end, new in runs:
            out.extend(rows[at:begin])
            out.extend(new)
            at = end
        out.extend(rows[at:])
        made = Rows(out, count)
        if not mine:
            self._share(ckey, made)
        return made

    def prepare(self) -> None:
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
        subjects: list[Subject] = []
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
            folder = Folder(subject, self)
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

    def _subtree(self, subject: Subject, folder: Folder, regions: list[str],
                 printed: bool = False, start: tuple[Sig, Any] | None = None
                 ) -> tuple[Rows, bool]:
        """The lines of ``regions`` (under one widest pattern: see :meth:`regions`), and
        whether a rule involved reads the principal (``printed``: the residuals printed
        now, else when first read). ``start``: what holds just above the first region
        and the row whose lines those are (see :meth:`_overlaid`), else nothing."""
        policy = self.policy
        who = subject.principal
        nested = self.nested
        buckets = self.buckets
        rows: list[tuple[str, list[str], tuple[Line, ...]]] = []
        folder.read_principal = False
        # The regions come sorted, each after the wider ones and every ``a:*`` followed
        # by all the patterns under it. The open ``a:*`` regions form a stack of (the
        # prefix of what it matches, the rules deciding it (see State), and the listed
        # region whose lines hold for it: what its lines are made of (Sig), its row).
        # A region whose lines are made of the same as those that hold for the region
        # around it is not listed apart.
        stack: list[tuple[str, State, Sig, Any]] = []
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
                state = extended(above, rules, folder, nested)
            else:
                # a widest region: every wider pattern's rules, from the index
                rules = self._applicable(who, key) if many else policy.applicable(
                    who, _rep(key))
                state = extended(EMPTY, rules, folder, NONE)
                held, row = start if start is not None else ((), None)
            sig = sig_of(state)
            if sig != held:
                if held:
                    row[1].append(key)  # the regions come sorted: so do the exclusions
                row = (key, [], region_lines(state, folder, printed))
                rows.append(row)
            if key[-1] == "*":
                stack.append((key[:-1], state, sig, row))
        # whether a guard that decides a line read the principal (the guards of the rules
        # a region meets after a forbid that always applies decide nothing)
        mine = folder.read_principal
        return Rows([(key, tuple(ex) if ex else (), lines) for key, ex, lines in rows]), mine
