"""Text as a terminal shows it: the one place that decides which characters never reach
a terminal raw, and how they are shown instead.

:data:`HIDDEN` is the class a policy refuses inside a comment, a string or a JSONPath
(E014, docs/errors.md), :data:`LINE_BREAKS` the line breaks of other tools it refuses there
(E013) and :data:`UNSEEN` both (the parser's and ``quote``'s one class); :func:`visible`
shows each of them so it can be seen; :func:`say` prints human-readable command output through it.
A value printed as one field of a line (an id, a name, a path, a reason quoted from
input) goes through :func:`one_line` as well, so that a line feed or a tab in it cannot
fake a line, or a column, of the command's own layout.
Every text (not JSON) output of the command line goes through :func:`say`: a policy's
strings (which may hold any character as an escape, ``"\\u001b[2J"``), a request, a
token's claims and a decision-log record are all shown, never obeyed. JSON output is
printed as ``json.dumps`` writes it (ASCII, every such character escaped).
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Mapping
from types import MappingProxyType
from typing import TextIO

from policyengine.errors import PolicyEngineError

__all__ = ["HIDDEN", "HIDDEN_CHARS", "LINE_BREAKS", "UNSEEN", "UNSEEN_CHARS", "error_line",
           "error_of", "one_line", "say", "say_error", "visible"]

#: Characters that change what a reader sees without being seen themselves ("Trojan
#: Source", CVE-2021-42574), as a regex class body: every control character (Unicode
#: category Cc: C0 but tab, line feed and carriage return, DEL, C1; ESC starts a terminal
#: escape sequence) and every format character (Cf: the bidirectional controls U+061C,
#: U+200E/U+200F, U+202A..U+202E, U+2066..U+2069, zero-width characters, the soft hyphen,
#: tag characters...). A policy holds none inside a comment, a string or a JSONPath
#: (E014; E013 for those of them that other tools break lines at), and no error report,
#: ``fmt`` output or other text output of the command line prints one raw.
#: tests/lang/test_hidden_text.py holds this list to the Unicode database.
HIDDEN_CHARS = (
    "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
    "\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f"
    "\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f"
)
HIDDEN = re.compile(f"[{HIDDEN_CHARS}]")

#: The characters other tools end a line at and a policy does not (its lines end at "\n"
#: only), each with its name for people: E013 raw inside a comment or a string, as a "\r"
#: not right before a "\n" is anywhere (docs/errors.md). They are exactly where
#: str.splitlines() breaks besides "\n" (tests/lang/test_hidden_text.py holds them to it);
#: all but "\r", U+2028 and U+2029 are control characters of :data:`HIDDEN_CHARS` too.
LINE_BREAKS: Mapping[str, str] = MappingProxyType({
    "\r": "carriage return", "\x0b": "vertical tab", "\x0c": "form feed",
    "\x1c": "file separator", "\x1d": "group separator", "\x1e": "record separator",
    "\x85": "next-line character", "\u2028": "line separator",
    "\u2029": "paragraph separator",
})
#: As a regex class body: every character a policy refuses raw inside a comment, a string
#: or a JSONPath (E013, E014) but the "\r", which ends a line right before a "\n" and is
#: looked for on its own: :data:`HIDDEN_CHARS` and the line breaks that are no control
#: character (U+2028, U+2029). Also what ``lang.ast.quote`` writes as an escape.
UNSEEN_CHARS = HIDDEN_CHARS + "".join(
    ch for ch in LINE_BREAKS if unicodedata.category(ch) != "Cc")
UNSEEN = re.compile(f"[{UNSEEN_CHARS}]")

# A line break is shown as one column: a C0 one as its control picture (U+240D for
# "\r"), the others as the symbol for newline (U+2424).
_VISIBLE = str.maketrans({ch: chr(0x2400 + ord(ch)) if ch < " " else "\u2424"
                          for ch in LINE_BREAKS})
_UNSHOWN = re.compile(f"[{UNSEEN_CHARS}\r]")  # every character visible() changes


def visible(text: str) -> str:
    """``text`` as a terminal may show it: a character a terminal or str.splitlines()
    would break a line at (a "\\r", U+2028...: E013) as a symbol of one column, any other
    control or format character (:data:`HIDDEN`: ESC, U+202E...) as ``<U+202E>``. Text
    without any is returned as it is (the same object)."""
    if _UNSHOWN.search(text) is None:
        return text
    return HIDDEN.sub(lambda m: f"<U+{ord(m.group()):04X}>", text.translate(_VISIBLE))


_ONE_LINE = str.maketrans({"\n": "\u240a", "\t": "<U+0009>"})


def one_line(text: object) -> str:
    """``text`` (``str()`` of any value) as one field of a line: :func:`visible`, and
    also a line feed as a symbol of one column (U+240A, as :func:`visible` shows a
    "\\r") and a tab as ``<U+0009>``, which :func:`visible` leaves in text of several
    lines. For every value the command line prints inside its own layout: an agent id,
    a test's name, a file's name, a log record's field, a reason quoting a request."""
    return visible(str(text).translate(_ONE_LINE))


def say(text: str = "", *, file: TextIO | None = None) -> None:
    """Print one piece of human-readable output (a line or several) as :func:`visible`
    shows it: on stdout, or on ``file`` (``sys.stderr`` for an error)."""
    print(visible(text), file=sys.stdout if file is None else file)


def error_line(command: str, code: str, message: str) -> str:
    """How the command line reports an error, every command alike: one line,
    ``policyengine COMMAND: error: CODE: MESSAGE`` (``COMMAND`` with its sub-command:
    ``token mint``, ``log verify``; ``""`` for an error of no command, a mistyped one:
    ``policyengine: error: ...``), as argparse's usage errors read (docs/errors.md,
    "Command line"). A policy file's problems are reported otherwise, compiler-style
    (``FILE:LINE:COLUMN: error[E...]``)."""
    where = f"policyengine {command}" if command else "policyengine"
    return one_line(f"{where}: error: {code}: {message}")


def error_of(exc: BaseException) -> tuple[str, str]:
    """The code and message of an :func:`error_line` for a failure that stops a command
    (``eval``'s bad request, ``serve``'s unreadable file), one table for every command so
    each names the same failure alike: a ``PolicyEngineError``'s own; ``io_error`` for a
    file error of the operating system (``OSError``: a file that could not be read or
    written); ``usage_error`` for any other (bad input a library refused with a
    ``ValueError``)."""
    if isinstance(exc, PolicyEngineError):
        return exc.code, exc.message
    return ("io_error" if isinstance(exc, OSError) else "usage_error"), str(exc)


def say_error(command: str, code: str, message: str) -> None:
    """Print :func:`error_line` on stderr (through :func:`say`)."""
    say(error_line(command, code, message), file=sys.stderr)
