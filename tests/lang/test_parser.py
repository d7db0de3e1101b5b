"""Parser: every statement kind, keyword boundaries, positioned errors E001-E009, hints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import ast_key

from policyengine.lang import MAX_NESTING, MAX_SOURCE_BYTES, PolicyError, ast, parse

ALL_KINDS = '''namespace travel
currency EUR
default_currency USD
rate USD 0.92
rates "fx.json" max_age 1h
tz "Europe/Paris"
role travel: flights:*, hotels:book
agent "travel-agent": travel, other { tier = "gold", n = 3, ok = true }
agent "bare"
permit p1: flights:book for role travel, agent "x" when context.weekday < 5
  unless principal.attributes.tier == "gold"
forbid f1: * when context.country in ["KP", "IR"]
approval a1: tickets:delete when context.count > 10
limit l1: payments:refund amount <= 500 EUR for role travel
approval a2: payments:refund over 300.50 EUR
budget b1: payments:* limit 1000 EUR per day per agent
budget b2: llm:* limit 200000 tokens per rolling 1h per global tz "UTC" overdraft 5
tool stripe: http "api.stripe.com" {
  POST "/v1/refunds" -> payments:refund { amount = $.amount minor, currency = $.currency }
  deny "/v1/accounts/**"
  redact $.card mask
}
tool t2: function "transfer_funds" -> payments:transfer {
  amount = $.amount
  redact $.to partial 4
}
tool t3: mcp "crm.*" -> customers:read
egress { allow "*.example.com" deny "evil.com" }
delegation { max_depth 3  max_ttl 1h }
'''


def ctx(*segments: str) -> ast.Path:
    return ast.Path("context", segments)


def lit(v: object) -> ast.Literal:
    return ast.Literal(v)  # type: ignore[arg-type]


EXPECTED = [
    ast.NamespaceDecl("travel"),
    ast.CurrencyDecl("EUR"),
    ast.DefaultCurrencyDecl("USD"),
    ast.RateDecl("USD", Decimal("0.92")),
    ast.RatesDecl("fx.json", 3600, "1h"),
    ast.TzDecl("Europe/Paris"),
    ast.RoleDecl("travel", ("flights:*", "hotels:book")),
    ast.AgentDecl("travel-agent", ("travel", "other"),
                  (("tier", lit("gold")), ("n", lit(3)), ("ok", lit(True)))),
    ast.AgentDecl("bare", ()),
    ast.Rule("permit", "p1", ("flights:book",),
             (ast.ScopeItem("role", "travel"), ast.ScopeItem("agent", "x")),
             (ast.Condition("when", ast.Compare("<", ctx("weekday"), lit(5))),
              ast.Condition("unless", ast.Compare(
                  "==", ast.Path("principal", ("attributes", "tier")), lit("gold"))))),
    ast.Rule("forbid", "f1", ("*",), (),
             (ast.Condition("when", ast.In(ctx("country"),
                                           ast.ListExpr((lit("KP"), lit("IR"))))),)),
    ast.Rule("approval", "a1", ("tickets:delete",), (),
             (ast.Condition("when", ast.Compare(">", ctx("count"), lit(10))),)),
    ast.LimitDecl("l1", ("payments:refund",), ast.MoneyLit(Decimal("500"), "EUR"),
                  (ast.ScopeItem("role", "travel"),)),
    ast.ApprovalOverDecl("approval", "a2", ("payments:refund",),
                         ast.MoneyLit(Decimal("300.50"), "EUR")),
    ast.BudgetDecl("b1", ("payments:*",), Decimal("1000"), "EUR", "day"),
    ast.BudgetDecl("b2", ("llm:*",), Decimal("200000"), "tokens", "rolling", 3600, "1h",
                   "global", (), "UTC", Decimal("5")),
    ast.HttpTool("stripe", ("api.stripe.com",), (
        ast.Route("POST", "/v1/refunds", "payments:refund", (
            ast.Extraction("amount", "body", "$.amount", True),
            ast.Extraction("currency", "body", "$.currency", False))),
        ast.DenyRoute(None, "/v1/accounts/**"),
        ast.Redact("$.card", "mask"))),
    ast.NamedTool("t2", "function", "transfer_funds", "payments:transfer", (
        ast.Extraction("amount", "body", "$.amount"),
        ast.Redact("$.to", "partial", 4))),
    ast.NamedTool("t3", "mcp", "crm.*", "customers:read"),
    ast.EgressDecl((("allow", "*.example.com"), ("deny", "evil.com"))),
    ast.DelegationDecl(max_depth=3, max_ttl=3600, max_ttl_text="1h"),
]


def errors(text: str | bytes) -> list[tuple[str, int, int]]:
    with pytest.raises(PolicyError) as info:
        parse(text, "f.policy")
    return [(p.code, p.line, p.column) for p in info.value.problems]


def problem(text: str | bytes):  # type: ignore[no-untyped-def]
    with pytest.raises(PolicyError) as info:
        parse(text, "f.policy")
    assert len(info.value.problems) == 1, info.value.problems
    return info.value.problems[0]


def test_every_statement_kind_parses_to_the_expected_ast() -> None:
    pf = parse(ALL_KINDS, "all.policy")
    assert len(pf.statements) == len(EXPECTED)
    for got, want in zip(pf.statements, EXPECTED, strict=True):
        assert ast_key(got) == ast_key(want)
    assert pf.namespace == "travel"
    assert pf.name == "all.policy"


def test_statement_spans_point_at_their_lines() -> None:
    pf = parse(ALL_KINDS, "all.policy")
    lines = ALL_KINDS.splitlines()
    for st in pf.statements:
        assert st.span.file == "all.policy"
        assert st.span.column == 1
        if lines[st.span.line - 1].startswith(" "):
            continue
        first_word = lines[st.span.line - 1].split()[0]
        assert first_word in {"namespace", "currency", "default_currency", "rate", "rates",
                              "tz", "role", "agent", "permit", "forbid", "approval", "limit",
                              "budget", "tool", "egress", "delegation"}
    tool = pf.statements[16]
    assert (tool.span.line, tool.span.end_line) == (18, 22)


def test_expression_spans_have_columns() -> None:
    text = 'permit p: a:b when context.x == 1 and principal.id != "q"'
    rule = parse(text).statements[0]
    cond = rule.conditions[0]
    assert isinstance(cond.expr, ast.And)
    left = cond.expr.items[0]
    assert left.span.column == text.index("context.x") + 1
    right = cond.expr.items[1]
    assert right.span.column == text.index("principal.id") + 1


@pytest.mark.parametrize(
    ("expr_text", "expected"),
    [
        ("true", lit(True)),
        ("false", lit(False)),
        ('"s"', lit("s")),
        ("-3", lit(-3)),
        ("2.50", lit(Decimal("2.50"))),
        ("500 EUR", ast.MoneyLit(Decimal(500), "EUR")),
        ("amount", ast.Amount()),
        ('context["a b"].c', ctx("a b", "c")),
        ("principal.roles", ast.Path("principal", ("roles",))),
        ("context.a != 1", ast.Compare("!=", ctx("a"), lit(1))),
        ("context.a >= 1", ast.Compare(">=", ctx("a"), lit(1))),
        ("context.a <= 1", ast.Compare("<=", ctx("a"), lit(1))),
        ("context.a not in [1, 2,]", ast.In(ctx("a"), ast.ListExpr((lit(1), lit(2))), True)),
        ("context.a in context.b", ast.In(ctx("a"), ctx("b"))),
        ("not not true", ast.Not(ast.Not(lit(True)))),
        ("true or false and true",
         ast.Or((lit(True), ast.And((lit(False), lit(True)))))),
        ("(true or false) and true",
         ast.And((ast.Or((lit(True), lit(False))), lit(True)))),
        ("true and true and false", ast.And((lit(True), lit(True), lit(False)))),
        ("not context.a == 1", ast.Not(ast.Compare("==", ctx("a"), lit(1)))),
        ('startswith(context.p, "x")', ast.Call("startswith", (ctx("p"), lit("x")))),
        ("f()", ast.Call("f", ())),
        ("[]", ast.ListExpr(())),
        ('"a\\"b\\\\c\\u00e9"', lit('a"b\\cé')),
    ],
)
def test_expressions_parse_to_the_expected_ast(expr_text: str, expected: ast.Expr) -> None:
    rule = parse(f"permit p: a:b when {expr_text}").statements[0]
    assert ast_key(rule.conditions[0].expr) == ast_key(expected)


def test_keyword_glued_to_a_word_is_an_error() -> None:
    text = "permit a: x:y whenx context.a"
    p = problem(text)
    assert (p.code, p.line, p.column) == ("E002", 1, text.index("whenx") + 1)
    assert p.hint == "did you mean 'when'?"


def test_for_glued_to_role_is_an_error() -> None:
    text = "role r: a:b\npermit a: x:y forrole r"
    p = problem(text)
    assert (p.code, p.line, p.column) == ("E002", 2, text.splitlines()[1].index("forrole") + 1)


@pytest.mark.parametrize("word", ["when", "unless", "and", "or", "not", "in", "true", "for",
                                  "role", "permit", "amount", "context"])
def test_keywords_are_plain_names_after_a_dot(word: str) -> None:
    rule = parse(f"permit a: x:y when context.{word} == 1").statements[0]
    assert ast_key(rule.conditions[0].expr) == ast_key(
        ast.Compare("==", ctx(word), lit(1)))


def test_unknown_statement_keyword_glued_is_e005() -> None:
    p = problem("permitx a: x:y")
    assert (p.code, p.line, p.column) == ("E005", 1, 1)
    assert p.hint == "did you mean 'permit'?"


def test_several_errors_in_one_file_are_all_reported_sorted() -> None:
    text = "\n".join([
        "role r: a:b",                          # 1 ok
        'agent "x": r',                         # 2 ok
        "permitt a: x:y",                       # 3 E005
        "forbid b: x:y when context.a = 1",     # 4 E002 at '='
        "permit c: x:y when",                   # 5 E003 at end
        "agnet \"y\": r",                       # 6 E005
        "permit d: x:y when context.a & true",  # 7 E001 at '&'
    ])
    lines = text.splitlines()
    assert errors(text) == [
        ("E005", 3, 1),
        ("E002", 4, lines[3].index("=") + 1),
        ("E003", 5, len(lines[4]) + 1),
        ("E005", 6, 1),
        ("E001", 7, lines[6].index("&") + 1),
    ]


def test_error_in_a_multiline_statement_has_the_file_line() -> None:
    text = "role r: a:b\n\npermit p: a:b\n  when context.a == 1\n  and context.b = 2\n"
    line5 = text.splitlines()[4]
    assert errors(text) == [("E002", 5, line5.index("=") + 1)]


@pytest.mark.parametrize(
    ("text", "code", "marker", "hint"),
    [
        ("permit a: x:y when context.a & true", "E001", "&", "write 'and'"),
        ("permit a: x:y when context.a | true", "E001", "|", "write 'or'"),
        ("permit a: x:y when context.a == 'x'", "E001", "'",
         'strings use double quotes: "text"'),
        ("permit a: x:y when 1 ! = 2", "E001", "!", "write 'not' or '!='"),
        ("permit a: x:y when context.a = 1", "E002", "=", "compare with '=='"),
        ("permit a: x:y whenn true", "E002", "whenn", "did you mean 'when'?"),
        ('forbid a: x:y when context.a in ["a"] andd true', "E002", "andd",
         "did you mean 'and'?"),
        ("rol r: a:b", "E005", "rol", "did you mean 'role'?"),
        ('role r: a:b\nagnet "x": r', "E005", "agnet", "did you mean 'agent'?"),
    ],
)
def test_errors_with_hints(text: str, code: str, marker: str, hint: str) -> None:
    """The position is the marker's (first occurrence on the last line)."""
    p = problem(text)
    lines = text.splitlines()
    want = (code, len(lines), lines[-1].index(marker) + 1, hint)
    assert (p.code, p.line, p.column, p.hint) == want
    assert p.severity == "error"
    assert p.file == "f.policy"


def test_e003_statement_ends_too_early() -> None:
    text = "role r: a:b\npermit a: x:y when"
    p = problem(text)
    assert (p.code, p.line, p.column) == ("E003", 2, len("permit a: x:y when") + 1)
    assert p.hint and p.hint.startswith("expected ")


def test_e004_unterminated_string() -> None:
    text = 'role r: a:b\npermit a: x:y when context.a == "abc\nrole q: c:d'
    p = problem(text)
    assert (p.code, p.line, p.column) == ("E004", 2, text.splitlines()[1].index('"') + 1)


def test_e004_unterminated_string_in_agent() -> None:
    p = problem('role r: a:b\nagent "abc: r\n')
    assert (p.code, p.line, p.column) == ("E004", 2, 7)


def test_e006_too_large() -> None:
    p = problem("#" * (MAX_SOURCE_BYTES + 1))
    assert (p.code, p.line, p.column) == ("E006", 1, 1)
    p = problem(b"#" * (MAX_SOURCE_BYTES + 1))
    assert (p.code, p.line, p.column) == ("E006", 1, 1)


def test_e007_nesting() -> None:
    prefix = "role r: a:b\npermit a: x:y when "
    text = prefix + "(" * 100 + "true" + ")" * 100
    p = problem(text)
    # reported at the first bracket beyond the limit
    assert (p.code, p.line, p.column) == ("E007", 2, len("permit a: x:y when ")
                                          + MAX_NESTING + 1)


def test_nesting_up_to_the_limit_parses() -> None:
    depth = 30
    parse("permit a: x:y when " + "(" * depth + "true" + ")" * depth)


def test_e008_invalid_utf8_position() -> None:
    p = problem(b"role r: a:b\npermit a: \xff")
    assert (p.code, p.line, p.column) == ("E008", 2, len(b"permit a: ") + 1)


@pytest.mark.parametrize("source", ["x" * (MAX_SOURCE_BYTES + 1), 42])
def test_a_file_that_cannot_be_read_has_no_excerpt(source: object) -> None:
    p = problem(source)  # type: ignore[arg-type]
    assert p.code in ("E006", "E008")
    assert p.excerpt == ""
    assert "|" not in p.render()


def test_e008_column_counts_characters_not_bytes() -> None:
    # "é" and "€" are 2 and 3 bytes: the bad byte is the 36th character of its line.
    p = problem('role r: a:b\npermit p: a:b when context.a == "é€'.encode() + b'\xff"\n')
    assert (p.code, p.line, p.column) == ("E008", 2, 36)
    assert p.excerpt.splitlines() == [
        '   2 | permit p: a:b when context.a == "é€\ufffd"',
        " " * (len("   2 | ") + 35) + "^"]


def test_e008_nul_byte_position() -> None:
    p = problem("role r: a:b\nrole q: c\x00:d")
    assert (p.code, p.line, p.column) == ("E008", 2, len("role q: c") + 1)


def test_e008_not_text() -> None:
    p = problem(12345)  # type: ignore[arg-type]
    assert p.code == "E008"


def test_e009_literal_too_long() -> None:
    text = "rate USD " + "1" * 50
    p = problem(text)
    assert (p.code, p.line, p.column) == ("E009", 1, len("rate USD ") + 1)


def test_e009_delegation_item_twice() -> None:
    p = problem("delegation { max_depth 3 max_depth 4 }")
    assert p.code == "E009"
    assert p.line == 1


def test_rendered_error_is_compiler_style_with_a_caret() -> None:
    text = "role r: a:b\npermit a: x:y when context.a & true"
    with pytest.raises(PolicyError) as info:
        parse(text, "dir/f.policy")
    err = info.value
    col = text.splitlines()[1].index("&") + 1
    rendered = err.render()
    assert str(err) == f"E001: {rendered}"
    assert rendered.startswith(f"dir/f.policy:2:{col}: error[E001]: ")
    assert "permit a: x:y when context.a & true" in rendered
    caret_line = next(line for line in rendered.splitlines() if line.strip() == "^")
    src_line = next(line for line in rendered.splitlines() if "context.a & true" in line)
    assert src_line[caret_line.index("^")] == "&"
    assert "hint: write 'and'" in rendered
    assert (err.code, err.file, err.line, err.column) == ("E001", "dir/f.policy", 2, col)


def test_comments_are_kept_with_positions() -> None:
    text = ('# head\nrole r: a:b  # trailing\n\n  # indented\n'
            'permit p: a:b when context.s == "# not a comment"\n# tail')
    pf = parse(text)
    got = [(c.text, c.span.line, c.span.column) for c in pf.comments]
    assert got == [("# head", 1, 1), ("# trailing", 2, 14), ("# indented", 4, 3),
                   ("# tail", 6, 1)]
    rule = pf.statements[1]
    assert ast_key(rule.conditions[0].expr) == ast_key(
        ast.Compare("==", ctx("s"), lit("# not a comment")))


def test_indented_lines_continue_a_statement() -> None:
    pf = parse("permit p: a:b\n  when context.a == 1\n  unless context.b == 2\n")
    assert [c.kind for c in pf.statements[0].conditions] == ["when", "unless"]


@pytest.mark.parametrize(("text", "errors"), [
    # The unindented line starts a statement, so `or` ends the first one too early; a
    # whole-file reading that carried the condition over and found `forbid c` later on
    # that line accepted the file.
    ("permit a: x:y when context.a == 1 or\ncontext.b == 2 forbid c: x:y\n",
     [("E003", 1, 37), ("E005", 2, 1)]),
    ('agent "a" {\nk = 1 } permit b: x:y\n', [("E003", 1, 12), ("E005", 2, 1)]),
    ("role \nr: pay:*agent \"bot\": r\n", [("E003", 1, 5), ("E005", 2, 1)]),
])
def test_an_unindented_line_starts_a_statement_whatever_follows_on_it(
        text: str, errors: list[tuple[str, int, int]]) -> None:
    for source in (text, text + "bogus\n"):  # the same reading with another error around
        with pytest.raises(PolicyError) as info:
            parse(source)
        found = [(p.code, p.line, p.column) for p in info.value.errors]
        assert found[:len(errors)] == errors, source


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c"])
def test_only_newline_ends_a_line_in_error_reports(sep: str) -> None:
    # A Unicode line separator in a comment ends no line, and is E013 there (what an
    # editor shows after it on a line of its own would be comment). The report of the
    # next line names the character at line 2 column 33 and shows line 2 under its number.
    with pytest.raises(PolicyError) as info:
        parse(f"# c{sep} x\npermit p: a:b when context.a == 'v'\n")
    first, second = info.value.errors
    assert (first.code, first.line, first.column) == ("E013", 1, 4)
    assert "inside a comment" in first.message
    assert (second.code, second.line, second.column) == ("E001", 2, 33)
    assert second.message == "unexpected character \"'\""
    assert second.hint == 'strings use double quotes: "text"'
    assert second.excerpt.splitlines()[0] == "   2 | permit p: a:b when context.a == 'v'"
    # the excerpt of line 1 shows the character as a symbol, on one line
    assert len(first.excerpt.splitlines()) == 2


def test_error_excerpts_of_crlf_files_show_the_line_without_its_cr() -> None:
    with pytest.raises(PolicyError) as info:
        parse("role r: a:b\x0c # c x\r\nrole s: c:d\r\npermit p: a:b when context.a == 1 &&\r\n")
    (problem,) = info.value.errors
    assert (problem.line, problem.column) == (3, 35)
    assert problem.excerpt.splitlines()[0] == "   3 | permit p: a:b when context.a == 1 &&"


def test_an_indented_tz_line_is_the_budgets_not_the_files() -> None:
    pf = parse('budget b: llm:* limit 5 EUR per day\n  tz "America/New_York"\n'
               'budget c: x:* limit 5 EUR per day\n')
    b, c = pf.statements
    assert isinstance(b, ast.BudgetDecl) and isinstance(c, ast.BudgetDecl)
    assert (b.tz, c.tz) == ("America/New_York", None)
    assert not any(isinstance(st, ast.TzDecl) for st in pf.statements)
    with pytest.raises(PolicyError) as info:  # no tz option there: not the file's zone
        parse('role r: a:b\n  tz "UTC"\n')
    assert [(p.code, p.line, p.column) for p in info.value.errors] == [("E002", 2, 3)]
    assert [type(st) for st in parse('tz "UTC"\nrole r: a:b\n').statements] == [
        ast.TzDecl, ast.RoleDecl]


@pytest.mark.parametrize("ch", ["\u3000", "\u00a0", "\x0b", "\x1c", "\u2028"])
@pytest.mark.parametrize("where", ["first", "after"])
def test_a_line_of_non_language_whitespace_is_e001_wherever_it_stands(ch: str,
                                                                        where: str) -> None:
    # Only space, tab, \f, \r and \n are whitespace; a line holding nothing but another
    # blank-looking character used to be skipped before the first statement.
    text = f"{ch}\nrole r: a:b\n" if where == "first" else f"role r: a:b\n{ch}\n"
    with pytest.raises(PolicyError) as info:
        parse(text)
    line = 1 if where == "first" else 2
    assert [(p.code, p.line, p.column) for p in info.value.errors] == [("E001", line, 1)]


def test_bom_and_crlf_are_accepted() -> None:
    pf = parse("\ufeffrole r: a:b\r\nagent \"x\": r\r\n".encode())
    assert ast_key(pf.statements) == ast_key(
        (ast.RoleDecl("r", ("a:b",)), ast.AgentDecl("x", ("r",))))


def test_empty_and_comment_only_files_parse() -> None:
    assert parse("").statements == ()
    assert parse("# only\n\n").statements == ()
    assert parse("   \n\t\n").statements == ()


def test_design_travel_lines_are_accepted_as_written() -> None:
    text = '''namespace travel
role travel: flights:*, hotels:book, payments:refund      # a role grants permission patterns
agent "travel-agent": travel                              # an agent holds roles
forbid sanctioned: * when context.country in ["KP", "IR", "SY"]
approval bulk-delete: tickets:delete when context.count > 10  # the general form
permit weekday-booking: flights:book for role travel when context.weekday < 5
'''
    pf = parse(text)
    assert [type(s).__name__ for s in pf.statements] == [
        "NamespaceDecl", "RoleDecl", "AgentDecl", "Rule", "Rule", "Rule"]
    assert len(pf.comments) == 3


def test_keyword_terminals_are_the_grammars_word_terminals() -> None:
    """The keyword list the parser is built with is what the grammar defines."""
    import re

    from policyengine.lang._parser import KEYWORD_TERMINALS, _lark

    words = {t.name for t in _lark().terminals
             if re.fullmatch(r"[a-z_|?:()]+", t.pattern.value.replace("(?:", ""))
             and any(c.isalpha() for c in t.pattern.value)}
    # Terminals mixing keywords with other shapes (``UNIT`` also takes a currency code).
    mixed = {"METHOD", "ROOT", "STRATEGY", "UNIT"}
    assert words | mixed == KEYWORD_TERMINALS


# What a process's parse() gives: the statements of a policy, and the problems of a
# keyword glued to a word (the lexer's boundary check, which a cached parser must keep).
PARSE_IN_A_NEW_PROCESS = """
import json, policyengine as pe
ok = pe.parse("permit p: a:b when context.x == 1\\nrole r: a:*\\n")
try:
    pe.parse("permit p: a:b whenx context.x == 1")
    glued = None
except pe.PolicyError as err:
    glued = [(p.code, p.line, p.column) for p in err.problems]
print(json.dumps({"statements": [type(s).__name__ for s in ok.statements],
                  "glued": glued}))
"""


def _parse_in_a_new_process(cache_home: Path, no_cache: bool = False) -> object:
    """``pe.parse`` in a fresh process (the parser is built, or loaded from the cache,
    once per process) with ``XDG_CACHE_HOME`` at ``cache_home``."""
    env = {k: v for k, v in os.environ.items() if k != "POLICYENGINE_NO_CACHE"}
    env["XDG_CACHE_HOME"] = str(cache_home)
    if no_cache:
        env["POLICYENGINE_NO_CACHE"] = "1"
    done = subprocess.run([sys.executable, "-c", PARSE_IN_A_NEW_PROCESS], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _cached(cache_home: Path) -> list[Path]:
    return sorted((cache_home / "policyengine").glob("*"))


def test_parser_tables_are_cached_only_in_a_private_folder(tmp_path: Path) -> None:
    uncached = _parse_in_a_new_process(tmp_path / "none", no_cache=True)
    assert uncached == {"statements": ["Rule", "RoleDecl"], "glued": [["E002", 1, 15]]}
    assert not (tmp_path / "none" / "policyengine").exists()  # POLICYENGINE_NO_CACHE=1
    assert _parse_in_a_new_process(tmp_path) == uncached  # builds the tables, keeps them
    (cache,) = _cached(tmp_path)
    assert cache.stat().st_size > 0
    assert os.stat(tmp_path / "policyengine").st_mode & 0o077 == 0
    written = cache.stat().st_mtime_ns
    assert _parse_in_a_new_process(tmp_path) == uncached  # loads them: parses the same
    assert cache.stat().st_mtime_ns == written
    # A folder others can write to is never used (the cache is a pickle).
    cache.unlink()
    os.chmod(tmp_path / "policyengine", 0o777)
    try:
        assert _parse_in_a_new_process(tmp_path) == uncached
        assert _cached(tmp_path) == []
    finally:
        os.chmod(tmp_path / "policyengine", 0o700)


def test_a_corrupt_parser_cache_is_rebuilt(tmp_path: Path) -> None:
    expected = _parse_in_a_new_process(tmp_path)
    (cache,) = _cached(tmp_path)
    cache.write_bytes(b"not a cache\n\x80\x04garbage")
    assert _parse_in_a_new_process(tmp_path) == expected
    assert b"garbage" not in cache.read_bytes() and cache.stat().st_size > 100


@pytest.mark.parametrize("subject", ["workspace", "app", "workflow", "toolset",
                                     "context.run_id", "context._session2"])
def test_budget_subjects_of_the_cycles_hierarchy_and_request_fields(subject: str) -> None:
    from policyengine.lang import format_source
    text = f"budget b: llm:* limit 5 USD per day per {subject}\n"
    (st_,) = parse(text).statements
    assert isinstance(st_, ast.BudgetDecl) and st_.subject == subject
    assert format_source(text) == text


@pytest.mark.parametrize("bad", ["per context.", "per context.1x", "per context.a.b",
                                 "per principal.id", "per team"])
def test_budget_subjects_that_are_not_subjects(bad: str) -> None:
    with pytest.raises(PolicyError):
        from policyengine import Engine
        Engine.from_source(f"budget b: llm:* limit 5 USD per day {bad}\n")


def test_price_statements_parse_and_format() -> None:
    from policyengine.lang import format_source
    text = ('price "openai" "gpt-4o": input 2.50 USD, cached_input 1.25 USD, output 10 USD '
            'per 1M tokens\nprice "*" "*": output 4 USD, input 1 USD per 1000 tokens\n')
    first, second = parse(text).statements
    assert isinstance(first, ast.PriceDecl) and isinstance(second, ast.PriceDecl)
    assert (first.provider, first.model, first.per) == ("openai", "gpt-4o", 10**6)
    assert first.items == (("input", Decimal("2.50"), "USD"),
                           ("cached_input", Decimal("1.25"), "USD"),
                           ("output", Decimal(10), "USD"))
    assert (second.per, second.per_text) == (1000, "1000")
    assert format_source(text) == text


@pytest.mark.parametrize("bad", [
    'price "a" "b": input 1 USD per 1M tokens',                     # no output
    'price "a" "b": input 1 USD, input 2 USD, output 1 USD per 1M tokens',
    'price "a" "b": input 1 USD, output 1 EUR per 1M tokens',       # two currencies
    'price "a" "b": input 1 JPY, output 1 JPY per 1M tokens',       # no cents
    'price "a" "b": input 1 USD, output 1 USD per 0 tokens',
    'price "a" "b": input 1 USD, output 1 USD per 1M tokens\n'
    'price "a" "b": input 2 USD, output 2 USD per 1M tokens',       # twice
])
def test_bad_prices_are_policy_errors(bad: str) -> None:
    from policyengine import Engine
    with pytest.raises(PolicyError) as err:
        Engine.from_source(bad + "\n")
    assert err.value.errors[0].code == "E141"


def test_budget_caps_parse_and_format() -> None:
    from policyengine.lang import format_source
    text = ("budget b: llm:* limit 1000 tokens per day per agent cap max_tokens 400 "
            "cap cooldown_ms 50\n")
    (st_,) = parse(text).statements
    assert isinstance(st_, ast.BudgetDecl)
    assert st_.caps == (("max_tokens", 400), ("cooldown_ms", 50))
    assert format_source(text) == text


def test_the_builder_takes_no_child_by_position() -> None:
    """Issue 10 item 4: the tree-to-AST builder finds a node's parts by name (terminal
    type, rule or alias: ``_Parts``), or, for an operator's operands, as its subtrees in
    source order (``_subtrees``, which checks the count). No ``x.children[i]`` and no
    ``a, b = x.children``: such code reads a token where a new optional part shifts it."""
    import ast as pyast
    from pathlib import Path

    import policyengine.lang._parser as parser_module
    tree = pyast.parse(Path(parser_module.__file__).read_text("utf-8"))

    def children(node: pyast.AST) -> bool:
        return isinstance(node, pyast.Attribute) and node.attr == "children"

    found = [f"line {n.lineno}" for n in pyast.walk(tree)
             if (isinstance(n, pyast.Subscript) and children(n.value))
             or (isinstance(n, pyast.Assign) and children(n.value)
                 and isinstance(n.targets[0], (pyast.Tuple, pyast.List)))]
    assert not found, found
