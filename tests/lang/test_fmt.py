"""``fmt``: idempotent, meaning-preserving, never loses a comment (hypothesis + examples)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from conftest import ast_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine.lang import PolicyError, ast, format_file, format_source, parse

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# ---- strategies: valid ASTs ---------------------------------------------------------

names = st.one_of(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True),
                  st.sampled_from(["when", "and", "in", "not", "true", "amount", "for"]))
ids = st.one_of(st.from_regex(r"[A-Za-z_][A-Za-z0-9_\-]{0,6}", fullmatch=True),
                st.sampled_from(["when", "for", "role", "over"]))
texts = st.text(max_size=8)
# A key that is not an ASCII name is written context["..."]. Keys with a quote, a backslash
# or a control character, and non-ASCII identifiers, are known bugs with their own tests
# below (test_key_*), so the generator leaves them out.
keys = st.one_of(names, texts.filter(
    lambda s: not s.isidentifier() and not any(c in s for c in '"\\') and s.isprintable()))
ints = st.integers(min_value=-10**12, max_value=10**12)
decimals = st.builds(lambda i, f: Decimal(f"{i}.{f}"), st.integers(-10**6, 10**6),
                     st.from_regex(r"[0-9]{1,4}", fullmatch=True))
money = st.builds(lambda a: ast.MoneyLit(a, "EUR"),
                  st.decimals(min_value=0, max_value=10**6, places=2))

literals = st.one_of(
    st.builds(ast.Literal, texts),
    st.builds(ast.Literal, ints),
    st.builds(ast.Literal, decimals),
    st.builds(ast.Literal, st.booleans()),
)
paths = st.one_of(
    st.builds(lambda s: ast.Path("context", tuple(s)), st.lists(keys, min_size=1, max_size=3)),
    st.sampled_from([ast.Path("principal", ("id",)), ast.Path("principal", ("roles",))]),
    st.builds(lambda n: ast.Path("principal", ("attributes", n)), names),
)
leaves = st.one_of(literals, paths, money, st.just(ast.Amount()),
                   st.builds(lambda xs: ast.ListExpr(tuple(xs)), st.lists(literals, max_size=3)))


def _extend(children: st.SearchStrategy[ast.Expr]) -> st.SearchStrategy[ast.Expr]:
    ops = st.sampled_from(["==", "!=", "<", "<=", ">", ">="])
    return st.one_of(
        st.builds(ast.Compare, ops, children, children),
        st.builds(ast.In, children, children, st.booleans()),
        st.builds(ast.Not, children),
        st.builds(lambda xs: ast.And(tuple(xs)), st.lists(children, min_size=2, max_size=3)),
        st.builds(lambda xs: ast.Or(tuple(xs)), st.lists(children, min_size=2, max_size=3)),
        st.builds(lambda n, xs: ast.Call(n, tuple(xs)),
                  st.sampled_from(["startswith", "matches", "contains", "f"]),
                  st.lists(children, max_size=3)),
    )


exprs = st.recursive(leaves, _extend, max_leaves=8)
segments = st.sampled_from(["a", "b1", "x.y", "q-r", "Z_", "for", "in"])
patterns = st.one_of(
    st.just("*"),
    st.builds(lambda s, star: ":".join(s) + (":*" if star else ""),
              st.lists(segments, min_size=1, max_size=3), st.booleans()),
)
pattern_lists = st.lists(patterns, min_size=1, max_size=3).map(tuple)
scopes = st.lists(st.one_of(st.builds(lambda n: ast.ScopeItem("role", n), ids),
                            st.builds(lambda n: ast.ScopeItem("agent", n), texts)),
                  max_size=2).map(tuple)
conditions = st.lists(st.builds(ast.Condition, st.sampled_from(["when", "unless"]), exprs),
                      max_size=2).map(tuple)

modes = st.sampled_from(["enforce", "warn", "log"])

statements = st.one_of(
    st.builds(ast.NamespaceDecl, names),
    st.builds(ast.CurrencyDecl, st.sampled_from(["EUR", "USD"])),
    st.builds(ast.RateDecl, st.sampled_from(["USD", "GBP"]), decimals.map(abs)),
    st.builds(ast.RoleDecl, ids, pattern_lists),
    st.builds(lambda i, r, a: ast.AgentDecl(i, tuple(r), tuple(a)), texts,
              st.lists(ids, max_size=2), st.lists(st.tuples(names, literals), max_size=2)),
    st.builds(lambda t, i, a: ast.ResourceDecl(t, i, tuple(a)), ids, texts,
              st.lists(st.tuples(names, literals), max_size=2)),
    st.builds(lambda e, i, p, s, c, m: ast.Rule(e, i, p, s, c, mode=m),
              st.sampled_from(["permit", "forbid", "approval"]), ids, pattern_lists,
              scopes, conditions, modes),
    st.builds(lambda i, p, c, s, w, m: ast.LimitDecl(i, p, c, s, w, mode=m),
              ids, pattern_lists, money, scopes, conditions, modes),
    st.builds(lambda i, p, c, s, w, m: ast.ApprovalOverDecl("approval", i, p, c, s, w,
                                                            mode=m),
              ids, pattern_lists, money, scopes, conditions, modes),
    st.builds(lambda i, p, c, per, b, s, m: ast.RateLimitDecl(i, p, c, per, b, s, mode=m),
              ids, pattern_lists, st.integers(1, 10**6),
              st.sampled_from(["second", "minute", "hour"]),
              st.one_of(st.none(), st.integers(1, 10**6)),
              st.sampled_from(["agent", "acting_for", "tenant", "global", "workspace",
                               "context.run_id"]), modes),
)
files = st.lists(statements, min_size=1, max_size=5).map(
    lambda sts: ast.PolicyFile("gen.policy", tuple(sts)))


@SETTINGS
@given(files)
def test_format_preserves_meaning_of_generated_asts(pf: ast.PolicyFile) -> None:
    text = format_file(pf)
    reparsed = parse(text, "gen.policy")
    assert ast_key(reparsed.statements) == ast_key(pf.statements), text


@SETTINGS
@given(files)
def test_format_is_idempotent(pf: ast.PolicyFile) -> None:
    once = format_file(pf)
    twice = format_source(once)
    assert twice == once
    assert ast_key(parse(twice).statements) == ast_key(parse(once).statements)


# ---- messy source text: comments, blank lines, continuation lines ----------------------

# (a control or format character in a comment is E014: tests/lang/test_hidden_text.py)
comment_texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Cf", "Zl", "Zp", "Zs")),
    max_size=10).map(lambda s: "# " + s)


@st.composite
def messy_sources(draw: st.DrawFn) -> tuple[str, list[str]]:
    pf = draw(files)
    lines: list[str] = []
    comments: list[str] = []
    for line in format_file(pf).split("\n"):
        if draw(st.booleans()):
            c = draw(comment_texts)
            comments.append(c)
            lines.append(draw(st.sampled_from(["", "  "])) + c)
        if draw(st.booleans()):
            lines.append("")
        if " when " in line and draw(st.booleans()):
            head, _, tail = line.partition(" when ")
            lines.extend([head, "    when " + tail])
        else:
            lines.append(line)
        if draw(st.booleans()):
            c = draw(comment_texts)
            comments.append(c)
            lines[-1] += "   " + c
    if draw(st.booleans()):
        c = draw(comment_texts)
        comments.append(c)
        lines.append(c)
    return "\n".join(lines) + draw(st.sampled_from(["", "\n", "\n\n"])), comments


@SETTINGS
@given(messy_sources())
def test_messy_text_formats_idempotently_keeping_meaning_and_comments(
        source: tuple[str, list[str]]) -> None:
    text, comments = source
    original = parse(text)
    formatted = format_source(text)
    assert format_source(formatted) == formatted
    assert ast_key(parse(formatted).statements) == ast_key(original.statements)
    kept = [c.text for c in parse(formatted).comments]
    assert sorted(kept) == sorted(c.rstrip() for c in comments)


# ---- examples --------------------------------------------------------------------------

POLICIES = sorted((Path(__file__).resolve().parents[2] / "policies").rglob("*.policy"))


@pytest.mark.parametrize("path", POLICIES, ids=[p.name for p in POLICIES])
def test_example_policies_format_idempotently(path: Path) -> None:
    text = path.read_text("utf-8")
    once = format_source(text)
    assert format_source(once) == once
    assert ast_key(parse(once).statements) == ast_key(parse(text).statements)
    assert [c.text for c in parse(once).comments] == [c.text for c in parse(text).comments]


def test_canonical_layout() -> None:
    text = ('role   r :a:b,c:*   # grants\n\n\n\nagent "x" : r\n'
            "permit p: a:b\n    when (context.a == 1) and not (context.b in [1,2,])\n")
    assert format_source(text) == (
        "role r: a:b, c:*  # grants\n\n"
        'agent "x": r\n'
        "permit p: a:b when context.a == 1 and not context.b in [1, 2]\n")


def test_parentheses_kept_where_needed() -> None:
    text = "permit p: a:b when (true or false) and (context.a == 1) == true\n"
    assert format_source(text) == text
    assert format_source("permit p: a:b when not (true and false)\n") == \
        "permit p: a:b when not (true and false)\n"


def test_comment_inside_multiline_statement_moves_above_it() -> None:
    text = "permit p: a:b  # first\n  when true  # inner\n"
    out = format_source(text)
    assert "# first" in out and "# inner" in out
    assert ast_key(parse(out).statements) == ast_key(parse(text).statements)


def test_block_statements_keep_comments() -> None:
    text = ('tool s: http "api.example.com" {  # open\n'
            '  # before route\n'
            '  POST "/x" -> a:b  # on route\n'
            '  redact $.card mask\n'
            '}  # close\n')
    out = format_source(text)
    assert format_source(out) == out
    for c in ("# open", "# before route", "# on route", "# close"):
        assert c in out


def test_format_rejects_broken_text() -> None:
    with pytest.raises(PolicyError):
        format_source("permit p: a:b when")


def test_non_ascii_identifier_key_survives_fmt() -> None:
    text = 'permit p: a:b when context["é"] == 1\n'
    out = format_source(text)
    assert ast_key(parse(out).statements) == ast_key(parse(text).statements)


@pytest.mark.parametrize("key", ['\\"', "\\\\"])
def test_key_with_quote_or_backslash_survives_fmt(key: str) -> None:
    text = f'permit p: a:b when context["a{key}b"] == 1\n'
    out = format_source(text)
    assert ast_key(parse(out).statements) == ast_key(parse(text).statements)


def test_key_with_control_character_survives_fmt() -> None:
    text = 'permit p: a:b when context["a\\u001fb"] == 1\n'
    out = format_source(text)
    assert ast_key(parse(out).statements) == ast_key(parse(text).statements)


@pytest.mark.parametrize("text", [
    'permit p: a:b when context.a == "\\ud800"\n',
    'permit p: a:b when context["\\udc00k"] in ["\\ud83d", "x"]\n',
    'agent "a\\udfff": r { tag = "\\ud800" }\n',
    'permit p: a:b when context.a == "\\ud83d\\ude00"\n',  # a pair: one character
])
def test_lone_surrogates_are_written_as_escapes(text: str) -> None:
    out = format_source(text)
    out.encode("utf-8")  # UTF-8 text, as a policy file is
    assert ast_key(parse(out).statements) == ast_key(parse(text).statements)
    assert format_source(out) == out
