"""``policyengine analyze`` and ``diff`` (docs/analysis.md): one test per finding kind,
every counterexample replayed through ``authorize``, and properties over random policies:
a rule reported as never applying applies to no sampled request, and every diff example
really changes decision."""

from __future__ import annotations

import itertools
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine import Engine
from policyengine.analysis import (
    CHANGE_KINDS,
    Finding,
    analyze,
    diff,
    permission_representatives,
)
from policyengine.cli import main
from policyengine.permissions import permission_matches


def codes(engine: Engine) -> list[tuple[str, str]]:
    return [(f.code, f.rule) for f in analyze(engine).findings]


def only(engine: Engine, code: str) -> Finding:
    found = [f for f in analyze(engine).findings if f.code == code]
    assert len(found) == 1, analyze(engine).findings
    return found[0]


def replay(engine: Engine, f: Finding) -> Any:
    assert f.counterexample is not None
    c = f.counterexample
    return engine.authorize(c["principal"], c["permission"], c["context"])


BASE = 'role r: pay:*, docs:*, shop:*\nagent "bot": r\n'


# ---- W301: conditions that never hold ------------------------------------------------

def test_unsatisfiable_interval_is_reported_with_its_text() -> None:
    engine = Engine.from_source(BASE + "permit p: pay:x when context.a > 5 and context.a < 3\n",
                                name="p.policy")
    f = only(engine, "W301")
    assert (f.rule, f.file, f.line, f.column) == ("default.p", "p.policy", 3, 1)
    assert "context.a > 5 and context.a < 3" in f.message
    assert "never applies" in f.message
    assert f.counterexample is None and f.exact


def test_a_narrow_interval_is_satisfiable() -> None:
    engine = Engine.from_source(BASE + "permit p: pay:x when context.n < 1 and "
                                "context.n > 0.99\n")
    assert codes(engine) == []


@pytest.mark.parametrize("cond", [
    'context.c == "a" and context.c == "b"',
    'context.c in ["a", "b"] and context.c not in ["a", "b"]',
    "context.n >= 3 and not (context.n > 2)",
    "has(context.q) and not has(context.q)",
    "context.flag and context.flag == false",
    'principal.id == "nobody"',
])
def test_unsatisfiable_shapes_are_found(cond: str) -> None:
    engine = Engine.from_source(BASE + f"permit p: pay:x for role r when {cond}\n")
    assert codes(engine) == [("W301", "default.p")]


def test_satisfiable_conditions_are_not_reported_and_unless_counts() -> None:
    engine = Engine.from_source(BASE + "permit p: pay:x when context.a > 3 unless "
                                "context.a >= 4\n")
    assert codes(engine) == []  # 3 < a < 4: 3.5
    engine = Engine.from_source(BASE + "permit p: pay:x when context.a > 3 unless "
                                "context.a > 2\n")
    assert codes(engine) == [("W301", "default.p")]


def test_unsatisfiable_forbid_still_applies_by_fail_closed() -> None:
    engine = Engine.from_source(BASE + "forbid f: pay:x when context.a > 5 and "
                                "context.a < 3\n")
    f = only(engine, "W301")
    assert "only when a condition cannot be evaluated" in f.message
    # what the message says: without the attribute the forbid applies
    assert engine.authorize("bot", "pay:x", {}).code == "missing_attribute"
    assert engine.authorize("bot", "pay:x", {"a": 4}).allowed


def test_outside_the_fragment_is_said_not_claimed() -> None:
    engine = Engine.from_source(BASE + 'permit p: pay:x when startswith(context.s, "a") '
                                'and endswith(context.s, "b") and context.s == "c"\n')
    f = only(engine, "W300")
    assert f.severity == "info" and not f.exact and "startswith()" in f.message
    # a path compared with a principal attribute is exact once the principal is fixed
    engine = Engine.from_source(BASE + 'agent "bot" { team = "x" }\n'
                                "permit p: pay:x when context.team == principal.attributes"
                                '.team and context.team != "x"\n')
    assert codes(engine) == [("W301", "default.p")]


# ---- W302 / W305: always overridden ----------------------------------------------------

def test_permit_shadowed_by_a_conditional_forbid_with_counterexample() -> None:
    engine = Engine.from_source(
        BASE + "permit p: docs:read when context.level >= 3\n"
        "forbid f: docs:* when context.level > 2\n")
    f = only(engine, "W302")
    assert f.rule == "default.p" and f.related == ("default.f",)
    d = replay(engine, f)
    assert d.status == "denied" and d.code == "forbidden" and "default.f" in d.rules
    assert f.counterexample is not None and f.counterexample["context"]["level"] >= 3


def test_a_forbid_that_leaves_room_is_not_reported() -> None:
    engine = Engine.from_source(
        BASE + "permit p: docs:read when context.level >= 3\n"
        "forbid f: docs:* when context.level > 3\n")  # level 3 is allowed
    assert codes(engine) == []
    assert engine.authorize("bot", "docs:read", {"level": 3}).allowed


def test_forbid_on_a_narrower_pattern_does_not_shadow() -> None:
    engine = Engine.from_source(BASE + "permit p: docs:*\nforbid f: docs:secret\n")
    assert codes(engine) == []


def test_permit_overridden_by_a_limit_its_own_condition_exceeds() -> None:
    engine = Engine.from_source(
        "currency EUR\n" + BASE + "permit big: pay:x when amount > 500 EUR\n"
        "limit cap: pay:* amount <= 300 EUR\n")
    f = only(engine, "W302")
    assert "a limit (default.cap)" in f.message
    d = replay(engine, f)
    assert d.code == "limit_exceeded"


def test_permit_that_always_needs_approval() -> None:
    engine = Engine.from_source(
        "currency EUR\n" + BASE + "permit buy: shop:buy when amount > 100 EUR\n"
        "approval ask: shop:* over 50 EUR\n")
    f = only(engine, "W305")
    assert f.related == ("default.ask",)
    assert replay(engine, f).status == "pending_approval"


def test_role_grants_next_to_an_approval_are_effective() -> None:
    engine = Engine.from_source(BASE + "approval ask: shop:buy\npermit sell: shop:sell\n")
    assert codes(engine) == []


# ---- W303, W304, W306 ------------------------------------------------------------------------

def test_scope_no_principal_holds() -> None:
    engine = Engine.from_source(BASE + "role ghost: pay:*\npermit g: pay:y for role ghost\n")
    f = only(engine, "W303")
    assert f.rule == "default.g" and "role ghost" in f.message
    assert not engine.authorize("bot", "pay:y").rules.count("default.g")


def test_duplicates_compare_meaning_not_layout() -> None:
    engine = Engine.from_source(
        BASE + "permit a: docs:read, docs:list when context.x == 1\n"
        "permit b: docs:list, docs:read\n  when context.x == 1\n"
        "permit c: docs:list when context.x == 1\n")
    f = only(engine, "W304")
    assert f.rule == "default.b" and f.related == ("default.a",)


def test_limit_above_a_budget() -> None:
    engine = Engine.from_source(
        "currency EUR\n" + BASE + "limit cap: pay:* amount <= 1000 EUR\n"
        "budget daily: pay:* limit 500 EUR per day\n")
    f = only(engine, "W306")
    assert f.related == ("default.daily",)
    d = replay(engine, f)
    assert d.code == "budget_exceeded"
    assert Decimal(f.counterexample["context"]["amount"]) <= 1000  # type: ignore[index]
    within = Engine.from_source("currency EUR\n" + BASE + "limit cap: pay:* amount <= 400 EUR"
                                "\nbudget daily: pay:* limit 500 EUR per day\n")
    assert codes(within) == []


def test_counterexamples_carry_the_context_a_schema_requires() -> None:
    # Without the required fields every request is refused (invalid_request) before a rule
    # decides: the witnesses of the rules alone would never verify.
    schema = ('schema docs:*, shop:* { count: int, kind: enum("x", "y"), '
              'owner: { id: string, tier?: enum("a") }, currency: string, '
              "tags?: list[string] }\n")
    engine = Engine.from_source(
        "currency EUR\n" + BASE + "permit p: docs:read\nforbid f: docs:read\n"
        "permit buy: shop:buy when amount > 100 EUR\napproval ask: shop:* over 50 EUR\n"
        + schema)
    w302, w305 = only(engine, "W302"), only(engine, "W305")
    d = replay(engine, w302)
    assert (d.status, d.code, d.rules) == ("denied", "forbidden", ("default.f",))
    d = replay(engine, w305)
    assert (d.status, d.code) == ("pending_approval", "approval_required")
    ctx = w302.counterexample["context"]  # type: ignore[index]
    assert type(ctx["count"]) is int and ctx["kind"] in ("x", "y")
    assert isinstance(ctx["owner"]["id"], str) and "tier" not in ctx["owner"]
    assert "tags" not in ctx and ctx["currency"] == "EUR"
    assert engine.authorize("bot", "docs:read", {}).code == "invalid_request"


def test_limit_above_a_budget_past_rules_that_deny_some_contexts() -> None:
    # x never holds but fails closed (denies) without context.a; y denies one kind: the
    # counterexample must carry a context the other rules let through to the budget.
    engine = Engine.from_source(
        "currency EUR\n" + BASE + "limit cap: pay:send amount <= 1000 EUR\n"
        "budget daily: pay:* limit 500 EUR per day\n"
        "forbid x: pay:* when context.a > 5 and context.a < 3\n"
        'forbid y: pay:send when context.kind != "ok"\n')
    f = only(engine, "W306")
    d = replay(engine, f)
    assert (d.status, d.code) == ("denied", "budget_exceeded")
    ctx = f.counterexample["context"]  # type: ignore[index]
    assert Decimal(ctx["amount"]) == Decimal("500.01") and ctx["kind"] == "ok"


schema_types = st.recursive(
    st.sampled_from(["string", "int", "decimal", "money", "bool", 'enum("u", "v")',
                     "list[int]"]),
    lambda inner: st.lists(st.tuples(st.sampled_from("pqr"), st.booleans(), inner),
                           min_size=1, max_size=3, unique_by=lambda f: f[0]).map(
        lambda fs: "{ " + ", ".join(f"{n}{'?' if o else ''}: {t}" for n, o, t in fs)
        + " }"), max_leaves=4)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from("abcdefg"), st.booleans(), schema_types),
                max_size=5, unique_by=lambda f: f[0]), st.booleans())
def test_counterexamples_fit_any_schema(fields: list[tuple[str, bool, str]],
                                        n_optional: bool) -> None:
    decl = ", ".join([f"{n}{'?' if o else ''}: {t}" for n, o, t in fields]
                     + [f"n{'?' if n_optional else ''}: int"])
    engine = Engine.from_source(
        "currency EUR\n" + BASE + "permit p: docs:read\nforbid f: docs:read when "
        "context.n >= 0 or context.n < 0\npermit q: docs:write\napproval ok: docs:write\n"
        "limit cap: pay:send amount <= 1000 EUR\nbudget daily: pay:* limit 500 EUR per day\n"
        f"schema docs:*, pay:* {{ {decl} }}\n")
    found = {f.code: f for f in analyze(engine).findings}
    assert set(found) == {"W302", "W305", "W306"}
    for code, want in (("W302", ("denied", None)),
                       ("W305", ("pending_approval", "approval_required")),
                       ("W306", ("denied", "budget_exceeded"))):
        d = replay(engine, found[code])
        why = (code, found[code].counterexample, d.reason)
        assert d.status == want[0] and d.code not in ("invalid_request", "no_permit"), why
        assert want[1] is None or d.code == want[1], why
        # W302: denied by its forbid, cleanly or failing closed (n may be left out)
        assert code != "W302" or d.rules == ("default.f",), why


# ---- the vocabulary -------------------------------------------------------------------

def test_permission_representatives_cover_each_class_once() -> None:
    reps = permission_representatives(["a:*"], ["a:*", "a:b", "a:b:*", "c:d", "*"])
    assert sorted(reps) == ["a:b", "a:b:x0", "a:x0"]
    assert permission_representatives(["*"], ["x0:y"]) == ["x0:y", "x1"]


# ---- diff -----------------------------------------------------------------------------

OLD = ("currency EUR\nrole r: pay:*, docs:*\nagent \"bot\": r\nagent \"eve\": r\n"
       "forbid f: docs:write unless context.level > 2\n"
       "limit cap: pay:* amount <= 100 EUR\n")


def observed(engine: Engine, request: dict[str, Any]) -> tuple[Any, ...]:
    """What a caller sees of a decision: status, reason code, wire obligations, rules."""
    d = engine.authorize(request["principal"], request["permission"], request["context"])
    return (d.status, d.code, d.obligations.to_wire() if d.obligations else None,
            tuple(d.rules))


def assert_replays(old: Engine, new: Engine, c: Any) -> None:
    """The change's example is decided as reported, and differs in exactly its kinds."""
    a, b = observed(old, c.request), observed(new, c.request)
    assert a == (c.old[0], c.old[1], c.old_obligations, c.old_rules)
    assert b == (c.new[0], c.new[1], c.new_obligations, c.new_rules)
    assert c.kinds == tuple(k for k, x, y in zip(CHANGE_KINDS, a, b, strict=True) if x != y)
    assert c.kinds


def test_diff_lists_each_changed_request_with_both_decisions() -> None:
    new = OLD.replace("context.level > 2", "context.level > 4").replace("100 EUR", "150 EUR")
    old_e, new_e = Engine.from_source(OLD), Engine.from_source(new)
    result = diff(old_e, new_e)
    assert result.exhaustive
    seen = {(c.request["principal"], c.request["permission"]) for c in result.changes}
    assert ("bot", "docs:write") in seen and ("bot", "pay:x0") in seen
    for c in result.changes:
        assert_replays(old_e, new_e, c)
    write = next(c for c in result.changes if c.request["permission"] == "docs:write"
                 and "status" in c.kinds)
    assert 2 < write.request["context"]["level"] <= 4


def test_diff_reports_a_change_of_obligations_alone() -> None:
    new = OLD.replace("100 EUR", "150 EUR")
    old_e, new_e = Engine.from_source(OLD), Engine.from_source(new)
    result = diff(old_e, new_e)
    assert result.exhaustive
    [cap] = [c for c in result.changes if c.kinds == ("obligations",)]
    assert_replays(old_e, new_e, cap)
    assert cap.old[0] == cap.new[0] == "allowed"
    assert (cap.old_obligations or {})["maxAmount"] == "100.00"
    assert (cap.new_obligations or {})["maxAmount"] == "150.00"
    # a status change of the same pair is listed apart, with its own kinds
    over = [c for c in result.changes if c.request == {**cap.request, **c.request}
            and "status" in c.kinds]
    assert all(Decimal(c.request["context"]["amount"]) > 100 for c in over)
    # status only: the change of obligations is not one
    assert all("obligations" not in c.kinds and c.old[0] != c.new[0]
               for c in diff(old_e, new_e, status_only=True).changes)
    assert not [c for c in diff(old_e, new_e, status_only=True).changes
                if c.old[0] == "allowed" and c.new[0] == "allowed"]


def test_diff_tells_a_cap_in_force_from_a_limit_whose_condition_fails() -> None:
    # Both leave the limit unapplied; only the first puts its cap on the decision.
    base = ("currency EUR\nrole r: pay:*\nagent \"bot\": r\n"
            "limit cap: pay:* amount <= 100 EUR when context.vip == false\n")
    old_e = Engine.from_source(base)
    new_e = Engine.from_source(base.replace("100 EUR", "150 EUR"))
    result = diff(old_e, new_e)
    assert result.exhaustive
    [cap] = [c for c in result.changes if c.kinds == ("obligations",)]
    assert_replays(old_e, new_e, cap)
    assert cap.request["context"]["vip"] is False


def test_diff_reports_an_approval_threshold_and_a_renamed_rule() -> None:
    base = ("currency EUR\nrole r: pay:*\nagent \"bot\": r\n"
            "approval big: pay:send over 50 EUR\nforbid nope: pay:void\n")
    new = base.replace("over 50 EUR", "over 80 EUR").replace("nope", "never")
    old_e, new_e = Engine.from_source(base), Engine.from_source(new)
    result = diff(old_e, new_e)
    assert result.exhaustive
    for c in result.changes:
        assert_replays(old_e, new_e, c)
    by = {(c.request["principal"], c.request["permission"], c.kinds): c
          for c in result.changes}
    below = by["bot", "pay:send", ("obligations",)]
    assert Decimal(below.request["context"]["amount"]) <= 50
    assert (below.old_obligations or {})["requireApprovalOver"] == "50.00"
    assert (below.new_obligations or {})["requireApprovalOver"] == "80.00"
    between = by["bot", "pay:send", ("status", "reason", "obligations", "rules")]
    assert 50 < Decimal(between.request["context"]["amount"]) <= 80
    assert (between.old[0], between.new[0]) == ("pending_approval", "allowed")
    renamed = by["bot", "pay:void", ("rules",)]
    assert (renamed.old_rules, renamed.new_rules) == (("default.nope",), ("default.never",))


def test_diff_reports_a_reason_code_that_changes_under_the_same_status() -> None:
    new = OLD.replace("100 EUR", "150 EUR")
    result = diff(Engine.from_source(OLD), Engine.from_source(new))
    [other] = [c for c in result.changes if c.request["principal"] == "someone-else"]
    assert other.kinds == ("reason", "rules")
    assert (other.old, other.new) == (("denied", "limit_exceeded"), ("denied", "no_permit"))
    assert 100 < Decimal(other.request["context"]["amount"]) <= 150


def test_diff_reports_a_tool_whose_redactions_change() -> None:
    base = ('role r: code:*\nagent "bot": r\n'
            'forbid f: code:write when context.repo == "secret"\n'
            'tool github: mcp "github.*" -> code:write { repo = $.repository '
            ' redact $.token remove }\n')
    new = base.replace("redact $.token remove", "redact $.token remove  redact $.key mask")
    old_e, new_e = Engine.from_source(base), Engine.from_source(new)
    result = diff(old_e, new_e)
    assert result.exhaustive
    [c] = result.changes
    assert c.kinds == ("obligations",) and c.request["tool"] == "default.github"
    assert c.request["context"]["repo"] != "secret"  # the forbid denies (no redaction)
    body = {"repository": c.request["context"]["repo"], "token": "t", "key": "k"}
    for engine, ob in ((old_e, c.old_obligations), (new_e, c.new_obligations)):
        d = engine.tool_authorize("bot", transport="mcp", tool_name="github.push",
                                  body=body)
        assert d.status == "allowed" and ob is not None
        assert d.decision.to_wire()["obligations"]["redactFields"] == ob["redactFields"]
    assert diff(old_e, new_e, status_only=True).changes == ()
    # a change of the permission's decisions too: the calls' redactions are still listed
    capped = ("currency EUR\n" + base.replace("forbid f", "limit cap: code:write amount "
                                                "<= 5 EUR\nforbid f"))
    old_c = Engine.from_source(capped)
    new_c = Engine.from_source(capped.replace("5 EUR", "9 EUR").replace(
        "redact $.token remove", "redact $.token mask"))
    tool = [c for c in diff(old_c, new_c).changes if "tool" in c.request]
    assert tool and all("obligations" in c.kinds for c in tool)
    [both] = [c for c in tool if c.old[0] == c.new[0] == "allowed"]
    assert both.kinds == ("obligations",)
    assert (both.old_obligations or {})["maxAmount"] == "5.00"
    assert (both.new_obligations or {})["maxAmount"] == "9.00"
    assert (both.new_obligations or {})["redactions"] == ["$.token mask"]


def test_diff_lists_a_gain_of_access_apart_from_a_loss_that_changes_the_same_parts() -> None:
    # The cap raised lets 300.01 - 500 EUR through where the forbid does not reach; the
    # widened forbid denies IR: both change status, reason, obligations and rules.
    head = 'currency EUR\nrole r: pay:*\nagent "bot": r\n'
    old = Engine.from_source(head + "limit cap: pay:send amount <= 300 EUR\n"
                             'forbid s: pay:send when context.country == "KP"\n')
    new = Engine.from_source(head + "limit cap: pay:send amount <= 500 EUR\n"
                             'forbid s: pay:send when context.country in ["KP", "IR"]\n')
    req = {"principal": "bot", "permission": "pay:send",
           "context": {"amount": "400", "currency": "EUR", "country": "FR"}}
    assert observed(old, req)[:2] == ("denied", "limit_exceeded")
    assert observed(new, req)[:2] == ("allowed", "permitted")
    for status_only in (False, True):
        result = diff(old, new, status_only=status_only)
        assert result.exhaustive
        bot = [c for c in result.changes if c.request["principal"] == "bot"]
        for c in bot:
            assert_replays(old, new, c) if not status_only else None
        ways = {(c.old[0], c.new[0]) for c in bot if "status" in c.kinds}
        assert ways == {("allowed", "denied"), ("denied", "allowed")}, status_only
        [gain] = [c for c in bot if (c.old[0], c.new[0]) == ("denied", "allowed")]
        ctx = gain.request["context"]
        assert Decimal("300") < Decimal(ctx["amount"]) <= Decimal("500")
        assert ctx.get("country") not in ("KP", "IR")
        assert observed(new, gain.request)[0] == "allowed"
        assert observed(old, gain.request)[:2] == ("denied", "limit_exceeded")


def test_diff_of_equal_policies_decides_nothing() -> None:
    result = diff(Engine.from_source(OLD), Engine.from_source(OLD + "# a comment\n"))
    assert result.changes == () and result.pairs == 0 and result.exhaustive


def test_diff_follows_a_role_change() -> None:
    new = OLD.replace('agent "eve": r', 'agent "eve": other\nrole other: docs:read')
    result = diff(Engine.from_source(OLD), Engine.from_source(new))
    assert {c.request["principal"] for c in result.changes} == {"eve"}


# ---- command line -----------------------------------------------------------------------

def test_cli_text_json_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    p = tmp_path / "a.policy"
    p.write_text(BASE + "permit p: pay:x when context.a > 5 and context.a < 3\n")
    assert main(["analyze", str(p)]) == 1
    out = capsys.readouterr().out
    assert f"{p}:3:1: warning[W301]:" in out
    assert main(["analyze", str(p), "--fail-on", "error"]) == 0
    capsys.readouterr()
    assert main(["analyze", str(p), "--json", "--fail-on", "none"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [f["code"] for f in data["findings"]] == ["W301"]
    q = tmp_path / "b.policy"
    q.write_text(BASE)
    assert main(["diff", str(p), str(q)]) == 0  # the rule never applied: nothing changes
    assert "exhaustive" in capsys.readouterr().out
    q.write_text(BASE + "forbid f: pay:x\n")
    assert main(["analyze", "--diff", str(p), str(q), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["changes"]
    assert main(["analyze"]) == 2
    assert main(["analyze", str(p), "--max-requests", "0"]) == 2
    capsys.readouterr()
    # a cap raised: the text says what changed; --status-only leaves the obligations out
    (tmp_path / "c.policy").write_text(OLD)
    (tmp_path / "d.policy").write_text(OLD.replace("100 EUR", "150 EUR"))
    old_new = [str(tmp_path / "c.policy"), str(tmp_path / "d.policy")]
    assert main(["diff", *old_new]) == 1
    text = capsys.readouterr().out
    assert "    changed: obligations\n" in text
    assert "obligations: max 100.00 EUR" in text and "obligations: max 150.00 EUR" in text
    assert main(["diff", *old_new, "--json", "--status-only"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["changes"] and all(c["changed"] == ["status"] for c in data["changes"])
    assert all(c["old"]["status"] != c["new"]["status"] for c in data["changes"])


# ---- properties -------------------------------------------------------------------------

OPS = ["<", "<=", ">", ">=", "==", "!="]
atoms = st.one_of(
    st.builds(lambda v, op, n: f"context.{v} {op} {n}", st.sampled_from("ab"),
              st.sampled_from(OPS), st.integers(0, 4)),
    st.builds(lambda v, xs: f"context.{v} in [{', '.join(json.dumps(x) for x in xs)}]",
              st.sampled_from("cd"), st.lists(st.sampled_from(["x", "y"]), min_size=1,
                                              max_size=2)),
    st.builds(lambda v: f"has(context.{v})", st.sampled_from("ac")),
)
exprs = st.recursive(atoms, lambda inner: st.one_of(
    st.builds(lambda a, b: f"({a} and {b})", inner, inner),
    st.builds(lambda a, b: f"({a} or {b})", inner, inner),
    st.builds(lambda a: f"not ({a})", inner)), max_leaves=4)
rules = st.lists(st.tuples(st.sampled_from(["permit", "forbid", "approval"]),
                           st.sampled_from(["pay:*", "pay:x", "pay:y", "*"]), exprs),
                 min_size=1, max_size=4)
SAMPLE_VALUES = [None, 0, 1, 2, 2.5, 3, 4, 5, "x", "y", "z", True]
contexts = st.fixed_dictionaries({}, optional={k: st.sampled_from(SAMPLE_VALUES[1:])
                                               for k in "abcd"})


def policy_text(rs: list[tuple[str, str, str]]) -> str:
    lines = ['agent "bot"']
    for i, (effect, pattern, cond) in enumerate(rs):
        lines.append(f"{effect} r{i}: {pattern} when {cond}")
    return "\n".join(lines) + "\n"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules, st.lists(st.tuples(st.sampled_from(["pay:x", "pay:y", "pay:z", "q"]),
                                 contexts), min_size=1, max_size=12))
def test_never_applying_permits_never_apply(rs: list[tuple[str, str, str]],
                                            requests: list[tuple[str, dict[str, Any]]]
                                            ) -> None:
    engine = Engine.from_source(policy_text(rs))
    dead = {f.rule for f in analyze(engine).findings if f.code in ("W301", "W302")
            and f.rule.startswith("default.r") and rs[int(f.rule[9:])][0] == "permit"}
    never = {f.rule for f in analyze(engine).findings if f.code == "W301"
             and rs[int(f.rule[9:])][0] == "permit"}
    for f in analyze(engine).findings:  # every counterexample shows what its finding says
        if f.counterexample is not None:
            c = f.counterexample
            x = engine.explain(c["principal"], c["permission"], c["context"])
            row = next(e for e in x.rules if e["rule"] == f.rule)
            assert row["result"] == "applies"
            assert x.decision.status == {"W302": "denied", "W305": "pending_approval"}[f.code]
            assert set(f.related) & set(x.decision.rules)
    for perm, ctx in requests:
        x = engine.explain("bot", perm, ctx)
        if x.decision.allowed:
            assert not dead & set(x.decision.rules), (x.decision.rules, dead)
        assert not any(e["rule"] in never and e["result"] == "applies" for e in x.rules)


# Limits and approval thresholds too: their caps are obligations of what they let through.
diff_rules = st.lists(st.tuples(
    st.sampled_from(["permit", "forbid", "approval", "limit", "approval_over"]),
    st.sampled_from(["pay:*", "pay:x", "pay:y", "*"]), exprs), min_size=1, max_size=4)


def diff_policy_text(rs: list[tuple[str, str, str]]) -> str:
    lines = ["currency EUR", 'agent "bot"']
    for i, (effect, pattern, cond) in enumerate(rs):
        if effect == "limit":
            lines.append(f"limit r{i}: {pattern} amount <= {3 + i} EUR when {cond}")
        elif effect == "approval_over":
            lines.append(f"approval r{i}: {pattern} over {2 + i} EUR when {cond}")
        else:
            lines.append(f"{effect} r{i}: {pattern} when {cond}")
    return "\n".join(lines) + "\n"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(diff_rules, diff_rules)
def test_every_diff_example_changes_decision(a: list[tuple[str, str, str]],
                                             b: list[tuple[str, str, str]]) -> None:
    old, new = Engine.from_source(diff_policy_text(a)), Engine.from_source(diff_policy_text(b))
    result = diff(old, new, max_requests=256)
    for c in result.changes:
        assert_replays(old, new, c)
    vocab = {p for _, p, _ in a + b}

    def cls(permission: str) -> frozenset[str]:
        return frozenset(v for v in vocab if permission_matches(v, permission))

    if result.exhaustive:  # then every way a request tells them apart is listed
        listed = {(cls(c.request["permission"]), c.kinds, c.old, c.new)
                  for c in result.changes if c.request["principal"] == "bot"}
        for perm in ("pay:x", "pay:q", "z"):
            for ctx in ({}, {"a": 3, "b": 1, "c": "x", "d": "y"}, {"a": "x"},
                        {"a": 1, "amount": "2.5", "currency": "EUR"},
                        {"a": 4, "c": "y", "amount": "7", "currency": "EUR"}):
                x, y = observed(old, _req(perm, ctx)), observed(new, _req(perm, ctx))
                kinds = tuple(k for k, p, q in zip(CHANGE_KINDS, x, y, strict=True)
                              if p != q)
                assert not kinds or (cls(perm), kinds, x[:2], y[:2]) in listed, (
                    perm, ctx, kinds, x[:2], y[:2])
    status = diff(old, new, max_requests=256, status_only=True)
    assert all(c.kinds == ("status",) and c.old[0] != c.new[0] for c in status.changes)
    assert {(c.request["principal"], c.request["permission"]) for c in status.changes} == {
        (c.request["principal"], c.request["permission"]) for c in result.changes
        if "status" in c.kinds}


# Two variables (a number, a string) and the amount: small enough to decide every request
# of the witness grid directly, with authorize, under both versions.
two_var_atoms = st.one_of(
    st.builds(lambda op, n: f"context.a {op} {n}", st.sampled_from(OPS),
              st.integers(0, 4)),
    st.builds(lambda xs: f"context.c in [{', '.join(json.dumps(x) for x in xs)}]",
              st.lists(st.sampled_from(["x", "y"]), min_size=1, max_size=2)),
    st.sampled_from(["has(context.a)", "has(context.c)", "amount > 4 EUR"]))
two_var_exprs = st.recursive(two_var_atoms, lambda inner: st.one_of(
    st.builds(lambda a, b: f"({a} and {b})", inner, inner),
    st.builds(lambda a, b: f"({a} or {b})", inner, inner),
    st.builds(lambda a: f"not ({a})", inner)), max_leaves=3)
two_var_rules = st.lists(st.tuples(
    st.sampled_from(["permit", "forbid", "approval", "limit", "approval_over"]),
    st.sampled_from(["pay:*", "pay:x", "*"]), two_var_exprs), min_size=1, max_size=4)
GRID_A = [None, -1, 0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 5, "x", True]
GRID_C = [None, "x", "y", "z", 1]
GRID_AMOUNT = [None, "0", *(f"{t}{d}" for t in range(2, 8) for d in (".99", "", ".01"))]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(two_var_rules, two_var_rules)
def test_every_direction_a_request_shows_is_listed(a: list[tuple[str, str, str]],
                                                   b: list[tuple[str, str, str]]) -> None:
    """Every request of the grid whose decision changes (decided directly, by authorize on
    both versions) is represented in an exhaustive diff by a change of its principal and
    permission class with the same direction -- old (status, reason code) -> new -- and
    the same kinds; in a status-only diff, by one with the same old -> new status."""
    old, new = Engine.from_source(diff_policy_text(a)), Engine.from_source(diff_policy_text(b))
    whole = diff(old, new, max_requests=512)
    status = diff(old, new, max_requests=512, status_only=True)
    vocab = {p for _, p, _ in a + b}

    def cls(permission: str) -> frozenset[str]:
        return frozenset(v for v in vocab if permission_matches(v, permission))

    def listed(result: Any, n: int) -> set[tuple[Any, ...]]:
        return {(who, cls(c.request["permission"]), c.kinds, c.old[:n], c.new[:n])
                for c in result.changes for who in (c.request["principal"], *c.alike)}

    got, got_status = listed(whole, 2), listed(status, 1)
    for c in whole.changes:
        assert_replays(old, new, c)
    for who in ("bot", "someone-else"):
        for perm in ("pay:x", "pay:q", "z"):
            for va, vc, amount in itertools.product(GRID_A, GRID_C, GRID_AMOUNT):
                ctx: dict[str, Any] = {k: v for k, v in (("a", va), ("c", vc))
                                       if v is not None}
                if amount is not None:
                    ctx.update(amount=amount, currency="EUR")
                req = {"principal": who, "permission": perm, "context": ctx}
                x, y = observed(old, req), observed(new, req)
                if x == y:
                    continue
                kinds = tuple(k for k, p, q in zip(CHANGE_KINDS, x, y, strict=True)
                              if p != q)
                if whole.exhaustive:
                    assert (who, cls(perm), kinds, x[:2], y[:2]) in got, (req, x, y)
                if x[0] != y[0] and status.exhaustive:
                    assert (who, cls(perm), ("status",), x[:1], y[:1]) in got_status, (
                        req, x, y)


def _req(permission: str, context: dict[str, Any]) -> dict[str, Any]:
    return {"principal": "bot", "permission": permission, "context": context}


segments = st.sampled_from(["a", "b", "ab"])
patterns = st.one_of(
    st.just("*"),
    st.lists(segments, min_size=1, max_size=3).map(":".join),
    st.lists(segments, min_size=1, max_size=2).map(lambda s: ":".join(s) + ":*"))


@settings(max_examples=200, deadline=None)
@given(st.lists(patterns, min_size=1, max_size=6), st.lists(patterns, min_size=1, max_size=2))
def test_pattern_overlap_index_agrees_with_the_definition(
        vocab: list[str], query: list[str]) -> None:
    from policyengine.analysis import _overlap, _PatternIndex
    engine = Engine.from_source("".join(f"permit p{i}: {p}\n" for i, p in enumerate(vocab)))
    rules = engine.policy.rules
    got = {r.qid for r in _PatternIndex(rules).overlapping(query)}
    want = {r.qid for r in rules if any(_overlap(a, b) for a in r.patterns for b in query)}
    assert got == want
    # and the definition itself: overlap iff some permission (from the representatives
    # of both patterns) matches both
    for a in vocab:
        for b in query:
            reps = permission_representatives([a, b], [a, b])
            both = any(permission_matches(a, x) and permission_matches(b, x) for x in reps)
            assert _overlap(a, b) == both, (a, b)


# ---- delegation: grant.* within what the delegation block allows -------------------

def test_a_depth_beyond_the_delegation_max_depth_never_holds() -> None:
    text = (BASE + "delegation { max_depth 3 }\n"
            "forbid too-deep: pay:* when grant.delegated and grant.depth > 5\n"
            "permit deep: docs:x when grant.depth >= 3\n"
            'permit mine: docs:y when grant.acting_for == "besar" and grant.depth <= 1\n')
    found = codes(Engine.from_source(text))
    assert found == [("W301", "default.too-deep")]
    f = only(Engine.from_source(text), "W301")
    assert "delegation depth is at most 3" in f.message
    # one more level allowed: the forbid can apply
    assert codes(Engine.from_source(text.replace("grant.depth > 5", "grant.depth > 2"))) == []
    # without a delegation block, depth is bounded by the tokens' own ceiling (8)
    loose = text.replace("delegation { max_depth 3 }\n", "")
    assert codes(Engine.from_source(loose)) == []
    assert codes(Engine.from_source(loose.replace("> 5", "> 8"))) == [
        ("W301", "default.too-deep")]
