"""LLM price tables: what a model's input, cached input and output tokens cost.

A policy declares prices with ``price`` statements (docs/budgets.md, "LLM prices")::

    price "openai" "gpt-4o": input 2.50 USD, cached_input 1.25 USD, output 10 USD per 1M tokens

and the compiled policy holds them as one :class:`PriceTable`. Prices are exact
``Decimal``; :meth:`PriceTable.price` returns the exact cost of a call (no rounding), and
the ledger charges it to money budgets rounded up to each budget's quantum.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from policyengine.budgets.errors import BudgetInputError
from policyengine.budgets.spec import (
    MAX_QUANTA,
    MICRO_SUFFIX,
    canonical_unit,
    money_unit,
    plain_decimal,
)
from policyengine.money._money import MONEY_CONTEXT

__all__ = ["MAX_TOKENS", "LLMUsage", "ModelPrice", "Price", "PriceProblem", "PriceTable",
           "price_problem", "price_problems"]

#: Most tokens one usage may report per kind (a bound, not a policy).
MAX_TOKENS = 10**12
#: Longest provider or model name.
_MAX_NAME = 256
#: The largest price per token unit, in the currency (a bound against typos).
_MAX_PRICE = Decimal(10**9)


def _bad(message: str, details: dict[str, object] | None = None) -> BudgetInputError:
    return BudgetInputError("invalid_price", message, details)


#: A problem found by :func:`price_problems`: (field, error); the field is one of
#: ``provider``, ``model``, ``currency``, ``per``, ``input``, ``cached_input``, ``output``.
PriceProblem = tuple[str, BudgetInputError]


def price_problems(provider: object, model: object, currency: object, input: object,
                   cached_input: object, output: object, per: object) -> list[PriceProblem]:
    """Everything wrong with a price's fields, at most one problem per field, in the
    order of the fields: the one place the limits of a price live (:class:`ModelPrice`
    raises them, the policy checker reports each as E141 with the caret on the field's
    value)."""
    out: list[PriceProblem] = []
    for what, name in (("provider", provider), ("model", model)):
        if type(name) is not str or not name or len(name) > _MAX_NAME:
            out.append((what, _bad(f"{what} must be a non-empty string of at most "
                                   f"{_MAX_NAME} chars")))
    try:
        code = canonical_unit(currency)[0]
    except BudgetInputError as exc:
        out.append(("currency", exc))
    else:
        if money_unit(code) is None or code.endswith(MICRO_SUFFIX):
            out.append(("currency", _bad(f"prices are in a currency, not {currency!r}")))
        else:
            try:
                canonical_unit(code + MICRO_SUFFIX)  # spends are counted in its microcents
            except BudgetInputError:
                out.append(("currency", _bad(f"prices are in a currency with cents (USD, "
                                             f"EUR, ...), not {code}")))
    if type(per) is not int or not 1 <= per <= 10**9:
        out.append(("per", _bad("per must be a whole number of tokens from 1 to 10^9")))
    for what, value in (("input", input), ("cached_input", cached_input), ("output", output)):
        found = _amount_problem(what, value)
        if found is not None:
            out.append((what, found))
    return out


def _amount_problem(what: str, value: object) -> BudgetInputError | None:
    if isinstance(value, bool) or not isinstance(value, (Decimal, int, str)):
        return _bad(f"{what} must be a Decimal, int or decimal string")
    if isinstance(value, str) and not plain_decimal(value):
        return _bad(f"{what} {value[:40]!r} is not a plain decimal such as '2.50'")
    try:
        price = Decimal(value)
    except ArithmeticError:  # pragma: no cover - a plain decimal always converts
        return _bad(f"{what} {value!r} is not a number")
    if not price.is_finite() or price < 0 or price > _MAX_PRICE:
        return _bad(f"{what} must be a finite price from 0 to 10^9")
    if price.as_tuple().exponent < -12:  # type: ignore[operator]
        return _bad(f"{what} {value} has more than 12 decimals")
    return None


def price_problem(provider: object, model: object, currency: object, input: object,
                  cached_input: object, output: object, per: object) -> PriceProblem | None:
    """The first of :func:`price_problems`, or None."""
    found = price_problems(provider, model, currency, input, cached_input, output, per)
    return found[0] if found else None


def problems_error(found: list[PriceProblem]) -> BudgetInputError:
    """The one error a price with ``found`` problems raises: the problem itself when
    there is one, else ``invalid_price`` naming them all, each also in ``details``
    (``{"problems": [{"field", "code", "message"}, ...]}``)."""
    if len(found) == 1:
        return found[0][1]
    return BudgetInputError(
        "invalid_price", f"{len(found)} problems: "
        + "; ".join(f"{what}: {exc.message}" for what, exc in found),
        {"problems": [{"field": what, "code": exc.code, "message": exc.message}
                      for what, exc in found]})


@dataclass(frozen=True)
class ModelPrice:
    """One model's prices: ``input``, ``cached_input`` and ``output`` in ``currency`` per
    ``per`` tokens (``per=1_000_000`` for "per 1M tokens"). ``model`` ``"*"`` prices every
    model of ``provider`` the table does not name; provider and model ``"*"`` every call.
    """

    provider: str
    model: str
    currency: str
    input: Decimal
    cached_input: Decimal
    output: Decimal
    per: int = 1_000_000

    def __post_init__(self) -> None:
        found = price_problems(self.provider, self.model, self.currency, self.input,
                               self.cached_input, self.output, self.per)
        if found:
            raise problems_error(found)
        object.__setattr__(self, "currency", canonical_unit(self.currency)[0])
        for what in ("input", "cached_input", "output"):
            object.__setattr__(self, what, Decimal(getattr(self, what)))

    def cost(self, input_tokens: int, cached_input_tokens: int, output_tokens: int) -> Decimal:
        """The exact cost of these tokens in ``currency`` (``input_tokens`` excludes the
        cached ones, which are priced at ``cached_input``)."""
        total = (self.input * input_tokens + self.cached_input * cached_input_tokens
                 + self.output * output_tokens)
        return MONEY_CONTEXT.divide(total, Decimal(self.per))


@dataclass(frozen=True)
class Price:
    """What one usage costs: ``amount`` (exact) in ``currency``, and the price used."""

    amount: Decimal
    currency: str
    tokens: int
    model_price: ModelPrice

    def to_wire(self) -> dict[str, object]:
        return {"amount": format(self.amount, "f"), "currency": self.currency,
                "tokens": self.tokens, "provider": self.model_price.provider,
                "model": self.model_price.model}


@dataclass(frozen=True)
class LLMUsage:
    """An LLM call's usage: ``input_tokens`` (not cached), ``cached_input_tokens``,
    ``output_tokens``, of ``model`` at ``provider``. What ``reserve``, ``record``,
    ``check``, ``admit`` and ``commit`` take as ``usage=`` to charge money (priced) and
    tokens in one operation."""

    provider: str
    model: str
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0

    def __post_init__(self) -> None:
        for what, name in (("provider", self.provider), ("model", self.model)):
            if type(name) is not str or not name or len(name) > _MAX_NAME:
                raise BudgetInputError("invalid_amount", f"{what} must be a non-empty "
                                       f"string of at most {_MAX_NAME} chars",
                                       {"reason": "invalid_usage"})
        for what in ("input_tokens", "cached_input_tokens", "output_tokens"):
            n = getattr(self, what)
            if type(n) is not int or not 0 <= n <= MAX_TOKENS:
                got = (f"{n!r}" if type(n) is not int or n.bit_length() < 64
                       else f"an integer of {n.bit_length()} bits")  # repr: a 4,300-digit limit
                raise BudgetInputError("invalid_amount", f"{what} must be a whole number "
                                       f"from 0 to 10^12, got {got}",
                                       {"reason": "invalid_usage"})

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.cached_input_tokens + self.output_tokens


class PriceTable:
    """Prices per provider and model. ``PriceTable([ModelPrice(...), ...])``; a provider
    and model appear once (``invalid_price`` otherwise). Lookup: the exact model, else
    the provider's ``"*"``, else ``"*"`` / ``"*"``; names match exactly (case matters)."""

    __slots__ = ("_by_key", "entries")

    def __init__(self, prices: Iterable[ModelPrice]) -> None:
        if isinstance(prices, (str, bytes)) or not isinstance(prices, Iterable):
            raise _bad(f"a price table holds ModelPrice entries, not {type(prices).__name__}")
        self.entries: tuple[ModelPrice, ...] = tuple(prices)
        self._by_key: dict[tuple[str, str], ModelPrice] = {}
        if not all(isinstance(p, ModelPrice) for p in self.entries):
            raise _bad("a price table holds ModelPrice entries")
        twice: list[str] = []
        for p in self.entries:
            key = (p.provider, p.model)
            if key in self._by_key:
                twice.append(f"{p.provider}/{p.model}")
            self._by_key[key] = p
        if twice:  # every one, not the first alone
            raise _bad(f"{', '.join(dict.fromkeys(twice))} "
                       f"{'is' if len(set(twice)) == 1 else 'are'} priced twice",
                       {"twice": list(dict.fromkeys(twice))})

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, provider: str, model: str) -> ModelPrice | None:
        """The price that applies to ``model`` of ``provider``, or None."""
        found = self._by_key.get((provider, model))
        if found is None:
            found = self._by_key.get((provider, "*")) or self._by_key.get(("*", "*"))
        return found

    def price(self, provider: str, model: str, *, input_tokens: int = 0,
              cached_input_tokens: int = 0, output_tokens: int = 0) -> Price | None:
        """The exact cost of one call, or None when the table prices no such model.

        >>> table = PriceTable([ModelPrice("openai", "gpt-4o", "USD", Decimal("2.50"),
        ...                                Decimal("1.25"), Decimal(10))])
        >>> table.price("openai", "gpt-4o", input_tokens=1000, output_tokens=500).amount
        Decimal('0.0075')
        """
        usage = LLMUsage(provider, model, input_tokens, cached_input_tokens, output_tokens)
        return self.price_usage(usage)

    def price_usage(self, usage: LLMUsage) -> Price | None:
        found = self.lookup(usage.provider, usage.model)
        if found is None:
            return None
        amount = found.cost(usage.input_tokens, usage.cached_input_tokens,
                            usage.output_tokens)
        if amount.scaleb(8, MONEY_CONTEXT) > MAX_QUANTA:
            raise BudgetInputError("invalid_amount", "the priced usage is too large",
                                   {"reason": "amount_too_large"})
        return Price(amount, found.currency, usage.tokens, found)
