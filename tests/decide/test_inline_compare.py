"""Comparisons with a literal are generated inline behind a ``type(x) is`` test (the
helpers' own fast path); every value must still get exactly the helper's answer.

Differential: for random values of every kind (numbers of each type, booleans, strings
and their subclasses, lists, records, null, huge integers), a permit on ``context.x OP
literal`` (and ``literal OP context.x``, ``context.x in [...]``) allows exactly when the
runtime helper returns true, and denies with the helper's error code when it raises.
"""

from __future__ import annotations

import enum
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine.decide._runtime import RUNTIME, EvalError
from policyengine.engine import Engine

HELPER = {"<": "_lt", "<=": "_le", ">": "_gt", ">=": "_ge", "==": "_eq", "!=": "_ne"}
INT_LITERALS = (0, 5, -3, 10**30)
STR_LITERALS = ("a", "")
IN_LISTS = (("KP", "IR"), ("",))


class Level(enum.IntEnum):
    HIGH = 9


class Tag(str, enum.Enum):
    A = "a"


def _cases() -> list[tuple[str, str, Any]]:
    """(permission, condition text, reference of the permit's condition)."""
    out: list[tuple[str, str, Any]] = []

    def ref_right(op: str, k: Any) -> Any:
        return lambda x: RUNTIME[HELPER[op]](x, k)

    def ref_left(op: str, k: Any) -> Any:
        return lambda x: RUNTIME[HELPER[op]](k, x)

    for op in HELPER:
        for k in INT_LITERALS:
            out.append((f"t:r{len(out)}", f"context.x {op} {k}", ref_right(op, k)))
            out.append((f"t:l{len(out)}", f"{k} {op} context.x", ref_left(op, k)))
    for op in ("==", "!="):
        for s in STR_LITERALS:
            out.append((f"t:s{len(out)}", f'context.x {op} "{s}"', ref_right(op, s)))
            out.append((f"t:z{len(out)}", f'"{s}" {op} context.x', ref_left(op, s)))
    for items in IN_LISTS:
        text = "[" + ", ".join(f'"{i}"' for i in items) + "]"
        strings = frozenset(items)

        def member(x: Any, strings: frozenset[str] = strings,
                   items: tuple[str, ...] = items) -> Any:
            return RUNTIME["_in_lit"](x, strings, items)

        def not_member(x: Any, member: Any = member) -> Any:
            return not member(x)

        out.append((f"t:i{len(out)}", f"context.x in {text}", member))
        out.append((f"t:n{len(out)}", f"context.x not in {text}", not_member))
    return out


CASES = _cases()
ENGINE = Engine.from_source(
    'role r: other:x\nagent "bot": r\n'
    + "".join(f"permit p{i}: {perm} when {cond}\n" for i, (perm, cond, _) in enumerate(CASES)))

scalars = st.one_of(
    st.integers(), st.integers(min_value=-10, max_value=10), st.just(10**30),
    st.just(2**50000), st.booleans(), st.text(max_size=3), st.sampled_from(["a", "", "KP"]),
    st.floats(allow_nan=True, allow_infinity=True), st.decimals(allow_nan=False, places=2),
    st.just(Decimal("5")), st.just(5.0), st.none(), st.just(Level.HIGH), st.just(Tag.A),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3),
                   st.dictionaries(st.text(max_size=2), scalars, max_size=2))


def expected(reference: Any, x: Any) -> str:
    try:
        return "allowed" if reference(x) is True else "no_permit"
    except EvalError as err:
        return f"error:{err.code}"


def outcome(permission: str, x: Any) -> str:
    decision = ENGINE.authorize("bot", permission, {"x": x})
    if decision.allowed:
        return "allowed"
    assert decision.code == "no_permit"
    if decision.diagnostics:
        return f"error:{decision.diagnostics[0].code}"
    return "no_permit"


@settings(max_examples=300, deadline=None)
@given(values)
def test_inline_comparisons_agree_with_the_helpers(x: Any) -> None:
    for permission, cond, reference in CASES:
        assert outcome(permission, x) == expected(reference, x), (cond, x)


def test_the_fast_path_is_taken_and_answers_right() -> None:
    """The plain cases the inline branch serves, spelled out."""
    assert outcome(CASES[0][0], -1) == "allowed"  # context.x < 0
    assert outcome(CASES[0][0], 0) == "no_permit"
    assert outcome(CASES[0][0], True).startswith("error:")  # a boolean is not a number
    assert outcome(CASES[0][0], Level.HIGH) == "no_permit"  # IntEnum 9 < 0: by value
    assert outcome(CASES[0][0], Decimal("-0.5")) == "allowed"
