"""The governed httpx client against the REAL engine and a real HTTP server on 127.0.0.1.

The server records every request that reaches it, so each test can prove what left the
process: nothing for a deny, the redacted body (with a matching Content-Length) for an
allow. The tool's host pattern carries the server's port (``"127.0.0.1:PORT"``): a
pattern without a port only matches requests without one.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from policyengine import async_governed_client, governed_client
from policyengine.decision import ApprovalRequired, ToolDenied
from policyengine.engine import Engine
from policyengine.tools import MASK

SECRET = "Bearer sk_live_SECRET"

POLICY = """namespace live
currency USD
role r: api:*
agent "bot": r

limit cap: api:refund amount <= 500 USD
approval big: api:refund over 200 USD
permit creds: creds:check when context.authorization == "Bearer sk_live_SECRET"
permit cookie: creds:cookie when context.cookie == "sid=1"

tool live: http "http://127.0.0.1:{port}" {{
  POST "/v1/refunds" -> api:refund {{ amount = $.amount minor, currency = $.currency }}
  GET "/v1/ping" -> api:ping
  GET "/v1/creds" -> creds:check {{ authorization = header "Authorization" }}
  GET "/v1/cookie" -> creds:cookie {{ cookie = header "Cookie" }}
  POST "/v1/echo" -> api:echo
  deny "/v1/accounts/**"
  redact $.card mask
  redact $.email remove
}}
tool mock: http "mock.example.com" {{
  POST "/v1/refunds" -> api:refund {{ amount = $.amount minor, currency = $.currency }}
  deny "/v1/admin/**"
  redact $.card partial 4
}}
"""


class Recorder:
    """A real HTTP server on 127.0.0.1 (port 0) that records what arrived."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorder.seen.append({"method": self.command, "path": self.path,
                                      "headers": {k.lower(): v for k, v in self.headers.items()},
                                      "body": body})
                out = b'{"ok":true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Recorder, Recorder]]:
    bound, unbound = Recorder(), Recorder()
    yield bound, unbound
    bound.close()
    unbound.close()


@pytest.fixture
def server(servers: tuple[Recorder, Recorder]) -> Recorder:
    servers[0].seen.clear()
    servers[1].seen.clear()
    return servers[0]


@pytest.fixture(scope="module")
def engine(servers: tuple[Recorder, Recorder]) -> Engine:
    return Engine.from_source(POLICY.format(port=servers[0].port))


class Spy:
    """Passes every call to the real engine and keeps the arguments it was given."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.calls: list[dict[str, Any]] = []

    def tool_authorize(self, principal: str, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self.engine.tool_authorize(principal, **kwargs)


# --------------------------------------------------------------------------- sync client

def test_port_is_part_of_the_binding(engine: Engine, server: Recorder) -> None:
    d = engine.tool_authorize("bot", transport="http", method="GET", scheme="http",
                              host=f"127.0.0.1:{server.port}", path="/v1/ping")
    assert d.allowed and d.tool == "live.live"
    d = engine.tool_authorize("bot", transport="http", method="GET", scheme="http",
                              host="127.0.0.1", path="/v1/ping")
    assert d.outcome == "egress_deny"
    # The scheme is part of the binding too: the pattern says http://.
    d = engine.tool_authorize("bot", transport="http", method="GET", scheme="https",
                              host=f"127.0.0.1:{server.port}", path="/v1/ping")
    assert d.outcome == "egress_deny"


def test_allowed_request_is_redacted_on_the_wire(engine: Engine, server: Recorder) -> None:
    body = {"amount": 1500, "currency": "USD", "card": "4111111111111111",
            "email": "a@example.com", "note": "caf\u00e9"}
    with governed_client(engine, "bot") as client:
        r = client.post(f"{server.base}/v1/refunds", json=body)
    assert r.status_code == 200
    assert len(server.seen) == 1
    got = server.seen[0]
    assert got["method"] == "POST" and got["path"] == "/v1/refunds"
    sent = json.loads(got["body"])
    assert sent == {"amount": 1500, "currency": "USD", "card": MASK, "note": "caf\u00e9"}
    assert b"4111111111111111" not in got["body"] and b"a@example.com" not in got["body"]
    assert int(got["headers"]["content-length"]) == len(got["body"])
    assert body["card"] == "4111111111111111"  # the caller's object is untouched


def test_unredacted_body_goes_out_byte_for_byte(engine: Engine, server: Recorder) -> None:
    raw = b'{ "a": 1,  "b": [1, 2] }'
    with governed_client(engine, "bot") as client:
        client.post(f"{server.base}/v1/echo", content=raw,
                    headers={"content-type": "application/json"})
    assert server.seen[0]["body"] == raw
    assert server.seen[0]["headers"]["content-length"] == str(len(raw))


@pytest.mark.parametrize(("method", "path", "outcome"), [
    ("GET", "/v1/accounts/acct_1", "route_deny"),
    ("POST", "/v1/accounts", "route_deny"),
    ("GET", "/v1/unknown", "route_deny"),
    ("GET", "/v1/%2e%2e/v1/accounts/acct_1", "invalid_request"),
    ("GET", "/v1/accounts%2Facct_1", "invalid_request"),
    ("GET", "/v1/x;y/accounts", "invalid_request"),
])
def test_denied_request_never_reaches_the_server(engine: Engine, server: Recorder,
                                                 method: str, path: str, outcome: str) -> None:
    with governed_client(engine, "bot") as client, pytest.raises(ToolDenied) as err:
        client.request(method, f"{server.base}{path}", json={"card": "4111"})
    assert err.value.outcome == outcome
    assert server.seen == []


def test_unbound_port_is_egress_denied(engine: Engine,
                                       servers: tuple[Recorder, Recorder]) -> None:
    _bound, unbound = servers
    unbound.seen.clear()
    with governed_client(engine, "bot") as client, pytest.raises(ToolDenied) as err:
        client.get(f"{unbound.base}/v1/ping")
    assert err.value.outcome == "egress_deny"
    assert unbound.seen == []


def test_limit_exceeded_never_leaves(engine: Engine, server: Recorder) -> None:
    with governed_client(engine, "bot") as client, pytest.raises(ToolDenied) as err:
        client.post(f"{server.base}/v1/refunds", json={"amount": 50001, "currency": "USD"})
    assert err.value.outcome == "policy_deny"
    assert err.value.decision.code == "limit_exceeded"
    assert server.seen == []


def test_pending_raises_approval_required(engine: Engine, server: Recorder) -> None:
    with governed_client(engine, "bot") as client, pytest.raises(ApprovalRequired) as err:
        client.post(f"{server.base}/v1/refunds", json={"amount": 30000, "currency": "USD"})
    assert err.value.approval_id
    assert engine.approvals.get(err.value.approval_id).status == "pending"
    assert server.seen == []


def test_credentials_never_enter_the_decision(engine: Engine, server: Recorder) -> None:
    spy = Spy(engine)
    with governed_client(spy, "bot") as client:
        # The permit holds only if the Authorization header reached the context.
        with pytest.raises(ToolDenied) as err:
            client.get(f"{server.base}/v1/creds", headers={"Authorization": SECRET})
        assert err.value.decision.code == "no_permit"
        with pytest.raises(ToolDenied):
            client.get(f"{server.base}/v1/cookie", headers={"Cookie": "sid=1"})
        # Allowed requests keep their credentials on the wire.
        client.get(f"{server.base}/v1/ping", headers={"Authorization": SECRET,
                                                       "Cookie": "sid=1"})
    assert len(server.seen) == 1
    assert server.seen[0]["headers"]["authorization"] == SECRET
    for call in spy.calls:
        assert "authorization" not in call["headers"] and "cookie" not in call["headers"]
        assert SECRET not in json.dumps(call, default=str)


def test_userinfo_becomes_a_dropped_credential(engine: Engine, server: Recorder) -> None:
    spy = Spy(engine)
    with governed_client(spy, "bot") as client:
        client.get(f"http://user:pw@127.0.0.1:{server.port}/v1/ping")
    assert spy.calls[0]["host"] == f"127.0.0.1:{server.port}"
    assert "authorization" not in spy.calls[0]["headers"]
    assert server.seen[0]["headers"]["authorization"].startswith("Basic ")


def test_body_over_the_cap_is_refused_locally(engine: Engine, server: Recorder) -> None:
    with governed_client(engine, "bot") as client, pytest.raises(ToolDenied) as err:
        client.post(f"{server.base}/v1/echo", content=b"x" * (1024 * 1024 + 1))
    assert err.value.outcome == "invalid_request"
    assert server.seen == []


def test_non_json_body_on_a_redacting_tool_is_denied(engine: Engine, server: Recorder) -> None:
    with governed_client(engine, "bot") as client, pytest.raises(ToolDenied) as err:
        client.post(f"{server.base}/v1/echo", content=b"card=4111111111111111",
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert err.value.outcome == "invalid_request"
    assert [x.code for x in err.value.decision.diagnostics] == ["unreadable_body"]
    assert server.seen == []


def test_duplicate_keys_never_leave(engine: Engine, server: Recorder) -> None:
    raw = b'{"amount": 99999999, "amount": 100, "currency": "USD"}'
    with governed_client(engine, "bot") as client, pytest.raises(ToolDenied):
        client.post(f"{server.base}/v1/refunds", content=raw,
                    headers={"content-type": "application/json"})
    assert server.seen == []


# -------------------------------------------------------------------------- async client

def test_async_client(engine: Engine, server: Recorder) -> None:
    async def run() -> tuple[httpx.Response, BaseException | None, BaseException | None]:
        async with async_governed_client(engine, "bot") as client:
            ok = await client.post(f"{server.base}/v1/refunds",
                                   json={"amount": 100, "currency": "USD", "card": "4111"})
            denied = pending = None
            try:
                await client.get(f"{server.base}/v1/accounts/acct_1")
            except ToolDenied as exc:
                denied = exc
            try:
                await client.post(f"{server.base}/v1/refunds",
                                  json={"amount": 25000, "currency": "USD"})
            except ApprovalRequired as exc:
                pending = exc
            return ok, denied, pending

    ok, denied, pending = asyncio.run(run())
    assert ok.status_code == 200
    assert isinstance(denied, ToolDenied) and denied.outcome == "route_deny"
    assert isinstance(pending, ApprovalRequired) and pending.approval_id
    assert len(server.seen) == 1
    got = server.seen[0]
    assert json.loads(got["body"]) == {"amount": 100, "currency": "USD", "card": MASK}
    assert int(got["headers"]["content-length"]) == len(got["body"])


# ------------------------------------------------------------------- MockTransport inner

def test_mock_transport_inner(engine: Engine) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    with governed_client(engine, "bot", inner=httpx.MockTransport(handler)) as client:
        r = client.post("https://mock.example.com/v1/refunds",
                        json={"amount": 1500, "currency": "USD", "card": "4242424242424242"})
        assert r.status_code == 200
        with pytest.raises(ToolDenied) as err:
            client.post("https://mock.example.com/v1/admin/users", json={})
        assert err.value.outcome == "route_deny"
        with pytest.raises(ToolDenied) as err:
            client.get("https://elsewhere.example.com/")
        assert err.value.outcome == "egress_deny"
        with pytest.raises(ToolDenied) as err:
            client.get("https://mock.example.com:8443/v1/refunds")
        assert err.value.outcome == "egress_deny"
    assert len(seen) == 1
    body = seen[0].content
    assert json.loads(body) == {"amount": 1500, "currency": "USD",
                                "card": "************4242"}
    assert seen[0].headers["content-length"] == str(len(body))
