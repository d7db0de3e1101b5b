"""The real, unmodified tracengent 0.1.0 SDK against the live service."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from tracengent import (
    AgentEvent,
    LlmCallResult,
    NotAuthorizedException,
    TracengentClient,
    TracengentOptions,
)
from tracengent.delegation import DelegationException
from tracengent.gateway import governed_client
from tracengent.tool_governance import ToolDeniedException, ToolPendingApprovalException

import policyengine as pe

from .service_harness import ADMIN, INGEST_KEY, SECRETS, Running, Upstream, free_port
from .stores_down import DownAfter, DownRevocations

#: What the revocation store's client raises once its server is gone.
RESET = "connection reset by peer"


def sdk(service: Running, client_id: str = "key_travel", secret: str | None = None,
        agent_id: str = "travel-agent") -> TracengentClient:
    return TracengentClient(TracengentOptions(
        agent_id=agent_id, base_url=service.url, client_id=client_id,
        client_secret=SECRETS[client_id] if secret is None else secret,
        flush_interval_ms=50))


@pytest.fixture
def client(service: Running) -> Iterator[TracengentClient]:
    c = sdk(service)
    try:
        yield c
    finally:
        c.close()


def admin_auth() -> dict[str, str]:
    raw = base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def payload(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # type: ignore[no-any-return]


# ---------------------------------------------------------------- token
def test_token_is_a_jwt_carrying_the_agents_permissions(client: TracengentClient) -> None:
    token = client.token_provider.get_token()
    assert token is not None
    claims = payload(token)
    assert claims["sub"] == "travel-agent"
    assert claims["permissions"] == ["flights:*", "payments:refund", "llm:*"]
    assert client.has_permission("flights:book")
    assert client.has_permission("payments:refund")
    assert not client.has_permission("admin:delete")


def test_wrong_secret_is_401_and_the_sdk_denies(service: Running) -> None:
    r = httpx.post(f"{service.url}/v1/oauth/token", data={
        "grant_type": "client_credentials", "client_id": "key_travel", "client_secret": "no"})
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_client"
    r = httpx.post(f"{service.url}/v1/oauth/token", data={
        "grant_type": "client_credentials", "client_id": "nobody", "client_secret": "x"})
    assert r.status_code == 401
    with sdk(service, secret="wrong") as c:
        d = c.authorize("flights:book", {"country": "FR"})
        assert not d.allowed
        assert "agent disabled" in d.reason


def test_forged_or_foreign_tokens_are_401(service: Running) -> None:
    good = httpx.post(f"{service.url}/v1/oauth/token", data={
        "grant_type": "client_credentials", "client_id": "key_hotel",
        "client_secret": SECRETS["key_hotel"]}).json()["access_token"]
    head, body, sig = good.split(".")
    claims = payload(good)
    claims["sub"] = "travel-agent"
    forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    other = pe.KeySet.generate()
    foreign = pe.tokens.mint(other, issuer="x", acting_for="a", agent="travel-agent",
                             permissions=["*"], ttl=60)
    unsigned = base64.urlsafe_b64encode(b'{"alg":"none","typ":"at+jwt"}').rstrip(b"=")
    for bad in (f"{head}.{forged_body}.{sig}", foreign, f"{unsigned.decode()}.{body}.",
                "garbage", "a.b.c"):
        r = httpx.post(f"{service.url}/v1/authorize", json={"permission": "flights:book"},
                       headers={"Authorization": f"Bearer {bad}"})
        if bad == foreign:  # a delegation token: verified by the engine, denied
            assert r.status_code == 200 and r.json()["allowed"] is False
            assert r.json()["reasonCode"] == "invalid_token"
        else:
            assert r.status_code == 401, bad
            assert r.json()["allowed"] is False


# ---------------------------------------------------------------- authorize
def test_authorize_allowed_and_denied(client: TracengentClient) -> None:
    d = client.authorize("flights:book", {"country": "FR"})
    assert d.allowed and d.status == "allowed" and d.decision_id
    d = client.authorize("flights:book", {"country": "KP"})
    assert not d.allowed and d.status == "denied"
    assert "sanctioned" in d.reason
    with pytest.raises(NotAuthorizedException):
        client.ensure_authorized("admin:delete")


def test_money_stays_exact_and_obligations_are_numbers(client: TracengentClient) -> None:
    # 280.10 USD = 257.692 EUR, under both thresholds; the SDK sends Decimal as a float.
    d = client.authorize("payments:refund", {"amount": Decimal("280.10"), "currency": "USD"})
    assert d.allowed, d.reason
    assert d.obligations is not None
    assert d.obligations.max_amount == 500 and type(d.obligations.max_amount) is int
    assert d.obligations.require_approval_over == 300
    assert d.obligations.currency == "EUR"
    # 543.48 USD = 500.0016 EUR: over the cap only when the fraction is read exactly.
    d = client.authorize("payments:refund", {"amount": Decimal("543.48"), "currency": "USD"})
    assert not d.allowed and "refund-cap" in d.reason


def test_pending_then_approved_via_the_admin_route(service: Running,
                                                   client: TracengentClient) -> None:
    result: dict[str, Any] = {}

    def agent() -> None:
        try:
            result["obligations"] = client.ensure_authorized(
                "payments:refund", {"amount": 400, "currency": "EUR"})
        except Exception as exc:  # surfaced below
            result["error"] = exc

    t = threading.Thread(target=agent)
    t.start()
    pending = _wait_pending(service, "payments:refund")
    r = httpx.post(f"{service.url}/v1/admin/approvals/{pending}/approve",
                   json={"note": "ok by ops"}, headers=admin_auth())
    assert r.status_code == 200 and r.json()["status"] == "approved"
    t.join(15)
    assert "error" not in result, result
    # approved again: final, 409
    r = httpx.post(f"{service.url}/v1/admin/approvals/{pending}/reject", headers=admin_auth())
    assert r.status_code == 409


def test_pending_then_rejected_raises(service: Running, client: TracengentClient) -> None:
    result: dict[str, Any] = {}

    def agent() -> None:
        try:
            client.ensure_authorized("payments:refund", {"amount": 450, "currency": "EUR"})
            result["allowed"] = True
        except NotAuthorizedException as exc:
            result["denied"] = str(exc)

    t = threading.Thread(target=agent)
    t.start()
    pending = _wait_pending(service, "payments:refund")
    r = httpx.post(f"{service.url}/v1/admin/approvals/{pending}/reject", headers=admin_auth())
    assert r.status_code == 200 and r.json()["status"] == "denied"
    t.join(15)
    assert "denied" in result and "allowed" not in result


def _wait_pending(service: Running, permission: str) -> str:
    import time
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = httpx.get(f"{service.url}/v1/admin/approvals?status=pending", headers=admin_auth())
        assert r.status_code == 200
        items = [i for i in r.json()["items"] if i["permission"] == permission]
        if items:
            return str(items[-1]["approvalId"])
        time.sleep(0.05)
    raise AssertionError("no pending approval appeared")


def test_admin_route_needs_its_own_credential(service: Running,
                                              client: TracengentClient) -> None:
    token = client.token_provider.get_token()
    for headers in ({}, {"Authorization": f"Bearer {token}"},
                    {"Authorization": "Basic " + base64.b64encode(b"ops:wrong").decode()}):
        r = httpx.get(f"{service.url}/v1/admin/approvals", headers=headers)
        assert r.status_code == 401


def test_an_agent_cannot_read_another_agents_approval(service: Running,
                                                      client: TracengentClient) -> None:
    d = client.authorize("payments:refund", {"amount": 350, "currency": "EUR"})
    assert d.status == "pending_approval" and d.approval_id
    mine = httpx.get(f"{service.url}/v1/approvals/{d.approval_id}",
                     headers={"Authorization": f"Bearer {client.token_provider.get_token()}"})
    assert mine.status_code == 200 and mine.json()["status"] == "pending"
    with sdk(service, "key_hotel", agent_id="hotel-agent") as other:
        theirs = httpx.get(f"{service.url}/v1/approvals/{d.approval_id}", headers={
            "Authorization": f"Bearer {other.token_provider.get_token()}"})
    assert theirs.status_code == 404


def test_a_used_approval_ends_the_sdks_wait_and_reads_used_to_the_admin(
        service: Running, client: TracengentClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # A one-use approval, granted and then used (a tool call that presents its id): the
    # agent's poll reads it terminal ("expired": the SDK's word for an approval that can
    # no longer be used), never "pending" the SDK would poll to its deadline; the admin
    # sees it "used", with no uses left.
    body = {"amount": 420, "currency": "EUR", "iban": "DE89 3704"}
    g = client.tools.authorize_function("transfer_funds", body)
    approval = g.decision.approval_id
    assert g.decision.status == "pending_approval" and approval
    r = httpx.post(f"{service.url}/v1/admin/approvals/{approval}/approve",
                   headers=admin_auth())
    assert r.status_code == 200 and r.json()["status"] == "approved"
    assert r.json()["usesLeft"] == 1
    bearer = {"Authorization": f"Bearer {client.token_provider.get_token()}"}
    used = httpx.post(f"{service.url}/v1/tool-authorize", headers=bearer, json={
        "transport": "function", "functionName": "transfer_funds", "body": body,
        "approvalId": approval})
    assert used.json()["allowed"] is True
    assert service.app.engine.approvals.get(approval).status == "used"
    poll = httpx.get(f"{service.url}/v1/approvals/{approval}", headers=bearer)
    assert poll.status_code == 200 and poll.json()["status"] == "expired"
    import tracengent.client
    monkeypatch.setattr(tracengent.client, "_APPROVAL_POLL_SECONDS", 0.02)
    monkeypatch.setattr(tracengent.client, "_APPROVAL_DEADLINE_SECONDS", 3.0)
    d = client.wait_for_approval("payments:refund", approval)
    assert not d.allowed and d.reason == "approval timed out"  # not "approval wait ..."
    listed = httpx.get(f"{service.url}/v1/admin/approvals?status=used", headers=admin_auth())
    mine = [i for i in listed.json()["items"] if i["approvalId"] == approval]
    assert [(i["status"], i["usesLeft"]) for i in mine] == [("used", 0)]
    everything = httpx.get(f"{service.url}/v1/admin/approvals", headers=admin_auth()).json()
    assert [i["status"] for i in everything["items"] if i["approvalId"] == approval] == [
        "used"]
    pending = httpx.get(f"{service.url}/v1/admin/approvals?status=pending",
                        headers=admin_auth()).json()
    assert approval not in [i["approvalId"] for i in pending["items"]]
    again = httpx.post(f"{service.url}/v1/admin/approvals/{approval}/approve",
                       headers=admin_auth())
    assert again.status_code == 409 and again.json()["error"]["code"] == "approval_final"
    bad = httpx.get(f"{service.url}/v1/admin/approvals?status=spent", headers=admin_auth())
    assert bad.status_code == 400


# ---------------------------------------------------------------- tools
def test_governed_client_redacts_and_blocks(client: TracengentClient,
                                            upstream: Upstream) -> None:
    base = f"http://127.0.0.1:{upstream.port}"
    with governed_client(client) as http:
        r = http.post(f"{base}/v1/refunds", json={
            "amount": "120", "currency": "EUR", "card": "4242424242424242", "cvv": "123",
            "note": "keep"})
        assert r.status_code == 200
        assert upstream.received == [("POST", "/v1/refunds", {
            "amount": "120", "currency": "EUR", "card": "***REDACTED***", "note": "keep"})]
        with pytest.raises(ToolDeniedException) as denied:
            http.post(f"{base}/v1/accounts/acct_1", json={"x": 1})
        assert denied.value.outcome == "route_deny"
        with pytest.raises(ToolDeniedException):  # over the refund cap
            http.post(f"{base}/v1/refunds", json={"amount": "900", "currency": "EUR"})
        with pytest.raises(ToolPendingApprovalException):
            http.post(f"{base}/v1/refunds", json={"amount": "350", "currency": "EUR"})
        with pytest.raises(ToolDeniedException):  # a path trick
            http.post(f"{base}/v1/refunds%2F..%2Faccounts", json={"amount": "1",
                                                                  "currency": "EUR"})
    assert len(upstream.received) == 1  # nothing denied ever arrived


def test_a_fail_open_client_never_sends_a_body_holding_nan_or_infinity(
        service: Running, upstream: Upstream) -> None:
    """tracengent's governed client with ``tool_governance_fail_open=True`` takes any
    non-2xx answer of ``/v1/tool-authorize`` for "governance unreachable" and sends the
    call unchecked, and it writes ``float("nan")`` as ``NaN`` (``json.dumps``). A 400 for
    that JSON was a bypass: the service answers 200 with the engine's refusal of the body
    text (``ambiguous_body``), so the SDK raises and the upstream never sees the call."""
    base = f"http://127.0.0.1:{upstream.port}"
    with TracengentClient(TracengentOptions(
            agent_id="travel-agent", base_url=service.url, client_id="key_travel",
            client_secret=SECRETS["key_travel"], flush_interval_ms=50,
            tool_governance_fail_open=True)) as c, governed_client(c) as http:
        ok = http.post(f"{base}/v1/refunds", json={"amount": "120", "currency": "EUR"})
        assert ok.status_code == 200 and len(upstream.received) == 1  # the route is open
        for bad in (float("nan"), float("inf"), -float("inf")):
            for body in ({"amount": "120", "currency": "EUR", "note": {"n": [bad]}},
                         {"amount": bad, "currency": "EUR"}):
                with pytest.raises(ToolDeniedException) as denied:
                    http.post(f"{base}/v1/refunds", json=body)
                assert denied.value.outcome == "invalid_request", body
                assert "ambiguous" in denied.value.reason, denied.value.reason
        # the MCP and function gates (which fail closed on a 400) get the same denial
        g = c.tools.authorize_mcp("search_flights", {"from": "LIS", "n": float("nan")})
        assert not g.allowed and g.decision.outcome == "invalid_request"
        g = c.tools.authorize_function("transfer_funds", {"amount": float("inf"),
                                                          "currency": "EUR"})
        assert not g.allowed and g.decision.outcome == "invalid_request"
    assert len(upstream.received) == 1  # nothing holding NaN or Infinity arrived


@pytest.mark.parametrize("depth", [70, 500])
def test_a_fail_open_client_never_sends_a_denied_call_whose_body_nests_deep(
        service: Running, upstream: Upstream, depth: int) -> None:
    """A body nested deeper than the service's 64 (a tool's arguments, which a prompt
    can shape) was a 400 ``too_deep``, which the fail-open client takes for "governance
    unreachable": a call denied in process (a denied route, an amount over the cap) was
    sent unchecked. The service hands such a body to the engine as its text, so the
    call gets the engine's decision and the SDK raises."""
    base = f"http://127.0.0.1:{upstream.port}"
    deep: object = 1
    for _ in range(depth):  # 500: past what the service once handed on (a 400 again)
        deep = [deep]
    with TracengentClient(TracengentOptions(
            agent_id="travel-agent", base_url=service.url, client_id="key_travel",
            client_secret=SECRETS["key_travel"], flush_interval_ms=50,
            tool_governance_fail_open=True)) as c, governed_client(c) as http:
        before = len(upstream.received)
        with pytest.raises(ToolDeniedException) as denied:
            http.post(f"{base}/v1/accounts/acct_1", json={"x": deep})
        # 500 deep may be past what the engine's stack reads on the service's thread:
        # then it is refused as ambiguous before the route is looked at; denied either way
        assert denied.value.outcome in (("route_deny",) if depth == 70
                                        else ("route_deny", "invalid_request"))
        with pytest.raises(ToolDeniedException):  # over the refund cap
            http.post(f"{base}/v1/refunds", json={"amount": "900", "currency": "EUR",
                                                   "note": deep})
        g = c.tools.authorize_function("transfer_funds", {"amount": "1", "currency": "EUR",
                                                          "note": deep})
        assert g.decision is not None  # a decision, not a failure the client skips
        if depth == 70:
            assert g.decision.outcome != "invalid_request"
    assert len(upstream.received) == before  # nothing denied arrived


def test_another_port_of_the_same_host_is_not_the_authorized_tool(
        client: TracengentClient) -> None:
    """The SDK sends the host without its port; the service takes the port from the Host
    header, so a port the policy does not name is no route (it matched before)."""
    other = Upstream(free_port())
    try:
        with governed_client(client) as http, pytest.raises(ToolDeniedException):
            http.post(f"http://127.0.0.1:{other.port}/v1/refunds",
                      json={"amount": "120", "currency": "EUR"})
        assert other.received == []
    finally:
        other.close()


def test_mcp_and_function_guards(client: TracengentClient) -> None:
    seen: list[Any] = []
    out = client.tools.guard_mcp("search_flights", {"from": "LIS", "passport": "P123"},
                                 lambda args: seen.append(args) or "ok")
    assert out == "ok" and seen == [{"from": "LIS", "passport": "***REDACTED***"}]
    with pytest.raises(ToolDeniedException):
        client.tools.guard_mcp("delete_everything", {}, lambda args: seen.append(args))
    g = client.tools.authorize_function("transfer_funds", {
        "amount": "12.50", "currency": "EUR", "iban": "DE89 3704"})
    assert g.allowed and g.arguments["iban"] == "***REDACTED***"
    g = client.tools.authorize_function("transfer_funds", {"amount": "9000",
                                                           "currency": "EUR"})
    assert not g.allowed
    assert len(seen) == 1


def test_a_redaction_the_client_cannot_apply_denies(client: TracengentClient) -> None:
    g = client.tools.authorize_mcp("crm_lookup", {"email": "a@example.com"})
    assert not g.allowed
    assert "cannot apply" in g.decision.reason
    g = client.tools.authorize_mcp("crm_lookup", {"name": "no email here"})
    assert g.allowed  # nothing to hash: nothing to express


# ---------------------------------------------------------------- delegation
def test_delegated_session_and_attenuation(service: Running, client: TracengentClient) -> None:
    root = pe.tokens.mint(service.app.engine.keys, issuer="https://auth.example",
                          acting_for="besar", agent="travel-agent",
                          permissions=["flights:*"], max_amount=("300", "EUR"), ttl=600)
    session = client.begin_delegated_task(root)
    assert session.is_delegated and session.acting_for == "besar"
    d = session.authorize("flights:book", {"country": "FR"})
    assert d.allowed and d.acting_for == "besar" and d.chain == ["besar", "travel-agent"]
    d = session.authorize("payments:refund", {"amount": 10, "currency": "EUR"})
    assert not d.allowed  # the role allows it, the grant does not
    child = session.attenuate_for_call("hotel-agent", ["flights:search"], max_amount=100,
                                       expires_in_seconds=120)
    assert child.chain == ["besar", "travel-agent", "hotel-agent"]
    d = child.authorize("flights:search", {"country": "FR"})
    assert d.allowed and d.chain == ["besar", "travel-agent", "hotel-agent"]
    d = child.authorize("flights:book", {"country": "FR"})
    assert not d.allowed
    for widen in (lambda: session.attenuate_for_call("hotel-agent", ["payments:refund"]),
                  lambda: session.attenuate_for_call("hotel-agent", ["flights:search"],
                                                     max_amount=301),
                  lambda: child.attenuate_for_call("x-agent", ["flights:*"])):
        with pytest.raises(DelegationException, match="403"):
            widen()
    # an access token is not a parent grant
    r = httpx.post(f"{service.url}/v1/delegations/{session.grant_id}/attenuate",
                   json={"grantedToAgentId": "x", "permissions": []},
                   headers={"Authorization": f"Bearer {client.token_provider.get_token()}"})
    assert r.status_code == 401
    # a grant id that is not the bearer's
    r = httpx.post(f"{service.url}/v1/delegations/other/attenuate",
                   json={"grantedToAgentId": "x", "permissions": []},
                   headers={"Authorization": f"Bearer {root}"})
    assert r.status_code == 403
    service.app.engine.revoke(session.grant_id or "")
    assert not child.authorize("flights:search", {"country": "FR"}).allowed


def test_a_failing_revocation_store_denies_on_the_wire(service: Running,
                                                       client: TracengentClient) -> None:
    """The service's authorize and attenuate answer a denial (a 503 for attenuate), not
    an internal error, while the revocation store cannot answer."""
    root = pe.tokens.mint(service.app.engine.keys, issuer="https://auth.example",
                          acting_for="besar", agent="travel-agent",
                          permissions=["flights:*"], ttl=600)
    session = client.begin_delegated_task(root)
    assert session.authorize("flights:book", {"country": "FR"}).allowed
    engine = service.app.engine
    before = engine.revocations
    engine.revocations = DownRevocations(RESET)
    try:
        d = session.authorize("flights:book", {"country": "FR"})
        # the service's own denial (a decision id), not the SDK's fail-closed one
        assert not d.allowed and d.status == "denied" and d.decision_id
        assert "revocation_unavailable" in d.reason
        r = httpx.post(f"{service.url}/v1/delegations/{session.grant_id}/attenuate",
                       json={"grantedToAgentId": "hotel-agent",
                             "permissions": ["flights:search"]},
                       headers={"Authorization": f"Bearer {root}"})
        # 503, not 401: the grant is good, the store could not say whether it is revoked.
        # A 401 ``invalid_token`` told the client its valid grant was bad; a 503 is the
        # outage the routes that make no decision answer too, and is to be retried.
        assert r.status_code == 503
        assert r.json()["error"] == {
            "code": "revocation_unavailable",
            "message": "revocation_unavailable: the revocation store is unavailable; retry"}
        assert "connection reset" not in r.text  # the store's error is logged, not sent
        # The real SDK raises on any non-2xx: its exception carries the 503.
        with pytest.raises(DelegationException, match=r"\(503\).*revocation_unavailable"):
            session.attenuate_for_call("hotel-agent", ["flights:search"])
    finally:
        engine.revocations = before
    assert session.authorize("flights:book", {"country": "FR"}).allowed
    assert session.attenuate_for_call("hotel-agent", ["flights:search"]).chain == [
        "besar", "travel-agent", "hotel-agent"]


@pytest.mark.parametrize("answers", [1, 2])
def test_a_store_lost_during_attenuation_is_503(service: Running, client: TracengentClient,
                                                answers: int) -> None:
    """The store going down after the parent's check (while the child is made, or
    checked) is the same outage: 503, not the 400 of a token the request made badly."""
    root = pe.tokens.mint(service.app.engine.keys, issuer="https://auth.example",
                          acting_for="besar", agent="travel-agent",
                          permissions=["flights:*"], ttl=600)
    session = client.begin_delegated_task(root)
    engine = service.app.engine
    before = engine.revocations
    engine.revocations = DownAfter(answers, RESET)
    try:
        with pytest.raises(DelegationException, match=r"\(503\).*revocation_unavailable"):
            session.attenuate_for_call("hotel-agent", ["flights:search"])
    finally:
        engine.revocations = before


def test_a_bad_parent_stays_401_while_the_revocation_store_is_down(
        service: Running, client: TracengentClient) -> None:
    """Only the store's outage is 503: a parent grant that is bad in itself (signed by
    a foreign key, expired) is still 401 ``invalid_token`` while the store is down."""
    foreign = pe.tokens.mint(pe.KeySet.generate(), issuer="https://auth.example",
                             acting_for="besar", agent="travel-agent",
                             permissions=["flights:*"], ttl=600)
    expired = pe.tokens.mint(service.app.engine.keys, issuer="https://auth.example",
                             acting_for="besar", agent="travel-agent",
                             permissions=["flights:*"], ttl=60, now=1_000_000_000)
    engine = service.app.engine
    before = engine.revocations
    engine.revocations = DownRevocations(RESET)
    try:
        for bad in (foreign, expired):
            session = client.begin_delegated_task(bad)
            r = httpx.post(f"{service.url}/v1/delegations/{session.grant_id}/attenuate",
                           json={"grantedToAgentId": "hotel-agent",
                                 "permissions": ["flights:search"]},
                           headers={"Authorization": f"Bearer {bad}"})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
            with pytest.raises(DelegationException, match=r"\(401\)"):
                session.attenuate_for_call("hotel-agent", ["flights:search"])
    finally:
        engine.revocations = before


# ---------------------------------------------------------------- telemetry
def test_events_and_traces_are_ingested_gzip_included(service: Running) -> None:
    before = len(service.app.events)
    gz_before = service.app.metrics.ingested.get(("events", "gzip"), 0)
    with sdk(service) as c:
        with c.begin_trace("book a trip") as trace:
            trace.step("looking")
            assert trace.track_tool_call("noop", lambda: 1) == 1
            trace.track_llm_call("plan", lambda: LlmCallResult("ok", tokens=10, model="m"),
                                 estimated_tokens=50)
        for i in range(40):  # one batch over 1,024 bytes: gzip on the wire
            c.record(AgentEvent(name=f"step-{i}", attributes={"pad": "x" * 40}))
    events = [e for who, e in list(service.app.events)[before:] if who == "travel-agent"]
    names = {e.name for e in events}
    assert {"looking", "noop", "plan", "step-0", "step-39"} <= names
    assert service.app.metrics.ingested.get(("events", "gzip"), 0) > gz_before
    assert any(t.rootRequest == "book a trip" and t.status == "completed"
               for _, t in service.app.traces)
    assert c.dropped_count == 0


def test_legacy_ingest_key_mode(service: Running) -> None:
    with TracengentClient(TracengentOptions(agent_id="travel-agent", base_url=service.url,
                                            ingest_key=INGEST_KEY)) as c:
        assert c.authorize("flights:book", {"country": "FR"}).allowed
    with TracengentClient(TracengentOptions(agent_id="travel-agent", base_url=service.url,
                                            ingest_key="wrong")) as c:
        assert not c.authorize("flights:book", {"country": "FR"}).allowed


def test_a_grant_never_passes_to_a_budget_wires_principal(service: Running,
                                                          client: TracengentClient) -> None:
    """``grantedToAgentId`` is the caller's choice: a holder attenuating to a Cycles
    agent (``tenant:acme/agent:bot``) or an actguard user (``tenant:acme/user_id:al``)
    would then act as that principal here (its budgets' state in each decision, its
    rate limits spent). The wire answers 400 ``reserved_principal``, which the real SDK
    raises; a child for an ordinary agent still passes."""
    root = pe.tokens.mint(service.app.engine.keys, issuer="https://auth.example",
                          acting_for="besar", agent="travel-agent",
                          permissions=["flights:*"], ttl=600)
    session = client.begin_delegated_task(root)
    for name in ("tenant:acme/agent:bot", "tenant:acme/user_id:al", "tenant:acme"):
        with pytest.raises(DelegationException, match=r"\(400\).*reserved_principal"):
            session.attenuate_for_call(name, ["flights:search"])
    assert session.attenuate_for_call("hotel-agent", ["flights:search"]).chain == [
        "besar", "travel-agent", "hotel-agent"]
