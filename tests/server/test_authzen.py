"""AuthZEN 1.0 against the live service: the interop Todo vectors over HTTP, the batch
semantics, the mapping onto the engine, and refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import policyengine as pe
from policyengine.server import ServiceConfig, create_app

from .service_harness import Running, serving

REPO = Path(__file__).resolve().parents[2]
TODO = json.loads((REPO / "conformance" / "authzen" / "todo.json").read_text("utf-8"))
RICK, MORTY, JERRY = (
    "CiRmZDA2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs",
    "CiRmZDE2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs",
    "CiRmZDQ2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs")


@pytest.fixture(scope="module")
def todo() -> Iterator[Running]:
    engine = pe.Engine.from_path(str(REPO / "policies" / "authzen-todo"))
    app = create_app(engine, paths=[str(REPO / "policies" / "authzen-todo")],
                     config=ServiceConfig(access_log=False, prefixes={"authzen": "/az"}))
    with serving(app) as port:
        yield Running(app, port)


def test_the_fixture_carries_every_vector_of_the_interop_file() -> None:
    kinds = [("evaluations" in c["request"]) for c in TODO["cases"]]
    assert kinds.count(False) == 40 and kinds.count(True) == 3
    assert TODO["source"]["path"].endswith("decisions-authorization-api-1_0-02.json")


@pytest.mark.parametrize("case", TODO["cases"], ids=lambda c: c["name"][:70])
def test_todo_interop_vectors_over_http(todo: Running, case: dict[str, Any]) -> None:
    endpoint = "evaluations" if "evaluations" in case["request"] else "evaluation"
    r = httpx.post(f"{todo.url}/az/access/v1/{endpoint}", json=case["request"])
    assert r.status_code == 200, r.text
    body = r.json()
    if "evaluations" in case["expect"]:
        got = [{"decision": e["decision"]} for e in body["evaluations"]]
        assert got == case["expect"]["evaluations"]
    else:
        assert body["decision"] is case["expect"]["decision"]
    assert r.headers["x-policy-revision"] == todo.app.revision


def test_configuration_names_the_prefixed_endpoints(todo: Running) -> None:
    r = httpx.get(f"{todo.url}/az/.well-known/authzen-configuration")
    assert r.status_code == 200
    cfg = r.json()
    assert cfg["access_evaluation_endpoint"] == f"{todo.url}/az/access/v1/evaluation"
    assert cfg["access_evaluations_endpoint"] == f"{todo.url}/az/access/v1/evaluations"
    # unprefixed paths are not served when a prefix is configured
    assert httpx.get(f"{todo.url}/.well-known/authzen-configuration").status_code == 404


def _batch(semantic: str | None) -> dict[str, Any]:
    todos = [("a", "rick@the-citadel.com"), ("b", "morty@the-citadel.com"),
             ("c", "rick@the-citadel.com")]
    body: dict[str, Any] = {
        "subject": {"type": "user", "id": MORTY}, "action": {"name": "can_update_todo"},
        "evaluations": [{"resource": {"type": "todo", "id": i, "properties": {"ownerID": o}}}
                        for i, o in todos]}
    if semantic:
        body["options"] = {"evaluations_semantic": semantic}
    return body


@pytest.mark.parametrize(("semantic", "decisions"), [
    (None, [False, True, False]),
    ("execute_all", [False, True, False]),
    ("deny_on_first_deny", [False]),
    ("permit_on_first_permit", [False, True]),
])
def test_batch_semantics(todo: Running, semantic: str | None, decisions: list[bool]) -> None:
    r = httpx.post(f"{todo.url}/az/access/v1/evaluations", json=_batch(semantic))
    assert r.status_code == 200
    assert [e["decision"] for e in r.json()["evaluations"]] == decisions


def test_items_override_defaults_and_bad_items_are_false(todo: Running) -> None:
    r = httpx.post(f"{todo.url}/az/access/v1/evaluations", json={
        "subject": {"type": "user", "id": JERRY}, "action": {"name": "can_read_todos"},
        "resource": {"type": "todo", "id": "x"},
        "evaluations": [{}, {"subject": {"type": "user", "id": RICK},
                             "action": {"name": "can_delete_todo"}},
                        {"action": {"name": "can_delete_todo"}}, {"resource": {"type": "todo"}}]})
    assert r.status_code == 200
    out = r.json()["evaluations"]
    assert [e["decision"] for e in out] == [True, True, False, False]
    assert out[3]["context"]["code"] == 400


def test_no_list_is_a_single_evaluation(todo: Running) -> None:
    r = httpx.post(f"{todo.url}/az/access/v1/evaluations", json={
        "subject": {"type": "user", "id": RICK}, "action": {"name": "can_delete_todo"},
        "resource": {"type": "todo", "id": "x", "properties": {"ownerID": "nobody"}}})
    assert r.status_code == 200 and r.json()["decision"] is True


@pytest.mark.parametrize("body", [
    {"subject": {"type": "user", "id": RICK}, "action": {"name": "can_read_todos"}},
    {"subject": {"type": "user", "id": RICK}, "action": {"name": "can_read_todos"},
     "resource": {"type": "todo", "id": "1"}, "extra": 1},
    {"subject": {"type": "user", "id": 7}, "action": {"name": "can_read_todos"},
     "resource": {"type": "todo", "id": "1"}},
    {"subject": {"type": "user", "id": RICK}, "action": {"name": "can_read_todos"},
     "resource": {"type": "todo", "id": "1"}, "context": {"subject": "me"}},
    [1, 2],
])
def test_malformed_evaluations_are_400_never_an_allow(todo: Running, body: Any) -> None:
    r = httpx.post(f"{todo.url}/az/access/v1/evaluation", json=body)
    assert r.status_code == 400
    assert r.json()["allowed"] is False and "decision" not in r.json()


def test_unknown_subject_and_missing_ownership_deny(todo: Running) -> None:
    for body in (
        {"subject": {"type": "user", "id": "stranger"}, "action": {"name": "can_read_todos"},
         "resource": {"type": "todo", "id": "1"}},
        {"subject": {"type": "user", "id": MORTY}, "action": {"name": "can_update_todo"},
         "resource": {"type": "todo", "id": "1"}},  # no ownerID: the permit cannot apply
        {"subject": {"type": "user", "id": MORTY}, "action": {"name": "can update"},
         "resource": {"type": "todo", "id": "1"}},  # not a permission
    ):
        r = httpx.post(f"{todo.url}/az/access/v1/evaluation", json=body)
        assert r.status_code == 200 and r.json()["decision"] is False


def test_the_mapping_reaches_context_and_money_stays_exact() -> None:
    engine = pe.Engine.from_source(
        'currency EUR\nrole buyer: order:*\nagent "u1": buyer\n'
        'limit cap: order:pay amount <= 100 EUR\n'
        'forbid other-tenant: * when context.resource.properties.tenant != "t1"\n')
    app = create_app(engine, config=ServiceConfig(access_log=False))
    with serving(app) as port:
        def pay(amount: str, tenant: str = "t1") -> bool:
            raw = ('{"subject":{"type":"user","id":"u1"},"action":{"name":"pay"},'
                   '"resource":{"type":"order","id":"o1","properties":{"tenant":"TENANT"}},'
                   '"context":{"amount":AMOUNT,"currency":"EUR"}}'
                   ).replace("TENANT", tenant).replace("AMOUNT", amount)
            r = httpx.post(f"http://127.0.0.1:{port}/access/v1/evaluation", content=raw,
                           headers={"content-type": "application/json"})
            assert r.status_code == 200, r.text
            return bool(r.json()["decision"])

        assert pay("100.00") and pay("99.99")
        assert not pay("100.0000000000000001")  # a float reads 100.0: under the cap
        assert not pay("100.01")
        assert not pay("5", tenant="t2")


def test_authzen_clients_when_configured_are_required() -> None:
    from policyengine.server import Credentials, hash_secret
    engine = pe.Engine.from_path(str(REPO / "policies" / "authzen-todo"))
    creds = Credentials.from_dict({"authzenClients": [
        {"name": "todo-backend", "secretHash": hash_secret("pdp-key")}]})
    app = create_app(engine, credentials=creds, config=ServiceConfig(access_log=False))
    body = {"subject": {"type": "user", "id": RICK}, "action": {"name": "can_read_todos"},
            "resource": {"type": "todo", "id": "1"}}
    with serving(app) as port:
        url = f"http://127.0.0.1:{port}/access/v1/evaluation"
        for headers in ({}, {"Authorization": "wrong"}, {"Authorization": "Bearer wrong"}):
            r = httpx.post(url, json=body, headers=headers)
            assert r.status_code == 401 and r.json()["allowed"] is False
        for value in ("pdp-key", "Bearer pdp-key"):  # bare, as the interop PEP sends it
            r = httpx.post(url, json=body, headers={"Authorization": value})
            assert r.status_code == 200 and r.json()["decision"] is True
        r = httpx.post(f"http://127.0.0.1:{port}/access/v1/evaluations",
                       json={**body, "evaluations": [{}]})
        assert r.status_code == 401
    assert app.openapi["paths"]["/access/v1/evaluation"]["post"]["security"] == [
        {"bearer": []}]


def test_a_rate_limited_evaluation_says_when_to_retry() -> None:
    engine = pe.Engine.from_source(
        'role reader: doc:*\nagent "u1": reader\n'
        "ratelimit reads: doc:read 1 per hour burst 2\n")
    app = create_app(engine, config=ServiceConfig(access_log=False))
    body = {"subject": {"type": "user", "id": "u1"}, "action": {"name": "read"},
            "resource": {"type": "doc", "id": "d1"}}
    with serving(app) as port:
        answers = [httpx.post(f"http://127.0.0.1:{port}/access/v1/evaluation", json=body)
                   for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.json()["decision"] for a in answers] == [True, True, False]
    context = answers[2].json()["context"]
    assert context["reasonCode"] == "rate_limited"
    # two at once from rest, then one an hour: the third call is an hour early
    assert context["rateLimit"]["retryAfterMs"] > 3_590_000
    assert "rateLimit" not in answers[0].json()["context"]
