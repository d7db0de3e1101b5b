"""A service wire over an engine with a rate source of the caller's own: a Cycles
reservation in USD microcents against a EUR budget converts at the source's answer, and
an answer that is no rate (or a source that fails) is the wire's 400 with the rate's
code, nothing held (docs/money.md, "Rates"). Before, a source raising ``KeyError`` was a
500 with a traceback, and a ``rate_fraction`` pair of ``(0, 1)`` held nothing: ALLOW."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest
from rate_answers import Answers, PairAnswers

import policyengine as pe
from policyengine.server import Credentials, CyclesKey, ServiceConfig, create_app, hash_secret

POLICY = ("namespace w\ncurrency EUR\nrate USD 0.92\n"
          "budget eur: chat:* limit 10 EUR per day per tenant\n")
_HASH = hash_secret("k-acme")


def reserve(source: Answers) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """One $1 reservation on the Cycles wire, and the tenant's balances after it."""
    engine = pe.Engine.from_source(POLICY, rates=source)
    creds = Credentials(cycles_keys=(CyclesKey("acme", _HASH, "acme"),))
    app = create_app(engine, credentials=creds, config=ServiceConfig(access_log=False))

    async def go() -> tuple[int, dict[str, Any], dict[str, Any]]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t",
                                     headers={"X-Cycles-API-Key": "k-acme"}) as c:
            r = await c.post("/v1/reservations", json={
                "idempotency_key": uuid.uuid4().hex,
                "subject": {"tenant": "acme", "agent": "a"},
                "action": {"kind": "chat", "name": "x"},
                "estimate": {"unit": "USD_MICROCENTS", "amount": 100_000_000}})
            balances = await c.get("/v1/balances", params={"tenant": "acme"})
            return r.status_code, r.json(), balances.json()
    try:
        return asyncio.run(go())
    finally:
        engine.close()


@pytest.mark.parametrize(("source", "code"), [
    (Answers(Decimal(0)), "invalid_rate"), (Answers(Decimal(-1)), "invalid_rate"),
    (Answers(Decimal("NaN")), "invalid_rate"), (Answers(0.92), "invalid_rate"),
    (Answers(Decimal("1e999999")), "invalid_rate"), (Answers(KeyError("x")), "no_rate"),
    (PairAnswers((Decimal(0), Decimal(1))), "invalid_rate"),
    (PairAnswers((Decimal(1), Decimal(-1))), "invalid_rate"),
    (PairAnswers((Decimal(1), Decimal(0))), "invalid_rate"),
], ids=repr)
def test_a_reservation_at_an_answer_that_is_no_rate_is_refused(source: Answers,
                                                               code: str) -> None:
    status, body, balances = reserve(source)
    assert (status, body["error"], body["details"]["code"]) == (400, "INVALID_REQUEST",
                                                                 code), body
    assert all(b["reserved"]["amount"] == 0 and b["spent"]["amount"] == 0
               for b in balances["balances"]), balances


def test_a_reservation_at_a_rate_holds_it() -> None:
    """$1 at 0.92 (as a rate, and as the pair 23/25) holds 0.92 EUR."""
    for source in (Answers(Decimal("0.92")), PairAnswers((Decimal(23), Decimal(25)))):
        status, body, _balances = reserve(source)
        assert (status, body["decision"]) == (200, "ALLOW"), body
