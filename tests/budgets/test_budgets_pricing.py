"""LLM prices: a usage is priced exactly and charged to money and token budgets in one
reservation, on every store; never over a limit; balances add up."""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

import pytest
from conftest import STORE_KINDS, Clock, SharedStores
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine.budgets import (
    BudgetError,
    BudgetInputError,
    BudgetSpec,
    Ledger,
    LLMUsage,
    MemoryStore,
    ModelPrice,
    PriceTable,
    SQLiteStore,
)

START = 1_773_144_000.0
GPT = ModelPrice("openai", "gpt-4o", "USD", Decimal("2.50"), Decimal("1.25"), Decimal(10))
CHEAP = ModelPrice("openai", "*", "USD", Decimal("0.15"), Decimal("0.075"), Decimal("0.60"))
TABLE = PriceTable([GPT, CHEAP])
MICRO_LIMIT, TOKEN_LIMIT, CENT_LIMIT = 2_000_000, 60_000, 5
SPECS = [BudgetSpec("p.micro", ("llm:*",), Decimal(MICRO_LIMIT), "USD_MICROCENTS", "day"),
         BudgetSpec("p.tok", ("llm:*",), Decimal(TOKEN_LIMIT), "tokens", "day"),
         BudgetSpec("p.usd", ("llm:*",), Decimal("0.05"), "USD", "day")]


def model_cost(price: ModelPrice, i: int, c: int, o: int) -> Decimal:
    """The cost by hand: tokens times the price per million."""
    return (price.input * i + price.cached_input * c + price.output * o) / Decimal(10**6)


def micro(cost: Decimal) -> int:
    return int((cost * 10**8).to_integral_value(ROUND_CEILING))


USAGES = st.tuples(st.sampled_from(["gpt-4o", "gpt-4o-mini"]), st.integers(0, 30_000),
                   st.integers(0, 5_000), st.integers(0, 5_000))


def test_prices_are_exact() -> None:
    price = TABLE.price("openai", "gpt-4o", input_tokens=3, cached_input_tokens=1,
                        output_tokens=7)
    assert price is not None
    assert price.amount == Decimal("0.00007875") and price.currency == "USD"
    assert price.tokens == 11
    other = TABLE.price("openai", "o1", output_tokens=10**6)
    assert other is not None and other.amount == Decimal("0.60") and other.model_price is CHEAP
    assert TABLE.price("anthropic", "x", input_tokens=1) is None
    assert TABLE.lookup("openai", "gpt-4o") is GPT


@pytest.mark.parametrize("kind", STORE_KINDS)
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(USAGES, USAGES, st.booleans()), max_size=12))
def test_a_usage_debits_money_and_tokens_at_once(
    kind: str, ops: list[tuple[tuple[str, int, int, int], tuple[str, int, int, int], bool]],
    shared_stores: SharedStores,
) -> None:
    store: object
    if kind in ("memory", "sqlite"):
        store = MemoryStore() if kind == "memory" else SQLiteStore(":memory:")
    else:
        store = shared_stores.fresh(kind)
    ledger = Ledger(SPECS, store, clock=Clock(START), prices=TABLE)  # type: ignore[arg-type]
    spent_micro = spent_tokens = spent_cents = 0
    for (m1, i1, c1, o1), (_m2, i2, c2, o2), commit in ops:
        price = GPT if m1 == "gpt-4o" else CHEAP
        want_micro, want_tokens = micro(model_cost(price, i1, c1, o1)), i1 + c1 + o1
        want_cents = -(-want_micro // 10**6)  # the USD budget: rounded up to a cent
        fits = (spent_micro + want_micro <= MICRO_LIMIT
                and spent_tokens + want_tokens <= TOKEN_LIMIT
                and spent_cents + want_cents <= CENT_LIMIT)
        try:
            r = ledger.reserve("bot", "llm:chat", usage=LLMUsage("openai", m1, i1, c1, o1))
        except BudgetError as exc:
            assert not fits and exc.code == "budget_exceeded"
            continue
        assert fits
        assert [line.amount for line in r.lines] == [
            want_micro, want_tokens, Decimal(want_cents).scaleb(-2)]
        if not commit:
            ledger.release(r.id)
            continue
        # Commit what was measured (the same model), at most what was held in each unit.
        got_micro, got_tokens = micro(model_cost(price, i2, c2, o2)), i2 + c2 + o2
        got_cents = -(-got_micro // 10**6)
        try:
            done = ledger.commit(r.id, usage=LLMUsage("openai", m1, i2, c2, o2))
        except BudgetError as exc:
            assert exc.code == "budget_exceeded"
            assert (got_micro > want_micro or got_tokens > want_tokens
                    or got_cents > want_cents)
            ledger.release(r.id)
            continue
        assert [line.committed for line in done.lines] == [
            got_micro, got_tokens, Decimal(got_cents).scaleb(-2)]
        spent_micro += got_micro
        spent_tokens += got_tokens
        spent_cents += got_cents
        bal = {b.budget: b for b in ledger.balances("bot")}
        assert bal["p.micro"].spent == spent_micro <= MICRO_LIMIT
        assert bal["p.tok"].spent == spent_tokens <= TOKEN_LIMIT
        assert bal["p.usd"].spent * 100 == spent_cents <= CENT_LIMIT
        assert all(b.reserved == 0 for b in bal.values())


def test_bad_prices_and_usages() -> None:
    for bad in (dict(input=Decimal(-1)), dict(per=0), dict(currency="JPY"),
                dict(currency="tokens"), dict(currency="USD_MICROCENTS"),
                dict(input=Decimal("1e-13")), dict(model="")):
        fields = dict(provider="a", model="b", currency="USD", input=Decimal(1),
                      cached_input=Decimal(1), output=Decimal(1))
        fields.update(bad)  # type: ignore[arg-type]
        with pytest.raises(BudgetInputError) as err:
            ModelPrice(**fields)  # type: ignore[arg-type]
        assert err.value.code == "invalid_price"
    with pytest.raises(BudgetInputError) as err:
        PriceTable([GPT, GPT])
    assert err.value.code == "invalid_price"
    # 10**5000: its repr in the message was a bare ValueError (over the digit limit).
    for tokens in (-1, 10**13, True, 1.5, float("nan"), Decimal(1), 10**5000, -10**5000):
        with pytest.raises(BudgetInputError) as err:
            LLMUsage("openai", "gpt-4o", input_tokens=tokens)  # type: ignore[arg-type]
        assert err.value.code == "invalid_amount"
    ledger = Ledger(SPECS, clock=Clock(START))  # no price table
    with pytest.raises(BudgetInputError) as err:
        ledger.reserve("bot", "llm:x", usage=LLMUsage("openai", "gpt-4o", 1))
    assert err.value.code == "unpriced_model"
