"""What the budget wires (actguard, agent-ledger) share: the API key, the refusal shape,
and the engine's price of an LLM call.

Each of those SDKs reads its own error body, so their handlers render refusals
themselves (:func:`render_refusals`) instead of the service's deny-shaped error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, TypeAdapter

import policyengine as pe
from policyengine.budgets import BudgetInputError

if TYPE_CHECKING:
    from policyengine.server._app import PolicyService, _Reply, _Request
    from policyengine.server._credentials import ApiKey

__all__ = ["USD", "api_key", "at_cent", "exact_or_cent", "llm_price", "render_refusals",
           "usd_amounts"]

USD = "USD"
_CENT = Decimal("0.01")
#: What a budget refuses an amount finer than its quantum with (a fraction of a cent on
#: a ``USD`` budget): ``inexact_amount``, or ``invalid_amount`` (too many decimals).
INEXACT = frozenset({"inexact_amount", "invalid_amount"})
_UNITS = {"USD": Decimal(1), "USD_MICROCENTS": Decimal(10) ** 8}

T = TypeVar("T")


def at_cent(usd: Decimal) -> Decimal:
    """``usd`` rounded **up** to the cent (never less than was spent)."""
    return usd.quantize(_CENT, ROUND_CEILING)


def exact_or_cent(call: Callable[[Decimal], T], usd: Decimal) -> T:
    """``call(usd)``; when a covering budget counts whole cents and refuses the fraction of
    one, ``call`` again with ``usd`` rounded up to the cent. Budgets in
    ``USD_MICROCENTS`` get the exact amount; a cent budget is charged a whole cent for a
    fraction of one (over, never under). A refused call changed nothing (ledger calls
    are all or nothing), so the retry never counts twice."""
    try:
        return call(usd)
    except BudgetInputError as exc:
        if exc.code not in INEXACT or at_cent(usd) == usd:
            raise
    return call(at_cent(usd))


def usd_amounts(usage: Mapping[str, Any] | None) -> dict[str, Decimal] | None:
    """The amounts of a budget refusal or usage (docs/budgets.md wire form) in dollars,
    or None when that budget does not count dollars."""
    if usage is None or usage.get("currency") not in _UNITS:
        return None
    per = _UNITS[usage["currency"]]
    return {k: Decimal(usage[k]) / per for k in ("limit", "spent", "reserved", "debt",
                                                 "attempted", "projected", "remaining")
            if k in usage}


def render_refusals(service: PolicyService, handler: Callable[[_Request], _Reply],
                    body: Callable[[str, str], BaseModel]) -> Callable[[_Request], _Reply]:
    """``handler`` with every refusal answered as ``body(code, message)`` of this wire."""
    from policyengine.server._app import _RefusalError, _Reply

    def run(req: _Request) -> _Reply:
        try:
            return handler(req)
        except _RefusalError as exc:
            service.metrics.error(exc.code)
            out = body(exc.code, exc.message)
            return _Reply(exc.status, TypeAdapter(type(out)).dump_json(out),
                          headers=exc.headers)

    return run


def api_key(service: PolicyService, raw: bytes | None) -> ApiKey:
    """The :class:`ApiKey` presented, or 401."""
    from policyengine.server._app import _RefusalError

    if raw is not None and 0 < len(raw) <= 1024:
        try:
            key = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            key = ""
        found = service.credentials.check_api_key(key) if key else None
        if found is not None:
            return found
    raise _RefusalError(401, "unauthorized", "a valid API key is required")


def llm_price(engine: pe.Engine, provider: str, model: str, input_tokens: int,
              cached_input_tokens: int, output_tokens: int) -> tuple[Decimal, str] | None:
    """What the policy's price table says one LLM call costs: (amount, currency), or
    None when the policy prices no such model (the caller refuses: nothing unpriced is
    admitted). The engine has no price table yet: every model is unpriced."""
    return None
