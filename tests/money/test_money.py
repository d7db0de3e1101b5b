"""Money, the ISO 4217 table and strict amount parsing."""

from __future__ import annotations

from decimal import Decimal

import pytest

from policyengine.money import (
    CURRENCIES,
    MAX_AMOUNT,
    UNITS,
    Currency,
    Money,
    MoneyError,
    decimal_places,
    get_currency,
    is_currency,
    parse_amount,
)
from policyengine.money._iso4217 import NOT_CURRENCIES, TABLE


def code_of(call: object, *args: object, **kwargs: object) -> str:
    """Run ``call`` and return the MoneyError code it raised (fails if it did not raise)."""
    with pytest.raises(MoneyError) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    return info.value.code


# ---------------------------------------------------------------- ISO 4217 table


@pytest.mark.parametrize(
    ("code", "numeric", "minor"),
    [
        ("USD", 840, 2),
        ("EUR", 978, 2),
        ("JPY", 392, 0),
        ("KRW", 410, 0),
        ("ISK", 352, 0),
        ("BHD", 48, 3),
        ("KWD", 414, 3),
        ("OMR", 512, 3),
        ("JOD", 400, 3),
        ("TND", 788, 3),
        ("LYD", 434, 3),
        ("IQD", 368, 3),
        ("CLF", 990, 4),
        ("UYW", 927, 4),
        ("XCG", 532, 2),
        ("ZWG", 924, 2),
        ("ALL", 8, 2),
    ],
)
def test_known_currencies(code: str, numeric: int, minor: int) -> None:
    currency = get_currency(code)
    assert currency == Currency(code, numeric, minor, currency.name)
    assert currency.name
    assert is_currency(code)
    assert decimal_places(code) == minor


@pytest.mark.parametrize(
    "code",
    ["XXX", "XTS", "XAU", "XAG", "XPT", "XPD", "XDR", "XBA", "XBB", "XBC", "XBD", "XSU", "XUA"],
)
def test_funds_test_and_metal_codes_are_not_currencies(code: str) -> None:
    assert not is_currency(code)
    with pytest.raises(MoneyError) as info:
        get_currency(code)
    assert info.value.code == "unknown_currency"
    assert code in str(info.value)


@pytest.mark.parametrize("code", ["DEM", "FRF", "ITL", "HRK", "ZWL", "SLL", "VEF", "MRO"])
def test_withdrawn_codes_are_refused_with_a_reason(code: str) -> None:
    with pytest.raises(MoneyError) as info:
        get_currency(code)
    assert info.value.code == "unknown_currency"
    assert "withdrawn" in str(info.value)


@pytest.mark.parametrize(
    "code", ["", "US", "USDD", "ABC", "EU R", "\uff35\uff33\uff24", "usd\n", None, 840]
)
def test_garbage_codes_are_unknown(code: object) -> None:
    assert not is_currency(code)  # type: ignore[arg-type]
    assert code_of(get_currency, code) == "unknown_currency"
    if code is not None:  # parse_amount(x, None) means "no currency"
        assert code_of(parse_amount, "1", code) == "unknown_currency"


def test_codes_are_case_insensitive_and_canonicalised() -> None:
    assert get_currency("usd").code == "USD"
    assert get_currency("Usd").code == "USD"
    assert Money.parse("1", "eur").currency == "EUR"
    assert Money.parse("1", "TOKENS").currency == "tokens"
    # Every unit in any case, the longest too (an 8-character cap on what was upper-
    # cased made Risk_Points unknown while RISK_POINTS and risk_points were not).
    for unit in UNITS:
        for spelling in (unit.upper(), unit.title(), unit.swapcase().title().swapcase()):
            assert Money.parse("1", spelling).currency == unit, spelling
            assert decimal_places(spelling) == decimal_places(unit)
    assert code_of(parse_amount, "1", "Risk_Pointsx") == "unknown_currency"


def test_units_are_not_currencies_but_parse() -> None:
    assert frozenset({"tokens", "calls", "credits", "risk_points"}) == UNITS
    for unit in UNITS:
        assert not is_currency(unit)
        assert code_of(get_currency, unit) == "unknown_currency"
    assert parse_amount("200000", "tokens") == 200000
    assert code_of(parse_amount, "1.5", "tokens") == "too_many_decimals"
    assert code_of(parse_amount, "1.5", "calls") == "too_many_decimals"
    assert code_of(parse_amount, "1.5", "risk_points") == "too_many_decimals"
    assert parse_amount("0.000001", "credits") == Decimal("0.000001")
    assert code_of(parse_amount, "0.0000001", "credits") == "too_many_decimals"


def test_table_is_consistent() -> None:
    codes = [row[0] for row in TABLE]
    assert codes == sorted(codes)
    assert len(codes) == len(set(codes))
    assert set(CURRENCIES) == set(codes)
    for code, numeric, minor, name in TABLE:
        assert len(code) == 3 and code.isascii() and code.isupper()
        assert 0 < numeric < 1000
        assert minor in (0, 2, 3, 4)
        assert name
        assert code not in NOT_CURRENCIES
    assert {c for c, *_ in TABLE if get_currency(c).minor_units == 3} == {
        "BHD",
        "IQD",
        "JOD",
        "KWD",
        "LYD",
        "OMR",
        "TND",
    }


# ---------------------------------------------------------------- accepted inputs


@pytest.mark.parametrize(
    ("value", "currency", "expected"),
    [
        ("12", "USD", Decimal("12")),
        ("12.50", "USD", Decimal("12.50")),
        ("12.5", "USD", Decimal("12.5")),
        ("0", "USD", Decimal("0")),
        ("0.01", "USD", Decimal("0.01")),
        ("500", "JPY", Decimal("500")),
        ("0.125", "BHD", Decimal("0.125")),
        ("1.2345", "CLF", Decimal("1.2345")),
        ("007", "EUR", Decimal("7")),
        ("12.500", "USD", Decimal("12.50")),  # zeros beyond the minor unit are not decimals
        ("100.000", "JPY", Decimal("100")),
        (12, "USD", Decimal("12")),
        (Decimal("12.50"), "USD", Decimal("12.50")),
        (Decimal("5E+2"), "JPY", Decimal("500")),
        (Decimal("1.000"), "JPY", Decimal("1")),
        ("1000000000000000", "USD", MAX_AMOUNT),
        ("1.123456789012345678", None, Decimal("1.123456789012345678")),
    ],
)
def test_accepted(value: object, currency: str | None, expected: Decimal) -> None:
    result = parse_amount(value, currency)
    assert type(result) is Decimal
    assert result == expected


def test_zeros_beyond_minor_unit_are_dropped_from_decimal_inputs() -> None:
    result = parse_amount(Decimal("1." + "0" * 50), "USD")
    assert result == 1
    assert result.as_tuple().exponent == -2


def test_negative_allowed_only_on_request() -> None:
    assert code_of(parse_amount, "-3", "USD") == "negative_amount"
    assert code_of(parse_amount, -3, "USD") == "negative_amount"
    assert code_of(parse_amount, Decimal("-3"), "USD") == "negative_amount"
    assert code_of(parse_amount, "-0", "USD") == "negative_amount"
    assert code_of(parse_amount, Decimal("-0"), "USD") == "negative_amount"
    assert parse_amount("-3", "USD", allow_negative=True) == -3
    assert parse_amount(-3, "USD", allow_negative=True) == -3
    zero = parse_amount("-0.00", "USD", allow_negative=True)
    assert zero == 0 and not zero.is_signed()
    zero = parse_amount(Decimal("-0"), "USD", allow_negative=True)
    assert zero == 0 and not zero.is_signed()


# ---------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("NaN", "nan_amount"),
        ("nan", "nan_amount"),
        ("sNaN", "nan_amount"),
        ("-NaN", "nan_amount"),
        ("NaN123", "nan_amount"),
        (Decimal("NaN"), "nan_amount"),
        (Decimal("sNaN"), "nan_amount"),
        ("Infinity", "infinite_amount"),
        ("-Infinity", "infinite_amount"),
        ("inf", "infinite_amount"),
        (Decimal("Infinity"), "infinite_amount"),
        (Decimal("-Infinity"), "infinite_amount"),
        (True, "bool_amount"),
        (False, "bool_amount"),
        (1.5, "float_amount"),
        (0.0, "float_amount"),
        ("", "invalid_amount"),
        (" 12", "invalid_amount"),
        ("12 ", "invalid_amount"),
        ("12\n", "invalid_amount"),
        ("+12", "invalid_amount"),
        ("1_000", "invalid_amount"),
        ("1,000", "invalid_amount"),
        ("1e3", "invalid_amount"),
        ("1E3", "invalid_amount"),
        ("1.5e-2", "invalid_amount"),
        (".5", "invalid_amount"),
        ("5.", "invalid_amount"),
        (".", "invalid_amount"),
        ("-", "invalid_amount"),
        ("--5", "invalid_amount"),
        ("0x10", "invalid_amount"),
        ("1.2.3", "invalid_amount"),
        (
            "\u0661\u0662",
            "invalid_amount",
        ),  # Arabic-Indic digits: Decimal() accepts them, we do not
        ("\uff11\uff12", "invalid_amount"),  # fullwidth digits
        ("12\u00a0", "invalid_amount"),
        ("\u00b2", "invalid_amount"),
        ("1" * 65, "invalid_amount"),
        (None, "invalid_amount"),
        (b"12", "invalid_amount"),
        ([12], "invalid_amount"),
        ({"amount": 12}, "invalid_amount"),
        ("12.345", "too_many_decimals"),
        ("0.001", "too_many_decimals"),
        (Decimal("12.345"), "too_many_decimals"),
        (Decimal("1E-30"), "too_many_decimals"),
        ("1000000000000000.01", "amount_too_large"),
        ("1000000000000001", "amount_too_large"),
        ("99999999999999999999", "amount_too_large"),
        (10**15 + 1, "amount_too_large"),
        (10**400, "amount_too_large"),
        (Decimal("1E+16"), "amount_too_large"),
        (Decimal("1E+65"), "exponent_too_large"),
        (Decimal("1E-65"), "exponent_too_large"),
        (Decimal("1E+999999999"), "exponent_too_large"),
    ],
)
def test_rejected(value: object, code: str) -> None:
    assert code_of(parse_amount, value, "USD") == code
    assert code_of(Money.parse, value, "USD") == code


def test_negative_too_large_is_too_large() -> None:
    assert code_of(parse_amount, "-1000000000000001", "USD", allow_negative=True) == (
        "amount_too_large"
    )
    assert code_of(parse_amount, -(10**15) - 1, "USD", allow_negative=True) == ("amount_too_large")


def test_jpy_has_no_decimals() -> None:
    assert code_of(parse_amount, "1.5", "JPY") == "too_many_decimals"
    assert code_of(parse_amount, "0.1", "KRW") == "too_many_decimals"
    assert parse_amount("1.5", "JPY", excess_decimals="round") == 2


def test_bhd_has_three_decimals() -> None:
    assert parse_amount("0.001", "BHD") == Decimal("0.001")
    assert code_of(parse_amount, "0.0001", "BHD") == "too_many_decimals"
    assert parse_amount("0.0001", "BHD", excess_decimals="round") == Decimal("0.001")


def test_error_messages_say_what_to_do() -> None:
    with pytest.raises(MoneyError) as info:
        parse_amount(0.1, "USD")
    assert "Decimal(repr(x))" in str(info.value)
    with pytest.raises(MoneyError) as info:
        parse_amount("1e3", "USD")
    assert "plain decimal" in str(info.value)
    with pytest.raises(MoneyError) as info:
        parse_amount("12.345", "USD")
    assert "USD" in str(info.value) and "2" in str(info.value)


def test_long_inputs_are_truncated_in_messages() -> None:
    with pytest.raises(MoneyError) as info:
        parse_amount("x" * 10_000, "USD")
    assert len(str(info.value)) < 200


# ---------------------------------------------------------------- rounding and floats


@pytest.mark.parametrize(
    ("value", "currency", "expected"),
    [
        ("10.001", "USD", Decimal("10.01")),
        ("10.009", "USD", Decimal("10.01")),
        ("10.0000001", "USD", Decimal("10.01")),
        ("-10.009", "USD", Decimal("-10.00")),  # up means towards +infinity
        (Decimal("0.3333"), "EUR", Decimal("0.34")),
        ("999999999999999.999", "USD", MAX_AMOUNT),
        ("1.00001", "CLF", Decimal("1.0001")),
        ("10.00", "USD", Decimal("10.00")),
    ],
)
def test_round_goes_up(value: object, currency: str, expected: Decimal) -> None:
    result = parse_amount(value, currency, allow_negative=True, excess_decimals="round")
    assert result == expected


def test_round_mode_still_rejects_other_problems() -> None:
    assert code_of(parse_amount, "NaN", "USD", excess_decimals="round") == "nan_amount"
    assert code_of(parse_amount, "1e3", "USD", excess_decimals="round") == "invalid_amount"
    assert code_of(parse_amount, "-1.001", "USD", excess_decimals="round") == "negative_amount"


def test_bad_excess_decimals_option() -> None:
    assert code_of(parse_amount, "1", "USD", excess_decimals="up") == "invalid_argument"
    assert code_of(Money.parse, "1", "USD", excess_decimals="up") == "invalid_argument"


def test_floats_only_through_repr() -> None:
    assert parse_amount(0.1, "USD", allow_float=True) == Decimal("0.1")
    assert parse_amount(12.5, "USD", allow_float=True) == Decimal("12.5")
    assert parse_amount(0.1, "USD", allow_float=True) == parse_amount(Decimal(repr(0.1)), "USD")
    assert code_of(parse_amount, 0.125, "USD", allow_float=True) == "too_many_decimals"
    assert code_of(parse_amount, float("nan"), "USD", allow_float=True) == "nan_amount"
    assert code_of(parse_amount, float("inf"), "USD", allow_float=True) == "infinite_amount"
    assert code_of(parse_amount, -1.0, "USD", allow_float=True) == "negative_amount"
    assert code_of(parse_amount, 1e20, "USD", allow_float=True) == "amount_too_large"
    assert code_of(parse_amount, 1e-7, "USD", allow_float=True) == "too_many_decimals"


def test_subclasses_are_treated_as_their_base() -> None:
    class Text(str):
        pass

    class Number(int):
        pass

    assert parse_amount(Text("12.50"), "USD") == Decimal("12.50")
    assert parse_amount(Number(7), "USD") == 7
    assert code_of(parse_amount, Text("1_0"), "USD") == "invalid_amount"


def test_result_does_not_depend_on_the_thread_decimal_context() -> None:
    import decimal

    with decimal.localcontext() as ctx:
        ctx.prec = 3
        ctx.traps[decimal.Inexact] = True
        assert parse_amount("123456789012.345", None) == Decimal("123456789012.345")
        assert parse_amount("123456789012.341", "USD", excess_decimals="round") == Decimal(
            "123456789012.35"
        )


# ---------------------------------------------------------------- Money


def test_money_is_immutable_and_hashable() -> None:
    money = Money.parse("12.50", "USD")
    with pytest.raises(AttributeError):
        money.amount = Decimal(1)  # type: ignore[misc]
    assert hash(money) == hash(Money.parse("12.5", "USD"))
    assert len({money, Money.parse("12.5", "USD"), Money.parse("12.5", "EUR")}) == 2


def test_money_constructor_validates() -> None:
    assert Money(Decimal("1.50"), "usd") == Money.parse("1.5", "USD")
    assert Money(Decimal("1.50"), "usd").currency == "USD"
    assert Money(7, "JPY").amount == 7
    assert Money(Decimal("-5"), "EUR").amount == -5  # a Money may be negative
    assert code_of(Money, "1.50", "USD") == "invalid_amount"
    assert code_of(Money, 1.5, "USD") == "float_amount"
    assert code_of(Money, True, "USD") == "bool_amount"
    assert code_of(Money, Decimal("1.505"), "USD") == "too_many_decimals"
    assert code_of(Money, Decimal("NaN"), "USD") == "nan_amount"
    assert code_of(Money, Decimal(1), "XAU") == "unknown_currency"
    assert code_of(Money, Decimal(10**16), "USD") == "amount_too_large"


def test_money_comparisons_within_a_currency() -> None:
    a = Money.parse("499.99", "EUR")
    b = Money.parse("500", "EUR")
    assert a < b and a <= b and b > a and b >= a and a != b
    assert Money.parse("500.00", "EUR") == b
    assert b <= Money.parse("500", "EUR")


def test_money_comparisons_across_currencies() -> None:
    eur = Money.parse("1", "EUR")
    usd = Money.parse("1", "USD")
    assert eur != usd
    for compare in (
        lambda: eur < usd,
        lambda: eur <= usd,
        lambda: eur > usd,
        lambda: eur >= usd,
        lambda: eur + usd,
        lambda: eur - usd,
    ):
        with pytest.raises(MoneyError) as info:
            compare()
        assert info.value.code == "currency_mismatch"


def test_money_against_other_types() -> None:
    money = Money.parse("1", "EUR")
    assert money != Decimal(1)
    assert money != "1 EUR"
    with pytest.raises(TypeError):
        _ = money < Decimal(2)  # type: ignore[operator]


def test_money_arithmetic() -> None:
    total = Money.parse("0.10", "USD") + Money.parse("0.20", "USD")
    assert total == Money.parse("0.30", "USD")
    assert (Money.parse("1", "USD") - Money.parse("3", "USD")).amount == -2
    big = Money(MAX_AMOUNT, "USD")
    assert code_of(lambda: big + Money.parse("0.01", "USD")) == "amount_too_large"


@pytest.mark.parametrize(
    ("value", "currency", "text"),
    [
        ("12.5", "USD", "12.50"),
        ("12", "USD", "12.00"),
        ("500", "JPY", "500"),
        ("5", "BHD", "5.000"),
        ("0.5", "CLF", "0.5000"),
        ("200000", "tokens", "200000"),
        ("1.500", "credits", "1.5"),
        ("100", "credits", "100"),
        ("1000000000000000", "USD", "1000000000000000.00"),
    ],
)
def test_wire_amount(value: str, currency: str, text: str) -> None:
    money = Money.parse(value, currency)
    assert money.wire_amount() == text
    assert str(money) == f"{text} {money.currency}"
    assert money.to_wire() == {"amount": text, "currency": money.currency}
    assert Money.parse(money.wire_amount(), money.currency) == money


def test_money_parse_options() -> None:
    assert Money.parse("-5", "EUR", allow_negative=True).amount == -5
    assert Money.parse("1.001", "EUR", excess_decimals="round").amount == Decimal("1.01")
    assert Money.parse(0.1, "EUR", allow_float=True).amount == Decimal("0.1")
