"""``GET /v1/reservations`` and reservations that answer alike on every worker: two
services (two workers) on one SQLite ledger file, driven by the real runcycles 0.5.3
client and read with its strict models."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from runcycles import CyclesClient, CyclesConfig
from runcycles import models as rm

import policyengine as pe
from policyengine.budgets import BudgetStoreError, SQLiteStore
from policyengine.server import PolicyService, ServiceConfig, create_app

from .service_harness import serving
from .test_cycles_sdk import KEYS, cycles_credentials

HERE = Path(__file__).parent


class Workers:
    def __init__(self, urls: list[str], apps: list[PolicyService]) -> None:
        self.urls, self.apps = urls, apps


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    os.environ.setdefault("CYCLES_JOURNAL_DIR", str(tmp_path_factory.mktemp("journal")))
    path = tmp_path_factory.mktemp("ledger") / "budgets.db"
    apps = [create_app(pe.Engine.from_path(str(HERE / "cycles"),
                                           budget_store=SQLiteStore(path)),
                       credentials=cycles_credentials(),
                       config=ServiceConfig(access_log=False)) for _ in range(2)]
    with serving(apps[0]) as a, serving(apps[1]) as b:
        yield Workers([f"http://127.0.0.1:{a}", f"http://127.0.0.1:{b}"], apps)


def client(url: str, tenant: str = "acme") -> CyclesClient:
    return CyclesClient(CyclesConfig(base_url=url, api_key=KEYS[tenant], tenant=tenant,
                                     retry_enabled=False, retry_flush_timeout=0,
                                     journal_dir=os.environ["CYCLES_JOURNAL_DIR"]))


def create(c: CyclesClient, agent: str, amount: int, **extra: Any) -> str:
    body = {"idempotency_key": uuid.uuid4().hex,
            "subject": {"tenant": "acme", "agent": agent},
            "action": {"kind": "llm.completion", "name": "gpt-4o"},
            "estimate": {"unit": "TOKENS", "amount": amount}, **extra}
    res = c.create_reservation(body)
    assert res.status == 200, res.body
    return res.body["reservation_id"]  # type: ignore[no-any-return]


def listing(url: str, tenant: str = "acme", **query: str) -> rm.ReservationListResponse:
    """The list as the strict 0.5.3 model reads it (no null, no extra key)."""
    r = httpx.get(f"{url}/v1/reservations", params=query,
                  headers={"X-Cycles-API-Key": KEYS[tenant]})
    assert r.status_code == 200, r.text
    assert "null" not in r.text
    return rm.ReservationListResponse.model_validate_json(r.text, strict=True)


def test_reservations_made_on_one_worker_are_listed_on_the_other(workers: Workers) -> None:
    a, b = workers.urls
    who = "agent-" + uuid.uuid4().hex[:8]
    with client(a) as ca:
        first = create(ca, who, 100, subject={"tenant": "acme", "workspace": "ws1",
                                              "agent": who, "dimensions": {"run": "r1"}},
                       metadata={"trace": "t-1", "n": [1, 2], "big": 10**30},
                       idempotency_key="recover-" + who)
        second = create(ca, who, 200, action={"kind": "llm.completion", "name": "gpt-4o",
                                              "tags": ["x"]})
        third = create(ca, who, 300)
        assert ca.release_reservation(third, {"idempotency_key": uuid.uuid4().hex}).status == 200
    with client(b) as cb:
        res = cb.list_reservations(agent=who)  # the SDK's own call, on the other worker
        assert res.status == 200
        got = rm.ReservationListResponse.model_validate(res.body)
        assert [r.reservation_id for r in got.reservations] == [first, second, third]
        assert got.has_more is False and got.next_cursor is None
        one = got.reservations[0]
        assert one.subject.model_dump(exclude_none=True) == {
            "tenant": "acme", "workspace": "ws1", "agent": who, "dimensions": {"run": "r1"}}
        assert one.scope_path == f"tenant:acme/workspace:ws1/agent:{who}"
        assert one.affected_scopes == ["tenant:acme", "workspace:ws1", f"agent:{who}"]
        assert one.idempotency_key == "recover-" + who
        assert one.reserved.amount == 100 and one.status.value == "ACTIVE"
        assert got.reservations[1].action.tags == ["x"]
        assert [r.status.value for r in got.reservations] == ["ACTIVE", "ACTIVE", "RELEASED"]
        detail = cb.get_reservation(first).body
        assert detail["metadata"] == {"trace": "t-1", "n": [1, 2], "big": 10**30}
        assert detail["subject"]["workspace"] == "ws1"
        assert detail["idempotency_key"] == "recover-" + who
        released = cb.get_reservation(third).body
        assert released["status"] == "RELEASED" and released["finalized_at_ms"] >= (
            released["created_at_ms"])
    # Filters: status, subject level, idempotency key (recovery); pages by cursor.
    assert [r.reservation_id for r in listing(b, agent=who, status="RELEASED").reservations
            ] == [third]
    assert [r.reservation_id for r in listing(b, agent=who, workspace="ws1").reservations
            ] == [first]
    assert [r.reservation_id for r in listing(
        b, idempotency_key="recover-" + who).reservations] == [first]
    assert listing(b, idempotency_key="recover-" + who, status="COMMITTED").reservations == []
    assert listing(b, idempotency_key="never-used").reservations == []
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(5):
        page = listing(b, agent=who, limit="1", **({} if cursor is None else
                                                      {"cursor": cursor}))
        seen += [r.reservation_id for r in page.reservations]
        cursor = page.next_cursor
        assert page.has_more is (cursor is not None)
        if cursor is None:
            break
    assert seen == [first, second, third]
    # Another tenant's key sees none of them; naming another tenant is 403.
    assert who not in str(listing(a, tenant="globex").model_dump())
    r = httpx.get(f"{b}/v1/reservations", params={"tenant": "globex"},
                  headers={"X-Cycles-API-Key": KEYS["acme"]})
    assert r.status_code == 403 and r.json()["error"] == "FORBIDDEN"


def test_a_commit_on_another_worker_follows_the_reservations_own_policy(
        workers: Workers) -> None:
    a, b = workers.urls
    who = "agent-" + uuid.uuid4().hex[:8]
    with client(a) as ca, client(b) as cb:
        strict_one = create(ca, who, 1000, overage_policy="REJECT")
        over = cb.commit_reservation(strict_one, {"idempotency_key": uuid.uuid4().hex,
                                                  "actual": {"unit": "TOKENS",
                                                             "amount": 1500}})
        assert over.status == 409 and over.body["error"] == "BUDGET_EXCEEDED"
        capped = create(ca, who, 4000)  # ALLOW_IF_AVAILABLE, the protocol's default
        done = cb.commit_reservation(capped, {"idempotency_key": uuid.uuid4().hex,
                                              "actual": {"unit": "TOKENS", "amount": 7000}})
        assert done.status == 200 and done.body["charged"]["amount"] == 4000  # 1000 held
        assert cb.get_reservation(capped).body["status"] == "COMMITTED"


def test_malformed_filters_are_the_strict_error_envelope(workers: Workers) -> None:
    url = workers.urls[0]
    for query in ("limit=0", "limit=201", "limit=abc", "limit=-1", "limit=+5", "limit=",
                  "status=active", "status=", "cursor=nope", "cursor=" + "9" * 17 + ":x'",
                  "from=-5", "to=1.5", "workspace=", "agent=" + "a" * 129,
                  "idempotency_key=", "colour=red", "limit=5&limit=6", "%ff=1"):
        r = httpx.get(f"{url}/v1/reservations?{query}",
                      headers={"X-Cycles-API-Key": KEYS["acme"]})
        assert r.status_code == 400, (query, r.text)
        body = r.json()
        assert set(body) <= {"error", "message", "request_id", "details"}, query
        assert body["error"] == "INVALID_REQUEST" and body["request_id"], query
        assert rm.ErrorResponse.model_validate(body).error == "INVALID_REQUEST"
    r = httpx.get(f"{url}/v1/reservations")
    assert r.status_code == 401 and r.json()["error"] == "UNAUTHORIZED"


def test_a_store_fault_while_listing_is_store_unavailable_not_an_empty_list(
        workers: Workers, monkeypatch: pytest.MonkeyPatch) -> None:
    store = workers.apps[1].engine.budgets.store

    def broken(*args: object) -> None:
        raise BudgetStoreError("store_unavailable", "budget database error: disk I/O error")

    monkeypatch.setattr(store, "list_reservations", broken)
    r = httpx.get(f"{workers.urls[1]}/v1/reservations",
                  headers={"X-Cycles-API-Key": KEYS["acme"]})
    assert r.status_code == 503
    assert r.json()["error"] == "INTERNAL_ERROR"
    assert r.json()["details"] == {"code": "store_unavailable"}
