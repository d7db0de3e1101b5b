"""Property tests: tampering never verifies; attenuation never widens."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine.permissions import permission_matches
from policyengine.tokens import AttenuationError, KeySet, TokenError, attenuate, mint, verify

NOW = 1767225600.0
KEYS = KeySet.generate()
ROOT = mint(KEYS, issuer="iss", acting_for="besar", agent="a",
            permissions=["flights:*", "payments:refund"], max_amount=("500", "EUR"),
            ttl=3600, now=NOW)
CHILD = attenuate(KEYS, ROOT, agent="b", permissions=["flights:book"], now=NOW)

segment = st.sampled_from(["flights", "flightsx", "payments", "refund", "book", "intl", "a"])
pattern = st.one_of(
    st.just("*"),
    st.lists(segment, min_size=1, max_size=3).map(":".join),
    st.lists(segment, min_size=1, max_size=2).map(lambda s: ":".join(s) + ":*"),
)
permission = st.lists(segment, min_size=1, max_size=4).map(":".join)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(token=st.sampled_from([ROOT, CHILD]), data=st.data())
def test_any_byte_change_never_verifies(token: str, data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(token) - 1))
    ch = data.draw(st.characters(codec="ascii"))
    mutated = token[:i] + ch + token[i + 1:]
    if mutated == token:
        return
    try:
        verify(KEYS, mutated, now=NOW)
    except TokenError:
        return
    raise AssertionError(f"mutated token verified (index {i}, {ch!r})")


@settings(max_examples=300)
@given(token=st.sampled_from([ROOT, CHILD]), cut=st.integers(1, 200))
def test_truncation_never_verifies(token: str, cut: int) -> None:
    try:
        verify(KEYS, token[:-cut], now=NOW)
    except TokenError:
        return
    raise AssertionError("truncated token verified")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(child_patterns=st.lists(pattern, min_size=1, max_size=3),
       probes=st.lists(permission, min_size=1, max_size=10))
def test_attenuation_never_widens(child_patterns: list[str], probes: list[str]) -> None:
    try:
        child = attenuate(KEYS, ROOT, agent="b", permissions=child_patterns, now=NOW)
    except AttenuationError as exc:
        assert exc.code == "permission_widened"
        return
    grant = verify(KEYS, child, now=NOW)
    parent = ["flights:*", "payments:refund"]
    for probe in probes:
        if any(permission_matches(p, probe) for p in child_patterns):
            assert any(permission_matches(p, probe) for p in parent)
        assert grant.covers(probe) == (
            any(permission_matches(p, probe) for p in child_patterns)
        )
