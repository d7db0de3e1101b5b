"""Budgets in ``authorize`` / ``tool_authorize`` decisions (issue 6, item 4).

A request whose spend would not fit a covering budget is denied ``budget_exceeded`` with
the budget's details on the wire; allowed decisions report the tightest covering budget;
authorize only projects (it never spends). Ledger state is set up with
``engine.budgets.record`` / ``reserve``. Expected values are worked out by hand from
docs/budgets.md and docs/semantics.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Clock

from policyengine import tokens
from policyengine._conformance import run_fixture
from policyengine.budgets import SQLiteStore
from policyengine.engine import Engine

NOW = 1773144000  # 2026-03-10T12:00:00Z
DAY_END = "2026-03-11T00:00:00Z"
MONTH_END = "2026-04-01T00:00:00Z"
KEYS = tokens.KeySet.generate()

POLICY = """namespace shop
currency EUR
rate USD 0.92
role buyer: payments:*, invoices:*, gifts:*, llm:*, tools:*
agent "bot": buyer
agent "helper": buyer
budget daily: payments:* limit 100 EUR per day per agent
budget paycalls: payments:* limit 4 calls per day per agent
budget team: invoices:* limit 50 EUR per month per tenant
budget person: gifts:* limit 50 EUR per day per acting_for
budget toks: llm:* limit 1000 tokens per hour per agent
budget rate: tools:* limit 3 calls per minute per agent
tool pay: function "pay_out" -> payments:transfer { amount = $.amount, currency = $.currency }
"""


def engine(text: str = POLICY, clock: Clock | None = None, **options: Any) -> Engine:
    return Engine.from_source(text, name="t.policy", clock=clock or Clock(NOW), keys=KEYS,
                              **options)


def eur(value: str, **extra: Any) -> dict[str, Any]:
    return {"amount": value, "currency": "EUR", **extra}


def money_details(budget: str, subject: str, limit: str, attempted: str, projected: str,
                  remaining: str, *, spent: str = "0.00", reserved: str = "0.00",
                  debt: str = "0.00", end: str | None = DAY_END) -> dict[str, Any]:
    return {"budget": budget, "subject": subject, "limit": limit, "spent": spent,
            "reserved": reserved, "debt": debt, "attempted": attempted,
            "projected": projected, "remaining": remaining, "currency": "EUR",
            "windowEnd": end}


def wire_of(decision: Any) -> dict[str, Any]:
    wire = decision.to_wire()
    json.dumps(wire)  # JSON-ready
    return wire


# --------------------------------------------------------------------------- denials
def test_spend_larger_than_the_remaining_budget_is_denied_with_details() -> None:
    e = engine()
    e.budgets.record("bot", "payments:refund", "70", "EUR")
    wire = wire_of(e.authorize("bot", "payments:refund", eur("30.01")))
    assert (wire["status"], wire["reasonCode"], wire["allowed"]) == (
        "denied", "budget_exceeded", False)
    assert wire["rules"] == ["shop.daily"]
    assert wire["budget"] == money_details("shop.daily", "bot", "100.00", "30.01", "100.01",
                                           "30.00", spent="70.00")
    ok = wire_of(e.authorize("bot", "payments:refund", eur("30")))
    assert ok["allowed"] is True
    assert ok["budget"] == money_details("shop.daily", "bot", "100.00", "30.00", "100.00",
                                         "30.00", spent="70.00")


def test_larger_than_the_whole_limit_on_a_fresh_ledger() -> None:
    wire = wire_of(engine().authorize("bot", "payments:refund", eur("100.01")))
    assert wire["reasonCode"] == "budget_exceeded"
    assert wire["budget"] == money_details("shop.daily", "bot", "100.00", "100.01", "100.01",
                                           "100.00")


def test_live_reservations_count_and_expired_ones_do_not() -> None:
    clock = Clock(NOW)
    e = engine(clock=clock)
    e.budgets.reserve("bot", "payments:refund", "80", "EUR", ttl=60)
    wire = wire_of(e.authorize("bot", "payments:refund", eur("21")))
    assert wire["reasonCode"] == "budget_exceeded"
    assert wire["budget"] == money_details("shop.daily", "bot", "100.00", "21.00", "101.00",
                                           "20.00", reserved="80.00")
    clock.t = NOW + 60  # the reservation expires at NOW + 60
    assert e.authorize("bot", "payments:refund", eur("21")).allowed


def test_next_window_starts_fresh() -> None:
    clock = Clock(NOW)
    e = engine(clock=clock)
    e.budgets.record("bot", "payments:refund", "100", "EUR")
    assert e.authorize("bot", "payments:refund", eur("0.01")).code == "budget_exceeded"
    clock.t = NOW + 12 * 3600  # 2026-03-11T00:00:00Z
    wire = wire_of(e.authorize("bot", "payments:refund", eur("0.01")))
    assert wire["allowed"] and wire["budget"]["windowEnd"] == "2026-03-12T00:00:00Z"


def test_debt_blocks_every_new_spend() -> None:
    text = POLICY.replace("limit 100 EUR per day per agent", "limit 100 EUR per day per agent "
                          "overdraft 20")
    e = engine(text)
    e.budgets.record("bot", "payments:refund", "110", "EUR", overage="allow_with_overdraft")
    wire = wire_of(e.authorize("bot", "payments:refund", eur("0.01")))
    # the ledger's own code for this refusal (docs/budgets.md: debt blocks new spend)
    assert (wire["status"], wire["reasonCode"]) == ("denied", "debt_outstanding")
    assert wire["rules"] == ["shop.daily"]
    assert wire["budget"]["debt"] == "10.00" and wire["budget"]["spent"] == "110.00"


def test_budget_denial_beats_a_pending_approval() -> None:
    text = POLICY + "approval big: payments:* over 50 EUR\n"
    e = engine(text)
    assert e.authorize("bot", "payments:refund", eur("60")).status == "pending_approval"
    d = e.authorize("bot", "payments:refund", eur("101"))
    assert (d.status, d.code, d.approval_id) == ("denied", "budget_exceeded", None)


def test_policy_denials_are_not_budget_checked() -> None:
    e = engine(POLICY + "forbid no-crypto: payments:crypto\n")
    wire = wire_of(e.authorize("bot", "payments:crypto", eur("500")))
    assert wire["reasonCode"] == "forbidden" and "budget" not in wire


# --------------------------------------------------------------------------- tightest
def test_allowed_decisions_report_the_tightest_budget() -> None:
    e = engine()
    # 60 EUR: daily keeps 40 % (40/100), paycalls 75 % (3/4): daily is tightest
    assert wire_of(e.authorize("bot", "payments:refund", eur("60")))["budget"] == \
        money_details("shop.daily", "bot", "100.00", "60.00", "60.00", "100.00")
    # 20 EUR: daily keeps 80 %, paycalls 75 %: the calls budget is tightest
    assert wire_of(e.authorize("bot", "payments:refund", eur("20")))["budget"] == {
        "budget": "shop.paycalls", "subject": "bot", "limit": "4", "spent": "0",
        "reserved": "0", "debt": "0", "attempted": "1", "projected": "1", "remaining": "4",
        "currency": "calls", "windowEnd": DAY_END}


def test_usd_spend_is_converted_up_into_the_eur_budget() -> None:
    e = engine()
    ok = wire_of(e.authorize("bot", "payments:refund", {"amount": "108.69", "currency": "USD"}))
    assert ok["allowed"] and ok["budget"]["attempted"] == "100.00"   # 99.9948 -> 100.00
    no = wire_of(e.authorize("bot", "payments:refund", {"amount": "108.70", "currency": "USD"}))
    assert no["reasonCode"] == "budget_exceeded" and no["budget"]["attempted"] == "100.01"


def test_eur_spend_exactly_at_a_usd_budget() -> None:
    e = engine("namespace shop\ncurrency EUR\nrate USD 0.92\nrole b: payments:*\n"
               'agent "bot": b\nbudget usd: payments:* limit 100 USD per day per agent\n')
    d = e.authorize("bot", "payments:refund", eur("92"))
    assert d.allowed and d.budget is not None and d.budget.to_wire()["attempted"] == "100.00"


# --------------------------------------------------------------------------- read-only
def test_authorize_never_spends() -> None:
    e = engine()
    before = [b.to_wire() for b in e.budgets.balances("bot", tenant="acme")]
    for i in range(100):
        assert e.authorize("bot", "payments:refund", eur("60")).allowed
        assert e.authorize("bot", "tools:search").allowed
        assert e.authorize("bot", "llm:chat", {"tokens": 900}).allowed
        assert e.authorize("bot", "invoices:pay", eur("40", tenant="acme")).allowed
        if i % 10 == 0:
            td = e.tool_authorize("bot", transport="function", function_name="pay_out",
                                  body={"amount": "60.00", "currency": "EUR"})
            assert td.allowed
    assert [b.to_wire() for b in e.budgets.balances("bot", tenant="acme")] == before
    assert all(b["spent"] in ("0", "0.00") and b["reserved"] in ("0", "0.00") for b in before)


def test_sqlite_store_gives_the_same_decisions(tmp_path: Path) -> None:
    e = engine(budget_store=SQLiteStore(str(tmp_path / "ledger.db")))
    e.budgets.record("bot", "payments:refund", "70", "EUR")
    for _ in range(20):
        assert e.authorize("bot", "payments:refund", eur("30")).allowed
    d = e.authorize("bot", "payments:refund", eur("30.01"))
    assert d.code == "budget_exceeded" and d.budget is not None
    assert d.budget.to_wire()["spent"] == "70.00"


def test_spend_survives_a_reload() -> None:
    e = engine()
    e.budgets.record("bot", "payments:refund", "100", "EUR")
    e.reload()
    assert e.authorize("bot", "payments:refund", eur("0.01")).code == "budget_exceeded"


# --------------------------------------------------------------------------- calls
def test_calls_budget_counts_one_per_request() -> None:
    e = engine()
    for spent in range(3):
        wire = wire_of(e.authorize("bot", "tools:search"))
        assert wire["allowed"] and wire["budget"]["spent"] == str(spent)
        assert wire["budget"]["attempted"] == "1"
        e.budgets.record("bot", "tools:search", 1, "calls")
    wire = wire_of(e.authorize("bot", "tools:search"))
    assert wire["reasonCode"] == "budget_exceeded"
    assert wire["budget"] == {"budget": "shop.rate", "subject": "bot", "limit": "3",
                              "spent": "3", "reserved": "0", "debt": "0", "attempted": "1",
                              "projected": "4", "remaining": "0", "currency": "calls",
                              "windowEnd": "2026-03-10T12:01:00Z"}
    assert e.authorize("helper", "tools:search").allowed  # per agent


def test_money_requests_count_a_call_too() -> None:
    e = engine()
    for _ in range(4):
        e.budgets.record("bot", "payments:refund", "1", "EUR")
    wire = wire_of(e.authorize("bot", "payments:refund", eur("1")))
    assert wire["reasonCode"] == "budget_exceeded" and wire["rules"] == ["shop.paycalls"]


def test_request_without_amount_still_counts_a_call() -> None:
    e = engine()
    for _ in range(4):
        e.budgets.record("bot", "payments:refund", "1", "EUR")
    d = e.authorize("bot", "payments:refund")
    assert (d.status, d.code) == ("denied", "budget_exceeded")


# --------------------------------------------------------------------------- subjects
def test_tenant_subject_comes_from_context_tenant() -> None:
    e = engine()
    e.budgets.record("helper", "invoices:pay", "40", "EUR", tenant="acme")
    wire = wire_of(e.authorize("bot", "invoices:pay", eur("10.01", tenant="acme")))
    assert wire["reasonCode"] == "budget_exceeded"
    assert wire["budget"] == money_details("shop.team", "acme", "50.00", "10.01", "50.01",
                                           "10.00", spent="40.00", end=MONTH_END)
    other = wire_of(e.authorize("bot", "invoices:pay", eur("10.01", tenant="other")))
    assert other["allowed"] and other["budget"]["subject"] == "other"
    none = wire_of(e.authorize("bot", "invoices:pay", eur("10.01")))
    assert none["allowed"] and none["budget"]["subject"] == ""


def test_acting_for_subject_comes_from_the_grant() -> None:
    e = engine()
    token = tokens.mint(KEYS, issuer="https://auth.example", acting_for="besar", agent="bot",
                        permissions=["gifts:*"], ttl=3600, now=NOW)
    e.budgets.record("helper", "gifts:send", "45", "EUR", acting_for="besar")
    wire = wire_of(e.authorize("bot", "gifts:send", eur("5.01"), token=token))
    assert (wire["reasonCode"], wire["actingFor"], wire["chain"]) == (
        "budget_exceeded", "besar", ["besar", "bot"])
    assert wire["budget"] == money_details("shop.person", "besar", "50.00", "5.01", "50.01",
                                           "5.00", spent="45.00")
    ok = wire_of(e.authorize("bot", "gifts:send", eur("5"), token=token))
    assert ok["allowed"] and ok["budget"]["subject"] == "besar"
    # without a grant the agent acts for itself: its own bucket
    alone = wire_of(e.authorize("bot", "gifts:send", eur("5.01")))
    assert alone["allowed"] and alone["budget"]["subject"] == "bot"


# --------------------------------------------------------------------------- tools
def test_tool_call_over_budget_is_budget_deny() -> None:
    e = engine()
    td = e.tool_authorize("bot", transport="function", function_name="pay_out",
                          body={"amount": "150.00", "currency": "EUR"})
    wire = td.to_wire()
    assert (wire["outcome"], wire["reasonCode"], wire["permission"], wire["tool"]) == (
        "budget_deny", "budget_exceeded", "payments:transfer", "shop.pay")
    assert wire["budget"] == money_details("shop.daily", "bot", "100.00", "150.00", "150.00",
                                           "100.00")
    ok = e.tool_authorize("bot", transport="function", function_name="pay_out",
                          body={"amount": "50.00", "currency": "EUR"})
    assert ok.outcome == "policy_allow" and ok.to_wire()["budget"]["budget"] == "shop.daily"


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("context", [
    eur("-5"), eur("abc"), eur(1.5), eur("1e2"), eur("10.001"), eur(True),
    eur(float("nan")), eur("NaN"), eur(10**16), eur([1]), eur({"v": 1}),
    {"amount": "10", "currency": "XYZ"}, {"amount": "10", "currency": "tokens"},
    {"amount": "10", "currency": 5}, {"tokens": -3}, {"tokens": "1.5"},
])
def test_invalid_amount_with_a_budget_is_denied(context: dict[str, Any]) -> None:
    permission = "llm:chat" if "tokens" in context else "payments:refund"
    d = engine().authorize("bot", permission, context)
    assert d.status == "denied", d.to_wire()
    json.dumps(wire_of(d))


def test_invalid_amount_codes() -> None:
    e = engine()
    wire = wire_of(e.authorize("bot", "payments:refund", eur("-5")))
    assert wire["reasonCode"] == "invalid_amount"
    assert [x["code"] for x in wire["diagnostics"]] == ["invalid_amount"]
    mixed = wire_of(e.authorize("bot", "payments:refund", {"amount": "10",
                                                            "currency": "tokens"}))
    assert (mixed["status"], mixed["reasonCode"]) == ("denied", "unit_mismatch")


# --------------------------------------------------------------------------- conformance
FIXTURES = Path(__file__).resolve().parents[2] / "conformance" / "budget_decisions"
RESULTS = [r for path in sorted(FIXTURES.glob("*.json")) for r in run_fixture(path)]


def test_budget_decisions_corpus_is_big_enough() -> None:
    cases = [c for p in sorted(FIXTURES.glob("*.json"))
             for c in json.loads(p.read_text("utf-8"))["cases"]]
    assert len(cases) >= 15
    assert {c["kind"] for c in cases} == {"authorize", "tool_authorize", "budget"}


@pytest.mark.parametrize("result", [
    pytest.param(r, id=f"{Path(r.fixture).stem}:{r.case}")
    for r in RESULTS
])
def test_budget_decisions_conformance(result: Any) -> None:
    assert result.passed, result.message
