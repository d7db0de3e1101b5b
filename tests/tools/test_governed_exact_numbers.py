"""The governed client reads a JSON body's numbers exactly, as the service wire does.

A fraction in a request body (``{"amount": 280.10}``) is the decimal it spells: the
route's amount is ``Decimal("280.10")`` (the same decision ``tool_authorize`` gives for
that Decimal), never the binary float 280.1 that the amount check refuses; and a body
rewritten for a redaction carries every number digit for digit (``12345678901234567.89``
as a double is ``12345678901234568``: the upstream would be sent another amount).
"""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine import governed_client
from policyengine.decision import ToolDenied
from policyengine.engine import Engine

POLICY = """namespace exact
currency USD
role r: api:*
agent "bot": r

limit cap: api:pay amount <= 500 USD

tool live: http "pay.example.com" {
  POST "/v1/pay" -> api:pay { amount = $.amount, currency = $.currency }
  POST "/v1/note" -> api:note
  redact $.card mask
}
"""


def _client(seen: list[bytes]) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        return httpx.Response(200, json={"ok": True})
    return governed_client(Engine.from_source(POLICY), "bot",
                           inner=httpx.MockTransport(handler))


def _post(client: httpx.Client, path: str, text: str) -> httpx.Response:
    return client.post(f"https://pay.example.com{path}", content=text.encode(),
                       headers={"content-type": "application/json"})


def test_a_fractional_body_amount_is_read_as_the_decimal_it_spells() -> None:
    seen: list[bytes] = []
    with _client(seen) as client:
        assert _post(client, "/v1/pay", '{"amount": 280.10, "currency": "USD"}'
                     ).status_code == 200
    assert seen == [b'{"amount": 280.10, "currency": "USD"}']  # sent unchanged
    engine = Engine.from_source(POLICY)
    def direct(amount: object) -> str:
        return engine.tool_authorize("bot", transport="http", method="POST",
                                     host="pay.example.com", path="/v1/pay",
                                     body={"amount": amount, "currency": "USD"}).status
    assert direct(Decimal("280.10")) == "allowed"
    assert direct(280.10) == "denied"  # a Python float stays refused (docs/money.md)


def test_a_fractional_amount_over_the_cap_is_still_denied() -> None:
    seen: list[bytes] = []
    with _client(seen) as client, pytest.raises(ToolDenied) as denied:
        _post(client, "/v1/pay", '{"amount": 500.01, "currency": "USD"}')
    assert denied.value.decision.code == "limit_exceeded"
    assert seen == []


def test_a_redacted_body_keeps_every_number_exact() -> None:
    seen: list[bytes] = []
    text = ('{"amount": 12345678901234567.89, "tiny": 0.1000000000000000000001, '
            '"big": 100000000000000000000000000001, "e": 1E+3, "card": "4242424242424242"}')
    with _client(seen) as client:
        assert _post(client, "/v1/note", text).status_code == 200
    sent = json.loads(seen[0], parse_float=Decimal)
    assert sent["card"] != "4242424242424242"
    assert sent["amount"] == Decimal("12345678901234567.89")
    assert sent["tiny"] == Decimal("0.1000000000000000000001")
    assert sent["big"] == 100000000000000000000000000001
    assert sent["e"] == 1000


@settings(max_examples=60, deadline=None)
@given(st.decimals(allow_nan=False, allow_infinity=False, min_value=-10**30,
                   max_value=10**30, places=None).filter(lambda d: abs(d.adjusted()) < 60))
def test_any_decimal_survives_a_redaction_rewrite(value: Decimal) -> None:
    seen: list[bytes] = []
    text = '{"n": ' + format(value, "f") + ', "card": "4242"}'
    with _client(seen) as client:
        assert _post(client, "/v1/note", text).status_code == 200
    assert json.loads(seen[0], parse_float=Decimal)["n"] == value


@pytest.mark.parametrize("text", ['{"amount": 1e400, "currency": "USD"}',
                                  '{"n": [1, -1E+999], "card": "4242"}'])
def test_a_number_infinite_as_a_double_is_still_refused(text: str) -> None:
    seen: list[bytes] = []
    with _client(seen) as client, pytest.raises(ToolDenied) as denied:
        _post(client, "/v1/pay" if "amount" in text else "/v1/note", text)
    assert denied.value.outcome == "invalid_request" and seen == []


@pytest.mark.parametrize("form", [bytes, str])
def test_a_json_text_body_given_to_tool_authorize_is_read_exactly(form: type) -> None:
    engine = Engine.from_source(POLICY)

    def status(text: str) -> tuple[str, str]:
        body = text.encode() if form is bytes else text
        d = engine.tool_authorize("bot", transport="http", method="POST",
                                  host="pay.example.com", path="/v1/pay", body=body)
        return d.status, d.outcome
    assert status('{"amount": 280.10, "currency": "USD"}') == ("allowed", "policy_allow")
    assert status('{"amount": 500.00, "currency": "USD"}') == ("allowed", "policy_allow")
    assert status('{"amount": 500.01, "currency": "USD"}') == ("denied", "policy_deny")
    assert status('{"amount": 280.10, "currency": "USD", "n": 1e400}') == (
        "denied", "invalid_request")
