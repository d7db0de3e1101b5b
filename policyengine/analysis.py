"""Policy analysis (``policyengine analyze``, docs/analysis.md): rules that can never apply,
rules no principal can reach, duplicates, permits a forbid, limit or approval always
overrides, limits above a budget, and the decisions that change between two versions.

How it decides. The language is small: a condition compares request values against
literals, the permission vocabulary is the finite set of patterns the policy names, and
the principals are the declared agents plus "anyone else". Within that *fragment* the
outcome of every comparison (true, false or an evaluation error) is the same for all
values between two neighbouring literals, so one representative value per region (a
*witness*) stands for the whole region: below the smallest literal, each literal, each
midpoint, above the largest; each string literal and one string that is none of them;
true, false; the key missing. Deciding every combination of witnesses is therefore an
exact decision procedure for the fragment, and it is run on the engine's own rule
evaluation (:func:`policyengine.decide._evaluator.rule_table`, what ``explain`` shows),
never on a second evaluator that could disagree with it.

What falls outside the fragment (a function call such as ``startswith()``, a path
compared with another path, membership in a list the request carries, ``grant.*``
fields, a money literal in a foreign currency, or more combinations than the request
bound) is analysed by sampling the same witnesses: a finding is then never claimed (no
sample proves that something cannot happen), and finding W300 says which rule could not
be decided and why.

Every counterexample a finding carries has been run through the real pipeline
(``Engine.explain``) and shows what the finding says; one that does not is dropped.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from policyengine.decide._compiled import CompiledPolicy, CompiledRule, PlanRules
from policyengine.decide._evaluator import RequestState, amount_rule, rule_entry, run_rule
from policyengine.decide._runtime import Principal
from policyengine.decision import Decision, Diagnostic
from policyengine.engine import Engine
from policyengine.lang import ast
from policyengine.lang._fmt import format_expr
from policyengine.permissions import matches, pattern_subsumes
from policyengine.tokens.grants import MAX_DEPTH

__all__ = ["CHANGE_KINDS", "FINDING_CODES", "SEVERITIES", "Analysis", "DecisionChange", "Diff",
           "Finding", "analyze", "diff", "fit_schemas"]

#: Finding severities, weakest first (``--fail-on`` takes one of them).
SEVERITIES = ("info", "warning", "error")
#: Every code a finding has (docs/analysis.md, "Findings"): what ``analyze --ignore``
#: accepts, so a mistyped code is refused instead of silencing nothing.
FINDING_CODES = frozenset({"W300", "W301", "W302", "W303", "W304", "W305", "W306"})
#: Default bound on the requests decided for one question (one rule, or one principal
#: and permission of a diff). Beyond it the witnesses are sampled, never claimed exact.
MAX_REQUESTS = 4096


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()
#: Key of a witness context that stands for a request under a delegation: its value is
#: what grant.* reads. Such a request needs a token, so it is never a counterexample.
GRANT = "\x00grant"


@dataclass(frozen=True)
class Finding:
    """One result of :func:`analyze`. ``counterexample`` is a request (``principal``,
    ``permission``, ``context``) the engine decided as the message says, or None when
    the finding is a proof that no request exists (or none could be verified)."""

    code: str
    kind: str
    severity: str
    rule: str
    file: str
    line: int
    column: int
    message: str
    related: tuple[str, ...] = ()
    counterexample: dict[str, Any] | None = None
    exact: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "kind": self.kind, "severity": self.severity,
                "rule": self.rule, "file": self.file, "line": self.line,
                "column": self.column, "message": self.message,
                "related": list(self.related), "exact": self.exact,
                "counterexample": _jsonable(self.counterexample)}

    def render(self) -> str:
        text = (f"{self.file}:{self.line}:{self.column}: {self.severity}[{self.code}]: "
                f"{self.message}")
        if self.counterexample is not None:
            text += "\n  = counterexample: " + request_text(self.counterexample)
        return text


@dataclass(frozen=True)
class Analysis:
    """What :func:`analyze` found, sorted by file and line."""

    findings: tuple[Finding, ...]
    rules: int
    requests: int  # requests decided to reach these findings

    def at_least(self, severity: str) -> tuple[Finding, ...]:
        rank = SEVERITIES.index(severity)
        return tuple(f for f in self.findings if SEVERITIES.index(f.severity) >= rank)

    def to_dict(self) -> dict[str, Any]:
        return {"rules": self.rules, "requests": self.requests,
                "findings": [f.to_dict() for f in self.findings]}


#: The parts of a decision a diff compares, in the order a change lists them: the
#: status, the reason code, the obligations (caps, approval thresholds, a tool's
#: redactions) and the rules that decided.
CHANGE_KINDS = ("status", "reason", "obligations", "rules")


@dataclass(frozen=True)
class DecisionChange:
    """One way the decision of one (principal, permission) differs between two versions:
    an example request, both decisions' status and reason code, rules and obligations,
    which of those parts differ (``kinds``, a subsequence of :data:`CHANGE_KINDS`), and
    how many of the requests decided for that pair change in exactly those parts and in
    the same direction (the same old and new status and reason code; the same statuses
    in a status-only diff).

    A request with a ``tool`` key stands for a call through that tool whose context
    (given and extracted) is ``context``: what changes is the tool's redactions."""

    request: dict[str, Any]
    old: tuple[str, str]
    new: tuple[str, str]
    old_rules: tuple[str, ...]
    new_rules: tuple[str, ...]
    count: int
    #: Other principals that decide alike here (same scopes, no condition reads them).
    alike: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ("status",)
    #: Both decisions' obligations, as on the wire (``maxAmount``, ``requireApprovalOver``,
    #: ``redactFields``, ``currency``; plus ``redactions``, the tool's rules as
    #: ``PATH STRATEGY``, for a tool call), or None when the decision carries none.
    old_obligations: dict[str, Any] | None = None
    new_obligations: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"request": _jsonable(self.request), "changed": list(self.kinds),
                "old": {"status": self.old[0], "reasonCode": self.old[1],
                        "rules": list(self.old_rules), "obligations": self.old_obligations},
                "new": {"status": self.new[0], "reasonCode": self.new[1],
                        "rules": list(self.new_rules), "obligations": self.new_obligations},
                "requests": self.count, "alike": list(self.alike)}

    def render(self) -> str:
        also = (f" (and alike: {', '.join(json.dumps(p) for p in self.alike)})"
                if self.alike else "")
        lines = [f"{request_text(self.request)}{also}",
                 f"    changed: {', '.join(self.kinds)}"]
        for label, (status, code), rules, ob in (
                ("old", self.old, self.old_rules, self.old_obligations),
                ("new", self.new, self.new_rules, self.new_obligations)):
            line = f"    {label}: {status} ({code}) {', '.join(rules)}".rstrip()
            if "obligations" in self.kinds:
                line += f"; obligations: {obligations_text(ob)}"
            lines.append(line)
        if self.count > 1:
            lines.append(f"    ({self.count} requests of this principal and permission "
                         "change so)")
        return "\n".join(lines)


def obligations_text(ob: dict[str, Any] | None) -> str:
    """Wire obligations in one phrase: ``max 100 EUR, approval over 50 EUR, redact
    $.card mask``, or ``none``."""
    if not ob:
        return "none"
    cur = f" {ob['currency']}" if ob.get("currency") else ""
    parts = []
    if ob.get("maxAmount") is not None:
        parts.append(f"max {ob['maxAmount']}{cur}")
    if ob.get("requireApprovalOver") is not None:
        parts.append(f"approval over {ob['requireApprovalOver']}{cur}")
    redactions = ob.get("redactions") or ob.get("redactFields")
    if redactions:
        parts.append(f"redact {', '.join(redactions)}")
    return ", ".join(parts) or "none"


@dataclass(frozen=True)
class Diff:
    """What :func:`diff` found. ``exhaustive`` is True when every region of every pair
    was decided in the fragment; ``inexact`` says why not otherwise."""

    changes: tuple[DecisionChange, ...]
    pairs: int  # (principal, permission) pairs decided
    requests: int  # requests decided under each version
    exhaustive: bool
    inexact: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"pairs": self.pairs, "requests": self.requests,
                "exhaustive": self.exhaustive, "inexact": list(self.inexact),
                "changes": [c.to_dict() for c in self.changes]}


# ---- values -------------------------------------------------------------------------

def _number(d: Decimal) -> int | Decimal:
    return int(d) if d == d.to_integral_value() else d.normalize()


def _jsonable(value: Any) -> Any:
    """Decimals as JSON numbers where a float reads them back exactly, else as text."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Decimal):
        f = float(value)
        return f if Decimal(repr(f)) == value else str(value)
    return value


def request_text(req: dict[str, Any]) -> str:
    """A request as one line: ``principal "bot", permission pay:refund, context {...}``."""
    ctx = json.dumps(_jsonable(req.get("context") or {}), sort_keys=True)
    tool = f", tool {req['tool']}" if "tool" in req else ""
    return (f"principal {json.dumps(req['principal'])}, permission {req['permission']}"
            f"{tool}, context {ctx}")


# ---- what a condition reads -----------------------------------------------------------

class _Reads(ast.ExprVisitor[None]):
    """The context paths a condition reads and the literals each is compared with, the
    literal money it compares ``amount`` with, the principal ids it names, and why it is
    outside the fragment (if it is)."""

    def __init__(self) -> None:
        self.paths: dict[tuple[str, ...], set[Any]] = {}
        self.uses_amount = False
        self.money_lits: list[ast.MoneyLit] = []
        self.ids: set[str] = set()
        self.outside: list[str] = []
        #: (context path, principal path) compared with each other: exact once the
        #: principal is fixed, with each principal's value among the literals.
        self.links: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
        self.reads_principal = False
        #: grant.* fields read, with the literals each is compared with.
        self.grant: dict[str, set[Any]] = {}

    def _kind(self, e: ast.Expr) -> str:
        if isinstance(e, ast.Path):
            return e.root
        if isinstance(e, ast.Amount):
            return "amount"
        if isinstance(e, (ast.Literal, ast.MoneyLit)):
            return "literal"
        if isinstance(e, ast.ListExpr) and all(isinstance(i, ast.Literal) for i in e.items):
            return "list"
        return "other"

    def _note(self, var: ast.Expr, lit: ast.Expr) -> None:
        if isinstance(var, ast.Path) and var.root == "grant" and len(var.segments) == 1 \
                and isinstance(lit, ast.Literal):
            self.grant.setdefault(var.segments[0], set()).add(lit.value)
        elif isinstance(var, ast.Path) and var.root == "context" and isinstance(lit, ast.Literal):
            self.paths.setdefault(var.segments, set()).add(lit.value)
        elif isinstance(var, ast.Path) and var.root == "principal" \
                and var.segments == ("id",) and isinstance(lit, ast.Literal) \
                and isinstance(lit.value, str):
            self.ids.add(lit.value)
        elif isinstance(var, ast.Amount) and isinstance(lit, ast.MoneyLit):
            self.money_lits.append(lit)

    @staticmethod
    def _linkable(a: ast.Expr, b: ast.Expr) -> bool:
        who = a if isinstance(a, ast.Path) and a.root == "principal" else b
        return isinstance(who, ast.Path) and (
            who.segments == ("id",) or (len(who.segments) == 2
                                        and who.segments[0] == "attributes"))

    def literal(self, e: ast.Literal) -> None:
        pass

    def money(self, e: ast.MoneyLit) -> None:
        pass

    def amount(self, e: ast.Amount) -> None:
        self.uses_amount = True

    def path(self, e: ast.Path) -> None:
        if e.root == "principal":
            self.reads_principal = True
        if e.root == "context":
            self.paths.setdefault(e.segments, set())
        elif e.root == "grant" and e.segments != ("delegated",):
            if e.segments in (("depth",), ("acting_for",), ("issuer",)):
                self.grant.setdefault(e.segments[0], set())
            else:
                self.outside.append(f"{e.dotted()} is a list the analysis does not "
                                    "enumerate")
        if e.root == "grant":
            self.grant.setdefault("delegated", set())

    def call(self, e: ast.Call) -> None:
        if e.name != "has" or len(e.args) != 1 or not isinstance(e.args[0], ast.Path):
            self.outside.append(f"it calls {e.name}()")
            # Not exact, but a value the function accepts makes sampling likelier to
            # find a request that satisfies it.
            subject, arg = (*e.args, None, None)[:2]
            if isinstance(subject, ast.Path) and subject.root == "context" \
                    and isinstance(arg, ast.Literal) and isinstance(arg.value, str):
                hint = {"startswith": arg.value + "~", "endswith": "~" + arg.value,
                        "contains": arg.value,
                        "matches": arg.value.replace("*", "~").replace("?", "~")}
                if e.name in hint:
                    self.paths.setdefault(subject.segments, set()).add(hint[e.name])
        for arg in e.args:
            self.visit(arg)

    def list(self, e: ast.ListExpr) -> None:
        for item in e.items:
            self.visit(item)

    def compare(self, e: ast.Compare) -> None:
        kinds = (self._kind(e.left), self._kind(e.right))
        var_kinds = {"context", "amount", "grant"}
        if kinds[0] in var_kinds and kinds[1] == "literal":
            self._note(e.left, e.right)
        elif kinds[1] in var_kinds and kinds[0] == "literal":
            self._note(e.right, e.left)
        elif set(kinds) == {"context", "principal"} and self._linkable(e.left, e.right):
            ctx, who = (e.left, e.right) if kinds[0] == "context" else (e.right, e.left)
            assert isinstance(ctx, ast.Path) and isinstance(who, ast.Path)
            self.links.append((ctx.segments, who.segments))
        elif kinds[0] in var_kinds or kinds[1] in var_kinds:
            self.outside.append(f"it compares {format_expr(e.left)} with "
                                f"{format_expr(e.right)}")
        elif "principal" in kinds and "literal" in kinds:
            side = (e.left, e.right) if kinds[0] == "principal" else (e.right, e.left)
            self._note(*side)
        self.visit(e.left)
        self.visit(e.right)

    def in_(self, e: ast.In) -> None:
        item, coll = self._kind(e.item), self._kind(e.collection)
        if coll == "list" and isinstance(e.collection, ast.ListExpr):
            if item in ("context", "principal", "grant"):
                for lit in e.collection.items:
                    self._note(e.item, lit)
            elif item == "amount":
                self.outside.append("it looks for the amount in a list")
        elif coll == "context" or (coll == "principal" and item in ("context", "amount")):
            self.outside.append(f"it looks for {format_expr(e.item)} in "
                                f"{format_expr(e.collection)}")
        self.visit(e.item)
        self.visit(e.collection)

    def not_(self, e: ast.Not) -> None:
        self.visit(e.expr)

    def and_(self, e: ast.And) -> None:
        for item in e.items:
            self.visit(item)

    def or_(self, e: ast.Or) -> None:
        for item in e.items:
            self.visit(item)


@dataclass
class _RuleInfo:
    rule: CompiledRule
    paths: dict[tuple[str, ...], set[Any]]
    uses_amount: bool  # its conditions or its cap / threshold read the amount
    thresholds: set[Decimal]  # in the rule file's base currency
    ids: set[str]
    outside: list[str]
    links: list[tuple[tuple[str, ...], tuple[str, ...]]]
    reads_principal: bool
    grant: dict[str, set[Any]]

    def link(self, policies: Sequence[CompiledPolicy], principals: Sequence[str]) -> None:
        """Each principal's value of a principal path compared with a context path
        becomes one more literal of that context path."""
        for ctx, who in self.links:
            lits = self.paths.setdefault(ctx, set())
            for policy in policies:
                for pid in principals:
                    p = policy.principal(pid)
                    value = p.id if who == ("id",) else p.attributes.get(who[1], MISSING)
                    if isinstance(value, (str, int, Decimal)):
                        lits.add(value)


def _info(rule: CompiledRule) -> _RuleInfo:
    reads = _Reads()
    for cond in rule.conditions:
        reads.visit(cond.expr)
    base = rule.money.base if rule.money is not None else None
    thresholds: set[Decimal] = set()
    outside = list(reads.outside)
    for m in reads.money_lits:
        if m.currency == base:
            thresholds.add(m.amount)
        else:
            outside.append(f"it compares the amount with {m.amount} {m.currency}, which "
                           "converts at a rate")
    if rule.amount_limit is not None:
        thresholds.add(rule.amount_limit)
    paths = reads.paths
    for a, b in itertools.permutations(paths, 2):
        if len(a) < len(b) and b[:len(a)] == a:
            outside.append(f"it reads both context.{'.'.join(a)} and "
                           f"context.{'.'.join(b)}")
            break
    return _RuleInfo(rule, paths, reads.uses_amount or rule.uses_amount, thresholds,
                     reads.ids, outside, reads.links, reads.reads_principal, reads.grant)


def _witnesses(literals: Iterable[Any]) -> list[Any]:
    """One value per region the literals cut: missing, true, false, numbers below, at,
    between and above the numeric literals, each string literal and one other string."""
    nums = sorted({Decimal(v) for v in literals if type(v) in (int, Decimal)})
    strs = sorted({v for v in literals if type(v) is str})
    out: list[Any] = [MISSING, True, False]
    if nums:
        points = [nums[0] - 1]
        for a, b in itertools.pairwise(nums):
            points += [a, (a + b) / 2]
        points += [nums[-1], nums[-1] + 1]
        out += [_number(p) for p in points]
    else:
        out.append(0)
    fresh = "~"
    while fresh in strs:
        fresh += "~"
    return out + strs + [fresh]


def _quantum(currency: str) -> Decimal:
    from policyengine.money._money import decimal_places
    return Decimal(1).scaleb(-decimal_places(currency))


def _amounts(thresholds: Iterable[Decimal], currency: str) -> list[Any]:
    """Amount witnesses in ``currency``: none, zero, each threshold and one minor unit
    above it (amounts round up to the minor unit, so nothing lies between)."""
    q = _quantum(currency)
    points = {Decimal(0)}
    for t in thresholds:
        points.update((t, t + q))
        if t - q >= 0:
            points.add(t - q)
    return [MISSING, *sorted(points)]


# ---- the finite vocabulary ----------------------------------------------------------------

def _fresh_segment(patterns: Iterable[str]) -> str:
    used = {seg for p in patterns for seg in p.split(":")}
    n = 0
    while f"x{n}" in used:
        n += 1
    return f"x{n}"


def permission_representatives(targets: Sequence[str], vocabulary: Iterable[str]
                               ) -> list[str]:
    """One permission per class of permissions the ``targets`` patterns match, where two
    permissions are in one class when the same patterns of ``vocabulary`` (plus the
    targets) match them: every exact permission named, and for each prefix pattern
    ``p:*`` (and ``*``) a permission under it that no longer pattern names."""
    vocab = set(vocabulary) | set(targets)
    fresh = _fresh_segment(vocab)
    candidates: list[str] = sorted(p for p in vocab if not p.endswith("*"))
    candidates += sorted(p[:-1] + fresh for p in vocab if p.endswith(":*"))
    if "*" in vocab:
        candidates.append(fresh)
    return [c for c in candidates if any(matches(t, c) for t in targets)]


def _overlap(a: str, b: str) -> bool:
    """Some permission matches both patterns."""
    if a == "*" or b == "*" or a == b:
        return True
    if a.endswith(":*") and b.endswith(":*"):
        return a.startswith(b[:-1]) or b.startswith(a[:-1])
    if a.endswith(":*"):
        return matches(a, b)
    return b.endswith(":*") and matches(b, a)


def _patterns_overlap(xs: Sequence[str], ys: Sequence[str]) -> bool:
    return any(_overlap(x, y) for x in xs for y in ys)


class _PatternIndex:
    """Rules by pattern, to find the rules whose patterns overlap some patterns without
    a scan of every rule: a pattern overlaps its ancestors (``*`` and the prefix patterns
    of its own prefixes) and, for a prefix pattern, every pattern under its prefix."""

    def __init__(self, rules: Iterable[CompiledRule]) -> None:
        self.by_pattern: dict[str, list[CompiledRule]] = {}
        for rule in rules:
            for p in dict.fromkeys(rule.patterns):
                self.by_pattern.setdefault(p, []).append(rule)
        self.sorted = sorted(self.by_pattern)

    def overlapping(self, patterns: Iterable[str]) -> list[CompiledRule]:
        import bisect
        found: dict[int, CompiledRule] = {}
        for pattern in patterns:
            names = ["*", pattern]
            stem = pattern[:-1] if pattern.endswith(":*") else pattern + ":"
            cut = stem.rstrip(":")
            while ":" in cut:
                cut = cut.rsplit(":", 1)[0]
                names.append(cut + ":*")
            if pattern == "*":
                names = list(self.by_pattern)
            elif pattern.endswith(":*"):
                i = bisect.bisect_left(self.sorted, stem)
                while i < len(self.sorted) and self.sorted[i].startswith(stem):
                    names.append(self.sorted[i])
                    i += 1
            for name in names:
                for rule in self.by_pattern.get(name, ()):
                    found[rule.order] = rule
        return [found[k] for k in sorted(found)]


def _principal_reps(policies: Sequence[CompiledPolicy], ids: set[str]) -> list[str]:
    """One principal per class: declared agents alike in roles and attributes (in every
    policy) stand for each other unless a scope or a condition names one; undeclared
    principals are one class, plus each undeclared id a condition names."""
    named = set(ids)
    for policy in policies:
        for rule in policy.rules:
            named.update(rule.agents)
    declared = sorted({pid for policy in policies for pid in policy.principals})
    seen: dict[Any, str] = {}
    for pid in declared:
        if pid in named:
            seen[("id", pid)] = pid
            continue
        key = tuple((tuple(sorted(p.roles)), repr(sorted(p.attributes.items())))
                    if (p := policy.principals.get(pid)) is not None else None
                    for policy in policies)
        seen.setdefault(key, pid)
    out = sorted(seen.values())
    fresh = "someone-else"
    while fresh in declared or fresh in named:
        fresh += "-"
    out.append(fresh)
    out += sorted(i for i in ids if i not in declared)
    return out


# ---- deciding ---------------------------------------------------------------------------

@dataclass
class _Space:
    """The witnesses of some context variables, enumerated up to a bound."""

    variables: list[tuple[tuple[str, ...], list[Any]]] = field(default_factory=list)
    currency: str | None = None
    amounts: list[Any] = field(default_factory=lambda: [MISSING])
    #: What grant.* reads: no delegation, or delegations (depths, acting_for, issuer).
    grants: list[dict[str, Any] | None] = field(default_factory=lambda: [None])

    def size(self) -> int:
        n = len(self.amounts) * len(self.grants)
        for _, ws in self.variables:
            n *= len(ws)
        return n

    def contexts(self, limit: int, seed: int = 0) -> tuple[Iterator[dict[str, Any]], bool]:
        """The contexts, and whether they are all of them (else a sample of ``limit``)."""
        lists = [ws for _, ws in self.variables] + [self.grants, self.amounts]
        if self.size() <= limit:
            return (self._build(combo) for combo in itertools.product(*lists)), True
        rng = random.Random(seed)
        return (self._build([rng.choice(ws) for ws in lists]) for _ in range(limit)), False

    def _build(self, combo: Sequence[Any]) -> dict[str, Any]:
        ctx: dict[str, Any] = {}
        for (path, _), value in zip(self.variables, combo, strict=False):
            if value is MISSING:
                continue
            node = ctx
            for seg in path[:-1]:
                nxt = node.setdefault(seg, {})
                if not isinstance(nxt, dict):
                    break
                node = nxt
            else:
                node[path[-1]] = value
        amount = combo[-1]
        if amount is not MISSING and self.currency is not None:
            ctx["amount"] = str(amount)
            ctx["currency"] = self.currency
        if combo[-2] is not None:
            ctx[GRANT] = combo[-2]
        return ctx


def _grants(fields: dict[str, set[Any]], max_depth: int) -> list[dict[str, Any] | None]:
    """No delegation, and delegations at every depth the policy allows, with each
    acting_for and issuer a condition names and one it does not."""
    if not fields:
        return [None]
    depths = range(max_depth + 1) if "depth" in fields else [0]
    names = [w for w in _witnesses(fields.get("acting_for", ())) if type(w) is str]
    issuers = [w for w in _witnesses(fields.get("issuer", ())) if type(w) is str]
    if "acting_for" not in fields:
        names = names[-1:]
    if "issuer" not in fields:
        issuers = issuers[-1:]
    return [None] + [{"delegated": True, "acting_for": a, "depth": d, "chain": [a],
                      "issuer": i} for d in depths for a in names for i in issuers]


def _space(infos: Iterable[_RuleInfo], extra_thresholds: Iterable[Decimal] = (),
           max_depth: int | None = None) -> tuple[_Space, list[str]]:
    """The joint witnesses of some rules' variables, and why they are not exact. With
    ``max_depth``, requests under a delegation are witnessed too (grant.*); without,
    only requests without a token (what grant.* then reads is fixed)."""
    paths: dict[tuple[str, ...], set[Any]] = {}
    grant: dict[str, set[Any]] = {}
    thresholds: set[Decimal] = set(extra_thresholds)
    currencies: set[str] = set()
    uses_amount = False
    outside: list[str] = []
    for info in infos:
        for p, lits in info.paths.items():
            paths.setdefault(p, set()).update(lits)
        if info.uses_amount:
            uses_amount = True
            thresholds |= info.thresholds
            if info.rule.money is not None and info.rule.money.base is not None:
                currencies.add(info.rule.money.base)
        outside += [f"rule {info.rule.qid}: {why}" for why in info.outside]
        for k, lits in info.grant.items():
            grant.setdefault(k, set()).update(lits)
    for a, b in itertools.permutations(paths, 2):
        if len(a) < len(b) and b[:len(a)] == a:
            outside.append(f"context.{'.'.join(a)} and context.{'.'.join(b)} are both read")
            break
    if len(currencies) > 1:
        outside.append(f"amounts are compared in {len(currencies)} currencies "
                       f"({', '.join(sorted(currencies))}), through rates")
    space = _Space([(p, _witnesses(paths[p])) for p in sorted(paths)])
    if uses_amount and currencies:
        space.currency = sorted(currencies)[0]
        space.amounts = _amounts(thresholds, space.currency)
    if max_depth is not None:
        space.grants = _grants(grant, max_depth)
    return space, outside


def _table(policy: CompiledPolicy, principal: str, permission: str,
           context: dict[str, Any], rules: Sequence[CompiledRule]
           ) -> dict[str, dict[str, Any]]:
    """What each of ``rules`` (whose patterns match ``permission``, or they are left out)
    does for this request: the engine's own rule evaluation, each row as ``explain``
    reports it (schemas and budgets aside)."""
    grant = context.get(GRANT)
    if grant is not None:
        context = {k: v for k, v in context.items() if k != GRANT}
    req = RequestState(context, policy.default_currency, None)
    if grant is not None:
        req.grant = grant
    who = policy.principal(principal)
    return {r.qid: rule_entry(r, who, who, context, req) for r in rules
            if any(matches(p, permission) for p in r.patterns)}


def _holds(entry: dict[str, Any] | None) -> bool:
    """The rule is in scope and each of its when / unless conditions held (no error)."""
    return (entry is not None and "conditions" in entry
            and not str(entry.get("result", "")).startswith("not in scope")
            and all(c["result"] == "holds" for c in entry["conditions"]
                    if c["kind"] in ("when", "unless")))


def _applies(entry: dict[str, Any] | None) -> bool:
    return entry is not None and entry.get("result") == "applies"


def _applies_cleanly(entry: dict[str, Any] | None) -> bool:
    return _applies(entry) and not any(str(c["result"]).startswith("error")
                                       for c in entry["conditions"])  # type: ignore[index]


def _request(principal: str, permission: str, context: dict[str, Any]) -> dict[str, Any]:
    return {"principal": principal, "permission": permission, "context": context}


# ---- counterexamples that fit the declared context ------------------------------------

def _schemas_of(policy: CompiledPolicy, permission: str) -> list[ast.SchemaDecl]:
    """The schemas whose patterns cover ``permission`` (the request must fit each)."""
    return [st for f in policy.files for st in f.statements
            if isinstance(st, ast.SchemaDecl)
            and any(matches(p, permission) for p in st.patterns)]


def _sample(t: ast.SchemaType, currency: str | None) -> Any:
    """A value of a declared type (docs/language.md, "Context schemas")."""
    if t.kind == "enum":
        return t.values[0] if t.values else MISSING
    if t.kind == "list":
        return []
    if t.kind == "{}":
        return _filled({}, t.fields, currency)
    return {"string": "analysis", "int": 0, "decimal": 0, "money": "0",
            "bool": False}.get(t.kind, MISSING)


def _filled(ctx: dict[str, Any], fields: Sequence[ast.SchemaField], currency: str | None
            ) -> dict[str, Any]:
    """``ctx`` with each required field it lacks given a value of its declared type
    (records filled in below), so that a witness the rules decide is also a request the
    schema lets through. Values already there are kept: the rules' witnesses are what is
    being shown; the engine's own run then says whether the whole request fits."""
    out = dict(ctx)
    for f in fields:
        have = out.get(f.name, MISSING)
        if have is MISSING:
            if f.optional:
                continue
            value = (currency if f.name == "currency" and f.type.kind == "string"
                     and currency is not None else _sample(f.type, currency))
            if value is not MISSING:
                out[f.name] = value
        elif f.type.kind == "{}" and isinstance(have, dict):
            out[f.name] = _filled(have, f.type.fields, currency)
    return out


def fit_schemas(policy: CompiledPolicy, permission: str, ctx: dict[str, Any],
                currency: str | None = None) -> dict[str, Any]:
    """``ctx`` completed for the schemas covering ``permission``: each required field it
    lacks, at any depth, gets a value of its type (``currency``, else the policy's
    default currency, for a ``currency: string``). A request without them would be
    refused (``invalid_request``) before any rule decides, so a counterexample must carry
    them."""
    for schema in _schemas_of(policy, permission):
        ctx = _filled(ctx, schema.fields, currency or policy.default_currency)
    return ctx


# ---- analyze ----------------------------------------------------------------------------

class _Analyzer:
    def __init__(self, engine: Engine, max_requests: int) -> None:
        self.engine = engine
        self.policy = engine.policy
        self.max = max_requests
        self.requests = 0
        self.findings: list[Finding] = []
        # shadow rules (mode warn / mode log) decide nothing: not analysed as deciders
        self.rules = [r for r in self.policy.rules if r.kind != "role" and r.mode == "enforce"]
        self.infos = {r.qid: _info(r) for r in self.policy.rules}
        ids: set[str] = set()
        for info in self.infos.values():
            ids |= info.ids
        self.principals = _principal_reps([self.policy], ids)
        for info in self.infos.values():
            info.link([self.policy], self.principals)
        self.vocabulary = {p for r in self.policy.rules for p in r.patterns}
        self.vocabulary |= {p for b in self.policy.budgets for p in b.patterns}
        self.unsat: set[str] = set()
        self.index = _PatternIndex(self.policy.rules)
        block = self.policy.delegation
        self.max_depth = (block.max_depth if block is not None and block.max_depth is not None
                          else MAX_DEPTH)

    def _who(self, pid: str) -> Principal:
        return self.policy.principal(pid)

    def in_scope(self, rule: CompiledRule) -> list[str]:
        return [p for p in self.principals if rule.scoped_to(self._who(p))]

    def alike(self, principals: list[str], rules: Sequence[CompiledRule]) -> list[str]:
        """One principal per class for a question about ``rules``: principals in the same
        rules' scopes decide alike unless a condition reads the principal."""
        if any(self.infos[r.qid].reads_principal for r in rules):
            return principals
        seen: dict[tuple[bool, ...], str] = {}
        for pid in principals:
            who = self._who(pid)
            seen.setdefault(tuple(r.scoped_to(who) for r in rules), pid)
        return list(seen.values())

    def add(self, code: str, kind: str, severity: str, rule: CompiledRule, message: str,
            related: Iterable[str] = (), counterexample: dict[str, Any] | None = None,
            exact: bool = True) -> None:
        sp = rule.span
        self.findings.append(Finding(code, kind, severity, rule.qid, sp.file, sp.line,
                                     sp.column, message, tuple(related), counterexample,
                                     exact))

    def run(self) -> Analysis:
        self.duplicates()
        for rule in self.rules:
            scope = self.in_scope(rule)
            if not scope:
                self.no_principal(rule)
                continue
            if rule.conditions and not self.satisfiable(rule, scope):
                continue
            if rule.effect in ("permit", "approval"):
                self.overridden(rule, scope)
        self.limits_over_budgets()
        found = sorted(self.findings, key=lambda f: (f.file, f.line, f.column, f.code))
        return Analysis(tuple(found), len(self.rules), self.requests)

    # -- W303: a scope no principal holds
    def no_principal(self, rule: CompiledRule) -> None:
        held = [f"role {r}" for r in sorted(rule.roles)] + [
            f'agent "{a}"' for a in sorted(rule.agents)]
        self.add("W303", "no_principal", "warning", rule,
                 f"rule '{rule.qid}' never applies: no agent holds its scope "
                 f"({', '.join(held)})")

    # -- W301: conditions that never hold
    def satisfiable(self, rule: CompiledRule, scope: list[str]) -> bool:
        info = self.infos[rule.qid]
        space, outside = _space([info], max_depth=self.max_depth)
        permission = permission_representatives(rule.patterns, rule.patterns)[0]
        exact = not outside
        for pid in self.alike(scope, [rule]):
            contexts, complete = space.contexts(self.max, seed=len(rule.qid))
            exact = exact and complete
            for ctx in contexts:
                self.requests += 1
                if _holds(_table(self.policy, pid, permission, ctx, [rule]).get(rule.qid)):
                    return True
        text = " and ".join(
            (format_expr(c.expr) if c.kind == "when" else f"not ({format_expr(c.expr)})")
            for c in rule.conditions)
        if not exact:
            why = "; ".join(outside) or f"more than {self.max} requests to decide"
            self.add("W300", "inexact", "info", rule,
                     f"could not decide whether the conditions of '{rule.qid}' can hold "
                     f"(no sampled request satisfies them): {why}", exact=False)
            return True
        self.unsat.add(rule.qid)
        if rule.effect == "permit":
            what = "it never applies"
        else:
            what = ("it applies only when a condition cannot be evaluated (fail closed: a "
                    "missing or mistyped value)")
        if "depth" in info.grant:
            text += f"; delegation depth is at most {self.max_depth}"
        self.add("W301", "unsatisfiable", "warning", rule,
                 f"the conditions of '{rule.qid}' never hold ({text}): {what}")
        return False

    # -- W302 / W305: always overridden
    def overridden(self, rule: CompiledRule, scope: list[str]) -> None:
        near = [r for r in self.index.overlapping(rule.patterns)
                if r is not rule and r.mode == "enforce" and r.qid not in self.unsat
                and any(r.scoped_to(self._who(p)) for p in scope)]
        deniers = [r for r in near if r.effect == "forbid"]
        approvals = [r for r in near if rule.effect == "permit" and r.effect == "approval"]
        if not deniers and not approvals:
            return
        vocab = set(rule.patterns)
        for r in deniers + approvals:
            vocab.update(r.patterns)
        reps = permission_representatives(rule.patterns, vocab)
        # Cheap exact test first: a permission no overriding rule names is decided by
        # this rule alone (its conditions can hold: it is satisfiable).
        if any(not any(matches(p, perm) for r in deniers + approvals
                       for p in r.patterns) for perm in reps):
            return
        involved = [rule, *deniers, *approvals]
        space, outside = _space([self.infos[r.qid] for r in involved],
                                max_depth=self.max_depth)
        exact = not outside
        fired: dict[str, None] = {}
        approved: dict[str, None] = {}
        denied_example: dict[str, Any] | None = None
        pending_example: dict[str, Any] | None = None
        applied = False
        for pid in self.alike(scope, involved):
            for perm in reps:
                contexts, complete = space.contexts(self.max, seed=len(reps))
                exact = exact and complete
                for ctx in contexts:
                    self.requests += 1
                    table = _table(self.policy, pid, perm, ctx, involved)
                    if not _applies_cleanly(table.get(rule.qid)):
                        continue
                    applied = True
                    denying = [r.qid for r in deniers if _applies(table.get(r.qid))]
                    if denying:
                        fired.update(dict.fromkeys(denying))
                        if denied_example is None:
                            denied_example = self._verified(rule, pid, perm, ctx, "denied")
                        continue
                    asking = [r.qid for r in approvals if _applies(table.get(r.qid))]
                    if asking:
                        approved.update(dict.fromkeys(asking))
                        if pending_example is None:
                            pending_example = self._verified(rule, pid, perm, ctx,
                                                             "pending_approval")
                        continue
                    return  # this rule decides this request: it is effective
        if not applied:
            return
        if not exact:
            why = "; ".join(outside) or f"more than {self.max} requests to decide"
            self.add("W300", "inexact", "info", rule,
                     f"could not decide whether '{rule.qid}' is always overridden (every "
                     f"sampled request it applies to is): {why}", fired.keys() | approved.keys(),
                     exact=False)
            return
        if not approved:
            kinds = {r.kind for r in deniers if r.qid in fired}
            by = ("a limit" if kinds == {"limit"} else "a forbid" if "limit" not in kinds
                  else "forbids and limits")
            self.add("W302", "shadowed", "warning", rule,
                     f"rule '{rule.qid}' never decides a request: {by} "
                     f"({', '.join(fired)}) applies whenever it does", fired,
                     denied_example)
        else:
            self.add("W305", "always_approval", "info", rule,
                     f"every request '{rule.qid}' permits needs an approval "
                     f"({', '.join(approved)})"
                     + (f" or is denied ({', '.join(fired)})" if fired else ""),
                     [*approved, *fired], pending_example)

    def _explain(self, pid: str, perm: str, ctx: dict[str, Any]) -> Any:
        if GRANT in ctx:  # needs a delegation token: decided as if it had none
            ctx = {k: v for k, v in ctx.items() if k != GRANT}
        self.requests += 1
        return self.engine.explain(pid, perm, ctx)

    def _verified(self, rule: CompiledRule, pid: str, perm: str, ctx: dict[str, Any],
                  status: str) -> dict[str, Any] | None:
        """The request ``pid`` asking ``perm`` with ``ctx`` (completed for the schemas
        covering ``perm``), when the engine's own run decides it with ``status`` and
        ``rule`` applying cleanly in it (for a denial, not one of a malformed request or
        of no permit at all); else None. Requests that need a delegation token are never
        returned (the analysis mints none)."""
        if GRANT in ctx:
            return None
        ctx = fit_schemas(self.policy, perm, ctx,
                          rule.money.base if rule.money is not None else None)
        x = self._explain(pid, perm, ctx)
        entry = next((e for e in x.rules if e["rule"] == rule.qid), None)
        if x.decision.status != status or not _applies_cleanly(entry):
            return None
        if status == "denied" and x.decision.code in ("invalid_request", "no_permit"):
            return None
        return _request(pid, perm, ctx)

    # -- W304: duplicates
    def duplicates(self) -> None:
        first: dict[Any, CompiledRule] = {}
        for rule in self.rules:
            key = (rule.effect, rule.kind, frozenset(rule.patterns), rule.roles, rule.agents,
                   rule.conditions, rule.amount_limit,
                   rule.money.base if rule.money is not None else None, rule.approval_terms,
            rule.mode)
            other = first.setdefault(key, rule)
            if other is not rule:
                sp = other.span
                self.add("W304", "duplicate", "warning", rule,
                         f"rule '{rule.qid}' repeats '{other.qid}' ({sp.file}:{sp.line}): "
                         "same effect, patterns, scope and conditions", [other.qid])

    # -- W306: a limit above what a budget lets through
    def limits_over_budgets(self) -> None:
        from policyengine.budgets.spec import subject_field
        for rule in self.rules:
            if rule.kind != "limit" or rule.amount_limit is None or rule.money is None:
                continue
            base = rule.money.base
            if base is None:
                continue
            for spec in self.policy.budgets:
                room = spec.limit + spec.overdraft_limit
                if spec.unit != base or rule.amount_limit <= room:
                    continue
                if not all(any(pattern_subsumes(p, b) for b in spec.patterns)
                           for p in rule.patterns):
                    continue
                over = room + _quantum(base)
                example = None
                fieldname = subject_field(spec.subject)
                for pid in self.in_scope(rule)[:16]:
                    for perm in permission_representatives(rule.patterns, self.vocabulary)[:16]:
                        example = self._over_budget(rule, pid, perm, over, base, fieldname)
                        if example is not None:
                            break
                    if example is not None:
                        break
                self.add("W306", "limit_above_budget", "warning", rule,
                         f"limit '{rule.qid}' caps one request at {rule.amount_limit} {base}, "
                         f"but budget '{spec.id}' lets through at most {room} {base} per "
                         f"{spec.window}: the budget refuses every amount between them",
                         [spec.id], example)

    def _over_budget(self, rule: CompiledRule, pid: str, perm: str, over: Decimal,
                     base: str, fieldname: str | None) -> dict[str, Any] | None:
        """A request of ``over`` (within the limit ``rule``, above the budget) that the
        budget refuses: the other rules on ``perm`` must let it through to the budget, so
        their context regions are searched (each region's witness, the amount fixed), a
        region being tried with the engine only when no forbid, limit or approval of the
        rule table applies in it. At most ``self.max`` regions and 64 runs."""
        rules = [r for r in self.index.overlapping([perm]) if r.mode == "enforce"
                 and any(matches(p, perm) for p in r.patterns)]
        space, _ = _space([self.infos[r.qid] for r in rules])
        space.currency, space.amounts = None, [MISSING]  # the amount is fixed: ``over``
        contexts, _ = space.contexts(self.max, seed=len(rule.qid))
        runs = 0
        for found in contexts:
            ctx = {**found, "amount": str(over), "currency": base}
            if fieldname:
                ctx.setdefault(fieldname, "analysis")
            self.requests += 1
            table = _table(self.policy, pid, perm, ctx, rules)
            if any(_applies(table.get(r.qid)) for r in rules if r.effect != "permit"):
                continue
            ctx = fit_schemas(self.policy, perm, ctx, base)
            x = self._explain(pid, perm, ctx)
            entry = next((e for e in x.rules if e["rule"] == rule.qid), None)
            if x.decision.code == "budget_exceeded" and entry is not None \
                    and entry.get("result") == "does not apply":
                return _request(pid, perm, ctx)
            runs += 1
            if runs >= 64:
                break
        return None


def analyze(engine: Engine, *, max_requests: int = MAX_REQUESTS) -> Analysis:
    """Analyse the policy ``engine`` holds (docs/analysis.md)."""
    return _Analyzer(engine, max_requests).run()


# ---- diff -------------------------------------------------------------------------------

def _rule_key(rule: CompiledRule) -> Any:
    return (rule.qid, rule.effect, rule.kind, rule.patterns, rule.roles, rule.agents,
            rule.conditions, rule.amount_limit,
            rule.money.base if rule.money is not None else None, rule.approval_terms,
            rule.mode)


_RULE_STATEMENTS = (ast.Rule, ast.LimitDecl, ast.ApprovalOverDecl, ast.RoleDecl,
                    ast.AgentDecl)


def _settings(policy: CompiledPolicy) -> Any:
    """Everything but rules, roles and agents: budgets, schemas, currencies, rates..."""
    out = []
    for f in policy.files:
        out.append((f.namespace, tuple(st for st in f.statements
                                       if not isinstance(st, _RULE_STATEMENTS))))
    return sorted(out, key=repr)


def _principal_key(policy: CompiledPolicy, pid: str) -> Any:
    p = policy.principals.get(pid)
    return None if p is None else (tuple(sorted(p.roles)), repr(sorted(p.attributes.items())))


_AMOUNT = ("\x00amount",)  # the request's amount, as one more variable


def _variables(info: _RuleInfo) -> list[tuple[str, ...]]:
    return [*info.paths, *([_AMOUNT] if info.uses_amount else [])]


def _components(infos: Sequence[_RuleInfo]) -> list[list[_RuleInfo]]:
    """The rules grouped so that no two groups read a common variable (a path and a path
    under it count as one): the outcomes of one group never depend on another's values.
    Rules that read no variable are left out (their outcome is the same for every
    context)."""
    parent: dict[tuple[str, ...], tuple[str, ...]] = {}

    def find(x: tuple[str, ...]) -> tuple[str, ...]:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for info in infos:
        vs = _variables(info)
        for v in vs[1:]:
            parent[find(v)] = find(vs[0])
        for v in vs:
            find(v)
    keys = sorted(parent)
    for x, y in itertools.combinations(keys, 2):
        if x[:len(y)] == y or y[:len(x)] == x or (
                _AMOUNT in (x, y) and {x[:1], y[:1]} & {("amount",), ("currency",)}):
            parent[find(x)] = find(y)
    groups: dict[tuple[str, ...], list[_RuleInfo]] = {}
    for info in infos:
        vs = _variables(info)
        if vs:
            groups.setdefault(find(vs[0]), []).append(info)
    return list(groups.values())


def _outcome(rule: CompiledRule, who: Principal, plan: PlanRules, ctx: dict[str, Any],
             req: RequestState, status_only: bool) -> Any:
    """What ``rule`` contributes to the decision of a request, read with the rules step's
    own evaluation (``rule_facts``): whether a permit applies; for a forbid, limit or
    approval whether it applies, applies because a condition or the amount could not be
    evaluated (and with which error codes, the reason code of a fail-closed denial), or,
    for a limit or approval threshold, does not apply with its cap in force (an
    obligation). With ``status_only``, only whether it applies. None for a shadow rule
    or a principal out of its scope (neither decides anything)."""
    if rule.mode != "enforce" or not rule.scoped_to(who):
        return None
    diags: list[Diagnostic] = []
    if rule.effect == "permit":
        return run_rule(rule, ctx, plan, req, diags, False) is True
    if rule.kind in ("limit", "approval_over"):
        hit, cap = amount_rule(rule, ctx, plan, req, diags)
        if status_only:
            return hit is not False
        return hit, cap is not None, tuple(d.code for d in diags)
    hit = run_rule(rule, ctx, plan, req, diags, True)
    if status_only:
        return hit is not False
    return hit, tuple(d.code for d in diags)


def _region_contexts(policies: Sequence[tuple[CompiledPolicy, Sequence[CompiledRule]]],
                     infos: Sequence[_RuleInfo], pid: str, perm: str, limit: int, seed: int,
                     status_only: bool = False
                     ) -> tuple[list[dict[str, Any]], bool, list[str]]:
    """Contexts that realise every combination of rule outcomes the rules can reach for
    ``pid`` asking ``perm``: per group of rules sharing variables, one witness context
    per distinct outcome (:func:`_outcome`) of the group's rules (under every policy),
    then the product of the groups. Exact when each group is (the whole product of
    witnesses is not needed: groups are independent). Returns (contexts, exhaustive,
    reasons it is not)."""
    outside: list[str] = []
    complete = True
    per_group: list[list[dict[str, Any]]] = []
    views = [(pol, pol.principal(pid), PlanRules(pol.principal(pid), (), (), (), (), False),
               rules)
             for pol, rules in policies]
    for group in _components(infos):
        qids = {i.rule.qid for i in group}
        space, why = _space(group)
        outside += why
        # Rule outcomes cost far less than whole decisions: a group may try 8x more.
        contexts, whole = space.contexts(limit * 8, seed=seed)
        complete = complete and whole
        seen: dict[Any, dict[str, Any]] = {}
        for ctx in contexts:
            key: list[Any] = []
            for pol, who, plan, rules in views:
                req = RequestState(ctx, pol.default_currency, None)
                key.extend(_outcome(r, who, plan, ctx, req, status_only)
                           for r in rules if r.qid in qids)
            seen.setdefault(tuple(key), ctx)
        per_group.append(list(seen.values()))
    total = 1
    for g in per_group:
        total *= len(g)
    if total <= limit:
        combos: Iterable[Sequence[dict[str, Any]]] = itertools.product(*per_group)
    else:
        complete = False
        rng = random.Random(seed)
        combos = ([rng.choice(g) for g in per_group] for _ in range(limit))
    out = []
    for combo in combos:
        merged: dict[str, Any] = {}
        for part in combo:
            merged.update(part)
        out.append(merged)
    return out, complete and not outside, outside


def _tool_redactions(policy: CompiledPolicy, permission: str
                     ) -> dict[str, tuple[tuple[str, str], ...]]:
    """The tools that bind ``permission`` (a route of an HTTP tool, or an MCP or function
    tool), each with its redactions as (path, ``PATH STRATEGY``): what an allowed or
    pending call through it redacts, whatever its body."""
    tools = policy.tools
    out: dict[str, tuple[tuple[str, str], ...]] = {}
    if tools is None:
        return out

    def text(rules: Iterable[Any]) -> tuple[tuple[str, str], ...]:
        return tuple((r.path, f"{r.path} {r.strategy}" + (f" {r.keep}" if r.keep else ""))
                     for r in rules)

    for binding in tools.http:
        if any(route.permission == permission for route in binding.routes):
            out[binding.qid] = text(binding.redactions)
    for named in tools.named:
        if named.permission == permission:
            out[named.qid] = text(named.redactions)
    return out


def _tool_permissions(policy: CompiledPolicy) -> set[str]:
    tools = policy.tools
    if tools is None:
        return set()
    return ({route.permission for b in tools.http for route in b.routes}
            | {n.permission for n in tools.named})


#: A decision as a diff compares it: (status, reason code, rules, wire obligations).
_Summary = tuple[str, str, tuple[str, ...], "dict[str, Any] | None"]


def _summary(d: Decision, tool: tuple[tuple[str, str], ...] | None = None) -> _Summary:
    """What a diff compares of a decision; with ``tool`` (its redactions), of a call
    through that tool: an allowed or pending one carries the tool's redactions too."""
    ob = d.obligations
    wire = None if ob is None else ob.to_wire()
    if tool is not None and d.status != "denied" and tool:
        wire = dict(wire) if wire is not None else {
            "maxAmount": None, "requireApprovalOver": None, "redactFields": [],
            "currency": None}
        wire["redactFields"] = [path for path, _ in tool]
        wire["redactions"] = [text for _, text in tool]
    return d.status, d.code, d.rules, wire


def _redactions(s: _Summary) -> Any:
    return None if s[3] is None else s[3].get("redactions")


def _kinds(x: _Summary, y: _Summary) -> tuple[str, ...]:
    return tuple(kind for kind, differs in zip(
        CHANGE_KINDS, (x[0] != y[0], x[1] != y[1], x[3] != y[3], x[2] != y[2]),
        strict=True) if differs)


def diff(old: Engine, new: Engine, *, max_requests: int = 512,
         status_only: bool = False) -> Diff:
    """The requests whose decision differs between two policy versions (docs/analysis.md,
    "Diff"): every principal class x permission class x context region, decided by both.
    A decision differs in its status, reason code, obligations or rules (each change
    says which); with ``status_only``, only a different status counts."""
    a, b = old.policy, new.policy
    infos: dict[int, _RuleInfo] = {}

    def info(rule: CompiledRule) -> _RuleInfo:
        got = infos.get(id(rule))
        if got is None:
            got = infos[id(rule)] = _info(rule)
        return got

    ids: set[str] = set()
    for rule in (*a.rules, *b.rules):
        ids |= info(rule).ids
    principals = _principal_reps([a, b], ids)
    for rule in (*a.rules, *b.rules):
        info(rule).link([a, b], principals)
    vocab = {p for pol in (a, b) for r in pol.rules for p in r.patterns}
    vocab |= {p for pol in (a, b) for s in pol.budgets for p in s.patterns}
    for pol in (a, b):
        for f in pol.files:
            for st in f.statements:
                if isinstance(st, ast.SchemaDecl):
                    vocab.update(st.patterns)
    if not status_only:  # the permissions of tools whose redactions change
        vocab |= {perm for perm in _tool_permissions(a) & _tool_permissions(b)
                  if _redactions_change(a, b, perm)}
    permissions = permission_representatives(sorted(vocab), vocab) if vocab else []
    schemas = [st.patterns for pol in (a, b) for f in pol.files for st in f.statements
               if isinstance(st, ast.SchemaDecl)]
    same_settings = _settings(a) == _settings(b)
    changes: list[DecisionChange] = []
    inexact: dict[str, None] = {}
    pairs = requests = 0
    for perm in permissions:
        ra, rb = a.candidates(perm), b.candidates(perm)
        same_rules = same_settings and [_rule_key(r) for r in ra] == [_rule_key(r) for r in rb]
        budgets = [s for pol in (a, b) for s in pol.budgets
                   if any(matches(p, perm) for p in s.patterns)]
        extra = [s.limit + s.overdraft_limit for s in budgets]
        space, outside = _space([info(r) for r in (*ra, *rb)], extra)
        if space.currency is None and budgets:
            cur = next((s.unit for s in budgets if len(s.unit) == 3 and s.unit.isupper()),
                       None)
            if cur is not None:
                space.currency = cur
                space.amounts = _amounts(extra, cur)
        reads_principal = any(info(r).reads_principal for r in (*ra, *rb))
        # A call through a tool binding ``perm`` whose redactions differ changes its
        # obligations whenever it is allowed or pending under both versions.
        tools: list[tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]] = []
        if not status_only and not same_settings:
            ta, tb = _tool_redactions(a, perm), _tool_redactions(b, perm)
            tools = [(q, ta[q], tb[q]) for q in sorted(ta.keys() & tb.keys()) if ta[q] != tb[q]]
        # Without budgets or schemas on the permission, only the rules read the context:
        # their groups of shared variables are independent and are enumerated apart.
        decompose = not budgets and not any(
            any(matches(p, perm) for p in pats) for pats in schemas)
        classes: dict[Any, list[str]] = {}
        for pid in principals:
            if same_rules and not tools and _principal_key(a, pid) == _principal_key(b, pid):
                continue  # nothing that decides this pair changed
            wa, wb = a.principal(pid), b.principal(pid)
            key = (pid if reads_principal else
                   (tuple(r.scoped_to(wa) for r in ra), tuple(r.scoped_to(wb) for r in rb)))
            classes.setdefault(key, []).append(pid)
        for members in classes.values():
            pid = members[0]
            pairs += 1
            if not decompose:
                inexact.update(dict.fromkeys(outside))
            if decompose:
                ctx_list, complete, why = _region_contexts(
                    [(a, ra), (b, rb)], [info(r) for r in (*ra, *rb)], pid, perm,
                    max_requests, pairs, status_only)
                inexact.update(dict.fromkeys(why))
                contexts: Iterable[dict[str, Any]] = ctx_list
            else:
                contexts, complete = space.contexts(max_requests, seed=pairs)
            if not complete:
                inexact[f"{pid} on {perm}: more than {max_requests} requests; sampled"] = None
            # per tool (None: plain authorize), direction and kinds of change: the first
            # example and the count
            found: dict[_ChangeKey, list[Any]] = {}
            for ctx in contexts:
                requests += 1
                da = old.explain(pid, perm, ctx).decision
                db = new.explain(pid, perm, ctx).decision
                assert isinstance(da, Decision) and isinstance(db, Decision)
                if status_only:
                    if da.status != db.status:
                        _note(found, None, ("status",), ctx, _summary(da), _summary(db),
                              status_only)
                    continue
                sa, sb = _summary(da), _summary(db)
                if sa != sb:
                    _note(found, None, _kinds(sa, sb), ctx, sa, sb, status_only)
                for qid, was, now in tools:  # a call through the tool: its redactions
                    ta_, tb_ = _summary(da, was), _summary(db, now)
                    if _redactions(ta_) != _redactions(tb_):
                        _note(found, qid, _kinds(ta_, tb_), ctx, ta_, tb_, status_only)
            for (tool, kinds, _, _), (ctx, sa, sb, count) in found.items():
                request = _request(pid, perm, ctx)
                if tool is not None:
                    request["tool"] = tool
                changes.append(DecisionChange(
                    request, (sa[0], sa[1]), (sb[0], sb[1]), sa[2], sb[2], count,
                    tuple(members[1:]), kinds, _jsonable(sa[3]), _jsonable(sb[3])))
    return Diff(tuple(changes), pairs, requests, not inexact, tuple(inexact))


def _redactions_change(a: CompiledPolicy, b: CompiledPolicy, permission: str) -> bool:
    ta, tb = _tool_redactions(a, permission), _tool_redactions(b, permission)
    return any(ta[q] != tb[q] for q in ta.keys() & tb.keys())


#: How a diff groups the changed requests of one (principal, permission): the tool (None
#: for plain authorize), the kinds of change, and the direction: the old and the new
#: decision as (status, reason code), or the statuses alone for a status-only diff.
_ChangeKey = tuple[str | None, tuple[str, ...], tuple[str, ...], tuple[str, ...]]


def _note(found: dict[_ChangeKey, list[Any]], tool: str | None, kinds: tuple[str, ...],
          ctx: dict[str, Any], old: _Summary, new: _Summary, status_only: bool) -> None:
    """Count one changed request under its tool, kinds and direction; the first is the
    example. Grouping by direction, not by kinds alone, is what keeps a gain of access
    from being folded into a loss that changes the same parts (a cap raised and a forbid
    widened both change status, reason, obligations and rules): each direction a pair
    shows is listed with an example of its own."""
    way = ((old[0],), (new[0],)) if status_only else ((old[0], old[1]), (new[0], new[1]))
    key = (tool, kinds, *way)
    entry = found.get(key)
    if entry is None:
        found[key] = [ctx, old, new, 1]
    else:
        entry[3] += 1
