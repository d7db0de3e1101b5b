"""Policy text, hostile or mistaken, gives a PolicyError with a code and a position: fast,
in bounded memory, and never another exception.

What each group tries:

* leaf limits the checker used to miss (budget decimals, rolling windows longer than
  stores keep, counts too large for the unit, ``partial 0``): the checker asks the leaf;
* rates paths that name no regular file (NUL, lone surrogate, a device, a FIFO, a
  directory): refused before any read, so nothing blocks or reads without end;
* size: a 5,000-segment path, a long ``not`` chain, a file without ``namespace``;
* a syntax error in one statement with semantic errors in others: all are reported;
* messages that misled (money vs a context value, ``$end``, a URL as a host, ``//``
  comments, unquoted paths);
* arbitrary text and bytes, and statements built from the grammar's shapes with
  arbitrary numbers: only PolicyError comes out, each load within a time bound.
"""

from __future__ import annotations

import os
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine import Engine, PolicyError
from policyengine.lang import SourceSet, ast, check


def load_error(text: str, **options: object) -> PolicyError:
    start = time.process_time()
    with pytest.raises(PolicyError) as info:
        Engine.from_source(text, "p.policy", **options)  # type: ignore[arg-type]
    assert time.process_time() - start < 5.0
    return info.value


def first(err: PolicyError) -> tuple[str, int, int]:
    e = err.errors[0]
    return e.code, e.line, e.column


# ---- leaf limits --------------------------------------------------------------------

@pytest.mark.parametrize(("text", "code", "words"), [
    ("budget b: a:* limit 10.001 USD per day", "E123", "decimals"),
    ("budget b: a:* limit 2.5 JPY per day", "E123", "decimals"),
    ("budget b: a:* limit 10 USD per rolling 32d", "E125", "31d"),
    ("budget b: a:* limit 10 USD per rolling 2678401s", "E125", "31d"),
    ("budget b: a:* limit 1000000000000000 credits per day", "E123", "too large"),
    ("budget b: a:* limit 1000000000001 credits per day", "E123", "too large"),
])
def test_budget_limits_of_the_leaf_are_policy_errors(text: str, code: str, words: str) -> None:
    err = load_error(text + "\n")
    value = text.split()[-1] if code == "E125" else text.split()[4]  # under the caret
    assert first(err) == (code, 1, text.index(value) + 1)
    assert words in err.errors[0].message


def test_the_longest_rolling_window_and_largest_count_still_load() -> None:
    Engine.from_source("budget b: a:* limit 1000000000000 credits per rolling 31d\n")


def test_partial_zero_is_a_policy_error() -> None:
    err = load_error('tool t: function "f" -> a:b {\n  redact $.card partial 0\n}\n')
    assert first(err) == ("E120", 2, 3)


# ---- rates paths ----------------------------------------------------------------------

@pytest.mark.parametrize("path", ["\\u0000", "x\\u0000.json", "\\ud800.json", "/", ""])
def test_rates_paths_that_name_no_file(path: str) -> None:
    err = load_error(f'currency EUR\nrates "{path}"\n')
    assert first(err) == ("E127", 2, 1)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero on this system")
def test_rates_from_a_device_is_refused_without_reading() -> None:
    err = load_error('currency EUR\nrates "/dev/zero"\n')
    assert first(err) == ("E127", 2, 1)
    assert "regular file" in err.errors[0].message


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_rates_from_a_fifo_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "fx.json"
    os.mkfifo(fifo)
    err = load_error(f'currency EUR\nrates "{fifo}"\n')
    assert first(err) == ("E127", 2, 1)


def test_an_oversized_rates_file_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "fx.json"
    big.write_bytes(b" " * ((1 << 20) + 1))
    err = load_error(f'currency EUR\nrates "{big}"\n')
    assert "larger than" in err.errors[0].message


# ---- size ---------------------------------------------------------------------------

def test_a_5000_segment_path_is_a_policy_error() -> None:
    err = load_error("permit p: a:b when context" + ".a" * 5000 + " == 1\n")
    assert first(err) == ("E007", 1, 20)


def test_the_longest_path_still_compiles() -> None:
    Engine.from_source("permit p: a:b when context" + ".a" * 32 + " == 1\n")


def test_a_long_not_chain_is_refused_fast() -> None:
    start = time.process_time()
    err = load_error("permit p: a:b when " + "not " * 100_000 + "true\n")
    assert time.process_time() - start < 1.0
    assert first(err)[0] == "E007"


def test_checking_a_file_without_namespace_is_linear() -> None:
    # Each id is qualified with the file's namespace; finding it by a scan per statement
    # made this quadratic (40,000 statements: minutes). Linear, it is well under a second.
    n = 40_000
    rules = tuple(ast.Rule("permit", f"p{i}", (f"x{i}:read",)) for i in range(n))
    files = [ast.PolicyFile("p.policy", rules)]
    start = time.process_time()
    problems = check(files, SourceSet())
    assert time.process_time() - start < 10.0
    assert problems == []


# ---- money literals -------------------------------------------------------------------

@pytest.mark.parametrize(("text", "pos"), [
    ("currency USD\nlimit l: a:b amount <= 10.001 USD\n", (2, 24)),
    ("currency JPY\napproval a: a:b over 10.5 JPY\n", (2, 22)),
    ("currency EUR\nrate USD 0.9\npermit p: a:b when amount < 0.001 USD\n", (3, 29)),
])
def test_money_with_more_decimals_than_its_currency(text: str, pos: tuple[int, int]) -> None:
    err = load_error(text)
    assert first(err) == ("E133", *pos)
    assert err.errors[0].hint is not None and "decimal" in err.errors[0].hint


def test_trailing_zeros_are_not_extra_decimals() -> None:
    engine = Engine.from_source('currency USD\nlimit l: a:b amount <= 10.000 USD\n'
                                'permit p: a:b\n')
    assert engine.policy.rules[0].amount_limit == Decimal("10.00")


# ---- one error does not hide another ----------------------------------------------------

def test_a_syntax_error_does_not_hide_other_statements_errors() -> None:
    err = load_error("currency USD\npermit p: a:b when (\nlimit l: a:b amount <= 10.001 USD\n"
                     "budget b: a:* limit 1 USD per rolling 40d\n")
    assert [(e.code, e.line) for e in err.errors] == [("E003", 2), ("E133", 3), ("E125", 4)]


def test_problems_caused_by_a_broken_statement_are_not_reported() -> None:
    # The role declaration is broken: "unknown role" would only repeat that error.
    err = load_error('role r a:b\nagent "x": r\n')
    assert [e.code for e in err.errors] == ["E002"]


# ---- messages -------------------------------------------------------------------------

def test_money_compared_with_a_context_value_points_at_amount() -> None:
    err = load_error("currency EUR\npermit p: a:b when context.amount < 500 EUR\n")
    e = err.errors[0]
    assert (e.code, e.line, e.column) == ("E108", 2, 20)
    assert "context.amount" in e.message and " any" not in e.message
    assert e.hint is not None and "'amount'" in e.hint


def test_money_compared_with_a_number_asks_for_a_currency() -> None:
    e = load_error("currency EUR\npermit p: a:b when amount < 500\n").errors[0]
    assert "a number" in e.message
    assert e.hint is not None and "500 EUR" in e.hint


def test_an_indented_statement_does_not_say_end() -> None:
    e = load_error("namespace x\n  permit p a:b\n").errors[0]
    assert (e.code, e.line, e.column) == ("E002", 2, 3)
    assert "indented" in e.message
    assert "$end" not in str(e.hint)


def test_no_hint_names_a_lark_terminal() -> None:
    for text in ("permit p: a:b extra\n", "role r: a:* b\n", "limit l: a:b amount 5 EUR\n"):
        for e in load_error(text).errors:
            assert "$" not in str(e.hint) and "__ANON" not in str(e.hint), e


@pytest.mark.parametrize("host", ["https://api.example.com", "http://api.example.com/v1"])
def test_a_url_given_as_a_host(host: str) -> None:
    e = load_error(f'tool t: http "{host}" {{\n  GET "/x" -> a:b\n}}\n').errors[0]
    assert e.code == "E121"
    assert e.hint == 'write the host without the scheme: "api.example.com"'


def test_slash_slash_comments_get_a_hint() -> None:
    e = load_error("// travel\nrole r: a:*\n").errors[0]
    assert (e.code, e.line, e.column, e.hint) == ("E001", 1, 1, "comments start with '#'")


def test_unquoted_paths_get_a_hint() -> None:
    e = load_error('tool t: http "api.example.com" {\n  GET /v1/x -> a:b\n}\n').errors[0]
    assert (e.code, e.line, e.column) == ("E001", 2, 7)
    assert e.hint == 'write the path in double quotes: "/v1/x"'
    e = load_error("currency EUR\nrates fx.json\n").errors[0]
    assert (e.code, e.hint) == ("E002", 'write it in double quotes: "fx.json"')


# ---- fuzzing ----------------------------------------------------------------------------

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
FRAGMENTS = [
    "namespace ", "currency ", "rate ", "rates ", "role ", "agent ", "permit ", "forbid ",
    "approval ", "limit ", "budget ", "tool ", "egress ", "delegation ", "when ", "unless ",
    "context.", "principal.", "amount", " <= ", " == ", " in ", " not ", " and ", " or ",
    "(", ")", "[", "]", "{", "}", '"', ",", ":", "*", "\n", "  ", "#", "0", "1.5", " EUR",
    " USD", " JPY", " credits", " calls", " per ", "rolling ", "31d", " partial ",
    "$.a", "->", " for role ", "x", "a:b", "\\u0000", "\\ud800", "\t",
]


def only_policy_errors(data: str | bytes) -> None:
    start = time.process_time()
    try:
        Engine.from_source(data, "fuzz.policy", base_dir="/nonexistent-policy-dir")
    except PolicyError as err:
        assert err.errors, "a PolicyError always carries at least one error"
        for e in err.errors:
            assert e.code and e.line >= 1 and e.column >= 1, e
    assert time.process_time() - start < 5.0


@FUZZ
@given(st.text(max_size=400))
def test_arbitrary_text_raises_only_policy_error(text: str) -> None:
    only_policy_errors(text)


@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_policy_error(data: bytes) -> None:
    only_policy_errors(data)


@FUZZ
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=60))
def test_grammar_shaped_text_raises_only_policy_error(parts: list[str]) -> None:
    only_policy_errors("".join(parts))


NUMBER = st.one_of(st.integers(-5, 10**20).map(str),
                   st.decimals(min_value=0, max_value=10**16, places=4,
                               allow_nan=False).map(lambda d: format(d, "f")))
UNIT = st.sampled_from(["EUR", "USD", "JPY", "BHD", "tokens", "calls", "credits", "XXX"])
DURATION = st.builds(lambda n, u: f"{n}{u}", st.integers(0, 10**7),
                     st.sampled_from(["s", "m", "h", "d"]))
STATEMENT = st.one_of(
    st.builds(lambda n, u, d: f"budget b: a:* limit {n} {u} per rolling {d}", NUMBER, UNIT,
              DURATION),
    st.builds(lambda n, u, o: f"budget b: a:* limit {n} {u} per day overdraft {o}", NUMBER,
              UNIT, NUMBER),
    st.builds(lambda n, u: f"limit l: a:b amount <= {n} {u}", NUMBER, UNIT),
    st.builds(lambda n, u: f"approval a: a:b over {n} {u}", NUMBER, UNIT),
    st.builds(lambda n, u: f"permit p: a:b when amount > {n} {u}", NUMBER, UNIT),
    st.builds(lambda n: f"rate USD {n}", NUMBER),
    st.builds(lambda n: f'tool t: function "f" -> a:b {{\n  redact $.x partial {n}\n}}',
              st.integers(0, 10**7)),
    st.builds(lambda d: f"delegation {{ max_ttl {d} }}", DURATION),
    st.builds(lambda n: "permit q: a:c when context" + ".k" * n + " == 1",
              st.integers(0, 200)),
)


@FUZZ
@given(st.sampled_from(["EUR", "USD", "JPY"]), st.lists(STATEMENT, max_size=4))
def test_statements_with_arbitrary_numbers_load_or_raise_policy_error(
        base: str, statements: list[str]) -> None:
    only_policy_errors(f"currency {base}\n" + "\n".join(statements) + "\n")


def test_recursion_limit_is_not_what_stops_deep_input() -> None:
    # Errors come from explicit limits, not from Python running out of stack.
    assert sys.getrecursionlimit() >= 1000
    err = load_error("permit p: a:b when " + "(" * 70 + "true" + ")" * 70 + "\n")
    assert first(err)[0] == "E007"
