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
