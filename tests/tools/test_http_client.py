"""The governed httpx client, against MockTransport and a real server on 127.0.0.1.

The engine is a small fake built from the leaves (tools + redaction) so these tests run
before ``engine.tool_authorize`` exists. To run them against the real engine, replace the
``engine_factory`` fixture with one that builds ``Engine.from_source(POLICY)``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from policyengine.decision import (
    ApprovalRequired,
    Decision,
    Obligations,
    ToolDecision,
    ToolDenied,
)
from policyengine.tools import (
    DROPPED_HEADERS,
    MASK,
    AsyncGovernedTransport,
    GovernedTransport,
    HostPattern,
    RedactionRule,
    RoutePattern,
    ToolRequestError,
    async_governed_client,
    governed_client,
    normalize_host,
    normalize_method,
    normalize_path,
    redact,
)

SECRET = "Bearer sk_live_SECRET"


class FakeEngine:
    """``tool_authorize`` for one host: refunds allowed (approval over 300, card masked),
    accounts denied, every other host egress-denied. Records every call."""

    def __init__(self, host: str) -> None:
        self.host = HostPattern.compile(host)
        self.refunds = RoutePattern.compile("/v1/refunds")
        self.accounts = RoutePattern.compile("/v1/accounts/**")
        self.rules = [RedactionRule("$.card", "mask")]
        self.calls: list[dict[str, Any]] = []

    def _deny(self, outcome: str, code: str) -> ToolDecision:
        return ToolDecision(Decision("denied", code, f"denied: {outcome}"), outcome)

    def tool_authorize(self, principal: str, *, transport: str, method: str, host: str,
                       path: str, query: dict[str, Any], headers: dict[str, Any], body: Any,
                       token: str | None = None, scheme: str = "https",
                       context: dict[str, Any] | None = None) -> ToolDecision:
        self.calls.append({"principal": principal, "transport": transport, "method": method,
                           "host": host, "path": path, "query": query, "headers": headers,
                           "body": body, "token": token, "scheme": scheme,
                           "context": context})
        try:
            method, host, path = normalize_method(method), normalize_host(host), \
                normalize_path(path)
        except ToolRequestError as exc:
            return self._deny("invalid_request", exc.code)
        if not self.host.matches(host):
            return self._deny("egress_deny", "egress_denied")
        if self.accounts.match(path) is not None:
            return self._deny("route_deny", "route_denied")
        if method != "POST" or self.refunds.match(path) is None:
            return self._deny("policy_deny", "no_permit")
        if not isinstance(body, dict):
            return self._deny("invalid_request", "body_not_json")
        result = redact(body, self.rules)
        if not result.ok:
            return self._deny("invalid_request", "redaction_failed")
        if isinstance(body.get("amount"), int) and body["amount"] > 300:
            return ToolDecision(Decision("pending_approval", "approval_required", "review",
                                         permission="payments:refund", approval_id="apr_1"),
                                "pending_approval")
        decision = Decision("allowed", "permitted", "ok", permission="payments:refund",
                            obligations=Obligations(redact_fields=("$.card",)))
        return ToolDecision(decision, "policy_allow", body=result.body,
                            redactions=tuple(result.redactions))


# ----------------------------------------------------------------- real HTTP server

class Recorder:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []


@pytest.fixture()
def server() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            recorder.requests.append({"method": self.command, "path": self.path,
                                      "headers": {k.lower(): v for k, v in self.headers.items()},
                                      "body": body})
            payload = b'{"ok":true}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _handle  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}", recorder
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture()
def engine_factory() -> Callable[[str], FakeEngine]:
    return FakeEngine


def test_real_server_allowed_request_is_redacted_with_correct_length(
        server: tuple[str, Recorder], engine_factory: Callable[[str], FakeEngine]) -> None:
    host, rec = server
    engine = engine_factory(host)
    body = {"amount": 100, "card": "4111111111111111", "note": "ünïcode"}
    with governed_client(engine, "agent", token="tok") as client:
        resp = client.post(f"http://{host}/v1/refunds?x=1&x=2&y=3", json=body,
                           headers={"authorization": SECRET, "cookie": "sid=SECRET",
                                    "x-api-key": "SECRET", "x-trace": "t1"})
    assert resp.json() == {"ok": True}
    assert body["card"] == "4111111111111111"  # caller's object untouched
    [arrived] = rec.requests
    sent = json.loads(arrived["body"])
    assert sent == {"amount": 100, "card": MASK, "note": "ünïcode"}
    assert b"4111111111111111" not in arrived["body"]
    assert int(arrived["headers"]["content-length"]) == len(arrived["body"])
    assert arrived["headers"]["authorization"] == SECRET  # the API still gets its key
    assert arrived["path"] == "/v1/refunds?x=1&x=2&y=3"
    [call] = engine.calls
    assert call["host"] == host and call["path"] == "/v1/refunds"
    assert call["query"] == {"x": ["1", "2"], "y": "3"}
    assert call["token"] == "tok" and call["principal"] == "agent"
    assert call["headers"]["x-trace"] == "t1"
    assert "SECRET" not in repr(call)  # no credential reached the engine


def test_real_server_denied_request_never_arrives(
        server: tuple[str, Recorder], engine_factory: Callable[[str], FakeEngine]) -> None:
    host, rec = server
    engine = engine_factory(host)
    with governed_client(engine, "agent") as client:
        with pytest.raises(ToolDenied) as info:
            client.post(f"http://{host}/v1/accounts/acct_1/delete", json={"a": 1})
        assert info.value.outcome == "route_deny"
        with pytest.raises(ToolDenied) as info:
            client.get(f"http://{host}/v1/refunds")
        assert info.value.outcome == "policy_deny"
        with pytest.raises(ApprovalRequired) as appr:
            client.post(f"http://{host}/v1/refunds", json={"amount": 500, "card": "x"})
        assert appr.value.approval_id == "apr_1"
        # Path tricks httpx does not normalise away still fail closed.
        for trick in ("/v1/accounts%2Facct_1", "/v1/refunds%2F..%2Faccounts",
                      "/v1/refunds/%2e%2e/accounts/a"):
            with pytest.raises(ToolDenied) as info:
                client.post(f"http://{host}{trick}", json={"amount": 1})
            assert info.value.outcome == "invalid_request"
    assert rec.requests == []
    assert len(engine.calls) == 6


def test_real_server_async(server: tuple[str, Recorder],
                           engine_factory: Callable[[str], FakeEngine]) -> None:
    host, rec = server
    engine = engine_factory(host)

    async def run() -> None:
        async with async_governed_client(engine, "agent") as client:
            resp = await client.post(f"http://{host}/v1/refunds",
                                     json={"amount": 5, "card": "4111"})
            assert resp.status_code == 200
            with pytest.raises(ToolDenied):
                await client.delete(f"http://{host}/v1/accounts/a")

    asyncio.run(run())
    [arrived] = rec.requests
    assert json.loads(arrived["body"]) == {"amount": 5, "card": MASK}
    assert int(arrived["headers"]["content-length"]) == len(arrived["body"])


# --------------------------------------------------------------------- MockTransport

def _mock(seen: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})
    return httpx.MockTransport(handler)


def test_mock_transport_egress_deny_and_allow() -> None:
    seen: list[httpx.Request] = []
    engine = FakeEngine("api.example.com")
    client = governed_client(engine, "agent", inner=_mock(seen))
    with pytest.raises(ToolDenied) as info:
        client.post("https://evil.example.net/v1/refunds", json={"card": "1"})
    assert info.value.outcome == "egress_deny"
    assert seen == []
    resp = client.post("https://API.Example.COM./v1/refunds", json={"card": "1", "amount": 1})
    assert resp.status_code == 200
    [req] = seen
    assert json.loads(req.content) == {"card": MASK, "amount": 1}
    assert req.headers["content-length"] == str(len(req.content))
    assert engine.calls[-1]["host"] == "api.example.com."  # normalised by the engine


def test_unredacted_body_is_forwarded_byte_for_byte() -> None:
    seen: list[httpx.Request] = []
    engine = FakeEngine("api.example.com")
    raw = b'{ "amount" : 1,\n "x": "y" }'
    client = governed_client(engine, "agent", inner=_mock(seen))
    client.post("https://api.example.com/v1/refunds", content=raw,
                headers={"content-type": "application/json"})
    assert seen[0].content == raw
    assert engine.calls[0]["body"] == {"amount": 1, "x": "y"}


@pytest.mark.parametrize("raw,ctype", [
    (b"card=4111", "application/x-www-form-urlencoded"),
    (b'{"a": 1, "a": 2}', "application/json"),          # duplicate keys: ambiguous
    (b'{"a": NaN}', "application/json"),
    (b'{"a": "\xff"}', "application/json"),              # not UTF-8
    (b"[" * 100_000 + b"]" * 100_000, "application/json"),  # nested too deep to parse
])
def test_unparseable_bodies_reach_the_engine_as_bytes(raw: bytes, ctype: str) -> None:
    seen: list[httpx.Request] = []
    engine = FakeEngine("api.example.com")
    client = governed_client(engine, "agent", inner=_mock(seen))
    with pytest.raises(ToolDenied) as info:
        client.post("https://api.example.com/v1/refunds", content=raw,
                    headers={"content-type": ctype})
    assert info.value.outcome == "invalid_request"
    assert engine.calls[0]["body"] == raw
    assert seen == []


def test_body_cap_is_enforced_before_the_engine_and_for_streams() -> None:
    seen: list[httpx.Request] = []
    engine = FakeEngine("api.example.com")
    client = governed_client(engine, "agent", inner=_mock(seen), max_body_bytes=100)
    with pytest.raises(ToolDenied) as info:
        client.post("https://api.example.com/v1/refunds", content=b"x" * 101)
    assert info.value.code == "body_too_large"

    def gen() -> Iterator[bytes]:
        while True:
            yield b"y" * 64

    with pytest.raises(ToolDenied):
        client.post("https://api.example.com/v1/refunds", content=gen())
    assert engine.calls == [] and seen == []


def test_streamed_json_body_is_read_and_redacted() -> None:
    seen: list[httpx.Request] = []
    engine = FakeEngine("api.example.com")
    client = governed_client(engine, "agent", inner=_mock(seen))
    client.post("https://api.example.com/v1/refunds",
                content=iter([b'{"card": "41', b'11", "amount": 2}']),
                headers={"content-type": "application/json"})
    assert json.loads(seen[0].content) == {"card": MASK, "amount": 2}
    assert "transfer-encoding" not in seen[0].headers
    assert seen[0].headers["content-length"] == str(len(seen[0].content))


def test_redactions_on_a_non_json_body_are_not_sent() -> None:
    class Sloppy:
        def tool_authorize(self, principal: str, **kw: Any) -> ToolDecision:
            return ToolDecision(Decision("allowed", "permitted", "ok"), "policy_allow",
                                body=None, redactions=({"field": "$.a", "strategy": "mask"},))

    seen: list[httpx.Request] = []
    client = governed_client(Sloppy(), "agent", inner=_mock(seen))
    with pytest.raises(ToolDenied) as info:
        client.post("https://x.example/", content=b"a=1",
                    headers={"content-type": "text/plain"})
    assert info.value.code == "redaction_unavailable"
    assert seen == []


def test_userinfo_and_ipv6_and_ports_seen_by_engine() -> None:
    seen: list[httpx.Request] = []
    engine = FakeEngine("api.example.com")
    client = governed_client(engine, "agent", inner=_mock(seen))
    with pytest.raises(ToolDenied):
        client.get("http://user:pw@[::1]:8080/v1/x")
    call = engine.calls[-1]
    assert call["host"] == "[::1]:8080"
    assert "pw" not in repr(call) and "authorization" not in call["headers"]
    client.post("https://user:pw@api.example.com:443/v1/refunds", json={"amount": 1})
    assert engine.calls[-1]["host"] == "api.example.com"  # default port omitted
    assert seen[-1].headers["authorization"].startswith("Basic ")


def test_dropped_headers_cover_credentials() -> None:
    assert {"authorization", "cookie", "proxy-authorization"} <= DROPPED_HEADERS
    seen: list[httpx.Request] = []
    engine = FakeEngine("api.example.com")
    client = governed_client(engine, "agent", inner=_mock(seen))
    client.post("https://api.example.com/v1/refunds", json={"amount": 1},
                headers={"Proxy-Authorization": "Basic SECRET", "Cookie": "a=SECRET",
                         "X-Amz-Security-Token": "SECRET"})
    assert "SECRET" not in repr(engine.calls)


def test_kwargs_that_bypass_the_transport_are_refused() -> None:
    engine = FakeEngine("api.example.com")
    bypasses: list[dict[str, Any]] = [
        {"transport": httpx.MockTransport(lambda r: httpx.Response(200))},
        {"mounts": {}}, {"proxy": "http://127.0.0.1:1"}]
    for kw in bypasses:
        with pytest.raises(TypeError):
            governed_client(engine, "agent", **kw)
        with pytest.raises(TypeError):
            async_governed_client(engine, "agent", **kw)


def test_async_mock_transport_and_transport_classes() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201)

    engine = FakeEngine("api.example.com")
    transport = AsyncGovernedTransport(engine, "agent", inner=httpx.MockTransport(handler))

    async def run() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            resp = await client.post("https://api.example.com/v1/refunds",
                                     json={"card": "4", "amount": 1})
            assert resp.status_code == 201
            with pytest.raises(ApprovalRequired):
                await client.post("https://api.example.com/v1/refunds", json={"amount": 301})

            async def agen() -> Any:
                yield b'{"card": "9", '
                yield b'"amount": 3}'
            await client.post("https://api.example.com/v1/refunds", content=agen(),
                              headers={"content-type": "application/json"})

    asyncio.run(run())
    assert [json.loads(r.content) for r in seen] == [{"card": MASK, "amount": 1},
                                                     {"card": MASK, "amount": 3}]
    sync = GovernedTransport(engine, "agent", inner=_mock([]))
    with httpx.Client(transport=sync) as client, pytest.raises(ToolDenied):
        client.get("https://api.example.com/v1/accounts/x")
