"""Fixtures: a live decision service on 127.0.0.1 and a loopback upstream."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from policyengine.server import AgentCredential, ApiKey, Credentials, hash_secret

from .service_harness import (
    ADMIN,
    API_KEY,
    INGEST_KEY,
    SECRETS,
    Running,
    Upstream,
    make_service,
    serving,
)


@pytest.fixture(scope="session")
def credentials() -> Credentials:
    hashes = {cid: hash_secret(s) for cid, s in SECRETS.items()}
    return Credentials(
        (AgentCredential("key_travel", hashes["key_travel"], "travel-agent",
                         ("flights:*", "payments:refund", "llm:*"),
                         ingest_key_hash=hash_secret(INGEST_KEY)),
         AgentCredential("key_hotel", hashes["key_hotel"], "hotel-agent",
                         ("flights:search",)),
         AgentCredential("key_demo", hashes["key_demo"], "demo-agent", ("llm:*",))),
        {ADMIN[0]: hash_secret(ADMIN[1])},
        api_keys=(ApiKey("travel-api", hash_secret(API_KEY), "travel-agent"),))


@pytest.fixture(scope="session")
def service(credentials: Credentials) -> Iterator[Running]:
    app = make_service(credentials)
    with serving(app) as port:
        yield Running(app, port)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    u = Upstream()
    try:
        yield u
    finally:
        u.close()
