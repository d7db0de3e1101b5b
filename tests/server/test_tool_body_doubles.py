"""A tool call's body on the service wire is read by the rule the in-process call reads
body text by. The wire reads ``1e400`` as the finite ``Decimal("1E+400")``, but the
agent sends that body on to an upstream that reads it as a double, infinity: deciding
on one reading while the upstream acts on the other is a bypass (on a route that reads
``amount``, a huge finite amount here, infinity there). So a number in ``body`` that is
infinite as a double is refused as ``engine.tool_authorize`` refuses the same text:
``invalid_request``, diagnostic ``ambiguous_body``, at any depth, on every transport and
route. So is what the strict reader refuses in a body (an integer over the digit limit,
``NaN``: tests/server/test_tool_body_ambiguous.py)."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import policyengine as pe
from policyengine import _json as strict_json
from policyengine.server import AgentCredential, Credentials, create_app, hash_secret

POLICY = """namespace t
currency USD
role r: payments:*
agent "travel-agent": r
tool pay: mcp "pay" -> payments:pay { amount = $.amount, currency = $.currency }
tool note: mcp "note" -> payments:note
tool fn: function "note" -> payments:note
tool api: http "api.example.com" { POST "/**" -> payments:note }
egress { allow "open.example.com" }
"""

# (call fields without the body): each transport, a route that reads the body's amount,
# routes that do not read the body, and a host no tool binds (egress allow).
CALLS: dict[str, dict[str, Any]] = {
    "amount": {"transport": "mcp", "toolName": "pay"},
    "mcp": {"transport": "mcp", "toolName": "note"},
    "function": {"transport": "function", "functionName": "note"},
    "http": {"transport": "http", "method": "POST", "host": "api.example.com",
             "path": "/v1/notes"},
    "egress": {"transport": "http", "method": "POST", "host": "open.example.com",
               "path": "/x"},
}


class Service:
    """The service app and an agent's bearer, asked through ASGI on one event loop."""

    def __init__(self) -> None:
        creds = Credentials((AgentCredential("key_travel", hash_secret("s"), "travel-agent",
                                             ("payments:*",)),), {})
        self.engine = pe.Engine.from_source(POLICY)
        self.app = create_app(self.engine, credentials=creds)
        self.loop = asyncio.new_event_loop()
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                        base_url="http://t")
        token = self._run(self.client.post("/v1/oauth/token", data={
            "grant_type": "client_credentials", "client_id": "key_travel",
            "client_secret": "s"})).json()["access_token"]
        self.headers = {"authorization": f"Bearer {token}",
                        "content-type": "application/json"}

    def _run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def tool(self, call: str, body_text: str) -> httpx.Response:
        """POST /v1/tool-authorize with ``body_text`` as the request's ``body`` value."""
        fields = strict_json.dumps(CALLS[call])
        request = fields[:-1] + ',"body":' + body_text + "}"
        return self._run(self.client.post("/v1/tool-authorize", content=request,
                                          headers=self.headers))

    def in_process(self, call: str, body_text: str) -> pe.ToolDecision:
        c = CALLS[call]
        return self.engine.tool_authorize(
            "travel-agent", transport=c["transport"], method=c.get("method"),
            host=c.get("host"), path=c.get("path"), tool_name=c.get("toolName"),
            function_name=c.get("functionName"), body=body_text)

    def close(self) -> None:
        self._run(self.client.aclose())
        self.loop.close()
        self.engine.close()


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    s = Service()
    yield s
    s.close()


def refused_as_ambiguous(r: httpx.Response) -> bool:
    out = r.json()
    return (r.status_code == 200 and out["allowed"] is False
            and out["outcome"] == "invalid_request"
            and [d["code"] for d in out["diagnostics"]] == ["ambiguous_body"])


_NOT_FINITE = re.compile(r"the JSON body is ambiguous: (\S+) is not finite as a double")

INFINITE = [
    '{"n": 1e400}',
    '{"n": -1E+999}',
    '{"a": [1, [2, {"b": [1e309]}]]}',
    '[[1e309], "x"]',
    "1e400",
    '{"amount": 1e400, "currency": "USD"}',
    '{"amount": 100, "currency": "USD", "note": {"n": [-1e309]}}',
    '{"n": 1.7976931348623159e308}',  # rounds past the largest double
]


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("body", INFINITE)
def test_a_number_infinite_as_a_double_is_refused_as_in_process(
        service: Service, call: str, body: str) -> None:
    r = service.tool(call, body)
    assert refused_as_ambiguous(r), r.text
    # the same refusal, diagnostic and message as the in-process call on the same text
    # (the number as the service read it: 1E+400 for 1e400)
    d = service.in_process(call, body)
    assert d.outcome == "invalid_request" and [x.code for x in d.diagnostics] == [
        "ambiguous_body"]
    said, told = _NOT_FINITE.fullmatch(r.json()["reason"]), _NOT_FINITE.fullmatch(d.reason)
    assert said and told, (r.json()["reason"], d.reason)
    assert Decimal(said[1]) == Decimal(told[1])


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("body", [
    '{"n": 1e308}', '{"n": -1.7976931348623157e308}', '{"n": 1e-400}',
    '{"amount": 280.10, "currency": "USD", "n": [1e300]}', '{"n": ' + "9" * 400 + "}",
])
def test_numbers_a_double_holds_are_decided_alike(
        service: Service, call: str, body: str) -> None:
    r = service.tool(call, body)
    assert r.status_code == 200 and r.json()["allowed"] is True, r.text
    assert service.in_process(call, body).allowed


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("body", [
    '{"a": [1, {"n": ' + "7" * 5000 + "}]}", '{"n": [1e5000]}', '{"n": [NaN]}',
    '{"n": -Infinity}', '{"n": 1, "n": 2}', '{"n": "\\ud800"}',
])
def test_what_the_strict_reader_refuses_in_a_body_is_denied_as_in_process(
        service: Service, call: str, body: str) -> None:
    """Once a 400 before any decision, which a fail-open SDK sent on unchecked: now the
    engine's refusal of the body text, a 200 denial."""
    r = service.tool(call, body)
    assert refused_as_ambiguous(r), r.text
    d = service.in_process(call, body)
    assert d.outcome == "invalid_request" and r.json()["reason"] == d.reason


def test_a_number_infinite_as_a_double_in_the_context_is_read_as_a_decimal(
        service: Service) -> None:
    """The context is not sent on: only the body is read by the upstream's rule."""
    r = service._run(service.client.post("/v1/tool-authorize", headers=service.headers,
                                          content=b'{"transport": "mcp", "toolName": '
                                          b'"note", "body": {"n": 1}, "context": '
                                          b'{"x": 1e400}}'))
    assert r.status_code == 200 and r.json()["allowed"] is True, r.text


def test_an_amount_infinite_as_a_double_is_never_read_as_a_huge_amount(
        service: Service) -> None:
    """The route reads ``amount``, and no rule limits it: read as Decimal, 1e400 would be
    extracted as a finite amount and allowed while the upstream reads infinity."""
    ok = service.tool("amount", '{"amount": 100, "currency": "USD"}')
    assert ok.status_code == 200 and ok.json()["allowed"] is True
    for number in ("1e400", "-1e400", "1E+309", "2e308"):
        r = service.tool("amount", '{"amount": ' + number + ', "currency": "USD"}')
        assert refused_as_ambiguous(r), (number, r.text)
        assert r.json()["permission"] is None  # refused before anything is extracted


# A number literal whose float() is infinite, its exponent within the wire's bound.
_INFINITE_LITERAL = st.builds(
    lambda sign, digits, fraction, exp, e: f"{sign}{digits}{fraction}{e}{exp}",
    st.sampled_from(["", "-"]),
    st.integers(1, 10**20).map(str),
    st.one_of(st.just(""), st.integers(0, 10**6).map(lambda n: f".{n}")),
    st.integers(280, 4000).flatmap(lambda n: st.sampled_from([str(n), f"+{n}"])),
    st.sampled_from(["e", "E"]),
).filter(lambda t: math.isinf(float(t)))

_LEAF = st.one_of(st.integers(-10**6, 10**6).map(str), st.just('"x"'), st.just("null"),
                  st.just("true"), st.floats(allow_nan=False, allow_infinity=False)
                  .map(repr))


def _docs(leaf: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.recursive(leaf, lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.lists(st.tuples(st.text("abc", min_size=1, max_size=3), inner), max_size=3,
                 unique_by=lambda kv: kv[0]).map(
            lambda kvs: "{" + ",".join(f'"{k}":{v}' for k, v in kvs) + "}")),
        max_leaves=8)


@st.composite
def bodies_holding(draw: st.DrawFn, literals: st.SearchStrategy[str]) -> str:
    """A JSON document with a literal drawn from ``literals`` put at a drawn place in it
    (a value, or an element)."""
    literal = draw(literals)
    doc = draw(_docs(st.one_of(_LEAF, st.just("@"))))
    if "@" not in doc:
        doc = draw(st.sampled_from([f"[{doc},@]", f'{{"k":{doc},"z":@}}', "@"]))
    return doc.replace("@", literal)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.filter_too_much])
@given(body=bodies_holding(_INFINITE_LITERAL), call=st.sampled_from(sorted(CALLS)))
def test_property_a_body_with_a_number_infinite_as_a_double_is_never_allowed(
        service: Service, body: str, call: str) -> None:
    r = service.tool(call, body)
    assert r.json()["allowed"] is False, r.text
    assert refused_as_ambiguous(r), r.text


def test_the_detector_takes_only_what_a_double_cannot_hold() -> None:
    beyond = strict_json.infinite_as_double
    assert beyond({"a": [1, {"b": Decimal("1e400")}]}) == Decimal("1e400")
    assert beyond([Decimal("-1E+999")]) == Decimal("-1E+999")
    assert beyond(Decimal("1.7976931348623159e308")) is not None
    for finite in (Decimal("1.7976931348623157e308"), Decimal("1e308"), Decimal("1e-400"),
                   10**400, "1e400", None, True, 1.5, {"n": [Decimal("280.10")]}):
        assert beyond(finite) is None, finite
