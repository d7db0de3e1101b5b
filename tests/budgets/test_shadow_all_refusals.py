"""Every shadow budget that would refuse a request is reported, each with its own code,
in the order the policy declares them (the order the ledger asks them). Before, only
the first was: a `mode warn` budget of 100 EUR and one of 50 EUR both exceeded by a
120 EUR request reported the first alone, so an operator trying shadow budgets learned
of the second only once the first was gone (docs/budgets.md, "Shadow budgets")."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from conftest import BUDGET_NOW, Clock
from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine.budgets import BudgetSpec, Ledger, MemoryStore
from policyengine.engine import Engine

HEAD = 'namespace s\ncurrency EUR\nrole r: llm:*\nagent "bot": r\n'


def engine(text: str, store: object) -> Engine:
    return Engine.from_source(text, clock=Clock(BUDGET_NOW), budget_store=store)


def eur(amount: str) -> dict[str, Any]:
    return {"amount": amount, "currency": "EUR"}


def shadow(d: Any) -> list[tuple[str, str, str, str]]:
    return [(s.id, s.kind, s.status, s.code) for s in d.shadow]


def spend(store: MemoryStore, budget: str, limit: int, amount: int) -> None:
    """``amount`` EUR recorded on the shadow budget ``budget`` (its own bucket)."""
    spec = BudgetSpec(budget, ("llm:*",), Decimal(limit), "EUR", "day",
                      overdraft_limit=Decimal(1000))  # past its limit: in debt
    Ledger([spec], store, clock=Clock(BUDGET_NOW)).record(
        "bot", "llm:call", amount, "EUR", overage="allow_with_overdraft")


def test_every_refusing_shadow_budget_is_reported_in_the_policys_order() -> None:
    text = (HEAD + "budget real: llm:* limit 1000 EUR per day\n"
            "budget wide: llm:* limit 100 EUR per day mode warn\n"
            "budget narrow: llm:* limit 50 EUR per day mode warn\n"
            "budget roomy: llm:* limit 500 EUR per day mode warn\n"
            "budget count: llm:* limit 1 calls per day mode log\n")
    e = engine(text, MemoryStore())
    d = e.authorize("bot", "llm:call", eur("120"))
    assert (d.status, d.code) == ("allowed", "permitted")
    assert shadow(d) == [("s.wide", "budget", "denied", "budget_exceeded"),
                         ("s.narrow", "budget", "denied", "budget_exceeded")]
    assert [s["id"] for s in d.to_wire()["shadow"]] == ["s.wide", "s.narrow"]
    d = e.authorize("bot", "llm:call", eur("60"))
    assert shadow(d) == [("s.narrow", "budget", "denied", "budget_exceeded")]
    e.budgets.record("bot", "llm:call", "10", "EUR")  # the one call the calls budget has
    d = e.authorize("bot", "llm:call", eur("120"))
    assert shadow(d) == [("s.wide", "budget", "denied", "budget_exceeded"),
                         ("s.narrow", "budget", "denied", "budget_exceeded"),
                         ("s.count", "budget", "denied", "budget_exceeded")]
    assert [s["id"] for s in d.to_wire()["shadow"]] == ["s.wide", "s.narrow"]  # log: not
    e.close()


def test_each_reports_its_own_code_and_the_order_is_the_declared_one() -> None:
    """A budget in debt is ``debt_outstanding`` beside one merely exceeded; declared
    zeta before alpha, they are reported so (not sorted by name)."""
    store = MemoryStore()
    spend(store, "s.zeta", 50, 80)  # over its 50: in debt
    text = (HEAD + "budget zeta: llm:* limit 50 EUR per day mode warn\n"
            "budget alpha: llm:* limit 100 EUR per day mode warn\n")
    d = engine(text, store).authorize("bot", "llm:call", eur("120"))
    assert d.allowed
    assert shadow(d) == [("s.zeta", "budget", "denied", "debt_outstanding"),
                         ("s.alpha", "budget", "denied", "budget_exceeded")]


def test_an_error_is_reported_for_every_covering_shadow_budget() -> None:
    """An amount the shadow budgets cannot read would have denied under each."""
    text = (HEAD + "budget a: llm:* limit 100 EUR per day mode warn\n"
            "budget b: llm:* limit 100 EUR per day mode warn\n")
    d = engine(text, MemoryStore()).authorize("bot", "llm:call", {"tokens": "100"})
    assert [(s.id, s.code) for s in d.shadow] == [("s.a", "invalid_amount"),
                                                 ("s.b", "invalid_amount")]


LIMITS = (100, 50, 80)


@settings(max_examples=80, deadline=None)
@given(spent=st.tuples(*(st.sampled_from([0, 30, 50, 100, 120]) for _ in LIMITS)),
       amount=st.sampled_from(["0", "1", "20", "50", "100", "150"]),
       order=st.permutations(range(len(LIMITS))))
def test_the_shadow_outcomes_are_what_each_budget_enforced_alone_would_decide(
        spent: tuple[int, ...], amount: str, order: list[int]) -> None:
    """Three shadow budgets, declared in any order, each with its own spend: the
    outcomes are exactly the budgets that, enforced alone over the same store, would
    refuse, with that refusal's code, in the declared order; the decision is never
    changed."""
    names = [f"b{i}" for i in order]
    store = MemoryStore()
    for i in order:
        if spent[i]:
            spend(store, f"s.b{i}", LIMITS[i], spent[i])
    lines = [f"budget b{i}: llm:* limit {LIMITS[i]} EUR per day" for i in order]
    shadowed = engine(HEAD + "".join(f"{x} mode warn\n" for x in lines), store)
    d = shadowed.authorize("bot", "llm:call", eur(amount))
    assert (d.status, d.code) == ("allowed", "permitted")
    would = []
    for name, line in zip(names, lines, strict=True):
        alone = engine(HEAD + line + "\n", store).authorize("bot", "llm:call", eur(amount))
        if not alone.allowed:
            assert alone.rules == (f"s.{name}",)
            would.append((f"s.{name}", "budget", "denied", alone.code))
    assert shadow(d) == would
