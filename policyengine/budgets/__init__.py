"""Budgets: money, tokens and calls per agent, acting principal, tenant or everyone, per
window; reserve / commit / release under concurrency without ever overspending.

>>> from decimal import Decimal
>>> from policyengine.budgets import BudgetSpec, Ledger
>>> ledger = Ledger([BudgetSpec("default.calls", ("tools:*",), Decimal(60), "calls", "minute")])
>>> ledger.record("bot", "tools:search", 1, "calls").status
'committed'

``Ledger`` is the API; ``MemoryStore`` (default) and ``SQLiteStore`` keep the state; a new
backend implements :class:`BudgetStore`. See ``docs/budgets.md``.
"""

from policyengine.budgets.errors import (
    BudgetError,
    BudgetExceeded,
    BudgetInputError,
    BudgetStoreError,
    IdempotencyMismatch,
    ReservationError,
)
from policyengine.budgets.ledger import (
    MAX_TTL,
    MIN_TTL,
    Balance,
    BudgetCheck,
    BudgetUsage,
    Ledger,
    Overage,
    Reservation,
    ReservationLine,
)
from policyengine.budgets.memory import MemoryStore
from policyengine.budgets.spec import BudgetSpec
from policyengine.budgets.sqlite import SQLiteStore
from policyengine.budgets.store import BudgetStore
from policyengine.budgets.windows import Window

__all__ = [
    "MAX_TTL",
    "MIN_TTL",
    "Balance",
    "BudgetCheck",
    "BudgetUsage",
    "BudgetError",
    "BudgetExceeded",
    "BudgetInputError",
    "BudgetSpec",
    "BudgetStore",
    "BudgetStoreError",
    "IdempotencyMismatch",
    "Ledger",
    "MemoryStore",
    "Overage",
    "Reservation",
    "ReservationError",
    "ReservationLine",
    "SQLiteStore",
    "Window",
]
