"""Never silent: each overflow policy with a sink that stalls and a sink that fails.

Every decision offered is either in the log or counted (dropped, or a denial the log
could not record); nothing is lost without a number saying so. The waits below poll a
counter with a generous deadline: they never time anything.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import until

import policyengine as pe
from policyengine.audit import DecisionLog, verify_files

from .sinks import GateSink

POLICY = 'role r: docs:*\nagent "bot": r\n'
DEADLINE = 20.0


def make(policy: str, mode: str, tmp_path: Path, **options: Any
         ) -> tuple[pe.Engine, DecisionLog, GateSink]:
    sink = GateSink(mode)
    options = {"capacity": 8, **options}
    log = DecisionLog(sink, overflow=policy, batch_size=2,  # type: ignore[arg-type]
                      spill_path=tmp_path / "spill.jsonl", stall_after=0.05,
                      retry_backoff=0.01, max_retry_backoff=0.02, **options)
    return pe.Engine.from_source(POLICY, decision_log=log), log, sink


def decided(sink: GateSink) -> list[str]:
    return [r["decision_id"] for r in sink.records() if r["kind"] == "authorize"]


def assert_chain(sink: GateSink, tmp_path: Path) -> None:
    path = tmp_path / "written.jsonl"
    path.write_bytes(b"".join(sink.lines))
    report = verify_files([path])
    assert report.ok, report.to_dict()


@pytest.mark.parametrize("mode", ["stall", "fail"])
def test_block_makes_callers_wait_and_loses_nothing(mode: str, tmp_path: Path) -> None:
    engine, log, sink = make("block", mode, tmp_path)
    ids: list[str] = []
    worker = threading.Thread(target=lambda: ids.extend(
        engine.authorize("bot", "docs:read", {"n": i}).decision_id for i in range(60)))
    worker.start()
    until(lambda: log.stats()["blocked"] > 0, "a caller to block")
    assert worker.is_alive() and len(ids) < 60   # backpressure: the caller is held
    assert log.stats()["dropped"] == 0
    sink.heal()
    worker.join(DEADLINE)
    assert not worker.is_alive()
    assert engine.close()
    assert decided(sink) == ids                    # every decision, in order
    stats = log.stats()
    assert stats["dropped"] == stats["denied"] == stats["undelivered"] == 0
    if mode == "fail":
        assert stats["sink_errors"] > 0
    assert_chain(sink, tmp_path)


@pytest.mark.parametrize("mode", ["stall", "fail"])
def test_block_timeout_denies_rather_than_waits_forever(mode: str, tmp_path: Path) -> None:
    engine, log, sink = make("block", mode, tmp_path, block_timeout=0.05)
    out = [engine.authorize("bot", "docs:read") for _ in range(40)]
    denied = [d for d in out if d.code == "decision_log_unavailable"]
    assert denied and all(d.status == "denied" for d in denied)
    assert log.stats()["unrecorded_denials"] == len(denied)
    sink.heal()
    assert engine.close()
    allowed = [d.decision_id for d in out if d.allowed]
    assert decided(sink) == allowed
    assert len(allowed) + log.stats()["unrecorded_denials"] == 40


@pytest.mark.parametrize("mode", ["stall", "fail"])
def test_deny_refuses_what_it_cannot_record(mode: str, tmp_path: Path) -> None:
    # A queue far larger than the test: only the sink's state can make it deny.
    engine, log, sink = make("deny", mode, tmp_path, capacity=100_000)
    out = [engine.authorize("bot", "docs:read")]
    until(lambda: not log.healthy, "the log to see its sink " + mode)
    out += [engine.authorize("bot", "docs:read") for _ in range(40)]
    denied = [d for d in out if d.code == "decision_log_unavailable"]
    assert len(denied) >= 40                       # fail closed while the sink is down
    sink.heal()
    until(lambda: log.healthy, "the sink to recover")
    after = engine.authorize("bot", "docs:read")
    assert after.allowed
    assert engine.close()
    recorded = {r["decision_id"]: r["result"]["reason_code"] for r in sink.records()
                if r["kind"] == "authorize"}
    stats = log.stats()
    assert stats["denied"] == len(denied) and stats["dropped"] == 0
    # No allowed decision without its record; each denial recorded or counted.
    assert all(d.decision_id in recorded for d in [*out, after] if d.allowed)
    in_log = [d for d in denied if recorded.get(d.decision_id) == "decision_log_unavailable"]
    assert len(in_log) + stats["unrecorded_denials"] == len(denied)
    assert_chain(sink, tmp_path)


@pytest.mark.parametrize("mode", ["stall", "fail"])
def test_spill_keeps_deciding_and_ships_the_spill_in_order(mode: str, tmp_path: Path
                                                           ) -> None:
    engine, log, sink = make("spill", mode, tmp_path)
    ids = [engine.authorize("bot", "docs:read", {"n": i}).decision_id for i in range(200)]
    until(lambda: log.stats()["spilled"] > 0, "records to spill")
    assert (tmp_path / "spill.jsonl").stat().st_size > 0
    assert log.stats()["dropped"] == log.stats()["denied"] == 0
    sink.heal()
    assert engine.close()
    assert decided(sink) == ids
    stats = log.stats()
    assert stats["spill_pending"] == 0 and stats["undelivered"] == 0
    assert not (tmp_path / "spill.jsonl").exists()
    assert_chain(sink, tmp_path)


def test_a_spill_left_by_a_previous_run_is_shipped_first(tmp_path: Path) -> None:
    others = {t for t in threading.enumerate() if t.name.startswith("decision-log-")}
    engine, log, sink = make("spill", "fail", tmp_path)
    first = [engine.authorize("bot", "docs:read").decision_id for _ in range(50)]
    until(lambda: log.stats()["spilled"] > 0, "records to spill")
    assert not log.close(timeout=0.5)              # the sink never came back
    assert log.stats()["undelivered"] == 0         # ... but everything is in the spill
    # ... and the log's threads stop: nothing keeps knocking at the dead sink.
    # (this log's: another test's log left open is not this one's to stop)
    until(lambda: not any(t.name.startswith("decision-log-") and t not in others
                          for t in threading.enumerate()),
          "the log's threads to stop")
    spilled = log.stats()["spilled"]
    again = GateSink()
    log2 = DecisionLog(again, overflow="spill", spill_path=tmp_path / "spill.jsonl")
    engine2 = pe.Engine.from_source(POLICY, decision_log=log2)
    second = engine2.authorize("bot", "docs:read").decision_id
    assert engine2.close()
    ids = decided(again)
    assert ids[-1] == second and set(first) - set(sink_ids := decided(sink)) <= set(ids)
    assert len(again.lines) >= spilled and len(sink_ids) + len(ids) >= 51


@pytest.mark.parametrize("mode", ["stall", "fail"])
def test_drop_counts_every_dropped_record_in_stats_and_the_next_record(
        mode: str, tmp_path: Path) -> None:
    engine, log, sink = make("drop", mode, tmp_path)
    ids = [engine.authorize("bot", "docs:read").decision_id for _ in range(100)]
    assert log.stats()["dropped"] > 0
    sink.heal()
    until(lambda: log.healthy and not log.stats()["queue_depth"], "the sink to drain")
    ids.append(engine.authorize("bot", "docs:read").decision_id)  # reports the drops
    assert engine.close()
    records = sink.records()
    dropped = log.stats()["dropped"]
    assert sum(r["dropped"] for r in records) == dropped
    assert ids[-1] in decided(sink)
    assert len(set(ids) & set(decided(sink))) + dropped == 101
    assert_chain(sink, tmp_path)                   # drops happen before the chain
