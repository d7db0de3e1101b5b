"""Evaluate a request against a :class:`~policyengine.decide.CompiledPolicy`.

Semantics (docs/semantics.md states them in full):

* default deny: allowed only if some permit applies and no forbid applies;
* forbid (and a ``limit`` exceeded) > approval > permit > default deny;
* fail closed: a forbid or approval whose condition errors counts as applying, a permit
  whose condition errors does not; every such error becomes a :class:`Diagnostic`.

This is the hot path. It does one dict lookup for the (principal, permission) plan, calls
the plan's generated closures, and builds one :class:`Decision`.
"""

from __future__ import annotations

from decimal import (
    ROUND_CEILING,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
)
from typing import Any

from policyengine.decide._compiled import CompiledPolicy, CompiledRule, EvalError, FileMoney, Plan
from policyengine.decision import Decision, Diagnostic, Obligations
from policyengine.money._money import MAX_AMOUNT, MoneyError, decimal_places, parse_amount
from policyengine.money._rates import RateError
from policyengine.permissions import InvalidPermission, validate_permission

__all__ = ["Explanation", "RequestState", "evaluate", "explain", "invalid"]

_EMPTY: dict[str, Any] = {}
#: The grant view of a request made without a delegation token.
NOT_DELEGATED: dict[str, Any] = {"delegated": False}
_CEILING = Context(prec=100, rounding=ROUND_CEILING, Emax=999, Emin=-999,
                   traps=[InvalidOperation, Overflow, DivisionByZero])
_QUANTA: dict[str, Decimal] = {}


class RequestState:
    """Per-request values computed at most once (the amount, per base currency)."""

    __slots__ = ("_amounts", "context", "grant", "now")

    def __init__(self, context: dict[str, Any], now: float | None,
                 grant: dict[str, Any] | None = None) -> None:
        self.context = context
        self.now = now
        #: What ``grant.FIELD`` reads: ``delegated`` always; ``acting_for``, ``depth``,
        #: ``chain``, ``issuer`` only under a delegation (else missing_attribute).
        self.grant = grant if grant is not None else NOT_DELEGATED
        self._amounts: dict[str | None, Decimal | EvalError] = {}

    def amount(self, money: FileMoney) -> Decimal:
        """``context.amount`` in ``context.currency``, converted to ``money``'s base.

        Converted spends round up to the base currency's minor unit, so rounding never
        lets a spend slip under a cap.
        """
        a = self._amounts.get(money.base)
        if a is None:
            try:
                a = request_amount(self.context, money, self.now)
            except Exception as exc:  # a hostile context object: an error, never a raise
                a = _error(exc)
            self._amounts[money.base] = a
        if type(a) is EvalError:
            raise a
        return a  # type: ignore[return-value]


_INVALID_AMOUNT_CODES = frozenset({
    "nan_amount", "infinite_amount", "bool_amount", "float_amount", "negative_amount",
    "too_many_decimals", "amount_too_large", "exponent_too_large", "invalid_amount",
})


def request_amount(context: dict[str, Any], money: FileMoney, now: float | None) -> Decimal:
    """The request's amount in ``money.base``; raises :class:`EvalError` with a code."""
    # dict.get, not context.get: a dict subclass's own get() is not called
    raw = dict.get(context, "amount")
    if raw is None:
        raise EvalError("missing_amount", "the request has no context.amount")
    currency = dict.get(context, "currency")
    if currency is None:
        currency = money.default
        if currency is None:
            raise EvalError("missing_currency", "the request has an amount but no "
                            "context.currency, and the policy sets no default_currency")
    if type(currency) is not str:
        raise EvalError("unknown_currency", "context.currency must be a currency code")
    base = money.base
    if base is None:  # pragma: no cover - the checker requires a base to use amounts
        raise EvalError("no_base_currency", "the policy declares no base currency")
    try:
        value = parse_amount(raw, currency)
        if currency == base:
            return value
        # The hot path of convert(): one rate lookup, one multiply, one quantize, in a
        # wide context that rounds towards +infinity (a spend never rounds down).
        quantum = _QUANTA.get(base)
        if quantum is None:
            quantum = _QUANTA[base] = Decimal(1).scaleb(-decimal_places(base), _CEILING)
        rate = money.rates.rate(currency, base, now)
        converted = _CEILING.multiply(value, rate).quantize(quantum, context=_CEILING)
        if converted > MAX_AMOUNT:
            raise EvalError("invalid_amount", f"converted amount {converted} {base} is larger "
                            f"than the maximum {MAX_AMOUNT}")
        return converted
    except (MoneyError, RateError) as exc:
        if exc.code in _INVALID_AMOUNT_CODES:
            raise EvalError("invalid_amount", f"{exc.message} ({exc.code})") from None
        raise EvalError(exc.code, exc.message) from None


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


def request_problem(principal: Any, permission: Any, context: Any) -> str | None:
    """Why a request is malformed, or None. (Step 1 of docs/semantics.md.)"""
    if type(principal) is not str or type(permission) is not str:
        return "principal and permission must be strings"
    if context is not None and not isinstance(context, dict):
        return f"context must be an object, not {type(context).__name__}"
    if not principal or len(principal) > 256:
        return "principal id must be 1 to 256 characters"
    try:
        validate_permission(permission)
    except InvalidPermission as exc:
        return str(exc)
    return None


def invalid(principal: Any, permission: Any, message: str) -> Decision:
    """A denied decision for a request that is not well formed."""
    return Decision.denial("invalid_request", message, principal, permission)


def _run(rule: CompiledRule, ctx: dict[str, Any], plan: Plan, req: RequestState | None,
         diags: list[Diagnostic], fail_closed: bool) -> bool | None:
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
        err = _error(exc)
        diags.append(Diagnostic(err.code, err.message, rule.qid,
                                "applied (fail closed)" if fail_closed else "skipped"))
        return None


def _amount_rule(rule: CompiledRule, ctx: dict[str, Any], plan: Plan, req: RequestState,
                 diags: list[Diagnostic]) -> tuple[bool | None, Decimal | None]:
    """A ``limit`` or ``approval ... over``: (applies or None on error, cap if it does not)."""
    guard = _run(rule, ctx, plan, req, diags, True)
    if guard is not True:
        return guard, None
    try:
        amount = req.amount(rule.money)  # type: ignore[arg-type]
    except EvalError as err:
        diags.append(Diagnostic(err.code, err.message, rule.qid, "applied (fail closed)"))
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
            converted = _CEILING.multiply(value, rates.rate(money.base, cur_money.base))
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
    return Obligations(max_amount[0] if max_amount else None,
                       over[0] if over else None, (), currency)


def evaluate(policy: CompiledPolicy, principal: Any, permission: Any,
             context: Any = None, now: float | None = None,
             approved: bool = False, grant: dict[str, Any] | None = None) -> Decision:
    """Decide one request. Never raises for request data; malformed input is denied."""
    if type(principal) is not str or type(permission) is not str:
        return invalid(principal, permission, "principal and permission must be strings")
    if context is None:
        context = _EMPTY
    elif not isinstance(context, dict):
        return invalid(principal, permission,
                       f"context must be an object, not {type(context).__name__}")
    plan = policy.plans.get((principal, permission))
    if plan is None:
        problem = request_problem(principal, permission, context)
        if problem is not None:
            return invalid(principal, permission, problem)
        plan = policy.plan(principal, permission)
    diags: list[Diagnostic] = []
    req = RequestState(context, now, grant) if plan.uses_amount else None

    applied: list[str] = []  # declaration order, forbids before limits
    forbidden = limited = False
    for rule in plan.forbids:
        hit = _run(rule, context, plan, req, diags, True)
        if hit is not False:
            applied.append(rule.qid)
            forbidden = forbidden or hit is True
    max_amount: tuple[Decimal, FileMoney] | None = None
    for rule in plan.limits:
        hit, cap = _amount_rule(rule, context, plan, req, diags)  # type: ignore[arg-type]
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
        return Decision("denied", code, f"{permission} {why} {', '.join(rules)}", rules,
                        None, tuple(diags), principal, permission)

    permitted = tuple(r.qid for r in plan.permits
                      if _run(r, context, plan, req, diags, False) is True)
    if not permitted:
        return Decision("denied", "no_permit",
                        f"no rule permits {permission} for {principal}", (), None,
                        tuple(diags), principal, permission)

    approval_rules: list[str] = []
    approval_over: tuple[Decimal, FileMoney] | None = None
    for rule in plan.approvals:
        if rule.kind == "approval_over":
            hit, threshold = _amount_rule(rule, context, plan, req, diags)  # type: ignore[arg-type]
            if hit is False and threshold is not None:
                approval_over = _tightest(approval_over, threshold,
                                          rule.money)  # type: ignore[arg-type]
        else:
            hit = _run(rule, context, plan, req, diags, True)
        if hit is not False:
            approval_rules.append(rule.qid)

    obligations = None
    if max_amount is not None or approval_over is not None:
        obligations = _obligations(max_amount, approval_over)
    if approval_rules and not approved:
        return Decision("pending_approval", "approval_required",
                        f"{permission} needs approval: {', '.join(approval_rules)}",
                        tuple(approval_rules), obligations, tuple(diags), principal,
                        permission)
    return Decision("allowed", "permitted", f"permitted by {', '.join(permitted)}",
                    permitted, obligations, tuple(diags), principal, permission)


# ---- explain ---------------------------------------------------------------------------------

class Explanation:
    """What each rule that could decide a request did, and the decision."""

    __slots__ = ("decision", "rules")

    def __init__(self, decision: Decision, rules: list[dict[str, Any]]) -> None:
        self.decision = decision
        self.rules = rules

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision.to_wire(), "rules": self.rules}

    def __str__(self) -> str:
        lines = [f"decision: {self.decision.status} ({self.decision.code}): "
                 f"{self.decision.reason}"]
        for r in self.rules:
            lines.append(f"  {r['rule']:<32} {r['effect']:<9} {r['result']}")
            for c in r["conditions"]:
                lines.append(f"      {c['kind']} {c['text']}  -> {c['result']}")
        return "\n".join(lines)


def explain(policy: CompiledPolicy, principal: Any, permission: Any, context: Any = None,
            now: float | None = None) -> Explanation:
    """Evaluate like :func:`evaluate`, and say rule by rule what matched and what failed."""
    decision = evaluate(policy, principal, permission, context, now)
    if decision.code == "invalid_request":
        return Explanation(decision, [])
    ctx = context if isinstance(context, dict) else {}
    who = policy.principal(principal)
    plan = policy.plan(principal, permission)
    req = RequestState(ctx, now)
    out: list[dict[str, Any]] = []
    for rule in policy.candidates(permission):
        entry: dict[str, Any] = {"rule": rule.qid, "effect": rule.effect, "kind": rule.kind,
                                 "conditions": []}
        if not rule.scoped_to(who):
            entry["result"] = "not in scope (principal has none of its roles/agents)"
            out.append(entry)
            continue
        all_ok = True
        for kind, text, test in rule.clauses:
            try:
                value = test(ctx, plan.principal, req)
                holds = value if kind == "when" else not value
                result = "holds" if holds else "fails"
            except Exception as exc:
                err = _error(exc)
                holds = rule.effect != "permit"
                result = f"error {err.code}: {err.message}"
            all_ok = all_ok and holds
            entry["conditions"].append({"kind": kind, "text": text, "result": result})
        if rule.amount_limit is not None:
            try:
                amount = req.amount(rule.money)  # type: ignore[arg-type]
                over = amount > rule.amount_limit
                entry["conditions"].append({
                    "kind": "amount", "text": f"{amount} vs {rule.amount_limit}",
                    "result": "over" if over else "within"})
                all_ok = all_ok and over
            except EvalError as err:
                entry["conditions"].append({"kind": "amount", "text": "amount",
                                            "result": f"error {err.code}: {err.message}"})
        entry["result"] = "applies" if all_ok else "does not apply"
        out.append(entry)
    return Explanation(decision, out)
