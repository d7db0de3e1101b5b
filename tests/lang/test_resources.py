"""``resource TYPE "id" { attributes }``: parsed, formatted, checked and compiled into the
policy's declared resources (docs/language.md, "Resources")."""

from __future__ import annotations

from decimal import Decimal

import pytest
from conftest import problems_of

import policyengine as pe
from policyengine.lang import ast, format_source, parse

SOURCE = '''resource record "101" { title = "Hamlet", department = "Legal", pages = 144 }
resource record "x y" {}
resource todo "1" { done = false, weight = 2.50 }
'''


def test_a_resource_line_is_its_type_id_and_attributes() -> None:
    f = parse(SOURCE, "r.policy")
    assert f.statements == (
        ast.ResourceDecl("record", "101", (("title", ast.Literal("Hamlet")),
                                           ("department", ast.Literal("Legal")),
                                           ("pages", ast.Literal(144)))),
        ast.ResourceDecl("record", "x y", ()),
        ast.ResourceDecl("todo", "1", (("done", ast.Literal(False)),
                                       ("weight", ast.Literal(Decimal("2.50"))))),
    )


def test_fmt_prints_resources_canonically_and_stably() -> None:
    text = format_source('resource   record "101"{title="Hamlet",pages=144,}\n'
                         'resource record "102"\n')
    assert text == ('resource record "101" { title = "Hamlet", pages = 144 }\n'
                    'resource record "102"\n')
    assert format_source(text) == text


def test_the_word_resource_stays_usable_as_a_name() -> None:
    text = ('role resource: resource:read\nagent "a": resource\n'
            'permit resource: resource:read for role resource '
            'when context.resource.properties.owner == principal.id\n')
    f = parse(text, "r.policy")
    assert [type(s).__name__ for s in f.statements] == ["RoleDecl", "AgentDecl", "Rule"]
    assert problems_of(("r.policy", text)) == []


@pytest.mark.parametrize(("text", "code"), [
    ('resource record "1" { a = 1, a = 2 }\n', "E116"),
    ('resource "record" "1"\n', "E002"),
    ('resource record 1\n', "E002"),
    ('resource record "1" { a = context.x }\n', "E002"),
    ('resource record\n', "E003"),
])
def test_malformed_resource_lines_are_errors(text: str, code: str) -> None:
    codes = [p.code for p in problems_of(("r.policy", text)) if p.severity == "error"]
    assert codes == [code], codes


def test_declarations_merge_and_keep_their_order() -> None:
    engine = pe.Engine.from_sources({
        "a.policy": 'resource doc "b" { owner = "ann", n = 1 }\nresource doc "a"\n'
                    'resource folder "a" { owner = "bo" }\n',
        "b.policy": 'resource doc "b" { n = 2 }\nresource doc "c"\n'})
    assert engine.policy.resources == {
        "doc": {"b": {"owner": "ann", "n": 2}, "a": {}, "c": {}},
        "folder": {"a": {"owner": "bo"}}}
    assert list(engine.policy.resources["doc"]) == ["b", "a", "c"]
    assert pe.Engine.from_source('role r: x:y\n').policy.resources == {}
