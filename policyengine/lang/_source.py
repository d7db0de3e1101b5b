"""Policy-text problems: :class:`Problem` (one error or warning) and :class:`PolicyError`.

Both the parser and the checker report through these, so every error about policy text
reads the same way: ``file:line:col: error[E103]: message``, the offending line with a
caret under the column, and a hint. Codes are stable and listed in ``docs/errors.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from policyengine.errors import PolicyEngineError

__all__ = ["PolicyError", "Problem", "SourceSet"]


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

    def render(self) -> str:
        """Compiler-style text: location, message, caret excerpt, hint."""
        out = f"{self.file}:{self.line}:{self.column}: {self.severity}[{self.code}]: {self.message}"
        if self.excerpt:
            out += "\n" + self.excerpt
        if self.hint:
            out += f"\n  = hint: {self.hint}"
        return out

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "file": self.file,
                "line": self.line, "column": self.column, "hint": self.hint,
                "severity": self.severity}


_VISIBLE = str.maketrans({"\r": "\u240d", "\x0b": "\u240b", "\x0c": "\u240c",
                          "\x1c": "\u241c", "\x1d": "\u241d", "\x1e": "\u241e",
                          "\x85": "\u2424", "\u2028": "\u2424", "\u2029": "\u2424"})


def excerpt(text_lines: Sequence[str], line: int, column: int) -> str:
    """The source line with a caret under ``column`` (both 1-based)."""
    if not 1 <= line <= len(text_lines):
        return ""
    # A character a terminal or str.splitlines() would break the excerpt at (a "\r" not
    # before "\n", U+2028...: E013) is shown as a visible symbol of one column.
    src = text_lines[line - 1].rstrip("\r\n").translate(_VISIBLE)
    if len(src) > 200:  # keep excerpts readable for minified or hostile input
        start = max(0, column - 80)
        src = src[start:start + 160]
        column -= start
    src = src.expandtabs(1)
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
