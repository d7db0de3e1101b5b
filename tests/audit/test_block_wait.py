"""Under ``overflow="block"`` one decision waits at most ``block_timeout`` for the log in
all: the pipeline asks the log (``DecisionLog.refusal``) before the run takes anything,
then hands it the decision; the time waited at the question counts toward the wait at the
hand-over (before, a decision could wait ``block_timeout`` at each: twice as long).

The queue is made full and kept full by a sink that takes nothing until the test lets a
write through: one write let through makes room for exactly one record (batches of one).
The test decides when room comes; the clock only measures. The bounds are generous (a
quarter of ``block_timeout`` or more on either side of the limit between "once" and
"twice"): a loaded machine cannot make the right answer fail.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from conftest import until

import policyengine as pe
from policyengine.audit import DecisionLog
from policyengine.budgets import MemoryStore

POLICY = """namespace t
role r: a:*
agent "bot": r
ratelimit rl: a:rl 1 per hour
tool pay: mcp "pay" -> a:rl
"""
CAPACITY = 4
DEADLINE = 20.0


class GatedSink:
    """Takes one batch per write let through (:meth:`let_one`), or all once opened."""

    def __init__(self) -> None:
        self.permits = threading.Semaphore(0)
        self.opened = threading.Event()
        self.let = 0
        self.lines: list[bytes] = []

    def write(self, lines: Sequence[bytes]) -> None:
        while not self.opened.is_set() and not self.permits.acquire(timeout=0.01):
            pass
        self.lines.extend(lines)

    def let_one(self) -> None:
        self.let += 1
        self.permits.release()

    def close(self) -> None:
        pass


class HookStore(MemoryStore):
    """Runs ``hook`` when a rate limit is asked: between the log's question and the
    hand-over of the decision."""

    hook: Callable[[], None] | None = None

    def rate_admit(self, *args: Any, **kwargs: Any) -> Any:
        if self.hook is not None:
            self.hook()
        return super().rate_admit(*args, **kwargs)


def fill(log: DecisionLog, sink: GatedSink) -> None:
    """Make the queue full and keep it full: offer events until the writer is held
    behind the sink (the batch in the sink's write, a full shipping queue, one batch in
    hand: the shipping queue's size + 2 batches taken, plus one per write let through)
    and the queue holds ``CAPACITY``. Only this thread appends, so it never waits."""
    held = log._ship.maxsize + 2 + sink.let

    def full() -> bool:
        stats = log.stats()
        if stats["queue_depth"] < CAPACITY:
            log.event("test.fill", {})
            return False
        return stats["taken"] == held

    until(full, "a full queue")


OPENED: list[pe.Engine] = []


@pytest.fixture(autouse=True)
def _close_logs() -> Iterator[None]:
    yield
    while OPENED:
        engine = OPENED.pop()
        sink = engine.decision_log.sink  # type: ignore[union-attr]
        sink.opened.set()
        engine.close(timeout=5)


def make(timeout: float, policy: str = POLICY
         ) -> tuple[pe.Engine, DecisionLog, GatedSink, HookStore]:
    sink, store = GatedSink(), HookStore()
    log = DecisionLog(sink, overflow="block", capacity=CAPACITY, batch_size=1,
                      block_timeout=timeout)
    engine = pe.Engine.from_source(policy, decision_log=log, budget_store=store)
    OPENED.append(engine)
    fill(log, sink)
    return engine, log, sink, store


def timed(ask: Callable[[], Any]) -> tuple[Any, float]:
    began = time.monotonic()
    out = ask()
    return out, time.monotonic() - began


ASKS: dict[str, Callable[[pe.Engine], Any]] = {
    "authorize": lambda e: e.authorize("bot", "a:rl"),
    "explain": lambda e: e.explain("bot", "a:rl").decision,
    "tool_authorize": lambda e: e.tool_authorize("bot", transport="mcp", tool_name="pay"),
    "explain_tool": lambda e: e.explain_tool("bot", transport="mcp",
                                             tool_name="pay").decision,
}


@pytest.mark.parametrize("ask", ASKS)
def test_a_queue_that_stays_full_denies_after_one_block_timeout(ask: str) -> None:
    # Asked before the rate limit, the log waits T and refuses; handing the refusal
    # over then waits no more (before: T again, 2T in all).
    t = 1.0
    engine, log, sink, store = make(t)
    d, took = timed(lambda: ASKS[ask](engine))
    assert (d.status, d.code) == ("denied", "decision_log_unavailable")
    assert t * 0.95 <= took < t * 1.5, took
    sink.opened.set()
    assert engine.close(timeout=5)
    stats = log.stats()
    if ask.startswith("explain"):  # not a decision: nothing recorded nor counted
        assert stats["denied"] == stats["unrecorded_denials"] == 0
    else:  # the denial found no room at once: counted, not recorded
        assert stats["denied"] == stats["unrecorded_denials"] == 1
    # the refused decision took no rate-limit call (the one per hour is still there)
    plain = pe.Engine.from_source(POLICY, budget_store=store)
    assert plain.authorize("bot", "a:rl").allowed


@pytest.mark.parametrize("ask", ["authorize", "explain"])
def test_room_at_the_question_leaves_only_the_rest_for_the_hand_over(ask: str) -> None:
    # Room comes at 0.6 T into the question (the run goes on); the queue is full again
    # when the decision is handed over, and stays full: the hand-over waits what is left
    # (0.4 T) and denies, about T in all (before: 0.6 T + T).
    t = 2.0
    engine, log, sink, store = make(t)
    store.hook = lambda: fill(log, sink)
    later = threading.Timer(0.6 * t, sink.let_one)
    later.start()
    try:
        d, took = timed(lambda: ASKS[ask](engine))
    finally:
        later.join()
    assert sink.let == 1
    assert (d.status, d.code) == ("denied", "decision_log_unavailable")
    assert t * 0.95 <= took < t * 1.3, took
    store.hook = None
    sink.opened.set()
    assert engine.close(timeout=5)
    plain = pe.Engine.from_source(POLICY, budget_store=store)
    if ask == "authorize":  # fail closed, after the run took its rate-limit call
        assert log.stats()["unrecorded_denials"] == 1
        assert plain.authorize("bot", "a:rl").code == "rate_limited"
    else:  # explain took none
        assert log.stats()["unrecorded_denials"] == 0
        assert plain.authorize("bot", "a:rl").allowed


@pytest.mark.parametrize("ask", ["authorize", "explain"])
def test_room_within_the_rest_allows_the_decision(ask: str) -> None:
    # As above, but room comes again while the hand-over waits what is left: allowed.
    t = 2.0
    engine, log, sink, store = make(t)
    store.hook = lambda: fill(log, sink)
    later = threading.Timer(0.6 * t, sink.let_one)
    later.start()
    # the hook refills once; the next wait is the hand-over's (the question's ended
    # before the run went on to the hook): let one more through while it waits
    hook = store.hook

    def refill_once() -> None:
        assert hook is not None
        hook()
        store.hook = None

    store.hook = refill_once
    again = threading.Thread(target=lambda: (
        until(lambda: store.hook is None and log._waiting == 1, "the hand-over to wait"),
        sink.let_one()))
    again.start()
    try:
        d, took = timed(lambda: ASKS[ask](engine))
    finally:
        later.join()
        again.join()
    assert (d.status, d.code) == ("allowed", "permitted")
    assert took < t * 1.3, took
    sink.opened.set()
    assert engine.close(timeout=5)
    stats = log.stats()
    assert stats["denied"] == stats["unrecorded_denials"] == 0
    recorded = [line for line in sink.lines if b'"kind":"authorize"' in line]
    assert len(recorded) == (1 if ask == "authorize" else 0)
    if ask == "authorize":
        assert d.decision_id.encode() in recorded[0]


# -- blocked: each caller that waited, once ------------------------------------------------
# ``stats()["blocked"]`` says how many callers waited for room. The question asked before
# a run (``refusal()``) waits too, and was not counted: a decision refused there, an
# explain, or a refusal() asked alone waited ``block_timeout`` and counted nothing. Now
# each waiting caller counts once: a decision whose question and hand-over both wait is
# one caller, as is a search (below).


@pytest.mark.parametrize("ask", ASKS)
def test_a_decision_that_waited_counts_once_in_blocked(ask: str) -> None:
    engine, log, _, _ = make(0.3)
    before = log.stats()["blocked"]
    d = ASKS[ask](engine)
    assert d.code == "decision_log_unavailable"
    assert log.stats()["blocked"] - before == 1
    d = ASKS[ask](engine)  # another caller
    assert log.stats()["blocked"] - before == 2


def test_a_refusal_that_waited_is_counted() -> None:
    _, log, _, _ = make(0.3)
    before = log.stats()["blocked"]
    refused, took = timed(log.refusal)
    assert refused is not None and took >= 0.3 * 0.95
    assert log.stats()["blocked"] - before == 1


def test_a_decision_that_found_room_counts_nothing() -> None:
    engine, log, sink, _ = make(0.3)
    sink.opened.set()
    until(lambda: log.stats()["queue_depth"] == 0, "an empty queue")
    before = log.stats()["blocked"]
    assert engine.authorize("bot", "a:rl").allowed
    assert log.refusal() is None
    assert log.stats()["blocked"] == before


# -- AuthZEN search: block_timeout once per request ---------------------------------------
# A search runs the pipeline once per candidate; each run asks the log (refusal()) before
# it would take a rate-limit call. Under ``block`` with the queue full, each waited
# ``block_timeout``, and the search's record waited once more: five candidates' worth of
# waiting for four candidates. Now the whole request waits ``block_timeout`` at most,
# and counts once in ``blocked``.

SEARCH_POLICY = """namespace t
role r: doc:read, doc:edit, doc:share, doc:print
agent "b1": r
agent "b2": r
agent "b3": r
agent "b4": r
resource doc "d1" { owner = "b1" }
resource doc "d2" { owner = "b1" }
resource doc "d3" { owner = "b1" }
resource doc "d4" { owner = "b1" }
ratelimit rl: doc:* 1 per hour
"""
SEARCHES: dict[str, dict[str, Any]] = {
    "subject": {"subject": {"type": "agent"}, "action": {"name": "read"},
                "resource": {"type": "doc", "id": "d1"}},
    "resource": {"subject": {"type": "agent", "id": "b1"}, "action": {"name": "read"},
                 "resource": {"type": "doc"}},
    "action": {"subject": {"type": "agent", "id": "b1"},
               "resource": {"type": "doc", "id": "d1"}},
}


@pytest.mark.parametrize("kind", SEARCHES)
def test_a_search_waits_one_block_timeout_in_all(kind: str) -> None:
    from policyengine.server._authzen import logged_search, search
    t = 0.6
    engine, log, sink, _ = make(t, SEARCH_POLICY)
    before = log.stats()["blocked"]
    (answer, recorded), took = timed(lambda: logged_search(engine, kind, SEARCHES[kind],
                                                           None))
    # four candidates and the record: about t in all (before: 5 t)
    assert t * 0.95 <= took < t * 1.5, took
    assert answer["results"] == [] and not recorded  # every run refused: fail closed
    assert log.stats()["blocked"] - before == 1
    # the search alone (no record) too
    answer, took = timed(lambda: search(engine, kind, SEARCHES[kind]))
    assert t * 0.95 <= took < t * 1.5, took
    assert log.stats()["blocked"] - before == 2
    # with room, the same search lists all four
    sink.opened.set()
    until(lambda: log.stats()["queue_depth"] == 0, "an empty queue")
    assert len(search(engine, kind, SEARCHES[kind])["results"]) == 4


def test_one_wait_leaves_the_rest_to_a_later_wait_and_nests() -> None:
    t = 0.6
    _, log, _, _ = make(t)
    with log.one_wait():
        first, took_first = timed(log.refusal)
        with log.one_wait():  # the outer one holds: nothing left
            second, took_second = timed(log.refusal)
    assert first is not None and second is not None
    assert t * 0.95 <= took_first < t * 1.5 and took_second < t * 0.25
    # outside it, a wait has its own block_timeout again
    third, took_third = timed(log.refusal)
    assert third is not None and took_third >= t * 0.95


# -- AuthZEN batch evaluations: block_timeout once per request -----------------------------
# A batch (POST /access/v1/evaluations) runs one decision per evaluation. Under ``block``
# with the queue full, each waited ``block_timeout``: four evaluations, four times as long,
# and four callers in ``blocked``. Now the whole request waits ``block_timeout`` at most
# (DecisionLog.one_wait), and counts once.

BATCH: dict[str, Any] = {
    "subject": {"type": "agent", "id": "bot"}, "resource": {"type": "a", "id": "r1"},
    "evaluations": [{"action": {"name": f"x{i}"}} for i in range(4)]}


def test_a_batch_of_evaluations_waits_one_block_timeout_in_all() -> None:
    from policyengine.server._authzen import evaluate_batch
    t = 0.6
    engine, log, sink, _ = make(t)
    before = log.stats()["blocked"]
    out, took = timed(lambda: evaluate_batch(engine, BATCH))
    # four evaluations: about t in all (before: 4 t)
    assert t * 0.95 <= took < t * 1.5, took
    assert [e["context"]["reasonCode"] for e in out["evaluations"]] == [
        "decision_log_unavailable"] * 4  # every one refused: fail closed
    assert log.stats()["blocked"] - before == 1
    # a second request has its own block_timeout, and is another caller
    _, took = timed(lambda: evaluate_batch(engine, BATCH))
    assert t * 0.95 <= took < t * 1.5, took
    assert log.stats()["blocked"] - before == 2
    # with room, the same batch is allowed, each evaluation recorded
    sink.opened.set()
    until(lambda: log.stats()["queue_depth"] == 0, "an empty queue")
    assert all(e["decision"] for e in evaluate_batch(engine, BATCH)["evaluations"])


def test_the_evaluations_endpoint_waits_one_block_timeout_in_all() -> None:
    import httpx

    from policyengine.server import ServiceConfig, create_app
    from tests.server.service_harness import serving
    t = 0.6
    engine, log, _, _ = make(t)
    app = create_app(engine, config=ServiceConfig(access_log=False))
    with serving(app) as port:
        before = log.stats()["blocked"]
        r, took = timed(lambda: httpx.post(
            f"http://127.0.0.1:{port}/access/v1/evaluations", json=BATCH, timeout=30))
    assert r.status_code == 200
    assert [e["decision"] for e in r.json()["evaluations"]] == [False] * 4
    assert took < t * 2.0, took  # before: 4 t and more
    assert log.stats()["blocked"] - before == 1
