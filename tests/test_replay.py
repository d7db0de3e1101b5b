"""``policyengine replay``: re-deciding logged requests under another policy."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import Clock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine import Engine, KeySet
from policyengine.audit import DecisionLog, JsonlFileSink
from policyengine.cli import main
from policyengine.replay import log_set, new_clock, replay

HEAD = 'currency EUR\nrole payer: payments:*, llm:*\nagent "bot": payer\nagent "other"\n'
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def write(path: Path, text: str) -> str:
    path.write_text(HEAD + text)
    return str(path)


def logged(policy: str, log: Path, requests: list[tuple[str, str, dict[str, Any]]],
           **options: Any) -> list[Any]:
    """Decide ``requests`` under ``policy`` with a decision log in ``log``."""
    e = Engine.from_path(policy, decision_log=DecisionLog(JsonlFileSink(str(log))),
                         **options)
    out = [e.authorize(p, perm, ctx) for p, perm, ctx in requests]
    e.close()
    return out


def replayed(log: Path, policy: str) -> Any:
    clock = new_clock()
    return replay(log_set(log), Engine.from_path(policy, clock=clock), clock)


def refund(amount: str, **extra: Any) -> tuple[str, str, dict[str, Any]]:
    return "bot", "payments:refund", {"amount": amount, "currency": "EUR", **extra}


def test_same_policy_changes_nothing_and_a_new_rule_changes_exactly_what_it_denies(
        tmp_path: Path) -> None:
    old = write(tmp_path / "old.policy", "")
    new = write(tmp_path / "new.policy",
                "forbid big: payments:refund when amount > 500 EUR\n")
    reqs = [refund("100"), refund("600"), refund("501"), ("other", "docs:read", {}),
            refund("500")]
    logged(old, tmp_path / "d.jsonl", reqs)
    same = replayed(tmp_path / "d.jsonl", old)
    assert (same.replayed, same.unchanged, same.changes, same.skipped) == (5, 5, [], [])
    report = replayed(tmp_path / "d.jsonl", new)
    assert [(c.line, c.old_status, c.old_code, c.new_status, c.new_code)
            for c in report.changes] == [(3, "allowed", "permitted", "denied", "forbidden"),
                                         (4, "allowed", "permitted", "denied", "forbidden")]
    assert report.unchanged == 3
    assert all(c.decision_id.startswith("dec_") for c in report.changes)


def test_records_that_cannot_be_replayed_faithfully_are_reported(tmp_path: Path) -> None:
    policy = write(tmp_path / "p.policy", "log redact $.context.card mask\n"
                   "approval big: payments:wire over 100 EUR\n"
                   "budget daily: llm:* limit 10 EUR per day\n"
                   "tool bank: mcp \"pay\" -> payments:pay\n"
                   "delegation { max_depth 2 }\n")
    keys = KeySet.generate()
    e = Engine.from_path(policy, keys=keys,
                         decision_log=DecisionLog(JsonlFileSink(str(tmp_path / "d.jsonl"))))
    e.authorize(*refund("5", card="4111"))  # masked
    e.authorize(*refund("5", api_key="secret"))  # a credential: masked too
    pending = e.authorize("bot", "payments:wire", {"amount": "500", "currency": "EUR"})
    e.approvals.approve(pending.approval_id, by="ann")
    e.authorize("bot", "payments:wire", {"amount": "500", "currency": "EUR"},
                approval_id=pending.approval_id)
    e.budgets.record("bot", "llm:call", "9", "EUR")
    e.authorize("bot", "llm:call", {"amount": "5", "currency": "EUR"})  # budget_exceeded
    token = e.mint_token(issuer="ann", acting_for="ann", agent="bot",
                         permissions=["payments:*"], ttl=60)
    e.authorize("bot", "payments:refund", {}, token=token)
    e.tool_authorize("bot", transport="mcp", tool_name="pay", body={})
    e.authorize(*refund("5"))  # the one that replays
    e.close()
    report = replayed(tmp_path / "d.jsonl", policy)
    reasons = [s.reason for s in report.skipped]
    assert reasons == ["masked", "masked", "approval", "budget", "token", "tool_call"]
    assert "$.context.card" in report.skipped[0].detail
    assert report.replayed == 2 and report.changes == []  # the pending one and the last


def test_replay_is_dry(tmp_path: Path) -> None:
    policy = write(tmp_path / "p.policy", "approval big: payments:refund over 100 EUR\n"
                   "budget daily: payments:* limit 1000 EUR per day\n")
    logged(policy, tmp_path / "d.jsonl", [refund("500"), refund("50")])
    clock = new_clock()
    e = Engine.from_path(policy, clock=clock)
    report = replay([str(tmp_path / "d.jsonl")], e, clock)
    assert (report.replayed, report.changes) == (2, [])
    assert e.approvals.list() == []  # the pending request registered no approval
    assert all(b.spent == 0 and b.reserved == 0 for b in e.budgets.balances("bot"))
    assert e.decision_log is None


def test_each_record_is_decided_at_its_own_time(tmp_path: Path) -> None:
    policy = write(tmp_path / "p.policy", "budget hourly: llm:* limit 10 EUR per hour\n")
    log = tmp_path / "d.jsonl"
    logged(policy, log, [("bot", "llm:call", {"amount": "5", "currency": "EUR"})],
           clock=Clock(T0))
    clock = new_clock()
    replay([str(log)], Engine.from_path(policy, clock=clock), clock)
    record = next(json.loads(x) for x in log.read_text().splitlines()
                  if json.loads(x)["kind"] == "authorize")
    assert record["timestamp"].startswith("2026")  # the log's own clock
    assert abs(clock.t - json_time(record["timestamp"])) < 1e-3


def json_time(ts: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(ts[:26] + "+00:00").timestamp()


def test_rotated_sets_are_read_oldest_first(tmp_path: Path) -> None:
    for name in ("d.000002.jsonl", "d.000001.jsonl", "d.jsonl", "d.x.jsonl"):
        (tmp_path / name).write_text("")
    assert [Path(p).name for p in log_set(tmp_path / "d.jsonl")] == [
        "d.000001.jsonl", "d.000002.jsonl", "d.jsonl"]
    for name in ("e.1.jsonl", "e.2.jsonl", "e.jsonl"):
        (tmp_path / name).write_text("")
    assert [Path(p).name for p in log_set(tmp_path / "e.jsonl")] == [
        "e.2.jsonl", "e.1.jsonl", "e.jsonl"]


def test_a_rotated_log_replays_whole(tmp_path: Path) -> None:
    old = write(tmp_path / "old.policy", "")
    new = write(tmp_path / "new.policy", "forbid all: payments:refund\n")
    e = Engine.from_path(old, decision_log=DecisionLog(
        JsonlFileSink(str(tmp_path / "d.jsonl"), max_bytes=1500)))
    for n in range(12):
        e.authorize(*refund(str(n + 1)))
    e.close()
    assert len(log_set(tmp_path / "d.jsonl")) > 2
    report = replayed(tmp_path / "d.jsonl", new)
    assert len(report.changes) == 12
    assert [c.seq for c in report.changes] == sorted(c.seq for c in report.changes)


def test_malformed_lines_are_counted_not_fatal(tmp_path: Path) -> None:
    policy = write(tmp_path / "p.policy", "")
    log = tmp_path / "d.jsonl"
    logged(policy, log, [refund("1")])
    lines = len(log.read_text().splitlines())
    log.write_text(log.read_text() + "not json\n[1, 2]\n{\"kind\": \"authorize\"}\n")
    report = replayed(log, policy)
    assert [n for _, n in report.malformed] == [lines + 1, lines + 2]
    assert [s.reason for s in report.skipped] == ["no_input"]
    assert report.replayed == 1


def test_cli_prints_changes_and_totals_and_exits_by_flag(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = write(tmp_path / "old.policy", "")
    new = write(tmp_path / "new.policy", "forbid big: payments:refund when amount > 5 EUR\n")
    log = tmp_path / "d.jsonl"
    logged(old, log, [refund("1"), refund("9")])
    capsys.readouterr()
    assert main(["replay", str(log), "--policy", new]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("bot payments:refund: allowed (permitted) -> denied (forbidden)")
    assert out[-1] == "2 decisions replayed: 1 changed, 1 unchanged; 0 not replayable"
    assert main(["replay", str(log), "--policy", new, "--exit-code"]) == 1
    assert main(["replay", str(log), "--policy", old, "--exit-code"]) == 0
    capsys.readouterr()
    assert main(["replay", str(log), "--policy", new, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["replayed"], data["changed"], data["unchanged"]) == (2, 1, 1)
    assert data["changes"][0]["new"] == {"status": "denied", "reason_code": "forbidden",
                                         "rules": ["default.big"]}
    assert main(["replay", str(tmp_path / "missing.jsonl"), "--policy", new]) == 2


# ---- the property: replay reports exactly the decisions that differ --------------------

POOL = [
    "forbid f{n}: payments:refund when amount > {a} EUR",
    "forbid g{n}: * when context.region == \"XX\"",
    "permit p{n}: reports:* when context.ok == true",
    "approval r{n}: payments:* when context.flag == true",
    "approval o{n}: payments:wire over {a} EUR",
    "limit l{n}: payments:* amount <= {a} EUR",
    "permit q{n}: docs:read for agent \"other\"",
]
AMOUNTS = st.sampled_from(["1", "50", "100", "250", "600"])


@st.composite
def policies(draw: st.DrawFn) -> str:
    picks = draw(st.lists(st.tuples(st.sampled_from(POOL), AMOUNTS), max_size=5))
    return "".join(t.format(n=i, a=a) + "\n" for i, (t, a) in enumerate(picks))


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    ctx: dict[str, Any] = {}
    if draw(st.booleans()):
        ctx["amount"], ctx["currency"] = draw(AMOUNTS), "EUR"
    for key, values in (("region", ["XX", "DE"]), ("ok", [True, False]),
                        ("flag", [True, False])):
        if draw(st.booleans()):
            ctx[key] = draw(st.sampled_from(values))
    return (draw(st.sampled_from(["bot", "other"])),
            draw(st.sampled_from(["payments:refund", "payments:wire", "reports:read",
                                  "docs:read"])), ctx)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(), policies(), st.lists(requests(), min_size=1, max_size=8))
def test_replay_reports_exactly_the_decisions_the_new_policy_changes(
        a: str, b: str, reqs: list[tuple[str, str, dict[str, Any]]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pa, pb = write(root / "a.policy", a), write(root / "b.policy", b)
        olds = logged(pa, root / "d.jsonl", reqs)
        direct = Engine.from_path(pb)
        news = [direct.authorize(p, perm, dict(ctx)) for p, perm, ctx in reqs]
        expected = [i for i, (o, n) in enumerate(zip(olds, news, strict=True))
                    if (o.status, o.code) != (n.status, n.code)]
        report = replayed(root / "d.jsonl", pb)
        assert report.skipped == [] and report.replayed == len(reqs)
        assert [c.decision_id for c in report.changes] == [
            olds[i].decision_id for i in expected]
        assert [(c.new_status, c.new_code) for c in report.changes] == [
            (news[i].status, news[i].code) for i in expected]
        assert replayed(root / "d.jsonl", pa).changes == []


def test_rate_limited_records_are_not_replayed_and_replay_counts_no_call(
        tmp_path: Path) -> None:
    policy = write(tmp_path / "p.policy", "ratelimit slow: payments:* 1 per minute\n")
    decided = logged(policy, tmp_path / "d.jsonl", [refund("1"), refund("2"), refund("3")],
                     clock=Clock(T0))
    assert [d.code for d in decided] == ["permitted", "rate_limited", "rate_limited"]
    report = replayed(tmp_path / "d.jsonl", policy)
    assert [s.reason for s in report.skipped] == ["rate_limit", "rate_limit"]
    assert (report.replayed, report.unchanged, report.changes) == (1, 1, [])
    again = replayed(tmp_path / "d.jsonl", policy)  # nothing was counted by the first
    assert (again.replayed, again.changes) == (1, [])
