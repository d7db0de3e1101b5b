"""A value no record can be written for in full (``Decimal("1e99999999999")``, whose
plain text is 100 GB) never stops the decision log: such a number is written in
scientific notation, a record that still cannot be encoded is a placeholder in the
chain, and the records before and after it are delivered. Waits poll with a generous
deadline: they never time anything."""

from __future__ import annotations

import json
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import policyengine as pe
from policyengine.audit import CallbackSink, DecisionLog, _chain, _log, verify_files

POLICY = '''
currency EUR
role payer: payments:*
agent "bot": payer
'''
DEADLINE = 20.0
HOSTILE: dict[str, Any] = {
    "huge": Decimal("1e99999999999"), "tiny": Decimal("-1e-99999999999"),
    "zero": Decimal("0e-99999999999"), "big_int": 10**5000,
}


def offered_after(engine: pe.Engine, n: int) -> tuple[list[str], bool]:
    """``n`` decisions from another thread (the caller would hang on a dead writer
    under ``overflow="block"``): their ids, and whether they all returned in time."""
    ids: list[str] = []

    def work() -> None:
        for i in range(n):
            ids.append(engine.authorize("bot", "payments:pay", {"n": f"after-{i}"})
                       .decision_id)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(DEADLINE)
    return ids, not t.is_alive()


def test_a_huge_decimal_in_a_context_is_logged_and_the_log_keeps_delivering() -> None:
    records: list[dict[str, Any]] = []
    log = DecisionLog(CallbackSink(records.append), capacity=16)
    engine = pe.Engine.from_source(POLICY, decision_log=log)
    before = [engine.authorize("bot", "payments:pay", {"n": f"before-{i}"}).decision_id
              for i in range(5)]
    hostile = engine.authorize("bot", "payments:pay", dict(HOSTILE))
    after, returned = offered_after(engine, 100)  # more than the queue holds
    assert returned, "authorize hung: the log's writer is gone"
    assert log.flush(DEADLINE)
    by_id = {r["decision_id"]: r for r in records if r["kind"] == "authorize"}
    assert set(before + after + [hostile.decision_id]) <= set(by_id)
    assert by_id[hostile.decision_id]["input"]["context"] == {
        "huge": "1E+99999999999", "tiny": "-1E-99999999999", "zero": "0E-99999999999",
        "big_int": "<int of 16610 bits>"}
    stats = log.stats()
    assert stats["record_errors"] == 0 and stats["dropped"] == 0
    engine.close()


def test_an_event_with_a_huge_amount_is_logged() -> None:
    records: list[dict[str, Any]] = []
    log = DecisionLog(CallbackSink(records.append))
    assert log.ingest("tracengent", "llm_call",
                      {"cost": {"amount": Decimal("1e99999999999"), "currency": "USD"}})
    assert log.event("budget.record", {"operation": {"amount": Decimal("-1e-999999999")}})
    assert log.close(DEADLINE)
    (event,) = [r for r in records if r["kind"] == "event"]
    assert event["event"]["cost"]["amount"] == "1E+99999999999"
    (op,) = [r for r in records if r["kind"] == "budget.record"]
    assert op["operation"]["amount"] == "-1E-999999999"


def test_a_record_that_cannot_be_encoded_stands_as_a_placeholder_in_the_chain(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = _log.encode

    def encode(record: dict[str, Any]) -> bytes:
        if "poison" in str(record.get("input")):
            raise MemoryError
        return real(record)

    monkeypatch.setattr(_log, "encode", encode)
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(str(path), capacity=8)
    engine = pe.Engine.from_source(POLICY, decision_log=log)
    before = engine.authorize("bot", "payments:pay", {"n": "before"}).decision_id
    poisoned = engine.authorize("bot", "payments:pay", {"n": "poison"}).decision_id
    after, returned = offered_after(engine, 40)
    assert returned
    assert log.flush(DEADLINE)
    assert log.stats()["record_errors"] == 1
    engine.close()
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    ids = [r.get("decision_id") for r in records]
    assert ids.index(before) < ids.index(poisoned) < ids.index(after[0])
    assert set(after) <= set(ids)
    (placeholder,) = [r for r in records if "record_error" in r]
    assert placeholder["decision_id"] == poisoned and placeholder["kind"] == "authorize"
    assert placeholder["record_error"] == "MemoryError" and placeholder["timestamp"]
    assert "input" not in placeholder
    assert verify_files([path]).ok  # its place in the chain is kept


def test_a_fault_outside_any_record_is_counted_and_the_writer_lives_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = _log.seal
    failed = threading.Event()

    def seal(encoded: bytes) -> tuple[bytes, str]:
        if b"fault" in encoded and not failed.is_set():
            failed.set()
            raise RuntimeError("a bug")
        return real(encoded)

    monkeypatch.setattr(_log, "seal", seal)
    records: list[dict[str, Any]] = []
    log = DecisionLog(CallbackSink(records.append), capacity=8)
    engine = pe.Engine.from_source(POLICY, decision_log=log)
    offered = [engine.authorize("bot", "payments:pay", {"n": "fault"}).decision_id]
    after, returned = offered_after(engine, 40)
    assert returned and failed.is_set()
    assert log.flush(DEADLINE)
    logged = {r.get("decision_id") for r in records}
    assert set(after[-10:]) <= logged  # the writer went on
    missing = [i for i in offered + after if i not in logged]
    assert missing and log.stats()["dropped"] == len(missing)  # each one counted
    assert sum(r["dropped"] for r in records) == len(missing)
    engine.close()


_decimals = st.builds(
    lambda sign, digits, exp: Decimal((sign, tuple(int(c) for c in digits), exp)),
    st.integers(0, 1), st.text("0123456789", min_size=1, max_size=40),
    st.integers(-10**15, 10**15) | st.integers(-5000, 5000))


@given(_decimals)
def test_any_decimal_is_written_exactly_and_in_bounded_space(value: Decimal) -> None:
    line = _chain.encode({"v": value})
    assert len(line) <= len(str(value)) + 4400 + 10
    text = json.loads(line)["v"]
    assert Decimal(text) == value  # the exact value (plain text drops a 0E+1's exponent)
    if -4300 <= value.adjusted() <= 4300:
        assert text == format(value, "f")
    else:
        assert text == str(value)
