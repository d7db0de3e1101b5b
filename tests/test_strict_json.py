"""The strict JSON decoder every decision on JSON goes through."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyengine import _json as strict_json

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=4),
    max_leaves=20,
)


@pytest.mark.parametrize("text", [
    '{"a": 1, "a": 2}',
    '{"x": {"a": 1, "b": 2, "a": 3}}',
    '[{"k": 1}, {"k": 2, "k": 2}]',
])
def test_duplicate_keys_at_any_depth_are_refused(text: str) -> None:
    with pytest.raises(strict_json.AmbiguousJsonError) as err:
        strict_json.loads(text)
    assert err.value.code == "duplicate_key"


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a": -Infinity}'])
def test_non_finite_numbers_are_refused(text: str) -> None:
    with pytest.raises(strict_json.AmbiguousJsonError) as err:
        strict_json.loads(text)
    assert err.value.code == "non_finite_number"


def test_decimal_mode_keeps_fractions_exact() -> None:
    assert strict_json.loads('{"r": 0.92}', decimal=True) == {"r": Decimal("0.92")}
    assert type(strict_json.loads('{"r": 0.92}')["r"]) is float


@pytest.mark.parametrize("data", [b"\xff\xfe{}", b'{"a": "\xc3"}', "{", "", "[1,]"])
def test_not_json_is_a_value_error(data: str | bytes) -> None:
    with pytest.raises(ValueError):
        strict_json.loads(data)


@given(json_values)
def test_round_trips_what_json_dumps_writes(value: object) -> None:
    import json
    assert strict_json.loads(json.dumps(value)) == value
    assert strict_json.loads(json.dumps(value).encode("utf-8")) == value


@pytest.mark.parametrize("text", [
    "1e99999999999", "-1e99999999999", "1e-99999999999", "0e-99999999999",
    "0E+99999999999", '{"x": [1.5e4301]}', "1e-4301", "0." + "0" * 4300 + "1",
    "1" + "0" * 4301 + ".5",
])
def test_decimal_mode_refuses_an_exponent_beyond_the_bound(text: str) -> None:
    with pytest.raises(strict_json.AmbiguousJsonError) as err:
        strict_json.loads(text, decimal=True)
    assert err.value.code == "number_too_long"
    assert len(err.value.message) < 200


@pytest.mark.parametrize("text", ["1e4300", "-9.99e4300", "1e-4300", "0e4300", "1e400",
                                  "1" + "0" * 4300 + ".5"])
def test_decimal_mode_reads_exponents_up_to_the_bound(text: str) -> None:
    assert strict_json.loads(text, decimal=True) == Decimal(text)


def test_float_mode_is_as_before() -> None:
    with pytest.raises(strict_json.AmbiguousJsonError) as err:
        strict_json.loads("1e99999999999")
    assert err.value.code == "non_finite_number"
    assert strict_json.loads("1e-99999999999") == 0.0


@given(st.integers(0, 1), st.integers(0, 10**30), st.integers(0, 10**30),
       st.integers(-10**13, 10**13) | st.integers(-4400, 4400))
def test_decimal_mode_reads_a_number_exactly_or_refuses_it_by_its_exponent(
        sign: int, whole: int, fraction: int, exp: int) -> None:
    text = f"{'-' if sign else ''}{whole}.{fraction}e{exp}"
    value = Decimal(text)
    if -strict_json.MAX_EXPONENT <= value.adjusted() <= strict_json.MAX_EXPONENT:
        assert strict_json.loads(text, decimal=True) == value
        assert strict_json.decimal_text(value) == format(value, "f")
    else:
        with pytest.raises(strict_json.AmbiguousJsonError):
            strict_json.loads(text, decimal=True)
        assert strict_json.decimal_text(value) == str(value)  # never the plain digits
    assert Decimal(strict_json.decimal_text(value)) == value


# ---- dumps: what loads(decimal=True) read, written back with the same numbers ----------
exact_numbers = st.decimals(allow_nan=False, allow_infinity=False).filter(
    lambda d: abs(d.adjusted()) <= strict_json.MAX_EXPONENT)  # as loads reads them
floats = st.floats(allow_nan=False, allow_infinity=False)
exact_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | exact_numbers | floats,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=4),
    max_leaves=20,
)


@given(exact_values)
def test_dumps_writes_what_loads_reads_back_exactly(value: object) -> None:
    # A float reads back as the Decimal of its shortest text (what the wire would read).
    def exact(v: object) -> object:
        if type(v) is float:
            return Decimal(repr(v))
        if isinstance(v, list):
            return [exact(x) for x in v]
        if isinstance(v, dict):
            return {k: exact(x) for k, x in v.items()}
        return v
    for ascii_only in (True, False):
        text = strict_json.dumps(value, ensure_ascii=ascii_only)
        assert strict_json.loads(text, decimal=True) == exact(value)


@given(json_values | st.recursive(floats, lambda inner: st.lists(inner, max_size=3)),
       st.booleans(), st.booleans())
def test_dumps_without_decimals_is_the_standard_librarys_compact_text(
        value: object, sort_keys: bool, ascii_only: bool) -> None:
    import json
    assert strict_json.dumps(value, sort_keys=sort_keys, ensure_ascii=ascii_only) == (
        json.dumps(value, separators=(",", ":"), sort_keys=sort_keys,
                   ensure_ascii=ascii_only, allow_nan=False))


@pytest.mark.parametrize(("value", "text"), [
    (Decimal("12345678901234567.89"), "12345678901234567.89"),
    (Decimal("0.1000000000000000000001"), "0.1000000000000000000001"),
    (Decimal("1E+3"), "1E+3"), (Decimal("1E+300"), "1E+300"), (Decimal("-0"), "-0"),
    (Decimal("0E-3"), "0.000"), (Decimal("1E-7"), "1E-7"), (Decimal("1E+999999999"),
                                                             "1E+999999999"),
    ({"b": [Decimal("2.50")], "a": 1}, '{"b":[2.50],"a":1}'),
])
def test_dumps_writes_a_decimal_digit_for_digit(value: object, text: str) -> None:
    assert strict_json.dumps(value) == text


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("sNaN"), Decimal("-Infinity"),
                                   float("nan"), float("inf"), [Decimal("Infinity")]])
def test_dumps_refuses_a_non_finite_number(value: object) -> None:
    with pytest.raises(ValueError, match="not a JSON number"):
        strict_json.dumps(value)


@pytest.mark.parametrize("value", [{1: 2}, {"a": object()}, b"x", {"s": {1}}])
def test_dumps_refuses_what_json_has_no_form_for(value: object) -> None:
    with pytest.raises(TypeError):
        strict_json.dumps(value)


@given(exact_values)
def test_loads_exact_reads_fractions_as_decimals_and_refuses_as_loads(value: object) -> None:
    text = strict_json.dumps(value)
    try:
        strict_json.loads(text)
    except strict_json.AmbiguousJsonError as exc:  # 1e400 and the like, as a double
        with pytest.raises(strict_json.AmbiguousJsonError) as again:
            strict_json.loads_exact(text)
        assert again.value.code == exc.code
        return
    assert strict_json.loads_exact(text) == strict_json.loads(text, decimal=True)



@pytest.mark.parametrize("text", ["1e400", '{"a": [1, -1E+999]}', '{"a": 0.5, "b": 1e309}'])
def test_loads_exact_refuses_a_number_infinite_as_a_double(text: str) -> None:
    with pytest.raises(strict_json.AmbiguousJsonError) as err:
        strict_json.loads_exact(text)
    assert err.value.code == "non_finite_number"
