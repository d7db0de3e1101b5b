"""Hypothesis: random operation sequences against the ledger and a ten-line model."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import STORE_KINDS, Clock, SharedStores, open_store
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from policyengine.budgets import BudgetError, BudgetSpec, Ledger, MemoryStore, SQLiteStore

LIMIT, OVERDRAFT = 100, 20
SPEC = BudgetSpec("p.h", ("x:*",), Decimal(LIMIT), "EUR", "hour", subject="global",
                  overdraft_limit=Decimal(OVERDRAFT))
START = 1_773_144_000.0  # 12:00:00Z


@dataclass
class Res:
    id: str
    amount: int
    expires: float
    window: int
    status: str = "active"


class ClockedModel:
    """A model whose ``now`` is the ledger's clock: moving one moves the other."""

    def __init__(self) -> None:
        self.clock = Clock(START)

    @property
    def now(self) -> float:
        return self.clock.t

    @now.setter
    def now(self, value: float) -> None:
        self.clock.t = value


class Model(ClockedModel):
    def __init__(self) -> None:
        super().__init__()
        self.spent: dict[int, int] = {}
        self.res: list[Res] = []

    def window(self) -> int:
        return int(self.now // 3600 * 3600)

    def reserved(self, window: int, skip: Res | None = None) -> int:
        return sum(r.amount for r in self.res if r is not skip and r.status == "active"
                   and r.expires > self.now and r.window == window)

    def admit(self, amount: int) -> str | None:
        w = self.window()
        spent = self.spent.get(w, 0)
        if spent > LIMIT:
            return "debt_outstanding"
        if spent + self.reserved(w) + amount > LIMIT:
            return "budget_exceeded"
        return None

    def state(self, r: Res) -> str | None:
        if r.status != "active":
            return "reservation_final"
        if r.expires <= self.now:
            return "reservation_expired"
        return None

    def commit(self, r: Res, amount: int, overage: str) -> str | None:
        problem = self.state(r)
        if problem:
            return problem
        if amount > r.amount:
            if overage == "reject":
                return "budget_exceeded"
            room = LIMIT - self.spent.get(r.window, 0) - self.reserved(r.window, r)
            if overage == "allow_if_available":  # Cycles: capped at what is available
                amount = min(amount, max(r.amount, room))
            elif amount > room + OVERDRAFT:
                return "overdraft_limit_exceeded"
        r.status = "committed"
        self.spent[r.window] = self.spent.get(r.window, 0) + amount
        return None


# Times and amounts are drawn so that boundaries are hit exactly, often: a reservation
# expiring at the very instant of a read, a window ending, a spend equal to the room left.
TTLS = st.sampled_from([1, 10, 60, 300, 900])
STEPS = st.one_of(st.sampled_from([1, 9, 10, 50, 60, 240, 300, 600, 900, 3600]),
                  st.integers(1, 1500))
AMOUNTS = st.one_of(st.sampled_from([0, 1, 20, 40, 50, 60, 100]), st.integers(0, 120))

ops = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), AMOUNTS, TTLS),
        st.tuples(st.just("commit"), st.integers(0, 30), AMOUNTS,
                  st.sampled_from(["reject", "allow_if_available", "allow_with_overdraft"])),
        st.tuples(st.just("release"), st.integers(0, 30)),
        st.tuples(st.just("record"), AMOUNTS),
        st.tuples(st.just("advance"), STEPS),
    ),
    max_size=40,
)


def _code(fn: object, *args: object, **kwargs: object) -> tuple[str | None, object]:
    try:
        return None, fn(*args, **kwargs)  # type: ignore[operator]
    except BudgetError as exc:
        return exc.code, None


@pytest.mark.parametrize("kind", STORE_KINDS)
@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(sequence=ops)
def test_ledger_matches_model(
    kind: str, sequence: list[tuple[object, ...]], shared_stores: SharedStores
) -> None:
    model = Model()
    store: object
    if kind in ("memory", "sqlite"):
        store = MemoryStore() if kind == "memory" else SQLiteStore(":memory:")
    else:
        store = shared_stores.fresh(kind)
    ledger = Ledger([SPEC], store, clock=model.clock)  # type: ignore[arg-type]
    for op in sequence:
        name = op[0]
        if name == "advance":
            model.now += op[1]  # type: ignore[operator]
        elif name == "reserve":
            amount, ttl = op[1], op[2]
            want = model.admit(amount)  # type: ignore[arg-type]
            got, res = _code(ledger.reserve, "a", "x:y", amount, "EUR", ttl=ttl)
            assert got == want
            if res is not None:
                model.res.append(Res(res.id, amount, model.now + ttl, model.window()))  # type: ignore[attr-defined, arg-type, operator]
        elif name == "record":
            want = model.admit(op[1])  # type: ignore[arg-type]
            got, _ = _code(ledger.record, "a", "x:y", op[1], "EUR")
            assert got == want
            if want is None:
                w = model.window()
                model.spent[w] = model.spent.get(w, 0) + op[1]  # type: ignore[operator]
        elif model.res:
            r = model.res[op[1] % len(model.res)]  # type: ignore[operator]
            if name == "commit":
                want = model.commit(r, op[2], op[3])  # type: ignore[arg-type]
                got, _ = _code(ledger.commit, r.id, op[2], overage=op[3])
            else:
                want = model.state(r)
                if want is None:
                    r.status = "released"
                got, _ = _code(ledger.release, r.id)
            assert got == want
        (bal,) = ledger.balances("a")
        w = model.window()
        spent, reserved = model.spent.get(w, 0), model.reserved(w)
        assert (bal.spent, bal.reserved) == (spent, reserved)
        assert bal.debt == max(0, spent - LIMIT)
        # The invariant the ledger exists for.
        assert bal.spent + bal.reserved <= LIMIT + OVERDRAFT


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_zero_amount_reservations_expire_cleanly(
    kind: str, tmp_path: Path, shared_stores: SharedStores, clock: Clock
) -> None:
    """Regression (found by hypothesis): two zero-amount reservations, then expiry.

    A zero-amount line holds nothing, so releasing it at expiry must not look for a hold.
    """
    clock.t = 1_773_144_000.0
    store = open_store(kind, tmp_path, shared_stores)
    spec = BudgetSpec("p.h", ("x:*",), Decimal(10), "EUR", "hour", subject="global")
    ledger = Ledger([spec], store, clock=clock)
    first = ledger.reserve("a", "x:y", "0", "EUR", ttl=1)
    second = ledger.reserve("a", "x:y", "0", "EUR", ttl=1)
    clock.t += 2
    (bal,) = ledger.balances("a")
    assert (bal.spent, bal.reserved, bal.remaining) == (Decimal(0), Decimal(0), Decimal(10))
    assert ledger.get(first.id).status == ledger.get(second.id).status == "expired"


# -- several agents, two budgets per operation -------------------------------------------

MONEY = BudgetSpec("p.money", ("x:*",), Decimal(100), "EUR", "hour")  # per agent
CALLS = BudgetSpec("p.calls", ("x:*",), Decimal(3), "calls", "minute")  # per agent
AGENTS = ["a", "b", "c"]


@dataclass
class Hold:
    id: str
    agent: str
    amount: int
    expires: float
    hour: int
    minute: int
    status: str = "active"


class ManyModel(ClockedModel):
    """Per agent: money per hour (limit 100) and calls per minute (limit 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.money: dict[tuple[str, int], int] = {}
        self.calls: dict[tuple[str, int], int] = {}
        self.holds: list[Hold] = []

    def hour(self) -> int:
        return int(self.now // 3600 * 3600)

    def minute(self) -> int:
        return int(self.now // 60 * 60)

    def live(self, agent: str) -> list[Hold]:
        return [h for h in self.holds
                if h.agent == agent and h.status == "active" and h.expires > self.now]

    def usage(self, agent: str) -> tuple[int, int, int, int]:
        """(money spent, money reserved, calls spent, calls reserved) in current windows."""
        hour, minute = self.hour(), self.minute()
        live = self.live(agent)
        return (self.money.get((agent, hour), 0),
                sum(h.amount for h in live if h.hour == hour),
                self.calls.get((agent, minute), 0),
                sum(1 for h in live if h.minute == minute))

    def admit(self, agent: str, amount: int) -> str | None:
        spent, reserved, calls, held = self.usage(agent)
        if spent + reserved + amount > 100 or calls + held + 1 > 3:
            return "budget_exceeded"
        return None

    @staticmethod
    def state(h: Hold, now: float) -> str | None:
        if h.status != "active":
            return "reservation_final"
        return "reservation_expired" if h.expires <= now else None


many_ops = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.integers(0, 2), AMOUNTS, TTLS),
        st.tuples(st.just("record"), st.integers(0, 2), AMOUNTS),
        st.tuples(st.just("commit"), st.integers(0, 30), AMOUNTS,
                  st.sampled_from(["reject", "allow_if_available"])),
        st.tuples(st.just("release"), st.integers(0, 30)),
        st.tuples(st.just("extend"), st.integers(0, 30), TTLS),
        st.tuples(st.just("advance"), STEPS),
    ),
    max_size=40,
)


@pytest.mark.parametrize("kind", STORE_KINDS)
@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(sequence=many_ops)
def test_agents_and_windows_match_model(
    kind: str, sequence: list[tuple[object, ...]], tmp_path: Path,
    shared_stores: SharedStores,
) -> None:
    model = ManyModel()
    if kind == "memory":
        store: object = MemoryStore()
    elif kind in ("postgres", "redis"):
        store = shared_stores.fresh(kind)
    else:
        path = tmp_path / "many.db"
        for suffix in ("", "-wal", "-shm"):  # a fresh file per example
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        store = SQLiteStore(path, durability="spend")
    ledger = Ledger([MONEY, CALLS], store, clock=model.clock)  # type: ignore[arg-type]
    for op in sequence:
        name = op[0]
        if name == "advance":
            model.now += op[1]  # type: ignore[operator]
        elif name in ("reserve", "record"):
            agent, amount = AGENTS[op[1]], op[2]  # type: ignore[index]
            want = model.admit(agent, amount)  # type: ignore[arg-type]
            if name == "reserve":
                got, res = _code(ledger.reserve, agent, "x:y", amount, "EUR", ttl=op[3])
                if res is not None:
                    model.holds.append(Hold(res.id, agent, amount, model.now + op[3],  # type: ignore[attr-defined, arg-type, operator]
                                            model.hour(), model.minute()))
            else:
                got, _ = _code(ledger.record, agent, "x:y", amount, "EUR")
                if want is None:
                    key_h, key_m = (agent, model.hour()), (agent, model.minute())
                    model.money[key_h] = model.money.get(key_h, 0) + amount  # type: ignore[operator]
                    model.calls[key_m] = model.calls.get(key_m, 0) + 1
            assert got == want, (name, op)
        elif model.holds:
            h = model.holds[op[1] % len(model.holds)]  # type: ignore[operator]
            want = model.state(h, model.now)
            if name == "commit":
                amount, overage = op[2], op[3]
                charge = amount
                if want is None and amount > h.amount:  # type: ignore[operator]
                    # "reject" refuses any excess; "allow_if_available" (Cycles) charges
                    # at most the room beside everything else (this hold left out).
                    others = sum(o.amount for o in model.live(h.agent)
                                 if o is not h and o.hour == h.hour)
                    room = 100 - model.money.get((h.agent, h.hour), 0) - others
                    if overage == "reject":
                        want = "budget_exceeded"
                    else:
                        charge = min(amount, max(h.amount, room))  # type: ignore[call-overload]
                got, _ = _code(ledger.commit, h.id, amount, overage=overage)
                if want is None:
                    h.status = "committed"
                    key_h, key_m = (h.agent, h.hour), (h.agent, h.minute)
                    model.money[key_h] = model.money.get(key_h, 0) + charge  # type: ignore[operator]
                    model.calls[key_m] = model.calls.get(key_m, 0) + 1
            elif name == "release":
                got, _ = _code(ledger.release, h.id)
                if want is None:
                    h.status = "released"
            else:
                got, _ = _code(ledger.extend, h.id, op[2])
                if want is None:
                    h.expires = model.now + op[2]  # type: ignore[operator]
            assert got == want, (name, op)
        for agent in AGENTS:
            money, calls = ledger.balances(agent)
            spent, reserved, calls_spent, calls_held = model.usage(agent)
            assert (money.spent, money.reserved) == (spent, reserved), agent
            assert (calls.spent, calls.reserved) == (calls_spent, calls_held), agent
            assert money.spent + money.reserved <= 100 and calls.spent + calls.reserved <= 3
    if kind in ("memory", "sqlite"):
        ledger.store.close()


# ---- admission (what authorize asks) answers as admit does ---------------------------------

ADMISSION_SPECS = [
    BudgetSpec("t.day", ("pay:*",), Decimal("100"), "EUR", "day", subject="agent"),
    BudgetSpec("t.calls", ("pay:send",), Decimal("3"), "calls", "day", subject="agent"),
    BudgetSpec("t.roll", ("pay:send", "llm:*"), Decimal("40"), "EUR", "rolling",
               rolling_seconds=3600, subject="agent"),
    BudgetSpec("t.toks", ("llm:*",), Decimal("500"), "tokens", "hour", subject="agent"),
    BudgetSpec("t.team", ("pay:*",), Decimal("70"), "EUR", "month", subject="tenant"),
]
amounts = st.one_of(
    st.none(), st.integers(-5, 200), st.sampled_from(["0", "12.50", "99.999", "1e3", "-1"]),
    st.decimals(min_value=Decimal("-1"), max_value=Decimal("150"), places=3),
    st.sampled_from([Decimal("NaN"), Decimal("0E-70"), Decimal("-0"), Decimal("5.0")]))
requests = st.tuples(
    st.sampled_from(["a1", "a2"]), st.sampled_from(["pay:send", "pay:view", "llm:chat"]),
    amounts, st.sampled_from(["EUR", "USD", "tokens", "calls", "XXX", None]),
    st.sampled_from([None, "acme"]))


@given(spends=st.lists(st.tuples(st.sampled_from(["a1", "a2"]),
                                 st.sampled_from(["pay:send", "llm:chat"]),
                                 st.sampled_from([0, 7, 25, 40, 50, 60, 100]),
                                 st.booleans()), max_size=6),
       asked=st.lists(requests, min_size=1, max_size=8))
@settings(max_examples=60, deadline=None)
def test_admission_answers_as_admit(spends: list[tuple[str, str, int, bool]],
                                    asked: list[tuple[Any, ...]]) -> None:
    """``Ledger.admission`` (the decision's fast path) and ``Ledger.admission_of`` (its
    lean form without tenant or scope) give admit's code and usage, or the same error,
    for every request: amounts of every kind, units the budgets count,
    convert or refuse, and budgets already partly spent."""
    from policyengine.money import StaticRates
    clock = Clock(1_767_225_600.0)
    ledger = Ledger(ADMISSION_SPECS, MemoryStore(), clock=clock,
                    rates=StaticRates("EUR", {"USD": "0.92"}))
    for agent, permission, value, hold in spends:  # spent (past the limit too) or held
        unit = "tokens" if permission.startswith("llm") else "EUR"
        try:
            if hold:
                ledger.reserve(agent, permission, value, unit, tenant="acme", ttl=3600)
            else:
                ledger.record(agent, permission, value, unit, tenant="acme",
                              overage="allow_with_overdraft")
        except BudgetError:
            pass
    for principal, permission, amount, unit, tenant in asked:
        for _ in range(2):  # the second time from the caches
            try:
                check = ledger.admit(principal, permission, amount, unit, tenant=tenant)
                want: Any = (check.code, None if check.usage is None
                             else check.usage.to_wire())
            except BudgetError as exc:
                want = exc.code
            try:
                code, usage = ledger.admission(principal, permission, amount, unit,
                                               tenant=tenant)
                got: Any = (code, None if usage is None else usage.to_wire())
            except BudgetError as exc:
                got = exc.code
            assert got == want, (principal, permission, amount, unit, tenant)
            if tenant is None:  # the lean path of a request without tenant or scope
                try:
                    code, usage = ledger.admission_of(principal, permission, amount, unit)
                    got = (code, None if usage is None else usage.to_wire())
                except BudgetError as exc:
                    got = exc.code
                assert got == want, (principal, permission, amount, unit)
        clock.t += 600


ONE_BUDGET = [BudgetSpec("s.day", ("pay:*",), Decimal("100"), "EUR", "day", subject="agent")]


@given(spends=st.lists(st.tuples(st.sampled_from(["a1", "a2"]),
                                 st.sampled_from([0, 7, 25, 40, 60, 100, 130]),
                                 st.booleans()), max_size=6),
       asked=st.lists(st.tuples(st.sampled_from(["a1", "a2"]),
                                st.sampled_from(["pay:send", "pay:view", "docs:read"]),
                                st.one_of(st.decimals(min_value=Decimal("0"),
                                                      max_value=Decimal("150"), places=2),
                                          amounts),
                                st.sampled_from(["EUR", "EUR", "USD", "calls", None])),
                      min_size=1, max_size=8))
@example(spends=[("a1", 60, True), ("a1", 30, False)],  # held and spent, then asked
         asked=[("a1", "pay:send", Decimal("5.00"), "EUR"),
                ("a1", "pay:send", Decimal("20.00"), "EUR")])
@settings(max_examples=60, deadline=None)
def test_lean_admission_answers_as_admit_with_one_budget(
        spends: list[tuple[str, int, bool]], asked: list[tuple[Any, ...]]) -> None:
    """With one calendar budget covering a request (the case ``admission_of`` answers
    from one bucket read, once it has seen the amount), its answer is admit's: held and
    spent amounts, debt past the limit, amounts it must convert or refuse."""
    from policyengine.money import StaticRates
    clock = Clock(1_767_225_600.0)
    ledger = Ledger(ONE_BUDGET, MemoryStore(), clock=clock,
                    rates=StaticRates("EUR", {"USD": "0.92"}))
    for agent, value, hold in spends:
        try:
            if hold:
                ledger.reserve(agent, "pay:send", value, "EUR", ttl=3600)
            else:
                ledger.record(agent, "pay:send", value, "EUR", overage="allow_with_overdraft")
        except BudgetError:
            pass
    for principal, permission, amount, unit in asked:
        parsed = Decimal(amount) if type(amount) is str and amount[:1].isdigit() else amount
        for _ in range(3):  # the same amount object again: the lean path's steady state
            try:
                check = ledger.admit(principal, permission, parsed, unit)
                want: Any = (check.code, None if check.usage is None
                             else check.usage.to_wire())
            except BudgetError as exc:
                want = exc.code
            try:
                code, usage = ledger.admission_of(principal, permission, parsed, unit)
                got: Any = (code, None if usage is None else usage.to_wire())
            except BudgetError as exc:
                got = exc.code
            assert got == want, (principal, permission, parsed, unit)
        clock.t += 600  # reservations (ttl 1 h) lapse along the way


def test_lean_admission_same_amount_object_under_another_unit() -> None:
    """The lean path keeps what it read per request unit: the same parsed amount asked
    in EUR, then in USD (converted), then in EUR again answers as admit each time."""
    from policyengine.money import StaticRates
    ledger = Ledger(ONE_BUDGET, MemoryStore(), clock=Clock(1_767_225_600.0),
                    rates=StaticRates("EUR", {"USD": "0.92"}))
    ledger.record("a1", "pay:send", Decimal("60"), "EUR")
    amount = Decimal("45.00")
    for unit in ("EUR", "EUR", "USD", "USD", "EUR", "USD"):
        check = ledger.admit("a1", "pay:send", amount, unit)
        code, usage = ledger.admission_of("a1", "pay:send", amount, unit)
        assert usage is not None and check.usage is not None
        assert (code, usage.to_wire()) == (check.code, check.usage.to_wire()), unit


def _lean_text_check(ledger: Ledger, parsed: dict[str, Decimal], principal: str,
                     text: str, unit: str) -> Any:
    """What the budgets step of ``authorize`` asks for an amount written ``text``: the
    steady state (``admission_text``) first, else the parsed amount (the same object
    for the same text, as the request parser keeps it) with its text."""
    found = ledger.admission_text(principal, "pay:send", text, unit)
    if found is None:
        amount = parsed.setdefault(text, Decimal(text))
        found = ledger.admission_parts(principal, "pay:send", amount, unit, text)
    code, usage = found
    if type(usage) is tuple:
        from policyengine.budgets.ledger import budget_usage
        usage = budget_usage(usage)
    return code, None if usage is None else usage.to_wire()


@given(steps=st.lists(st.one_of(
    st.tuples(st.just("ask"), st.sampled_from(["a1", "a2"]),
              st.sampled_from(["5.00", "30", "30.00", "60.5", "100"]),
              st.sampled_from(["EUR", "EUR", "USD"])),
    st.tuples(st.just("hold"), st.sampled_from(["a1", "a2"]),
              st.sampled_from([1, 20, 45, 70]), st.sampled_from([30, 3600])),
    st.tuples(st.just("spend"), st.sampled_from(["a1", "a2"]),
              st.sampled_from([1, 20, 45, 70]), st.just(0)),
    st.tuples(st.just("commit"), st.just(""), st.sampled_from([0, 10, 60]), st.just(0)),
    st.tuples(st.just("release"), st.just(""), st.just(0), st.just(0)),
    st.tuples(st.just("wait"), st.just(""), st.sampled_from([1, 31, 600, 86400]),
              st.just(0))), min_size=1, max_size=30))
@example(steps=[("ask", "a1", "30", "EUR"), ("ask", "a1", "30", "EUR"),
                ("hold", "a1", 70, 30), ("ask", "a1", "30", "EUR"),
                ("wait", "", 31, 0), ("ask", "a1", "30", "EUR"),
                ("spend", "a1", 70, 0), ("ask", "a1", "30", "EUR")])
@settings(max_examples=80, deadline=None)
def test_the_budget_steps_steady_state_answers_as_admit(
        steps: list[tuple[str, str, int | str, int | str]]) -> None:
    """The budgets step's steady state (the same amount text asked again: its quanta and
    the bucket's read kept with the lean entry, read again only once the store changed
    or housekeeping is due) answers as admit after every hold, spend, commit, release,
    expiry and new window, on the very next check."""
    from policyengine.money import StaticRates
    clock = Clock(1_767_225_600.0)
    ledger = Ledger(ONE_BUDGET, MemoryStore(), clock=clock,
                    rates=StaticRates("EUR", {"USD": "0.92"}))
    parsed: dict[str, Decimal] = {}
    held: list[str] = []
    for step, agent, value, extra in steps:
        try:
            if step == "hold":
                held.append(ledger.reserve(agent, "pay:send", value, "EUR",
                                           ttl=float(extra)).id)
            elif step == "spend":
                ledger.record(agent, "pay:send", value, "EUR",
                              overage="allow_with_overdraft")
            elif step == "commit" and held:
                ledger.commit(held.pop(0), value, "EUR", overage="allow_with_overdraft")
            elif step == "release" and held:
                ledger.release(held.pop())
            elif step == "wait":
                clock.t += float(value)  # type: ignore[arg-type]
        except BudgetError:
            pass
        if step != "ask":
            continue
        assert type(value) is str and type(extra) is str
        for _ in range(3):  # the steady state from the second time on
            check = ledger.admit(agent, "pay:send", Decimal(value), extra)
            want = (check.code, None if check.usage is None else check.usage.to_wire())
            assert _lean_text_check(ledger, parsed, agent, value, extra) == want, step


def test_the_budget_steps_steady_state_reads_the_store_only_after_a_change() -> None:
    """Asked again with nothing changed, the steady state does not take the store's
    lock; any write (here a reservation of another agent) makes the next check read."""
    store = MemoryStore()
    reads: list[int] = []
    usage_seen = store.usage_seen

    def counted(bucket: Any, now: float) -> tuple[int, float, int, int]:
        reads.append(1)
        return usage_seen(bucket, now)

    store.usage_seen = counted  # type: ignore[method-assign]
    ledger = Ledger(ONE_BUDGET, store, clock=Clock(1_767_225_600.0))
    parsed: dict[str, Decimal] = {}
    for _ in range(5):
        assert _lean_text_check(ledger, parsed, "a1", "5", "EUR")[0] is None
    assert len(reads) == 1
    ledger.reserve("a2", "pay:send", 1, "EUR")
    assert _lean_text_check(ledger, parsed, "a1", "5", "EUR")[0] is None
    assert len(reads) == 2


def test_the_budget_steps_steady_state_sees_housekeeping_done_for_another_read() -> None:
    """An expired hold released by housekeeping that another read ran is seen by the
    next check even when that check's clock is behind (a clock stepped back, or a
    thread that read the time earlier): housekeeping moves the store's counter too."""
    clock = Clock(1_767_225_600.0)
    ledger = Ledger(ONE_BUDGET, MemoryStore(), clock=clock)
    parsed: dict[str, Decimal] = {}
    ledger.reserve("a1", "pay:send", 70, "EUR", ttl=30)
    for _ in range(3):
        assert _lean_text_check(ledger, parsed, "a1", "40", "EUR")[0] == "budget_exceeded"
    clock.t += 31
    assert _lean_text_check(ledger, parsed, "a2", "40", "EUR")[0] is None  # sweeps
    clock.t -= 31
    check = ledger.admit("a1", "pay:send", Decimal("40"), "EUR")
    assert check.code is None  # the hold is gone for good
    assert _lean_text_check(ledger, parsed, "a1", "40", "EUR") == (
        None, check.usage.to_wire() if check.usage is not None else None)


# ---- one refusal rule: every path that decides a refusal answers as it did ---------------

RULE_SPECS = [
    BudgetSpec("r.day", ("pay:*",), Decimal("100"), "EUR", "day", subject="agent",
               overdraft_limit=Decimal("50")),
    BudgetSpec("r.team", ("pay:*",), Decimal("150"), "EUR", "month", subject="tenant",
               overdraft_limit=Decimal("50")),
    BudgetSpec("r.calls", ("pay:send",), Decimal("4"), "calls", "day", subject="agent"),
    BudgetSpec("r.roll", ("pay:send",), Decimal("60"), "EUR", "rolling",
               rolling_seconds=3600, subject="agent", overdraft_limit=Decimal("50")),
    BudgetSpec("r.toks", ("pay:*",), Decimal("10"), "tokens", "day", subject="agent"),
]
RULE_AMOUNTS = st.sampled_from([0, 1, 10, 20, 40, 50, 59, 60, 61, 99, 100, 101, 150])


def _old_rule(rows: list[dict[str, Any]], exhausted: bool) -> list[tuple[str, str]]:
    """The rule as each path wrote it before it was one function: ``check`` (the dry run
    of a reserve) ``spent > limit`` then ``spent + reserved + attempted > limit``;
    ``admit``, its fast paths and ``refusals`` also ``room <= 0``. Every refusing
    budget, in order, with its code."""
    out = []
    for row in rows:
        limit, spent = Decimal(row["limit"]), Decimal(row["spent"])
        reserved, attempted = Decimal(row["reserved"]), Decimal(row["attempted"])
        room = limit - spent - reserved
        if spent > limit:
            out.append((row["budget"], "debt_outstanding"))
        elif (attempted > room or room <= 0) if exhausted else (
                spent + reserved + attempted > limit):
            out.append((row["budget"], "budget_exceeded"))
    return out


RULE_WHO = (st.sampled_from(["a1", "a2"]), st.sampled_from(["pay:send", "pay:view"]))
RULE_TENANT = st.sampled_from([None, "acme"])


@given(steps=st.lists(st.one_of(
    st.tuples(st.sampled_from(["ask", "hold"]), *RULE_WHO, RULE_AMOUNTS, RULE_TENANT),
    # spent past a limit (debt, up to its overdraft) as often as not
    st.tuples(st.just("spend"), *RULE_WHO, st.sampled_from([20, 50, 60, 100, 101, 150]),
              RULE_TENANT),
    st.tuples(st.just("wait"), st.just(""), st.just(""), st.sampled_from([1, 10, 61]),
              st.just(None))), min_size=1, max_size=25))
@example(steps=[("spend", "a1", "pay:send", 100, None), ("ask", "a1", "pay:send", 0, None)])
@example(steps=[("spend", "a1", "pay:view", 150, None), ("ask", "a1", "pay:view", 0, None)])
@example(steps=[("spend", "a1", "pay:send", 101, "acme"), ("ask", "a1", "pay:send", 1, None),
                ("ask", "a1", "pay:view", 0, "acme")])
@settings(max_examples=150, deadline=None)
def test_every_path_refuses_by_the_one_rule(
        steps: list[tuple[str, str, str, int, str | None]]) -> None:
    """``check``, ``admit`` (and its ``refusals``), ``admission``, ``admission_of`` and
    the write of a ``reserve`` (the store's guard) each decide a refusal as they did when
    each wrote the rule out itself: the old rules, an oracle here, over every covering
    budget's numbers; buckets held, spent past the limit (debt), exactly full (a zero
    amount), in a rolling window and a calls budget."""
    from policyengine.budgets import BudgetExceeded
    clock = Clock(1_767_225_600.0)
    ledger = Ledger(RULE_SPECS, MemoryStore(), clock=clock)
    for step, agent, permission, value, tenant in steps:
        try:
            if step == "hold":
                ledger.reserve(agent, permission, value, "EUR", tenant=tenant, ttl=600)
            elif step == "spend":
                ledger.record(agent, permission, value, "EUR", tenant=tenant,
                              overage="allow_with_overdraft")
        except BudgetError:
            pass
        if step == "wait":
            clock.t += 60 * value  # holds (10 min) lapse, the rolling window (1 h) moves
        if step != "ask":
            continue
        check = ledger.check(agent, permission, value, "EUR", tenant=tenant)
        old = _old_rule(check.budgets, False)
        assert (check.code, check.details and check.details["budget"]) == (
            (old[0][1], old[0][0]) if old else (None, None))
        admit = ledger.admit(agent, permission, value, "EUR", tenant=tenant)
        old = _old_rule(admit.budgets, True)
        assert admit.refusals == tuple(old)
        assert (admit.code, admit.details and admit.details["budget"]) == (
            (old[0][1], old[0][0]) if old else (None, None))
        want = (admit.code, admit.usage and admit.usage.to_wire())
        code, usage = ledger.admission(agent, permission, value, "EUR", tenant=tenant)
        assert (code, usage and usage.to_wire()) == want
        if tenant is None:
            code, usage = ledger.admission_of(agent, permission, Decimal(value), "EUR")
            assert (code, usage and usage.to_wire()) == want
        try:  # the write decides as the dry run did (the store's guard)
            held = ledger.reserve(agent, permission, value, "EUR", tenant=tenant)
        except BudgetExceeded as exc:
            assert (exc.code, exc.details["budget"]) == (check.code, check.details["budget"])
        else:
            assert check.code is None
            ledger.release(held.id)
