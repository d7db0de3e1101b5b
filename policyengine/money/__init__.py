"""Money: strict amounts in ISO 4217 currencies (and token/call/credit units), rate sources
and conversion. A leaf: imports nothing of the engine. See ``docs/money.md``.
"""

from policyengine.money._money import (
    CURRENCIES,
    MAX_AMOUNT,
    MAX_EXPONENT,
    MAX_TEXT_LENGTH,
    UNITS,
    Currency,
    Money,
    MoneyError,
    decimal_places,
    get_currency,
    is_currency,
    parse_amount,
)
from policyengine.money._rates import (
    CallableRates,
    JsonFileRates,
    RateError,
    RateSource,
    StaticRates,
    convert,
    fits,
    parse_rfc3339,
)

__all__ = [
    "CURRENCIES",
    "MAX_AMOUNT",
    "MAX_EXPONENT",
    "MAX_TEXT_LENGTH",
    "UNITS",
    "CallableRates",
    "Currency",
    "JsonFileRates",
    "Money",
    "MoneyError",
    "RateError",
    "RateSource",
    "StaticRates",
    "convert",
    "decimal_places",
    "fits",
    "get_currency",
    "is_currency",
    "parse_amount",
    "parse_rfc3339",
]
