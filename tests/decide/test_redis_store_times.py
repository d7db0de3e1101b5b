"""The Redis approval and revocation stores check their time options when opened, and
take them in their URL as their constructors do: ``RedisApprovalStore(keep_expired=,
timeout=)`` / ``redis://...?keep_expired=60&timeout=2``, ``RedisRevocationStore(timeout=)``
/ ``redis://...?timeout=2``. A bad value is ``invalid_approval_store`` /
``invalid_revocations`` at construction. Before, the approval store took any value (a
bad ``keep_expired`` failed every ``add`` later, a bad ``timeout`` the first command)
and neither URL took ``timeout`` (``unknown option``)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from conftest import REDIS_URL, drop_namespace, require_service, unique_name
from hypothesis import given
from hypothesis import strategies as st
from redis_waits import client_waits

from policyengine.decide import ApprovalError, approvals_from_url
from policyengine.decide._shared_approvals import RedisApprovalStore
from policyengine.tokens import TokenError
from policyengine.tokens._shared_revocation import RedisRevocationStore, revocations_from_url

# Nothing listens on port 1: a Redis approval store connects at its first command, so
# what is refused here is refused at construction, before any connection.
NO_REDIS = "redis://127.0.0.1:1/0"
MAX = 315_360_000
BAD = [float("nan"), float("inf"), -1, MAX + 1, 1e300, True, "5", None]


@pytest.mark.parametrize("value", BAD, ids=repr)
@pytest.mark.parametrize("name", ["keep_expired", "timeout"])
def test_a_bad_approval_time_is_refused_when_opened(name: str, value: object) -> None:
    with pytest.raises(ApprovalError) as info:
        RedisApprovalStore(NO_REDIS, **{name: value})
    assert info.value.code == "invalid_approval_store"
    assert info.value.message.startswith(f"{name}={value!r}: must be a number of seconds")


@given(keep=st.one_of(st.floats(), st.integers(-10, 2 * MAX)),
       timeout=st.one_of(st.floats(), st.integers(-10, 2 * MAX)))
def test_an_approval_time_opens_exactly_when_it_is_seconds(keep: float, timeout: float
                                                           ) -> None:
    good = (math.isfinite(keep) and 0 <= keep <= MAX
            and math.isfinite(timeout) and 0 < timeout <= MAX)
    try:
        store = RedisApprovalStore(NO_REDIS, keep_expired=keep, timeout=timeout)
    except ApprovalError as err:
        assert err.code == "invalid_approval_store" and not good
        return
    assert good and store.keep_expired == keep and client_waits(store) == (timeout, timeout)
    store.close()


def test_the_approval_url_takes_the_constructors_options() -> None:
    store = approvals_from_url(f"{NO_REDIS}?prefix=p:&keep_expired=60&timeout=2.5")
    assert (store.prefix, store.keep_expired, client_waits(store)) == ("p:", 60, (2.5, 2.5))
    store.close()
    # a keyword argument overrides the URL's, as for the budget stores
    store = approvals_from_url(f"{NO_REDIS}?timeout=2.5", timeout=1)
    assert client_waits(store) == (1, 1)
    store.close()


@pytest.mark.parametrize("query", ["timeout=0", "timeout=nan", "timeout=abc",
                                   "keep_expired=-1", "keep_expired=inf",
                                   "timeout=1&timeout=2"])
def test_a_bad_approval_url_time_is_refused(query: str) -> None:
    with pytest.raises(ApprovalError) as info:
        approvals_from_url(f"{NO_REDIS}?{query}")
    assert info.value.code == "invalid_approval_store"
    assert query.split("=")[0] in info.value.message
    assert "unknown option" not in info.value.message  # read, and its value refused


@pytest.fixture
def prefix() -> Iterator[str]:
    require_service("redis")
    base = unique_name("revtime")
    yield base
    drop_namespace("redis", base)


def test_the_revocation_url_takes_timeout(prefix: str) -> None:
    store = revocations_from_url(f"{REDIS_URL}?prefix={prefix}:&timeout=2.5&create=true")
    try:
        assert isinstance(store, RedisRevocationStore) and client_waits(store) == (2.5, 2.5)
        store.revoke("g-1")
        assert store.is_revoked("g-1")
    finally:
        store.close()


@pytest.mark.parametrize("query", ["timeout=0", "timeout=nan", "timeout=-1",
                                   "timeout=1&timeout=2"])
def test_a_bad_revocation_url_time_is_refused(query: str) -> None:
    with pytest.raises(TokenError) as info:
        revocations_from_url(f"{NO_REDIS}?{query}")
    assert info.value.code == "invalid_revocations"
    assert "timeout" in info.value.message
    assert "unknown option" not in info.value.message  # read, and its value refused
