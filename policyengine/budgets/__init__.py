"""Budgets: money, tokens and calls per agent, acting principal, tenant or everyone, per
window; reserve / commit / release under concurrency without ever overspending.

>>> from decimal import Decimal
>>> from policyengine.budgets import BudgetSpec, Ledger
>>> ledger = Ledger([BudgetSpec("default.calls", ("tools:*",), Decimal(60), "calls", "minute")])
>>> ledger.record("bot", "tools:search", 1, "calls").status
'committed'

``Ledger`` is the API; ``MemoryStore`` (default) and ``SQLiteStore`` keep the state on one
host, ``PostgresStore`` and ``RedisStore`` share it between hosts; ``store_from_url`` picks
one by URL; a new backend implements :class:`BudgetStore`. See ``docs/budgets.md`` and
``docs/deployment.md``.
"""

from policyengine.budgets.clock import ServerClock
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
    ReservationPage,
)
from policyengine.budgets.memory import MemoryStore
from policyengine.budgets.postgres import PostgresStore
from policyengine.budgets.pricing import LLMUsage, ModelPrice, Price, PriceTable
from policyengine.budgets.redis import RedisStore
from policyengine.budgets.spec import BudgetSpec
from policyengine.budgets.sqlite import SQLiteStore
from policyengine.budgets.store import BudgetStore
from policyengine.budgets.urls import store_from_url
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
    "LLMUsage",
    "Ledger",
    "MemoryStore",
    "ModelPrice",
    "Overage",
    "PostgresStore",
    "Price",
    "PriceTable",
    "RedisStore",
    "Reservation",
    "ReservationError",
    "ReservationLine",
    "ReservationPage",
    "SQLiteStore",
    "ServerClock",
    "Window",
    "store_from_url",
]
