"""A stall is a write still running: the stall watcher, racing a write that ends while
it decides, must not mark the log stalled after the write is done (under ``deny`` that
closed the log until some later write, refusing decisions in between)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

import policyengine as pe
from policyengine.audit import DecisionLog

POLICY = 'role r: docs:*\nagent "bot": r\n'


def test_a_write_that_ends_while_the_watcher_decides_is_no_stall(
        monkeypatch: pytest.MonkeyPatch) -> None:
    writing, release = threading.Event(), threading.Event()
    in_watch, watch_may_go = threading.Event(), threading.Event()
    armed = threading.Event()

    class HeldSink:
        """Holds the write that carries the first decision until released."""

        def write(self, lines: Sequence[bytes]) -> None:
            if any(b'"authorize"' in line for line in lines):
                writing.set()
                release.wait(30)

        def close(self) -> None:
            pass

    real = time.monotonic

    def monotonic() -> float:
        # The watcher's clock read, on the writer thread while a write runs: held until
        # the write has ended, then far past stall_after.
        if armed.is_set() and threading.current_thread().name == "decision-log-writer":
            armed.clear()
            in_watch.set()
            watch_may_go.wait(30)
            return real() + 1000.0
        return real()

    log = DecisionLog(HeldSink(), overflow="deny", stall_after=100.0)
    engine = pe.Engine.from_source(POLICY, decision_log=log)
    try:
        assert engine.authorize("bot", "docs:read").allowed
        assert writing.wait(30), "the sink never saw the decision"
        monkeypatch.setattr(time, "monotonic", monotonic)
        armed.set()
        assert in_watch.wait(30), "the stall watcher never looked at the running write"
        release.set()  # the write ends while the watcher is between its read and its mark
        assert log.flush(30)
        watch_may_go.set()
        time.sleep(0.5)  # the watcher finishes its look (a late one only hides the race)
        monkeypatch.undo()
        assert log.healthy, "a write that had ended was marked a stall"
        assert engine.authorize("bot", "docs:read").allowed
    finally:
        release.set()
        watch_may_go.set()
        monkeypatch.undo()
        engine.close()
