"""A budget store (Redis, PostgreSQL) cut mid-run, and a revocation store that fails:
every wire answers the fault's code and a fixed message, never the driver's text (the
store's host and port, ``Connection refused``), which the engine keeps in the decision
log and the service logs. Driven through the real SDKs (runcycles, tracengent, actguard,
agent-ledger) and an AuthZEN PEP's request."""

from __future__ import annotations

import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import actguard
import httpx
import pytest
from actguard.exceptions import BudgetExceededError
from agent_ledger_sdk import AgentLedgerClient, AgentLedgerError
from conftest import POSTGRES_URL, REDIS_URL, Relay, drop_namespace, require_service, unique_name
from runcycles import CyclesClient, CyclesConfig
from tracengent import TracengentClient, TracengentOptions

import policyengine as pe
from policyengine.cli import main as cli

from .budget_harness import CYCLES_KEY, PRICES, TRACENGENT, Live, live
from .stores_down import DownRevocations

BUDGETS = ("budget day: llm:* limit 5 USD per day per agent\n"
           "budget tokens: llm.completion:* limit 100000 tokens per day per tenant\n"
           + PRICES)
FIXED = "store_unavailable: a budget or rate-limit store is unavailable; retry"


@pytest.fixture(params=["redis", "postgres"])
def cut_store(request: pytest.FixtureRequest) -> Iterator[tuple[str, Relay]]:
    """A budget store URL reaching its server through a relay (cut by the test)."""
    kind = request.param
    require_service(kind)
    name = unique_name("faulttext")
    if kind == "redis":
        relay = Relay(REDIS_URL)
        url = relay.url(REDIS_URL) + f"?prefix={name}:&timeout=2"
        assert cli(["store", "init", url]) == 0
    else:
        relay = Relay(POSTGRES_URL)
        url = relay.url(POSTGRES_URL) + f"?schema={name}&connect_timeout=2"
    try:
        yield url, relay
    finally:
        relay.cut()
        drop_namespace(kind, name)


def _clean(text: str, relay: Relay) -> None:
    assert str(relay.port) not in text and "127.0.0.1" not in text, text
    assert "refused" not in text.lower() and "connect" not in text.lower(), text


def test_a_cut_budget_store_is_told_by_code_on_every_wire(
        cut_store: tuple[str, Relay], tmp_path: Path) -> None:
    url, relay = cut_store
    os.environ.setdefault("CYCLES_JOURNAL_DIR", str(tmp_path))
    with live(BUDGETS, store=url) as svc:
        ledger = AgentLedgerClient("ledger-key", base_url=f"{svc.url}/ledger")
        session = ledger.start_session("ledger-agent")
        relay.cut()

        with CyclesClient(CyclesConfig(base_url=f"{svc.url}/cycles", api_key=CYCLES_KEY,
                                       tenant="acme", retry_enabled=False,
                                       retry_flush_timeout=0)) as cycles:
            created = cycles.create_reservation({
                "idempotency_key": "k1", "subject": {"tenant": "acme", "agent": "ag-agent"},
                "action": {"kind": "llm.completion", "name": "gpt-4o"},
                "estimate": {"unit": "TOKENS", "amount": 10}})
        assert created.status == 503
        read = created.get_error_response()
        assert read is not None and read.message == FIXED
        assert read.details == {"code": "store_unavailable"}
        _clean(str(created.body), relay)

        with TracengentClient(TracengentOptions(
                agent_id="ag-agent", base_url=svc.url, client_id=TRACENGENT[0],
                client_secret=TRACENGENT[1])) as tc:
            d = tc.authorize("llm:call", {"amount": Decimal("0.10"), "currency": "USD"})
        assert not d.allowed and d.reason == FIXED
        _clean(d.reason, relay)

        ag = actguard.Client(api_key="ag-key", gateway_url=f"{svc.url}/ag",
                             budget_max_retries=0, budget_timeout_s=60)
        try:
            with pytest.raises(BudgetExceededError) as err, ag.run(run_id="r1"), \
                    ag.budget_guard(cost_limit=100):
                pytest.fail("no run without its budget")
        finally:
            ag.close()
        _clean(repr(err.value.details) + str(err.value), relay)

        with pytest.raises(AgentLedgerError) as failed:
            ledger.log_llm_call(session, {"stepIndex": 0, "provider": "openai",
                                          "model": "gpt-4o", "prompt": "p", "response": "r",
                                          "tokensIn": 10, "tokensOut": 1, "latencyMs": 1})
        assert str(failed.value) == FIXED

        pep = httpx.post(f"{svc.url}/access/v1/evaluation", json={
            "subject": {"type": "agent", "id": "ag-agent"}, "action": {"name": "call"},
            "resource": {"type": "llm", "id": "1"},
            "context": {"amount": 1, "currency": "USD"}})
        assert pep.json()["decision"] is False
        assert pep.json()["context"]["reason_admin"]["en"] == FIXED
        _clean(pep.text, relay)


def test_a_failing_revocation_store_is_told_by_code(tmp_path: Path) -> None:
    with live("") as svc:
        grant = pe.tokens.mint(svc.engine.keys, issuer="https://auth.example",
                               acting_for="besar", agent="ag-agent", permissions=["llm:*"],
                               ttl=60)
        svc.engine.revocations = DownRevocations()
        with TracengentClient(TracengentOptions(
                agent_id="ag-agent", base_url=svc.url, client_id=TRACENGENT[0],
                client_secret=TRACENGENT[1])) as tc:
            d = tc.begin_delegated_task(grant).authorize("llm:call")
        assert not d.allowed
        assert d.reason == ("revocation_unavailable: the revocation store is unavailable; "
                            "retry")
        raw = _raw_authorize(svc, grant)
        assert "10.0.0.7" not in raw.text and "refused" not in raw.text.lower()
        assert {x["code"] for x in raw.json()["diagnostics"]} >= {"revocation_unavailable"}


def _raw_authorize(svc: Live, grant: str) -> httpx.Response:
    return httpx.post(f"{svc.url}/v1/authorize", json={"permission": "llm:call"},
                      headers={"Authorization": f"Bearer {grant}"})
