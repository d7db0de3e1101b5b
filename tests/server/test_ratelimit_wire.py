"""Rate limits on the service's wire: an authorize response carries ``rateLimit`` (with
its retry-after) only when the request was rate limited; otherwise the key is absent."""

from __future__ import annotations

from typing import Any

import httpx

import policyengine as pe
from policyengine.server import ServiceConfig, create_app

from .budget_harness import TRACENGENT, credentials
from .service_harness import serving

POLICY = "permit p: llm:*\nratelimit calls: llm:* 1 per hour burst 2\n"


def test_the_authorize_wire_names_the_rate_limit_only_when_it_refused() -> None:
    engine = pe.Engine.from_source(POLICY)
    app = create_app(engine, credentials=credentials(),
                     config=ServiceConfig(access_log=False))
    with serving(app) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
        token = http.post("/v1/oauth/token", data={
            "grant_type": "client_credentials", "client_id": TRACENGENT[0],
            "client_secret": TRACENGENT[1]}).json()["access_token"]
        bodies: list[dict[str, Any]] = []
        for _ in range(3):
            r = http.post("/v1/authorize", json={"permission": "llm:run"},
                          headers={"authorization": f"Bearer {token}"})
            assert r.status_code == 200
            bodies.append(r.json())
    assert [b["reasonCode"] for b in bodies] == ["permitted", "permitted", "rate_limited"]
    assert not {"rateLimit", "shadow"} & (bodies[0].keys() | bodies[1].keys())
    limit = bodies[2]["rateLimit"]
    assert (limit["rateLimit"], limit["limit"], limit["per"], limit["burst"]) == (
        "default.calls", 1, "hour", 2)
    assert 3_590_000 < limit["retryAfterMs"] <= 3_600_000  # an hour early, less the run
