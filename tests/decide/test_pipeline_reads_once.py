"""The decision pipeline asks each question of a request once: the budgets step does not
ask the ledger's lean ``admission_text`` a second time after it answered (a miss or a
refusal), the rate limits and the shadow rate limits share one read of the request's
tenant and scope, and the options of a run (approval_id, partition, partition_agent,
acting_for) are checked off the common path in their documented order. What each
decision says is asserted too: asking less must not answer differently.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Clock

import policyengine.decide._pipeline as pipeline_module
from policyengine.budgets import Ledger
from policyengine.engine import Engine

NOW = 1773144000.0  # 2026-03-10T12:00:00Z

BUDGETED = """
currency USD
role payer: pay:*
agent "payer": payer
budget spend: pay:send limit 10 USD per day per agent
"""

RATED = """
role r: llm:*
agent "bot": r
ratelimit per-run: llm:run 2 per hour burst 2 per context.run_id
ratelimit per-ws: llm:run 1 per hour burst 1 per workspace mode log
"""


@pytest.fixture
def text_asks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str, str]]:
    """Every ``Ledger.admission_text`` call, as (principal, permission, text, unit)."""
    calls: list[tuple[str, str, str, str]] = []
    original = Ledger.admission_text

    def counting(self: Ledger, principal: str, permission: str, text: str, unit: str
                 ) -> Any:
        calls.append((principal, permission, text, unit))
        return original(self, principal, permission, text, unit)

    monkeypatch.setattr(Ledger, "admission_text", counting)
    return calls


def test_a_budget_check_asks_the_lean_admission_once(
        text_asks: list[tuple[str, str, str, str]]) -> None:
    engine = Engine.from_source(BUDGETED, clock=Clock(NOW))
    five = {"amount": "5.00", "currency": "USD"}
    eleven = {"amount": "11.00", "currency": "USD"}
    # first check of this text: a miss, then the full way (admission_parts) answers
    first = engine.authorize("payer", "pay:send", five)
    assert (first.status, first.budget.budget, str(first.budget.attempted)) == (
        "allowed", "default.spend", "5.00")
    assert len(text_asks) == 1
    # the steady state: the same text, admitted by the lean answer alone
    second = engine.authorize("payer", "pay:send", five)
    assert second.allowed and str(second.budget.remaining) == "10.00"
    assert len(text_asks) == 2
    # a new text: a miss again; then the same text refused, in the steady state
    refused = [engine.authorize("payer", "pay:send", eleven) for _ in range(3)]
    assert [(d.status, d.code, d.rules) for d in refused] == [
        ("denied", "budget_exceeded", ("default.spend",))] * 3
    assert {d.reason for d in refused} == {"pay:send would exceed budget default.spend"}
    assert len(text_asks) == 5  # one question per decision, miss or refusal alike
    assert set(text_asks) == {("payer", "pay:send", "5.00", "USD"),
                              ("payer", "pay:send", "11.00", "USD")}


def test_a_lean_admission_that_fails_is_asked_again_the_full_way(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Not asked, as far as the budgets step knows: it asks itself, and a store that
    keeps failing denies (fail closed), with the store's own error."""
    engine = Engine.from_source(BUDGETED, clock=Clock(NOW))
    five = {"amount": "5.00", "currency": "USD"}
    assert engine.authorize("payer", "pay:send", five).allowed  # the lean entry exists
    calls = []

    def failing(self: Ledger, *args: Any) -> Any:
        calls.append(args)
        raise RuntimeError("store gone")

    monkeypatch.setattr(Ledger, "admission_text", failing)
    d = engine.authorize("payer", "pay:send", five)
    assert (d.status, d.code) == ("denied", "budget_unavailable")
    assert d.reason == "budget check failed: RuntimeError: store gone"
    assert len(calls) == 2  # the run's lean try, then the budgets step's own


@pytest.mark.parametrize("partition", [None, "acme"])
def test_rate_limits_and_shadow_rate_limits_read_the_request_once(
        monkeypatch: pytest.MonkeyPatch, partition: str | None) -> None:
    reads: list[Any] = []
    original = pipeline_module._where

    def counting(part: str | None, fields: Any, context: dict[str, Any]) -> Any:
        reads.append(tuple(fields))
        return original(part, fields, context)

    monkeypatch.setattr(pipeline_module, "_where", counting)
    engine = Engine.from_source(RATED, clock=Clock(NOW))

    def ask(run_id: str, workspace: str) -> tuple[str, list[str]]:
        d = engine.authorize("bot", "llm:run", {"run_id": run_id, "workspace": workspace},
                             partition=partition)
        return d.code, [s.id for s in d.shadow]

    # each reads its own field of the one scope: per-run counts run_id, per-ws workspace
    assert ask("r1", "w1") == ("permitted", [])
    assert ask("r1", "w2") == ("permitted", [])
    assert ask("r2", "w1") == ("permitted", ["default.per-ws"])
    assert ask("r1", "w3") == ("rate_limited", [])  # the shadow is not asked then
    # once per decision, the fields of both (a hierarchy level reads every level)
    assert reads == [("app", "run_id", "toolset", "workflow", "workspace")] * 4


def test_a_call_no_rate_limit_covers_reads_nothing_for_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[Any] = []
    monkeypatch.setattr(pipeline_module, "_where",
                        lambda *args: reads.append(args) or (None, None))
    engine = Engine.from_source(RATED + "permit other: llm:other\n", clock=Clock(NOW))
    assert engine.authorize("bot", "llm:other", {"run_id": "r1"}).allowed
    assert reads == []


@pytest.mark.parametrize(("options", "message"), [
    ({"approval_id": 5, "partition": 5}, "approval_id must be a string, not int"),
    ({"partition": b"acme", "partition_agent": True}, "partition must be a string, not bytes"),
    ({"partition_agent": True, "acting_for": 7}, "partition_agent needs a partition"),
    ({"partition_agent": 1, "partition": "acme"},
     "partition_agent must be True or False, not int"),
    ({"partition_agent": 0}, "partition_agent must be True or False, not int"),
    ({"acting_for": ""}, "acting_for must be a non-empty string, not ''"),
    ({"acting_for": 7, "approval_id": "apr_1", "partition": ""},
     "acting_for must be a non-empty string, not int"),
    ({"acting_for": "alice", "token": "t"},
     "acting_for and a token both name whom the agent acts for: give one"),
])
def test_the_options_of_a_run_are_checked_in_order(options: dict[str, Any],
                                                    message: str) -> None:
    engine = Engine.from_source(RATED, clock=Clock(NOW))
    d = engine.authorize("bot", "llm:run", {"run_id": "r1"}, **options)
    assert (d.status, d.code, d.reason) == ("denied", "invalid_request", message)
    explained = engine.explain("bot", "llm:run", {"run_id": "r1"}, **options)
    assert explained.decision.reason == message
    # nothing was counted: the next call is the first of its run
    assert engine.authorize("bot", "llm:run", {"run_id": "r1"}).allowed
    assert engine.authorize("bot", "llm:run", {"run_id": "r1"}).allowed
    assert engine.authorize("bot", "llm:run", {"run_id": "r1"}).code == "rate_limited"
