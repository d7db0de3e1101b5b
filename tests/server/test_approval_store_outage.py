"""The approval routes while the approval store is down: 503 ``approval_store_error``
(the agent's poll and the admin retry), never a 404 that says the approval is gone nor a
409 that blames the request, never a 500, and never the backend's address in a body."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import unreachable_postgres_approvals

import policyengine as pe
from policyengine.decide import RedisApprovalStore
from policyengine.server import Credentials, create_app

from .service_harness import ADMIN, SECRETS

POLICY = """namespace t
role r: payments:*
agent "travel-agent": r
approval refunds: payments:refund
tool refund: mcp "refund" -> payments:refund
"""
APPROVAL = "apr_" + "0" * 32
ADMIN_AUTH = {"Authorization": "Basic " + base64.b64encode(
    f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()}


class _FailingStore:
    """A custom approval store whose server is gone: it raises what a client library
    raises, not an ApprovalError."""

    def _down(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("connection to 10.9.8.7:6543 reset by peer")

    add = get = list = approve = reject = consume = _down


@pytest.fixture
def down_store(kind: str) -> Iterator[Any]:
    """An approval store whose server cannot be reached (nothing listens on port 1)."""
    if kind == "redis":
        yield RedisApprovalStore("redis://127.0.0.1:1/0", timeout=1)
    elif kind == "postgres":  # opened on the server, which then goes away
        with unreachable_postgres_approvals() as store:
            yield store
    else:
        yield _FailingStore()


async def _answers(app: Any) -> dict[str, httpx.Response]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        token = await c.post("/v1/oauth/token", data={
            "grant_type": "client_credentials", "client_id": "key_travel",
            "client_secret": SECRETS["key_travel"]})
        assert token.status_code == 200
        bearer = {"Authorization": "Bearer " + token.json()["access_token"]}
        return {
            "agent_get": await c.get(f"/v1/approvals/{APPROVAL}", headers=bearer),
            "list": await c.get("/v1/admin/approvals", headers=ADMIN_AUTH),
            "list_pending": await c.get("/v1/admin/approvals?status=pending",
                                        headers=ADMIN_AUTH),
            "approve": await c.post(f"/v1/admin/approvals/{APPROVAL}/approve",
                                    headers=ADMIN_AUTH),
            "reject": await c.post(f"/v1/admin/approvals/{APPROVAL}/reject",
                                   json={"note": "no"}, headers=ADMIN_AUTH),
            "authorize": await c.post("/v1/authorize", headers=bearer, json={
                "permission": "payments:refund", "context": {"order": "o1"}}),
            "tool_with_approval": await c.post("/v1/tool-authorize", headers=bearer, json={
                "transport": "mcp", "toolName": "refund", "body": {"order": "o1"},
                "approvalId": APPROVAL}),
        }


@pytest.mark.parametrize("kind", ["redis", "postgres", "custom"])
def test_an_approval_store_outage_is_503_on_every_approval_route(
        kind: str, down_store: Any, credentials: Credentials) -> None:
    engine = pe.Engine.from_source(POLICY, name="t.policy", approvals=down_store)
    answers = asyncio.run(_answers(create_app(engine, credentials=credentials)))
    for route in ("agent_get", "list", "list_pending", "approve", "reject"):
        r = answers[route]
        assert (route, r.status_code) == (route, 503)
        assert r.json() == {"allowed": False, "status": "denied", "error": {
            "code": "approval_store_error",
            "message": "the approval store is unavailable; retry"}}
    for route in ("authorize", "tool_with_approval"):  # a decision (fail closed)
        decision = answers[route]
        assert decision.status_code == 200
        assert (decision.json()["status"], decision.json()["reasonCode"]) == (
            "denied", "approval_store_error")
        # told as the engine wrote it (the step that failed, no store text), not by the
        # routes' fixed message: _faults keeps approval_store_error out of decisions
        assert decision.json()["reason"].startswith("cannot record the approval: ")
    assert [d["message"].split(" (")[0] for d in
            answers["tool_with_approval"].json()["diagnostics"]
            if d["effect"] == "pending_approval"] == [
        "approval not honoured: the approval store failed"]
    for r in answers.values():  # no backend address, nor the driver's text
        assert "127.0.0.1" not in r.text and "10.9.8.7" not in r.text
        assert "refused" not in r.text.lower() and "reset by peer" not in r.text


def test_a_working_store_still_answers_404_and_409(credentials: Credentials) -> None:
    """The outage mapping leaves the store's refusals alone: an unknown id is 404 on both
    sides, an approval already decided is 409 ``approval_final``."""
    engine = pe.Engine.from_source(POLICY, name="t.policy")
    answers = asyncio.run(_answers(create_app(engine, credentials=credentials)))
    for route in ("agent_get", "approve", "reject"):
        assert answers[route].status_code == 404
        assert answers[route].json()["error"]["code"] == "unknown_approval"
    assert answers["list"].status_code == 200
    pending = answers["authorize"].json()
    assert pending["status"] == "pending_approval"
    engine.approvals.approve(pending["approvalId"])

    async def again() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as c:
            return await c.post(f"/v1/admin/approvals/{pending['approvalId']}/reject",
                                headers=ADMIN_AUTH)

    app = create_app(engine, credentials=credentials)
    r = asyncio.run(again())
    assert (r.status_code, r.json()["error"]["code"]) == (409, "approval_final")
