"""The engine's answers are built once and never changed: a ``Decision``, a
``ToolDecision``, an ``Explanation`` and what rides on them (``Obligations``,
``Diagnostic``, ``BudgetUsage``, ``RateLimitUsage``, the redactions, explain's steps and
rule table) refuse every assignment and deletion of every attribute, public or
``_``-prefixed, while the fields made on first read (decision id, reason, rules, budget)
still work."""

from __future__ import annotations

import copy
import inspect
import json
import pickle
from decimal import Decimal
from typing import Any

import pytest
from conftest import Clock
from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine.budgets.ledger import BudgetUsage
from policyengine.budgets.ratelimit import RateLimitUsage
from policyengine.decide import Explanation
from policyengine.decision import (
    Decision,
    Diagnostic,
    FrozenDict,
    FrozenList,
    Obligations,
    ShadowOutcome,
    ToolDecision,
    build_decision,
    build_diagnostic,
    build_obligations,
    build_tool_decision,
    frozen,
)
from policyengine.engine import Engine

NOW = 1773144000.0  # 2026-03-10T12:00:00Z

POLICY = """namespace shop
currency EUR
role buyer: payments:*, docs:*
agent "bot": buyer
limit cap: payments:* amount <= 500 EUR
budget daily: payments:* limit 100 EUR per day per agent
ratelimit docrate: docs:read 1 per minute
tool pay: function "pay_out" -> payments:transfer {
  amount = $.amount, currency = $.currency
  redact $.card mask
}
"""

PAY = {"amount": "10", "currency": "EUR"}


def _engine() -> Engine:
    return Engine.from_source(POLICY, name="shop.policy", clock=Clock(NOW))


@pytest.fixture(scope="module")
def answers() -> dict[str, Any]:
    """One of each answer the engine builds, and each object riding on one."""
    eng = _engine()
    allowed = eng.authorize("bot", "payments:pay", PAY)
    bad = eng.authorize("bot", "payments:pay", {"amount": "x", "currency": "EUR"})
    assert eng.authorize("bot", "docs:read").allowed
    limited = eng.authorize("bot", "docs:read")
    tool = eng.tool_authorize("bot", transport="function", function_name="pay_out",
                              body={**PAY, "card": "4111111111111111"})
    explained = eng.explain("bot", "payments:pay", PAY)
    explained_tool = eng.explain_tool("bot", transport="function", function_name="pay_out",
                                      body={**PAY, "card": "4111111111111111"})
    assert allowed.allowed and allowed.obligations is not None and allowed.budget
    assert bad.diagnostics and limited.code == "rate_limited"
    assert isinstance(limited.rate_limit, RateLimitUsage)
    assert tool.allowed and tool.redactions and explained.steps and explained.rules
    return {
        "decision": allowed, "denied": bad, "rate limited": limited,
        "denial": Decision.denial("invalid_request", "no", 5, None),
        "built": Decision("allowed", "permitted", None, ("shop.r",)),
        "tool decision": tool, "explanation": explained,
        "tool explanation": explained_tool, "obligations": allowed.obligations,
        "diagnostic": bad.diagnostics[0], "budget": allowed.budget,
        "rate limit": limited.rate_limit,
    }


def _snapshot(obj: Any) -> str:
    """Everything an answer says, as text: any change to it shows here."""
    if isinstance(obj, Explanation):
        return json.dumps(obj.to_dict(), sort_keys=True, default=str) + str(obj)
    if hasattr(obj, "to_wire"):
        return json.dumps(obj.to_wire(), sort_keys=True, default=str) + repr(obj)
    return repr(obj)


def _names(obj: Any) -> set[str]:
    """Every attribute name of ``obj``: its slots (the private fields), its public
    attributes, and a few of Python's own."""
    names = {n for n in dir(obj) if not n.startswith("__")}
    for cls in type(obj).__mro__:
        names.update(cls.__dict__.get("__slots__", ()))
    return names | {"__class__", "__dict__", "__slots__", "brand_new", "_brand_new"}


KINDS = ("decision", "denied", "rate limited", "denial", "built", "tool decision",
         "explanation", "tool explanation", "obligations", "diagnostic", "budget",
         "rate limit")


@pytest.mark.parametrize("kind", KINDS)
def test_every_attribute_refuses_assignment_and_deletion(answers: dict[str, Any],
                                                         kind: str) -> None:
    obj = answers[kind]
    _snapshot(obj)  # the fields made on first read are made now
    before, cls = _snapshot(obj), type(obj)
    names = _names(obj)
    assert any(n.startswith("_") and not n.startswith("__") for n in names), names
    for name in sorted(names):
        with pytest.raises(AttributeError):
            setattr(obj, name, None)
        with pytest.raises(AttributeError):
            setattr(obj, name, getattr(obj, name, "x"))  # even its own value back
        with pytest.raises(AttributeError):
            delattr(obj, name)
    assert type(obj) is cls and _snapshot(obj) == before


@settings(max_examples=200, deadline=None)
@given(data=st.data(), kind=st.sampled_from(KINDS),
       value=st.one_of(st.none(), st.integers(), st.text(max_size=3),
                       st.decimals(allow_nan=False), st.just(())))
def test_no_attribute_name_can_be_set_or_deleted(answers: dict[str, Any], data: Any,
                                                 kind: str, value: object) -> None:
    """Any name, a field's or a made-up one (``_`` or not), is refused."""
    obj = answers[kind]
    _snapshot(obj)
    name = data.draw(st.sampled_from(sorted(_names(obj)))
                     | st.from_regex(r"\A_{0,2}[A-Za-z][A-Za-z0-9_]{0,12}\Z"), label="name")
    before = _snapshot(obj)
    with pytest.raises(AttributeError):
        setattr(obj, name, value)
    with pytest.raises(AttributeError):
        delattr(obj, name)
    assert _snapshot(obj) == before


def test_the_fields_made_on_first_read_are_made_once() -> None:
    """The decision id, the reason and rules of an allowed decision from a shared plan
    entry, and the budget are written when first read (the engine's own path past the
    refusal): read again, the same objects."""
    eng = _engine()
    eng.authorize("bot", "payments:pay", PAY)  # the plan is cached from now on
    d = eng.authorize("bot", "payments:pay", PAY)
    first = (d.decision_id, d.reason, d.rules, d.budget)
    assert first[0].startswith("dec_") and first[1] == "permitted by " + ", ".join(first[2])
    assert isinstance(first[3], BudgetUsage)
    again = (d.decision_id, d.reason, d.rules, d.budget)
    assert all(a is b for a, b in zip(first, again, strict=True))
    assert d.to_wire()["decisionId"] == first[0]
    other = eng.authorize("bot", "payments:pay", PAY)
    assert other.decision_id != first[0]


@pytest.mark.parametrize("kind", KINDS)
def test_a_copy_or_a_pickle_is_equal_and_read_only(answers: dict[str, Any],
                                                   kind: str) -> None:
    obj = answers[kind]
    before = _snapshot(obj)
    for made in (pickle.loads(pickle.dumps(obj)), copy.copy(obj), copy.deepcopy(obj)):
        assert type(made) is type(obj) and _snapshot(made) == before
        with pytest.raises(AttributeError):
            setattr(made, sorted(_names(made))[0], None)
    if isinstance(obj, Decision):  # the id the caller was given is kept
        assert pickle.loads(pickle.dumps(obj)).decision_id == obj.decision_id


def test_the_constructors_build_read_only_answers() -> None:
    """What a caller builds itself is as read-only as what the engine builds, and a
    subclass (its ``__new__``) too."""
    ob = Obligations(Decimal("5"), None, ("$.a",), "EUR")
    diag = Diagnostic("type_error", "bad", "shop.r", "skipped")
    d = Decision("denied", "forbidden", "no", ("shop.r",), ob, (diag,), "bot", "p:x")
    td = ToolDecision(d, "policy_deny", None, ({"field": "$.a", "strategy": "mask"},), "t")

    class Mine(Decision):
        __slots__ = ()

    mine = Mine("allowed", "permitted", None, ("shop.r",))
    assert type(mine) is Mine and mine.reason == "permitted by shop.r"
    for obj in (ob, diag, d, td, mine):
        for name in _names(obj):
            with pytest.raises(AttributeError):
                setattr(obj, name, 1)
    assert d.obligations is ob and d.diagnostics == (diag,) and td.decision is d


#: What a ToolDecision reads through to its decision: every public field of a Decision.
PROXIED = ("allowed", "status", "reason", "code", "rules", "principal", "permission",
           "diagnostics", "obligations", "approval_id", "decision_id", "acting_for", "chain",
           "budget", "rate_limit", "shadow", "warnings")


def test_a_tool_decision_reads_every_field_of_its_decision(answers: dict[str, Any]) -> None:
    """Each field is its decision's own value, read-only like it: a decision built with
    every field set to a value of its own, and one the engine built (its budget made on
    first read through the tool decision). No public field of a Decision is left out."""
    shadow = (ShadowOutcome("shop.w", "rule", "warn", "denied", "forbidden"),
              ShadowOutcome("shop.l", "rule", "log", "denied", "forbidden"))
    d = Decision("pending_approval", "approval_required", "ask", ("shop.r",),
                 Obligations(Decimal("5"), None, (), "EUR"),
                 (Diagnostic("type_error", "bad", "shop.r", "skipped"),), "bot", "p:x",
                 "apr_1", "alice", ("alice", "bot"), answers["budget"], shadow,
                 answers["rate limit"])
    td = ToolDecision(d, "pending_approval")
    for name in PROXIED:
        got, want = getattr(td, name), getattr(d, name)
        assert got == want and (got is want or name == "warnings"), name
        assert f"Decision.{name}" in (getattr(ToolDecision, name).__doc__ or ""), name
        with pytest.raises(AttributeError):
            setattr(td, name, want)
    assert (td.principal, td.acting_for, td.chain) == ("bot", "alice", ("alice", "bot"))
    assert td.budget is answers["budget"] and td.rate_limit is answers["rate limit"]
    assert td.warnings == shadow[:1] and td.shadow == shadow
    assert type(td).__slots__ == () and not hasattr(td, "__dict__")
    public = {n for n in dir(Decision) if not n.startswith("_")} - {"to_wire", "denial"}
    assert public == set(PROXIED)

    tool = _engine().tool_authorize("bot", transport="function", function_name="pay_out",
                                    body=PAY)
    assert isinstance(tool.budget, BudgetUsage) and tool.budget is tool.decision.budget
    for name in PROXIED:
        assert getattr(tool, name) == getattr(tool.decision, name), name
    assert tool.principal == "bot" and tool.rate_limit is None
    wire = tool.to_wire()  # the decision's wire form, its budget included, plus the tool's
    assert {k: v for k, v in wire.items() if k not in ("outcome", "permission", "tool",
                                                       "redactions")} == tool.decision.to_wire()
    assert wire["budget"] == tool.budget.to_wire()


@pytest.mark.parametrize(("cls", "build"), [
    (Decision, build_decision), (ToolDecision, build_tool_decision),
    (Obligations, build_obligations), (Diagnostic, build_diagnostic)])
def test_a_constructor_takes_what_its_builder_takes(cls: type, build: Any) -> None:
    """Each answer's parameters are written once, on the builder the engine calls; the
    public constructor shows the same ones (``help()``, the tests that read
    signatures), takes them by name as the builder does, and builds the same answer."""
    assert inspect.signature(cls) == inspect.signature(build)
    assert next(iter(inspect.signature(cls.__new__).parameters)) == "cls"
    args = {Decision: {"status": "denied", "code": "forbidden", "reason": "no"},
            ToolDecision: {"decision": build_decision("denied", "forbidden", "no"),
                           "outcome": "policy_deny", "tool": "t"},
            Obligations: {"currency": "EUR", "redact_fields": ("$.a",)},
            Diagnostic: {"code": "type_error", "message": "bad", "effect": "skipped"}}[cls]
    made, built = cls(**args), build(**args)
    assert type(made) is cls
    assert {**made.to_wire(), "decisionId": 0} == {**built.to_wire(), "decisionId": 0}
    with pytest.raises(TypeError):
        cls(**args, unknown=1)


@pytest.mark.parametrize("kind", ["explanation", "tool explanation"])
def test_an_explanations_steps_and_rules_cannot_be_changed(answers: dict[str, Any],
                                                           kind: str) -> None:
    x = answers[kind]
    assert type(x.steps) is tuple and all(type(s) is FrozenDict for s in x.steps)
    assert isinstance(x.rules, list) and type(x.rules) is FrozenList
    before = _snapshot(x)
    changes = [lambda: x.steps[0].__setitem__("result", "x"),
               lambda: x.steps[0].pop("step"), lambda: x.rules.append({}),
               lambda: x.rules[0].__setitem__("result", "x"),
               lambda: x.rules[0]["conditions"].append({}), lambda: x.rules.clear()]
    for change in changes:
        with pytest.raises(TypeError):
            change()
    assert _snapshot(x) == before
    as_dict = x.to_dict()  # the dict form keeps its shape: lists of dicts
    assert isinstance(as_dict["steps"], list) and as_dict["steps"] == list(x.steps)
    assert json.loads(json.dumps(as_dict))["steps"] == [dict(s) for s in x.steps]


def test_an_explanation_is_a_copy_of_what_was_traced() -> None:
    steps = [{"step": "validate", "result": "ok"}]
    rules = [{"rule": "shop.r", "conditions": [{"kind": "when", "text": "t",
                                                "result": "holds"}]}]
    x = Explanation(Decision("allowed", "permitted", None, ("shop.r",)), rules, steps)
    steps[0]["result"] = "changed"
    rules[0]["conditions"].clear()
    assert x.steps == ({"step": "validate", "result": "ok"},)
    assert x.rules[0]["conditions"] == [{"kind": "when", "text": "t", "result": "holds"}]


# ---- frozen: one way for every input ---------------------------------------------------

def test_frozen_takes_any_depth() -> None:
    deep: Any = "leaf"
    for _ in range(100_000):
        deep = {"k": [deep]}
    out = frozen(deep)
    node = out
    for _ in range(100_000):
        assert type(node) is FrozenDict and type(node["k"]) is FrozenList
        node = node["k"][0]
    assert node == "leaf"
    with pytest.raises(TypeError):
        out["k"].append(1)


def test_frozen_keeps_a_cycle_and_copies_a_shared_part_once() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    out = frozen(loop)
    assert type(out) is FrozenList and out[1] is out and out is not loop
    shared = {"a": [1, 2]}
    body = {"x": shared, "y": (shared, [shared])}
    copied = frozen(body)
    assert copied == {"x": shared, "y": [shared, [shared]]}
    assert copied["x"] is copied["y"][0] is copied["y"][1][0] and copied["x"] is not shared
    shared["a"].append(3)
    assert copied["x"] == {"a": [1, 2]}
