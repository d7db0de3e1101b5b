"""A governed httpx client: every request is authorized before a byte leaves.

:class:`GovernedTransport` (sync) and :class:`AsyncGovernedTransport` wrap any inner httpx
transport. For each request they call ::

    engine.tool_authorize(principal, transport="http", method=..., host=..., path=...,
                          query=..., headers=..., body=..., token=...)

on any object with that method (the engine, or a test double), then:

* ``denied``: raise :class:`~policyengine.decision.ToolDenied`; nothing is sent;
* ``pending_approval``: raise :class:`~policyengine.decision.ApprovalRequired`;
* ``allowed``: forward the request, with the body replaced by the JSON of the decision's
  redacted ``body`` when redactions applied, and a correct ``Content-Length``.

What the engine sees (credentials never do):

* ``method``: as sent; ``host``: the URL host in ASCII (IDNA) form, IPv6 in brackets,
  plus ``:port`` only when the port is not the scheme default. URL userinfo is never
  passed (httpx turns it into an ``Authorization`` header, which is dropped);
* ``path``: the raw (percent-encoded) path without the query;
* ``query``: ``{name: value}``, a repeated name gives a list of values;
* ``headers``: lower-case names, repeated headers joined with ``", "``, *without*
  :data:`DROPPED_HEADERS` (credentials and hop-by-hop headers);
* ``body``: ``None`` when empty; the parsed JSON when the content type is JSON (or
  absent) and the bytes are strict UTF-8 JSON (no duplicate keys, no NaN/Infinity, no
  number that is infinite as a double, no integer over the digit limit); otherwise the
  raw ``bytes``, which the engine parses again with the same rules and refuses on any
  route that extracts from or redacts the body.

Bodies above ``max_body_bytes`` (default :data:`MAX_BODY_BYTES`) are refused here, before
the engine is asked, with a ``ToolDenied`` whose outcome is ``invalid_request`` and code
``body_too_large``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, Protocol

import httpx

from policyengine import _json as strict_json
from policyengine.decision import (
    ApprovalRequired,
    Decision,
    ToolDecision,
    ToolDenied,
)
from policyengine.errors import PolicyEngineError

__all__ = [
    "CONTEXT_EXTENSION",
    "DROPPED_HEADERS",
    "MAX_BODY_BYTES",
    "TOKEN_EXTENSION",
    "AsyncGovernedTransport",
    "ClientOptionError",
    "GovernedTransport",
    "ToolAuthorizer",
    "async_governed_client",
    "build_tool_request",
    "governed_client",
]

#: Largest request body the governed client will authorize (bytes).
MAX_BODY_BYTES: Final = 1024 * 1024

#: Headers never passed to the engine: credentials, then hop-by-hop / framing headers.
DROPPED_HEADERS: Final = frozenset({
    "authorization", "proxy-authorization", "cookie", "x-api-key", "api-key",
    "x-auth-token", "x-access-token", "x-amz-security-token", "x-goog-api-key",
    "x-csrf-token", "x-xsrf-token", "ocp-apim-subscription-key",
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "content-length",
})

#: Request extension holding a context for one request (merged over the client's):
#: ``client.post(url, json=..., extensions={CONTEXT_EXTENSION: {"ticket": "T-1"}})``.
CONTEXT_EXTENSION: Final = "policyengine.context"
#: Request extension holding a delegation token for one request (instead of the client's).
TOKEN_EXTENSION: Final = "policyengine.token"

class ToolAuthorizer(Protocol):
    """Anything with ``tool_authorize`` (the engine, or a test double)."""

    def tool_authorize(self, principal: str, *, transport: str, method: str, host: str,
                       path: str, query: dict[str, Any], headers: dict[str, Any],
                       body: Any, token: str | None = None, scheme: str = "https",
                       context: dict[str, Any] | None = None) -> ToolDecision: ...


def _local_denial(code: str, reason: str) -> ToolDecision:
    return ToolDecision(Decision("denied", code, reason), "invalid_request")


def _is_json_type(content_type: str | None) -> bool:
    if content_type is None:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _parse_body(content: bytes, content_type: str | None) -> tuple[Any, bool]:
    """(body for the engine, whether it is parsed JSON)."""
    if not content:
        return None, False
    if not _is_json_type(content_type) or not strict_json.utf8_charset(content_type):
        return content, False
    try:
        # Fractions as Decimal: a body's 280.10 is the amount 280.10 (a float is
        # refused as an amount), and a body rewritten for its redactions says the same
        # numbers as the one the caller gave.
        return strict_json.loads_exact(content), True
    except (ValueError, RecursionError):  # includes UnicodeDecodeError, JSONDecodeError
        return content, False


def _host_of(url: httpx.URL) -> str:
    host = url.raw_host.decode("ascii")
    if ":" in host:
        host = f"[{host}]"
    return host if url.port is None else f"{host}:{url.port}"


def _query_of(url: httpx.URL) -> dict[str, Any]:
    query: dict[str, Any] = {}
    for name, value in url.params.multi_items():
        if name in query:
            prev = query[name]
            query[name] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            query[name] = value
    return query


def _headers_of(headers: httpx.Headers) -> dict[str, Any]:
    """Lower-case names; a repeated header gives the list of its values (never a joined
    ``"a, b"``: the engine refuses a list where a route reads the header)."""
    out: dict[str, Any] = {}
    for name, value in headers.multi_items():
        key = name.lower()
        if key in DROPPED_HEADERS:
            continue
        if key in out:
            prev = out[key]
            out[key] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            out[key] = value
    return out


def build_tool_request(request: httpx.Request, content: bytes) -> tuple[dict[str, Any], bool]:
    """The ``tool_authorize`` keyword arguments for ``request`` (body already read), and
    whether the body was parsed as JSON. Shared by the sync and async transports."""
    body, is_json = _parse_body(content, request.headers.get("content-type"))
    kwargs: dict[str, Any] = {
        "transport": "http",
        "scheme": request.url.scheme,
        "method": request.method,
        "host": _host_of(request.url),
        "path": request.url.raw_path.split(b"?", 1)[0].decode("ascii"),
        "query": _query_of(request.url),
        "headers": _headers_of(request.headers),
        "body": body,
    }
    return kwargs, is_json


def _outgoing(request: httpx.Request, content: bytes, parsed: Any, is_json: bool,
              decision: ToolDecision) -> httpx.Request:
    """Raise unless allowed; else the request to forward (redacted body, right length)."""
    status = decision.status
    if status == "pending_approval":
        raise ApprovalRequired(decision)
    if status != "allowed":
        raise ToolDenied(decision)
    redactions = getattr(decision, "redactions", ())
    new_body = getattr(decision, "body", None)
    changed = bool(redactions) or (is_json and new_body is not None and new_body is not parsed
                                   and new_body != parsed)
    if changed:
        if not is_json or new_body is None:
            # Redactions the client cannot apply to this body: do not send it as it is.
            raise ToolDenied(_local_denial(
                "redaction_unavailable",
                "the decision requires redactions but the body is not JSON; not sent"))
        try:
            content = strict_json.dumps(new_body, ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            # The strict parser never yields such a body; an authorizer that does gets
            # a refusal, never an exception from inside the transport.
            raise ToolDenied(_local_denial(
                "redaction_unavailable",
                f"the redacted body cannot be written as JSON ({exc}); not sent")) from None
    headers = httpx.Headers(request.headers)
    headers.pop("transfer-encoding", None)
    if content or "content-length" in headers or request.method not in ("GET", "HEAD"):
        headers["content-length"] = str(len(content))
    return httpx.Request(request.method, request.url, headers=headers, content=content,
                         extensions=request.extensions)


def _too_large(limit: int) -> ToolDenied:
    return ToolDenied(_local_denial(
        "body_too_large", f"request body is larger than {limit} bytes; not sent"))


def _retargeted(request: httpx.Request) -> ToolDenied | None:
    """A refusal when request extensions would send the request somewhere other than its
    URL says: an SNI name for another host, or a request target for another path."""
    ext = request.extensions
    sni = ext.get("sni_hostname")
    if sni is not None:
        name = sni.decode("ascii", "replace") if isinstance(sni, bytes) else str(sni)
        if name.lower().rstrip(".") != request.url.raw_host.decode("ascii").lower():
            return ToolDenied(_local_denial(
                "host_override", f"the SNI name {name!r} is not the URL's host; not sent"))
    target = ext.get("target")
    if target is not None and target != request.url.raw_path:
        return ToolDenied(_local_denial(
            "path_override", "the request target is not the URL's path; not sent"))
    return None


class ClientOptionError(PolicyEngineError, TypeError):
    """A governed client or transport given an option of the wrong kind (an ``engine``
    without ``tool_authorize``, a ``principal`` or ``token`` that is not a string, a
    ``context`` that is not a dict, an ``inner`` that is no httpx transport of its kind,
    a ``max_body_bytes`` that is not a positive whole
    number, an httpx option that would route around the transport): code
    ``invalid_option``, raised when the client is made. Also a ``TypeError``, which these
    calls raised before."""

    def __init__(self, message: str) -> None:
        super().__init__("invalid_option", message)


def _checked_options(engine: object, principal: object, token: object,
                     max_body_bytes: object, context: object) -> None:
    if not callable(getattr(engine, "tool_authorize", None)):
        raise ClientOptionError("engine must have a tool_authorize method (an Engine), not "
                                f"{type(engine).__name__}")
    if not isinstance(principal, str):
        raise ClientOptionError(f"principal must be a string, not {type(principal).__name__}")
    if token is not None and not isinstance(token, str):
        raise ClientOptionError(f"token must be a string or None, not {type(token).__name__}")
    if type(max_body_bytes) is not int or max_body_bytes < 1:
        raise ClientOptionError(f"max_body_bytes must be a whole number of bytes >= 1, not "
                                f"{max_body_bytes!r}"[:200])
    if context is not None and not isinstance(context, dict):
        raise ClientOptionError(f"context must be a dict or None, not {type(context).__name__}")


class _Governed:
    """State and decision logic shared by the sync and async transports."""

    def __init__(self, engine: ToolAuthorizer, principal: str, token: str | None,
                 max_body_bytes: int, context: dict[str, Any] | None) -> None:
        _checked_options(engine, principal, token, max_body_bytes, context)
        self._engine = engine
        self._principal = principal
        self._token = token
        self._max = max_body_bytes
        self._context = dict(context) if context else None

    def _collect(self, chunks: Iterable[bytes]) -> bytes:
        buf = bytearray()
        for chunk in chunks:
            buf += chunk
            if len(buf) > self._max:
                raise _too_large(self._max)
        return bytes(buf)

    def _context_of(self, request: httpx.Request) -> dict[str, Any] | None:
        extra = request.extensions.get(CONTEXT_EXTENSION)
        if extra is None:
            return self._context
        if not isinstance(extra, dict):
            raise ToolDenied(_local_denial(
                "invalid_request", f"the {CONTEXT_EXTENSION} extension must be a dict"))
        return {**self._context, **extra} if self._context else dict(extra)

    def _decide(self, request: httpx.Request, content: bytes) -> httpx.Request:
        refused = _retargeted(request)
        if refused is not None:
            raise refused
        kwargs, is_json = build_tool_request(request, content)
        token = request.extensions.get(TOKEN_EXTENSION, self._token)
        decision = self._engine.tool_authorize(self._principal, token=token,
                                               context=self._context_of(request), **kwargs)
        return _outgoing(request, content, kwargs["body"], is_json, decision)


class GovernedTransport(_Governed, httpx.BaseTransport):
    """An ``httpx.BaseTransport`` that authorizes each request, then calls ``inner``."""

    def __init__(self, engine: ToolAuthorizer, principal: str, *,
                 inner: httpx.BaseTransport | None = None, token: str | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES,
                 context: dict[str, Any] | None = None) -> None:
        super().__init__(engine, principal, token, max_body_bytes, context)
        if inner is not None and not isinstance(inner, httpx.BaseTransport):
            raise ClientOptionError("inner must be an httpx.BaseTransport, not "
                                    f"{type(inner).__name__}")
        self._inner = inner if inner is not None else httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        stream = request.stream
        if isinstance(stream, httpx.ByteStream):
            content = request.read()
            if len(content) > self._max:
                raise _too_large(self._max)
        elif isinstance(stream, Iterable):
            content = self._collect(stream)
        else:
            raise ToolDenied(_local_denial("invalid_request",
                                           "an async body cannot be sent by a sync client"))
        return self._inner.handle_request(self._decide(request, content))

    def close(self) -> None:
        self._inner.close()


class AsyncGovernedTransport(_Governed, httpx.AsyncBaseTransport):
    """The async twin of :class:`GovernedTransport`."""

    def __init__(self, engine: ToolAuthorizer, principal: str, *,
                 inner: httpx.AsyncBaseTransport | None = None, token: str | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES,
                 context: dict[str, Any] | None = None) -> None:
        super().__init__(engine, principal, token, max_body_bytes, context)
        if inner is not None and not isinstance(inner, httpx.AsyncBaseTransport):
            raise ClientOptionError("inner must be an httpx.AsyncBaseTransport, not "
                                    f"{type(inner).__name__}")
        self._inner = inner if inner is not None else httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        stream = request.stream
        if isinstance(stream, httpx.ByteStream):
            content = request.read()
            if len(content) > self._max:
                raise _too_large(self._max)
        elif isinstance(stream, httpx.AsyncByteStream):
            buf = bytearray()
            async for chunk in stream:
                buf += chunk
                if len(buf) > self._max:
                    raise _too_large(self._max)
            content = bytes(buf)
        else:
            raise ToolDenied(_local_denial("invalid_request", "unsupported request stream"))
        return await self._inner.handle_async_request(self._decide(request, content))

    async def aclose(self) -> None:
        await self._inner.aclose()


def _check_kwargs(kwargs: dict[str, Any]) -> None:
    # Each of these would route some requests around the governed transport.
    for name in ("transport", "mounts", "proxy", "proxies", "app"):
        if name in kwargs:
            raise ClientOptionError(f"governed clients do not accept {name}=; pass inner= "
                                    "to wrap another transport")


def governed_client(engine: ToolAuthorizer, principal: str, *, token: str | None = None,
                    inner: httpx.BaseTransport | None = None,
                    max_body_bytes: int = MAX_BODY_BYTES,
                    context: dict[str, Any] | None = None,
                    **httpx_client_kwargs: Any) -> httpx.Client:
    """An ``httpx.Client`` whose every request goes through :class:`GovernedTransport`.

    ``context`` is passed with every request (policies read it as ``context.*``); a
    request adds to it with ``extensions={CONTEXT_EXTENSION: {...}}``. Values a route
    extracts from the request always win over both.

    >>> client = governed_client(engine, "travel-agent", context={"trip": "T-1"})  # doctest: +SKIP
    >>> client.post("https://api.stripe.com/v1/refunds", json={...})  # doctest: +SKIP
    """
    _check_kwargs(httpx_client_kwargs)
    transport = GovernedTransport(engine, principal, inner=inner, token=token,
                                  max_body_bytes=max_body_bytes, context=context)
    return httpx.Client(transport=transport, **httpx_client_kwargs)


def async_governed_client(engine: ToolAuthorizer, principal: str, *, token: str | None = None,
                          inner: httpx.AsyncBaseTransport | None = None,
                          max_body_bytes: int = MAX_BODY_BYTES,
                          context: dict[str, Any] | None = None,
                          **httpx_client_kwargs: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose every request goes through
    :class:`AsyncGovernedTransport` (``context`` as for :func:`governed_client`)."""
    _check_kwargs(httpx_client_kwargs)
    transport = AsyncGovernedTransport(engine, principal, inner=inner, token=token,
                                       max_body_bytes=max_body_bytes, context=context)
    return httpx.AsyncClient(transport=transport, **httpx_client_kwargs)
