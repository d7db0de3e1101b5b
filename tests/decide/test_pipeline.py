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
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from policyengine import tokens
from policyengine.audit import DecisionLog
from policyengine.decide import MemoryApprovalStore
from policyengine.decision import Decision, ToolDecision, frozen
from policyengine.engine import Engine
from policyengine.errors import PolicyEngineError
from policyengine.lang import PolicyError
from policyengine.money import CallableRates, JsonFileRates, StaticRates

NOW = 1773144000.0  # 2026-03-10T12:00:00Z
ISSUER = "https://auth.example"
KEYS = tokens.KeySet.generate()
FOREIGN_KEYS = tokens.KeySet.generate()
HMAC_KEY = b"pipeline-test-hmac-key"

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
    kw.setdefault("permissions", ["payments:*", "docs:*", "llm:*"])
    kw.setdefault("now", NOW)
    kw.setdefault("ttl", 3600)
    return tokens.mint(keys, issuer=ISSUER, acting_for="besar", agent=agent, **kw)


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


class NullSink:
    """A decision-log sink that takes every line and keeps none."""

    def write(self, lines: Any) -> None:
        pass

    def close(self) -> None:
        pass


class FailingSink:
    """A decision-log sink that cannot write."""

    def write(self, lines: Any) -> None:
        raise OSError("disk full")

    def close(self) -> None:
        pass


def broken_logs(source: str) -> tuple[Engine, Engine]:
    """An engine over ``source`` whose decision log (overflow ``deny``) has a failing
    sink, once the log has seen it fail; and one whose log is closed."""
    failing = Engine.from_source(source, name="shop.policy", clock=Clock(NOW), keys=KEYS,
                                 hmac_key=HMAC_KEY, decision_log=DecisionLog(
                                     FailingSink(), overflow="deny", retry_backoff=0.01,
                                     stall_after=0.01))
    closed = Engine.from_source(source, name="shop.policy", clock=Clock(NOW), keys=KEYS,
                                hmac_key=HMAC_KEY,
                                decision_log=DecisionLog(FailingSink(), overflow="drop"))
    closed.close(timeout=1.0)
    for _ in range(500):  # until the log has seen its sink fail
        if failing.authorize("bot", "docs:read").code == "decision_log_unavailable":
            break
        time.sleep(0.01)
    else:
        raise AssertionError("the failing log never refused a decision")
    return failing, closed


@pytest.fixture(scope="module")
def engines(shop: tuple[Engine, str]) -> Iterator[dict[str, Engine]]:
    """The shop engine, and engines whose approval store is down, whose decision log
    (overflow ``deny``) has a failing sink, and whose log is closed: the services a run
    asks besides the rules, each failing."""
    down = make_engine(approvals=DownApprovals())
    failing, closed = broken_logs(POLICY)
    for eng in (down, failing):
        for amount in ("33.33", "33.33", "33.34"):
            eng.budgets.record("spent", "payments:pay", amount, "EUR")
    yield {"shop": shop[0], "approvals-down": down, "log-failing": failing,
           "log-closed": closed}
    failing.close(timeout=1.0)


def assert_same(explained: Decision, decided: Decision, store: Any = None,
                label: str = "") -> None:
    """explain's decision is authorize's: every field of the wire form (status, reason,
    reasonCode, rules, obligations, diagnostics, actingFor, chain, budget, rateLimit,
    shadow) and every shadow outcome (``mode log`` ones are not on the wire). Two fields
    differ by design: the decision id (one per decision) and a pending decision's
    approval id: authorize records the approval request (a fresh id, pending in
    ``store``), explain is a dry run and records none (None; engine.py, explain)."""
    e, d = explained.to_wire(), decided.to_wire()
    del e["decisionId"], d["decisionId"]
    if decided.status == "pending_approval":
        recorded, dry = d.pop("approvalId"), e.pop("approvalId")
        assert dry is None, label
        assert type(recorded) is str and recorded, label
        if store is not None:
            assert store.get(recorded).status == "pending", label
    assert e == d, label
    assert ([s._asdict() for s in explained.shadow]
            == [s._asdict() for s in decided.shadow]), label


def assert_same_tool(explained: ToolDecision, decided: ToolDecision,
                     store: Any = None, label: str = "") -> None:
    """As :func:`assert_same`, and the tool call's own fields: outcome, permission,
    tool, the redactions made and the redacted body."""
    assert_same(explained.decision, decided.decision, store, label)
    e, d = explained.to_wire(), decided.to_wire()
    for wire in (e, d):
        del wire["decisionId"], wire["approvalId"]
    assert e == d, label
    assert explained.body == decided.body, label


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


# ---- explain is authorize traced: the property (issue 10, item 1) -------------------

#: Every step of the pipeline has something to do: shadow rules of each kind (a forbid
#: and an `approval ... over` in mode warn, a limit in mode log), enforced and shadow
#: budgets (money, calls, tokens), enforced rate limits and shadow ones (warn and log),
#: approvals, a delegation block, and tools on every transport (function, mcp, http,
#: egress) with redactions of each kind (mask, remove, partial, hash). docs:read and
#: llm:chat are decided from the shared plan entry (permits only), the others from a
#: principal's own plan.
PROP_POLICY = """namespace shop
currency EUR
rate USD 0.92
default_currency EUR
role buyer: payments:*, docs:*, llm:*
agent "bot": buyer
agent "spent": buyer
forbid sanctioned: payments:*, docs:delete when has(context.country) and context.country == "KP"
forbid risky: payments:* when has(context.country) and context.country == "RU" mode warn
limit cap: payments:* amount <= 500 EUR
limit soft-cap: payments:* amount <= 200 EUR mode log
approval review: payments:* over 300 EUR
approval wire-review: payments:transfer over 100 EUR mode warn
approval docs-review: docs:delete
budget daily: payments:* limit 600 EUR per day per agent
budget paycalls: payments:* limit 6 calls per day per agent
budget toks: llm:* limit 1000 tokens per hour per agent
budget trial: payments:* limit 400 EUR per day per agent mode warn
budget llm-trial: llm:* limit 400 tokens per hour per agent mode log
ratelimit docrate: docs:* 2 per minute
ratelimit chatrate: llm:* 1 per minute
ratelimit transferrate: payments:transfer 3 per hour burst 2
ratelimit payshadow: payments:* 2 per hour mode warn
ratelimit docshadow: docs:delete 1 per hour mode log
delegation { issuer "https://auth.example" }
tool pay: function "pay_out" -> payments:transfer {
  amount = $.amount, currency = $.currency
  redact $.card mask
}
tool rm: function "delete_doc" -> docs:delete { doc = $.doc }
tool chat: mcp "chat.*" -> llm:chat { tokens = $.tokens  redact $.secret remove }
tool api: http "api.shop.example" {
  POST "/v1/pay" -> payments:pay { amount = $.amount, currency = $.currency }
  GET "/v1/docs/{id}" -> docs:read { doc = param "id" }
  DELETE "/v1/docs/{id}" -> docs:delete { doc = param "id" }
  deny "/v1/admin/**"
  redact $.card partial 4
  redact $..email hash
}
egress {
  allow "*.cdn.example"
  deny "metadata.internal"
}
"""

#: The grant a "revocable" token carries: a step of the property revokes it.
REVOCABLE = "grant-revocable"
DAYS = 3 * 86400  # outlives every clock move of the property
PROP_TOKENS: dict[str, Any] = {
    "none": None,
    "valid": mint("bot", ttl=DAYS),
    "capped": mint("bot", max_amount=("40", "EUR"), ttl=DAYS),
    "revocable": mint("bot", grant_id=REVOCABLE, ttl=DAYS),
    "short": mint("bot", ttl=90),  # expires once the clock moves on 90 s
    "expired": mint("bot", now=NOW - 7200),
    "narrow": mint("bot", permissions=["docs:*"], ttl=DAYS),
    "other-subject": mint("spent", ttl=DAYS),
    "foreign": mint("bot", FOREIGN_KEYS, ttl=DAYS),
    "garbage": "not.a.token",
    "not-a-string": ["x"],
}
#: Usable tokens drawn more often (a request denied for its token reaches no later step).
prop_tokens = st.sampled_from(["none"] * 6 + ["valid"] * 3 + ["revocable"] * 2
                              + ["short"] * 2 + sorted(PROP_TOKENS)
                              ).map(PROP_TOKENS.__getitem__)


def prop_engine(clock: Clock, **options: Any) -> Engine:
    """A fresh engine over PROP_POLICY; agent "spent" has used its daily 600 EUR, "bot"
    250 of them (so a payment of 350 EUR still fits, one of 450 does not)."""
    eng = Engine.from_source(PROP_POLICY, name="shop.policy", clock=clock, keys=KEYS,
                             hmac_key=HMAC_KEY, **options)
    for amount in ("200", "200", "200"):
        eng.budgets.record("spent", "payments:pay", amount, "EUR")
    eng.budgets.record("bot", "payments:pay", "250", "EUR")
    return eng


@pytest.fixture(scope="module")
def prop_logs() -> Iterator[dict[str, Engine]]:
    failing, closed = broken_logs(PROP_POLICY)
    yield {"log-failing": failing, "log-closed": closed}
    failing.close(timeout=1.0)


money = st.fixed_dictionaries({
    "amount": st.sampled_from(["5", "20", "60", "120", "250", "350", "450", "600"]),
    "currency": st.sampled_from(["EUR", "EUR", "USD"])})
#: Well-formed contexts per permission, most with nothing odd in them.
GOOD = {"payments:pay": money, "payments:transfer": money,
        "docs:read": st.fixed_dictionaries({"doc": st.sampled_from(["d1", "d2"])}),
        "docs:delete": st.fixed_dictionaries({"doc": st.sampled_from(["d1", "d2"])}),
        "llm:chat": st.fixed_dictionaries({"tokens": st.sampled_from([50, 300, 700])})}
extras = st.sampled_from([{}] * 6 + [{"country": "RU"}, {"country": "KP"},
                                     {"tags": {1, 2}}, {"tags": ["a"]}])


#: Tokens a request repeated into the rate limits carries.
usable_tokens = st.sampled_from([None, None, "valid", "revocable", "revocable", "short"]
                                ).map(PROP_TOKENS.get)


@st.composite
def prop_requests(draw: st.DrawFn, kind: str = "any") -> dict[str, Any]:
    """An authorize request: most are well formed for their permission (so they reach
    the budgets, rate limits and approvals), some are anything (``contexts``).
    ``kind`` "pending": one that asks for an approval unless something else refuses it;
    "burst": a well-formed one that a rate limit or a budget counts."""
    if kind == "pending":
        permission = draw(st.sampled_from(["docs:delete", "payments:pay",
                                           "payments:transfer"]))
        context = (draw(GOOD[permission]) if permission == "docs:delete" else
                   {"amount": draw(st.sampled_from(["350", "450"])), "currency": "EUR"})
        principal = "bot"
    elif kind == "burst":
        permission = draw(st.sampled_from(["docs:read", "llm:chat", "payments:transfer",
                                           "payments:pay"]))
        return {"principal": "bot", "permission": permission,
                "context": draw(GOOD[permission]), "token": draw(usable_tokens),
                "approval_id": None}
    elif draw(st.integers(0, 4)):
        permission = draw(st.sampled_from(sorted(GOOD)))
        context = {**draw(GOOD[permission]), **draw(extras)}
        principal = draw(st.sampled_from(["bot"] * 3 + ["spent"]))
    else:
        permission = draw(st.sampled_from([*sorted(GOOD), "docs:other", "bad perm", None]))
        context = draw(st.one_of(st.none(), contexts, st.just([1])))
        principal = draw(st.sampled_from(["bot", "spent", "ghost", "", 5]))
    token = (draw(st.sampled_from([None, None, PROP_TOKENS["other-subject"]]))
             if principal == "spent" else draw(prop_tokens))
    return {"principal": principal, "permission": permission, "context": context,
            "token": token,
            "approval_id": draw(st.sampled_from([None] * 8 + ["apr_unknown", ["apr"]]))}


card = st.sampled_from(["4111111111111111", "4111111111111111", 4111, None])


@st.composite
def prop_calls(draw: st.DrawFn, kind: str = "any") -> dict[str, Any]:
    """A tool call through one of the transports: function, mcp, http (routed, denied
    route, no route, plain http), egress (an allowed host, a denied one, an unknown
    one), with bodies the redactions apply to (or cannot: a card that is a number).
    ``kind`` as for :func:`prop_requests`."""
    pending = kind == "pending"
    if kind == "burst":
        doc = draw(st.sampled_from(["d1", "d2"]))
        call = draw(st.sampled_from([
            {"transport": "http", "method": "GET", "host": "api.shop.example",
             "path": f"/v1/docs/{doc}"},
            {"transport": "mcp", "tool_name": "chat.complete",
             "body": {"tokens": 300, "secret": "s3cret"}},
            {"transport": "function", "function_name": "pay_out",
             "body": {"amount": "20", "currency": "EUR", "card": "4111111111111111"}}]))
        return {"principal": "bot", "tool": {**call, "token": draw(usable_tokens)}}
    amount = draw(st.sampled_from(["350", "450"] if pending else
                                  ["5", "20", "120", "350", "600", "x"]))
    pay = {"amount": amount, "currency": draw(st.sampled_from(["EUR", "EUR", "USD"])),
           "card": draw(card), "customer": {"email": "a@example.com",
                                            "friends": [{"email": "b@example.com"}]}}
    doc = draw(st.sampled_from(["d1", "d2"]))
    calls = [
        {"transport": "function", "function_name": "delete_doc", "body": {"doc": doc}},
        {"transport": "http", "method": "DELETE", "host": "api.shop.example",
         "path": f"/v1/docs/{doc}"},
        {"transport": "function", "function_name": "pay_out", "body": pay},
        {"transport": "http", "method": "POST", "host": "api.shop.example",
         "path": "/v1/pay", "body": pay},
    ]
    if not pending:
        calls += [
            {"transport": "function", "function_name": "unbound", "body": {"doc": doc}},
            {"transport": "mcp", "tool_name": draw(st.sampled_from(["chat.complete",
                                                                     "other"])),
             "body": {"tokens": draw(st.sampled_from([50, 300, 700, "x"])),
                      "secret": "s3cret", "prompt": "hi"}},
            {"transport": "http", "method": "GET", "host": "api.shop.example",
             "path": f"/v1/docs/{doc}", "query": {"v": "1"}},
            {"transport": "http", "method": "GET", "host": "api.shop.example",
             "path": draw(st.sampled_from(["/v1/admin/users", "/v1/nowhere"]))},
            {"transport": "http", "method": "POST", "host": "api.shop.example",
             "path": "/v1/pay", "body": json.dumps(pay), "scheme": "http"},
            {"transport": "http", "method": "GET",
             "host": draw(st.sampled_from(["img.cdn.example", "metadata.internal",
                                           "unknown.example"])),
             "path": "/a.png", "body": {"card": "4111111111111111"}},
        ]
    call = draw(st.sampled_from(calls))
    call["context"] = draw(st.sampled_from([None] * 4 + [{"country": "RU"},
                                                         {"country": "KP"}]))
    call["token"] = draw(prop_tokens)
    call["approval_id"] = None if pending else draw(st.sampled_from([None] * 8
                                                                    + ["apr_unknown"]))
    return {"principal": "bot" if pending else draw(st.sampled_from(["bot"] * 4
                                                                    + ["spent", 7])),
            "tool": call}


ask = st.one_of(prop_requests(), prop_calls())
steps = st.one_of(
    st.tuples(st.just("ask"), ask),
    st.tuples(st.just("ask"), ask),
    # the same request again and again: into the rate limits and budgets; and, between
    # two, maybe the clock moves (a short token expires) or the revocable grant is
    # revoked, after authorize has kept the grant it verified
    st.tuples(st.just("repeat"), st.one_of(prop_requests("burst"), prop_calls("burst")),
              st.integers(2, 4), st.sampled_from([None, None, 30, 100, "revoke"])),
    # an approval round: a request that asks for one, then the answer, then the same
    # request (or one just like it) again with the approval's id
    st.tuples(st.just("approval"), st.one_of(prop_requests("pending"),
                                             prop_calls("pending")),
              st.sampled_from(["approve"] * 4 + ["reject", "leave", "other-request",
                                                 "twice"])),
    st.tuples(st.just("spend"), st.sampled_from(["payments:pay", "llm:chat"]),
              st.sampled_from(["100", "200", "300"])),
    st.tuples(st.just("tick"), st.sampled_from([5, 30, 61, 120, 600, 3600, 86400])),
    st.tuples(st.just("revoke")),
)


def _outcome_events(decision: Decision) -> None:
    """Where the main engine's requests end, as hypothesis events (shown by
    ``--hypothesis-show-statistics``: the share of examples with at least one)."""
    event(decision.status if decision.status != "denied" else f"denied: {decision.code}")
    kinds = {s.kind for s in decision.shadow}
    for kind in sorted(kinds):
        event(f"shadow outcome: {kind}")


class Run:
    """The engines of one example, each asked every request: explain first, then
    authorize on the same state (explain is a dry run, so authorize finds the state
    explain saw: the same rate-limit tokens, approvals and budgets)."""

    def __init__(self, engines: dict[str, Engine]) -> None:
        self.engines = engines

    def ask(self, request: dict[str, Any]) -> Decision | ToolDecision:
        """Explain and authorize ``request`` on every engine; the main engine's answer."""
        main: Any = None
        for kind, eng in self.engines.items():
            if "tool" in request:
                call = request["tool"]
                explained_tool = eng.explain_tool(request["principal"], **call).decision
                decided_tool = eng.tool_authorize(request["principal"], **call)
                assert_same_tool(explained_tool, decided_tool, eng.approvals, kind)
                decided = decided_tool.decision
                if kind == "main":
                    event(f"tool {call['transport']}: {decided_tool.outcome}")
                    if decided_tool.redactions:
                        event("tool: body redacted")
                    main = decided_tool
            else:
                args = (request["principal"], request["permission"], request["context"])
                kwargs = {"token": request["token"], "approval_id": request["approval_id"]}
                explained = eng.explain(*args, **kwargs)
                decided = eng.authorize(*args, **kwargs)
                assert_same(explained.decision, decided, eng.approvals, kind)
                assert explained.steps and explained.steps[0]["step"] == "validate"
                if decided.code == "rate_limited":  # explain names the step that refused
                    assert any(s["step"] == "ratelimit" for s in explained.steps)
                json.dumps(explained.to_dict())
                if kind == "main":
                    main = decided
            if kind == "main":
                _outcome_events(decided)
        return main  # type: ignore[no-any-return]

    def spend(self, request: dict[str, Any]) -> None:
        """Record the spend of ``request`` (a payment's amount, a chat's tokens) on the
        engines that keep their state per example."""
        if "tool" in request:
            call = request["tool"]
            permission = {"function": "payments:transfer", "mcp": "llm:chat"}.get(
                call["transport"], "docs:read")
            context = call.get("body")
        else:
            permission, context = request["permission"], request["context"]
        if permission.startswith("docs"):  # nothing to spend
            return
        if permission.startswith("payments"):
            amount, unit = context["amount"], context["currency"]
        else:
            amount, unit = context["tokens"], "tokens"
        for kind in ("main", "approvals-down"):
            try:
                self.engines[kind].budgets.record("bot", permission, amount, unit)
            except PolicyEngineError:  # it does not fit: nothing is spent
                event("spend refused")

    def step(self, step: tuple[Any, ...], clock: Clock) -> None:
        """One step of an example's history."""
        if step[0] == "ask":
            self.ask(step[1])
        elif step[0] == "repeat":  # as a client does: a payment allowed is then made
            _, request, times, between = step
            for i in range(times):
                if i and between == "revoke":
                    self.revoke()
                elif i and between is not None:
                    clock.t += between
                if self.ask(request).status == "allowed":
                    self.spend(request)
        elif step[0] == "approval":
            _, request, answer = step
            first = self.ask(request)
            if first.status != "pending_approval":
                return
            approval_id = first.approval_id
            if answer in ("approve", "other-request", "twice"):
                self.engines["main"].approvals.approve(approval_id, by="alice")
            elif answer == "reject":
                self.engines["main"].approvals.reject(approval_id, by="alice")
            again = self.ask(_with(request, approval_id, answer == "other-request"))
            if again.status == "allowed":
                event("allowed: an approval honoured")
            if answer == "twice" and again.status == "allowed":
                self.ask(_with(request, approval_id))  # used up: pending again
        elif step[0] == "spend":
            _, permission, amount = step
            self.spend({"principal": "bot", "permission": permission,
                        "context": {"amount": amount, "currency": "EUR", "tokens": amount}})
        elif step[0] == "tick":
            clock.t += step[1]
        else:
            self.revoke()

    def revoke(self) -> None:
        """Revoke the "revocable" token's grant (on the engines of this example)."""
        for kind in ("main", "approvals-down"):
            self.engines[kind].revoke(REVOCABLE)


def _with(request: dict[str, Any], approval_id: Any, other: bool = False
          ) -> dict[str, Any]:
    """``request`` presenting ``approval_id`` (``other``: a request just like it but
    for another document or amount, which the approval does not cover)."""
    request = copy.deepcopy(request)
    target = request.get("tool", request)
    target["approval_id"] = approval_id
    if other:
        if "tool" in request and target["transport"] == "http" and "path" in target:
            target["path"] = target["path"].replace("/d", "/x")
        body = target.get("body") if "tool" in request else target.get("context")
        if isinstance(body, dict):
            if "doc" in body:
                body["doc"] = "other"
            if "amount" in body:
                body["amount"] = "400"
    return request


@settings(max_examples=400, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(history=st.lists(steps, min_size=2, max_size=10))
def test_explain_decides_exactly_as_authorize(prop_logs: dict[str, Engine],
                                              history: list[tuple[Any, ...]]) -> None:
    """Whatever the history and the request, explain reaches the decision authorize
    does, field by field (:func:`assert_same`): requests and tool calls (function, mcp,
    http, egress; bodies redacted, or not redactable), tokens (valid, capped, narrowed,
    revoked, expired by the clock, for another agent, foreign, garbage, not a string),
    open and exhausted budgets (money, calls, tokens) and rate limits, shadow rules,
    budgets and rate limits, approvals requested, granted, rejected, left pending, used
    up or presented for another request, and failing services (an approval store that
    is down, a decision log that fails or is closed).

    Each example is a fresh engine (with a working decision log) and one whose approval
    store is down (with none), fed a history of steps: requests, approval rounds,
    spends, clock moves, a revocation. Each request
    is explained first and then authorized, on every engine: explain is a dry run (it
    takes no rate-limit call, uses no approval, records no approval request), so
    authorize then decides on the very state explain saw, and a dry run that changed
    anything (a rate token taken, an approval used) would make the two differ at the
    next boundary, which the small rate limits and one-use approvals bring about
    often. The two engines whose decision log refuses are shared by the examples (their
    log denies every decision; their state does not matter)."""
    clock = Clock(NOW)
    main = prop_engine(clock, decision_log=DecisionLog(NullSink()))
    run = Run({"main": main, "approvals-down": prop_engine(clock, approvals=DownApprovals()),
               **prop_logs})
    try:
        for step in history:
            run.step(step, clock)
    finally:
        main.close(timeout=1.0)


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
    assert_same(explained.decision, decided)
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
    assert_same(used.decision, again, eng.approvals)
    assert again.status == "pending_approval"
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
