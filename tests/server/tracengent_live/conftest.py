"""Run tracengent's own live suite against the decision service: start the service on a
free loopback port and point the suite's TRACENGENT_TEST_* variables at it. The variables
are set when this conftest is imported, which pytest does before it imports the suite
(the suite reads them at import time)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from policyengine.server import AgentCredential, Credentials, hash_secret

from ..service_harness import SECRETS, free_port, make_service, serving

_PORT = free_port()
_ENV = {"TRACENGENT_TEST_BASE_URL": f"http://127.0.0.1:{_PORT}",
        "TRACENGENT_TEST_CLIENT_ID": "key_demo",
        "TRACENGENT_TEST_CLIENT_SECRET": SECRETS["key_demo"],
        "TRACENGENT_TEST_AGENT_ID": "demo-agent"}
os.environ.update(_ENV)


@pytest.fixture(scope="module", autouse=True)
def live_service() -> Iterator[None]:
    credentials = Credentials((AgentCredential(
        "key_demo", hash_secret(SECRETS["key_demo"]), "demo-agent", ("llm:*",)),))
    app = make_service(credentials)
    with serving(app, _PORT):
        yield
    for name in _ENV:
        os.environ.pop(name, None)
