"""A credential without a tenant, with the real, unmodified actguard, agent-ledger and
tracengent SDKs against a live service: the budget wires charge such a key's ids under
the empty tenant (``tenant:/plan_key:P``, ``tenant:/session:S``), and the decision each
wire request asks first reads those very buckets (the empty tenant's partition ``""``),
as does a tracengent decision of an agent without a tenant. Before, the decision read
the ids as sent (``P``, ``S``): the wire's own spend was missing from its next
decision's budget check (the ledger still refused at reserve, but the decision said
allowed with the budget's whole room), and a tenantless caller sending
``tenant:acme/plan_key:P`` read acme's bucket."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import actguard
import httpx
import pytest
from agent_ledger_sdk import AgentLedgerClient, BudgetGuardrailError
from tracengent import TracengentClient, TracengentOptions

from policyengine.server import hash_secret
from policyengine.server._credentials import Credentials

from .service_harness import Recorded as Live
from .service_harness import recording

POLICY = """
namespace tl
currency USD

role llm: llm:*
agent "solo-bot": llm
agent "acme-bot": llm

budget per-plan: llm:run limit 1 USD per day per context.plan_key
budget per-session: llm:call limit 0.02 USD per day per context.session
price "openai" "gpt-4o": input 2.50 USD, cached_input 1.25 USD, output 10 USD per 1M tokens
"""
#: API keys: name -> (secret, agent, tenant or None).
API = {"solo": ("s-solo", "solo-bot", None), "acme": ("s-acme", "acme-bot", "acme")}


@pytest.fixture(scope="module")
def svc() -> Iterator[Live]:
    creds = Credentials.from_dict({
        "agents": [{"clientId": "tc-solo", "secretHash": hash_secret("t-solo"),
                    "agent": "solo-bot"}],
        "apiKeys": [{"name": name, "keyHash": hash_secret(secret), "agent": agent,
                     **({"tenant": tenant} if tenant else {})}
                    for name, (secret, agent, tenant) in API.items()]})
    with recording(POLICY, creds, {"actguard": "/ag", "agent-ledger": "/ledger"}) as live:
        yield live


def reserve(svc: Live, key: str, cost_limit: int, **fields: str) -> httpx.Response:
    return httpx.post(f"{svc.url}/ag/api/v1/reserve",
                      json={"cost_limit": cost_limit, **fields},
                      headers={"Authorization": f"Bearer {API[key][0]}"})


def last_budget(svc: Live) -> Any:
    d = svc.decisions[-1]
    assert d.budget is not None, d
    return d.budget


def _run(svc: Live, cost_limit: int, plan: str, inside: Any = None) -> None:
    """One run of the real actguard SDK with the key without a tenant (``inside``
    called while its hold is open); raises what the SDK raises."""
    c = actguard.Client(api_key=API["solo"][0], gateway_url=f"{svc.url}/ag",
                        flush_interval_ms=20, budget_max_retries=0, budget_timeout_s=60)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a swallowed 4xx (run unreserved) fails
            with c.run(run_id=f"r-{uuid.uuid4().hex}"), \
                    c.budget_guard(cost_limit=cost_limit, plan_key=plan):
                if inside is not None:
                    inside()
    finally:
        c.close()


def test_actguard_spend_of_a_tenantless_key_shows_in_its_next_decision(svc: Live) -> None:
    """The real actguard SDK, a key without a tenant: its run holds $0.80 of plan P;
    meanwhile another run of P asks $0.30 (the SDK's reserve request by hand: the SDK
    runs one run at a time), and the decision refuses it on the very bucket the ledger
    holds the $0.80 in (``tenant:/plan_key:P``, $0.80 reserved). Once the SDK's run
    has settled, the room is back and the real SDK's next run of P goes ahead."""
    plan = f"p-{uuid.uuid4().hex[:8]}"
    bucket = f"tenant:/plan_key:{plan}"
    seen: list[Any] = []

    def meanwhile() -> None:
        assert [(b.subject, b.reserved) for b in svc.engine.budgets.balances(
            scope={"plan_key": bucket})] == [(bucket, Decimal("0.80"))]
        assert last_budget(svc).subject == bucket  # the first run's decision too
        seen.append(reserve(svc, "solo", 300, run_id=uuid.uuid4().hex, plan_key=plan))
        seen.append(svc.decisions[-1])

    _run(svc, 800, plan, meanwhile)
    assert seen[0].status_code == 409, seen[0].text
    d = seen[1]
    assert (d.status, d.code) == ("denied", "budget_exceeded"), d
    assert d.budget is not None and d.budget.subject == bucket
    assert d.budget.reserved == Decimal("0.80")
    _run(svc, 300, plan)
    assert svc.decisions[-1].allowed


def test_a_tenantless_tracengent_agent_sees_its_tenantless_actguard_spend(
        svc: Live) -> None:
    """A tracengent agent without a tenant decides in the same empty tenant: the $0.80
    its actguard key holds on plan P leaves no room for $0.30 more; a caller sending
    acme's bucket name as the plan reads nothing of acme's."""
    plan = f"p-{uuid.uuid4().hex[:8]}"
    r = reserve(svc, "solo", 800, run_id=uuid.uuid4().hex, plan_key=plan)
    assert r.status_code == 200, r.text
    assert reserve(svc, "acme", 800, run_id=uuid.uuid4().hex, plan_key=plan
                   ).status_code == 200
    tc = TracengentClient(TracengentOptions(
        agent_id="solo-bot", base_url=svc.url, client_id="tc-solo", client_secret="t-solo",
        flush_interval_ms=50))
    try:
        ask = {"plan_key": plan, "amount": "0.30", "currency": "USD"}
        d = tc.authorize("llm:run", ask)
        assert not d.allowed and "budget" in d.reason
        assert tc.authorize("llm:run", {**ask, "amount": "0.20"}).allowed
        forged = tc.authorize("llm:run", {**ask, "plan_key": f"tenant:acme/plan_key:{plan}"})
        assert forged.allowed  # acme's $0.80 is acme's
    finally:
        tc.close()


def test_agent_ledger_spend_of_a_tenantless_key_shows_in_its_next_decision(
        svc: Live) -> None:
    """The real agent-ledger SDK, a key without a tenant: two calls of a session spend
    its $0.02 (a cent each); the decision of the third reads that session's bucket
    (``tenant:/session:S``, $0.02 spent), and the ledger refuses the call."""
    client = AgentLedgerClient(API["solo"][0], base_url=f"{svc.url}/ledger")
    try:
        sid = client.start_session("solo-bot")
        call = {"provider": "openai", "model": "gpt-4o", "prompt": "p", "response": "r",
                "tokensIn": 1000, "tokensOut": 500, "latencyMs": 1}
        client.log_llm_call(sid, {**call, "stepIndex": 0})
        client.log_llm_call(sid, {**call, "stepIndex": 1})
        with pytest.raises(BudgetGuardrailError):
            client.log_llm_call(sid, {**call, "stepIndex": 2})
        budget = last_budget(svc)
        assert budget.subject == f"tenant:/session:{sid}"
        assert budget.spent == Decimal("0.02")
    finally:
        client.close()
