"""The real, unmodified runcycles 0.5.3 SDK against the live service (the Cycles wire).

The decorator, the programmatic client and its async twin, heartbeat extends, a commit
after expiry that falls back to an event, budget exhaustion, and the wire's strictness
checked with the SDK's own strict validators."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import runcycles
from conftest import Clock
from runcycles import (
    Action,
    Amount,
    AsyncCyclesClient,
    BudgetExceededError,
    CommitRequest,
    CyclesClient,
    CyclesConfig,
    CyclesProtocolError,
    ReservationCreateRequest,
    Subject,
    cycles,
)
from runcycles import models as rm

import policyengine as pe
from policyengine.server import (
    Credentials,
    CyclesKey,
    PolicyService,
    ServiceConfig,
    create_app,
    hash_secret,
)

from .service_harness import serving

HERE = Path(__file__).parent
KEYS = {"acme": "cycles-key-acme", "globex": "cycles-key-globex"}


class Live:
    def __init__(self, url: str, clock: Clock, app: PolicyService) -> None:
        self.url, self.clock, self.app = url, clock, app


def cycles_credentials() -> Credentials:
    return Credentials(cycles_keys=tuple(
        CyclesKey(f"key-{tenant}", hash_secret(key), tenant) for tenant, key in KEYS.items()))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    os.environ.setdefault("CYCLES_JOURNAL_DIR", str(tmp_path_factory.mktemp("journal")))
    clock = Clock(time.time())  # the service's clock: now, moved forward by the tests
    engine = pe.Engine.from_path(str(HERE / "cycles"), clock=clock)
    app = create_app(engine, credentials=cycles_credentials(),
                     config=ServiceConfig(access_log=False))
    with serving(app) as port:
        yield Live(f"http://127.0.0.1:{port}", clock, app)


def config(live: Live, tenant: str = "acme", **kw: Any) -> CyclesConfig:
    options: dict[str, Any] = {"retry_enabled": False, "retry_flush_timeout": 0,
                               "journal_dir": os.environ["CYCLES_JOURNAL_DIR"], **kw}
    return CyclesConfig(base_url=live.url, api_key=KEYS[tenant], tenant=tenant, **options)


def agent() -> str:
    """A fresh agent per test: its 5,000-token day budget is the test's own."""
    return "agent-" + uuid.uuid4().hex[:12]


def create_body(agent_id: str, amount: int = 100, key: str | None = None,
                **extra: Any) -> dict[str, Any]:
    return {"idempotency_key": key or uuid.uuid4().hex,
            "subject": {"tenant": "acme", "agent": agent_id},
            "action": {"kind": "llm.completion", "name": "gpt-4o"},
            "estimate": {"unit": "TOKENS", "amount": amount}, **extra}


def headers(tenant: str = "acme") -> dict[str, str]:
    return {"X-Cycles-API-Key": KEYS[tenant]}


def agent_balance(client: CyclesClient, agent_id: str) -> dict[str, Any]:
    res = client.get_balances(tenant="acme", agent=agent_id)
    assert res.status == 200
    (found,) = [b for b in res.body["balances"] if b["scope"] == f"agent:{agent_id}"
                and b["spent"]["unit"] == "TOKENS"]
    return found  # type: ignore[no-any-return]


def strict(model: type[Any], response: httpx.Response) -> Any:
    """The SDK's own strict reading of a success body (what 0.5.3 accepts)."""
    assert "null" not in response.text
    return model.model_validate_json(response.text, strict=True)


# ---------------------------------------------------------------- the decorator
def test_decorator_reserves_runs_and_commits_the_actual(live: Live) -> None:
    who = agent()
    with CyclesClient(config(live, agent=who)) as client:
        @cycles(estimate=300, actual=lambda result: len(result), unit="TOKENS",
                action_kind="llm.completion", action_name="gpt-4o", client=client)
        def answer(prompt: str) -> str:
            ctx = runcycles.get_cycles_context()
            assert ctx is not None and ctx.reservation_id.startswith("rsv_")
            assert ctx.affected_scopes == ["tenant:acme", f"agent:{who}"]
            return prompt * 10

        assert answer("abcd") == "abcd" * 10
        balance = agent_balance(client, who)
        assert balance["spent"] == {"unit": "TOKENS", "amount": 40}
        assert balance["reserved"]["amount"] == 0
        assert balance["remaining"] == {"unit": "TOKENS", "amount": 5000 - 40}


def test_decorator_raises_budget_exceeded_and_nothing_runs(live: Live) -> None:
    who = agent()
    ran = []
    with CyclesClient(config(live, agent=who)) as client:
        @cycles(estimate=6000, unit="TOKENS", action_kind="llm.completion",
                action_name="gpt-4o", client=client)
        def expensive() -> str:
            ran.append(1)
            return "done"

        with pytest.raises(BudgetExceededError) as info:
            expensive()
        assert info.value.status == 409
        assert ran == []
        assert agent_balance(client, who)["spent"]["amount"] == 0


def test_a_failing_function_releases_its_reservation(live: Live) -> None:
    who = agent()
    with CyclesClient(config(live, agent=who)) as client:
        @cycles(estimate=700, unit="TOKENS", action_kind="llm.completion",
                action_name="gpt-4o", client=client)
        def broken() -> None:
            raise RuntimeError("tool failed")

        with pytest.raises(RuntimeError):
            broken()
        balance = agent_balance(client, who)
        assert balance["spent"]["amount"] == 0
        assert balance["reserved"]["amount"] == 0


def test_a_short_lease_gets_a_heartbeat_extend_relative_to_its_expiry(live: Live) -> None:
    """With a lease too short for the SDK's safety reserve it extends at once, by its
    ttl, relative to the current expiry (not to now)."""
    who = agent()
    seen: dict[str, int] = {}
    with CyclesClient(config(live, agent=who)) as client:
        @cycles(estimate=10, unit="TOKENS", action_kind="llm.completion",
                action_name="gpt-4o", ttl_ms=2000, client=client)
        def slow() -> None:
            ctx = runcycles.get_cycles_context()
            assert ctx is not None
            seen["first"] = ctx.expires_at_ms  # type: ignore[assignment]
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                got = client.get_reservation(ctx.reservation_id).body
                if got["expires_at_ms"] != seen["first"]:
                    seen["extended"] = got["expires_at_ms"]
                    return
                time.sleep(0.02)

        slow()
    assert seen["extended"] == seen["first"] + 2000


def test_a_commit_after_expiry_falls_back_to_an_event(live: Live) -> None:
    """The commit gets 410 RESERVATION_EXPIRED; the SDK's retry engine re-posts the
    spend to /v1/events (in the background) with the commit's key."""
    who = agent()
    with CyclesClient(config(live, agent=who, retry_enabled=True,
                             retry_initial_delay=0.01)) as client:
        @cycles(estimate=50, actual=40, unit="TOKENS", action_kind="llm.completion",
                action_name="gpt-4o", ttl_ms=60_000, client=client)
        def outlives_its_lease() -> str:
            live.clock.t += 120  # the lease (and any grace) is over on the server
            return "late"

        assert outlives_its_lease() == "late"
        deadline = time.monotonic() + 10
        while agent_balance(client, who)["spent"]["amount"] == 0:
            assert time.monotonic() < deadline, "the event never arrived"
            time.sleep(0.02)
        balance = agent_balance(client, who)
    assert balance["spent"]["amount"] == 40
    assert balance["reserved"]["amount"] == 0


# ---------------------------------------------------------------- programmatic client
def test_client_create_get_commit_release_and_balances(live: Live) -> None:
    who = agent()
    with CyclesClient(config(live)) as client:
        req = ReservationCreateRequest(
            idempotency_key=uuid.uuid4().hex, subject=Subject(tenant="acme", agent=who),
            action=Action(kind="llm.completion", name="gpt-4o"),
            estimate=Amount(unit="TOKENS", amount=1000), ttl_ms=30_000)
        created = client.create_reservation(req)
        assert created.status == 200
        rid = created.body["reservation_id"]
        assert created.body["decision"] == "ALLOW"
        assert 29_000 <= created.body["remaining_ttl_ms"] <= 30_000
        assert created.body["scope_path"] == f"tenant:acme/agent:{who}"
        detail = client.get_reservation(rid)
        assert detail.status == 200 and detail.body["status"] == "ACTIVE"
        assert detail.body["reserved"] == {"unit": "TOKENS", "amount": 1000}
        assert agent_balance(client, who)["reserved"]["amount"] == 1000

        done = client.commit_reservation(rid, CommitRequest(
            idempotency_key=uuid.uuid4().hex, actual=Amount(unit="TOKENS", amount=600)))
        assert done.status == 200
        assert done.body == {"status": "COMMITTED", "charged": {"unit": "TOKENS", "amount": 600},
                             "released": {"unit": "TOKENS", "amount": 400}}
        assert client.get_reservation(rid).body["status"] == "COMMITTED"
        again = client.release_reservation(rid, {"idempotency_key": uuid.uuid4().hex})
        assert again.status == 409 and again.body["error"] == "RESERVATION_FINALIZED"

        other = client.create_reservation(create_body(who, 200))
        gone = client.release_reservation(other.body["reservation_id"],
                                          {"idempotency_key": uuid.uuid4().hex,
                                           "reason": "not needed"})
        assert gone.status == 200
        assert gone.body == {"status": "RELEASED", "released": {"unit": "TOKENS", "amount": 200}}
        balance = agent_balance(client, who)
        assert balance["spent"]["amount"] == 600 and balance["reserved"]["amount"] == 0


def test_async_client_and_async_decorator(live: Live) -> None:
    who = agent()

    async def main() -> None:
        async with AsyncCyclesClient(config(live, agent=who)) as client:
            created = await client.create_reservation(create_body(who, 250))
            assert created.status == 200
            rid = created.body["reservation_id"]
            done = await client.commit_reservation(rid, {
                "idempotency_key": uuid.uuid4().hex,
                "actual": {"unit": "TOKENS", "amount": 250}})
            assert done.status == 200 and done.body["charged"]["amount"] == 250

            @cycles(estimate=100, actual=75, unit="TOKENS", action_kind="llm.completion",
                    action_name="gpt-4o", client=client)
            async def work() -> str:
                await asyncio.sleep(0)
                return "async"

            assert await work() == "async"

            @cycles(estimate=9000, unit="TOKENS", action_kind="llm.completion",
                    action_name="gpt-4o", client=client)
            async def too_big() -> None:
                raise AssertionError("must not run")

            with pytest.raises(BudgetExceededError):
                await too_big()
            res = await client.get_balances(tenant="acme", agent=who)
            (mine,) = [b for b in res.body["balances"] if b["scope"] == f"agent:{who}"
                       and b["spent"]["unit"] == "TOKENS"]
            assert mine["spent"]["amount"] == 325

    asyncio.run(main())


def test_dry_run_and_decide_answer_without_holding(live: Live) -> None:
    who = agent()
    with CyclesClient(config(live)) as client:
        dry = client.create_reservation(create_body(who, 4000, dry_run=True))
        assert dry.status == 200
        assert dry.body["decision"] == "ALLOW"
        assert "reservation_id" not in dry.body and "expires_at_ms" not in dry.body
        no = client.create_reservation(create_body(who, 6000, dry_run=True))
        assert no.status == 200 and no.body["decision"] == "DENY"
        assert no.body["reason_code"] == "BUDGET_EXCEEDED"
        yes = client.decide({k: v for k, v in create_body(who, 10).items()})
        assert yes.status == 200 and yes.body["decision"] == "ALLOW"
        deny = client.decide(create_body(who, 5001))
        assert deny.status == 200 and deny.body["decision"] == "DENY"
        assert agent_balance(client, who)["reserved"]["amount"] == 0


# ---------------------------------------------------------------- strictness
def test_every_success_is_exactly_what_the_strict_sdk_accepts(live: Live) -> None:
    who = agent()
    with httpx.Client(base_url=live.url, headers=headers()) as http:
        created = http.post("/v1/reservations", json=create_body(who, 100))
        assert created.status_code == 200
        c = strict(rm.ReservationCreateResponse, created)
        assert c.remaining_ttl_ms is not None and c.expires_at_ms is not None
        rid = c.reservation_id
        ext = http.post(f"/v1/reservations/{rid}/extend",
                        json={"idempotency_key": uuid.uuid4().hex, "extend_by_ms": 1000})
        assert ext.status_code == 200
        e = strict(rm.ReservationExtendResponse, ext)
        assert e.expires_at_ms == c.expires_at_ms + 1000  # relative to the current expiry
        assert strict(rm.ReservationDetail, http.get(f"/v1/reservations/{rid}")).status == "ACTIVE"
        com = http.post(f"/v1/reservations/{rid}/commit",
                        json={"idempotency_key": uuid.uuid4().hex,
                              "actual": {"unit": "TOKENS", "amount": 100},
                              "metrics": {"latency_ms": 12}, "metadata": {"a": 1}})
        assert com.status_code == 200
        strict(rm.CommitResponse, com)
        event = http.post("/v1/events", json={
            "idempotency_key": uuid.uuid4().hex, "subject": {"tenant": "acme", "agent": who},
            "action": {"kind": "llm.completion", "name": "gpt-4o"},
            "actual": {"unit": "TOKENS", "amount": 5}})
        assert event.status_code == 201
        ev = strict(rm.EventCreateResponse, event)
        assert ev.charged is not None and ev.charged.amount == 5
        strict(rm.BalanceResponse, http.get("/v1/balances", params={"tenant": "acme"}))
        held = http.post("/v1/reservations", json=create_body(who)).json()["reservation_id"]
        strict(rm.ReleaseResponse, http.post(f"/v1/reservations/{held}/release",
                                             json={"idempotency_key": uuid.uuid4().hex}))


def error_of(response: httpx.Response) -> rm.ErrorResponse:
    """The SDK's own reading of an error body: exactly the protocol's keys."""
    body = response.json()
    assert set(body) <= {"error", "message", "request_id", "details"}
    assert "null" not in response.text
    return rm.ErrorResponse.model_validate(body)


def test_errors_use_the_protocol_envelope_codes_and_statuses(live: Live) -> None:
    who = agent()
    with httpx.Client(base_url=live.url, headers=headers()) as http:
        cases = [
            (http.post("/v1/reservations", json={**create_body(who), "extra": 1}), 400,
             "INVALID_REQUEST"),
            (http.post("/v1/reservations", json=create_body(who, 6000)), 409, "BUDGET_EXCEEDED"),
            (http.post("/v1/reservations/rsv_000000000000000000000000/commit",
                       json={"idempotency_key": "k",
                             "actual": {"unit": "TOKENS", "amount": 1}}), 404, "NOT_FOUND"),
            (http.post("/v1/reservations", content=b"{", headers={
                "content-type": "application/json"}), 400, "INVALID_REQUEST"),
            (http.post("/v1/reservations", json={**create_body(who), "estimate": {
                "unit": "TOKENS", "amount": "5"}}), 400, "INVALID_REQUEST"),
            (http.post("/v1/reservations", json={**create_body(who), "estimate": {
                "unit": "RISK_POINTS", "amount": 5}}), 400, "UNIT_MISMATCH"),
            (http.post("/v1/reservations", json=create_body(who),
                       headers={"X-Idempotency-Key": "another"}), 400, "INVALID_REQUEST"),
            (httpx.post(f"{live.url}/v1/reservations", json=create_body(who)), 401,
             "UNAUTHORIZED"),
            (httpx.post(f"{live.url}/v1/reservations", json=create_body(who),
                        headers={"X-Cycles-API-Key": "wrong"}), 401, "UNAUTHORIZED"),
            (http.post("/v1/reservations", content=b"x" * 2_000_000,
                       headers={"content-type": "application/json"}), 413, "INVALID_REQUEST"),
        ]
        for response, status, code in cases:
            assert response.status_code == status, response.text
            assert error_of(response).error == code, response.text
            assert response.headers["x-request-id"] == error_of(response).request_id

        rid = http.post("/v1/reservations", json=create_body(who)).json()["reservation_id"]
        live.clock.t += 61  # the 60 s lease is over, its 5 s grace period is not
        ext = http.post(f"/v1/reservations/{rid}/extend",
                        json={"idempotency_key": uuid.uuid4().hex, "extend_by_ms": 1000})
        assert ext.status_code == 410 and error_of(ext).error == "RESERVATION_EXPIRED"
        graced = http.post(f"/v1/reservations/{rid}/commit", json={
            "idempotency_key": uuid.uuid4().hex, "actual": {"unit": "TOKENS", "amount": 1}})
        assert graced.status_code == 200
        rid = http.post("/v1/reservations", json=create_body(who)).json()["reservation_id"]
        live.clock.t += 66  # past the lease and the grace period
        late = http.post(f"/v1/reservations/{rid}/commit", json={
            "idempotency_key": uuid.uuid4().hex, "actual": {"unit": "TOKENS", "amount": 1}})
        assert late.status_code == 410 and error_of(late).error == "RESERVATION_EXPIRED"


# ---------------------------------------------------------------- tenants and keys
def test_api_keys_are_bound_to_their_tenant(live: Live) -> None:
    who = agent()
    with httpx.Client(base_url=live.url, headers=headers()) as acme, \
            httpx.Client(base_url=live.url, headers=headers("globex")) as globex:
        other = globex.post("/v1/reservations", json=create_body(who))
        assert other.status_code == 403 and error_of(other).error == "FORBIDDEN"
        rid = acme.post("/v1/reservations", json=create_body(who)).json()["reservation_id"]
        balance = globex.get("/v1/balances", params={"tenant": "acme"})
        assert balance.status_code == 403 and error_of(balance).error == "FORBIDDEN"
        # Another tenant's reservation does not exist for this key: the 404 of an id
        # never made, on every reservation endpoint (the id is no oracle).
        for call in (
                lambda x: globex.get(f"/v1/reservations/{x}"),
                lambda x: globex.post(f"/v1/reservations/{x}/commit", json={
                    "idempotency_key": "x", "actual": {"unit": "TOKENS", "amount": 1}}),
                lambda x: globex.post(f"/v1/reservations/{x}/release",
                                      json={"idempotency_key": "x"}),
                lambda x: globex.post(f"/v1/reservations/{x}/extend",
                                      json={"idempotency_key": "x", "extend_by_ms": 1000})):
            other = rid[:-1] + ("0" if rid[-1] != "0" else "1")
            response, missing = call(rid), call(other)
            assert response.status_code == missing.status_code == 404, response.text
            assert error_of(response).error == "NOT_FOUND"
            assert error_of(response).message == error_of(missing).message.replace(other, rid)
        assert acme.get(f"/v1/reservations/{rid}").json()["status"] == "ACTIVE"
        # A subject without a tenant is the key's tenant: it cannot escape tenant budgets.
        body = create_body(who)
        del body["subject"]["tenant"]
        created = globex.post("/v1/reservations", json=body)
        assert created.status_code == 200
        assert created.json()["affected_scopes"] == ["tenant:globex", f"agent:{who}"]


# ---------------------------------------------------------------- idempotency
def test_idempotency_replays_the_original_and_refuses_another_payload(live: Live) -> None:
    who = agent()
    with httpx.Client(base_url=live.url, headers=headers()) as acme, \
            httpx.Client(base_url=live.url, headers=headers("globex")) as globex:
        first = acme.post("/v1/reservations", json=create_body(who, 100, key="same-key"))
        again = acme.post("/v1/reservations", json=create_body(who, 100, key="same-key"))
        assert first.status_code == again.status_code == 200
        assert again.json() == first.json()
        changed = acme.post("/v1/reservations", json=create_body(who, 101, key="same-key"))
        assert changed.status_code == 409 and error_of(changed).error == "IDEMPOTENCY_MISMATCH"
        # Per tenant: another tenant's same key is its own reservation.
        body = create_body(who, 100, key="same-key")
        body["subject"]["tenant"] = "globex"
        theirs = globex.post("/v1/reservations", json=body)
        assert theirs.status_code == 200
        assert theirs.json()["reservation_id"] != first.json()["reservation_id"]
        rid = first.json()["reservation_id"]
        commit = {"idempotency_key": "commit-key", "actual": {"unit": "TOKENS", "amount": 90}}
        c1 = acme.post(f"/v1/reservations/{rid}/commit", json=commit)
        c2 = acme.post(f"/v1/reservations/{rid}/commit", json=commit)
        assert c1.status_code == c2.status_code == 200 and c1.json() == c2.json()
        other = acme.post(f"/v1/reservations/{rid}/commit",
                          json={**commit, "actual": {"unit": "TOKENS", "amount": 91}})
        assert other.status_code == 409 and error_of(other).error == "IDEMPOTENCY_MISMATCH"
        # Per endpoint: the SDK re-posts an expired commit as an event with the same key.
        event = acme.post("/v1/events", json={
            "idempotency_key": "commit-key", "subject": {"tenant": "acme", "agent": who},
            "action": {"kind": "llm.completion", "name": "gpt-4o"},
            "actual": {"unit": "TOKENS", "amount": 7}})
        assert event.status_code == 201
        assert agent_balance(CyclesClient(config(live)), who)["spent"]["amount"] == 97


def test_the_ledger_replays_a_retry_another_worker_answers(live: Live) -> None:
    """A retry that misses this worker's cache (here: the cache emptied) is replayed by
    the ledger's own idempotency record: the same reservation, never a second hold."""
    who = agent()
    with httpx.Client(base_url=live.url, headers=headers()) as http:
        first = http.post("/v1/reservations", json=create_body(who, 100, key="k-ledger"))
        live_app_replays_clear(live)
        again = http.post("/v1/reservations", json=create_body(who, 100, key="k-ledger"))
        assert again.status_code == 200
        assert again.json()["reservation_id"] == first.json()["reservation_id"]
        live_app_replays_clear(live)
        changed = http.post("/v1/reservations", json=create_body(who, 5, key="k-ledger"))
        assert changed.status_code == 409 and error_of(changed).error == "IDEMPOTENCY_MISMATCH"
    with CyclesClient(config(live)) as client:
        assert agent_balance(client, who)["reserved"]["amount"] == 100


def live_app_replays_clear(live: Live) -> None:
    live.app.cycles.replays.clear()


# ---------------------------------------------------------------- concurrency
def test_nothing_is_admitted_over_the_limit_under_concurrent_clients(live: Live) -> None:
    who = agent()
    admitted: list[int] = []
    refused: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        with CyclesClient(config(live)) as client:
            for _ in range(8):
                res = client.create_reservation(create_body(who, 300))
                with lock:
                    if res.status == 200:
                        admitted.append(300)
                    else:
                        refused.append(res.body["error"])

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 4800  # 16 holds of 300 fit in 5,000; the 17th never
    assert set(refused) == {"BUDGET_EXCEEDED"} and len(refused) == 48 - 16
    with CyclesClient(config(live)) as client:
        assert agent_balance(client, who)["reserved"]["amount"] == 4800


def test_sdk_refuses_nothing_it_should_accept_on_create_and_0_5_3_models_agree(
        live: Live) -> None:
    """A create the SDK reads as ambiguous would raise CyclesProtocolError: the decorator
    path over many shapes of subject (levels skipped, dimensions) must never see one."""
    with CyclesClient(config(live)) as client:
        for subject in ({"workspace": "w1"}, {"app": "a", "toolset": "t"},
                        {"workflow": "wf", "dimensions": {"region": "eu"}}):
            @cycles(estimate=1, unit="CREDITS", action_kind="tool.call", action_name="search",
                    client=client, **subject)  # type: ignore[arg-type]
            def call() -> str:
                return "ok"

            try:
                assert call() == "ok"
            except CyclesProtocolError as exc:  # pragma: no cover - the failure shown
                pytest.fail(f"{subject}: {exc}")
    assert json.dumps(subject)


# ---------------------------------------------------------------- one port, every wire
def test_cycles_and_agent_ledger_share_post_v1_events_by_their_key_header(
        live: Live) -> None:
    """Without prefixes both wires answer POST /v1/events: X-Cycles-API-Key picks the
    Cycles event, agent-ledger's x-api-key its batch (each in its own envelope)."""
    from policyengine.server import ApiKey
    creds = Credentials(api_keys=(ApiKey("ledger", hash_secret("ledger-key"), "bot"),),
                        cycles_keys=(CyclesKey("acme", hash_secret(KEYS["acme"]), "acme"),))
    engine = pe.Engine.from_path(str(HERE / "cycles"))
    app = create_app(engine, credentials=creds, config=ServiceConfig(access_log=False))
    who = agent()
    with serving(app) as port:
        url = f"http://127.0.0.1:{port}/v1/events"
        cycles_event = httpx.post(url, headers=headers(), json={
            "idempotency_key": "e-1", "subject": {"tenant": "acme", "agent": who},
            "action": {"kind": "llm.completion", "name": "gpt-4o"},
            "actual": {"unit": "TOKENS", "amount": 3}})
        assert cycles_event.status_code == 201
        assert strict(rm.EventCreateResponse, cycles_event).status == "APPLIED"
        ledger = httpx.post(url, headers={"x-api-key": "ledger-key"},
                            json={"sessionId": "no-such-session", "events": []})
        assert ledger.status_code == 404
        assert ledger.json()["code"] == "unknown_session"
        nobody = httpx.post(url, json={})
        assert nobody.status_code == 401 and "request_id" not in nobody.json()

        # Refused before either handler runs (a body over the limit, a repeated header, a
        # method the path has not): the Cycles request still gets the protocol's
        # envelope, which the SDK reads (before, the service's own one, which it cannot).
        with CyclesClient(config(Live(f"http://127.0.0.1:{port}", live.clock, app))) as client:
            big = client.create_event({
                "idempotency_key": "e-2", "subject": {"tenant": "acme", "agent": who},
                "action": {"kind": "llm.completion", "name": "gpt-4o"},
                "actual": {"unit": "TOKENS", "amount": 3},
                "metadata": {"blob": "x" * 1_100_000}})
        assert big.status == 413
        read = big.get_error_response()
        assert read is not None and read.error == "INVALID_REQUEST"
        assert read.details == {"code": "body_too_large"}
        assert read.request_id == big.request_id
        twice = httpx.post(url, content=b"{}", headers=[
            ("X-Cycles-API-Key", KEYS["acme"]), ("content-type", "application/json"),
            ("content-type", "application/json")])
        wrong = httpx.get(url, headers=headers())
        for response, status, code in ((twice, 400, "ambiguous_header"),
                                       (wrong, 405, "method_not_allowed")):
            assert response.status_code == status
            assert error_of(response).error == "INVALID_REQUEST"
            assert error_of(response).details == {"code": code}
            assert response.headers["x-request-id"] == error_of(response).request_id
        # ... and an agent-ledger request, the service's own
        ledger_twice = httpx.post(url, content=b"{}", headers=[
            ("x-api-key", "ledger-key"), ("content-type", "application/json"),
            ("content-type", "application/json")])
        assert ledger_twice.status_code == 400
        assert ledger_twice.json()["error"]["code"] == "ambiguous_header"
    # A method a Cycles-only path has not: the protocol's envelope too.
    wrong = httpx.get(f"{live.url}/v1/decide", headers=headers())
    assert wrong.status_code == 405 and error_of(wrong).error == "INVALID_REQUEST"
    assert wrong.headers["allow"] == "POST"


# ---------------------------------------------------------------- the scope hierarchy
def test_every_level_of_the_subject_is_charged_and_reported(live: Live) -> None:
    """`per workspace` and `per context.run` (a subject dimension) budgets: a spend
    debits each level at once, a full level refuses for the whole subject."""
    ws = "ws-" + uuid.uuid4().hex[:8]

    def spend(amount: int, workspace: str, run: str) -> httpx.Response:
        return httpx.post(f"{live.url}/v1/reservations", headers=headers(), json={
            "idempotency_key": uuid.uuid4().hex,
            "subject": {"tenant": "acme", "workspace": workspace, "agent": "searcher",
                        "dimensions": {"run": run}},
            "action": {"kind": "search.call", "name": "web"},
            "estimate": {"unit": "CREDITS", "amount": amount}})

    first = spend(250, ws, ws + "-r1")
    assert first.status_code == 200
    assert first.json()["affected_scopes"] == [
        "tenant:acme", f"workspace:{ws}", "agent:searcher"]
    assert spend(100, ws, ws + "-r1").status_code == 409     # run r1: 250 + 100 > 300
    r2 = spend(200, ws, ws + "-r2")
    assert r2.status_code == 200, r2.text     # workspace: 450 <= 500
    refused = spend(100, ws, ws + "-r3")                     # workspace: 550 > 500
    assert refused.status_code == 409 and error_of(refused).error == "BUDGET_EXCEEDED"
    assert spend(100, ws + "-other", ws + "-r3").status_code == 200
    res = httpx.get(f"{live.url}/v1/balances", headers=headers(),
                    params={"tenant": "acme", "workspace": ws})
    balances = strict(rm.BalanceResponse, res).balances
    (mine,) = [b for b in balances if b.scope == f"workspace:{ws}"]
    assert mine.scope_path == f"tenant:acme/workspace:{ws}"
    assert mine.reserved is not None and mine.reserved.amount == 450
    assert mine.remaining.amount == 50 and mine.allocated is not None
    assert mine.allocated.amount == 500


def test_a_spend_no_budget_covers_is_refused_not_admitted_unmetered(live: Live) -> None:
    body = {**create_body(agent(), key="unbudgeted"),
            "action": {"kind": "image.render", "name": "x"}}
    for _ in range(2):  # a retry with the same key is refused the same way
        res = httpx.post(f"{live.url}/v1/reservations", headers=headers(), json=body)
        assert res.status_code == 409 and error_of(res).error == "BUDGET_EXCEEDED"
    event = httpx.post(f"{live.url}/v1/events", headers=headers(), json={
        "idempotency_key": uuid.uuid4().hex, "subject": body["subject"],
        "action": body["action"], "actual": {"unit": "TOKENS", "amount": 1}})
    assert event.status_code == 409 and error_of(event).error == "BUDGET_EXCEEDED"
    decided = httpx.post(f"{live.url}/v1/decide", headers=headers(), json={
        k: v for k, v in body.items() if k != "idempotency_key"} | {"idempotency_key": "u2"})
    assert decided.status_code == 200 and decided.json()["decision"] == "DENY"


# ---------------------------------------------------------------- money units
def test_usd_microcents_the_decorators_default_unit(live: Live) -> None:
    """USD_MICROCENTS (10^-8 USD) counts exactly on a microcents budget and, as whole
    cents, on a USD budget (reported back in microcents); a fraction of a cent that a
    cents budget cannot hold exactly is refused, never rounded."""
    who = agent()
    with CyclesClient(config(live, agent=who)) as client:
        @cycles(estimate=3_000_000, actual=2_000_000, action_kind="chat", action_name="x",
                client=client)
        def chat() -> str:
            return "hello"

        assert chat() == "hello"
        res = client.get_balances(tenant="acme", agent=who)
        by_scope = {b["scope"]: b for b in res.body["balances"]
                    if b["spent"]["unit"] == "USD_MICROCENTS"}
        assert by_scope[f"agent:{who}"]["spent"] == {"unit": "USD_MICROCENTS",
                                                   "amount": 2_000_000}
        assert by_scope[f"agent:{who}"]["allocated"]["amount"] == 100_000_000
        tenant = by_scope["tenant:acme"]
        assert tenant["allocated"] == {"unit": "USD_MICROCENTS", "amount": 10 * 10**8}
        assert tenant["spent"]["amount"] % 1_000_000 == 0 and tenant["spent"]["amount"] > 0
        odd = client.create_reservation({
            "idempotency_key": uuid.uuid4().hex, "subject": {"tenant": "acme", "agent": who},
            "action": {"kind": "chat", "name": "x"},
            "estimate": {"unit": "USD_MICROCENTS", "amount": 5_000}})
        assert odd.status == 400 and odd.body["error"] == "INVALID_REQUEST"
        assert odd.body["details"] == {"code": "inexact_amount"}


# ---------------------------------------------------------------- leases and overage
def test_extend_is_idempotent_and_relative_to_the_expiry(live: Live) -> None:
    with httpx.Client(base_url=live.url, headers=headers()) as http:
        c = http.post("/v1/reservations", json=create_body(agent(), ttl_ms=10_000)).json()
        beat = {"idempotency_key": "beat-1", "extend_by_ms": 5000}
        path = f"/v1/reservations/{c['reservation_id']}/extend"
        first, again = http.post(path, json=beat), http.post(path, json=beat)
        assert first.json()["expires_at_ms"] == c["expires_at_ms"] + 5000
        assert again.json() == first.json()  # a retry does not extend twice
        live.app.cycles.replays.clear()  # another worker: the ledger replays it
        assert http.post(path, json=beat).json()["expires_at_ms"] == c["expires_at_ms"] + 5000
        other = http.post(path, json={"idempotency_key": "beat-2", "extend_by_ms": 5000})
        assert other.json()["expires_at_ms"] == c["expires_at_ms"] + 10_000


def test_overage_policies_of_a_commit_above_its_reservation(live: Live) -> None:
    """REJECT refuses a commit above the reservation; ALLOW_IF_AVAILABLE (the default)
    charges at most what the budget has left, never past its limit."""
    who = agent()
    with httpx.Client(base_url=live.url, headers=headers()) as http:
        strict_one = http.post("/v1/reservations", json=create_body(
            who, 1000, overage_policy="REJECT")).json()["reservation_id"]
        over = http.post(f"/v1/reservations/{strict_one}/commit", json={
            "idempotency_key": uuid.uuid4().hex, "actual": {"unit": "TOKENS", "amount": 1500}})
        assert over.status_code == 409 and error_of(over).error == "BUDGET_EXCEEDED"
        assert http.post(f"/v1/reservations/{strict_one}/release",
                         json={"idempotency_key": uuid.uuid4().hex}).status_code == 200
        held = http.post("/v1/reservations", json=create_body(who, 4000)).json()
        capped = http.post(f"/v1/reservations/{held['reservation_id']}/commit", json={
            "idempotency_key": uuid.uuid4().hex, "actual": {"unit": "TOKENS", "amount": 7000}})
        assert capped.status_code == 200
        assert strict(rm.CommitResponse, capped).charged.amount == 5000  # the agent's limit
    with CyclesClient(config(live)) as client:
        balance = agent_balance(client, who)
    assert balance["spent"]["amount"] == 5000 and balance["remaining"]["amount"] == 0


def test_caps_declared_on_budgets_make_allow_with_caps(live: Live) -> None:
    """A budget's caps (`cap max_tokens 400 cap cooldown_ms 50`) reach the SDK: create,
    dry run and decide answer ALLOW_WITH_CAPS with them, the decorator's context has them."""
    body = {**create_body(agent(), 100), "action": {"kind": "capped.call", "name": "x"}}
    want = {"max_tokens": 400, "cooldown_ms": 50}
    with httpx.Client(base_url=live.url, headers=headers()) as http:
        created = http.post("/v1/reservations", json=body)
        got = strict(rm.ReservationCreateResponse, created)
        assert got.decision == "ALLOW_WITH_CAPS" and created.json()["caps"] == want
        dry = http.post("/v1/reservations", json={**body, "idempotency_key": "caps-dry",
                                                   "dry_run": True}).json()
        assert dry["decision"] == "ALLOW_WITH_CAPS" and dry["caps"] == want
        decided = http.post("/v1/decide", json={k: v for k, v in body.items()
                                                if k != "ttl_ms"} | {"idempotency_key": "cd"})
        assert decided.json()["decision"] == "ALLOW_WITH_CAPS" and decided.json()["caps"] == want
        plain = http.post("/v1/reservations", json=create_body(agent(), 10)).json()
        assert plain["decision"] == "ALLOW" and "caps" not in plain
    with CyclesClient(config(live)) as client:
        @cycles(estimate=10, unit="TOKENS", action_kind="capped.call", action_name="x",
                agent="capped-bot", client=client)
        def call() -> int | None:
            ctx = runcycles.get_cycles_context()
            assert ctx is not None and ctx.caps is not None
            return ctx.caps.max_tokens

        assert call() == 400
