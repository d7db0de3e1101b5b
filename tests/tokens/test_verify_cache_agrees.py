"""``verify`` answers a call the same whether its cache holds the token or not: the same
grant, or the same error code, on the first call and on every later one.

The cache is keyed on the token string and the options compared by equality, so before
options were checked on every call a value the full path refuses but that equals one it
accepted (``max_depth=True`` after ``1``, ``Decimal(3600)`` after ``3600``, a ``str``
subclass after its text) found the accepted entry; and ``now`` and ``rates`` are no part
of the key at all (``rates={"base": ..., "rates": ...}``, a rate table as JSON rather than
a source, or ``now=Decimal(...)``, passed once the token was cached). Expiry and
revocation are checked on every call, cached or not.

The reference for each call is the same call on a key set with an empty cache.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine.money._rates import StaticRates
from policyengine.tokens import KeySet, MemoryRevocationStore, TokenError, mint, revoke, verify

NOW = 1767225600  # 2026-01-01T00:00:00Z
ISS = "https://auth.example"
AUD = "https://api.example"
KEYS = KeySet.generate()
#: The same keys with a cache of their own, emptied before each reference call.
COLD = KeySet.load_jwks(KEYS.to_jwks(private=True))
TOKEN = mint(KEYS, issuer=ISS, acting_for="besar", agent="travel-agent",
             permissions=["flights:*"], ttl=3600, now=NOW, audience=AUD, max_depth=3)
GRANT_ID = verify(KEYS, TOKEN, now=NOW, audience=AUD).grant_id


class Text(str):
    """A ``str`` subclass: equal to (and hashed like) its text, refused as an option."""


RATES = StaticRates("EUR", {"USD": "0.92"})

#: (option, value the full path refuses, an equal-or-absent value it accepts, code).
BAD_OPTIONS: list[tuple[str, object, object, str]] = [
    ("rates", {"base": "EUR", "rates": {"USD": "0.92"}}, RATES, "invalid_option"),
    ("rates", {"base": "EUR", "rates": {"USD": "0.92"}}, None, "invalid_option"),
    ("rates", "EUR", None, "invalid_option"),
    ("rates", [["USD", "0.92"]], None, "invalid_option"),
    ("rates", 0.92, None, "invalid_option"),
    ("max_depth", True, 1, "invalid_option"),
    ("max_depth", 3.0, 3, "invalid_option"),
    ("max_depth", Decimal(3), 3, "invalid_option"),
    ("max_ttl", Decimal(3600), 3600, "invalid_option"),
    ("max_ttl", Fraction(7200), 7200, "invalid_option"),
    ("child_max_ttl", Decimal(600), 600, "invalid_option"),
    ("now", Decimal(NOW + 10), NOW + 10, "invalid_option"),
    ("now", Fraction(NOW + 10), NOW + 10, "invalid_option"),
    ("now", True, NOW, "invalid_option"),
    ("issuer", Text(ISS), ISS, "invalid_option"),
    ("audience", Text(AUD), AUD, "invalid_option"),
    ("revocations", 5, None, "invalid_option"),
    ("token", Text(TOKEN), TOKEN, "malformed"),
]


def _call(keys: KeySet, **options: Any) -> str:
    """``verify``'s answer as text: the grant's subject, or the error code."""
    token = options.pop("token", TOKEN)
    options.setdefault("now", NOW)
    options.setdefault("audience", AUD)
    try:
        return "grant:" + verify(keys, token, **options).subject
    except TokenError as exc:
        return exc.code


def _cold(**options: Any) -> str:
    COLD.clear_cache()
    return _call(COLD, **options)


@pytest.mark.parametrize(("option", "bad", "good", "code"), BAD_OPTIONS,
                         ids=[f"{o}={b!r}"[:40] for o, b, _, _ in BAD_OPTIONS])
def test_a_refused_option_is_refused_on_every_call(option: str, bad: object, good: object,
                                                   code: str) -> None:
    KEYS.clear_cache()
    assert _call(KEYS, **{option: bad}) == code          # first call: nothing cached
    assert _call(KEYS, **{option: bad}) == code          # second call
    assert _call(KEYS, **{option: good}) == "grant:travel-agent"
    assert KEYS.cached_verifications == 1                # the token is cached now
    assert _call(KEYS, **{option: bad}) == code          # and still refused
    assert _call(KEYS, **{option: bad}) == _cold(**{option: bad}) == code


def test_a_refused_call_caches_nothing() -> None:
    KEYS.clear_cache()
    for option, bad, _, _ in BAD_OPTIONS:
        _call(KEYS, **{option: bad})
    assert KEYS.cached_verifications == 0


def test_expiry_and_revocation_are_checked_on_every_call() -> None:
    KEYS.clear_cache()
    store = MemoryRevocationStore()
    assert _call(KEYS, revocations=store) == "grant:travel-agent"
    assert _call(KEYS, now=NOW + 3600 + 61) == _cold(now=NOW + 3600 + 61) == "expired"
    assert _call(KEYS, now=NOW - 61) == _cold(now=NOW - 61) == "not_yet_valid"
    revoke(store, GRANT_ID)
    for _ in range(2):
        assert _call(KEYS, revocations=store) == _cold(revocations=store) == "revoked"


# ------------------------------------------------------------------ any order of calls

#: Values each option takes in the calls below: accepted, refused, and equal to each other.
_VALUES: dict[str, list[object]] = {
    "now": [NOW, NOW + 3000, NOW + 3600 + 61, NOW - 61, Decimal(NOW), float("nan")],
    "rates": [RATES, {"base": "EUR", "rates": {"USD": "0.92"}}, "EUR"],
    "max_depth": [3, 0, True, Decimal(3)],
    "max_ttl": [3600, 3600.0, 60, Decimal(3600)],
    "child_max_ttl": [600, Fraction(600)],
    "issuer": [ISS, Text(ISS), "https://other.example"],
    "audience": [AUD, Text(AUD), None],
    "leeway": [0, 60.0, True],
    "token": [TOKEN, Text(TOKEN)],
}


@settings(max_examples=150, deadline=None)
@given(calls=st.lists(st.dictionaries(st.sampled_from(sorted(_VALUES)), st.integers(0, 5),
                                      max_size=4), min_size=1, max_size=8),
       revoke_at=st.integers(0, 8))
def test_every_call_answers_as_on_an_empty_cache(calls: list[dict[str, int]],
                                                 revoke_at: int) -> None:
    """Whatever calls came before (filling the cache or not), a call answers what the
    same call answers with nothing cached; a revocation on the way stops both."""
    KEYS.clear_cache()
    store = MemoryRevocationStore()
    for n, drawn in enumerate(calls):
        if n == revoke_at:
            revoke(store, GRANT_ID)
        options: dict[str, Any] = {name: _VALUES[name][i % len(_VALUES[name])]
                                   for name, i in drawn.items()}
        options["revocations"] = store
        assert _call(KEYS, **options) == _cold(**options), options
