"""Adversarial: bodies the engine cannot read exactly as the upstream will.

Class: a route that extracts from or redacts the body must decide on the body the
upstream reads, or refuse. These tests send the same over-limit refund in every
encoding a lenient server accepts (a UTF-8 byte order mark, UTF-16 and UTF-32 with and
without a BOM), as JSON text in a ``str``, with numbers no two parsers read alike
(``1e400``, an integer past the digit limit), and with the caller's ``context`` claiming
a small amount. None of them may be allowed; each refusal carries a stable code. The
governed client is driven against a live server to show nothing leaves and nothing
raises anything but ``ToolDenied``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine import governed_client
from policyengine.decision import ToolDenied
from policyengine.engine import Engine

POLICY = """namespace adv
currency USD
role r: pay:*, crm:*
agent "bot": r

limit cap: pay:refund amount <= 500 USD
forbid offshore: pay:payout when context.country == "XX"

tool pay: http "pay.example.com" {
  POST "/v1/refunds" -> pay:refund { amount = $.amount minor, currency = $.currency }
  POST "/v1/payouts" -> pay:payout { country = $.destination.country }
  POST "/v1/notes" -> pay:note
}
tool crm: http "crm.example.com" {
  POST "/**" -> crm:write
  redact $.card mask
}
tool xfer: function "transfer" -> pay:refund { amount = $.amount minor, currency = $.currency }
tool xfer-mcp: mcp "transfer" -> pay:refund { amount = $.amount minor, currency = $.currency }
"""

OVER = {"amount": 99_999_999, "currency": "USD"}  # 999,999.99 USD: over the 500 USD cap
UNDER = {"amount": 100, "currency": "USD"}
SMALL_CONTEXT = {"amount": "1", "currency": "USD"}

# Every way a lenient server (one that sniffs RFC 4627 encodings or skips a BOM) reads
# the same JSON text.
ENCODINGS = ("utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le",
             "utf-32-be")


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_source(POLICY)


def refund(engine: Engine, body: Any, **kw: Any) -> Any:
    return engine.tool_authorize("bot", transport="http", method="POST",
                                 host="pay.example.com", path="/v1/refunds", body=body, **kw)


def diag_codes(d: Any) -> list[str]:
    return [x.code for x in d.diagnostics]


def test_control_plain_utf8_is_read() -> None:
    engine = Engine.from_source(POLICY)
    over = refund(engine, json.dumps(OVER).encode())
    assert over.code == "limit_exceeded"
    assert refund(engine, json.dumps(UNDER).encode()).allowed


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("doc", [OVER, UNDER])
def test_other_encodings_are_refused_on_an_extracting_route(engine: Engine, encoding: str,
                                                            doc: dict[str, Any]) -> None:
    raw = json.dumps(doc).encode(encoding)
    d = refund(engine, raw, context=SMALL_CONTEXT)
    assert not d.allowed
    assert d.outcome == "invalid_request"
    assert diag_codes(d) == ["unreadable_body"]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_other_encodings_are_refused_on_a_redacting_route(engine: Engine,
                                                          encoding: str) -> None:
    raw = json.dumps({"card": "4111111111111111"}).encode(encoding)
    d = engine.tool_authorize("bot", transport="http", method="POST", host="crm.example.com",
                              path="/contacts", body=raw)
    assert not d.allowed and d.body is None
    assert diag_codes(d) == ["unreadable_body"]


def test_unreadable_body_passes_where_no_route_reads_it(engine: Engine) -> None:
    raw = json.dumps(OVER).encode("utf-16")
    d = engine.tool_authorize("bot", transport="http", method="POST", host="pay.example.com",
                              path="/v1/notes", body=raw)
    assert d.allowed and d.body == raw


@settings(max_examples=150, deadline=None)
@given(encoding=st.sampled_from(ENCODINGS),
       amount=st.integers(min_value=50_001, max_value=10**12),
       extra=st.dictionaries(st.text(min_size=1, max_size=5), st.integers(), max_size=3),
       context_amount=st.sampled_from(["1", "0", "499"]),
       as_text=st.booleans())
def test_over_limit_refund_is_never_allowed_in_any_encoding(
        engine: Engine, encoding: str, amount: int, extra: dict[str, int],
        context_amount: str, as_text: bool) -> None:
    doc = {**extra, "amount": amount, "currency": "USD"}
    raw = json.dumps(doc).encode(encoding)
    body: Any = raw.decode(encoding.replace("-sig", "")) if as_text else raw
    d = refund(engine, body, context={"amount": context_amount, "currency": "USD"})
    assert not d.allowed, (encoding, d.to_wire())


@pytest.mark.parametrize("transport", ["http", "function", "mcp"])
def test_json_text_body_is_parsed_not_decided_on_context(engine: Engine,
                                                         transport: str) -> None:
    text = json.dumps(OVER)
    if transport == "http":
        d = refund(engine, text, context=SMALL_CONTEXT)
    else:
        d = engine.tool_authorize("bot", transport=transport, tool_name="transfer",
                                  function_name="transfer", body=text, context=SMALL_CONTEXT)
    assert d.code == "limit_exceeded", d.to_wire()
    assert d.rules[0] == "adv.cap"


def test_json_text_body_reaches_a_forbid(engine: Engine) -> None:
    d = engine.tool_authorize("bot", transport="http", method="POST", host="pay.example.com",
                              path="/v1/payouts",
                              body='{"destination": {"country": "XX"}}',
                              context={"country": "DE"})
    assert d.code == "forbidden"


@pytest.mark.parametrize("raw", [
    b'{"amount": 1e400, "currency": "USD"}',
    b'{"amount": -1e400, "currency": "USD"}',
    b'{"amount": 100, "currency": "USD", "x": 1e999}',
    b'{"amount": ' + b"9" * 5000 + b', "currency": "USD"}',
    b'{"amount": 100, "currency": "USD", "n": -' + b"1" * 4400 + b"}",
    b'{"amount": NaN, "currency": "USD"}',
    b'{"amount": 100, "amount": 99999999, "currency": "USD"}',
])
@pytest.mark.parametrize("as_text", [False, True])
def test_numbers_and_keys_no_two_parsers_read_alike_are_refused(
        engine: Engine, raw: bytes, as_text: bool) -> None:
    d = refund(engine, raw.decode() if as_text else raw, context=SMALL_CONTEXT)
    assert d.outcome == "invalid_request"
    assert diag_codes(d) == ["ambiguous_body"]


def test_extracted_names_belong_to_the_route(engine: Engine) -> None:
    # No amount in the body: the caller's small amount must not stand in for it.
    d = refund(engine, {"currency": "USD"}, context=SMALL_CONTEXT)
    assert d.code == "missing_amount" and not d.allowed
    d = engine.tool_authorize("bot", transport="http", method="POST", host="pay.example.com",
                              path="/v1/payouts", body={"destination": {}},
                              context={"country": "DE"})
    assert d.code == "missing_attribute"  # the forbid fails closed; DE is not used


# ------------------------------------------------------------------ the governed client

class _Recorder:
    def __init__(self) -> None:
        self.seen: list[bytes] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                recorder.seen.append(self.rfile.read(length))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[Engine, _Recorder]]:
    rec = _Recorder()
    policy = POLICY.replace('"crm.example.com"', f'"http://127.0.0.1:{rec.port}"')
    yield Engine.from_source(policy), rec
    rec.close()


@pytest.mark.parametrize("raw", [
    b'{"card": "4111111111111111", "n": 1e400}',
    b'{"card": "4111111111111111", "n": ' + b"7" * 4500 + b"}",
    json.dumps({"card": "4111111111111111"}).encode("utf-8-sig"),
    json.dumps({"card": "4111111111111111"}).encode("utf-16"),
])
@pytest.mark.parametrize("content_type", ["application/json", "text/plain", None])
def test_governed_client_refuses_and_never_raises_another_error(
        live: tuple[Engine, _Recorder], raw: bytes, content_type: str | None) -> None:
    engine, rec = live
    rec.seen.clear()
    headers = {"content-type": content_type} if content_type else {}
    with governed_client(engine, "bot") as client, pytest.raises(ToolDenied) as err:
        client.post(f"http://127.0.0.1:{rec.port}/contacts", content=raw, headers=headers)
    assert err.value.outcome == "invalid_request"
    assert rec.seen == []


def test_governed_client_control_sends_the_redacted_body(
        live: tuple[Engine, _Recorder]) -> None:
    engine, rec = live
    rec.seen.clear()
    with governed_client(engine, "bot") as client:
        client.post(f"http://127.0.0.1:{rec.port}/contacts",
                    json={"card": "4111111111111111", "n": 1e300})
    assert json.loads(rec.seen[0]) == {"card": "***REDACTED***", "n": 1e300}


@pytest.mark.parametrize("raw", [
    b'{"amount": 100, "currency": "USD", "note": "\\ud800"}',
    b'{"amount": 100, "currency": "USD", "note": "\\uDC00x"}',
    b'{"amount": 100, "currency": "US\\uD83D"}',
])
def test_lone_surrogate_escapes_are_refused(engine: Engine, raw: bytes) -> None:
    """Parsers keep half a surrogate pair, replace it with U+FFFD, or fail."""
    d = refund(engine, raw)
    assert d.outcome == "invalid_request" and diag_codes(d) == ["ambiguous_body"]
    # A whole pair, and an escaped backslash before 'ud800', are ordinary text.
    ok = refund(engine, b'{"amount": 100, "currency": "USD", "n": "\\ud83d\\ude00\\\\ud800"}')
    assert ok.allowed, ok.to_wire()


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-16",
                                          "application/json;charset=\"latin-1\"",
                                          "text/plain; CHARSET=windows-1252"])
def test_a_declared_charset_other_than_utf8_makes_bytes_unreadable(
        engine: Engine, content_type: str) -> None:
    """The upstream decodes the bytes in the declared charset, not as UTF-8."""
    d = refund(engine, json.dumps(OVER).encode(), headers={"Content-Type": content_type})
    assert d.outcome == "invalid_request" and diag_codes(d) == ["unreadable_body"]
    plain = refund(engine, json.dumps(OVER).encode(),
                   headers={"Content-Type": "application/json; charset=UTF-8"})
    assert plain.code == "limit_exceeded"  # control: read, and over the cap


def test_governed_client_passes_a_foreign_charset_body_as_bytes(
        live: tuple[Engine, _Recorder]) -> None:
    engine, rec = live
    rec.seen.clear()
    with governed_client(engine, "bot") as client, pytest.raises(ToolDenied) as err:
        client.post(f"http://127.0.0.1:{rec.port}/contacts",
                    content=json.dumps({"card": "4111111111111111"}).encode(),
                    headers={"content-type": "application/json; charset=iso-8859-1"})
    assert [x.code for x in err.value.decision.diagnostics] == ["unreadable_body"]
    assert rec.seen == []


def test_an_unwritable_redacted_body_is_a_refusal_not_an_exception() -> None:
    """Whatever an authorizer returns, the transport raises only ToolDenied."""
    import httpx

    from policyengine.decision import Decision, ToolDecision

    class Odd:
        def tool_authorize(self, principal: str, **kw: Any) -> ToolDecision:
            return ToolDecision(Decision("allowed", "permitted", "ok"), "policy_allow",
                                body={"card": "***", "n": float("inf")},
                                redactions=({"field": "$.card", "strategy": "mask"},))

    sent: list[httpx.Request] = []
    inner = httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(204))
    with governed_client(Odd(), "bot", inner=inner) as client, \
            pytest.raises(ToolDenied) as err:
        client.post("https://x.example/", json={"card": "4111111111111111"})
    assert err.value.code == "redaction_unavailable"
    assert sent == []
