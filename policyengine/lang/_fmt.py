"""Canonical formatting of policy files: ``policyengine fmt``.

The output is a function of the AST plus comments only, so ``fmt(fmt(x)) == fmt(x)`` and
``parse(fmt(x)) == parse(x)`` (spans aside) hold by construction; hypothesis tests check
both. Layout: one statement per line (tool, egress and delegation blocks one item per
line, two-space indent), single spaces, at most one blank line kept between statements,
every comment kept (a comment inside a one-line statement moves above it).
"""

from __future__ import annotations

from decimal import Decimal

from policyengine.lang import ast
from policyengine.lang._parser import parse
from policyengine.lang._source import HIDDEN

__all__ = ["format_expr", "format_file", "format_source"]

# Binding strength: higher binds tighter.
_OR, _AND, _NOT, _CMP, _ATOM = 1, 2, 3, 4, 5


def _str(s: str) -> str:
    return ast.quote(s)


def _num(v: int | Decimal) -> str:
    return format(v, "f") if isinstance(v, Decimal) else str(v)


def _literal(v: str | int | Decimal | bool) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return _str(v)
    return _num(v)


def _attributes(attrs: tuple[tuple[str, ast.Literal], ...]) -> str:
    if not attrs:
        return ""
    return " { " + ", ".join(f"{k} = {_literal(v.value)}" for k, v in attrs) + " }"


def _money(m: ast.MoneyLit) -> str:
    return f"{_num(m.amount)} {m.currency}"


#: Binding strength per node type (any other: an atom).
_STRENGTH: dict[type, int] = {ast.Or: _OR, ast.And: _AND, ast.Not: _NOT, ast.Compare: _CMP,
                              ast.In: _CMP}


def _wrap(e: ast.Expr, need: int) -> str:
    text = format_expr(e)
    return f"({text})" if _STRENGTH.get(type(e), _ATOM) < need else text


def _operand(e: ast.Expr) -> str:
    """An operand of a comparison: a path or a literal printed directly (the common
    case, without the visitor), anything else in parentheses when it needs them."""
    kind = type(e)
    if kind is ast.Path:
        return e.dotted()  # type: ignore[union-attr]
    if kind is ast.Literal:
        return _literal(e.value)  # type: ignore[union-attr]
    return _wrap(e, _ATOM)


class _ExprText(ast.ExprVisitor[str]):
    """Canonical text of each kind of expression."""

    def literal(self, e: ast.Literal) -> str:
        return _literal(e.value)

    def money(self, e: ast.MoneyLit) -> str:
        return _money(e)

    def amount(self, e: ast.Amount) -> str:
        return "amount"

    def path(self, e: ast.Path) -> str:
        return e.dotted()

    def list(self, e: ast.ListExpr) -> str:
        return "[" + ", ".join(self.visit(i) for i in e.items) + "]"

    def call(self, e: ast.Call) -> str:
        return f"{e.name}(" + ", ".join(self.visit(a) for a in e.args) + ")"

    def compare(self, e: ast.Compare) -> str:
        return f"{_operand(e.left)} {e.op} {_operand(e.right)}"

    def in_(self, e: ast.In) -> str:
        word = "not in" if e.negated else "in"
        return f"{_operand(e.item)} {word} {_wrap(e.collection, _ATOM)}"

    def not_(self, e: ast.Not) -> str:
        return f"not {_wrap(e.expr, _NOT)}"

    def and_(self, e: ast.And) -> str:
        return " and ".join(_wrap(i, _AND + 1) for i in e.items)

    def or_(self, e: ast.Or) -> str:
        return " or ".join(_wrap(i, _OR + 1) for i in e.items)


_EXPR_TEXT = _ExprText()


def format_expr(e: ast.Expr) -> str:
    """Canonical text of an expression, with only the parentheses it needs."""
    return _EXPR_TEXT.visit(e)


def _scope(scope: tuple[ast.ScopeItem, ...]) -> str:
    if not scope:
        return ""
    items = [f"role {s.name}" if s.kind == "role" else f"agent {_str(s.name)}" for s in scope]
    return " for " + ", ".join(items)


def _conditions(conds: tuple[ast.Condition, ...]) -> str:
    return "".join(f" {c.kind} {format_expr(c.expr)}" for c in conds)


def _terms(terms: ast.ApprovalTerms | None) -> str:
    if terms is None:
        return ""
    text = f" expires {terms.expires_text}" if terms.expires_text else ""
    return text + (f" uses {terms.uses}" if terms.uses is not None else "")


def _mode(mode: str) -> str:
    return "" if mode == "enforce" else f" mode {mode}"


def _extraction(x: ast.Extraction) -> str:
    src = _jsonpath(x.source) if x.source_kind == "body" else f"{x.source_kind} {_str(x.source)}"
    return f"{x.name} = {src}" + (" minor" if x.minor else "")


def _jsonpath(p: str) -> str:
    # Quoted (where a control or format character is written as an escape) unless the
    # path reads back as written: no space, no `,{}"#`, no character E014 refuses.
    simple = (p.startswith("$") and not any(ch.isspace() or ch in ',{}"#' for ch in p)
              and HIDDEN.search(p) is None)
    return p if simple else _str(p)


class _ToolItemText(ast.ToolItemVisitor[str]):
    """One item of a tool's block, as one line."""

    def route(self, item: ast.Route) -> str:
        text = f"{item.method} {_str(item.path)} -> {item.permission}"
        if item.extractions:
            text += " { " + ", ".join(_extraction(x) for x in item.extractions) + " }"
        return text

    def deny_route(self, item: ast.DenyRoute) -> str:
        return "deny " + (f"{item.method} " if item.method else "") + _str(item.path)

    def redact(self, item: ast.Redact) -> str:
        keep = f" {item.keep}" if item.keep is not None else ""
        return f"redact {_jsonpath(item.path)} {item.strategy}{keep}"

    def extraction(self, item: ast.Extraction) -> str:
        return _extraction(item)


_TOOL_ITEM = _ToolItemText()


class _StatementHead(ast.StatementVisitor[str]):
    """One-line statements, or the opening line of a block."""

    def namespace(self, st: ast.NamespaceDecl) -> str:
        return f"namespace {st.name}"

    def currency(self, st: ast.CurrencyDecl) -> str:
        return f"currency {st.code}"

    def default_currency(self, st: ast.DefaultCurrencyDecl) -> str:
        return f"default_currency {st.code}"

    def rate(self, st: ast.RateDecl) -> str:
        return f"rate {st.code} {_num(st.value)}"

    def rates(self, st: ast.RatesDecl) -> str:
        age = f" max_age {st.max_age_text}" if st.max_age_text else ""
        return f"rates {_str(st.path)}{age}"

    def tz(self, st: ast.TzDecl) -> str:
        return f"tz {_str(st.zone)}"

    def role(self, st: ast.RoleDecl) -> str:
        return f"role {st.name}: " + ", ".join(st.patterns)

    def agent(self, st: ast.AgentDecl) -> str:
        text = f"agent {_str(st.id)}"
        if st.roles:
            text += ": " + ", ".join(st.roles)
        return text + _attributes(st.attributes)

    def resource(self, st: ast.ResourceDecl) -> str:
        return f"resource {st.type} {_str(st.ident)}" + _attributes(st.attributes)

    def rule(self, st: ast.Rule) -> str:
        return (f"{st.effect} {st.id}: " + ", ".join(st.patterns) + _scope(st.scope)
                + _conditions(st.conditions) + _terms(st.approval) + _mode(st.mode))

    def limit(self, st: ast.LimitDecl) -> str:
        return (f"limit {st.id}: " + ", ".join(st.patterns) + f" amount <= {_money(st.cap)}"
                + _scope(st.scope) + _conditions(st.conditions) + _mode(st.mode))

    def approval_over(self, st: ast.ApprovalOverDecl) -> str:
        return (f"{st.effect} {st.id}: " + ", ".join(st.patterns)
                + f" over {_money(st.threshold)}" + _scope(st.scope)
                + _conditions(st.conditions) + _terms(st.approval) + _mode(st.mode))

    def budget(self, st: ast.BudgetDecl) -> str:
        window = f"rolling {st.rolling_text}" if st.window == "rolling" else st.window
        text = (f"budget {st.id}: " + ", ".join(st.patterns)
                + f" limit {_num(st.limit)} {st.unit} per {window} per {st.subject}"
                + _scope(st.scope))
        if st.tz is not None:
            text += f" tz {_str(st.tz)}"
        if st.overdraft is not None:
            text += f" overdraft {_num(st.overdraft)}"
        for name, value in st.caps:
            text += f" cap {name} {value}"
        return text + _mode(st.mode)

    def ratelimit(self, st: ast.RateLimitDecl) -> str:
        text = (f"ratelimit {st.id}: " + ", ".join(st.patterns) + f" {st.count} per {st.per}")
        if st.burst is not None:
            text += f" burst {st.burst}"
        return text + f" per {st.subject}" + _mode(st.mode)

    def price(self, st: ast.PriceDecl) -> str:
        items = ", ".join(f"{kind} {_num(amount)} {code}" for kind, amount, code in st.items)
        return (f"price {_str(st.provider)} {_str(st.model)}: {items} per {st.per_text} "
                "tokens")

    def http_tool(self, st: ast.HttpTool) -> str:
        return f"tool {st.id}: http " + ", ".join(_str(h) for h in st.hosts) + " {"

    def named_tool(self, st: ast.NamedTool) -> str:
        text = f"tool {st.id}: {st.kind} {_str(st.name)} -> {st.permission}"
        return text + (" {" if st.items else "")

    def egress(self, st: ast.EgressDecl) -> str:
        return "egress {"

    def delegation(self, st: ast.DelegationDecl) -> str:
        return "delegation {"

    def log_redact(self, st: ast.LogRedact) -> str:
        keep = f" {st.keep}" if st.keep is not None else ""
        return f"log redact {_jsonpath(st.path)} {st.strategy}{keep}"

    def schema(self, st: ast.SchemaDecl) -> str:
        return "schema " + ", ".join(st.patterns) + " {"


_STATEMENT_HEAD = _StatementHead()


def _statement_head(st: ast.Statement) -> str:
    """One-line statements, or the opening line of a block."""
    head = _STATEMENT_HEAD.visit_statement(st, "")
    if not head:  # pragma: no cover - every statement kind has a head
        raise AssertionError(f"unknown statement {st!r}")
    return head


def _schema_type(t: ast.SchemaType) -> str:
    if t.kind == "{}":
        return "{ " + ", ".join(_schema_field(f) for f in t.fields) + " }" if t.fields else "{}"
    if t.item is not None:
        return f"{t.kind}[{_schema_type(t.item)}]"
    if t.values:
        return f"{t.kind}(" + ", ".join(_str(v) for v in t.values) + ")"
    return t.kind


def _schema_field(f: ast.SchemaField) -> str:
    return f"{f.name}{'?' if f.optional else ''}: {_schema_type(f.type)}"


class _BlockItems(ast.StatementVisitor["list[tuple[str, ast.Span]] | None"]):
    """The items of a statement written as a block (``{ ... }``), each with its span;
    a statement without a block has no method (None)."""

    def schema(self, st: ast.SchemaDecl) -> list[tuple[str, ast.Span]]:
        return [(_schema_field(f), f.span) for f in st.fields]

    def http_tool(self, st: ast.HttpTool) -> list[tuple[str, ast.Span]]:
        return [(_TOOL_ITEM.visit_item(i), i.span) for i in st.items]

    def named_tool(self, st: ast.NamedTool) -> list[tuple[str, ast.Span]] | None:
        return [(_TOOL_ITEM.visit_item(i), i.span) for i in st.items] if st.items else None

    def egress(self, st: ast.EgressDecl) -> list[tuple[str, ast.Span]]:
        return [(f"{verb} {_str(host)}", st.span) for verb, host in st.items]

    def delegation(self, st: ast.DelegationDecl) -> list[tuple[str, ast.Span]]:
        items = []
        if st.max_depth is not None:
            items.append((f"max_depth {st.max_depth}", st.span))
        if st.max_ttl_text is not None:
            items.append((f"max_ttl {st.max_ttl_text}", st.span))
        if st.child_max_ttl_text is not None:
            items.append((f"child_max_ttl {st.child_max_ttl_text}", st.span))
        if st.issuer is not None:
            items.append((f"issuer {_str(st.issuer)}", st.span))
        if st.audience is not None:
            items.append((f"audience {_str(st.audience)}", st.span))
        return items


_BLOCK_ITEMS = _BlockItems()


def format_file(pf: ast.PolicyFile) -> str:
    """Canonical text of a parsed file (its comments included)."""
    comments = sorted(pf.comments, key=lambda c: c.span.line)
    ci = 0
    out: list[str] = []
    prev_end = 0

    def take_until(line: int) -> list[ast.Comment]:
        nonlocal ci
        taken = []
        while ci < len(comments) and comments[ci].span.line < line:
            taken.append(comments[ci])
            ci += 1
        return taken

    def take_on(line: int) -> list[ast.Comment]:
        nonlocal ci
        taken = []
        while ci < len(comments) and comments[ci].span.line == line:
            taken.append(comments[ci])
            ci += 1
        return taken

    for st in pf.statements:
        start, end = st.span.line, st.span.end_line
        leading = take_until(start)
        gap_from = prev_end
        for c in leading:
            if out and c.span.line - gap_from > 1:
                out.append("")
            out.append(c.text)
            gap_from = c.span.line
        if out and start - gap_from > 1 and out[-1] != "":
            out.append("")
        head = _statement_head(st)
        items = _BLOCK_ITEMS.visit_statement(st, None)
        if items is None:
            # One-line statement: comments on its first line trail it; comments on
            # later lines of a multi-line source statement move above it.
            trailing = take_on(start)
            inner = []
            while ci < len(comments) and comments[ci].span.line <= end:
                inner.append(comments[ci])
                ci += 1
            out.extend(c.text for c in inner)
            out.append(head + "".join(f"  {c.text}" for c in trailing))
        else:
            trailing = take_on(start)
            out.append(head + "".join(f"  {c.text}" for c in trailing))
            for text, span in items:
                for c in take_until(span.line):
                    out.append(f"  {c.text}")
                line_comments = take_on(span.line) if span is not st.span else []
                out.append(f"  {text}" + "".join(f"  {c.text}" for c in line_comments))
            rest = []
            while ci < len(comments) and comments[ci].span.line < end:
                rest.append(comments[ci])
                ci += 1
            out.extend(f"  {c.text}" for c in rest)
            closing = take_on(end) if end != start else []
            out.append("}" + "".join(f"  {c.text}" for c in closing))
        prev_end = end
    tail = comments[ci:]
    for c in tail:
        if out and c.span.line - prev_end > 1 and out[-1] != "":
            out.append("")
        out.append(c.text)
        prev_end = c.span.line
    return "\n".join(out) + "\n" if out else ""


def format_source(text: str, name: str = "<policy>") -> str:
    """Parse and format ``text``. Raises :class:`~policyengine.lang.PolicyError`."""
    return format_file(parse(text, name))
