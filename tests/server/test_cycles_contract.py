"""The Cycles protocol's own OpenAPI file (runcycles 0.5.3 sdist,
``tests/fixtures/cycles-protocol-v0.yaml``, vendored unchanged in cycles_live/) as a
response oracle: every answer of a scenario over every endpoint has a status the
operation declares and a body its schema accepts (``additionalProperties: false``
throughout). The file lags the client: the fields 0.5.3 reads that it lacks are added
to the schemas before validating, and nothing else (cycles_live/README.md)."""

from __future__ import annotations

import copy
import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from jsonschema import Draft202012Validator

import policyengine as pe
from policyengine.server import Credentials, CyclesKey, ServiceConfig, create_app, hash_secret

from .service_harness import serving

HERE = Path(__file__).parent
SPEC_FILE = HERE / "cycles_live" / "cycles-protocol-v0.yaml"
SPEC_SHA256 = "561965b1ac8832d319960c2568ce0cfba5d4ed0995d1354a4726a086622d6f8d"
SPEC = yaml.safe_load(SPEC_FILE.read_text("utf-8"))
SCHEMAS = SPEC["components"]["schemas"]
_TTL = {"type": "integer", "minimum": 0}
# What runcycles 0.5.3 reads beyond spec v0.1.24 (spec v0.1.25.x): the lease left.
ADDITIVE = {"ReservationCreateResponse": {"remaining_ttl_ms": _TTL},
            "ReservationExtendResponse": {"remaining_ttl_ms": _TTL}}


def test_the_vendored_fixture_is_unchanged() -> None:
    assert hashlib.sha256(SPEC_FILE.read_bytes()).hexdigest() == SPEC_SHA256


def _resolve(node: Any) -> Any:
    if isinstance(node, list):
        return [_resolve(x) for x in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        kind, name = node["$ref"].split("/")[-2:]
        target = copy.deepcopy(SPEC["components"][kind][name])
        if kind == "schemas" and name in ADDITIVE:
            target["properties"].update(ADDITIVE[name])
        return _resolve(target)
    return {k: _resolve(v) for k, v in node.items()}


def _operation(method: str, path: str) -> dict[str, Any]:
    for template, ops in SPEC["paths"].items():
        pattern = template.split("/")
        parts = path.split("/")
        if len(pattern) == len(parts) and all(
                a == b or a.startswith("{") for a, b in zip(pattern, parts, strict=True)):
            return ops[method.lower()]  # type: ignore[no-any-return]
    raise AssertionError(f"{method} {path} is not in the protocol")


def check(response: httpx.Response) -> None:
    """The oracle: a declared status, and a body the declared schema accepts."""
    req = response.request
    op = _operation(req.method, req.url.path)
    status = str(response.status_code)
    assert status in op["responses"], f"{req.method} {req.url.path}: {status} undeclared"
    declared = _resolve(op["responses"][status])
    schema = declared["content"]["application/json"]["schema"]
    errors = sorted(Draft202012Validator(schema).iter_errors(response.json()),
                    key=lambda e: list(e.path))
    assert not errors, f"{req.method} {req.url.path} {status}: {errors[0].message}"


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    engine = pe.Engine.from_path(str(HERE / "cycles"))
    creds = Credentials(cycles_keys=(CyclesKey("acme", hash_secret("k-acme"), "acme"),
                                     CyclesKey("globex", hash_secret("k-globex"), "globex")))
    app = create_app(engine, credentials=creds, config=ServiceConfig(access_log=False))
    with serving(app) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}",
                                            headers={"X-Cycles-API-Key": "k-acme"}) as c:
        yield c


def key() -> str:
    return uuid.uuid4().hex


def body(amount: int = 100, **extra: Any) -> dict[str, Any]:
    return {"idempotency_key": key(), "subject": {"tenant": "acme", "agent": "oracle"},
            "action": {"kind": "llm.completion", "name": "gpt-4o", "tags": ["t"]},
            "estimate": {"unit": "TOKENS", "amount": amount}, **extra}


def test_every_answer_of_every_endpoint_matches_the_protocol_file(
        http: httpx.Client) -> None:
    seen: set[tuple[str, int]] = set()

    def run(response: httpx.Response) -> httpx.Response:
        check(response)
        seen.add((response.request.method + " " + response.request.url.path.split("/rsv_")[0],
                  response.status_code))
        return response

    rid = run(http.post("/v1/reservations", json=body(ttl_ms=30_000))).json()["reservation_id"]
    run(http.post("/v1/reservations", json=body(dry_run=True)))
    capped = {**body(), "action": {"kind": "capped.call", "name": "x"}}
    run(http.post("/v1/reservations", json=capped))
    run(http.post("/v1/decide", json={k: v for k, v in capped.items() if k != "ttl_ms"}))
    run(http.post("/v1/reservations", json=body(9_999, dry_run=True)))
    run(http.post("/v1/reservations", json=body(9_999)))
    run(http.post("/v1/reservations", json={**body(), "ttl_ms": 5}))
    run(http.post("/v1/reservations", json=body(), headers={"X-Cycles-API-Key": "bad"}))
    run(http.post("/v1/reservations", json=body(), headers={"X-Cycles-API-Key": "k-globex"}))
    run(http.get(f"/v1/reservations/{rid}"))
    run(http.get("/v1/reservations/rsv_000000000000000000000000"))
    run(http.post(f"/v1/reservations/{rid}/extend",
                  json={"idempotency_key": key(), "extend_by_ms": 5000}))
    run(http.post(f"/v1/reservations/{rid}/extend",
                  json={"idempotency_key": key(), "extend_by_ms": 0}))
    commit = {"idempotency_key": key(), "actual": {"unit": "TOKENS", "amount": 70},
              "metrics": {"tokens_input": 10, "tokens_output": 60, "latency_ms": 5,
                          "model_version": "x", "custom": {"a": [1, 2.5]}},
              "metadata": {"trace": "t"}}
    run(http.post(f"/v1/reservations/{rid}/commit", json=commit))
    run(http.post(f"/v1/reservations/{rid}/commit", json=commit))
    run(http.post(f"/v1/reservations/{rid}/commit",
                  json={**commit, "actual": {"unit": "TOKENS", "amount": 71}}))
    run(http.post(f"/v1/reservations/{rid}/release", json={"idempotency_key": key()}))
    run(http.post(f"/v1/reservations/{rid}/commit",
                  json={"idempotency_key": key(), "actual": {"unit": "CREDITS", "amount": 1}}))
    other = run(http.post("/v1/reservations", json=body())).json()["reservation_id"]
    run(http.post(f"/v1/reservations/{other}/release",
                  json={"idempotency_key": key(), "reason": "done"}))
    run(http.get(f"/v1/reservations/{other}"))
    run(http.post("/v1/reservations/rsv_000000000000000000000000/release",
                  json={"idempotency_key": key()}))
    decide = {k: v for k, v in body().items() if k != "ttl_ms"}
    run(http.post("/v1/decide", json=decide))
    run(http.post("/v1/decide", json={**decide, "idempotency_key": key(),
                                      "estimate": {"unit": "TOKENS", "amount": 9_999}}))
    run(http.post("/v1/decide", json={**decide, "estimate": {"unit": "TOKENS"}}))
    event = {"idempotency_key": key(), "subject": {"tenant": "acme", "agent": "oracle"},
             "action": {"kind": "llm.completion", "name": "gpt-4o"},
             "actual": {"unit": "TOKENS", "amount": 5}, "client_time_ms": 1,
             "overage_policy": "ALLOW_WITH_OVERDRAFT"}
    run(http.post("/v1/events", json=event))
    run(http.post("/v1/events", json={**event, "idempotency_key": key(),
                                      "actual": {"unit": "TOKENS", "amount": 999_999}}))
    run(http.post("/v1/events", json={**event, "idempotency_key": key(),
                                      "subject": {"tenant": "globex"}}))
    run(http.get("/v1/balances", params={"tenant": "acme", "agent": "oracle"}))
    run(http.get("/v1/balances", params={"tenant": "globex"}))
    run(http.get("/v1/balances", params={"limit": "5"}))
    # The listing: pages, filters, the subject and key as asked, and its refusals.
    run(http.post("/v1/reservations", json=body(metadata={"m": [1, None]}, subject={
        "tenant": "acme", "workspace": "w", "agent": "oracle", "dimensions": {"d": "x"}})))
    page = run(http.get("/v1/reservations", params={"limit": "2"})).json()
    assert page["has_more"] is True and len(page["reservations"]) == 2
    run(http.get("/v1/reservations", params={"cursor": page["next_cursor"]}))
    run(http.get("/v1/reservations", params={"status": "ACTIVE", "workspace": "w",
                                             "tenant": "acme"}))
    run(http.get("/v1/reservations", params={"idempotency_key": key()}))
    run(http.get("/v1/reservations", params={"limit": "0"}))
    run(http.get("/v1/reservations", params={"tenant": "globex"}))
    run(http.get("/v1/reservations", headers={"X-Cycles-API-Key": "bad"}))
    statuses = {s for _, s in seen}
    assert statuses == {200, 201, 400, 401, 403, 404, 409}, statuses


def test_the_answers_written_without_the_models_are_what_the_models_write(
        http: httpx.Client) -> None:
    """Create and commit answers are written straight from their values (the hot path);
    byte for byte, they are the response models' own dump (fields, order, no null)."""
    from pydantic import TypeAdapter

    from policyengine.server import _cycles_models as cm

    def same(response: httpx.Response, model: type[Any]) -> None:
        assert response.status_code == 200, response.text
        adapter = TypeAdapter(model)
        assert response.content == adapter.dump_json(
            adapter.validate_json(response.content), exclude_none=True)

    for actual, released in ((100, False), (70, True), (0, True)):
        created = http.post("/v1/reservations", json=body(ttl_ms=30_000))
        same(created, cm.ReservationCreateResponse)
        assert set(created.json()) == {"decision", "reservation_id", "affected_scopes",
                                       "expires_at_ms", "remaining_ttl_ms", "scope_path",
                                       "reserved"}
        rid = created.json()["reservation_id"]
        done = http.post(f"/v1/reservations/{rid}/commit", json={
            "idempotency_key": key(), "actual": {"unit": "TOKENS", "amount": actual}})
        same(done, cm.CommitResponse)
        assert done.json()["charged"] == {"unit": "TOKENS", "amount": actual}
        assert ("released" in done.json()) is released
        if released:
            assert done.json()["released"] == {"unit": "TOKENS", "amount": 100 - actual}


def test_the_vendored_licence_is_unchanged() -> None:
    data = (HERE / "cycles_live" / "LICENSE.runcycles").read_bytes()
    assert hashlib.sha256(data).hexdigest() == (
        "c71d239df91726fc519c6eb72d318ec65820627232b2f796219e87dcf35d0ab4")
