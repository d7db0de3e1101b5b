"""A spend converted into a budget's currency: what the ledger keeps of a conversion
(per budget, amount and the rate objects it used) answers exactly as converting again.

The reference is the conversion itself, ``convert(Money(amount, unit), budget_unit,
rates, rounding="up")`` and ``rates.rate(unit, budget_unit)`` for the recorded rate, and
an engine whose rate source gives new objects on every call (so nothing kept is reused).
Rates change between calls (a source whose table is replaced, a rate withdrawn), and a
table goes stale as the clock moves.
"""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal, localcontext
from typing import Any

import pytest
from conftest import Clock
from hypothesis import example, given, settings
from hypothesis import strategies as st

import policyengine as pe
from policyengine.budgets import BudgetError, BudgetSpec, Ledger, MemoryStore
from policyengine.money import (
    CallableRates,
    Money,
    MoneyError,
    RateError,
    StaticRates,
    convert,
)

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
ONE = Decimal(1)
CODES = ("EUR", "USD", "GBP", "JPY", "BHD")
PLACES = {"EUR": 2, "USD": 2, "GBP": 2, "JPY": 0, "BHD": 3}


class LiveRates:
    """A rate source whose table changes between calls, as a live feed's does. Like a
    ``StaticRates``, ``rate_fraction`` answers with the table's own ``Decimal`` objects
    (what the ledger keeps a conversion with); ``fresh=True`` answers with new objects
    every time (nothing kept is ever reused: the reference)."""

    def __init__(self, base: str, table: dict[str, Decimal], fresh: bool = False) -> None:
        self.base = base
        self.table = {base: ONE, **table}
        self.fresh = fresh
        self.asked = 0

    def rate_fraction(self, from_code: str, to_code: str, now: float | None = None
                      ) -> tuple[Decimal, Decimal]:
        self.asked += 1
        try:
            n, d = self.table[from_code], self.table[to_code]
        except KeyError:
            raise RateError("no_rate", f"no rate for {from_code}->{to_code}") from None
        return (n.copy_abs(), d.copy_abs()) if self.fresh else (n, d)

    def rate(self, from_code: str, to_code: str, now: float | None = None) -> Decimal:
        n, d = self.rate_fraction(from_code, to_code, now)
        with localcontext() as ctx:
            ctx.prec = 34
            return n / d


def reference(source: Any, text: str, unit: str, budget_unit: str, now: float
              ) -> tuple[Any, ...]:
    """What the ledger charges for ``text`` ``unit`` on a ``budget_unit`` budget: the
    conversion done afresh (as the ledger did before it kept any), or the error code."""
    try:
        money = Money.parse(text, unit)
        if unit == budget_unit:
            return ("ok", money.amount, None)
        got = convert(money, budget_unit, source, now=now, rounding="up")
        return ("ok", got.amount, format(source.rate(unit, budget_unit, now), "f"))
    except RateError as exc:
        return ("error", exc.code)
    except MoneyError as exc:
        return ("error", "invalid_amount" if exc.code != "unknown_currency" else exc.code)


rates = st.builds(lambda n, k: Decimal(n).scaleb(-k), st.integers(1, 10**8),
                  st.integers(0, 10))


@st.composite
def amounts(draw: st.DrawFn) -> tuple[str, str]:
    unit = draw(st.sampled_from(CODES))
    value = Decimal(draw(st.integers(0, 10**7))).scaleb(-PLACES[unit])
    return format(value, "f"), unit


@st.composite
def plans(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    """Steps over a few amounts (each asked again and again, in between the rates
    change) and a few rate objects: ask an amount (and again at once, from the caches),
    give a currency a rate object (new, or one used before), withdraw its rate."""
    asked = draw(st.lists(amounts(), min_size=1, max_size=3))
    pool = draw(st.lists(rates, min_size=1, max_size=3))
    step = st.one_of(
        st.tuples(st.just("ask"), st.sampled_from(asked), st.integers(0, 2)),
        st.tuples(st.just("set"), st.sampled_from(CODES), st.sampled_from(pool)),
        st.tuples(st.just("drop"), st.sampled_from(CODES)),
    )
    return draw(st.lists(step, min_size=1, max_size=25))


def run_step(source: LiveRates, step: tuple[Any, ...]) -> None:
    """A ``set`` or ``drop`` step on ``source``'s table (never its base)."""
    code = step[1]
    if code == source.base:
        return
    if step[0] == "set":
        source.table[code] = step[2]
    else:
        source.table.pop(code, None)


@given(budget_unit=st.sampled_from(CODES), base=st.sampled_from(CODES),
       table=st.fixed_dictionaries({c: rates for c in CODES}), plan=plans())
@settings(max_examples=150, deadline=None)
def test_converted_spends_equal_converting_again(budget_unit: str, base: str,
                                                  table: dict[str, Decimal],
                                                  plan: list[tuple[Any, ...]]) -> None:
    """Admission (the decision's budget check) and a reservation's line charge what the
    conversion gives when done again, and record the source's rate, whatever the rates
    did between calls: replaced by new objects, back to an object used before, or
    withdrawn; an error where converting again fails."""
    source = LiveRates(base, {c: r for c, r in table.items() if c != base})
    limit = Decimal(50_000)
    ledger = Ledger([BudgetSpec("t.spend", ("pay:*",), limit, budget_unit, "day")],
                    MemoryStore(), clock=Clock(NOW), rates=source)
    for step in plan:
        if step[0] != "ask":
            run_step(source, step)
            continue
        (text, unit), again = step[1], step[2]
        want = reference(source, text, unit, budget_unit, NOW)
        for _ in range(1 + again):
            try:
                code, usage = ledger.admission("a", "pay:send", text, unit)
                got: tuple[Any, ...] = ("ok", usage.attempted if usage else None, code)
            except BudgetError as exc:
                got = ("error", exc.code)
            if want[0] == "ok":
                expected_code = None if want[1] <= limit else "budget_exceeded"
                assert got == ("ok", want[1], expected_code), (text, unit, source.table)
            else:
                assert got == want, (text, unit, source.table)
            if want[0] == "ok" and want[1] <= limit:
                r = ledger.reserve("a", "pay:send", text, unit)
                line = r.lines[0]
                rate = None if line.rate is None else format(line.rate, "f")
                assert (line.amount, rate) == (want[1], want[2])
                ledger.release(r.id)


POLICY = """\
namespace t
currency EUR
role payer: pay:*
agent "payer": payer
budget spend: pay:send limit 20000 {unit} per day per agent
"""


@given(budget_unit=st.sampled_from(CODES), table=st.fixed_dictionaries(
    {c: rates for c in CODES if c != "EUR"}), plan=plans())
@settings(max_examples=100, deadline=None)
def test_decisions_equal_an_engine_that_keeps_nothing(budget_unit: str,
                                                       table: dict[str, Decimal],
                                                       plan: list[tuple[Any, ...]]) -> None:
    """``authorize`` of amounts in any currency against a budget in another gives the
    same decision (allowed, reason, budget usage) as an engine whose rate source makes
    new objects on every call, and charges what converting again gives, while the rates
    change between calls."""
    kept = LiveRates("EUR", dict(table))
    fresh = LiveRates("EUR", {}, fresh=True)
    fresh.table = kept.table  # the same table, new objects
    engines = [pe.Engine.from_sources({"t.policy": POLICY.format(unit=budget_unit)},
                                      rates=source, clock=Clock(NOW))
               for source in (kept, fresh)]
    for step in plan:
        if step[0] != "ask":
            run_step(kept, step)
            continue
        (text, unit), again = step[1], step[2]
        context = {"amount": text, "currency": unit}
        for _ in range(1 + again):
            want = reference(kept, text, unit, budget_unit, NOW)
            a, b = (engine.authorize("payer", "pay:send", context) for engine in engines)
            wires = [d.to_wire() for d in (a, b)]
            for wire in wires:
                del wire["decisionId"]
            assert wires[0] == wires[1], (text, unit, kept.table)
            if want[0] == "ok" and unit != budget_unit:
                assert a.budget is not None and a.budget.attempted == want[1]
                assert a.allowed == (want[1] <= 20000)
            elif want[0] == "error":
                assert not a.allowed and a.code == want[1], (a.to_wire(), want)


def test_a_kept_conversion_goes_stale_with_its_table() -> None:
    """A table with ``max_age`` is asked on every conversion: kept quanta never outlive
    the rates' age (the same amount asked again past ``max_age`` is ``stale_rate``)."""
    clock = Clock(NOW)
    table = StaticRates("EUR", {"USD": "0.92"}, as_of=NOW, max_age=60)
    ledger = Ledger([BudgetSpec("t.spend", ("pay:*",), Decimal(100), "EUR", "day")],
                    MemoryStore(), clock=clock, rates=table)
    for _ in range(2):
        code, usage = ledger.admission("a", "pay:send", "10", "USD")
        assert code is None and usage is not None and usage.attempted == Decimal("9.20")
    clock.t = NOW + 61
    with pytest.raises(BudgetError) as caught:
        ledger.admission("a", "pay:send", "10", "USD")
    assert caught.value.code == "stale_rate"


def test_the_source_is_asked_once_per_conversion() -> None:
    """Kept or not, every conversion asks the source for its current fraction once (its
    age, its rates): nothing is answered from what was kept without asking."""
    source = LiveRates("EUR", {"USD": Decimal("0.92")})
    ledger = Ledger([BudgetSpec("t.spend", ("pay:*",), Decimal(100), "EUR", "day")],
                    MemoryStore(), clock=Clock(NOW), rates=source)
    for n in range(1, 4):
        ledger.admission("a", "pay:send", "10", "USD")
        assert source.asked == n  # rate_fraction alone: the rate recorded is its answer


def test_a_zero_or_a_new_rate_is_converted_again() -> None:
    """What was kept for an amount is not what a changed rate gives: 10 USD at 0.92 then
    at 0.5 (a new object), and back at the first object."""
    first, second = Decimal("0.92"), Decimal("0.5")
    source = LiveRates("EUR", {"USD": first})
    ledger = Ledger([BudgetSpec("t.spend", ("pay:*",), Decimal(100), "EUR", "day")],
                    MemoryStore(), clock=Clock(NOW), rates=source)
    seen = []
    for rate in (first, second, first, second):
        source.table["USD"] = rate
        _code, usage = ledger.admission("a", "pay:send", "10", "USD")
        assert usage is not None
        seen.append(usage.attempted)
    assert seen == [Decimal("9.20"), Decimal("5.00"), Decimal("9.20"), Decimal("5.00")]
    _code, usage = ledger.admission("a", "pay:send", "0", "USD")
    assert usage is not None and usage.attempted == 0


@given(budget_unit=st.sampled_from(CODES), base=st.sampled_from(CODES),
       table=st.fixed_dictionaries({c: rates for c in CODES}),
       asked=st.lists(amounts(), min_size=1, max_size=4))
@settings(max_examples=100, deadline=None)
def test_a_tables_kept_conversions_and_rates(budget_unit: str, base: str,
                                             table: dict[str, Decimal],
                                             asked: list[tuple[str, str]]) -> None:
    """With a :class:`StaticRates` table (the rates a policy's ``rate`` lines make), each
    amount asked twice charges what converting again gives and records the table's
    ``rate()``, the cross rate (through the base, to 34 digits) included."""
    source = StaticRates(base, {c: r for c, r in table.items() if c != base})
    limit = Decimal(50_000)
    ledger = Ledger([BudgetSpec("t.spend", ("pay:*",), limit, budget_unit, "day")],
                    MemoryStore(), clock=Clock(NOW), rates=source)
    for text, unit in asked * 2:
        want = reference(source, text, unit, budget_unit, NOW)
        if want[0] == "error":  # beyond the maximum once converted
            with pytest.raises(BudgetError) as caught:
                ledger.admission("a", "pay:send", text, unit)
            assert caught.value.code == want[1]
            continue
        code, usage = ledger.admission("a", "pay:send", text, unit)
        assert usage is not None and usage.attempted == want[1]
        assert code == (None if want[1] <= limit else "budget_exceeded")
        if code is None:
            r = ledger.reserve("a", "pay:send", text, unit)
            line = r.lines[0]
            rate = None if line.rate is None else format(line.rate, "f")
            assert (line.amount, rate) == (want[1], want[2])
            ledger.release(r.id)


RATES_POLICY = """\
namespace t
currency EUR
{rates}
role payer: pay:*
agent "payer": payer
budget spend: pay:send limit 20000 {unit} per day per agent
"""


@given(budget_unit=st.sampled_from(CODES), table=st.fixed_dictionaries(
    {c: rates for c in CODES if c != "EUR"}), asked=st.lists(amounts(), min_size=1,
                                                             max_size=4))
@settings(max_examples=60, deadline=None)
def test_decisions_with_a_policys_rates(budget_unit: str, table: dict[str, Decimal],
                                        asked: list[tuple[str, str]]) -> None:
    """With the policy's own ``rate`` lines (a table that never changes or goes stale,
    whose converted amounts are kept with their text), every amount asked again and again
    is charged what converting it gives, and allowed exactly when that fits."""
    lines = "\n".join(f"rate {c} {format(r, 'f')}" for c, r in table.items())
    engine = pe.Engine.from_sources(
        {"t.policy": RATES_POLICY.format(rates=lines, unit=budget_unit)}, clock=Clock(NOW))
    source = StaticRates("EUR", table)
    for text, unit in asked * 3:
        want = reference(source, text, unit, budget_unit, NOW)
        d = engine.authorize("payer", "pay:send", {"amount": text, "currency": unit})
        if want[0] == "error":  # beyond the maximum once converted
            assert not d.allowed and d.code == want[1], (d.to_wire(), want)
            continue
        assert d.budget is not None and d.budget.attempted == want[1], (text, unit)
        assert d.allowed == (want[1] <= 20000)


def test_a_decision_goes_stale_with_its_table() -> None:
    """Rates with ``max_age`` are asked on every decision: the same amount, allowed
    again and again, is denied ``stale_rate`` once the table is older than ``max_age``."""
    clock = Clock(NOW)
    table = StaticRates("EUR", {"USD": "0.92"}, as_of=NOW, max_age=60)
    engine = pe.Engine.from_sources(
        {"t.policy": POLICY.format(unit="EUR")}, rates=table, clock=clock)
    context = {"amount": "10", "currency": "USD"}
    for _ in range(3):
        d = engine.authorize("payer", "pay:send", context)
        assert d.allowed and d.budget is not None and d.budget.attempted == Decimal("9.20")
    clock.t = NOW + 61
    d = engine.authorize("payer", "pay:send", context)
    assert not d.allowed and d.code == "stale_rate"


class _RateOnly:
    """A source with the protocol's ``rate`` alone (no ``rate_fraction``)."""

    def __init__(self, fn: Any) -> None:
        self.rate = fn


def _drifting(rates: list[str]) -> tuple[list[tuple[str, str]], Any]:
    """A live feed: each call answers the next rate of ``rates`` (cycling), as a quote
    that moves between two calls does; the list of calls made."""
    calls: list[tuple[str, str]] = []

    def fn(a: str, b: str, now: float | None = None) -> str:
        calls.append((a, b))
        return rates[(len(calls) - 1) % len(rates)]
    return calls, fn


@pytest.mark.parametrize("kind", ["callable", "rate_only"])
def test_a_line_records_the_rate_its_hold_was_converted_at(kind: str) -> None:
    """A live source is asked once per conversion, and the line's rate is that answer:
    10 USD held at 0.95 is 9.50 EUR with rate 0.95 (asked twice, it held 9.50 at one
    quote and recorded the next, 0.90, so a commit of the same 10 USD at the recorded
    rate charged 9.00 of the 9.50 the spend was worth when it was held)."""
    calls, fn = _drifting(["0.95", "0.90"])
    source: Any = CallableRates(fn) if kind == "callable" else _RateOnly(fn)
    ledger = Ledger([BudgetSpec("t.spend", ("pay:*",), Decimal(100), "EUR", "day")],
                    MemoryStore(), clock=Clock(NOW), rates=source)
    held = ledger.reserve("a", "pay:send", "10", "USD")
    assert len(calls) == 1
    [line] = held.lines
    assert (line.amount, line.rate) == (Decimal("9.50"), Decimal("0.95"))
    done = ledger.commit(held.id, "10")
    assert [ln.committed for ln in done.lines] == [Decimal("9.50")]
    assert len(calls) == 1  # a commit in the reservation's unit: at the recorded rate
    # Committed in another currency: converted at the current quote, asked once too.
    held = ledger.reserve("a", "pay:send", "10", "USD")
    assert [(ln.amount, ln.rate) for ln in held.lines] == [(Decimal("9.00"),
                                                            Decimal("0.90"))]
    assert len(calls) == 2


def test_callable_rates_offer_their_rate_as_a_fraction() -> None:
    """Every source of the package has ``rate_fraction``: a function's is ``(rate, 1)``,
    ``fn`` asked once; ``convert`` gives what ``rate`` does."""
    calls, fn = _drifting(["0.92"])
    source = CallableRates(fn)
    assert source.rate_fraction("USD", "EUR", NOW) == (Decimal("0.92"), ONE)
    assert len(calls) == 1
    assert convert(Money.parse("280", "USD"), "EUR", source).amount == Decimal("257.60")
    assert len(calls) == 2
    assert source.rate_fraction("EUR", "EUR") == (ONE, ONE)
    assert len(calls) == 2  # one currency: 1, fn not asked
    with pytest.raises(RateError) as caught:
        CallableRates(lambda a, b, now: None).rate_fraction("USD", "EUR")
    assert caught.value.code == "no_rate"
    with pytest.raises(RateError) as caught:
        CallableRates(lambda a, b, now: "0").rate_fraction("USD", "EUR")
    assert caught.value.code == "invalid_rate"


@settings(max_examples=300, deadline=None)
@example(usd=(2, 0), gbp=(3, 0), cents=300, part=100)
@example(usd=(92, 2), gbp=(117, 2), cents=11700, part=100)
@given(usd=st.tuples(st.integers(1, 10**4), st.integers(0, 4)),
       gbp=st.tuples(st.integers(1, 10**4), st.integers(0, 4)),
       cents=st.integers(1, 10**8), part=st.integers(0, 100))
def test_a_commit_at_a_cross_rate_converts_as_the_reservation_did(
        usd: tuple[int, int], gbp: tuple[int, int], cents: int, part: int) -> None:
    """A commit in the reservation's currency at a table's cross rate (USD -> GBP
    through EUR) is the exact conversion, as the reservation's hold is: the recorded
    rate is rounded to 34 digits, and at it the reserved 3 USD (USD 2, GBP 3 EUR) came
    to 2.01 GBP against a hold of 2.00, refused as more than reserved."""
    table = StaticRates("EUR", {"USD": Decimal(usd[0]).scaleb(-usd[1]),
                                "GBP": Decimal(gbp[0]).scaleb(-gbp[1])})
    ledger = Ledger([BudgetSpec("t.gbp", ("pay:*",), Decimal(10**15), "GBP", "day")],
                    MemoryStore(), clock=Clock(NOW), rates=table)
    amount = Decimal(cents).scaleb(-2)
    some = (amount * part / 100).quantize(Decimal("0.01"), ROUND_FLOOR)
    for spent in (amount, some):
        held = ledger.reserve("a", "pay:send", str(amount), "USD")
        want = convert(Money(spent, "USD"), "GBP", table).amount
        assert held.lines[0].amount == convert(Money(amount, "USD"), "GBP", table).amount
        done = ledger.commit(held.id, str(spent))
        assert [ln.committed for ln in done.lines] == [want]


# ---- a commit at the recorded rate answers from the ledger's memo of the conversion -------

def _old_commit_at_recorded_rate(table: StaticRates, value: Decimal, unit: str,
                                 budget_unit: str, line_rate: str, now: float) -> Decimal:
    """What a commit in the reservation's currency charged before it asked the ledger's
    memo (``_fx``), written out as it was: the table's exact fraction while it still gives
    the recorded cross rate, else the recorded rate, each rounded up to the cent."""
    from decimal import ROUND_CEILING

    from policyengine.money._money import spec_of
    from policyengine.money._rates import converted_amount, fraction_rate
    try:
        n, d = table.rate_fraction(unit, budget_unit, now)
        if d != 1 and format(fraction_rate(n, d), "f") == line_rate:
            return converted_amount(Money(value, unit), spec_of(budget_unit), n, d, True)
    except (RateError, MoneyError):
        pass
    with localcontext() as ctx:
        ctx.prec = 100  # exact: the product of an amount and a rate
        exact = value * Decimal(line_rate)
        return exact.quantize(Decimal(1).scaleb(-PLACES[budget_unit]), ROUND_CEILING)


@example(base="EUR", unit="USD", budget_unit="GBP", first={"USD": Decimal(2), "GBP": Decimal(3)},
         second=None, held=300, spent=[300, 300], stale=False)
@example(base="EUR", unit="EUR", budget_unit="USD", first={"USD": Decimal("0.92")},
         second=None, held=1000, spent=[999, 1000, 1000], stale=False)
@example(base="USD", unit="EUR", budget_unit="USD", first={"EUR": Decimal("1.08")},
         second={"EUR": Decimal("1.10")}, held=500, spent=[500, 501], stale=False)
@example(base="EUR", unit="USD", budget_unit="GBP", first={"USD": Decimal(2), "GBP": Decimal(3)},
         second=None, held=300, spent=[300], stale=True)
@given(base=st.sampled_from(CODES), unit=st.sampled_from(CODES),
       budget_unit=st.sampled_from(CODES),
       first=st.fixed_dictionaries({c: rates for c in CODES}),
       second=st.none() | st.fixed_dictionaries({c: rates for c in CODES}),
       held=st.integers(1, 10**6), spent=st.lists(st.integers(0, 2 * 10**6), min_size=1,
                                                  max_size=4),
       stale=st.booleans())
@settings(max_examples=200, deadline=None)
def test_a_commit_at_the_recorded_rate_charges_what_it_did_before_the_memo(
        base: str, unit: str, budget_unit: str, first: dict[str, Decimal],
        second: dict[str, Decimal] | None, held: int, spent: list[int], stale: bool) -> None:
    """A commit in the reservation's currency on a converted line charges what it charged
    before it answered from the ledger's memo: direct, inverse and cross rates of a
    table; the amount reserved again (a memo hit) or another one; committed through a
    ledger whose table gives another rate (a policy reloaded over a shared store), or a
    stale one (the recorded rate, as before)."""
    if unit == budget_unit:
        return  # nothing converted, nothing recorded
    clock = Clock(NOW)
    spec = BudgetSpec("t.spend", ("pay:*",), Decimal(10**15), budget_unit, "day",
                      overdraft_limit=Decimal(10**15))
    store = MemoryStore()
    reserving_table = StaticRates(base, {c: r for c, r in first.items() if c != base})
    committing_table = reserving_table if second is None and not stale else StaticRates(
        base, {c: r for c, r in (second or first).items() if c != base},
        as_of=NOW - 120 if stale else None, max_age=60 if stale else None)
    reserving = Ledger([spec], store, clock=clock, rates=reserving_table)
    committing = Ledger([spec], store, clock=clock, rates=committing_table)
    amount = Decimal(held).scaleb(-PLACES[unit])
    for cents in spent:
        value = Decimal(cents).scaleb(-PLACES[unit])
        try:
            hold = reserving.reserve("a", "pay:send", str(amount), unit)
        except BudgetError as exc:
            assert exc.code == "invalid_amount"  # converted beyond the maximum
            return
        [line] = hold.lines
        assert line.rate is not None
        want = _old_commit_at_recorded_rate(committing_table, value, unit, budget_unit,
                                            format(line.rate, "f"), NOW)
        try:
            done = committing.commit(hold.id, str(value), overage="allow_with_overdraft")
        except BudgetError as exc:
            assert exc.code == "invalid_amount" and want.scaleb(PLACES[budget_unit]) > 10**18
            continue
        assert [ln.committed for ln in done.lines] == [want], (value, line.rate)


def test_a_commit_of_the_reserved_amount_converts_nothing_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The reservation's conversion is in the ledger's memo: a commit of the reserved
    amount at the recorded cross rate asks the table (its age, its current fraction)
    and does no arithmetic; another amount converts once, then is kept too."""
    import policyengine.budgets.ledger as ledger_module
    table = StaticRates("EUR", {"USD": Decimal(2), "GBP": Decimal(3)})
    ledger = Ledger([BudgetSpec("t.gbp", ("pay:*",), Decimal(10**6), "GBP", "day")],
                    MemoryStore(), clock=Clock(NOW), rates=table)
    converted: list[object] = []
    real = ledger_module.converted_amount

    def counted(*args: Any) -> Decimal:
        converted.append(args)
        return real(*args)

    monkeypatch.setattr(ledger_module, "converted_amount", counted)
    held = ledger.reserve("a", "pay:send", "3", "USD")
    assert len(converted) == 1 and held.lines[0].amount == Decimal("2.00")
    done = ledger.commit(held.id, "3")
    assert len(converted) == 1 and done.lines[0].committed == Decimal("2.00")
    for expect in (2, 2):  # 1.50 USD: converted once, then from the memo
        held = ledger.reserve("a", "pay:send", "3", "USD")
        done = ledger.commit(held.id, "1.50")
        assert len(converted) == expect and done.lines[0].committed == Decimal("1.00")


def test_a_commit_at_the_recorded_rate_of_a_stale_table_uses_the_recorded_rate() -> None:
    """The memo never outlives the table's age: a commit after ``max_age`` asks the
    table, which is stale, and charges at the recorded rate, as before (not an error)."""
    clock = Clock(NOW)
    table = StaticRates("EUR", {"USD": Decimal(2), "GBP": Decimal(3)}, as_of=NOW,
                        max_age=60)
    ledger = Ledger([BudgetSpec("t.gbp", ("pay:*",), Decimal(10**6), "GBP", "day")],
                    MemoryStore(), clock=clock, rates=table)
    held = ledger.reserve("a", "pay:send", "3", "USD", ttl=600)
    assert held.lines[0].amount == Decimal("2.00")
    clock.t = NOW + 61
    done = ledger.commit(held.id, "3", overage="allow_with_overdraft")
    # at the recorded rate 0.6666...67 (34 digits) rounded up: a cent more than the hold
    assert done.lines[0].committed == Decimal("2.01")
