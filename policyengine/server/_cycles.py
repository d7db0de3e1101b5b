"""The Cycles budget protocol wire (runcycles 0.5.x and 0.1.x) over the engine's ledger.

Every endpoint of ``cycles-protocol-v0`` that the SDK calls: reservations (create,
commit, release, extend, get, list), ``/v1/decide``, ``/v1/events``, ``/v1/balances``
and the readiness probe. What the 0.5.x client insists on, and this module therefore
guarantees (docs/service.md, "The Cycles wire"):

* success is exactly 200 (an event exactly 201), bodies carry only the protocol's keys
  and never a JSON ``null``; create and extend send ``remaining_ttl_ms``;
* every refusal is ``{"error", "message", "request_id"[, "details"]}`` with a protocol
  code (``BUDGET_EXCEEDED``, ``RESERVATION_EXPIRED`` ...) and the protocol's status;
* the API key (``X-Cycles-API-Key``) is bound to one tenant (credentials
  ``cyclesKeys``): a subject or a balance query of another tenant is 403, also a
  subject agent of another tenant (``tenant:<other>``, an agent the credentials bind to
  other tenants); every budget a subject counts is its tenant's: an agent the
  credentials do not name is a level under the tenant, its own per tenant
  (:meth:`CyclesWire._agent_principal`), and so are its dimensions
  (:meth:`CyclesWire._scope`);
* a reservation is seen and ended (read, committed, released, extended) only by this
  wire and its tenant: another tenant's or another wire's is the 404 of an id never
  made (:meth:`CyclesWire._owned`), so that wire's own settle is never lost and an id
  is no oracle;
* idempotency per (tenant, endpoint, key): a replay with the same payload answers the
  original response (same ``reservation_id``), a different payload is 409
  ``IDEMPOTENCY_MISMATCH``. The ledger keeps the key too (namespaced by tenant and
  endpoint), so a retry that reaches another worker on a shared store is replayed by
  the store, never applied twice.

The budget arithmetic is the engine's (:class:`policyengine.budgets.Ledger`); this
module only translates: the subject and action name the ledger's principal, tenant and
permission, protocol units map to ledger units, ledger errors map to protocol codes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from decimal import Decimal
from random import getrandbits as _getrandbits
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from policyengine import _json as strict_json
from policyengine import budgets as pb
from policyengine.budgets.ledger import unknown_reservation
from policyengine.money._money import MONEY_CONTEXT
from policyengine.server import _cycles_models as cm
from policyengine.server import _models as m
from policyengine.server._app import Reply
from policyengine.server._budgetwire import PART_ESCAPES, SCOPE_LEVELS, tenant_fields, under
from policyengine.server._credentials import CyclesKey
from policyengine.server._cycles_fast import (
    FastAction,
    FastCommit,
    FastCreate,
    FastSubject,
    commit_body,
    create_body,
)
from policyengine.server._faults import public_message
from policyengine.server._wirejson import MalformedJsonError, loads

if TYPE_CHECKING:
    from policyengine.server._app import PolicyService, Request, Route

__all__ = ["CyclesWire", "cycles_error_body"]

_LEVELS = ("tenant", "workspace", "app", "workflow", "agent", "toolset")
#: Protocol unit -> (ledger unit, decimal places the protocol's integers carry): the
#: ledger has each protocol unit as it is (USD_MICROCENTS: integers of 10^-8 USD).
_UNITS: dict[str, tuple[str, int]] = {
    "TOKENS": ("tokens", 0),
    "CREDITS": ("credits", 0),
    "RISK_POINTS": ("risk_points", 0),
    "USD_MICROCENTS": ("USD_MICROCENTS", 0),
}
#: Ledger unit -> protocol unit and places, for answers: a USD budget (cents) is
#: reported in microcents, exactly.
_LEDGER_UNITS = {**{ledger: (proto, places) for proto, (ledger, places) in _UNITS.items()},
                 "USD": ("USD_MICROCENTS", 8)}
_STATUS = {"active": "ACTIVE", "committed": "COMMITTED", "released": "RELEASED",
           "expired": "EXPIRED"}
_OVERAGE = {"REJECT": "reject", "ALLOW_IF_AVAILABLE": "allow_if_available",
            "ALLOW_WITH_OVERDRAFT": "allow_with_overdraft"}
# Ledger error code -> (HTTP status, protocol code).
_CODES: dict[str, tuple[int, str]] = {
    "budget_exceeded": (409, "BUDGET_EXCEEDED"),
    "overdraft_limit_exceeded": (409, "OVERDRAFT_LIMIT_EXCEEDED"),
    "debt_outstanding": (409, "DEBT_OUTSTANDING"),
    "unknown_reservation": (404, "NOT_FOUND"),
    "reservation_final": (409, "RESERVATION_FINALIZED"),
    "reservation_expired": (410, "RESERVATION_EXPIRED"),
    "idempotency_mismatch": (409, "IDEMPOTENCY_MISMATCH"),
    "unit_mismatch": (400, "UNIT_MISMATCH"),
    "unit_required": (400, "UNIT_MISMATCH"),
    "store_unavailable": (503, "INTERNAL_ERROR"),
    "clock_skew": (503, "INTERNAL_ERROR"),
    "store_incompatible": (500, "INTERNAL_ERROR"),
}
# Status of a refusal made before a Cycles handler ran (body too large, a duplicate
# header, an unexpected fault) -> protocol code.
_BY_STATUS = {400: "INVALID_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN",
              404: "NOT_FOUND", 405: "INVALID_REQUEST", 408: "INVALID_REQUEST",
              409: "INVALID_REQUEST", 413: "INVALID_REQUEST", 415: "INVALID_REQUEST",
              429: "LIMIT_EXCEEDED"}
_PERMISSION_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                              "0123456789_.-")
_REPLAY_SIZE = 100_000
_DEFAULT_GRACE_MS = 5_000  # the protocol's default grace_period_ms
_REPLAY_SECONDS = 86_400.0

_ERROR = TypeAdapter(cm.CyclesError)
_I64 = 9_223_372_036_854_775_807
_LEDGER_STATUS = {"ACTIVE": "active", "COMMITTED": "committed", "RELEASED": "released",
                  "EXPIRED": "expired"}
#: Time filters of a listing (milliseconds, inclusive): creation, lease end, finish.
_TIME_PARAMS = ("from", "to", "expires_from", "expires_to", "finalized_from",
                "finalized_to")
_LIST_PARAMS = {"status", "idempotency_key", *_LEVELS, "limit", "cursor", *_TIME_PARAMS}
#: Marks a reservation note written by this wire (and its format's version).
_NOTE_MARK = "cycles/1"


#: A request body as the handlers read it: the model, or the fast reader's common shape.
_CreateIn = cm.ReservationCreateRequest | FastCreate
_CommitIn = cm.CommitRequest | FastCommit
_SubjectIn = cm.Subject | FastSubject
_ActionIn = cm.Action | FastAction


def _note(body: _CreateIn) -> str:
    """What a reservation keeps of its create request (``Ledger.reserve(note=)``): the
    subject and action as asked, the idempotency key and the metadata. Keys sorted, so
    the same request makes the same note (it is part of the ledger's idempotency)."""
    subject = body.subject
    asked: dict[str, Any] = {level: value for level in _LEVELS
                             if (value := getattr(subject, level)) is not None}
    if subject.dimensions is not None:
        asked["dimensions"] = subject.dimensions
    action = body.action
    did: dict[str, Any] = {"kind": action.kind, "name": action.name}
    if action.tags is not None:
        did["tags"] = action.tags
    note: dict[str, Any] = {"v": _NOTE_MARK, "s": asked, "a": did, "k": body.idempotency_key}
    if body.metadata is not None:
        note["m"] = body.metadata
    try:
        return orjson.dumps(note, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # what orjson refuses (an integer past 64 bits, a lone surrogate,
        # a Decimal: metadata's 0.1 as the wire read it), written as json.dumps would,
        # and a Decimal as the number it is
        return strict_json.dumps(note, sort_keys=True)


def _tenant_agent(agent: str, tenant: str) -> str:
    """The principal of an agent that exists only on this wire, under ``tenant``: its
    scope path, ``tenant:acme/agent:bot`` (:func:`~._budgetwire.under`). Never a
    principal another wire or the credentials can name, and never ``tenant:acme``
    itself."""
    return under(tenant, "agent:" + agent.translate(PART_ESCAPES))


def _path_value(value: str) -> str:
    """A value as a budget's scope path writes it (``/`` and ``%`` escaped)."""
    return value.replace("%", "%25").replace("/", "%2F")


def _asked_of(r: pb.Reservation) -> dict[str, Any] | None:
    """The create request a reservation's note keeps, if this wire wrote it."""
    text = r.note
    if text is None or not text.startswith('{'):
        return None
    try:
        asked = json.loads(text)
    except ValueError:
        return None
    return asked if type(asked) is dict and asked.get("v") == _NOTE_MARK else None


def _int_param(query: dict[str, str], name: str, low: int, high: int) -> int | None:
    """A query parameter that must be an integer from ``low`` to ``high`` (ASCII digits
    only: no sign, space or underscore), or None when it is absent."""
    text = query.get(name)
    if text is None:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 19) or not (
            low <= int(text) <= high):
        raise _CyclesRefusalError(400, "INVALID_REQUEST", f"{name} must be an integer from "
                                  f"{low} to {high}")
    return int(text)


def _request_id() -> str:
    """A request's id for correlation (not a secret: a fast generator, reseeded in each
    forked worker, rather than a system call per request)."""
    return f"req_{_getrandbits(64):016x}"


def cycles_error_body(status: int, code: str, message: str,
                      details: dict[str, Any] | None = None,
                      request_id: str | None = None) -> bytes:
    """The protocol's error envelope. ``code`` is a protocol code, or one of the
    service's own lower-case codes (then the status picks the protocol code and the
    service's code rides in ``details.code``)."""
    if not code.isupper():
        details = {**(details or {}), "code": code}
        code = "INTERNAL_ERROR" if status >= 500 else _BY_STATUS.get(status, "INVALID_REQUEST")
    return _ERROR.dump_json(cm.CyclesError(error=code, message=message,
                                           request_id=request_id or _request_id(),
                                           details=details), exclude_none=True)


def _refusal(status: int, code: str, message: str
             ) -> tuple[bytes, tuple[tuple[bytes, bytes], ...]]:
    """A refusal made by the service before a Cycles handler ran, in the wire's envelope."""
    rid = _request_id()
    return (cycles_error_body(status, code, message, request_id=rid),
            ((b"x-request-id", rid.encode()),))


class _CyclesRefusalError(Exception):
    """A refusal on the Cycles wire: status, protocol code, message, details."""

    def __init__(self, status: int, code: str, message: str,
                 details: dict[str, Any] | None = None,
                 headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.headers = details, headers


_CREATE_IN = TypeAdapter(cm.ReservationCreateRequest)
_COMMIT_IN = TypeAdapter(cm.CommitRequest)
_RELEASE_IN = TypeAdapter(cm.ReleaseRequest)
_EXTEND_IN = TypeAdapter(cm.ExtendRequest)
_DECIDE_IN = TypeAdapter(cm.DecisionRequest)
_EVENT_IN = TypeAdapter(cm.EventCreateRequest)
_CREATE_OUT = TypeAdapter(cm.ReservationCreateResponse)
_RELEASE_OUT = TypeAdapter(cm.ReleaseResponse)
_EXTEND_OUT = TypeAdapter(cm.ExtendResponse)
_DECIDE_OUT = TypeAdapter(cm.DecisionResponse)
_EVENT_OUT = TypeAdapter(cm.EventCreateResponse)
_DETAIL_OUT = TypeAdapter(cm.ReservationDetail)
_LIST_OUT = TypeAdapter(cm.ReservationListResponse)
_BALANCES_OUT = TypeAdapter(cm.BalanceResponse)


def _dump(adapter: TypeAdapter[Any], value: Any) -> bytes:
    return adapter.dump_json(value, exclude_none=True)


def _segment(text: str) -> str:
    """A permission segment naming ``text``: characters a permission cannot hold become
    ``_`` (so a budget pattern can always name the action; two names that differ only
    there share budgets, which charges more, never less)."""
    if text and all(c in _PERMISSION_CHARS for c in text):
        return text
    return "".join(c if c in _PERMISSION_CHARS else "_" for c in text) or "_"


#: (action kind, action name) -> permission, for the actions seen (bounded).
_PERMISSIONS: dict[tuple[str, str], str] = {}
_PERMISSIONS_SIZE = 4096


#: One idempotent operation: (key, validated body, ledger key, path params) -> answer.
_Operation = Callable[[CyclesKey, Any, str, tuple[str, ...]], tuple[int, bytes]]


class _Replays:
    """Successful answers by (tenant, endpoint, idempotency key), bounded, per process:
    the request they answered (path parameters and body bytes) and the original status
    and body. A retry with the very same bytes is a replay at once; other bytes are
    compared as parsed JSON (key order and spacing do not count, values do)."""

    def __init__(self, size: int = _REPLAY_SIZE, seconds: float = _REPLAY_SECONDS) -> None:
        self._items: OrderedDict[tuple[str, str, str],
                                 tuple[tuple[str, ...], bytes, int, bytes, float]] = (
            OrderedDict())
        self._size, self._seconds = size, seconds

    def get(self, key: tuple[str, str, str], params: tuple[str, ...], raw: bytes
            ) -> tuple[int, bytes] | None:
        hit = self._items.get(key)
        if hit is None:
            return None
        if hit[4] < time.monotonic():
            del self._items[key]
            return None
        if hit[0] != params or (hit[1] != raw and loads(hit[1]) != loads(raw)):
            raise _CyclesRefusalError(409, "IDEMPOTENCY_MISMATCH", "this idempotency key was "
                                      "used with a different payload on this endpoint")
        return hit[2], hit[3]

    def clear(self) -> None:
        self._items.clear()

    def put(self, key: tuple[str, str, str], params: tuple[str, ...], raw: bytes,
            status: int, body: bytes) -> None:
        self._items[key] = (params, raw, status, body, time.monotonic() + self._seconds)
        if len(self._items) > self._size:
            self._items.popitem(last=False)


class CyclesWire:
    """The Cycles endpoints of one service, under ``prefix``."""

    def __init__(self, service: PolicyService, prefix: str) -> None:
        self.service = service
        self.prefix = prefix
        self.replays = _Replays()
        # Reservations this worker made: id -> tenant.
        self.owners: OrderedDict[str, str] = OrderedDict()

    def routes(self) -> list[Route]:
        from policyengine.server._app import Route
        p = self.prefix
        err = _refusal

        def route(name: str, method: str, path: str, handler: Callable[[Request], Reply],
                  request: type[BaseModel] | None, response: type[BaseModel] | None,
                  summary: str, security: str | None = "cycles") -> Route:
            return Route(name, method, f"{p}{path}", self._guarded(handler), request,
                          response, summary, security, error_body=err,
                          claims=b"x-cycles-api-key" if name == "cycles_event" else None)

        return [
            route("cycles_create", "POST", "/v1/reservations", self.create,
                  cm.ReservationCreateRequest, cm.ReservationCreateResponse,
                  "Cycles: reserve budget (a lease), or a dry run"),
            route("cycles_list", "GET", "/v1/reservations", self.list_reservations,
                  None, cm.ReservationListResponse, "Cycles: list reservations"),
            route("cycles_get", "GET", "/v1/reservations/{reservation_id}", self.get,
                  None, cm.ReservationDetail, "Cycles: one reservation"),
            route("cycles_commit", "POST", "/v1/reservations/{reservation_id}/commit",
                  self.commit, cm.CommitRequest, cm.CommitResponse,
                  "Cycles: spend the actual amount, release the rest"),
            route("cycles_release", "POST", "/v1/reservations/{reservation_id}/release",
                  self.release, cm.ReleaseRequest, cm.ReleaseResponse,
                  "Cycles: give a reservation back"),
            route("cycles_extend", "POST", "/v1/reservations/{reservation_id}/extend",
                  self.extend, cm.ExtendRequest, cm.ExtendResponse,
                  "Cycles: extend a lease (heartbeat)"),
            route("cycles_decide", "POST", "/v1/decide", self.decide, cm.DecisionRequest,
                  cm.DecisionResponse, "Cycles: would this spend be allowed?"),
            route("cycles_event", "POST", "/v1/events", self.event, cm.EventCreateRequest,
                  cm.EventCreateResponse, "Cycles: record a spend without a reservation"),
            route("cycles_balances", "GET", "/v1/balances", self.balances, None,
                  cm.BalanceResponse, "Cycles: budget balances of the tenant's scopes"),
            route("cycles_readiness", "GET", "/actuator/health/readiness", self.readiness,
                  None, None, "Cycles: readiness probe", None),
        ]

    # ------------------------------------------------------------------ plumbing
    def _guarded(self, handler: Callable[[Request], Reply]) -> Callable[[Request], Reply]:
        def run(req: Request) -> Reply:
            rid = _request_id()
            try:
                reply = handler(req)
            except _CyclesRefusalError as exc:
                self.service.metrics.error(exc.code)
                reply = Reply(exc.status, cycles_error_body(
                    exc.status, exc.code, exc.message, exc.details, rid), headers=exc.headers)
            except pb.BudgetError as exc:
                status, code = _CODES.get(exc.code, (400, "INVALID_REQUEST"))
                self.service.metrics.error(exc.code)
                details = {"code": exc.code} if code in ("INVALID_REQUEST",
                                                         "INTERNAL_ERROR") else None
                reply = Reply(status, cycles_error_body(
                    status, code, public_message(exc.code, exc.message), details, rid))
            reply.headers = (*reply.headers, (b"x-request-id", rid.encode()))
            return reply
        return run

    def _key(self, req: Request) -> CyclesKey:
        raw = req.headers.get(b"x-cycles-api-key")
        if raw:
            try:
                key = raw.decode("ascii")
            except UnicodeDecodeError:
                key = ""
            found = self.service.credentials.check_cycles_key(key) if key else None
            if found is not None:
                return found
        raise _CyclesRefusalError(401, "UNAUTHORIZED", "a valid X-Cycles-API-Key is required")

    def _body(self, req: Request, adapter: TypeAdapter[Any],
              fast: Callable[[bytes], Any] | None = None) -> Any:
        """The validated body: ``fast`` (:mod:`._cycles_fast`) reads the endpoint's common
        shape; anything else, refusals included, goes through the strict decoder and the
        endpoint's model."""
        ctype = req.headers.get(b"content-type", b"application/json")
        if ctype != b"application/json" and not ctype.split(b";", 1)[0].strip().lower(
                ).endswith(b"json"):
            raise _CyclesRefusalError(400, "INVALID_REQUEST", "the body must be application/json")
        body = None if fast is None else fast(req.body)
        if body is None:
            body = self._model(req, adapter)
        header = req.headers.get(b"x-idempotency-key")
        if header is not None and header.decode("utf-8", "replace") != body.idempotency_key:
            raise _CyclesRefusalError(400, "INVALID_REQUEST", "X-Idempotency-Key and the body's "
                                "idempotency_key differ")
        return body

    @staticmethod
    def _model(req: Request, adapter: TypeAdapter[Any]) -> Any:
        try:
            data = loads(req.body)
        except MalformedJsonError as exc:
            raise _CyclesRefusalError(400, "INVALID_REQUEST", exc.message,
                                {"code": exc.code}) from None
        try:
            return adapter.validate_python(data)
        except ValidationError as exc:
            raise _CyclesRefusalError(400, "INVALID_REQUEST", m.validation_message(exc)) from None

    def _reply(self, status: int, body: bytes, tenant: str) -> Reply:
        return Reply(status, body, tenant, headers=((b"x-cycles-tenant", tenant.encode()),))

    def _idempotent(self, req: Request, adapter: TypeAdapter[Any], endpoint: str,
                    run: _Operation, fast: Callable[[bytes], Any] | None = None) -> Reply:
        """Validate, then answer a replay from the cache or run the operation once."""
        key = self._key(req)
        body = self._body(req, adapter, fast)
        slot = (key.tenant, endpoint, body.idempotency_key)
        hit = self.replays.get(slot, req.params, req.body)
        if hit is not None:
            return self._reply(hit[0], hit[1], key.tenant)
        ledger_key = self._ledger_key(key.tenant, endpoint, body.idempotency_key)
        status, out = run(key, body, ledger_key, req.params)
        self.replays.put(slot, req.params, req.body, status, out)
        return self._reply(status, out, key.tenant)

    @staticmethod
    def _ledger_key(tenant: str, endpoint: str, idempotency_key: str) -> str:
        """The ledger's idempotency key of a wire key: namespaced by tenant and endpoint."""
        return "cy_" + hashlib.sha256(f"{tenant}\0{endpoint}\0{idempotency_key}".encode(
            "utf-8", "surrogatepass")).hexdigest()[:40]

    @property
    def ledger(self) -> pb.Ledger:
        return self.service.engine.budgets

    # ------------------------------------------------------------------ translation
    @staticmethod
    def _tenant_of(subject: _SubjectIn, key: CyclesKey) -> None:
        if subject.tenant is not None and subject.tenant != key.tenant:
            raise _CyclesRefusalError(403, "FORBIDDEN", "subject.tenant is not the tenant of this "
                                "API key")
        if subject.tenant is None and not any(getattr(subject, level) for level in _LEVELS[1:]):
            raise _CyclesRefusalError(400, "INVALID_REQUEST", "the subject names no scope")

    @staticmethod
    def _scopes(subject: _SubjectIn | cm.SubjectOut, tenant: str) -> list[str]:
        """Canonical scopes: tenant -> workspace -> app -> workflow -> agent -> toolset,
        levels not given skipped; the tenant is always the key's."""
        out = [f"tenant:{tenant}"]
        for level in _LEVELS[1:]:
            value = getattr(subject, level)
            if value is not None:
                out.append(f"{level}:{value}")
        return out

    def _scope(self, subject: _SubjectIn, tenant: str) -> dict[str, str]:
        """The ledger's ``scope=``: the hierarchy levels below the tenant (``per
        workspace`` ... ``per toolset`` budgets, whose buckets the ledger writes under the
        tenant) and the subject's ``dimensions`` (``per context.NAME`` budgets), each
        under the key's tenant (:func:`~._budgetwire.dimension`): a dimension is a field
        of the subject, and a subject is its tenant's, so two tenants' equal values never share
        a bucket. A dimension a budget reads that the subject does not give is the
        tenant's empty value (``tenant:acme/cost_center:``), shared by the tenant's
        subjects without it, as a level not given is: leaving it out escapes no cap, and
        never meets another tenant's. A dimension never stands in for a level."""
        out = tenant_fields(self.ledger.scope_fields, tenant, subject.dimensions or {})
        for level in SCOPE_LEVELS:
            value = getattr(subject, level)
            if value is not None:
                out[level] = value
        return out

    def _principal(self, subject: _SubjectIn, key: CyclesKey) -> str:
        return (under(key.tenant) if subject.agent is None
                else self._agent_principal(subject.agent, key))

    def _agent_principal(self, agent: str, key: CyclesKey) -> str:
        """The ledger principal of the subject agent ``agent`` of the key's tenant, or 403
        for an agent of another tenant. ``tenant:<name>`` is the tenant's own principal,
        that of a subject without an agent: only that tenant's keys may name it, and no
        other ``tenant:...`` name may be asked for. An agent the credentials bind to
        tenants (``apiKeys`` entries' ``tenant``) is that principal, shared with the
        other wires, for those tenants only; one they name without a tenant is shared by
        every tenant. Any other agent exists only on this wire, as a subject level under
        its tenant (the protocol's ``tenant:acme/agent:bot``): each tenant has its own,
        and its principal is that scope path (:func:`_tenant_agent`), in the ``tenant:``
        namespace no credentials may name an agent in: so it is never a real agent's
        principal (``bot@acme`` was, for an agent of that name). Per ``acting_for``
        budgets count this principal too (the wire acts for nobody)."""
        if agent.startswith("tenant:"):
            if agent != f"tenant:{key.tenant}":
                raise _CyclesRefusalError(403, "FORBIDDEN", "subject.agent may name only "
                                          "the tenant of this API key (tenant:<tenant>)")
            return under(key.tenant)
        tenants = self.service.credentials.agent_tenants(agent)
        if tenants is None:
            return _tenant_agent(agent, key.tenant)
        if tenants and key.tenant not in tenants:
            raise _CyclesRefusalError(403, "FORBIDDEN", "subject.agent is an agent of another "
                                      "tenant")
        return agent

    @staticmethod
    def _permission(action: _ActionIn) -> str:
        pair = (action.kind, action.name)
        found = _PERMISSIONS.get(pair)
        if found is None:
            if len(_PERMISSIONS) >= _PERMISSIONS_SIZE:
                _PERMISSIONS.clear()
            found = _PERMISSIONS[pair] = f"{_segment(pair[0])}:{_segment(pair[1])}"
        return found

    @staticmethod
    def _unit(unit: str) -> tuple[str, int]:
        found = _UNITS.get(unit)
        if found is None:
            raise _CyclesRefusalError(400, "UNIT_MISMATCH", f"no budget of this service counts "
                                f"{unit}")
        return found

    @staticmethod
    def _to_ledger(amount: int, places: int) -> Decimal:
        # the money context, never the thread's: prec=3 made 1001 cents 10.0 USD
        return Decimal(amount).scaleb(-places, MONEY_CONTEXT) if places else Decimal(amount)

    @staticmethod
    def _to_wire(value: Decimal, places: int) -> int:
        return int(value.scaleb(places, MONEY_CONTEXT)) if places else int(value)

    def _amount_out(self, value: Decimal | None, unit: str | None) -> cm.AmountOut | None:
        if value is None or unit is None:
            return None
        proto = _LEDGER_UNITS.get(unit)
        if proto is None:
            return None
        return cm.AmountOut(unit=proto[0], amount=max(0, self._to_wire(value, proto[1])))  # type: ignore[arg-type]

    @staticmethod
    def _caps(caps: dict[str, int]) -> cm.CapsOut | None:
        """The budgets' caps (the most restrictive of each), or None: an allow with caps is
        ``ALLOW_WITH_CAPS``."""
        return cm.CapsOut.model_validate(caps) if caps else None

    def _charged(self, r: pb.Reservation, unit: str, amount: int) -> cm.AmountOut:
        """What a commit or an event charged, in the protocol's unit: the amount, or, when
        ``ALLOW_IF_AVAILABLE`` capped it, the least any budget in that unit took."""
        if not r.capped:
            return cm.AmountOut(unit=unit, amount=amount)  # type: ignore[arg-type]
        takes = []
        for line in r.lines:
            proto = _LEDGER_UNITS.get(line.unit)
            if proto is not None and proto[0] == unit and line.committed is not None:
                takes.append(self._to_wire(line.committed, proto[1]))
        return cm.AmountOut(unit=unit, amount=min(takes, default=0))  # type: ignore[arg-type]

    def _owned(self, key: CyclesKey, reservation_id: str
               ) -> tuple[pb.Reservation, dict[str, Any]]:
        """The reservation, if it is this key's, and the create request its note keeps:
        made on this wire (its note is this wire's) for the key's tenant. Any other
        (another tenant's, or a hold another wire made: an actguard run's, an
        agent-ledger batch's) does not exist for this key: 404 ``NOT_FOUND`` with the
        very answer of an id never made, so an id is no oracle of another tenant's or
        wire's reservations, and only the wire that made a reservation reads or ends it
        (else that wire's own settle would be lost)."""
        r = self.ledger.get(reservation_id)
        asked = _asked_of(r) if r.tenant == key.tenant else None
        if asked is None:
            raise unknown_reservation(reservation_id)
        return r, asked

    def _check_owner(self, key: CyclesKey, reservation_id: str) -> None:
        """:meth:`_owned` before a commit, release or extend. A reservation's tenant never
        changes, so the tenants of the reservations this worker made are remembered
        (bounded) and a commit of one costs no store read for the check; others are read.
        The overage policy a commit follows is the reservation's own, kept in the ledger
        with it."""
        known = self.owners.get(reservation_id)
        if known is None:
            self._owned(key, reservation_id)
        elif known != key.tenant:
            raise unknown_reservation(reservation_id)

    @staticmethod
    def _ms(t: float) -> int:
        """POSIX seconds (a float) as whole milliseconds, to the nearest: an expiry moved by
        ``extend_by_ms`` reads back exactly that many milliseconds later."""
        return round(t * 1000)

    # ------------------------------------------------------------------ endpoints
    def create(self, req: Request) -> Reply:
        return self._idempotent(req, _CREATE_IN, "reservations", self._create, create_body)

    def _create(self, key: CyclesKey, body: _CreateIn,
                ledger_key: str, params: tuple[str, ...]) -> tuple[int, bytes]:
        self._tenant_of(body.subject, key)
        unit, places = self._unit(body.estimate.unit)
        amount = self._to_ledger(body.estimate.amount, places)
        scopes = self._scopes(body.subject, key.tenant)
        principal = self._principal(body.subject, key)
        permission = self._permission(body.action)
        ledger = self.ledger
        if body.dry_run:
            reserved = cm.AmountOut(unit=body.estimate.unit, amount=body.estimate.amount)
            check = ledger.check(principal, permission, amount, unit, tenant=key.tenant,
                                 scope=self._scope(body.subject, key.tenant))
            if check.allowed and not check.budgets:
                check_code: str | None = "budget_exceeded"
            else:
                check_code = None if check.allowed else check.code
            caps = self._caps(check.caps) if check_code is None else None
            out = cm.ReservationCreateResponse(
                decision=("DENY" if check_code is not None else
                          "ALLOW_WITH_CAPS" if caps is not None else "ALLOW"),
                affected_scopes=scopes, scope_path="/".join(scopes),
                reserved=reserved if check_code is None else None, caps=caps,
                reason_code=None if check_code is None else _CODES[check_code][1])
            return 200, _dump(_CREATE_OUT, out)
        grace = (_DEFAULT_GRACE_MS if body.grace_period_ms is None
                 else body.grace_period_ms) / 1000
        r = ledger.reserve(principal, permission, amount, unit,
                           ttl=body.ttl_ms / 1000, idempotency_key=ledger_key,
                           tenant=key.tenant, scope=self._scope(body.subject, key.tenant),
                           grace=grace, overage=_OVERAGE[body.overage_policy],  # type: ignore[arg-type]
                           note=_note(body))
        if not r.holds:
            # The protocol: at least one derived scope must have a budget. A spend no
            # budget covers is refused, never admitted unmetered (the reservation the
            # ledger made holds nothing; a replay of its key is refused the same way).
            raise _CyclesRefusalError(409, "BUDGET_EXCEEDED", "no budget covers this subject and "
                                "action")
        self.owners[r.id] = key.tenant
        if len(self.owners) > _REPLAY_SIZE:
            self.owners.popitem(last=False)
        now = ledger.clock()
        caps = self._caps(ledger.caps_of(r))
        if caps is None:
            # The common answer, written straight from its values: the fields of
            # ReservationCreateResponse in its order, none of them null.
            return 200, orjson.dumps({
                "decision": "ALLOW", "reservation_id": r.id, "affected_scopes": scopes,
                "expires_at_ms": self._ms(r.expires_at),
                "remaining_ttl_ms": max(0, self._ms(r.expires_at - now)),
                "scope_path": "/".join(scopes),
                "reserved": {"unit": body.estimate.unit, "amount": body.estimate.amount}})
        out = cm.ReservationCreateResponse(
            decision="ALLOW_WITH_CAPS", caps=caps,
            reservation_id=r.id, affected_scopes=scopes,
            expires_at_ms=self._ms(r.expires_at),
            remaining_ttl_ms=max(0, self._ms(r.expires_at - now)),
            scope_path="/".join(scopes),
            reserved=cm.AmountOut(unit=body.estimate.unit, amount=body.estimate.amount))
        return 200, _dump(_CREATE_OUT, out)

    def commit(self, req: Request) -> Reply:
        return self._idempotent(req, _COMMIT_IN, "commit", self._commit, commit_body)

    def _commit(self, key: CyclesKey, body: _CommitIn,
                ledger_key: str, params: tuple[str, ...]) -> tuple[int, bytes]:
        rid = params[0]
        self._check_owner(key, rid)
        unit, places = self._unit(body.actual.unit)
        # Another protocol unit than the reservation's is the ledger's unit_mismatch
        # (400 UNIT_MISMATCH): the protocol's units other than USD_MICROCENTS are counts.
        # The overage policy is the one the reservation was made with (kept with it).
        done = self.ledger.commit(rid, self._to_ledger(body.actual.amount, places), unit,
                                  idempotency_key=ledger_key)
        unit_out = body.actual.unit
        charged = (body.actual.amount if not done.capped
                   else self._charged(done, unit_out, body.actual.amount).amount)
        reserved = None
        proto = _LEDGER_UNITS.get(done.unit or "")
        if proto is not None:
            reserved = max(0, self._to_wire(done.amount, proto[1]))
            if reserved > _I64:  # what AmountOut refuses (never for an amount of this wire)
                reserved = self._amount_out(done.amount, done.unit).amount  # type: ignore[union-attr]
        # CommitResponse's fields in its order, written straight from their values.
        out: dict[str, Any] = {"status": "COMMITTED",
                               "charged": {"unit": unit_out, "amount": charged}}
        if reserved is not None and reserved > charged:
            out["released"] = {"unit": unit_out, "amount": reserved - charged}
        return 200, orjson.dumps(out)

    def release(self, req: Request) -> Reply:
        return self._idempotent(req, _RELEASE_IN, "release", self._release)

    def _release(self, key: CyclesKey, body: cm.ReleaseRequest,
                 ledger_key: str, params: tuple[str, ...]) -> tuple[int, bytes]:
        rid = params[0]
        self._check_owner(key, rid)
        done = self.ledger.release(rid, idempotency_key=ledger_key)
        released = self._amount_out(done.amount, done.unit)
        if released is None:  # pragma: no cover
            raise _CyclesRefusalError(500, "INTERNAL_ERROR", "the release has no amount")
        return 200, _dump(_RELEASE_OUT, cm.ReleaseResponse(released=released))

    def extend(self, req: Request) -> Reply:
        return self._idempotent(req, _EXTEND_IN, "extend", self._extend)

    def _extend(self, key: CyclesKey, body: cm.ExtendRequest,
                ledger_key: str, params: tuple[str, ...]) -> tuple[int, bytes]:
        rid = params[0]
        self._check_owner(key, rid)
        # Relative to the current lease end, idempotent, only before the lease ends (not
        # in the grace period): the ledger's extend(by=).
        done = self.ledger.extend(rid, by=body.extend_by_ms / 1000, idempotency_key=ledger_key)
        now = self.ledger.clock()
        out = cm.ExtendResponse(expires_at_ms=self._ms(done.expires_at),
                                remaining_ttl_ms=max(0, self._ms(done.expires_at - now)))
        return 200, _dump(_EXTEND_OUT, out)

    def decide(self, req: Request) -> Reply:
        return self._idempotent(req, _DECIDE_IN, "decide", self._decide)

    def _decide(self, key: CyclesKey, body: cm.DecisionRequest,
                ledger_key: str, params: tuple[str, ...]) -> tuple[int, bytes]:
        self._tenant_of(body.subject, key)
        unit, places = self._unit(body.estimate.unit)
        scopes = self._scopes(body.subject, key.tenant)
        check = self.ledger.check(self._principal(body.subject, key),
                                  self._permission(body.action),
                                  self._to_ledger(body.estimate.amount, places), unit,
                                  tenant=key.tenant, scope=self._scope(body.subject, key.tenant))
        code = check.code if not check.allowed else (
            "budget_exceeded" if not check.budgets else None)
        caps = self._caps(check.caps) if code is None else None
        out = cm.DecisionResponse(
            decision=("DENY" if code is not None else
                      "ALLOW_WITH_CAPS" if caps is not None else "ALLOW"), caps=caps,
            reason_code=None if code is None else _CODES[code][1], affected_scopes=scopes)
        return 200, _dump(_DECIDE_OUT, out)

    def event(self, req: Request) -> Reply:
        return self._idempotent(req, _EVENT_IN, "events", self._event)

    def _event(self, key: CyclesKey, body: cm.EventCreateRequest,
               ledger_key: str, params: tuple[str, ...]) -> tuple[int, bytes]:
        self._tenant_of(body.subject, key)
        unit, places = self._unit(body.actual.unit)
        # REJECT refuses what does not fit; ALLOW_IF_AVAILABLE charges at most what is
        # available (never refused for want of budget); ALLOW_WITH_OVERDRAFT up to the
        # overdraft limit.
        overage = _OVERAGE[body.overage_policy]
        r = self.ledger.record(self._principal(body.subject, key),
                               self._permission(body.action),
                               self._to_ledger(body.actual.amount, places), unit,
                               idempotency_key=ledger_key, tenant=key.tenant,
                               scope=self._scope(body.subject, key.tenant),
                               overage=overage)  # type: ignore[arg-type]
        if not r.holds:
            raise _CyclesRefusalError(409, "BUDGET_EXCEEDED", "no budget covers this subject and "
                                "action")
        out = cm.EventCreateResponse(event_id="evt_" + r.id[4:],
                                     charged=self._charged(r, body.actual.unit,
                                                           body.actual.amount))
        return 201, _dump(_EVENT_OUT, out)

    def get(self, req: Request) -> Reply:
        key = self._key(req)
        r, asked = self._owned(key, req.params[0])
        return self._reply(200, _dump(_DETAIL_OUT, self._detail(r, asked)), key.tenant)

    def _asked(self, r: pb.Reservation, asked: dict[str, Any]
               ) -> tuple[cm.SubjectOut, cm.ActionOut, list[str], str | None,
                          dict[str, Any] | None]:
        """The subject, action, scopes, idempotency key and metadata a reservation was
        asked with, from ``asked``, the create request its note keeps (:func:`_asked_of`).
        Only a reservation made over this wire is shown, so its note is at hand:
        :meth:`_owned` (GET) and ``wanted`` (the listing) read it, and give it here."""
        tenant = r.tenant or ""
        subject = cm.SubjectOut.model_validate({**asked["s"], "tenant": tenant})
        action = cm.ActionOut.model_validate(asked["a"])
        return (subject, action, self._scopes(subject, tenant), asked.get("k"),
                asked.get("m"))

    def _detail(self, r: pb.Reservation, asked: dict[str, Any]) -> cm.ReservationDetail:
        subject, action, scopes, idem, metadata = self._asked(r, asked)
        reserved = self._amount_out(r.amount, r.unit) or cm.AmountOut(unit="TOKENS", amount=0)
        finalized = r.finalized_at if r.status in ("committed", "released") else None
        return cm.ReservationDetail(
            reservation_id=r.id, status=_STATUS.get(r.status, "EXPIRED"),  # type: ignore[arg-type]
            idempotency_key=idem, subject=subject, action=action, reserved=reserved,
            committed=self._amount_out(r.committed_amount, r.unit),
            created_at_ms=self._ms(r.created_at), expires_at_ms=self._ms(r.expires_at),
            finalized_at_ms=None if finalized is None else self._ms(finalized),
            scope_path="/".join(scopes), affected_scopes=scopes, metadata=metadata)

    def _summary(self, r: pb.Reservation, asked: dict[str, Any]) -> cm.ReservationSummary:
        subject, action, scopes, idem, _ = self._asked(r, asked)
        reserved = self._amount_out(r.amount, r.unit) or cm.AmountOut(unit="TOKENS", amount=0)
        return cm.ReservationSummary(
            reservation_id=r.id, status=_STATUS.get(r.status, "EXPIRED"),  # type: ignore[arg-type]
            idempotency_key=idem, subject=subject, action=action, reserved=reserved,
            created_at_ms=self._ms(r.created_at), expires_at_ms=self._ms(r.expires_at),
            scope_path="/".join(scopes), affected_scopes=scopes)

    def list_reservations(self, req: Request) -> Reply:
        """``GET /v1/reservations``: the tenant's reservations made over this wire, oldest
        first, filtered by status, idempotency key, subject level and time range, in
        pages (``limit`` 1 to 200, default 50; ``next_cursor`` / ``has_more``)."""
        key = self._key(req)
        query = self._query(req, _LIST_PARAMS)
        if query.get("tenant", key.tenant) != key.tenant:
            raise _CyclesRefusalError(403, "FORBIDDEN", "tenant is not the tenant of this API "
                                      "key")
        status = query.get("status")
        if status is not None and status not in _LEDGER_STATUS:
            raise _CyclesRefusalError(400, "INVALID_REQUEST", "status must be one of ACTIVE, "
                                      "COMMITTED, RELEASED, EXPIRED")
        given = _int_param(query, "limit", 1, 200)
        limit = 50 if given is None else given
        bounds = {name: _int_param(query, name, 0, _I64) for name in _TIME_PARAMS}
        levels = {lv: query[lv] for lv in _LEVELS[1:] if lv in query}
        for level, value in levels.items():
            if not 0 < len(value) <= 128:
                raise _CyclesRefusalError(400, "INVALID_REQUEST", f"{level} must be 1 to 128 "
                                          "characters")
        idem = query.get("idempotency_key")
        if idem is not None and not 0 < len(idem) <= 256:
            raise _CyclesRefusalError(400, "INVALID_REQUEST", "idempotency_key must be 1 to 256 "
                                      "characters")
        cursor = query.get("cursor")
        notes: dict[str, dict[str, Any]] = {}  # a wanted reservation's id -> its note

        def wanted(r: pb.Reservation) -> bool:
            asked = _asked_of(r)
            if asked is None or not r.holds:  # not made here, or refused (held nothing)
                return False
            if idem is not None and asked.get("k") != idem:
                return False
            subject = asked["s"]
            if any(subject.get(lv) != value for lv, value in levels.items()):
                return False
            for name, bound in bounds.items():
                if bound is None:
                    continue
                if name in ("from", "to"):
                    at: float | None = r.created_at
                elif name.startswith("expires"):
                    at = r.expires_at
                else:  # finalized_*: only committed or released reservations have a finish
                    at = r.finalized_at if r.status in ("committed", "released") else None
                if at is None:
                    return False
                at_ms = self._ms(at)
                if (at_ms < bound) if name.endswith("from") else (at_ms > bound):
                    return False
            notes[r.id] = asked
            return True

        ledger_status = None if status is None else _LEDGER_STATUS[status]
        if idem is not None:
            # Recovery by idempotency key: the ledger's record of that create, at once.
            found = self.ledger.reservation_for(self._ledger_key(key.tenant, "reservations",
                                                                 idem))
            chosen = [] if found is None or found.tenant != key.tenant or (
                ledger_status is not None and found.status != ledger_status) or not wanted(
                found) else [found]
            page = pb.ReservationPage(tuple(chosen), None)
        else:
            try:
                page = self.ledger.reservations(tenant=key.tenant, status=ledger_status,
                                                where=wanted, limit=limit, cursor=cursor)
            except pb.BudgetInputError as exc:
                raise _CyclesRefusalError(400, "INVALID_REQUEST", exc.message,
                                          {"code": exc.code}) from None
        out = cm.ReservationListResponse(
            reservations=[self._summary(r, notes[r.id]) for r in page.reservations],
            has_more=page.cursor is not None, next_cursor=page.cursor)
        return self._reply(200, _dump(_LIST_OUT, out), key.tenant)

    def balances(self, req: Request) -> Reply:
        key = self._key(req)
        query = self._query(req, {*_LEVELS, "include_children", "limit", "cursor"})
        if not any(level in query for level in _LEVELS):
            raise _CyclesRefusalError(400, "INVALID_REQUEST", "name at least one subject "
                                      "filter")
        if query.get("tenant", key.tenant) != key.tenant:
            raise _CyclesRefusalError(403, "FORBIDDEN", "tenant is not the tenant of this API "
                                      "key")
        agent = query.get("agent")
        principal: str | None = None
        named: tuple[str, str] | None = None  # a scope path's agent level: as asked
        if agent is not None:
            principal = self._agent_principal(agent, key)
            if principal != agent:
                named = f"agent:{_path_value(principal)}", f"agent:{_path_value(agent)}"
        given = {level: query[level] for level in SCOPE_LEVELS if query.get(level)}
        # The agent level's path: the levels given above it, then the agent.
        above = [f"tenant:{key.tenant}"] + [f"{lv}:{given[lv]}" for lv in _LEVELS[1:4]
                                             if lv in given]
        out = []
        for b in self.ledger.balances(principal, tenant=key.tenant, scope=given):
            proto = _LEDGER_UNITS.get(b.unit)
            if proto is None or b.level not in _LEVELS:
                continue  # a unit or a subject kind the protocol cannot express
            if b.level == "tenant":
                path = f"tenant:{key.tenant}"
            elif b.level == "agent":
                path = "/".join([*above, f"agent:{agent}"])
            else:
                path = b.subject  # the ledger's bucket of a level is its scope path
                if named is not None:
                    path = "/".join(named[1] if part == named[0] else part
                                    for part in path.split("/"))
            out.append(self._balance(path, b, proto))
        return self._reply(200, _dump(_BALANCES_OUT, cm.BalanceResponse(balances=out)),
                           key.tenant)

    def _balance(self, path: str, b: pb.Balance, proto: tuple[str, int]) -> cm.Balance:
        unit, places = proto
        limit = self._to_wire(b.limit, places)
        spent_all = self._to_wire(b.spent, places)
        spent, debt = min(spent_all, limit), max(0, spent_all - limit)
        reserved = self._to_wire(b.reserved, places)
        overdraft = self._to_wire(b.overdraft_limit, places)

        def amt(v: int) -> cm.AmountOut:
            return cm.AmountOut(unit=unit, amount=v)  # type: ignore[arg-type]

        return cm.Balance(
            scope=path.rsplit("/", 1)[-1], scope_path=path,
            remaining=cm.SignedAmount(unit=unit, amount=limit - spent - reserved - debt),  # type: ignore[arg-type]
            reserved=amt(reserved), spent=amt(spent), allocated=amt(limit), debt=amt(debt),
            overdraft_limit=amt(overdraft), is_over_limit=debt > overdraft)

    def readiness(self, req: Request) -> Reply:
        ready = not self.service.draining
        return Reply(200 if ready else 503,
                      b'{"status":"UP"}' if ready else b'{"status":"OUT_OF_SERVICE"}')

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _query(req: Request, allowed: set[str]) -> dict[str, str]:
        try:
            pairs = parse_qsl(req.query.decode("utf-8"), keep_blank_values=True,
                              strict_parsing=bool(req.query), max_num_fields=32)
        except (ValueError, UnicodeDecodeError):
            raise _CyclesRefusalError(400, "INVALID_REQUEST", "malformed query string") from None
        query = dict(pairs)
        if len(query) != len(pairs):
            raise _CyclesRefusalError(400, "INVALID_REQUEST", "a query parameter is repeated")
        unknown = set(query) - allowed
        if unknown:
            raise _CyclesRefusalError(400, "INVALID_REQUEST",
                                f"unknown query parameter {sorted(unknown)[0]!r}")
        return query


# ---------------------------------------------------------------------- conformance
_KEY_HASHES: dict[str, str] = {}


def run_cycles_case(engine: Any, case: dict[str, Any],
                    advance: Callable[[float], None]) -> str | None:
    """Conformance kind ``cycles``: ``api_keys`` maps each API key to its tenant;
    ``steps`` are wire exchanges run in order against the service (in process, on the
    fixture's clock): ``{"request": {"method", "path", "key"?, "headers"?, "body"?},
    "expect": {"status", "body"?}, "capture"?: {"name": "field"}}``, or
    ``{"advance_ms": n}`` to move the clock. ``{name}`` in a path or a body string is a
    captured value; in ``expect.body`` the string ``"*"`` matches any value and
    ``"$name"`` the captured one; every other value, and the set of keys, must be
    exact. None when every step matches, else why not."""
    import asyncio

    from policyengine.server._app import ServiceConfig, create_app
    from policyengine.server._credentials import Credentials, hash_secret

    keys: list[CyclesKey] = []
    for key, tenant in case.get("api_keys", {}).items():
        if key not in _KEY_HASHES:
            _KEY_HASHES[key] = hash_secret(key)
        keys.append(CyclesKey(f"key-{tenant}-{len(keys)}", _KEY_HASHES[key], tenant))
    app = create_app(engine, credentials=Credentials(cycles_keys=tuple(keys)),
                     config=ServiceConfig(access_log=False, watch_interval=None))
    seen: dict[str, Any] = {}

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            for name, got in seen.items():
                value = value.replace("{" + name + "}", str(got))
            return value
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    def differs(want: Any, got: Any, where: str) -> str | None:
        if want == "*":
            return None
        if isinstance(want, str) and want.startswith("$") and want[1:] in seen:
            want = seen[want[1:]]
        if isinstance(want, dict) and isinstance(got, dict):
            if set(want) != set(got):
                return f"{where}: keys {sorted(got)}, expected {sorted(want)}"
            for k in want:
                problem = differs(want[k], got[k], f"{where}.{k}")
                if problem:
                    return problem
            return None
        if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
            for i, (w, g) in enumerate(zip(want, got, strict=True)):
                problem = differs(w, g, f"{where}[{i}]")
                if problem:
                    return problem
            return None
        if type(want) is not type(got) or want != got:
            return f"{where}: {got!r}, expected {want!r}"
        return None

    async def exchange(request: dict[str, Any]) -> tuple[int, Any]:
        body = b"" if "body" not in request else json.dumps(fill(request["body"])).encode()
        headers = [(b"content-type", b"application/json")]
        if "key" in request:
            headers.append((b"x-cycles-api-key", request["key"].encode()))
        headers += [(k.lower().encode(), str(v).encode())
                    for k, v in request.get("headers", {}).items()]
        path, _, query = fill(request["path"]).partition("?")
        sent: list[dict[str, Any]] = []
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app({"type": "http", "method": request["method"], "path": path,
                   "headers": headers, "query_string": query.encode()}, receive, send)
        return sent[0]["status"], json.loads(sent[1]["body"])

    for i, step in enumerate(case["steps"]):
        if "advance_ms" in step:
            advance(step["advance_ms"] / 1000)
            continue
        status, body = asyncio.run(exchange(step["request"]))
        where = f"step {i} ({step['request']['method']} {step['request']['path']})"
        want = step["expect"]
        if status != want["status"]:
            return f"{where}: status {status}, expected {want['status']}: {body}"
        if "body" in want:
            problem = differs(want["body"], body, where + " body")
            if problem:
                return problem
        for name, field in step.get("capture", {}).items():
            seen[name] = body[field]
    return None
