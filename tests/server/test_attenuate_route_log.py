"""``POST /v1/delegations/{grant_id}/attenuate`` logs the new grant with the agent id
the caller chose. An agent id is any text (1 to 256 characters), so a line break in it
must not start a line of its own in the service log: before, a holder of any grant could
write a forged line (an access-log JSON record, say) into the log."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest

import policyengine as pe
from policyengine.server import Credentials

from .service_harness import Running, make_service, serving

FORGED = '{"ts": 1, "method": "POST", "route": "admin_approve", "status": 200}'


@pytest.fixture
def running(credentials: Credentials) -> Iterator[Running]:
    app = make_service(credentials)
    with serving(app) as port:
        yield Running(app, port)


def test_the_agent_id_cannot_write_a_log_line(running: Running,
                                              caplog: pytest.LogCaptureFixture) -> None:
    keys = running.app.engine.keys
    token = pe.tokens.mint(keys, issuer="https://auth.example", acting_for="besar",
                           agent="travel-agent", permissions=["flights:*"], ttl=600)
    grant_id = pe.tokens.verify(keys, token).grant_id
    agent = f"hotel-agent\n{FORGED}\r\u2028"
    with caplog.at_level(logging.INFO, "policyengine.server"):
        r = httpx.post(f"{running.url}/v1/delegations/{grant_id}/attenuate",
                       json={"grantedToAgentId": agent, "permissions": ["flights:book"]},
                       headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text  # an agent id is any text
    child = pe.tokens.verify(keys, r.json()["token"]["accessToken"])
    assert child.subject == agent
    lines = [rec.getMessage() for rec in caplog.records
             if rec.name == "policyengine.server" and "attenuated" in rec.getMessage()]
    assert len(lines) == 1
    assert not any(c in lines[0] for c in "\n\r\u2028")
    assert lines[0] == (f"grant {grant_id!r} attenuated to {child.grant_id!r} "
                        f"for {agent!r}")
    assert FORGED not in lines[0].splitlines()
