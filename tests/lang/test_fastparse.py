"""The fast reader and Lark agree: for any statement the fast reader accepts, its AST
equals the one built from Lark's parse, spans included; anything else it leaves to Lark."""

from __future__ import annotations

import dataclasses
import re
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine.lang import PolicyError, _parser, ast, parse
from policyengine.lang._fastparse import _KEYWORDS, read_statement


def full_key(node: object) -> object:
    """Structural key with spans and value types (dataclass equality ignores spans)."""
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return (type(node).__name__,
                tuple((f.name, full_key(getattr(node, f.name)))
                      for f in dataclasses.fields(node) if f.name != "has_body"))
    if isinstance(node, (tuple, list)):
        return tuple(full_key(x) for x in node)
    if isinstance(node, Decimal):
        return ("Decimal", str(node))
    return (type(node).__name__, node)


def lark_statement(text: str, line_offset: int) -> ast.Statement | None:
    st, problems = _parser._parse_statement(text, line_offset + 1, "f.policy",
                                            _parser.SourceSet())
    return None if problems else st


SETTINGS = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

WS = st.sampled_from([" ", "  ", "\t", " \n  ", "\n    ", " # note\n  "])
IDENT = st.sampled_from(["r", "xr1", "travel-agent", "a_b", "p9", "for", "when", "role",
                         "roles", "notx", "in", "amount2", "Ab"])
PATTERN = st.sampled_from(["*", "a:b", "xns1:*", "flights:book", "a.b-c:d", "ns:x:*", "a",
                           "a:", "when"])
STRING = st.sampled_from(['"x"', '"travel-agent"', '"a\\"b"', '"\\u00e9"', '""',
                          '"tab\\t"', '"é"'])
NUMBER = st.sampled_from(["0", "5", "-3", "2.50", "10.001", "12345678901234567890"])
CODE = st.sampled_from(["EUR", "USD", "JPY", "AND"])


@st.composite
def expressions(draw: st.DrawFn, depth: int = 0) -> str:
    w = draw(WS) if draw(st.booleans()) else " "
    leaf = st.one_of(
        STRING, NUMBER, st.just("true"), st.just("false"), st.just("amount"),
        st.builds(lambda n, c: f"{n} {c}", NUMBER, CODE),
        st.builds(lambda r, segs: r + "".join(segs), st.sampled_from(["context", "principal"]),
                  st.lists(st.sampled_from([".a", ".level", '["k"]', " . b", ".in"]),
                           max_size=3)),
    )
    if depth > 2 or draw(st.booleans()):
        return draw(leaf)
    sub = expressions(depth + 1)
    kind = draw(st.sampled_from(["cmp", "in", "notin", "not", "and", "or", "paren", "list",
                                 "call"]))
    a, b = draw(sub), draw(sub)
    if kind == "cmp":
        return f"{a}{w}{draw(st.sampled_from(['==', '!=', '<', '<=', '>', '>=']))}{w}{b}"
    if kind == "in":
        return f"{a} in {b}"
    if kind == "notin":
        return f"{a} not in {b}"
    if kind == "not":
        return f"not {a}"
    if kind == "and":
        return f"{a} and{w}{b}"
    if kind == "or":
        return f"{a}{w}or {b}"
    if kind == "paren":
        return f"({w}{a})"
    if kind == "list":
        items = draw(st.lists(sub, max_size=3))
        trail = "," if items and draw(st.booleans()) else ""
        return "[" + ", ".join(items) + trail + "]"
    fn = draw(st.sampled_from(["startswith", "contains", "has", "nosuch"]))
    return f"{fn}({a}, {b})"


@st.composite
def attribute_blocks(draw: st.DrawFn) -> str:
    """Nothing, or ``{ name = literal, ... }`` with odd spacing, commas and values."""
    if draw(st.booleans()):
        return ""
    w = draw(WS)
    value = st.one_of(STRING, NUMBER, st.sampled_from(["true", "false", "truex", "1 EUR",
                                                       "context.a", "[1]", "-", "1.", ""]))
    pairs = draw(st.lists(st.builds(lambda n, v: f"{n}{w}={w}{v}", IDENT, value),
                          max_size=3))
    trail = draw(st.sampled_from(["", ",", ", ", ",,"]))
    close = draw(st.sampled_from(["}", "}", " }", ""]))
    return f"{w}{{{w}" + ",".join(pairs) + trail + close


@st.composite
def statements(draw: st.DrawFn) -> str:
    w = draw(WS)
    kind = draw(st.sampled_from(["rule", "role", "agent", "resource", "namespace", "currency",
                                 "other"]))
    if kind == "role":
        pats = draw(st.lists(PATTERN, min_size=1, max_size=3))
        return f"role {draw(IDENT)}:{w}" + ", ".join(pats)
    if kind == "agent":
        roles = draw(st.lists(IDENT, max_size=3))
        return (f"agent {draw(STRING)}" + ((":" + w + ", ".join(roles)) if roles else "")
                + draw(attribute_blocks()))
    if kind == "resource":
        return f"resource{w}{draw(IDENT)} {draw(STRING)}" + draw(attribute_blocks())
    if kind == "namespace":
        return f"namespace {draw(IDENT)}"
    if kind == "currency":
        return f"currency {draw(CODE)}"
    if kind == "other":
        return draw(st.sampled_from([
            "limit l: a:b amount <= 5 EUR", 'tz "UTC"', "approval a: x:y over 5 EUR",
            'agent "a": r { k = 1 }', "approval a: x:y expires 1h",
            "limit l: a:b amount <= 5 EUR mode warn", "approval a: x:y expires 1h mode log",
            "budget b: a:* limit 5 EUR per day mode warn",
            "ratelimit r: a:b 5 per second burst 2 per tenant", "ratelimit r: x:* 9 per hour",
            "ratelimit r: x:* 9 per hour mode log"]))
    effect = draw(st.sampled_from(["permit", "forbid", "approval"]))
    text = f"{effect} {draw(IDENT)}: " + ", ".join(draw(st.lists(PATTERN, min_size=1,
                                                                   max_size=2)))
    scope = draw(st.lists(st.one_of(st.builds(lambda i: f"role {i}", IDENT),
                                    st.builds(lambda s: f"agent {s}", STRING)), max_size=2))
    if scope:
        text += f"{w}for " + ", ".join(scope)
    for _ in range(draw(st.integers(0, 2))):
        text += f"{w}{draw(st.sampled_from(['when', 'unless']))} {draw(expressions())}"
    return text + draw(st.sampled_from(["", "", "", f"{w}mode warn", " mode log"]))


@SETTINGS
@given(statements(), st.integers(0, 5), st.sampled_from(["", "  # trailing", "\n"]))
def test_fast_reader_agrees_with_lark(text: str, offset: int, tail: str) -> None:
    source = text + tail
    fast = read_statement(source, "f.policy", offset)
    if fast is None:
        return  # left to Lark: always allowed
    assert full_key(fast) == full_key(lark_statement(source, offset)), source


@SETTINGS
@given(st.text(alphabet=st.sampled_from(list('permitforbd role:ab*,"xwhenc.ntx=<>()[]0 \n')),
               max_size=60))
def test_fast_reader_never_accepts_what_lark_rejects(text: str) -> None:
    fast = read_statement(text, "f.policy", 0)
    if fast is not None:
        assert full_key(fast) == full_key(lark_statement(text, 0)), text


def test_the_common_shapes_take_the_fast_path() -> None:
    for text in ("role xr1: xns1:*", 'agent "xa1": xr1', 'agent "u1" { dept = "d1" }',
                 'resource record "r1" { owner = "u1", pages = 12, draft = false }',
                 "forbid xf1: xns1:delete when context.level > 9",
                 "permit xp1: xns1:admin for role xr1 when context.level > 3",
                 "namespace extra00", "currency EUR"):
        assert read_statement(text, "f.policy", 0) is not None, text


def _grammar_words() -> set[str]:
    """Every word the grammar spells: its string terminals and the words of its
    alternations (``ROOT: "context" | "principal" | "grant"``)."""
    words = set()
    for term in _parser._lark().terminals:
        pattern = term.pattern
        if pattern.type == "str":
            words.update(re.findall(r"^[A-Za-z_]+$", pattern.value))
        else:
            words.update(re.findall(r"(?:\(\?:|\|)([A-Za-z_][A-Za-z0-9_]*)(?=\||\))",
                                    pattern.value))
    return {w for w in words if len(w) > 1}  # not DURATION's unit letters (s|m|h|d)


def test_the_fast_reader_knows_every_word_of_the_grammar() -> None:
    words = _grammar_words()
    assert {"grant", "principal", "permit", "second", "input"} <= words
    assert words <= _KEYWORDS, sorted(words - _KEYWORDS)


def test_grant_is_a_root_not_a_function_name() -> None:
    # Lark reads `grant` as the path root, so `grant(1)` is E002; the fast reader took it
    # for a call, and the same text gave E106 (unknown function) instead, unless some
    # other statement of the file sent the whole file to Lark.
    text = "permit p: a:b when grant(1)"
    assert read_statement(text, "f.policy", 0) is None
    for source in (text + "\n", text + "\nbogus\n"):
        with pytest.raises(PolicyError) as info:
            parse(source)
        assert (info.value.code, info.value.line, info.value.column) == ("E002", 1, 25)
