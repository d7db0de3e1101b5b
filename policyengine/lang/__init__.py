"""The policy language: source text -> checked AST (and back, for ``fmt``).

Stages, in the order data flows: :mod:`._parser` (Lark grammar -> :mod:`.ast` nodes with
spans), :mod:`._checker` (static checks across files -> problems), :mod:`._codegen`
(condition expressions -> Python source for :mod:`policyengine.decide`), :mod:`._fmt`
(canonical printer). :mod:`._source` holds what every stage reports with: ``Problem`` and
``PolicyError``. Nothing here imports :mod:`policyengine.decide` or the engine.
"""

from policyengine.lang import ast
from policyengine.lang._checker import FUNCTIONS, check
from policyengine.lang._fmt import format_expr, format_file, format_source
from policyengine.lang._parser import (
    MAX_NESTING,
    MAX_PROBLEMS,
    MAX_SOURCE_BYTES,
    STATEMENT_KEYWORDS,
    parse,
    parse_many,
)
from policyengine.lang._source import WARNING_CODES, PolicyError, Problem, SourceSet

__all__ = [
    "FUNCTIONS",
    "MAX_NESTING",
    "MAX_PROBLEMS",
    "MAX_SOURCE_BYTES",
    "STATEMENT_KEYWORDS",
    "WARNING_CODES",
    "PolicyError",
    "Problem",
    "SourceSet",
    "ast",
    "check",
    "format_expr",
    "format_file",
    "format_source",
    "parse",
    "parse_many",
]
