"""The service's own HTTP/1.1 connection protocol, for ``policyengine serve``.

uvicorn still runs the server (sockets, workers, signals, lifespan, graceful shutdown);
this replaces only its per-connection protocol. Every handler of the service is
synchronous (a decision takes microseconds and runs on the event loop), so once a
request's body is in, the answer can be written at once: no task per request, no ASGI
scope, message dicts or coroutines. Per request that is less than half the CPU of
uvicorn's protocol and the ASGI round trip (benchmarks/README.md, "Cycles wire"), and
the wire's answers are the same bytes: the route, headers, body limits, refusals,
metrics and access log are :class:`~._app.PolicyService`'s own steps, run in the same
order as its ASGI entry point runs them.

HTTP/1.1 as uvicorn's httptools protocol serves it: keep-alive (closed after
``timeout_keep_alive`` idle seconds) and pipelining (answers in order), ``Connection:
close`` and HTTP/1.0, ``Expect: 100-continue``, chunked request bodies, ``HEAD``
answered without a body, a malformed request answered 400 and closed, a body still
arriving after ``body_timeout`` seconds answered 408 and closed. A body over the limit
is not kept: its bytes are counted and dropped, and the request is refused 413 once
complete (or at once when its ``Content-Length`` says so). A request line and headers
over ``max_header_bytes`` (64 KiB) are not kept either: 431 and closed, so a client
cannot grow a connection's memory before its body starts. Upgrades (WebSocket, h2c)
are not offered: such a request is answered as plain HTTP. The access log's client is
the peer address, or, from a trusted proxy (uvicorn's ``forwarded_allow_ips``), the
address ``X-Forwarded-For`` names, as uvicorn's proxy headers middleware reads it.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, cast

import httptools

from policyengine.server._app import PolicyService, RefusalError, Request, Route

if TYPE_CHECKING:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

__all__ = ["ServiceProtocol"]

_REASONS = {100: "Continue", 200: "OK", 201: "Created", 202: "Accepted", 204: "No Content",
            400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
            410: "Gone", 413: "Payload Too Large", 415: "Unsupported Media Type",
            429: "Too Many Requests", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}
_STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason.encode())
                 for code, reason in _REASONS.items()}
_BAD_TEXT = b"Invalid HTTP request received."
_BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_BAD_TEXT),
                                                                          _BAD_TEXT))


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d \r\n" % status
    return line


class _Defaults:
    """uvicorn's default response headers (``date``, once a second) as bytes, rebuilt
    when the server swaps its list."""

    seen: Any = None
    text = b""

    @classmethod
    def of(cls, headers: list[tuple[bytes, bytes]]) -> bytes:
        if headers is not cls.seen:
            cls.text = b"".join(b"%s: %s\r\n" % (k, v) for k, v in headers)
            cls.seen = headers
        return cls.text


class ServiceProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection to a :class:`PolicyService` (``uvicorn.Config(http=)``;
    the config's ``app`` must be the service itself)."""

    def __init__(self, config: Config, server_state: ServerState,
                 app_state: dict[str, Any], _loop: asyncio.AbstractEventLoop | None = None
                 ) -> None:
        if not config.loaded:
            config.load()
        service = config.app
        if not isinstance(service, PolicyService):
            raise TypeError("ServiceProtocol serves a PolicyService")
        self.service = service
        self.config = config
        self.loop = _loop or asyncio.get_event_loop()
        self.state = server_state
        self.limit = service.config.max_body_bytes
        self.head_limit = service.config.max_header_bytes
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer: Any = None
        self.keep_alive_for = float(config.timeout_keep_alive)
        self.idle_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None
        self.last_active = 0.0
        self.closing = False  # closed, or closing: nothing more is answered
        self.shutting = False  # the server stops: close after the answer being read
        self.paused = False
        # The request being read.
        self.in_message = False
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.parts: list[bytes] = []
        self.size = 0
        self.head_size = 0  # bytes of the request line's URL and the headers so far
        self.started = 0.0

    # ------------------------------------------------------------------ connection
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
        self.peer = transport.get_extra_info("peername")
        self.state.connections.add(self)  # type: ignore[arg-type]
        self.last_active = self.loop.time()
        self.idle_timer = self.loop.call_later(self.keep_alive_for, self._idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        self.closing = True
        for timer in (self.idle_timer, self.body_timer):
            if timer is not None:
                timer.cancel()
        self.idle_timer = self.body_timer = None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_active = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no upgrade is offered: the request was answered as plain HTTP
        except httptools.HttpParserError:
            self._close_with(_BAD_REQUEST)
            return
        if self.in_message and self.body_timer is None and not self.closing:
            self.body_timer = self.loop.call_later(self.service.config.body_timeout,
                                                   self._too_slow)

    def eof_received(self) -> bool | None:
        return None  # close the connection (a half-closed client gets no more answers)

    def pause_writing(self) -> None:
        """The client reads slower than it asks: stop reading its requests."""
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and self.paused:
            self.paused = False
            self.transport.resume_reading()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: close now when idle, else after this answer."""
        if not self.in_message:
            self._close()
        else:
            self.shutting = True

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _close_with(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
        self._close()

    def _idle(self) -> None:
        self.idle_timer = None
        if self.closing:
            return
        left = self.last_active + self.keep_alive_for - self.loop.time()
        if left <= 0 and not self.in_message:
            self._close()
        else:
            self.idle_timer = self.loop.call_later(max(left, 0.1), self._idle)

    def _too_slow(self) -> None:
        """The body did not arrive within ``body_timeout``: 408, then close."""
        self.body_timer = None
        if self.in_message and not self.closing:
            self._refuse_now(RefusalError(408, "request_timeout",
                                           "the body took too long to arrive"))

    def _refuse_now(self, refusal: RefusalError) -> None:
        """Answer the request being read with ``refusal`` (or the refusal its route or
        headers earn first, as the ASGI entry point orders them) and close."""
        service = self.service
        method, path = self._method(), self._path()
        route: Route | None = None
        try:
            route = service.route_of(method, path)[0]
            service.headers_of(self.headers)
            raise refusal
        except RefusalError as exc:
            reply = service.refused(route, exc, self.headers)
        self._write(reply, False, head=method == "HEAD")
        service.answered(route, reply, self.started, method, path, self._client())
        self._close()

    # ------------------------------------------------------------------ parser callbacks
    def on_message_begin(self) -> None:
        self.in_message = True
        self.started = time.perf_counter()
        self.url = b""
        self.headers = []
        self.parts = []
        self.size = 0
        self.head_size = 0

    def on_url(self, url: bytes) -> None:
        if self.closing:
            return
        self.head_size += len(url)
        if self.head_size > self.head_limit:
            self._head_too_large()
            return
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.closing:
            return
        self.head_size += len(name) + len(value) + 4  # ": " and the line's end
        if self.head_size > self.head_limit:
            self._head_too_large()
            return
        self.headers.append((name.lower(), value))

    def _head_too_large(self) -> None:
        """431 at once, then close: neither the rest of the headers nor a body is
        read. No route is looked for (the URL may be cut short), so nothing else can
        be answered first."""
        self.headers = []
        service, method = self.service, self._method()
        reply = service.refused(None, RefusalError(
            431, "headers_too_large",
            f"a request's line and headers are limited to {self.head_limit} bytes"))
        self._write(reply, False, head=method == "HEAD")
        service.answered(None, reply, self.started, method, "", self._client())
        self._close()

    def on_headers_complete(self) -> None:
        if self.closing:
            return
        expect = False
        for name, value in self.headers:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                self._too_large()  # said so: refused before a byte of it is read
                return
            if name == b"expect" and value.lower() == b"100-continue":
                expect = True
        if expect and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.closing:
            return
        self.size += len(body)
        if self.size <= self.limit:
            self.parts.append(body)
        else:
            self._too_large()

    def _too_large(self) -> None:
        """413 at once (after the refusals that come first: no such route, an ambiguous
        header), then close: the rest of the body is never read."""
        self.parts = []
        self._refuse_now(RefusalError(413, "body_too_large",
                                       f"bodies are limited to {self.limit} bytes"))

    def on_message_complete(self) -> None:
        self.in_message = False
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        if self.closing:
            return
        parser = self.parser
        keep_alive = parser.should_keep_alive()
        method = parser.get_method().decode("ascii", "replace")
        service = self.service
        route: Route | None = None
        path = ""
        try:
            url = httptools.parse_url(self.url)
            raw_path = url.path
            path = raw_path.decode("ascii")
            if "%" in path:
                from urllib.parse import unquote
                path = unquote(path)
            route, params = service.route_of(method, path)
            headers = service.headers_of(self.headers)
            parts = self.parts
            body = parts[0] if len(parts) == 1 else b"".join(parts)
            reply = route.handler(Request(headers, body, params, url.query or b""))
        except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
            self._close_with(_BAD_REQUEST)
            return
        except Exception as exc:  # refused, or failed: the service's own answer
            reply = service.refused(route, exc, self.headers)
        self.parts = []
        self._write(reply, keep_alive and not self.shutting, head=method == "HEAD")
        service.answered(route, reply, self.started, method, path, self._client())
        self.state.total_requests += 1
        if not keep_alive or self.shutting:
            self._close()

    # ------------------------------------------------------------------ helpers
    def _write(self, reply: Any, keep_alive: bool, *, head: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        lines = [b"%s: %s\r\n" % (name, value)
                 for name, value in self.service.reply_headers(reply)]
        head_text = b"".join(lines)
        if head_text.count(b"\n") != len(lines) or head_text.count(b"\r") != len(lines):
            # A header value with a line break would split the answer: never sent.
            reply = self.service.refused(None, RuntimeError("a line break in a header"))
            head_text = b"".join(b"%s: %s\r\n" % (name, value)
                                 for name, value in self.service.reply_headers(reply))
        transport.write(b"".join((
            _status_line(reply.status), _Defaults.of(self.state.default_headers), head_text,
            b"" if keep_alive else b"connection: close\r\n", b"\r\n",
            b"" if head else reply.body)))

    def _method(self) -> str:
        try:
            return str(self.parser.get_method().decode("ascii", "replace"))
        except httptools.HttpParserError:  # pragma: no cover - no method read yet
            return ""

    def _path(self) -> str:
        try:
            return str(httptools.parse_url(self.url).path.decode("ascii", "replace"))
        except httptools.HttpParserInvalidURLError:
            return ""

    def _client(self) -> Any:
        """The client the access log names (only read when it is on)."""
        if not self.service.config.access_log:
            return self.peer
        return _forwarded_client(self.config, self.peer, self.headers)


def _forwarded_client(config: Config, peer: Any, headers: list[tuple[bytes, bytes]]) -> Any:
    """What uvicorn's proxy headers middleware makes the ASGI scope's client: from a
    trusted peer, the address ``X-Forwarded-For`` names."""
    if not config.proxy_headers or not peer:
        return peer
    values = [v for k, v in headers if k == b"x-forwarded-for"]
    if not values:
        return peer
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
    trusted = ProxyHeadersMiddleware(None, config.forwarded_allow_ips or "127.0.0.1")  # type: ignore[arg-type]
    if peer[0] not in trusted.trusted_hosts:
        return peer
    host, port = trusted.trusted_hosts.get_trusted_client_address(
        b", ".join(values).decode("latin1"))
    return (host, port) if host else peer
