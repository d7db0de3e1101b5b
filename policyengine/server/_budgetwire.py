"""What the budget wires (actguard, agent-ledger) share: the API key, the refusal shape,
and the engine's price of an LLM call.

Each of those SDKs reads its own error body, so their handlers render refusals
themselves (:func:`render_refusals`) instead of the service's deny-shaped error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, TypeAdapter

import policyengine as pe
from policyengine.budgets import BudgetInputError, IdempotencyMismatch, LLMUsage
from policyengine.budgets.spec import NON_CURRENCY_UNITS, PART_ESCAPES, dimension, under
from policyengine.money._money import MONEY_CONTEXT
from policyengine.server._faults import public_message

if TYPE_CHECKING:
    from policyengine.server._app import PolicyService, Reply, Request
    from policyengine.server._credentials import ApiKey

__all__ = ["MICRO", "PART_ESCAPES", "PER_USD", "SCOPE_LEVELS", "USD", "api_key", "at_cent",
           "dimension", "exact_or_cent", "llm_price", "microcents", "render_refusals",
           "tenant_fields", "under", "usd_amounts"]

USD = "USD"
#: The unit the wires spend in: whole microcents, 10^-8 USD (docs/budgets.md).
MICRO = "USD_MICROCENTS"
PER_USD = 10**8
_CENT = Decimal("0.01")
_CENT_MICRO = 10**6
#: What a budget refuses an amount finer than its quantum with (a fraction of a cent on
#: a ``USD`` budget): ``inexact_amount``, or ``invalid_amount`` (too many decimals).
INEXACT = frozenset({"inexact_amount", "invalid_amount"})
_UNITS = {"USD": Decimal(1), "USD_MICROCENTS": Decimal(10**8)}

T = TypeVar("T")

#: The ledger's ``scope=`` levels (``per workspace`` ...): it writes their buckets under
#: the tenant itself, so a wire hands them over as they are.
SCOPE_LEVELS = ("workspace", "app", "workflow", "toolset")


def tenant_fields(fields: Iterable[str], tenant: str, given: Mapping[str, str]
                  ) -> dict[str, str]:
    """The ledger's ``scope=`` request fields for a spend of ``tenant`` (``""``: a key
    without one): every field a budget reads (``fields``: ``ledger.scope_fields``) but
    the hierarchy levels, each under the tenant (:func:`dimension`). A field the request
    does not give is the tenant's empty value (``tenant:acme/run_id:``), shared by the
    tenant's requests without it: leaving it out escapes no cap and never meets another
    tenant's."""
    return {name: dimension(tenant, name, given.get(name, ""))
            for name in fields if name not in SCOPE_LEVELS}


def at_cent(usd: Decimal) -> Decimal:
    """``usd`` rounded **up** to the cent (never less than was spent)."""
    return usd.quantize(_CENT, ROUND_CEILING, MONEY_CONTEXT)


def microcents(usd: Decimal) -> int:
    """``usd`` in whole microcents (10^-8 USD), rounded up: how the wires hand dollar
    amounts to the ledger, so a budget in ``USD_MICROCENTS`` counts them exactly."""
    return int(MONEY_CONTEXT.multiply(usd, PER_USD).to_integral_value(ROUND_CEILING,
                                                                     MONEY_CONTEXT))


def exact_or_cent(call: Callable[[int], T], micro: int) -> T:
    """``call(micro)`` (an amount in microcents); when a covering budget counts whole
    cents and refuses the fraction of one (``inexact_amount``), ``call`` again with the
    amount rounded up to the cent. A cent budget is thus charged a whole cent for a
    fraction of one (over, never under); a refused call changed nothing (ledger calls are
    all or nothing), so the retry never counts twice. A retried request whose first
    call went through rounded up replays under the same idempotency key."""
    up = -(-micro // _CENT_MICRO) * _CENT_MICRO
    try:
        return call(micro)
    except BudgetInputError as exc:
        if exc.code not in INEXACT or up == micro:
            raise
    except IdempotencyMismatch:  # a retry of a call that went through rounded up
        if up == micro:
            raise
    return call(up)


def authorize_spend(engine: pe.Engine, principal: str, permission: str,
                    context: dict[str, Any], usd: Decimal | None, partition: str = "",
                    acting_for: str | None = None) -> pe.Decision | None:
    """The policy's decision on a spend of ``usd`` dollars, or None when it allows it.
    ``partition``: the key's tenant (``""`` without one), whose counters the decision's
    budget check and rate limits read (``Engine.authorize``), never one the request
    names. ``acting_for``: the name the ledger charges ``per acting_for`` for this spend
    (actguard's ``tenant:acme/user_id:alice``), so the decision checks that bucket too;
    None: the agent, as the ledger.

    The decision pipeline reads amounts in the currency's own unit (cents): a dollar
    amount with a fraction of a cent is asked rounded **up**, so rules and limits see no
    less than the spend. A budget refusal of that rounded amount is not final (the
    exact amount may still fit): None is returned then too, and the atomic ledger call
    that follows decides on the exact amount (and is the one that refuses). The decision
    log then records that the wire set the decision's refusal aside: a record of kind
    ``authorize.override`` (reason code ``sub_cent_amount``) naming the decision, the
    amount asked and the exact amount, before the ledger's own ``budget.*`` record.

    A budget refusal ends the decision before its rate-limit and approval steps: setting
    it aside would admit the spend without them (no call counted against a rate limit,
    no approval asked for). So when an approval or a rate limit covers the permission,
    the refusal stands (fail closed: the last fraction of a cent of a budget may go
    unused there)."""
    if usd is not None:
        asked = at_cent(usd)
        context = {**context, "amount": asked, "currency": USD}
    d = engine.authorize(principal, permission, context, partition=partition,
                         acting_for=acting_for)
    if d.allowed:
        return None
    if d.code == "budget_exceeded" and usd is not None and asked != usd and not (
            _later_steps_cover(engine, permission)) and _counts_money(d):
        log = engine.decision_log
        if log is not None:
            code = "sub_cent_amount"
            log.event("authorize.override", {
                "principal": d.principal, "permission": d.permission,
                "acting_for": d.acting_for, "overrides": d.decision_id,
                "reason_code": code,
                "reason": f"the budget refusal was of {asked} USD, the spend rounded up to "
                          f"the cent; the exact {usd} USD goes to the ledger, which decides",
                "operation": {"amount": str(usd), "asked": str(asked), "unit": USD}})
        return None
    return d


def _counts_money(d: pe.Decision) -> bool:
    """Whether the budget refusing ``d`` counts money: only such a refusal can be the
    cent's rounding (a ``tokens`` budget refusing the request's ``context.tokens``, or
    a ``calls`` or ``credits`` one, refuses whatever the dollar amount)."""
    budget = d.budget
    return budget is not None and budget.unit not in NON_CURRENCY_UNITS


def _later_steps_cover(engine: pe.Engine, permission: str) -> bool:
    """Whether an enforced approval rule or rate limit covers ``permission``: the
    decision steps a budget refusal ends before."""
    policy = engine.policy
    return any(r.effect == "approval" and r.mode == "enforce" and any(
        pe.permission_matches(p, permission) for p in r.patterns) for r in policy.rules) or any(
        pe.permission_matches(p, permission) for rl in policy.rate_limits for p in rl.patterns)


def usd_amounts(usage: Mapping[str, Any] | None) -> dict[str, Decimal] | None:
    """The amounts of a budget refusal or usage (docs/budgets.md wire form) in dollars,
    or None when that budget does not count dollars."""
    if usage is None or usage.get("currency") not in _UNITS:
        return None
    per = _UNITS[usage["currency"]]
    return {k: MONEY_CONTEXT.divide(Decimal(usage[k]), per)
            for k in ("limit", "spent", "reserved", "debt", "attempted", "projected",
                      "remaining")
            if k in usage}


def render_refusals(service: PolicyService, handler: Callable[[Request], Reply],
                    body: Callable[[str, str], BaseModel]) -> Callable[[Request], Reply]:
    """``handler`` with every refusal answered as ``body(code, message)`` of this wire."""
    from policyengine.server._app import RefusalError, Reply

    def run(req: Request) -> Reply:
        try:
            return handler(req)
        except RefusalError as exc:
            service.metrics.error(exc.code)
            out = body(exc.code, public_message(exc.code, exc.message))
            return Reply(exc.status, TypeAdapter(type(out)).dump_json(out),
                          headers=exc.headers)

    return run


def api_key(service: PolicyService, raw: bytes | None) -> ApiKey:
    """The :class:`ApiKey` presented, or 401."""
    from policyengine.server._app import RefusalError

    if raw is not None and 0 < len(raw) <= 1024:
        try:
            key = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            key = ""
        found = service.credentials.check_api_key(key) if key else None
        if found is not None:
            return found
    raise RefusalError(401, "unauthorized", "a valid API key is required")


def llm_price(engine: pe.Engine, usage: LLMUsage) -> Decimal | None:
    """What the policy's price table says one LLM call costs in dollars (exact), or None
    when the table does not price it in dollars (or there is no table): the caller
    refuses it, since nothing unpriced is admitted as free."""
    prices = engine.policy.prices
    if prices is None:
        return None
    price = prices.price_usage(usage)  # BudgetInputError for an absurdly large usage
    if price is None or price.currency != USD:
        return None
    amount: Decimal = price.amount
    return amount
