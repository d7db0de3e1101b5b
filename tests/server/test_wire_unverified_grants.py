"""A delegation grant presented as bearer on a route that makes no decision (approval
polls, telemetry) is verified there: the engine verifies the grants handed to its
decisions, but these routes hand it nothing, and reading the grant's ``sub`` alone made
an unsigned token pass for any agent (its approvals read, events and traces recorded in
its name)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from tracengent import TracengentClient, TracengentOptions

import policyengine as pe
from policyengine.server import Credentials

from .service_harness import SECRETS, Running, make_service, serving
from .stores_down import DownAfter, DownRevocations

#: What the revocation store's client raises: it names the server, which no answer may.
RESET = "connection to 10.0.0.7:6379 reset"


@pytest.fixture(scope="module")
def service(credentials: Credentials) -> Iterator[Running]:
    """A service of this module's own: the approvals it leaves pending are nobody else's."""
    app = make_service(credentials)
    with serving(app) as port:
        yield Running(app, port)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _unsigned(sub: str) -> str:
    return (_b64({"alg": "EdDSA", "kid": "k", "typ": "delegation+jwt"}) + "."
            + _b64({"sub": sub, "grant_id": "g", "acting_for": "x"}) + ".AAAA")


def _pending_approval(service: Running) -> str:
    """An approval of travel-agent, through the real SDK (a refund over 300 EUR)."""
    with TracengentClient(TracengentOptions(
            agent_id="travel-agent", base_url=service.url, client_id="key_travel",
            client_secret=SECRETS["key_travel"])) as c:
        d = c.authorize("payments:refund", {"amount": Decimal("400"), "currency": "EUR"})
    assert d.status == "pending_approval" and d.approval_id
    return d.approval_id


TRACE = {"traceId": "t-forged", "agentId": "travel-agent", "op": "Close",
         "status": "completed", "occurredAt": "2026-11-30T00:00:00+00:00"}
EVENT = {"eventId": "e-forged", "agentId": "travel-agent", "type": "custom", "name": "forged",
         "status": "ok", "occurredAt": "2026-11-30T00:00:00+00:00"}


def _bad_grants(service: Running) -> dict[str, str]:
    foreign = pe.tokens.mint(pe.KeySet.generate(), issuer="x", acting_for="a",
                             agent="travel-agent", permissions=["*"], ttl=60)
    revoked = pe.tokens.mint(service.app.engine.keys, issuer="https://auth.example",
                             acting_for="a", agent="travel-agent", permissions=["*"], ttl=60)
    service.app.engine.revoke(pe.tokens.verify(service.app.engine.keys, revoked).grant_id)
    return {"unsigned": _unsigned("travel-agent"), "foreign": foreign, "revoked": revoked}


@pytest.mark.parametrize("kind", ["unsigned", "foreign", "revoked"])
def test_an_unverified_grant_is_no_agent_on_routes_without_a_decision(
        service: Running, kind: str) -> None:
    approval = _pending_approval(service)
    auth = {"Authorization": f"Bearer {_bad_grants(service)[kind]}"}
    events, traces = len(service.app.events), len(service.app.traces)
    for method, path, body in (("GET", f"/v1/approvals/{approval}", None),
                               ("POST", "/v1/ingest/events", [EVENT]),
                               ("POST", "/v1/ingest/traces", TRACE)):
        r = httpx.request(method, service.url + path, json=body, headers=auth)
        assert r.status_code == 401, (kind, path, r.text)
        assert r.json()["allowed"] is False and r.json()["error"]["code"] == "unauthorized"
        assert "approvalId" not in r.text
    assert (len(service.app.events), len(service.app.traces)) == (events, traces)


def test_a_valid_grant_still_polls_its_agents_approval(service: Running) -> None:
    approval = _pending_approval(service)
    grant = pe.tokens.mint(service.app.engine.keys, issuer="https://auth.example",
                           acting_for="besar", agent="travel-agent", permissions=["*"],
                           ttl=60)
    auth = {"Authorization": f"Bearer {grant}"}
    r = httpx.get(f"{service.url}/v1/approvals/{approval}", headers=auth)
    assert r.status_code == 200 and r.json()["status"] == "pending"
    r = httpx.post(f"{service.url}/v1/ingest/traces", json=TRACE, headers=auth)
    assert r.status_code == 202
    # a valid grant of another agent is that agent: not this approval's
    other = pe.tokens.mint(service.app.engine.keys, issuer="https://auth.example",
                           acting_for="besar", agent="hotel-agent", permissions=["*"], ttl=60)
    r = httpx.get(f"{service.url}/v1/approvals/{approval}",
                  headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 404


def test_a_grant_that_cannot_be_checked_is_503_without_the_stores_error(
        service: Running) -> None:
    grant = pe.tokens.mint(service.app.engine.keys, issuer="https://auth.example",
                           acting_for="besar", agent="travel-agent", permissions=["*"],
                           ttl=60)
    engine = service.app.engine
    before = engine.revocations
    engine.revocations = DownRevocations(RESET)
    try:
        r = httpx.post(f"{service.url}/v1/ingest/traces", json=TRACE,
                       headers={"Authorization": f"Bearer {grant}"})
    finally:
        engine.revocations = before
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "revocation_unavailable"
    assert "10.0.0.7" not in r.text


@pytest.mark.parametrize(("route", "answers"), [
    ("ingest", 0), ("attenuate", 0), ("attenuate", 1), ("attenuate", 2)])
def test_each_route_tells_a_revocation_outage_by_the_fixed_message(
        service: Running, route: str, answers: int) -> None:
    """Every route that verifies a grant itself (telemetry; attenuate's parent, the
    child while it is made, and the child's own check) answers the one fixed message of
    ``revocation_unavailable`` (``_faults.FAULT_MESSAGES``): never the store's text."""
    grant = pe.tokens.mint(service.app.engine.keys, issuer="https://auth.example",
                           acting_for="besar", agent="travel-agent",
                           permissions=["flights:*"], ttl=60)
    engine = service.app.engine
    grant_id = engine.verify_token(grant).grant_id
    before = engine.revocations
    engine.revocations = DownAfter(answers, RESET)
    try:
        if route == "ingest":
            r = httpx.post(f"{service.url}/v1/ingest/traces", json=TRACE,
                           headers={"Authorization": f"Bearer {grant}"})
        else:
            r = httpx.post(f"{service.url}/v1/delegations/{grant_id}/attenuate",
                           json={"grantedToAgentId": "hotel-agent",
                                 "permissions": ["flights:search"]},
                           headers={"Authorization": f"Bearer {grant}"})
    finally:
        engine.revocations = before
    assert r.status_code == 503, r.text
    assert r.json()["error"] == {
        "code": "revocation_unavailable",
        "message": "revocation_unavailable: the revocation store is unavailable; retry"}
    assert "10.0.0.7" not in r.text and "reset" not in r.text
