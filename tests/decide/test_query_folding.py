"""Folding an ``and`` or an ``or`` for the reverse queries (one helper for both, the
operator and its identity as parameters), left to right: a part known to be the
identity drops out; one known to be the other value decides the whole, as does a known
error with nothing before it left; otherwise what is left evaluates, for every value of
the residuals, as the chain itself does at run time."""

from __future__ import annotations

from itertools import product
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine.decide._query.folding import ERR, Folded, _chain, _format
from policyengine.lang import ast

#: A run-time evaluation error (what a known error ``ERR`` is once a request comes).
BOOM = "error"
NAMES = ("a", "b", "c")


def _path(name: str) -> ast.Path:
    return ast.Path("context", (name,))


def _run(e: Folded | ast.Expr, values: dict[str, Any]) -> Any:
    """``e`` evaluated left to right as the engine does, the residual paths given
    ``values``; an ``errorN`` original (a part known to err) always errs."""
    if e is ERR:
        return BOOM
    if isinstance(e, bool):
        return e
    if isinstance(e, ast.Path):
        return BOOM if e.segments[0].startswith("error") else values[e.segments[0]]
    assert isinstance(e, (ast.And, ast.Or)), e
    decides = isinstance(e, ast.Or)  # or: a true part decides; and: a false one
    for item in e.items:
        got = _run(item, values)
        if got is BOOM or got is decides:
            return got
    return not decides


#: A part as folding sees it: known, a known error, a residual path, or a residual
#: ``and`` / ``or`` of paths (what a nested condition folds to).
_RESIDUAL = st.sampled_from(NAMES).map(_path)
_PART = st.one_of(st.booleans(), st.just(ERR), _RESIDUAL,
                  st.builds(lambda j, xs: j(tuple(xs)), st.sampled_from([ast.And, ast.Or]),
                            st.lists(_RESIDUAL, min_size=2, max_size=3)))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([ast.And, ast.Or]), st.lists(_PART, min_size=1, max_size=5))
def test_a_folded_chain_evaluates_as_the_chain(join: type[ast.And | ast.Or],
                                               parts: list[Folded]) -> None:
    originals = [_path(f"error{i}") for i in range(len(parts))]
    folded = _chain(join, parts, originals)
    decides = join is ast.Or
    left = [p for p in parts if p is not (not decides)]  # the identity drops out
    if left and left[0] is ERR:
        assert folded is ERR
        return
    if decides in left and ERR not in left[:left.index(decides)]:
        assert folded is decides
        return
    for combo in product([True, False], repeat=len(NAMES)):
        values = dict(zip(NAMES, combo, strict=True))
        expected: Any = not decides
        for part, original in zip(parts, originals, strict=True):
            got = _run(original if part is ERR else part, values)
            if got is BOOM or got is decides:
                expected = got
                break
        assert _run(folded, values) == expected, (parts, folded, values)


def test_an_and_splices_a_residual_and_an_or_keeps_a_residual_or() -> None:
    a, b, c = (_path(n) for n in NAMES)
    none = [a, a]
    spliced = _chain(ast.And, [a, ast.And((b, c))], none)
    assert isinstance(spliced, ast.And)
    assert _format(spliced) == "context.a and context.b and context.c"
    kept = _chain(ast.Or, [a, ast.Or((b, c))], none)
    assert isinstance(kept, ast.Or)
    assert _format(kept) == "context.a or (context.b or context.c)"
    assert _chain(ast.And, [True, True], none) is True
    assert _chain(ast.Or, [False, False], none) is False
    assert _chain(ast.And, [a, False], none) is False
    assert _chain(ast.Or, [a, True], none) is True
    assert _chain(ast.And, [True, ERR], none) is ERR
    assert _chain(ast.Or, [False, ERR], none) is ERR
    assert _chain(ast.Or, [b, ERR], [a, _path("error")]) == ast.Or((b, _path("error")))
    # a known value after a known error decides nothing: the error comes first
    err = _path("error")
    assert _chain(ast.And, [b, ERR, False], [a, err, a]) == ast.And((b, err))
    assert _chain(ast.Or, [b, ERR, True], [a, err, a]) == ast.Or((b, err))
    assert _chain(ast.And, [b, ERR, c], [a, err, c]) == ast.And((b, err))


def test_a_forbid_erring_before_a_known_false_still_applies_in_the_answer() -> None:
    """``context.urgent and <an attribute bot lacks> and <false for bot>``: an urgent
    request errs on the missing attribute and authorize fails closed (the forbid
    applies). The answer used to fold the forbid to never applying (the known false
    decided the whole) and list pay:* as allowed without condition."""
    from policyengine.engine import Engine
    engine = Engine.from_source(
        'role payer: pay:*\nagent "bot": payer { tier = "silver" }\n'
        "forbid f: pay:* when context.urgent and principal.attributes.level > 3 "
        'and principal.attributes.tier == "gold"\n', name="t.policy")
    urgent = engine.authorize("bot", "pay:send", {"urgent": True})
    assert not urgent.allowed and urgent.code == "missing_attribute"
    assert engine.authorize("bot", "pay:send", {"urgent": False}).allowed
    (line,) = engine.permissions_of("bot").entries
    assert (line.status, line.when) == ("allowed", None)
    assert line.unless == "context.urgent and principal.attributes.level > 3", line


def test_folding_is_a_visit_of_every_expression_kind() -> None:
    """The folder dispatches by node type (lang/ast.py's ExprVisitor), as the checker,
    code generator and formatter do: every expression kind has a method."""
    import typing

    from policyengine.decide._query.folding import Folder
    assert issubclass(Folder, ast.ExprVisitor)
    assert Folder.handled_kinds() == set(typing.get_args(ast.Expr))
