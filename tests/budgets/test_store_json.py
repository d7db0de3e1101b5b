"""The stores' record JSON (orjson with the standard library as the fallback) writes and
reads exactly what ``json`` would: same values back, big integers and lone surrogates
included."""

from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st

from policyengine.budgets.store import (
    Line,
    ReservationRecord,
    compact_bytes,
    compact_json,
    json_loads,
    record_from_json,
    record_to_json,
)

_stdlib = json.JSONEncoder(separators=(",", ":")).encode

_scalars = (
    st.none() | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()  # includes lone surrogates
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


def _same(a: object, b: object) -> bool:
    """Equal, with floats compared by value and type (json gives int vs float apart)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[arg-type]
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)  # type: ignore[attr-defined,index]
    return a == b


@given(_values)
def test_writes_what_json_reads_as_the_stdlib_writing(value: object) -> None:
    expected = json.loads(_stdlib(value))
    assert _same(json.loads(compact_json(value)), expected)
    assert _same(json.loads(compact_bytes(value)), expected)


@given(_values)
def test_reads_what_json_reads(value: object) -> None:
    for text in (_stdlib(value), compact_json(value)):
        assert _same(json_loads(text), json.loads(text))
        assert _same(json_loads(text.encode()), json.loads(text))


def test_integers_past_64_bits_read_as_integers() -> None:
    for n in (2**63 - 1, 2**63, 2**64, 10**18, 10**19, -(2**63) - 1, 10**40):
        text = compact_json([n, (n, "x")])
        assert json_loads(text) == [n, [n, "x"]]
        assert type(json_loads(text)[0]) is int


def test_refuses_what_the_stdlib_refuses() -> None:
    from decimal import Decimal
    for value in (Decimal("1.5"), {1, 2}, object()):
        try:
            compact_json([value])
        except TypeError:
            continue
        raise AssertionError(f"{value!r} was written")


def test_a_record_round_trips() -> None:
    rec = ReservationRecord(
        "rsv_1", "active", "agent-\u00e9\ud800", "payments:x", "EUR", "10.00", None, "t",
        1796003541.0928783, 1796003601.0928783,
        (Line("b", "*", 1795996800, 1796083200, False, 10**18, "1.5", False),),
        (2**64,), "9.50", "EUR", None, 0.0, None, False)
    text = record_to_json(rec)
    assert text == _stdlib(rec)  # lone surrogate and huge int: the stdlib wrote it
    assert record_from_json(text) == rec
    plain = rec._replace(principal="agent-\u00e9", committed=(950,))
    assert json.loads(record_to_json(plain)) == json.loads(_stdlib(plain))
    assert record_from_json(record_to_json(plain)) == plain


def test_a_record_with_integers_past_64_bits_reads_them_as_integers() -> None:
    base = ReservationRecord(
        "rsv_2", "committed", "agent-1", "payments:x", "EUR", "10.00", None, None,
        1.5, 2.5, (Line("b", "*", 0, 86400, False, 5, None, False),), (5,), "9.50", "EUR",
        2.0, 0.0, None, False)
    line = base.lines[0]
    for rec in (base._replace(committed=(2**64,)),
                base._replace(committed=(-(2**63) - 1,)),
                base._replace(lines=(line._replace(amount=2**64),)),
                base._replace(lines=(line._replace(window=10**20, window_end=10**20),))):
        back = record_from_json(record_to_json(rec))
        assert back == rec
        assert [type(x) for x in back.committed or ()] == [int]
        assert all(type(back.lines[0][i]) is int for i in (2, 3, 5))
