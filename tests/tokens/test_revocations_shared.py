"""Revocations shared between hosts (PostgreSQL, Redis): a revocation on one host stops
the token on another within the refresh interval; a host that cannot refresh refuses
tokens after ``max_stale`` instead of trusting its stale list."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
import redis
from conftest import POSTGRES_URL, REDIS_URL, require_service, unique_name

from policyengine.engine import Engine
from policyengine.tokens import (
    KeySet,
    MemoryRevocationStore,
    PostgresRevocationStore,
    RedisRevocationStore,
    TokenError,
    mint,
    revocations_from_url,
    verify,
)

ISSUER = "https://auth.example"


class Monotonic:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["postgres", "redis"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A revocation store URL in a namespace of its own, dropped afterwards."""
    require_service(request.param)
    name = unique_name("rev")
    if request.param == "postgres":
        yield f"{POSTGRES_URL}?schema={name}"
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    else:
        yield f"{REDIS_URL}?prefix={name}:"
        client = redis.Redis.from_url(REDIS_URL)
        client.delete(f"{name}:revoked")
        client.close()


def test_a_revocation_on_one_host_stops_the_token_on_another_within_refresh(url: str) -> None:
    clock_a, clock_b = Monotonic(), Monotonic()
    host_a = revocations_from_url(url, refresh=1.0, monotonic=clock_a)
    host_b = revocations_from_url(url, refresh=1.0, monotonic=clock_b)
    keys = KeySet.generate()
    token = mint(keys, issuer=ISSUER, acting_for="besar", agent="bot",
                 permissions=["docs:*"], ttl=600)
    grant = verify(keys, token, revocations=host_b)
    host_a.revoke(grant.grant_id)
    with pytest.raises(TokenError) as info:
        verify(keys, token, revocations=host_a)  # at once where it was revoked
    assert info.value.code == "revoked"
    clock_b.t += 0.5
    verify(keys, token, revocations=host_b)  # within the refresh interval: not yet seen
    clock_b.t += 0.5
    with pytest.raises(TokenError) as info:
        verify(keys, token, revocations=host_b)  # refreshed: revoked everywhere
    assert info.value.code == "revoked"
    fresh = revocations_from_url(url)
    assert fresh.is_revoked(grant.grant_id) and len(fresh) == 1


def test_a_host_that_cannot_refresh_refuses_tokens_after_max_stale(url: str) -> None:
    clock = Monotonic()
    store = revocations_from_url(url, refresh=1.0, max_stale=5.0, monotonic=clock)
    keys = KeySet.generate()
    engine = Engine.from_source(
        'namespace t\nrole reader: docs:*\nagent "bot": reader\n'
        'delegation { issuer "https://auth.example" }\n',
        keys=keys, revocations=store,
    )
    token = mint(keys, issuer=ISSUER, acting_for="besar", agent="bot",
                 permissions=["docs:*"], ttl=600)
    assert engine.authorize("bot", "docs:read", token=token).allowed
    # The server goes away: point the store at a closed port.
    if isinstance(store, PostgresRevocationStore):
        store.close()
        store.url = "postgresql://postgres@127.0.0.1:1/test"
    else:
        assert isinstance(store, RedisRevocationStore)
        store._redis = redis.Redis.from_url("redis://127.0.0.1:1/0")
    clock.t += 4.0  # refresh fails, but the list is 4 s old: still answered
    assert engine.authorize("bot", "docs:read", token=token).allowed
    clock.t += 2.0  # 6 s since the last refresh
    decision = engine.authorize("bot", "docs:read", token=token)
    assert not decision.allowed and decision.code == "invalid_token"
    assert "revocation_unavailable" in (decision.reason or "")
    with pytest.raises(TokenError) as info:
        store.revoke("grant-x")
    assert info.value.code == "revocation_unavailable"


def test_revocation_urls() -> None:
    assert isinstance(revocations_from_url("memory:"), MemoryRevocationStore)
    for bad in ("", "mysql://x/y", "file:///r.json"):
        with pytest.raises(TokenError) as info:
            revocations_from_url(bad)
        assert info.value.code == "invalid_revocations"
