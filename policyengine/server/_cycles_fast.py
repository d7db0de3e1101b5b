"""The Cycles wire's common request bodies, read without the general decoder and models.

A create (``POST /v1/reservations``) and a commit are most of the wire's traffic, and
reading them through the strict JSON decoder (a Python hook per object) and then the
pydantic models cost more CPU than the budget arithmetic behind them. This module reads
the *common shapes* of those two bodies with orjson and checks them here by hand; it
answers ``None`` for anything it is not sure of (an escape in the text, metadata,
dimensions, tags, metrics, a null, a float, a key it does not know, a value out of
range), and the caller then reads the body the general way, which gives the wire's
usual answer, error codes included. So this path can only accept: a body it accepts is
one the models accept with the same values (``tests/server/test_cycles_fast.py`` checks
both over random and hostile bodies), and every refusal still comes from the models.

Duplicate keys (which orjson would fold into one, keeping the last): with no escape in
the text, every ``:`` outside a string separates one key from its value, and a string's
colons are its own; so the text's colons equal the decoded pairs plus the colons of the
decoded strings exactly when no key was repeated.
"""

from __future__ import annotations

from typing import Any, cast

import orjson

from policyengine.server._cycles_models import Overage, Unit

__all__ = ["FastAction", "FastAmount", "FastCommit", "FastCreate", "FastSubject",
           "commit_body", "create_body"]

_I64 = 9_223_372_036_854_775_807
_UNITS = frozenset(("USD_MICROCENTS", "TOKENS", "CREDITS", "RISK_POINTS"))
_OVERAGES = frozenset(("REJECT", "ALLOW_IF_AVAILABLE", "ALLOW_WITH_OVERDRAFT"))
_LEVELS = frozenset(("tenant", "workspace", "app", "workflow", "agent", "toolset"))
_CREATE_KEYS = frozenset(("idempotency_key", "subject", "action", "estimate", "ttl_ms",
                          "grace_period_ms", "overage_policy", "dry_run"))
_ACTION_KEYS = frozenset(("kind", "name"))
_AMOUNT_KEYS = frozenset(("unit", "amount"))
_COMMIT_KEYS = frozenset(("idempotency_key", "actual"))


class FastSubject:
    """:class:`~._cycles_models.Subject` without ``dimensions`` (read as None)."""

    __slots__ = ("agent", "app", "tenant", "toolset", "workflow", "workspace")
    dimensions: None = None

    def __init__(self, levels: dict[str, str]) -> None:
        get = levels.get
        self.tenant: str | None = get("tenant")
        self.workspace: str | None = get("workspace")
        self.app: str | None = get("app")
        self.workflow: str | None = get("workflow")
        self.agent: str | None = get("agent")
        self.toolset: str | None = get("toolset")


class FastAction:
    """:class:`~._cycles_models.Action` without ``tags`` (read as None)."""

    __slots__ = ("kind", "name")
    tags: None = None

    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name


class FastAmount:
    """:class:`~._cycles_models.Amount`."""

    __slots__ = ("amount", "unit")

    def __init__(self, unit: Unit, amount: int) -> None:
        self.unit, self.amount = unit, amount


class FastCreate:
    """:class:`~._cycles_models.ReservationCreateRequest` without ``metadata``."""

    __slots__ = ("action", "dry_run", "estimate", "grace_period_ms", "idempotency_key",
                 "overage_policy", "subject", "ttl_ms")
    metadata: None = None

    def __init__(self, idempotency_key: str, subject: FastSubject, action: FastAction,
                 estimate: FastAmount, ttl_ms: int, grace_period_ms: int | None,
                 overage_policy: Overage, dry_run: bool) -> None:
        self.idempotency_key, self.subject, self.action = idempotency_key, subject, action
        self.estimate, self.ttl_ms, self.grace_period_ms = estimate, ttl_ms, grace_period_ms
        self.overage_policy, self.dry_run = overage_policy, dry_run


class FastCommit:
    """:class:`~._cycles_models.CommitRequest` without ``metrics`` and ``metadata``."""

    __slots__ = ("actual", "idempotency_key")
    metrics: None = None
    metadata: None = None

    def __init__(self, idempotency_key: str, actual: FastAmount) -> None:
        self.idempotency_key, self.actual = idempotency_key, actual


def _text(value: object, low: int, high: int) -> int:
    """The colons of ``value`` when it is a string of ``low`` to ``high`` characters,
    else -1."""
    if type(value) is not str or not low <= len(value) <= high:
        return -1
    return value.count(":")


def _amount(value: object) -> FastAmount | None:
    if type(value) is not dict or value.keys() != _AMOUNT_KEYS:
        return None
    unit, amount = value["unit"], value["amount"]
    if type(unit) is not str or unit not in _UNITS or type(amount) is not int or not (
            0 <= amount <= _I64):
        return None
    return FastAmount(cast(Unit, unit), amount)


def _decode(raw: bytes) -> dict[str, Any] | None:
    if b"\\" in raw:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if type(data) is dict else None


def create_body(raw: bytes) -> FastCreate | None:
    """A create body of the common shape, or None (then read it the general way)."""
    data = _decode(raw)
    if data is None or not data.keys() <= _CREATE_KEYS:
        return None
    key: Any = data.get("idempotency_key")
    subject, action = data.get("subject"), data.get("action")
    if type(subject) is not dict or not subject.keys() <= _LEVELS:
        return None
    if type(action) is not dict or action.keys() != _ACTION_KEYS:
        return None
    estimate = _amount(data.get("estimate"))
    if estimate is None:
        return None
    colons = len(data) + len(subject) + 4  # one per key: the four objects' own
    for value in subject.values():
        n = _text(value, 1, 128)
        if n < 0:
            return None
        colons += n
    kind, name = action["kind"], action["name"]
    for n in (_text(kind, 1, 64), _text(name, 1, 256), _text(key, 1, 256)):
        if n < 0:
            return None
        colons += n
    ttl = data.get("ttl_ms", 60_000)
    if type(ttl) is not int or not 1_000 <= ttl <= 86_400_000:
        return None
    grace = data.get("grace_period_ms", 0)
    if type(grace) is not int or not 0 <= grace <= 60_000:
        return None  # (an explicit null included: the models' call)
    overage: Any = data.get("overage_policy", "ALLOW_IF_AVAILABLE")
    if type(overage) is not str or overage not in _OVERAGES:
        return None
    dry_run = data.get("dry_run", False)
    if type(dry_run) is not bool:
        return None
    if raw.count(b":") != colons:  # (the units and overage policies hold no colon)
        return None  # a repeated key
    return FastCreate(key, FastSubject(subject), FastAction(kind, name), estimate, ttl,
                      data.get("grace_period_ms"), cast(Overage, overage), dry_run)


def commit_body(raw: bytes) -> FastCommit | None:
    """A commit body of the common shape, or None (then read it the general way)."""
    data = _decode(raw)
    if data is None or data.keys() != _COMMIT_KEYS:
        return None
    actual = _amount(data["actual"])
    if actual is None:
        return None
    key = data["idempotency_key"]
    n = _text(key, 1, 256)
    if n < 0 or raw.count(b":") != 4 + n:
        return None
    return FastCommit(key, actual)
