"""Every decision handed to the log ends as exactly one of: written to the sink, counted
as dropped (``overflow="drop"``), or refused to the caller (``decision_log_unavailable``,
counted in ``denied``), whatever ``close()``, ``flush()`` or a failing sink does
meanwhile.

The hot path appends without the lock: it reads ``_open``, then appends. The tests hold
a thread at the racy point through the log's queue (a ``deque`` whose ``len`` waits for
the test when called from a chosen method, and then answers what it read before the
wait, as the real read would have), so each interleaving is forced, not hoped for. The
last test is the property under load: threads handing decisions over while ``close()``
runs, every one accounted for.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import policyengine as pe
from policyengine.audit import DecisionLog
from policyengine.audit import _log as log_module

from .sinks import in_thread

POLICY = 'role r: docs:*\nagent "bot": r\n'
DEADLINE = 20.0
PLAIN = pe.Engine.from_source(POLICY)  # decides without a log: the decisions handed over


class ListSink:
    """Keeps every line; blocks in ``write`` while ``gate`` is clear; raises while
    ``failing``; counts ``close()`` calls."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.gate = threading.Event()
        self.gate.set()
        self.failing = False
        self.closes = 0

    def write(self, lines: Sequence[bytes]) -> None:
        self.gate.wait(DEADLINE)
        if self.failing:
            raise OSError("collector down")
        self.lines.extend(lines)

    def close(self) -> None:
        self.closes += 1

    def decision_ids(self) -> list[str]:
        return [r["decision_id"] for r in map(json.loads, self.lines)
                if r["kind"] == "authorize"]


class HeldDeque(deque[Any]):
    """The log's queue, with :class:`Hold` hooks on ``len``: each is called with the
    name of the method that asked; ``len`` then answers the length it read before them
    (a hold keeps the caller just after its read, before it acts on it)."""

    holds: list[Callable[[str], None]]

    def __len__(self) -> int:
        n = super().__len__()
        for hold in getattr(self, "holds", ()):
            hold(sys._getframe(1).f_code.co_name)
        return n


class Hold:
    """Holds the first thread that asks ``len`` from ``caller`` (and, with ``when``,
    only once ``when()`` holds) until :meth:`release`."""

    def __init__(self, caller: str, when: Callable[[], bool] = lambda: True) -> None:
        self.caller, self.when = caller, when
        self.armed = True
        self.held, self._go = threading.Event(), threading.Event()
        self._lock = threading.Lock()

    def __call__(self, caller: str) -> None:
        if caller != self.caller:
            return
        with self._lock:
            if not self.armed or not self.when():
                return
            self.armed = False
        self.held.set()
        self._go.wait(DEADLINE)

    def wait(self) -> None:
        assert self.held.wait(DEADLINE), f"no thread reached {self.caller}'s read"

    def release(self) -> None:
        self._go.set()


OPENED: list[tuple[DecisionLog, ListSink, list[Callable[[str], None]]]] = []


@pytest.fixture(autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    while OPENED:  # no thread, held or not, outlives the test
        log, sink, holds = OPENED.pop()
        for hold in holds:
            if isinstance(hold, Hold):
                hold.release()
        sink.gate.set()
        sink.failing = False
        log.close(timeout=5)


def make(monkeypatch: pytest.MonkeyPatch, *holds: Hold, **options: Any
         ) -> tuple[DecisionLog, ListSink]:
    monkeypatch.setattr(log_module, "deque", HeldDeque)
    sink = ListSink()
    log = DecisionLog(sink, retry_backoff=0.01, max_retry_backoff=0.02, **options)
    monkeypatch.undo()
    queue = log._queue
    assert isinstance(queue, HeldDeque)
    queue.holds = list(holds)
    OPENED.append((log, sink, queue.holds))
    return log, sink


def hand_over(log: DecisionLog, n: int = 0) -> tuple[Any, Any]:
    """(the decision handed over, what the log returned)."""
    d = PLAIN.authorize("bot", "docs:read", {"n": n})
    inp = {"principal": "bot", "permission": "docs:read", "context": {"n": n}}
    return d, log.decision("authorize", d, inp, None, None, time.perf_counter_ns())


def joined(thread: threading.Thread, out: list[Any]) -> Any:
    thread.join(DEADLINE)
    assert not thread.is_alive(), "the thread never finished"
    (result,) = out
    return result


def refused(given: Any, got: Any) -> bool:
    return got is not given and got.code == "decision_log_unavailable"


# ---------------------------------------------------------------- append vs close
def test_a_decision_appended_after_the_writer_stopped_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller read the log open; ``close()`` then ran to its end (the writer saw the
    queue empty and stopped); then the caller appended. Nobody will ever write that
    record: the caller must get a refusal, counted, not an allowed decision the log
    has no record of (before, it got ``allowed`` and nothing was written nor
    counted)."""
    append = Hold("decision")
    log, sink = make(monkeypatch, append)
    thread, out = in_thread(lambda: hand_over(log))
    append.wait()
    assert log.close(DEADLINE)
    append.release()
    given, got = joined(thread, out)
    assert refused(given, got), "a decision the closed log never wrote was allowed"
    assert given.decision_id not in sink.decision_ids()
    stats = log.stats()
    assert (stats["denied"], stats["unrecorded_denials"], stats["dropped"]) == (1, 1, 0)
    assert stats["queue_depth"] == 0


def test_a_decision_appended_before_the_writer_stopped_is_written_not_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``close()`` has begun and the writer has read the queue empty, but has not yet
    stopped, when the caller appends and finds the log closed. The writer must look
    again before it stops and write the record; the caller keeps its decision (refusing
    it as well would count it twice; stopping on the stale read loses it)."""
    append = Hold("decision")
    log, sink = make(monkeypatch, append)
    assert log.flush(DEADLINE)  # log.start written: the writer idles on an empty queue
    # The writer's read at the top of its loop (not the one before it idles, made with
    # _idle set) once the log is closed: the read it decides to stop on.
    stop = Hold("_run_writer", when=lambda: log._closed and not log._idle)
    OPENED[-1][2].append(stop)
    thread, out = in_thread(lambda: hand_over(log))
    append.wait()
    closer, closed = in_thread(lambda: log.close(DEADLINE))
    stop.wait()                 # the writer read the queue empty, the log closed
    append.release()            # the caller appends and looks at the log again
    given, got = joined(thread, out)
    stop.release()              # the writer goes on from its read
    assert joined(closer, closed)
    assert got is given, "a decision the writer still took was refused"
    assert sink.decision_ids() == [given.decision_id]
    stats = log.stats()
    assert (stats["denied"], stats["dropped"], stats["undelivered"]) == (0, 0, 0)


def test_the_record_of_a_denial_made_as_the_log_closes_is_written_or_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``deny`` with the sink failing, a denial's own record is appended when
    there is room. A close that ends between that check and the append must not leave
    the record in a queue nobody reads while counting it as recorded: it is counted in
    ``unrecorded_denials``."""
    append = Hold("_deny")
    log, sink = make(monkeypatch, append, overflow="deny")
    sink.failing = True
    log.event("fail", {})   # a write that fails
    until(lambda: not log.healthy, "the failing sink to close the log to decisions")
    thread, out = in_thread(lambda: hand_over(log))
    append.wait()
    sink.failing = False
    assert log.close(DEADLINE)
    append.release()
    given, got = joined(thread, out)
    assert refused(given, got)
    assert got.decision_id not in sink.decision_ids()
    stats = log.stats()
    assert (stats["denied"], stats["unrecorded_denials"]) == (1, 1), \
        "a denial's record was neither written nor counted"


def test_an_operation_recorded_after_the_writer_stopped_is_counted_as_dropped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An operation already happened and cannot be refused: one appended after the
    writer stopped is counted as dropped, and ``event`` says it was not recorded."""
    append = Hold("event")
    log, sink = make(monkeypatch, append)
    thread, out = in_thread(lambda: log.event("token.revoke", {"grant": {"id": "g1"}}))
    append.wait()
    assert log.close(DEADLINE)
    append.release()
    assert joined(thread, out) is False
    assert not any(b'"token.revoke"' in line for line in sink.lines)
    assert log.stats()["dropped"] == 1


# ---------------------------------------------------------------- close vs close
def test_a_second_close_does_not_report_done_while_the_first_is_still_writing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``close()`` returns True when the sink took everything. A second call while the
    first still waits for the sink must not say so (it said True at once); it waits
    for the first, up to its own timeout, and answers what happened."""
    log, sink = make(monkeypatch)
    sink.gate.clear()
    given, got = hand_over(log)
    assert got is given
    first, done = in_thread(lambda: log.close(DEADLINE))
    until(lambda: log._closed, "the first close to begin")
    assert log.close(0.2) is False, "a second close said done while records were unwritten"
    sink.gate.set()
    assert joined(first, done) is True
    assert log.close(DEADLINE) is True
    assert sink.decision_ids() == [given.decision_id]
    assert sink.closes == 1


def test_two_threads_closing_at_once_close_the_sink_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ``close()`` calls at once: the first is held at its first clock read (which
    came after its look at ``_closed``), the second runs to its end. Both found the log
    open and both closed the sink, the first resetting the deadline the log's threads
    go by. One close does the work; the other waits for it, then finds it done."""
    log, sink = make(monkeypatch)
    real = time.monotonic
    held, go = threading.Event(), threading.Event()

    def monotonic() -> float:
        if threading.current_thread().name == "first-close" and not held.is_set():
            held.set()
            go.wait(DEADLINE)
        return real()

    monkeypatch.setattr(time, "monotonic", monotonic)
    out: list[bool] = []
    first = threading.Thread(target=lambda: out.append(log.close(DEADLINE)),
                             name="first-close", daemon=True)
    first.start()
    try:
        assert held.wait(DEADLINE)
        second = log.close(5.0)
    finally:
        go.set()
    first.join(DEADLINE)
    monkeypatch.undo()
    assert not first.is_alive() and out == [True]
    assert second is True
    assert sink.closes == 1


# ---------------------------------------------------------------- append vs flush
HOLD_POINTS = ["_encode", "_hand_over", "sink"]


@pytest.mark.parametrize("point", HOLD_POINTS)
def test_flush_is_not_done_while_a_record_handed_over_before_it_is_unwritten(
        monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    """``flush()`` returns True only once every record handed over before it is in the
    sink. The record is held on its way: the writer building it (``_encode``, before it
    counts as produced), handing it to the shipper (``_hand_over``), the sink writing
    it."""
    log, sink = make(monkeypatch)
    assert log.flush(DEADLINE)
    held, go = threading.Event(), threading.Event()
    if point == "sink":
        sink.gate.clear()
        go = sink.gate
    else:
        real = getattr(log, point)

        def holding(*args: Any) -> Any:
            held.set()
            go.wait(DEADLINE)
            return real(*args)

        monkeypatch.setattr(log, point, holding)
    try:
        given, got = hand_over(log)
        assert got is given
        if point == "sink":
            until(lambda: log.stats()["produced"] >= 2 and log._ship.empty(),
                  "the sink to be writing the record")
        else:
            assert held.wait(DEADLINE)
        assert log.flush(0.2) is False, f"flush said done with the record held in {point}"
    finally:
        go.set()
    assert log.flush(DEADLINE)
    assert sink.decision_ids() == [given.decision_id]


# ---------------------------------------------------------------- append vs a failing sink
def test_a_decision_appended_as_the_sink_fails_is_written_once_it_recovers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``deny``, a caller that read the log open appends after the sink failed
    (the log refuses from then on). Its decision stands and its record waits in the
    queue; once the sink is back it is written, once."""
    append = Hold("decision")
    log, sink = make(monkeypatch, append, overflow="deny")
    assert log.flush(DEADLINE)
    thread, out = in_thread(lambda: hand_over(log))
    append.wait()
    sink.failing = True
    log.event("fail", {})   # a write that fails
    until(lambda: not log.healthy, "the failing sink to close the log to decisions")
    append.release()
    given, got = joined(thread, out)
    assert got is given
    assert refused(*hand_over(log, 1))   # the log refuses the next one
    sink.failing = False
    until(lambda: log.healthy, "the sink to recover")
    assert log.flush(DEADLINE)
    assert sink.decision_ids().count(given.decision_id) == 1
    assert log.stats()["dropped"] == 0


# ---------------------------------------------------------------- the property
class Perturb:
    """Widens the racy windows under load: a caller that read the queue's length and
    the log open sometimes waits (a few milliseconds at most) for the writer to stop
    before it acts on the read, as a thread descheduled there would; the writer gives
    the interpreter away after each of its reads. Random, seeded per example."""

    def __init__(self, log: DecisionLog, seed: int) -> None:
        self.log = log
        self.random = random.Random(seed)

    def __call__(self, caller: str) -> None:
        if caller == "_run_writer":
            time.sleep(0)
        elif caller in ("decision", "event", "_deny") and self.random.random() < 0.05:
            self.log._writer.join(0.005)


def _run(overflow: str, threads: int, per_thread: int, capacity: int,
         close_after: int, seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(log_module, "deque", HeldDeque)
        sink = ListSink()
        log = DecisionLog(sink, overflow=overflow, capacity=capacity,  # type: ignore[arg-type]
                          batch_size=4, spill_path=Path(tmp) / "spill.jsonl",
                          retry_backoff=0.01, max_retry_backoff=0.02)
        mp.undo()
        assert isinstance(log._queue, HeldDeque)
        log._queue.holds = [Perturb(log, seed)]
        results: list[list[tuple[Any, Any]]] = [[] for _ in range(threads)]
        start = threading.Barrier(threads + 1)

        def work(mine: list[tuple[Any, Any]]) -> None:
            start.wait(DEADLINE)
            for n in range(per_thread):
                mine.append(hand_over(log, n))

        workers = [threading.Thread(target=work, args=(r,), daemon=True) for r in results]
        for w in workers:
            w.start()
        start.wait(DEADLINE)
        until(lambda: sum(map(len, results)) >= close_after, "decisions to be handed over")
        assert log.close(DEADLINE)
        for w in workers:
            w.join(DEADLINE)
            assert not w.is_alive()
        pairs = [p for r in results for p in r]
        stats = log.stats()
        written = sink.decision_ids()
        assert len(written) == len(set(written)), "a record was written twice"
        taken = [g for g, got in pairs if got is g]
        refusals = [got for g, got in pairs if got is not g]
        assert all(refused(g, got) for g, got in pairs if got is not g)
        taken_written = {g.decision_id for g in taken} & set(written)
        # Each decision handed over: written, dropped or refused, exactly one of them.
        assert len(taken_written) + stats["dropped"] + len(refusals) == len(pairs), stats
        if overflow != "drop":
            assert stats["dropped"] == 0
        assert len(refusals) == stats["denied"]
        denial_records = {d.decision_id for d in refusals} & set(written)
        assert len(denial_records) + stats["unrecorded_denials"] == stats["denied"]
        assert set(written) == taken_written | denial_records  # nothing else written
        assert stats["queue_depth"] == 0 and stats["undelivered"] == 0


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(overflow=st.sampled_from(["block", "spill", "deny", "drop"]),
       threads=st.integers(2, 6), capacity=st.integers(1, 32),
       close_after=st.integers(0, 600), seed=st.integers(0, 2**32 - 1))
def test_decisions_handed_over_while_close_runs_are_all_accounted_for(
        overflow: str, threads: int, capacity: int, close_after: int, seed: int) -> None:
    """N threads hand decisions over while ``close()`` runs: written + dropped +
    refused == handed over, with the thread switch interval short so that the threads
    interleave inside the hot path."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        _run(overflow, threads, 100, capacity, min(close_after, threads * 100), seed)
    finally:
        sys.setswitchinterval(interval)
