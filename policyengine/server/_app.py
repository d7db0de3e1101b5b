"""The decision service: one ASGI application over an :class:`~policyengine.Engine`.

A bare ASGI callable with its own small router (measured: benchmarks/bench_asgi_stacks.py;
a framework's routing and dependency layers cost more than the decision itself). Bodies
are decoded by :mod:`._wirejson` (money exact) and validated by the pydantic models of
:mod:`._models`; responses are those models serialised by pydantic. Engine calls are
synchronous and run on the event loop: a decision takes microseconds, far less than a
thread hop.

Fail closed: every refusal is a 4xx with an :class:`ErrorResponse` (``allowed: false``),
an unexpected fault is a 500 with the same shape and no traceback, and nothing but a
decision the engine made can carry ``allowed: true``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import signal
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

from pydantic import BaseModel, TypeAdapter, ValidationError

import policyengine as pe
from policyengine.money import MAX_TEXT_LENGTH
from policyengine.server import _models as m
from policyengine.server._access import ACCESS_TYP, AccessTokens, token_typ
from policyengine.server._credentials import Credentials
from policyengine.server._faults import FAULT_MESSAGES, public_decision, public_message
from policyengine.server._metrics import Metrics
from policyengine.server._redactions import client_redactions
from policyengine.server._wirejson import MalformedJsonError, loads, tool_body, tool_request

__all__ = ["PolicyService", "ServiceConfig", "create_app"]

log = logging.getLogger("policyengine.server")
access_log = logging.getLogger("policyengine.server.access")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class ServiceConfig:
    """How the service runs. ``prefixes`` mount each wire under a path prefix
    (``{"tracengent": "/pdp", "authzen": "/authzen"}``) so several wires share a port."""

    issuer: str = "policyengine"
    token_ttl: int = 900
    max_body_bytes: int = 1_048_576
    #: A request's line and headers together (the service's own protocol: 431 beyond).
    max_header_bytes: int = 65_536
    max_inflated_bytes: int = 8_388_608
    body_timeout: float = 10.0
    prefixes: Mapping[str, str] = field(default_factory=dict)
    access_log: bool = True
    watch_interval: float | None = 1.0
    event_log_size: int = 10_000


class RefusalError(Exception):
    """A request the service refuses: status, stable code, message (no request data)."""

    def __init__(self, status: int, code: str, message: str,
                 headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers
        #: The route whose wire's envelope answers a refusal made before a route was
        #: chosen (a 405), if the path has one.
        self.route: Route | None = None


class Request:
    __slots__ = ("body", "headers", "params", "query")

    def __init__(self, headers: dict[bytes, bytes], body: bytes, params: tuple[str, ...],
                 query: bytes) -> None:
        self.headers, self.body, self.params, self.query = headers, body, params, query


class Reply:
    __slots__ = ("body", "content_type", "decision", "headers", "principal", "status")

    def __init__(self, status: int, body: bytes, principal: str | None = None,
                 decision: str | None = None, content_type: bytes = b"application/json",
                 headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.status, self.body, self.principal, self.decision = status, body, principal, decision
        self.content_type, self.headers = content_type, headers


Handler = Callable[[Request], Reply]


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str  # with {param} placeholders
    handler: Handler
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    summary: str = ""
    security: str | None = None  # agent | admin | delegated | authzen | cycles | None
    content_type: str = "application/json"
    # The wire's own error envelope: (status, code, message) -> (body, extra headers);
    # None: ErrorResponse.
    error_body: Callable[[int, str, str], tuple[bytes, tuple[tuple[bytes, bytes], ...]]] | None = (
        None)
    # A header (lower case) whose presence makes this route answer a method and path that
    # another wire's route answers too (see _shared_paths).
    claims: bytes | None = None
    # On a route answering for two wires (_dispatch): the error envelope of the wire that
    # ``claims`` picks, for refusals made before its handler runs.
    claimed_error_body: Callable[[int, str, str], tuple[bytes, tuple[tuple[bytes, bytes], ...]]
                                 ] | None = None


def _adapter(model: type[BaseModel]) -> TypeAdapter[Any]:
    return TypeAdapter(model)


_ERROR = _adapter(m.ErrorResponse)
_AUTHORIZE_IN = _adapter(m.AuthorizeRequest)
_AUTHORIZE_OUT = _adapter(m.AuthorizeResponse)
#: A decision without ``mode warn`` outcomes has no ``shadow`` key (not null), one not
#: rate-limited no ``rateLimit`` key: responses are what they were before a policy used
#: shadow statements or rate limits.
_OPTIONAL_KEYS = ("shadow", "rateLimit")


def _absent(out: Any) -> set[str] | None:
    """The optional keys ``out`` leaves out (those that are None)."""
    gone = {k for k in _OPTIONAL_KEYS if getattr(out, k) is None}
    return gone or None


_TOOL_IN = _adapter(m.ToolAuthorizeRequest)
_TOOL_OUT = _adapter(m.ToolAuthorizeResponse)
_TOKEN_IN = _adapter(m.TokenRequest)
_TOKEN_OUT = _adapter(m.TokenResponse)
_APPROVAL_OUT = _adapter(m.ApprovalResponse)
_ADMIN_APPROVAL_OUT = _adapter(m.AdminApprovalResponse)
_APPROVALS_OUT = _adapter(m.ApprovalsResponse)
_APPROVAL_DECISION_IN = _adapter(m.ApprovalDecisionRequest)
_ATTENUATE_IN = _adapter(m.AttenuateRequest)
_ATTENUATE_OUT = _adapter(m.AttenuateResponse)
_EVENTS_IN: TypeAdapter[list[m.IngestEvent]] = TypeAdapter(list[m.IngestEvent])
_TRACE_IN = _adapter(m.TraceClose)
_ACCEPTED_OUT = _adapter(m.EventAccepted)
_HEALTH_OUT = _adapter(m.HealthResponse)

#: An approval's state in the agent's words (tracengent acts on approved, denied and
#: expired, and polls again on anything else): ``used`` (approved, every use spent) is
#: terminal and no longer approvable, so the agent reads ``expired``, never a
#: ``pending`` it would wait on. A status this map lacks reads as ``expired`` too.
_APPROVAL_STATUS: dict[str, Literal["pending", "approved", "denied", "expired"]] = {
    "pending": "pending", "approved": "approved", "rejected": "denied",
    "expired": "expired", "used": "expired"}
#: The admin's words: the real state (``used`` included); ``rejected`` reads ``denied``.
_ADMIN_STATUS: dict[str, Literal["pending", "approved", "denied", "expired", "used"]] = {
    "pending": "pending", "approved": "approved", "rejected": "denied",
    "expired": "expired", "used": "used"}
#: What ``GET /v1/admin/approvals?status=`` filters by (the store's own words).
_ADMIN_FILTERS = ("pending", "approved", "rejected", "used", "expired")


#: Headers a request may carry once: a second one is refused (``ambiguous_header``), as
#: two components could read different ones. Other repeated names keep the last value.
_SINGLE_HEADERS = frozenset((b"authorization", b"content-type", b"content-encoding",
                             b"content-length", b"x-ingest-key", b"x-cycles-api-key",
                             b"x-idempotency-key"))


def _error_body(code: str, message: str) -> bytes:
    return _ERROR.dump_json(m.ErrorResponse(error=m.ErrorDetail(code=code, message=message)))


def _revocation_outage(exc: pe.TokenError) -> None:
    """Raise 503 ``revocation_unavailable`` (the store's error logged, not sent) when
    ``exc`` is a revocation store that could not answer: that says nothing of the token,
    so a route must not answer it as a bad token (401)."""
    if exc.code == "revocation_unavailable":
        raise RefusalError(503, exc.code, public_message(exc.code, exc.message)) from None


def validate(adapter: TypeAdapter[Any], data: Any) -> Any:
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise RefusalError(400, "invalid_request", m.validation_message(exc)) from None


def json_body(req: Request, read: Callable[[bytes], Any] = loads) -> Any:
    """The request's JSON, read strictly by ``read`` (:func:`loads`; the tool route's
    :func:`tool_request`); 415 for another media type, 400 with the decoder's code."""
    ctype = req.headers.get(b"content-type", b"application/json")
    if not ctype.split(b";", 1)[0].strip().lower().endswith(b"json"):
        raise RefusalError(415, "unsupported_media_type", "the body must be application/json")
    try:
        return read(req.body)
    except MalformedJsonError as exc:
        raise RefusalError(400, exc.code, exc.message) from None


def _claim(token: str, name: str) -> Any:
    """One payload claim of a JWS, unverified: only to name the principal the engine
    then verifies the token against (a mismatch is a denial there)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        return None
    return claims.get(name) if isinstance(claims, dict) else None


def _policy_files(paths: Iterable[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files.extend(sorted(x for x in p.rglob("*.policy") if x.is_file()))
        elif p.exists():
            files.append(p)
    return files


def _revision_of(paths: tuple[str, ...]) -> str | None:
    """``sha256:`` of the policy files' names and bytes (None without paths)."""
    if not paths:
        return None
    h = hashlib.sha256()
    for f in _policy_files(paths):
        h.update(str(f).encode("utf-8", "surrogateescape") + b"\0")
        with contextlib.suppress(OSError):
            h.update(f.read_bytes())
        h.update(b"\0")
    return "sha256:" + h.hexdigest()[:16]


def _stat_signature(paths: tuple[str, ...]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for f in _policy_files(paths):
        with contextlib.suppress(OSError):
            st = f.stat()
            out.append((str(f), st.st_mtime_ns, st.st_size))
    return tuple(out)


def _host_with_port(host: str | None, headers: Mapping[str, Any] | None) -> str | None:
    """tracengent sends ``host`` as ``url.host``, without the port, and every header,
    including the ``Host`` it sends upstream, which carries a non-default port. Deciding on
    the bare name would let a call to another port match a port-less pattern (and miss a
    deny that names the port), so the port is taken from the header when it names the
    same host."""
    if host is None or type(headers) is not dict or ":" in host:
        return host
    value = headers.get("host")
    if type(value) is not str:
        return host
    name, sep, port = value.strip().rpartition(":")
    if sep and port.isdigit() and name.lower() == host.lower():
        return f"{host}:{port}"
    return host


def _shared_paths(routes: list[Route]) -> list[Route]:
    """The routes to dispatch: two wires on one method and path are refused, except a
    route that ``claims`` requests carrying its header (the Cycles ``POST /v1/events``
    with ``X-Cycles-API-Key``) beside one that does not (agent-ledger's, ``x-api-key``):
    the header picks the wire."""
    by_key: dict[tuple[str, str], Route] = {}
    for r in routes:
        other = by_key.get((r.method, r.path))
        if other is None:
            by_key[(r.method, r.path)] = r
            continue
        claim, rest = (r, other) if r.claims is not None else (other, r)
        if claim.claims is None or rest.claims is not None:
            raise ValueError(f"two wires answer {r.method} {r.path}: mount one of them "
                             "under a prefix (ServiceConfig.prefixes, serve --prefix)")
        by_key[(r.method, r.path)] = _dispatch(claim, rest)
    return list(by_key.values())


def _dispatch(claim: Route, rest: Route) -> Route:
    header = claim.claims or b""

    def handler(req: Request) -> Reply:
        return (claim if header in req.headers else rest).handler(req)

    return Route(f"{rest.name}|{claim.name}", rest.method, rest.path, handler, rest.request,
                  rest.response, rest.summary, rest.security, rest.content_type,
                  rest.error_body, header, claim.error_body)


_early_sighup = False


def note_early_sighup(_signum: int, _frame: object) -> None:
    """SIGHUP handler for a process whose service has not started yet (``serve`` installs
    it before building the app): the default action would kill the process, and ignoring
    the signal would lose a reload asked for after the policy changed. The reload runs
    once the service has started (:func:`take_early_sighup`)."""
    global _early_sighup
    _early_sighup = True


def take_early_sighup() -> bool:
    """Whether a SIGHUP arrived before the service took the signal over; clears it."""
    global _early_sighup
    seen, _early_sighup = _early_sighup, False
    return seen


class PolicyService:
    """The ASGI application. Build it with :func:`create_app`.

    ``events`` and ``traces`` keep the most recent telemetry accepted (bounded), for the
    decision log to come. ``reload()`` re-reads the policy and keeps the last good one.
    """

    def __init__(self, engine: pe.Engine, *, credentials: Credentials | None,
                 keys: pe.KeySet, paths: tuple[str, ...], config: ServiceConfig,
                 clock: Callable[[], float]) -> None:
        self.engine = engine
        self.credentials = credentials or Credentials()
        self.config = config
        self.paths = paths
        self.access = AccessTokens(keys, issuer=config.issuer, ttl=config.token_ttl,
                                   clock=clock)
        self.metrics = Metrics()
        self.events: deque[tuple[str, m.IngestEvent]] = deque(maxlen=config.event_log_size)
        self.traces: deque[tuple[str, m.TraceClose]] = deque(maxlen=config.event_log_size)
        self.revision = _revision_of(paths) or "unversioned"
        self._revision_header = self.revision.encode("ascii")
        self.reload_error: str | None = None
        self._signature = _stat_signature(paths)
        self._draining = False
        self._background: list[asyncio.Task[None]] = []
        self._reload_lock: asyncio.Lock | None = None
        self.routes = self._routes()
        self._exact: dict[str, dict[str, Route]] = {}
        self._param: list[tuple[list[str], dict[str, Route]]] = []
        for r in _shared_paths(self.routes):
            if "{" in r.path:
                parts = r.path.split("/")
                slot = next((d for p, d in self._param if p == parts), None)
                if slot is None:
                    slot = {}
                    self._param.append((parts, slot))
                slot[r.method] = r
            else:
                self._exact.setdefault(r.path, {})[r.method] = r
        # The patterns by their number of segments, in order: a path is tried only
        # against those of its own length, each as its fixed segments (index, text) and
        # the indexes of its parameters.
        self._param_by_length: dict[int, list[tuple[tuple[tuple[int, str], ...],
                                                    tuple[int, ...], dict[str, Route]]]] = {}
        for pattern, slot in self._param:
            fixed = tuple((i, p) for i, p in enumerate(pattern) if not p.startswith("{"))
            holes = tuple(i for i, p in enumerate(pattern) if p.startswith("{"))
            self._param_by_length.setdefault(len(pattern), []).append((fixed, holes, slot))
        from policyengine.server._openapi import openapi_document
        self.openapi = openapi_document(self)
        self._openapi_bytes = json.dumps(self.openapi).encode()

    # ------------------------------------------------------------------ routing
    def _routes(self) -> list[Route]:
        t = self.config.prefixes.get("tracengent", "").rstrip("/")
        a = self.config.prefixes.get("authzen", "").rstrip("/")
        from policyengine.server._actguard import ActguardWire
        from policyengine.server._agentledger import AgentLedgerWire
        c = self.config.prefixes.get("cycles", "").rstrip("/")
        from policyengine.server._authzen import AuthzenWire
        from policyengine.server._cycles import CyclesWire
        self.authzen = AuthzenWire(self, a)
        self.actguard = ActguardWire(self, self.config.prefixes.get("actguard", "").rstrip("/"))
        self.agent_ledger = AgentLedgerWire(
            self, self.config.prefixes.get("agent-ledger", "").rstrip("/"))
        self.cycles = CyclesWire(self, c)
        return [
            Route("token", "POST", f"{t}/v1/oauth/token", self._token, m.TokenRequest,
                   m.TokenResponse, "OAuth 2.0 client credentials: an agent access token",
                   content_type="application/x-www-form-urlencoded"),
            Route("authorize", "POST", f"{t}/v1/authorize", self._authorize,
                   m.AuthorizeRequest, m.AuthorizeResponse,
                   "May the calling agent exercise this permission?", "agent"),
            Route("tool_authorize", "POST", f"{t}/v1/tool-authorize", self._tool_authorize,
                   m.ToolAuthorizeRequest, m.ToolAuthorizeResponse,
                   "May this HTTP request, MCP call or function call leave?", "agent"),
            Route("approval", "GET", f"{t}/v1/approvals/{{approvalId}}", self._approval,
                   None, m.ApprovalResponse, "The state of one of the agent's approvals",
                   "agent"),
            Route("attenuate", "POST", f"{t}/v1/delegations/{{grantId}}/attenuate",
                   self._attenuate, m.AttenuateRequest, m.AttenuateResponse,
                   "A narrower child token from the bearer's delegation token", "delegated"),
            Route("ingest_events", "POST", f"{t}/v1/ingest/events", self._ingest_events,
                   None, m.EventAccepted, "A batch (JSON array) of agent events, "
                   "optionally gzip", "agent"),
            Route("ingest_traces", "POST", f"{t}/v1/ingest/traces", self._ingest_trace,
                   m.TraceClose, m.EventAccepted, "A trace closed", "agent"),
            Route("admin_approvals", "GET", f"{t}/v1/admin/approvals", self._admin_list,
                   None, m.ApprovalsResponse, "Approvals (?status=pending)", "admin"),
            Route("admin_approve", "POST", f"{t}/v1/admin/approvals/{{approvalId}}/approve",
                   self._admin_approve, m.ApprovalDecisionRequest, m.AdminApprovalResponse,
                   "Approve a pending approval", "admin"),
            Route("admin_reject", "POST", f"{t}/v1/admin/approvals/{{approvalId}}/reject",
                   self._admin_reject, m.ApprovalDecisionRequest, m.AdminApprovalResponse,
                   "Reject a pending approval", "admin"),
            *self.authzen.routes(),
            *self.actguard.routes(),
            *self.agent_ledger.routes(),
            *self.cycles.routes(),
            Route("healthz", "GET", "/healthz", self._healthz, None, m.HealthResponse,
                   "Liveness"),
            Route("readyz", "GET", "/readyz", self._readyz, None, m.HealthResponse,
                   "Readiness: a policy is loaded and the service is not draining "
                   "(a failed reload's report for an admin only)"),
            Route("metrics", "GET", "/metrics", self._metrics, None, None,
                   "Prometheus metrics"),
            Route("openapi", "GET", "/openapi.json", self._openapi, None, None,
                   "This document"),
            Route("jwks", "GET", "/.well-known/jwks.json", self._jwks, None, None,
                   "Public keys of access and delegation tokens"),
        ]

    def _match(self, path: str) -> tuple[dict[str, Route] | None, tuple[str, ...]]:
        found = self._exact.get(path)
        if found is not None:
            return found, ()
        parts = path.split("/")
        for fixed, holes, slot in self._param_by_length.get(len(parts), ()):
            for i, want in fixed:
                if parts[i] != want:
                    break
            else:
                params = tuple([parts[i] for i in holes])
                if all(params):  # a parameter is never empty
                    return slot, params
        return None, ()

    # ------------------------------------------------------------------ ASGI
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        route: Route | None = None
        try:
            route, params = self.route_of(scope["method"], scope["path"])
            headers = self.headers_of(scope["headers"])
            body = await self._read_body(receive, headers)
            if body is None:
                return  # the client went away
            reply = route.handler(Request(headers, body, params, scope["query_string"]))
        except Exception as exc:  # refused, or failed: see refused()
            reply = self.refused(route, exc, scope["headers"])
        await send({"type": "http.response.start", "status": reply.status,
                    "headers": self.reply_headers(reply)})
        await send({"type": "http.response.body", "body": reply.body})
        self.answered(route, reply, start, scope["method"], scope["path"],
                      scope.get("client"))

    # The steps of a request, shared by the ASGI entry point above and the service's own
    # HTTP/1.1 protocol (:mod:`._http`), which runs them without the ASGI messages.
    def route_of(self, method: str, path: str) -> tuple[Route, tuple[str, ...]]:
        """The route answering ``method`` on ``path`` and its path parameters, or a
        refusal (404, 405 with ``allow``)."""
        slot, params = self._match(path)
        if slot is None:
            raise RefusalError(404, "not_found", "no such endpoint")
        route = slot.get(method)
        if route is None:
            refusal = RefusalError(405, "method_not_allowed", "method not allowed here",
                                   ((b"allow", ", ".join(sorted(slot)).encode()),))
            # Answered in the path's wire's envelope (a Cycles path: the protocol's).
            envelopes = {(r.error_body, r.claims, r.claimed_error_body) for r in slot.values()}
            if len(envelopes) == 1:
                refusal.route = next(iter(slot.values()))
            raise refusal
        return route, params

    @staticmethod
    def headers_of(raw_headers: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
        """The request's headers by (lower-case) name; a second header of a name that
        counts (:data:`_SINGLE_HEADERS`) is refused, another repeated name keeps its last
        value."""
        if type(raw_headers) is not list:  # any iterable of pairs, as ASGI allows
            raw_headers = list(raw_headers)
        headers: dict[bytes, bytes] = dict(raw_headers)
        if len(headers) != len(raw_headers):
            seen: set[bytes] = set()
            for k, _ in raw_headers:
                if k in seen and k in _SINGLE_HEADERS:
                    raise RefusalError(400, "ambiguous_header", f"duplicate {k.decode()} header")
                seen.add(k)
        return headers

    def refused(self, route: Route | None, exc: Exception,
                raw_headers: Iterable[tuple[bytes, bytes]] = ()) -> Reply:
        """The answer to a request refused (:class:`RefusalError`) or failed (any other
        exception: logged, a deny-shaped 500, never a traceback in a body), in the
        route's wire's error envelope (``raw_headers``, the request's, pick the wire of
        a path two wires share; a 405 takes its path's wire)."""
        extra: tuple[tuple[bytes, bytes], ...] = ()
        envelope = route
        if envelope is None and isinstance(exc, RefusalError):
            envelope = exc.route
        error_body = None if envelope is None else envelope.error_body
        if envelope is not None and envelope.claimed_error_body is not None and any(
                k.lower() == envelope.claims for k, _ in raw_headers):
            error_body = envelope.claimed_error_body
        if isinstance(exc, RefusalError):
            self.metrics.error(exc.code)
            message = public_message(exc.code, exc.message)
            if error_body is None:
                body = _error_body(exc.code, message)
            else:
                body, extra = error_body(exc.status, exc.code, message)
            return Reply(exc.status, body, headers=(*exc.headers, *extra))
        log.error("internal error on %s", "unknown" if route is None else route.name,
                  exc_info=exc)
        self.metrics.error("internal_error")
        if error_body is None:
            body = _error_body("internal_error", "internal error")
        else:
            body, extra = error_body(500, "internal_error", "internal error")
        return Reply(500, body, headers=extra)

    def reply_headers(self, reply: Reply) -> list[tuple[bytes, bytes]]:
        return [(b"content-type", reply.content_type),
                (b"content-length", b"%d" % len(reply.body)),
                (b"x-policy-revision", self._revision_header), *reply.headers]

    def answered(self, route: Route | None, reply: Reply, start: float, method: str,
                 path: str, client: Any) -> None:
        """Metrics and the access log line of an answered request."""
        elapsed = time.perf_counter() - start
        route_name = "unknown" if route is None else route.name
        self.metrics.request(route_name, reply.status, elapsed)
        if self.config.access_log and access_log.isEnabledFor(logging.INFO):
            access_log.info(json.dumps({
                "ts": round(time.time(), 3), "method": method, "route": route_name,
                "path": path[:256], "status": reply.status,
                "ms": round(elapsed * 1000, 3), "principal": reply.principal,
                "decision": reply.decision, "revision": self.revision,
                "client": (client or ("", 0))[0]}))

    async def _read_body(self, receive: Receive, headers: dict[bytes, bytes]) -> bytes | None:
        limit = self.config.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise RefusalError(413, "body_too_large", f"bodies are limited to {limit} bytes")
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        body: bytes = msg.get("body", b"")
        if not msg.get("more_body"):
            if len(body) > limit:
                raise RefusalError(413, "body_too_large", f"bodies are limited to {limit} bytes")
            return body
        chunks = [body]
        size = len(body)

        async def rest() -> bool:
            nonlocal size
            while True:
                nxt = await receive()
                if nxt["type"] == "http.disconnect":
                    return False
                part = nxt.get("body", b"")
                size += len(part)
                if size > limit:
                    raise RefusalError(413, "body_too_large",
                                        f"bodies are limited to {limit} bytes")
                chunks.append(part)
                if not nxt.get("more_body"):
                    return True

        try:
            complete = await asyncio.wait_for(rest(), self.config.body_timeout)
        except asyncio.TimeoutError:
            raise RefusalError(408, "request_timeout",
                                "the body took too long to arrive") from None
        return b"".join(chunks) if complete else None

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                self.start_background()
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.stop_background()
                await send({"type": "lifespan.shutdown.complete"})
                return

    @property
    def draining(self) -> bool:
        """True once shutdown began (readiness probes answer 503)."""
        return self._draining

    # ------------------------------------------------------------------ reload
    def start_background(self) -> None:
        """Watch the policy files and answer SIGHUP (when on the main thread)."""
        loop = asyncio.get_running_loop()
        self._reload_lock = asyncio.Lock()
        if self.paths and self.config.watch_interval:
            self._background.append(loop.create_task(self._watch(self.config.watch_interval)))
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError,
                                 AttributeError):
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        if take_early_sighup():
            self._on_sighup()

    def _on_sighup(self) -> None:
        self._background.append(asyncio.get_running_loop().create_task(self._reload_task()))

    async def _reload_task(self) -> None:
        await self.reload()

    async def stop_background(self) -> None:
        self._draining = True
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError,
                                 AttributeError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._background.clear()

    async def _watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            signature = await asyncio.to_thread(_stat_signature, self.paths)
            if signature != self._signature:
                self._signature = signature
                await self.reload()

    async def reload(self) -> bool:
        """Re-read and recompile the policy; on error keep the last good one and report
        the failure (``reload_error``, the readiness body of an admin, the metrics, the
        log)."""
        lock = self._reload_lock or asyncio.Lock()
        async with lock:
            return await asyncio.to_thread(self.reload_now)

    def reload_now(self) -> bool:
        """Synchronous :meth:`reload` (callers outside an event loop)."""
        try:
            revision = _revision_of(self.paths)
            self.engine.reload()
        except pe.PolicyError as exc:
            self.reload_error = exc.render() if hasattr(exc, "render") else str(exc)
            self.metrics.reloads["failed"] += 1
            log.error("policy reload failed; keeping revision %s:\n%s", self.revision,
                      self.reload_error)
            return False
        except Exception as exc:  # an unreadable file, a rates table: same rule
            self.reload_error = f"{type(exc).__name__}: {exc}"
            self.metrics.reloads["failed"] += 1
            log.error("policy reload failed; keeping revision %s: %s", self.revision,
                      self.reload_error)
            return False
        self.revision = revision or "unversioned"
        self._revision_header = self.revision.encode("ascii")
        self.reload_error = None
        self.metrics.reloads["ok"] += 1
        log.info("policy reloaded: revision %s", self.revision)
        return True

    # ------------------------------------------------------------------ identity
    def _bearer(self, req: Request) -> str | None:
        raw = req.headers.get(b"authorization")
        if raw is None:
            return None
        scheme, _, value = raw.partition(b" ")
        if scheme.lower() != b"bearer" or not value.strip():
            return None
        try:
            return value.strip().decode("ascii")
        except UnicodeDecodeError:
            return None

    def _agent(self, req: Request) -> tuple[str, str | None]:
        """(principal, delegation token or None) for the caller, or 401."""
        token = self._bearer(req)
        if token is not None:
            agent = self.access.cached_agent(token)
            if agent is not None:
                return agent, None
            typ = token_typ(token)
            if typ == ACCESS_TYP:
                agent = self.access.agent_of(token)
                if agent is not None:
                    return agent, None
            elif typ == pe.tokens.TYP:
                sub = _claim(token, "sub")
                if type(sub) is str and sub:
                    return sub, token  # the engine verifies the grant, subject included
        else:
            key = req.headers.get(b"x-ingest-key")
            if key is not None:
                agent = self.credentials.check_ingest_key(key.decode("utf-8", "replace"))
                if agent is not None:
                    return agent, None
        raise RefusalError(401, "unauthorized", "a valid bearer token is required",
                       ((b"www-authenticate", b'Bearer realm="policyengine"'),))

    def _caller(self, req: Request) -> str:
        """The calling agent on a route that hands no token to the engine (approval
        polls, telemetry). :meth:`_agent` only reads a delegation grant's ``sub`` and
        leaves its verification to the engine's decision; here nothing else would verify
        it, so it is verified now: an unsigned, expired or revoked grant is 401, never
        the agent it names."""
        principal, token = self._agent(req)
        if token is None:
            return principal
        try:
            grant = self.engine.verify_token(token)
        except pe.TokenError as exc:
            _revocation_outage(exc)
            grant = None
        if grant is None or grant.subject != principal:
            raise RefusalError(401, "unauthorized", "a valid bearer token is required",
                               ((b"www-authenticate", b'Bearer realm="policyengine"'),))
        return principal

    def _admin_name(self, req: Request) -> str | None:
        """The admin the request's HTTP Basic credential names, or None (no credential,
        not Basic, or a wrong one)."""
        raw = req.headers.get(b"authorization", b"")
        scheme, _, value = raw.partition(b" ")
        if scheme.lower() == b"basic" and self.credentials.has_admins:
            try:
                name, sep, secret = base64.b64decode(value.strip(), validate=True).decode(
                    "utf-8").partition(":")
            except (ValueError, binascii.Error, UnicodeDecodeError):
                name, sep, secret = "", "", ""
            if sep and self.credentials.check_admin(name, secret):
                return name
        return None

    def _admin(self, req: Request) -> str:
        name = self._admin_name(req)
        if name is None:
            challenge = ((b"www-authenticate", b'Basic realm="policyengine-admin"'),)
            raise RefusalError(401, "unauthorized", "admin credentials required", challenge)
        return name

    # ------------------------------------------------------------------ tracengent wire
    def _token(self, req: Request) -> Reply:
        def oauth_error(status: int, error: str, description: str) -> Reply:
            self.metrics.error(error)
            body = json.dumps({"error": error, "error_description": description}).encode()
            return Reply(status, body, headers=((b"cache-control", b"no-store"),))

        ctype = req.headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
        if ctype != b"application/x-www-form-urlencoded":
            return oauth_error(400, "invalid_request",
                               "the body must be application/x-www-form-urlencoded")
        try:
            pairs = parse_qsl(req.body.decode("utf-8"), keep_blank_values=True,
                              strict_parsing=bool(req.body), max_num_fields=16)
        except (ValueError, UnicodeDecodeError):
            return oauth_error(400, "invalid_request", "malformed form body")
        form = dict(pairs)
        if len(form) != len(pairs):
            return oauth_error(400, "invalid_request", "a parameter is repeated")
        if form.get("grant_type") not in (None, "client_credentials"):
            return oauth_error(400, "unsupported_grant_type",
                               "only client_credentials is supported")
        try:
            request = _TOKEN_IN.validate_python(form)
        except ValidationError as exc:
            return oauth_error(400, "invalid_request", m.validation_message(exc))
        agent = self.credentials.check_client(request.client_id, request.client_secret)
        if agent is None:
            reply = oauth_error(401, "invalid_client", "client authentication failed")
            reply.headers = (*reply.headers, (b"www-authenticate", b'Basic realm="token"'))
            return reply
        token = self.access.issue(agent.agent, agent.client_id, agent.permissions)
        body = _TOKEN_OUT.dump_json(m.TokenResponse(access_token=token,
                                                    expires_in=self.access.ttl))
        return Reply(200, body, agent.agent, headers=((b"cache-control", b"no-store"),))

    def _authorize(self, req: Request) -> Reply:
        principal, token = self._agent(req)
        request = validate(_AUTHORIZE_IN, json_body(req))
        # The budgets and rate limits count in the agent's tenant (its credentials'),
        # never in one the request names: the rules read the context as sent.
        d = self.engine.authorize(principal, request.permission, request.context, token=token,
                                  partition=self.credentials.partition_of(principal))
        self.metrics.decision("tracengent", d.status)
        # Validating the engine's wire dict (money as decimal strings) into the response
        # model is cheaper than model_construct, and checks the shape we promise.
        out = _AUTHORIZE_OUT.validate_python(public_decision(d.to_wire()))
        return Reply(200, _AUTHORIZE_OUT.dump_json(out, exclude=_absent(out)), principal,
                      d.status)

    def _tool_authorize(self, req: Request) -> Reply:
        principal, token = self._agent(req)
        # An ambiguous body (NaN, a duplicate key...) comes as its text, which the engine
        # denies (ambiguous_body): a 400 here would let a fail-open SDK send it unchecked.
        r = validate(_TOOL_IN, json_body(req, tool_request))
        # The SDK applies the redactions itself: the engine's run asks, in its redaction
        # step, whether the changes can be told as concrete paths (client_redactions),
        # and denies redaction_unsupported there, before any rate-limit call or approval
        # is taken; the decision logged is the one answered. The list is kept here.
        concrete: list[list[dict[str, str]]] = []

        def check(sent: Any, redacted: Any) -> list[dict[str, str]] | None:
            found = client_redactions(sent, redacted)
            if found is not None:
                concrete.append(found)
            return found

        td = self.engine.tool_authorize(
            principal, transport=r.transport, method=r.method,
            host=_host_with_port(r.host, r.headers) if r.transport == "http" else r.host,
            path=r.path,
            query=r.query, headers=r.headers, body=tool_body(r.body), tool_name=r.toolName,
            function_name=r.functionName, token=token, context=r.context,
            approval_id=r.approvalId, redaction_check=check,
            partition=self.credentials.partition_of(principal))
        self.metrics.decision("tracengent_tool", td.status)
        wire = public_decision(td.to_wire())
        wire["redactions"] = concrete[-1] if td.allowed and concrete else []
        out = _TOOL_OUT.validate_python(wire)
        return Reply(200, _TOOL_OUT.dump_json(out, exclude=_absent(out)), principal,
                      td.status)

    def _approval_out(self, item: pe.Approval) -> m.ApprovalResponse:
        """The agent's view. A status of no known meaning is ``expired`` (terminal, not
        approvable), never ``pending``: the SDK would wait on it to its deadline."""
        return m.ApprovalResponse(
            approvalId=item.id, status=_APPROVAL_STATUS.get(item.status, "expired"),
            principal=item.principal, permission=item.permission, rules=list(item.rules),
            createdAt=item.created_at, decidedAt=item.decided_at, decidedBy=item.decided_by,
            note=item.note)

    def _admin_out(self, item: pe.Approval) -> m.AdminApprovalResponse:
        """The admin's view: the real state and the uses left."""
        return m.AdminApprovalResponse(
            approvalId=item.id, status=_ADMIN_STATUS.get(item.status, "expired"),
            principal=item.principal, permission=item.permission, rules=list(item.rules),
            createdAt=item.created_at, decidedAt=item.decided_at, decidedBy=item.decided_by,
            note=item.note, usesLeft=item.uses_left)

    @staticmethod
    def _from_approvals(call: Callable[[], Any]) -> Any:
        """``call()``, one operation of the approval store. An outage (the store's
        ``approval_store_error``, or anything else a custom store raises) is 503
        ``approval_store_error`` with a fixed message: the caller retries, is never told
        the approval is unknown or the request wrong, and never sees the backend's
        address (logged here, with the cause). A refusal (any other ``ApprovalError``
        code) goes to the route."""
        try:
            return call()
        except pe.ApprovalError as exc:
            if exc.code != "approval_store_error":
                raise
            log.warning("approval store unavailable: %s", exc.message, exc_info=exc)
        except Exception as exc:  # not the store's own code: may be a bug, say it louder
            log.error("approval store failed", exc_info=exc)
        raise RefusalError(503, "approval_store_error", FAULT_MESSAGES["approval_store_error"])

    def _approval(self, req: Request) -> Reply:
        principal = self._caller(req)
        approvals = self.engine.approvals
        try:
            item = self._from_approvals(lambda: approvals.get(req.params[0]))
        except pe.ApprovalError:
            item = None
        if item is None or item.principal != principal:  # another agent's: not found
            raise RefusalError(404, "unknown_approval", "no such approval")
        return Reply(200, _APPROVAL_OUT.dump_json(self._approval_out(item)), principal)

    def _admin_list(self, req: Request) -> Reply:
        admin = self._admin(req)
        status = dict(parse_qsl(req.query.decode("latin-1"))).get("status")
        if status is not None and status not in _ADMIN_FILTERS:
            raise RefusalError(400, "invalid_request",
                               "status is pending, approved, rejected, used or expired")
        approvals = self.engine.approvals
        found = self._from_approvals(lambda: approvals.list(status))
        items = [self._admin_out(i) for i in found]
        return Reply(200, _APPROVALS_OUT.dump_json(m.ApprovalsResponse(items=items)), admin)

    def _admin_decide(self, req: Request, approve: bool) -> Reply:
        admin = self._admin(req)
        note = None
        if req.body:
            note = validate(_APPROVAL_DECISION_IN, json_body(req)).note
        decide = self.engine.approvals.approve if approve else self.engine.approvals.reject
        try:
            item = self._from_approvals(lambda: decide(req.params[0], by=admin, note=note))
        except pe.ApprovalError as exc:
            if exc.code == "unknown_approval":
                raise RefusalError(404, exc.code, "no such approval") from None
            raise RefusalError(409, exc.code, exc.message) from None
        log.info("approval %s %s by %s", item.id, item.status, admin)
        return Reply(200, _ADMIN_APPROVAL_OUT.dump_json(self._admin_out(item)), admin)

    def _admin_approve(self, req: Request) -> Reply:
        return self._admin_decide(req, True)

    def _admin_reject(self, req: Request) -> Reply:
        return self._admin_decide(req, False)

    def _attenuate(self, req: Request) -> Reply:
        token = self._bearer(req)
        if token is None or token_typ(token) != pe.tokens.TYP:
            raise RefusalError(401, "unauthorized", "the parent delegation token is the bearer")
        try:
            parent = self.engine.verify_token(token)
        except pe.TokenError as exc:
            # A store that cannot answer says nothing of the token: 503, to be retried
            # (as on the routes that make no decision), never the 401 that tells the
            # client its grant is bad.
            _revocation_outage(exc)
            raise RefusalError(401, "invalid_token",
                                f"parent token rejected: {exc.code}") from None
        if parent.grant_id != req.params[0]:
            raise RefusalError(403, "grant_mismatch", "the bearer token is not this grant")
        r = validate(_ATTENUATE_IN, json_body(req))
        max_amount = None
        if r.maxAmount is not None:
            currency = (parent.max_amount.currency if parent.max_amount is not None
                        else self.engine.policy.default_currency)
            if currency is None:
                raise RefusalError(400, "currency_required", "maxAmount has no currency on this "
                               "wire: the grant has no cap and the policy no currency")
            # Its plain text is at least |exponent| characters: refused as over-long, as
            # Money refuses it, before format() would write out 1e99999999999.
            if abs(r.maxAmount.adjusted()) >= MAX_TEXT_LENGTH:
                raise RefusalError(400, "invalid_amount", f"max_amount: amount "
                                   f"{str(r.maxAmount)[:40]} is longer than "
                                   f"{MAX_TEXT_LENGTH} characters")
            max_amount = (format(r.maxAmount, "f"), currency)
        try:
            child = pe.tokens.attenuate(
                self.engine.keys, token, agent=r.grantedToAgentId, permissions=r.permissions,
                max_amount=max_amount, ttl=r.expiresInSeconds,
                rates=self.engine.policy.delegation_rates, revocations=self.engine.revocations)
            grant = self.engine.verify_token(child)
        except pe.AttenuationError as exc:
            raise RefusalError(403, exc.code, exc.message) from None
        except pe.TokenError as exc:
            _revocation_outage(exc)  # the store failing between the two verifications
            raise RefusalError(400, exc.code, exc.message) from None
        except pe.MoneyError as exc:
            raise RefusalError(400, exc.code, exc.message) from None
        expires_in = max(0, int(grant.expires_at - time.time()))
        out = m.AttenuateResponse(token=m.AttenuatedToken(
            accessToken=child, expiresIn=expires_in, jti=grant.jti, grantId=grant.grant_id))
        if self.engine.decision_log is not None:
            self.engine.decision_log.event("token.attenuate", {
                "principal": grant.subject, "acting_for": grant.acting_for,
                "chain": list(grant.chain), "grant": {"grant_id": grant.grant_id,
                                                      "jti": grant.jti},
                "permissions": list(r.permissions),
                "parent": {"grant_id": parent.grant_id, "jti": parent.jti}})
        # %r: the agent id is the caller's text and the grant ids a token's (any
        # characters); a line break in one would write a line of its own in the log.
        log.info("grant %r attenuated to %r for %r", parent.grant_id, grant.grant_id,
                 r.grantedToAgentId)
        return Reply(200, _ATTENUATE_OUT.dump_json(out), parent.subject)

    def _inflate(self, req: Request) -> bytes:
        encoding = req.headers.get(b"content-encoding", b"identity").strip().lower()
        if encoding == b"identity":
            return req.body
        if encoding != b"gzip":
            raise RefusalError(415, "unsupported_encoding", "bodies are identity or gzip")
        limit = self.config.max_inflated_bytes
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out = inflater.decompress(req.body, limit + 1)
        except zlib.error:
            raise RefusalError(400, "malformed_gzip", "the gzip body does not inflate") from None
        if len(out) > limit or inflater.unconsumed_tail:
            raise RefusalError(413, "body_too_large", f"inflated bodies are limited to {limit} "
                           "bytes")
        if not inflater.eof or inflater.unused_data:
            raise RefusalError(400, "malformed_gzip", "the gzip body is truncated or has "
                           "trailing data")
        return out

    def record_events(self, source: str, principal: str | None,
                      events: list[tuple[str, dict[str, Any]]]) -> None:
        """Put ingested events in the engine's decision log (if any), each with its kind
        (a kind the source does not define is recorded as ``custom``). Refuses the
        request with 503 when the log cannot take them (its ``deny`` policy): the agent
        retries, nothing is lost silently."""
        log = self.engine.decision_log
        if log is None:
            return
        from policyengine.audit import INGEST_KINDS
        kinds = INGEST_KINDS[source]
        taken = True
        for kind, event in events:
            taken = log.ingest(source, kind if kind in kinds else "custom", event,
                               principal=principal) and taken
        if not taken:
            raise RefusalError(503, "decision_log_unavailable",
                                "the decision log cannot record these events now; retry")

    def _ingest_events(self, req: Request) -> Reply:
        principal = self._caller(req)
        encoding = "gzip" if b"content-encoding" in req.headers else "identity"
        req.body = self._inflate(req)
        events = validate(_EVENTS_IN, json_body(req))
        for event in events:
            self.events.append((principal, event))
        self.record_events("tracengent", principal,
                           [(e.type, e.model_dump(mode="json")) for e in events])
        self.metrics.ingest("events", encoding, len(events))
        out = _ACCEPTED_OUT.dump_json(m.EventAccepted(accepted=len(events)))
        return Reply(202, out, principal)

    def _ingest_trace(self, req: Request) -> Reply:
        principal = self._caller(req)
        trace = validate(_TRACE_IN, json_body(req))
        self.traces.append((principal, trace))
        self.record_events("tracengent", principal,
                           [("trace.close", trace.model_dump(mode="json"))])
        self.metrics.ingest("traces", "identity", 1)
        return Reply(202, _ACCEPTED_OUT.dump_json(m.EventAccepted(accepted=1)), principal)

    # ------------------------------------------------------------------ operations
    def _healthz(self, req: Request) -> Reply:
        return Reply(200, _HEALTH_OUT.dump_json(m.HealthResponse(status="ok",
                                                                 revision=self.revision)))

    def _readyz(self, req: Request) -> Reply:
        """Readiness for anyone (a probe needs the status code): the status and revision.
        A failed reload's report quotes policy files (paths and lines), so it is shown
        only to an admin (HTTP Basic); it is in the service log too. Without a valid admin
        credential the answer is the same, never a 401 a probe would take for unready."""
        ready = not self._draining
        error = self.reload_error
        if error is not None and self._admin_name(req) is None:
            error = None
        out = m.HealthResponse(status="ok" if ready else "unavailable",
                               revision=self.revision, reloadError=error)
        return Reply(200 if ready else 503, _HEALTH_OUT.dump_json(out))

    def _metrics(self, req: Request) -> Reply:
        text = self.metrics.render(self.revision)
        log = self.engine.decision_log
        if log is not None:
            text += "# TYPE policyengine_decision_log_records gauge\n" + "".join(
                f'policyengine_decision_log_records{{state="{k}"}} {v}\n'
                for k, v in log.stats().items())
        return Reply(200, text.encode(),
                      content_type=b"text/plain; version=0.0.4; charset=utf-8")

    def _openapi(self, req: Request) -> Reply:
        return Reply(200, self._openapi_bytes)

    def _jwks(self, req: Request) -> Reply:
        keys = self.access.keys
        if any(k.alg == "HS256" for k in keys):
            return Reply(200, b'{"keys":[]}')
        return Reply(200, json.dumps(keys.public_jwks()).encode())


def create_app(engine: pe.Engine, *, credentials: Credentials | str | None = None,
               keys: pe.KeySet | None = None, paths: Iterable[str] = (),
               config: ServiceConfig | None = None,
               clock: Callable[[], float] = time.time) -> PolicyService:
    """The decision service over ``engine``, as an ASGI application.

    ``credentials``: a :class:`Credentials` or the path of a credentials file (agents'
    client credentials, admins). ``keys`` sign access tokens and delegation tokens
    (default: the engine's, else a fresh Ed25519 set, which then becomes the engine's).
    ``paths``: the policy files or directories the engine was loaded from, for the
    policy revision and hot reload.

    >>> app = create_app(pe.Engine.from_source('role r: docs:*\\nagent "bot": r'))
    >>> app.revision
    'unversioned'
    """
    if isinstance(credentials, str):
        credentials = Credentials.from_file(credentials)
    if keys is None:
        keys = engine.keys if engine.keys is not None else pe.KeySet.generate()
    if engine.keys is None:
        engine.keys = keys
    return PolicyService(engine, credentials=credentials, keys=keys, paths=tuple(paths),
                         config=config or ServiceConfig(), clock=clock)
