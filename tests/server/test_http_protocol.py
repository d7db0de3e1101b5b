"""The service's own HTTP/1.1 protocol (``_http.ServiceProtocol``, what ``policyengine
serve`` runs) over raw sockets: keep-alive, pipelining, ``Connection: close``, HTTP/1.0,
``Expect: 100-continue``, chunked bodies, ``HEAD``, malformed requests, bodies over the
limit or too slow; and, for hostile Cycles requests (wrong content type, invalid JSON,
duplicate keys and headers, nulls, wrong types, no key), the very answers the ASGI
application gives under uvicorn's own protocol."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

import policyengine as pe
from policyengine.server import Credentials, CyclesKey, ServiceConfig, create_app, hash_secret

from .service_harness import serving

POLICY = "namespace t\nbudget b: llm.completion:* limit 1000000 tokens per day per agent\n"
KEY = b"k-acme"


def _service(**config: Any) -> Any:
    engine = pe.Engine.from_source(POLICY)
    return create_app(engine, credentials=Credentials(cycles_keys=(
        CyclesKey("acme", hash_secret(KEY.decode()), "acme"),)),
        config=ServiceConfig(**{"access_log": False, "watch_interval": None, **config}))


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with serving(_service(max_body_bytes=4096, body_timeout=0.5), http="service") as p:
        yield p


class Conn:
    """A raw HTTP/1.1 client connection: send bytes, read answers by Content-Length."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def answer(self, head_only: bool = False) -> tuple[int, dict[bytes, bytes], bytes]:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError("closed")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if status == 100:
            return status, headers, b""
        length = 0 if head_only else int(headers.get(b"content-length", b"0"))
        while len(self.buf) < length:
            if not self._fill():
                raise ConnectionError("closed")
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def closed(self, within: float = 2.0) -> bool:
        """Whether the server closes the connection within ``within`` seconds (under the
        keep-alive timeout of 5 s: an answer's close, not the idle one)."""
        self.sock.settimeout(within)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def request(method: str, path: str, body: bytes = b"", *, headers: list[tuple[str, str]]
            | None = None, key: bool = True, version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "host: 127.0.0.1"]
    if headers is None:
        headers = [("content-type", "application/json")]
    lines += [f"{k}: {v}" for k, v in headers]
    if key:
        lines.append("x-cycles-api-key: " + KEY.decode())
    if not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def create(n: str, amount: int = 10) -> bytes:
    return (b'{"idempotency_key":"%s","subject":{"agent":"a"},"action":{"kind":'
            b'"llm.completion","name":"m"},"estimate":{"unit":"TOKENS","amount":%d}}'
            % (n.encode(), amount))


def test_keep_alive_and_pipelined_requests_answer_in_order(port: int) -> None:
    c = Conn(port)
    c.send(request("POST", "/v1/reservations", create("p1")))
    status, headers, body = c.answer()
    assert status == 200 and headers[b"content-type"] == b"application/json"
    assert headers[b"x-cycles-tenant"] == b"acme" and b"date" in headers
    rid = json.loads(body)["reservation_id"]
    commit = b'{"idempotency_key":"p1c","actual":{"unit":"TOKENS","amount":4}}'
    # Three requests in one write: answered in order on the same connection.
    c.send(request("POST", f"/v1/reservations/{rid}/commit", commit)
           + request("GET", "/actuator/health/readiness", key=False, headers=[])
           + request("POST", f"/v1/reservations/{rid}/commit", commit))
    first, second, third = c.answer(), c.answer(), c.answer()
    assert first[0] == 200 and json.loads(first[2])["charged"]["amount"] == 4
    assert second[0] == 200 and json.loads(second[2]) == {"status": "UP"}
    assert third[0] == 200 and third[2] == first[2]  # the replay
    assert not c.buf
    c.close()


def test_connection_close_and_http_1_0_close_after_the_answer(port: int) -> None:
    for extra, version in (([("connection", "close")], "1.1"), ([], "1.0")):
        c = Conn(port)
        c.send(request("GET", "/actuator/health/readiness", key=False, headers=extra,
                       version=version))
        status, headers, _ = c.answer()
        assert status == 200 and headers[b"connection"] == b"close"
        assert c.closed()
        c.close()


def test_expect_continue_and_a_chunked_body(port: int) -> None:
    c = Conn(port)
    body = create("ch1")
    c.send(request("POST", "/v1/reservations", headers=[
        ("content-type", "application/json"), ("expect", "100-continue"),
        ("transfer-encoding", "chunked")]))
    assert c.answer()[0] == 100
    half = len(body) // 2
    c.send(b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half,
                                                  body[half:]))
    status, _, answer = c.answer()
    assert status == 200 and json.loads(answer)["decision"] == "ALLOW"
    c.close()


def test_head_is_answered_without_a_body(port: int) -> None:
    c = Conn(port)
    c.send(request("HEAD", "/actuator/health/readiness", key=False, headers=[])
           + request("GET", "/actuator/health/readiness", key=False, headers=[]))
    status, headers, body = c.answer(head_only=True)
    assert status == 405 and int(headers[b"content-length"]) > 0 and body == b""
    assert c.answer()[0] == 200  # the next answer starts right after the head
    c.close()


def test_a_malformed_request_is_400_and_closed(port: int) -> None:
    for raw in (b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\ncontent-length: x\r\n\r\n",
                b"GET /\x01 HTTP/1.1\r\n\r\n"):
        c = Conn(port)
        c.send(raw)
        status, headers, _ = c.answer()
        assert status == 400 and headers[b"connection"] == b"close", raw
        assert c.closed()
        c.close()


def test_bodies_over_the_limit_are_refused_at_once(port: int) -> None:
    big = create("big").replace(b'"m"', b'"' + b"m" * 5000 + b'"')
    for how in ("declared", "chunked"):
        c = Conn(port)
        if how == "declared":  # refused on the header, before the body is sent
            c.send(request("POST", "/v1/reservations", headers=[
                ("content-type", "application/json"), ("content-length", str(len(big)))]))
        else:
            c.send(request("POST", "/v1/reservations", headers=[
                ("content-type", "application/json"), ("transfer-encoding", "chunked")])
                + b"%x\r\n%s\r\n" % (len(big), big))
        status, headers, body = c.answer()
        answer = json.loads(body)
        assert status == 413 and answer["error"] == "INVALID_REQUEST", how
        assert answer["details"]["code"] == "body_too_large" and answer["request_id"]
        assert headers[b"x-request-id"] == answer["request_id"].encode()
        assert c.closed()
        c.close()


def test_a_request_line_and_headers_over_the_limit_are_431_and_closed(port: int) -> None:
    """64 KiB of URL and headers at most: a client cannot grow a connection's memory
    with endless headers (or one endless header, or URL) before a body starts; just
    under the limit is answered as usual."""
    filler = "x" * 1000
    for what, raw in (
        ("many headers", request("POST", "/v1/reservations", create("h1"), headers=[
            ("content-type", "application/json"),
            *((f"x-fill-{i}", filler) for i in range(70))])),
        ("one header", request("POST", "/v1/reservations", create("h2"), headers=[
            ("content-type", "application/json"), ("x-fill", "y" * 70_000)])),
        ("a URL", request("GET", "/v1/balances?tenant=acme&" + "q" * 70_000)),
    ):
        c = Conn(port)
        c.send(raw)
        status, headers, body = c.answer()
        assert status == 431 and headers[b"connection"] == b"close", what
        assert json.loads(body)["error"]["code"] == "headers_too_large", what
        assert c.closed(), what
        c.close()
    c = Conn(port)
    c.send(request("POST", "/v1/reservations", create("h3"), headers=[
        ("content-type", "application/json"),
        *((f"x-fill-{i}", filler) for i in range(60))]))
    status, _, body = c.answer()
    assert status == 200 and json.loads(body)["decision"] == "ALLOW"
    c.close()


def test_a_body_too_slow_is_408(port: int) -> None:
    c = Conn(port)
    body = create("slow")
    c.send(request("POST", "/v1/reservations", headers=[
        ("content-type", "application/json"), ("content-length", str(len(body)))])
        + body[:10])
    status, _, answer = c.answer()
    assert status == 408 and json.loads(answer)["details"]["code"] == "request_timeout"
    assert c.closed()
    c.close()


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout() -> None:
    import uvicorn

    from policyengine.server._http import ServiceProtocol
    from tests.server.service_harness import free_port
    app = _service()
    p = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=p, log_level="warning",
                                           http=ServiceProtocol, timeout_keep_alive=1))
    import threading
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        c = Conn(p)
        c.send(request("GET", "/actuator/health/readiness", key=False, headers=[]))
        assert c.answer()[0] == 200
        start = time.monotonic()
        assert c.closed(within=4)
        assert 0.5 < time.monotonic() - start < 4
        c.close()
    finally:
        server.should_exit = True
        thread.join(10)


# ---------------------------------------------------------------------- same answers
HOSTILE: list[tuple[str, str, bytes, list[tuple[str, str]], bool]] = [
    ("POST", "/v1/reservations", create("h1"), [("content-type", "text/plain")], True),
    ("POST", "/v1/reservations", b'{"idempotency_key":', [("content-type",
                                                           "application/json")], True),
    ("POST", "/v1/reservations", create("h3")[:-1] + b',"ttl_ms":NaN}',
     [("content-type", "application/json")], True),
    ("POST", "/v1/reservations", create("h4").replace(b'"agent":"a"',
                                                      b'"agent":"a","agent":"b"'),
     [("content-type", "application/json")], True),
    ("POST", "/v1/reservations", create("h5").replace(b'"agent":"a"', b'"agent":null'),
     [("content-type", "application/json")], True),
    ("POST", "/v1/reservations", create("h6").replace(b'"amount":10', b'"amount":"10"'),
     [("content-type", "application/json")], True),
    ("POST", "/v1/reservations", create("h7").replace(b'"amount":10', b'"amount":10.0'),
     [("content-type", "application/json")], True),
    ("POST", "/v1/reservations", create("h8"), [("content-type", "application/json")], False),
    ("POST", "/v1/reservations", create("h9"), [("content-type", "application/json"),
                                                ("x-cycles-api-key", "other")], True),
    ("POST", "/v1/reservations", create("h10"), [("content-type", "application/json"),
                                                 ("x-idempotency-key", "other")], True),
    ("POST", "/v1/reservations", b"\xef\xbb\xbf" + create("h11"),
     [("content-type", "application/json")], True),
    ("POST", "/v1/reservations", create("h12").replace(b'"agent":"a"', b'"tenant":"globex"'),
     [("content-type", "application/json")], True),
    ("POST", "/v1/reservations/rsv_nope/commit",
     b'{"idempotency_key":"x","actual":{"unit":"TOKENS","amount":1}}',
     [("content-type", "application/json")], True),
    ("POST", "/v1/reservations//commit", b"{}", [("content-type", "application/json")], True),
    ("PUT", "/v1/reservations", b"{}", [("content-type", "application/json")], True),
    ("GET", "/nowhere", b"", [], True),
    ("GET", "/v1/reservations?limit=0", b"", [], True),
    ("POST", "/v1/decide", b'{"idempotency_key":"d","subject":{"agent":"a"},"action":'
     b'{"kind":"llm.completion","name":"m"},"estimate":{"unit":"TOKENS","amount":5}}',
     [("content-type", "application/json")], True),
]


def _comparable(status: int, headers: dict[bytes, bytes], body: bytes) -> Any:
    text = re.sub(rb"(req|rsv)_[0-9a-f]+", rb"\1_*", body)
    kept = {k: re.sub(rb"(req|rsv)_[0-9a-f]+", rb"\1_*", v) for k, v in headers.items()
            if k not in (b"date", b"server", b"content-length")}
    return status, kept, json.loads(text) if text else None


def _answers(port: int) -> list[Any]:
    out = []
    c = Conn(port)
    for method, path, body, headers, key in HOSTILE:
        c.send(request(method, path, body, headers=headers, key=key))
        out.append(_comparable(*c.answer()))
    c.close()
    return out


def test_hostile_requests_answer_as_under_uvicorns_protocol() -> None:
    with serving(_service(), http="service") as ours, serving(_service(),
                                                               http="uvicorn") as theirs:
        mine, reference = _answers(ours), _answers(theirs)
    assert mine == reference
    statuses = {s for s, _, _ in mine}
    assert {200, 400, 401, 403, 404, 405} <= statuses, statuses
