"""``amount_unconvertible`` keeps the rate error it wraps, on every path that raises it.

``attenuate`` and ``Grant.amount_fits`` raise it ``from`` the RateError / MoneyError the
conversion gave; ``verify`` located the error in the chain (``hop 1 ... against its
parent: ...``) and dropped that cause, so a caller of verify could not tell ``no_rate``
from ``invalid_rate``. The three now agree: same code, the cause's class and code."""

from __future__ import annotations

from typing import Any

import pytest
from rate_answers import Answers

from policyengine.money import Money, RateError, StaticRates
from policyengine.tokens import AttenuationError, KeySet, TokenError, attenuate, mint, verify

NOW = 1767225600.0
GOOD = StaticRates("EUR", {"USD": "0.92"})


def _chain(keys: KeySet) -> tuple[str, str]:
    parent = mint(keys, issuer="iss", acting_for="besar", agent="a",
                  permissions=["flights:*"], max_amount=("500", "EUR"), ttl=3600, now=NOW)
    child = attenuate(keys, parent, agent="b", permissions=["flights:book"],
                      max_amount=("100", "USD"), rates=GOOD, now=NOW)
    return parent, child


SOURCES = [
    pytest.param(StaticRates("EUR", {}), "no_rate", id="no-rate"),
    pytest.param(Answers(RateError("invalid_rate", "bad")), "invalid_rate", id="rate-error"),
    pytest.param(Answers(KeyError("boom")), "no_rate", id="other-exception"),
    pytest.param(Answers(RateError("stale_rate", "old")), "stale_rate", id="stale"),
]


@pytest.mark.parametrize(("rates", "cause_code"), SOURCES)
def test_the_three_paths_keep_the_same_cause(rates: Any, cause_code: str) -> None:
    keys = KeySet.generate()
    parent, child = _chain(keys)
    raised: list[TokenError] = []
    with pytest.raises(AttenuationError) as att:
        attenuate(keys, parent, agent="b", permissions=["flights:book"],
                  max_amount=("100", "USD"), rates=rates, now=NOW)
    raised.append(att.value)
    with pytest.raises(AttenuationError) as ver:
        verify(keys, child, rates=rates, now=NOW)
    raised.append(ver.value)
    grant = verify(keys, parent, now=NOW)
    with pytest.raises(TokenError) as fits:
        grant.amount_fits(Money.parse("1", "USD"), rates, now=NOW)
    raised.append(fits.value)
    for exc in raised:
        assert exc.code == "amount_unconvertible", exc
        cause = exc.__cause__
        assert isinstance(cause, RateError), (exc, cause)
        assert cause.code == cause_code
        assert cause.message in exc.message
    assert ver.value.message.startswith("hop 1 (held by 'b') against its parent: ")


def test_verify_without_rates_has_no_cause() -> None:
    """No rates at all: nothing was asked, so there is no cause (as attenuate)."""
    keys = KeySet.generate()
    parent, child = _chain(keys)
    with pytest.raises(AttenuationError) as ver:
        verify(keys, child, now=NOW)
    with pytest.raises(AttenuationError) as att:
        attenuate(keys, parent, agent="b", permissions=["flights:book"],
                  max_amount=("100", "USD"), now=NOW)
    assert ver.value.code == att.value.code == "amount_unconvertible"
    assert ver.value.__cause__ is None and att.value.__cause__ is None
