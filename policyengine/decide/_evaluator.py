"""Evaluate a request against a :class:`~policyengine.decide.CompiledPolicy`.

Semantics (docs/semantics.md states them in full):

* default deny: allowed only if some permit applies and no forbid applies;
* forbid (and a ``limit`` exceeded) > approval > permit > default deny;
* fail closed: a forbid or approval whose condition errors counts as applying, a permit
  whose condition errors does not; every such error becomes a :class:`Diagnostic`.

This is the *rules* step of the decision pipeline (:mod:`policyengine.decide._pipeline`):
it calls the plan's generated closures and returns the facts the last step builds the
:class:`Decision` from. It never builds a decision itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import (
    ROUND_CEILING,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
)
from operator import attrgetter
from typing import Any

from policyengine._visible import one_line
from policyengine.decide._compiled import (
    CompiledPolicy,
    CompiledRule,
    Entry,
    EvalError,
    FileMoney,
    PlanRules,
)
from policyengine.decision import (
    Decision,
    Diagnostic,
    FrozenDict,
    FrozenList,
    Obligations,
    ReadOnly,
    RuleIds,
    ShadowOutcome,
    ToolDecision,
    build_diagnostic,
    build_obligations,
    frozen,
    wrong_type,
)
from policyengine.money._money import (
    MAX_AMOUNT,
    MAX_TEXT_LENGTH,
    MoneyError,
    amount_unit,
    decimal_places,
    parse_amount,
)
from policyengine.money._rates import RateError, source_fraction
from policyengine.permissions import MAX_PRINCIPAL_ID, InvalidPermission, validate_permission

__all__ = ["PARSED", "Explanation", "RequestState", "RuleFacts", "amount_rule", "entry_facts",
           "invalid", "not_strings", "read_money", "request_problem", "rule_entry",
           "rule_facts", "rule_ids", "rule_table", "run_rule", "shadow_rules"]

_EMPTY: dict[str, Any] = {}
#: The grant view of a request made without a delegation token.
NOT_DELEGATED: dict[str, Any] = {"delegated": False}
_CEILING = Context(prec=100, rounding=ROUND_CEILING, Emax=999, Emin=-999,
                   traps=[InvalidOperation, Overflow, DivisionByZero])
_QUANTA: dict[str, Decimal] = {}
_ONE = Decimal(1)


class RequestState:
    """The request's money, read once: ``context.amount`` and its currency are parsed on
    first use (by a rule, a budget or a grant) and every later step reuses the result;
    the amount converted into a file's base currency is cached per file, with that
    file's own rates.

    The currency is ``context.currency`` when given, else the policy set's one
    ``default_currency`` (docs/semantics.md, "Amounts and currencies").
    """

    __slots__ = ("_converted", "_parsed", "context", "default", "grant", "now")

    def __init__(self, context: dict[str, Any], default: str | None, now: float | None
                 ) -> None:
        self.context = context
        self.default = default
        self.now = now
        #: What ``grant.FIELD`` reads: ``delegated`` always; ``acting_for``, ``depth``,
        #: ``chain``, ``issuer`` only once a delegation is verified (else
        #: missing_attribute). The pipeline sets it after the grant step.
        self.grant: dict[str, Any] = NOT_DELEGATED
        self._parsed: tuple[tuple[Decimal, str] | None] | EvalError | None = None
        self._converted: dict[str, Decimal | EvalError] = {}

    def money(self) -> tuple[Decimal, str] | None:
        """(amount, currency), or None when the request carries no amount; raises
        :class:`EvalError` (``invalid_amount``, ``missing_currency``, ``unknown_currency``)."""
        parsed = self._parsed
        if parsed is None:
            try:
                parsed = (read_money(self.context, self.default),)
            except EvalError as exc:
                parsed = exc
            self._parsed = parsed
        if type(parsed) is EvalError:
            raise parsed
        return parsed[0]  # type: ignore[index]

    def amount(self, money: FileMoney) -> Decimal:
        """``context.amount`` converted to ``money``'s base currency with ``money``'s rates.

        Converted spends round up to the base currency's minor unit, so rounding never
        lets a spend slip under a cap.
        """
        a = self._converted.get(money.file)
        if a is None:
            try:
                parsed = self.money()
                if parsed is None:
                    raise EvalError("missing_amount", "the request has no context.amount")
                a = to_base(parsed[0], parsed[1], money, self.now)
            except Exception as exc:  # a hostile context object: an error, never a raise
                a = _error(exc)
            self._converted[money.file] = a
        if type(a) is EvalError:
            raise a
        return a  # type: ignore[return-value]


def read_money(context: dict[str, Any], default: str | None) -> tuple[Decimal, str] | None:
    """:func:`parse_request_money` for a step that reads the amount once and needs no
    :class:`RequestState`: (amount, currency) or None; raises only :class:`EvalError`
    (a hostile context object's failure too)."""
    get = dict.get  # a dict subclass's own get() is not called
    raw = get(context, "amount")
    if raw is None:
        return None
    currency = get(context, "currency")
    if type(raw) is str and type(currency) is str:  # on the wire: parsed before, mostly
        found = PARSED.get((raw, currency))
        if found is not None:
            return found
    try:
        return parse_request_money(context, default)
    except Exception as exc:
        raise _error(exc) from None


_INVALID_AMOUNT_CODES = frozenset({
    "nan_amount", "infinite_amount", "bool_amount", "float_amount", "negative_amount",
    "too_many_decimals", "amount_too_large", "exponent_too_large", "invalid_amount",
})


def parse_request_money(context: dict[str, Any], default: str | None
                        ) -> tuple[Decimal, str] | None:
    """``context.amount`` and its currency (``context.currency``, else ``default``: the
    rule :func:`~policyengine.money._money.amount_unit` keeps, the ledger's too), parsed
    strictly; None without an amount. Raises :class:`EvalError` with a code."""
    # dict.get, not context.get: a dict subclass's own get() is not called
    raw = dict.get(context, "amount")
    if raw is None:
        return None
    currency = dict.get(context, "currency")
    if currency is None:  # the one default-currency rule (docs/semantics.md)
        try:
            currency = amount_unit(None, default)
        except MoneyError as exc:
            raise EvalError(exc.code, "the request has an amount but no context.currency, "
                            "and the policy sets no default_currency") from None
    if type(currency) is not str:
        raise EvalError("unknown_currency", "context.currency must be a currency code "
                        f"(a string), not {type(currency).__name__}")
    # amounts on the wire: the same few strings again and again
    if type(raw) is str and len(raw) <= MAX_TEXT_LENGTH:
        key = (raw, currency)
        found = PARSED.get(key)
        if found is not None:
            return found
    try:
        parsed = parse_amount(raw, currency), currency
    except MoneyError as exc:
        if exc.code in _INVALID_AMOUNT_CODES:
            raise EvalError("invalid_amount", f"{exc.message} ({exc.code})", exc.code
                            ) from None
        raise EvalError(exc.code, exc.message) from None
    if type(raw) is str and len(raw) <= MAX_TEXT_LENGTH:
        if len(PARSED) >= _PARSED_KEPT:
            PARSED.clear()  # a few thousand small tuples, parsed again on next use
        PARSED[key] = parsed
    return parsed


#: Amount strings parsed (with their currency): (text, currency) -> (Decimal, currency).
#: Only amounts that parsed are kept; the values are immutable.
PARSED: dict[tuple[str, str], tuple[Decimal, str]] = {}
_PARSED_KEPT = 4096


def to_base(value: Decimal, currency: str, money: FileMoney, now: float | None) -> Decimal:
    """``value`` in ``currency`` converted to ``money.base`` with ``money.rates``, rounded
    up to the base's minor unit; raises :class:`EvalError` with a code."""
    base = money.base
    if base is None:  # pragma: no cover - the checker requires a base to use amounts
        raise EvalError("no_base_currency", "the policy declares no base currency")
    if currency == base:
        return value
    try:
        # The hot path of convert(): one rate lookup, one multiply, one quantize, in a
        # wide context that rounds towards +infinity (a spend never rounds down).
        quantum = _QUANTA.get(base)
        if quantum is None:
            quantum = _QUANTA[base] = Decimal(1).scaleb(-decimal_places(base), _CEILING)
        if money.rates is None:
            raise EvalError("no_rate", f"no rates to convert {currency} to {base}")
        # The exact fraction (a table's cross rate is n/d), divided once and rounded up,
        # as convert does (at the 34-digit rate() a cross rate rounded up made a spend
        # worth exactly a limit a cent over it); a source of the caller's own answers
        # through the one check (source_fraction): a rate of 0 or below would make any
        # amount fit a limit.
        numerator, denominator = source_fraction(money.rates, currency, base, now)
        converted = _CEILING.multiply(value, numerator)
        if denominator != _ONE:
            converted = _CEILING.divide(converted, denominator)
        converted = converted.quantize(quantum, context=_CEILING)
    except (MoneyError, RateError) as exc:
        if exc.code in _INVALID_AMOUNT_CODES:
            raise EvalError("invalid_amount", f"{exc.message} ({exc.code})") from None
        raise EvalError(exc.code, exc.message) from None
    except EvalError:
        raise
    except Exception as exc:  # a rate source's odd answer or failure: fail closed
        raise EvalError("invalid_rate", f"cannot convert {currency} to {base}: {exc!r}"
                        ) from None
    if converted > MAX_AMOUNT:
        raise EvalError("invalid_amount", f"converted amount {converted} {base} is larger "
                        f"than the maximum {MAX_AMOUNT}")
    return converted


def _error(exc: BaseException) -> EvalError:
    if isinstance(exc, EvalError):
        return exc
    if isinstance(exc, KeyError):
        return EvalError("missing_attribute", f"missing attribute {exc}")
    if isinstance(exc, (TypeError, IndexError)):
        return EvalError("type_error", f"wrong type: {exc}")
    if isinstance(exc, RecursionError):
        return EvalError("too_deep", "value nested too deeply")
    return EvalError("evaluation_error", f"{type(exc).__name__}: {exc}")


def not_strings(principal: Any, permission: Any) -> str:
    """The reason of a request whose principal or permission (or both) is not a string:
    it names each one that is not, and what it is (asked only once the check failed)."""
    wrong = [wrong_type(name, "a string", value)
             for name, value in (("principal", principal), ("permission", permission))
             if type(value) is not str]
    return "; ".join(wrong)


def request_problem(principal: Any, permission: Any, context: Any) -> str | None:
    """Why a request is malformed, or None. (Step 1 of docs/semantics.md.)"""
    if type(principal) is not str or type(permission) is not str:
        return not_strings(principal, permission)
    if context is not None and not isinstance(context, dict):
        return wrong_type("context", "an object (a dict)", context)
    if not principal or len(principal) > MAX_PRINCIPAL_ID:
        return f"principal id must be 1 to {MAX_PRINCIPAL_ID} characters"
    try:
        validate_permission(permission)
    except InvalidPermission as exc:
        return str(exc)
    return None


def invalid(principal: Any, permission: Any, message: str) -> Decision:
    """A denied decision for a request that is not well formed."""
    return Decision.denial("invalid_request", message, principal, permission)


#: What a rule whose condition raised did: a forbid or approval applies (fail closed),
#: a permit does not.
_APPLIED = "applied (fail closed)"
_SKIPPED = "skipped"


def _failed(exc: Exception, qid: str, effect: str) -> Diagnostic:
    """The diagnostic of a rule whose condition raised ``exc``: the one place
    :func:`run_rule`, the rules step and the permits' checks make it."""
    err = _error(exc)
    return build_diagnostic(err.code, err.message, qid, effect)


def run_rule(rule: CompiledRule, ctx: dict[str, Any], plan: PlanRules,
             req: RequestState | None, diags: list[Diagnostic], fail_closed: bool
             ) -> bool | None:
    """Does ``rule`` apply? True, False, or None when its condition errored.

    The caller applies fail closed: an erroring forbid or approval applies, an erroring
    permit does not. The diagnostic is recorded here.
    """
    test = rule.test
    if test is None:
        return True
    try:
        return test(ctx, plan.principal, req) is True
    except Exception as exc:
        diags.append(_failed(exc, rule.qid, _APPLIED if fail_closed else _SKIPPED))
        return None


def amount_rule(rule: CompiledRule, ctx: dict[str, Any], plan: PlanRules, req: RequestState,
                diags: list[Diagnostic]) -> tuple[bool | None, Decimal | None]:
    """A ``limit`` or ``approval ... over``: (applies or None on error, cap if it does not)."""
    guard = run_rule(rule, ctx, plan, req, diags, True)
    if guard is not True:
        return guard, None
    try:
        amount = req.amount(rule.money)  # type: ignore[arg-type]
    except EvalError as err:
        diags.append(_failed(err, rule.qid, _APPLIED))
        return None, None
    if amount > rule.amount_limit:  # type: ignore[operator]
        return True, None
    return False, rule.amount_limit


def _tightest(current: tuple[Decimal, FileMoney] | None, value: Decimal, money: FileMoney
              ) -> tuple[Decimal, FileMoney]:
    """Keep the smaller of two caps; caps of files with other base currencies compare
    after an exact conversion (if no rate connects them, the first one found stays)."""
    if current is None:
        return value, money
    cur_value, cur_money = current
    if money.base == cur_money.base:
        return (value, money) if value < cur_value else current
    for rates in (money.rates, cur_money.rates):
        try:
            numerator, denominator = source_fraction(  # two caps: both files have a base
                rates, money.base, cur_money.base, None)  # type: ignore[arg-type]
            converted = _CEILING.divide(_CEILING.multiply(value, numerator), denominator)
        except Exception:
            continue
        return (value, money) if converted < cur_value else current
    return current


def _obligations(max_amount: tuple[Decimal, FileMoney] | None,
                 approval_over: tuple[Decimal, FileMoney] | None) -> Obligations:
    currency = (max_amount or approval_over)[1].base  # type: ignore[index]
    over = approval_over
    if over is not None and max_amount is not None and over[1].base != currency:
        over = None  # reported in one currency; see docs/money.md
    return build_obligations(max_amount[0] if max_amount else None,
                             over[0] if over else None, (), currency)


#: What the rules step found: (status, code, reason, rules, obligations, diagnostics,
#: permitted). ``permitted`` is the permits that applied, kept for the approval step when
#: the status is ``pending_approval`` (an approval granted turns it into ``allowed``).
#: ``reason`` may be None when the status is ``allowed``: the decision spells it
#: (``permitted by`` its rules) when first read. ``rules`` and ``permitted`` may be the
#: shared plan-cache entry that resolves them (:func:`entry_facts`): the decision reads
#: them when asked (:class:`~policyengine.decision.RuleIds`); a step that reads them
#: itself calls :func:`rule_ids`.
RuleFacts = tuple[str, str, str | None, "tuple[str, ...] | RuleIds", "Obligations | None",
                  tuple[Diagnostic, ...], "tuple[str, ...] | RuleIds"]


def rule_ids(rules: tuple[str, ...] | RuleIds, principal: str) -> tuple[str, ...]:
    """The rule ids of a :data:`RuleFacts` ``rules`` or ``permitted`` of ``principal``'s
    request."""
    if type(rules) is tuple:
        return rules
    return rules.rule_ids(principal)  # type: ignore[union-attr]


def rule_facts(plan: PlanRules, principal: str, permission: str, context: dict[str, Any],
               req: RequestState | None) -> RuleFacts:
    """The rules step: run the plan's forbids, limits, permits and approvals.

    ``req`` must be given when ``plan.uses_amount``. Never raises for request data.
    """
    who = plan.principal
    diags: list[Diagnostic] = []
    max_amount: tuple[Decimal, FileMoney] | None = None
    if plan.checks is None:  # not permits only: forbids and limits first
        applied: list[str] = []  # declaration order, forbids before limits
        forbidden = limited = False
        hit: bool | None
        for rule in plan.forbids:
            # run_rule(rule, ..., True), written out: most plans hold a forbid or two (a
            # ``forbid ... : *`` covers every permission), and this is one call less each
            test = rule.test
            if test is None:
                hit = True
            else:
                try:
                    hit = test(context, who, req) is True
                except Exception as exc:
                    diags.append(_failed(exc, rule.qid, _APPLIED))
                    hit = None
            if hit is not False:
                applied.append(rule.qid)
                forbidden = forbidden or hit is True
        for rule in plan.limits:
            hit, cap = amount_rule(rule, context, plan, req, diags)  # type: ignore[arg-type]
            if hit is not False:
                applied.append(rule.qid)
                limited = limited or hit is True
            elif cap is not None:
                max_amount = _tightest(max_amount, cap, rule.money)  # type: ignore[arg-type]
        if applied:
            if forbidden:
                code, why = "forbidden", "is forbidden by"
            elif limited:
                code, why = "limit_exceeded", "exceeds the limit of"
            else:
                code, why = diags[0].code, "denied: could not evaluate (fail closed)"
            rules = tuple(applied)
            return ("denied", code, f"{permission} {why} {', '.join(rules)}", rules, None,
                    tuple(diags), ())

    checks = plan.permit_checks  # flat: (test, qid, test, qid, ...)
    if len(checks) == 2:  # one permit, the common case: no loop, its id made at compile time
        test, qid = checks
        try:
            permitted = (plan.permit_ids if test is None or test(context, who, req) is True
                         else ())
        except Exception as exc:
            diags.append(_failed(exc, qid, _SKIPPED))
            permitted = ()
    elif checks:
        permitted = _applying(checks, context, who, req, diags)
    else:  # no permit (an unknown principal, or one that holds no grant)
        permitted = ()
    if not permitted:
        return ("denied", "no_permit", f"no rule permits {permission} for {principal}", (),
                None, tuple(diags) if diags else (), ())
    approvals = plan.approvals
    if not approvals and max_amount is None:  # nothing more to read
        return ("allowed", "permitted", None, permitted, None,
                tuple(diags) if diags else (), permitted)

    approval_rules: list[str] = []
    approval_over: tuple[Decimal, FileMoney] | None = None
    for rule in approvals:
        if rule.kind == "approval_over":
            hit, threshold = amount_rule(rule, context, plan, req, diags)  # type: ignore[arg-type]
            if hit is False and threshold is not None:
                approval_over = _tightest(approval_over, threshold,
                                          rule.money)  # type: ignore[arg-type]
        else:
            hit = run_rule(rule, context, plan, req, diags, True)
        if hit is not False:
            approval_rules.append(rule.qid)

    obligations = None
    if max_amount is not None or approval_over is not None:
        obligations = _obligations(max_amount, approval_over)
    if approval_rules:
        return ("pending_approval", "approval_required",
                f"{permission} needs approval: {', '.join(approval_rules)}",
                tuple(approval_rules), obligations, tuple(diags), permitted)
    return ("allowed", "permitted", None, permitted, obligations, tuple(diags), permitted)


def _applying(checks: tuple[Any, ...], context: dict[str, Any], who: Any,
              req: RequestState | None, diags: list[Diagnostic]) -> tuple[str, ...]:
    """The ids of the permits (flat ``(test, qid, ...)``, more than one) that apply, in
    order; a condition that errors does not apply and leaves a diagnostic in ``diags``."""
    found: list[str] = []
    for i in range(0, len(checks), 2):
        test, qid = checks[i], checks[i + 1]
        try:
            if test is None or test(context, who, req) is True:
                found.append(qid)
        except Exception as exc:
            diags.append(_failed(exc, qid, _SKIPPED))
    return tuple(found)


def entry_facts(entry: Entry, principal: str, permission: str, context: dict[str, Any],
                req: RequestState | None) -> RuleFacts:
    """:func:`rule_facts` of a plan that decides from its shared cache entry (permits
    only, at most one of them conditional, ``entry.test``, which reads no
    ``principal.*``). Every permit applying, the rules are the entry itself, which the
    decision asks for their ids when first read (its reason too, ``permitted by`` them);
    else the unconditional permits apply (``entry.fallback``, None: there are none), and
    a condition that errors leaves a diagnostic (the one path that resolves an id here).

    Nothing of the principal's own is read: with many principals active, that is a CPU
    cache miss or two fewer per decision."""
    test = entry.test
    if test is None:
        return ("allowed", "permitted", None, entry, None, (), entry)
    try:
        if test(context, None, req) is True:
            return ("allowed", "permitted", None, entry, None, (), entry)
        diags: tuple[Diagnostic, ...] = ()
    except Exception as exc:
        diags = (_failed(exc, entry.conditional_id(principal), _SKIPPED),)
    fallback = entry.fallback
    if fallback is not None:
        return ("allowed", "permitted", None, fallback, None, diags, fallback)
    return ("denied", "no_permit", f"no rule permits {permission} for {principal}", (), None,
            diags, ())


def shadow_rules(plan: PlanRules, context: dict[str, Any], req: RequestState | None
                 ) -> tuple[ShadowOutcome, ...]:
    """What each of the plan's shadow rules (``mode warn`` / ``mode log``) would have done:
    one outcome per rule that applies, judged as if it were enforced (fail closed: a
    forbid, limit or approval whose condition or amount errors applies, with the error's
    code; a permit whose condition errors does not). Reads the request only: its
    diagnostics stay out of the decision."""
    out: list[ShadowOutcome] = []
    diags: list[Diagnostic] = []  # the statement's own; never the decision's
    for rule in plan.shadows:
        del diags[:]
        if rule.kind in ("limit", "approval_over"):
            hit, _ = amount_rule(rule, context, plan, req, diags)  # type: ignore[arg-type]
        else:
            hit = run_rule(rule, context, plan, req, diags, rule.effect != "permit")
            if rule.effect == "permit" and hit is not True:
                continue
        if hit is False:
            continue
        if rule.effect == "permit":
            status, code = "allowed", "permitted"
        elif rule.effect == "approval":
            status, code = "pending_approval", "approval_required"
        else:
            status, code = "denied", "limit_exceeded" if rule.kind == "limit" else "forbidden"
        if hit is None and diags:  # applied because it could not be evaluated
            code = diags[0].code
        kind = rule.kind if rule.kind in ("limit", "approval_over") else "rule"
        out.append(ShadowOutcome(rule.qid, kind, rule.mode, status, code))
    return tuple(out)


# ---- explain ---------------------------------------------------------------------------------

class _ExplanationSlots:
    __slots__ = ("_decision", "_rules", "_steps")


_FROZEN_DICT = frozenset({FrozenDict})
_set_decision = _ExplanationSlots.__dict__["_decision"].__set__
_set_rules = _ExplanationSlots.__dict__["_rules"].__set__
_set_steps = _ExplanationSlots.__dict__["_steps"].__set__


class Explanation(_ExplanationSlots, ReadOnly):
    """One decision run with tracing on: the decision (exactly what ``authorize`` or
    ``tool_authorize`` answers for the same request), what each pipeline step found, and
    what each rule that could decide the request did.

    Read-only, like the decision it holds: assigning or deleting any attribute raises
    ``AttributeError``; ``steps`` is a tuple of read-only dicts (:class:`FrozenDict`)
    and ``rules`` a read-only list of them (:class:`FrozenList`: a change raises
    ``TypeError``). A trace's rows are made read-only (and kept as they are); lists and
    dicts given here are copied (:func:`~policyengine.decision.frozen`)."""

    __slots__ = ()

    def __new__(cls, decision: Decision | ToolDecision, rules: Iterable[dict[str, Any]],
                steps: Iterable[dict[str, str]]) -> Explanation:
        steps = tuple(steps)
        if not _FROZEN_DICT.issuperset(map(type, steps)):
            steps = tuple(frozen(list(steps)))
        made = object.__new__(cls)
        _set_decision(made, decision)
        _set_rules(made, frozen(rules if isinstance(rules, list) else list(rules)))
        _set_steps(made, steps)
        return made

    decision: Decision | ToolDecision = property(  # type: ignore[assignment]
        attrgetter("_decision"))
    #: Rule by rule (in declaration order): ``rule``, ``effect``, ``kind``, ``mode`` (a
    #: shadow rule), ``conditions`` (``kind``, ``text``, ``result`` each) and ``result``.
    rules: list[dict[str, Any]] = property(attrgetter("_rules"))  # type: ignore[assignment]
    #: Step by step: ``{"step": name, "result": what it found}``, in the order run.
    steps: tuple[dict[str, str], ...] = property(  # type: ignore[assignment]
        attrgetter("_steps"))

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision.to_wire(), "steps": list(self.steps),
                "rules": self.rules}

    def __str__(self) -> str:
        d = self.decision
        # A field quoting the request (the reason names the principal, an error its
        # value) is one line (one_line): a line feed in an id cannot fake a line here.
        lines = [f"decision: {d.status} ({d.code}): {one_line(d.reason)}"]
        for st in self.steps:
            lines.append(f"  step {st['step']:<9} {one_line(st['result'])}")
        for r in self.rules:
            effect = r["effect"] + (f" ({r['mode']})" if "mode" in r else "")
            lines.append(f"  {r['rule']:<32} {effect:<9} {one_line(r['result'])}")
            for c in r["conditions"]:
                lines.append(f"      {c['kind']} {one_line(c['text'])}  -> "
                             f"{one_line(c['result'])}")
        return "\n".join(lines)


def rule_table(policy: CompiledPolicy, principal: str, permission: str,
               context: dict[str, Any], req: RequestState) -> list[dict[str, Any]]:
    """Rule by rule, for explain: every rule naming ``permission``, whether it is in the
    principal's scope, and what each of its conditions gave. Read-only (a
    :class:`FrozenList` of :func:`rule_entry` rows), as an :class:`Explanation` holds
    it."""
    who = policy.principal(principal)
    return FrozenList([rule_entry(rule, who, who, context, req)
                       for rule in policy.candidates(permission)])


# A row is built read-only from the start (no copy): filled, while it is new and no one
# else holds it, by the plain dict / list methods its class refuses.
_put = dict.__setitem__
_add = list.append


def rule_entry(rule: CompiledRule, who: Any, view: Any, context: dict[str, Any],
               req: RequestState) -> dict[str, Any]:
    """One row of :func:`rule_table`: ``who`` is the principal (for the scope), ``view``
    what conditions read as ``principal`` (the declared principal, or one with no roles
    and no attributes: ``CompiledPolicy.principal``). Read-only: a :class:`FrozenDict`
    whose ``conditions`` is a :class:`FrozenList` of them."""
    conditions = FrozenList()
    entry = FrozenDict(rule=rule.qid, effect=rule.effect, kind=rule.kind,
                       conditions=conditions)
    if rule.mode != "enforce":  # a shadow rule: reported, never decisive
        _put(entry, "mode", rule.mode)
    if not rule.scoped_to(who):
        _put(entry, "result", "not in scope (principal has none of its roles/agents)")
        return entry
    all_ok = True
    for kind, text, test in rule.clauses:
        try:
            value = test(context, view, req)
            holds = value if kind == "when" else not value
            result = "holds" if holds else "fails"
        except Exception as exc:
            err = _error(exc)
            holds = rule.effect != "permit"
            result = f"error {err.code}: {err.message}"
        all_ok = all_ok and holds
        _add(conditions, FrozenDict(kind=kind, text=text, result=result))
    if rule.amount_limit is not None:
        try:
            amount = req.amount(rule.money)  # type: ignore[arg-type]
            over = amount > rule.amount_limit
            _add(conditions, FrozenDict(kind="amount",
                                        text=f"{amount} vs {rule.amount_limit}",
                                        result="over" if over else "within"))
            all_ok = all_ok and over
        except EvalError as err:
            _add(conditions, FrozenDict(kind="amount", text="amount",
                                        result=f"error {err.code}: {err.message}"))
    _put(entry, "result", "applies" if all_ok else "does not apply")
    return entry
