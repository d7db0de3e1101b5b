"""The actguard 1.0.2 wire: the CU tariff, run reservations, settlement and events.

What the SDK does (docs/service.md, "The actguard wire"): entering the root
``budget_guard`` of a ``client.run(...)`` reserves (``POST /api/v1/reserve``,
``{run_id, cost_limit?, plan_key?, user_id?}``), leaving it settles the run's usage
(``POST /api/v1/settle``); ``cost_limit`` is enforced locally with the tariff
(``GET /api/v1/cu-tariff``); events arrive in batches (``POST /api/v1/events``).

The mapping onto the engine:

* the bearer is an API key (credentials ``apiKeys``), bound to the agent principal and
  optionally a tenant; ``user_id`` is the person the agent acts for (``acting_for``,
  the same name in the decision and the reserve);
  every id the client sends is counted under the key's tenant (:func:`_tenancy`);
* a run asks the policy for :data:`PERMISSION` with the context ``{run_id, user_id,
  plan_key, tenant, amount, currency}`` (amount: ``cost_limit`` in dollars), then holds
  ``cost_limit`` in dollars on every covering budget (``Ledger.reserve``, all or
  nothing, idempotent on the run id); without ``cost_limit`` it holds nothing and
  answers the room left as the run's ``cost_limit``, which the SDK adopts;
* the settlement prices each LLM usage with the policy's price table and each custom
  cost at ``cu_per_usd``, and commits that amount (overage within the budgets' overdraft;
  past it, each budget is charged what it has left and the answer is 409); a usage the
  policy cannot price is charged the whole reservation;
* refusals: a budget that cannot hold the run is **409** (``BudgetExceededError``), a
  budget in debt is **402** (``ActGuardPaymentRequired``), any other denial is 409 too
  (the SDK only stops on 402 and 409: every other status it swallows and runs
  unreserved, so a policy denial must not be a 403 here).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import OrderedDict, deque
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

import policyengine as pe
from policyengine.budgets import (
    BudgetError,
    BudgetExceeded,
    IdempotencyMismatch,
    LLMUsage,
    Overage,
    Reservation,
    ReservationError,
)
from policyengine.money._money import MONEY_CONTEXT
from policyengine.server import _models as m
from policyengine.server._budgetwire import (
    MICRO,
    PER_USD,
    USD,
    api_key,
    authorize_spend,
    dimension,
    exact_or_cent,
    llm_price,
    microcents,
    render_refusals,
    tenant_fields,
    usd_amounts,
)
from policyengine.server._faults import public_reason

if TYPE_CHECKING:
    from policyengine.server._app import PolicyService, Reply, Request, Route
    from policyengine.server._credentials import ApiKey

__all__ = ["CU_PER_USD", "MAX_RUNS", "PERMISSION", "RESERVE_TTL", "ActguardWire"]

#: The permission a run asks for (and budgets cover): ``budget ...: llm:* ...``.
PERMISSION = "llm:run"
#: Cost units per dollar (the SDK's own convention: 1,000 CU is about $1).
CU_PER_USD = 1000
#: How long a run's hold lasts (the SDK has no heartbeat); a later settle still records.
RESERVE_TTL = 86_400
#: Runs whose request fields are remembered per process, for a settle after expiry.
MAX_RUNS = 100_000

_RESERVE_IN = TypeAdapter(m.ActguardReserveRequest)
_RESERVE_OUT = TypeAdapter(m.ActguardReserveResponse)
_SETTLE_IN = TypeAdapter(m.ActguardSettleRequest)
_SETTLE_OUT = TypeAdapter(m.ActguardSettleResponse)
_EVENTS_IN = TypeAdapter(m.ActguardEvents)
_ACCEPTED_OUT = TypeAdapter(m.EventAccepted)
_TARIFF_OUT = TypeAdapter(m.ActguardTariff)
_EXCEEDED_OUT = TypeAdapter(m.ActguardBudgetExceeded)
_PAYMENT_OUT = TypeAdapter(m.ActguardPaymentRequired)


def _cu(usd: Decimal, rounding: str = ROUND_CEILING) -> int:
    return int(MONEY_CONTEXT.multiply(usd, CU_PER_USD).to_integral_value(rounding,
                                                                         MONEY_CONTEXT))


class _RefusedError(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


class ActguardWire:
    """The four actguard endpoints of one service, under ``prefix``."""

    def __init__(self, service: PolicyService, prefix: str) -> None:
        self.service = service
        self.prefix = prefix
        #: The most recent event envelopes accepted, with the agent that sent them.
        self.events: deque[tuple[str, m.ActguardEvent]] = deque(
            maxlen=service.config.event_log_size)
        # The ledger's request fields of each live run (for a settle that arrives after
        # its hold expired: the late debit goes to the same run's buckets) and its user_id
        # as sent (a 409 names it). Bounded, per process.
        self._scopes: OrderedDict[str, tuple[dict[str, str], str | None]] = OrderedDict()

    def routes(self) -> list[Route]:
        from policyengine.server._app import Route
        p = self.prefix

        def wrap(handler: Any) -> Any:
            return render_refusals(self.service, handler,
                                   lambda code, msg: m.ActguardError(error=msg, code=code))

        return [
            Route("actguard_tariff", "GET", f"{p}/api/v1/cu-tariff", wrap(self.tariff),
                   None, m.ActguardTariff, "actguard: the policy's LLM prices in cost units"),
            Route("actguard_reserve", "POST", f"{p}/api/v1/reserve", wrap(self.reserve),
                   m.ActguardReserveRequest, m.ActguardReserveResponse,
                   "actguard: hold a run's budget (409 over budget, 402 in debt)",
                   "apikey_bearer"),
            Route("actguard_settle", "POST", f"{p}/api/v1/settle", wrap(self.settle),
                   m.ActguardSettleRequest, m.ActguardSettleResponse,
                   "actguard: record a run's usage, priced by the policy", "apikey_bearer"),
            Route("actguard_events", "POST", f"{p}/api/v1/events", wrap(self.ingest),
                   m.ActguardEvents, m.EventAccepted, "actguard: a batch of event envelopes",
                   "apikey_bearer"),
        ]

    # ------------------------------------------------------------------ helpers
    def _key(self, req: Request) -> ApiKey:
        raw = req.headers.get(b"authorization")
        scheme, _, value = (raw or b"").partition(b" ")
        return api_key(self.service, value if scheme.lower() == b"bearer" else None)

    def _exceeded(self, code: str, message: str, usage: dict[str, Any] | None,
                  user_id: str | None, status: int = 409, tokens: int = 0) -> _RefusedError:
        """The 409 (over budget) or 402 (in debt) body, from the refusing budget's state
        (``usage``: the wire form of docs/budgets.md; amounts in cost units only when
        that budget counts dollars)."""
        from policyengine.server._app import Reply
        self.service.metrics.error(code)
        amounts = usd_amounts(usage) or dict.fromkeys(
            ("limit", "spent", "reserved", "debt", "attempted", "remaining"), Decimal(0))
        if status == 402:
            shortfall = MONEY_CONTEXT.add(amounts["debt"], amounts["attempted"])
            body = _PAYMENT_OUT.dump_json(m.ActguardPaymentRequired(
                error=message, code=code, message=message, user_id=user_id,
                current_balance=-_cu(amounts["debt"]), required_amount=_cu(
                    amounts["attempted"]), shortfall=_cu(shortfall)))
        else:
            body = _EXCEEDED_OUT.dump_json(m.ActguardBudgetExceeded(
                error=message, code=code, user_id=user_id, tokens_used=tokens,
                cost_used=_cu(MONEY_CONTEXT.add(amounts["spent"], amounts["reserved"])),
                cost_limit=_cu(amounts["limit"], ROUND_FLOOR)))
        return _RefusedError(Reply(status, body))

    def _decide(self, key: ApiKey, r: m.ActguardReserveRequest, scope: dict[str, str],
                usd: Decimal | None, acting_for: str | None) -> None:
        """Ask the policy for the run (rules, limits, and every covering budget's room);
        raise the refusal the SDK acts on, or return. ``acting_for``: the name the
        ledger charges ``per acting_for`` (:func:`_tenancy`), so the decision's budget
        check and rate limits read the person's bucket the reserve then holds on."""
        context: dict[str, Any] = dict(scope)
        if key.tenant is not None:
            context["tenant"] = key.tenant
        d = authorize_spend(self.service.engine, key.agent, PERMISSION, context, usd,
                            key.tenant or "", acting_for)
        self.service.metrics.decision("actguard", "allowed" if d is None else d.status)
        if d is None:
            return
        usage = d.budget.to_wire() if d.budget is not None else None
        if d.status == "pending_approval":
            raise self._exceeded("approval_required", "the policy wants an approval for this "
                                 "run, which the actguard wire cannot wait for", usage, r.user_id)
        reason = public_reason(d.code, d.reason, [x.code for x in d.diagnostics])
        raise self._exceeded(d.code, reason, usage, r.user_id,
                             402 if d.code == "debt_outstanding" else 409)

    # ------------------------------------------------------------------ endpoints
    def tariff(self, req: Request) -> Reply:
        from policyengine.server._app import RefusalError, Reply
        tariff = _tariff_of(self.service)
        if tariff is None:
            raise RefusalError(404, "no_price_table", "the policy has no LLM price table "
                                "in dollars")
        return Reply(200, _TARIFF_OUT.dump_json(tariff, exclude_none=True))

    def reserve(self, req: Request) -> Reply:
        from policyengine.server._app import RefusalError, Reply, json_body, validate
        key = self._key(req)
        r = validate(_RESERVE_IN, json_body(req))
        usd = (None if r.cost_limit is None
               else MONEY_CONTEXT.divide(Decimal(r.cost_limit), CU_PER_USD))
        asked = {k: v for k, v in (("run_id", r.run_id), ("user_id", r.user_id),
                                   ("plan_key", r.plan_key)) if v}
        ledger = self.service.engine.budgets
        scope, acting_for, run_key = _tenancy(ledger.scope_fields, key, r, asked)

        def hold(amount: int) -> Reservation:
            return ledger.reserve(key.agent, PERMISSION, amount, MICRO, ttl=RESERVE_TTL,
                                  idempotency_key=run_key, acting_for=acting_for,
                                  tenant=key.tenant, scope=scope)

        try:
            self._decide(key, r, asked, usd, acting_for)
            rsv = exact_or_cent(hold, 0 if usd is None else microcents(usd))
        except _RefusedError as refused:
            return refused.reply
        except BudgetExceeded as exc:
            return self._exceeded(exc.code, exc.message, exc.details, r.user_id,
                                  402 if exc.code == "debt_outstanding" else 409).reply
        except IdempotencyMismatch:
            return self._exceeded("run_reused", "this run id was reserved with other "
                                  "arguments: use a new run id", None, r.user_id).reply
        except BudgetError as exc:
            raise RefusalError(422 if isinstance(exc, ValueError) else 503, exc.code,
                                exc.message) from None
        try:
            status = ledger.get(rsv.id).status
        except BudgetError as exc:
            raise RefusalError(503, exc.code, exc.message) from None
        if status != "active":  # a replay of a run that has settled
            return self._exceeded("run_reused", "this run id has already run: use a new "
                                  "run id", None, r.user_id).reply
        self._scopes[rsv.id] = (scope, r.user_id)
        while len(self._scopes) > MAX_RUNS:
            self._scopes.popitem(last=False)
        cost_limit = r.cost_limit
        if cost_limit is None:  # the room left, for the SDK's local enforcement
            room = [usd_amounts({"currency": b.unit, "remaining": b.remaining})
                    for b in ledger.balances(key.agent, acting_for=acting_for,
                                             tenant=key.tenant, scope=scope)
                    if _covers(ledger, b.budget)]
            dollars = [a["remaining"] for a in room if a is not None]
            if dollars:
                cost_limit = max(1, _cu(min(dollars), ROUND_FLOOR))
        out = m.ActguardReserveResponse(
            reserve_id=rsv.id, cost_limit=cost_limit, tariff_version=_tariff_version(
                self.service), estimated_usd_micros=int(
                MONEY_CONTEXT.divide(rsv.amount, 100).to_integral_value(ROUND_CEILING,
                                                                        MONEY_CONTEXT)))
        return Reply(200, _RESERVE_OUT.dump_json(out), key.agent, "allowed")

    def settle(self, req: Request) -> Reply:
        from policyengine.server._app import RefusalError, Reply, json_body, validate
        key = self._key(req)
        s = validate(_SETTLE_IN, json_body(req))
        ledger = self.service.engine.budgets
        try:
            rsv = ledger.get(s.reserve_id)
        except BudgetError:
            rsv = None
        # A run's hold is this key's agent's, of its tenant, made here (no note: a Cycles
        # reservation carries its create request): settling another wire's reservation
        # would end it with this wire's amount, and that wire's commit would be lost.
        if rsv is None or rsv.principal != key.agent or rsv.permission != PERMISSION or (
                rsv.tenant != key.tenant) or rsv.note is not None:
            raise RefusalError(404, "unknown_reservation", "no such reservation")
        user_id = self._scopes.get(rsv.id, (None, None))[1]
        usd, priced = self._price(s)
        charge = microcents(usd) if priced else max(microcents(usd), int(rsv.amount))
        try:
            done = exact_or_cent(lambda a: self._commit(rsv, a, s.reserve_id), charge)
        except BudgetExceeded as exc:
            # Over the budgets even with their overdraft: the spend happened, so each
            # budget is charged what it has left (its hold included: never less than was
            # admitted; ALLOW_IF_AVAILABLE) and the SDK told. Charging the hold alone
            # would leave a run that held nothing (no cost_limit) uncharged, and the
            # budget never full: every later run admitted again.
            with contextlib.suppress(BudgetError):
                exact_or_cent(lambda a: self._commit(rsv, a, s.reserve_id + ":cap",
                                                     "allow_if_available"), charge)
            return self._exceeded(exc.code, exc.message, exc.details, user_id,
                                  tokens=s.input_tokens + s.output_tokens).reply
        except IdempotencyMismatch:
            return self._exceeded("already_settled", "this reservation was settled with "
                                  "another usage", None, user_id).reply
        except BudgetError as exc:
            raise RefusalError(422 if isinstance(exc, ValueError) else 503, exc.code,
                                exc.message) from None
        if not priced:
            raise RefusalError(422, "unpriced_model", "a usage names a model the policy's "
                                "price table does not price: the run was charged its whole "
                                "reservation")
        out = m.ActguardSettleResponse(
            reserve_id=done.id, cost_used=_cu(usd), usd_micros=int(
                MONEY_CONTEXT.multiply(usd, 10**6).to_integral_value(ROUND_CEILING,
                                                                     MONEY_CONTEXT)),
            charged=MONEY_CONTEXT.divide(done.committed_amount or Decimal(0), PER_USD))
        return Reply(200, _SETTLE_OUT.dump_json(out), key.agent, "allowed")

    def _price(self, s: m.ActguardSettleRequest) -> tuple[Decimal, bool]:
        """The run's cost in dollars, and whether every usage was priced."""
        total, priced = Decimal(0), True
        engine = self.service.engine
        for u in s.usage_breakdown:
            if isinstance(u, m.ActguardCustomCost):
                total = MONEY_CONTEXT.add(total, MONEY_CONTEXT.divide(Decimal(u.cost_cu),
                                                                      CU_PER_USD))
                continue
            try:  # input and cached input priced apart, as the SDK's own tariff does
                cost = llm_price(engine, LLMUsage(u.provider, u.provider_model_id,
                                                  u.input_tokens, u.cached_input_tokens,
                                                  u.output_tokens))
            except BudgetError:  # no provider or model named, an absurd usage
                cost = None
            if cost is None:
                priced = False
            else:
                total = MONEY_CONTEXT.add(total, cost)
        return total, priced

    def _commit(self, rsv: Reservation, micro: int, key: str,
                overage: Overage = "allow_with_overdraft") -> Reservation:
        """Spend ``micro`` microcents of the run's reservation."""
        ledger = self.service.engine.budgets
        try:
            return ledger.commit(rsv.id, micro, MICRO,
                                 idempotency_key=f"actguard-settle:{key}", overage=overage)
        except ReservationError as exc:
            if exc.code == "reservation_final":  # a settle retried: its first answer stands
                done = ledger.get(rsv.id)
                if done.status == "committed":
                    return done
                raise
            if exc.code != "reservation_expired":
                raise
        # The hold expired: the spend still happened, so it is recorded as a late debit.
        return ledger.record(rsv.principal, PERMISSION, micro, MICRO,
                             idempotency_key=f"actguard-late:{key}",
                             acting_for=rsv.acting_for, tenant=rsv.tenant,
                             overage=overage, scope=self._scopes.get(rsv.id, (None, None))[0])

    def ingest(self, req: Request) -> Reply:
        from policyengine.server._app import Reply, json_body, validate
        key = self._key(req)
        batch = validate(_EVENTS_IN, json_body(req))
        for event in batch.events:
            self.events.append((key.agent, event))
        self.service.record_events("actguard", key.agent,
                                   [(f"{e.category}.{e.name}", e.model_dump(mode="json"))
                                    for e in batch.events])
        self.service.metrics.ingest("actguard_events", "identity", len(batch.events))
        out = _ACCEPTED_OUT.dump_json(m.EventAccepted(accepted=len(batch.events)))
        return Reply(202, out, key.agent)


def _tenancy(fields: frozenset[str], key: ApiKey, r: m.ActguardReserveRequest,
             given: dict[str, str]) -> tuple[dict[str, str], str | None, str]:
    """What a run counts against, all of it the key's tenant's (``""``: a key without
    one): the ledger's request fields (``given``: the ``run_id``, ``user_id`` and
    ``plan_key`` sent; and any other a budget reads, each ``tenant:acme/run_id:r-1``,
    the tenant's empty value when not sent), the person acted for (``user_id`` as
    ``tenant:acme/user_id:alice``, or None: the agent) and the run's idempotency key (a
    digest of the tenant, the key's name and agent and the run id). Every client-chosen
    id is escaped under the tenant (:func:`~._budgetwire.under`), so two tenants' equal
    ids never share a counter nor a run, and no id names another namespace's principal
    or bucket (``tenant:acme/agent:bot`` sent as a user_id by globex is
    ``tenant:globex/user_id:tenant:acme%2Fagent:bot``). A refusal (400) would not do:
    the SDK runs a scope whose reserve is refused with a 400 unreserved."""
    tenant = key.tenant or ""
    acting_for = None if not r.user_id else dimension(tenant, "user_id", r.user_id)
    run = hashlib.sha256(json.dumps([key.tenant, key.name, key.agent, r.run_id],
                                    ensure_ascii=True).encode("ascii")).hexdigest()
    return tenant_fields(fields, tenant, given), acting_for, f"actguard:run:{run}"


def _covers(ledger: pe.budgets.Ledger, budget_id: str) -> bool:
    spec = next((s for s in ledger.specs if s.id == budget_id), None)
    return spec is not None and any(pe.permission_matches(p, PERMISSION)
                                    for p in spec.patterns)


def _tariff_version(service: PolicyService) -> str:
    prices = service.engine.policy.prices
    if prices is None:
        return "none"
    digest = hashlib.sha256(repr(prices.entries).encode()).hexdigest()[:16]
    return f"prices:{digest}"


def _cu_per(price: Decimal, per: int, tokens: int) -> int:
    """Cost units for ``tokens`` tokens at ``price`` dollars per ``per`` tokens, rounded up
    (the SDK's local estimate is never below what the service charges)."""
    ctx = MONEY_CONTEXT
    cost = ctx.divide(ctx.multiply(ctx.multiply(price, tokens), CU_PER_USD), per)
    return int(cost.to_integral_value(ROUND_CEILING, ctx))


def _rates(p: Any) -> m.ActguardRates:
    per_1k = MONEY_CONTEXT.divide(MONEY_CONTEXT.multiply(p.input, 1000 * CU_PER_USD), p.per)
    if per_1k == per_1k.to_integral_value(context=MONEY_CONTEXT):
        inputs: dict[str, int] = {"input_cu_per_1k": int(per_1k)}
    else:  # finer: per million (the SDK reads it for input only)
        inputs = {"input_cu_per_1m": _cu_per(p.input, p.per, 1_000_000)}
    return m.ActguardRates(**inputs, output_cu_per_1k=_cu_per(p.output, p.per, 1000),
                           cached_cu_per_1k=_cu_per(p.cached_input, p.per, 1000))


def _tariff_of(service: PolicyService) -> m.ActguardTariff | None:
    """The policy's dollar prices as actguard's CU tariff. Named models are listed per
    provider; ``llm.default`` (what the SDK uses for any model not listed, including
    those a ``"*"`` entry prices) takes the dearest rate of the table for each kind, so
    the SDK's local ``cost_limit`` check never counts a call below what the service
    will charge for it."""
    prices = service.engine.policy.prices
    entries = [] if prices is None else [p for p in prices.entries if p.currency == USD]
    if not entries:
        return None
    providers: dict[str, dict[str, m.ActguardRates]] = {}
    for p in entries:
        if p.provider != "*" and p.model != "*":
            providers.setdefault(p.provider, {})[p.model] = _rates(p)
    default = m.ActguardRates(
        input_cu_per_1k=max(_cu_per(p.input, p.per, 1000) for p in entries),
        output_cu_per_1k=max(_cu_per(p.output, p.per, 1000) for p in entries),
        cached_cu_per_1k=max(_cu_per(p.cached_input, p.per, 1000) for p in entries))
    llm = m.ActguardLlmTariff(default=default, providers={
        name: m.ActguardProvider(models=models) for name, models in providers.items()})
    return m.ActguardTariff(tariff_version=_tariff_version(service),
                            registry_version=f"policyengine/{pe.__version__}",
                            cu_per_usd=CU_PER_USD, llm=llm)
