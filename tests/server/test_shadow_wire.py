"""Shadow outcomes on the service's wire: ``mode warn`` in the response under
``shadow``, ``mode log`` never, and no ``shadow`` key at all without a warn outcome."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

import policyengine as pe
from policyengine.server import ServiceConfig, create_app

from .budget_harness import POLICY, TRACENGENT, Live, credentials
from .service_harness import serving

SHADOWS = """
forbid big-run: llm:run when context.n > 5 mode warn
forbid quiet: llm:run when context.n > 5 mode log
"""


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    engine = pe.Engine.from_source(POLICY + SHADOWS)
    app = create_app(engine, credentials=credentials(), config=ServiceConfig(
        access_log=False))
    with serving(app) as port:
        yield Live(app, engine, port)


def authorize(live: Live, context: dict[str, object]) -> dict[str, object]:
    with httpx.Client(base_url=live.url) as http:
        token = http.post("/v1/oauth/token", data={
            "grant_type": "client_credentials", "client_id": TRACENGENT[0],
            "client_secret": TRACENGENT[1]}).json()["access_token"]
        r = http.post("/v1/authorize", json={"permission": "llm:run", "context": context},
                      headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 200
    body: dict[str, object] = r.json()
    return body


def test_warn_outcomes_are_in_the_response_log_ones_are_not(live: Live) -> None:
    body = authorize(live, {"n": 9})
    assert (body["status"], body["reasonCode"]) == ("allowed", "permitted")
    assert body["shadow"] == [{"id": "wires.big-run", "kind": "rule", "mode": "warn",
                               "status": "denied", "code": "forbidden"}]


def test_no_warn_outcome_means_no_shadow_key(live: Live) -> None:
    body = authorize(live, {"n": 1})
    assert body["status"] == "allowed" and "shadow" not in body
    assert "budget" in body  # the other optional keys are as they were (null)


def test_authzen_answers_carry_warn_outcomes_in_their_context() -> None:
    from policyengine.server._authzen import evaluate
    engine = pe.Engine.from_source(
        'role r: todo:*\nagent "ann": r\n'
        'forbid no-delete: todo:delete when context.resource.id == "1" mode warn\n'
        'forbid hush: todo:delete mode log\n')
    req = {"subject": {"type": "user", "id": "ann"}, "action": {"name": "delete"},
           "resource": {"type": "todo", "id": "1"}}
    out = evaluate(engine, req)
    assert out["decision"] is True
    assert out["context"]["shadow"] == [{"id": "default.no-delete", "kind": "rule",
                                         "mode": "warn", "status": "denied",
                                         "code": "forbidden"}]
    quiet = evaluate(engine, {**req, "resource": {"type": "todo", "id": "2"}})
    assert quiet["decision"] is True and "shadow" not in quiet["context"]
