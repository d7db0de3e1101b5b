"""Shadow statements (``mode warn`` / ``mode log``): reported, never decisive."""

from __future__ import annotations

import contextlib
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine import Engine, ShadowOutcome
from policyengine.budgets import BudgetError, MemoryStore

HEAD = '''currency EUR
role payer: payments:*, llm:*
agent "bot": payer
agent "other"
'''


def engine(text: str, **options: Any) -> Engine:
    return Engine.from_source(HEAD + text, name="t.policy", **options)


def pay(e: Engine, amount: str, permission: str = "payments:refund", **ctx: Any) -> Any:
    return e.authorize("bot", permission, {"amount": amount, "currency": "EUR", **ctx})


def test_shadow_forbid_reports_and_does_not_deny() -> None:
    e = engine("forbid big: payments:refund when amount > 500 EUR mode warn")
    d = pay(e, "600")
    assert (d.status, d.code, d.rules) == ("allowed", "permitted", ("role:payer",))
    assert d.shadow == (ShadowOutcome("default.big", "rule", "warn", "denied", "forbidden"),)
    assert pay(e, "400").shadow == ()


def test_shadow_limit_reports_limit_exceeded_and_sets_no_obligation() -> None:
    e = engine("limit cap: payments:* amount <= 100 EUR mode log")
    over, under = pay(e, "150"), pay(e, "50")
    assert over.status == under.status == "allowed"
    assert over.shadow == (ShadowOutcome("default.cap", "limit", "log", "denied",
                                         "limit_exceeded"),)
    assert under.shadow == ()
    # an enforced limit would set max_amount; the shadow one sets nothing
    assert over.obligations is None and under.obligations is None


def test_shadow_approvals_never_register_or_pend() -> None:
    e = engine("approval wire: payments:wire over 300 EUR mode warn\n"
               "approval review: payments:refund when context.flag == true mode log")
    d = pay(e, "400", "payments:wire")
    assert (d.status, d.approval_id) == ("allowed", None)
    assert d.shadow == (ShadowOutcome("default.wire", "approval_over", "warn",
                                      "pending_approval", "approval_required"),)
    r = pay(e, "1", flag=True)
    assert (r.status, r.approval_id) == ("allowed", None)
    assert r.shadow == (ShadowOutcome("default.review", "rule", "log", "pending_approval",
                                      "approval_required"),)
    assert e.approvals.list() == []


def test_shadow_permit_does_not_allow() -> None:
    e = engine("permit try: reports:read when context.ok == true mode warn")
    d = e.authorize("other", "reports:read", {"ok": True})
    assert (d.status, d.code) == ("denied", "no_permit")
    assert d.shadow == (ShadowOutcome("default.try", "rule", "warn", "allowed", "permitted"),)
    assert e.authorize("other", "reports:read", {"ok": False}).shadow == ()
    # a permit whose condition errors would not have applied (permits never fail closed)
    assert e.authorize("other", "reports:read", {}).shadow == ()


def test_shadow_forbid_error_is_reported_fail_closed_without_diagnostic() -> None:
    e = engine("forbid f: payments:refund when context.region == \"XX\" mode warn")
    d = pay(e, "1")  # no context.region: the condition errors
    assert d.status == "allowed" and d.diagnostics == ()
    assert d.shadow == (ShadowOutcome("default.f", "rule", "warn", "denied",
                                      "missing_attribute"),)


def test_wire_carries_warn_outcomes_only() -> None:
    e = engine("forbid a: payments:refund mode warn\nforbid b: payments:refund mode log")
    d = pay(e, "1")
    assert [s.id for s in d.shadow] == ["default.a", "default.b"]
    assert d.warnings == (d.shadow[0],)
    assert d.to_wire()["shadow"] == [{"id": "default.a", "kind": "rule", "mode": "warn",
                                      "status": "denied", "code": "forbidden"}]
    only_log = engine("forbid b: payments:refund mode log")
    assert "shadow" not in pay(only_log, "1").to_wire()
    assert "shadow" not in pay(engine(""), "1").to_wire()


def test_shadow_and_enforced_rules_with_the_same_shape_differ_only_by_mode() -> None:
    enforced = pay(engine("forbid big: payments:refund when amount > 500 EUR"), "600")
    shadow = pay(engine("forbid big: payments:refund when amount > 500 EUR mode warn"),
                 "600")
    assert (enforced.status, enforced.code) == ("denied", "forbidden")
    assert (shadow.status, shadow.shadow[0].status, shadow.shadow[0].code) == (
        "allowed", enforced.status, enforced.code)


def _trial_balance(store: Any, limit: int | str = 100) -> tuple[Decimal, Decimal]:
    """The shadow budget's own bucket, read through a ledger holding its spec."""
    from policyengine.budgets import BudgetSpec, Ledger
    trial = Ledger([BudgetSpec("default.trial", ("llm:*",), Decimal(limit), "EUR", "day")],
                   store)
    (balance,) = trial.balances("bot")
    return balance.spent, balance.reserved


def test_shadow_budget_counts_the_spend_and_never_refuses() -> None:
    store = MemoryStore()
    e = engine("budget real: llm:* limit 1000 EUR per day\n"
               "budget trial: llm:* limit 100 EUR per day mode warn", budget_store=store)
    warned = ShadowOutcome("default.trial", "budget", "warn", "denied", "budget_exceeded")
    seen = []
    for _ in range(3):
        d = pay(e, "40", "llm:call")
        assert (d.status, d.code) == ("allowed", "permitted")
        assert d.budget is not None and d.budget.budget == "default.real"
        seen.append(d.shadow)
        e.budgets.record("bot", "llm:call", "40", "EUR")
    # 0 + 40 and 40 + 40 fit in 100; 80 + 40 would not have
    assert seen == [(), (), (warned,)]
    assert _trial_balance(store) == (Decimal(120), Decimal(0))
    # the enforced budget alone is listed, and charged the same 120
    assert [(b.budget, b.spent) for b in e.budgets.balances("bot")] == [
        ("default.real", Decimal(120))]


def test_shadow_only_budget_is_charged_by_reservations() -> None:
    store = MemoryStore()
    e = engine("budget trial: llm:* limit 100 EUR per day mode log", budget_store=store)
    r = e.budgets.reserve("bot", "llm:call", "70", "EUR")
    assert r.lines == () and r.to_wire()["lines"] == []
    assert _trial_balance(store) == (Decimal(0), Decimal(70))
    assert pay(e, "40", "llm:call").shadow == (ShadowOutcome(
        "default.trial", "budget", "log", "denied", "budget_exceeded"),)
    e.budgets.release(r.id)  # the hold is given back
    assert _trial_balance(store) == (Decimal(0), Decimal(0))
    assert pay(e, "40", "llm:call").shadow == ()
    r = e.budgets.reserve("bot", "llm:call", "70", "EUR")
    e.budgets.commit(r.id, "25")  # the commit's amount is what it spends
    assert _trial_balance(store) == (Decimal(25), Decimal(0))


def test_a_refused_request_charges_no_shadow_budget() -> None:
    store = MemoryStore()
    e = engine("budget real: llm:* limit 50 EUR per day\n"
               "budget trial: llm:* limit 100 EUR per day mode warn", budget_store=store)
    e.budgets.record("bot", "llm:call", "30", "EUR")
    d = pay(e, "30", "llm:call")
    assert (d.status, d.code) == ("denied", "budget_exceeded") and d.shadow == ()
    with pytest.raises(BudgetError):
        e.budgets.record("bot", "llm:call", "30", "EUR")
    with pytest.raises(BudgetError):
        e.budgets.reserve("bot", "llm:call", "30", "EUR")
    assert _trial_balance(store) == (Decimal(30), Decimal(0))


def test_shadow_budget_not_asked_when_rules_deny() -> None:
    e = engine("forbid no: llm:* \nbudget trial: llm:* limit 1 EUR per day mode warn")
    d = pay(e, "5", "llm:call")
    assert d.status == "denied" and d.shadow == ()


def test_explain_shows_shadow_step_and_mode() -> None:
    e = engine("forbid big: payments:refund when amount > 500 EUR mode warn")
    ex = e.explain("bot", "payments:refund", {"amount": "600", "currency": "EUR"})
    assert ex.decision.status == "allowed"
    assert {"step": "shadow",
            "result": "default.big would be denied (forbidden)"} in ex.steps
    assert next(r for r in ex.rules if r["rule"] == "default.big")["mode"] == "warn"


# ---- the property: shadow statements never change a decision ----------------------------

BASE_POOL = [
    "forbid f{n}: payments:refund when amount > {a} EUR",
    "forbid g{n}: * when context.region == \"XX\"",
    "permit p{n}: reports:* when context.ok == true",
    "approval r{n}: payments:* when context.flag == true",
    "approval o{n}: payments:wire over {a} EUR",
    "limit l{n}: payments:* amount <= {a} EUR",
    "budget b{n}: llm:* limit {a} EUR per day",
    "permit q{n}: llm:call for agent \"other\"",
]
AMOUNTS = st.sampled_from(["0", "1", "50", "99.99", "100", "250", "600", "1000"])
PERMISSIONS = st.sampled_from(["payments:refund", "payments:wire", "reports:read",
                               "llm:call", "docs:read"])
PRINCIPALS = st.sampled_from(["bot", "other", "nobody"])


@st.composite
def statements(draw: st.DrawFn, prefix: str) -> list[str]:
    picks = draw(st.lists(st.tuples(st.sampled_from(BASE_POOL), AMOUNTS), max_size=5))
    return [t.format(n=f"{prefix}{i}", a=a if a != "0" else "5") for i, (t, a)
            in enumerate(picks)]


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    ctx: dict[str, Any] = {}
    if draw(st.booleans()):
        ctx["amount"], ctx["currency"] = draw(AMOUNTS), "EUR"
    for key, values in (("region", ["XX", "DE"]), ("ok", [True, False]),
                        ("flag", [True, False])):
        if draw(st.booleans()):
            ctx[key] = draw(st.sampled_from(values))
    return draw(PRINCIPALS), draw(PERMISSIONS), ctx


def _seen(d: Any) -> tuple[Any, ...]:
    ob = d.obligations.to_wire() if d.obligations is not None else None
    budget = d.budget.to_wire() if d.budget is not None else None
    return (d.status, d.code, d.reason, d.rules, ob, budget,
            [x.to_wire() for x in d.diagnostics], d.approval_id is not None)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(statements("e"), statements("s"), st.lists(st.sampled_from(["warn", "log"]),
                                                  min_size=5, max_size=5),
       st.lists(requests(), min_size=1, max_size=6))
def test_adding_shadow_statements_never_changes_a_decision(
        base: list[str], extra: list[str], modes: list[str],
        reqs: list[tuple[str, str, dict[str, Any]]]) -> None:
    shadowed = [f"{s} mode {m}" for s, m in zip(extra, modes)]  # noqa: B905
    plain = engine("\n".join(base) + "\n", budget_store=MemoryStore())
    both = engine("\n".join(base + shadowed) + "\n", budget_store=MemoryStore())
    for principal, permission, ctx in reqs:
        a = plain.authorize(principal, permission, dict(ctx))
        b = both.authorize(principal, permission, dict(ctx))
        assert _seen(a) == _seen(b)
        assert a.shadow == ()
        assert {s.id for s in b.shadow} <= {f"default.{s.split()[1].rstrip(':')}"
                                            for s in shadowed}
        wire_a, wire_b = a.to_wire(), b.to_wire()
        for w in (wire_a, wire_b):
            w.pop("decisionId"), w.pop("approvalId")
        wire_b.pop("shadow", None)
        assert wire_a == wire_b
        # spend the same in both: the shadow budgets never take any of it
        if a.status == "allowed" and "amount" in ctx and permission == "llm:call":
            for e in (plain, both):
                with contextlib.suppress(BudgetError):  # over: refused the same in both
                    e.budgets.record(principal, permission, ctx["amount"], "EUR")
    assert [b.to_wire() for b in plain.budgets.balances("bot")] == [
        b.to_wire() for b in both.budgets.balances("bot")]


def test_no_shadow_statement_means_empty_shadow_everywhere() -> None:
    e = engine("forbid f: payments:refund when amount > 5 EUR")
    assert pay(e, "9").shadow == () and e.authorize("x", "bad perm!", {}).shadow == ()


@pytest.mark.parametrize("text", [
    "forbid a: payments:refund mode enforce",
    "forbid a: payments:refund mode warn when amount > 5 EUR",
    "forbid a: payments:refund mode warn mode log",
    "role r: payments:* mode warn",
])
def test_mode_clause_is_last_and_warn_or_log_only(text: str) -> None:
    from policyengine.lang import PolicyError
    with pytest.raises(PolicyError):
        engine(text)


def test_queries_and_analysis_ignore_shadow_rules() -> None:
    from policyengine.analysis import analyze
    base = ("permit view: reports:read for agent \"other\"\n"
            "approval wire: payments:wire over 300 EUR\n")
    extra = ("forbid no-view: reports:read mode warn\n"
             "forbid no-pay: payments:* mode log\n"
             "permit more: docs:read for agent \"other\" mode warn\n"
             "approval all: payments:* mode warn\n")
    plain, shadowed = engine(base), engine(base + extra)
    for who in ("bot", "other"):
        assert (plain.permissions_of(who).to_dict()["entries"]
                == shadowed.permissions_of(who).to_dict()["entries"])
    for perm in ("reports:read", "docs:read", "payments:refund"):
        assert (plain.principals_with(perm).to_dict()["entries"]
                == shadowed.principals_with(perm).to_dict()["entries"])
    codes = {f.code for f in analyze(shadowed).findings if f.rule.startswith("default.")}
    assert not codes & {"W302", "W305"}  # no permit is "always overridden" by a shadow


def test_policy_tests_expect_shadow_outcomes_of_both_modes(tmp_path: Any) -> None:
    import json

    from policyengine.testing import Coverage, run_test_file
    (tmp_path / "p.policy").write_text(
        HEAD + "forbid big: payments:refund when amount > 500 EUR mode warn\n"
        "limit cap: payments:refund amount <= 200 EUR mode log\n")
    refund = {"principal": "bot", "permission": "payments:refund"}
    (tmp_path / "p.test.json").write_text(json.dumps({"policies": ["p.policy"], "tests": [
        {**refund, "name": "both", "context": {"amount": "600", "currency": "EUR"},
         "expect": {"status": "allowed", "shadow": ["big", "default.cap"]}},
        {**refund, "name": "none", "context": {"amount": "100", "currency": "EUR"},
         "expect": {"shadow": []}},
        {**refund, "name": "log only", "context": {"amount": "300", "currency": "EUR"},
         "expect": {"shadow": ["big"]}}]}))
    coverage = Coverage()
    results = run_test_file(tmp_path / "p.test.json", coverage=coverage)
    assert [r.passed for r in results] == [True, True, False]
    assert 'got ["default.cap"]' in results[2].message
    (cap,) = [a for a in coverage.amounts.values() if a.rule == "default.cap"]
    assert (cap.counts.get("over"), cap.counts.get("within")) == (2, 1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["10", "50", "100"]),
       st.lists(st.tuples(st.sampled_from(["0", "1", "7.5", "20", "40", "99.99"]),
                          st.sampled_from(["record", "reserve", "release"])),
                min_size=1, max_size=12))
def test_shadow_budget_warns_where_the_enforced_one_refuses(
        limit: str, spends: list[tuple[str, str]]) -> None:
    """Until the enforced budget first refuses (after which the spends differ: a
    shadow budget refuses nothing), the shadow budget of the same definition warns on
    exactly the same requests, and holds exactly what the enforced one holds."""
    budget = f"budget trial: llm:* limit {limit} EUR per day"
    enforced = engine(budget + "\n", budget_store=MemoryStore())
    store = MemoryStore()
    shadowed = engine(budget + " mode warn\n", budget_store=store)
    held: list[tuple[Any, Any]] = []
    for amount, op in spends:
        a, b = pay(enforced, amount, "llm:call"), pay(shadowed, amount, "llm:call")
        assert b.status == "allowed"
        would = [s.code for s in b.shadow]
        if a.status == "denied":
            assert would == [a.code]
            break
        assert would == []
        if op == "release" and held:
            for e, r in zip((enforced, shadowed), held.pop(0)):  # noqa: B905
                e.budgets.release(r.id)
        elif op == "reserve":
            held.append((enforced.budgets.reserve("bot", "llm:call", amount, "EUR"),
                         shadowed.budgets.reserve("bot", "llm:call", amount, "EUR")))
        else:
            for e in (enforced, shadowed):
                e.budgets.record("bot", "llm:call", amount, "EUR")
        (real,) = enforced.budgets.balances("bot")
        assert (real.spent, real.reserved) == _trial_balance(store, limit)
