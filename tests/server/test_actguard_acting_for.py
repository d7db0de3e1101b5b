"""The actguard wire's decision reads the ``per acting_for`` bucket its ledger charges,
with the real, unmodified actguard SDK against a live service on 127.0.0.1.

The wire charges a run's ``user_id`` as the person acted for, under the key's tenant
(``tenant:acme/user_id:alice``; ``tenant:/user_id:alice`` for a key without one). The
decision it asks first passed no ``acting_for``, so its read-only budget check and its
rate limits counted the agent instead: a run over alice's per-person budget was allowed
by the decision (the agent's bucket empty) and refused by the ledger only, and a
``per acting_for`` rate limit was one counter for all of the agent's users. Now the
decision is asked with the same name, so it refuses such a run itself with the budget's
code, and two users never share a counter."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from decimal import Decimal

import actguard
import httpx
import pytest
from actguard.exceptions import BudgetExceededError

import policyengine as pe
from policyengine.server import hash_secret
from policyengine.server._credentials import Credentials

from .service_harness import Recorded as Live
from .service_harness import recording

POLICY = """
namespace af
currency USD

role llm: llm:*
agent "acme-bot": llm
agent "solo-bot": llm

budget per-person: llm:run limit 1 USD per day per acting_for
ratelimit person-runs: llm:run 3 per minute per acting_for
price "openai" "gpt-4o": input 2.50 USD, cached_input 1.25 USD, output 10 USD per 1M tokens
"""
#: API keys: name -> (secret, agent, tenant or None).
API = {"acme": ("s-acme", "acme-bot", "acme"), "solo": ("s-solo", "solo-bot", None)}


@pytest.fixture(scope="module")
def svc() -> Iterator[Live]:
    creds = Credentials.from_dict({
        "apiKeys": [{"name": name, "keyHash": hash_secret(secret), "agent": agent,
                     **({"tenant": tenant} if tenant else {})}
                    for name, (secret, agent, tenant) in API.items()]})
    with recording(POLICY, creds, {"actguard": "/ag"}) as live:
        yield live


def reserve(svc: Live, key: str, cost_limit: int, user: str) -> httpx.Response:
    """The SDK's reserve request by hand (the SDK runs one run at a time)."""
    return httpx.post(f"{svc.url}/ag/api/v1/reserve",
                      json={"cost_limit": cost_limit, "run_id": uuid.uuid4().hex,
                            "user_id": user},
                      headers={"Authorization": f"Bearer {API[key][0]}"})


def spend(svc: Live, key: str, user: str, usd: float) -> None:
    """One run of the real actguard SDK for ``user`` that costs ``usd`` dollars."""
    c = actguard.Client(api_key=API[key][0], gateway_url=f"{svc.url}/ag",
                        flush_interval_ms=20, budget_max_retries=0, budget_timeout_s=60)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a swallowed 4xx (run unreserved) fails
            with c.run(user_id=user, run_id=f"r-{uuid.uuid4().hex}"), \
                    c.budget_guard(cost_limit=900):
                actguard.add_cost(name="search", usd=usd)
    finally:
        c.close()


@pytest.mark.parametrize(("key", "tenant"), [("acme", "acme"), ("solo", "")])
def test_a_users_spend_shows_in_the_next_decisions_acting_for_budget(
        svc: Live, key: str, tenant: str) -> None:
    """Alice's run spends $0.80 through the real SDK; the decision of her next $0.30
    reads her bucket (``tenant:T/user_id:alice``, $0.80 spent) and refuses it itself
    with ``budget_exceeded`` (409 to the SDK); bob's $0.30 is his own room."""
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    spend(svc, key, alice, 0.80)
    mine = f"tenant:{tenant}/user_id:{alice}"
    (b,) = svc.engine.budgets.balances(acting_for=mine)
    assert (b.subject, b.spent, b.reserved) == (mine, Decimal("0.80"), 0)

    r = reserve(svc, key, 300, alice)
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "budget_exceeded"
    d = svc.decisions[-1]
    assert (d.status, d.code) == ("denied", "budget_exceeded"), d
    assert d.budget is not None and d.budget.subject == mine
    assert d.budget.spent == Decimal("0.80")
    assert d.acting_for == mine
    with pytest.raises(BudgetExceededError):  # the SDK raises on the decision's 409
        spend(svc, key, alice, 0.10)

    r = reserve(svc, key, 300, bob)
    assert r.status_code == 200, r.text
    d = svc.decisions[-1]
    assert d.allowed and d.budget is not None
    assert d.budget.subject == f"tenant:{tenant}/user_id:{bob}"
    assert d.budget.reserved == 0  # nothing of alice's


def test_a_per_acting_for_rate_limit_is_each_users_own(svc: Live) -> None:
    """Three runs a minute per person: alice's fourth is refused by the decision, while
    bob (same key) and acme's other user of the same name in the tenantless key keep
    their own calls; the rate-limit subject is the ledger's name for the person."""
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    for _ in range(3):
        assert reserve(svc, "acme", 1, alice).status_code == 200
    r = reserve(svc, "acme", 1, alice)
    assert r.status_code == 409 and r.json()["code"] == "rate_limited", r.text
    d = svc.decisions[-1]
    assert d.rate_limit is not None
    assert d.rate_limit.subject == f"tenant:acme/user_id:{alice}"
    assert reserve(svc, "acme", 1, bob).status_code == 200
    assert reserve(svc, "solo", 1, alice).status_code == 200


def test_rules_read_no_grant_for_a_wire_user() -> None:
    """The person acted for is a counting name on this wire: the rules see no
    delegation (``grant.delegated`` false), as without it, so a rule on grants keeps
    deciding as before and the user_id is still ``context.user_id`` as sent."""
    engine = pe.Engine.from_source(POLICY + """
forbid delegated: llm:* when grant.delegated
forbid banned: llm:* when context.user_id == "mallory"
""")
    d = engine.authorize("acme-bot", "llm:run", {"user_id": "alice", "amount": "0.10",
                                                 "currency": "USD"},
                         partition="acme", acting_for="tenant:acme/user_id:alice")
    assert d.allowed, d
    assert d.acting_for == "tenant:acme/user_id:alice" and d.chain is None
    d = engine.authorize("acme-bot", "llm:run", {"user_id": "mallory"}, partition="acme",
                         acting_for="tenant:acme/user_id:mallory")
    assert (d.status, d.rules) == ("denied", ("af.banned",)), d
