"""Tenants and wires on the Cycles wire, with the real runcycles (and actguard) SDKs
against a live service: a Cycles key of one tenant never reads nor changes the budget
state of another tenant's subject (403 ``FORBIDDEN``, the protocol's answer), whatever
budget counts it (per agent, per ``acting_for``, per ``context.NAME`` of a subject's
dimensions); a wire-only agent's principal is never a real agent's; and a reservation
is seen and ended only by the wire and tenant that made it (any other key gets the 404
of an id never made), so no sequence of calls across wires or tenants loses a recorded
spend or learns of another's reservation."""

from __future__ import annotations

import itertools
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
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
)

from .service_harness import hashed, tenant_service

POLICY = """
namespace tenancy
currency USD

role llm: llm:*
agent "acme-bot": llm
agent "globex-bot": llm
agent "shared-bot": llm

budget tokens: chat:* limit 1000000 tokens per day per agent
budget person: person:* limit 1000000 tokens per day per acting_for
budget cost-center: dim:* limit 1000 tokens per day per context.cost_center
budget dollars: llm:* limit 2 USD per day per agent
price "openai" "gpt-4o": input 2.50 USD, cached_input 1.25 USD, output 10 USD per 1M tokens
"""
#: Cycles key of each tenant.
CYCLES = {"acme": "cy-acme", "globex": "cy-globex"}
#: API keys of the other wires: (agent, tenant). ``shared-bot``'s has no tenant;
#: ``bot@acme`` is a real agent of globex's, named as a wire-only agent ``bot`` of acme's
#: was once kept.
API = {"ag-acme": ("acme-bot", "acme"), "ag-globex": ("globex-bot", "globex"),
       "ag-shared": ("shared-bot", None), "ag-bot-at-acme": ("bot@acme", "globex")}


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
    keys = [(k, k, agent, tenant) for k, (agent, tenant) in API.items()]
    with tenant_service(POLICY, CYCLES, keys, {"cycles": "/cy", "actguard": "/ag"},
                        tmp_path_factory.mktemp("journal")) as (url, engine):
        live = Live(url, engine)
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


def never_made(rid: str) -> str:
    """An id of the same shape as ``rid`` that no one made."""
    return rid[:16] + ("0" if rid[16] != "0" else "1") + rid[17:]


def assert_not_found(call: Callable[[str], Any], rid: str) -> None:
    """``call(rid)`` answers exactly what it answers for an id never made (404
    ``NOT_FOUND``, the same message but for the id): the id is no oracle."""
    other = never_made(rid)
    got, missing = call(rid), call(other)
    assert got.status == missing.status == 404, (got.status, got.body)
    assert set(got.body) == set(missing.body) == {"error", "message", "request_id"}
    assert got.body["error"] == missing.body["error"] == "NOT_FOUND"
    assert got.body["message"] == missing.body["message"].replace(other, rid)


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
    # acme's reservation does not exist for globex: not to commit, release, extend or
    # read, and answered as an id never made.
    rid = r.body["reservation_id"]
    for call in (lambda x: globex.commit_reservation(x, {
                     "idempotency_key": "x", "actual": {"unit": "TOKENS", "amount": 1}}),
                 lambda x: globex.release_reservation(x, {"idempotency_key": "x"}),
                 lambda x: globex.extend_reservation(x, {"idempotency_key": "x",
                                                         "extend_by_ms": 1000}),
                 globex.get_reservation):
        assert_not_found(call, rid)
    assert acme.get_reservation(rid).body["status"] == "ACTIVE"


# ------------------------------------------------------------------ across wires
def actguard_client(svc: Live, key: str) -> actguard.Client:
    return actguard.Client(api_key=key, gateway_url=f"{svc.url}/ag", flush_interval_ms=20,
                           budget_max_retries=0, budget_timeout_s=60)


def dollars(svc: Live, agent: str) -> tuple[Decimal, Decimal]:
    (b,) = [b for b in svc.engine.budgets.balances(agent) if b.budget == "tenancy.dollars"]
    return b.spent, b.reserved


def test_a_cycles_key_cannot_end_an_actguard_run_so_its_settle_is_charged(
        svc: Live) -> None:
    """A Cycles key of the run's tenant can neither read, release, commit nor extend
    the run's hold (404 NOT_FOUND, as an id never made): the settle charges the run's
    usage. Before, the release was 200 and the settle then charged nothing (the SDK
    swallowed the failure): $0.30 of spend lost; and the read showed the run's hold."""
    agent = "acme-bot"
    spent0, _ = dollars(svc, agent)
    c = actguard_client(svc, "ag-acme")
    try:
        cy = svc.client("acme")
        with c.run(run_id=uuid.uuid4().hex), c.budget_guard(cost_limit=500) as root:
            rid = root._shared_root.reserve_id
            assert rid is not None
            for call in (
                    lambda x: cy.release_reservation(x, {
                        "idempotency_key": uuid.uuid4().hex}),
                    lambda x: cy.commit_reservation(x, {
                        "idempotency_key": uuid.uuid4().hex,
                        "actual": {"unit": "USD_MICROCENTS", "amount": 1}}),
                    lambda x: cy.extend_reservation(x, {
                        "idempotency_key": uuid.uuid4().hex, "extend_by_ms": 1000}),
                    cy.get_reservation):
                assert_not_found(call, rid)
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


_NAMES = st.text(st.sampled_from("ab@#%/:tenant"), min_size=1, max_size=256)
_OWNERS = st.one_of(st.tuples(_NAMES, _NAMES), _NAMES)


@settings(max_examples=500, deadline=None)
@given(one=_OWNERS, two=_OWNERS)
def test_two_tenants_agents_never_share_a_principal(one: tuple[str, str] | str,
                                                    two: tuple[str, str] | str) -> None:
    """The principals this wire makes: a tenant's own (``tenant:acme``) and an agent's
    named only on the wire (``tenant:acme/agent:bot``): one per tenant and per
    (agent, tenant), of a length the ledger keeps, whatever ``@``, ``#``, ``%`` or
    ``/`` the names hold, and all in the ``tenant:`` namespace that no credentials may
    name an agent in (so never a real agent's)."""
    from policyengine.server._budgetwire import under as _under
    from policyengine.server._cycles import _tenant_agent

    def principal(owner: tuple[str, str] | str) -> str:
        return _under(owner) if isinstance(owner, str) else _tenant_agent(*owner)

    for owner in (one, two):
        name = principal(owner)
        assert 0 < len(name) <= 256 and name.startswith("tenant:")
    assert (principal(one) == principal(two)) == (one == two)
    long = ("x" * 128, "@" * 128)
    assert len(_tenant_agent(*long)) <= 256 and _tenant_agent(*long) != _tenant_agent(
        "x" * 128, "@" * 127)
    assert _tenant_agent("bot", "acme") == "tenant:acme/agent:bot"
    assert _under("acme/agent:bot") != _tenant_agent("bot", "acme")


@settings(max_examples=300, deadline=None)
@given(one=st.tuples(_NAMES, _NAMES), two=st.tuples(_NAMES, _NAMES))
def test_two_tenants_dimensions_never_share_a_bucket(one: tuple[str, str],
                                                     two: tuple[str, str]) -> None:
    """A dimension's bucket: one per (tenant, value), of a length the ledger keeps."""
    from policyengine.server._budgetwire import dimension as _dimension
    for tenant, value in (one, two):
        assert 0 < len(_dimension(tenant, "cost_center", value)) <= 256
    assert (_dimension(*one[:1], "cost_center", one[1]) == _dimension(
        two[0], "cost_center", two[1])) == (one == two)


def test_credentials_never_name_an_agent_in_the_tenant_namespace() -> None:
    """``tenant:...`` principals are the Cycles wire's: an agent of the other wires
    named so would spend a tenant's own budget or a wire-only agent's."""
    from policyengine.server import AgentCredential, CredentialsError
    h = hashed("ag-acme")
    for creds in (lambda: Credentials(api_keys=(ApiKey("k", h, "tenant:acme"),)),
                  lambda: Credentials(api_keys=(ApiKey("k", h, "tenant:acme/agent:bot",
                                                       "globex"),)),
                  lambda: Credentials(agents=(AgentCredential("c", h, "tenant:acme",
                                                              ("llm:*",)),))):
        with pytest.raises(CredentialsError) as err:
            creds()
        assert err.value.code == "invalid_credentials_file"
        assert "tenant:" in str(err.value)
    Credentials(api_keys=(ApiKey("k", h, "tenants:acme"), ApiKey("j", h, "bot@acme")))


# ------------------------------------------------------------------ every budget kind
def reserve(svc: Live, tenant: str, subj: dict[str, Any], kind: str, amount: int) -> Any:
    return svc.client(tenant).create_reservation({
        "idempotency_key": uuid.uuid4().hex, "subject": subj, "ttl_ms": 60_000,
        "action": {"kind": kind, "name": "gpt"},
        "estimate": {"unit": "TOKENS", "amount": amount}})


def exceeded(r: Any) -> bool:
    if r.status != 409:
        return False
    assert r.body["error"] == "BUDGET_EXCEEDED", r.body
    return True


@pytest.mark.parametrize("dimensions", [{"cost_center": "cc1"}, None],
                         ids=["same value", "no value"])
def test_a_dimension_budget_is_each_tenants_own(svc: Live,
                                                dimensions: dict[str, str] | None) -> None:
    """``per context.cost_center`` (1000 tokens) over subjects' dimensions: acme's
    spend of ``cc1`` consumes acme's ``cc1`` and never globex's; so does a spend
    without the dimension (the tenant's empty value). Before, the bucket was the bare
    value, one for both tenants: globex's 900 were refused after acme's."""
    run = uuid.uuid4().hex[:8]
    dims = None if dimensions is None else {k: f"{v}-{run}" for k, v in dimensions.items()}
    ws = f"ws-{run}"  # a workspace of this test's own: the tenant budget is not the point

    def subj(tenant: str) -> dict[str, Any]:
        out: dict[str, Any] = {"tenant": tenant, "workspace": ws}
        return out if dims is None else {**out, "dimensions": dims}

    first = reserve(svc, "acme", subj("acme"), "dim", 900)
    assert first.status == 200, first.body
    theirs = reserve(svc, "globex", subj("globex"), "dim", 900)
    assert theirs.status == 200, theirs.body  # globex's own 1000
    assert exceeded(reserve(svc, "acme", subj("acme"), "dim", 200))  # acme's own: 900 held
    assert exceeded(reserve(svc, "globex", subj("globex"), "dim", 200))
    # An event (a spend without a reservation) counts the same buckets.
    for t in TENANTS:
        r = svc.client(t).create_event({
            "idempotency_key": uuid.uuid4().hex, "subject": subj(t),
            "action": {"kind": "dim", "name": "gpt"}, "overage_policy": "REJECT",
            "actual": {"unit": "TOKENS", "amount": 100}})
        assert r.status == 201, r.body
    for t in TENANTS:
        assert exceeded(reserve(svc, t, subj(t), "dim", 1))
    # The reservations as asked: the dimension as the client gave it.
    got = svc.client("acme").get_reservation(first.body["reservation_id"]).body
    assert got["subject"].get("dimensions") == dims


@pytest.mark.parametrize("kind", ["chat", "person"], ids=["per agent", "per acting_for"])
def test_a_wire_only_agent_is_never_a_real_agent_of_that_name(svc: Live, kind: str) -> None:
    """acme's wire-only agent ``bot`` and globex's real agent ``bot@acme`` (an apiKeys
    entry bound to globex) are two principals, for per-agent budgets and per
    ``acting_for`` budgets (which count the agent on this wire) alike. Before, acme's
    ``bot`` was kept as ``bot@acme``: acme's 900,000 tokens were globex's agent's, and
    globex's own reservation was refused."""
    acme, globex = svc.client("acme"), svc.client("globex")
    mine = reserve(svc, "acme", {"tenant": "acme", "agent": "bot"}, kind, 900_000)
    assert mine.status == 200, mine.body
    theirs = reserve(svc, "globex", {"tenant": "globex", "agent": "bot@acme"}, kind, 900_000)
    assert theirs.status == 200, theirs.body
    assert exceeded(reserve(svc, "acme", {"tenant": "acme", "agent": "bot"}, kind, 200_000))
    assert exceeded(reserve(svc, "globex", {"tenant": "globex", "agent": "bot@acme"}, kind,
                            200_000))
    if kind == "chat":  # balances show per-agent budgets: each its own 900,000
        for client, tenant, agent in ((acme, "acme", "bot"), (globex, "globex", "bot@acme")):
            (b,) = [b for b in client.get_balances(tenant=tenant, agent=agent).body[
                "balances"] if b["reserved"]["unit"] == "TOKENS"]
            assert b["reserved"]["amount"] == 900_000, b
            assert b["scope_path"] == f"tenant:{tenant}/agent:{agent}"
    # The real agent's own spend is its own: the ledger holds 900,000 for it, no more.
    real = [b for b in svc.engine.budgets.balances("bot@acme", tenant="globex")
            if b.budget == f"tenancy.{'tokens' if kind == 'chat' else 'person'}"]
    assert [b.reserved for b in real] == [Decimal(900_000)]
    # acme's key may not name it (bound to globex): 403, not a way round.
    assert forbidden(reserve(svc, "acme", {"tenant": "acme", "agent": "bot@acme"}, kind, 1))
    for r, client in ((mine, acme), (theirs, globex)):
        client.release_reservation(r.body["reservation_id"],
                                   {"idempotency_key": uuid.uuid4().hex})


def test_another_wires_reservation_of_the_tenant_is_not_found(svc: Live) -> None:
    """A reservation this tenant made on another wire (an agent-ledger batch's, an
    actguard run's: no Cycles create request kept with it) is not the Cycles key's to
    read, list or end: the 404 of an id never made. Before, GET showed it."""
    r = svc.engine.budgets.record("acme-bot", "llm:call", Decimal("0.01"), "USD",
                                  tenant="acme")
    cy = svc.client("acme")
    assert_not_found(cy.get_reservation, r.id)
    assert_not_found(lambda x: cy.release_reservation(x, {
        "idempotency_key": uuid.uuid4().hex}), r.id)
    listed = cy.list_reservations(tenant="acme", limit="200")
    assert r.id not in {x["reservation_id"] for x in listed.body["reservations"]}
