"""Policy text -> :mod:`policyengine.lang.ast`, with errors people can act on.

The file is first split into top-level statements by a small scanner (strings, comments
and braces aware): a statement begins on a line, outside braces, that starts with a
statement keyword or that is not indented. Each statement is then parsed on its own by
the one Lark grammar (``grammar/policy.lark``, LALR). That is what lets ``check`` report
every broken statement of a file rather than only the first, and it bounds the damage
hostile input can do: size, nesting depth and encoding are checked before Lark runs.

Every failure is a :class:`~policyengine.lang.PolicyError`; no other exception type
escapes :func:`parse` (a test feeds it arbitrary text and bytes to hold it to that).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import threading
import unicodedata
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path as _FsPath
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedToken

from policyengine.lang import ast
from policyengine.lang._fastparse import read_statement
from policyengine.lang._source import HIDDEN, LINE_BREAKS, UNSEEN, PolicyError, Problem, SourceSet

__all__ = ["MAX_NESTING", "MAX_PROBLEMS", "MAX_SOURCE_BYTES", "STATEMENT_KEYWORDS", "ParseCache",
           "parse", "parse_many"]

#: Largest policy file accepted (bytes). Bigger input is refused before parsing.
MAX_SOURCE_BYTES = 1 << 20
#: Deepest nesting of ``( [ {`` accepted.
MAX_NESTING = 64
#: Syntax errors reported per file before giving up (garbage input stays fast).
MAX_PROBLEMS = 100

STATEMENT_KEYWORDS = (
    "namespace", "currency", "default_currency", "rate", "rates", "tz", "role", "agent",
    "resource", "permit", "forbid", "approval", "limit", "budget", "tool", "egress", "delegation",
    "log",
    "schema",
    "price",
    "ratelimit",
)
# Words that may begin a statement only in this shape; elsewhere (indented) they continue
# the previous statement (``budget x: ... \n    limit 5 EUR per day``). ``tz`` is not
# here: ``tz "Zone"`` is also a budget's option, so an indented one continues the budget
# above it (as the grammar reads it) instead of becoming the zone of the whole file.
_STATEMENT_START = re.compile(
    r"[ \t]*(?:namespace|currency|default_currency|rates?|role|agent[ \t]+\"|egress|delegation"
    r"|resource[ \t]+[A-Za-z_][A-Za-z0-9_\-]*[ \t]+\""
    r"|log[ \t]+redact"
    r"|schema"
    r"|price[ \t]+\""
    r"|(?:permit|forbid|approval|limit|budget|tool|ratelimit)[ \t]+[A-Za-z_][A-Za-z0-9_\-]*[ \t]*:)"
    r"(?![A-Za-z0-9_])"
)
# What the statement splitter looks at: whole strings, a lone quote (unterminated), an
# unquoted JSONPath (the grammar's JSONPATH: a `#` in it is no comment), a comment,
# brackets, and the word `not` (a run of them nests without brackets).
_SCAN = re.compile(r'"(?:[^"\\]|\\.)*"|"|\$[^\s,{}]*|#|[(\[{)\]}]'
                   r'|(?<![A-Za-z0-9_\-.])not(?![A-Za-z0-9_\-])')
# Characters that end a line for str.splitlines() and for some editors, but not for the
# language (LINE_BREAKS; lines end at "\n", a "\r" right before it is ignored). Outside
# strings and comments they are E001 (or, for "\f", whitespace); inside a comment or a
# string they would make text that looks like a line of its own part of the comment or the
# string, so there they are E013, as a "\r" not followed by "\n" is anywhere. Any other
# control or format character (HIDDEN: ESC, DEL, U+202E and the other bidirectional
# controls, U+200B...) can make a comment, a string or a JSONPath show other text than it
# holds: E014 there. Outside them every one of these is E001. UNSEEN finds any of them
# but the "\r", which the line loop looks for itself. All three are policyengine._visible's.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_BREAK_NAMES = {ch: f"a {name} (U+{ord(ch):04X})"
                + (" not followed by a line feed" if ch == "\r" else "")
                for ch, name in LINE_BREAKS.items()}
_UNINDENTED_WORD = re.compile(r"[A-Za-z_]")
# The grammar's whitespace (``%ignore``): str.strip() would also drop U+3000, U+00A0, \v,
# \x1c..., which are no whitespace of the language (E001 wherever they stand).
_BLANK = " \t\f\r\n"
_FIRST_WORD = re.compile(r"[ \t]*([A-Za-z_][A-Za-z0-9_\-]*)")

_KEYWORD_TERMINALS = {
    "EFFECT": "permit/forbid/approval", "COND_KW": "when/unless", "CMP_OP": "a comparison",
    "PATTERN": "a permission pattern", "NAME": "a name", "ID": "an id", "STRING": "a string",
    "NUMBER": "a number", "CODE": "a currency code", "INT": "an integer",
    "DURATION": "a duration (like 30s, 15m, 1h, 7d)", "JSONPATH": "a JSONPath",
    "STRATEGY": "a redaction strategy (remove, mask, hash, sha256, partial)",
    "METHOD": "an HTTP method", "UNIT": "a unit (a currency code, tokens, calls, credits)",
    "WINDOW_UNIT": "a window (minute, hour, day, week, month)", "SUBJECT": "a subject",
    "RATE_PERIOD": "second, minute or hour",
    "ROOT": "context or principal", "LPAR": "'('", "RPAR": "')'", "LSQB": "'['",
    "RSQB": "']'", "LBRACE": "'{'", "RBRACE": "'}'", "COMMA": "','", "COLON": "':'",
    "DOT": "'.'", "EQUAL": "'='", "AT_MOST": "'<='", "ARROW": "'->'", "OPTIONAL": "'?'",
    "$END": "the end of the statement",
}

_KEYWORDS = (*STATEMENT_KEYWORDS, "when", "unless", "for", "and", "or", "not", "in", "over",
             "amount", "per", "redact", "deny", "true", "false", "context", "principal")
_BOM = "\ufeff".encode()
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: Deepest expression the builder makes (one Python call per level). The checker refuses
#: anything past ``MAX_EXPR_DEPTH`` (48) anyway; this only keeps the stack bounded, well
#: above what the fast reader builds (40 levels of its own, each a few nodes deep).
_MAX_BUILD_DEPTH = 200


def _grammar_text() -> str:
    """The grammar shipped in the wheel, or the repository's ``grammar/`` in a checkout."""
    try:
        shipped = resources.files("policyengine.lang").joinpath("_grammar/policy.lark")
        return shipped.read_text("utf-8")
    except (FileNotFoundError, OSError):
        here = _FsPath(__file__).resolve().parents[2] / "grammar" / "policy.lark"
        return here.read_text("utf-8")


_PARSER: Lark | None = None
_current = threading.local()  # the chunk being lexed, for the keyword-boundary check
_WORD_CHAR = re.compile(r"[A-Za-z0-9_\-]")
_WORD_AT = re.compile(r"[A-Za-z0-9_\-.]+")


class _GlueError(Exception):
    """A keyword immediately followed by identifier characters (``whenx``)."""

    def __init__(self, tok: Token) -> None:
        super().__init__(str(tok))
        self.tok = tok


def _keyword_boundary(tok: Token) -> Token:
    # Lark matches keyword strings as prefixes where no identifier is acceptable, so
    # ``forrole`` would lex as ``for`` ``role``; a keyword must end at a word boundary.
    text: str = getattr(_current, "text", "")
    end = tok.end_pos
    if end is not None and end < len(text) and _WORD_CHAR.match(text, end):
        raise _GlueError(tok)
    return tok


#: Terminals that are words: a keyword must end at a word boundary (see
#: :func:`_keyword_boundary`). Listed here so that the grammar is loaded once; a test
#: derives the list from the terminals Lark builds out of the grammar and compares.
KEYWORD_TERMINALS = frozenset({
    "AGENT", "AMOUNT", "AND", "AUDIENCE", "BUDGET", "COND_KW", "CURRENCY",
    "CHILD_MAX_TTL", "DEFAULT_CURRENCY", "DELEGATION", "DENY", "EFFECT", "EGRESS", "EGRESS_VERB",
    "EXPIRES",
    "FALSE",
    "FOR", "HTTP_KW", "IN", "ISSUER", "LIMIT", "LOG", "MAX_DEPTH", "MAX_TTL", "MINOR",
    "NAMED_KW",
    "NAMESPACE", "NOT", "OR", "OVER", "OVERDRAFT", "PER", "RATE", "RATES", "REDACT",
    "RESOURCE", "ROLE",
    "ROLLING", "ROOT", "SCHEMA", "SOURCE_KIND", "SUBJECT", "TOOL", "TRUE", "TZ", "USES",
    "WINDOW_UNIT",
    "_MAX_AGE", "METHOD", "STRATEGY", "UNIT", "PRICE", "PRICE_KIND", "PRICE_TOKENS",
    "CAP", "CAP_NAME", "MODE", "SHADOW_MODE", "RATELIMIT", "RATE_PERIOD", "BURST",
})
_LARK_LOCK = threading.Lock()


def _cache_file(grammar: str) -> str | None:
    """Where Lark may keep the built parser tables between processes, or None.

    Building the LALR tables costs more than everything else a ``policyengine check`` of
    a small policy does; Lark's ``cache=`` option stores them (keyed by the grammar, the
    options and Lark's version, which Lark checks on load). The file is a pickle, so it
    lives only in a directory the current user owns and nobody else can write to
    (``$XDG_CACHE_HOME/policyengine`` or ``~/.cache/policyengine``), never in a shared
    temporary directory. ``POLICYENGINE_NO_CACHE=1`` turns it off.
    """
    if os.environ.get("POLICYENGINE_NO_CACHE"):
        return None
    try:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                                ".cache")
        folder = os.path.join(base, "policyengine")
        os.makedirs(folder, mode=0o700, exist_ok=True)
        uid = os.getuid()
        info = os.stat(folder)
        if info.st_uid != uid or info.st_mode & 0o022:
            return None
        digest = hashlib.sha256(grammar.encode("utf-8")).hexdigest()[:16]
        path = os.path.join(folder, f"grammar-{digest}.lark")
        if os.path.exists(path) and os.stat(path).st_uid != uid:
            return None
        return path
    except (OSError, AttributeError, RuntimeError):  # no home, read-only, no getuid
        return None


def build_lark(cache: str | None) -> Lark:
    """A parser of the grammar; ``cache`` is a file for Lark's table cache, or None."""
    return Lark(_grammar_text(), parser="lalr", lexer="contextual", start=["start", "file"],
                propagate_positions=True, maybe_placeholders=True, cache=cache or False,
                lexer_callbacks={name: _keyword_boundary for name in KEYWORD_TERMINALS})


def _lark() -> Lark:
    """The one LALR parser of the grammar, built (or loaded) on first use and shared."""
    global _PARSER
    if _PARSER is None:
        with _LARK_LOCK:
            if _PARSER is None:
                _PARSER = build_lark(_cache_file(_grammar_text()))
    return _PARSER


# ---- public ------------------------------------------------------------------------

def parse(text: str | bytes, name: str = "<policy>") -> ast.PolicyFile:
    """Parse one policy file. Raises :class:`PolicyError` listing every syntax error."""
    sources = SourceSet()
    if not isinstance(name, str):
        raise PolicyError([sources.problem("E008", f"the file name must be a string, not "
                                           f"{type(name).__name__}", "<policy>", 1, 1)])
    result, problems = _parse_file(text, name, sources)
    if problems:
        raise PolicyError(problems)
    assert result is not None
    return result


def parse_many(files: list[tuple[str, str | bytes]], sources: SourceSet,
               cache: ParseCache | None = None
               ) -> tuple[list[ast.PolicyFile], list[Problem]]:
    """Parse several files, collecting every problem instead of stopping at the first.

    A file with syntax errors still yields the statements that did parse, so that the
    checker can report their problems too (see :func:`policyengine.lang.check`'s
    ``partial``); only a file that cannot be read at all (size, encoding) yields none.
    """
    parsed: list[ast.PolicyFile] = []
    problems: list[Problem] = []
    for name, text in files:
        key = _content_key(name, text) if cache is not None else None
        result = cache.lookup(key) if cache is not None and key is not None else None
        if result is not None:
            decoded, _ = _decode(text, name, sources)
            sources.add(name, decoded or "")
            probs: list[Problem] = []
        else:
            result, probs = _parse_file(text, name, sources)
        if cache is not None and key is not None and result is not None and not probs:
            cache.keep(key, result)
        problems.extend(probs)
        if result is not None:
            parsed.append(result)
    if cache is not None:
        cache.done()
    return parsed, problems


def _content_key(name: str, data: str | bytes) -> tuple[str, bytes] | None:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    elif not isinstance(data, bytes):
        return None
    return name, hashlib.sha256(data).digest()


class ParseCache:
    """The files parsed last time, by name and SHA-256 of their content, for
    ``Engine.reload``: a file whose bytes did not change is not parsed again, and the
    same :class:`~policyengine.lang.ast.PolicyFile` object comes back (so that later
    stages can reuse their own results for it). Only files that parsed without a problem
    are kept, and only those of the latest call. One per engine; not thread-safe.
    """

    def __init__(self) -> None:
        self._files: dict[tuple[str, bytes], ast.PolicyFile] = {}
        self._next: dict[tuple[str, bytes], ast.PolicyFile] = {}
        self.hits = 0

    def lookup(self, key: tuple[str, bytes]) -> ast.PolicyFile | None:
        found = self._files.get(key)
        if found is not None:
            self.hits += 1
        return found

    def keep(self, key: tuple[str, bytes], parsed: ast.PolicyFile) -> None:
        self._next[key] = parsed

    def done(self) -> None:
        self._files, self._next = self._next, {}


# ---- file level ----------------------------------------------------------------------

def _decode(data: str | bytes, name: str, sources: SourceSet) -> tuple[str | None, list[Problem]]:
    if isinstance(data, bytes):
        if len(data) > MAX_SOURCE_BYTES:
            return None, [sources.problem("E006", f"policy file is {len(data)} bytes; the limit "
                                          f"is {MAX_SOURCE_BYTES}", name, 1, 1,
                                          "split the policy into several files")]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            # The column counts characters, as every other position does: the line up to
            # the bad byte is valid UTF-8 (the first error is at exc.start). A leading
            # byte order mark is no character of the text (it is dropped below).
            line_start = data.rfind(b"\n", 0, exc.start) + 1
            if line_start == 0 and data.startswith(_BOM):
                line_start = len(_BOM)
            col = len(data[line_start:exc.start].decode("utf-8")) + 1
            shown = data.decode("utf-8", "replace")
            sources.add(name, shown[1:] if data.startswith(_BOM) else shown)  # the excerpt
            return None, [sources.problem("E008", "policy file is not valid UTF-8", name, line,
                                          col, "policy files are UTF-8 text")]
    elif isinstance(data, str):
        text = data
        if len(text) > MAX_SOURCE_BYTES:
            return None, [sources.problem("E006", f"policy file is {len(text)} characters; the "
                                          f"limit is {MAX_SOURCE_BYTES}", name, 1, 1,
                                          "split the policy into several files")]
    else:
        return None, [sources.problem("E008", f"policy source must be str or bytes, not "
                                      f"{type(data).__name__}", name, 1, 1)]
    if text.startswith("\ufeff"):
        text = text[1:]
    return text, []


def _parse_file(data: str | bytes, name: str, sources: SourceSet
                ) -> tuple[ast.PolicyFile | None, list[Problem]]:
    text, problems = _decode(data, name, sources)
    if text is None:
        return None, problems
    sources.add(name, text)
    nul = text.find("\x00")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        col = nul - (text.rfind("\n", 0, nul) + 1) + 1
        return None, [sources.problem("E008", "policy file contains a NUL byte (binary data?)",
                                      name, line, col, "policy files are UTF-8 text")]
    chunks, comments, problems = _split(text, name, sources)
    if not problems:
        fast = _read_fast(chunks, name, sources)
        if fast is not None:
            return ast.PolicyFile(name, tuple(fast), tuple(comments)), []
        whole = _parse_whole(text, name, chunks)
        if whole is not None:
            return ast.PolicyFile(name, tuple(whole), tuple(comments)), []
    statements: list[ast.Statement] = []
    for start_line, chunk in chunks:
        if len(problems) >= MAX_PROBLEMS:
            problems.append(sources.problem(
                "E011", f"too many errors; stopped after {MAX_PROBLEMS}", name, start_line, 1,
                "is this a policy file?"))
            break
        st, probs = _parse_statement(chunk, start_line, name, sources)
        problems.extend(probs)
        if st is not None:
            statements.append(st)
    problems.sort(key=lambda p: (p.line, p.column))
    return ast.PolicyFile(name, tuple(statements), tuple(comments)), problems


def _split(text: str, name: str, sources: SourceSet
           ) -> tuple[list[tuple[int, str]], list[ast.Comment], list[Problem]]:
    """Cut ``text`` into statements; collect comments; check strings and nesting."""
    chunks: list[tuple[int, str]] = []
    comments: list[ast.Comment] = []
    problems: list[Problem] = []
    current: list[str] = []
    start_line = 0
    depth = 0
    nesting_reported = False
    broken_lines: set[int] = set()
    run = 0  # `not` words in a row, across line breaks and comments: each nests one level
    # Most files hold no character E013/E014 look for: then no string, JSONPath or comment
    # is searched for one (one search of the file instead of one per string and comment).
    unseen_in_text = UNSEEN.search(text) is not None
    for lineno, line in enumerate(text.split("\n"), start=1):
        unindented_start = _UNINDENTED_WORD.match(line) is not None
        if unindented_start or (depth == 0 and _STATEMENT_START.match(line)):
            # An unindented line always starts a statement, so an unclosed bracket
            # swallows one statement, not the rest of the file.
            if current:
                chunks.append((start_line, "\n".join(current)))
            current, start_line, depth, run = [], lineno, 0, 0
        # A "\r" ends a line only right before "\n" (where it is dropped): anywhere else
        # it is E013, as a line break some editors show and the language does not read.
        cr = line.find("\r")
        unseen = cr if 0 <= cr < len(line) - 1 else -1  # the first such character
        where = ""  # what it stands in: "a comment", "a string", "a JSONPath"
        # scan the line: strings, comments, nesting (a run of `not` nests too)
        code_end = len(line)
        seen = 0  # where the text not yet scanned starts
        for m in _SCAN.finditer(line):
            tok = m.group()
            first = tok[0]
            if run and line[seen:m.start()].strip(_BLANK):
                run = 0  # something else stood between: that `not` chain has ended
            seen = m.end()
            if first == '"':
                if len(tok) > 1 and tok.endswith('"'):
                    run = 0
                    if unseen_in_text:
                        unseen, where = _first_unseen(unseen, where, tok, m.start(),
                                                      "a string")
                    continue
                broken_lines.add(lineno)
                problems.append(sources.problem(
                    "E004", "unterminated string", name, lineno, m.start() + 1,
                    'close the string with " on the same line'))
                code_end = m.start()
                break
            if first == "$":
                run = 0
                if unseen_in_text:
                    unseen, where = _first_unseen(unseen, where, tok, m.start(),
                                                  "a JSONPath")
                sharp = _comment_in_path(tok)
                if sharp >= 0:
                    broken_lines.add(lineno)
                    problems.append(sources.problem(
                        "E012", "'#' inside an unquoted JSONPath", name, lineno,
                        m.start() + sharp + 1,
                        f'quote the path ("{tok}") if the name holds a \'#\', or put a '
                        "space before a comment"))
                continue
            if first == "#":
                comments.append(ast.Comment(line[m.start():].rstrip(), ast.Span(
                    name, lineno, m.start() + 1, lineno, len(line) + 1)))
                code_end = m.start()
                if unseen_in_text:
                    unseen, where = _first_unseen(unseen, where, line[m.start():],
                                                  m.start(), "a comment")
                break
            if first in ")]}":
                depth = max(depth - 1, 0)
                run = 0
                continue
            if first in "([{":
                run = 0
                depth = nested = depth + 1
            else:  # `not`
                run += 1
                nested = depth + run
                if run < 2:  # a lone `not` (also `x not in y`) nests no deeper
                    continue
            if nested > MAX_NESTING and not nesting_reported:
                nesting_reported = True
                broken_lines.add(lineno)
                problems.append(sources.problem(
                    "E007", f"nesting deeper than {MAX_NESTING} levels", name, lineno,
                    m.start() + 1, "simplify the expression"))
        if run and line[seen:code_end].strip(_BLANK):
            run = 0
        if unseen >= 0:
            broken_lines.add(lineno)
            problems.append(_unseen_problem(line[unseen], where, name, lineno, unseen + 1,
                                            sources))
        if start_line == 0:
            if line[:code_end].strip(_BLANK):
                start_line = lineno
            else:
                continue
        current.append(line)
    if current and any(s.strip(_BLANK) for s in current):
        chunks.append((start_line, "\n".join(current)))
    if broken_lines:  # parsing a statement with a broken string would only add noise
        chunks = [(start, chunk) for start, chunk in chunks
                  if not any(start <= b < start + chunk.count("\n") + 1 for b in broken_lines)]
    return chunks, comments, problems


def _first_unseen(found: int, where: str, text: str, offset: int, region: str
                  ) -> tuple[int, str]:
    """The first character of a line that :data:`UNSEEN` holds: ``found`` (in ``where``)
    or, if it comes earlier or there was none, the first one in ``text`` (which starts at
    ``offset`` of the line and is a ``region``)."""
    inside = UNSEEN.search(text)
    if inside is not None and (found < 0 or offset + inside.start() < found):
        return offset + inside.start(), region
    return found, where


def _describe(ch: str) -> str:
    """A control or format character named for people: ``a bidirectional control (U+202E
    RIGHT-TO-LEFT OVERRIDE)``."""
    code = f"U+{ord(ch):04X}"
    if ch == "\x1b":
        return f"an escape character ({code}, which starts terminal escape sequences)"
    if ch == "\x7f":
        return f"a delete character ({code})"
    if unicodedata.category(ch) == "Cc":
        return f"a control character ({code})"
    kind = "a bidirectional control" if ch in _BIDI else "an invisible format character"
    return f"{kind} ({code} {unicodedata.name(ch, '')})".replace(" )", ")")


def _unseen_problem(ch: str, where: str, name: str, line: int, column: int,
                    sources: SourceSet) -> Problem:
    """E013 for a line break of other tools, E014 for another control or format character
    inside a comment, a string or a JSONPath (``where``)."""
    if ch in _BREAK_NAMES:
        inside = "" if ch == "\r" else f" inside {where}"
        return sources.problem(
            "E013", f"{_BREAK_NAMES[ch]}{inside}: lines end at \\n only", name, line, column,
            "save the file with \\n (or \\r\\n) line endings" if ch == "\r" else
            f"remove it, or write it as the escape {ast.u_escape(ch)} in a string")
    escape = ast.u_escape(ch)
    fix = {"a string": f"remove it, or write it as the escape {escape}",
           "a JSONPath": f"remove it, or quote the path and write it there as the escape "
                         f"{escape}"}
    return sources.problem(
        "E014", f"{_describe(ch)} inside {where}: the text would not read as it shows", name,
        line, column, fix.get(where, "remove it: a comment holds no control (but tab) or format "
                                     "character"))


def _comment_in_path(path: str) -> int:
    """Where a ``#`` stands in an unquoted JSONPath outside its quoted names, or -1.

    The grammar reads ``$.a#b`` as one path (JSONPATH runs to a space, ``,``, ``{`` or
    ``}``), while a reader takes ``#b`` for a comment: the path would not be the one they
    see. ``$['a#b']`` names the key ``a#b``: its ``#`` is inside quotes.
    """
    quote = ""
    escaped = False
    for i, ch in enumerate(path):
        if escaped:
            escaped = False
        elif quote:
            if ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            return i
    return -1


#: Statements the fast reader may hand to Lark one by one before the whole file goes to
#: Lark in one call instead (cheaper per statement).
_MAX_LARK_STATEMENTS = 64


def _read_fast(chunks: list[tuple[int, str]], name: str, sources: SourceSet
               ) -> list[ast.Statement] | None:
    """The file's statements, most read by :mod:`._fastparse` and the rest by Lark one by
    one; None if a statement has an error or too many need Lark."""
    out: list[ast.Statement | None] = []
    left: list[int] = []
    for start_line, chunk in chunks:
        st = read_statement(chunk, name, start_line - 1)
        if st is None:
            left.append(len(out))
            if len(left) > _MAX_LARK_STATEMENTS:
                return None
        out.append(st)
    for i in left:
        start_line, chunk = chunks[i]
        st, probs = _parse_statement(chunk, start_line, name, sources)
        if probs or st is None:
            return None
        out[i] = st
    return out  # type: ignore[return-value]


def _parse_whole(text: str, name: str, chunks: list[tuple[int, str]]
                 ) -> list[ast.Statement] | None:
    """One Lark call for the whole file: several times cheaper than one per statement.

    Used only when it agrees with the statement splitter (same statements, starting on
    the same lines); anything else -- an error, or a grammar reading that joins lines the
    splitter separates -- falls back to statement-by-statement parsing, which is what
    defines the language and reports every error.
    """
    try:
        _current.text = text
        tree = _lark().parse(text, start="file")
        trees = tree.children
        if len(trees) != len(chunks):
            return None
        build = _Build(name, 0)
        out = []
        for (start_line, chunk), st in zip(chunks, trees, strict=True):
            meta = getattr(st, "meta", None)
            # Each statement must lie within its chunk: start on its first line and end
            # by its last. A reading that carries a statement over into the next chunk's
            # lines (an unindented continuation line, then a statement later on that
            # line) is not the language's, even when the counts and start lines agree.
            if getattr(meta, "line", None) != start_line or \
                    getattr(meta, "end_line", start_line) > start_line + chunk.count("\n"):
                return None
            out.append(build.statement(st))  # type: ignore[arg-type]
        return out
    except (LarkError, _GlueError, _LiteralError, RecursionError, ValueError):
        return None


# ---- statement level -------------------------------------------------------------------

class _Parts:
    """The children of one Lark node, found by name: terminals by their type (``ID``,
    ``STRING``...), subtrees by their rule or alias name (``pattern_list``, ``scope``).

    The grammar is the authority on what a node holds; the builder asks for parts by
    name, so adding an optional part to a rule cannot shift what the others read.
    """

    __slots__ = ("tokens", "trees")

    def __init__(self, children: list[Any]) -> None:
        self.tokens: dict[str, list[Token]] = {}
        self.trees: dict[str, list[Tree[Any]]] = {}
        for child in children:
            if child is None:  # an absent [optional] part
                continue
            if isinstance(child, Token):
                self.tokens.setdefault(child.type, []).append(child)
            else:
                self.trees.setdefault(child.data, []).append(child)

    def token(self, kind: str) -> Token:
        return self.tokens[kind][0]

    def maybe_token(self, kind: str) -> Token | None:
        found = self.tokens.get(kind)
        return found[0] if found else None

    def all_tokens(self, kind: str) -> list[Token]:
        return self.tokens.get(kind, [])

    def tree(self, name: str) -> Tree[Any]:
        return self.trees[name][0]

    def maybe_tree(self, name: str) -> Tree[Any] | None:
        found = self.trees.get(name)
        return found[0] if found else None

    def all_trees(self, name: str) -> list[Tree[Any]]:
        return self.trees.get(name, [])


def _token(t: Tree[Any], kind: str) -> Token:
    """The token of type ``kind`` among ``t``'s children (:meth:`_Parts.token` for a node
    with one token wanted: a literal, an operator)."""
    for c in t.children:
        if isinstance(c, Token) and c.type == kind:
            return c
    raise KeyError(kind)  # pragma: no cover - the grammar gives no other shape


def _subtrees(t: Tree[Any], count: int) -> list[Tree[Any]]:
    """The subtrees of ``t`` in source order, which the grammar says are ``count``: the
    operands of an operator (``operand CMP_OP operand``: the left one first), or the one
    statement of ``start``. Operands are one rule whatever their kind, so they have no
    name to be found by; their order is their meaning. The node's tokens are found by
    name (:class:`_Parts`), never counted in."""
    found = [c for c in t.children if isinstance(c, Tree)]
    if len(found) != count:  # pragma: no cover - the grammar gives no other shape
        raise AssertionError(f"{t.data}: {len(found)} subtrees, expected {count}")
    return found


class _Build:
    """Turns one statement's Lark tree into AST nodes (line numbers offset to the file).

    Dispatch is by the node's rule or alias name (``_STATEMENTS``, ``_EXPRESSIONS``,
    ``_TOOL_ITEMS``), and each builder takes its parts by name (:class:`_Parts`).
    """

    def __init__(self, name: str, line_offset: int) -> None:
        self.name = name
        self.off = line_offset
        self.depth = 0  # expressions being built, one inside the other

    def span(self, node: Any) -> ast.Span:
        if isinstance(node, Token):
            return ast.Span(self.name, (node.line or 1) + self.off, node.column or 1,
                            (node.end_line or node.line or 1) + self.off,
                            node.end_column or node.column or 1)
        m = node.meta
        if getattr(m, "empty", True):
            return ast.NOSPAN
        return ast.Span(self.name, m.line + self.off, m.column, m.end_line + self.off,
                        m.end_column)

    # -- literals --
    @staticmethod
    def string(tok: Any) -> str:
        text = str(tok)
        if "\\" not in text and text.isprintable():  # nothing to unescape
            return text[1:-1]
        try:
            return str(json.loads(text))
        except ValueError:
            raise _LiteralError(tok, "invalid string literal: control characters must be "
                                "escaped (\\t, \\n, \\u0001)") from None

    def patterns(self, t: Tree[Any]) -> tuple[str, ...]:
        return tuple(str(x) for x in t.children)

    def scope(self, t: Tree[Any] | None) -> tuple[ast.ScopeItem, ...]:
        if t is None:
            return ()
        out = []
        for item in t.children:
            if item.data == "scope_role":
                tok = _Parts(item.children).token("ID")
                out.append(ast.ScopeItem("role", str(tok), self.span(tok)))
            else:
                tok = _Parts(item.children).token("STRING")
                out.append(ast.ScopeItem("agent", self.string(tok), self.span(tok)))
        return tuple(out)

    def conditions(self, items: list[Tree[Any]]) -> tuple[ast.Condition, ...]:
        out = []
        for cond in items:
            parts = _Parts(cond.children)
            (expr,) = (c for c in cond.children if isinstance(c, Tree))
            out.append(ast.Condition(str(parts.token("COND_KW")), self.expr(expr),
                                     self.span(cond)))
        return tuple(out)

    def approval_terms(self, p: _Parts) -> ast.ApprovalTerms | None:
        """A rule's ``expires`` / ``uses`` options (each at most once), or None."""
        expires_opts, uses_opts = p.all_trees("approval_expires"), p.all_trees("approval_uses")
        if not expires_opts and not uses_opts:
            return None
        expires = expires_text = uses = None
        expires_span = uses_span = ast.NOSPAN
        if len(expires_opts) > 1:
            raise _LiteralError(_Parts(expires_opts[1].children).token("DURATION"),
                                "'expires' is given twice")
        if len(uses_opts) > 1:
            raise _LiteralError(_Parts(uses_opts[1].children).token("INT"),
                                "'uses' is given twice")
        if expires_opts:
            tok = _Parts(expires_opts[0].children).token("DURATION")
            expires, expires_text, expires_span = self.duration(tok), str(tok), self.span(tok)
        if uses_opts:
            count_tok = _Parts(uses_opts[0].children).token("INT")
            count = str(count_tok)
            uses = int(count) if len(count) < 10 else 10**9
            uses_span = self.span(count_tok)
        first = min(expires_opts + uses_opts, key=lambda t: (t.meta.line, t.meta.column))
        return ast.ApprovalTerms(expires, expires_text, uses, self.span(first), expires_span,
                                 uses_span)

    @staticmethod
    def mode(p: _Parts) -> str:
        """``mode warn`` / ``mode log`` (a shadow statement), else ``enforce``."""
        clause = p.maybe_tree("mode_clause")
        if clause is None:
            return "enforce"
        return str(_Parts(clause.children).token("SHADOW_MODE"))

    def number(self, tok: Any) -> int | Decimal:
        s = str(tok)
        if len(s) > 40:
            raise _LiteralError(tok, "number literal is too long")
        if "." in s:
            return Decimal(s)
        return int(s)

    def decimal(self, tok: Any) -> Decimal:
        s = str(tok)
        if len(s) > 40:
            raise _LiteralError(tok, "number literal is too long")
        try:
            return Decimal(s)
        except InvalidOperation:  # pragma: no cover - the lexer admits digits only
            raise _LiteralError(tok, "not a number") from None

    def money(self, t: Tree[Any]) -> ast.MoneyLit:
        parts = _Parts(t.children)
        return ast.MoneyLit(self.decimal(parts.token("NUMBER")), str(parts.token("CODE")),
                            self.span(t))

    def duration(self, tok: Any) -> int:
        s = str(tok)
        if len(s) > 12:
            raise _LiteralError(tok, "duration is too long")
        return int(s[:-1]) * _DURATION_UNITS[s[-1]]

    # -- statements --
    def statement(self, t: Tree[Any]) -> ast.Statement:
        build = _STATEMENTS.get(t.data)
        if build is None:  # pragma: no cover - the grammar has no other statement
            raise AssertionError(f"unhandled statement {t.data}")
        return build(self, _Parts(t.children), self.span(t))

    def namespace_decl(self, p: _Parts, sp: ast.Span) -> ast.Statement:
        return ast.NamespaceDecl(str(p.token("NAME")), sp)

    def currency_decl(self, p: _Parts, sp: ast.Span) -> ast.Statement:
        return ast.CurrencyDecl(str(p.token("CODE")), sp)

    def default_currency_decl(self, p: _Parts, sp: ast.Span) -> ast.Statement:
        return ast.DefaultCurrencyDecl(str(p.token("CODE")), sp)

    def rate_decl(self, p: _Parts, sp: ast.Span) -> ast.Statement:
        return ast.RateDecl(str(p.token("CODE")), self.decimal(p.token("NUMBER")), sp)

    def rates_decl(self, p: _Parts, sp: ast.Span) -> ast.Statement:
        age = p.maybe_token("DURATION")
        return ast.RatesDecl(self.string(p.token("STRING")),
                             self.duration(age) if age is not None else None,
                             str(age) if age is not None else None, sp)

    def tz_decl(self, p: _Parts, sp: ast.Span) -> ast.Statement:
        return ast.TzDecl(self.string(p.token("STRING")), sp)

    def role_decl(self, p: _Parts, sp: ast.Span) -> ast.Statement:
        return ast.RoleDecl(str(p.token("ID")), self.patterns(p.tree("pattern_list")), sp)

    def agent_decl(self, p: _Parts, sp: ast.Span) -> ast.Statement:
        names = p.maybe_tree("name_list")
        roles = tuple(str(x) for x in names.children) if names is not None else ()
        role_spans = tuple(self.span(x) for x in names.children) if names is not None else ()
        ident = p.token("STRING")
        return ast.AgentDecl(self.string(ident), roles, self.attributes(p), sp, role_spans,
                             self.span(ident))

    def resource_decl(self, p: _Parts, sp: ast.Span) -> ast.Statement:
        return ast.ResourceDecl(str(p.token("ID")), self.string(p.token("STRING")),
                                self.attributes(p), sp)

    def attributes(self, p: _Parts) -> tuple[tuple[str, ast.Literal], ...]:
        """The ``{ name = literal, ... }`` block of an agent or a resource (or none)."""
        block = p.maybe_tree("attributes")
        if block is None:
            return ()
        pairs = []
        for attr in block.children:
            if attr is None:
                continue
            (value,) = (c for c in attr.children if isinstance(c, Tree))
            pairs.append((str(_Parts(attr.children).token("NAME")), self.literal(value)))
        return tuple(pairs)

    def rule_decl(self, p: _Parts, sp: ast.Span) -> ast.Statement:
        return ast.Rule(str(p.token("EFFECT")), str(p.token("ID")),
                        self.patterns(p.tree("pattern_list")), self.scope(p.maybe_tree("scope")),
                        self.conditions(p.all_trees("condition")), sp, self.approval_terms(p),
                        self.mode(p))

    def limit_decl(self, p: _Parts, sp: ast.Span) -> ast.Statement:
        return ast.LimitDecl(str(p.token("ID")), self.patterns(p.tree("pattern_list")),
                             self.money(p.tree("money")), self.scope(p.maybe_tree("scope")),
                             self.conditions(p.all_trees("condition")), sp, self.mode(p))

    def approval_over_decl(self, p: _Parts, sp: ast.Span) -> ast.Statement:
        return ast.ApprovalOverDecl(str(p.token("EFFECT")), str(p.token("ID")),
                                    self.patterns(p.tree("pattern_list")),
                                    self.money(p.tree("money")),
                                    self.scope(p.maybe_tree("scope")),
                                    self.conditions(p.all_trees("condition")), sp,
                                    self.approval_terms(p), self.mode(p))

    def budget_decl(self, p: _Parts, sp: ast.Span) -> ast.Statement:
        tz = None
        overdraft = None
        spans: dict[str, ast.Span] = {}
        for opt in p.all_trees("budget_tz"):
            tok = _Parts(opt.children).token("STRING")
            tz, spans["tz"] = self.string(tok), self.span(tok)
        cap_opts = p.all_trees("budget_cap")
        caps = tuple((str(_Parts(opt.children).token("CAP_NAME")),
                      int(str(_Parts(opt.children).token("INT"))))
                     for opt in cap_opts)
        if cap_opts:
            spans["caps"] = self.span(cap_opts[0])
        for i, opt in enumerate(cap_opts):  # each cap's value, where a problem with it is
            spans[f"caps[{i}]"] = self.span(_Parts(opt.children).token("INT"))
        for opt in p.all_trees("budget_overdraft"):
            tok = _Parts(opt.children).token("NUMBER")
            overdraft, spans["overdraft_limit"] = self.decimal(tok), self.span(tok)
        subject = p.maybe_token("SUBJECT") or p.maybe_token("FIELD_SUBJECT")
        if subject is not None:
            spans["subject"] = self.span(subject)
        id_tok = p.token("ID")
        ident, pats = str(id_tok), self.patterns(p.tree("pattern_list"))
        spans["id"] = self.span(id_tok)
        limit_tok, unit_tok = p.token("NUMBER"), p.token("UNIT")
        limit, unit = self.decimal(limit_tok), str(unit_tok)
        spans["limit"], spans["unit"] = self.span(limit_tok), self.span(unit_tok)
        rolling = p.maybe_tree("rolling_window")
        if rolling is not None:
            tok = _Parts(rolling.children).token("DURATION")
            window, seconds, text = "rolling", self.duration(tok), str(tok)
        else:
            tok = _Parts(p.tree("window").children).token("WINDOW_UNIT")
            window = str(tok)
            seconds, text = None, None
        spans["window"] = self.span(tok)
        return ast.BudgetDecl(ident, pats, limit, unit, window, seconds, text,
                              str(subject) if subject is not None else "agent", (), tz,
                              overdraft, sp, caps, self.mode(p), tuple(spans.items()))

    def ratelimit_decl(self, p: _Parts, sp: ast.Span) -> ast.Statement:
        burst = p.maybe_tree("rate_burst")
        burst_tok = _Parts(burst.children).token("INT") if burst is not None else None
        subject = p.maybe_token("SUBJECT") or p.maybe_token("FIELD_SUBJECT")
        count, id_tok = p.token("INT"), p.token("ID")
        return ast.RateLimitDecl(
            str(id_tok), self.patterns(p.tree("pattern_list")), int(str(count)),
            str(p.token("RATE_PERIOD")),
            int(str(burst_tok)) if burst_tok is not None else None,
            str(subject) if subject is not None else "agent", sp, self.span(count),
            self.span(burst_tok) if burst_tok is not None else ast.NOSPAN, self.mode(p),
            self.span(id_tok))

    def price_decl(self, p: _Parts, sp: ast.Span) -> ast.Statement:
        provider_tok, model_tok = p.all_tokens("STRING")
        provider, model = self.string(provider_tok), self.string(model_tok)
        items, spans = [], []
        for item in p.all_trees("price_item"):
            parts = _Parts(item.children)
            kind, number, code = (parts.token("PRICE_KIND"), parts.token("NUMBER"),
                                  parts.token("CODE"))
            items.append((str(kind), self.decimal(number), str(code)))
            spans.append((self.span(kind), self.span(number), self.span(code)))
        per_tok = p.token("PRICE_PER")
        per_text = str(per_tok)
        factor = {"K": 1000, "M": 1_000_000}.get(per_text[-1], 1)
        per = int(per_text.rstrip("KM")) * factor
        return ast.PriceDecl(provider, model, tuple(items), per, per_text, sp,
                             self.span(per_tok), self.span(provider_tok), self.span(model_tok),
                             tuple(spans))

    def http_tool(self, p: _Parts, sp: ast.Span) -> ast.Statement:
        hosts = tuple(self.string(x) for x in p.all_tokens("STRING"))
        items = tuple(self.tool_item(x) for name in _TOOL_ITEMS for x in p.all_trees(name))
        items = tuple(sorted(items, key=lambda i: (i.span.line, i.span.column)))
        return ast.HttpTool(str(p.token("ID")), hosts, items, sp)

    def named_tool(self, p: _Parts, sp: ast.Span) -> ast.Statement:
        body = p.maybe_tree("tool_body")
        items = tuple(self.tool_item(x) for x in body.children
                      if isinstance(x, Tree)) if body is not None else ()
        return ast.NamedTool(str(p.token("ID")), str(p.token("NAMED_KW")),
                             self.string(p.token("STRING")), str(p.token("PATTERN")), items,
                             body is not None, sp)

    def egress_decl(self, p: _Parts, sp: ast.Span) -> ast.Statement:
        items = []
        for item in p.all_trees("egress_item"):
            parts = _Parts(item.children)
            items.append((str(parts.token("EGRESS_VERB")), self.string(parts.token("STRING"))))
        return ast.EgressDecl(tuple(items), sp)

    def delegation_decl(self, p: _Parts, sp: ast.Span) -> ast.Statement:
        values: dict[str, Any] = {}
        for kind, terminal in _DELEGATION_ITEMS.items():
            found = p.all_trees(kind)
            if len(found) > 1:
                raise _LiteralError(_Parts(found[1].children).token(terminal),
                                    f"'{kind}' is set twice in this delegation block")
            if not found:
                continue
            tok = _Parts(found[0].children).token(terminal)
            if kind == "max_depth":
                values["max_depth"] = int(str(tok)) if len(str(tok)) < 10 else 10**9
            elif kind in ("max_ttl", "child_max_ttl"):
                values[kind] = self.duration(tok)
                values[f"{kind}_text"] = str(tok)
            else:
                values[kind] = self.string(tok)
        return ast.DelegationDecl(span=sp, **values)

    def log_decl(self, p: _Parts, sp: ast.Span) -> ast.Statement:
        count = p.maybe_token("INT")
        keep = int(str(count)) if count is not None and len(str(count)) < 6 else None
        if count is not None and keep is None:
            raise _LiteralError(count, "partial length is too large")
        return ast.LogRedact(self.jsonpath(p.tree("jsonpath")), str(p.token("STRATEGY")),
                             keep, sp)

    def schema_decl(self, p: _Parts, sp: ast.Span) -> ast.Statement:
        return ast.SchemaDecl(self.patterns(p.tree("pattern_list")),
                              self.schema_fields(p.tree("schema_record")), sp)

    def schema_fields(self, t: Tree[Any]) -> tuple[ast.SchemaField, ...]:
        out = []
        for f in t.children:
            if not isinstance(f, Tree):
                continue
            parts = _Parts(f.children)
            (kind,) = (c for c in f.children if isinstance(c, Tree))
            out.append(ast.SchemaField(str(parts.token("NAME")),
                                       parts.maybe_token("OPTIONAL") is not None,
                                       self.schema_type(kind), self.span(f)))
        return tuple(out)

    def schema_type(self, t: Tree[Any]) -> ast.SchemaType:
        sp = self.span(t)
        if t.data == "schema_record":
            return ast.SchemaType("{}", fields=self.schema_fields(t), span=sp)
        parts = _Parts(t.children)
        name = str(parts.token("NAME"))
        if t.data == "schema_list":
            (item,) = (c for c in t.children if isinstance(c, Tree))
            return ast.SchemaType(name, item=self.schema_type(item), span=sp)
        if t.data == "schema_enum":
            return ast.SchemaType(name, values=tuple(self.string(x) for x in
                                                     parts.all_tokens("STRING")), span=sp)
        return ast.SchemaType(name, span=sp)

    # -- tool items --
    def tool_item(self, t: Tree[Any]) -> ast.ToolItem:
        p = _Parts(t.children)
        sp = self.span(t)
        if t.data == "route":
            return ast.Route(str(p.token("METHOD")), self.string(p.token("STRING")),
                             str(p.token("PATTERN")),
                             tuple(self.tool_item(x)  # type: ignore[misc]
                                   for x in p.all_trees("extraction")), sp)
        if t.data == "deny_route":
            method = p.maybe_token("METHOD")
            return ast.DenyRoute(str(method) if method is not None else None,
                                 self.string(p.token("STRING")), sp)
        if t.data == "redact":
            count = p.maybe_token("INT")
            keep = int(str(count)) if count is not None and len(str(count)) < 6 else None
            if count is not None and keep is None:
                raise _LiteralError(count, "partial length is too large")
            return ast.Redact(self.jsonpath(p.tree("jsonpath")), str(p.token("STRATEGY")),
                              keep, sp)
        if t.data == "extraction":
            minor = p.maybe_token("MINOR") is not None
            named = p.maybe_tree("named_source")
            if named is not None:
                source = _Parts(named.children)
                return ast.Extraction(str(p.token("NAME")), str(source.token("SOURCE_KIND")),
                                      self.string(source.token("STRING")), minor, sp)
            return ast.Extraction(str(p.token("NAME")), "body",
                                  self.jsonpath(p.tree("jsonpath")), minor, sp)
        raise AssertionError(f"unhandled tool item {t.data}")  # pragma: no cover

    def jsonpath(self, t: Tree[Any]) -> str:
        p = _Parts(t.children)
        quoted = p.maybe_token("STRING")
        return self.string(quoted) if quoted is not None else str(p.token("JSONPATH"))

    # -- expressions --
    def literal(self, t: Tree[Any]) -> ast.Literal:
        sp = self.span(t)
        if t.data == "string":
            return ast.Literal(self.string(_token(t, "STRING")), sp)
        if t.data == "number":
            return ast.Literal(self.number(_token(t, "NUMBER")), sp)
        return ast.Literal(t.data == "true", sp)

    def expr(self, t: Any) -> ast.Expr:
        if isinstance(t, Token):  # pragma: no cover - every operand is a tree
            raise _LiteralError(t, "unexpected token in expression")
        build = _EXPRESSIONS.get(t.data)
        if build is None:  # pragma: no cover - the grammar has no other expression
            raise AssertionError(f"unhandled expression {t.data}")
        if self.depth >= _MAX_BUILD_DEPTH:
            # An explicit limit, at the node that crosses it, rather than Python's
            # recursion limit at the statement: `not ( not not ( ...` nests past what
            # the splitter counts (brackets, and runs of `not` each on its own).
            m = t.meta
            raise _LiteralError(Token("EXPR", "", line=m.line, column=m.column),
                                "expression nested too deeply", "E007",
                                "simplify the expression")
        self.depth += 1
        try:
            return build(self, t)
        finally:
            self.depth -= 1

    def amount(self, t: Tree[Any]) -> ast.Expr:
        return ast.Amount(self.span(t))

    def path(self, t: Any) -> ast.Expr:
        # ROOT, then one token per segment: NAME for `.name`, STRING for `["key"]`.
        segs = tuple(self.string(s) if s.type == "STRING" else str(s) for s in t.children
                     if s.type != "ROOT")
        return ast.Path(str(_Parts(t.children).token("ROOT")), segs, self.span(t))

    def call(self, t: Tree[Any]) -> ast.Expr:
        args = tuple(self.expr(a) for a in t.children if isinstance(a, Tree))
        return ast.Call(str(_Parts(t.children).token("NAME")), args, self.span(t))

    def list_(self, t: Tree[Any]) -> ast.Expr:
        return ast.ListExpr(tuple(self.expr(a) for a in t.children if a is not None),
                            self.span(t))

    def compare(self, t: Tree[Any]) -> ast.Expr:
        left, right = _subtrees(t, 2)  # operand CMP_OP operand
        return ast.Compare(str(_token(t, "CMP_OP")), self.expr(left),
                           self.expr(right), self.span(t))

    def in_(self, t: Tree[Any]) -> ast.Expr:
        item, collection = _subtrees(t, 2)  # operand "in" operand
        return ast.In(self.expr(item), self.expr(collection), t.data == "not_in",
                      self.span(t))

    def not_(self, t: Tree[Any]) -> ast.Expr:
        (inner,) = _subtrees(t, 1)  # "not" not_expr
        return ast.Not(self.expr(inner), self.span(t))

    def and_expr(self, t: Tree[Any]) -> ast.Expr:
        return ast.And(tuple(self.expr(a) for a in t.children), self.span(t))

    def or_expr(self, t: Tree[Any]) -> ast.Expr:
        return ast.Or(tuple(self.expr(a) for a in t.children), self.span(t))


_Builder = Callable[[_Build, _Parts, ast.Span], ast.Statement]
#: Statement builders by rule (or alias) name.
_STATEMENTS: dict[str, _Builder] = {
    name: getattr(_Build, name) for name in (
        "namespace_decl", "currency_decl", "default_currency_decl", "rate_decl",
        "rates_decl", "tz_decl", "role_decl", "agent_decl", "resource_decl", "rule_decl",
        "limit_decl",
        "approval_over_decl", "budget_decl", "http_tool", "named_tool", "egress_decl",
        "delegation_decl", "log_decl", "schema_decl", "price_decl", "ratelimit_decl")
}
#: Expression builders by rule (or alias) name.
_EXPRESSIONS: dict[str, Callable[[_Build, Any], ast.Expr]] = {
    "string": _Build.literal, "number": _Build.literal, "true": _Build.literal,
    "false": _Build.literal, "money": _Build.money, "amount": _Build.amount,
    "path": _Build.path, "call": _Build.call, "list": _Build.list_,
    "compare": _Build.compare, "in_": _Build.in_, "not_in": _Build.in_,
    "not_": _Build.not_, "and_expr": _Build.and_expr, "or_expr": _Build.or_expr,
}
#: A delegation block's settings: the alias of each ``delegation_item`` and the terminal
#: that holds its value.
_DELEGATION_ITEMS = {"max_depth": "INT", "max_ttl": "DURATION", "child_max_ttl": "DURATION",
                     "issuer": "STRING", "audience": "STRING"}
#: Tool items by rule name (the grammar's ``?tool_item``).
_TOOL_ITEMS = ("route", "deny_route", "redact", "extraction")


class _LiteralError(Exception):
    """A statement that parses but cannot be built (a literal out of range by default)."""

    def __init__(self, tok: Token, message: str, code: str = "E009",
                 hint: str | None = None) -> None:
        super().__init__(message)
        self.tok = tok
        self.message = message
        self.code = code
        self.hint = hint


def _describe_expected(expected: set[str]) -> str:
    names = sorted({_KEYWORD_TERMINALS.get(e, e.lower()) for e in expected
                    if e in _KEYWORD_TERMINALS or not e.startswith("_")})
    if len(names) > 8:
        names = [*names[:8], "..."]
    return ", ".join(names)


def _suggest(word: str, options: tuple[str, ...] | list[str]) -> str | None:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.7)
    return f"did you mean '{close[0]}'?" if close else None


def _parse_statement(chunk: str, start_line: int, name: str, sources: SourceSet
                     ) -> tuple[ast.Statement | None, list[Problem]]:
    off = start_line - 1
    first = _FIRST_WORD.match(chunk)
    if first and first.group(1) not in STATEMENT_KEYWORDS:
        word = first.group(1)
        suggestion = _suggest(word, STATEMENT_KEYWORDS) or (
            "a statement starts with one of: " + ", ".join(STATEMENT_KEYWORDS)
            + "; continuation lines must be indented")
        return None, [sources.problem("E005", f"unknown statement '{word}'", name, start_line,
                                      first.start(1) + 1, suggestion)]
    try:
        _current.text = chunk
        tree = _lark().parse(chunk, start="start")
        (statement,) = _subtrees(tree, 1)  # start: statement
        return _Build(name, off).statement(statement), []
    except UnexpectedCharacters as exc:
        line, col = exc.line + off, exc.column
        src_line = chunk.split("\n")[exc.line - 1] if exc.line else ""  # "\n" only, as Lark
        ch = src_line[exc.column - 1:exc.column]
        return None, [sources.problem("E001", f"unexpected character {ch!r}", name, line, col,
                                      _hint_for_char(ch, src_line[exc.column - 1:],
                                                     set(exc.allowed or ())))]
    except UnexpectedToken as exc:
        tok = exc.token
        if tok.type == "$END":
            return None, [_eof_problem(chunk, start_line, name, sources, exc.expected)]
        word = str(tok)
        hint = None
        if tok.type in ("NAME", "ID", "PATTERN"):
            hint = _suggest(word, _KEYWORDS)
        if word == "=" and "CMP_OP" in exc.expected:
            hint = "compare with '=='"
        message = f"unexpected {word!r}"
        line_text = chunk.split("\n")[(tok.line or 1) - 1]
        if (tok.line or 1) > 1 and word in STATEMENT_KEYWORDS and \
                not line_text[:(tok.column or 1) - 1].strip():
            # An indented line continues the statement above it.
            message = (f"unexpected {word!r}: this line is indented, so it continues the "
                       "statement above")
            hint = "start a statement at the beginning of its line"
        elif hint is None and "STRING" in exc.expected and tok.type != "STRING":
            hint = f'write it in double quotes: "{_word_at(chunk, tok)}"'
        if hint is None:
            hint = f"expected {_describe_expected(set(exc.expected))}"
        return None, [sources.problem("E002", message, name,
                                      (tok.line or 1) + off, tok.column or 1, hint)]
    except UnexpectedEOF as exc:
        return None, [_eof_problem(chunk, start_line, name, sources, set(exc.expected))]
    except _LiteralError as exc:
        tok = exc.tok
        return None, [sources.problem(exc.code, exc.message, name, (tok.line or 1) + off,
                                      tok.column or 1, exc.hint)]
    except _GlueError as exc:
        tok = exc.tok
        return None, [sources.problem("E002", f"unexpected {_word_at(chunk, tok)!r}", name,
                                      (tok.line or 1) + off, tok.column or 1,
                                      _suggest(_word_at(chunk, tok), _KEYWORDS)
                                      or f"'{tok}' is a keyword; separate it with a space")]
    except RecursionError:
        return None, [sources.problem("E007", "expression nested too deeply", name, start_line,
                                      1, "simplify the expression")]
    except LarkError as exc:  # pragma: no cover - any other Lark failure
        return None, [sources.problem("E002", f"cannot parse statement: {exc}", name,
                                      start_line, 1)]


def _eof_problem(chunk: str, start_line: int, name: str, sources: SourceSet,
                 expected: set[str]) -> Problem:
    """E003 just after the statement's last token: comments and blank lines after it
    (``not not  # why``) are not where it ends."""
    lines = chunk.split("\n")
    for i in range(len(lines) - 1, -1, -1):
        code = _code_of(lines[i]).rstrip(_BLANK)
        if code or i == 0:
            return sources.problem("E003", "statement ends too early", name, start_line + i,
                                   len(code) + 1, f"expected {_describe_expected(expected)}")
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns at i == 0


def _code_of(line: str) -> str:
    """``line`` up to its comment, if it has one (as the splitter reads it)."""
    for m in _SCAN.finditer(line):
        if m.group() == "#":
            return line[:m.start()]
    return line


def _word_at(chunk: str, tok: Token) -> str:
    m = _WORD_AT.match(chunk, tok.start_pos or 0)
    return m.group(0) if m else str(tok)


def _hint_for_char(ch: str, rest: str, allowed: set[str]) -> str | None:
    """A hint for a character no token starts with (``rest``: the line from there)."""
    if rest.startswith("//"):
        return "comments start with '#'"
    if ch == "/" and "STRING" in allowed:
        path = re.match(r"[^\s,{}]*", rest)
        return f'write the path in double quotes: "{path.group(0) if path else rest}"'
    if ch == "'":
        return 'strings use double quotes: "text"'
    if ch == "&":
        return "write 'and'"
    if ch == "|":
        return "write 'or'"
    if ch == "!":
        return "write 'not' or '!='"
    if ch == "=":
        return "compare with '=='"
    if ch in _BREAK_NAMES:
        return f"{_BREAK_NAMES[ch]} is no line break or space here: lines end at \\n"
    if HIDDEN.match(ch):
        return (f"{_describe(ch)} is no part of a policy outside a string, where it is "
                f"written as the escape {ast.u_escape(ch)}")
    return None
