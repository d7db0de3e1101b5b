"""The tool-authorize path: one way through the engine for every caller (plain, with the
wire's spellings, with a ``redaction_check``, with a decision log), the HMAC key checked
once when the engine is built, a redacted call's ``redactFields`` made once with its
tool's rules, and one shared cache of redaction records."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from policyengine import ToolDecision
from policyengine.audit import CallbackSink, DecisionLog
from policyengine.decision import FrozenDict
from policyengine.engine import Engine
from policyengine.tools import RedactionError, RedactionRule, _redaction, redact

KEY = b"test-hmac-key-0123456789"

POLICY = """namespace t
role r: crm:write, code:write, fn:call
agent "bot": r

tool crm: http "crm.example.com" {
  POST "/**" -> crm:write
  redact $.card mask
  redact $..email hash
}
tool gh: mcp "github.*" -> code:write { redact $.token remove }
tool fn: function "do_*" -> fn:call { redact $.password mask }
egress {
  allow "open.example.com"
  deny "evil.example.com"
}
"""

#: (call, outcome, code): every transport, redacted or not, egress allowed and denied.
CALLS: list[tuple[dict[str, Any], str, str]] = [
    ({"transport": "http", "method": "POST", "host": "crm.example.com", "path": "/v1/x",
      "body": {"card": "4111", "who": {"email": "a@b.c"}, "n": 1}},
     "policy_allow", "permitted"),
    ({"transport": "http", "method": "POST", "host": "crm.example.com", "path": "/v1/x",
      "body": {"n": 1}}, "policy_allow", "permitted"),
    ({"transport": "mcp", "tool_name": "github.push", "body": {"token": "t", "n": 1}},
     "policy_allow", "permitted"),
    ({"transport": "function", "function_name": "do_login",
      "body": {"password": "p", "n": 1}}, "policy_allow", "permitted"),
    ({"transport": "http", "method": "GET", "host": "open.example.com", "path": "/",
      "body": {"card": "4111"}}, "egress_allow", "egress_allowed"),
    ({"transport": "http", "method": "GET", "host": "evil.example.com", "path": "/"},
     "egress_deny", "egress_denied"),
    ({"transport": "mcp", "tool_name": "slack.post"}, "route_deny", "unbound_tool"),
]


def _wire(td: ToolDecision) -> dict[str, Any]:
    """The decision as answered, less what differs per call (its id)."""
    out = td.to_wire()
    out.pop("decisionId", None)
    return {**out, "body": td.body}


def _spelled(call: dict[str, Any]) -> dict[str, Any]:
    """``call`` with the wire's spellings (``toolName``, ``functionName``)."""
    out = dict(call)
    for name, wire in (("tool_name", "toolName"), ("function_name", "functionName")):
        if name in out:
            out[wire] = out.pop(name)
    return out


@pytest.mark.parametrize(("call", "outcome", "code"), CALLS,
                         ids=[f"{c['transport']}-{o}-{i}" for i, (c, o, _) in
                              enumerate(CALLS)])
def test_every_caller_takes_the_same_path(call: dict[str, Any], outcome: str,
                                          code: str) -> None:
    """Plain, with the wire's spellings, with a redaction check that accepts, and with a
    decision log: the same decision, body and redactions (one path through the engine)."""
    plain = Engine.from_source(POLICY, hmac_key=KEY)
    records: list[dict[str, Any]] = []
    logged = Engine.from_source(POLICY, hmac_key=KEY,
                                decision_log=DecisionLog(CallbackSink(records.append)))
    asked: list[tuple[Any, Any]] = []

    def accept(sent: Any, redacted: Any) -> list[Any]:
        asked.append((sent, redacted))
        return []

    first = plain.tool_authorize("bot", **call)
    assert (first.outcome, first.code) == (outcome, code)
    answers = [
        plain.tool_authorize("bot", **_spelled(call)),
        plain.tool_authorize("bot", **call, redaction_check=accept),
        logged.tool_authorize("bot", **call),
        logged.tool_authorize("bot", **_spelled(call), redaction_check=accept),
    ]
    for td in answers:
        assert _wire(td) == _wire(first)
    redacted = bool(first.redactions)
    # the check is asked (once per call that asks it) exactly when the body changed
    assert len(asked) == (2 if redacted else 0)
    for sent, new in asked:
        assert sent == call["body"] and new == first.body
    assert logged.close(timeout=10)
    assert len([r for r in records if r["kind"] == "tool_authorize"]) == 2


@pytest.mark.parametrize("transport", ["http", "mcp", "function"])
def test_a_refused_redaction_check_denies_on_every_transport(transport: str) -> None:
    call = next(c for c, o, _ in CALLS if c["transport"] == transport and "body" in c
                and o == "policy_allow")
    engine = Engine.from_source(POLICY, hmac_key=KEY)
    td = engine.tool_authorize("bot", **call, redaction_check=lambda sent, new: None)
    assert (td.status, td.code, td.outcome) == ("denied", "redaction_unsupported",
                                                "policy_deny")
    assert td.body is None and td.redactions == ()
    spelled = engine.tool_authorize("bot", **_spelled(call),
                                    redaction_check=lambda sent, new: None)
    assert _wire(spelled) == _wire(td)


def test_the_redaction_check_is_given_the_body_as_sent() -> None:
    """A body given as JSON text is decided (and redacted) parsed; the check is asked
    with the text as the caller sent it and the redacted copy."""
    engine = Engine.from_source(POLICY, hmac_key=KEY)
    asked: list[tuple[Any, Any]] = []
    text = '{"token": "t", "n": 1}'
    td = engine.tool_authorize("bot", transport="mcp", tool_name="github.push", body=text,
                               redaction_check=lambda sent, new: asked.append((sent, new)))
    assert (td.status, td.code) == ("denied", "redaction_unsupported")
    assert asked == [(text, {"n": 1})]


# ---- the HMAC key: checked once, when the engine is built --------------------------------

@pytest.mark.parametrize("key", [b"short", "a string of 16+ chars", bytearray(3)], ids=repr)
def test_a_bad_hmac_key_is_refused_when_built_not_on_a_call(key: object) -> None:
    """The error is the one a call's redaction would report (``invalid_hash_key``),
    raised by the engine's constructor; the key cannot be replaced afterwards."""
    with pytest.raises(RedactionError) as info:
        Engine.from_source(POLICY, hmac_key=key)
    assert info.value.code == "invalid_hash_key"
    engine = Engine.from_source(POLICY, hmac_key=KEY)
    with pytest.raises(AttributeError):
        engine.hmac_key = key  # type: ignore[misc]
    assert engine.hmac_key == KEY and engine.pipeline.hmac_key == KEY


def test_a_tool_call_does_not_check_the_key_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key a call hashes with is the engine's, checked when built: the per-call path
    does not validate it (the checks fail loudly here if it did)."""
    engine = Engine.from_source(POLICY, hmac_key=bytearray(KEY))

    def no_check(*args: Any) -> Any:
        raise AssertionError("the HMAC key was checked on a call")

    monkeypatch.setattr(_redaction, "check_hmac_key", no_check)
    monkeypatch.setattr(_redaction, "_checked_key", no_check)
    td = engine.tool_authorize("bot", transport="http", method="POST",
                               host="crm.example.com", path="/v1/x",
                               body={"who": {"email": "a@b.c"}})
    assert td.allowed, td.reason
    digest = hmac.new(KEY, b"a@b.c", hashlib.sha256).hexdigest()
    assert td.body == {"who": {"email": "hmac-sha256:" + digest}}


def test_without_a_key_a_hash_redaction_still_denies() -> None:
    engine = Engine.from_source(POLICY)
    td = engine.tool_authorize("bot", transport="http", method="POST",
                               host="crm.example.com", path="/v1/x",
                               body={"who": {"email": "a@b.c"}})
    assert (td.status, td.code) == ("denied", "redaction_failed")
    assert "hash_key_missing" in td.reason


# ---- redactFields: made with the tool's rules -----------------------------------------------

def test_redact_fields_are_made_once_with_the_tools_rules() -> None:
    """A redacted call's obligations hold the paths its tool's binding made when the
    policy was compiled: the same tuple on every call, nothing looked up by id."""
    engine = Engine.from_source(POLICY, hmac_key=KEY)
    crm = next(b for b in engine.policy.tools.http if b.qid == "t.crm")
    gh = next(n for n in engine.policy.tools.named if n.qid == "t.gh")
    assert crm.redact_fields == ("$.card", "$..email") and gh.redact_fields == ("$.token",)
    for _ in range(2):
        td = engine.tool_authorize("bot", transport="http", method="POST",
                                   host="crm.example.com", path="/v1/x",
                                   body={"card": "4111"})
        assert td.obligations.redact_fields is crm.redact_fields
        td = engine.tool_authorize("bot", transport="mcp", tool_name="github.push",
                                   body={"n": 1})
        assert td.obligations.redact_fields is gh.redact_fields
        assert td.to_wire()["obligations"]["redactFields"] == ["$.token"]


# ---- one cache of redaction records ---------------------------------------------------------

def test_one_cache_serves_rules_and_tool_decisions() -> None:
    """A rule's record, a redaction's result and a ToolDecision given the same pair as a
    plain dict all hold the very same read-only record."""
    rule = RedactionRule("$.one-cache-test", "mask")
    result = redact({"one-cache-test": 1}, [rule])
    td = ToolDecision(Engine.from_source(POLICY).authorize("bot", "fn:call"), "policy_allow",
                      None, ({"field": "$.one-cache-test", "strategy": "mask"},))
    (held,) = td.redactions
    assert type(held) is FrozenDict
    assert held is result.redactions[0] is _redaction.frozen_record(
        {"field": "$.one-cache-test", "strategy": "mask"})


def test_records_of_equal_but_other_typed_items_are_not_shared() -> None:
    """``1`` and ``True`` are equal keys of a dict: only string items are kept, so a
    decision holds the values it was given."""
    decision = Engine.from_source(POLICY).authorize("bot", "fn:call")
    first = ToolDecision(decision, "policy_allow", None, ({"field": 1, "strategy": "x"},))
    second = ToolDecision(decision, "policy_allow", None,
                          ({"field": True, "strategy": "x"},))
    assert type(first.redactions[0]["field"]) is int
    assert type(second.redactions[0]["field"]) is bool


def test_the_record_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    records: dict[Any, Any] = {}
    monkeypatch.setattr(_redaction, "_RECORDS", records)
    made = [_redaction.frozen_record({"field": f"$.f{i}", "strategy": "mask"})
            for i in range(_redaction.MAX_RECORDS + 10)]
    assert len(records) == _redaction.MAX_RECORDS
    late = _redaction.frozen_record({"field": f"$.f{_redaction.MAX_RECORDS + 5}",
                                     "strategy": "mask"})
    assert late == made[-5] and late is not made[-5]  # made again, not kept
    assert _redaction.frozen_record({"field": "$.f0", "strategy": "mask"}) is made[0]
