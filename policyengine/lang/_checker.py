"""Static checks over a parsed policy set: errors that need no request, and warnings.

Runs after parsing and before compiling, over all files together (roles and agents may
be declared in one file and used in another). The compiler may assume what this module
guarantees: ids unique per namespace, every referenced role known, every expression
well-typed as far as can be seen without a request, every pattern, path, zone, currency
and duration valid. Codes are listed in ``docs/errors.md``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import TYPE_CHECKING

from policyengine.errors import PolicyEngineError
from policyengine.lang import ast
from policyengine.lang._schema import check_schemas
from policyengine.lang._scripts import latin_look_alike, mixed_script, not_nfkc
from policyengine.lang._source import Problem, SourceSet
from policyengine.money._money import MAX_AMOUNT  # the widest amount a literal may hold
from policyengine.permissions import MAX_PRINCIPAL_ID, is_valid_pattern, pattern_subsumes

if TYPE_CHECKING:
    from policyengine.budgets.pricing import ModelPrice

__all__ = ["FUNCTIONS", "CheckCache", "check"]

#: Built-in functions: name -> (arity, argument kinds). All return bool.
FUNCTIONS: dict[str, tuple[int, str]] = {
    "startswith": (2, "string, prefix"),
    "endswith": (2, "string, suffix"),
    "contains": (2, "list or string, item"),
    "matches": (2, "string, glob literal"),
    "has": (1, "a context or principal.attributes path"),
}
PRINCIPAL_FIELDS = ("id", "roles", "attributes")
#: ``grant.FIELD``: the delegation the request acts under (docs/delegation.md).
GRANT_FIELDS = {"delegated": "bool", "acting_for": "string", "depth": "number",
                "chain": "list", "issuer": "string"}
NON_CURRENCY_UNITS = ("tokens", "calls", "credits", "risk_points")
MAX_EXPR_DEPTH = 48
#: Longest path (``context.a.b...``) a condition may read: deeper is not a policy.
MAX_PATH_SEGMENTS = 32

# Types seen statically. "any" is a value only a request can tell (a context path).
BOOL, STR, NUM, MONEY, LIST, ANY = "bool", "string", "number", "money", "list", "any"


#: Where a problem falls in the order the checks report (they are sorted by position;
#: problems at the same position keep this order): (phase, step). Phases: 1 declarations,
#: 2 a rate for the base currency, 3 references and expressions, 4 money of the file,
#: 5 roles nobody holds, 6 unreachable rules, 7 context schemas. Steps order the checks
#: of one statement.
Tag = tuple[int, int]


@dataclass
class _Ctx:
    sources: SourceSet
    problems: list[tuple[Tag, Problem]] = field(default_factory=list)
    tag: Tag = (0, 0)

    def error(self, code: str, message: str, span: ast.Span, hint: str | None = None) -> None:
        self.problems.append((self.tag, self.sources.problem(
            code, message, span.file, span.line, span.column, hint)))

    def warn(self, code: str, message: str, span: ast.Span, hint: str | None = None) -> None:
        self.problems.append((self.tag, self.sources.problem(
            code, message, span.file, span.line, span.column, hint, "warning")))


def _look_alike(ctx: _Ctx, what: str, text: str, span: ast.Span) -> None:
    """W207: a string naming a principal or a resource whose word mixes scripts
    (``"\\u0430dmin"``: a Cyrillic a) names another id than the one a reader sees; W208:
    one NFKC normalisation changes (``"\\uff41dmin"``: a fullwidth a) likewise; W209: one
    with a word wholly of Cyrillic or Greek letters that look Latin (``"\\u0440\\u0430"``
    reads "pa"). An ASCII id (nearly every one) costs one isascii() here."""
    if text.isascii():
        return
    mixed = mixed_script(text)
    if mixed is not None:
        word, letters = mixed
        where = "" if word == text else f" in the word \"{word}\""
        ctx.warn("W207", f"{what} {ast.quote(text)} mixes scripts{where}: {letters}; it is "
                 "not the id it looks like", span,
                 "write each word in one script (an id wholly in one script, any script, "
                 "is fine)")
    changed = not_nfkc(text)
    if changed is not None:
        first, norm = changed
        ctx.warn("W208", f"{what} {ast.quote(text)} changes under Unicode NFKC "
                 f"normalisation: {first}; it is not the id {ast.quote(norm)} it looks like",
                 span, f"write {ast.quote(norm)} (its NFKC form) if that is the id meant")
    latin = latin_look_alike(text)
    if latin is not None:
        word, scripts, reads = latin
        where = "is" if word == text else f"has the word \"{word}\""
        ctx.warn("W209", f"{what} {ast.quote(text)} {where} written wholly in {scripts} "
                 f"letters that look Latin: it reads as {ast.quote(reads)} and is not that id",
                 span, f"write {ast.quote(reads)} if that is the id meant; a real {scripts} "
                 "word keeps the warning, which tells a reader it is not Latin (policyengine "
                 "check --ignore W209 lets it through --werror)")


def _reason(exc: ValueError) -> str:
    """The message of a leaf's error without its code (the problem has its own)."""
    return exc.message if isinstance(exc, PolicyEngineError) else str(exc)


def _did_you_mean(word: str, options: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def _currency_known(code: str) -> bool:
    try:
        from policyengine.money._money import is_currency
    except ImportError:  # pragma: no cover - money is part of the package
        return len(code) == 3 and code.isalpha() and code.isupper()
    return is_currency(code)


def _zone_known(zone: str) -> bool:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
    if zone == "UTC":
        return True
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


#: Problems that another statement can cause by being absent: an unknown role or agent,
#: money without a base currency, an amount without a rate, a role nobody holds, a rule
#: a forbid overrides. When some statements did not parse, these are not reported (the
#: missing statement may well be the one they need); every other problem still is.
NEEDS_EVERY_STATEMENT = frozenset({"E103", "E104", "E112", "E127", "W201", "W202"})


class CheckCache:
    """Per file, what its own checks found last time, for ``Engine.reload``.

    Keyed by the parsed file object itself (unchanged text parses to the same object, see
    :class:`~policyengine.lang.ParseCache`): a file's own checks depend on its text
    only, so an unchanged file is not checked again. The checks across files (duplicate
    ids and roles, unknown roles and agents, one delegation block, one default currency,
    roles nobody holds, unreachable rules) always run, over every file's facts. Holds the
    files of the latest call only. One per engine; not thread-safe.
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple[ast.PolicyFile, _FileFacts]] = {}
        self.hits = 0

    def facts(self, f: ast.PolicyFile, sources: SourceSet) -> _FileFacts:
        entry = self._entries.get(id(f))
        if entry is not None and entry[0] is f:
            self.hits += 1
            return entry[1]
        return _FileCheck(f, sources).run()

    def keep(self, files: Sequence[ast.PolicyFile], facts: Sequence[_FileFacts]) -> None:
        self._entries = {id(f): (f, x) for f, x in zip(files, facts, strict=True)}


def check(files: Sequence[ast.PolicyFile], sources: SourceSet, *,
          partial: bool = False, cache: CheckCache | None = None) -> list[Problem]:
    """Return every error and warning for ``files`` (a policy set), sorted by position.

    ``partial``: some statements of the set did not parse; problems that may only be
    caused by their absence (:data:`NEEDS_EVERY_STATEMENT`) are left out. ``cache``
    (see :class:`CheckCache`) skips the own checks of files checked last time.
    """
    if cache is not None:
        facts = [cache.facts(f, sources) for f in files]
        cache.keep(files, facts)
    else:
        facts = [_FileCheck(f, sources).run() for f in files]
    tagged = [p for x in facts for p in x.problems]
    tagged.extend(_across(facts, sources))
    schemas = _Ctx(sources, tag=(7, 0))
    check_schemas(files, schemas.error, schemas.warn)  # context schemas: lang/_schema.py
    tagged.extend(schemas.problems)
    tagged.sort(key=lambda tp: (tp[1].file, tp[1].line, tp[1].column, tp[0]))
    problems = [p for _, p in tagged]
    if partial:
        problems = [p for p in problems if p.code not in NEEDS_EVERY_STATEMENT]
    return problems


@dataclass
class _FileFacts:
    """One file's own problems, and what the checks across files need from it."""

    problems: list[tuple[Tag, Problem]]
    #: Role declarations in order, and the first one of each name.
    roles: list[ast.RoleDecl] = field(default_factory=list)
    first_roles: dict[str, ast.RoleDecl] = field(default_factory=dict)
    #: (namespace, id) of every statement with an id, in order, and the first spans.
    ids: list[tuple[tuple[str, str], ast.Span]] = field(default_factory=list)
    first_ids: dict[tuple[str, str], ast.Span] = field(default_factory=dict)
    agents: set[str] = field(default_factory=set)
    held: set[str] = field(default_factory=set)  # roles agents of the file hold
    #: (kind, name, span) of each role or agent a statement names, in order.
    refs: list[tuple[str, str, ast.Span]] = field(default_factory=list)
    ref_roles: set[str] = field(default_factory=set)
    ref_agents: set[str] = field(default_factory=set)
    scoped: set[str] = field(default_factory=set)  # roles a rule is scoped to
    delegations: list[ast.Span] = field(default_factory=list)
    defaults: list[tuple[str, ast.Span]] = field(default_factory=list)
    forbids: list[ast.Rule] = field(default_factory=list)  # unconditional
    grants: list[ast.Rule | ast.ApprovalOverDecl] = field(default_factory=list)
    #: every ``price`` statement, in order: a provider and model is priced once per set.
    prices: list[ast.PriceDecl] = field(default_factory=list)


class _FileCheck(ast.StatementVisitor[None]):
    """The checks one file decides alone, one method per statement kind; what other
    files decide is collected into :class:`_FileFacts` for :func:`_across`."""

    def __init__(self, f: ast.PolicyFile, sources: SourceSet) -> None:
        self.f = f
        self.ctx = _Ctx(sources)
        self.facts = _FileFacts(self.ctx.problems)
        self.uses_money: list[ast.Span] = []
        self.ns_seen: ast.Span | None = None
        self.currency_seen: ast.Span | None = None
        self.base: str | None = None
        self.file_rates: dict[str, tuple[Decimal, ast.Span]] = {}

    def run(self) -> _FileFacts:
        ns = self.f.namespace
        facts = self.facts
        for st in self.f.statements:
            self.visit_statement(st, None)
            ident = getattr(st, "id", None)
            if isinstance(ident, str) and type(st) is not ast.AgentDecl:
                key = (ns, ident)
                facts.ids.append((key, st.span))
                facts.first_ids.setdefault(key, st.span)
        ctx = self.ctx
        if self.base is not None and self.base in self.file_rates:
            ctx.tag = (2, 0)
            ctx.error("E131", f"a rate for the base currency {self.base} makes no sense",
                      self.file_rates[self.base][1])
        ctx.tag = (4, 0)
        if self.uses_money and self.base is None:
            ctx.error("E112", "money is used but this file declares no base currency",
                      self.uses_money[0], "add 'currency EUR' (or your currency) to the file")
        if self.base is not None:
            for sp in _foreign_without_rate(self.f, self.base, set(self.file_rates)):
                ctx.error("E127", "no rate to convert this amount into the base currency",
                          sp, f"add 'rate XXX 1.23' (1 XXX = 1.23 {self.base})")
        return facts

    # -- declarations (phase 1) --
    def namespace(self, st: ast.NamespaceDecl) -> None:
        self.ctx.tag = (1, 1)
        if self.ns_seen is not None:
            self.ctx.error("E105", "a file has one namespace statement", st.span,
                           "split the file, one namespace per file")
        self.ns_seen = st.span

    def currency(self, st: ast.CurrencyDecl) -> None:
        self.ctx.tag = (1, 1)
        if not _currency_known(st.code):
            self.ctx.error("E109", f"unknown currency '{st.code}'", st.span,
                           "use an active ISO 4217 code such as EUR or USD")
        if self.currency_seen is not None:
            self.ctx.error("E113", "a file declares its currency once", st.span)
        self.currency_seen = st.span
        self.base = st.code

    def rate(self, st: ast.RateDecl) -> None:
        ctx = self.ctx
        ctx.tag = (1, 1)
        if not _currency_known(st.code):
            ctx.error("E109", f"unknown currency '{st.code}'", st.span)
        if st.value <= 0 or st.value > MAX_AMOUNT:
            ctx.error("E129", f"rate for {st.code} must be positive and sane", st.span)
        prev_rate = self.file_rates.get(st.code)
        if prev_rate is not None:
            ctx.error("E130", f"rate for {st.code} is already {prev_rate[0]} "
                      f"(at {prev_rate[1]})", st.span)
        self.file_rates[st.code] = (st.value, st.span)

    def default_currency(self, st: ast.DefaultCurrencyDecl) -> None:
        self.ctx.tag = (1, 1)
        if not _currency_known(st.code):
            self.ctx.error("E109", f"unknown currency '{st.code}'", st.span)
        self.facts.defaults.append((st.code, st.span))

    def tz(self, st: ast.TzDecl) -> None:
        self.ctx.tag = (1, 1)
        if not _zone_known(st.zone):
            self.ctx.error("E124", f"unknown time zone '{st.zone}'", st.span,
                           "use an IANA zone name such as Europe/Paris")

    def delegation(self, st: ast.DelegationDecl) -> None:
        ctx = self.ctx
        ctx.tag = (1, 1)
        self.facts.delegations.append(st.span)
        if st.max_depth is None and st.max_ttl is None and st.child_max_ttl is None:
            return
        # The ceilings are the tokens leaf's own: what it refuses at mint / verify.
        from policyengine.tokens._ceilings import ceiling_problems
        for what, message in ceiling_problems(st.max_depth, st.max_ttl, st.child_max_ttl):
            ctx.error("E126" if what == "max_depth" else "E125", message, st.span)

    # -- references, expressions, tools, budgets (phase 3) --
    def role(self, st: ast.RoleDecl) -> None:
        self.facts.roles.append(st)
        self.facts.first_roles.setdefault(st.name, st)
        self.ctx.tag = (3, 0)
        _check_patterns(self.ctx, st.patterns, st.span)

    def agent(self, st: ast.AgentDecl) -> None:
        if not 1 <= len(st.id) <= MAX_PRINCIPAL_ID:
            self.ctx.tag = (3, 2)
            self.ctx.error("E117", f"an agent id is 1 to {MAX_PRINCIPAL_ID} characters, as "
                           f"a request's principal (this one has {len(st.id)}): every "
                           "request from it would be invalid_request",
                           _at(st.id_span, st.span),
                           "shorten the id")
        elif not st.id.isascii() or "\0" in st.id:
            from policyengine.budgets.ledger import is_store_text
            if not is_store_text(st.id):
                self.ctx.tag = (3, 2)
                self.ctx.error("E118", "an agent id with a NUL character or a lone "
                               "surrogate (a \\u0000 or \\ud800 escape) is not text every "
                               "store keeps: every request from it that a budget counts "
                               "would be refused invalid_subject",
                               _at(st.id_span, st.span),
                               "drop the escape")
        self.ctx.tag = (3, 2)
        _look_alike(self.ctx, "agent id", st.id, _at(st.id_span, st.span))
        facts = self.facts
        facts.agents.add(st.id)
        facts.held.update(st.roles)
        facts.ref_roles.update(st.roles)
        spans = st.role_spans or tuple(st.span for _ in st.roles)
        facts.refs.extend(("role", role, sp) for role, sp in zip(st.roles, spans, strict=False))
        names = [n for n, _ in st.attributes]
        if len(names) != len(set(names)):
            self.ctx.tag = (3, 2)
            self.ctx.error("E116", f"agent '{st.id}' repeats an attribute", st.span)

    def resource(self, st: ast.ResourceDecl) -> None:
        self.ctx.tag = (3, 2)
        _look_alike(self.ctx, f"resource {st.type} id", st.ident, st.span)
        names = [n for n, _ in st.attributes]
        if len(names) != len(set(names)):
            self.ctx.tag = (3, 2)
            self.ctx.error("E116", f"resource {st.type} '{st.ident}' repeats an attribute",
                           st.span)

    def _scoped(self, st: ast.Rule | ast.LimitDecl | ast.ApprovalOverDecl) -> None:
        """Patterns and scope: what every kind of rule has."""
        self.ctx.tag = (3, 0)
        _check_patterns(self.ctx, st.patterns, st.span)
        facts = self.facts
        for item in st.scope:
            facts.refs.append((item.kind, item.name, item.span))
            if item.kind == "role":
                facts.scoped.add(item.name)
                facts.ref_roles.add(item.name)
            else:
                facts.ref_agents.add(item.name)
                _look_alike(self.ctx, "agent", item.name, item.span)
        self.ctx.tag = (3, 2)

    def _conditions(self, st: ast.Rule | ast.LimitDecl | ast.ApprovalOverDecl) -> None:
        ctx = self.ctx
        for cond in st.conditions:
            t = _TypeOf(ctx, self.uses_money).of(cond.expr)
            if t not in (BOOL, ANY):
                ctx.error("E108", f"a condition must be true or false, not a {t}", cond.span)
            elif isinstance(cond.expr, ast.Literal) and (
                    (cond.kind == "when") != bool(cond.expr.value)):
                ctx.warn("W203", "this condition is always false: the rule never applies",
                         cond.span)

    def rule(self, st: ast.Rule) -> None:
        self._scoped(st)
        if st.approval is not None:
            _check_approval_terms(self.ctx, st, st.approval)
        self._conditions(st)
        if st.effect == "forbid":
            if not st.conditions:
                self.facts.forbids.append(st)
        elif st.effect in ("permit", "approval"):
            self.facts.grants.append(st)

    def limit(self, st: ast.LimitDecl) -> None:
        self._scoped(st)
        _check_money(self.ctx, st.cap, self.uses_money)
        self._conditions(st)

    def approval_over(self, st: ast.ApprovalOverDecl) -> None:
        self._scoped(st)
        if st.effect != "approval":
            self.ctx.error("E110", f"'{st.effect} ... over' is not a rule; only "
                           "'approval ... over AMOUNT' is", st.span,
                           "use 'limit ID: PATTERN amount <= AMOUNT' for a cap")
        if st.approval is not None:
            _check_approval_terms(self.ctx, st, st.approval)
        _check_money(self.ctx, st.threshold, self.uses_money)
        self._conditions(st)
        if st.effect in ("permit", "approval"):
            self.facts.grants.append(st)

    def budget(self, st: ast.BudgetDecl) -> None:
        self.ctx.tag = (3, 2)
        _check_budget(self.ctx, st, self.f.namespace)

    def ratelimit(self, st: ast.RateLimitDecl) -> None:
        self.ctx.tag = (3, 2)
        _check_rate_limit(self.ctx, st, self.f.namespace)

    def price(self, st: ast.PriceDecl) -> None:
        self.ctx.tag = (3, 2)
        _check_price(self.ctx, st)
        self.facts.prices.append(st)

    def http_tool(self, st: ast.HttpTool) -> None:
        self.ctx.tag = (3, 2)
        _check_http_tool(self.ctx, st)

    def named_tool(self, st: ast.NamedTool) -> None:
        self.ctx.tag = (3, 2)
        _check_named_tool(self.ctx, st)

    def schema(self, st: ast.SchemaDecl) -> None:
        """Checked with the rules it covers, in every file: see :func:`check_schemas`."""

    def log_redact(self, st: ast.LogRedact) -> None:
        self.ctx.tag = (3, 2)
        check_redact(self.ctx, st)

    def egress(self, st: ast.EgressDecl) -> None:
        self.ctx.tag = (3, 2)
        for verb, host in st.items:
            _check_host(self.ctx, host, st.span, deny=verb == "deny")

    def rates(self, st: ast.RatesDecl) -> None:
        if st.max_age is not None and st.max_age <= 0:
            self.ctx.tag = (3, 2)
            self.ctx.error("E125", "max_age must be positive", st.span)


def _across(facts: Sequence[_FileFacts], sources: SourceSet) -> list[tuple[Tag, Problem]]:
    """The checks no file decides alone, over every file's facts in file order: the
    first declaration of a role or id wins and every later one is an error."""
    ctx = _Ctx(sources)
    roles: dict[str, ast.RoleDecl] = {}
    ids: dict[tuple[str, str], ast.Span] = {}
    delegation_seen: ast.Span | None = None
    default_seen: tuple[str, ast.Span] | None = None
    prices: dict[tuple[str, str], ast.Span] = {}
    for x in facts:
        ctx.tag = (3, 2)
        for price in x.prices:
            key = (price.provider, price.model)
            if key in prices:
                ctx.error("E141", f"{key[0]}/{key[1]} is already priced at {prices[key]}",
                          _at(price.provider_span, price.span))
            else:
                prices[key] = price.span
        if len(x.first_roles) == len(x.roles) and roles.keys().isdisjoint(x.first_roles):
            roles.update(x.first_roles)  # no duplicate: the common case, at C speed
        else:
            ctx.tag = (1, 0)
            for st in x.roles:
                if st.name in roles:
                    prev = roles[st.name].span
                    ctx.error("E102", f"role '{st.name}' is already defined at {prev}", st.span)
                else:
                    roles[st.name] = st
        if len(x.first_ids) == len(x.ids) and ids.keys().isdisjoint(x.first_ids):
            ids.update(x.first_ids)
        else:
            ctx.tag = (1, 3)
            for key, span in x.ids:
                if key in ids:
                    ctx.error("E101", f"id '{key[1]}' is already used in namespace "
                              f"'{key[0]}' at {ids[key]}", span, "ids are unique per namespace")
                else:
                    ids[key] = span
        ctx.tag = (1, 0)
        for span in x.delegations:
            if delegation_seen is not None:
                ctx.error("E126", f"delegation is already configured at {delegation_seen}",
                          span)
            delegation_seen = span
        ctx.tag = (1, 2)
        for code, span in x.defaults:
            if default_seen is None:
                default_seen = (code, span)
            elif default_seen[0] != code:
                ctx.error("E134", f"default_currency {code} differs from "
                          f"default_currency {default_seen[0]} at {default_seen[1]}",
                          span, "a policy set has one default currency: declare the "
                          "same one in every file, or only once")
    agents: set[str] = set()
    held: set[str] = set()
    scoped: set[str] = set()
    for x in facts:
        agents.update(x.agents)
        held.update(x.held)
        scoped.update(x.scoped)
    ctx.tag = (3, 1)
    for x in facts:
        if roles.keys() >= x.ref_roles and agents >= x.ref_agents:
            continue
        for kind, name, span in x.refs:
            if kind == "role":
                if name not in roles:
                    ctx.error("E103", f"unknown role '{name}'", span,
                              _did_you_mean(name, roles) or "declare it with 'role'")
            elif name not in agents:
                ctx.error("E104", f"unknown agent '{name}'", span,
                          _did_you_mean(name, agents) or "declare it with 'agent'")
    ctx.tag = (5, 0)
    for name in roles.keys() - held - scoped:
        ctx.warn("W202", f"role '{name}' is held by no agent", roles[name].span)
    ctx.tag = (6, 0)
    _unreachable(ctx, [st for x in facts for st in x.forbids],
                 [st for x in facts for st in x.grants])
    return ctx.problems


def _check_patterns(ctx: _Ctx, patterns: Iterable[str], span: ast.Span) -> None:
    for p in patterns:
        if not is_valid_pattern(p):
            ctx.error("E115", f"invalid permission pattern '{p}'", span,
                      "use 'ns:action', 'ns:*' or '*'")


def _check_money(ctx: _Ctx, m: ast.MoneyLit, uses: list[ast.Span]) -> None:
    uses.append(m.span)
    if not _currency_known(m.currency):
        ctx.error("E109", f"unknown currency '{m.currency}'", m.span,
                  "use an active ISO 4217 code such as EUR or USD")
    if m.amount < 0 or m.amount > MAX_AMOUNT:
        ctx.error("E135", f"amount {m.amount} {m.currency} is out of range: money is at "
                  f"most {MAX_AMOUNT}", m.span)
    elif _currency_known(m.currency):
        from policyengine.money._money import MONEY_CONTEXT, decimal_places
        places = decimal_places(m.currency)
        exponent = m.amount.as_tuple().exponent
        quantum = Decimal(1).scaleb(-places, MONEY_CONTEXT)
        if isinstance(exponent, int) and -exponent > places and m.amount != m.amount.quantize(
                quantum, rounding=ROUND_DOWN, context=MONEY_CONTEXT):
            ctx.error("E133", f"{m.amount} {m.currency} has more decimals than {m.currency} "
                      f"has ({places})", m.span,
                      f"write it with at most {places} decimal{'s' if places != 1 else ''}")


def _foreign_without_rate(f: ast.PolicyFile, base: str, rated: set[str]) -> list[ast.Span]:
    has_rate_file = any(isinstance(st, ast.RatesDecl) for st in f.statements)
    if has_rate_file:
        return []  # rates come from a file at compile time; the compiler checks them
    out: list[ast.Span] = []

    def walk(e: ast.Expr) -> None:
        if (isinstance(e, ast.MoneyLit) and e.currency != base and e.currency not in rated
                and _currency_known(e.currency)):
            out.append(e.span)
        for child in ast.children(e):
            walk(child)

    for st in f.statements:
        for e in _MONEY_EXPRS.visit_statement(st, ()):
            walk(e)
    return out


class _MoneyExprs(ast.StatementVisitor[tuple[ast.Expr, ...]]):
    """The expressions of a statement that may hold an amount, in source order: a
    limit's cap, an approval's threshold, the conditions of every kind of rule."""

    def rule(self, st: ast.Rule) -> tuple[ast.Expr, ...]:
        return tuple(c.expr for c in st.conditions)

    def limit(self, st: ast.LimitDecl) -> tuple[ast.Expr, ...]:
        return (st.cap, *(c.expr for c in st.conditions))

    def approval_over(self, st: ast.ApprovalOverDecl) -> tuple[ast.Expr, ...]:
        return (st.threshold, *(c.expr for c in st.conditions))


_MONEY_EXPRS = _MoneyExprs()


def _literal_type(v: object) -> str:
    if isinstance(v, bool):
        return BOOL
    if isinstance(v, str):
        return STR
    return NUM


def _literal_kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    return "string" if isinstance(value, str) else "number"


class _TypeOf(ast.ExprVisitor[str]):
    """The static type of an expression, reporting what is wrong with it on the way."""

    def __init__(self, ctx: _Ctx, uses_money: list[ast.Span]) -> None:
        self.ctx = ctx
        self.uses_money = uses_money
        self.depth = 0

    def of(self, e: ast.Expr) -> str:
        if self.depth > MAX_EXPR_DEPTH:
            self.ctx.error("E007", "expression nested too deeply", e.span,
                                "simplify the expression")
            return ANY
        self.depth += 1
        try:
            return self.visit(e)
        finally:
            self.depth -= 1

    def literal(self, e: ast.Literal) -> str:
        return _literal_type(e.value)

    def money(self, e: ast.MoneyLit) -> str:
        _check_money(self.ctx, e, self.uses_money)
        return MONEY

    def amount(self, e: ast.Amount) -> str:
        self.uses_money.append(e.span)
        return MONEY

    def path(self, e: ast.Path) -> str:
        if len(e.segments) > MAX_PATH_SEGMENTS:
            self.ctx.error("E007", f"path has {len(e.segments)} segments; the limit is "
                           f"{MAX_PATH_SEGMENTS}", e.span, "flatten the context you send")
            return ANY
        if e.root == "principal":
            if not e.segments:
                self.ctx.error("E111", "use a field of principal", e.span,
                               "principal.id, principal.roles or principal.attributes.NAME")
                return ANY
            head = e.segments[0]
            if head not in PRINCIPAL_FIELDS:
                self.ctx.error("E111", f"principal has no field '{head}'", e.span,
                               _did_you_mean(head, PRINCIPAL_FIELDS)
                               or "principal.id, principal.roles or principal.attributes.NAME")
                return ANY
            if head == "id":
                if len(e.segments) > 1:
                    self.ctx.error("E111", "principal.id is a string; it has no fields", e.span)
                return STR
            if head == "roles":
                if len(e.segments) > 1:
                    self.ctx.error("E111", "principal.roles is a list; it has no fields", e.span)
                return LIST
            return ANY
        if e.root == "grant":
            fields = "grant.delegated, grant.acting_for, grant.depth, grant.chain, grant.issuer"
            if len(e.segments) != 1 or e.segments[0] not in GRANT_FIELDS:
                head = e.segments[0] if e.segments else ""
                self.ctx.error("E111", f"grant has no field '{head}'" if head else
                               "use a field of grant", e.span,
                               _did_you_mean(head, tuple(GRANT_FIELDS)) or fields)
                return ANY
            return GRANT_FIELDS[e.segments[0]]
        return ANY

    def named(self, side: ast.Expr, values: Sequence[ast.Expr]) -> None:
        """W207 for a string a principal id (``principal.id``, ``grant.acting_for``) is
        compared with."""
        if isinstance(side, ast.Path) and (side.root, side.segments) in (
                ("principal", ("id",)), ("grant", ("acting_for",))):
            for v in values:
                if isinstance(v, ast.Literal) and isinstance(v.value, str):
                    _look_alike(self.ctx, "principal id", v.value, v.span)

    def list(self, e: ast.ListExpr) -> str:
        for item in e.items:
            if not isinstance(item, ast.Literal):
                self.ctx.error("E108", "a list holds literal strings, numbers or booleans",
                               item.span, "compare values one by one with 'or'")
        found = {_literal_kind(i.value) for i in e.items if isinstance(i, ast.Literal)}
        if len(found) > 1:
            self.ctx.error("E108", "a list holds values of one type, not " +
                           " and ".join(sorted(found)), e.span,
                           "values of different types never compare (docs/semantics.md)")
        return LIST

    def call(self, e: ast.Call) -> str:
        spec = FUNCTIONS.get(e.name)
        if spec is None:
            self.ctx.error("E106", f"unknown function '{e.name}'", e.span,
                           _did_you_mean(e.name, FUNCTIONS)
                           or "functions: " + ", ".join(sorted(FUNCTIONS)))
            return BOOL
        arity, kinds = spec
        if len(e.args) != arity:
            self.ctx.error("E107", f"{e.name}() takes {arity} argument{'s' if arity > 1 else ''} "
                           f"({kinds}), got {len(e.args)}", e.span)
            return BOOL
        if e.name == "has":
            arg = e.args[0]
            if not (isinstance(arg, ast.Path) and arg.segments and (
                    arg.root == "context" or (arg.root == "principal"
                                              and arg.segments[0] == "attributes"))):
                self.ctx.error("E108", "has() takes a path such as context.country or "
                               "principal.attributes.tier", arg.span)
            return BOOL
        types = [self.of(a) for a in e.args]
        if e.name in ("startswith", "endswith", "matches"):
            for a, t in zip(e.args, types, strict=False):
                if t not in (STR, ANY):
                    self.ctx.error("E108", f"{e.name}() takes strings, not a {t}", a.span)
            if e.name == "matches" and not (isinstance(e.args[1], ast.Literal)
                                            and isinstance(e.args[1].value, str)):
                self.ctx.error("E114", "the glob of matches() must be a string literal", e.span,
                               "globs are compiled once, with the policy")
        elif e.name == "contains" and types[0] not in (LIST, STR, ANY):
            self.ctx.error("E108", f"contains() looks into a list or string, not a {types[0]}",
                           e.args[0].span)
        return BOOL

    def compare(self, e: ast.Compare) -> str:
        lt = self.of(e.left)
        rt = self.of(e.right)
        self.named(e.left, (e.right,))
        self.named(e.right, (e.left,))
        if e.op in ("<", "<=", ">", ">="):
            for side, t in ((e.left, lt), (e.right, rt)):
                if t not in (NUM, MONEY, ANY):
                    self.ctx.error("E108", f"'{e.op}' compares numbers or money, not a {t}",
                                   side.span)
        if MONEY in (lt, rt) and (lt, rt) != (MONEY, MONEY):
            other, other_side = (rt, e.right) if lt == MONEY else (lt, e.left)
            if other == ANY and isinstance(other_side, ast.Path):
                self.ctx.error("E108", f"money is compared with money, not with "
                               f"{other_side.dotted()} (a request value without a currency)",
                               other_side.span, "to compare the request's amount, write "
                               "'amount' (it is converted to the file's currency): "
                               "amount <= 500 EUR")
            else:
                self.ctx.error("E108", f"money is compared with money, not with a {other}",
                               e.span, "write the amount with its currency, like 500 EUR")
        elif ANY not in (lt, rt) and lt != rt and e.op in ("==", "!="):
            self.ctx.error("E108", f"comparing a {lt} with a {rt} is an evaluation error "
                           "(values of different types never compare)", e.span)
        return BOOL

    def in_(self, e: ast.In) -> str:
        it = self.of(e.item)
        ct = self.of(e.collection)
        if isinstance(e.collection, ast.ListExpr):
            self.named(e.item, e.collection.items)
        if ct not in (LIST, ANY):
            hint = "use contains(text, part) for substrings" if ct == STR else None
            self.ctx.error("E108", f"'in' looks into a list, not a {ct}", e.collection.span, hint)
        if it in (LIST, MONEY):
            self.ctx.error("E108", f"'in' tests a string, number or boolean, not a {it}",
                           e.item.span)
        return BOOL

    def not_(self, e: ast.Not) -> str:
        t = self.of(e.expr)
        if t not in (BOOL, ANY):
            self.ctx.error("E108", f"'not' needs true or false, not a {t}", e.expr.span)
        return BOOL

    def and_(self, e: ast.And | ast.Or) -> str:
        word = "and" if isinstance(e, ast.And) else "or"
        for item in e.items:
            t = self.of(item)
            if t not in (BOOL, ANY):
                self.ctx.error("E108", f"'{word}' needs true or false, not a {t}", item.span)
        return BOOL

    or_ = and_


#: The checker's code for a problem the budgets leaf reports, by field.
_BUDGET_CODES = {"window": "E125", "tz": "E124"}


def _check_rate_limit(ctx: _Ctx, st: ast.RateLimitDecl, namespace: str) -> None:
    """Patterns here; the bounds of a rate limit are the budgets leaf's own
    (:func:`policyengine.budgets.ratelimit.rate_limit_problems`), reported at the value
    they concern (the id, the count, the burst) or else at the statement."""
    from policyengine.budgets.ratelimit import rate_limit_problems
    _check_patterns(ctx, st.patterns, st.span)
    for what, message in rate_limit_problems(st.patterns, st.count, st.per, st.burst,
                                             st.subject, f"{namespace}.{st.id}"):
        if what == "patterns":
            continue  # reported by _check_patterns, with the pattern
        span = {"count": st.count_span, "burst": st.burst_span, "id": st.id_span}.get(what)
        ctx.error("E142", f"ratelimit {st.id}: {message}", _at(span, st.span),
                  "for example: ratelimit search: tools:search 10 per second burst 20")


def _at(span: ast.Span | None, statement: ast.Span) -> ast.Span:
    """``span`` when the parser knew it, else the statement's."""
    return statement if span is None or span is ast.NOSPAN else span


def _check_budget(ctx: _Ctx, st: ast.BudgetDecl, namespace: str) -> None:
    """Patterns here; every other limit of a budget is the budgets leaf's own
    (:func:`policyengine.budgets.spec.budget_problems`), reported at the value it
    concerns (the id, the limit, the unit, the window, the overdraft, the zone, the
    caps)."""
    from policyengine.budgets.spec import budget_problems
    _check_patterns(ctx, st.patterns, st.span)
    overdraft = st.overdraft if st.overdraft is not None else Decimal(0)
    for what, message in budget_problems(st.patterns, st.limit, st.unit, st.window,
                                         st.rolling_seconds, st.subject, st.tz or "UTC",
                                         overdraft, st.caps, f"{namespace}.{st.id}"):
        if what == "patterns":
            continue  # reported by _check_patterns, with the pattern
        hint = ("a currency code, USD_MICROCENTS, or tokens, calls, credits, risk_points"
                if what == "unit"
                else "use an IANA zone name such as Europe/Paris" if what == "tz" else None)
        ctx.error(_BUDGET_CODES.get(what, "E123"), f"budget {st.id}: {message}",
                  _at(dict(st.value_spans).get(what), st.span), hint)


def _check_price(ctx: _Ctx, st: ast.PriceDecl) -> None:
    """Input and output given once each, in one currency with cents; the budgets leaf
    (:func:`policyengine.budgets.pricing.price_problems`) checks the names, the currency,
    the count and the amounts, each problem reported at the value it names. (One price
    per provider and model: :func:`_across`.)"""
    from policyengine.budgets.pricing import price_problems
    kinds = [kind for kind, _, _ in st.items]
    codes = [code for _, _, code in st.items]
    spans = st.item_spans or tuple((ast.NOSPAN,) * 3 for _ in st.items)  # a built node
    if len(kinds) != len(set(kinds)):
        again = next(i for i, kind in enumerate(kinds) if kind in kinds[:i])
        ctx.error("E141", "each of input, cached_input and output is priced once",
                  _at(spans[again][0], st.span))
    elif "input" not in kinds or "output" not in kinds:
        ctx.error("E141", "a price gives input and output (cached_input defaults to input)",
                  st.span)
    elif len(set(codes)) != 1:
        other = next(i for i, code in enumerate(codes) if code != codes[0])
        ctx.error("E141", "the prices of one model are in one currency",
                  _at(spans[other][2], st.span))
    else:
        found = price_problems(*_price_fields(st))
        at = {"provider": st.provider_span, "model": st.model_span, "per": st.per_span}
        at.update((kind, amount)
                  for (kind, _, _), (_, amount, _) in zip(st.items, spans, strict=True))
        at["currency"] = spans[0][2]  # every item's (one currency, checked above)
        # Every problem, each at its value (cached_input not written is the input's:
        # reported once, at the input).
        for what, exc in found:
            if what == "cached_input" and "cached_input" not in kinds:
                continue
            ctx.error("E141", f"price {st.provider}/{st.model}: {exc.message}",
                      _at(at.get(what), st.span))


def _price_fields(st: ast.PriceDecl) -> tuple[str, str, str, Decimal, Decimal, Decimal, int]:
    """A checked ``price`` statement's fields, in :class:`ModelPrice`'s order (cached
    input defaults to the input price: never cheaper than declared)."""
    by_kind = {kind: amount for kind, amount, _ in st.items}
    return (st.provider, st.model, st.items[0][2], by_kind["input"],
            by_kind.get("cached_input", by_kind["input"]), by_kind["output"], st.per)


def price_of(st: ast.PriceDecl) -> ModelPrice:
    """The ``ModelPrice`` of a checked ``price`` statement."""
    from policyengine.budgets.pricing import ModelPrice
    return ModelPrice(*_price_fields(st))


def _check_host(ctx: _Ctx, host: str, span: ast.Span, deny: bool = False) -> None:
    try:
        from policyengine.tools._patterns import HostPattern
        HostPattern.compile(host)
        if deny and "://" in host:  # a deny covers every scheme: one is never written
            raise ValueError(host)
    except ImportError:  # pragma: no cover
        return
    except ValueError as exc:
        scheme, sep, rest = host.partition("://")
        if sep and scheme.isalpha():
            bare = rest.split("/", 1)[0]
            ctx.error("E121", f"'{host}' is a URL, not a host", span,
                      f'write the host without the scheme: "{bare}"')
            return
        ctx.error("E121", f"invalid host pattern '{host}': {_reason(exc)}", span)


def check_redact(ctx: _Ctx, item: ast.Redact | ast.LogRedact) -> None:
    """A ``redact`` of a tool or a ``log redact``: a JSONPath other than ``$`` and a
    strategy with its number (``partial N``) or none."""
    from policyengine.tools._redaction import JsonPath, RedactionRule
    try:
        JsonPath.compile(item.path)
    except ValueError as exc:
        ctx.error("E120", f"invalid JSONPath '{item.path}': {_reason(exc)}", item.span)
        return
    if item.strategy == "partial" and item.keep is None:
        ctx.error("E120", "partial needs the number of characters to keep",
                  item.span, "redact $.card partial 4")
    if item.strategy != "partial" and item.keep is not None:
        ctx.error("E120", f"{item.strategy} takes no number", item.span)
    elif item.strategy != "partial" or item.keep is not None:
        try:
            RedactionRule(item.path, item.strategy, keep=item.keep or 0)
        except ValueError as exc:
            ctx.error("E120", _reason(exc), item.span, "redact $.card partial 4")


def _check_http_tool(ctx: _Ctx, st: ast.HttpTool) -> None:
    for host in st.hosts:
        _check_host(ctx, host, st.span)
    _ToolItemCheck(ctx, http=True).check(st.items)


def _check_named_tool(ctx: _Ctx, st: ast.NamedTool) -> None:
    from policyengine.tools._patterns import NamePattern
    try:
        NamePattern.compile(st.name)
    except ValueError as exc:
        ctx.error("E128", f"invalid tool name pattern '{st.name}': {_reason(exc)}", st.span)
    _check_patterns(ctx, [st.permission], st.span)
    _ToolItemCheck(ctx, http=False).check(st.items)
    if "*" in st.permission:
        ctx.error("E115", "a tool binds one permission, not a pattern", st.span)


class _ToolItemCheck(ast.ToolItemVisitor[None]):
    """The items of one tool's block, one method per kind (``http``: the tool is an
    ``http`` one, whose extractions belong on its routes)."""

    def __init__(self, ctx: _Ctx, http: bool) -> None:
        self.ctx = ctx
        self.http = http
        self.names: set[str] = set()

    def check(self, items: Iterable[ast.ToolItem]) -> None:
        for item in items:
            self.visit_item(item)

    def _path(self, item: ast.Route | ast.DenyRoute) -> None:
        from policyengine.tools._patterns import RoutePattern
        try:
            RoutePattern.compile(item.path)
        except ValueError as exc:
            self.ctx.error("E122", f"invalid route '{item.path}': {_reason(exc)}", item.span)

    def route(self, item: ast.Route) -> None:
        from policyengine.tools._redaction import JsonPath
        ctx = self.ctx
        self._path(item)
        _check_patterns(ctx, [item.permission], item.span)
        if "*" in item.permission:
            ctx.error("E115", "a route binds one permission, not a pattern", item.span)
        for ex in item.extractions:
            _check_extraction(ctx, ex, JsonPath)

    def deny_route(self, item: ast.DenyRoute) -> None:
        self._path(item)

    def redact(self, item: ast.Redact) -> None:
        check_redact(self.ctx, item)

    def extraction(self, item: ast.Extraction) -> None:
        from policyengine.tools._redaction import JsonPath
        ctx = self.ctx
        if self.http:
            ctx.error("E128", "put extractions of an http tool on its route",
                      item.span, 'POST "/path" -> ns:act { amount = $.amount }')
        if item.name in self.names:
            ctx.error("E128", f"'{item.name}' is extracted twice", item.span)
        self.names.add(item.name)
        _check_extraction(ctx, item, JsonPath)


def _check_extraction(ctx: _Ctx, ex: ast.Extraction, json_path: type) -> None:
    if ex.source_kind == "body":
        try:
            json_path.compile(ex.source)  # type: ignore[attr-defined]
        except ValueError as exc:
            ctx.error("E120", f"invalid JSONPath '{ex.source}': {_reason(exc)}", ex.span)
    if ex.minor and ex.name != "amount":
        ctx.error("E128", "'minor' applies to the amount only", ex.span)


def _unreachable(ctx: _Ctx, forbids: Sequence[ast.Rule],
                 grants: Sequence[ast.Rule | ast.ApprovalOverDecl]) -> None:
    """Warn about permits and approvals (``grants``, in order) an unconditional forbid
    always overrides."""
    if not forbids:
        return
    for st in grants:
        for fb in forbids:
            scope_ok = not fb.scope or (st.scope and set(st.scope) <= set(fb.scope))
            if scope_ok and all(any(pattern_subsumes(p, q) for q in fb.patterns)
                                for p in st.patterns):
                ctx.warn("W201", f"rule '{st.id}' is unreachable: forbid '{fb.id}' "
                         "always overrides it", st.span)
                break


def _check_approval_terms(ctx: _Ctx, st: ast.Rule | ast.ApprovalOverDecl,
                          terms: ast.ApprovalTerms) -> None:
    if st.effect != "approval":
        ctx.error("E140", f"'{st.effect}' takes no 'expires' or 'uses'; only an approval "
                  "does", terms.span, "drop the option, or make the rule an 'approval'")
        return
    if terms.expires is None and terms.uses is None:
        return
    # The bounds are the approvals leaf's own.
    from policyengine.decide._approvals import approval_terms_problems
    for what, message in approval_terms_problems(terms.expires, terms.uses):
        if what == "expires":
            ctx.error("E125", message, _at(terms.expires_span, terms.span))
        else:
            ctx.error("E140", message, _at(terms.uses_span, terms.span))
