"""A request carrying an amount *and* ``context.tokens``: every covering budget counts
what its unit counts (docs/semantics.md, step 4) -- a money budget the amount, a
``tokens`` budget the tokens -- on the fast path and the general one, on every store.
Before, the tokens were ignored beside an amount: 1 USD with 500 tokens passed a
100-token budget (deny -> allow)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import BUDGET_NOW, STORE_KINDS, Clock, SharedStores, open_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine.budgets import BudgetSpec, Ledger, LLMUsage, MemoryStore
from policyengine.budgets.errors import BudgetInputError
from policyengine.engine import Engine

POLICY = """role r: llm:*
agent "bot": r
budget money: llm:call limit 10 USD per day
budget toks: llm:call limit 100 tokens per day
"""


def engine(store: object = None, text: str = POLICY) -> Engine:
    options: dict[str, Any] = {} if store is None else {"budget_store": store}
    return Engine.from_source(text, clock=Clock(BUDGET_NOW), **options)


def usd(amount: str, **extra: Any) -> dict[str, Any]:
    return {"amount": amount, "currency": "USD", **extra}


def test_the_tokens_budget_counts_the_tokens_beside_an_amount() -> None:
    e = engine()
    d = e.authorize("bot", "llm:call", usd("1", tokens=500))
    assert (d.status, d.code) == ("denied", "budget_exceeded")
    assert d.budget is not None
    assert (d.budget.budget, d.budget.attempted) == ("default.toks", Decimal(500))
    # the same tokens without an amount: refused alike
    assert e.authorize("bot", "llm:call", {"tokens": 500}).code == "budget_exceeded"
    ok = e.authorize("bot", "llm:call", usd("1", tokens=100))
    assert ok.allowed
    assert ok.budget is not None and ok.budget.budget == "default.toks"
    # the money budget still counts the amount
    over = e.authorize("bot", "llm:call", usd("11", tokens=5))
    assert over.code == "budget_exceeded"
    assert over.budget is not None and over.budget.budget == "default.money"


def test_warm_fast_path_does_not_skip_the_tokens() -> None:
    """The steady state (the same amount text asked again: ``admission_text``) is taken
    only without ``context.tokens``; asked after it, the tokens still count."""
    e = engine()
    for _ in range(5):
        assert e.authorize("bot", "llm:call", usd("1")).allowed
    assert e.authorize("bot", "llm:call", usd("1", tokens=101)).code == "budget_exceeded"
    assert e.authorize("bot", "llm:call", usd("1")).allowed
    # one budget in tokens, asked with an amount in tokens: a lean entry of its own
    one = engine(text='role r: llm:*\nagent "bot": r\n'
                      'budget toks: llm:call limit 100 tokens per day\n')
    tok = {"amount": "50", "currency": "tokens"}
    for _ in range(5):
        assert one.authorize("bot", "llm:call", tok).allowed
    d = one.authorize("bot", "llm:call", {**tok, "tokens": 500})
    assert (d.code, d.budget and d.budget.attempted) == ("budget_exceeded", Decimal(500))
    assert one.authorize("bot", "llm:call", {**tok, "tokens": 40}).allowed


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_spent_tokens_refuse_on_every_store(kind: str, tmp_path: Path,
                                            shared_stores: SharedStores) -> None:
    store = open_store(kind, tmp_path, shared_stores)
    e = engine(store)
    e.budgets.record("bot", "llm:call", "95", "tokens")
    assert e.authorize("bot", "llm:call", usd("1", tokens=5)).allowed
    d = e.authorize("bot", "llm:call", usd("1", tokens=6))
    assert d.code == "budget_exceeded"
    assert d.budget is not None and d.budget.budget == "default.toks"
    assert (d.budget.spent, d.budget.attempted) == (Decimal(95), Decimal(6))
    # with a tenant (the general path with its subject) and under explain alike
    assert e.authorize("bot", "llm:call", usd("1", tokens=6, tenant="t1")).code == (
        "budget_exceeded")
    assert e.explain("bot", "llm:call", usd("1", tokens=6)).decision.code == (
        "budget_exceeded")


def test_scoped_and_acting_for_paths_count_the_tokens() -> None:
    text = ('role r: llm:*\nagent "bot": r\n'
            'budget money: llm:call limit 10 USD per day\n'
            'budget runs: llm:call limit 100 tokens per day per context.run_id\n')
    e = engine(text=text)
    d = e.authorize("bot", "llm:call", usd("1", tokens=101, run_id="a"))
    assert d.code == "budget_exceeded"
    assert d.budget is not None and d.budget.subject == "a"
    assert e.authorize("bot", "llm:call", usd("1", tokens=100, run_id="a")).allowed


def test_bad_tokens_beside_an_amount_deny() -> None:
    e = engine()
    for bad in (-3, "x", 1.5, True, "1e3"):
        d = e.authorize("bot", "llm:call", usd("1", tokens=bad))
        assert (d.status, d.code) == ("denied", "invalid_amount"), bad


def test_a_tokens_only_permission_still_refuses_an_uncounted_amount() -> None:
    e = engine(text='role r: llm:*\nagent "bot": r\n'
                    'budget toks: llm:call limit 100 tokens per day\n')
    assert e.authorize("bot", "llm:call", usd("1", tokens=5)).code == "unit_mismatch"


def test_ledger_admission_and_admit_take_tokens() -> None:
    specs = [BudgetSpec("m", ("llm:*",), Decimal(10), "USD", "day"),
             BudgetSpec("t", ("llm:*",), Decimal(100), "tokens", "day")]
    ledger = Ledger(specs, MemoryStore(), clock=Clock(BUDGET_NOW))
    code, use = ledger.admission("bot", "llm:call", Decimal(1), "USD", tokens=500)
    assert code == "budget_exceeded" and use is not None and use.budget == "t"
    assert ledger.admission("bot", "llm:call", Decimal(1), "USD")[0] is None
    assert ledger.admit("bot", "llm:call", "1", "USD", tokens=500).code == "budget_exceeded"
    assert ledger.admit("bot", "llm:call", "1", "USD", tokens=100).allowed
    assert ledger.admit("bot", "llm:call", tokens=101).code == "budget_exceeded"
    with pytest.raises(BudgetInputError):
        ledger.admit("bot", "llm:call", usage=LLMUsage("p", "m", 1), tokens=1)


def test_a_money_reservation_holds_no_tokens() -> None:
    """docs/budgets.md: a money spend is not counted by a tokens budget; ``reserve`` and
    ``record`` take one quantity (or ``usage=``, priced: money and tokens at once)."""
    e = engine()
    r = e.budgets.reserve("bot", "llm:call", "1", "USD")
    assert [line.budget for line in r.lines] == ["default.money"]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(money_limit=st.integers(1, 50), token_limit=st.integers(1, 500),
       spent_money=st.integers(0, 60), spent_tokens=st.integers(0, 600),
       cents=st.integers(0, 6000), tokens=st.one_of(st.none(), st.integers(0, 700)),
       warm=st.booleans())
def test_allowed_iff_every_budget_has_room_for_what_it_counts(
        money_limit: int, token_limit: int, spent_money: int, spent_tokens: int,
        cents: int, tokens: int | None, warm: bool) -> None:
    e = engine(text=f'role r: llm:*\nagent "bot": r\n'
                    f'budget money: llm:call limit {money_limit} USD per day\n'
                    f'budget toks: llm:call limit {token_limit} tokens per day\n')
    if spent_money <= money_limit:
        e.budgets.record("bot", "llm:call", str(spent_money), "USD")
    else:
        spent_money = 0
    if spent_tokens <= token_limit:
        e.budgets.record("bot", "llm:call", str(spent_tokens), "tokens")
    else:
        spent_tokens = 0
    amount = Decimal(cents) / 100
    context = usd(str(amount))
    if warm:  # the steady state first: the same amount text asked before
        e.authorize("bot", "llm:call", context)
    if tokens is not None:
        context["tokens"] = tokens
    money_room = money_limit - spent_money
    token_room = token_limit - spent_tokens
    fits = (amount <= money_room and money_room > 0
            and (tokens or 0) <= token_room and token_room > 0)
    d = e.authorize("bot", "llm:call", context)
    assert d.allowed == fits, (d.code, d.budget)


class _Text(str):
    """A str subclass: text all the same."""


@pytest.mark.parametrize("tokens", ["100", "5", "0", _Text("5")])
def test_tokens_as_text_are_refused_never_read_as_the_number(tokens: str) -> None:
    """``context.tokens`` is a count, a JSON number: ``"100"`` is refused
    (``invalid_amount``, fail closed), with an amount or without, as the rules refuse to
    compare it with a number (``type_error``) -- the budgets never read as 100 what a rule
    reads as text. Before, the budgets counted it as the number."""
    e = engine()
    for context in ({"tokens": tokens}, usd("1", tokens=tokens)):
        d = e.authorize("bot", "llm:call", context)
        assert (d.status, d.code) == ("denied", "invalid_amount"), context
        assert "is text" in d.reason
    ruled = engine(text=POLICY + "forbid big: llm:call when context.tokens > 1000\n")
    assert ruled.authorize("bot", "llm:call", {"tokens": tokens}).code in (
        "type_error", "invalid_amount")
    assert ruled.authorize("bot", "llm:call", {"tokens": 5}).allowed
    ledger = Ledger([BudgetSpec("t", ("llm:*",), Decimal(100), "tokens", "day")],
                    MemoryStore(), clock=Clock(BUDGET_NOW))
    for ask in (lambda: ledger.admit("bot", "llm:call", tokens=tokens),
                lambda: ledger.admission("bot", "llm:call", tokens=tokens),
                lambda: ledger.admit("bot", "llm:call", "1", "tokens", tokens=tokens)):
        with pytest.raises(BudgetInputError) as err:
            ask()
        assert err.value.code == "invalid_amount"
        assert err.value.details["reason"] == "tokens_not_a_number"
    assert ledger.admit("bot", "llm:call", tokens=int(tokens)).allowed


def test_a_shadow_tokens_budget_reports_tokens_as_text() -> None:
    e = engine(text='role r: llm:*\nagent "bot": r\nbudget money: llm:call limit 10 USD '
                    'per day\nbudget toks: llm:call limit 100 tokens per day mode warn\n')
    d = e.authorize("bot", "llm:call", usd("1", tokens="5"))
    assert (d.status, d.code) == ("denied", "invalid_amount")
    assert [(s.id, s.code) for s in d.shadow] == [("default.toks", "invalid_amount")]
