"""The one decision pipeline: explain is authorize traced, decisions are built once, every
covering budget is checked, request data never raises, each conversion uses the rates
of the file that owns the rule or budget.

Expected answers come from docs/semantics.md and docs/budgets.md, not from engine output.
"""

from __future__ import annotations

import copy
import json
import pickle
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from conftest import Clock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine import tokens
from policyengine.audit import DecisionLog
from policyengine.decide import MemoryApprovalStore
from policyengine.decision import Decision, frozen
from policyengine.engine import Engine
from policyengine.lang import PolicyError
from policyengine.money import CallableRates, JsonFileRates, StaticRates

NOW = 1773144000.0  # 2026-03-10T12:00:00Z
ISSUER = "https://auth.example"
KEYS = tokens.KeySet.generate()
FOREIGN_KEYS = tokens.KeySet.generate()

POLICY = """namespace shop
currency EUR
rate USD 0.92
default_currency EUR
role buyer: payments:*, docs:*, llm:*
agent "bot": buyer
agent "spent": buyer
forbid sanctioned: * when has(context.country) and context.country == "KP"
limit cap: payments:* amount <= 500 EUR
approval review: payments:* over 300 EUR
approval docs-review: docs:delete
budget daily: payments:* limit 100 EUR per day per agent
budget paycalls: payments:* limit 3 calls per day per agent
budget toks: llm:* limit 1000 tokens per hour per agent
delegation { issuer "https://auth.example" }
tool pay: function "pay_out" -> payments:transfer {
  amount = $.amount, currency = $.currency
  redact $.card mask
}
tool rm: function "delete_doc" -> docs:delete { doc = $.doc }
"""


def make_engine(**options: Any) -> Engine:
    options.setdefault("keys", KEYS)
    return Engine.from_source(POLICY, name="shop.policy", clock=Clock(NOW), **options)


def mint(agent: str, keys: tokens.KeySet = KEYS, **kw: Any) -> str:
    return tokens.mint(keys, issuer=ISSUER, acting_for="besar", agent=agent,
                       permissions=["payments:*", "docs:*", "llm:*"], now=NOW, ttl=3600,
                       **kw)


TOKENS = {
    "none": None,
    "valid": mint("bot"),
    "capped": mint("bot", max_amount=("40", "EUR")),
    "other-subject": mint("spent"),
    "foreign": mint("bot", FOREIGN_KEYS),
    "garbage": "not.a.token",
    "not-a-string": ["x"],
}


@pytest.fixture(scope="module")
def shop() -> tuple[Engine, str]:
    """An engine where agent "spent" has exhausted its money and calls budgets, and an
    approval granted for one exact docs:delete request."""
    eng = make_engine()
    for amount in ("33.33", "33.33", "33.34"):
        eng.budgets.record("spent", "payments:pay", amount, "EUR")
    pending = eng.authorize("bot", "docs:delete", {"doc": "d1"})
    assert pending.status == "pending_approval" and pending.approval_id
    eng.approvals.approve(pending.approval_id, by="alice")
    return eng, pending.approval_id


class DownApprovals:
    """An approval store whose every operation fails, as one that cannot be reached."""

    def _down(self, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("the approval store is unreachable")

    add = get = list = approve = reject = consume = _down


class FailingSink:
    """A decision-log sink that cannot write."""

    def write(self, lines: Any) -> None:
        raise OSError("disk full")

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def engines(shop: tuple[Engine, str]) -> Iterator[dict[str, Engine]]:
    """The shop engine, and engines whose approval store is down, whose decision log
    (overflow ``deny``) has a failing sink, and whose log is closed: the services a run
    asks besides the rules, each failing."""
    down = make_engine(approvals=DownApprovals())
    failing = make_engine(decision_log=DecisionLog(FailingSink(), overflow="deny",
                                                   retry_backoff=0.01))
    closed = make_engine(decision_log=DecisionLog(FailingSink(), overflow="drop"))
    closed.close(timeout=1.0)
    for _ in range(500):  # until the log has seen its sink fail
        if failing.authorize("bot", "docs:read").code == "decision_log_unavailable":
            break
        time.sleep(0.01)
    else:
        raise AssertionError("the failing log never refused a decision")
    for eng in (down, failing):
        for amount in ("33.33", "33.33", "33.34"):
            eng.budgets.record("spent", "payments:pay", amount, "EUR")
    yield {"shop": shop[0], "approvals-down": down, "log-failing": failing,
           "log-closed": closed}
    failing.close(timeout=1.0)


def key(decision: Decision) -> tuple[Any, ...]:
    wire = decision.to_wire()
    return (wire["status"], wire["reasonCode"], wire["rules"], wire["obligations"],
            wire.get("budget"), wire["actingFor"], wire["chain"],
            [(d["code"], d["effect"]) for d in wire["diagnostics"]])


#: Values a request may hold that no approval can be bound to.
UNBINDABLE = [{1, 2}, frozenset({"a"}), object(), ({"x": [1, {"y": b"z"}]}, {3})]

amounts = st.sampled_from([None, "0", 0, False, 0.0, "10", "50", "101", "350", "600",
                           "1e2", "-5", [1], {"v": 1}, "10.001"])
currencies = st.sampled_from([None, "EUR", "USD", "tokens", "calls", "XYZ", ["EUR"],
                              {"c": "EUR"}, 5])
contexts = st.fixed_dictionaries({}, optional={
    "amount": amounts, "currency": currencies,
    "country": st.sampled_from(["FR", "KP", 3]),
    "tokens": st.sampled_from([1, 500, 2000, "-3", None]),
    "doc": st.sampled_from(["d1", "d2"]),
    "tags": st.sampled_from([["a"], *UNBINDABLE]),
})
#: Token names, the usable ones drawn more often (a request denied for its token never
#: reaches the later steps).
token_names = st.sampled_from(["none", "none", "valid", "capped", *sorted(TOKENS)])


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(principal=st.sampled_from(["bot", "bot", "spent", "ghost", "", 5]),
       permission=st.sampled_from(["payments:pay", "payments:transfer", "docs:delete",
                                   "docs:delete", "docs:read", "llm:chat", "bad perm",
                                   None]),
       context=st.one_of(st.none(), contexts, st.just([1])),
       token=token_names,
       approval=st.sampled_from(["none", "granted", "unknown", "list"]))
def test_explain_decides_exactly_as_authorize(shop: tuple[Engine, str],
                                              engines: dict[str, Engine], principal: Any,
                                              permission: Any, context: Any, token: str,
                                              approval: str) -> None:
    """Whatever the request (tokens valid, foreign, for another agent, malformed; open
    and exhausted budgets; approvals granted, unknown, malformed; values no approval can
    be bound to) and whichever service fails (the approval store, the decision log),
    explain reaches the decision authorize does."""
    granted = shop[1]
    approval_id = {"none": None, "granted": granted, "unknown": "apr_nope",
                   "list": [granted]}[approval]
    kwargs = {"token": TOKENS[token], "approval_id": approval_id}
    for kind, eng in engines.items():
        explained = eng.explain(principal, permission, context, **kwargs)
        decided = eng.authorize(principal, permission, context, **kwargs)
        assert key(explained.decision) == key(decided), kind
        assert explained.steps and explained.steps[0]["step"] == "validate"
        json.dumps(explained.to_dict())


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(principal=st.sampled_from(["bot", "spent", 7]),
       name=st.sampled_from(["pay_out", "delete_doc", "unbound"]),
       body=st.one_of(st.none(), st.fixed_dictionaries({}, optional={
           "amount": amounts, "currency": currencies, "doc": st.sampled_from(["d1", "d2"]),
           "card": st.sampled_from(["4111111111111111", 5]),
           "tags": st.sampled_from([["a"], {1, 2}])})),
       token=token_names,
       context=st.one_of(st.none(), contexts))
def test_explain_tool_decides_exactly_as_tool_authorize(
        engines: dict[str, Engine], principal: Any, name: str, body: Any, token: str,
        context: Any) -> None:
    call = {"transport": "function", "function_name": name, "body": body,
            "token": TOKENS[token], "context": context}
    for kind, eng in engines.items():
        explained = eng.explain_tool(principal, **call)
        decided = eng.tool_authorize(principal, **call)
        assert key(explained.decision.decision) == key(decided.decision), kind
        assert explained.decision.outcome == decided.outcome
        assert explained.decision.body == decided.body


@pytest.mark.parametrize(("kind", "permission", "context", "code"), [
    ("shop", "docs:delete", {"doc": "d3", "tags": {1, 2}}, "approval_unbindable"),
    ("approvals-down", "docs:delete", {"doc": "d3"}, "approval_store_error"),
    ("log-failing", "docs:read", {"doc": "d3"}, "decision_log_unavailable"),
    ("log-closed", "docs:read", {"doc": "d3"}, "decision_log_unavailable"),
])
def test_explain_denies_and_says_why_when_a_service_would_refuse(
        engines: dict[str, Engine], kind: str, permission: str, context: dict[str, Any],
        code: str) -> None:
    """A request nobody could approve, an approval store that cannot record the
    request, a decision log that would refuse the decision: denied by authorize, so by
    explain too, and explain names the step."""
    eng = engines[kind]
    decided = eng.authorize("bot", permission, context)
    explained = eng.explain("bot", permission, context)
    assert (decided.status, decided.code) == ("denied", code)
    assert key(explained.decision) == key(decided)
    assert any(code in s["result"] for s in explained.steps)
    assert explained.decision.approval_id is None


def test_a_dry_run_records_no_approval_but_asks_the_store() -> None:
    """explain of a pending request asks the approval store (so a store that is down
    denies) but records nothing in it."""
    asked: list[str] = []

    class Counting(MemoryApprovalStore):
        def get(self, approval_id: str) -> Any:
            asked.append(approval_id)
            return super().get(approval_id)

    store = Counting()
    eng = make_engine(approvals=store)
    explained = eng.explain("bot", "docs:delete", {"doc": "d3"})
    assert explained.decision.status == "pending_approval"
    assert len(asked) == 1 and store.list() == []


def test_explain_reports_what_authorize_denies(shop: tuple[Engine, str]) -> None:
    eng, _ = shop
    over = eng.explain("spent", "payments:pay", {"amount": "1", "currency": "EUR"})
    assert (over.decision.status, over.decision.code) == ("denied", "budget_exceeded")
    assert any(s["step"] == "budgets" for s in over.steps)
    bad = eng.explain("bot", "payments:pay", {"amount": "1"}, token="garbage")
    assert (bad.decision.status, bad.decision.code) == ("denied", "invalid_token")
    assert "grant" in str(bad)


# ---- decisions are built once ----------------------------------------------------------

def test_a_decision_cannot_be_changed(shop: tuple[Engine, str]) -> None:
    eng, _ = shop
    d = eng.authorize("bot", "payments:pay", {"amount": "10", "currency": "EUR"})
    assert d.budget is not None
    for name, value in (("status", "allowed"), ("budget", None), ("acting_for", "x"),
                        ("approval_id", "apr"), ("permission", "x"), ("obligations", None),
                        ("chain", ()), ("rules", ())):
        with pytest.raises(AttributeError):
            setattr(d, name, value)
    with pytest.raises(AttributeError):
        d.budget.budget = "other"  # type: ignore[misc]
    td = eng.tool_authorize("bot", transport="function", function_name="pay_out",
                            body={"amount": "10", "currency": "EUR", "card": "4111"})
    with pytest.raises(AttributeError):
        td.body = None  # type: ignore[misc]


def test_a_diagnostic_cannot_be_changed(shop: tuple[Engine, str]) -> None:
    eng, _ = shop
    d = eng.authorize("bot", "payments:pay", {"amount": "x", "currency": "EUR"})
    wire = d.to_wire()
    assert d.diagnostics
    for name in ("code", "message", "rule", "effect"):
        with pytest.raises(AttributeError):
            setattr(d.diagnostics[0], name, "z")
    assert d.to_wire() == wire
    copied = pickle.loads(pickle.dumps(d.diagnostics[0]))
    assert copied == d.diagnostics[0] and copied.code == d.diagnostics[0].code


def test_a_tool_decisions_redactions_cannot_be_changed(shop: tuple[Engine, str]) -> None:
    """Its redactions are read-only records and its fields cannot be assigned; its body
    is the redaction's copy-on-write result (not frozen: docs/tools.md)."""
    eng, _ = shop
    body = {"amount": "10", "currency": "EUR", "card": "4111111111111111",
            "items": [{"sku": "a", "tags": ["x"]}], "meta": {"k": {"v": 1}}}
    td = eng.tool_authorize("bot", transport="function", function_name="pay_out",
                            body=body)
    assert td.allowed and td.redactions and td.body["card"] == "***REDACTED***"
    wire = td.to_wire()
    changes: list[Callable[[], Any]] = [
        lambda: td.redactions[0].__setitem__("strategy", "none"),
        lambda: td.redactions[0].update(field="$"),
        lambda: td.redactions[0].pop("field"),
        lambda: setattr(td, "body", {}),
        lambda: setattr(td, "redactions", ()),
    ]
    for change in changes:
        with pytest.raises((TypeError, AttributeError)):
            change()
    assert td.to_wire() == wire
    assert dict(td.redactions[0]) == {"field": "$.card", "strategy": "mask"}
    assert body["card"] == "4111111111111111"  # the caller's body is never changed
    # the parts no redaction touched are the caller's objects (copy-on-write)
    assert td.body["items"] is body["items"] and td.body is not body


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4),
    lambda inner: (st.lists(inner, max_size=3)
                   | st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=12)


def _scramble(value: Any) -> None:
    """Change every dict and list inside ``value`` in place."""
    if isinstance(value, dict):
        for item in list(value.values()):
            _scramble(item)
        value["scrambled"] = True
        for k in list(value)[:1]:
            value[k] = "changed"
    elif isinstance(value, list):
        for item in list(value):
            _scramble(item)
        value.append("scrambled")


@settings(max_examples=150, deadline=None)
@given(body=json_values)
def test_a_frozen_copy_shares_nothing_with_what_it_copies(body: Any) -> None:
    """What the decision log records of a tool call's body (``frozen``): an equal,
    read-only copy that a change to the original, at any depth, does not reach."""
    seen = copy.deepcopy(body)
    kept = frozen(body)
    assert kept == seen and json.dumps(kept) == json.dumps(seen)
    if isinstance(body, (dict, list)):
        with pytest.raises(TypeError):
            kept.clear()
    _scramble(body)
    assert kept == seen


def test_budget_is_typed_and_its_wire_shape_is_unchanged(shop: tuple[Engine, str]) -> None:
    eng, _ = shop
    d = eng.authorize("bot", "payments:pay", {"amount": "60", "currency": "EUR"})
    assert d.budget is not None
    assert (d.budget.budget, d.budget.subject, d.budget.unit) == ("shop.daily", "bot", "EUR")
    assert (d.budget.limit, d.budget.attempted, d.budget.remaining) == (
        Decimal("100.00"), Decimal("60.00"), Decimal("100.00"))
    assert d.to_wire()["budget"] == {
        "budget": "shop.daily", "subject": "bot", "limit": "100.00", "spent": "0.00",
        "reserved": "0.00", "debt": "0.00", "attempted": "60.00", "projected": "60.00",
        "remaining": "100.00", "currency": "EUR", "windowEnd": "2026-03-11T00:00:00Z"}


# ---- every covering budget is checked whatever the request carries (issue 11, item 6) ----

CALLS_ONLY = """namespace shop
currency EUR
role buyer: payments:*
agent "bot": buyer
budget paycalls: payments:* limit 2 calls per day per agent
budget toks: payments:* limit 10 tokens per day per agent
"""


@pytest.mark.parametrize("context", [
    None, {}, {"amount": 0, "currency": "EUR"}, {"amount": "0", "currency": "EUR"},
    {"amount": False, "currency": "EUR"}, {"amount": 0.0, "currency": "EUR"},
    {"amount": "0", "currency": "tokens"}, {"amount": "0", "currency": "USD"},
    {"tokens": 0}, {"amount": "0", "currency": "calls"},
])
def test_an_exhausted_calls_budget_denies_whatever_the_amount(context: Any) -> None:
    eng = Engine.from_source(CALLS_ONLY, clock=Clock(NOW))
    for _ in range(2):  # two calls: the calls budget is exhausted, 2 of 10 tokens used
        eng.budgets.record("bot", "payments:pay", 1, "tokens")
    d = eng.authorize("bot", "payments:pay", context)
    assert d.status == "denied", d.to_wire()
    assert d.code in ("budget_exceeded", "invalid_amount", "unit_mismatch"), d.to_wire()


def test_an_exhausted_money_budget_stops_a_request_without_an_amount() -> None:
    eng = Engine.from_source(CALLS_ONLY.replace("10 tokens", "100 EUR"), clock=Clock(NOW))
    assert eng.authorize("bot", "payments:pay").allowed
    eng.budgets.record("bot", "payments:pay", "100", "EUR")
    d = eng.authorize("bot", "payments:pay")
    assert (d.status, d.code, d.rules) == ("denied", "budget_exceeded", ("shop.toks",))
    # with room left, a request without an amount passes and counts one call
    assert eng.authorize("helper-less", "payments:pay").status == "denied"  # no permit


def test_an_exhausted_tokens_budget_stops_a_money_request() -> None:
    eng = Engine.from_source(CALLS_ONLY.replace("2 calls", "5 calls") + "budget money: "
                             "payments:* limit 100 EUR per day per agent\n", clock=Clock(NOW))
    eng.budgets.record("bot", "payments:pay", 10, "tokens")
    d = eng.authorize("bot", "payments:pay", {"amount": "1", "currency": "EUR"})
    assert (d.status, d.code, d.rules) == ("denied", "budget_exceeded", ("shop.toks",))


# ---- request data never raises (issue 11, item 10) ------------------------------------

@pytest.mark.parametrize("approval_id", [["apr_1"], {"id": "apr_1"}, 5, b"apr"])
def test_an_approval_id_that_is_not_a_string_is_invalid(shop: tuple[Engine, str],
                                                         approval_id: Any) -> None:
    eng, _ = shop
    d = eng.authorize("bot", "docs:delete", {"doc": "d1"}, approval_id=approval_id)
    assert (d.status, d.code) == ("denied", "invalid_request")
    td = eng.tool_authorize("bot", transport="function", function_name="pay_out",
                            body={"amount": "1", "currency": "EUR"}, approvalId=approval_id)
    assert (td.status, td.code, td.outcome) == ("denied", "invalid_request",
                                                "invalid_request")


@pytest.mark.parametrize("currency", [["EUR"], {"code": "EUR"}, 5, True])
@pytest.mark.parametrize("token", ["none", "capped"])
def test_a_currency_that_is_not_a_string_is_a_clean_denial(shop: tuple[Engine, str],
                                                           currency: Any, token: str
                                                           ) -> None:
    eng, _ = shop
    d = eng.authorize("bot", "payments:pay", {"amount": "10", "currency": currency},
                      token=TOKENS[token])
    assert d.status == "denied"
    assert d.code in ("unknown_currency", "invalid_amount"), d.to_wire()
    assert [x.code for x in d.diagnostics] in (["unknown_currency"],
                                                ["unknown_currency"] * 2), d.to_wire()


# ---- each conversion uses the rates of the file that owns it (issue 11, item 5) -------

def two_files(budget_in: str) -> dict[str, str]:
    """Two EUR files with different USD rates; the budget lives in ``budget_in``."""
    budget = "budget daily: payments:* limit 100 EUR per day per agent\n"
    return {
        "a.policy": "namespace a\ncurrency EUR\nrate USD 0.50\nrole r: payments:*\n"
                    'agent "bot": r\nlimit cap: payments:* amount <= 100 EUR\n'
                    + (budget if budget_in == "a" else ""),
        "b.policy": "namespace b\ncurrency EUR\nrate USD 1.00\n"
                    "limit cap: payments:* amount <= 100 EUR\n"
                    + (budget if budget_in == "b" else ""),
    }


def test_each_limit_converts_with_its_own_files_rates() -> None:
    eng = Engine.from_sources(two_files("a"), clock=Clock(NOW))
    # 150 USD is 75 EUR for a.cap but 150 EUR for b.cap: b's limit refuses it
    d = eng.authorize("bot", "payments:pay", {"amount": "150", "currency": "USD"})
    assert (d.status, d.code, d.rules) == ("denied", "limit_exceeded", ("b.cap",))
    assert eng.authorize("bot", "payments:pay", {"amount": "100", "currency": "USD"}).allowed


@pytest.mark.parametrize(("owner", "attempted"), [("a", "60.00"), ("b", "120.00")])
def test_a_budget_converts_with_its_own_files_rates(owner: str, attempted: str) -> None:
    files = two_files(owner)
    files["b.policy"] = files["b.policy"].replace("limit cap: payments:* amount <= 100 EUR\n",
                                                  "")
    files["a.policy"] = files["a.policy"].replace("limit cap: payments:* amount <= 100 EUR\n",
                                                  "")
    eng = Engine.from_sources(files, clock=Clock(NOW))
    d = eng.authorize("bot", "payments:pay", {"amount": "120", "currency": "USD"})
    assert d.budget is not None and d.to_wire()["budget"]["attempted"] == attempted
    assert d.allowed is (owner == "a")


def test_files_must_agree_on_the_default_currency() -> None:
    with pytest.raises(PolicyError) as info:
        Engine.from_sources({"a.policy": "currency EUR\ndefault_currency EUR\n",
                             "b.policy": "namespace b\ncurrency EUR\ndefault_currency USD\n"})
    assert [p.code for p in info.value.problems] == ["E134"]
    assert info.value.problems[0].file == "b.policy"


def test_the_one_default_currency_applies_to_every_file() -> None:
    eng = Engine.from_sources({
        "a.policy": "namespace a\ncurrency EUR\ndefault_currency USD\nrate USD 0.5\n"
                    'role r: payments:*\nagent "bot": r\n',
        "b.policy": "namespace b\ncurrency EUR\nrate USD 0.5\n"
                    "limit cap: payments:* amount <= 100 EUR\n"}, clock=Clock(NOW))
    # 200 (USD by default) is 100 EUR in b.policy too: within b.cap; 201 is over
    assert eng.authorize("bot", "payments:pay", {"amount": "200"}).allowed
    assert eng.authorize("bot", "payments:pay", {"amount": "201"}).code == "limit_exceeded"


# ---- any RateSource works wherever StaticRates does (issue 10, item 5) -----------------

MIXED = """namespace shop
currency EUR
role buyer: payments:*
agent "bot": buyer
limit cap: payments:* amount <= 100 EUR
budget daily: payments:* limit 100 EUR per day per agent
delegation { issuer "https://auth.example" }
"""


def rate_sources(tmp_path: Any) -> dict[str, Any]:
    path = tmp_path / "fx.json"
    path.write_text(json.dumps({"base": "EUR", "as_of": "2026-03-10T00:00:00Z",
                                "rates": {"USD": "0.92"}}))
    return {"static": StaticRates("EUR", {"USD": "0.92"}), "json": JsonFileRates(path),
            "callable": CallableRates(lambda a, b, now: Decimal("0.92") if (a, b) == (
                "USD", "EUR") else None)}


@pytest.mark.parametrize("kind", ["static", "json", "callable"])
def test_every_rate_source_converts_for_limits_budgets_and_grants(tmp_path: Any,
                                                                  kind: str) -> None:
    rates = rate_sources(tmp_path)[kind]
    eng = Engine.from_source(MIXED, rates=rates, keys=KEYS, clock=Clock(NOW))
    fits = {"amount": "108.69", "currency": "USD"}  # 99.9948 -> 100.00 EUR
    over = {"amount": "108.70", "currency": "USD"}  # 100.004 -> 100.01 EUR
    assert eng.authorize("bot", "payments:pay", fits).allowed
    assert eng.authorize("bot", "payments:pay", over).code == "limit_exceeded"
    d = eng.authorize("bot", "payments:pay", fits)
    assert d.budget is not None and d.to_wire()["budget"]["attempted"] == "100.00"
    capped = mint("bot", max_amount=("50", "EUR"))
    assert eng.authorize("bot", "payments:pay", {"amount": "54.34", "currency": "USD"},
                         token=capped).allowed
    assert eng.authorize("bot", "payments:pay", {"amount": "54.35", "currency": "USD"},
                         token=capped).code == "delegation_amount_exceeded"
    r = eng.budgets.reserve("bot", "payments:pay", "108.69", "USD")
    assert r.lines[0].amount == Decimal("100.00")


def test_a_rate_source_that_fails_denies(tmp_path: Any) -> None:
    def broken(a: str, b: str, now: float | None) -> Decimal:
        raise RuntimeError("down")
    eng = Engine.from_source(MIXED, rates=CallableRates(broken), clock=Clock(NOW))
    d = eng.authorize("bot", "payments:pay", {"amount": "1", "currency": "USD"})
    assert (d.status, d.code) == ("denied", "no_rate")


# ---- the budgets leaf owns its limits; the checker reports them (issue 10, item 5) -----

@pytest.mark.parametrize(("statement", "code", "value"), [
    ("budget b: pay:* limit 10 EUR per rolling 60d per agent", "E125", "60d"),  # at most 31d
    ("budget b: pay:* limit 10.001 USD per day per agent", "E123", "10.001"),  # USD decimals
    ("budget b: pay:* limit 1000000000000000 credits per day per agent", "E123", "1000"),
    ("budget b: pay:* limit 1.5 calls per day per agent", "E123", "1.5"),
])
def test_check_and_load_agree_on_budget_limits(statement: str, code: str, value: str) -> None:
    from conftest import codes_of
    text = f"role r: pay:*\nagent \"bot\": r\n{statement}\n"
    # reported at the value it concerns (the caret under it)
    assert codes_of(("t.policy", text)) == [(code, 3, statement.index(value) + 1)]
    with pytest.raises(PolicyError) as info:  # the engine refuses it the same way
        Engine.from_source(text, name="t.policy")
    assert [(p.code, p.line) for p in info.value.problems] == [(code, 3)]


def test_the_longest_rolling_window_loads() -> None:
    eng = Engine.from_source('role r: pay:*\nagent "bot": r\n'
                             "budget b: pay:* limit 10 EUR per rolling 31d per agent\n")
    assert eng.budgets.specs[0].rolling_seconds == 31 * 86400


def test_explain_reports_a_granted_approval_without_using_it() -> None:
    eng = make_engine()
    pending = eng.authorize("bot", "docs:delete", {"doc": "d1"})
    assert pending.approval_id is not None
    eng.approvals.approve(pending.approval_id, by="alice")
    for _ in range(2):  # explain does not use the approval up
        exp = eng.explain("bot", "docs:delete", {"doc": "d1"}, approval_id=pending.approval_id)
        assert (exp.decision.status, exp.decision.rules) == ("allowed", ("role:buyer",))
        assert exp.decision.approval_id is None
    assert eng.authorize("bot", "docs:delete", {"doc": "d1"},
                         approval_id=pending.approval_id).allowed
    used = eng.explain("bot", "docs:delete", {"doc": "d1"}, approval_id=pending.approval_id)
    again = eng.authorize("bot", "docs:delete", {"doc": "d1"}, approval_id=pending.approval_id)
    assert key(used.decision) == key(again) and again.status == "pending_approval"
    assert [d.code for d in used.decision.diagnostics] == ["approval_used"]


# ---- the budgets step's steady state sees every change at once (issue 10, item 8) -------

ONE_DAILY = """namespace shop
currency EUR
role buyer: payments:*
agent "bot": buyer
budget daily: payments:* limit 100 EUR per day per agent
"""


def test_a_budget_check_under_the_same_amount_sees_each_change_on_the_next_call() -> None:
    """The budgets step keeps, per (permission, principal), the amount text last asked
    and the bucket's read; a hold, a spend, a commit, a release or a hold's expiry is
    seen by the very next authorize all the same."""
    clock = Clock(NOW)
    eng = Engine.from_source(ONE_DAILY, clock=clock)
    ctx = {"amount": "30.00", "currency": "EUR"}

    def ask() -> tuple[str, Decimal, Decimal]:
        d = eng.authorize("bot", "payments:pay", ctx)
        assert d.budget is not None and d.budget is d.budget
        return d.code, d.budget.spent, d.budget.reserved

    for _ in range(3):  # the steady state
        assert ask() == ("permitted", Decimal("0.00"), Decimal("0.00"))
    held = eng.budgets.reserve("bot", "payments:pay", "50", "EUR", ttl=60)
    assert ask() == ("permitted", Decimal("0.00"), Decimal("50.00"))
    eng.budgets.record("bot", "payments:pay", "30", "EUR")
    assert ask() == ("budget_exceeded", Decimal("30.00"), Decimal("50.00"))
    eng.budgets.release(held.id)
    assert ask() == ("permitted", Decimal("30.00"), Decimal("0.00"))
    held = eng.budgets.reserve("bot", "payments:pay", "45", "EUR", ttl=60)
    assert ask() == ("budget_exceeded", Decimal("30.00"), Decimal("45.00"))
    clock.t += 60  # the hold lapses: no write, housekeeping is due
    assert ask() == ("permitted", Decimal("30.00"), Decimal("0.00"))
    held = eng.budgets.reserve("bot", "payments:pay", "40", "EUR", ttl=60)
    eng.budgets.commit(held.id, "40", "EUR")
    assert ask() == ("permitted", Decimal("70.00"), Decimal("0.00"))  # room 30: fits
    eng.budgets.record("bot", "payments:pay", "0.01", "EUR")
    assert ask() == ("budget_exceeded", Decimal("70.01"), Decimal("0.00"))
    clock.t += 86400  # a new window
    assert ask() == ("permitted", Decimal("0.00"), Decimal("0.00"))
