"""Tenants on the actguard and agent-ledger wires, with the real, unmodified actguard and
agent-ledger SDKs (and runcycles) against a live service: every id a client chooses
(actguard's ``user_id``, ``run_id``, ``plan_key``; agent-ledger's session and agent) is
counted under the API key's tenant, as the Cycles wire counts a subject's dimensions,
so two tenants' equal ids never share a budget nor a run, and no id can name another
namespace's principal or bucket (a Cycles agent's ``tenant:acme/agent:bot``)."""

from __future__ import annotations

import os
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import actguard
import httpx
import pytest
from actguard.exceptions import BudgetExceededError
from agent_ledger_sdk import AgentLedgerClient, BudgetGuardrailError
from hypothesis import given, settings
from hypothesis import strategies as st
from runcycles import CyclesClient, CyclesConfig

import policyengine as pe
from policyengine.server import (
    ApiKey,
    Credentials,
    ServiceConfig,
    create_app,
)
from policyengine.server._actguard import _tenancy
from policyengine.server._budgetwire import dimension, tenant_fields, under
from policyengine.server._cycles import _tenant_agent

from .service_harness import hashed, serving, tenant_service

POLICY = """
namespace wt
currency USD

role llm: llm:*
agent "acme-bot": llm
agent "globex-bot": llm
agent "writer": llm

budget person: llm:* limit 1 USD per day per acting_for
budget per-run: llm:run limit 1 USD per day per context.run_id
budget per-plan: llm:run limit 1 USD per day per context.plan_key
budget per-session: llm:call limit 0.02 USD per day per context.session
budget per-agent-name: llm:call limit 0.03 USD per day per context.agent_name
price "openai" "gpt-4o": input 2.50 USD, cached_input 1.25 USD, output 10 USD per 1M tokens
"""
#: API keys: name -> (secret, agent, tenant). ``team`` and ``team:x`` are two tenants'
#: keys whose names and run ids once made one idempotency key (``actguard:team:x:r-1``).
API = {"ag-acme": ("s-ag-acme", "acme-bot", "acme"),
       "ag-globex": ("s-ag-globex", "globex-bot", "globex"),
       "team": ("s-team", "acme-bot", "acme"),
       "team:x": ("s-team-x", "globex-bot", "globex"),
       "lg-acme": ("s-lg-acme", "writer", "acme"),
       "lg-globex": ("s-lg-globex", "writer", "globex")}
CYCLES = {"acme": "cy-acme", "globex": "cy-globex"}


@dataclass
class Live:
    url: str
    engine: pe.Engine


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    keys = [(name, *key) for name, key in API.items()]
    with tenant_service(POLICY, CYCLES, keys, {"cycles": "/cy", "actguard": "/ag",
                                               "agent-ledger": "/ledger"},
                        tmp_path_factory.mktemp("journal")) as (url, engine):
        yield Live(url, engine)


def ag(svc: Live, key: str) -> actguard.Client:
    return actguard.Client(api_key=API[key][0], gateway_url=f"{svc.url}/ag",
                           flush_interval_ms=20, budget_max_retries=0, budget_timeout_s=60)


def run(svc: Live, key: str, cost_limit: int, **fields: str) -> None:
    """One actguard run of ``cost_limit`` CU that spends nothing (its hold is given back
    when it settles); raises what the SDK raises."""
    c = ag(svc, key)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a swallowed 4xx (run unreserved) fails
            with c.run(run_id=fields.pop("run_id"), user_id=fields.pop("user_id", None)), \
                    c.budget_guard(cost_limit=cost_limit, **fields):
                pass
    finally:
        c.close()


def held(svc: Live, key: str, cost_limit: int, **fields: str) -> str:
    """An actguard reserve of ``cost_limit`` CU left open (the SDK's request, by hand so
    the hold stays): its reserve_id."""
    r = httpx.post(f"{svc.url}/ag/api/v1/reserve", json={"cost_limit": cost_limit, **fields},
                   headers={"Authorization": f"Bearer {API[key][0]}"})
    assert r.status_code == 200, r.text
    rid: str = r.json()["reserve_id"]
    return rid


def settle(svc: Live, key: str, rid: str) -> None:
    r = httpx.post(f"{svc.url}/ag/api/v1/settle", json={
        "reserve_id": rid, "input_tokens": 0, "cached_input_tokens": 0, "output_tokens": 0,
        "usage_breakdown": []}, headers={"Authorization": f"Bearer {API[key][0]}"})
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------ actguard
@pytest.mark.parametrize("field", ["user_id", "run_id", "plan_key"])
def test_two_tenants_equal_ids_keep_separate_budgets(svc: Live, field: str) -> None:
    """acme's and globex's runs naming the same user (per acting_for), run (per
    context.run_id) or plan (per context.plan_key) each have their own $1: $0.80 each
    fits. Before, one bucket held both: globex's $0.80 was refused (409) after acme's."""
    same = f"{field}-{uuid.uuid4().hex[:8]}"
    open_runs = []
    for key in ("ag-acme", "ag-globex"):
        fields = {"run_id": f"r-{uuid.uuid4().hex}", field: same}
        open_runs.append((key, held(svc, key, 800, **fields)))
    # Each tenant's own bucket is full: $0.30 more is refused there, by the real SDK.
    for key in ("ag-acme", "ag-globex"):
        fields = {"run_id": f"r-{uuid.uuid4().hex}", field: same}
        if field == "run_id":  # the same run id again is that run (the SDK's retry)
            continue
        with pytest.raises(BudgetExceededError):
            run(svc, key, 300, **fields)
    tenants = {"ag-acme": "acme", "ag-globex": "globex"}
    ledger = svc.engine.budgets
    for key, rid in open_runs:
        r = ledger.get(rid)
        lines = {line.budget: line.subject for line in r.lines}
        tenant = tenants[key]
        if field == "user_id":
            assert r.acting_for == f"tenant:{tenant}/user_id:{same}"
            assert lines["wt.person"] == r.acting_for
        else:
            assert lines[f"wt.per-{field.split('_')[0]}"] == f"tenant:{tenant}/{field}:{same}"
        settle(svc, key, rid)


def test_a_run_id_run_by_one_tenant_never_blocks_another(svc: Live) -> None:
    """acme's key ``team`` runs ``x:r-1``, then globex's key ``team:x`` runs ``r-1``:
    two runs. Before, both were the idempotency key ``actguard:team:x:r-1``: globex's
    run was acme's run "reused" (409, BudgetExceededError), and never ran."""
    tail = uuid.uuid4().hex[:8]
    run(svc, "team", 100, run_id=f"x:r-{tail}")
    run(svc, "team:x", 100, run_id=f"r-{tail}")  # its own run: no 409
    run(svc, "ag-globex", 100, run_id=f"x:r-{tail}")  # the same run id in globex: its own
    with pytest.raises(BudgetExceededError):  # a run id that has run never runs again
        run(svc, "team", 100, run_id=f"x:r-{tail}")


@pytest.mark.parametrize("key", ["ag-acme", "ag-globex"])
def test_a_hostile_user_id_never_reaches_a_cycles_agents_budget(svc: Live, key: str) -> None:
    """A user_id naming acme's Cycles agent ``bot`` (``tenant:acme/agent:bot``, whose
    per acting_for budget is its own principal's) is that tenant's user of that odd
    name, escaped under the key's tenant: the agent's $1 stays whole. Before, the run
    spent the agent's own per-person dollar (acme's key) or another tenant's (globex's)."""
    agent = f"bot-{uuid.uuid4().hex[:8]}"
    principal = f"tenant:acme/agent:{agent}"
    assert _tenant_agent(agent, "acme") == principal
    rid = held(svc, key, 800, run_id=f"r-{uuid.uuid4().hex}", user_id=principal)
    acting_for = svc.engine.budgets.get(rid).acting_for
    assert acting_for is not None and acting_for != principal
    assert acting_for.startswith(f"tenant:{'acme' if key == 'ag-acme' else 'globex'}/user_id:")
    assert [b.reserved for b in svc.engine.budgets.balances(acting_for=principal)
            if b.budget == "wt.person"] == [Decimal(0)]
    # The Cycles agent still has its whole dollar: $0.90 fits.
    with CyclesClient(CyclesConfig(
            base_url=f"{svc.url}/cy", api_key=CYCLES["acme"], tenant="acme",
            retry_enabled=False, retry_flush_timeout=0,
            journal_dir=os.environ.get("CYCLES_JOURNAL_DIR", tempfile.gettempdir()))) as cy:
        r = cy.create_reservation({
            "idempotency_key": uuid.uuid4().hex, "ttl_ms": 60_000,
            "subject": {"tenant": "acme", "agent": agent},
            "action": {"kind": "llm", "name": "chat"},
            "estimate": {"unit": "USD_MICROCENTS", "amount": 90_000_000}})
        assert r.status == 200, r.body
        cy.release_reservation(r.body["reservation_id"], {"idempotency_key": uuid.uuid4().hex})
    settle(svc, key, rid)


# ------------------------------------------------------------------ agent-ledger
def ledger_client(svc: Live, key: str) -> AgentLedgerClient:
    return AgentLedgerClient(API[key][0], base_url=f"{svc.url}/ledger")


def llm_call(step: int) -> dict[str, Any]:  # $0.0075, a whole cent on a cent budget
    return {"stepIndex": step, "provider": "openai", "model": "gpt-4o", "prompt": "p",
            "response": "r", "tokensIn": 1000, "tokensOut": 500, "latencyMs": 1}


def test_agent_ledger_counts_are_each_tenants_own(svc: Live) -> None:
    """The agent ``writer`` has a key in acme and one in globex: its per
    context.agent_name $0.03 is each tenant's own (its per-agent budgets, the agent's
    on every wire, would be shared), and so is each session's $0.02. Before, the bucket
    was the bare agent name: globex's first call was refused after acme's three."""
    acme, globex = ledger_client(svc, "lg-acme"), ledger_client(svc, "lg-globex")
    try:
        spent = 0
        while spent < 3:  # acme spends its $0.03 over two sessions
            sid = acme.start_session("writer")
            for _ in range(min(2, 3 - spent)):
                acme.log_llm_call(sid, llm_call(spent))
                spent += 1
        with pytest.raises(BudgetGuardrailError) as err:
            acme.log_llm_call(acme.start_session("writer"), llm_call(9))
        assert err.value.details.daily_limit_usd == 0.03
        sid = globex.start_session("writer")
        globex.log_llm_call(sid, llm_call(0))  # globex's own $0.03
        globex.log_llm_call(sid, llm_call(1))
        mine = {"agent_name": "tenant:globex/agent_name:writer",
                "session": f"tenant:globex/session:{sid}"}
        buckets = {b.subject for b in svc.engine.budgets.balances(scope=mine) if b.spent}
        assert buckets == {"tenant:globex/agent_name:writer", f"tenant:globex/session:{sid}"}
    finally:
        acme.close()
        globex.close()


def test_another_tenants_session_is_an_unknown_session(svc: Live) -> None:
    """globex's key of the same agent cannot log into, nor end, acme's session: the 404
    of an id never made, body for body."""
    acme = ledger_client(svc, "lg-acme")
    try:
        sid = acme.start_session("writer")
        never = "ses_" + uuid.uuid4().hex[:24]
        for path, body in (("/v1/events", {"sessionId": "{sid}", "events": []}),
                           ("/v1/sessions/{sid}/end", {"status": "success",
                                                       "errorMessage": None})):
            answers = []
            for target in (sid, never):
                url = f"{svc.url}/ledger{path.format(sid=target)}"
                payload = {k: (target if v == "{sid}" else v) for k, v in body.items()}
                r = httpx.post(url, json=payload, headers={"x-api-key": API["lg-globex"][0]})
                answers.append((r.status_code, r.json()))
            assert answers[0] == answers[1] == (404, {"error": "no such session",
                                                      "code": "unknown_session"})
        acme.log_events(sid, [{"type": "tool_call", "stepIndex": 0,  # still acme's, open
                               "toolName": "search", "toolInput": {}}])
    finally:
        acme.close()


def test_a_key_name_bound_anew_never_takes_over_its_old_sessions() -> None:
    """Credentials replaced (a reload) with the name ``lg`` now bound to globex: the
    sessions that name started for acme are not globex's (404, as an unknown id), and
    a batch there is never charged to acme's budgets."""
    secret = API["lg-acme"][0]

    def creds(tenant: str) -> Credentials:
        return Credentials(api_keys=(ApiKey("lg", hashed(secret), "writer", tenant),))

    engine = pe.Engine.from_source(POLICY)
    app = create_app(engine, credentials=creds("acme"), config=ServiceConfig(
        access_log=False, prefixes={"agent-ledger": "/ledger"}))
    with serving(app) as port:
        lg = AgentLedgerClient(secret, base_url=f"http://127.0.0.1:{port}/ledger")
        try:
            sid = lg.start_session("writer")
            app.credentials = creds("globex")
            r = httpx.post(f"http://127.0.0.1:{port}/ledger/v1/events",
                           headers={"x-api-key": secret},
                           json={"sessionId": sid, "events": [
                               {**llm_call(0), "type": "llm_call"}]})
            assert (r.status_code, r.json()["code"]) == (404, "unknown_session")
            assert not [b for b in engine.budgets.balances("writer", tenant="acme")
                        if b.spent]
            lg.log_llm_call(lg.start_session("writer"), llm_call(0))  # globex's own
        finally:
            lg.close()


# ------------------------------------------------------------------ the names
_TENANTS = st.one_of(st.none(), st.text(min_size=1, max_size=300))
_VALUES = st.text(min_size=1, max_size=300)
_FIELDS = st.sampled_from(["user_id", "run_id", "plan_key", "session", "agent_name",
                           "cost_center", "agent"])


@settings(max_examples=500, deadline=None)
@given(one=st.tuples(_TENANTS, _VALUES), two=st.tuples(_TENANTS, _VALUES), field=_FIELDS,
       agent=_VALUES)
def test_two_tenants_ids_never_share_a_bucket_or_principal(
        one: tuple[str | None, str], two: tuple[str | None, str], field: str,
        agent: str) -> None:
    """Any two (tenant, id) pairs a client can send make two buckets of a ``per
    context.NAME`` budget and two acting_for principals, neither of them a Cycles
    principal (a tenant's own, or its wire-only agent's), a credentials agent (never
    ``tenant:...``) or longer than the ledger keeps."""
    def bucket(pair: tuple[str | None, str]) -> str:
        return tenant_fields([field, "workspace"], pair[0] or "", {field: pair[1]})[field]

    for pair in (one, two):
        name = bucket(pair)
        assert name.startswith("tenant:") and 0 < len(name) <= 256
        assert name == dimension(pair[0] or "", field, pair[1])
        if field != "agent":  # (a per context.agent bucket is of no principal's budget)
            assert name not in (under(pair[0] or ""), _tenant_agent(agent, pair[0] or ""),
                                _tenant_agent(pair[1], pair[0] or ""))
    assert (bucket(one) == bucket(two)) == ((one[0] or "") == (two[0] or "")
                                            and one[1] == two[1])


@settings(max_examples=300, deadline=None)
@given(one=st.tuples(st.one_of(st.none(), st.text(min_size=1, max_size=20)),
                     st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20)),
       two=st.tuples(st.one_of(st.none(), st.text(min_size=1, max_size=20)),
                     st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20)))
def test_two_keys_runs_never_share_an_idempotency_key(
        one: tuple[str | None, str, str], two: tuple[str | None, str, str]) -> None:
    """A run is its key's (tenant, name, agent) and run id: two differing never make one
    ledger idempotency key, whatever ``:`` the names and ids hold."""
    from policyengine.server import _models as m

    def key_of(t: tuple[str | None, str, str]) -> str:
        k = ApiKey(t[1], "x", "agent", t[0])
        r = m.ActguardReserveRequest(run_id=t[2], cost_limit=None)
        return _tenancy(frozenset(), k, r, {"run_id": t[2]})[2]  # the fields reserve sent

    assert (key_of(one) == key_of(two)) == (one == two)
