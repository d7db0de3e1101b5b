"""Rate sources and conversion."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from policyengine.money import (
    CallableRates,
    JsonFileRates,
    Money,
    MoneyError,
    RateError,
    RateSource,
    StaticRates,
    convert,
    fits,
    parse_rfc3339,
)

NOW = 1_750_000_000.0  # 2025-06-15T15:06:40Z
RATES = StaticRates("EUR", {"USD": "0.92", "GBP": "1.17", "JPY": "0.0061", "BHD": "2.44"})


def m(value: str, currency: str) -> Money:
    return Money.parse(value, currency, allow_negative=True)


def rate_code(call: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(RateError) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    return info.value.code


# ---------------------------------------------------------------- StaticRates


def test_rate_means_base_units_per_unit() -> None:
    assert RATES.rate("USD", "EUR") == Decimal("0.92")
    assert RATES.rate("EUR", "EUR") == 1
    # cross and inverse rates are reported to 34 significant digits
    assert RATES.rate("EUR", "USD") == Decimal("1.086956521739130434782608695652174")
    assert RATES.base == "EUR"
    assert RATES.codes == {"EUR", "USD", "GBP", "JPY", "BHD"}


def test_cross_rate_goes_through_the_base() -> None:
    numerator, denominator = RATES.rate_fraction("USD", "GBP")
    assert (numerator, denominator) == (Decimal("0.92"), Decimal("1.17"))
    assert RATES.rate("USD", "GBP") == Decimal("0.7863247863247863247863247863247863")


def test_spend_converts_rounding_up() -> None:
    assert convert(m("280", "USD"), "EUR", RATES) == m("257.60", "EUR")
    # 0.01 USD = 0.0092 EUR exactly -> 0.01 EUR (up), 0.00 EUR (down)
    assert convert(m("0.01", "USD"), "EUR", RATES) == m("0.01", "EUR")
    assert convert(m("0.01", "USD"), "EUR", RATES, rounding="down") == m("0.00", "EUR")
    # 100 USD = 92 EUR = 78.632478... GBP -> 78.64 up, 78.63 down
    assert convert(m("100", "USD"), "GBP", RATES) == m("78.64", "GBP")
    assert convert(m("100", "USD"), "GBP", RATES, rounding="down") == m("78.63", "GBP")


def test_jpy_and_bhd_minor_units() -> None:
    # 10 EUR / 0.0061 = 1639.344... JPY
    assert convert(m("10", "EUR"), "JPY", RATES) == m("1640", "JPY")
    assert convert(m("10", "EUR"), "JPY", RATES, rounding="down") == m("1639", "JPY")
    # 1 EUR / 2.44 = 0.409836... BHD
    assert convert(m("1", "EUR"), "BHD", RATES) == m("0.410", "BHD")
    assert convert(m("1", "EUR"), "BHD", RATES, rounding="down") == m("0.409", "BHD")
    # 1 JPY = 0.0061 EUR -> 0.01 up; a 1-yen spend is never free
    assert convert(m("1", "JPY"), "EUR", RATES) == m("0.01", "EUR")


def test_exact_results_are_not_moved() -> None:
    assert convert(m("100", "USD"), "EUR", RATES, rounding="down") == m("92", "EUR")
    assert convert(m("100", "USD"), "EUR", RATES, rounding="up") == m("92", "EUR")


def test_negative_amounts_round_towards_plus_infinity_when_up() -> None:
    assert convert(m("-0.01", "USD"), "EUR", RATES) == m("0", "EUR")
    assert not convert(m("-0.01", "USD"), "EUR", RATES).amount.is_signed()
    assert convert(m("-0.01", "USD"), "EUR", RATES, rounding="down") == m("-0.01", "EUR")


def test_same_currency_needs_no_rates() -> None:
    money = m("12.34", "USD")
    assert convert(money, "USD", None) is money
    assert convert(money, "usd", None) is money
    tokens = Money.parse("10", "tokens")
    assert convert(tokens, "tokens", None) is tokens


def test_missing_rates_are_errors_not_guesses() -> None:
    assert rate_code(convert, m("1", "CHF"), "EUR", RATES) == "no_rate"
    assert rate_code(convert, m("1", "EUR"), "CHF", RATES) == "no_rate"
    assert rate_code(convert, m("1", "USD"), "EUR", None) == "no_rate"
    assert rate_code(RATES.rate, "CHF", "EUR") == "no_rate"
    assert rate_code(convert, m("1", "USD"), "XAU", RATES) == "unknown_currency"
    assert rate_code(convert, m("1", "USD"), "DEM", RATES) == "unknown_currency"
    assert rate_code(RATES.rate, "USD", "ZZZ") == "unknown_currency"


def test_units_never_convert() -> None:
    assert rate_code(convert, Money.parse("5", "tokens"), "EUR", RATES) == "unit_mismatch"
    assert rate_code(convert, m("5", "EUR"), "credits", RATES) == "unit_mismatch"
    assert rate_code(convert, Money.parse("5", "calls"), "tokens", RATES) == "unit_mismatch"


def test_lowercase_codes_in_rate_lookups() -> None:
    assert RATES.rate("usd", "eur") == Decimal("0.92")
    assert StaticRates("eur", {"usd": "0.92"}).rate("USD", "EUR") == Decimal("0.92")


def test_bad_rounding_argument() -> None:
    assert rate_code(convert, m("1", "USD"), "EUR", RATES, rounding="nearest") == (
        "invalid_argument"
    )


def test_converted_amount_beyond_maximum() -> None:
    rates = StaticRates("USD", {"IRR": "0.0000238"})
    with pytest.raises(MoneyError) as info:
        convert(m("100000000000000", "USD"), "IRR", rates)
    assert info.value.code == "amount_too_large"


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("0", "invalid_rate"),
        ("-0.92", "invalid_rate"),
        ("NaN", "invalid_rate"),
        (Decimal("Infinity"), "invalid_rate"),
        (0.92, "invalid_rate"),
        (True, "invalid_rate"),
        ("0.92 ", "invalid_rate"),
        ("9e-1", "invalid_rate"),
        ("1000000000000001", "invalid_rate"),
        (None, "invalid_rate"),
    ],
)
def test_invalid_rates(value: object, code: str) -> None:
    assert rate_code(StaticRates, "EUR", {"USD": value}) == code


def test_table_validation() -> None:
    assert rate_code(StaticRates, "XAU", {}) == "unknown_currency"
    assert rate_code(StaticRates, "EUR", {"DEM": "1.95583"}) == "unknown_currency"
    assert rate_code(StaticRates, "EUR", {"tokens": "1"}) == "unit_mismatch"
    assert rate_code(StaticRates, "EUR", {"EUR": "2"}) == "invalid_rate"
    assert StaticRates("EUR", {"EUR": "1.000"}).rate("EUR", "EUR") == 1
    assert rate_code(StaticRates, "EUR", {"USD": "0.9", "usd": "0.9"}) == "invalid_rate_table"
    assert rate_code(StaticRates, "EUR", {}, None, 60) == "invalid_rate_table"
    assert rate_code(StaticRates, "EUR", {}, NOW, -1) == "invalid_rate_table"
    assert rate_code(StaticRates, "EUR", {}, float("nan")) == "invalid_rate_table"
    assert rate_code(StaticRates, "EUR", [("USD", "1")]) == "invalid_rate_table"


def test_small_rates_keep_their_precision() -> None:
    rates = StaticRates("EUR", {"VND": "0.0000365", "IDR": Decimal("0.0000571")})
    assert convert(m("1000000", "VND"), "EUR", rates) == m("36.50", "EUR")
    assert rates.rate("VND", "EUR") == Decimal("0.0000365")


def test_stale_rates() -> None:
    rates = StaticRates("EUR", {"USD": "0.92"}, as_of=NOW, max_age=3600)
    assert rates.as_of == NOW and rates.max_age == 3600
    assert convert(m("100", "USD"), "EUR", rates, now=NOW + 3600) == m("92", "EUR")
    assert rate_code(convert, m("100", "USD"), "EUR", rates, now=NOW + 3601) == "stale_rate"
    assert rate_code(rates.rate, "USD", "EUR", NOW + 3601) == "stale_rate"
    # now=None means the real clock, which is long after NOW + 1h
    assert rate_code(convert, m("100", "USD"), "EUR", rates) == "stale_rate"
    # without max_age a table never goes stale
    fresh = StaticRates("EUR", {"USD": "0.92"}, as_of=0.0)
    assert convert(m("1", "USD"), "EUR", fresh, now=NOW) == m("0.92", "EUR")


# ---------------------------------------------------------------- JSON files


def write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "fx.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


def test_json_file_rates(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"base": "EUR", "as_of": "2025-06-15T15:06:40Z",'
        ' "rates": {"USD": 0.92, "GBP": "1.17"}, "source": "ECB"}',
    )
    rates = JsonFileRates(path, max_age=60)
    assert rates.path == str(path)
    assert rates.as_of == NOW
    assert rates.rate("USD", "EUR", NOW) == Decimal("0.92")  # JSON number read exactly
    assert convert(m("100", "USD"), "GBP", rates, now=NOW) == m("78.64", "GBP")
    assert rate_code(convert, m("1", "USD"), "EUR", rates, now=NOW + 61) == "stale_rate"
    assert isinstance(rates, RateSource)


@pytest.mark.parametrize(
    ("doc", "code"),
    [
        ("not json", "invalid_rate_table"),
        ("[]", "invalid_rate_table"),
        ({"base": "EUR", "rates": {}}, "invalid_rate_table"),
        ({"as_of": "2025-06-15T15:06:40Z", "rates": {}}, "invalid_rate_table"),
        ({"base": "EUR", "as_of": "2025-06-15T15:06:40Z"}, "invalid_rate_table"),
        ({"base": "EUR", "as_of": "2025-06-15", "rates": {}}, "invalid_rate_table"),
        ({"base": "EUR", "as_of": "2025-06-15T15:06:40", "rates": {}}, "invalid_rate_table"),
        ({"base": "EUR", "as_of": 1750000000, "rates": {}}, "invalid_rate_table"),
        ({"base": 978, "as_of": "2025-06-15T15:06:40Z", "rates": {}}, "invalid_rate_table"),
        ({"base": "EUR", "as_of": "2025-06-15T15:06:40Z", "rates": []}, "invalid_rate_table"),
        (
            {"base": "EUR", "as_of": "2025-06-15T15:06:40Z", "rates": {}, "x": 1},
            "invalid_rate_table",
        ),
        (
            '{"base": "EUR", "base": "USD", "as_of": "2025-06-15T15:06:40Z", "rates": {}}',
            "invalid_rate_table",
        ),
        ('{"base": "EUR", "as_of": "2025-06-15T15:06:40Z", "rates": {"USD": NaN}}', "invalid_rate"),
        ('{"base": "EUR", "as_of": "2025-06-15T15:06:40Z", "rates": {"USD": -1}}', "invalid_rate"),
        ({"base": "XTS", "as_of": "2025-06-15T15:06:40Z", "rates": {}}, "unknown_currency"),
    ],
)
def test_bad_json_files(tmp_path: Path, doc: object, code: str) -> None:
    assert rate_code(JsonFileRates, write(tmp_path, doc)) == code
    text = doc if isinstance(doc, str) else json.dumps(doc)
    assert rate_code(StaticRates.from_json, text) == code


def test_missing_file(tmp_path: Path) -> None:
    assert rate_code(JsonFileRates, tmp_path / "missing.json") == "invalid_rate_table"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2025-06-15T15:06:40Z", NOW),
        ("2025-06-15t15:06:40z", NOW),
        ("2025-06-15T17:06:40+02:00", NOW),
        ("2025-06-15T10:06:40-05:00", NOW),
        ("2025-06-15T15:06:40.5Z", NOW + 0.5),
        ("1970-01-01T00:00:00Z", 0.0),
    ],
)
def test_rfc3339(text: str, seconds: float) -> None:
    assert parse_rfc3339(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        "2025-06-15 15:06:40Z",
        "2025-06-15T15:06:40",
        "2025-13-15T15:06:40Z",
        "2025-06-15T24:00:00Z",
        "2025-06-15T15:06:60Z",
        "2025-06-15T15:06:40+24:00",
        "\uff12025-06-15T15:06:40Z",
        "",
    ],
)
def test_rfc3339_rejects(text: str) -> None:
    assert rate_code(parse_rfc3339, text) == "invalid_rate_table"


# ---------------------------------------------------------------- CallableRates


def test_callable_rates() -> None:
    calls: list[tuple[str, str, float | None]] = []

    def lookup(a: str, b: str, now: float | None) -> Decimal | None:
        calls.append((a, b, now))
        return Decimal("0.92") if (a, b) == ("USD", "EUR") else None

    rates = CallableRates(lookup)
    assert convert(m("100", "USD"), "EUR", rates, now=NOW) == m("92", "EUR")
    assert calls == [("USD", "EUR", NOW)]
    assert rate_code(convert, m("1", "GBP"), "EUR", rates) == "no_rate"
    assert rates.rate("EUR", "EUR") == 1


def test_callable_rates_fail_closed() -> None:
    def broken(a: str, b: str, now: float | None) -> Decimal:
        raise KeyError(a)

    with pytest.raises(RateError) as info:
        convert(m("1", "USD"), "EUR", CallableRates(broken))
    assert info.value.code == "no_rate"
    assert isinstance(info.value.__cause__, KeyError)

    def stale(a: str, b: str, now: float | None) -> Decimal:
        raise RateError("stale_rate", "feed is old")

    assert rate_code(convert, m("1", "USD"), "EUR", CallableRates(stale)) == "stale_rate"
    for bad in ("0", "-1", "NaN", 0.92, True, "abc"):
        rates = CallableRates(lambda a, b, now, bad=bad: bad)  # type: ignore[misc]
        assert rate_code(convert, m("1", "USD"), "EUR", rates) == "invalid_rate"


def test_callable_cross_rate_with_many_digits() -> None:
    rates = CallableRates(lambda a, b, now: Decimal(1) / Decimal(3))
    assert convert(m("3", "USD"), "EUR", rates) == m("1.00", "EUR")
    assert convert(m("3", "USD"), "EUR", rates, rounding="down") == m("0.99", "EUR")


def test_custom_rate_source_without_fraction() -> None:
    class Fixed:
        def rate(self, from_code: str, to_code: str, now: float | None = None) -> Decimal:
            return Decimal("1.5")

    assert isinstance(Fixed(), RateSource)
    assert convert(m("1.01", "USD"), "EUR", Fixed()) == m("1.52", "EUR")

    class Lying:
        def rate(self, from_code: str, to_code: str, now: float | None = None) -> Decimal:
            return Decimal("NaN")

    assert rate_code(convert, m("1", "USD"), "EUR", Lying()) == "invalid_rate"


# ---------------------------------------------------------------- fits


def test_spend_at_the_cap_fits_and_one_minor_unit_more_does_not() -> None:
    cap = m("500", "EUR")
    assert fits(m("500", "EUR"), cap, RATES)
    assert not fits(m("500.01", "EUR"), cap, RATES)
    # 543.47 USD = 499.9924 EUR -> 500.00 EUR: fits; 543.48 USD = 500.0016 -> 500.01: no
    assert fits(m("543.47", "USD"), cap, RATES)
    assert not fits(m("543.48", "USD"), cap, RATES)
    assert fits(m("0", "USD"), m("0", "EUR"), RATES)
    assert not fits(m("0.01", "USD"), m("0", "EUR"), RATES)
