"""A shadow budget of one unit beside enforced budgets of another (a ``tokens`` shadow
budget on a permission a money budget enforces): it answers as an enforced budget of its
definition would, beside the enforced ones, and never changes the decision. Before, it
was judged alone, so every request with a dollar amount reported ``unit_mismatch`` for
it (an enforced tokens budget beside the money budget counts the amount as nothing and
the request's ``context.tokens``), and the ledger charged none of the shadow budgets
covering such a spend (a shadow ``calls`` budget beside it went uncounted)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from conftest import BUDGET_NOW, Clock
from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine.budgets import BudgetSpec, Ledger, MemoryStore
from policyengine.engine import Engine

HEAD = 'role r: llm:*\nagent "bot": r\nbudget money: llm:call limit 10 USD per day\n'
TOKS = "budget toks: llm:call limit 100 tokens per day"
CALLS = "budget calls: llm:call limit 3 calls per day"


def engine(text: str, store: object = None) -> Engine:
    options: dict[str, Any] = {} if store is None else {"budget_store": store}
    return Engine.from_source(text, clock=Clock(BUDGET_NOW), **options)


def usd(amount: str, **extra: Any) -> dict[str, Any]:
    return {"amount": amount, "currency": "USD", **extra}


def shadow(d: Any) -> list[tuple[str, str, str]]:
    return [(s.id, s.status, s.code) for s in d.shadow]


def test_a_tokens_shadow_budget_beside_a_money_budget_counts_the_tokens() -> None:
    e = engine(HEAD + TOKS + " mode warn\n")
    d = e.authorize("bot", "llm:call", usd("1"))
    assert d.allowed and shadow(d) == []  # was: default.toks denied, unit_mismatch
    d = e.authorize("bot", "llm:call", usd("1", tokens=100))
    assert d.allowed and shadow(d) == []
    d = e.authorize("bot", "llm:call", usd("1", tokens=500))
    assert d.allowed and shadow(d) == [("default.toks", "denied", "budget_exceeded")]
    assert d.to_wire()["shadow"][0]["code"] == "budget_exceeded"
    # tokens alone are the amount, in tokens, which the money budget cannot count: the
    # decision is the enforced budgets' (unit_mismatch), the shadow budget's its own
    d = e.authorize("bot", "llm:call", {"tokens": 500})
    assert d.code == "unit_mismatch"
    assert shadow(d) == [("default.toks", "denied", "budget_exceeded")]


def test_alone_on_the_permission_its_unit_mismatch_is_its_own_outcome() -> None:
    """With no enforced budget to count a dollar amount, an enforced tokens budget would
    refuse it (unit_mismatch): the shadow budget reports that, and the request is
    allowed all the same."""
    e = engine('role r: llm:*\nagent "bot": r\n' + TOKS + " mode log\n")
    d = e.authorize("bot", "llm:call", usd("1"))
    assert (d.status, d.code) == ("allowed", "permitted")
    assert shadow(d) == [("default.toks", "denied", "unit_mismatch")]
    assert "shadow" not in d.to_wire()  # mode log: the decision log only
    enforced = engine('role r: llm:*\nagent "bot": r\n' + TOKS + "\n")
    assert enforced.authorize("bot", "llm:call", usd("1")).code == "unit_mismatch"


def test_an_exhausted_tokens_shadow_budget_reports_a_request_without_tokens() -> None:
    store = MemoryStore()
    e = engine(HEAD + TOKS + " mode log\n", store)
    spec = BudgetSpec("default.toks", ("llm:call",), Decimal(100), "tokens", "day")
    Ledger([spec], store, clock=Clock(BUDGET_NOW)).record("bot", "llm:call", 100, "tokens")
    d = e.authorize("bot", "llm:call", usd("1"))
    assert d.allowed and shadow(d) == [("default.toks", "denied", "budget_exceeded")]


def test_a_shadow_budget_never_relaxes_an_enforced_unit_mismatch() -> None:
    e = engine('role r: llm:*\nagent "bot": r\n' + TOKS + "\n"
               "budget trial: llm:call limit 10 USD per day mode warn\n")
    d = e.authorize("bot", "llm:call", usd("1"))
    assert (d.status, d.code) == ("denied", "unit_mismatch")
    try:
        e.budgets.record("bot", "llm:call", "1", "USD")
    except Exception as exc:
        assert getattr(exc, "code", None) == "unit_mismatch"
    else:
        raise AssertionError("an enforced tokens budget counted a dollar spend")


def test_the_ledger_charges_the_shadow_budgets_that_count_a_money_spend() -> None:
    e = engine(HEAD + TOKS + " mode log\n" + CALLS + " mode log\n")
    e.budgets.record("bot", "llm:call", "1", "USD")
    r = e.budgets.reserve("bot", "llm:call", "2", "USD")
    reader = Ledger(list(e.policy.shadow_budgets), e.budgets.store, clock=Clock(BUDGET_NOW))
    got = {b.budget: (b.spent, b.reserved) for b in reader.balances("bot")}
    # was: nothing at all (the tokens budget's unit_mismatch left out every shadow line)
    assert got == {"default.toks": (0, 0), "default.calls": (1, 1)}
    e.budgets.commit(r.id, "2")
    got = {b.budget: (b.spent, b.reserved) for b in reader.balances("bot")}
    assert got == {"default.toks": (0, 0), "default.calls": (2, 0)}


@settings(max_examples=60, deadline=None)
@given(amount=st.sampled_from([None, "0", "1", "9", "10", "11"]),
       tokens=st.sampled_from([None, 0, 50, 100, 101, 500]),
       spent=st.sampled_from([0, 60, 100]))
def test_the_shadow_outcome_is_what_the_enforced_budget_would_decide(
        amount: str | None, tokens: int | None, spent: int) -> None:
    """The tokens budget in `mode warn` reports exactly the refusal the same budget
    enforced would make beside the money budget (asked beside one that never runs out,
    so that its own refusal shows); the decision is always the money budget's alone."""
    context: dict[str, Any] = {} if amount is None else usd(amount)
    if tokens is not None:
        context["tokens"] = tokens
    roomy = HEAD.replace("limit 10 USD", "limit 1000000 USD")
    answers = []
    for text in (HEAD + TOKS + " mode warn\n", roomy + TOKS + "\n", HEAD):
        store = MemoryStore()
        spec = BudgetSpec("default.toks", ("llm:call",), Decimal(100), "tokens", "day")
        if spent:
            Ledger([spec], store, clock=Clock(BUDGET_NOW)).record(
                "bot", "llm:call", spent, "tokens")
        answers.append(engine(text, store).authorize("bot", "llm:call", context))
    shadowed, enforced, alone = answers
    assert (shadowed.status, shadowed.code) == (alone.status, alone.code)
    would = ([("default.toks", "denied", enforced.code)]
             if not enforced.allowed and enforced.rules == ("default.toks",) else [])
    assert shadow(shadowed) == would
