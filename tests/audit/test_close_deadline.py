"""``close(timeout)`` keeps its deadline whatever the sink does, and accounts for every
record handed over exactly once: written, in the spill file, counted as undelivered,
dropped or refused.

Under ``spill`` with the spill file full and the sink down, the writer waited for room
in the spill forever: ``close()`` returned long after its timeout (it joined each thread
a second past it), and left both threads running, knocking at the dead sink, with
records still in the queue. A retry's backoff slept through the deadline too. Each test
waits for its state through the log's own signals (the spill refusing a batch, a sink
write under way), never on the clock.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import until

import policyengine as pe
from policyengine.audit import DecisionLog, verify_files

from .sinks import GateSink

POLICY = 'role r: docs:*\nagent "bot": r\n'
TIMEOUT = 2.0
SLACK = 0.5  # what a shared machine may add to a deadline: far less than the old second


class ClosingSink(GateSink):
    """A :class:`GateSink` that counts its ``close()`` calls."""

    def __init__(self, mode: str | None = None) -> None:
        super().__init__(mode)
        self.closes = 0

    def close(self) -> None:
        self.closes += 1


def open_files(path: Path) -> list[str]:
    """This process's file descriptors open on ``path`` (or its ``.tmp`` beside it)."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("no /proc/self/fd")
    out = []
    for fd in os.listdir(fds):
        with_target = fds / fd
        try:
            target = os.readlink(with_target)
        except OSError:
            continue
        if target.startswith(str(path.with_suffix(""))):
            out.append(target)
    return out


def spill_full(log: DecisionLog) -> threading.Event:
    """Set once the spill refused a batch for want of room: the writer is then waiting
    for the sink, holding that batch."""
    full = threading.Event()
    spill = log._spill

    def watched(lines: list[bytes]) -> bool:
        took = spill(lines)
        if not took:
            full.set()
        return took

    log._spill = watched  # type: ignore[method-assign]
    return full


def seqs(path: Path) -> list[int]:
    return [json.loads(line)["seq"] for line in path.read_bytes().splitlines()]


def closed_in_time(log: DecisionLog, timeout: float = TIMEOUT) -> tuple[bool, float]:
    began = time.monotonic()
    done = log.close(timeout)
    return done, time.monotonic() - began


@pytest.mark.parametrize("backoff", [0.01, 30.0])
def test_a_full_spill_and_a_dead_sink_close_in_time_and_lose_nothing(
        backoff: float, tmp_path: Path) -> None:
    spill_path = tmp_path / "spill.jsonl"
    sink = ClosingSink("fail")
    log = DecisionLog(sink, overflow="spill", spill_path=spill_path, spill_max_bytes=1500,
                      capacity=8, batch_size=1, block_timeout=0, retry_backoff=backoff,
                      max_retry_backoff=backoff)
    full = spill_full(log)
    engine = pe.Engine.from_source(POLICY, decision_log=log)
    out: list[pe.Decision] = []
    while not full.is_set():  # one at a time, until the writer waits on a full spill
        out.append(engine.authorize("bot", "docs:read", {"n": len(out)}))
        until(lambda: log.stats()["queue_depth"] == 0 or full.is_set(), "the writer")
        assert len(out) < 100, "the spill never filled"
    # The writer holds one batch and takes no more: these fill the queue, the rest are
    # refused (block_timeout=0: nobody waits).
    out += [engine.authorize("bot", "docs:read", {"n": len(out) + i}) for i in range(12)]
    assert log.stats()["queue_depth"] == 8

    done, took = closed_in_time(log)
    assert done is False                           # the sink took nothing
    assert took < TIMEOUT + SLACK, f"close({TIMEOUT}) took {took:.2f} s"
    # No thread left running, knocking at the dead sink; the sink closed once; no file
    # left open on the spill.
    assert not log._writer.is_alive() and not log._shipper.is_alive()
    assert sink.closes == 1 and sink.lines == []
    assert open_files(spill_path) == []
    errors = log.stats()["sink_errors"]
    time.sleep(0.1)
    assert log.stats()["sink_errors"] == errors

    # Every record once: allowed decisions' records are in the spill (in order, with
    # the closing checkpoint), refused ones counted; nothing queued nor undelivered.
    stats = log.stats()
    allowed = [d.decision_id for d in out if d.allowed]
    refused = [d for d in out if not d.allowed]
    assert all(d.code == "decision_log_unavailable" for d in refused)
    assert (stats["queue_depth"], stats["undelivered"], stats["dropped"]) == (0, 0, 0)
    assert stats["denied"] == stats["unrecorded_denials"] == len(refused) > 0
    records = [json.loads(line) for line in spill_path.read_bytes().splitlines()]
    assert [r["decision_id"] for r in records if r["kind"] == "authorize"] == allowed
    assert seqs(spill_path) == list(range(1, stats["seq"] + 1))
    assert stats["spill_pending"] == len(records) == stats["produced"]
    assert records[-1]["kind"] == "log.checkpoint"

    # The next log on that spill ships it all first, one chain.
    again = ClosingSink()
    log2 = DecisionLog(again, overflow="spill", spill_path=spill_path)
    assert log2.close(TIMEOUT)
    shipped = again.records()
    assert [r["decision_id"] for r in shipped if r["kind"] == "authorize"] == allowed
    (tmp_path / "shipped.jsonl").write_bytes(b"".join(again.lines[:len(records)]))
    assert verify_files([tmp_path / "shipped.jsonl"]).ok


def test_a_dead_sink_without_a_spill_counts_what_it_did_not_take(tmp_path: Path) -> None:
    """No spill file: what the sink did not take is counted as undelivered, and the
    threads stop at the deadline, even in the middle of a long backoff."""
    sink = ClosingSink("fail")
    log = DecisionLog(sink, capacity=8, batch_size=1, retry_backoff=30.0,
                      max_retry_backoff=30.0)
    engine = pe.Engine.from_source(POLICY, decision_log=log)
    out = [engine.authorize("bot", "docs:read") for _ in range(5)]
    until(lambda: log.stats()["sink_errors"] > 0, "the sink to fail")
    done, took = closed_in_time(log)
    assert done is False and took < TIMEOUT + SLACK
    assert not log._writer.is_alive() and not log._shipper.is_alive()
    stats = log.stats()
    assert all(d.allowed for d in out)
    # log.start, five decisions, the checkpoint: none written, each counted once.
    assert (stats["produced"], stats["undelivered"], stats["written"]) == (7, 7, 0)
    assert stats["queue_depth"] == stats["spilled"] == stats["dropped"] == 0
    assert sink.closes == 1


class HeldSink(ClosingSink):
    """Its first write blocks (the sink stalled) until :attr:`release` is set, then
    fails; every write is counted in :attr:`writes`."""

    def __init__(self) -> None:
        super().__init__("fail")
        self.writing = threading.Event()
        self.release = threading.Event()
        self.writes = 0

    def write(self, lines: Sequence[bytes]) -> None:
        self.writes += 1
        self.writing.set()
        self.release.wait(60)
        super().write(lines)


def test_a_write_under_way_at_the_deadline_ends_in_the_spill_in_order(
        tmp_path: Path) -> None:
    """A sink write cannot be cut short: close() returns at its deadline all the same,
    with what waited for the sink in the spill; the shipper, when the write fails, puts
    its batch in front of them (the spill stays in order), closes the sink and stops,
    making no new write."""
    spill_path = tmp_path / "spill.jsonl"
    sink = HeldSink()
    log = DecisionLog(sink, spill_path=spill_path, capacity=64, batch_size=1)
    engine = pe.Engine.from_source(POLICY, decision_log=log)
    assert sink.writing.wait(20)                   # log.start, held in the sink
    out: list[Any] = [engine.authorize("bot", "docs:read", {"n": n}) for n in range(10)]
    done, took = closed_in_time(log, 1.0)
    assert done is False and took < 1.0 + SLACK
    assert log._shipper.is_alive()                 # still in the write
    assert not log._writer.is_alive()
    stats = log.stats()
    # Ten decisions and the checkpoint in the spill; log.start in the sink's hands.
    assert (stats["spill_pending"], stats["undelivered"]) == (11, 1)
    sink.release.set()
    log._shipper.join(20)
    assert not log._shipper.is_alive()
    assert sink.writes == 1 and sink.closes == 1
    stats = log.stats()
    assert (stats["spill_pending"], stats["undelivered"]) == (12, 0)
    assert seqs(spill_path) == list(range(1, 13))
    records = [json.loads(line) for line in spill_path.read_bytes().splitlines()]
    assert [r["decision_id"] for r in records if r["kind"] == "authorize"] == [
        d.decision_id for d in out]


class TimedSink(ClosingSink):
    """Takes every write, slowly (``pause`` seconds), noting when each began."""

    def __init__(self, pause: float) -> None:
        super().__init__()
        self.pause = pause
        self.began: list[float] = []

    def write(self, lines: Sequence[bytes]) -> None:
        self.began.append(time.monotonic())
        time.sleep(self.pause)
        super().write(lines)


def test_no_sink_write_starts_once_close_has_given_up(tmp_path: Path) -> None:
    """The shipper reads close()'s give-up time right before each write. It read it only
    at the top of its loop, a queue wait away from the write: a batch it took from its
    queue just then was written all the same, starting at the deadline, and the write
    ran on after close() returned. Here the shipper's queue hands over each batch only
    once the give-up time has passed: no write may start, and each batch goes to the
    spill, in order, before close() returns."""
    spill_path = tmp_path / "spill.jsonl"
    sink = TimedSink(0.6)
    log = DecisionLog(sink, spill_path=spill_path, capacity=64, batch_size=1)
    engine = pe.Engine.from_source(POLICY, decision_log=log)
    assert log.flush(20) and len(sink.lines) == 1  # log.start, written
    ship = log._ship
    got = ship.get
    waiting = threading.Event()

    def late(block: bool = True, timeout: float | None = None) -> Any:
        waiting.set()
        item = got(block, timeout)
        if item is not None:
            until(lambda: log._close_deadline_passed(), "close() to give up", 30)
        return item

    ship.get = late  # type: ignore[method-assign]
    assert waiting.wait(20)  # the shipper waits in this get: it has no batch yet
    out = [engine.authorize("bot", "docs:read", {"n": n}) for n in range(3)]
    until(lambda: log.stats()["queue_depth"] == 0, "the writer")
    done, took = closed_in_time(log, 1.0)
    assert done is False and took < 1.0 + SLACK
    give_up = log._close_by
    assert give_up is not None
    assert [t for t in sink.began if t > give_up] == []  # no write began after it
    assert not log._shipper.is_alive()  # nothing outlived close()
    stats = log.stats()
    assert (stats["written"], stats["undelivered"], stats["spill_pending"]) == (1, 0, 4)
    records = [json.loads(line) for line in spill_path.read_bytes().splitlines()]
    assert [r["decision_id"] for r in records if r["kind"] == "authorize"] == [
        d.decision_id for d in out]
    assert seqs(spill_path) == [2, 3, 4, 5] and records[-1]["kind"] == "log.checkpoint"
    assert sink.closes == 1


def test_a_retry_pause_ends_at_its_time_or_at_the_give_up_time() -> None:
    """One wait: the pause between retries lasts its time (False), or ends at close()'s
    give-up time (True), set before it began or while it waits, and waits without
    spinning once the log is closing."""
    log = DecisionLog(ClosingSink())
    try:
        began = time.monotonic()
        assert log._pause(0.1) is False
        assert 0.1 <= time.monotonic() - began < 0.1 + SLACK

        waits: list[float | None] = []
        closing = log._closing
        real_wait = closing.wait

        def counted(timeout: float | None = None) -> bool:
            waits.append(timeout)
            return real_wait(timeout)

        closing.wait = counted  # type: ignore[method-assign]
        out: list[bool] = []
        pausing = threading.Thread(target=lambda: out.append(log._pause(30.0)))
        began = time.monotonic()
        pausing.start()
        until(lambda: bool(waits), "the pause to wait")
        assert log.close(0.4)  # sets the give-up time 0.1 s before its deadline: wakes it
        pausing.join(5)
        assert out == [True] and time.monotonic() - began < 0.4 + SLACK
        assert len(waits) <= 3, waits  # woken once, then one wait to the give-up time

        log._close_by = time.monotonic() - 1  # already past: True at once
        assert log._pause(30.0) is True
    finally:
        log.close(1.0)
