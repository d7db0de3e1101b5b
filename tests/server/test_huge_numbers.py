"""Numbers with absurd exponents over HTTP: ``1e99999999999`` reads as a finite Decimal
whose plain text is 100 GB. The service refuses it (400 ``number_too_long``) before any
decision, stays responsive, and its decision log delivers the records before and after;
the attenuation route refuses an over-long ``maxAmount`` (400 ``invalid_amount``) before
writing it out, even with the reader's bound lifted."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest

import policyengine as pe
from policyengine import _json as strict_json
from policyengine.audit import CallbackSink, DecisionLog
from policyengine.server import Credentials, ServiceConfig, create_app

from .service_harness import INGEST_KEY, POLICIES, SECRETS, serving

HUGE = ("1e99999999999", "-1e99999999999", "1e-99999999999", "0e-99999999999")


@dataclass
class Logged:
    url: str
    engine: pe.Engine
    log: DecisionLog
    records: list[dict[str, Any]]
    auth: dict[str, str]


@pytest.fixture
def logged(credentials: Credentials) -> Iterator[Logged]:
    records: list[dict[str, Any]] = []
    log = DecisionLog(CallbackSink(records.append), capacity=8)  # overflow="block"
    keys = pe.KeySet.generate()
    engine = pe.Engine.from_path(str(POLICIES), keys=keys, decision_log=log)
    app = create_app(engine, credentials=credentials, keys=keys, paths=[str(POLICIES)],
                     config=ServiceConfig(access_log=False))
    try:
        with serving(app) as port:
            url = f"http://127.0.0.1:{port}"
            token = httpx.post(f"{url}/v1/oauth/token", data={
                "grant_type": "client_credentials", "client_id": "key_travel",
                "client_secret": SECRETS["key_travel"]}).json()["access_token"]
            yield Logged(url, engine, log, records, {"authorization": f"Bearer {token}"})
    finally:
        engine.close()


def post(s: Logged, path: str, body: bytes, headers: dict[str, str] | None = None
         ) -> httpx.Response:
    return httpx.post(s.url + path, content=body, timeout=10, headers={
        **(headers if headers is not None else s.auth), "content-type": "application/json"})


def authorize(s: Logged, n: str) -> str:
    r = post(s, "/v1/authorize", json.dumps(
        {"permission": "flights:book", "context": {"n": n}}).encode())
    assert r.status_code == 200 and r.json()["allowed"] is True
    return str(r.json()["decisionId"])


def test_a_huge_exponent_is_refused_and_the_log_delivers_before_and_after(
        logged: Logged) -> None:
    before = [authorize(logged, f"before-{i}") for i in range(3)]
    for number in HUGE:
        started = time.monotonic()
        r = post(logged, "/v1/authorize", b'{"permission":"flights:book","context":{"x":'
                 + number.encode() + b"}}")
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "number_too_long"
        assert time.monotonic() - started < 5
    # within the bound: decided, and logged in plain digits
    r = post(logged, "/v1/authorize", b'{"permission":"flights:book","context":{"x":1e300}}')
    assert r.status_code == 200 and r.json()["allowed"] is True
    within = r.json()["decisionId"]
    after = [authorize(logged, f"after-{i}") for i in range(30)]  # more than the queue
    assert logged.log.flush(20)
    by_id = {r["decision_id"]: r for r in logged.records if r["kind"] == "authorize"}
    assert set(before + after + [within]) <= set(by_id)
    assert by_id[within]["input"]["context"]["x"] == "1" + "0" * 300
    assert logged.log.stats()["record_errors"] == 0


def test_an_event_with_a_huge_cost_is_refused(logged: Logged) -> None:
    event = {"eventId": "evt_1", "agentId": "travel-agent", "type": "llm_call",
             "name": "x", "status": "success", "occurredAt": "2026-01-01T00:00:00Z"}
    body = json.dumps([{**event, "cost": {"amount": 0, "currency": "USD"}}]).encode()
    r = post(logged, "/v1/ingest/events", body.replace(b'"amount": 0', b'"amount": 1e99999999999'),
             {"x-ingest-key": INGEST_KEY})
    assert r.status_code == 400 and r.json()["error"]["code"] == "number_too_long"
    assert authorize(logged, "still answering")


def _grant(s: Logged) -> tuple[str, str]:
    token = pe.tokens.mint(s.engine.keys, issuer="https://auth.example", acting_for="besar",
                           agent="travel-agent", permissions=["flights:*"], ttl=600,
                           max_amount=("500", "EUR"))
    return token, pe.tokens.verify(s.engine.keys, token).grant_id


def attenuate(s: Logged, number: str) -> httpx.Response:
    token, grant_id = _grant(s)
    body = ('{"grantedToAgentId":"hotel-agent","permissions":["flights:book"],'
            f'"maxAmount":{number}}}')
    return post(s, f"/v1/delegations/{grant_id}/attenuate", body.encode(),
                {"authorization": f"Bearer {token}"})


def test_attenuate_refuses_a_huge_max_amount(logged: Logged) -> None:
    assert attenuate(logged, "100").status_code == 200
    for number in HUGE:
        r = attenuate(logged, number)
        assert r.status_code == 400 and r.json()["error"]["code"] == "number_too_long"
    for number in ("1e999", "1e-999", "1e64", "1e-64"):  # read, then refused as too long
        r = attenuate(logged, number)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == {"code": "invalid_amount", "message": (
            f"max_amount: amount {Decimal(number)} is longer than 64 characters")}


def test_attenuate_refuses_before_writing_out_even_past_the_reader(
        logged: Logged, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(strict_json, "MAX_EXPONENT", 10**18)  # the reader lets it through
    for number in HUGE:
        started = time.monotonic()
        r = attenuate(logged, number)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_amount"
        assert time.monotonic() - started < 5
    assert attenuate(logged, "100").status_code == 200


def test_a_response_number_beyond_the_bound_is_its_scientific_text() -> None:
    from policyengine.server._wirejson import decimal_number
    assert decimal_number(Decimal("12.50")) == 12.5
    assert decimal_number(Decimal("1e300")) == 10**300
    assert decimal_number(Decimal("1e-4300")) == format(Decimal("1e-4300"), "f")
    assert decimal_number(Decimal("1e99999999999")) == "1E+99999999999"
    assert decimal_number(Decimal("-1e-99999999999")) == "-1E-99999999999"
