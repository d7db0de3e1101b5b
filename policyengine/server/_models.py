"""Every request and response body of the service, as pydantic v2 models.

Requests are validated with ``extra="forbid"`` and ``strict=True``: an unknown field, a
number where a string belongs, a string where a bool belongs is a 400, never a guess.
Bodies are decoded by :mod:`._wirejson` first (fractions as ``Decimal``), then validated
with ``validate_python``; money fields accept only ``int`` and ``Decimal`` (never a
float, which that decoder never produces). Response money is a JSON number
(:data:`WireMoney`). The OpenAPI document is generated from these classes.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
)

from policyengine.server._wirejson import decimal_number

__all__ = [
    "AccessEvaluation",
    "AccessEvaluationResponse",
    "AccessEvaluations",
    "AccessEvaluationsResponse",
    "ActionSearch",
    "ActionSearchResponse",
    "ActguardBudgetExceeded",
    "ActguardError",
    "ActguardEvents",
    "ActguardPaymentRequired",
    "ActguardReserveRequest",
    "ActguardReserveResponse",
    "ActguardSettleRequest",
    "ActguardSettleResponse",
    "ActguardTariff",
    "AdminApprovalResponse",
    "ApprovalDecisionRequest",
    "ApprovalResponse",
    "ApprovalsResponse",
    "AttenuateRequest",
    "AttenuateResponse",
    "AuthorizeRequest",
    "AuthorizeResponse",
    "AuthzenConfiguration",
    "ErrorResponse",
    "EventAccepted",
    "HealthResponse",
    "IngestEvent",
    "LedgerError",
    "LedgerEvents",
    "LedgerEventsAccepted",
    "LedgerGuardrail",
    "LedgerSession",
    "LedgerSessionEnd",
    "LedgerSessionRequest",
    "TokenRequest",
    "TokenResponse",
    "ResourceSearch",
    "ResourceSearchResponse",
    "SubjectSearch",
    "SubjectSearchResponse",
    "ToolAuthorizeRequest",
    "ToolAuthorizeResponse",
    "TraceClose",
]

#: Money on the wire out: a JSON number with the exact value (see ``decimal_number``).
WireMoney = Annotated[
    Decimal,
    PlainSerializer(decimal_number, when_used="json"),
    WithJsonSchema({"type": "number"}),
]


def _money_in(value: object) -> Decimal:
    if type(value) is int:
        return Decimal(value)
    if type(value) is Decimal and value.is_finite():
        return value
    raise ValueError("must be a JSON number")


#: Money on the wire in: a JSON number read exactly (int or Decimal, never a float).
MoneyIn = Annotated[Decimal, BeforeValidator(_money_in), WithJsonSchema({"type": "number"})]
#: Any JSON value (fractions as Decimal).
JsonValue = Annotated[Any, WithJsonSchema({})]


class _Request(BaseModel):
    # hide_input_in_errors: a validation error's text never quotes a value (a client
    # secret, a token); the answers say where and what (validation_message) anyway
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True,
                              hide_input_in_errors=True)


class _Response(BaseModel):
    model_config = ConfigDict(frozen=True)


# --------------------------------------------------------------------------- errors
class ErrorDetail(_Response):
    code: str = Field(description="stable error code, e.g. invalid_request, unauthorized")
    message: str


class ErrorResponse(_Response):
    """Every 4xx/5xx body. ``allowed`` is always false so any reader fails closed."""

    allowed: Literal[False] = False
    status: Literal["denied"] = "denied"
    error: ErrorDetail


# --------------------------------------------------------------------------- token
class TokenRequest(_Request):
    """OAuth 2.0 client credentials (RFC 6749 4.4), form-urlencoded."""

    grant_type: Literal["client_credentials"]
    client_id: str = Field(max_length=256)
    client_secret: str = Field(max_length=1024, repr=False)  # never in a repr or a log
    scope: str | None = Field(None, max_length=1024)


class TokenResponse(_Response):
    access_token: str = Field(repr=False)  # a bearer token: never in a repr or a log
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int


# --------------------------------------------------------------------------- authorize
class AuthorizeRequest(_Request):
    permission: str = Field(max_length=512)
    context: dict[str, JsonValue] | None = None
    traceId: str | None = Field(None, max_length=256)  # noqa: N815 - wire spelling


class ObligationsOut(_Response):
    maxAmount: WireMoney | None = None  # noqa: N815
    requireApprovalOver: WireMoney | None = None  # noqa: N815
    redactFields: list[str] = []  # noqa: N815
    currency: str | None = None


class DiagnosticOut(_Response):
    code: str
    message: str
    rule: str | None = None
    effect: str = ""


class ShadowOut(_Response):
    """What a ``mode warn`` shadow statement would have done (docs/language.md)."""

    id: str
    kind: str
    mode: Literal["warn"]
    status: Literal["allowed", "denied", "pending_approval"]
    code: str


class AuthorizeResponse(_Response):
    """``POST /v1/authorize``: both ``allowed`` and ``status`` always present."""

    allowed: bool
    status: Literal["allowed", "denied", "pending_approval"]
    reason: str
    reasonCode: str  # noqa: N815
    decisionId: str  # noqa: N815
    approvalId: str | None = None  # noqa: N815
    actingFor: str | None = None  # noqa: N815
    chain: list[str] | None = None
    rules: list[str] = []
    obligations: ObligationsOut | None = None
    diagnostics: list[DiagnosticOut] = []
    budget: dict[str, Any] | None = None
    #: Only when a ``mode warn`` statement would have acted: absent otherwise (not null).
    shadow: list[ShadowOut] | None = None
    #: ``rate_limited``: the rate limit and ``retryAfterMs`` (docs/budgets.md).
    rateLimit: dict[str, Any] | None = None  # noqa: N815


# --------------------------------------------------------------------------- tools
class ToolAuthorizeRequest(_Request):
    """``POST /v1/tool-authorize``: an HTTP egress request, an MCP or a function call."""

    transport: Literal["http", "mcp", "function"]
    method: str | None = Field(None, max_length=32)
    host: str | None = Field(None, max_length=512)
    path: str | None = Field(None, max_length=8192)
    query: dict[str, str] | None = None
    headers: dict[str, str] | None = None
    body: JsonValue = None
    toolName: str | None = Field(None, max_length=512)  # noqa: N815
    functionName: str | None = Field(None, max_length=512)  # noqa: N815
    context: dict[str, JsonValue] | None = None
    approvalId: str | None = Field(None, max_length=256)  # noqa: N815
    traceId: str | None = Field(None, max_length=256)  # noqa: N815


class RedactionOut(_Response):
    field: str = Field(description="a concrete path in the client's grammar: $.a.b[0].c")
    strategy: Literal["remove", "mask"]


class ToolAuthorizeResponse(AuthorizeResponse):
    outcome: str
    permission: str | None = None
    tool: str | None = None
    redactions: list[RedactionOut] = []


# --------------------------------------------------------------------------- approvals
class ApprovalResponse(_Response):
    """The agent's poll, in the words tracengent acts on: pending, approved, denied
    (rejected), expired (also an approval whose uses are spent: ``used``, which the SDK
    would take for still pending, is terminal and no longer approvable)."""

    approvalId: str  # noqa: N815
    status: Literal["pending", "approved", "denied", "expired"]
    principal: str
    permission: str
    rules: list[str] = []
    createdAt: float  # noqa: N815
    decidedAt: float | None = None  # noqa: N815
    decidedBy: str | None = None  # noqa: N815
    note: str | None = None


class AdminApprovalResponse(ApprovalResponse):
    """An approval as an admin sees it: its real state, ``used`` included (approved, and
    every use spent), and the uses it has left."""

    status: Literal["pending", "approved", "denied", "expired", "used"]  # type: ignore[assignment]
    usesLeft: int  # noqa: N815


class ApprovalsResponse(_Response):
    items: list[AdminApprovalResponse]


class ApprovalDecisionRequest(_Request):
    note: str | None = Field(None, max_length=2048)


# --------------------------------------------------------------------------- delegation
class AttenuateRequest(_Request):
    grantedToAgentId: str = Field(min_length=1, max_length=256)  # noqa: N815
    permissions: list[str] = Field(max_length=256)
    maxAmount: MoneyIn | None = None  # noqa: N815
    expiresInSeconds: int | None = Field(None, ge=1, le=31_536_000)  # noqa: N815
    reason: str | None = Field(None, max_length=2048)


class AttenuatedToken(_Response):
    accessToken: str  # noqa: N815
    tokenType: Literal["Bearer"] = "Bearer"  # noqa: N815
    expiresIn: int  # noqa: N815
    jti: str
    grantId: str  # noqa: N815


class AttenuateResponse(_Response):
    token: AttenuatedToken


# --------------------------------------------------------------------------- telemetry
class EventCost(_Request):
    amount: MoneyIn
    currency: str = Field(max_length=16)


class EventUsage(_Request):
    tokens: int | None = None
    model: str | None = Field(None, max_length=256)


class EventActor(_Request):
    userId: str | None = Field(None, max_length=256)  # noqa: N815


class IngestEvent(_Request):
    """One event of ``POST /v1/ingest/events`` (the body is a JSON array of these)."""

    eventId: str = Field(max_length=256)  # noqa: N815
    idempotencyKey: str | None = Field(None, max_length=256)  # noqa: N815
    agentId: str = Field(max_length=256)  # noqa: N815
    traceId: str | None = Field(None, max_length=256)  # noqa: N815
    parentEventId: str | None = Field(None, max_length=256)  # noqa: N815
    type: str = Field(max_length=64)
    name: str = Field(max_length=1024)
    status: str = Field(max_length=64)
    cost: EventCost | None = None
    usage: EventUsage | None = None
    actor: EventActor | None = None
    input: JsonValue = None
    output: JsonValue = None
    attributes: JsonValue = None
    occurredAt: str = Field(max_length=64)  # noqa: N815
    durationMs: int | None = None  # noqa: N815
    tags: list[str] = []
    rootRequest: str | None = Field(None, max_length=8192)  # noqa: N815


class TraceClose(_Request):
    """``POST /v1/ingest/traces``: a trace closed."""

    traceId: str = Field(max_length=256)  # noqa: N815
    agentId: str = Field(max_length=256)  # noqa: N815
    rootRequest: str | None = Field(None, max_length=8192)  # noqa: N815
    op: Literal["Close"]
    status: Literal["completed", "failed"]
    occurredAt: str = Field(max_length=64)  # noqa: N815
    summary: str | None = Field(None, max_length=8192)


class EventAccepted(_Response):
    accepted: int


# --------------------------------------------------------------------------- actguard 1.0.2
_Count = Annotated[int, Field(ge=0, le=10**15)]
_Name = Annotated[str, Field(max_length=256)]


class ActguardReserveRequest(_Request):
    """``POST /api/v1/reserve``: a run's root budget scope opens."""

    run_id: str = Field(min_length=1, max_length=256)
    cost_limit: int | None = Field(None, gt=0, le=10**15)
    plan_key: _Name | None = None
    user_id: _Name | None = None


class ActguardReserveResponse(_Response):
    reserve_id: str
    status: Literal["reserved"] = "reserved"
    cost_limit: int | None = None
    tariff_version: str
    estimated_usd_micros: int


class ActguardLlmUsage(_Request):
    provider: _Name
    provider_model_id: _Name
    input_tokens: _Count
    cached_input_tokens: _Count
    output_tokens: _Count
    scope_name: _Name | None = None


class ActguardCustomCost(_Request):
    type: Literal["custom_cost"]
    name: _Name
    cost_cu: _Count
    scope_name: _Name | None = None


class ActguardSettleRequest(_Request):
    """``POST /api/v1/settle``: the root scope closed with this usage."""

    reserve_id: str = Field(min_length=1, max_length=256)
    input_tokens: _Count
    cached_input_tokens: _Count
    output_tokens: _Count
    usage_breakdown: list[ActguardCustomCost | ActguardLlmUsage] = Field(max_length=100_000)
    cache_write_tokens_5m: _Count | None = None
    cache_write_tokens_1h: _Count | None = None
    web_search_count: _Count | None = None
    reasoning_effort: _Name | None = None


class ActguardSettleResponse(_Response):
    reserve_id: str
    status: Literal["settled"] = "settled"
    cost_used: int = Field(description="the run's cost in CU, priced by the policy")
    usd_micros: int
    charged: WireMoney = Field(description="what the ledger recorded, in the budget unit "
                                           "of the reservation (USD)")


class ActguardBudgetExceeded(_Response):
    """The 409 body: read by the SDK into ``BudgetExceededError`` (origin ``remote``)."""

    error: str
    code: str
    user_id: str | None = None
    tokens_used: int
    cost_used: int
    cost_limit: int


class ActguardPaymentRequired(_Response):
    """The 402 body: read by the SDK into ``ActGuardPaymentRequired``."""

    error: str
    code: str
    message: str
    user_id: str | None = None
    current_balance: int
    required_amount: int
    shortfall: int


class ActguardError(_Response):
    """Any other refusal on the actguard wire (the SDK reads ``error``)."""

    error: str
    code: str


class ActguardRates(_Response):
    input_cu_per_1k: int | None = None
    input_cu_per_1m: int | None = None
    output_cu_per_1k: int | None = None
    cached_cu_per_1k: int | None = None


class ActguardProvider(_Response):
    models: dict[str, ActguardRates]


class ActguardLlmTariff(_Response):
    default: ActguardRates
    providers: dict[str, ActguardProvider]


class ActguardTariff(_Response):
    """``GET /api/v1/cu-tariff``: the policy's LLM prices in cost units."""

    tariff_version: str
    registry_version: str
    cu_per_usd: int
    llm: ActguardLlmTariff
    tools: dict[str, int] = {}


class ActguardEvidence(_Request):
    kind: str = Field(max_length=256)
    system: str = Field(max_length=256)
    locator: str = Field(max_length=4096)
    url: str = Field(max_length=4096)
    digest_algo: str = Field(max_length=64)
    digest: str = Field(max_length=1024)
    attrs: dict[str, str]
    inline: dict[str, JsonValue]


class ActguardEvent(_Request):
    """One envelope of ``POST /api/v1/events``."""

    id: str = Field(max_length=256)
    ts: str = Field(max_length=64)
    ingested_at: str = Field(max_length=64)
    tenant_id: str = Field(max_length=256)
    run_id: str = Field(max_length=256)
    trace_id: str = Field(max_length=256)
    span_id: str = Field(max_length=256)
    category: str = Field(max_length=256)
    name: str = Field(max_length=256)
    version: int
    severity: str = Field(max_length=64)
    outcome: str = Field(max_length=64)
    digest: str = Field(max_length=1024)
    digest_algo: str = Field(max_length=64)
    payload: dict[str, JsonValue]
    evidence: list[ActguardEvidence] = Field(max_length=1000)
    meta: dict[str, str]
    agent_id: _Name | None = None
    user_id: _Name | None = None
    model: _Name | None = None
    provider: _Name | None = None
    usd_micros: _Count | None = None
    input_tokens: _Count | None = None
    cached_input_tokens: _Count | None = None
    output_tokens: _Count | None = None
    scope_id: _Name | None = None
    scope_name: _Name | None = None
    scope_kind: _Name | None = None
    parent_scope_id: _Name | None = None
    root_scope_id: _Name | None = None
    plan_key: _Name | None = None
    tool_name: _Name | None = None


class ActguardEvents(_Request):
    events: list[ActguardEvent] = Field(max_length=10_000)


# --------------------------------------------------------------------------- agent-ledger 0.0.6
class LedgerSessionRequest(_Request):
    """``POST /v1/sessions``."""

    agentName: str = Field(min_length=1, max_length=256)  # noqa: N815


class LedgerSession(_Response):
    id: str
    agentName: str  # noqa: N815
    status: Literal["active", "success", "error"]
    startedAt: str  # noqa: N815
    endedAt: str | None = None  # noqa: N815
    errorMessage: str | None = None  # noqa: N815


class LedgerSessionEnd(_Request):
    """``POST /v1/sessions/{id}/end``."""

    status: Literal["success", "error"]
    errorMessage: str | None = Field(None, max_length=8192)  # noqa: N815


class LedgerEvent(_Request):
    """One event of a batch: ``type`` and ``stepIndex`` plus the SDK's camelCase
    passthrough (an ``llm_call`` is priced from ``provider``, ``model``, ``tokensIn``,
    ``tokensOut`` and, when sent, ``tokensCached``)."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    type: str = Field(min_length=1, max_length=64)
    stepIndex: int | None = Field(None, ge=0, le=10**9)  # noqa: N815
    provider: _Name | None = None
    model: _Name | None = None
    tokensIn: _Count | None = None  # noqa: N815
    tokensOut: _Count | None = None  # noqa: N815
    tokensCached: _Count | None = None  # noqa: N815
    toolName: _Name | None = None  # noqa: N815


class LedgerEvents(_Request):
    """``POST /v1/events``."""

    sessionId: str = Field(min_length=1, max_length=256)  # noqa: N815
    events: list[LedgerEvent] = Field(max_length=10_000)


class LedgerEventsAccepted(_Response):
    accepted: int
    costUsd: WireMoney  # noqa: N815


class LedgerGuardrailDetails(_Response):
    agentName: str  # noqa: N815
    dailyLimitUsd: WireMoney  # noqa: N815
    spentTodayUsd: WireMoney  # noqa: N815
    attemptedCostUsd: WireMoney  # noqa: N815
    projectedCostUsd: WireMoney  # noqa: N815
    remainingBudgetUsd: WireMoney  # noqa: N815
    budget: str
    currency: str
    windowEnd: str | None = None  # noqa: N815


class LedgerGuardrail(_Response):
    """The 429 body: read by the SDK into ``BudgetGuardrailError``."""

    error: str
    code: str
    details: LedgerGuardrailDetails


class LedgerError(_Response):
    """Any other refusal on the agent-ledger wire (the SDK reads ``error``)."""

    error: str
    code: str


# --------------------------------------------------------------------------- AuthZEN 1.0
class AuthzenSubject(_Request):
    type: str = Field(max_length=256)
    id: str = Field(max_length=512)
    properties: dict[str, JsonValue] | None = None


class AuthzenResource(_Request):
    type: str = Field(max_length=256)
    id: str = Field(max_length=512)
    properties: dict[str, JsonValue] | None = None


class AuthzenAction(_Request):
    name: str = Field(max_length=512)
    properties: dict[str, JsonValue] | None = None


class AccessEvaluation(_Request):
    """One AuthZEN access evaluation request (Authorization API 1.0, section 6)."""

    subject: AuthzenSubject
    action: AuthzenAction
    resource: AuthzenResource
    context: dict[str, JsonValue] | None = None


class AccessEvaluationResponse(_Response):
    decision: bool
    context: dict[str, Any] | None = None


class _PartialSubject(_Request):
    type: str | None = Field(None, max_length=256)
    id: str | None = Field(None, max_length=512)
    properties: dict[str, JsonValue] | None = None


class _PartialResource(_Request):
    type: str | None = Field(None, max_length=256)
    id: str | None = Field(None, max_length=512)
    properties: dict[str, JsonValue] | None = None


class _PartialAction(_Request):
    name: str | None = Field(None, max_length=512)
    properties: dict[str, JsonValue] | None = None


class BatchItem(_Request):
    """One item of ``evaluations``: any part left out comes from the top-level defaults."""

    subject: _PartialSubject | None = None
    action: _PartialAction | None = None
    resource: _PartialResource | None = None
    context: dict[str, JsonValue] | None = None


class BatchOptions(_Request):
    evaluations_semantic: Literal[
        "execute_all", "deny_on_first_deny", "permit_on_first_permit"] = "execute_all"


class AccessEvaluations(_Request):
    """``POST /access/v1/evaluations``: defaults plus a list of evaluations."""

    subject: _PartialSubject | None = None
    action: _PartialAction | None = None
    resource: _PartialResource | None = None
    context: dict[str, JsonValue] | None = None
    evaluations: list[BatchItem] | None = Field(None, max_length=10_000)
    options: BatchOptions | None = None


class AccessEvaluationsResponse(_Response):
    evaluations: list[AccessEvaluationResponse]


class AuthzenConfiguration(_Response):
    policy_decision_point: str
    access_evaluation_endpoint: str
    access_evaluations_endpoint: str
    search_subject_endpoint: str
    search_resource_endpoint: str
    search_action_endpoint: str


#: The most results one search answer carries: a larger ``page.limit`` is refused, and a
#: result set larger than this without a ``page.limit`` is paginated (never cut short).
MAX_SEARCH_PAGE = 1000


class SearchPage(_Request):
    """A search request's ``page`` (Authorization API 1.0, "Paginated Requests")."""

    token: str | None = Field(None, min_length=1, max_length=512,
                              description="the next_token of the previous answer")
    limit: int | None = Field(None, ge=1, le=MAX_SEARCH_PAGE,
                              description="the most results to answer with")
    properties: dict[str, JsonValue] | None = Field(
        None, max_length=0, description="no implementation-specific properties are "
                                        "supported: must be absent or empty")


class _SearchSubject(_Request):
    """The searched-for subject: its ``type``; an ``id`` is ignored (the spec's rule)."""

    type: str = Field(max_length=256)
    id: str | None = Field(None, max_length=512)
    properties: dict[str, JsonValue] | None = None


class _SearchResource(_Request):
    """The searched-for resource: its ``type``; an ``id`` is ignored (the spec's rule)."""

    type: str = Field(max_length=256)
    id: str | None = Field(None, max_length=512)
    properties: dict[str, JsonValue] | None = None


class SubjectSearch(_Request):
    """``POST /access/v1/search/subject``: who may do ``action`` on ``resource``?"""

    subject: _SearchSubject
    action: AuthzenAction
    resource: AuthzenResource
    context: dict[str, JsonValue] | None = None
    page: SearchPage | None = None


class ResourceSearch(_Request):
    """``POST /access/v1/search/resource``: on which resources of ``resource.type`` may
    ``subject`` do ``action``?"""

    subject: AuthzenSubject
    action: AuthzenAction
    resource: _SearchResource
    context: dict[str, JsonValue] | None = None
    page: SearchPage | None = None


class ActionSearch(_Request):
    """``POST /access/v1/search/action``: what may ``subject`` do on ``resource``? (No
    ``action``: the request must not carry one.)"""

    subject: AuthzenSubject
    resource: AuthzenResource
    context: dict[str, JsonValue] | None = None
    page: SearchPage | None = None


class SearchPageOut(_Response):
    """The answer's ``page``: present when the request had one or the answer does not
    hold every result. ``next_token`` is empty on the last page."""

    next_token: str
    count: int
    total: int


class SubjectResult(_Response):
    type: str
    id: str


class ResourceResult(_Response):
    type: str
    id: str


class ActionResult(_Response):
    name: str


class SubjectSearchResponse(_Response):
    page: SearchPageOut | None = None
    results: list[SubjectResult]


class ResourceSearchResponse(_Response):
    page: SearchPageOut | None = None
    results: list[ResourceResult]


class ActionSearchResponse(_Response):
    page: SearchPageOut | None = None
    results: list[ActionResult]


# --------------------------------------------------------------------------- operations
class HealthResponse(_Response):
    """``reloadError`` (a failed reload's report, which quotes policy files) only on
    ``/readyz`` and only for an admin's credential."""

    status: Literal["ok", "unavailable"]
    revision: str | None = None
    reloadError: str | None = None  # noqa: N815


def validation_message(exc: ValidationError) -> str:
    """What a refused body gets told of a validation error: where and what, never the
    offending value (it may be a secret). Every wire's models answer with it."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False)[:3]:
        where = ".".join(str(x) for x in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
