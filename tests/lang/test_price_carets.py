"""E141 (a bad ``price``) is reported at the value at fault, taken from the node's own
position (the provider, the model, an item's kind, amount or currency, the token count),
never guessed from the message: lines and columns are counted in characters of the
source as written, after other statements, across lines and after non-ASCII text."""

from __future__ import annotations

from decimal import Decimal

import pytest
from conftest import problems_of

from policyengine.budgets import BudgetInputError, ModelPrice, PriceTable
from policyengine.budgets.pricing import price_problem

HEAD = "namespace t\ncurrency EUR\n"
OK = "input 1 USD, output 2 USD per 1M tokens"


def _where(head: str, statement: str, needle: str, nth: int = 1) -> tuple[int, int]:
    """1-based (line, column) in ``head + statement`` of the ``nth`` ``needle`` in
    ``statement``, in characters (``head`` ends with a newline)."""
    at = -1
    for _ in range(nth):
        at = statement.index(needle, at + 1)
    before = statement[:at]
    return head.count("\n") + before.count("\n") + 1, at - (before.rfind("\n") + 1) + 1


def _e141(text: str) -> list[tuple[int, int, str]]:
    found = problems_of(("t.policy", text))
    assert [p.code for p in found] == ["E141"], [p.render() for p in found]
    return [(p.line, p.column, p.message) for p in found]


CASES = [
    # (statement, needle, which occurrence, message)
    ('price "" "m": ' + OK, '""', 1,
     "price /m: provider must be a non-empty string of at most 256 chars"),
    ('price "p" "": ' + OK, '""', 1,
     "price p/: model must be a non-empty string of at most 256 chars"),
    ('price "p" "m": input 1 USD, output 2 USD per 0 tokens', "0 tokens", 1,
     "price p/m: per must be a whole number of tokens from 1 to 10^9"),
    ('price "p" "m": input 1 USD, output 2 USD per 2000000K tokens', "2000000K", 1,
     "price p/m: per must be a whole number of tokens from 1 to 10^9"),
    ('price "p" "m": input 1 JPY, output 2 JPY per 1M tokens', "JPY", 1,
     "price p/m: prices are in a currency with cents (USD, EUR, ...), not JPY"),
    ('price "p" "m": input 1 XYZ, output 2 XYZ per 1M tokens', "XYZ", 1,
     "price p/m: unknown unit 'XYZ': use an ISO 4217 currency code (EUR, USD, ...), a "
     "microcent unit (USD_MICROCENTS) or tokens, calls, credits, risk_points"),
    ('price "p" "m": input -1 USD, output 2 USD per 1M tokens', "-1", 1,
     "price p/m: input must be a finite price from 0 to 10^9"),
    ('price "p" "m": input 1 USD, cached_input 2000000000 USD, output 2 USD per 1M tokens',
     "2000000000", 1, "price p/m: cached_input must be a finite price from 0 to 10^9"),
    ('price "p" "m": input 1 USD, output 1.0000000000001 USD per 1M tokens',
     "1.0000000000001", 1, "price p/m: output 1.0000000000001 has more than 12 decimals"),
    ('price "p" "m": input 1 USD, output 2 USD, input 3 USD per 1M tokens', "input", 2,
     "each of input, cached_input and output is priced once"),
    ('price "p" "m": input 1 USD, cached_input 1 USD, output 2 EUR per 1M tokens', "EUR", 1,
     "the prices of one model are in one currency"),
    ('price "p" "m": input 1 USD per 1M tokens', "price", 1,
     "a price gives input and output (cached_input defaults to input)"),
]


@pytest.mark.parametrize(("statement", "needle", "nth", "message"), CASES)
def test_the_caret_is_on_the_value_at_fault(statement: str, needle: str, nth: int,
                                            message: str) -> None:
    head = HEAD + "role r: x:y\nagent \"a\": r\n"
    line, column = _where(head, statement, needle, nth)
    assert _e141(head + statement + "\n") == [(line, column, message)]


@pytest.mark.parametrize(("statement", "needle", "nth", "message"), CASES)
def test_across_lines_the_caret_is_on_the_line_of_the_value(
        statement: str, needle: str, nth: int, message: str) -> None:
    """The statement written over several indented lines, after a budget that spans
    lines too: the caret is on the value's own line and column."""
    names, _, rest = statement.partition(": ")
    wrapped = (names.replace('" "', '"\n  "', 1) + ":\n    "
               + rest.replace(", ", ",\n    ").replace(" per ", "\n    per ") + "\n")
    head = HEAD + "budget b: payments:*\n    limit 100 EUR per day\npermit p: payments:*\n"
    line, column = _where(head, wrapped, needle, nth)
    assert _e141(head + wrapped) == [(line, column, message)]


@pytest.mark.parametrize("before", [
    'price "café" "模型🙂": ',                     # non-ASCII, one astral character
    'price "e\\u0301\\u00e9" "m\u0301": ',         # escapes and a combining accent
])
@pytest.mark.parametrize(("rest", "needle", "nth"), [
    ("input 1 USD, output -2 USD per 1M tokens", "-2", 1),
    ("input 1 JPY, output 2 JPY per 1M tokens", "JPY", 1),
    ("input 1 USD, output 2 USD per 0 tokens", "0 tokens", 1),
    ("input 1 USD, output 2 USD, output 3 USD per 1M tokens", "output", 2),
    ("input 1 USD, output 2 EUR per 1M tokens", "EUR", 1),
])
def test_non_ascii_text_before_the_fault_counts_in_characters(
        before: str, rest: str, needle: str, nth: int) -> None:
    head = HEAD + "# prix très cher 💸\n"
    line, column = _where(head, before + rest, needle, nth)
    assert len((before + rest)[:column].encode()) > column  # bytes would say otherwise
    [(got_line, got_column, _)] = _e141(head + before + rest + "\n")
    assert (got_line, got_column) == (line, column)


def test_a_model_priced_again_in_another_file_is_reported_at_its_provider() -> None:
    first = HEAD + 'price "p" "m": ' + OK + "\n"
    second = ("namespace u\n# coût\n"
              'price  "p"\n   "m": input 3 USD, output 4 USD per 1M tokens\n')
    found = problems_of(("a.policy", first), ("b.policy", second))
    line, column = _where("", second, '"p"')
    assert [(p.code, p.file, p.line, p.column, p.message) for p in found] == [
        ("E141", "b.policy", line, column, "p/m is already priced at a.policy:3:1")]


@pytest.mark.parametrize(("fields", "what"), [
    (("", "m", "USD", 1, 1, 1, 10), "provider"),
    (("p", "m" * 257, "USD", 1, 1, 1, 10), "model"),
    (("p", "m", "JPY", 1, 1, 1, 10), "currency"),
    (("p", "m", "tokens", 1, 1, 1, 10), "currency"),
    (("p", "m", "USD", 1, 1, 1, 0), "per"),
    (("p", "m", "USD", "x", 1, 1, 10), "input"),
    (("p", "m", "USD", 1, -1, 1, 10), "cached_input"),
    (("p", "m", "USD", 1, 1, True, 10), "output"),
])
def test_price_problem_names_the_field_model_price_refuses(
        fields: tuple[object, ...], what: str) -> None:
    """The field the checker puts the caret on is the one the leaf names, and
    :class:`ModelPrice` raises that same error."""
    found = price_problem(*fields)
    assert found is not None and found[0] == what
    with pytest.raises(BudgetInputError) as err:
        ModelPrice(*fields)  # type: ignore[arg-type]
    assert (err.value.code, err.value.message) == (found[1].code, found[1].message)
    assert price_problem("p", "m", "usd", "1.5", 1, 2, 10) is None


def test_every_problem_of_a_price_is_reported_each_at_its_value() -> None:
    """A price with several bad values reports each (E141 at each value), not the first
    alone, which left the user to find the rest one load at a time."""
    head = HEAD + "role r: x:y\nagent \"a\": r\n"
    statement = 'price "" "m": input -1 JPY, output 2000000000 JPY per 0 tokens'
    found = problems_of(("t.policy", head + statement + "\n"))
    assert [p.code for p in found] == ["E141"] * 5, [p.render() for p in found]
    got = [(p.line, p.column, p.message) for p in found]
    want = [(*_where(head, statement, needle), f"price /m: {message}") for needle, message in [
        ('""', "provider must be a non-empty string of at most 256 chars"),
        ("-1", "input must be a finite price from 0 to 10^9"),
        ("JPY", "prices are in a currency with cents (USD, EUR, ...), not JPY"),
        ("2000000000", "output must be a finite price from 0 to 10^9"),
        ("0 tokens", "per must be a whole number of tokens from 1 to 10^9"),
    ]]
    assert sorted(got) == sorted(want)


def test_a_cached_input_not_written_is_not_reported_as_well() -> None:
    """cached_input defaults to the input price: a bad input is reported once, at it."""
    head = HEAD + "role r: x:y\nagent \"a\": r\n"
    statement = 'price "p" "m": input -1 USD, output 2 USD per 1M tokens'
    assert _e141(head + statement + "\n") == [
        (*_where(head, statement, "-1"), "price p/m: input must be a finite price from 0 "
                                          "to 10^9")]


def test_model_price_raises_every_problem_with_its_field_and_code() -> None:
    """One problem: that error itself (as before). Several: one ``invalid_price`` naming
    them all, each in ``details["problems"]`` with its field and code."""
    with pytest.raises(BudgetInputError) as err:
        ModelPrice("", "m", "XYZ", Decimal(-1), 1, 2, 0)  # type: ignore[arg-type]
    assert err.value.code == "invalid_price"
    assert [(p["field"], p["code"]) for p in err.value.details["problems"]] == [
        ("provider", "invalid_price"), ("currency", "unknown_unit"), ("per", "invalid_price"),
        ("input", "invalid_price")]
    assert err.value.message.startswith("4 problems: provider: provider must be")
    assert all(p["message"] in err.value.message for p in err.value.details["problems"])
    with pytest.raises(BudgetInputError) as err:
        ModelPrice("p", "m", "XYZ", 1, 1, 2, 10)  # type: ignore[arg-type]
    assert err.value.code == "unknown_unit" and "problems" not in err.value.details


@pytest.mark.parametrize("text", [" 1", "1 ", "1_000", "1e3", "\u0661", "\uff11", "+1",
                                  ".5", "5.", "", "NaN", "1,5"])
def test_a_price_string_follows_the_grammar_of_amounts(text: str) -> None:
    """``Decimal()`` takes whitespace, ``_``, exponents and digits of other scripts; a
    price string is a plain ASCII decimal, as every amount is (docs/money.md)."""
    with pytest.raises(BudgetInputError) as err:
        ModelPrice("p", "m", "USD", text, 1, 2, 10)  # type: ignore[arg-type]
    assert err.value.code == "invalid_price"
    assert price_problem("p", "m", "USD", "2.50", "0", "10", 10) is None


def test_a_price_table_names_every_model_priced_twice() -> None:
    a = ModelPrice("p", "a", "USD", Decimal(1), Decimal(1), Decimal(1))
    b = ModelPrice("p", "b", "USD", Decimal(1), Decimal(1), Decimal(1))
    with pytest.raises(BudgetInputError) as err:
        PriceTable([a, b, a, b, a])
    assert err.value.code == "invalid_price"
    assert err.value.message == "p/a, p/b are priced twice"
    assert err.value.details == {"twice": ["p/a", "p/b"]}
