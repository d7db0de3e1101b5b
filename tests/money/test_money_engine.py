"""Money through the whole engine (hypothesis): converted spends against caps.

Every expectation is computed independently of policyengine with exact rationals
(:class:`fractions.Fraction`) and integer ceilings: a spend in USD converts to the EUR base
at ``rate``, is rounded **up** to the cent, and is compared with a cap that is never
rounded (docs/semantics.md, "Money"; docs/money.md, "Conversion and rounding").
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from policyengine.engine import Engine
from policyengine.lang import PolicyError

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@lru_cache(maxsize=1024)
def engine(rate: str, cap: str, cap_currency: str = "EUR") -> Engine:
    return Engine.from_source(
        "namespace m\n"
        "currency EUR\n"
        f"rate USD {rate}\n"
        "role payer: payments:*\n"
        'agent "bot": payer\n'
        f"limit cap: payments:* amount <= {cap} {cap_currency}\n",
        name="money.policy",
    )


def cents_str(cents: int) -> str:
    """An integer number of minor units as a plain 2-decimal string (12345 -> "123.45")."""
    return f"{cents // 100}.{cents % 100:02d}"


def rate_str(micros: int) -> str:
    """A rate in millionths as a plain 6-decimal string (920000 -> "0.920000")."""
    return f"{micros // 10**6}.{micros % 10**6:06d}"


def ceil_cents(exact: Fraction) -> int:
    """The smallest whole number of cents that is >= ``exact`` (integer arithmetic only)."""
    scaled = exact * 100
    return -((-scaled.numerator) // scaled.denominator)


def exact_eur(usd_cents: int, rate_micros: int) -> Fraction:
    return Fraction(usd_cents, 100) * Fraction(rate_micros, 10**6)


def spend(eng: Engine, amount: object, currency: str = "USD") -> str:
    d = eng.authorize("bot", "payments:pay", {"amount": amount, "currency": currency})
    assert d.status in ("allowed", "denied"), d
    if d.status == "denied":
        assert d.code in ("limit_exceeded", "invalid_amount", "unknown_currency", "no_rate",
                          "unit_mismatch", "missing_amount", "missing_currency"), d
        assert "m.cap" in d.rules
    return d.status


amounts = st.integers(min_value=0, max_value=10**8)          # 0 .. 10**6 in cents
rates = st.integers(min_value=1, max_value=10**9)            # 0.000001 .. 1000, 6 decimals
caps = st.integers(min_value=0, max_value=10**8)             # 0 .. 10**6 EUR in cents


@st.composite
def near_the_cap(draw: st.DrawFn) -> tuple[int, int, int]:
    """(usd_cents, rate_micros, cap_cents) with the converted spend close to the cap."""
    rate = draw(rates)
    cap = draw(caps)
    # The USD amount whose exact EUR value is just under or at the cap, +- a few cents.
    pivot = (Fraction(cap, 100) / Fraction(rate, 10**6)) * 100
    base = pivot.numerator // pivot.denominator
    usd = base + draw(st.integers(min_value=-2, max_value=2))
    return max(0, min(10**8, usd)), rate, cap


@SETTINGS
@given(st.one_of(st.tuples(amounts, rates, caps), near_the_cap()))
def test_allowed_iff_rounded_up_spend_fits(case: tuple[int, int, int]) -> None:
    usd, rate, cap = case
    expected = ceil_cents(exact_eur(usd, rate)) <= cap
    got = spend(engine(rate_str(rate), cents_str(cap)), cents_str(usd))
    assert got == ("allowed" if expected else "denied"), (usd, rate, cap)
    if expected:
        d = engine(rate_str(rate), cents_str(cap)).authorize(
            "bot", "payments:pay", {"amount": cents_str(usd), "currency": "USD"})
        assert d.obligations is not None
        assert Decimal(d.obligations.to_wire()["maxAmount"]) == Decimal(cap) / 100
        assert d.obligations.currency == "EUR"


@SETTINGS
@given(caps, rates)
def test_spend_exactly_at_the_cap_allowed_one_cent_more_denied(cap: int, rate: int) -> None:
    eng = engine(rate_str(rate), cents_str(cap))
    assert spend(eng, cents_str(cap), "EUR") == "allowed"
    assert spend(eng, cents_str(cap + 1), "EUR") == "denied"
    if cap % 100 == 0:  # the same cap as a JSON integer
        assert spend(eng, cap // 100, "EUR") == "allowed"


@SETTINGS
@given(amounts, rates)
def test_converted_spend_is_exactly_the_ceiling_never_below_exact(usd: int, rate: int) -> None:
    """Bracket the converted value with two caps: it is exactly ceil(exact) to the cent."""
    exact = exact_eur(usd, rate)
    up = ceil_cents(exact)
    assume(up <= 10**8)
    assert Fraction(up, 100) >= exact
    # A cap at the rounded-up value admits the spend ...
    assert spend(engine(rate_str(rate), cents_str(up)), cents_str(usd)) == "allowed"
    # ... and a cap one cent lower does not, even when the exact value is under that cap
    # (a spend never rounds down under a cap).
    if up > 0:
        assert spend(engine(rate_str(rate), cents_str(up - 1)), cents_str(usd)) == "denied"


@SETTINGS
@given(amounts, rates)
def test_spend_never_allowed_when_exact_value_exceeds_cap(usd: int, rate: int) -> None:
    exact = exact_eur(usd, rate)
    floor_cents = (exact * 100).numerator // (exact * 100).denominator
    assume(Fraction(floor_cents, 100) < exact)  # the exact value is off the cent grid
    assert spend(engine(rate_str(rate), cents_str(floor_cents)), cents_str(usd)) == "denied"


@SETTINGS
@given(caps, rates, st.integers(min_value=-2, max_value=2))
def test_cap_in_another_currency_is_rounded_down(cap: int, rate: int, delta: int) -> None:
    """A cap written in USD is the floor of its exact EUR value (never rounded up); a EUR
    spend fits iff it is at most that floor, and maxAmount reports it to the cent."""
    exact_cap = exact_eur(cap, rate)
    floor_cap = (exact_cap * 100).numerator // (exact_cap * 100).denominator
    assume(floor_cap <= 10**8)
    eng = engine(rate_str(rate), cents_str(cap), "USD")
    eur = max(0, floor_cap + delta)
    d = eng.authorize("bot", "payments:pay", {"amount": cents_str(eur), "currency": "EUR"})
    assert d.status == ("allowed" if eur <= floor_cap else "denied"), (cap, rate, eur)
    if d.allowed:
        assert d.obligations is not None
        assert d.obligations.to_wire()["maxAmount"] == cents_str(floor_cap)
    # The same USD amount as the cap is allowed only if its rounded-up value fits.
    same = spend(eng, cents_str(cap))
    assert same == ("allowed" if ceil_cents(exact_cap) <= floor_cap else "denied")


# ---- hostile input -----------------------------------------------------------------------

HOSTILE_STRINGS = [
    "NaN", "nan", "-NaN", "sNaN", "snan", "NaN123", "Infinity", "-Infinity", "inf", "Inf",
    "1e3", "1E3", "1e-2", "0e0", "1_000", "1,000", "+5", " 5", "5 ", "\t5", "5\n",
    "\u0665", "\u0661\u0662", "\uff11\uff12", "\u00b2", "5\u00a0", "-5", "-0", "-0.00",
    "5.001", "0.001", ".5", "5.", "", " ", "-", ".", "0x10", "1/2", "5 EUR", "EUR 5",
    "1000000000000001", "1000000000000000.01", "9" * 30, "0" * 70 + "1", "1..0", "1.0.0",
    "\u0035\u0301", "\u0665.\u0665", "\uff15",
]


def _bad_decimal(d: Decimal) -> bool:
    """Non-finite, negative, or with a significant third decimal (invalid for EUR and USD)."""
    if not d.is_finite():
        return True
    if d.is_signed():  # negative, or -0
        return True
    # Exact, context-free: strip the coefficient's trailing zeros from the exponent.
    _sign, digits, exponent = d.as_tuple()
    assert isinstance(exponent, int)
    if not any(digits):
        return False
    zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    return exponent + zeros < -2


hostile = st.one_of(
    st.sampled_from(HOSTILE_STRINGS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.integers(max_value=-1),
    st.integers(min_value=10**15 + 1),
    st.decimals(allow_nan=True, allow_infinity=True).filter(_bad_decimal),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    # digits in any script other than ASCII, sometimes with a dot
    st.text(alphabet=st.characters(categories=["Nd"]), min_size=1, max_size=6).filter(
        lambda s: not s.isascii()),
    st.builds(lambda a, b: f"{a}e{b}", st.integers(0, 999), st.integers(-5, 5)),
)


@SETTINGS
@given(hostile, st.sampled_from(["EUR", "USD"]))
def test_hostile_amounts_never_allowed_under_a_limit(value: object, currency: str) -> None:
    # The cap is the largest possible amount: only the parsing can deny.
    eng = engine("0.920000", "1000000000000000")
    d = eng.authorize("bot", "payments:pay", {"amount": value, "currency": currency})
    assert d.status == "denied", (value, d)
    assert d.code == "invalid_amount", (value, d)
    assert d.rules == ("m.cap",)
    assert [(x.code, x.rule) for x in d.diagnostics] == [("invalid_amount", "m.cap")]


@SETTINGS
@given(st.one_of(st.text(max_size=5), st.integers(), st.none(), st.booleans(),
                 st.sampled_from(["XAU", "XTS", "XXX", "DEM", "ABC", "tokens", "CHF", "JPY",
                                  "eur", "Usd", "EUR ", "\u0130SD", "EU\u0280"])))
def test_currency_allowed_only_if_known_and_rated(currency: object) -> None:
    eng = engine("0.920000", "1000")
    d = eng.authorize("bot", "payments:pay", {"amount": "10", "currency": currency})
    ok = (type(currency) is str and currency.isascii()
          and currency.upper() in ("EUR", "USD"))
    if currency is None:  # no currency and no default_currency
        assert (d.status, d.code) == ("denied", "missing_currency")
    elif ok:
        assert d.status == "allowed", (currency, d)
    else:
        assert d.status == "denied", (currency, d)
        assert d.code in ("unknown_currency", "no_rate", "unit_mismatch"), (currency, d)


def test_inline_rate_differing_from_the_rates_file_is_e132(tmp_path: Path) -> None:
    (tmp_path / "fx.json").write_text(
        '{"base": "EUR", "as_of": "2025-06-15T15:06:40Z", "rates": {"USD": "0.92"}}',
        encoding="utf-8")
    policy = tmp_path / "p.policy"
    text = 'currency EUR\nrates "fx.json"\nrate USD {}\nrole r: a:*\nagent "bot": r\n'
    policy.write_text(text.format("0.92"), encoding="utf-8")
    assert Engine.from_path(policy).authorize("bot", "a:b").allowed  # the same rate is fine
    policy.write_text(text.format("0.93"), encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        Engine.from_path(policy)
    assert (info.value.code, info.value.line) == ("E132", 2)
