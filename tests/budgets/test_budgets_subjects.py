"""Budgets per Cycles scope level and per request field, on every store.

A spend debits every level covering it in one atomic step; a level without room refuses
and then no level is charged; balances per level add up.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from conftest import STORE_KINDS, Clock, SharedStores, open_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine import Engine
from policyengine.budgets import (
    BudgetError,
    BudgetInputError,
    BudgetSpec,
    Ledger,
    MemoryStore,
    SQLiteStore,
)
from policyengine.budgets.spec import scope_path

START = 1_773_144_000.0  # 2026-03-10T12:00:00Z
LIMITS = {"tenant": 100, "workspace": 40, "app": 25}
SPECS = [BudgetSpec(f"h.{level}", ("llm:*",), Decimal(limit), "EUR", "day", subject=level)
         for level, limit in LIMITS.items()]
TENANTS, WORKSPACES, APPS = ["acme", "globex"], ["w1", "w2"], ["a1", "a2"]


def _buckets(t: str, w: str, a: str) -> dict[str, str]:
    return {"tenant": t, "workspace": f"tenant:{t}/workspace:{w}",
            "app": f"tenant:{t}/workspace:{w}/app:{a}"}


class Model:
    """Per level and bucket: spent and the live holds."""

    def __init__(self) -> None:
        self.spent: dict[tuple[str, str], int] = {}
        self.holds: dict[str, tuple[dict[str, str], int]] = {}

    def reserved(self, level: str, bucket: str) -> int:
        return sum(amount for where, amount in self.holds.values() if where[level] == bucket)

    def fits(self, where: dict[str, str], amount: int) -> bool:
        return all(self.spent.get((lv, b), 0) + self.reserved(lv, b) + amount <= LIMITS[lv]
                   for lv, b in where.items())


SCOPES = st.tuples(st.sampled_from(TENANTS), st.sampled_from(WORKSPACES), st.sampled_from(APPS))
AMOUNTS = st.sampled_from([0, 1, 5, 10, 15, 25, 26, 40])
OPS = st.lists(st.one_of(
    st.tuples(st.just("reserve"), SCOPES, AMOUNTS),
    st.tuples(st.just("record"), SCOPES, AMOUNTS),
    st.tuples(st.just("commit"), st.integers(0, 20), AMOUNTS),
    st.tuples(st.just("release"), st.integers(0, 20)),
), max_size=30)


@pytest.mark.parametrize("kind", STORE_KINDS)
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(sequence=OPS)
def test_every_level_is_debited_at_once_and_never_over(
    kind: str, sequence: list[tuple[object, ...]], shared_stores: SharedStores
) -> None:
    store: object
    if kind in ("memory", "sqlite"):
        store = MemoryStore() if kind == "memory" else SQLiteStore(":memory:")
    else:
        store = shared_stores.fresh(kind)
    ledger = Ledger(SPECS, store, clock=Clock(START))  # type: ignore[arg-type]
    model = Model()
    live: list[str] = []
    for op in sequence:
        if op[0] in ("reserve", "record"):
            (t, w, a), amount = op[1], op[2]  # type: ignore[misc]
            where = _buckets(t, w, a)
            fits = model.fits(where, amount)  # type: ignore[arg-type]
            call = ledger.reserve if op[0] == "reserve" else ledger.record
            try:
                res = call("bot", "llm:chat", amount, "EUR", tenant=t,
                           scope={"workspace": w, "app": a})
            except BudgetError as exc:
                assert not fits and exc.code == "budget_exceeded"
                continue
            assert fits
            assert {line.budget: line.subject for line in res.lines} == {
                f"h.{lv}": b for lv, b in where.items()}
            if op[0] == "reserve":
                model.holds[res.id] = (where, amount)  # type: ignore[assignment]
                live.append(res.id)
            else:
                for lv, b in where.items():
                    model.spent[lv, b] = model.spent.get((lv, b), 0) + amount  # type: ignore[operator]
        elif live:
            rid = live.pop(op[1] % len(live))  # type: ignore[operator]
            where, held = model.holds.pop(rid)
            if op[0] == "commit":
                spend = min(op[2], held)  # type: ignore[call-overload]
                ledger.commit(rid, spend)
                for lv, b in where.items():
                    model.spent[lv, b] = model.spent.get((lv, b), 0) + spend
            else:
                ledger.release(rid)
        # Every bucket of every level: the ledger's balance is the model's, within limit.
        for t in TENANTS:
            total_ws = Decimal(0)
            for w in WORKSPACES:
                total_apps = Decimal(0)
                for a in APPS:
                    bal = {b.level: b for b in ledger.balances(
                        "bot", tenant=t, scope={"workspace": w, "app": a})}
                    assert set(bal) == set(LIMITS)
                    for lv, b in _buckets(t, w, a).items():
                        assert bal[lv].subject == b
                        assert bal[lv].spent == model.spent.get((lv, b), 0)
                        assert bal[lv].reserved == model.reserved(lv, b)
                        assert bal[lv].spent + bal[lv].reserved <= LIMITS[lv]
                    total_apps += bal["app"].spent
                ws_bal = ledger.balances(tenant=t, scope={"workspace": w}, level="workspace")
                assert ws_bal[0].spent == total_apps  # a level is the sum of its children
                total_ws += total_apps
            (t_bal,) = ledger.balances(tenant=t, level="tenant")
            assert t_bal.spent == total_ws


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_a_run_budget_from_the_policy_caps_each_run(
    kind: str, tmp_path: Path, shared_stores: SharedStores
) -> None:
    store = open_store(kind, tmp_path, shared_stores)
    engine = Engine.from_sources({"r.policy": (
        "namespace r\npermit chat: llm:*\n"
        "budget run: llm:* limit 3 EUR per day per context.run_id\n"
        "budget user: llm:* limit 5 EUR per day per context.user\n")},
        budget_store=store, clock=Clock(START))
    ledger = engine.budgets
    assert ledger is not None and ledger.scope_fields == {"run_id", "user"}
    ledger.record("bot", "llm:chat", "3", "EUR", scope={"run_id": "r1", "user": "ann"})
    ctx = {"amount": "1", "currency": "EUR", "run_id": "r1", "user": "ann"}
    denied = engine.authorize("bot", "llm:chat", ctx)
    assert not denied.allowed and denied.budget is not None
    assert (denied.budget.budget, denied.budget.subject) == ("r.run", "r1")
    assert engine.authorize("bot", "llm:chat", {**ctx, "run_id": "r2"}).allowed
    ledger.record("bot", "llm:chat", "2", "EUR", scope={"run_id": "r2", "user": "ann"})
    third = engine.authorize("bot", "llm:chat", {**ctx, "run_id": "r3"})
    assert not third.allowed and third.budget is not None and third.budget.subject == "ann"
    # A context without the field shares one bucket: leaving it out escapes nothing.
    ledger.record("bot", "llm:chat", "3", "EUR")
    assert not engine.authorize("bot", "llm:chat", {"amount": "1", "currency": "EUR"}).allowed


def test_scope_paths_follow_the_cycles_order() -> None:
    values = {"toolset": "t", "workflow": "f", "app": "a", "workspace": "w", "tenant": "x"}
    assert scope_path("toolset", "bot", values) == (
        "tenant:x/workspace:w/app:a/workflow:f/agent:bot/toolset:t")
    assert scope_path("workflow", "bot", {"app": "a"}) == "app:a/workflow:"
    assert scope_path("app", None, {"workspace": "a/b%c"}) == "workspace:a%2Fb%25c/app:"


def test_bad_subjects_are_refused() -> None:
    with pytest.raises(BudgetInputError) as err:
        BudgetSpec("x.y", ("a:*",), Decimal(1), "EUR", "day", subject="context.")
    assert err.value.code == "invalid_budget"
    with pytest.raises(BudgetInputError):
        BudgetSpec("x.y", ("a:*",), Decimal(1), "EUR", "day", subject="team")
    ledger = Ledger([BudgetSpec("x.y", ("a:*",), Decimal(1), "EUR", "day", subject="app")])
    for bad in ({"app": ""}, {"app": 3}, {"app": "x" * 300}, {"app": "\ud800"}, ["app"]):
        with pytest.raises(BudgetInputError) as err:
            ledger.record("bot", "a:b", "1", "EUR", scope=bad)  # type: ignore[arg-type]
        assert err.value.code == "invalid_subject"
    assert ledger.balances() == []  # nothing was charged


def test_caps_are_validated_and_merged() -> None:
    for bad in ((("max_tokens", -1),), (("speed", 1),), (("max_tokens", 1), ("max_tokens", 2)),
                [("max_tokens", 1)], (("max_tokens", True),)):
        with pytest.raises(BudgetInputError) as err:
            BudgetSpec("c.x", ("a:*",), Decimal(1), "EUR", "day", caps=bad)  # type: ignore[arg-type]
        assert err.value.code == "invalid_budget"
    ledger = Ledger([
        BudgetSpec("c.a", ("a:*",), Decimal(9), "EUR", "day", caps=(("max_tokens", 50),)),
        BudgetSpec("c.b", ("a:*",), Decimal(9), "EUR", "day",
                   caps=(("max_tokens", 20), ("max_steps_remaining", 3)))],
        clock=Clock(START))
    r = ledger.reserve("bot", "a:x", "1", "EUR")
    assert ledger.caps_of(r) == {"max_tokens": 20, "max_steps_remaining": 3}
    assert ledger.check("bot", "a:x", "1", "EUR").caps == ledger.caps_of(["c.a", "c.b"])
    assert ledger.caps_of(["c.a"]) == {"max_tokens": 50}


def test_the_longest_cooldown_is_the_cap() -> None:
    """A cooldown is a wait: of 50 ms and 1000 ms the cap is 1000 (the smallest, as for
    max_tokens, let the laxest budget set the pace); max_tokens stays the smallest."""
    ledger = Ledger([
        BudgetSpec("c.a", ("a:*",), Decimal(9), "EUR", "day",
                   caps=(("cooldown_ms", 50), ("max_tokens", 500))),
        BudgetSpec("c.b", ("a:*",), Decimal(9), "EUR", "day",
                   caps=(("cooldown_ms", 1000), ("max_tokens", 900)))],
        clock=Clock(START))
    r = ledger.reserve("bot", "a:x", "1", "EUR")
    assert ledger.caps_of(r) == {"cooldown_ms": 1000, "max_tokens": 500}
    assert ledger.check("bot", "a:x", "1", "EUR").caps == {"cooldown_ms": 1000,
                                                           "max_tokens": 500}
    assert ledger.caps_of(["c.b", "c.a"]) == {"cooldown_ms": 1000, "max_tokens": 500}
