"""Two promises of the decision log's overflow policies.

``drop`` never slows the caller: a record that finds the queue full is dropped at once
and counted, an operation's as well as a decision's, whatever ``block_timeout`` says
(None, the default, let an operation wait for ever, and with it an ``authorize`` whose
decision asks for an approval). ``block`` still waits.

Under ``deny``, ``healthy`` and the refusal are one state: the log never reports healthy
while it refuses decisions for its sink, nor unhealthy while it takes them. The tests
hold the thread that changes the state between the sink's flag and the log's open flag
(a patched ``_set_open``), and look at both.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import until

import policyengine as pe
from policyengine.audit import DecisionLog

from .sinks import GateSink, in_thread

POLICY = 'role r: a:*\nagent "bot": r\napproval ap: a:appr\n'
CAPACITY = 2
DEADLINE = 20.0


OPENED: list[tuple[pe.Engine, GateSink]] = []


@pytest.fixture(autouse=True)
def _close_logs() -> Iterator[None]:
    yield
    while OPENED:  # no log's threads outlive the test
        engine, sink = OPENED.pop()
        sink.heal()
        engine.close(timeout=2)


def make(overflow: str, **options: Any) -> tuple[pe.Engine, DecisionLog, GateSink]:
    sink = GateSink()
    log = DecisionLog(sink, overflow=overflow, retry_backoff=0.01,  # type: ignore[arg-type]
                      max_retry_backoff=0.02, **options)
    engine = pe.Engine.from_source(POLICY, decision_log=log)
    OPENED.append((engine, sink))
    return engine, log, sink


def fill(log: DecisionLog) -> None:
    """Stall the sink's writer and fill the queue: with ``batch_size=1`` the shipper holds
    one record in the sink, its queue four, the writer one more it cannot hand over
    (``taken`` 6, the log.start record among them); then the queue stays full."""
    def full() -> bool:
        while log.stats()["queue_depth"] < CAPACITY:  # room: this append cannot wait
            log.event("fill", {})
        stats = log.stats()
        return stats["taken"] >= 6 and stats["queue_depth"] >= CAPACITY
    until(full, "the queue to stay full")


def test_drop_drops_an_operation_at_once_with_no_block_timeout() -> None:
    engine, log, sink = make("drop", capacity=CAPACITY, batch_size=1)
    sink.gate.clear()
    fill(log)
    before = log.stats()["dropped"]
    thread, out = in_thread(lambda: log.event("token.revoke", {"grant": {"id": "g1"}}))
    thread.join(DEADLINE)
    assert not thread.is_alive(), "an operation under 'drop' waited for room"
    assert out == [False]                                 # not recorded ...
    assert log.stats()["dropped"] == before + 1           # ... and counted
    sink.gate.set()
    assert engine.authorize("bot", "a:read").allowed      # its record reports the drops
    assert log.flush(DEADLINE)
    assert sum(r["dropped"] for r in sink.records()) == log.stats()["dropped"]


def test_drop_never_holds_up_a_decision_that_asks_for_an_approval() -> None:
    engine, log, sink = make("drop", capacity=CAPACITY, batch_size=1)
    sink.gate.clear()
    fill(log)
    before = log.stats()["dropped"]
    thread, out = in_thread(lambda: engine.authorize("bot", "a:appr"))
    thread.join(DEADLINE)
    assert not thread.is_alive(), "authorize under 'drop' waited to record approval.request"
    (decision,) = out
    assert decision.status == "pending_approval"
    assert engine.approvals.get(decision.approval_id).status == "pending"  # it was asked
    assert log.stats()["dropped"] == before + 2  # the decision and the approval.request


def test_drop_drops_at_once_even_with_a_block_timeout() -> None:
    _engine, log, sink = make("drop", capacity=CAPACITY, batch_size=1, block_timeout=60.0)
    sink.gate.clear()
    fill(log)
    thread, out = in_thread(lambda: log.event("token.revoke", {"grant": {"id": "g1"}}))
    thread.join(DEADLINE)  # well under block_timeout: it did not wait for it
    assert not thread.is_alive() and out == [False]


def test_block_still_waits_for_room() -> None:
    _engine, log, sink = make("block", capacity=CAPACITY, batch_size=1)
    sink.gate.clear()
    fill(log)
    thread, out = in_thread(lambda: log.event("token.revoke", {"grant": {"id": "g1"}}))
    until(lambda: log.stats()["blocked"] >= 1, "the operation to wait for room")
    assert thread.is_alive() and out == []
    sink.gate.set()
    thread.join(DEADLINE)
    assert out == [True] and log.stats()["dropped"] == 0


@pytest.fixture
def hold(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., threading.Event]]:
    """``hold(thread_name, when)``: the next time ``thread_name`` is about to set the log's
    open flag with ``when(log)`` true, it stops there (the sink's flag already set) until
    the returned event is set; ``held`` is set once it stopped."""
    real = DecisionLog._set_open
    armed: list[tuple[str, Callable[[DecisionLog], bool], threading.Event]] = []
    held = threading.Event()
    released: list[threading.Event] = []

    def set_open(self: DecisionLog) -> None:
        if armed:
            name, when, go = armed[0]
            if threading.current_thread().name == name and when(self):
                armed.clear()
                held.set()
                go.wait(DEADLINE)
        real(self)

    def arm(name: str, when: Callable[[DecisionLog], bool]) -> threading.Event:
        go = threading.Event()
        held.clear()
        released.append(go)
        armed[:] = [(name, when, go)]
        return go

    monkeypatch.setattr(DecisionLog, "_set_open", set_open)
    arm.held = held  # type: ignore[attr-defined]
    yield arm
    armed.clear()
    for go in released:
        go.set()


def agree(engine: pe.Engine, log: DecisionLog) -> tuple[bool, bool]:
    healthy = log.healthy
    allowed = engine.authorize("bot", "a:read").allowed
    assert healthy == allowed, (f"log.healthy is {healthy} while the log "
                                f"{'takes' if allowed else 'refuses'} decisions")
    return healthy, allowed


#: How the sink goes wrong (``fails``: its writes raise; ``stalls``: a write does not
#: return), the options that make the log notice, and which of the log's threads sets
#: its state when the sink goes wrong and when it comes back (``heal()``).
FAULTS: dict[str, tuple[dict[str, Any], tuple[str, Callable[[DecisionLog], bool]],
                        tuple[str, Callable[[DecisionLog], bool]]]] = {
    "fails": ({}, ("decision-log-shipper", lambda log: log._failing),
              ("decision-log-shipper", lambda log: not log._failing)),
    "stalls": ({"stall_after": 0.05}, ("decision-log-writer", lambda log: log._stalled),
               ("decision-log-shipper", lambda log: not log._stalled)),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_deny_healthy_and_refusing_agree_while_a_sink_goes_wrong_and_recovers(
        hold: Callable[..., threading.Event], fault: str) -> None:
    options, (breaks_on, broken), (heals_on, healed) = FAULTS[fault]
    engine, log, sink = make("deny", **options)
    assert engine.authorize("bot", "a:read").allowed and log.flush(DEADLINE)

    go = hold(breaks_on, broken)
    if fault == "fails":
        sink.failing = True
    else:
        sink.gate.clear()
    engine.authorize("bot", "a:read")  # a write that fails, or stalls
    assert hold.held.wait(DEADLINE)    # type: ignore[attr-defined]
    agree(engine, log)                 # between the fault's flag and the refusal
    go.set()
    until(lambda: not log.healthy, f"the sink that {fault} to show")
    assert agree(engine, log) == (False, False)

    go = hold(heals_on, healed)
    sink.heal()                        # the retried batch goes through / the write ends
    assert hold.held.wait(DEADLINE)    # type: ignore[attr-defined]
    agree(engine, log)                 # between the recovery's flag and the opening
    go.set()
    until(lambda: log.healthy, "the sink to recover")
    assert agree(engine, log) == (True, True)


def test_a_close_while_the_state_is_being_set_leaves_the_log_closed() -> None:
    """``_set_open`` runs on the log's threads without the lock: a ``close()`` that sets
    its flags after ``_set_open`` read ``_closed`` (held here: the close runs as
    ``_set_open`` reads ``_failing``, the read after ``_closed``) must not be undone."""
    engine, log, _ = make("deny")
    assert engine.authorize("bot", "a:read").allowed and log.flush(DEADLINE)

    class Racing(DecisionLog):
        @property  # type: ignore[override]
        def _failing(self) -> bool:
            if not self._closed:  # what close() does, under its lock, then the threads end
                self._closed = True
                self._open = False
            return bool(self.__dict__.get("_failing_value", False))

        @_failing.setter
        def _failing(self, value: bool) -> None:
            self.__dict__["_failing_value"] = value

    failing = log.__dict__["_failing"]
    log.__class__ = Racing
    log.__dict__["_failing_value"] = failing
    try:
        log._set_open()
        assert log._closed and not log._open
        assert engine.authorize("bot", "a:read").code == "decision_log_unavailable"
    finally:
        log.__class__ = DecisionLog
        log._closed = False  # so that the fixture's close() stops the threads
        log._set_open()
