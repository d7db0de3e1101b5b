"""What the engine answers: :class:`Decision`, :class:`ToolDecision`, and the exceptions
raised by the ``ensure_*`` helpers and the governed HTTP client.

Decisions are built on the hot path, so they are plain ``__slots__`` classes (no pydantic
validation) and expensive parts such as the decision id are made only when read.
``to_wire()`` gives the camelCase shape of the ``/v1/authorize`` and
``/v1/tool-authorize`` responses of the agent SDKs this engine serves.

This module is a leaf: it imports nothing from the engine.
"""

from __future__ import annotations

import itertools
import os
from decimal import Decimal
from typing import Any, Literal

from policyengine.errors import PolicyEngineError

__all__ = [
    "ApprovalRequired",
    "Decision",
    "Diagnostic",
    "NotAuthorized",
    "Obligations",
    "ToolDecision",
    "ToolDenied",
    "new_id",
]

Status = Literal["allowed", "denied", "pending_approval"]

# Decision ids: a random per-process prefix plus a counter. ``next()`` on an
# ``itertools.count`` is atomic under the GIL, and this costs ~100 ns, unlike uuid4.
_ID_PREFIX = os.urandom(6).hex()
_counter = itertools.count(1)


def new_id(kind: str = "dec") -> str:
    """Return a process-unique id such as ``dec_3f2a9c1b7e00_42``."""
    return f"{kind}_{_ID_PREFIX}_{next(_counter)}"


def _money_str(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


class Diagnostic:
    """An evaluation problem noted while deciding (never silently dropped).

    ``code`` is stable (``missing_attribute``, ``type_error``, ``unknown_currency`` ...),
    ``rule`` is the qualified id of the rule whose condition failed, or None for the
    request itself, and ``effect`` says what fail-closed did with it.
    """

    __slots__ = ("code", "effect", "message", "rule")

    def __init__(self, code: str, message: str, rule: str | None = None, effect: str = "") -> None:
        self.code = code
        self.message = message
        self.rule = rule
        self.effect = effect

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "rule": self.rule,
                "effect": self.effect}

    def __repr__(self) -> str:
        return f"Diagnostic({self.code!r}, {self.message!r}, rule={self.rule!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Diagnostic) and self.to_wire() == other.to_wire()

    __hash__ = None  # type: ignore[assignment]


class Obligations:
    """What an allowed caller must honour. Money values are in ``currency``."""

    __slots__ = ("currency", "max_amount", "redact_fields", "require_approval_over")

    def __init__(
        self,
        max_amount: Decimal | None = None,
        require_approval_over: Decimal | None = None,
        redact_fields: tuple[str, ...] = (),
        currency: str | None = None,
    ) -> None:
        self.max_amount = max_amount
        self.require_approval_over = require_approval_over
        self.redact_fields = redact_fields
        self.currency = currency

    def is_empty(self) -> bool:
        return (self.max_amount is None and self.require_approval_over is None
                and not self.redact_fields)

    def to_wire(self) -> dict[str, Any]:
        return {
            "maxAmount": _money_str(self.max_amount),
            "requireApprovalOver": _money_str(self.require_approval_over),
            "redactFields": list(self.redact_fields),
            "currency": self.currency,
        }

    def __repr__(self) -> str:
        return f"Obligations({self.to_wire()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Obligations) and self.to_wire() == other.to_wire()

    __hash__ = None  # type: ignore[assignment]


class Decision:
    """The answer to ``engine.authorize``.

    ``status`` is ``allowed``, ``denied`` or ``pending_approval``; ``code`` is a stable
    reason code (``permitted``, ``forbidden``, ``approval_required``, ``no_permit``,
    ``invalid_request``, ``budget_exceeded``, ``token_*`` ...), ``reason`` the human
    sentence, ``rules`` the qualified ids of the rules that decided.
    """

    __slots__ = (
        "_decision_id",
        "acting_for",
        "approval_id",
        "budget",
        "chain",
        "code",
        "diagnostics",
        "obligations",
        "permission",
        "principal",
        "reason",
        "rules",
        "status",
    )

    def __init__(
        self,
        status: Status,
        code: str,
        reason: str,
        rules: tuple[str, ...] = (),
        obligations: Obligations | None = None,
        diagnostics: tuple[Diagnostic, ...] = (),
        principal: str | None = None,
        permission: str | None = None,
        approval_id: str | None = None,
        acting_for: str | None = None,
        chain: tuple[str, ...] | None = None,
        budget: dict[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.reason = reason
        self.rules = rules
        self.obligations = obligations
        self.diagnostics = diagnostics
        self.principal = principal
        self.permission = permission
        self.approval_id = approval_id
        self.acting_for = acting_for
        self.chain = chain
        self.budget = budget
        self._decision_id: str | None = None

    @property
    def allowed(self) -> bool:
        return self.status == "allowed"

    @property
    def decision_id(self) -> str:
        """Made on first read: most decisions are never logged by id."""
        if self._decision_id is None:
            self._decision_id = new_id("dec")
        return self._decision_id

    @classmethod
    def denial(cls, code: str, reason: str, principal: Any, permission: Any,
               diagnostic: str | None = None) -> Decision:
        """A denial decided before any rule ran (malformed request, token, egress): one
        diagnostic (code ``diagnostic`` or ``code``) says why. Non-string principals and
        permissions are not echoed back."""
        return cls("denied", code, reason,
                   diagnostics=(Diagnostic(diagnostic or code, reason, None, "denied"),),
                   principal=principal if type(principal) is str else None,
                   permission=permission if type(permission) is str else None)

    def overruled(self, code: str, reason: str, diagnostics: tuple[Diagnostic, ...] = (),
                  rules: tuple[str, ...] | None = None,
                  budget: dict[str, Any] | None = None) -> Decision:
        """A denied decision that replaces this one after a later check failed (budget,
        redaction): same principal, permission and delegation, more diagnostics."""
        return Decision("denied", code, reason, self.rules if rules is None else rules, None,
                        self.diagnostics + diagnostics, self.principal, self.permission,
                        None, self.acting_for, self.chain, budget)

    def to_wire(self) -> dict[str, Any]:
        """The ``POST /v1/authorize`` response shape (camelCase)."""
        wire: dict[str, Any] = {
            "allowed": self.status == "allowed",
            "status": self.status,
            "reason": self.reason,
            "reasonCode": self.code,
            "decisionId": self.decision_id,
            "approvalId": self.approval_id,
            "actingFor": self.acting_for,
            "chain": list(self.chain) if self.chain is not None else None,
            "rules": list(self.rules),
            "obligations": self.obligations.to_wire() if self.obligations is not None else None,
            "diagnostics": [d.to_wire() for d in self.diagnostics],
        }
        if self.budget is not None:
            wire["budget"] = self.budget
        return wire

    def __repr__(self) -> str:
        return (f"Decision(status={self.status!r}, code={self.code!r}, rules={self.rules!r}, "
                f"reason={self.reason!r})")


class ToolDecision:
    """The answer to ``engine.tool_authorize``: a :class:`Decision` plus egress facts.

    ``outcome`` is one of ``policy_allow``, ``policy_deny``, ``egress_deny``,
    ``route_deny``, ``pending_approval``, ``invalid_request``, ``budget_deny``.
    ``body`` is a redacted copy of the request body; the caller's object is untouched.
    """

    __slots__ = ("body", "decision", "outcome", "redactions", "tool")

    def __init__(
        self,
        decision: Decision,
        outcome: str,
        body: Any = None,
        redactions: tuple[dict[str, str], ...] = (),
        tool: str | None = None,
    ) -> None:
        self.decision = decision
        self.outcome = outcome
        self.body = body
        self.redactions = redactions
        self.tool = tool

    allowed = property(lambda self: self.decision.status == "allowed")
    status = property(lambda self: self.decision.status)
    reason = property(lambda self: self.decision.reason)
    code = property(lambda self: self.decision.code)
    rules = property(lambda self: self.decision.rules)
    permission = property(lambda self: self.decision.permission)
    diagnostics = property(lambda self: self.decision.diagnostics)
    obligations = property(lambda self: self.decision.obligations)
    approval_id = property(lambda self: self.decision.approval_id)
    decision_id = property(lambda self: self.decision.decision_id)

    def to_wire(self) -> dict[str, Any]:
        """The ``POST /v1/tool-authorize`` response shape (camelCase): the authorize
        shape plus ``outcome``, ``permission``, ``tool`` and ``redactions``."""
        wire = self.decision.to_wire()
        wire["outcome"] = self.outcome
        wire["permission"] = self.decision.permission
        wire["tool"] = self.tool
        wire["redactions"] = [dict(r) for r in self.redactions]
        return wire

    def __repr__(self) -> str:
        return (f"ToolDecision(status={self.status!r}, outcome={self.outcome!r}, "
                f"permission={self.permission!r}, reason={self.reason!r})")


class NotAuthorized(PolicyEngineError):  # noqa: N818 - the name users expect
    """Raised by ``ensure_authorized`` (and the governed client) on a deny; ``code`` is
    the decision's code, ``message`` its reason."""

    def __init__(self, decision: Decision | ToolDecision) -> None:
        super().__init__(decision.code, decision.reason)
        self.decision = decision


class ApprovalRequired(NotAuthorized):
    """Raised when the decision is ``pending_approval``; ``approval_id`` says which."""

    @property
    def approval_id(self) -> str | None:
        return self.decision.approval_id


class ToolDenied(NotAuthorized):
    """Raised by the governed HTTP client before a denied request leaves the process."""

    @property
    def outcome(self) -> str:
        return self.decision.outcome if isinstance(self.decision, ToolDecision) else "policy_deny"

