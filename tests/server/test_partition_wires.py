"""Partitions on the decision wires, with the real, unmodified tracengent SDK (and
AuthZEN over httpx) against a live service: a decision's budget check and rate limits
count in the tenant of the caller's credentials (``agents[].tenant``,
``authzenClients[].tenant``), never in one the request names. Two tenants' agents
sending the same context values keep their own budgets and rate limits, a
``context.tenant`` sent never reaches another tenant's counters, and the budget a
tracengent decision sees is the bucket the budget wires (actguard) charge for its
tenant. Before, every such counter was named by the context as sent: shared by every
tenant, and reachable by naming another tenant."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from tracengent import TracengentClient, TracengentOptions

import policyengine as pe
from policyengine.server import ServiceConfig, create_app, hash_secret
from policyengine.server._budgetwire import tenant_fields
from policyengine.server._credentials import Credentials

from .service_harness import serving

POLICY = """
namespace pt
currency USD

role llm: llm:*
role reader: doc:*
agent "acme-bot": llm
agent "globex-bot": llm
agent "solo-bot": llm
agent "alice": reader

budget per-run: llm:run limit 1 USD per day per context.run_id
ratelimit run-rate: llm:call 2 per hour per context.run_id
ratelimit plan-rate: llm:run 2 per hour per context.plan_key
ratelimit tenant-rate: llm:team 2 per hour per tenant
ratelimit doc-rate: doc:read 2 per hour per context.doc
ratelimit doc-tenant: doc:write 2 per hour per tenant
ratelimit doc-agent: doc:list 2 per hour per agent
ratelimit doc-for: doc:share 2 per hour per acting_for
ratelimit bot-agent: llm:ping 2 per hour per agent
"""
#: tracengent client credentials: client id -> (secret, agent, tenant or None).
AGENTS = {"tc-acme": ("s-acme", "acme-bot", "acme"),
          "tc-globex": ("s-globex", "globex-bot", "globex"),
          "tc-solo": ("s-solo", "solo-bot", None)}
#: AuthZEN clients: name -> (key, tenant).
PEPS = {"pep-acme": ("k-acme", "acme"), "pep-globex": ("k-globex", "globex")}
#: actguard API keys: name -> (key, agent, tenant).
API = {"ag-acme": ("a-acme", "acme-bot", "acme"),
       "ag-globex": ("a-globex", "globex-bot", "globex")}


@dataclass
class Live:
    url: str
    engine: pe.Engine


@pytest.fixture(scope="module")
def svc() -> Iterator[Live]:
    creds = Credentials.from_dict({
        "agents": [{"clientId": cid, "secretHash": hash_secret(secret), "agent": agent,
                    **({"tenant": tenant} if tenant else {})}
                   for cid, (secret, agent, tenant) in AGENTS.items()],
        "authzenClients": [{"name": name, "secretHash": hash_secret(key), "tenant": tenant}
                           for name, (key, tenant) in PEPS.items()],
        "apiKeys": [{"name": name, "keyHash": hash_secret(key), "agent": agent,
                     "tenant": tenant} for name, (key, agent, tenant) in API.items()]})
    engine = pe.Engine.from_source(POLICY)
    app = create_app(engine, credentials=creds, config=ServiceConfig(
        access_log=False, prefixes={"actguard": "/ag"}))
    with serving(app) as port:
        yield Live(f"http://127.0.0.1:{port}", engine)


@pytest.fixture(scope="module")
def sdks(svc: Live) -> Iterator[dict[str, TracengentClient]]:
    clients = {cid: TracengentClient(TracengentOptions(
        agent_id=agent, base_url=svc.url, client_id=cid, client_secret=secret,
        flush_interval_ms=50)) for cid, (secret, agent, _) in AGENTS.items()}
    try:
        yield clients
    finally:
        for c in clients.values():
            c.close()


def allowed(client: TracengentClient, permission: str, context: dict[str, Any],
            times: int) -> list[bool]:
    return [client.authorize(permission, context).allowed for _ in range(times)]


def test_two_tenants_agents_with_the_same_context_keep_their_own_rate_limits(
        sdks: dict[str, TracengentClient]) -> None:
    ctx = {"run_id": f"r-{uuid.uuid4().hex[:8]}"}
    assert allowed(sdks["tc-acme"], "llm:call", ctx, 3) == [True, True, False]
    assert allowed(sdks["tc-globex"], "llm:call", ctx, 3) == [True, True, False]
    # an agent without a tenant counts in the empty tenant's partition, its own
    assert allowed(sdks["tc-solo"], "llm:call", ctx, 3) == [True, True, False]


def test_a_sent_tenant_never_spends_another_tenants_rate_limit(
        svc: Live, sdks: dict[str, TracengentClient]) -> None:
    assert allowed(sdks["tc-acme"], "llm:team", {"tenant": "globex"}, 3) == [
        True, True, False]
    # globex's own two calls are untouched by acme's agent naming it
    assert allowed(sdks["tc-globex"], "llm:team", {"tenant": "globex"}, 3) == [
        True, True, False]
    d = sdks["tc-acme"].authorize("llm:team", {"tenant": "globex"})
    assert not d.allowed and "rate limit" in d.reason


def test_a_tracengent_decision_sees_its_own_tenants_budget_only(
        svc: Live, sdks: dict[str, TracengentClient]) -> None:
    """acme's actguard run holds $0.80 on run ``r``: acme's tracengent agent asking
    $0.30 for the same run id is refused (the bucket the actguard wire charged), while
    globex's agent (same run id, any tenant it names) sees its own, untouched dollar."""
    run = f"r-{uuid.uuid4().hex[:8]}"
    r = httpx.post(f"{svc.url}/ag/api/v1/reserve", json={"run_id": run, "cost_limit": 800},
                   headers={"Authorization": f"Bearer {API['ag-acme'][0]}"})
    assert r.status_code == 200, r.text
    held = svc.engine.budgets.get(r.json()["reserve_id"])
    assert {line.subject for line in held.lines} == set(
        tenant_fields(["run_id"], "acme", {"run_id": run}).values())
    ask = {"run_id": run, "amount": "0.30", "currency": "USD", "plan_key": run}
    acme = sdks["tc-acme"].authorize("llm:run", ask)
    assert not acme.allowed and "budget" in acme.reason
    assert sdks["tc-globex"].authorize("llm:run", ask).allowed
    assert sdks["tc-globex"].authorize("llm:run", {**ask, "tenant": "acme"}).allowed
    assert sdks["tc-acme"].authorize("llm:run", {**ask, "amount": "0.20"}).allowed


def _reserve(svc: Live, key: str, **fields: Any) -> int:
    r = httpx.post(f"{svc.url}/ag/api/v1/reserve", json={"cost_limit": 100, **fields},
                   headers={"Authorization": f"Bearer {API[key][0]}"})
    return r.status_code


def test_actguard_runs_of_two_tenants_keep_their_own_rate_limits(svc: Live) -> None:
    """The actguard wire's decision counts in its key's tenant too: a per-plan rate limit
    is each tenant's own (the third run of a plan is refused, 409, in each)."""
    plan = f"p-{uuid.uuid4().hex[:8]}"
    for key in ("ag-acme", "ag-globex"):
        assert [_reserve(svc, key, run_id=uuid.uuid4().hex, plan_key=plan)
                for _ in range(3)] == [200, 200, 409]


def _evaluate(svc: Live, pep: str, action: str, context: dict[str, Any]) -> bool:
    r = httpx.post(f"{svc.url}/access/v1/evaluation", json={
        "subject": {"type": "user", "id": "alice"}, "action": {"name": action},
        "resource": {"type": "doc", "id": "d1"}, "context": context},
        headers={"Authorization": f"Bearer {PEPS[pep][0]}"})
    assert r.status_code == 200, r.text
    decision: bool = r.json()["decision"]
    return decision


def test_authzen_clients_of_two_tenants_keep_their_own_rate_limits(svc: Live) -> None:
    ctx = {"doc": f"d-{uuid.uuid4().hex[:8]}"}
    assert [_evaluate(svc, "pep-acme", "read", ctx) for _ in range(3)] == [
        True, True, False]
    assert [_evaluate(svc, "pep-globex", "read", ctx) for _ in range(3)] == [
        True, True, False]


def test_authzen_a_sent_tenant_never_spends_another_tenants_rate_limit(svc: Live) -> None:
    assert [_evaluate(svc, "pep-acme", "write", {"tenant": "globex"})
            for _ in range(3)] == [True, True, False]
    assert [_evaluate(svc, "pep-globex", "write", {"tenant": "globex"})
            for _ in range(3)] == [True, True, False]


def test_the_batch_route_counts_in_the_clients_tenant(svc: Live) -> None:
    ctx = {"doc": f"d-{uuid.uuid4().hex[:8]}"}
    item = {"action": {"name": "read"}, "context": ctx}
    body = {"subject": {"type": "user", "id": "alice"},
            "resource": {"type": "doc", "id": "d1"}, "evaluations": [item] * 3}
    for pep in ("pep-acme", "pep-globex"):
        r = httpx.post(f"{svc.url}/access/v1/evaluations", json=body,
                       headers={"Authorization": f"Bearer {PEPS[pep][0]}"})
        assert r.status_code == 200, r.text
        assert [e["decision"] for e in r.json()["evaluations"]] == [True, True, False]


def test_credentials_give_an_agent_one_tenant() -> None:
    from policyengine.server import CredentialsError
    h = hash_secret("x")
    with pytest.raises(CredentialsError, match="two tenants"):
        Credentials.from_dict({"agents": [
            {"clientId": "a", "secretHash": h, "agent": "bot", "tenant": "acme"},
            {"clientId": "b", "secretHash": h, "agent": "bot", "tenant": "globex"}]})
    for bad in ("", 5, "a\0b"):
        with pytest.raises(CredentialsError):
            Credentials.from_dict({"authzenClients": [
                {"name": "p", "secretHash": h, "tenant": bad}]})
    creds = Credentials.from_dict({"agents": [
        {"clientId": "a", "secretHash": h, "agent": "bot", "tenant": "acme"},
        {"clientId": "b", "secretHash": h, "agent": "bot", "tenant": "acme"}],
        "authzenClients": [{"name": "p", "secretHash": h}]})
    assert creds.partition_of("bot") == "acme"
    assert creds.partition_of("unknown") == ""
    assert creds.authzen_partition("p") == creds.authzen_partition(None) == ""


def _evaluate_as(svc: Live, pep: str, subject: str, permission: str) -> bool:
    kind, action = permission.split(":")
    r = httpx.post(f"{svc.url}/access/v1/evaluation", json={
        "subject": {"type": "user", "id": subject}, "action": {"name": action},
        "resource": {"type": kind, "id": "x"}},
        headers={"Authorization": f"Bearer {PEPS[pep][0]}"})
    assert r.status_code == 200, r.text
    decision: bool = r.json()["decision"]
    return decision


@pytest.mark.parametrize("permission", ["doc:list", "doc:share"])
def test_authzen_subjects_per_agent_are_each_clients_tenants(
        svc: Live, permission: str) -> None:
    """Two PEPs of two tenants evaluating the same subject id keep their own ``per
    agent`` and ``per acting_for`` counters (the subject is the PEP's choice, so it is
    counted in the client's tenant: ``tenant:acme/agent:alice``). Before, one counter
    was shared: globex's first call was refused after acme's two."""
    for pep in ("pep-acme", "pep-globex"):
        assert [_evaluate_as(svc, pep, "alice", permission) for _ in range(3)] == [
            True, True, False]
    r = httpx.post(f"{svc.url}/access/v1/evaluation", json={
        "subject": {"type": "user", "id": "alice"}, "action": {"name": permission[4:]},
        "resource": {"type": "doc", "id": "x"}},
        headers={"Authorization": f"Bearer {PEPS['pep-acme'][0]}"})
    assert r.json()["context"]["rateLimit"]["subject"] == "tenant:acme/agent:alice"


def test_an_authzen_subject_never_spends_a_credential_agents_counter(
        svc: Live, sdks: dict[str, TracengentClient]) -> None:
    """A PEP naming a credentials agent as its subject counts in its own tenant: the
    tracengent agent ``acme-bot`` keeps its two calls per hour however often globex's
    (or acme's) PEP evaluates ``acme-bot``."""
    for pep in ("pep-globex", "pep-acme"):
        assert [_evaluate_as(svc, pep, "acme-bot", "llm:ping") for _ in range(3)] == [
            True, True, False]
    assert allowed(sdks["tc-acme"], "llm:ping", {}, 3) == [True, True, False]
