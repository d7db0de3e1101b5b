"""Policy-text problems: :class:`Problem` (one error or warning) and :class:`PolicyError`.

Both the parser and the checker report through these, so every error about policy text
reads the same way: ``file:line:col: error[E103]: message``, the offending line with a
caret under the column, and a hint. Codes are stable and listed in ``docs/errors.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from policyengine._visible import HIDDEN, HIDDEN_CHARS, LINE_BREAKS, UNSEEN, UNSEEN_CHARS, visible
from policyengine.errors import PolicyEngineError

__all__ = ["HIDDEN", "HIDDEN_CHARS", "LINE_BREAKS", "UNSEEN", "UNSEEN_CHARS", "WARNING_CODES",
           "PolicyError", "Problem", "SourceSet", "visible"]

#: Every warning code loading a policy can report (``Engine.warnings``, ``policyengine
#: check``): the checker's, and W204 and W205, which the engine adds at load because
#: they depend on its options (an HMAC key). What ``check --ignore`` accepts, so a
#: mistyped code is refused instead of silencing nothing; tests/cli holds it to the
#: warnings docs/errors.md lists.
WARNING_CODES: Final = frozenset({"W201", "W202", "W203", "W204", "W205", "W206", "W207",
                                  "W208", "W209"})

# HIDDEN (the class E014 refuses), LINE_BREAKS (the line breaks E013 refuses), UNSEEN (both
# but "\r") and visible() (how a report shows one) are the package's one definition, in
# policyengine._visible, where every command's text output reads them.


@dataclass(frozen=True)
class Problem:
    """One error or warning at a position in a policy file."""

    code: str
    message: str
    file: str
    line: int
    column: int
    hint: str | None = None
    severity: str = "error"  # "error" | "warning"
    excerpt: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # A message or hint that quotes policy text (a decoded string, a path) never
        # carries a character that would move or hide text on a terminal.
        for name in ("message", "hint"):
            text = getattr(self, name)
            # Only text is cleaned: a Problem built by hand with another value keeps it,
            # as it did before (the dataclass checks no types; rendering str()s it).
            shown = visible(text) if isinstance(text, str) else text
            if shown is not text:
                object.__setattr__(self, name, shown)

    def render(self) -> str:
        """Compiler-style text: location, message, caret excerpt, hint. A problem at no
        position in the file (line 0: E010, a path that is missing or cannot be read)
        shows the file's name alone."""
        where = (f"{visible(str(self.file))}" if self.line == 0
                 else f"{visible(str(self.file))}:{self.line}:{self.column}")
        out = f"{where}: {self.severity}[{self.code}]: {self.message}"
        if self.excerpt:
            out += "\n" + self.excerpt
        if self.hint:
            out += f"\n  = hint: {self.hint}"
        return out

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "file": self.file,
                "line": None if self.line == 0 else self.line,
                "column": None if self.line == 0 else self.column, "hint": self.hint,
                "severity": self.severity}


def excerpt(text_lines: Sequence[str], line: int, column: int) -> str:
    """The source line with a caret under ``column`` (both 1-based)."""
    if not 1 <= line <= len(text_lines):
        return ""
    src = text_lines[line - 1]
    # Lines are split at \n, so one trailing \r is the line's \r\n ending; a lone \r
    # before it is a character E013 points at and stays to be shown (rstrip("\r\n")
    # took every one and left the caret under nothing).
    src = src[:-1] if src.endswith("\r") else src
    if len(src) > 200:  # keep excerpts readable for minified or hostile input
        start = max(0, column - 80)
        src = src[start:start + 160]
        column -= start
    # Shown by visible(): the caret stays under the character it points at, one that
    # is shown as <U+202E> included (under its "<").
    column = len(visible(src[:max(column - 1, 0)])) + 1
    src = visible(src).expandtabs(1)
    gutter = f"{line:>4} | "
    caret = " " * (len(gutter) + max(column - 1, 0)) + "^"
    return f"{gutter}{src}\n{caret}"


class SourceSet:
    """The text of the files being compiled, for excerpts."""

    def __init__(self) -> None:
        self._texts: dict[str, str] = {}
        self._lines: dict[str, list[str]] = {}

    def add(self, name: str, text: str) -> None:
        self._texts[name] = text  # split into lines only when a problem needs them
        self._lines.pop(name, None)

    def problem(self, code: str, message: str, file: str, line: int, column: int,
                hint: str | None = None, severity: str = "error") -> Problem:
        lines = self._lines.get(file)
        if lines is None:
            # Lines end at "\n" only, as the parser counts them: str.splitlines() would
            # also break at U+2028, U+0085, \v, \f... (legal in comments and strings)
            # and show the wrong line under a right line number. A file whose text was
            # never added (too large, not text) has no line to show.
            text = self._texts.get(file)
            lines = self._lines[file] = text.split("\n") if text is not None else []
        return Problem(code, message, file, line, column, hint, severity,
                       excerpt(lines, line, column))


class PolicyError(PolicyEngineError):
    """Policy text that cannot be used. ``problems`` lists every error (and warning).

    ``err.code`` is the first error's code; ``render()`` (and ``message``) is the
    compiler-style report of every problem; ``str(err)`` is ``code: report``.
    """

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.errors = tuple(p for p in self.problems if p.severity == "error")
        self.warnings = tuple(p for p in self.problems if p.severity == "warning")
        first = self.errors[0] if self.errors else (self.problems[0] if self.problems else None)
        self.code = first.code if first else "E000"
        self.file = first.file if first else None
        self.line = first.line if first else None
        self.column = first.column if first else None
        # The full report is rendered on demand: garbage input can carry many problems.
        Exception.__init__(self, first.render().split("\n", 1)[0] if first else "policy error")

    @property
    def message(self) -> str:  # type: ignore[override]
        """The compiler-style report, rendered on demand."""
        return self.render()

    def render(self) -> str:
        # Errors first (each group in source order), so the report -- and ``str(err)``,
        # ``code: report`` -- opens with the problem whose code ``err.code`` is.
        others = (p for p in self.problems if p.severity != "error")
        body = "\n\n".join(p.render() for p in (*self.errors, *others))
        n = len(self.errors)
        return f"{body}\n\n{n} error{'s' if n != 1 else ''}" if n > 1 else body
