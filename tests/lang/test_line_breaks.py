"""Edges of the text a policy is read from, where a mistake would hide policy: a `#` in an
unquoted JSONPath (E012), line breaks of other tools (a lone `\\r`, U+2028...: E013, never a
comment or a string that swallows the rules after it), and the positions of errors in a
chain of `not` (E003 after its last token, E007 on the `not` past the limit).

Each newline style either reads as the file it is written as (`\\n`, `\\r\\n`: the same
statements, the same decisions) or is refused with a code and a position.
"""

from __future__ import annotations

import pytest
from conftest import ast_key
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from policyengine import Engine
from policyengine.lang import MAX_NESTING, PolicyError, ast, format_source, parse
from policyengine.tools._redaction import JsonPath


def errors(text: str | bytes) -> list[tuple[str, int, int]]:
    with pytest.raises(PolicyError) as info:
        parse(text, "p.policy")
    return [(p.code, p.line, p.column) for p in info.value.errors]


# ---- `#` in an unquoted JSONPath ---------------------------------------------------------

@pytest.mark.parametrize(("text", "where"), [
    ("log redact $.card#note mask\n", (1, 18)),
    ("log redact $.card#note\n", (1, 18)),           # no strategy: E012, not E003
    ("log redact $..email#hash\n", (1, 20)),
    ("log redact $.a#b partial 4\n", (1, 15)),
    ('tool t: function "f" -> a:b { redact $.x#y mask }\n', (1, 41)),
    ('tool t: function "f" -> a:b {\n  redact $.x#y mask\n}\n', (2, 13)),
    ('tool t: function "f" -> a:b {\n  amount = $.x#y\n}\n', (2, 15)),
    ('tool t: http "h.example" {\n  POST "/x" -> a:b { amount = $.a#b }\n}\n', (2, 34)),
    ("log redact $['a'].b#c mask\n", (1, 20)),
])
def test_a_sharp_in_an_unquoted_jsonpath_is_e012_on_the_sharp(text: str,
                                                               where: tuple[int, int]) -> None:
    found = errors(text)
    assert found == [("E012", *where)]
    line = text.split("\n")[where[0] - 1]
    assert line[where[1] - 1] == "#"


def test_e012_says_what_to_write() -> None:
    with pytest.raises(PolicyError) as info:
        parse("log redact $.card#note mask\n")
    (p,) = info.value.errors
    assert p.message == "'#' inside an unquoted JSONPath"
    assert p.hint is not None and '"$.card#note"' in p.hint


@pytest.mark.parametrize(("text", "path", "comments"), [
    ("log redact $['a#b'] mask\n", "$['a#b']", ()),
    ('log redact $["a#b"] mask\n', '$["a#b"]', ()),
    ("log redact $.card mask # $.x#y\n", "$.card", ("# $.x#y",)),
    ("log redact $.card mask#note\n", "$.card", ("#note",)),
    ('log redact "$[\'a#b\']" mask  # quoted\n', "$['a#b']", ("# quoted",)),
])
def test_a_sharp_the_path_quotes_or_after_the_path_reads_as_written(
        text: str, path: str, comments: tuple[str, ...]) -> None:
    pf = parse(text)
    (st_,) = pf.statements
    assert isinstance(st_, ast.LogRedact) and st_.path == path
    assert tuple(c.text for c in pf.comments) == comments
    # and fmt keeps it: no second reading of the `#` as a comment
    assert parse(format_source(text)).statements[0] == st_


KEY = st.text(alphabet="ab#_ .'\"\\", min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(key=KEY, form=st.sampled_from(["dot", "single", "double"]),
       tail=st.sampled_from(["", "  # note", "# note", " #"]))
def test_redaction_never_covers_less_than_written(key: str, form: str, tail: str) -> None:
    # Written any way, a redact line either is refused or redacts the path as written:
    # never a shorter path with the rest taken for a comment, never a comment taken
    # for part of the path.
    assume(form != "dot" or " " not in key)  # a space ends an unquoted path: by design
    written = {"dot": f"$.{key}", "single": f"$['{key}']", "double": f'$["{key}"]'}[form]
    text = f'tool t: function "f" -> a:b {{\n  redact {written} mask{tail}\n}}\n'
    try:
        engine = Engine.from_source(text)
    except PolicyError as err:
        assert err.errors and all(p.line in (1, 2, 3) for p in err.errors)
        return
    (tool,) = parse(text).statements
    assert isinstance(tool, ast.NamedTool)
    (redact,) = tool.items
    assert isinstance(redact, ast.Redact) and redact.path == written
    doc = {key: "secret"}
    if JsonPath.compile(written).find(doc) == ["secret"]:
        d = engine.tool_authorize("anyone", transport="function", function_name="f",
                                  body=doc)
        if d.body is not None:  # not allowed (no role): whatever leaves is redacted
            assert d.body[key] != "secret"


# ---- line breaks -------------------------------------------------------------------------

POLICY_LINES = (
    "namespace shop  # the namespace",
    "role buyer: shop:*",
    'agent "bot": buyer   # one agent',
    "# a comment line",
    "permit buy: shop:buy when context.n < 5",
    "forbid big: shop:* when context.n > 100  # deny rules must survive",
    "forbid del: shop:delete",
    "",
)
REQUESTS = (
    ("bot", "shop:buy", {"n": 1}), ("bot", "shop:buy", {"n": 200}),
    ("bot", "shop:delete", {"n": 1}), ("bot", "shop:view", {"n": 1}),
    ("other", "shop:buy", {"n": 1}),
)


def decisions(engine: Engine) -> list[tuple[str, str]]:
    out = []
    for principal, permission, context in REQUESTS:
        d = engine.authorize(principal, permission, context)
        out.append((d.status, d.code))
    return out


BASE = "\n".join(POLICY_LINES) + "\n"


@settings(max_examples=60, deadline=None)
@given(order=st.permutations(POLICY_LINES[1:]), bom=st.booleans(),
       crlf=st.lists(st.booleans(), min_size=len(POLICY_LINES), max_size=len(POLICY_LINES)))
def test_lf_and_crlf_read_the_same_statements_and_decide_the_same(
        order: list[str], bom: bool, crlf: list[bool]) -> None:
    lines = [POLICY_LINES[0], *order]
    lf = "".join(line + "\n" for line in lines)
    mixed = ("\ufeff" if bom else "") + "".join(
        line + ("\r\n" if c else "\n") for line, c in zip(lines, crlf, strict=True))
    assert ast_key(parse(mixed).statements) == ast_key(parse(lf).statements)
    assert [c.text for c in parse(mixed).comments] == [c.text for c in parse(lf).comments]
    assert decisions(Engine.from_source(mixed)) == decisions(Engine.from_source(lf))
    assert decisions(Engine.from_source(mixed.encode())) == decisions(Engine.from_source(BASE))


@pytest.mark.parametrize("sep", ["\r", "\u2028", "\u2029", "\x85", "\x0b", "\x1c"])
def test_other_line_breaks_never_load_the_policy(sep: str) -> None:
    # Joined with one of these, the same file is one line to the language: it is refused
    # (E013 where a comment or string would swallow what follows, E001 elsewhere), so
    # no deny rule is ever dropped into a comment.
    text = sep.join(POLICY_LINES)
    with pytest.raises(PolicyError) as info:
        Engine.from_source(text)
    codes = {p.code for p in info.value.errors}
    assert codes <= {"E013", "E001", "E002", "E003"} and codes & {"E013", "E001"}
    first = info.value.errors[0]
    assert first.line == 1
    assert len(first.excerpt.splitlines()) == 2  # the excerpt is one line and its caret


def test_a_cr_only_file_is_e013_on_its_first_cr() -> None:
    text = "\r".join(POLICY_LINES)
    assert errors(text)[0] == ("E013", 1, len(POLICY_LINES[0]) + 1)
    with pytest.raises(PolicyError) as info:
        parse(text)
    p = info.value.errors[0]
    assert p.message.startswith("a carriage return (U+000D) not followed by a line feed")
    assert "\r" not in p.excerpt and "\u240d" in p.excerpt


@pytest.mark.parametrize("ending", ["\r\n", "\r"])
def test_a_lone_cr_before_a_line_ending_is_shown_under_the_caret(ending: str) -> None:
    """The excerpt drops only the line's own ending: a lone \\r just before a \\r\\n
    (or at the end of the file) is the character E013 points at, and the caret sits
    under its symbol (found by hypothesis: the caret stood past the end of the line)."""
    with pytest.raises(PolicyError) as info:
        parse("role r: x:* \r" + ending)
    p = info.value.errors[0]
    assert (p.code, p.line, p.column) == ("E013", 1, 13)
    line, caret = p.excerpt.split("\n")
    assert line[caret.index("^")] == "\u240d"
    assert "\r" not in p.excerpt


BREAKS = ["\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("sep", BREAKS)
def test_a_line_break_in_a_comment_never_swallows_a_rule(sep: str) -> None:
    text = f"role r: a:*\nagent \"bot\": r\npermit p: a:*\n# note{sep}forbid f: a:delete\n"
    assert errors(text) == [("E013", 4, 7)]
    # after a statement on its line too
    text = f"role r: a:*\nagent \"bot\": r\npermit p: a:*  # note{sep}forbid f: a:delete\n"
    assert errors(text) == [("E013", 3, 22)]


@pytest.mark.parametrize("sep", ["\r", "\x85", "\u2028", "\u2029"])
def test_a_raw_line_break_in_a_string_is_e013_its_escape_reads(sep: str) -> None:
    assert errors(f'agent "a{sep}forbid": r\nrole r: x:y\n') == [("E013", 1, 9)]
    escaped = f'agent "a\\u{ord(sep):04x}b": r\nrole r: x:y\n'
    (agent, _) = parse(escaped).statements
    assert isinstance(agent, ast.AgentDecl) and agent.id == f"a{sep}b"
    out = format_source(escaped)
    assert sep not in out and parse(out).statements[0] == agent  # fmt keeps the escape


def test_a_form_feed_between_tokens_is_whitespace() -> None:
    # (a page break on its own line, as editors write it; before a word it indents it)
    pf = parse("\x0c\nrole r: a:b\x0c # page\r\n\x0c\r\nrole s: c:d\n")
    assert [type(s) for s in pf.statements] == [ast.RoleDecl, ast.RoleDecl]


def test_a_crlf_files_errors_count_lines_and_columns_as_its_lf_twin() -> None:
    lf = "role r: a:b  # c\n\npermit p: a:b when context.a == 'v'\nforbid f: x:y when\n"
    crlf = lf.replace("\n", "\r\n")
    assert errors(crlf) == errors(lf) == [("E001", 3, 33), ("E003", 4, 19)]


def test_nul_and_bom_positions() -> None:
    assert errors("role r: a:b\r\nrole \x00s: c:d\r\n") == [("E008", 2, 6)]
    # a byte order mark is no column: the bad byte is at column 6 with or without one
    assert errors(b"\xef\xbb\xbfrole \xff") == errors(b"role \xff") == [("E008", 1, 6)]
    with pytest.raises(PolicyError) as info:
        parse(b"\xef\xbb\xbfrole \xff")
    assert "\ufeff" not in info.value.errors[0].excerpt
    assert errors("\ufeffrole r: a:b c\n") == errors("role r: a:b c\n")


# ---- `not` chains ------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "where"), [
    ("permit a: x:y when not not\n", (1, 27)),
    ("permit a: x:y when not not # why\n", (1, 27)),
    ("permit a: x:y when not\n  not  # why\n\n  # more\n", (2, 6)),
    ("permit a: x:y when not not\r\n  # c\r\n", (1, 27)),
    ('permit a: x:y when "#" == not # c\n', (1, 30)),
])
def test_e003_is_just_after_the_last_token_not_after_a_comment(
        text: str, where: tuple[int, int]) -> None:
    assert errors(text) == [("E003", *where)]


def test_a_run_of_not_past_the_limit_is_e007_on_the_not_that_crosses_it() -> None:
    prefix = "permit a: x:y when " + "(" * 60
    text = prefix + "not " * 8 + "true" + ")" * 60 + "\n"
    # 60 brackets, then the fifth `not` is level 65
    assert errors(text) == [("E007", 1, len(prefix) + 4 * 4 + 1)]
    text = "permit a: x:y when " + "not " * (MAX_NESTING + 10) + "true\n"
    assert errors(text) == [("E007", 1, len("permit a: x:y when ") + 4 * MAX_NESTING + 1)]


@pytest.mark.parametrize("gap", ["\n  ", "\r\n  ", " # c\n  ", "\n\n    ", "\x0c"])
def test_a_run_of_not_spanning_lines_counts_too(gap: str) -> None:
    text = "permit a: x:y when\n  " + ("not" + gap) * (MAX_NESTING + 10) + "true\n"
    found = errors(text)
    assert found[0][0] == "E007"
    line, col = found[0][1:]
    assert text.split("\n")[line - 1][col - 1:col + 3].rstrip() == "not"
    # the 65th `not` of the chain, counted from the first
    lines = text.split("\n")
    before = "\n".join(lines[:line - 1]) + "\n" + lines[line - 1][:col - 1]
    assert before.count("not") == MAX_NESTING


def test_a_deep_chain_under_the_limit_is_the_checkers_e007_on_the_node_past_48() -> None:
    text = "permit a: x:y when\n" + "  not\n" * 60 + "  true\n"
    with pytest.raises(PolicyError) as info:
        Engine.from_source(text)
    assert [(p.code, p.line, p.column) for p in info.value.errors] == [("E007", 51, 3)]


def test_nesting_the_splitter_does_not_count_is_e007_on_a_node_not_the_statement() -> None:
    # Runs of `not` between brackets each stay under the splitter's limit but nest far
    # deeper together: the builder's own limit (200 levels) names the `not` past it,
    # where the recursion limit used to give line 1 column 1.
    body = "".join("not " * (62 - i) + "(" for i in range(10)) + "true" + ")" * 10
    text = "permit a: x:y when\n  " + body + "\n"
    (found,) = errors(text)
    starts = [i for i in range(len(body)) if body.startswith("not", i)]
    assert found == ("E007", 2, 3 + starts[200])


def test_lone_and_in_position_nots_nest_no_deeper() -> None:
    # `x not in [...]` and a single `not` after the deepest brackets are fine
    depth = MAX_NESTING - 1
    parse("permit a: x:y when " + "(" * depth + "not context.a not in [1]" + ")" * depth
          + "\n")
    parse("permit not-x: x:y when not context.a\n  not in [1]\n")
