"""A hand-written reader for the most common statement shapes, for speed only.

Lark (``grammar/policy.lark``) defines the language and reports every error; this module
reads the statements that make up nearly all of a large policy -- ``namespace``,
``currency``, ``role``, ``agent`` without attributes, and ``permit`` / ``forbid`` /
``approval`` rules with their conditions -- several times faster, and gives up (returns
None) on anything else: another statement kind, a word that is also a keyword, a
construct it does not know, any error. The caller then asks Lark. A hypothesis property
(tests/lang/test_fastparse.py) holds both to the same AST, spans included.
"""

from __future__ import annotations

import bisect
import json
import re
from decimal import Decimal

from policyengine.lang import ast

__all__ = ["read_statement"]

_SKIP = re.compile(r"(?:[ \t\f\r\n]+|#[^\n]*)*")
_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?![A-Za-z0-9_\-])")
_PATTERN = re.compile(r"\*|[A-Za-z0-9_.\-]+(?::[A-Za-z0-9_.\-]+)*(?::\*)?")
_STRING = re.compile(r'"(?:[^"\\\n]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"')
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?![A-Za-z0-9_.])")
_CODE = re.compile(r"[A-Z]{3}(?![A-Za-z0-9_])")
_CMP = re.compile(r"==|!=|<=|>=|<|>")
_WORD_END = re.compile(r"[A-Za-z0-9_\-]")
# Every word the grammar spells: an identifier equal to one of these is left to Lark.
_KEYWORDS = frozenset({
    "namespace", "currency", "default_currency", "rate", "rates", "tz", "role", "agent",
    "permit", "forbid", "approval", "limit", "budget", "tool", "egress", "delegation",
    "log", "when", "unless", "for", "and", "or", "not", "in", "over", "amount", "per", "redact",
    "deny", "true", "false", "context", "principal", "max_age", "rolling", "overdraft",
    "http", "mcp", "function", "minute", "hour", "day", "week", "month", "acting_for",
    "tenant", "global", "tokens", "calls", "credits", "minor", "query", "header", "param",
    "allow", "max_depth", "max_ttl", "issuer", "audience", "remove", "mask", "hash",
    "sha256", "partial", "expires", "uses", "GET", "POST", "PUT", "PATCH", "DELETE",
    "HEAD", "OPTIONS", "ANY", "workspace", "app", "workflow", "toolset", "risk_points",
    "price", "input", "cached_input", "output", "cap", "max_tokens", "max_steps_remaining",
    "cooldown_ms", "mode", "warn", "ratelimit", "burst", "second", "grant", "resource",
    "schema", "child_max_ttl",
})
_EFFECTS = ("permit", "forbid", "approval")
_MAX_DEPTH = 40  # deeper expressions go to Lark (and to its limits)


class _GiveUpError(Exception):
    """Not a shape this reader knows: let Lark read the statement."""


class _Reader:
    __slots__ = ("depth", "file", "line_starts", "off", "pos", "text")

    def __init__(self, text: str, file: str, line_offset: int) -> None:
        self.text = text
        self.file = file
        self.off = line_offset
        self.pos = 0
        self.depth = 0
        starts = [0]
        find = text.find
        i = find("\n")
        while i >= 0:
            starts.append(i + 1)
            i = find("\n", i + 1)
        self.line_starts = starts

    # -- positions --
    def where(self, index: int) -> tuple[int, int]:
        k = bisect.bisect_right(self.line_starts, index) - 1
        return k + 1 + self.off, index - self.line_starts[k] + 1

    def span(self, start: int, end: int) -> ast.Span:
        if len(self.line_starts) == 1:  # a one-line statement: nearly all of them
            line = self.off + 1
            return ast.Span(self.file, line, start + 1, line, end + 1)
        line, col = self.where(start)
        end_line, end_col = self.where(end)
        return ast.Span(self.file, line, col, end_line, end_col)

    # -- tokens --
    def skip(self) -> None:
        pos = self.pos
        if pos < len(self.text) and self.text[pos] in " \t\f\r\n#":
            self.pos = _SKIP.match(self.text, pos).end()  # type: ignore[union-attr]

    def at_end(self) -> bool:
        self.skip()
        return self.pos >= len(self.text)

    def peek_char(self) -> str:
        self.skip()
        return self.text[self.pos:self.pos + 1]

    def punct(self, s: str) -> int:
        """Consume ``s``; return where it started."""
        self.skip()
        if not self.text.startswith(s, self.pos):
            raise _GiveUpError
        start = self.pos
        self.pos += len(s)
        return start

    def maybe_punct(self, s: str) -> bool:
        self.skip()
        if self.text.startswith(s, self.pos):
            self.pos += len(s)
            return True
        return False

    def keyword(self, word: str) -> int | None:
        """Consume the keyword ``word`` if it is next (ending at a word boundary)."""
        self.skip()
        end = self.pos + len(word)
        if self.text.startswith(word, self.pos) and not _WORD_END.match(self.text, end):
            start = self.pos
            self.pos = end
            return start
        return None

    def token(self, pattern: re.Pattern[str]) -> tuple[str, int, int]:
        self.skip()
        m = pattern.match(self.text, self.pos)
        if m is None:
            raise _GiveUpError
        self.pos = m.end()
        return m.group(), m.start(), m.end()

    def word(self, pattern: re.Pattern[str]) -> tuple[str, int, int]:
        """An identifier-like token that must not be a keyword or run into one."""
        text, start, end = self.token(pattern)
        if text in _KEYWORDS or _WORD_END.match(self.text, end):
            raise _GiveUpError
        return text, start, end

    def string(self) -> tuple[str, int, int]:
        raw, start, end = self.token(_STRING)
        if "\\" in raw or not raw.isprintable():
            try:
                return str(json.loads(raw)), start, end
            except ValueError:
                raise _GiveUpError from None
        return raw[1:-1], start, end

    # -- statement parts --
    def attributes(self) -> tuple[tuple[tuple[str, ast.Literal], ...], int]:
        """``{ name = literal, ... }`` of an agent or a resource (at its ``{``); the
        position after its ``}``. Literals: strings, numbers, true, false."""
        self.punct("{")
        pairs: list[tuple[str, ast.Literal]] = []
        while not self.maybe_punct("}"):
            name, _, _ = self.word(_NAME)
            self.punct("=")
            self.skip()
            start = self.pos
            ch = self.text[start:start + 1]
            value: str | int | Decimal | bool
            if ch == '"':
                value, _, end = self.string()
            elif ch == "-" or ch.isdigit():
                text, _, end = self.token(_NUMBER)
                if len(text) > 40:
                    raise _GiveUpError
                value = Decimal(text) if "." in text else int(text)
            elif self.keyword("true") is not None:
                value, end = True, self.pos
            elif self.keyword("false") is not None:
                value, end = False, self.pos
            else:
                raise _GiveUpError
            pairs.append((name, ast.Literal(value, self.span(start, end))))
            if not self.maybe_punct(","):
                self.punct("}")
                break
        return tuple(pairs), self.pos

    def patterns(self) -> tuple[tuple[str, ...], int]:
        out = []
        text, _, end = self.token(_PATTERN)
        if text in _KEYWORDS:
            raise _GiveUpError
        out.append(text)
        while self.maybe_punct(","):
            text, _, end = self.token(_PATTERN)
            if text in _KEYWORDS:
                raise _GiveUpError
            out.append(text)
        if _WORD_END.match(self.text, end) or (end < len(self.text) and self.text[end] in ":*."):
            raise _GiveUpError
        return tuple(out), end

    def scope(self) -> tuple[tuple[ast.ScopeItem, ...], int]:
        items = []
        end = -1
        while True:
            if self.keyword("role") is not None:
                name, start, end = self.word(_ID)
                items.append(ast.ScopeItem("role", name, self.span(start, end)))
            elif self.keyword("agent") is not None:
                value, start, end = self.string()
                items.append(ast.ScopeItem("agent", value, self.span(start, end)))
            else:
                raise _GiveUpError
            if not self.maybe_punct(","):
                return tuple(items), end

    def conditions(self) -> tuple[tuple[ast.Condition, ...], int]:
        out: list[ast.Condition] = []
        end = -1
        while True:
            self.skip()
            start = self.pos
            kind = "when" if self.keyword("when") is not None else (
                "unless" if self.keyword("unless") is not None else None)
            if kind is None:
                return tuple(out), end
            expr, _, end = self.expr()
            out.append(ast.Condition(kind, expr, self.span(start, end)))

    # -- expressions: (node, start, end), where start and end include parentheses --
    def expr(self) -> tuple[ast.Expr, int, int]:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise _GiveUpError
        first = self.and_expr()
        if self.keyword("or") is None:
            self.depth -= 1
            return first
        items = [first, self.and_expr()]
        while self.keyword("or") is not None:
            items.append(self.and_expr())
        self.depth -= 1
        start, end = items[0][1], items[-1][2]
        return ast.Or(tuple(i[0] for i in items), self.span(start, end)), start, end

    def and_expr(self) -> tuple[ast.Expr, int, int]:
        first = self.not_expr()
        if self.keyword("and") is None:
            return first
        items = [first, self.not_expr()]
        while self.keyword("and") is not None:
            items.append(self.not_expr())
        start, end = items[0][1], items[-1][2]
        return ast.And(tuple(i[0] for i in items), self.span(start, end)), start, end

    def not_expr(self) -> tuple[ast.Expr, int, int]:
        start = self.keyword("not")
        if start is not None:
            self.depth += 1
            if self.depth > _MAX_DEPTH:
                raise _GiveUpError
            inner, _, end = self.not_expr()
            self.depth -= 1
            return ast.Not(inner, self.span(start, end)), start, end
        return self.comparison()

    def comparison(self) -> tuple[ast.Expr, int, int]:
        left = self.operand()
        self.skip()
        op = _CMP.match(self.text, self.pos)
        if op is not None:
            self.pos = op.end()
            right = self.operand()
            return (ast.Compare(op.group(), left[0], right[0], self.span(left[1], right[2])),
                    left[1], right[2])
        negated = False
        save = self.pos
        if self.keyword("not") is not None:
            if self.keyword("in") is None:
                self.pos = save
                return left
            negated = True
        elif self.keyword("in") is None:
            return left
        right = self.operand()
        return (ast.In(left[0], right[0], negated, self.span(left[1], right[2])),
                left[1], right[2])

    def operand(self) -> tuple[ast.Expr, int, int]:
        ch = self.peek_char()
        start = self.pos
        if ch == '"':
            text_value, s, e = self.string()
            return ast.Literal(text_value, self.span(s, e)), s, e
        if ch == "(":
            # The node keeps its own span; the parentheses widen its parent's.
            self.pos += 1
            inner = self.expr()
            end = self.punct(")") + 1
            return inner[0], start, end
        if ch == "[":
            return self.list_expr()
        if ch == "-" or ch.isdigit():
            text, s, e = self.token(_NUMBER)
            if len(text) > 40:
                raise _GiveUpError
            self.skip()
            code = _CODE.match(self.text, self.pos)
            if code is not None and code.group() not in _KEYWORDS:
                self.pos = code.end()
                return (ast.MoneyLit(Decimal(text), code.group(), self.span(s, code.end())),
                        s, code.end())
            value: int | Decimal = Decimal(text) if "." in text else int(text)
            return ast.Literal(value, self.span(s, e)), s, e
        for word, value_ in (("true", True), ("false", False)):
            if self.keyword(word) is not None:
                return ast.Literal(value_, self.span(start, self.pos)), start, self.pos
        if self.keyword("amount") is not None:
            return ast.Amount(self.span(start, self.pos)), start, self.pos
        for root in ("context", "principal"):
            if self.keyword(root) is not None:
                return self.path(root, start)
        name, s, e = self.word(_NAME)
        self.punct("(")
        args = []
        if not self.maybe_punct(")"):
            args.append(self.expr()[0])
            while self.maybe_punct(","):
                args.append(self.expr()[0])
            self.punct(")")
        return ast.Call(name, tuple(args), self.span(s, self.pos)), s, self.pos

    def path(self, root: str, start: int) -> tuple[ast.Expr, int, int]:
        segments = []
        end = self.pos
        while True:
            ch = self.peek_char()
            if ch == ".":
                self.pos += 1
                name, _, end = self.word(_NAME)
                segments.append(name)
            elif ch == "[":
                self.pos += 1
                value, _, _ = self.string()
                end = self.punct("]") + 1
                segments.append(value)
            else:
                break
        self.pos = end
        return ast.Path(root, tuple(segments), self.span(start, end)), start, end

    def list_expr(self) -> tuple[ast.Expr, int, int]:
        start = self.punct("[")
        items = []
        if not self.maybe_punct("]"):
            while True:
                items.append(self.expr()[0])
                if self.maybe_punct("]"):
                    break
                self.punct(",")
                if self.maybe_punct("]"):
                    break
        return ast.ListExpr(tuple(items), self.span(start, self.pos)), start, self.pos


def read_statement(text: str, file: str, line_offset: int) -> ast.Statement | None:
    """The statement in ``text`` (one chunk of the splitter), or None to ask Lark."""
    r = _Reader(text, file, line_offset)
    try:
        st = _statement(r)
        if not r.at_end():
            return None
        return st
    except (_GiveUpError, RecursionError, ArithmeticError, ValueError):
        return None


def _statement(r: _Reader) -> ast.Statement:
    r.skip()
    start = r.pos
    first = _ID.match(r.text, start)
    head = first.group() if first is not None else ""
    if head in _EFFECTS:
        effect = head
        r.pos = first.end()  # type: ignore[union-attr]
        ident, _, _ = r.word(_ID)
        r.punct(":")
        patterns, end = r.patterns()
        scope: tuple[ast.ScopeItem, ...] = ()
        if r.keyword("for") is not None:
            scope, end = r.scope()
        conditions, cond_end = r.conditions()
        if conditions:
            end = cond_end
        r.skip()
        if r.pos < len(r.text):  # `over`, `expires`, `uses`, `mode`...: Lark's
            raise _GiveUpError
        return ast.Rule(effect, ident, patterns, scope, conditions, r.span(start, end))
    if head == "role" and r.keyword("role") is not None:
        name, _, _ = r.word(_ID)
        r.punct(":")
        patterns, end = r.patterns()
        return ast.RoleDecl(name, patterns, r.span(start, end))
    if head == "agent" and r.keyword("agent") is not None:
        agent_id, id_start, end = r.string()
        id_span = r.span(id_start, end)
        roles: list[str] = []
        spans: list[ast.Span] = []
        if r.maybe_punct(":"):
            while True:
                role, s, end = r.word(_ID)
                roles.append(role)
                spans.append(r.span(s, end))
                if not r.maybe_punct(","):
                    break
        attrs: tuple[tuple[str, ast.Literal], ...] = ()
        if r.peek_char() == "{":
            attrs, end = r.attributes()
        return ast.AgentDecl(agent_id, tuple(roles), attrs, r.span(start, end), tuple(spans),
                             id_span)
    if head == "resource" and r.keyword("resource") is not None:
        rtype, _, _ = r.word(_ID)
        ident, _, end = r.string()
        attrs = ()
        if r.peek_char() == "{":
            attrs, end = r.attributes()
        return ast.ResourceDecl(rtype, ident, attrs, r.span(start, end))
    if head == "namespace" and r.keyword("namespace") is not None:
        name, _, end = r.word(_NAME)
        return ast.NamespaceDecl(name, r.span(start, end))
    if head == "currency" and r.keyword("currency") is not None:
        code, _, end = r.token(_CODE)
        return ast.CurrencyDecl(code, r.span(start, end))
    raise _GiveUpError
