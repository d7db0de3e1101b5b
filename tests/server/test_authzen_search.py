"""AuthZEN search (subject, resource, action) against the live service: every vector of
the public interop search scenario over HTTP, pagination that never cuts an answer short
silently, agreement with evaluations, and refusals."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import policyengine as pe
from policyengine.server import ServiceConfig, create_app
from policyengine.server._authzen import search

from .service_harness import Running, serving

REPO = Path(__file__).resolve().parents[2]
SCENARIO = REPO / "policies" / "authzen-search"
FIXTURE = json.loads((REPO / "conformance" / "authzen" / "search.json").read_text("utf-8"))
INTEROP = [c for c in FIXTURE["cases"]
           if c["name"].split(" ", 1)[0] in ("subject", "action", "resource")]
USERS = ["alice", "bob", "carol", "dan", "erin", "felix"]
RECORDS = [str(n) for n in range(101, 121)]
ACTIONS = ["view", "edit", "delete"]


@pytest.fixture(scope="module")
def svc() -> Iterator[Running]:
    engine = pe.Engine.from_path(str(SCENARIO))
    app = create_app(engine, paths=[str(SCENARIO)], config=ServiceConfig(access_log=False))
    with serving(app) as port:
        yield Running(app, port)


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client() as c:  # one connection for the hundreds of requests below
        yield c


def _post(svc: Running, kind: str, body: Any, client: httpx.Client | None = None
          ) -> httpx.Response:
    return (client or httpx).post(f"{svc.url}/access/v1/search/{kind}", json=body)


def _canonical(items: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(x, sort_keys=True) for x in items)


def test_the_fixture_carries_every_vector_of_the_interop_files() -> None:
    kinds = [c["search"] for c in INTEROP]
    assert (kinds.count("subject"), kinds.count("action"), kinds.count("resource")) == (
        60, 120, 18)
    assert FIXTURE["source"]["path"] == "interop/authzen-search-demo/test/"
    # the scenario page's worked examples, as the page states them
    by_name = {c["name"].split(":")[0]: c for c in INTEROP}
    assert by_name["resource 13"]["request"]["subject"]["id"] == "erin"
    assert [r["id"] for r in by_name["resource 13"]["expect"]["results"]] == [
        "105", "111", "115", "117"]


@pytest.mark.parametrize("case", INTEROP, ids=lambda c: c["name"][:60])
def test_interop_search_vectors_over_http(svc: Running, client: httpx.Client,
                                          case: dict[str, Any]) -> None:
    r = _post(svc, case["search"], case["request"], client)
    assert r.status_code == 200, r.text
    body = r.json()
    # exactly what the interop runner compares: the whole body, results in any order
    assert set(body) == {"results"}
    assert _canonical(body["results"]) == _canonical(case["expect"]["results"])
    assert r.headers["x-policy-revision"] == svc.app.revision


def test_configuration_names_the_search_endpoints() -> None:
    engine = pe.Engine.from_path(str(SCENARIO))
    app = create_app(engine, config=ServiceConfig(access_log=False,
                                                  prefixes={"authzen": "/az"}))
    with serving(app) as port:
        base = f"http://127.0.0.1:{port}"
        cfg = httpx.get(f"{base}/az/.well-known/authzen-configuration").json()
        for kind in ("subject", "resource", "action"):
            url = cfg[f"search_{kind}_endpoint"]
            assert url == f"{base}/az/access/v1/search/{kind}"
            assert httpx.post(url, json={}).status_code == 400  # served, and validating
    paths = app.openapi["paths"]
    for kind, model in (("subject", "SubjectSearch"), ("resource", "ResourceSearch"),
                        ("action", "ActionSearch")):
        op = paths[f"/az/access/v1/search/{kind}"]["post"]
        assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
            f"/{model}")
        assert op["responses"]["200"]["content"]["application/json"]["schema"][
            "$ref"].endswith(f"/{model}Response")


def _evaluate(svc: Running, client: httpx.Client, user: str, action: str, record: str
              ) -> bool:
    r = client.post(f"{svc.url}/access/v1/evaluation", json={
        "subject": {"type": "user", "id": user}, "action": {"name": action},
        "resource": {"type": "record", "id": record}})
    assert r.status_code == 200, r.text
    return bool(r.json()["decision"])


def test_every_search_answer_is_what_evaluations_say(svc: Running,
                                                     client: httpx.Client) -> None:
    """All 6 x 3 x 21 requests (one record undeclared): a subject, resource or action is
    in a search answer exactly when its evaluation is true."""
    engine = svc.app.engine
    allowed = {(u, a, rec) for u in USERS for a in ACTIONS for rec in [*RECORDS, "999"]
               if _evaluate(svc, client, u, a, rec)}
    assert len(allowed) == 74 + 22 + 20  # the scenario page's tables: views, edits, deletes
    for u in USERS:
        for a in ACTIONS:
            got = search(engine, "resource", {"subject": {"type": "user", "id": u},
                                              "action": {"name": a},
                                              "resource": {"type": "record"}})
            assert {x["id"] for x in got["results"]} == {
                rec for (uu, aa, rec) in allowed if (uu, aa) == (u, a)}
    for rec in [*RECORDS, "999"]:
        for a in ACTIONS:
            got = search(engine, "subject", {"subject": {"type": "user"},
                                             "action": {"name": a},
                                             "resource": {"type": "record", "id": rec}})
            assert {x["id"] for x in got["results"]} == {
                u for (u, aa, r) in allowed if (aa, r) == (a, rec)}
        for u in USERS:
            got = search(engine, "action", {"subject": {"type": "user", "id": u},
                                            "resource": {"type": "record", "id": rec}})
            assert {x["name"] for x in got["results"]} == {
                a for (uu, a, r) in allowed if (uu, r) == (u, rec)}


def _walk(svc: Running, kind: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    answers = []
    while True:
        r = _post(svc, kind, body)
        assert r.status_code == 200, r.text
        answers.append(r.json())
        token = answers[-1]["page"]["next_token"]
        if not token:
            return answers
        assert len(answers) <= 100
        body = {**body, "page": {**body["page"], "token": token}}


@pytest.mark.parametrize("limit", [1, 3, 7, 20, 1000])
def test_pages_add_up_to_the_whole_answer_in_order(svc: Running, limit: int) -> None:
    body = {"subject": {"type": "user", "id": "alice"}, "action": {"name": "view"},
            "resource": {"type": "record"}}
    whole = _post(svc, "resource", body).json()
    assert [x["id"] for x in whole["results"]] == RECORDS  # declaration order
    answers = _walk(svc, "resource", {**body, "page": {"limit": limit}})
    assert len(answers) == -(-20 // limit)
    assert [x for a in answers for x in a["results"]] == whole["results"]
    for a in answers:
        assert list(a) == ["page", "results"]  # page first, as the spec recommends
        assert a["page"]["count"] == len(a["results"]) <= limit
        assert a["page"]["total"] == 20


def test_a_token_is_bound_to_its_request(svc: Running) -> None:
    body = {"subject": {"type": "user", "id": "bob"}, "action": {"name": "view"},
            "resource": {"type": "record"}, "page": {"limit": 2}}
    token = _post(svc, "resource", body).json()["page"]["next_token"]
    assert token
    ok = _post(svc, "resource", {**body, "page": {"limit": 2, "token": token}})
    assert ok.status_code == 200 and ok.json()["page"]["count"] == 2
    changed = [
        {**body, "page": {"limit": 3, "token": token}},  # another limit
        {**body, "action": {"name": "edit"}, "page": {"limit": 2, "token": token}},
        {**body, "subject": {"type": "user", "id": "dan"},
         "page": {"limit": 2, "token": token}},
        {**body, "context": {"x": 1}, "page": {"limit": 2, "token": token}},
    ]
    with_number = {**body, "context": {"x": 1.5}}
    token2 = _post(svc, "resource", with_number).json()["page"]["next_token"]
    assert _post(svc, "resource", {**with_number, "page": {"limit": 2, "token": token2}}
                 ).status_code == 200
    changed.append({**body, "context": {"x": "1.5"}, "page": {"limit": 2, "token": token2}})
    for other in changed:
        r = _post(svc, "resource", other)
        assert r.status_code == 400, other
        assert r.json()["error"]["code"] == "invalid_request"
    # another search's token does not fit either
    r = _post(svc, "subject", {"subject": {"type": "user"}, "action": {"name": "view"},
                               "resource": {"type": "record", "id": "101"},
                               "page": {"limit": 2, "token": token}})
    assert r.status_code == 400


def _forged(offset: Any, digest: str) -> str:
    raw = json.dumps({"o": offset, "q": digest}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("token", [
    "", "x", "not base64 at all!", "bm90IGEgdG9rZW4", "W10", "e30", "x" * 513,
    _forged(0, "0" * 24), _forged(-1, "0" * 24), _forged(True, "0" * 24),
    _forged("2", "0" * 24), _forged(1 << 40, "0" * 24),
])
def test_forged_tokens_are_refused(svc: Running, token: str) -> None:
    r = _post(svc, "resource", {"subject": {"type": "user", "id": "bob"},
                                "action": {"name": "view"}, "resource": {"type": "record"},
                                "page": {"limit": 2, "token": token}})
    assert r.status_code == 400
    out = r.json()
    assert out["allowed"] is False and out["error"]["code"] == "invalid_request"
    assert "results" not in out


def test_a_large_answer_without_a_page_says_there_is_more() -> None:
    """More results than one answer holds, and no page asked for: the answer is a page
    with a next_token (the spec's MUST), never a silently shorter list."""
    lines = ["role reader: doc:read", 'agent "ann": reader']
    lines += [f'resource doc "d{n:04d}"' for n in range(2345)]
    engine = pe.Engine.from_source("\n".join(lines))
    app = create_app(engine, config=ServiceConfig(access_log=False))
    body = {"subject": {"type": "user", "id": "ann"}, "action": {"name": "read"},
            "resource": {"type": "doc"}}
    with serving(app) as port:
        url = f"http://127.0.0.1:{port}/access/v1/search/resource"
        seen: list[str] = []
        first = httpx.post(url, json=body).json()
        assert first["page"]["count"] == 1000 and first["page"]["total"] == 2345
        seen += [x["id"] for x in first["results"]]
        token = first["page"]["next_token"]
        while token:
            nxt = httpx.post(url, json={**body, "page": {"token": token}}).json()
            seen += [x["id"] for x in nxt["results"]]
            token = nxt["page"]["next_token"]
    assert seen == [f"d{n:04d}" for n in range(2345)]


BOB_VIEW = {"subject": {"type": "user", "id": "bob"}, "action": {"name": "view"},
            "resource": {"type": "record"}}


@pytest.mark.parametrize(("kind", "body"), [
    ("subject", {}),
    ("subject", {"subject": {"type": "user"}, "action": {"name": "view"}}),
    ("subject", {"subject": {"type": "user"}, "action": {"name": "view"},
                 "resource": {"type": "record"}}),  # no resource id
    ("subject", {"subject": {"id": "bob"}, "action": {"name": "view"},
                 "resource": {"type": "record", "id": "101"}}),  # no subject type
    ("resource", {**BOB_VIEW, "subject": {"type": "user"}}),  # no subject id
    ("resource", {**BOB_VIEW, "resource": {}}),
    ("resource", {**BOB_VIEW, "action": {"name": 7}}),
    ("resource", {**BOB_VIEW, "subject": {"type": "user", "id": ["bob"]}}),
    ("resource", {**BOB_VIEW, "page": {"limit": 0}}),
    ("resource", {**BOB_VIEW, "page": {"limit": 1001}}),
    ("resource", {**BOB_VIEW, "page": {"limit": 10 ** 30}}),
    ("resource", {**BOB_VIEW, "page": {"limit": -1}}),
    ("resource", {**BOB_VIEW, "page": {"limit": 2.5}}),
    ("resource", {**BOB_VIEW, "page": {"limit": True}}),
    ("resource", {**BOB_VIEW, "page": {"limit": "5"}}),
    ("resource", {**BOB_VIEW, "page": {"size": 5}}),
    ("resource", {**BOB_VIEW, "page": {"properties": {"sort": "title"}}}),
    ("resource", {**BOB_VIEW, "page": []}),
    ("resource", {**BOB_VIEW, "context": {"subject": "me"}}),
    ("resource", {**BOB_VIEW, "extra": 1}),
    ("action", {"subject": {"type": "user", "id": "bob"},
                "resource": {"type": "record", "id": "101"},
                "action": {"name": "view"}}),  # an action search has no action
    ("action", {"subject": {"type": "user", "id": "bob"}, "resource": {"type": "record"}}),
    ("action", [1, 2]),
    ("action", "text"),
])
def test_malformed_searches_are_refused(svc: Running, kind: str, body: Any) -> None:
    r = _post(svc, kind, body)
    assert r.status_code == 400, r.text
    out = r.json()
    assert out["allowed"] is False and out["error"]["code"] == "invalid_request"
    assert "results" not in out


def test_not_json_and_huge_bodies_are_refused(svc: Running) -> None:
    url = f"{svc.url}/access/v1/search/subject"
    r = httpx.post(url, content=b"{", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["allowed"] is False
    r = httpx.post(url, content=b"x", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    big = {"subject": {"type": "user"}, "action": {"name": "view"},
           "resource": {"type": "record", "id": "101"}, "context": {"pad": "x" * 2_000_000}}
    r = httpx.post(url, json=big)
    assert r.status_code == 413 and r.json()["allowed"] is False


def test_search_registers_no_approval_and_logs_no_decision(tmp_path: Path) -> None:
    engine = pe.Engine.from_source(
        'role clerk: invoice:pay\nagent "ann": clerk\nagent "bo": clerk\n'
        'approval check: invoice:pay\nresource invoice "i1"\n',
        decision_log=str(tmp_path / "log.jsonl"))
    for kind, body in (
            ("subject", {"subject": {"type": "user"}, "action": {"name": "pay"},
                         "resource": {"type": "invoice", "id": "i1"}}),
            ("resource", {"subject": {"type": "user", "id": "ann"}, "action": {"name": "pay"},
                          "resource": {"type": "invoice"}}),
            ("action", {"subject": {"type": "user", "id": "ann"},
                        "resource": {"type": "invoice", "id": "i1"}})):
        assert search(engine, kind, body) == {"results": []}  # pending is not true
    assert engine.approvals.list() == []
    assert engine.close()
    kinds = [json.loads(line)["kind"] for line in
             (tmp_path / "log.jsonl").read_text("utf-8").splitlines()]
    assert kinds and all(k.startswith("log.") for k in kinds)  # start, checkpoints only
    engine2 = pe.Engine.from_source('role clerk: invoice:pay\nagent "ann": clerk\n',
                                    decision_log=str(tmp_path / "log2.jsonl"))
    engine2.authorize("ann", "invoice:pay")  # what the same log holds for a decision
    assert engine2.close()
    assert "authorize" in {json.loads(line)["kind"] for line in
                           (tmp_path / "log2.jsonl").read_text("utf-8").splitlines()}


def test_authzen_clients_guard_the_search_routes() -> None:
    from policyengine.server import Credentials, hash_secret
    engine = pe.Engine.from_path(str(SCENARIO))
    creds = Credentials.from_dict({"authzenClients": [
        {"name": "search-demo", "secretHash": hash_secret("pdp-key")}]})
    app = create_app(engine, credentials=creds, config=ServiceConfig(access_log=False))
    with serving(app) as port:
        url = f"http://127.0.0.1:{port}/access/v1/search/resource"
        r = httpx.post(url, json=BOB_VIEW)
        assert r.status_code == 401 and r.json()["allowed"] is False
        r = httpx.post(url, json=BOB_VIEW, headers={"Authorization": "Bearer pdp-key"})
        assert r.status_code == 200 and len(r.json()["results"]) == 11
    assert app.openapi["paths"]["/access/v1/search/action"]["post"]["security"] == [
        {"bearer": []}]


_DEPTS = ["Sales", "Legal", "Finance"]


@settings(max_examples=40, deadline=None)
@given(records=st.lists(st.tuples(st.sampled_from(_DEPTS), st.sampled_from(USERS[:3])),
                        max_size=8),
       users=st.lists(st.tuples(st.booleans(), st.sampled_from(_DEPTS)),
                      min_size=3, max_size=3),
       limit=st.integers(1, 5))
def test_paged_searches_agree_with_evaluations(records: list[tuple[str, str]],
                                               users: list[tuple[bool, str]],
                                               limit: int) -> None:
    """Any records and users under the scenario's rules: the pages of a resource search,
    put together, are the records whose evaluation is true, in declaration order."""
    text = (SCENARIO / "search.policy").read_text("utf-8")
    head = text.split("# The six users")[0]
    rules = text.split("# A user may view any record they own")[1].split("# The twenty")[0]
    lines = [head, "# A user may view any record they own" + rules]
    for name, (manager, dept) in zip(USERS, users, strict=False):
        lines.append(f'agent "{name}"{": manager" if manager else ""} '
                     f'{{ department = "{dept}" }}')
    for n, (dept, owner) in enumerate(records):
        lines.append(f'resource record "r{n}" {{ department = "{dept}", owner = "{owner}" }}')
    engine = pe.Engine.from_source("\n".join(lines))
    for user in USERS[:3]:
        for action in ACTIONS:
            body = {"subject": {"type": "user", "id": user}, "action": {"name": action},
                    "resource": {"type": "record"}, "page": {"limit": limit}}
            got: list[str] = []
            answer = search(engine, "resource", body)
            while True:
                got += [x["id"] for x in answer["results"]]
                if not answer["page"]["next_token"]:
                    break
                answer = search(engine, "resource", {
                    **body, "page": {"limit": limit, "token": answer["page"]["next_token"]}})
            want = [f"r{n}" for n in range(len(records))
                    if engine.authorize(user, f"record:{action}", {
                        "resource": {"type": "record", "id": f"r{n}",
                                     "properties": engine.policy.resources["record"][f"r{n}"]}
                    }).allowed]
            assert got == want


@pytest.mark.parametrize("subject_id", ["", "z" * 257, "z" * 512])
def test_a_subject_id_no_principal_can_have_finds_nothing(svc: Running,
                                                          subject_id: str) -> None:
    subject = {"type": "user", "id": subject_id}
    assert not _evaluate_raw(svc, subject)  # what an evaluation says of it
    for kind, body in (("resource", {**BOB_VIEW, "subject": subject}),
                       ("action", {"subject": subject,
                                   "resource": {"type": "record", "id": "101"}})):
        r = _post(svc, kind, body)
        assert r.status_code == 200 and r.json() == {"results": []}, r.text


def _evaluate_raw(svc: Running, subject: dict[str, Any]) -> bool:
    r = httpx.post(f"{svc.url}/access/v1/evaluation", json={
        "subject": subject, "action": {"name": "view"},
        "resource": {"type": "record", "id": "101"}})
    assert r.status_code == 200, r.text
    return bool(r.json()["decision"])
