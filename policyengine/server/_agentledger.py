"""The agent-ledger 0.0.6 wire: sessions, session end, and event batches priced into the
budgets, with the 429 guardrail body.

What the SDK does (docs/service.md, "The agent-ledger wire"): ``start_session`` posts
``{"agentName"}`` and reads ``id``; ``log_llm_call`` / ``log_events`` post
``{"sessionId", "events": [...]}``; ``end_session`` posts ``{"status", "errorMessage"}``.
A 429 whose body has a ``details`` object becomes ``BudgetGuardrailError``.

The mapping onto the engine:

* ``x-api-key`` is an API key (credentials ``apiKeys``) bound to the agent principal
  and optionally a tenant; a session's ``agentName`` must be that agent;
* every ``llm_call`` of a batch is priced with the policy's price table from
  ``provider``, ``model``, ``tokensIn``, ``tokensOut`` (and ``tokensCached`` when sent);
  the batch asks the policy for :data:`PERMISSION` with the context ``{amount, currency:
  USD, session, agent_name, tenant, calls, tokens}`` (no amount when only ``tokens``
  budgets cover it: :func:`_tokens_only`), then is recorded in one atomic
  ``Ledger.record`` (all of the batch or none of it);
* a budget that cannot take the batch is **429** ``{"error", "code", "details":
  {agentName, dailyLimitUsd, spentTodayUsd, attemptedCostUsd, projectedCostUsd,
  remainingBudgetUsd, budget, currency, windowEnd}}``, nothing of the batch is kept or
  counted; any other denial is 403 ``{"error", "code"}``.

Sessions live in the budget store (``Ledger.remember``: write once, first writer wins),
so every worker sharing the store knows every session: its start (key, agent, tenant)
and its end are two records, each written once; a worker keeps the sessions it has seen
in memory and reads the end record before accepting events for a session it has not
seen end. A store fault is 503 ``store_unavailable``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

from policyengine.audit import INGEST_KINDS
from policyengine.budgets import BudgetError, BudgetExceeded, LLMUsage, Reservation
from policyengine.budgets.spec import NON_CURRENCY_UNITS, canonical_unit
from policyengine.money._money import MONEY_CONTEXT
from policyengine.permissions import permission_matches
from policyengine.server import _models as m
from policyengine.server._budgetwire import (
    USD,
    api_key,
    authorize_spend,
    llm_price,
    render_refusals,
    tenant_fields,
    usd_amounts,
)
from policyengine.server._faults import public_reason

if TYPE_CHECKING:
    from policyengine.server._app import PolicyService, Reply, Request, Route
    from policyengine.server._credentials import ApiKey

__all__ = ["MAX_SESSIONS", "PERMISSION", "AgentLedgerWire"]

#: The permission an LLM call is asked and counted under: ``budget ...: llm:* ...``.
PERMISSION = "llm:call"
#: Sessions a worker keeps in memory (the oldest are forgotten first, and read again
#: from the budget store when asked about).
MAX_SESSIONS = 100_000
#: How long a session is kept in the budget store from its start (then it is unknown).
SESSION_TTL = 7 * 86400
_START, _END = "agent-ledger/session/", "agent-ledger/session-end/"
_HEX = frozenset("0123456789abcdef")

_SESSION_IN = TypeAdapter(m.LedgerSessionRequest)
_SESSION_OUT = TypeAdapter(m.LedgerSession)
_END_IN = TypeAdapter(m.LedgerSessionEnd)
_EVENTS_IN = TypeAdapter(m.LedgerEvents)
_ACCEPTED_OUT = TypeAdapter(m.LedgerEventsAccepted)
_GUARDRAIL_OUT = TypeAdapter(m.LedgerGuardrail)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass
class _Session:
    id: str
    key: str
    agent: str
    tenant: str | None
    started: float
    status: str = "active"
    ended: float | None = None
    error: str | None = None

    def record(self) -> str:
        return json.dumps({"key": self.key, "agent": self.agent, "tenant": self.tenant,
                           "started": self.started}, separators=(",", ":"))

    @classmethod
    def from_record(cls, session_id: str, text: str) -> _Session:
        data = json.loads(text)
        return cls(session_id, data["key"], data["agent"], data["tenant"], data["started"])

    def ended_as(self, text: str) -> None:
        """Take in the session's end record (the first end, whichever worker wrote it)."""
        data = json.loads(text)
        self.status, self.ended, self.error = data["status"], data["ended"], data["error"]

    def wire(self) -> m.LedgerSession:
        return m.LedgerSession(id=self.id, agentName=self.agent,
                               status=self.status,  # type: ignore[arg-type]
                               startedAt=_iso(self.started),
                               endedAt=None if self.ended is None else _iso(self.ended),
                               errorMessage=self.error)


def _tokens_only(engine: Any) -> bool:
    """Whether :data:`PERMISSION` is covered by ``tokens`` budgets and by no budget that
    counts money. The policy is then asked with the batch's ``tokens`` (all its calls'
    input, cached input and output tokens) and no amount: asked in dollars, a tokens
    budget cannot count the spend (``unit_mismatch``, every batch refused). Elsewhere it
    is asked in dollars (money budgets count the price; a tokens budget beside them is
    charged by the ledger's ``record``, which refuses a batch over it)."""
    units = {canonical_unit(spec.unit)[0] for spec in engine.budgets.specs
             if any(permission_matches(p, PERMISSION) for p in spec.patterns)}
    return "tokens" in units and units <= NON_CURRENCY_UNITS


class AgentLedgerWire:
    """The three agent-ledger endpoints of one service, under ``prefix``."""

    def __init__(self, service: PolicyService, prefix: str) -> None:
        self.service = service
        self.prefix = prefix
        self.sessions: OrderedDict[str, _Session] = OrderedDict()
        #: The most recent events accepted: (agent, session id, event).
        self.events: deque[tuple[str, str, m.LedgerEvent]] = deque(
            maxlen=service.config.event_log_size)

    def routes(self) -> list[Route]:
        from policyengine.server._app import Route
        p = self.prefix

        def wrap(handler: Any) -> Any:
            return render_refusals(self.service, handler,
                                   lambda code, msg: m.LedgerError(error=msg, code=code))

        return [
            Route("ledger_session", "POST", f"{p}/v1/sessions", wrap(self.start),
                   m.LedgerSessionRequest, m.LedgerSession, "agent-ledger: start a session",
                   "apikey_header"),
            Route("ledger_session_end", "POST", f"{p}/v1/sessions/{{sessionId}}/end",
                   wrap(self.end), m.LedgerSessionEnd, m.LedgerSession,
                   "agent-ledger: end a session", "apikey_header"),
            Route("ledger_events", "POST", f"{p}/v1/events", wrap(self.ingest),
                   m.LedgerEvents, m.LedgerEventsAccepted,
                   "agent-ledger: a batch of events; LLM calls priced into the budgets "
                   "(429 guardrail)", "apikey_header"),
        ]

    # ------------------------------------------------------------------ helpers
    def _key(self, req: Request) -> ApiKey:
        return api_key(self.service, req.headers.get(b"x-api-key"))

    def _stored(self, call: Any) -> Any:
        """A call to the budget store; a fault is 503 with its code (fail closed)."""
        from policyengine.server._app import RefusalError
        try:
            return call()
        except BudgetError as exc:
            raise RefusalError(503, exc.code, exc.message) from None

    def _keep(self, s: _Session) -> None:
        self.sessions[s.id] = s
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)

    def _session(self, key: ApiKey, session_id: str) -> _Session:
        """The session, as the budget store knows it (started and maybe ended by any
        worker), if it is this key's; else 404."""
        from policyengine.server._app import RefusalError
        ledger = self.service.engine.budgets
        s = self.sessions.get(session_id)
        if s is None and len(session_id) == 28 and session_id.startswith("ses_") and (
                set(session_id[4:]) <= _HEX):
            text = self._stored(lambda: ledger.recall(_START + session_id))
            if text is not None:
                s = _Session.from_record(session_id, text)
                self._keep(s)
        # Another key's session (another name, or an entry of that name for another
        # tenant or agent: names need not be unique) is not found, as an unknown id is.
        if s is None or s.key != key.name or s.tenant != key.tenant or s.agent != key.agent:
            raise RefusalError(404, "unknown_session", "no such session")
        if s.status == "active":  # it may have ended on another worker
            end = self._stored(lambda: ledger.recall(_END + session_id))
            if end is not None:
                s.ended_as(end)
        return s

    # ------------------------------------------------------------------ endpoints
    def start(self, req: Request) -> Reply:
        from policyengine.server._app import RefusalError, Reply, json_body, validate
        key = self._key(req)
        r = validate(_SESSION_IN, json_body(req))
        if r.agentName != key.agent:
            raise RefusalError(403, "agent_mismatch", "this API key is not for that agent")
        s = _Session("ses_" + os.urandom(12).hex(), key.name, key.agent, key.tenant,
                     time.time())
        ledger = self.service.engine.budgets
        self._stored(lambda: ledger.remember(_START + s.id, s.record(), SESSION_TTL))
        self._keep(s)
        self.service.record_events("agent-ledger", key.agent,
                                   [("session.start", s.wire().model_dump(mode="json"))])
        return Reply(201, _SESSION_OUT.dump_json(s.wire()), key.agent)

    def end(self, req: Request) -> Reply:
        from policyengine.server._app import RefusalError, Reply, json_body, validate
        key = self._key(req)
        r = validate(_END_IN, json_body(req))
        s = self._session(key, req.params[0])
        if s.status == "active":
            # Written once: the first end, from whichever worker, is the session's end.
            mine = json.dumps({"status": r.status, "ended": time.time(),
                               "error": r.errorMessage}, separators=(",", ":"))
            ledger = self.service.engine.budgets
            kept = self._stored(lambda: ledger.remember(_END + s.id, mine, SESSION_TTL))
            s.ended_as(kept)
            first = kept == mine
        else:
            first = False
        if not first:
            if s.status == r.status:  # the same end, again: the first answer stands
                return Reply(200, _SESSION_OUT.dump_json(s.wire()), key.agent)
            raise RefusalError(409, "session_ended", "the session has already ended")
        log = self.service.engine.decision_log
        if log is not None:  # the session has ended: logged, never refused after it
            log.ingest("agent-ledger", "session.end", s.wire().model_dump(mode="json"),
                       principal=key.agent)
        return Reply(200, _SESSION_OUT.dump_json(s.wire()), key.agent)

    def ingest(self, req: Request) -> Reply:
        from policyengine.server._app import RefusalError, Reply, json_body, validate
        key = self._key(req)
        batch = validate(_EVENTS_IN, json_body(req))
        s = self._session(key, batch.sessionId)
        if s.status != "active":
            raise RefusalError(409, "session_ended", "the session has ended: start another")
        calls, total = self._price(batch.events)
        if calls:
            refused = self._spend(s, calls, total)
            if refused is not None:
                return refused
        for event in batch.events:
            self.events.append((s.agent, s.id, event))
        # Spend is already recorded: the events are logged, never refused after it.
        log = self.service.engine.decision_log
        if log is not None:
            kinds = INGEST_KINDS["agent-ledger"]
            for e in batch.events:
                log.ingest("agent-ledger", e.type if e.type in kinds else "custom",
                           {**e.model_dump(mode="json"), "sessionId": s.id},
                           principal=s.agent)
        self.service.metrics.ingest("ledger_events", "identity", len(batch.events))
        out = m.LedgerEventsAccepted(accepted=len(batch.events), costUsd=total)
        return Reply(200, _ACCEPTED_OUT.dump_json(out), s.agent, "allowed" if calls else None)

    def _price(self, events: list[m.LedgerEvent]) -> tuple[list[LLMUsage], Decimal]:
        """The batch's LLM calls as usages, and what they cost in dollars (exact).
        ``tokensIn`` are priced as input, ``tokensCached`` (when sent) as cached input."""
        from policyengine.server._app import RefusalError
        calls: list[LLMUsage] = []
        total = Decimal(0)
        for i, e in enumerate(events):
            if e.type != "llm_call":
                continue
            if not e.provider or not e.model:
                raise RefusalError(400, "invalid_request", f"events.{i}: an llm_call needs "
                                    "provider and model to be priced")
            try:
                usage = LLMUsage(e.provider, e.model, e.tokensIn or 0, e.tokensCached or 0,
                                 e.tokensOut or 0)
                cost = llm_price(self.service.engine, usage)
            except BudgetError as exc:
                raise RefusalError(400, exc.code, f"events.{i}: {exc.message}") from None
            if cost is None:
                raise RefusalError(422, "unpriced_model", f"events.{i}: the policy's price "
                                    f"table has no dollar price for {e.provider}/{e.model}")
            calls.append(usage)
            total = MONEY_CONTEXT.add(total, cost)
        return calls, total

    def _spend(self, s: _Session, calls: list[LLMUsage], total: Decimal) -> Reply | None:
        """Ask the policy for the batch, then charge every call to every covering budget
        (money priced, tokens counted) all at once: one ``record`` for one call, else
        one hold per call, committed once all fit (released if one does not)."""
        from policyengine.server._app import RefusalError
        engine = self.service.engine
        asked = {"session": s.id, "agent_name": s.agent}
        # The budgets count each request field under the session's tenant (``""``: a key
        # without one), as every budget wire does (docs/service.md); the rules read them
        # as they are.
        tenant = s.tenant or ""
        scope = tenant_fields(engine.budgets.scope_fields, tenant, asked)
        context: dict[str, Any] = {**asked, "calls": len(calls),
                                   "tokens": sum(usage.tokens for usage in calls)}
        if s.tenant is not None:
            context["tenant"] = s.tenant
        # Asked in dollars, a permission only tokens budgets cover is unit_mismatch.
        d = authorize_spend(engine, s.agent, PERMISSION, context,
                            None if _tokens_only(engine) else total, tenant)
        self.service.metrics.decision("agent_ledger", "allowed" if d is None else d.status)
        if d is not None:
            if d.code in ("budget_exceeded", "debt_outstanding") and d.budget is not None:
                return self._guardrail(s, d.code, d.reason, d.budget.to_wire())
            raise RefusalError(403, d.code if d.status == "denied" else "approval_required",
                               public_reason(d.code, d.reason, [x.code for x in d.diagnostics]))
        ledger = engine.budgets
        held: list[Reservation] = []
        try:
            if len(calls) == 1:
                ledger.record(s.agent, PERMISSION, usage=calls[0], tenant=s.tenant,
                              scope=scope)
                return None
            for usage in calls:
                held.append(ledger.reserve(s.agent, PERMISSION, usage=usage,
                                           tenant=s.tenant, scope=scope))
            for rsv, usage in zip(held, calls, strict=True):
                ledger.commit(rsv.id, usage=usage)
            held.clear()
        except BudgetExceeded as exc:
            return self._guardrail(s, exc.code, exc.message, exc.details)
        except BudgetError as exc:
            raise RefusalError(422 if isinstance(exc, ValueError) else 503, exc.code,
                                exc.message) from None
        finally:
            for rsv in held:  # a later call did not fit: the batch counts for nothing
                with contextlib.suppress(BudgetError):
                    ledger.release(rsv.id)
        return None

    def _guardrail(self, s: _Session, code: str, message: str,
                   usage: dict[str, Any]) -> Reply:
        """The 429 the SDK raises as ``BudgetGuardrailError``: the refusing budget's
        amounts, in dollars when it counts dollars (else in its own unit, named by
        ``currency``)."""
        from policyengine.server._app import Reply
        self.service.metrics.error(code)
        amounts = usd_amounts(usage) or {k: Decimal(usage[k]) for k in (
            "limit", "spent", "reserved", "attempted", "projected", "remaining")}
        out = m.LedgerGuardrail(error=message, code=code, details=m.LedgerGuardrailDetails(
            agentName=s.agent, dailyLimitUsd=amounts["limit"],
            spentTodayUsd=MONEY_CONTEXT.add(amounts["spent"], amounts["reserved"]),
            attemptedCostUsd=amounts["attempted"], projectedCostUsd=amounts["projected"],
            remainingBudgetUsd=amounts["remaining"], budget=usage["budget"],
            currency=USD if usd_amounts(usage) is not None else usage["currency"],
            windowEnd=usage.get("windowEnd")))
        return Reply(429, _GUARDRAIL_OUT.dump_json(out), s.agent, "denied")
