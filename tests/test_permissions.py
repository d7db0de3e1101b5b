"""Permission matching (identical to the agent SDKs' matcher), subsumption, validation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import policyengine
from policyengine.permissions import (
    InvalidPermission,
    is_valid_pattern,
    is_valid_permission,
    permission_matches,
    subsumes,
    validate_permission,
)


def sdk_matches(pattern: str, permission: str) -> bool:
    """The SDK rule, written from WIRE.md's sentence and nothing else.

    "A granted pattern matches a permission when the pattern is `*`, equal to the
    permission, or ends in `:*` and the permission starts with the pattern minus its
    final `*`."
    """
    if pattern == "*":
        return True
    if pattern == permission:
        return True
    if len(pattern) >= 2 and pattern[-2:] == ":*":
        stem = pattern[: len(pattern) - 1]
        return permission[: len(stem)] == stem
    return False


SEGMENTS = ["a", "b", "ab", "A", "", "*", "a.b", "x-y"]
segment_lists = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4)
patterns = st.one_of(
    st.just("*"),
    st.just(""),
    segment_lists.map(":".join),
    segment_lists.map(lambda s: ":".join(s) + ":*"),
    st.text(alphabet="aAb:*.", max_size=7),
)
permissions = st.one_of(
    segment_lists.map(":".join),
    st.text(alphabet="aAb:*.", max_size=7),
    st.text(max_size=5),
)


@pytest.mark.parametrize(
    ("pattern", "permission", "expected"),
    [
        ("*", "anything:at:all", True),
        ("*", "", True),
        ("flights:*", "flights:book", True),
        ("flights:*", "flights:intl:book", True),
        ("flights:*", "flightsx:book", False),
        ("flights:*", "flights", False),
        ("flights:*", "flights:", True),  # SDK quirk: starts with "flights:"
        ("flights:book", "flights:book", True),
        ("flights:book", "flights:Book", False),
        ("Flights:*", "flights:book", False),
        ("flights*", "flights:book", False),
        ("flights:b*", "flights:book", False),
        ("", "", True),
        ("", "a", False),
        ("a:*", "a:*", True),
        (":*", ":x", True),
        ("*:*", "a:b", False),
    ],
)
def test_permission_matches_examples(pattern: str, permission: str, expected: bool) -> None:
    assert permission_matches(pattern, permission) is expected
    assert sdk_matches(pattern, permission) is expected


@settings(max_examples=300)
@given(patterns, permissions)
def test_permission_matches_is_the_sdk_rule(pattern: str, permission: str) -> None:
    assert permission_matches(pattern, permission) is sdk_matches(pattern, permission)


@settings(max_examples=200)
@given(st.text(max_size=6), st.text(max_size=6))
def test_permission_matches_is_the_sdk_rule_on_any_text(pattern: str, permission: str) -> None:
    assert permission_matches(pattern, permission) is sdk_matches(pattern, permission)
    assert permission_matches(pattern + ":*", permission) is sdk_matches(pattern + ":*",
                                                                          permission)


def test_public_names_are_the_same_functions() -> None:
    assert policyengine.permission_matches is permission_matches
    assert policyengine.subsumes is subsumes


def witness_candidates(narrow: str, wide: str) -> list[str]:
    """Permissions that could show ``narrow`` grants something ``wide`` does not."""
    stem = narrow[:-1]
    return [narrow, stem, stem + "x", stem + "y", "\x00" + wide, "\x00" + narrow]


@settings(max_examples=300)
@given(patterns, patterns, permissions)
def test_subsumes_is_sound(narrow: str, wide: str, permission: str) -> None:
    if subsumes(narrow, wide) and sdk_matches(narrow, permission):
        assert sdk_matches(wide, permission)
    # The generated candidates probe the boundaries that random text rarely hits.
    if subsumes(narrow, wide):
        for p in witness_candidates(narrow, wide):
            if sdk_matches(narrow, p):
                assert sdk_matches(wide, p), (narrow, wide, p)


@settings(max_examples=300)
@given(patterns, patterns)
def test_subsumes_is_complete(narrow: str, wide: str) -> None:
    """Whenever subsumes says no, there is a permission ``narrow`` grants and ``wide`` not."""
    if subsumes(narrow, wide):
        return
    witnesses = [p for p in witness_candidates(narrow, wide)
                 if sdk_matches(narrow, p) and not sdk_matches(wide, p)]
    assert witnesses, (narrow, wide)


@settings(max_examples=200)
@given(patterns)
def test_subsumes_is_reflexive_and_star_is_top(pattern: str) -> None:
    assert subsumes(pattern, pattern)
    assert subsumes(pattern, "*")


@settings(max_examples=200)
@given(patterns, patterns, patterns)
def test_subsumes_is_transitive(a: str, b: str, c: str) -> None:
    if subsumes(a, b) and subsumes(b, c):
        assert subsumes(a, c)


@pytest.mark.parametrize(
    ("narrow", "wide", "expected"),
    [
        ("flights:intl:*", "flights:*", True),
        ("flights:book", "flights:*", True),
        ("flights:*", "flights:book", False),
        ("flights:*", "flightsx:*", False),
        ("flightsx:*", "flights:*", False),
        ("*", "flights:*", False),
        ("flights:*", "*", True),
        ("flights:*", "flights:*", True),
        ("a:b", "a:c", False),
    ],
)
def test_subsumes_examples(narrow: str, wide: str, expected: bool) -> None:
    assert subsumes(narrow, wide) is expected


@pytest.mark.parametrize("good", ["a", "a:b", "payments:refund", "a.b-c_d:E9", "x" * 256])
def test_validate_permission_accepts(good: str) -> None:
    assert validate_permission(good) == good
    assert is_valid_permission(good)


@pytest.mark.parametrize(
    "bad",
    ["", "a:", ":a", "a::b", "a:*", "*", "a b", "a:b\n", "é:a", "a/b", "x" * 257, "a:b*"],
)
def test_validate_permission_rejects_malformed_text(bad: str) -> None:
    assert not is_valid_permission(bad)
    with pytest.raises(InvalidPermission) as info:
        validate_permission(bad)
    assert info.value.code == "invalid_permission"
    assert isinstance(info.value, ValueError)


class _Str(str):
    pass


@pytest.mark.parametrize("bad", [None, 1, 1.5, b"a:b", ["a:b"], _Str("a:b")])
def test_validate_permission_rejects_non_strings(bad: object) -> None:
    assert not is_valid_permission(bad)
    with pytest.raises(InvalidPermission) as info:
        validate_permission(bad)
    assert info.value.code == "invalid_permission"


@pytest.mark.parametrize(
    ("pattern", "valid"),
    [("*", True), ("a:*", True), ("a:b:*", True), ("a:b", True), ("a*", False),
     ("*:a", False), ("a:*:b", False), (":*", False), ("", False), ("**", False),
     ("a:**", False)],
)
def test_is_valid_pattern(pattern: str, valid: bool) -> None:
    assert is_valid_pattern(pattern) is valid
