"""Reverse queries: permissions_of, principals_with, filter_tools (docs/queries.md).

Expected answers are written from the policy text by hand."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import policyengine as pe

POLICY = """
currency EUR
role payer: payments:*
role reader: docs:*
agent "bot": payer { tier = "gold" }
agent "junior": payer { tier = "silver" }
agent "plain": payer
agent "reader": reader
forbid no-admin: payments:admin:*
forbid sanctioned: * when context.country in ["KP"]
permit open: docs:public
forbid gold-only: payments:refund unless principal.attributes.tier == "gold"
limit cap: payments:* amount <= 500 EUR
approval big: payments:refund over 300 EUR
approval review: docs:* for role reader when context.sensitive == true
forbid no-delete: docs:delete for agent "reader"
"""


def lines(answer: pe.Permissions | pe.Principals) -> list[str]:
    return [str(a) for a in answer.entries]


@pytest.fixture(scope="module")
def engine() -> pe.Engine:
    return pe.Engine.from_source(POLICY)


def test_an_agent_sees_each_region_with_its_residual(engine: pe.Engine) -> None:
    assert lines(engine.permissions_of("bot")) == [
        'allowed docs:public unless context.country in ["KP"]',
        "allowed payments:* except payments:admin:*, payments:refund "
        'unless context.country in ["KP"] or amount > 500.00 EUR',
        'allowed payments:refund unless context.country in ["KP"] or amount > 500.00 EUR '
        "or amount > 300.00 EUR",
        "pending_approval payments:refund when amount > 300.00 EUR "
        'unless context.country in ["KP"] or amount > 500.00 EUR',
    ]


def test_a_forbid_that_always_applies_removes_the_permission(engine: pe.Engine) -> None:
    # junior is silver: gold-only always applies to it; plain has no tier at all, so the
    # condition cannot be evaluated and the forbid applies (fail closed).
    for who in ("junior", "plain"):
        answer = engine.permissions_of(who)
        assert answer.lookup("payments:refund") == ()
        assert answer.lookup("payments:admin:users") == ()
        assert [a.pattern for a in answer.lookup("payments:pay")] == ["payments:*"]
        assert engine.authorize(who, "payments:refund",
                                {"amount": "1", "currency": "EUR"}).status == "denied"


def test_conditional_approval_gives_an_allowed_and_a_pending_line(engine: pe.Engine) -> None:
    answer = engine.permissions_of("reader")
    assert lines(answer) == [
        'allowed docs:* except docs:delete unless context.country in ["KP"] '
        "or context.sensitive == true",
        "pending_approval docs:* except docs:delete when context.sensitive == true "
        'unless context.country in ["KP"]',
    ]
    assert answer.lookup("docs:delete") == ()
    assert {a.status for a in answer.lookup("docs:read")} == {"allowed", "pending_approval"}


def test_an_undeclared_principal_gets_only_the_unscoped_permits(engine: pe.Engine) -> None:
    answer = engine.permissions_of("nobody")
    assert lines(answer) == ['allowed docs:public unless context.country in ["KP"]']
    assert answer.kind == "agent" and answer.principal == "nobody"


def test_a_role_keeps_the_principal_conditions_it_cannot_know(engine: pe.Engine) -> None:
    answer = engine.permissions_of(role="payer")
    assert answer.kind == "role"
    refund = answer.lookup("payments:refund")
    assert [a.status for a in refund] == ["allowed", "pending_approval"]
    assert refund[0].unless == ('context.country in ["KP"] or principal.attributes.tier '
                                '!= "gold" or amount > 500.00 EUR or amount > 300.00 EUR')


def test_an_unconditional_approval_leaves_only_a_pending_line() -> None:
    e = pe.Engine.from_source('role r: a:*\nagent "x": r\napproval all: a:b')
    assert lines(e.permissions_of("x")) == ["allowed a:* except a:b", "pending_approval a:b"]
    assert e.authorize("x", "a:b").status == "pending_approval"


def test_rules_of_other_principals_split_nothing() -> None:
    e = pe.Engine.from_source('role r: a:*\nrole s: b:*\nagent "x": r\nagent "y": s\n'
                              "forbid f: a:secret for role s\npermit p: a:extra for role s")
    assert lines(e.permissions_of("x")) == ["allowed a:*"]


def test_a_permit_narrower_than_a_grant_with_the_same_answer_merges() -> None:
    e = pe.Engine.from_source('role r: a:*\nagent "x": r\npermit p: a:b when context.k == 1')
    # a:b is allowed unconditionally by the role grant: the permit changes nothing
    assert lines(e.permissions_of("x")) == ["allowed a:*"]


def test_permits_combine_as_alternatives() -> None:
    e = pe.Engine.from_source('role r: zz:zz\nagent "x": r\n'
                              "permit p1: a:b when context.k == 1\n"
                              "permit p2: a:* for agent \"x\" when context.j > 2\n"
                              "forbid f: a:b when context.k == 1 and context.m")
    assert lines(e.permissions_of("x")) == [
        "allowed a:* except a:b when context.j > 2",
        "allowed a:b when context.k == 1 or context.j > 2 unless context.k == 1 and context.m",
        "allowed zz:zz",
    ]
    rules = e.permissions_of("x").lookup("a:b")[0].rules
    assert rules == ("default.p1", "default.p2", "default.f")


def test_limit_truncates_and_says_so(engine: pe.Engine) -> None:
    full = engine.permissions_of("bot")
    cut = engine.permissions_of("bot", limit=2)
    assert cut.entries == full.entries[:2]
    assert (cut.total, cut.truncated) == (4, True)
    assert (full.total, full.truncated) == (4, False)
    assert engine.permissions_of("bot", limit=4).truncated is False
    assert "truncated to 2" in str(cut)


def test_principals_with_lists_agents_roles_and_anyone(engine: pe.Engine) -> None:
    answer = engine.principals_with("docs:public")
    assert [(a.kind, a.principal, a.status) for a in answer.entries] == [
        ("agent", "bot", "allowed"), ("agent", "junior", "allowed"),
        ("agent", "plain", "allowed"), ("agent", "reader", "allowed"),
        ("agent", "reader", "pending_approval"), ("role", "reader", "allowed"),
        ("role", "reader", "pending_approval"), ("anyone", "*", "allowed")]
    refund = engine.principals_with("payments:refund")
    assert [(a.kind, a.principal) for a in refund.entries] == [
        ("agent", "bot"), ("agent", "bot"), ("role", "payer"), ("role", "payer")]
    delete = engine.principals_with("docs:delete")
    assert [(a.kind, a.principal) for a in delete.entries] == [
        ("role", "reader"), ("role", "reader")]  # the agent "reader" is forbidden it
    assert engine.principals_with("nothing:here").entries == ()


def test_principals_with_limit(engine: pe.Engine) -> None:
    cut = engine.principals_with("docs:public", limit=3)
    assert (len(cut.entries), cut.total, cut.truncated) == (3, 8, True)


def test_bad_arguments_are_refused(engine: pe.Engine) -> None:
    with pytest.raises(pe.InvalidPermission):
        engine.principals_with("docs:*")
    with pytest.raises(TypeError):
        engine.permissions_of()
    with pytest.raises(TypeError):
        engine.permissions_of("bot", role="payer")
    with pytest.raises(TypeError):
        engine.permissions_of(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        engine.permissions_of("")
    with pytest.raises(ValueError):
        engine.permissions_of("bot", limit=-1)
    with pytest.raises(ValueError):
        engine.filter_tools("bot", [], transport="http")


TOOLS = """
role payer: payments:*
role reader: docs:*
agent "bot": payer
approval big-refund: payments:refund when context.amount > 100
forbid no-wipe: payments:wipe
tool refund: mcp "refund" -> payments:refund { amount = $.amount }
tool wipe: mcp "wipe*" -> payments:wipe
tool read: mcp "read_*" -> docs:read
tool pay: function "pay" -> payments:pay
"""


def test_filter_tools_keeps_what_the_principal_may_call() -> None:
    e = pe.Engine.from_source(TOOLS)
    listed = [{"name": "refund", "description": "..."}, {"name": "wipe_all"},
              {"name": "read_doc"}, {"name": "unknown"}, {"name": 7}, "pay"]
    got = e.filter_tools("bot", listed)
    assert got.kept == (listed[0],)  # the same object, in order
    assert [(t.name, t.tool, t.permission, t.callable) for t in got.tools] == [
        ("refund", "default.refund", "payments:refund", True),
        ("wipe_all", "default.wipe", "payments:wipe", False),
        ("read_doc", "default.read", "docs:read", False),
        ("unknown", None, None, False), (None, None, None, False), ("pay", None, None, False)]
    assert [a.status for a in got.tools[0].access] == ["allowed", "pending_approval"]
    functions = e.filter_tools("bot", ["pay", SimpleNamespace(name="refund")],
                               transport="function")
    assert functions.kept == ("pay",)


def test_answers_are_frozen_and_a_reload_answers_afresh(tmp_path: object) -> None:
    from pathlib import Path
    path = Path(str(tmp_path)) / "p.policy"
    path.write_text('role r: a:*\nagent "x": r\n')
    e = pe.Engine.from_path(path)
    first = e.permissions_of("x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.total = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.entries[0].status = "denied"  # type: ignore[misc]
    path.write_text('role r: a:*\nagent "x": r\nforbid f: a:*\n')
    e.reload()
    assert e.permissions_of("x").entries == ()
    assert lines(first) == ["allowed a:*"]


def test_to_dict_is_json_ready(engine: pe.Engine) -> None:
    import json
    data = json.loads(json.dumps(engine.permissions_of("reader").to_dict()))
    assert data["entries"][0] == {
        "principal": "reader", "kind": "agent", "pattern": "docs:*",
        "excluding": ["docs:delete"], "status": "allowed", "when": None,
        "unless": 'context.country in ["KP"] or context.sensitive == true',
        "rules": ["role:reader", "default.sanctioned", "default.review"]}
    assert json.loads(json.dumps(engine.principals_with("docs:read").to_dict()))["total"] == 4


def test_covers_reads_the_exclusions() -> None:
    line = pe.Access("x", "agent", "a:*", ("a:b", "a:c:*"), "allowed", None, None, ())
    assert line.covers("a:x") and line.covers("a:c") and line.covers("a:b:c")
    assert not line.covers("a:b") and not line.covers("a:c:d") and not line.covers("b:x")
    assert line.unconditional


def test_the_collector_is_left_as_it_was() -> None:
    import gc
    e = pe.Engine.from_source('role r: a:*\nagent "x": r\n')
    assert gc.isenabled()
    e.permissions_of("x")
    assert gc.isenabled()
    gc.disable()
    try:
        e.principals_with("a:b")
        assert not gc.isenabled()
    finally:
        gc.enable()


class _Hostile:
    """A tool object whose name cannot be read as a string."""

    @property
    def name(self) -> object:
        return ["not", "a", "name"]


@given(st.one_of(st.text(max_size=300), st.integers(), st.none(), st.lists(st.text())))
@settings(max_examples=100, deadline=None)
def test_any_principal_or_permission_is_an_answer_or_a_clean_error(value: object) -> None:
    engine = pe.Engine.from_source(POLICY)
    try:
        answer = engine.permissions_of(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        assert not (type(value) is str and 1 <= len(value) <= 256)
    else:
        assert answer.principal == value
        if value not in ("bot", "junior", "plain", "reader"):  # undeclared: as anyone else
            assert [str(a) for a in answer.entries] == [
                'allowed docs:public unless context.country in ["KP"]']
    try:
        engine.principals_with(value)  # type: ignore[arg-type]
    except pe.InvalidPermission:
        assert not pe.is_valid_permission(value)


def test_filter_tools_takes_any_tool_list_without_crashing() -> None:
    e = pe.Engine.from_source(TOOLS)
    odd = [None, 3, {"name": None}, {"title": "refund"}, {"name": "refund" * 10_000},
           _Hostile(), b"refund", {"name": "re\x00fund"}, {"name": "refund"}]
    got = e.filter_tools("bot", odd)
    assert got.kept == (odd[-1],)
    assert [t.callable for t in got.tools] == [False] * 8 + [True]


def test_what_is_known_of_the_principal_is_written_into_the_residual() -> None:
    e = pe.Engine.from_source(
        'role r: a:*\nagent "bot": r { tier = "gold", n = 3 }\n'
        'permit p: b:x for agent "bot" when context.owner == principal.id and '
        "context.level < principal.attributes.n and principal.attributes.zz == context.q")
    # zz is no attribute of bot: it stays a path, which fails to evaluate as it did
    assert lines(e.permissions_of("bot")) == [
        "allowed a:*", 'allowed b:x when context.owner == "bot" and context.level < 3 '
        "and principal.attributes.zz == context.q"]


def test_agents_sharing_lines_are_each_listed_in_id_order() -> None:
    """principals_with groups agents by the roles the rules name; each group's lines
    are made per agent when first read, in agent order, and agree with permissions_of
    (including an agent holding two of the roles, which is worked out on its own)."""
    e = pe.Engine.from_source("""
role a: docs:*
role b: docs:*
role c: other:*
agent "z1": a
agent "y2": b, c
agent "x3": a
agent "w4": a, b
agent "v5": c
forbid fa: docs:d for role a when context.n > 1
forbid fb: docs:d for role b when context.m > 1
""")
    answer = e.principals_with("docs:d")
    entries = answer.entries
    assert len(entries) == answer.total == 6  # four agents, the roles a and b
    got = [(a.kind, a.principal, a.unless) for a in entries]
    assert got == [("agent", "w4", "context.n > 1 or context.m > 1"),
                   ("agent", "x3", "context.n > 1"), ("agent", "y2", "context.m > 1"),
                   ("agent", "z1", "context.n > 1"), ("role", "a", "context.n > 1"),
                   ("role", "b", "context.m > 1")]
    for line in entries:
        if line.kind == "agent":
            assert e.permissions_of(line.principal).lookup("docs:d") == (line,)
    assert entries == tuple(entries) and entries[1:3] == tuple(entries)[1:3]
    assert e.principals_with("docs:d", limit=2).entries == tuple(entries)[:2]


def test_answers_pickle_and_copy_with_their_texts(engine: pe.Engine) -> None:
    import copy
    import pickle
    for answer in (engine.permissions_of("bot"), engine.principals_with("docs:public")):
        again = pickle.loads(pickle.dumps(answer))
        assert again == answer and lines(again) == lines(answer)
        assert copy.deepcopy(answer) == answer
