"""Tenants and wires on the Cycles wire, with the real runcycles (and actguard) SDKs
against a live service: a Cycles key of one tenant never reads nor changes the budget
state of another tenant's subject (403 ``FORBIDDEN``, the protocol's answer), and a
reservation is ended only by the wire that made it, so no sequence of calls across
wires loses a recorded spend."""

from __future__ import annotations

import itertools
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import actguard
import httpx
import pytest
from actguard.core.budget_context import record_usage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runcycles import CyclesClient, CyclesConfig

import policyengine as pe
from policyengine.server import (
    ApiKey,
    Credentials,
    CyclesKey,
    ServiceConfig,
    create_app,
    hash_secret,
)

from .service_harness import serving

POLICY = """
namespace tenancy
currency USD

role llm: llm:*
agent "acme-bot": llm
agent "globex-bot": llm
agent "shared-bot": llm

budget tokens: chat:* limit 1000000 tokens per day per agent
budget dollars: llm:* limit 2 USD per day per agent
price "openai" "gpt-4o": input 2.50 USD, cached_input 1.25 USD, output 10 USD per 1M tokens
"""
#: Cycles key of each tenant.
CYCLES = {"acme": "cy-acme", "globex": "cy-globex"}
#: API keys of the other wires: (agent, tenant). ``shared-bot``'s has no tenant.
API = {"ag-acme": ("acme-bot", "acme"), "ag-globex": ("globex-bot", "globex"),
       "ag-shared": ("shared-bot", None)}
_HASHES: dict[str, str] = {}


@dataclass
class Live:
    url: str
    engine: pe.Engine
    clients: dict[str, CyclesClient] = field(default_factory=dict)

    def client(self, tenant: str) -> CyclesClient:
        """The runcycles client of ``tenant``'s key (one per tenant: a client costs
        tens of milliseconds to make)."""
        if tenant not in self.clients:
            self.clients[tenant] = CyclesClient(CyclesConfig(
                base_url=f"{self.url}/cy", api_key=CYCLES[tenant], tenant=tenant,
                retry_enabled=False, retry_flush_timeout=0,
                journal_dir=os.environ.get("CYCLES_JOURNAL_DIR", tempfile.gettempdir())))
        return self.clients[tenant]


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    os.environ.setdefault("CYCLES_JOURNAL_DIR", str(tmp_path_factory.mktemp("journal")))
    if not _HASHES:
        _HASHES.update({k: hash_secret(k) for k in (*CYCLES.values(), *API)})
    creds = Credentials(
        cycles_keys=tuple(CyclesKey(t, _HASHES[k], t) for t, k in CYCLES.items()),
        api_keys=tuple(ApiKey(k, _HASHES[k], agent, tenant)
                       for k, (agent, tenant) in API.items()))
    engine = pe.Engine.from_source(POLICY)
    app = create_app(engine, credentials=creds, config=ServiceConfig(
        access_log=False, prefixes={"cycles": "/cy", "actguard": "/ag"}))
    with serving(app) as port:
        live = Live(f"http://127.0.0.1:{port}", engine)
        try:
            yield live
        finally:
            for c in live.clients.values():
                c.close()


def subject(tenant: str | None, agent: str | None) -> dict[str, str]:
    out = {"tenant": tenant, "agent": agent}
    return {k: v for k, v in out.items() if v is not None} or {"workspace": "w"}


def tokens(subj: dict[str, str], amount: int) -> dict[str, Any]:
    return {"idempotency_key": uuid.uuid4().hex, "subject": subj,
            "action": {"kind": "chat", "name": "gpt"},
            "estimate": {"unit": "TOKENS", "amount": amount}}


def event(subj: dict[str, str], amount: int) -> dict[str, Any]:
    return {"idempotency_key": uuid.uuid4().hex, "subject": subj,
            "action": {"kind": "chat", "name": "gpt"},
            "actual": {"unit": "TOKENS", "amount": amount}}


def forbidden(r: Any) -> bool:
    """The protocol's refusal of another tenant's subject, in its strict envelope."""
    if r.status != 403:
        return False
    assert r.body["error"] == "FORBIDDEN" and set(r.body) == {"error", "message",
                                                              "request_id"}, r.body
    return True


# ------------------------------------------------------------------ the model
AGENTS = (None, "oracle", "tenant:acme", "tenant:globex", "acme-bot", "globex-bot",
          "shared-bot", "tenant:")
TENANTS = ("acme", "globex")


def owner(key_tenant: str, subj_tenant: str | None, agent: str | None) -> str | None:
    """Whose per-agent budget the subject spends for this key, or None: 403."""
    if subj_tenant is not None and subj_tenant != key_tenant:
        return None
    if agent is None or agent == f"tenant:{key_tenant}":
        return f"tenant:{key_tenant}"          # the tenant's own, without an agent
    if agent.startswith("tenant:"):
        return None                             # another tenant's built-in principal
    bound = {"acme-bot": "acme", "globex-bot": "globex"}.get(agent)
    if bound is not None:
        return agent if bound == key_tenant else None
    if agent == "shared-bot":
        return agent                            # no tenant bound: every tenant's
    return f"{agent} of {key_tenant}"           # exists on this wire only: per tenant


def spent(svc: Live, tenant: str, agent: str | None) -> int | None:
    """The per-agent token budget's spend as ``tenant``'s key reads it, None if 403."""
    r = svc.client(tenant).get_balances(tenant=tenant, agent=agent or f"tenant:{tenant}")
    if forbidden(r):
        return None
    assert r.status == 200, r.body
    (b,) = [b for b in r.body["balances"] if b["spent"]["unit"] == "TOKENS"]
    assert b["scope"] == f"agent:{agent or f'tenant:{tenant}'}"  # as asked
    return int(b["spent"]["amount"])


CASES = list(itertools.product(TENANTS, (None, *TENANTS), AGENTS))


@pytest.mark.parametrize(("key", "subj_tenant", "agent"), CASES)
def test_each_endpoint_refuses_exactly_another_tenants_subject(
        svc: Live, key: str, subj_tenant: str | None, agent: str | None) -> None:
    """The table: every (key tenant, subject tenant, subject agent) on create (and its
    commit), dry run, decide, event and balances: 403 FORBIDDEN exactly when the subject
    is another tenant's, and then nothing is held or spent anywhere."""
    expected = owner(key, subj_tenant, agent)
    subj = subject(subj_tenant, agent)
    before = {(t, a): spent(svc, t, a) for t in TENANTS for a in AGENTS}
    c = svc.client(key)
    created = c.create_reservation({**tokens(subj, 7), "ttl_ms": 60_000})
    answers = [created,
               c.create_reservation({**tokens(subj, 7), "dry_run": True}),
               c.decide(tokens(subj, 7)),
               c.create_event(event(subj, 5))]
    for r, ok in zip(answers, (200, 200, 200, 201), strict=True):
        assert forbidden(r) == (expected is None), (r.status, r.body)
        assert expected is None or r.status == ok, (r.status, r.body)
    if expected is not None:
        done = c.commit_reservation(created.body["reservation_id"], {
            "idempotency_key": uuid.uuid4().hex,
            "actual": {"unit": "TOKENS", "amount": 3}})
        assert done.status == 200, done.body
    after = {(t, a): spent(svc, t, a) for t in TENANTS for a in AGENTS}
    for (t, a), was in before.items():
        mine = owner(t, None, a)
        assert (was is None) == (mine is None)  # balances: readable exactly when own
        if mine is not None:
            assert after[(t, a)] == was + (8 if mine == expected else 0), (t, a)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writer=st.tuples(st.sampled_from(TENANTS), st.sampled_from((None, *TENANTS)),
                        st.sampled_from(AGENTS)),
       reader=st.tuples(st.sampled_from(TENANTS), st.sampled_from(AGENTS)),
       amount=st.integers(1, 50))
def test_a_spend_is_seen_exactly_by_its_own_tenants_subject(
        svc: Live, writer: tuple[str, str | None, str | None],
        reader: tuple[str, str | None], amount: int) -> None:
    """Any key spending on any subject, any key reading any subject's balance: the
    spend is refused exactly when the subject is another tenant's; a read is refused
    exactly when it is another tenant's; a read sees the spend exactly when both name
    the same tenant's subject."""
    key, subj_tenant, agent = writer
    seen = spent(svc, *reader)
    r = svc.client(key).create_event(event(subject(subj_tenant, agent), amount))
    wrote = owner(key, subj_tenant, agent)
    assert forbidden(r) == (wrote is None), (r.status, r.body)
    if wrote is not None:
        assert r.status == 201, r.body
    read = owner(reader[0], None, reader[1])
    now = spent(svc, *reader)
    assert (now is None) == (seen is None) == (read is None)
    if read is not None:
        assert now == seen + (amount if read == wrote else 0)  # type: ignore[operator]


def test_another_tenants_agent_of_the_same_name_is_its_own(svc: Live) -> None:
    """The audit's case: acme's "oracle" spends; globex's key neither reads that spend
    nor is refused for it: globex's "oracle" is another subject with its own budget."""
    agent = f"oracle-{uuid.uuid4().hex[:8]}"
    acme, globex = svc.client("acme"), svc.client("globex")
    r = acme.create_reservation({**tokens(subject("acme", agent), 900_000),
                                 "ttl_ms": 60_000})
    assert r.status == 200, r.body
    assert r.body["affected_scopes"] == ["tenant:acme", f"agent:{agent}"]
    assert globex.create_reservation({**tokens(subject("globex", agent), 900_000),
                                      "ttl_ms": 60_000}).status == 200
    for client, tenant in ((acme, "acme"), (globex, "globex")):
        (b,) = [b for b in client.get_balances(tenant=tenant, agent=agent).body[
            "balances"] if b["reserved"]["unit"] == "TOKENS"]
        assert b["reserved"]["amount"] == 900_000
        assert b["scope_path"] == f"tenant:{tenant}/agent:{agent}"
    # acme's reservation is not globex's to commit, release, extend or read.
    rid = r.body["reservation_id"]
    for call in (lambda: globex.commit_reservation(rid, {
                     "idempotency_key": "x", "actual": {"unit": "TOKENS", "amount": 1}}),
                 lambda: globex.release_reservation(rid, {"idempotency_key": "x"}),
                 lambda: globex.extend_reservation(rid, {"idempotency_key": "x",
                                                         "extend_by_ms": 1000}),
                 lambda: globex.get_reservation(rid)):
        assert forbidden(call())


# ------------------------------------------------------------------ across wires
def actguard_client(svc: Live, key: str) -> actguard.Client:
    return actguard.Client(api_key=key, gateway_url=f"{svc.url}/ag", flush_interval_ms=20,
                           budget_max_retries=0, budget_timeout_s=60)


def dollars(svc: Live, agent: str) -> tuple[Decimal, Decimal]:
    (b,) = [b for b in svc.engine.budgets.balances(agent) if b.budget == "tenancy.dollars"]
    return b.spent, b.reserved


def test_a_cycles_key_cannot_end_an_actguard_run_so_its_settle_is_charged(
        svc: Live) -> None:
    """A Cycles key of the run's tenant can neither release, commit nor extend the
    run's hold (403 FORBIDDEN): the settle charges the run's usage. Before, the release
    was 200 and the settle then charged nothing (the SDK swallowed the failure): $0.30
    of spend lost."""
    agent = "acme-bot"
    spent0, _ = dollars(svc, agent)
    c = actguard_client(svc, "ag-acme")
    try:
        cy = svc.client("acme")
        with c.run(run_id=uuid.uuid4().hex), c.budget_guard(cost_limit=500) as root:
            rid = root._shared_root.reserve_id
            assert rid is not None
            for r in (cy.release_reservation(rid, {"idempotency_key": uuid.uuid4().hex}),
                      cy.commit_reservation(rid, {"idempotency_key": uuid.uuid4().hex,
                                                  "actual": {"unit": "USD_MICROCENTS",
                                                             "amount": 1}}),
                      cy.extend_reservation(rid, {"idempotency_key": uuid.uuid4().hex,
                                                  "extend_by_ms": 1000})):
                assert forbidden(r), (r.status, r.body)
            assert dollars(svc, agent) == (spent0, Decimal("0.50"))  # still held
            record_usage(provider="openai", provider_model_id="gpt-4o",
                         input_tokens=0, output_tokens=30_000)  # $0.30
        assert dollars(svc, agent) == (spent0 + Decimal("0.30"), Decimal("0.00"))
        assert svc.engine.budgets.get(rid).status == "committed"
    finally:
        c.close()


def test_an_actguard_settle_cannot_end_a_cycles_reservation(svc: Live) -> None:
    """The other way: a Cycles reservation of the same agent, tenant and permission
    (``llm:run``) is not a run's hold: settling it is 404, and the Cycles commit
    charges its actual. Before, the settle ended it with its own amount and the SDK's
    commit was 409 RESERVATION_FINALIZED, which it takes as settled: spend lost."""
    spent0, _ = dollars(svc, "acme-bot")
    cy = svc.client("acme")
    r = cy.create_reservation({
        "idempotency_key": uuid.uuid4().hex, "subject": subject("acme", "acme-bot"),
        "action": {"kind": "llm", "name": "run"}, "ttl_ms": 60_000,
        "estimate": {"unit": "USD_MICROCENTS", "amount": 50_000_000}})
    assert r.status == 200, r.body
    rid = r.body["reservation_id"]
    settle = httpx.post(f"{svc.url}/ag/api/v1/settle", headers={
        "Authorization": "Bearer ag-acme"}, json={
        "reserve_id": rid, "input_tokens": 0, "cached_input_tokens": 0,
        "output_tokens": 0, "usage_breakdown": []})
    assert settle.status_code == 404, settle.text
    assert settle.json()["code"] == "unknown_reservation"
    done = cy.commit_reservation(rid, {"idempotency_key": uuid.uuid4().hex,
                                       "actual": {"unit": "USD_MICROCENTS",
                                                  "amount": 40_000_000}})
    assert done.status == 200, done.body
    assert dollars(svc, "acme-bot") == (spent0 + Decimal("0.40"), Decimal("0.00"))


_NAMES = st.text(st.sampled_from("ab@#%/:tenant"), min_size=1, max_size=128)


@settings(max_examples=500, deadline=None)
@given(one=st.tuples(_NAMES, _NAMES), two=st.tuples(_NAMES, _NAMES))
def test_two_tenants_agents_never_share_a_principal(one: tuple[str, str],
                                                    two: tuple[str, str]) -> None:
    """The principal of an agent named only on the wire: one per (agent, tenant), of a
    length the ledger keeps, whatever ``@``, ``#`` or ``%`` the names hold, and never a
    tenant's own ``tenant:<name>``."""
    from policyengine.server._cycles import _tenant_agent
    for agent, tenant in (one, two):
        name = _tenant_agent(agent, tenant)
        assert 0 < len(name) <= 256
        assert agent.startswith("tenant:") or not name.startswith("tenant:")
    assert (_tenant_agent(*one) == _tenant_agent(*two)) == (one == two)
    long = ("x" * 128, "@" * 128)
    assert len(_tenant_agent(*long)) <= 256 and _tenant_agent(*long) != _tenant_agent(
        "x" * 128, "@" * 127)
