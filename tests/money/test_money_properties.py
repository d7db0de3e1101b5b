"""Properties of parsing and conversion (hypothesis).

The exact value of a conversion is a rational number; ``fractions.Fraction`` computes it
without any rounding, so these tests compare against arithmetic that cannot be wrong in
the way the code under test could be.
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from policyengine.money import (
    CURRENCIES,
    MAX_AMOUNT,
    Money,
    MoneyError,
    StaticRates,
    convert,
    fits,
    parse_amount,
)

CODES = sorted(CURRENCIES)
codes = st.sampled_from(CODES)


@st.composite
def amounts(draw: st.DrawFn, code: str, max_units: int = 10**12) -> Money:
    """A non-negative Money in ``code`` with at most its minor units."""
    scale = CURRENCIES[code].minor_units
    minor = draw(st.integers(min_value=0, max_value=max_units * 10**scale))
    return Money(Decimal(minor).scaleb(-scale), code)


@st.composite
def rate_values(draw: st.DrawFn) -> Decimal:
    """A positive rate with up to 12 significant digits, from 1e-20 to about 1e6."""
    digits = draw(st.integers(min_value=1, max_value=10**12 - 1))
    exponent = draw(st.integers(min_value=-20, max_value=-6))
    return Decimal(digits).scaleb(exponent)


def exact(value: Decimal) -> Fraction:
    return Fraction(value)


def ceil_to(value: Fraction, scale: int) -> Fraction:
    return Fraction(math.ceil(value * 10**scale), 10**scale)


def floor_to(value: Fraction, scale: int) -> Fraction:
    return Fraction(math.floor(value * 10**scale), 10**scale)


# ---------------------------------------------------------------- parsing


@given(code=codes, data=st.data())
def test_wire_amount_round_trips(code: str, data: st.DataObject) -> None:
    money = data.draw(amounts(code, max_units=10**15 // 10))
    text = money.wire_amount()
    assert Money.parse(text, code) == money
    assert parse_amount(text, code) == money.amount
    assert parse_amount(money.amount, code) == money.amount


@given(
    integer=st.integers(min_value=-(10**15), max_value=10**15),
    fraction=st.text(alphabet="0123456789", max_size=6),
    code=codes,
)
def test_plain_decimal_strings_parse_to_their_value_or_a_code(
    integer: int, fraction: str, code: str
) -> None:
    text = str(integer) + ("." + fraction if fraction else "")
    value = Fraction(Decimal(text))
    scale = CURRENCIES[code].minor_units
    try:
        result = parse_amount(text, code, allow_negative=True)
    except MoneyError as exc:
        assert exc.code in {"too_many_decimals", "amount_too_large"}
        if exc.code == "too_many_decimals":
            assert value * 10**scale != int(value * 10**scale)
        else:
            assert abs(value) > exact(MAX_AMOUNT)
        return
    assert Fraction(result) == value
    assert abs(value) <= exact(MAX_AMOUNT)
    rounded = parse_amount(text, code, allow_negative=True, excess_decimals="round")
    assert rounded == result


@given(
    integer=st.integers(min_value=0, max_value=10**14),
    fraction=st.text(alphabet="0123456789", min_size=1, max_size=8),
    code=codes,
)
def test_round_never_lowers_an_amount(integer: int, fraction: str, code: str) -> None:
    text = f"{integer}.{fraction}"
    result = parse_amount(text, code, excess_decimals="round")
    scale = CURRENCIES[code].minor_units
    assert Fraction(result) == ceil_to(Fraction(Decimal(text)), scale)


@given(st.text(max_size=20))
def test_arbitrary_text_is_a_value_or_a_coded_error(text: str) -> None:
    try:
        result = parse_amount(text, "USD")
    except MoneyError as exc:
        assert exc.code in {
            "invalid_amount",
            "nan_amount",
            "infinite_amount",
            "negative_amount",
            "too_many_decimals",
            "amount_too_large",
        }
        return
    # Anything accepted is plain ASCII decimal text.
    assert text.isascii() and text.replace(".", "", 1).isdigit()
    assert result == Decimal(text)


@given(st.decimals(allow_nan=True, allow_infinity=True))
def test_arbitrary_decimals_are_values_or_coded_errors(value: Decimal) -> None:
    try:
        result = parse_amount(value, "EUR", allow_negative=True)
    except MoneyError as exc:
        assert exc.code in {
            "nan_amount",
            "infinite_amount",
            "too_many_decimals",
            "amount_too_large",
            "exponent_too_large",
        }
        return
    assert result.is_finite() and result == value


# ---------------------------------------------------------------- conversion


@settings(max_examples=300)
@given(source=codes, target=codes, r_from=rate_values(), r_to=rate_values(), data=st.data())
def test_converted_spend_is_never_below_exact(
    source: str, target: str, r_from: Decimal, r_to: Decimal, data: st.DataObject
) -> None:
    base = "EUR" if "EUR" not in (source, target) else "USD"
    table = {c: r for c, r in ((source, r_from), (target, r_to)) if c != base}
    rates = StaticRates(base, table)
    money = data.draw(amounts(source, max_units=10**9))
    to_base = {base: Fraction(1), **{c: exact(r) for c, r in table.items()}}
    value = exact(money.amount) * to_base[source] / to_base[target]
    scale = CURRENCIES[target].minor_units
    try:
        up = convert(money, target, rates, rounding="up")
        down = convert(money, target, rates, rounding="down")
    except MoneyError as exc:
        assert exc.code == "amount_too_large"
        assert ceil_to(value, scale) > exact(MAX_AMOUNT)
        return
    assert exact(up.amount) >= value
    assert exact(down.amount) <= value
    # ... and by less than one minor unit: exactly the ceiling and the floor.
    assert exact(up.amount) == ceil_to(value, scale)
    assert exact(down.amount) == floor_to(value, scale)
    assert up.currency == down.currency == target


@given(r_usd=rate_values(), r_gbp=rate_values(), data=st.data())
def test_cross_rate_equals_two_legs_through_the_base(
    r_usd: Decimal, r_gbp: Decimal, data: st.DataObject
) -> None:
    rates = StaticRates("EUR", {"USD": r_usd, "GBP": r_gbp})
    money = data.draw(amounts("USD", max_units=10**6))
    numerator, denominator = rates.rate_fraction("USD", "GBP")
    usd_eur, _ = rates.rate_fraction("USD", "EUR")
    _, gbp_eur = rates.rate_fraction("EUR", "GBP")
    assert Fraction(numerator) / Fraction(denominator) == Fraction(usd_eur) / Fraction(gbp_eur)
    try:
        direct = convert(money, "GBP", rates)
        # Going through EUR with a rounding at each leg can only be >= the direct result.
        via_eur = convert(convert(money, "EUR", rates), "GBP", rates)
    except MoneyError as exc:
        assert exc.code == "amount_too_large"
        assume(False)
    assert direct <= via_eur


@given(rate=rate_values(), code=codes, data=st.data())
def test_spend_exactly_at_cap_fits_one_minor_unit_more_does_not(
    rate: Decimal, code: str, data: st.DataObject
) -> None:
    cap = data.draw(amounts(code, max_units=10**9))
    base = "EUR" if code != "EUR" else "USD"
    rates = StaticRates(base, {code: rate})
    unit = Decimal(1).scaleb(-CURRENCIES[code].minor_units)
    assert fits(cap, cap, rates)
    assert not fits(Money(cap.amount + unit, code), cap, rates)
    # The same cap expressed in the base currency, rounded down as limits are: any spend in
    # `code` that fits it also fits the original cap.
    base_cap = convert(cap, base, rates, rounding="down")
    spend = data.draw(amounts(code, max_units=10**9))
    if fits(spend, base_cap, rates):
        assert spend <= cap


@given(rate=rate_values(), data=st.data())
def test_conversion_is_monotonic(rate: Decimal, data: st.DataObject) -> None:
    rates = StaticRates("EUR", {"JPY": rate})
    a = data.draw(amounts("JPY", max_units=10**9))
    b = data.draw(amounts("JPY", max_units=10**9))
    low, high = (a, b) if a <= b else (b, a)
    for rounding in ("up", "down"):
        assert convert(low, "EUR", rates, rounding=rounding) <= convert(
            high, "EUR", rates, rounding=rounding
        )
