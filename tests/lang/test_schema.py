"""Context schemas in the language: ``schema PATTERNS { ... }`` parses, formats, and
types every ``context.*`` path of the rules it covers (E150-E152, with positions and
did-you-mean hints)."""

from __future__ import annotations

import pytest
from conftest import problems_of

from policyengine.lang import ast
from policyengine.lang._fmt import format_source
from policyengine.lang._parser import parse

HEAD = 'role r: pay:*\nagent "bot": r\n'
SCHEMA = """schema pay:refund, pay:charge {
  amount: money
  country: enum("FR", "DE")
  reason?: enum("damaged", "late")
  tags: list[string]
  count: int
  risk: decimal
  vip: bool
  customer?: { id: string, tier?: enum("gold", "silver") }
}
"""
TEXT = HEAD + SCHEMA  # rules start on line 13


def test_parses_into_the_ast() -> None:
    f = parse(TEXT, "m.policy")
    (decl,) = [s for s in f.statements if isinstance(s, ast.SchemaDecl)]
    assert decl.patterns == ("pay:refund", "pay:charge")
    names = [(x.name, x.optional, x.type.kind) for x in decl.fields]
    assert names == [("amount", False, "money"), ("country", False, "enum"),
                     ("reason", True, "enum"), ("tags", False, "list"), ("count", False, "int"),
                     ("risk", False, "decimal"), ("vip", False, "bool"),
                     ("customer", True, "{}")]
    assert decl.fields[1].type.values == ("FR", "DE")
    tags = decl.fields[3].type.item
    assert tags is not None and tags.kind == "string"
    customer = decl.fields[7].type
    assert [x.name for x in customer.fields] == ["id", "tier"]
    assert decl.fields[1].span.line == 5 and decl.fields[1].span.column == 3


def test_formats_canonically_and_idempotently() -> None:
    messy = HEAD + ('schema pay:refund {amount: money, country : enum("FR","DE")  # c\n'
                    ' tags: list[ list[int] ]\n  c?:{a:string,b?:bool}}\n')
    once = format_source(messy)
    assert once == HEAD + ('schema pay:refund {  # c\n  amount: money\n'
                           '  country: enum("FR", "DE")\n  tags: list[list[int]]\n'
                           '  c?: { a: string, b?: bool }\n}\n')
    assert format_source(once) == once
    assert parse(once, "a") == parse(messy, "a")


def _problems(rule: str) -> list[tuple[str, int, int, str | None]]:
    return [(p.code, p.line, p.column, p.hint) for p in problems_of(("m.policy", TEXT + rule))
            if p.severity == "error"]


def col(rule: str, marker: str) -> int:
    return rule.index(marker) + 1


TYPED = [
    # rule, code, marker, hint (substring) or None
    ('permit p: pay:refund when context.contry == "FR"', "E151", "context.contry",
     "did you mean 'country'?"),
    ("permit p: pay:refund when context.customer.tir == \"gold\"", "E151",
     "context.customer", "did you mean 'tier'?"),
    ("permit p: pay:refund when has(context.reson)", "E151", "context.reson",
     "did you mean 'reason'?"),
    ('permit p: pay:refund when context.country == "FRA"', "E152", '"FRA"',
     "did you mean 'FR'?"),
    ('permit p: pay:refund when context.reason in ["damaged", "lat"]', "E152", '"lat"',
     "did you mean 'late'?"),
    ("permit p: pay:refund when context.country < 3", "E152", "context.country", None),
    ("permit p: pay:refund when context.amount > 3", "E152", "context.amount",
     "compare the request's amount with 'amount'"),
    ('permit p: pay:refund when context.count == "3"', "E152", "context.count", None),
    ("permit p: pay:refund when 3 in context.tags", "E152", "3 in", None),
    ("permit p: pay:refund when context.count in [1, true]", "E108", "[1", None),
    ("permit p: pay:refund when context.count.x == 1", "E152", "context.count", None),
    ("permit p: pay:refund when context.tags", "E152", "context.tags", None),
    ('permit p: pay:refund when startswith(context.risk, "1")', "E152", "context.risk", None),
    ("permit p: pay:refund when contains(context.vip, 1)", "E152", "context.vip", None),
    ("permit p: pay:refund when context.vip in [1, 2]", "E152", "1,", None),
    ("permit p: pay:refund when not context.count and context.country in context.tags",
     "E152", "context.count", None),
    ("forbid p: pay:charge unless context.customer.id == 3", "E152", "context.customer",
     None),
    ('limit p: pay:refund amount <= 5 EUR when context.cuntry == "FR"', "E151",
     "context.cuntry", "did you mean 'country'?"),
]


@pytest.mark.parametrize(("rule", "code", "marker", "hint"), TYPED)
def test_context_paths_are_typed(rule: str, code: str, marker: str, hint: str | None
                                 ) -> None:
    found = _problems(rule)
    if rule.startswith("limit"):
        found = [p for p in found if p[0] != "E112"]
    assert (code, 13, col(rule, marker)) in [p[:3] for p in found], found
    if hint is not None:
        assert any(p[3] and hint in p[3] for p in found if p[0] == code), found


WELL_TYPED = [
    'permit p: pay:refund when context.country == "FR" and context.count > 2',
    'permit p: pay:refund when context.reason in ["damaged"] and context.risk <= 0.5',
    'permit p: pay:refund when contains(context.tags, "x") and "y" in context.tags',
    'permit p: pay:refund when has(context.customer.tier) and context.customer.tier == "gold"',
    'permit p: pay:refund when context.vip and not context.vip == false',
    'permit p: pay:refund when context.amount == "12.50" or startswith(context.country, "F")',
    'permit p: pay:* when context.contry == "FR"',  # pay:* is wider than any schema
    'permit p: *, pay:refund when context.contry == "FR"',
    'permit p: other:thing when context.anything > 3',
]


@pytest.mark.parametrize("rule", WELL_TYPED)
def test_well_typed_and_uncovered_rules_pass(rule: str) -> None:
    assert _problems(rule) == []


def test_a_namespace_schema_covers_its_permissions() -> None:
    text = HEAD + "schema pay:* { n: int }\npermit p: pay:x:y when context.nn > 1\n"
    found = [(p.code, p.line, p.column, p.hint) for p in problems_of(("m.policy", text))]
    assert found == [("E151", 4, 24, "did you mean 'n'?")]


DECLS = [
    ("schema pay:x { a: strng }", "E150", "strng", "did you mean 'string'?"),
    ("schema pay:x { a: list }", "E150", "list", "list[string]"),
    ("schema pay:x { a: enum }", "E150", "enum", 'enum("a", "b")'),
    ('schema pay:x { a: enum("a", "a") }', "E150", "enum", None),
    ('schema pay:x { a: lst[int] }', "E150", "lst", None),
    ('schema pay:x { a: num("a") }', "E150", "num", None),
    ("schema pay:x { a: int, a: string }", "E150", "a: string", None),
    ("schema pay:x { a: record }", "E150", "record", "{ field: TYPE ... }"),
    ("schema pay:x { r: { a: int, b: { c: flot } } }", "E150", "flot",
     "did you mean 'float'?"),
]


@pytest.mark.parametrize(("decl", "code", "marker", "hint"), DECLS)
def test_declaration_errors(decl: str, code: str, marker: str, hint: str | None) -> None:
    if marker == "flot":
        hint = None  # no 'float' type: the hint names the types instead
    found = [(p.code, p.line, p.column, p.hint) for p in problems_of(("m.policy", HEAD + decl))]
    assert (code, 3, decl.index(marker) + 1) in [p[:3] for p in found], found
    if hint is not None:
        assert any(p[3] and hint in p[3] for p in found), found


def test_a_schema_statement_starts_at_the_line_start_only() -> None:
    # `schema` on an indented line continues the previous statement (a syntax error
    # there), and a broken schema does not hide the next statement's errors.
    text = HEAD + "schema pay:x { a: }\npermit p: pay:x for role rr\n"
    found = [(p.code, p.line) for p in problems_of(("m.policy", text))]
    assert ("E002", 3) in found


def test_an_untyped_rule_warns_about_a_near_miss() -> None:
    rule = 'forbid f: * when context.contry == "KP" or context.other == 1'
    found = [(p.code, p.severity, p.line, p.column, p.hint)
             for p in problems_of(("m.policy", TEXT + rule))]
    assert found == [("W206", "warning", 13, col(rule, "context.contry"),
                      "did you mean 'country'?")]
