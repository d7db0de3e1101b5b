"""A decision the log refuses (``decision_log_unavailable``) takes nothing: the pipeline
asks the log (``DecisionLog.refusal``) before its first step that takes something, so no
rate-limit call is counted, no approval is used up and no approval request is recorded
for a decision nobody may act on. ``explain`` gives the same denial."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

import policyengine as pe
from policyengine.audit import DecisionLog
from policyengine.budgets import MemoryStore

from .sinks import GateSink

POLICY = """namespace t
role r: a:*
agent "bot": r
approval ap: a:appr
ratelimit rl: a:rl 1 per hour
tool pay: mcp "pay" -> a:rl
"""


OPENED: list[pe.Engine] = []


@pytest.fixture(autouse=True)
def _close_logs() -> Iterator[None]:
    yield
    while OPENED:  # no log's threads outlive the test
        OPENED.pop().close(timeout=1)


def engines(overflow: str = "drop") -> tuple[pe.Engine, pe.Engine, GateSink]:
    """An engine with a log and one without, on the same budget store and approvals."""
    store, approvals = MemoryStore(), pe.MemoryApprovalStore()
    sink = GateSink()
    log = DecisionLog(sink, overflow=overflow, stall_after=0.05,  # type: ignore[arg-type]
                      retry_backoff=0.01, max_retry_backoff=0.02)
    logged = pe.Engine.from_source(POLICY, decision_log=log, budget_store=store,
                                   approvals=approvals)
    plain = pe.Engine.from_source(POLICY, budget_store=store, approvals=approvals)
    OPENED.append(logged)
    return logged, plain, sink


def refuse(engine: pe.Engine, how: str, sink: GateSink) -> None:
    log = engine.decision_log
    assert log is not None
    if how == "closed":
        log.close(timeout=2)
    else:  # overflow "deny" with its sink failing: it refuses once it sees that
        sink.failing = True
        for _ in range(200):
            engine.authorize("bot", "a:other")
            if not log.healthy:
                break
            log.flush(0.05)
        assert not log.healthy


CASES = [("closed", "drop"), ("closed", "block"), ("failing", "deny")]


@pytest.mark.parametrize(("how", "overflow"), CASES)
def test_a_refused_decision_takes_no_rate_limit_call(how: str, overflow: str) -> None:
    logged, plain, sink = engines(overflow)
    refuse(logged, how, sink)
    for ask in (lambda: logged.authorize("bot", "a:rl"),
                lambda: logged.tool_authorize("bot", transport="mcp", tool_name="pay")):
        d = ask()
        assert (d.status, d.code) == ("denied", "decision_log_unavailable")
    # the one call per hour is still there: the refused calls counted for nothing
    assert plain.authorize("bot", "a:rl").allowed
    assert plain.authorize("bot", "a:rl").code == "rate_limited"


@pytest.mark.parametrize(("how", "overflow"), CASES)
def test_a_refused_decision_uses_no_approval_and_asks_for_none(how: str, overflow: str
                                                               ) -> None:
    logged, plain, sink = engines(overflow)
    pending = plain.authorize("bot", "a:appr", {"x": "1"})
    plain.approvals.approve(pending.approval_id, by="alice")
    refuse(logged, how, sink)
    d = logged.authorize("bot", "a:appr", {"x": "1"}, approval_id=pending.approval_id)
    assert (d.status, d.code) == ("denied", "decision_log_unavailable")
    assert plain.approvals.get(pending.approval_id).status == "approved"  # not used
    before = len(plain.approvals.list())
    d = logged.authorize("bot", "a:appr", {"x": "2"})  # would be pending
    assert (d.status, d.code, d.approval_id) == ("denied", "decision_log_unavailable",
                                                 None)
    assert len(plain.approvals.list()) == before  # no approval request recorded
    assert plain.authorize("bot", "a:appr", {"x": "1"},
                           approval_id=pending.approval_id).allowed


@pytest.mark.parametrize("request_", [
    ("a:rl", {}, None), ("a:appr", {"x": "1"}, None), ("a:appr", {"x": "1"}, "ap-x"),
    ("a:other", {}, None), ("nope", 5, None)])
def test_explain_is_refused_exactly_as_authorize(request_: tuple[str, Any, Any]) -> None:
    logged, _, sink = engines()
    refuse(logged, "closed", sink)
    permission, context, approval_id = request_
    explained = logged.explain("bot", permission, context, approval_id=approval_id).decision
    decided = logged.authorize("bot", permission, context, approval_id=approval_id)
    assert (explained.status, explained.code, explained.reason) == (
        decided.status, decided.code, decided.reason)
    assert decided.code == "decision_log_unavailable"


def test_the_log_records_the_refusal_it_answered() -> None:
    logged, _, sink = engines("deny")
    refuse(logged, "failing", sink)
    out = [logged.authorize("bot", "a:rl") for _ in range(3)]
    assert all(d.code == "decision_log_unavailable" for d in out)
    sink.failing = False
    log = logged.decision_log
    assert log is not None
    assert logged.close()
    recorded = {r["decision_id"]: r["result"]["reason_code"]
                for r in map(json.loads, sink.lines) if r["kind"] == "authorize"}
    # under "deny" the denial is recorded (the queue has room): the one answered
    assert [recorded.get(d.decision_id) for d in out] == ["decision_log_unavailable"] * 3
