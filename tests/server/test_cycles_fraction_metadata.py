"""A Cycles create whose metadata holds a fraction (``{"x": 0.1}``, read exactly as a
Decimal like every number of the wire) makes its reservation: the note that keeps the
request writes the Decimal as the number it is. It was a 500 (neither orjson nor the
standard library writes a Decimal), so no reservation, and a client retrying the same
idempotency key met the same 500."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import policyengine as pe
from policyengine.server import Credentials, CyclesKey, ServiceConfig, create_app, hash_secret

from .service_harness import serving

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    engine = pe.Engine.from_path(str(HERE / "cycles"))
    creds = Credentials(cycles_keys=(CyclesKey("acme", hash_secret("k-acme"), "acme"),))
    app = create_app(engine, credentials=creds, config=ServiceConfig(access_log=False))
    with serving(app) as port, httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"X-Cycles-API-Key": "k-acme", "content-type": "application/json"}) as c:
        yield c


def _create(http: httpx.Client, key: str, metadata: str) -> httpx.Response:
    return http.post("/v1/reservations", content=(
        '{"idempotency_key":"' + key + '","subject":{"tenant":"acme","agent":"frac"},'
        '"action":{"kind":"llm.completion","name":"gpt-4o"},'
        '"estimate":{"unit":"TOKENS","amount":100},"metadata":' + metadata + '}').encode())


@pytest.mark.parametrize("metadata", [
    '{"x":0.1}', '{"price":12345678901234567.89,"n":[1,2.50]}', '{"e":1E+3,"t":0.0}',
    '{"tiny":0.1000000000000000000001,"big":100000000000000000000000000001}'])
def test_a_create_with_fractions_in_its_metadata_reserves(http: httpx.Client,
                                                          metadata: str) -> None:
    key = uuid.uuid4().hex
    first = _create(http, key, metadata)
    assert first.status_code == 200, first.text
    rid = first.json()["reservation_id"]
    again = _create(http, key, metadata)  # the same request replays the same answer
    assert again.status_code == 200 and again.json()["reservation_id"] == rid
    detail = http.get(f"/v1/reservations/{rid}")
    assert detail.status_code == 200 and set(detail.json()["metadata"]) == set(
        httpx.Response(200, content=metadata.encode()).json())
    assert _create(http, key, metadata.replace("}", ',"z":1}', 1)).status_code == 409
