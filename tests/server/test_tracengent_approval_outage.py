"""The real tracengent client waiting for an approval while the approval store goes down.

``ensure_authorized`` on a ``pending_approval`` decision polls ``GET /v1/approvals/{id}``
(tracengent/client.py ``wait_for_approval``): a non-2xx answer is skipped and the poll
goes on (the body is not read), ``approved`` returns, ``denied`` / ``expired`` or the
deadline raise ``NotAuthorizedException``. Against a live service on 127.0.0.1 whose
PostgreSQL or Redis approval store sits behind a relay the test cuts: the polls meet the
service's 503 ``approval_store_error``, the agent's action waits (never run as if
approved); the store comes back, an admin approves, the same wait returns and the action
runs. An outage longer than the SDK's deadline ends the wait denied.

The SDK is unmodified: its poll interval and deadline are module globals read on each
call, set here for the test's duration (2 s / 300 s in the package)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import tracengent.client
from conftest import POSTGRES_URL, REDIS_URL, Relay, drop_namespace, require_service, unique_name
from tracengent import NotAuthorizedException, TracengentClient, TracengentOptions

import policyengine as pe
from policyengine.decide import PostgresApprovalStore, RedisApprovalStore
from policyengine.server import Credentials, create_app

from .service_harness import ADMIN, SECRETS, serving

POLICY = """namespace t
role r: payments:*
agent "travel-agent": r
approval refunds: payments:refund
"""


@pytest.fixture(params=["redis", "postgres"])
def relayed_store(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Relay]]:
    """A shared approval store opened through a :class:`Relay` to the real server."""
    kind = request.param
    require_service(kind)
    name = unique_name("apr_sdk")
    relay = Relay(REDIS_URL if kind == "redis" else POSTGRES_URL)
    try:
        if kind == "redis":
            store: Any = RedisApprovalStore(relay.url(REDIS_URL), prefix=name + ":",
                                            timeout=1)
        else:
            store = PostgresApprovalStore(relay.url(POSTGRES_URL), schema=name,
                                          connect_timeout=1)
        yield store, relay
    finally:
        relay.cut()
        drop_namespace(kind, name)


@pytest.fixture
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK polls every 50 ms (raising if the constants are gone: the premise)."""
    monkeypatch.setattr(tracengent.client, "_APPROVAL_POLL_SECONDS", 0.05)
    monkeypatch.setattr(tracengent.client, "_APPROVAL_DEADLINE_SECONDS", 60.0)


class Agent:
    """The real client, with its own HTTP client (a constructor argument) recording what
    each of its requests was answered; ``run`` asks for the refund in a thread and does
    the action only when ``ensure_authorized`` returns."""

    def __init__(self, url: str) -> None:
        self.answers: list[tuple[str, int, bytes]] = []
        self.actions: list[str] = []
        self.outcome: dict[str, Any] = {}
        http = httpx.Client(base_url=url, timeout=httpx.Timeout(10.0),
                            event_hooks={"response": [self._seen]})
        self.client = TracengentClient(TracengentOptions(
            agent_id="travel-agent", base_url=url, client_id="key_travel",
            client_secret=SECRETS["key_travel"], flush_interval_ms=50), http=http)
        self.thread = threading.Thread(target=self._refund, daemon=True)

    def _seen(self, response: httpx.Response) -> None:
        response.read()
        self.answers.append((response.request.url.path, response.status_code,
                             response.content))

    def _refund(self) -> None:
        try:
            self.client.ensure_authorized("payments:refund", {"order": "o1"})
        except NotAuthorizedException as exc:
            self.outcome["denied"] = str(exc)
            return
        except Exception as exc:  # surfaced by the test
            self.outcome["error"] = exc
            return
        self.actions.append("refund o1")

    def polls(self) -> list[tuple[int, bytes]]:
        return [(status, body) for path, status, body in list(self.answers)
                if path.startswith("/v1/approvals/")]

    def wait_for(self, what: str, predicate: Any, seconds: float = 10) -> None:
        deadline = time.monotonic() + seconds
        while not predicate():
            assert time.monotonic() < deadline, f"{what}: {self.polls()[-5:]}"
            time.sleep(0.02)


def _admin(url: str, approval_id: str) -> httpx.Response:
    """The admin approves, retrying a 503 as the service says (the first use of a
    connection the outage broke may fail once more after the store is back)."""
    deadline = time.monotonic() + 10
    while True:
        r = httpx.post(f"{url}/v1/admin/approvals/{approval_id}/approve", auth=ADMIN)
        if r.status_code != 503 or time.monotonic() > deadline:
            return r
        time.sleep(0.05)


def test_the_sdk_keeps_waiting_through_an_outage_and_proceeds_once_approved(
        relayed_store: tuple[Any, Relay], credentials: Credentials,
        fast_polls: None) -> None:
    store, relay = relayed_store
    engine = pe.Engine.from_source(POLICY, name="t.policy", approvals=store)
    with serving(create_app(engine, credentials=credentials)) as port:
        url = f"http://127.0.0.1:{port}"
        agent = Agent(url)
        try:
            agent.thread.start()
            agent.wait_for("a pending poll", lambda: any(
                s == 200 and b'"pending"' in b for s, b in agent.polls()))
            approval_id = store.list("pending")[0].id

            relay.cut()  # the approval store goes away
            agent.wait_for("three 503 polls", lambda: not agent.thread.is_alive()
                           or sum(s == 503 for s, _ in agent.polls()) >= 3)
            assert agent.actions == [], "the action ran while the store was down"
            assert agent.thread.is_alive() and agent.outcome == {}  # still waiting
            for status, body in agent.polls():
                if status == 503:  # the service's fixed answer, not the store's text
                    assert b'"code":"approval_store_error"' in body
                    assert b"127.0.0.1" not in body
            # nobody can grant it meanwhile: the admin route is 503 too
            down = httpx.post(f"{url}/v1/admin/approvals/{approval_id}/approve",
                              auth=ADMIN)
            assert down.status_code == 503
            time.sleep(0.3)  # more polls meet the outage; the action still waits
            assert agent.thread.is_alive() and agent.actions == []

            relay.restore()  # the store is back
            r = _admin(url, approval_id)
            assert (r.status_code, r.json()["status"]) == (200, "approved")
            agent.thread.join(10)
            assert not agent.thread.is_alive()
            assert agent.outcome == {} and agent.actions == ["refund o1"]
            statuses = [s for s, _ in agent.polls()]
            assert statuses[-1] == 200 and b'"approved"' in agent.polls()[-1][1]
            assert 200 in statuses[:statuses.index(503)]  # pending, then the outage
            # the wait was one approval: the SDK never asked /v1/authorize again
            assert [p for p, _, _ in agent.answers].count("/v1/authorize") == 1
        finally:
            agent.client.close()


def test_an_outage_past_the_sdks_deadline_denies(
        relayed_store: tuple[Any, Relay], credentials: Credentials,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracengent.client, "_APPROVAL_POLL_SECONDS", 0.05)
    monkeypatch.setattr(tracengent.client, "_APPROVAL_DEADLINE_SECONDS", 1.5)
    store, relay = relayed_store
    engine = pe.Engine.from_source(POLICY, name="t.policy", approvals=store)
    with serving(create_app(engine, credentials=credentials)) as port:
        agent = Agent(f"http://127.0.0.1:{port}")
        try:
            agent.thread.start()
            agent.wait_for("a pending poll", lambda: any(
                s == 200 for s, _ in agent.polls()))
            relay.cut()
            agent.thread.join(10)
            assert not agent.thread.is_alive()
            assert agent.outcome == {"denied": "Not authorized for 'payments:refund': "
                                               "approval wait timed out"}
            assert agent.actions == []
            assert agent.polls()[-1][0] == 503
        finally:
            agent.client.close()


def test_a_request_during_the_outage_is_denied_at_once(
        relayed_store: tuple[Any, Relay], credentials: Credentials,
        fast_polls: None) -> None:
    """Asked while the store is down, the decision itself is denied (no approval can be
    recorded): the SDK raises without polling."""
    store, relay = relayed_store
    engine = pe.Engine.from_source(POLICY, name="t.policy", approvals=store)
    relay.cut()
    with serving(create_app(engine, credentials=credentials)) as port:
        agent = Agent(f"http://127.0.0.1:{port}")
        try:
            agent.thread.start()
            agent.thread.join(10)
            assert "cannot record the approval" in agent.outcome["denied"]
            assert agent.actions == [] and agent.polls() == []
            # the service's own denial, a 200 decision (not the SDK's "call failed")
            [(path, status, body)] = [a for a in agent.answers if a[0] != "/v1/oauth/token"]
            assert (path, status) == ("/v1/authorize", 200)
            assert b'"reasonCode":"approval_store_error"' in body
        finally:
            agent.client.close()
