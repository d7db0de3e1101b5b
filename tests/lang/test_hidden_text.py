"""Text that reads otherwise than it shows ("Trojan Source", CVE-2021-42574): a bidirectional
control, an invisible format character or a control character (ESC, DEL, C1) inside a
comment, a string or a JSONPath is E014 at the character, so a reviewer never approves
one policy while the engine runs another. A string writes such a character as an escape
(and `fmt` does); names are ASCII; no error report or `fmt` output prints one raw.
"""

from __future__ import annotations

import sys
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine import Engine
from policyengine.cli import main
from policyengine.lang import PolicyError, ast, format_source, parse
from policyengine.lang._source import HIDDEN, LINE_BREAKS, UNSEEN, visible

BIDI = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068",
        "\u2069", "\u200e", "\u200f", "\u061c"]
OTHERS = ["\x1b", "\x01", "\x07", "\x08", "\x1f", "\x7f", "\x80", "\x9b", "\u200b", "\u200c",
          "\u200d", "\u2060", "\u00ad", "\ufeff", "\U000e0041", "\U0001d173"]
HIDDEN_EXAMPLES = BIDI + OTHERS
# What a terminal must never receive raw from an error report or from fmt.
RAW = st.sampled_from([*HIDDEN_EXAMPLES, "\r", "\x0b", "\x85", "\u2028", "\u2029"])


def errors(text: str | bytes) -> list[tuple[str, int, int]]:
    with pytest.raises(PolicyError) as info:
        parse(text, "p.policy")
    return [(p.code, p.line, p.column) for p in info.value.errors]


def parse_error(text: str) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        parse(text, "p.policy")
    return info.value


def unshown(text: str) -> list[str]:
    """Characters of ``text`` a terminal would not show as they are (lines end at \\n)."""
    return [ch for ch in text if HIDDEN.match(ch) or ch in "\r\x85\u2028\u2029"]


def test_the_class_is_every_control_and_format_character_but_tab_lf_cr() -> None:
    # HIDDEN_CHARS is written out (building it at import would walk all of Unicode):
    # it must be Unicode's categories Cc and Cf as this Python's database has them, and
    # holds besides only the Egyptian hieroglyph format controls Unicode 15.0 added.
    want = {chr(c) for c in range(sys.maxunicode + 1)
            if unicodedata.category(chr(c)) in ("Cc", "Cf")} - {"\t", "\n", "\r"}
    got = {chr(c) for c in range(sys.maxunicode + 1) if HIDDEN.match(chr(c))}
    assert not want - got, sorted(f"U+{ord(c):04X}" for c in want - got)
    assert got - want <= {chr(c) for c in range(0x13439, 0x13440)}



def test_the_line_breaks_are_where_splitlines_breaks_but_at_lf() -> None:
    """LINE_BREAKS (E013) is one definition the parser, quote() and visible() all read:
    it is every character str.splitlines() ends a line at but "\\n", and UNSEEN (what
    the parser looks for inside comments, strings and JSONPaths, and quote() escapes)
    is HIDDEN with those of them that are no control character, never the "\\r"."""
    everything = [chr(c) for c in range(sys.maxunicode + 1)]
    assert set(LINE_BREAKS) == {ch for ch in everything
                                if len(f"a{ch}b".splitlines()) == 2} - {"\n"}
    hidden = {ch for ch in everything if HIDDEN.match(ch)}
    assert {ch for ch in everything if UNSEEN.match(ch)} == \
        (hidden | set(LINE_BREAKS)) - {"\r"}
    for ch, name in LINE_BREAKS.items():
        shown = visible(f"a{ch}b")
        assert len(shown) == 3 and ch not in shown  # one column, never raw
        text = f"role r: x:*  # a{ch}b\n"  # raw in a comment: E013 on it, named
        (problem,) = parse_error(text).errors
        assert (problem.code, problem.column) == ("E013", text.index(ch) + 1)
        assert problem.message.startswith(f"a {name} (U+{ord(ch):04X})")

# ---- the attacks -------------------------------------------------------------------------

ROLES = 'role r: x:*\nagent "bot": r\n'


def test_a_comment_that_shows_a_live_forbid_is_refused() -> None:
    # Displayed with the bidi algorithm, the comment's text reorders so that
    # "forbid f: x:delete" looks like code after it; the engine reads only the permit.
    text = ROLES + "permit all: x:*  # ok \u202e\u2066 forbid f: x:delete\u2069\u2066\n"
    assert errors(text) == [("E014", 3, len("permit all: x:*  # ok ") + 1)]
    with pytest.raises(PolicyError):
        Engine.from_source(text)


def test_a_string_that_shows_as_admin_but_is_not_is_refused() -> None:
    for shown in ('"\u202enimda"', '"admin\u200b"', '"ad\u00admin"', '"adm\x1b[0min"'):
        text = f'role r: x:*\nagent {shown}: r\n'
        found = errors(text)
        assert len(found) == 1 and found[0][:2] == ("E014", 2)
        assert HIDDEN.match(text.split("\n")[1][found[0][2] - 1])


def test_an_escape_sequence_in_a_comment_cannot_hide_the_rest_of_the_line() -> None:
    # ESC [ 8 m makes what follows invisible on a terminal; ESC [ 2 K erases the line.
    for seq in ("\x1b[8m", "\x1b[2K\r", "\x1b]8;;x\x07"):
        assert errors(ROLES + f"permit p: x:*  # {seq}forbid f: x:delete\n") == [
            ("E014", 3, len("permit p: x:*  # ") + 1)]


# ---- where: comments, strings, JSONPaths are E014; elsewhere E001 -------------------------

PLACES = [
    # (text with {c} where the character goes) -- its line is the last one with {c}
    "# a comment {c} line\nrole r: x:*\n",
    "role r: x:*  # trailing {c} comment\n",
    'role r: x:*\nagent "a{c}b": r\n',
    'permit p: x:* when context.a == "v{c}"\n',
    'permit p: x:* when context["k{c}"] == 1\n',
    'tool t: function "f" -> a:b {{\n  redact $.card{c} mask\n}}\n',
    "log redact $['a{c}b'] mask\n",
    'tool t: http "h.example" {{\n  POST "/x{c}" -> a:b\n}}\n',
]


@pytest.mark.parametrize("ch", HIDDEN_EXAMPLES, ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize("place", PLACES)
def test_inside_a_comment_string_or_jsonpath_it_is_e014_on_the_character(
        place: str, ch: str) -> None:
    text = place.format(c=ch)
    lines = text.split("\n")
    line = next(i for i, s in enumerate(lines, 1) if ch in s)
    col = lines[line - 1].index(ch) + 1
    if ch == "\x1f" and "$" in place:
        # U+001F is a space to the grammar's regex: it ends an unquoted path, and stands
        # outside it (E001), at the same place
        assert errors(text) == [("E001", line, col)]
        return
    assert errors(text) == [("E014", line, col)]


@pytest.mark.parametrize("ch", HIDDEN_EXAMPLES, ids=lambda c: f"U+{ord(c):04X}")
def test_between_tokens_it_is_e001_with_a_hint_and_shown_escaped(ch: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse(f"role r: x:* {ch}\n")
    (p,) = info.value.errors
    if ch == "\x1f":  # the grammar's regex reads it as a space: what follows is no token
        assert p.code == "E001"
        return
    assert (p.code, p.line, p.column) == ("E001", 1, 13)
    assert p.hint is not None and f"U+{ord(ch):04X}" in p.hint
    assert not unshown(p.render())


def test_the_message_names_the_character_and_the_hint_its_escape() -> None:
    with pytest.raises(PolicyError) as info:
        parse('agent "a\u202eb": r\n')
    (p,) = info.value.errors
    assert p.message.startswith("a bidirectional control (U+202E RIGHT-TO-LEFT OVERRIDE) "
                                "inside a string")
    assert p.hint == "remove it, or write it as the escape \\u202e"
    with pytest.raises(PolicyError) as info:
        parse("role r: x:*  # \x1b[8m\n")
    assert info.value.errors[0].message.startswith("an escape character (U+001B")
    with pytest.raises(PolicyError) as info:
        parse('agent "a\U000e0041": r\n')
    assert info.value.errors[0].hint is not None
    assert info.value.errors[0].hint.endswith("\\udb40\\udc41")  # a surrogate pair's escapes


def test_the_line_breaks_of_e013_keep_their_code() -> None:
    assert errors('agent "a\u2028b": r\n') == [("E013", 1, 9)]
    # the first of the line wins, whichever code it has
    assert errors('agent "a\u202eb\u2028": r\n') == [("E014", 1, 9)]
    assert errors('agent "a\u2028b\u202e": r\n') == [("E013", 1, 9)]
    assert errors("role r: x:*  # \u202e\rx\n") == [("E014", 1, 16)]
    assert errors("role r: x:*  # a\rx\u202e\n") == [("E013", 1, 17)]


def test_tab_stays_what_it_was() -> None:
    # whitespace, and fine in a comment; raw in a string it must be escaped (E009)
    parse("role r: x:*\t#\ta note\n")
    assert errors('agent "a\tb": r\n') == [("E009", 1, 7)]


# ---- what a policy writes instead ------------------------------------------------------

@pytest.mark.parametrize("ch", HIDDEN_EXAMPLES, ids=lambda c: f"U+{ord(c):04X}")
def test_an_escape_reads_and_fmt_keeps_it_an_escape(ch: str) -> None:
    escaped = ast.u_escape(ch)
    text = f'role r: x:*\nagent "a{escaped}b": r\ntool t: function "f" -> a:b {{\n' \
           f'  redact "$.k{escaped}" mask\n}}\n'
    pf = parse(text)
    agent = pf.statements[1]
    assert isinstance(agent, ast.AgentDecl) and agent.id == f"a{ch}b"
    out = format_source(text)
    assert not unshown(out)
    assert parse(out).statements == pf.statements
    assert format_source(out) == out


@settings(max_examples=300, deadline=None)
@given(value=st.text(alphabet=st.one_of(RAW, st.characters(codec="utf-8")), max_size=12))
def test_quote_never_writes_a_hidden_character_and_reads_back(value: str) -> None:
    literal = ast.quote(value)
    assert not unshown(literal)
    (agent,) = parse(f"agent {literal}: r\n").statements
    assert isinstance(agent, ast.AgentDecl) and agent.id == value
    out = format_source(f"agent {literal}: r\n")
    assert not unshown(out)


# ---- never printed raw -------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(place=st.sampled_from([*PLACES, "role r: x:* {c}\n", "permit {c}p: a:b\n"]),
       chars=st.lists(RAW, min_size=1, max_size=3), pad=st.integers(0, 250))
def test_no_error_report_prints_a_hidden_character_and_the_caret_is_on_it(
        place: str, chars: list[str], pad: int) -> None:
    text = ("#" + "x" * pad + "\n") + place.format(c="".join(chars))
    try:
        parse(text)
    except PolicyError as err:
        assert not unshown(err.render())
        assert not unshown(str(err))
        for p in err.errors:
            assert not unshown(p.message) and not unshown(p.hint or "")
            if p.code in ("E013", "E014"):
                src, caret = p.excerpt.split("\n")
                shown = src[caret.index("^"):]
                assert shown.startswith("<U+") or shown[0] in "\u240d\u240b\u240c\u2424", \
                    p.excerpt
        return
    assert set(unshown(text.replace("\r\n", "\n"))) == set()  # only a CRLF line end loads


def test_a_long_line_keeps_the_caret_on_the_character() -> None:
    text = "role r: x:*  # " + "\u202e" * 300 + "x\u200by\n"
    with pytest.raises(PolicyError) as info:
        parse(text)
    (p,) = info.value.errors
    assert (p.code, p.column) == ("E014", 16)
    src, caret = p.excerpt.split("\n")
    assert src[caret.index("^"):].startswith("<U+202E>")


def test_a_message_quoting_policy_text_shows_escapes() -> None:
    # The host is a string with an escaped ESC: valid text, an invalid host. The
    # checker's message quotes it; the report shows it as <U+001B>, never raw.
    with pytest.raises(PolicyError) as info:
        Engine.from_source('tool t: http "a\\u001b[2J.example" {\n  GET "/x" -> a:b\n}\n')
    report = info.value.render()
    assert "E121" in report and "<U+001B>[2J" in report and "\x1b" not in report
    assert "\x1b" not in str(info.value)


def test_cli_check_and_fmt_print_no_hidden_character(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad\x1b[2J.policy"
    bad.write_text(ROLES + "permit p: x:*  # \u202e forbid f: x:delete\n", "utf-8")
    assert main(["check", str(bad)]) == 1
    captured = capsys.readouterr()
    assert "error[E014]" in captured.err and "<U+202E>" in captured.err
    assert not unshown(captured.out + captured.err)
    ok = tmp_path / "ok.policy"
    ok.write_text('role r: x:*\nagent "a\\u202e\\u001b\\u00ad": r\n', "utf-8")
    assert main(["fmt", str(ok)]) == 0
    written = ok.read_text("utf-8")
    assert not unshown(written) and parse(written).statements[1] == parse(
        'role r: x:*\nagent "a\\u202e\\u001b\\u00ad": r\n').statements[1]


# ---- names are ASCII ---------------------------------------------------------------------

CYRILLIC_A = "\u0430"  # looks like "a"


@pytest.mark.parametrize("text", [
    "namespace {a}pp\n",
    "role {a}dmin: x:*\n",
    "role r: {a}dmin:*\n",
    "role r: x:re{a}d\n",
    "permit {a}llow: x:*\n",
    "permit p: x:* for role {a}dmin\n",
    "permit p: x:* when context.{a}mount > 1\n",
    "currency EUR\nrate US{a} 1\n",
    "schema x:* {{ {a}mount: int }}\n",
    "resource {a}ccount \"1\"\n",
])
def test_names_are_ascii_a_look_alike_letter_is_e001(text: str) -> None:
    text = text.format(a=CYRILLIC_A)
    lines = text.split("\n")
    line = next(i for i, s in enumerate(lines, 1) if CYRILLIC_A in s)
    found = errors(text)[0]
    if found[0] == "E002":  # `US<a>` is no currency code: the word before it is unexpected
        assert found[1] == line
        return
    assert found == ("E001", line, lines[line - 1].index(CYRILLIC_A) + 1)
