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


def make(timeout: float) -> tuple[pe.Engine, DecisionLog, GatedSink, HookStore]:
    sink, store = GatedSink(), HookStore()
    log = DecisionLog(sink, overflow="block", capacity=CAPACITY, batch_size=1,
                      block_timeout=timeout)
    engine = pe.Engine.from_source(POLICY, decision_log=log, budget_store=store)
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
    if ask == "authorize":  # the hand-over's wait is counted as blocked: let one more
        again = threading.Thread(target=lambda: (
            until(lambda: log.stats()["blocked"] == 1, "the hand-over to wait"),
            sink.let_one()))
    else:  # explain's wait counts nothing: it is waiting once the hook has refilled
        again = threading.Thread(target=lambda: (
            until(lambda: sink.let == 1 and store.hook is None, "the refill"),
            sink.let_one()))
        hook = store.hook

        def refill_once() -> None:
            hook()
            store.hook = None

        store.hook = refill_once
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
