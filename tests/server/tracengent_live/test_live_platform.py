"""End-to-end integration test against a *live* Tracengent platform.

Skipped unless ``TRACENGENT_TEST_BASE_URL`` (and agent credentials) are provided — e.g. pointing at
the ``deploy/docker-compose`` stack with a pre-seeded org + agent credential (seed via DbContext +
IJwtTokenService, as the .NET integration tests do; do not drive /v1/auth/register over HTTP).

    export TRACENGENT_TEST_BASE_URL=http://localhost:8080
    export TRACENGENT_TEST_CLIENT_ID=key_...
    export TRACENGENT_TEST_CLIENT_SECRET=ags_...
    pytest -m integration
"""

import os

import pytest

from tracengent import LlmCallResult, TracengentClient, TracengentOptions

_BASE = os.getenv("TRACENGENT_TEST_BASE_URL")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (
            _BASE
            and os.getenv("TRACENGENT_TEST_CLIENT_ID")
            and os.getenv("TRACENGENT_TEST_CLIENT_SECRET")
        ),
        reason="set TRACENGENT_TEST_BASE_URL + TRACENGENT_TEST_CLIENT_ID/SECRET to run",
    ),
]


def _client() -> TracengentClient:
    return TracengentClient(
        TracengentOptions(
            agent_id=os.getenv("TRACENGENT_TEST_AGENT_ID", "demo-agent"),
            base_url=_BASE,
            client_id=os.environ["TRACENGENT_TEST_CLIENT_ID"],
            client_secret=os.environ["TRACENGENT_TEST_CLIENT_SECRET"],
        )
    )


def test_token_acquisition():
    with _client() as client:
        assert client.token_provider.get_token() is not None


def test_trace_and_events_round_trip():
    with _client() as client:
        with client.begin_trace("integration smoke") as trace:
            trace.step("starting")
            assert trace.track_tool_call("noop", lambda: 1) == 1
            trace.track_llm_call(
                "summarize", lambda: LlmCallResult("ok", tokens=10, model="test")
            )
        # Flushing on context exit must not raise.


def test_authorize_returns_a_decision():
    with _client() as client:
        decision = client.authorize("flights:book", {"amount": 1})
        assert decision.status in ("allowed", "denied", "pending_approval")
