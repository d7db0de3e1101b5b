"""Budget errors. Every error has a stable snake_case ``code`` and a message saying what to do.

A failed operation never changes the ledger: the store applies all of an operation's
effects in one atomic step, or none of them.
"""

from __future__ import annotations

from typing import Any

from policyengine.errors import PolicyEngineError

__all__ = [
    "BudgetError",
    "BudgetExceeded",
    "BudgetInputError",
    "BudgetStoreError",
    "IdempotencyMismatch",
    "ReservationError",
]


class BudgetError(PolicyEngineError):
    """Base class of every budget error. ``code`` is stable; ``details`` is wire-ready."""

    code: str
    details: dict[str, Any]

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(code, message)
        self.details = details if details is not None else {}

    def to_wire(self) -> dict[str, Any]:
        """``{"code", "message", "details"}`` with camelCase detail keys."""
        return {"code": self.code, "message": self.message, "details": dict(self.details)}


class BudgetExceeded(BudgetError):  # noqa: N818 - the name users expect
    """The spend does not fit a budget that covers it.

    ``code`` is ``budget_exceeded``, ``overdraft_limit_exceeded`` or ``debt_outstanding``;
    ``details`` is ``{budget, subject, limit, spent, reserved, debt, attempted, projected,
    remaining, currency, windowEnd}`` for the first budget that refused (amounts are
    decimal strings in the budget's unit, ``windowEnd`` is ISO 8601 UTC or null).
    """


class ReservationError(BudgetError):
    """``unknown_reservation``, ``reservation_final`` or ``reservation_expired``."""


class IdempotencyMismatch(BudgetError):  # noqa: N818 - the name users expect
    """An idempotency key was reused with a different payload (``idempotency_mismatch``)."""

    def __init__(self, message: str) -> None:
        super().__init__("idempotency_mismatch", message)


class BudgetInputError(BudgetError, ValueError):
    """Bad input: ``invalid_amount``, ``unknown_unit``, ``unit_mismatch``, ``invalid_ttl``,
    ``invalid_permission``, ``invalid_subject``, ``invalid_overage``,
    ``invalid_idempotency_key``, ``invalid_budget`` (a bad :class:`BudgetSpec`),
    ``invalid_listing`` (a bad listing limit, status or cursor), ``invalid_note``."""


class BudgetStoreError(BudgetError):
    """The store could not complete the operation (``store_unavailable``), or refuses a
    database written with another layout (``store_incompatible``); nothing changed."""
