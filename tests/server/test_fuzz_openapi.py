"""Fuzz every operation of the published OpenAPI document against the live service with
schemathesis (bounded): valid and invalid inputs alike never get a 5xx, every error is
the deny-shaped JSON body, and no invalid input is ever answered with an allow."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from .service_harness import ADMIN, API_KEY, SECRETS, Running, make_service


def _document() -> dict[str, Any]:
    """The document of an identically configured service (it depends on no key)."""
    from policyengine.server import Credentials
    return make_service(Credentials()).openapi


SCHEMA = schemathesis.openapi.from_dict(_document())
OPERATIONS = [op.ok() for op in SCHEMA.get_all_operations()]
EXAMPLES = 12
# Negative examples need an input to break: operations without one are fuzzed positively.
CASES = [(op, mode) for op in OPERATIONS for mode in (GenerationMode.POSITIVE,
                                                      GenerationMode.NEGATIVE)
         if mode is GenerationMode.POSITIVE or "requestBody" in op.definition.raw
         or op.definition.raw.get("parameters")]


def _auth(service: Running, security: list[dict[str, Any]] | None) -> dict[str, str]:
    if not security:
        return {}
    if "apiKeyBearer" in security[0]:
        return {"Authorization": f"Bearer {API_KEY}"}
    if "apiKeyHeader" in security[0]:
        return {"x-api-key": API_KEY}
    if "adminBasic" in security[0]:
        raw = base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
        return {"Authorization": f"Basic {raw}"}
    tok = httpx.post(f"{service.url}/v1/oauth/token", data={
        "grant_type": "client_credentials", "client_id": "key_travel",
        "client_secret": SECRETS["key_travel"]}).json()["access_token"]
    return {"Authorization": f"Bearer {tok}"}


@pytest.mark.parametrize(("operation", "mode"), CASES,
                         ids=[f"{op.label} {mode.value}" for op, mode in CASES])
def test_fuzz(service: Running, operation: Any, mode: GenerationMode) -> None:
    auth = _auth(service, operation.definition.raw.get("security"))

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        headers = {**(case.headers or {}), **auth}
        response = case.call(base_url=service.url, headers=headers, timeout=10)
        status = response.status_code
        assert status < 500, (case.body, response.text)
        if status >= 400:
            body = response.json()
            assert body.get("allowed") is False or "error" in body
            assert "Traceback" not in response.text
        if mode is GenerationMode.NEGATIVE and status < 300:
            try:
                body = response.json()
            except ValueError:
                return
            if isinstance(body, dict):
                assert body.get("allowed") is not True, case.body
                assert body.get("decision") is not True, case.body

    check()
