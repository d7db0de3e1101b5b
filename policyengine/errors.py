"""The root of every error policyengine raises.

Each stage and leaf keeps its own errors beside its code (``PolicyError`` in
:mod:`policyengine.lang`, ``MoneyError`` and ``RateError`` in :mod:`policyengine.money`,
``TokenError`` in :mod:`policyengine.tokens`, the ``BudgetError`` family in
:mod:`policyengine.budgets`, ...); all of them derive from :class:`PolicyEngineError`, so
one ``except PolicyEngineError`` catches anything the package raises on purpose.

Every error carries a stable ``code`` (listed once in ``docs/errors.md``) and a
``message``; ``str(err)`` reads ``code: message`` for all of them.

>>> from policyengine import Money, PolicyEngineError
>>> try:
...     Money.parse("1.001", "USD")
... except PolicyEngineError as err:
...     print(err.code)
too_many_decimals
"""

from __future__ import annotations

__all__ = ["PolicyEngineError"]


class PolicyEngineError(Exception):
    """Base of every policyengine error: a stable ``code`` and a ``message``.

    Subclasses keep the built-in bases callers rely on (``MoneyError`` is also a
    ``ValueError``, ``ApprovalError`` a ``LookupError``).
    """

    code: str
    message: str

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
