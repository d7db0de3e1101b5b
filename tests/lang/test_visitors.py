"""One dispatch by node type: every expression and statement kind is handled by the
checker, the code generator and the formatter; the parser builds every grammar rule by
name."""

from __future__ import annotations

import typing

import pytest

from policyengine.lang import ast
from policyengine.lang._checker import _FileCheck, _TypeOf
from policyengine.lang._codegen import ConditionCodegen
from policyengine.lang._fmt import _ExprText, _StatementHead
from policyengine.lang._parser import _EXPRESSIONS, _STATEMENTS, _TOOL_ITEMS, _lark

EXPR_KINDS = set(typing.get_args(ast.Expr))
STATEMENT_KINDS = set(typing.get_args(ast.Statement))


@pytest.mark.parametrize("visitor", [_TypeOf, ConditionCodegen, _ExprText])
def test_every_expression_kind_has_a_method(visitor: type) -> None:
    assert visitor.handled_kinds() == EXPR_KINDS


@pytest.mark.parametrize("visitor", [_FileCheck, _StatementHead])
def test_every_statement_kind_is_checked_and_has_a_formatted_head(visitor: type) -> None:
    assert visitor.handled_kinds() == STATEMENT_KINDS


def test_a_node_a_visitor_does_not_know_is_a_type_error() -> None:
    class OnlyLiterals(ast.ExprVisitor[str]):
        def literal(self, e: ast.Literal) -> str:
            return "lit"

    assert OnlyLiterals().visit(ast.Literal(1)) == "lit"
    with pytest.raises(TypeError, match="Amount"):
        OnlyLiterals().visit(ast.Amount())


def test_children_in_source_order() -> None:
    a, b = ast.Literal(1), ast.Amount()
    assert ast.children(ast.Compare("<", a, b)) == (a, b)
    assert ast.children(ast.In(a, ast.ListExpr((b,)))) == (a, ast.ListExpr((b,)))
    assert ast.children(ast.Not(a)) == (a,)
    assert ast.children(a) == ()


def test_the_parser_builds_every_rule_of_the_grammar_by_name() -> None:
    parser = _lark()
    names = {str(r.alias or r.origin.name) for r in parser.rules}
    statements = {n for n in names if n.endswith("_decl") or n.endswith("_tool")}
    assert statements == set(_STATEMENTS)
    expression_aliases = {"string", "number", "true", "false", "money", "amount", "path",
                          "call", "list", "compare", "in_", "not_in", "not_", "and_expr",
                          "or_expr"}
    assert expression_aliases <= names
    assert set(_EXPRESSIONS) == expression_aliases
    assert set(_TOOL_ITEMS) <= names
    # No anonymous terminal names reach error messages.
    assert not [t.name for t in parser.terminals if t.name.startswith("__ANON")]
