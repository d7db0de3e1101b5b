"""Bodies of the Cycles budget protocol (runcycles 0.5.x and 0.1.x), as pydantic v2 models.

Requests forbid unknown keys and are strict about types (``"5"`` is not an amount, a
float is not a TTL). Responses are written with ``exclude_none``: runcycles 0.5.x
validates them with ``extra="forbid"`` and ``strict=True`` and refuses a JSON ``null``
anywhere, so an absent field is left out, never ``null``. Field limits are the
protocol's (``cycles-protocol-v0.yaml``, v0.1.24, plus the fields the 0.5.x client
reads that the spec file lags behind: ``remaining_ttl_ms``, event ``charged``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "Action",
    "Amount",
    "Balance",
    "BalanceResponse",
    "CommitRequest",
    "CommitResponse",
    "CyclesError",
    "CyclesMetrics",
    "DecisionRequest",
    "DecisionResponse",
    "EventCreateRequest",
    "EventCreateResponse",
    "ExtendRequest",
    "ExtendResponse",
    "ReleaseRequest",
    "ReleaseResponse",
    "ReservationCreateRequest",
    "ReservationCreateResponse",
    "ReservationDetail",
    "ReservationListResponse",
    "ReservationSummary",
    "SignedAmount",
    "Subject",
]

Unit = Literal["USD_MICROCENTS", "TOKENS", "CREDITS", "RISK_POINTS"]
Overage = Literal["REJECT", "ALLOW_IF_AVAILABLE", "ALLOW_WITH_OVERDRAFT"]
DecisionEnum = Literal["ALLOW", "ALLOW_WITH_CAPS", "DENY"]
_I64 = 9_223_372_036_854_775_807
IdempotencyKey = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Level = Annotated[str, StringConstraints(min_length=1, max_length=128)]
JsonObject = dict[str, Any]


class _In(BaseModel):
    # a validation error's text never quotes a value (see _models._Request)
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True,
                              hide_input_in_errors=True)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Amount(_In):
    unit: Unit
    amount: Annotated[int, Field(ge=0, le=_I64)]


class SignedAmount(_Out):
    unit: Unit
    amount: Annotated[int, Field(ge=-_I64 - 1, le=_I64)]


class AmountOut(_Out):
    unit: Unit
    amount: Annotated[int, Field(ge=0, le=_I64)]


class Subject(_In):
    tenant: Level | None = None
    workspace: Level | None = None
    app: Level | None = None
    workflow: Level | None = None
    agent: Level | None = None
    toolset: Level | None = None
    dimensions: Annotated[dict[Annotated[str, StringConstraints(max_length=256)],
                               Annotated[str, StringConstraints(max_length=256)]],
                          Field(max_length=16)] | None = None


class Action(_In):
    kind: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    tags: Annotated[list[Annotated[str, StringConstraints(max_length=64)]],
                    Field(max_length=10)] | None = None


class CyclesMetrics(_In):
    tokens_input: Annotated[int, Field(ge=0)] | None = None
    tokens_output: Annotated[int, Field(ge=0)] | None = None
    latency_ms: Annotated[int, Field(ge=0)] | None = None
    model_version: Annotated[str, StringConstraints(max_length=128)] | None = None
    custom: JsonObject | None = None


# ---------------------------------------------------------------------- requests
class ReservationCreateRequest(_In):
    idempotency_key: IdempotencyKey
    subject: Subject
    action: Action
    estimate: Amount
    ttl_ms: Annotated[int, Field(ge=1000, le=86_400_000)] = 60_000
    grace_period_ms: Annotated[int, Field(ge=0, le=60_000)] | None = None
    overage_policy: Overage = "ALLOW_IF_AVAILABLE"
    dry_run: bool = False
    metadata: JsonObject | None = None


class CommitRequest(_In):
    idempotency_key: IdempotencyKey
    actual: Amount
    metrics: CyclesMetrics | None = None
    metadata: JsonObject | None = None


class ReleaseRequest(_In):
    idempotency_key: IdempotencyKey
    reason: Annotated[str, StringConstraints(max_length=256)] | None = None


class ExtendRequest(_In):
    idempotency_key: IdempotencyKey
    extend_by_ms: Annotated[int, Field(ge=1, le=86_400_000)]
    metadata: JsonObject | None = None


class DecisionRequest(_In):
    idempotency_key: IdempotencyKey
    subject: Subject
    action: Action
    estimate: Amount
    metadata: JsonObject | None = None


class EventCreateRequest(_In):
    idempotency_key: IdempotencyKey
    subject: Subject
    action: Action
    actual: Amount
    overage_policy: Overage = "ALLOW_IF_AVAILABLE"
    metrics: CyclesMetrics | None = None
    client_time_ms: Annotated[int, Field(ge=0)] | None = None
    metadata: JsonObject | None = None


# ---------------------------------------------------------------------- responses
class Balance(_Out):
    scope: str
    scope_path: str
    remaining: SignedAmount
    reserved: AmountOut | None = None
    spent: AmountOut | None = None
    allocated: AmountOut | None = None
    debt: AmountOut | None = None
    overdraft_limit: AmountOut | None = None
    is_over_limit: bool | None = None


class SubjectOut(_Out):
    tenant: str | None = None
    workspace: str | None = None
    app: str | None = None
    workflow: str | None = None
    agent: str | None = None
    toolset: str | None = None
    dimensions: dict[str, str] | None = None


class ActionOut(_Out):
    kind: str
    name: str
    tags: list[str] | None = None


class CapsOut(_Out):
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    max_steps_remaining: Annotated[int, Field(ge=0)] | None = None
    tool_allowlist: list[str] | None = None
    tool_denylist: list[str] | None = None
    cooldown_ms: Annotated[int, Field(ge=0)] | None = None


class ReservationCreateResponse(_Out):
    decision: DecisionEnum
    reservation_id: str | None = None
    affected_scopes: list[str]
    expires_at_ms: int | None = None
    remaining_ttl_ms: int | None = None
    scope_path: str | None = None
    reserved: AmountOut | None = None
    caps: CapsOut | None = None
    reason_code: str | None = None
    retry_after_ms: int | None = None
    balances: list[Balance] | None = None


class CommitResponse(_Out):
    status: Literal["COMMITTED"] = "COMMITTED"
    charged: AmountOut
    released: AmountOut | None = None
    balances: list[Balance] | None = None


class ReleaseResponse(_Out):
    status: Literal["RELEASED"] = "RELEASED"
    released: AmountOut
    balances: list[Balance] | None = None


class ExtendResponse(_Out):
    status: Literal["ACTIVE"] = "ACTIVE"
    expires_at_ms: int
    remaining_ttl_ms: int | None = None
    balances: list[Balance] | None = None


class DecisionResponse(_Out):
    decision: DecisionEnum
    caps: CapsOut | None = None
    reason_code: str | None = None
    retry_after_ms: int | None = None
    affected_scopes: list[str] | None = None


class EventCreateResponse(_Out):
    status: Literal["APPLIED"] = "APPLIED"
    event_id: str
    charged: AmountOut | None = None
    balances: list[Balance] | None = None


class ReservationDetail(_Out):
    reservation_id: str
    status: Literal["ACTIVE", "COMMITTED", "RELEASED", "EXPIRED"]
    idempotency_key: str | None = None
    subject: SubjectOut
    action: ActionOut
    reserved: AmountOut
    committed: AmountOut | None = None
    created_at_ms: int
    expires_at_ms: int
    finalized_at_ms: int | None = None
    scope_path: str
    affected_scopes: list[str]
    metadata: JsonObject | None = None


class ReservationSummary(_Out):
    reservation_id: str
    status: Literal["ACTIVE", "COMMITTED", "RELEASED", "EXPIRED"]
    idempotency_key: str | None = None
    subject: SubjectOut
    action: ActionOut
    reserved: AmountOut
    created_at_ms: int
    expires_at_ms: int
    scope_path: str
    affected_scopes: list[str]


class ReservationListResponse(_Out):
    reservations: list[ReservationSummary]
    has_more: bool | None = None
    next_cursor: str | None = None


class BalanceResponse(_Out):
    balances: list[Balance]
    has_more: bool | None = None
    next_cursor: str | None = None


class CyclesError(_Out):
    """The protocol's error envelope: exactly these keys (runcycles 0.5.x reads nothing
    else; an extra key or a missing ``request_id`` makes it unreadable)."""

    error: str
    message: str
    request_id: str
    details: JsonObject | None = None
