"""A secret just refused is refused again for a minute without a scrypt check: a client
retrying a wrong or stale key in a loop (or an attacker repeating one) costs a hash per
request, not 15-40 ms of CPU per configured entry. What was right stays right."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import Clock

from policyengine.server import Credentials, hash_secret
from policyengine.server import _credentials as creds_module

HASH = hash_secret("right")


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every scrypt check made, by the secret checked."""
    seen: list[str] = []
    real = creds_module.verify_secret

    def counting(secret: str, stored: str) -> bool:
        seen.append(secret)
        return real(secret, stored)

    monkeypatch.setattr(creds_module, "verify_secret", counting)
    yield seen


@pytest.fixture
def monotonic(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The shared clock as the monotonic time the credentials' refusal memory reads."""
    monkeypatch.setattr(creds_module.time, "monotonic", clock)
    return clock


def _credentials() -> Credentials:
    return Credentials.from_dict({
        "agents": [{"clientId": "c", "secretHash": HASH, "agent": "bot",
                    "ingestKeyHash": HASH}],
        "admins": [{"name": "ops", "secretHash": HASH}],
        "authzenClients": [{"name": "pep", "secretHash": HASH}],
        "apiKeys": [{"name": "ledger", "keyHash": HASH, "agent": "bot"}],
        "cyclesKeys": [{"name": "acme-prod", "keyHash": HASH, "tenant": "acme"},
                       {"name": "beta-prod", "keyHash": hash_secret("other"),
                        "tenant": "beta"}]})


CHECKS: dict[str, Callable[[Credentials, str], Any]] = {
    "cycles key": lambda c, s: c.check_cycles_key(s),
    "api key": lambda c, s: c.check_api_key(s),
    "ingest key": lambda c, s: c.check_ingest_key(s),
    "authzen client": lambda c, s: c.check_authzen_client(s),
    "admin": lambda c, s: c.check_admin("ops", s) or None,
    "client": lambda c, s: c.check_client("c", s),
}


@pytest.mark.parametrize("kind", sorted(CHECKS))
def test_a_refused_secret_is_refused_again_without_a_check_for_a_minute(
        kind: str, checks: list[str], monotonic: Clock) -> None:
    check, creds = CHECKS[kind], _credentials()
    assert check(creds, "wrong") is None
    first = len(checks)
    assert first >= 1  # the first sight is checked against the stored hashes
    for _ in range(5):
        assert check(creds, "wrong") is None
    assert len(checks) == first  # ... and not again within the minute
    monotonic.t += 61.0
    assert check(creds, "wrong") is None
    assert len(checks) == 2 * first  # a minute on, checked afresh


@pytest.mark.parametrize("kind", sorted(CHECKS))
def test_a_refusal_never_refuses_the_right_secret(kind: str, checks: list[str],
                                                  monotonic: Clock) -> None:
    check, creds = CHECKS[kind], _credentials()
    for wrong in ("wrong", "righ", "right ", "RIGHT"):
        assert check(creds, wrong) is None
    assert check(creds, "right") is not None
    assert check(creds, "right") is not None


def test_refusals_are_per_kind_and_per_name() -> None:
    """A secret refused as one kind of credential (or for one admin name) is still
    checked as another."""
    creds = Credentials.from_dict({
        "admins": [{"name": "ops", "secretHash": HASH}],
        "cyclesKeys": [{"name": "acme-prod", "keyHash": HASH, "tenant": "acme"}]})
    assert creds.check_admin("someone", "right") is False
    assert creds.check_admin("ops", "right") is True
    assert creds.check_authzen_client("right") is None
    found = creds.check_cycles_key("right")
    assert found is not None and found.tenant == "acme"


def test_the_memory_of_refusals_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Endless distinct wrong secrets keep at most 4,097 refusals (no public view of
    that memory exists: the private table is read)."""
    creds = _credentials()
    monkeypatch.setattr(creds_module, "verify_secret", lambda secret, stored: False)
    for i in range(5000):
        assert creds.check_authzen_client(f"k{i}") is None
    assert len(creds._refused) <= 4097
