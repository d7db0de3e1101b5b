"""Evaluate a request against a :class:`~policyengine.compiler.CompiledPolicy`.

Semantics (docs/semantics.md states them in full):

* default deny: allowed only if some permit applies and no forbid applies;
* forbid (and a ``limit`` exceeded) > approval > permit > default deny;
* fail closed: a forbid or approval whose condition errors counts as applying, a permit
  whose condition errors does not; every such error becomes a :class:`Diagnostic`.

This is the hot path. It does one dict lookup for the (principal, permission) plan, calls
the plan's generated closures, and builds one :class:`Decision`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from policyengine.compiler import CompiledPolicy, CompiledRule, EvalError, Plan
from policyengine.decision import Decision, Diagnostic, Obligations
from policyengine.money import Money, MoneyError, parse_amount
from policyengine.rates import RateError, convert

__all__ = ["Explanation", "RequestState", "evaluate", "explain", "invalid"]

_EMPTY: dict[str, Any] = {}


class RequestState:
    """Per-request values computed at most once (the converted amount)."""

    __slots__ = ("_amount", "context", "now", "policy")

    def __init__(self, context: dict[str, Any], policy: CompiledPolicy, now: float | None
                 ) -> None:
        self.context = context
        self.policy = policy
        self.now = now
        self._amount: Decimal | EvalError | None = None

    def amount(self) -> Decimal:
        """``context.amount`` in ``context.currency``, converted to the base currency.

        Converted spends round up to the base currency's minor unit, so rounding never
        lets a spend slip under a cap.
        """
        a = self._amount
        if a is None:
            try:
                a = self._amount = request_amount(self.context, self.policy, self.now)
            except EvalError as exc:
                a = self._amount = exc
        if type(a) is EvalError:
            raise a
        return a  # type: ignore[return-value]


def request_amount(context: dict[str, Any], policy: CompiledPolicy, now: float | None
                   ) -> Decimal:
    raw = context.get("amount")
    if raw is None:
        raise EvalError("missing_amount", "the request has no context.amount")
    currency = context.get("currency")
    if currency is None:
        currency = policy.default_currency
        if currency is None:
            raise EvalError("missing_currency", "the request has an amount but no "
                            "context.currency, and the policy sets no default_currency")
    if type(currency) is not str:
        raise EvalError("unknown_currency", "context.currency must be a currency code")
    base = policy.base_currency
    if base is None:
        raise EvalError("no_base_currency", "the policy declares no base currency")
    try:
        value = parse_amount(raw, currency)
        if currency == base:
            return value
        return convert(Money(value, currency), base, policy.rates, now=now,
                       rounding="up").amount
    except (MoneyError, RateError) as exc:
        code = exc.code
        if code in ("nan_amount", "infinite_amount", "bool_amount", "float_amount",
                    "negative_amount", "too_many_decimals", "amount_too_large",
                    "exponent_too_large", "invalid_amount_text"):
            detail = code
            code = "invalid_amount"
            raise EvalError(code, f"{exc} ({detail})") from None
        raise EvalError(code, str(exc)) from None


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


def invalid(principal: Any, permission: Any, message: str) -> Decision:
    """A denied decision for a request that is not well formed."""
    return Decision("denied", "invalid_request", message,
                    diagnostics=(Diagnostic("invalid_request", message, None, "denied"),),
                    principal=principal if type(principal) is str else None,
                    permission=permission if type(permission) is str else None)


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
    except Exception as exc:  # noqa: BLE001 - any failure is a fail-closed diagnostic
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
        amount = req.amount()
    except EvalError as err:
        diags.append(Diagnostic(err.code, err.message, rule.qid, "applied (fail closed)"))
        return None, None
    if amount > rule.amount_limit:  # type: ignore[operator]
        return True, None
    return False, rule.amount_limit


def evaluate(policy: CompiledPolicy, principal: Any, permission: Any,
             context: Any = None, now: float | None = None,
             approved: bool = False) -> Decision:
    """Decide one request. Never raises for request data; malformed input is denied."""
    if type(principal) is not str or type(permission) is not str:
        return invalid(principal, permission, "principal and permission must be strings")
    if context is None:
        context = _EMPTY
    elif not isinstance(context, dict):
        return invalid(principal, permission,
                       f"context must be an object, not {type(context).__name__}")
    plan = policy._plans.get((principal, permission))
    if plan is None:
        if len(principal) > 256 or not principal:
            return invalid(principal, permission, "principal id must be 1 to 256 characters")
        plan = policy.plan(principal, permission)
    if plan.invalid is not None:
        return invalid(principal, permission, plan.invalid)
    diags: list[Diagnostic] = []
    req = RequestState(context, policy, now) if plan.uses_amount else None

    forbids: list[str] = []
    limits: list[str] = []
    errored: list[str] = []
    for rule in plan.forbids:
        hit = _run(rule, context, plan, req, diags, True)
        if hit is not False:
            (forbids if hit else errored).append(rule.qid)
    max_amount: Decimal | None = None
    for rule in plan.limits:
        hit, cap = _amount_rule(rule, context, plan, req, diags)  # type: ignore[arg-type]
        if hit is not False:
            (limits if hit else errored).append(rule.qid)
        elif cap is not None and (max_amount is None or cap < max_amount):
            max_amount = cap
    if forbids or limits or errored:
        if forbids:
            code, why = "forbidden", "is forbidden by"
        elif limits:
            code, why = "limit_exceeded", "exceeds the limit of"
        else:
            code, why = diags[0].code, "denied: could not evaluate (fail closed)"
        rules = tuple(forbids + limits + errored)
        return Decision("denied", code, f"{permission} {why} {', '.join(rules)}", rules,
                        None, tuple(diags), principal, permission)

    permitted = tuple(r.qid for r in plan.permits
                      if _run(r, context, plan, req, diags, False) is True)
    if not permitted:
        return Decision("denied", "no_permit",
                        f"no rule permits {permission} for {principal}", (), None,
                        tuple(diags), principal, permission)

    approval_rules: list[str] = []
    approval_over: Decimal | None = None
    for rule in plan.approvals:
        if rule.kind == "approval_over":
            hit, threshold = _amount_rule(rule, context, plan, req, diags)  # type: ignore[arg-type]
            if hit is False and threshold is not None and (
                    approval_over is None or threshold < approval_over):
                approval_over = threshold
        else:
            hit = _run(rule, context, plan, req, diags, True)
        if hit is not False:
            approval_rules.append(rule.qid)

    obligations = None
    if max_amount is not None or approval_over is not None:
        obligations = Obligations(max_amount, approval_over, (), policy.base_currency)
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
    ctx = context or {}
    who = policy.principal(principal)
    plan = policy.plan(principal, permission)
    req = RequestState(ctx, policy, now)
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
            except Exception as exc:  # noqa: BLE001
                err = _error(exc)
                holds = rule.effect != "permit"
                result = f"error {err.code}: {err.message}"
            all_ok = all_ok and holds
            entry["conditions"].append({"kind": kind, "text": text, "result": result})
        if rule.amount_limit is not None:
            try:
                amount = req.amount()
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
