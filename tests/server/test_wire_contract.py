"""tracengent's own wire contract (``tests/conformance/wire_contract.json`` of its sdist,
vendored unchanged beside its live suite) replayed against the service: each pinned
request, sentinels filled in, must get the pinned response keys and values."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import policyengine as pe
from policyengine.server import AgentCredential, Credentials, ServiceConfig, create_app, hash_secret

from .service_harness import Running, serving

HERE = Path(__file__).parent
CONTRACT_FILE = HERE / "tracengent_live" / "wire_contract.json"
CONTRACT_SHA256 = "c49513e2b7cbe0cede33f352526cfc03eae9286cd469b34342fa0de2834fc849"
CONTRACT = json.loads(CONTRACT_FILE.read_text("utf-8"))
# Response values that are the contract's own examples, not facts a service must echo.
EXAMPLE_VALUES = {"reason", "decisionId", "jti", "expiresIn", "redactFields"}


@pytest.fixture(scope="module")
def contract_service() -> Iterator[Running]:
    keys = pe.KeySet.generate()
    engine = pe.Engine.from_path(str(HERE / "contract"), keys=keys)
    form = CONTRACT["oauth_token"]["request_form"]
    creds = Credentials((AgentCredential(form["client_id"], hash_secret(form["client_secret"]),
                                         "demo-agent", ("payments:*",)),))
    app = create_app(engine, credentials=creds, keys=keys, config=ServiceConfig(
        access_log=False))
    with serving(app) as port:
        yield Running(app, port)


def _fill(value: Any) -> Any:
    if value == "<id>":
        return f"id_{uuid.uuid4().hex}"
    if value == "<ts>":
        return dt.datetime.now(dt.timezone.utc).isoformat()
    if isinstance(value, dict):
        return {k: _fill(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v) for v in value]
    return value


def _matches(expected: Any, got: Any, where: str) -> None:
    if isinstance(expected, dict):
        assert isinstance(got, dict), where
        for key, value in expected.items():
            assert key in got, f"{where}.{key} missing"
            if key not in EXAMPLE_VALUES:
                _matches(value, got[key], f"{where}.{key}")
            else:
                assert type(got[key]) is type(value) or got[key] is None, f"{where}.{key}"
    elif expected == "<jwt>":
        assert isinstance(got, str) and got.count(".") == 2, where
    else:
        assert got == expected and type(got) is type(expected), f"{where}: {got!r}"


def test_the_vendored_contract_is_unchanged() -> None:
    assert hashlib.sha256(CONTRACT_FILE.read_bytes()).hexdigest() == CONTRACT_SHA256


@pytest.mark.parametrize("name", [k for k in CONTRACT if not k.startswith("_")])
def test_contract_entry(contract_service: Running, name: str) -> None:
    entry = CONTRACT[name]
    url = contract_service.url
    form = CONTRACT["oauth_token"]["request_form"]
    token = httpx.post(f"{url}/v1/oauth/token", data=form).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    path = entry["path"]
    if name == "attenuate":  # the parent grant, with the contract's grant id, is the bearer
        grant_id = path.split("/")[3]
        parent = pe.tokens.mint(contract_service.app.engine.keys, issuer="https://auth.example",
                                acting_for="besar", agent="demo-agent",
                                permissions=["hotels:*"], max_amount=("1000", "EUR"),
                                ttl=600, grant_id=grant_id)
        headers = {"Authorization": f"Bearer {parent}"}
    if "request_form" in entry:
        r = httpx.request(entry["method"], url + path, data=entry["request_form"])
    else:
        r = httpx.request(entry["method"], url + path, json=_fill(entry["request"]),
                          headers=headers)
    assert 200 <= r.status_code < 300, r.text
    if "response" in entry:
        _matches(entry["response"], r.json(), name)
