"""Shadow budgets in the ledger: every reserve, record and commit charges their own
buckets beside the enforced ones, never guarded, in the same write (each store)."""

from __future__ import annotations

import itertools
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import BUDGET_NOW, STORE_KINDS, Clock, SharedStores, open_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine.budgets import BudgetError, BudgetExceeded, BudgetSpec, Ledger

REAL = BudgetSpec("t.real", ("llm:*",), Decimal(100), "EUR", "day")
TRIAL = BudgetSpec("t.trial", ("llm:*",), Decimal(50), "EUR", "day")


def _ledgers(store: Any) -> tuple[Ledger, Ledger]:
    """The ledger holding REAL enforced and TRIAL shadow, and one reading TRIAL alone."""
    clock = Clock(BUDGET_NOW)
    return (Ledger([REAL], store, clock=clock, shadow=[TRIAL]),
            Ledger([TRIAL], store, clock=clock))


def _held(ledger: Ledger, principal: str) -> tuple[Decimal, Decimal]:
    (b,) = ledger.balances(principal)
    return b.spent, b.reserved


def test_shadow_buckets_follow_every_operation(store: Any) -> None:
    ledger, trial = _ledgers(store)
    ledger.record("bot", "llm:call", "20", "EUR")
    assert trial.admission("bot", "llm:call", "30", "EUR")[0] is None
    r = ledger.reserve("bot", "llm:call", "30", "EUR")
    assert _held(trial, "bot") == (Decimal(20), Decimal(30))
    assert _held(ledger, "bot") == (Decimal(20), Decimal(30))
    # the reservation shows the enforced budgets only
    assert [ln.budget for ln in r.lines] == ["t.real"]
    assert [ln["budget"] for ln in r.to_wire()["lines"]] == ["t.real"]
    # 20 spent + 30 held + 10 > 50: an enforced TRIAL would refuse this one
    assert trial.admission("bot", "llm:call", "10", "EUR")[0] == "budget_exceeded"
    done = ledger.commit(r.id, "25")
    assert [ln.budget for ln in done.lines] == ["t.real"]
    assert _held(trial, "bot") == (Decimal(45), Decimal(0))
    released = ledger.reserve("bot", "llm:call", "40", "EUR")
    assert _held(trial, "bot") == (Decimal(45), Decimal(40))
    ledger.release(released.id)
    assert _held(trial, "bot") == (Decimal(45), Decimal(0))
    # over the shadow limit: charged all the same (a shadow budget refuses nothing)
    ledger.record("bot", "llm:call", "30", "EUR")
    assert _held(trial, "bot") == (Decimal(75), Decimal(0))
    assert _held(ledger, "bot") == (Decimal(75), Decimal(0))


def test_a_refused_spend_charges_no_shadow_bucket(store: Any) -> None:
    ledger, trial = _ledgers(store)
    ledger.record("bot", "llm:call", "90", "EUR")
    with pytest.raises(BudgetExceeded):
        ledger.record("bot", "llm:call", "20", "EUR")
    with pytest.raises(BudgetExceeded):
        ledger.reserve("bot", "llm:call", "20", "EUR")
    r = ledger.reserve("bot", "llm:call", "5", "EUR")
    with pytest.raises(BudgetExceeded):  # over the hold, overage reject: a failed commit
        ledger.commit(r.id, "15")
    assert _held(trial, "bot") == (Decimal(90), Decimal(5))
    assert _held(ledger, "bot") == (Decimal(90), Decimal(5))


def test_capped_spend_charges_the_shadow_budget_in_full(store: Any) -> None:
    ledger, trial = _ledgers(store)
    ledger.record("bot", "llm:call", "80", "EUR")
    got = ledger.record("bot", "llm:call", "30", "EUR", overage="allow_if_available")
    assert got.capped and [ln.committed for ln in got.lines] == [Decimal(20)]
    assert _held(ledger, "bot") == (Decimal(100), Decimal(0))
    assert _held(trial, "bot") == (Decimal(110), Decimal(0))


def test_a_shadow_budget_that_cannot_count_the_spend_is_skipped(store: Any) -> None:
    calls = BudgetSpec("t.tokens", ("llm:*",), Decimal(10), "tokens", "day")
    ledger = Ledger([REAL], store, clock=Clock(BUDGET_NOW), shadow=[calls])
    ledger.record("bot", "llm:call", "20", "EUR")  # an enforced tokens budget would refuse
    (b,) = Ledger([calls], store, clock=Clock(BUDGET_NOW)).balances("bot")
    assert (b.spent, b.reserved) == (0, 0)
    assert _held(ledger, "bot") == (Decimal(20), Decimal(0))


# ---- the property: a shadow budget holds exactly what an unrefusing one would -----------

OPS = st.lists(st.tuples(st.sampled_from(["record", "reserve", "commit", "release"]),
                         st.sampled_from(["0", "5", "12.5", "30", "60"])),
               min_size=1, max_size=10)
_principals = itertools.count()


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_shadow_never_changes_enforced_answers_and_holds_the_spend(
        kind: str, tmp_path: Path, shared_stores: SharedStores) -> None:
    plain_store: Any = open_store(kind, _mkdir(tmp_path / "a"), shared_stores)
    both_store: Any = open_store(kind, _mkdir(tmp_path / "b"), shared_stores)
    clock = Clock(BUDGET_NOW)
    plain = Ledger([REAL], plain_store, clock=clock)
    both = Ledger([REAL], both_store, clock=clock, shadow=[TRIAL])
    trial = Ledger([TRIAL], both_store, clock=clock)

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(OPS)
    def run(ops: list[tuple[str, str]]) -> None:
        who = f"p{next(_principals)}"  # a bucket of its own per example
        open_a: list[str] = []
        open_b: list[str] = []
        spent = held = Decimal(0)  # what TRIAL must hold: the ops that went through
        holds: list[Decimal] = []
        for op, amount in ops:
            out = []
            for ledger, opened in ((plain, open_a), (both, open_b)):
                try:
                    if op == "record":
                        out.append(("ok", ledger.record(who, "llm:call", amount, "EUR")
                                    .to_wire()["lines"]))
                    elif op == "reserve":
                        r = ledger.reserve(who, "llm:call", amount, "EUR")
                        opened.append(r.id)
                        out.append(("ok", r.to_wire()["lines"]))
                    elif opened:  # the oldest open one (a failed commit leaves it open)
                        r = (ledger.commit(opened[0], amount) if op == "commit"
                             else ledger.release(opened[0]))
                        opened.pop(0)
                        out.append(("ok", r.to_wire()["lines"]))
                    else:
                        out.append(("none", None))
                except BudgetError as exc:
                    out.append((exc.code, None))
            assert out[0] == out[1]
            if out[0][0] == "ok":
                if op == "record":
                    spent += Decimal(amount)
                elif op == "reserve":
                    holds.append(Decimal(amount))
                    held += Decimal(amount)
                else:
                    first = holds.pop(0)
                    held -= first
                    if op == "commit":
                        spent += Decimal(amount)
            assert [b.to_wire() for b in plain.balances(who)] == [
                b.to_wire() for b in both.balances(who)]
            assert _held(trial, who) == (spent, held)

    run()


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path
