"""Decision-log records through the public API: what a record holds for each kind of
decision and operation, what it never holds, and the file sink."""

from __future__ import annotations

import json
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import policyengine as pe
from policyengine.audit import (
    SCHEMA,
    CallbackSink,
    DecisionLog,
    DecisionLogError,
    JsonlFileSink,
    verify_files,
)

POLICY = """
currency EUR
role payer: payments:*
agent "bot": payer
limit cap: payments:* amount <= 500 EUR
approval big: payments:* over 300 EUR
budget daily: payments:* limit 1000 EUR per day per agent
tool bank: mcp "pay" -> payments:pay {
  amount = $.amount, currency = $.currency
  redact $.iban mask
}
"""


def logged(**options: Any) -> tuple[pe.Engine, list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    log = DecisionLog(CallbackSink(records.append))
    return pe.Engine.from_source(POLICY, decision_log=log, **options), records


def kinds(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r["kind"] == kind]


def test_an_authorize_record_holds_the_decision_and_its_input() -> None:
    engine, records = logged()
    d = engine.authorize("bot", "payments:pay", {"amount": "20", "currency": "EUR"})
    assert engine.close()
    (r,) = kinds(records, "authorize")
    assert r["schema"] == SCHEMA == "policyengine.decision-log/1"
    assert r["decision_id"] == d.decision_id
    assert r["bundles"] == {"policy": {"revision": engine.revision}}
    assert r["principal"] == "bot" and r["permission"] == "payments:pay"
    assert r["input"] == {"principal": "bot", "permission": "payments:pay",
                          "context": {"amount": "20", "currency": "EUR"}}
    assert r["result"]["status"] == "allowed" and r["result"]["allowed"] is True
    assert r["result"]["reason_code"] == d.code and r["result"]["rules"] == list(d.rules)
    assert r["result"]["obligations"]["maxAmount"] == "500.00"
    assert r["budget"]["budget"] == "default.daily"
    assert r["metrics"]["timer_decision_ns"] > 0
    assert r["timestamp"].endswith("Z") and len(r["timestamp"]) == 30
    assert r["dropped"] == 0 and len(r["hash"]) == 64


def test_denied_and_pending_decisions_are_recorded_too() -> None:
    engine, records = logged()
    engine.authorize("bot", "payments:pay", {"amount": "400", "currency": "EUR"})
    engine.authorize("nobody", "docs:read")
    engine.authorize(42, "x")  # type: ignore[arg-type]  # malformed: still recorded
    engine.close()
    statuses = [(r["result"]["status"], r["result"]["reason_code"])
                for r in kinds(records, "authorize")]
    assert statuses == [("pending_approval", "approval_required"),
                        ("denied", "no_permit"), ("denied", "invalid_request")]
    assert kinds(records, "approval.request")[0]["approval"]["status"] == "pending"


def test_the_context_is_copied_when_decided() -> None:
    engine, records = logged()
    context = {"amount": "20", "currency": "EUR"}
    engine.authorize("bot", "payments:pay", context)
    context["amount"] = "999"  # the caller reuses its dict
    engine.close()
    assert kinds(records, "authorize")[0]["input"]["context"]["amount"] == "20"


def test_a_tool_record_holds_the_redacted_body_and_never_headers() -> None:
    engine, records = logged()
    t = engine.tool_authorize("bot", transport="mcp", toolName="pay",
                              body={"iban": "FR7630006000011234567890189", "amount": "10",
                                    "currency": "EUR"},
                              headers={"authorization": "Bearer secret"})
    engine.close()
    (r,) = kinds(records, "tool_authorize")
    assert r["decision_id"] == t.decision_id
    assert r["result"]["outcome"] == "policy_allow"
    assert r["result"]["redactions"] == [{"field": "$.iban", "strategy": "mask"}]
    assert r["input"]["body"]["iban"] == "***REDACTED***"
    assert r["input"]["tool_name"] == "pay"
    assert "Bearer secret" not in json.dumps(records)


def test_a_tool_body_is_recorded_as_decided_and_its_tokens_masked() -> None:
    """The record's body is the decision's (read-only) copy: a token in a list in it is
    still masked, and what the caller does to its own body afterwards is not recorded."""
    keys = pe.KeySet.generate(issuer="https://auth.example")
    engine, records = logged()
    token = pe.tokens.mint(keys, issuer="https://auth.example", acting_for="besar",
                           agent="bot", permissions=["payments:*"], ttl=600)
    body = {"iban": "FR7630006000011234567890189", "amount": "10", "currency": "EUR",
            "notes": [{"say": "hi"}, [token]]}
    t = engine.tool_authorize("bot", transport="mcp", toolName="pay", body=body)
    body["notes"][0]["say"] = "changed"
    body["notes"].append("later")
    engine.close()
    (r,) = kinds(records, "tool_authorize")
    assert t.allowed and r["input"]["body"]["notes"][0] == {"say": "hi"}
    assert len(r["input"]["body"]["notes"]) == 2
    assert token not in json.dumps(records)
    assert r["masked"] == ["$.body.notes[1][0]"]


def test_credentials_and_tokens_never_reach_the_log() -> None:
    keys = pe.KeySet.generate(issuer="https://auth.example")
    engine, records = logged(keys=keys)
    token = pe.tokens.mint(keys, issuer="https://auth.example", acting_for="besar",
                           agent="bot", permissions=["payments:*"], ttl=600)
    grant = pe.tokens.verify(keys, token)
    d = engine.authorize("bot", "payments:pay",
                         {"amount": "5", "currency": "EUR", "api_key": "k-123",
                          "nested": {"Password": "hunter2", "list": [token]}},
                         token=token)
    engine.revoke(grant.grant_id)
    engine.close()
    text = json.dumps(records)
    assert token not in text and "k-123" not in text and "hunter2" not in text
    (r,) = kinds(records, "authorize")
    assert r["acting_for"] == "besar" == d.acting_for and r["chain"] == ["besar", "bot"]
    assert r["token"] == {"present": True, "grant_id": grant.grant_id, "jti": grant.jti}
    assert sorted(r["masked"]) == ["$.context.api_key", "$.context.nested.Password",
                                   "$.context.nested.list[0]"]
    assert kinds(records, "token.revoke")[0]["grant"] == {"id": grant.grant_id}


def test_token_mint_attenuate_and_revoke_are_recorded_by_id() -> None:
    keys = pe.KeySet.generate(issuer="https://auth.example")
    engine, records = logged(keys=keys)
    root = engine.mint_token(issuer="https://auth.example", acting_for="besar", agent="bot",
                             permissions=["payments:*"], ttl=600)
    child = engine.attenuate_token(root, agent="helper", permissions=["payments:pay"])
    engine.revoke(pe.tokens.verify(keys, child).grant_id)
    engine.close()
    mint, att = kinds(records, "token.mint")[0], kinds(records, "token.attenuate")[0]
    root_grant, child_grant = pe.tokens.verify(keys, root), pe.tokens.verify(keys, child)
    assert mint["grant"] == {"grant_id": root_grant.grant_id, "jti": root_grant.jti}
    assert mint["acting_for"] == "besar" and mint["permissions"] == ["payments:*"]
    assert att["grant"]["grant_id"] == child_grant.grant_id
    assert att["parent"] == mint["grant"] and att["chain"] == ["besar", "bot", "helper"]
    assert kinds(records, "token.revoke")[0]["grant"] == {"id": child_grant.grant_id}
    text = json.dumps(records)
    assert root not in text and child not in text


def test_budget_and_approval_operations_are_recorded() -> None:
    engine, records = logged()
    r = engine.budgets.reserve("bot", "payments:pay", "80", "EUR")
    engine.budgets.commit(r.id, "75", "EUR")
    with pytest.raises(pe.PolicyEngineError):
        engine.budgets.release(r.id)  # already committed: refused, and recorded so
    d = engine.authorize("bot", "payments:pay", {"amount": "400", "currency": "EUR"})
    engine.approvals.approve(d.approval_id, by="alice")
    engine.authorize("bot", "payments:pay", {"amount": "400", "currency": "EUR"},
                     approval_id=d.approval_id)
    engine.close()
    ops = [(x["kind"], x.get("status")) for x in records
           if x["kind"].startswith(("budget.", "approval."))]
    assert ops == [("budget.reserve", "ok"), ("budget.commit", "ok"),
                   ("budget.release", "refused"), ("approval.request", None),
                   ("approval.approve", "ok"), ("approval.consume", "ok")]
    assert kinds(records, "budget.commit")[0]["reservation"]["status"] == "committed"
    assert kinds(records, "approval.approve")[0]["by"] == "alice"


def test_a_reload_is_recorded_with_both_revisions(tmp_path: Path) -> None:
    policy = tmp_path / "p.policy"
    policy.write_text('role r: docs:*\nagent "bot": r\n')
    records: list[dict[str, Any]] = []
    engine = pe.Engine.from_path(policy, decision_log=DecisionLog(CallbackSink(records.append)))
    first = engine.revision
    policy.write_text('role r: docs:read\nagent "bot": r\n')
    engine.reload()
    policy.write_text("permit broken")
    with pytest.raises(pe.PolicyError):
        engine.reload()
    engine.close()
    ok, failed = kinds(records, "policy.reload")
    assert ok["status"] == "ok" and ok["previous_revision"] == first
    assert ok["bundles"]["policy"]["revision"] == engine.revision != first
    assert failed["status"] == "failed" and failed["errors"]


def test_explain_is_not_a_decision_and_is_not_recorded() -> None:
    engine, records = logged()
    engine.explain("bot", "payments:pay", {"amount": "1", "currency": "EUR"})
    engine.close()
    assert not kinds(records, "authorize")


def test_a_closed_log_denies() -> None:
    engine, _ = logged()
    engine.close()
    d = engine.authorize("bot", "payments:pay", {"amount": "1", "currency": "EUR"})
    assert d.status == "denied" and d.code == "decision_log_unavailable"


def test_file_sink_rotates_and_the_files_verify_as_one_chain(tmp_path: Path) -> None:
    sink = JsonlFileSink(tmp_path / "decisions.jsonl", max_bytes=4096)
    keys = pe.KeySet.generate()
    engine = pe.Engine.from_source(POLICY, keys=keys,
                                   decision_log=DecisionLog(sink, checkpoint_every=50,
                                                            batch_size=16))
    ids = [engine.authorize("bot", "payments:pay", {"amount": "1", "currency": "EUR",
                                                    "n": i}).decision_id
           for i in range(300)]
    assert engine.close()
    files = sink.rotated()
    assert len(files) > 3
    lines = [json.loads(x) for f in files for x in f.read_text().splitlines()]
    assert [r["decision_id"] for r in lines if r["kind"] == "authorize"] == ids
    assert [r["seq"] for r in lines] == list(range(1, len(lines) + 1))
    report = verify_files(files, keys, require_signatures=True)
    assert report.ok and report.signed_checkpoints == 7, report.to_dict()  # 6 + at close
    assert [r["seq"] for r in lines if r["kind"] == "log.checkpoint"][:2] == [51, 102]
    assert report.unsealed_tail == 0


def test_a_log_file_continues_its_chain_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    for _ in range(2):
        engine = pe.Engine.from_source(POLICY, decision_log=str(path))
        engine.authorize("bot", "payments:pay")
        engine.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["kind"] for r in lines] == ["log.start", "authorize", "log.checkpoint",
                                          "log.resume", "authorize", "log.checkpoint"]
    assert verify_files([path]).ok


def test_a_torn_last_line_starts_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    engine = pe.Engine.from_source(POLICY, decision_log=str(path))
    engine.authorize("bot", "payments:pay")
    engine.close()
    with open(path, "ab") as f:
        f.write(b'{"schema":"policyengine.deci')  # a crash mid-write
    engine = pe.Engine.from_source(POLICY, decision_log=str(path))
    engine.authorize("bot", "payments:pay")
    engine.close()
    assert json.loads(path.read_text().splitlines()[0])["kind"] == "log.start"
    assert verify_files([path]).ok


@pytest.mark.parametrize("options", [{"overflow": "never"}, {"capacity": 0},
                                     {"batch_size": -1}])
def test_bad_options_are_refused_with_a_code(options: dict[str, Any]) -> None:
    with pytest.raises(DecisionLogError) as err:
        DecisionLog(CallbackSink(lambda r: None), **options)
    assert err.value.code == "invalid_log_config"


def test_unknown_sink_urls_are_refused() -> None:
    with pytest.raises(DecisionLogError) as err:
        DecisionLog("ftp://example/log")
    assert err.value.code == "invalid_log_config"


def test_a_logged_ledger_prices_usages_as_an_unlogged_one_does() -> None:
    """The policy's price table reaches the ledger whether or not a log records it."""
    source = """
price "openai" "gpt-4o": input 2.50 USD, output 10 USD per 1M tokens
budget tok: llm:* limit 100000 tokens per day
budget usd: llm:* limit 1 USD per day
"""
    usage = pe.budgets.LLMUsage("openai", "gpt-4o", 2_000, 0, 1_000)  # $0.005 + $0.01
    records: list[dict[str, Any]] = []
    with_log = pe.Engine.from_source(source, decision_log=DecisionLog(
        CallbackSink(records.append)))
    without = pe.Engine.from_source(source)
    for engine in (with_log, without):
        r = engine.budgets.reserve("bot", "llm:chat", usage=usage)
        assert sorted((line.budget, line.amount) for line in r.lines) == [
            ("default.tok", 3_000), ("default.usd", Decimal("0.02"))]
    assert with_log.close()
    assert [x["status"] for x in records if x["kind"] == "budget.reserve"] == ["ok"]


def test_the_log_records_the_obligations_decided_not_a_later_change() -> None:
    """The record is written on the log's thread after ``authorize`` returns: a caller
    that could change the decision's obligations meanwhile would have the hash-chained
    log record a cap the engine never decided. The sink is held until after the try."""
    entered, gate = threading.Event(), threading.Event()
    records: list[dict[str, Any]] = []

    def slow(record: dict[str, Any]) -> None:
        entered.set()
        gate.wait(10)
        records.append(record)

    engine = pe.Engine.from_source(POLICY, decision_log=DecisionLog(CallbackSink(slow)))
    assert entered.wait(10)  # the log's thread is held inside the sink
    d = engine.authorize("bot", "payments:pay", {"amount": "20", "currency": "EUR"})
    ob = d.obligations
    assert ob is not None
    for name, value in (("max_amount", Decimal("999999")),
                        ("require_approval_over", Decimal("999999")),
                        ("redact_fields", ()), ("currency", "USD")):
        with pytest.raises(AttributeError):
            setattr(ob, name, value)
    with pytest.raises(AttributeError):
        ob.extra = 1  # type: ignore[attr-defined]
    gate.set()
    assert engine.close()
    (r,) = kinds(records, "authorize")
    # the policy's own figures (limit cap 500 EUR, approval over 300 EUR)
    assert r["result"]["obligations"] == {"maxAmount": "500.00",
                                          "requireApprovalOver": "300.00",
                                          "redactFields": [], "currency": "EUR"}
    assert (ob.max_amount, ob.require_approval_over, ob.currency) == (
        Decimal("500.00"), Decimal("300.00"), "EUR")


@given(st.sampled_from(["max_amount", "require_approval_over", "redact_fields",
                        "currency"]),
       st.one_of(st.none(), st.decimals(allow_nan=False), st.text(max_size=5)))
def test_obligations_refuse_every_change(name: str, value: object) -> None:
    ob = pe.Obligations(Decimal("5.00"), Decimal("1.00"), ("$.a",), "EUR")
    before = ob.to_wire()
    with pytest.raises(AttributeError):
        setattr(ob, name, value)
    assert ob.to_wire() == before == {"maxAmount": "5.00", "requireApprovalOver": "1.00",
                                      "redactFields": ["$.a"], "currency": "EUR"}


# ------------------------------------------------------------------ the writer's shortcuts
# The writer reads a decision's fields from their slots, writes money with str() where it
# is the same text, and turns the hot path's one monotonic reading into wall-clock time
# once per batch: each must write what the slower, plainer way wrote.

_money = st.decimals(allow_nan=False, allow_infinity=False) | st.builds(
    lambda sign, digits, exp: Decimal((sign, tuple(int(c) for c in digits), exp)),
    st.integers(0, 1), st.text("0123456789", min_size=1, max_size=30), st.integers(-40, 40))


@given(_money)
def test_money_is_written_as_obligations_write_it(value: Decimal) -> None:
    from policyengine.audit._record import money_text
    assert money_text(value) == format(value, "f")


@given(st.none() | _money, st.none() | _money,
       st.lists(st.sampled_from(["$.a", "$.card", "$.x.y"]), max_size=2, unique=True),
       st.none() | st.just("EUR"))
def test_the_logged_obligations_are_their_wire_form(
        cap: Decimal | None, over: Decimal | None, fields: list[str],
        currency: str | None) -> None:
    from policyengine.audit._chain import encode
    from policyengine.audit._record import _obligations_wire
    ob = pe.Obligations(cap, over, tuple(fields), currency)
    expected = None if ob.is_empty() else ob.to_wire()
    assert encode({"o": _obligations_wire(ob)}) == encode({"o": expected})


def test_a_record_holds_every_field_of_its_decision() -> None:
    """Denied, pending and allowed decisions, with a budget, diagnostics, an approval:
    the record's members are the decision's public fields."""
    engine, records = logged()
    made = [engine.authorize("bot", "payments:pay", {"amount": a, "currency": "EUR"})
            for a in ("20", "400", "900", "nope")]
    made.append(engine.authorize("nobody", "payments:pay"))
    assert engine.close()
    by_id = {r["decision_id"]: r for r in kinds(records, "authorize")}
    for d in made:
        r = by_id[d.decision_id]
        res = r["result"]
        assert (res["status"], res["reason_code"], res["reason"]) == (d.status, d.code,
                                                                     d.reason)
        assert res["rules"] == list(d.rules) and res["approval_id"] == d.approval_id
        assert res["diagnostics"] == [x.code for x in d.diagnostics]
        assert res["obligations"] == (None if d.obligations is None
                                      or d.obligations.is_empty()
                                      else d.obligations.to_wire())
        assert (r["principal"], r["permission"], r["acting_for"], r["chain"]) == (
            d.principal, d.permission, d.acting_for, d.chain)
        assert r.get("budget") == (None if d.budget is None else
                                   json.loads(json.dumps(d.budget.to_wire(), default=str)))
    assert {d.status for d in made} == {"allowed", "pending_approval", "denied"}


def test_a_record_is_stamped_when_decided_not_when_written() -> None:
    """The hot path reads the monotonic clock only; the writer turns that into wall-clock
    time: a record the writer reaches late still carries the time of its decision."""
    from datetime import datetime
    engine, records = logged()
    log = engine.decision_log
    assert log is not None and log.flush(20)

    def stamp(text: str) -> float:
        return datetime.fromisoformat(text[:26] + "+00:00").timestamp()

    import time
    with log._lock:  # the writer waits for this lock before it builds a batch
        before = time.time()
        d = engine.authorize("bot", "payments:pay", {"amount": "20", "currency": "EUR"})
        after = time.time()
        time.sleep(0.5)
    assert engine.close()
    (r,) = kinds(records, "authorize")
    assert r["decision_id"] == d.decision_id
    assert before - 0.01 <= stamp(r["timestamp"]) <= after + 0.01
    assert 0 < r["metrics"]["timer_decision_ns"] < (after - before) * 1e9 + 1e7


def test_a_writer_paused_between_its_two_clock_reads_stamps_no_record_early() -> None:
    """The writer turns the hot path's monotonic readings into wall-clock time with one
    reading of each clock per batch. A writer paused between the two (another thread
    holding the interpreter's lock, the OS) must not shift its whole batch back by the
    pause: each record still carries the time it was decided, and one thread's
    records stay in order across batches."""
    import time
    from datetime import datetime

    def stamp(text: str) -> float:
        return datetime.fromisoformat(text[:26] + "+00:00").timestamp()

    pause = {"left": 0}

    def clock_ns() -> int:
        now = time.time_ns()
        if pause["left"]:
            pause["left"] -= 1
            time.sleep(0.3)  # paused right after reading the wall clock
        return now

    records: list[dict[str, Any]] = []
    log = DecisionLog(CallbackSink(records.append), clock_ns=clock_ns)
    engine = pe.Engine.from_source(POLICY, decision_log=log)
    ctx = {"amount": "20", "currency": "EUR"}
    engine.authorize("bot", "payments:pay", ctx)
    assert log.flush(20)  # the first batch, stamped without a pause
    pause["left"] = 1
    before = time.time()
    engine.authorize("bot", "payments:pay", ctx)
    after = time.time()
    assert log.flush(20)
    assert engine.close()
    first, second = kinds(records, "authorize")
    assert before - 0.01 <= stamp(second["timestamp"]) <= after + 0.01
    assert stamp(first["timestamp"]) <= stamp(second["timestamp"])
