"""What the budget wires (actguard, agent-ledger) share: the API key, the refusal shape,
and the engine's price of an LLM call.

Each of those SDKs reads its own error body, so their handlers render refusals
themselves (:func:`render_refusals`) instead of the service's deny-shaped error.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING

from pydantic import BaseModel, TypeAdapter

import policyengine as pe

if TYPE_CHECKING:
    from policyengine.server._app import PolicyService, _Reply, _Request
    from policyengine.server._credentials import ApiKey

__all__ = ["USD", "api_key", "llm_price", "render_refusals", "spendable", "to_usd"]

USD = "USD"
_CENT = Decimal("0.01")


def spendable(usd: Decimal) -> Decimal:
    """``usd`` rounded **up** to the cent, the finest amount a dollar budget holds: a
    fraction of a cent is charged as a whole one (never less than was spent)."""
    return usd.quantize(_CENT, ROUND_CEILING)


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


def to_usd(engine: pe.Engine, amount: Decimal, currency: str) -> Decimal:
    """``amount`` in US dollars (the wires speak dollars), exactly when the policy's
    rates allow; raises :class:`policyengine.MoneyError` otherwise."""
    if currency == USD:
        return amount
    raise pe.MoneyError("no_rate", f"prices in {currency} cannot be spoken on a dollar wire")
