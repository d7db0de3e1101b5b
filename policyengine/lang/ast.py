"""Typed syntax tree of a policy file.

Plain frozen dataclasses: the parser builds them, the checker reads them, the compiler
turns them into closures, ``fmt`` prints them back. Every node carries a :class:`Span`
that is excluded from equality, so ``parse(fmt(x)) == parse(x)`` compares meaning only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Generic, TypeVar, Union

from policyengine.lang._source import UNSEEN_CHARS

__all__ = [
    "AgentDecl", "Amount", "And", "ApprovalOverDecl", "ApprovalTerms", "BudgetDecl", "Call",
    "Compare",
    "Condition", "CurrencyDecl", "DefaultCurrencyDecl", "DelegationDecl", "DenyRoute",
    "EgressDecl", "Expr", "Extraction", "HttpTool", "In", "LimitDecl", "ListExpr", "Literal",
    "LogRedact",
    "MoneyLit", "NamedTool", "NamespaceDecl", "Not", "Or", "Path", "PolicyFile", "PriceDecl",
    "RateDecl", "RateLimitDecl",
    "RatesDecl", "Redact", "ResourceDecl", "RoleDecl", "Route", "Rule", "SchemaDecl", "SchemaField",
    "SchemaType", "ScopeItem", "Span", "Statement", "TzDecl", "Comment", "ExprVisitor",
    "StatementVisitor", "ToolItemVisitor", "children", "quote", "u_escape",
]


@dataclass(frozen=True, slots=True)
class Span:
    """Where a node came from: 1-based line and column, end exclusive."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


NOSPAN = Span("<none>", 0, 0, 0, 0)
T = TypeVar("T")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # the grammar's NAME terminal
# Written as \u escapes by quote(): lone surrogates, the line breaks of other tools, and
# control and format characters (json.dumps escapes the C0 ones itself).
_ESCAPED = re.compile(f"[\ud800-\udfff{UNSEEN_CHARS}]")


def u_escape(ch: str) -> str:
    """``ch`` as the policy string escape that reads as it: ``\\u202e``, or a surrogate
    pair's two escapes for a character past U+FFFF (strings have no longer escape)."""
    code = ord(ch)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def quote(text: str) -> str:
    """``text`` as a policy string literal: JSON, non-ASCII kept as it is, but a lone
    surrogate (``"\\ud800"`` in a policy reads as one) written as its ``\\u`` escape, so
    that the literal is UTF-8 text like the file it goes into, and so is a character some
    editors break lines at (U+0085, U+2028, U+2029: E013 when raw in a string) and a
    control or format character (ESC, DEL, U+202E, U+200B...: E014 when raw)."""
    out = json.dumps(text, ensure_ascii=False)
    if _ESCAPED.search(out) is None:
        return out
    return _ESCAPED.sub(lambda m: u_escape(m.group()), out)


def _span() -> Span:
    return field(default=NOSPAN, compare=False, repr=False)


# ---- expressions ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Literal:
    """A string, integer, decimal or boolean literal."""

    value: str | int | Decimal | bool
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class MoneyLit:
    """``500 EUR``: an amount and an ISO 4217 code."""

    amount: Decimal
    currency: str
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Path:
    """``context.a.b`` or ``principal.attributes.tier``: a root and its segments."""

    root: str
    segments: tuple[str, ...]
    span: Span = _span()

    def dotted(self) -> str:
        """Policy-text form: ``.name`` where the grammar's NAME allows, else ``["key"]``."""
        out = self.root
        for seg in self.segments:
            if _NAME.fullmatch(seg):
                out += "." + seg
            else:
                out += f"[{quote(seg)}]"
        return out


@dataclass(frozen=True, slots=True)
class Amount:
    """``amount``: the request's context amount converted to the file's base currency."""

    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple[Expr, ...]
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class ListExpr:
    items: tuple[Expr, ...]
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Compare:
    op: str
    left: Expr
    right: Expr
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class In:
    item: Expr
    collection: Expr
    negated: bool = False
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Not:
    expr: Expr
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Expr, ...]
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Expr, ...]
    span: Span = _span()


Expr = Union[Literal, MoneyLit, Path, Amount, Call, ListExpr, Compare, In, Not, And, Or]


# ---- statements ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Comment:
    """A ``#`` comment, kept so that ``fmt`` never loses one."""

    text: str
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class NamespaceDecl:
    name: str
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class CurrencyDecl:
    code: str
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class DefaultCurrencyDecl:
    code: str
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class RateDecl:
    code: str
    value: Decimal
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class RatesDecl:
    path: str
    max_age: int | None = None  # seconds
    max_age_text: str | None = None
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class TzDecl:
    zone: str
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class RoleDecl:
    name: str
    patterns: tuple[str, ...]
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class AgentDecl:
    id: str
    roles: tuple[str, ...]
    attributes: tuple[tuple[str, Literal], ...] = ()
    span: Span = _span()
    role_spans: tuple[Span, ...] = field(default=(), compare=False, repr=False)
    id_span: Span = _span()  # the quoted id (the checker's caret for a bad one)


@dataclass(frozen=True, slots=True)
class ResourceDecl:
    """``resource TYPE "id" { attributes }``: one resource of a type, with attributes."""

    type: str
    ident: str
    attributes: tuple[tuple[str, Literal], ...] = ()
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class ScopeItem:
    kind: str  # "role" | "agent"
    name: str
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Condition:
    kind: str  # "when" | "unless"
    expr: Expr
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class ApprovalTerms:
    """``expires DURATION`` / ``uses N`` after an approval rule: how long a granted
    approval stays usable and how many calls it allows (None: the default)."""

    expires: int | None = None
    expires_text: str | None = None
    uses: int | None = None
    span: Span = _span()
    expires_span: Span = _span()  # where the duration and the count are (the carets)
    uses_span: Span = _span()


@dataclass(frozen=True, slots=True)
class Rule:
    """``permit|forbid|approval ID: PATTERNS [for SCOPE] [when|unless EXPR]*``."""

    effect: str
    id: str
    patterns: tuple[str, ...]
    scope: tuple[ScopeItem, ...] = ()
    conditions: tuple[Condition, ...] = ()
    span: Span = _span()
    approval: ApprovalTerms | None = None  # ``expires`` / ``uses`` (approval rules only)
    mode: str = "enforce"  # enforce | warn | log (``mode warn``: a shadow statement)


@dataclass(frozen=True, slots=True)
class LimitDecl:
    """``limit ID: PATTERNS amount <= MONEY``: a forbid over the cap plus ``maxAmount``."""

    id: str
    patterns: tuple[str, ...]
    cap: MoneyLit
    scope: tuple[ScopeItem, ...] = ()
    conditions: tuple[Condition, ...] = ()
    span: Span = _span()
    mode: str = "enforce"


@dataclass(frozen=True, slots=True)
class ApprovalOverDecl:
    """``approval ID: PATTERNS over MONEY``: approval over a threshold."""

    effect: str
    id: str
    patterns: tuple[str, ...]
    threshold: MoneyLit
    scope: tuple[ScopeItem, ...] = ()
    conditions: tuple[Condition, ...] = ()
    span: Span = _span()
    approval: ApprovalTerms | None = None
    mode: str = "enforce"


@dataclass(frozen=True, slots=True)
class BudgetDecl:
    id: str
    patterns: tuple[str, ...]
    limit: Decimal
    unit: str
    window: str  # minute|hour|day|week|month|rolling
    rolling_seconds: int | None = None
    rolling_text: str | None = None
    subject: str = "agent"
    scope: tuple[ScopeItem, ...] = ()
    tz: str | None = None
    overdraft: Decimal | None = None
    span: Span = _span()
    caps: tuple[tuple[str, int], ...] = ()  # (max_tokens|max_steps_remaining|cooldown_ms, n)
    mode: str = "enforce"
    #: Where each value is, by the field names of ``budget_problems`` (``id``,
    #: ``limit``, ``unit``, ``window``, ``overdraft_limit``, ``tz``, ``caps``,
    #: ``subject``): the checker's caret for a problem with it.
    value_spans: tuple[tuple[str, Span], ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class RateLimitDecl:
    """``ratelimit ID: PATTERNS COUNT per PERIOD [burst B] [per SUBJECT] [mode warn|log]``."""

    id: str
    patterns: tuple[str, ...]
    count: int
    per: str  # second|minute|hour
    burst: int | None = None  # None: as many as count
    subject: str = "agent"
    span: Span = _span()
    count_span: Span = _span()  # where the count and the burst are (the checker's carets)
    burst_span: Span = _span()
    mode: str = "enforce"
    id_span: Span = _span()  # where the id is (the caret for one too long for a store)


@dataclass(frozen=True, slots=True)
class PriceDecl:
    """``price "openai" "gpt-4o": input 2.50 USD, output 10 USD per 1M tokens``."""

    provider: str
    model: str
    items: tuple[tuple[str, Decimal, str], ...]  # (input|cached_input|output, amount, code)
    per: int  # tokens the prices are for
    per_text: str  # as written: 1M, 1K, 1000
    span: Span = _span()
    per_span: Span = _span()  # where the token count is (the checker's caret)
    provider_span: Span = _span()  # where the quoted provider and model are (the carets)
    model_span: Span = _span()
    #: where each item's kind, amount and currency are, in the order of ``items``
    item_spans: tuple[tuple[Span, Span, Span], ...] = field(default=(), compare=False,
                                                           repr=False)


@dataclass(frozen=True, slots=True)
class Extraction:
    """``name = $.path [minor]`` or ``name = query "q"`` / ``header "h"`` / ``param "p"``."""

    name: str
    source_kind: str  # body | query | header | param
    source: str
    minor: bool = False
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    permission: str
    extractions: tuple[Extraction, ...] = ()
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class DenyRoute:
    method: str | None
    path: str
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Redact:
    path: str
    strategy: str
    keep: int | None = None
    span: Span = _span()


ToolItem = Union[Route, DenyRoute, Redact, Extraction]


@dataclass(frozen=True, slots=True)
class HttpTool:
    id: str
    hosts: tuple[str, ...]
    items: tuple[ToolItem, ...]
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class NamedTool:
    """An ``mcp`` or ``function`` tool: a name glob bound to one permission."""

    id: str
    kind: str  # mcp | function
    name: str
    permission: str
    items: tuple[ToolItem, ...] = ()
    has_body: bool = field(default=False, compare=False)
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class EgressDecl:
    items: tuple[tuple[str, str], ...]  # (allow|deny, host pattern)
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class DelegationDecl:
    max_depth: int | None = None
    max_ttl: int | None = None  # seconds
    max_ttl_text: str | None = None
    issuer: str | None = None
    child_max_ttl: int | None = None  # seconds; hops below the root (default: max_ttl)
    child_max_ttl_text: str | None = None
    audience: str | None = None
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class LogRedact:
    """``log redact PATH STRATEGY [N]``: mask a part of every decision-log record's
    input (docs/decision-log.md)."""

    path: str
    strategy: str
    keep: int | None = None
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class SchemaType:
    """A declared context type: ``kind`` is a type name (``string`` ``int`` ``decimal``
    ``money`` ``bool``, or any name written, which the checker judges), ``list`` (of
    ``item``), ``enum`` (of ``values``) or ``{}``: a record (of ``fields``)."""

    kind: str
    item: SchemaType | None = None
    values: tuple[str, ...] = ()
    fields: tuple[SchemaField, ...] = ()
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class SchemaField:
    """``name: TYPE`` or ``name?: TYPE`` (optional: the key may be absent)."""

    name: str
    optional: bool
    type: SchemaType
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class SchemaDecl:
    """``schema PATTERNS { fields }``: the context requests for these permissions carry."""

    patterns: tuple[str, ...]
    fields: tuple[SchemaField, ...]
    span: Span = _span()


Statement = Union[
    NamespaceDecl, CurrencyDecl, DefaultCurrencyDecl, RateDecl, RatesDecl, TzDecl, RoleDecl,
    AgentDecl, ResourceDecl, Rule, LimitDecl, ApprovalOverDecl, BudgetDecl, HttpTool, NamedTool,
    EgressDecl,
    DelegationDecl, LogRedact, SchemaDecl, PriceDecl, RateLimitDecl,
]


@dataclass(frozen=True, slots=True)
class PolicyFile:
    """One parsed file: its statements in order, and its comments by line."""

    name: str
    statements: tuple[Statement, ...]
    comments: tuple[Comment, ...] = field(default=(), compare=False)
    #: The file's ``namespace`` (``"default"`` without one); found once, on construction,
    #: because every id of the file is qualified with it.
    namespace: str = field(init=False, compare=False, repr=False)
    #: The statement types the file has: a pass looking for one kind of statement
    #: (tools, budgets, rates...) skips a file without it instead of walking it.
    kinds: frozenset[type] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        kinds = frozenset(map(type, self.statements))
        found = "default"
        if NamespaceDecl in kinds:
            found = next(st.name for st in self.statements if isinstance(st, NamespaceDecl))
        object.__setattr__(self, "namespace", found)
        object.__setattr__(self, "kinds", kinds)


# ---- visitors ------------------------------------------------------------------------
#
# One dispatch by node type, shared by the checker, the code generator and the formatter:
# each defines what it does per kind of node, and none keeps its own isinstance chain.
# A new node kind is added here once; a visitor that does not handle it fails loudly.

_EXPR_METHODS: dict[type, str] = {
    Literal: "literal", MoneyLit: "money", Amount: "amount", Path: "path", Call: "call",
    ListExpr: "list", Compare: "compare", In: "in_", Not: "not_", And: "and_", Or: "or_",
}
_STATEMENT_METHODS: dict[type, str] = {
    NamespaceDecl: "namespace", CurrencyDecl: "currency",
    DefaultCurrencyDecl: "default_currency", RateDecl: "rate", RatesDecl: "rates",
    TzDecl: "tz", RoleDecl: "role", AgentDecl: "agent", ResourceDecl: "resource",
    Rule: "rule", LimitDecl: "limit",
    ApprovalOverDecl: "approval_over", BudgetDecl: "budget", HttpTool: "http_tool",
    NamedTool: "named_tool", EgressDecl: "egress", DelegationDecl: "delegation",
    LogRedact: "log_redact",
    SchemaDecl: "schema",
    PriceDecl: "price",
    RateLimitDecl: "ratelimit",
}
_TOOL_ITEM_METHODS: dict[type, str] = {
    Route: "route", DenyRoute: "deny_route", Redact: "redact", Extraction: "extraction",
}


def _dispatch_table(cls: type, methods: dict[type, str]) -> dict[type, Callable[..., Any]]:
    table: dict[type, Callable[..., Any]] = {}
    for node_type, name in methods.items():
        method = getattr(cls, name, None)
        if method is not None:
            table[node_type] = method
    return table


class ExprVisitor(Generic[T]):
    """Dispatch on an expression's node type to the method named for it (``literal``,
    ``money``, ``amount``, ``path``, ``call``, ``list``, ``compare``, ``in_``, ``not_``,
    ``and_``, ``or_``). A subclass defines the ones it meets; :meth:`visit` raises
    ``TypeError`` for any other node."""

    _expr_table: dict[type, Callable[..., Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._expr_table = _dispatch_table(cls, _EXPR_METHODS)

    @classmethod
    def handled_kinds(cls) -> frozenset[type]:
        """The expression node types this visitor has a method for."""
        return frozenset(cls._expr_table)

    def visit(self, e: Expr) -> T:
        method = self._expr_table.get(type(e))
        if method is None:
            raise TypeError(f"{type(self).__name__} does not handle {type(e).__name__}")
        result: T = method(self, e)
        return result


class StatementVisitor(Generic[T]):
    """Dispatch on a statement's node type to the method named for it (``namespace``,
    ``currency``, ``default_currency``, ``rate``, ``rates``, ``tz``, ``role``, ``agent``,
    ``resource``, ``rule``, ``limit``, ``approval_over``, ``budget``, ``http_tool``,
    ``named_tool``,
    ``egress``, ``delegation``, ``log_redact``, ``schema``, ``price``, ``ratelimit``).
    :meth:`visit_statement` returns ``default`` for a kind
    the subclass does not define."""

    _statement_table: dict[type, Callable[..., Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._statement_table = _dispatch_table(cls, _STATEMENT_METHODS)

    @classmethod
    def handled_kinds(cls) -> frozenset[type]:
        """The statement node types this visitor has a method for."""
        return frozenset(cls._statement_table)

    def visit_statement(self, st: Statement, default: T) -> T:
        method = self._statement_table.get(type(st))
        if method is None:
            return default
        result: T = method(self, st)
        return result


class ToolItemVisitor(Generic[T]):
    """Dispatch on the node type of an item of a tool's block to the method named for it
    (``route``, ``deny_route``, ``redact``, ``extraction``). A subclass defines the ones it
    meets; :meth:`visit_item` raises ``TypeError`` for any other node."""

    _item_table: dict[type, Callable[..., Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._item_table = _dispatch_table(cls, _TOOL_ITEM_METHODS)

    @classmethod
    def handled_item_kinds(cls) -> frozenset[type]:
        """The tool item node types this visitor has a method for."""
        return frozenset(cls._item_table)

    def visit_item(self, item: ToolItem) -> T:
        method = self._item_table.get(type(item))
        if method is None:
            raise TypeError(f"{type(self).__name__} does not handle {type(item).__name__}")
        result: T = method(self, item)
        return result


def children(e: Expr) -> tuple[Expr, ...]:
    """The sub-expressions of ``e``, in source order (for walks that need no visitor)."""
    if isinstance(e, (And, Or, ListExpr)):
        return e.items
    if isinstance(e, Not):
        return (e.expr,)
    if isinstance(e, Compare):
        return (e.left, e.right)
    if isinstance(e, In):
        return (e.item, e.collection)
    if isinstance(e, Call):
        return e.args
    return ()
