"""Hypothesis: random operation sequences against the ledger and a ten-line model."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
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


class Model:
    def __init__(self) -> None:
        self.now = START
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
            ceiling = LIMIT if overage == "allow_if_available" else LIMIT + OVERDRAFT
            total = self.spent.get(r.window, 0) + self.reserved(r.window, r) + amount
            if total > ceiling:
                return ("budget_exceeded" if overage == "allow_if_available"
                        else "overdraft_limit_exceeded")
        r.status = "committed"
        self.spent[r.window] = self.spent.get(r.window, 0) + amount
        return None


ops = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.integers(0, 70), st.integers(1, 900)),
        st.tuples(st.just("commit"), st.integers(0, 30), st.integers(0, 120),
                  st.sampled_from(["reject", "allow_if_available", "allow_with_overdraft"])),
        st.tuples(st.just("release"), st.integers(0, 30)),
        st.tuples(st.just("record"), st.integers(0, 60)),
        st.tuples(st.just("advance"), st.integers(1, 1500)),
    ),
    max_size=40,
)


def _code(fn: object, *args: object, **kwargs: object) -> tuple[str | None, object]:
    try:
        return None, fn(*args, **kwargs)  # type: ignore[operator]
    except BudgetError as exc:
        return exc.code, None


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=ops)
def test_ledger_matches_model(kind: str, sequence: list[tuple[object, ...]]) -> None:
    model = Model()
    store = MemoryStore() if kind == "memory" else SQLiteStore(":memory:")
    ledger = Ledger([SPEC], store, clock=lambda: model.now)
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


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_zero_amount_reservations_expire_cleanly(kind: str, tmp_path: Path) -> None:
    """Regression (found by hypothesis): two zero-amount reservations, then expiry.

    A zero-amount line holds nothing, so releasing it at expiry must not look for a hold.
    """
    clock = [1_773_144_000.0]
    store = MemoryStore() if kind == "memory" else SQLiteStore(str(tmp_path / "z.db"))
    spec = BudgetSpec("p.h", ("x:*",), Decimal(10), "EUR", "hour", subject="global")
    ledger = Ledger([spec], store, clock=lambda: clock[0])
    first = ledger.reserve("a", "x:y", "0", "EUR", ttl=1)
    second = ledger.reserve("a", "x:y", "0", "EUR", ttl=1)
    clock[0] += 2
    (bal,) = ledger.balances("a")
    assert (bal.spent, bal.reserved, bal.remaining) == (Decimal(0), Decimal(0), Decimal(10))
    assert ledger.get(first.id).status == ledger.get(second.id).status == "expired"
