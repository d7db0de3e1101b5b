"""Hostile input: policy text (arbitrary text/bytes, huge, deep, broken) and requests."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine.engine import Engine
from policyengine.lang import PolicyError, parse

FAST = settings(max_examples=200, deadline=None)

# Bounds are on this process's CPU time, not the wall clock, so a busy machine cannot
# fail them; they catch super-linear work (a hang, backtracking), not small slowdowns.
CPU_SECONDS = 2.0


def parse_outcome(data: str | bytes) -> float:
    """Parse ``data``; it must parse or raise PolicyError with a position. Returns seconds."""
    start = time.process_time()
    try:
        parse(data, "x.policy")
    except PolicyError as err:
        assert err.errors, "a PolicyError carries at least one error"
        for p in err.errors:
            assert p.line >= 1 and p.column >= 1 and p.code.startswith("E")
    return time.process_time() - start


TOKENS = ["permit", "forbid", "approval", "role", "agent", "namespace", "limit", "when",
          "unless", "for", "and", "or", "not", "in", "context", ".", "a", ":", "*", "(", ")",
          "[", "]", "{", "}", '"', '"x"', "\\", "#", "\n", " ", "  ", "==", "<", "1", "1.5",
          "-", "EUR", ",", "true", "=", "\t", "$.a", "->", "tool", "http", "'"]


@FAST
@given(st.text(max_size=300))
def test_arbitrary_text_only_raises_policy_error(text: str) -> None:
    assert parse_outcome(text) < CPU_SECONDS


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_policy_error(data: bytes) -> None:
    assert parse_outcome(data) < CPU_SECONDS


@FAST
@given(st.lists(st.sampled_from(TOKENS), max_size=60).map("".join))
def test_token_soup_only_raises_policy_error(text: str) -> None:
    assert parse_outcome(text) < CPU_SECONDS


@FAST
@given(st.lists(st.sampled_from(TOKENS), max_size=40).map(" ".join))
def test_spaced_token_soup_only_raises_policy_error(text: str) -> None:
    assert parse_outcome(text) < CPU_SECONDS


def test_ten_megabytes_refused_quickly() -> None:
    for data in ("role r: a:b\n" * (10 * 1024 * 1024 // 12), b"\x00" * (10 * 1024 * 1024)):
        start = time.process_time()
        with pytest.raises(PolicyError) as info:
            parse(data)
        assert time.process_time() - start < CPU_SECONDS
        assert info.value.code == "E006"


@pytest.mark.parametrize(
    "body",
    [
        "(" * 10_000 + "true" + ")" * 10_000,
        "context.a in " + "[" * 10_000 + "]" * 10_000,
        "not " * 10_000 + "true",
        "not (" * 10_000 + "true" + ")" * 10_000,
        " and ".join(["(true"] * 10_000) + ")" * 10_000,
    ],
    ids=["parens", "brackets", "not-chain", "not-parens", "and-parens"],
)
def test_deep_nesting_is_a_positioned_error_within_a_second(body: str) -> None:
    start = time.process_time()
    with pytest.raises(PolicyError) as info:
        parse("role r: a:b\npermit p: a:b when " + body)
    assert time.process_time() - start < CPU_SECONDS
    assert info.value.code == "E007"
    assert info.value.line == 2


def test_deep_braces_are_refused() -> None:
    with pytest.raises(PolicyError) as info:
        parse('tool x: http "a" {' * 10_000)
    assert info.value.code == "E007"


@pytest.mark.parametrize(
    "text",
    ['permit p: a:b when context.a == "abc', 'agent "abc', '"', 'role r: a:b\n"\n"\n"',
     'permit p: a:b when context.a == "abc\\"'],
)
def test_unterminated_strings(text: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse(text)
    assert info.value.code in {"E004", "E002"}


def test_nul_bytes_and_invalid_utf8() -> None:
    for data, code in (("role r: a\x00:b", "E008"), (b"role r: a:b\n\xc3\x28", "E008"),
                       (b"\xff\xfe\x00r", "E008"), (bytes(range(256)), "E008")):
        with pytest.raises(PolicyError) as info:
            parse(data)
        assert info.value.code == code


@pytest.mark.parametrize("ch", ["\t", "\x0c", "\x01", "\x1f"])
def test_control_character_in_string_literal_is_a_policy_error(ch: str) -> None:
    with pytest.raises(PolicyError):
        parse(f'role r: a:b\nagent "a{ch}b": r')


def test_many_garbage_lines_rejected_within_a_second() -> None:
    start = time.process_time()
    with pytest.raises(PolicyError):
        parse("x\n" * 128_000)
    assert time.process_time() - start < CPU_SECONDS


# ---- requests -----------------------------------------------------------------------

POLICY = '''role r: a:*
agent "bot": r
permit open: b:read
permit list: c:read when context.x in context.items
permit lit: d:read when context.x in ["a", "b"]
permit deep: e:read when context.a.b.c == 1
forbid f: a:secret when context.x in context.items
'''


@pytest.fixture(scope="module")
def eng() -> Engine:
    return Engine.from_source(POLICY)


requests_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5),
              st.decimals(allow_nan=True, allow_infinity=True)),
    lambda ch: st.one_of(st.lists(ch, max_size=3),
                         st.dictionaries(st.text(max_size=3), ch, max_size=3)),
    max_leaves=10)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=5), st.integers(), st.none(), st.binary(max_size=3)),
       st.one_of(st.sampled_from(["c:read", "d:read", "a:secret", "e:read"]),
                 st.integers(), st.none(), st.text(max_size=6)),
       st.one_of(st.dictionaries(st.sampled_from(["x", "items", "a"]), requests_values),
                 requests_values))
def test_any_request_is_decided_without_raising(eng: Engine, principal: object,
                                                permission: object, context: object) -> None:
    d = eng.authorize(principal, permission, context)  # type: ignore[arg-type]
    assert d.status in {"allowed", "denied", "pending_approval"}
    if d.allowed:  # only a permit with a true condition can allow these
        assert permission in {"c:read", "d:read", "e:read", "b:read"} or \
            principal == "bot"


@pytest.mark.parametrize("permission", [1, None, b"a:x", ["a:x"], 1.5])
def test_non_string_permission_denied(eng: Engine, permission: object) -> None:
    d = eng.authorize("bot", permission, {})  # type: ignore[arg-type]
    assert (d.status, d.code) == ("denied", "invalid_request")
    assert d.diagnostics


@pytest.mark.parametrize("principal", [1, None, b"bot", ["bot"]])
def test_non_string_principal_denied(eng: Engine, principal: object) -> None:
    d = eng.authorize(principal, "a:x", {})  # type: ignore[arg-type]
    assert (d.status, d.code) == ("denied", "invalid_request")


@pytest.mark.parametrize("context", [[], "x", 1, ("x",), {1, 2}, b"{}"])
def test_non_dict_context_denied(eng: Engine, context: object) -> None:
    d = eng.authorize("bot", "a:x", context)  # type: ignore[arg-type]
    assert (d.status, d.code) == ("denied", "invalid_request")


def test_huge_context(eng: Engine) -> None:
    ctx: dict[str, object] = {f"k{i}": i for i in range(100_000)}
    ctx["x"] = "z"
    ctx["items"] = list(range(100_000))
    start = time.process_time()
    assert eng.authorize("bot", "c:read", ctx).status == "denied"
    assert eng.authorize("bot", "a:x", ctx).allowed
    assert time.process_time() - start < CPU_SECONDS


def test_cyclic_list_with_in(eng: Engine) -> None:
    items: list[object] = []
    items.append(items)
    # a cyclic value nests without end: comparing it is too_deep, and fails closed
    for x in (items, [items], "a"):
        assert not eng.authorize("bot", "c:read", {"x": x, "items": items}).allowed
        d = eng.authorize("bot", "a:secret", {"x": x, "items": items})
        assert (d.status, d.code) == ("denied", "too_deep")


def test_two_distinct_cyclic_lists_compared(eng: Engine) -> None:
    a: list[object] = []
    a.append(a)
    b: list[object] = []
    b.append(b)
    assert not eng.authorize("bot", "c:read", {"x": a, "items": [b]}).allowed
    assert eng.authorize("bot", "a:secret", {"x": a, "items": [b]}).status == "denied"


def test_cyclic_dict(eng: Engine) -> None:
    d: dict[str, object] = {}
    d["a"] = d
    d["b"] = d
    d["x"] = d
    d["items"] = [d]
    assert eng.authorize("bot", "e:read", d).status == "denied"
    assert eng.authorize("bot", "a:secret", d).status == "denied"
    assert not eng.authorize("bot", "d:read", d).allowed


def test_cyclic_context_pending_approval_does_not_crash() -> None:
    eng = Engine.from_source('role r: a:*\nagent "bot": r\napproval ap: a:x when true')
    d: dict[str, object] = {}
    d["self"] = d
    decision = eng.authorize("bot", "a:x", d)
    # A request that cannot be written down cannot be bound to an approval: denied.
    assert (decision.status, decision.code) == ("denied", "approval_unbindable")
    assert decision.approval_id is None and eng.approvals.list() == []


def test_context_with_odd_values_never_allows_a_forbidden_request(eng: Engine) -> None:
    for x in (float("nan"), Decimal("NaN"), object(), {"a": 1}, None, b"a"):
        assert eng.authorize("bot", "a:secret", {"x": x, "items": "notalist"}).status == \
            "denied"
