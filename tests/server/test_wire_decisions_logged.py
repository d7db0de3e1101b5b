"""What the service answers is what its decision log records, and a call it refuses
takes nothing: a redaction the SDK cannot apply is refused by the engine's own run
(before any rate-limit call or approval), and a budget wire that sets a sub-cent
refusal aside says so in the log."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import httpx
from agent_ledger_sdk import AgentLedgerClient, run_session

import policyengine as pe
from policyengine.audit import CallbackSink, DecisionLog
from policyengine.server import (
    AgentCredential,
    Credentials,
    ServiceConfig,
    create_app,
    hash_secret,
)

from .budget_harness import POLICY, PRICES, Live, credentials
from .service_harness import serving

TOOLS = """namespace t
role r: payments:*
agent "travel-agent": r
ratelimit once: payments:pay 1 per hour
approval review: payments:refund
tool pay: mcp "pay" -> payments:pay { redact $.card hash }
tool refund: mcp "refund" -> payments:refund { redact $.card hash }
"""
_HASH = hash_secret("s")


def tool_service() -> tuple[Any, pe.Engine, list[dict[str, Any]]]:
    creds = Credentials((AgentCredential("key_travel", _HASH, "travel-agent",
                                         ("payments:*",)),), {})
    records: list[dict[str, Any]] = []
    engine = pe.Engine.from_source(TOOLS, decision_log=DecisionLog(
        CallbackSink(records.append)), hmac_key=b"k" * 32)
    return create_app(engine, credentials=creds), engine, records


def ask(app: Any, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as c:
            tok = (await c.post("/v1/oauth/token", data={
                "grant_type": "client_credentials", "client_id": "key_travel",
                "client_secret": "s"})).json()
            h = {"Authorization": "Bearer " + tok["access_token"]}
            return [(await c.post("/v1/tool-authorize", headers=h, json=body)).json()
                    for body in calls]
    return asyncio.run(go())


def logged(engine: pe.Engine, records: list[dict[str, Any]], kind: str
           ) -> dict[str, dict[str, Any]]:
    assert engine.decision_log is not None and engine.decision_log.flush(10)
    return {r["decision_id"]: r for r in records if r["kind"] == kind}


def test_a_redaction_the_sdk_cannot_apply_is_refused_before_the_rate_limit() -> None:
    app, engine, records = tool_service()
    card = {"transport": "mcp", "toolName": "pay", "body": {"card": "4111", "n": 1}}
    plain = {"transport": "mcp", "toolName": "pay", "body": {"n": 2}}
    out = ask(app, [card, card, plain, plain])
    assert [(o["status"], o["reasonCode"]) for o in out] == [
        ("denied", "redaction_unsupported"), ("denied", "redaction_unsupported"),
        ("allowed", "permitted"), ("denied", "rate_limited")]  # the refused took none
    assert out[2]["redactions"] == []
    decided = logged(engine, records, "tool_authorize")
    for o in out:  # the log records what the client was told, by decision id
        result = decided[o["decisionId"]]["result"]
        assert (result["status"], result["reason_code"]) == (o["status"], o["reasonCode"])
    engine.close()


def test_a_redaction_the_sdk_cannot_apply_asks_for_no_approval() -> None:
    app, engine, records = tool_service()
    (out,) = ask(app, [{"transport": "mcp", "toolName": "refund",
                        "body": {"card": "4111"}}])
    assert (out["status"], out["reasonCode"]) == ("denied", "redaction_unsupported")
    assert not out.get("approvalId") and engine.approvals.list() == []
    decided = logged(engine, records, "tool_authorize")
    assert decided[out["decisionId"]]["result"]["reason_code"] == "redaction_unsupported"
    assert not [r for r in records if r["kind"].startswith("approval.")]
    engine.close()


def test_redactions_the_sdk_can_apply_are_sent_as_concrete_paths() -> None:
    creds = Credentials((AgentCredential("key_travel", _HASH, "travel-agent",
                                         ("payments:*",)),), {})
    engine = pe.Engine.from_source(TOOLS.replace("hash", "mask"), hmac_key=b"k" * 32)
    (out,) = ask(create_app(engine, credentials=creds), [
        {"transport": "mcp", "toolName": "pay", "body": {"card": "4111", "n": 1}}])
    assert (out["status"], out["redactions"]) == (
        "allowed", [{"field": "$.card", "strategy": "mask"}])


def test_a_sub_cent_refusal_set_aside_by_the_wire_is_in_the_log() -> None:
    # $0.005 left; a gpt-4o-mini call of 1000 + 1000 tokens costs $0.00075: asked of
    # the policy rounded up to $0.01 (refused), then charged exactly by the ledger.
    records: list[dict[str, Any]] = []
    engine = pe.Engine.from_source(
        POLICY + PRICES + "budget daily: llm:* limit 500000 USD_MICROCENTS per day "
        "per agent\n", decision_log=DecisionLog(CallbackSink(records.append)))
    app = create_app(engine, credentials=credentials(), config=ServiceConfig(
        access_log=False, prefixes={"agent-ledger": "/ledger"}))
    with serving(app) as port, AgentLedgerClient(
            "ledger-key", base_url=f"{Live(app, engine, port).url}/ledger") as lg, \
            run_session(lg, "ledger-agent") as (sid, steps):
        lg.log_llm_call(sid, {"stepIndex": steps.next(), "provider": "openai",
                              "model": "gpt-4o-mini", "prompt": "p", "response": "r",
                              "tokensIn": 1000, "tokensOut": 1000, "latencyMs": 1})
    (b,) = engine.budgets.balances("ledger-agent")
    assert b.spent == Decimal(75_000)  # charged exactly
    denied = logged(engine, records, "authorize")
    (d,) = denied.values()
    assert d["result"]["reason_code"] == "budget_exceeded"
    kinds = [r["kind"] for r in records]
    at = kinds.index("authorize")
    override = records[at + 1]
    assert override["kind"] == "authorize.override"
    assert override["overrides"] == d["decision_id"]
    assert override["reason_code"] == "sub_cent_amount"
    assert override["operation"] == {"amount": "0.00075", "asked": "0.01", "unit": "USD"}
    assert kinds[at + 2] == "budget.record" and records[at + 2]["status"] == "ok"
    engine.close()
