"""Tool governance: bind outbound tool calls to permissions, then decide and redact.

``compile_tools`` turns ``tool`` and ``egress`` statements into :class:`CompiledTools`
(patterns and JSONPaths compiled once). ``tool_authorize`` runs one call through it:

1. normalise the call (method, host, path; see docs/tools.md) — anything ambiguous is
   ``invalid_request``;
2. egress: a host on an ``egress { deny ... }`` list, or bound to no tool and not on an
   ``allow`` list, is ``egress_deny``;
3. routing: a matching ``deny`` route is ``route_deny``; otherwise the most specific route
   (MCP/function tool: the first tool whose name glob matches) binds the permission; no
   route is ``route_deny``;
4. context extraction (JSONPath on the body, query, headers, path parameters), merged
   over the caller's context;
5. the decision pipeline, the same run as ``authorize`` (grant, rules, budgets,
   approval), which also redacts a copy of the body: a redaction that cannot be applied
   fails closed.
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from policyengine import _json as strict_json
from policyengine.decision import (
    Decision,
    ToolDecision,
    acting_for_problem,
    build_tool_decision,
    wrong_type,
)
from policyengine.errors import PolicyEngineError
from policyengine.lang import ast
from policyengine.money._money import MONEY_CONTEXT, MoneyError, decimal_places
from policyengine.tools._patterns import (
    HostPattern,
    NamePattern,
    RoutePattern,
    ToolRequestError,
    fold_path,
    host_without_port,
    normalize_host,
    normalize_method,
    normalize_path,
    normalize_scheme,
    short_name_form,
)
from policyengine.tools._redaction import (
    MISSING,
    JsonPath,
    KeyCaseGuard,
    RedactionError,
    RedactionRule,
    fold_key,
)

__all__ = ["MAX_BODY_BYTES", "CompiledTools", "compile_tools", "tool_authorize"]

#: Largest raw (bytes) body inspected; larger bodies are ``invalid_request``.
MAX_BODY_BYTES = 1 << 20
TRANSPORTS = ("http", "mcp", "function")
# Headers that never enter a decision (credentials), compared lower-case.
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


@dataclass(frozen=True)
class Extractor:
    name: str
    kind: str  # body | query | header | param
    path: JsonPath | None
    key: str
    minor: bool


@dataclass(frozen=True)
class RouteBinding:
    method: str  # upper case, or ANY
    pattern: RoutePattern
    permission: str
    extractors: tuple[Extractor, ...]
    order: int
    keys: KeyCaseGuard | None = None  # over the route's extractions and the redactions
    #: ``METHOD PATTERN``, as an approval of a call it routes is bound to.
    text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", f"{self.method} {self.pattern.text}")


@dataclass(frozen=True)
class DenyBinding:
    method: str | None
    pattern: RoutePattern  # literal segments case-folded: matched on folded paths


@dataclass(frozen=True)
class HttpBinding:
    qid: str
    hosts: tuple[HostPattern, ...]
    routes: tuple[RouteBinding, ...]
    denies: tuple[DenyBinding, ...]
    redactions: tuple[RedactionRule, ...]
    #: The redactions' paths (a redacted call's ``redactFields``), made once here.
    redact_fields: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "redact_fields", tuple(r.path for r in self.redactions))


@dataclass(frozen=True)
class NamedBinding:
    qid: str
    kind: str  # mcp | function
    name: NamePattern
    permission: str
    extractors: tuple[Extractor, ...]
    redactions: tuple[RedactionRule, ...]
    keys: KeyCaseGuard | None = None
    #: The redactions' paths (a redacted call's ``redactFields``), made once here.
    redact_fields: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "redact_fields", tuple(r.path for r in self.redactions))


@dataclass(frozen=True)
class _Routed:
    """Where an HTTP call goes: a refusal (outcome, code, reason) or a route."""

    outcome: str | None  # None: routed to ``route``
    code: str
    reason: str
    diag: str | None = None
    tool: str | None = None
    binding: HttpBinding | None = None
    route: RouteBinding | None = None
    params: dict[str, str] | None = None
    host: str = ""  # the normalised host, for checks on the Host header


class CompiledTools:
    """Tool bindings and the egress lists, indexed for the request path."""

    def __init__(self, http: Sequence[HttpBinding], named: Sequence[NamedBinding],
                 egress_allow: Sequence[HostPattern], egress_deny: Sequence[HostPattern]
                 ) -> None:
        self.http = tuple(http)
        self.named = tuple(named)
        self.egress_allow = tuple(egress_allow)
        self.egress_deny = tuple(egress_deny)
        self._host_cache: dict[tuple[str, str], tuple[HttpBinding, ...]] = {}
        self._routes: dict[tuple[str, str, str, str | None], _Routed] = {}

    def route(self, method: str, host: str, path: str, scheme: str | None = None) -> _Routed:
        """Normalise and route one HTTP call. A pure function of the four strings, so
        results are kept in a bounded table: repeat calls skip normalisation and
        matching entirely."""
        key = (method, host, path, scheme)
        found = self._routes.get(key)
        if found is None:
            found = self._route(method, host, path, scheme)
            if len(self._routes) >= 4096:
                self._routes.clear()
            self._routes[key] = found
        return found

    def _route(self, method: Any, host: Any, path: Any, scheme: Any = None) -> _Routed:
        try:
            m = normalize_method(method)
            h = normalize_host(host)
            p = normalize_path(path)
            sch = normalize_scheme(scheme)
        except ToolRequestError as exc:
            return _Routed("invalid_request", "invalid_request", exc.message, exc.code)
        # A deny without a port covers every port, and every scheme.
        if any(pat.covers(h) for pat in self.egress_deny):
            return _Routed("egress_deny", "egress_denied", f"egress to {h} is denied")
        bindings = self.for_host(h, sch)
        if not bindings:
            if any(pat.scheme == sch and pat.matches(h) for pat in self.egress_allow):
                return _Routed("egress_allow", "egress_allowed",
                               f"egress to {sch}://{h} is allowed (no tool binds it)", host=h)
            return _Routed("egress_deny", "egress_denied",
                           f"no tool is bound to {sch}://{h}")
        if any(b.denies for b in bindings):
            # Deny routes match what any upstream could take the path for: letters in
            # any case (servers that route case-insensitively), each segment without its
            # trailing dots and spaces and NTFS stream suffixes (Windows path
            # normalisation), with or without a trailing '/'; and, for a path with a
            # '~', a segment that may be an NTFS 8.3 short name at a literal's position.
            folded = fold_path(p)
            forms = (folded, folded[:-1]) if len(folded) > 1 and folded[-1] == "/" else (
                folded,)
            for b in bindings:
                for d in b.denies:
                    if (d.method is None or d.method == m) and any(
                            d.pattern.match(f) is not None for f in forms):
                        return _Routed("route_deny", "route_denied",
                                       f"{m} {p} is denied by tool {b.qid}", tool=b.qid)
            if "~" in folded:
                denied = self._short_name_denial(bindings, m, p, folded, forms)
                if denied is not None:
                    return denied
        best: tuple[Any, ...] | None = None
        for b in bindings:
            for r in b.routes:
                if r.method != "ANY" and r.method != m:
                    continue
                captured = r.pattern.match(p)
                if captured is None:
                    continue
                rank = (r.pattern.specificity, -r.order)
                if best is None or rank > best[0]:
                    best = (rank, b, r, captured)
        if best is None:
            return _Routed("route_deny", "no_route", f"no route of {h} binds {m} {p}",
                           tool=bindings[0].qid)
        _, binding, route, params = best
        return _Routed(None, "", "", binding=binding, route=route, params=params, host=h)

    @staticmethod
    def _short_name_denial(bindings: tuple[HttpBinding, ...], m: str, p: str, folded: str,
                           forms: tuple[str, ...]) -> _Routed | None:
        """The deny route a path with a ``~`` reaches through a segment that may be an
        NTFS 8.3 short name of a denied one (``/ADMINI~1``, ``/XYZ~1`` for ``deny
        "/administrator"``: which long name a short one opens cannot be told), if any. Run only
        for such paths, after the deny routes matched nothing: the folded forms and, if
        the path has escapes, the lower-cased ones too (:func:`short_name_form`: a letter
        that case folding lengthens, ``ß``, keeps a short name's length there)."""
        alt = folded if "%" not in p else short_name_form(p)
        short = forms if alt == folded else (*forms, *_slash_forms(alt))
        for b in bindings:
            for d in b.denies:
                if (d.method is None or d.method == m) and any(
                        d.pattern.covers_short_name(f) for f in short):
                    return _Routed("route_deny", "route_denied",
                                   f"{m} {p} is denied by tool {b.qid} (an 8.3 short name)",
                                   tool=b.qid)
        return None

    def for_host(self, host: str, scheme: str = "https") -> tuple[HttpBinding, ...]:
        key = (host, scheme)
        found = self._host_cache.get(key)
        if found is None:
            found = tuple(b for b in self.http
                          if any(h.scheme == scheme and h.matches(host) for h in b.hosts))
            if len(self._host_cache) > 4096:
                self._host_cache.clear()
            self._host_cache[key] = found
        return found


def _slash_forms(path: str) -> tuple[str, ...]:
    """``path`` and, if it ends with a ``/`` (not ``/`` itself), ``path`` without it."""
    return (path, path[:-1]) if len(path) > 1 and path[-1] == "/" else (path,)


def _extractors(items: Sequence[ast.Extraction]) -> tuple[Extractor, ...]:
    return tuple(Extractor(x.name, x.source_kind,
                           JsonPath.compile(x.source) if x.source_kind == "body" else None,
                           x.source if x.source_kind != "header" else x.source.lower(),
                           x.minor) for x in items)


def _redactions(items: Sequence[ast.ToolItem]) -> tuple[RedactionRule, ...]:
    return tuple(RedactionRule(i.path, i.strategy, i.keep or 0) for i in items
                 if isinstance(i, ast.Redact))


def _key_guard(extractors: Sequence[Extractor], rules: Sequence[RedactionRule]
               ) -> KeyCaseGuard | None:
    guard = KeyCaseGuard([*(x.path for x in extractors if x.path is not None),
                          *(r.compiled for r in rules)])
    return None if guard.empty else guard


_TOOL_KINDS = frozenset({ast.HttpTool, ast.NamedTool, ast.EgressDecl})


def compile_tools(files: Sequence[ast.PolicyFile]) -> CompiledTools:
    """Compile every ``tool`` and ``egress`` statement (the checker validated them)."""
    http: list[HttpBinding] = []
    named: list[NamedBinding] = []
    allow: list[HostPattern] = []
    deny: list[HostPattern] = []
    order = 0
    for f in files:
        if f.kinds.isdisjoint(_TOOL_KINDS):
            continue
        for st in f.statements:
            qid = f"{f.namespace}.{getattr(st, 'id', '')}"
            if isinstance(st, ast.HttpTool):
                routes = []
                denies = []
                rules = _redactions(st.items)
                for item in st.items:
                    if isinstance(item, ast.Route):
                        extractors = _extractors(item.extractions)
                        routes.append(RouteBinding(item.method, RoutePattern.compile(item.path),
                                                   item.permission, extractors, order,
                                                   _key_guard(extractors, rules)))
                        order += 1
                    elif isinstance(item, ast.DenyRoute):
                        denies.append(DenyBinding(item.method,
                                                  RoutePattern.compile(item.path, fold=True)))
                http.append(HttpBinding(qid, tuple(HostPattern.compile(h) for h in st.hosts),
                                        tuple(routes), tuple(denies), rules))
            elif isinstance(st, ast.NamedTool):
                extract = _extractors([i for i in st.items if isinstance(i, ast.Extraction)])
                rules = _redactions(st.items)
                named.append(NamedBinding(qid, st.kind, NamePattern.compile(st.name),
                                          st.permission, extract, rules,
                                          _key_guard(extract, rules)))
            elif isinstance(st, ast.EgressDecl):
                for verb, host in st.items:
                    (allow if verb == "allow" else deny).append(HostPattern.compile(host))
    return CompiledTools(http, named, allow, deny)


# ---- evaluation ------------------------------------------------------------------------------

class _BadMinor:
    """Stands in for an amount that could not be read in minor units: every amount
    check on it fails closed (``invalid_amount``)."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why

    def __repr__(self) -> str:
        return f"<invalid minor-unit amount: {self.why}>"


def _minor_to_major(value: Any, currency: Any) -> Any:
    if type(value) is not int:
        return _BadMinor(f"minor-unit amount must be an integer, got {type(value).__name__}")
    if type(currency) is not str:
        return _BadMinor("minor-unit amount without a currency")
    try:
        places = decimal_places(currency)
    except MoneyError as exc:
        return _BadMinor(exc.message)
    return Decimal(value).scaleb(-places, MONEY_CONTEXT)  # never the thread's context


def _single(kind: str, key: str, source: Mapping[str, Any]) -> Any:
    """The one value of query parameter or header ``key``, MISSING when absent.

    Raises :class:`_AmbiguousInputError` for input two servers could read differently: a repeated
    name (a list: first-wins servers act on one value, the policy would see a list), a
    header value holding ``,`` (a list-valued field to servers that split it), another
    spelling of a query name (``PAGE`` for ``page``: some frameworks ignore case), or a
    value that is not a string (an upstream reads text).
    """
    value = source.get(key, MISSING)
    if kind == "header" and "-" in key and key.replace("-", "_") in source:
        raise _AmbiguousInputError(
            "ambiguous_header", f"header {key!r} is also given as {key.replace('-', '_')!r}")
    if kind == "query":
        for other in source:
            if other != key and type(other) is str and fold_key(other) == fold_key(key):
                raise _AmbiguousInputError(
                    "ambiguous_query", f"query parameter {key!r} is also given as {other!r}")
    if value is MISSING:
        return value
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise _AmbiguousInputError("ambiguous_query" if kind == "query" else
                                       "ambiguous_header",
                             f"{kind} {key!r} is repeated ({len(value)} values)")
        value = value[0]
    if type(value) is not str:
        raise _AmbiguousInputError("invalid_query" if kind == "query" else "invalid_header",
                                   f"{kind} {key!r} must be a string, not "
                         f"{type(value).__name__}")
    if kind == "header" and "," in value:
        raise _AmbiguousInputError(
            "ambiguous_header", f"header {key!r} holds ',' (a list to servers that split it)")
    return value


class _AmbiguousInputError(PolicyEngineError):
    """Request data a server could read otherwise than the decision would: refused with
    ``code`` (internal: it becomes an ``invalid_request`` decision, never escapes)."""


def _extract(extractors: Sequence[Extractor], body: Any, query: Mapping[str, Any],
             headers: Mapping[str, Any], params: Mapping[str, str], context: dict[str, Any]
             ) -> None:
    minor: list[Extractor] = []
    for ex in extractors:
        if ex.kind == "body":
            value = (ex.path.first(body, MISSING)  # type: ignore[union-attr]
                     if isinstance(body, (dict, list)) else MISSING)
        elif ex.kind == "query":
            value = _single("query", ex.key, query)
        elif ex.kind == "header":
            value = _single("header", ex.key, headers)
        else:
            value = params.get(ex.key, MISSING)
        if value is MISSING:
            # The name is the route's: a caller's value never stands in for it.
            context.pop(ex.name, None)
            continue
        context[ex.name] = value
        if ex.minor:
            minor.append(ex)
    for ex in minor:  # after the currency has been extracted
        context[ex.name] = _minor_to_major(context[ex.name], context.get("currency"))


_NO_HEADERS: Final[dict[str, Any]] = {}  # shared, never written


def _lower_headers(headers: Any) -> dict[str, Any] | tuple[str, str]:
    """Header names lower-cased, credentials dropped; a (code, message) pair refuses the
    headers: not an object, a name that is not a string, or two spellings of one name
    (``X-Tenant`` and ``x-tenant``), which a server may read either way."""
    if headers is None:
        return _NO_HEADERS
    if not isinstance(headers, Mapping):
        return ("invalid_request", wrong_type("headers", "an object (a mapping)", headers))
    out: dict[str, Any] = {}
    for name, value in headers.items():
        if type(name) is not str:
            return ("invalid_request", wrong_type("a header name", "a string", name))
        key = name.lower()
        if key in out or ("_" in key and key.replace("_", "-") in out) or (
                "-" in key and key.replace("-", "_") in out):
            # CGI and WSGI servers read X_Tenant as X-Tenant.
            return ("ambiguous_header", f"header {name!r} is given twice (names ignore case, "
                    "and '_' reads as '-' to CGI servers)")
        out[key] = value
    for key in CREDENTIAL_HEADERS.intersection(out):
        del out[key]
    return out


#: Headers and parameters by which common servers and frameworks replace the method,
#: the virtual host or the path of a request (Rails, Laravel, Symfony, ASP.NET, IIS,
#: reverse proxies). A request carrying one that says something else is refused.
METHOD_OVERRIDES: Final = ("x-http-method-override", "x-http-method", "x-method-override")
HOST_OVERRIDES: Final = ("host", ":authority", "x-forwarded-host", "x-host",
                         "x-original-host", "x-forwarded-server")
PATH_OVERRIDES: Final = ("x-original-url", "x-rewrite-url", "x-original-uri",
                         "x-forwarded-uri", ":path")
OVERRIDE_HEADERS: Final = frozenset((*METHOD_OVERRIDES, *HOST_OVERRIDES, *PATH_OVERRIDES,
                                     "forwarded"))


def _same_host(value: Any, host: str) -> bool:
    """Whether a ``Host``-style header names the authorized host. Servers choose the
    virtual host by name, so the names are compared; the port a request reaches is the
    URL's, whatever the header says."""
    if type(value) is not str:
        return False
    try:
        seen = normalize_host(value.strip())
    except ToolRequestError:
        return False
    return host_without_port(seen) == host_without_port(host)


def _has_method_field(body: Any) -> bool:
    """A form-encoded ``_method`` (Rails and Laravel take it as the method)."""
    if isinstance(body, bytes):
        return b"_method=" in body
    return isinstance(body, str) and "_method=" in body


def _override(method: str, host: str, path: str, headers: Mapping[str, Any],
              query: Mapping[str, Any], body: Any) -> _AmbiguousInputError | None:
    """A refusal when the call says, through a header, a ``_method`` parameter or
    body field, that it is another method, virtual host or path than the one routed.
    Only called when a header of :data:`OVERRIDE_HEADERS` or a ``_method`` is present."""
    for name in METHOD_OVERRIDES:
        value = headers.get(name)
        if value is not None and (type(value) is not str or value.strip().upper() != method):
            return _AmbiguousInputError(
                "method_override", f"header {name} asks for method {value!r}, not {method}")
    for where, value in (("query parameter", query.get("_method")),
                         ("body field", body.get("_method") if type(body) is dict else None)):
        if value is not None and (type(value) is not str or value.strip().upper() != method):
            return _AmbiguousInputError(
                "method_override", f"{where} _method asks for {value!r}, not {method}")
    if _has_method_field(body):
        return _AmbiguousInputError("method_override", "a form field _method in the body")
    for name in HOST_OVERRIDES:
        value = headers.get(name)
        if value is not None and not _same_host(value, host):
            return _AmbiguousInputError(
                "host_override", f"header {name} names {str(value)[:80]!r}, not the "
                f"authorized host {host}")
    forwarded = headers.get("forwarded")
    if forwarded is not None and (type(forwarded) is not str
                                  or "host=" in forwarded.lower()):
        return _AmbiguousInputError("host_override", "a Forwarded header naming a host")
    for name in PATH_OVERRIDES:
        value = headers.get(name)
        if value is None:
            continue
        try:
            same = type(value) is str and normalize_path(value) == normalize_path(path)
        except ToolRequestError:
            same = False
        if not same:
            return _AmbiguousInputError("path_override", f"header {name} names another path")
    return None


_UNREADABLE_PREFIXES: Final = (
    (codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF8, "a UTF-8 byte order mark"),
    (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"),
)


def _why_unreadable(raw: bytes | str) -> str:
    """A short reason a body did not parse as strict UTF-8 JSON, for the message."""
    if isinstance(raw, bytes):
        for prefix, what in _UNREADABLE_PREFIXES:
            if raw.startswith(prefix):
                return f"it starts with {what}" if what.startswith("a ") else f"it is {what}"
        if len(raw) >= 2 and (raw[0] == 0 or raw[1] == 0):
            return "it is UTF-16 or UTF-32 (a NUL byte in the first two)"
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return "it is not UTF-8"
    elif raw.startswith("\ufeff"):
        return "it starts with a byte order mark"
    return "it is not JSON"


class _Body:
    """A call's body as the engine reads it: ``value`` is parsed JSON (any JSON value,
    or what an in-process caller passed), or the raw text/bytes when ``readable`` is
    False: those are passed on untouched, and a route that extracts from or redacts
    the body refuses them (``unreadable_body``)."""

    __slots__ = ("readable", "value")

    def __init__(self, value: Any, readable: bool) -> None:
        self.value = value
        self.readable = readable


_NO_BODY: Final = _Body(None, True)


def _read_body(body: Any) -> _Body | tuple[str, str]:
    """Parse bytes and text bodies as strict JSON; a (code, message) pair refuses them.

    JSON text is parsed whichever way it comes (bytes, or a ``str`` holding a JSON
    document): deciding on the caller's ``context`` while the upstream reads amounts
    from the text would be a bypass. Fractions are read as ``Decimal`` (``280.10`` is the
    amount the service wire reads, not a float the amount rules refuse). JSON that
    another parser could read differently
    (duplicate keys: last wins here, first wins elsewhere; ``NaN``; ``1e400``; an integer
    over the digit limit; nesting too deep for this interpreter's stack) is refused
    outright, since the bytes that would leave are not what was decided on. Anything
    else that does not parse (a UTF-8 byte order mark,
    UTF-16 / UTF-32, form data, text) is kept as it is and marked unreadable.
    """
    if body is None:
        return _NO_BODY
    if isinstance(body, (bytes, bytearray, memoryview)):
        raw: bytes | str = bytes(body)
        if len(raw) > MAX_BODY_BYTES:
            return ("body_too_large", f"body is {len(raw)} bytes; the limit is "
                    f"{MAX_BODY_BYTES}")
        if not raw:
            return _NO_BODY
    elif isinstance(body, str):
        raw = body
        if len(raw) > MAX_BODY_BYTES // 4 and len(
                raw.encode("utf-8", "surrogatepass")) > MAX_BODY_BYTES:
            return ("body_too_large", f"body is more than {MAX_BODY_BYTES} bytes as UTF-8")
    else:
        return _Body(body, True)
    try:
        return _Body(strict_json.loads_exact(raw), True)  # fractions as Decimal
    except strict_json.AmbiguousJsonError as exc:
        return ("ambiguous_body", f"the JSON body is ambiguous: {exc.message}")
    except RecursionError:
        # Nested past what this interpreter's stack reads, which depends on the caller's
        # own depth: passed on as unreadable, the same body would be refused from a
        # shallow stack (NaN inside, say) and sent from a deep one. A parser with more
        # stack reads it, so it is ambiguous, and refused on every route.
        return ("ambiguous_body", "the JSON body is ambiguous: it nests too deeply to "
                "read here, and another parser could read it")
    except ValueError:
        return _Body(raw, False)


def _call_binding(transport: str, tool: str, route: str, method: Any, host: Any, path: Any,
                  query: Mapping[str, Any], body: Any, tool_name: Any, function_name: Any,
                  scheme: Any = None) -> dict[str, Any]:
    """What an approval of a tool call is bound to, besides principal, permission and
    context: the tool and route that decided, the call as sent (method, host and path as
    given, so any other spelling is another call), the query (as ordered pairs, repeated
    names kept) and the body as read (JSON bodies by value, anything else by its bytes).
    Headers are not bound, except the values a route extracts into the context."""
    pairs = sorted(((str(k), v) for k, v in query.items()), key=lambda kv: kv[0])
    binding = {"transport": transport, "tool": tool, "route": route, "method": method,
               "host": host, "path": path, "query": [list(p) for p in pairs], "body": body,
               "name": tool_name if transport == "mcp" else function_name}
    if scheme is not None:  # an approval of an https call does not cover a plain-http one
        binding["scheme"] = scheme
    return binding


def _outcome(decision: Decision) -> str:
    if decision.status == "allowed":
        return "policy_allow"
    if decision.status == "pending_approval":
        return "pending_approval"
    if decision.code == "budget_exceeded":
        return "budget_deny"
    if decision.code == "rate_limited":
        return "rate_limited"
    if decision.code == "invalid_request":
        return "invalid_request"
    return "policy_deny"


def _not_a_string(method: Any, host: Any, path: Any, scheme: Any) -> tuple[str, str] | None:
    """(code, message) of an HTTP call whose method, host, path or scheme (not None) is
    not a string, the first such in that order, as the normalisers would refuse it: the
    field named and its type, not its value (``host None: empty`` said the wrong thing).
    None when each is a string (a ``str`` subclass is one: the normalisers take it)."""
    for code, name, value in (("invalid_method", "method", method),
                              ("invalid_host", "host", host), ("invalid_path", "path", path)):
        if not isinstance(value, str):
            return code, wrong_type(name, "a string for transport 'http'", value)
    if scheme is not None and not isinstance(scheme, str):
        return "invalid_scheme", wrong_type("scheme", "'https', 'http' or None", scheme)
    return None


def _bad_transport(transport: Any) -> str:
    """Why ``transport`` is refused: the transports there are, and what was given (a
    string shown, cut short; any other value by its type)."""
    got = (repr(transport[:20]) + ("..." if len(transport) > 20 else "")
           if type(transport) is str else "None" if transport is None
           else type(transport).__name__)
    return f"transport must be one of {', '.join(TRANSPORTS)}, not {got}"


def invalid_call(principal: Any, reason: str, trace: Any = None) -> ToolDecision:
    """The denial (``invalid_request``) of a call the engine could not take as made (an
    unknown keyword): the same decision, and trace step, as a request field refused by
    :func:`tool_authorize`."""
    if trace is not None:
        trace.step("route", f"invalid_request (invalid_request): {reason}")
    return build_tool_decision(Decision.denial("invalid_request", reason, principal, None),
                               "invalid_request", None, (), None)


def tool_authorize(pipeline: Any, principal: Any, *, transport: Any, method: Any = None,
                   host: Any = None, path: Any = None, query: Any = None, headers: Any = None,
                   body: Any = None, tool_name: Any = None, function_name: Any = None,
                   token: Any = None, context: Any = None, approval_id: Any = None,
                   scheme: Any = None, trace: Any = None,
                   redaction_check: Any = None, partition: str | None = None,
                   acting_for: Any = None) -> ToolDecision:
    """Decide one tool call. Never raises for request data.

    ``pipeline`` is the engine's decision pipeline
    (:class:`~policyengine.decide._pipeline.Pipeline`): the call is normalised and routed
    here, then the bound permission and the extracted context go through the same run as
    ``authorize`` (grant, rules, budgets, approval), which also redacts the body (with
    the pipeline's ``hmac_key``) before it records a pending approval. ``trace``
    (explain) records the steps.
    ``redaction_check``: see ``Engine.tool_authorize`` (the run's redaction step asks it
    with the body as given here). ``partition``, ``acting_for``: see
    ``Engine.authorize`` (``acting_for`` is checked first, as there, so a call no route
    governs is refused for it too).
    """
    tools: CompiledTools = pipeline.policy.tools

    def reject(outcome: str, code: str, reason: str, permission: str | None = None,
               diag: str | None = None, tool: str | None = None) -> ToolDecision:
        if trace is not None:
            trace.step("route", f"{outcome} ({code}): {reason}")
        return build_tool_decision(
            Decision.denial(code, reason, principal, permission, diag), outcome, None, (),
            tool)

    if type(principal) is not str:
        return reject("invalid_request", "invalid_request",
                      wrong_type("principal", "a string", principal))
    if redaction_check is not None and not callable(redaction_check):
        return reject("invalid_request", "invalid_request", wrong_type(
            "redaction_check", "a callable (body, redacted) or None", redaction_check))
    if acting_for is not None:
        problem = acting_for_problem(acting_for, token)
        if problem is not None:
            return reject("invalid_request", "invalid_request", problem)
    if context is not None and not isinstance(context, dict):
        return reject("invalid_request", "invalid_request",
                      wrong_type("context", "an object (a dict)", context))
    if transport not in TRANSPORTS:
        return reject("invalid_request", "invalid_request", _bad_transport(transport))
    readable = True
    raw_body = body
    if body is not None and type(body) is not dict:  # dict: the common case, as given
        read = _read_body(body)
        if type(read) is tuple:
            return reject("invalid_request", "invalid_request", read[1], diag=read[0])
        assert isinstance(read, _Body)
        body, readable = read.value, read.readable
    if query is None:
        query = {}
    if not isinstance(query, Mapping):
        return reject("invalid_request", "invalid_request",
                      wrong_type("query", "an object (a mapping)", query))
    hdrs = _lower_headers(headers)
    if type(hdrs) is tuple:
        return reject("invalid_request", "invalid_request", hdrs[1], diag=hdrs[0])
    assert isinstance(hdrs, dict)
    if readable and raw_body is not body and not strict_json.utf8_charset(hdrs.get("content-type")):
        # The upstream decodes these bytes in another charset than the one parsed here.
        body, readable = raw_body, False
    params: dict[str, str] = {}
    extractors: tuple[Extractor, ...]
    rules: tuple[RedactionRule, ...]
    keys: KeyCaseGuard | None
    if transport == "http":
        if (type(method) is str and type(host) is str and type(path) is str
                and (scheme is None or type(scheme) is str)):
            routed = tools.route(method, host, path, scheme)
        else:  # not cacheable: a field that is not a string is named, with its code
            bad = _not_a_string(method, host, path, scheme)
            if bad is not None:
                return reject("invalid_request", "invalid_request", bad[1], diag=bad[0])
            routed = tools._route(method, host, path, scheme)  # str subclasses
        if routed.host and ((hdrs and not OVERRIDE_HEADERS.isdisjoint(hdrs))
                            or "_method" in query
                            or (type(body) is dict and "_method" in body)
                            or (not readable and _has_method_field(body))):
            found = _override(method.upper(), routed.host, path, hdrs, query, body)
            if found is not None:
                return reject("invalid_request", "invalid_request", found.message,
                              diag=found.code,
                              tool=routed.binding.qid if routed.binding else None)
        if routed.outcome == "egress_allow":  # no route reads the body: passed on as given
            if trace is not None:
                trace.step("route", f"egress_allow ({routed.code}): {routed.reason}")
            decided = pipeline.run_unbound(principal, token, routed.code, routed.reason,
                                           trace, acting_for)
            if decided.status != "allowed":
                return build_tool_decision(decided, _outcome(decided), None, (), None)
            return build_tool_decision(decided, "egress_allow", body, (), None)
        if routed.outcome is not None:
            return reject(routed.outcome, routed.code, routed.reason, diag=routed.diag,
                          tool=routed.tool)
        binding, route = routed.binding, routed.route
        assert binding is not None and route is not None
        params = routed.params or {}
        qid, permission = binding.qid, route.permission
        extractors, rules, keys = route.extractors, binding.redactions, route.keys
        fields = binding.redact_fields
        route_text = route.text
    else:
        name = tool_name if transport == "mcp" else function_name
        if type(name) is not str or not name:
            field = ("tool_name (toolName)" if transport == "mcp"
                     else "function_name (functionName)")
            return reject("invalid_request", "invalid_request", wrong_type(
                field, f"a non-empty string for transport {transport!r}", name))
        named = next((n for n in tools.named if n.kind == transport and n.name.matches(name)),
                     None)
        if named is None:
            return reject("route_deny", "unbound_tool",
                          f"no {transport} tool binds {name!r}")
        qid, permission = named.qid, named.permission
        extractors, rules, keys = named.extractors, named.redactions, named.keys
        fields = named.redact_fields
        route_text = named.name.text

    if not readable and (rules or any(ex.kind == "body" for ex in extractors)):
        return reject("invalid_request", "invalid_request",
                      f"the body cannot be read as strict UTF-8 JSON ({_why_unreadable(body)})"
                      "; a route that extracts from or redacts the body needs one",
                      permission, diag="unreadable_body", tool=qid)
    if keys is not None and (type(body) is dict or type(body) is list):
        clash = keys.clash(body)
        if clash is not None:
            return reject("invalid_request", "invalid_request",
                          f"the body holds {clash!r} in another letter case (or in two): a "
                          "server that ignores case could read another value",
                          permission, diag="ambiguous_key", tool=qid)
    ctx: dict[str, Any] = dict(context) if context else {}
    try:
        _extract(extractors, body, query, hdrs, params, ctx)
    except _AmbiguousInputError as exc:
        return reject("invalid_request", "invalid_request", exc.message, permission,
                      diag=exc.code, tool=qid)
    except RedactionError as exc:  # a path that cannot be evaluated on this body
        return reject("invalid_request", "invalid_request",
                      f"cannot extract context: {exc.message}", permission,
                      diag="extraction_failed", tool=qid)

    def call() -> dict[str, Any]:  # only when an approval is used or recorded
        return _call_binding(transport, qid, route_text, method, host, path, query, body,
                             tool_name, function_name, scheme)

    decision, redacted, redactions = pipeline.run_tool(
        principal, permission, ctx, token, approval_id, body, rules, fields, call, trace,
        redaction_check, raw_body, partition, acting_for)
    return build_tool_decision(decision, _outcome(decision), redacted, redactions, qid)
