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


# -- tool items and blocks: one dispatch, no isinstance chain ---------------------------
TOOL_ITEM_KINDS = set(typing.get_args(ast.ToolItem))


def test_every_tool_item_kind_is_checked_and_formatted() -> None:
    from policyengine.lang._checker import _ToolItemCheck
    from policyengine.lang._fmt import _ToolItemText
    assert _ToolItemCheck.handled_item_kinds() == TOOL_ITEM_KINDS
    assert _ToolItemText.handled_item_kinds() == TOOL_ITEM_KINDS


def test_a_tool_item_a_visitor_does_not_know_is_a_type_error() -> None:
    class OnlyRoutes(ast.ToolItemVisitor[str]):
        def route(self, item: ast.Route) -> str:
            return item.path

    assert OnlyRoutes().visit_item(ast.Route("GET", "/a", "ns:a")) == "/a"
    with pytest.raises(TypeError, match="Redact"):
        OnlyRoutes().visit_item(ast.Redact("$.a", "remove"))


def test_the_formatter_writes_a_block_for_exactly_the_block_statements() -> None:
    from policyengine.lang._fmt import _BlockItems
    assert _BlockItems.handled_kinds() == {ast.SchemaDecl, ast.HttpTool, ast.NamedTool,
                                           ast.EgressDecl, ast.DelegationDecl}


#: Node kinds dispatched by a visitor: no module of the language tests them one by one.
_DISPATCHED = {t.__name__ for t in TOOL_ITEM_KINDS | STATEMENT_KINDS}


@pytest.mark.parametrize("module", ["_checker", "_fmt", "_codegen"])
def test_no_isinstance_chain_over_tool_items_or_statements(module: str) -> None:
    """Issue 10 item 4: the checker, the formatter and the code generator dispatch tool
    items and statements by node type (the visitors of ``lang/ast.py``); no function
    tells two kinds apart with ``isinstance(x, ast.Route)`` and the like (one kind
    tested as a filter is not a dispatch)."""
    import ast as pyast
    import importlib
    from pathlib import Path

    path = Path(importlib.import_module(f"policyengine.lang.{module}").__file__ or "")
    found = []
    for fn in pyast.walk(pyast.parse(path.read_text("utf-8"))):
        if not isinstance(fn, (pyast.FunctionDef, pyast.AsyncFunctionDef)):
            continue
        kinds = set()
        for node in pyast.walk(fn):
            if isinstance(node, pyast.Call) and isinstance(node.func, pyast.Name) \
                    and node.func.id == "isinstance" and len(node.args) == 2:
                tested = node.args[1]
                names = tested.elts if isinstance(tested, pyast.Tuple) else [tested]
                kinds |= {n.attr for n in names
                          if isinstance(n, pyast.Attribute) and n.attr in _DISPATCHED}
        if len(kinds) > 1:
            found.append(f"{fn.name} (line {fn.lineno}): {sorted(kinds)}")
    assert not found, found
