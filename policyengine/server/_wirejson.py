"""JSON in and out of the service, with money kept exact.

Requests: the package's one strict decoder reads them, with fractions as ``Decimal``
(``280.10`` stays ``Decimal("280.10")``, never a float); duplicate keys, ``NaN``, lone
surrogates and over-long numbers are refused, so the engine decides on the one reading
every other component would make. Responses: a ``Decimal`` is written as a
JSON *number* (the SDKs read ``maxAmount`` as a number) whose text is exact.
"""

from __future__ import annotations

import itertools
import json
import re
from decimal import Decimal
from typing import Any, Final

from policyengine import PolicyEngineError
from policyengine import _json as strict_json

__all__ = ["MalformedJsonError", "decimal_number", "loads", "tool_body", "tool_request"]

MAX_DEPTH = 64  # deeper documents are refused before anything walks them


class MalformedJsonError(PolicyEngineError, ValueError):
    """``code``: ``malformed_json``, ``too_deep``, or one of the strict decoder's
    (:class:`policyengine._json.AmbiguousJsonError`): ``duplicate_key``,
    ``non_finite_number``, ``number_too_long``, ``lone_surrogate``."""


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _too_deep(data: bytes, limit: int = MAX_DEPTH) -> bool:
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    # Strings out (C speed), then only the brackets are walked in Python.
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    depth = 0
    for byte in brackets:
        if byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def loads(data: bytes) -> Any:
    """Decode a request body strictly; raise :class:`MalformedJsonError` with a code."""
    if _too_deep(data):
        raise MalformedJsonError("too_deep", f"the JSON nests deeper than {MAX_DEPTH}")
    return _strict(data)


#: The strict decoder's codes for JSON that is well formed but read differently by other
#: parsers: only these, inside a tool call's ``body``, are left for the engine to refuse.
_AMBIGUOUS: Final = frozenset({"duplicate_key", "non_finite_number", "number_too_long",
                               "lone_surrogate"})
# ...and a body nested deeper than MAX_DEPTH (an SDK writes a tool's arguments as they
# are): also left to the engine, which reads body text however deep (docs/tools.md).
_SECOND_READ: Final = _AMBIGUOUS | {"too_deep"}
_WS: Final = re.compile(r"[ \t\n\r]*")
# Reads what the strict decoder refuses as ambiguous (NaN, duplicate keys, numbers of any
# length, lone surrogates) only to find where each value ends: numbers and constants are
# kept as text (no int() digit limit, no float()), and nothing read here is decided on.
_EXTENT: Final = json.JSONDecoder(parse_float=str, parse_int=str, parse_constant=str)
# A string or a bracket, for _nested_extent: what lies between them is skipped in C.
# A quote that starts no whole string (it is never closed) is a match of its own.
_STRING_OR_BRACKET: Final = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}"]')


#: How many strings and brackets :func:`_nested_extent` walks before it gives up (the
#: request stays the 400 ``too_deep``): each costs a step of Python, and a request of
#: nothing but brackets would otherwise cost a quarter of a second of CPU per MiB. A tool
#: call's arguments deep enough to need the count (a few hundred levels: what an SDK's
#: own encoder writes stops near a thousand) hold far fewer.
MAX_COUNTED: Final = 200_000


def _nested_extent(text: str, at: int) -> int:
    """Where the array or object at ``at`` ends, found without recursion (for a value
    nested too deep for :data:`_EXTENT`): brackets counted outside strings. Only where it
    ends: what it holds is read, or refused, by whoever reads it next. Raises
    ``ValueError`` when it does not end, or not within :data:`MAX_COUNTED` steps."""
    if text[at:at + 1] not in ("[", "{"):
        raise ValueError("no array or object here")
    depth = 0
    for match in itertools.islice(_STRING_OR_BRACKET.finditer(text, at), MAX_COUNTED):
        mark = match.group()
        if mark == '"':
            break  # a string that never ends
        if mark in "[{":
            depth += 1
        elif mark in "]}":
            depth -= 1
            if depth == 0:
                return match.end()
    raise ValueError("the value does not end")


def _skip(text: str, at: int) -> int:
    """Where the JSON whitespace from ``at`` ends."""
    match = _WS.match(text, at)
    assert match is not None  # '*' matches the empty string
    return match.end()


def tool_request(data: bytes) -> Any:
    """A ``POST /v1/tool-authorize`` request: :func:`loads`, or, when that refuses it as
    ambiguous (a duplicate key, ``NaN``, an over-long number, a lone surrogate) only
    because of what its ``body`` holds, the request with that body as its JSON text.

    The agent sends the body on; an SDK that fails open takes a 400 for "governance
    unreachable" and sends it unchecked (tracengent's ``tool_governance_fail_open``, and
    Python's ``json.dumps`` writes ``float("nan")`` as ``NaN``). Given the text, the
    engine refuses it by the rule it applies to in-process body text (``invalid_request``,
    diagnostic ``ambiguous_body``): a 200 denial every client obeys. Every other member
    (principal fields, transport, names, context, headers) is read strictly, and any
    ambiguity there, a duplicate member, or a request that is not one JSON object is
    the 400 it always was. A ``body`` nested deeper than :data:`MAX_DEPTH` (an SDK
    writes a tool's arguments as they are) is handed over as its text too, however deep,
    and decided as in process: read, or refused as ambiguous where it nests too deep for
    the engine's stack to read (a 400 there was the same bypass). Nesting elsewhere stays
    ``too_deep``. The second reading runs only for a request already refused."""
    try:
        return loads(data)
    except MalformedJsonError as exc:
        if exc.code not in _SECOND_READ:
            raise
        try:  # too_deep is found before the bytes are decoded
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise exc from None
        request = _with_body_text(text)
        if request is None:
            raise
        return request


def _with_body_text(text: str) -> dict[str, Any] | None:
    """The object ``text`` holds, each member read strictly but an ambiguous ``body``
    kept as its text; None when ``text`` is not one object (the caller's refusal
    stands). Raises :class:`MalformedJsonError` for an ambiguous key or other member."""
    members: list[tuple[str, str]] = []
    try:
        i = _skip(text, 0)
        if text[i:i + 1] != "{":
            return None
        i = _skip(text, i + 1)
        more = text[i:i + 1] != "}"
        while more:
            if text[i:i + 1] != '"':
                return None
            end = json.decoder.scanstring(text, i + 1)[1]  # type: ignore[attr-defined]
            key = text[i:end]
            i = _skip(text, end)
            if text[i:i + 1] != ":":
                return None
            i = _skip(text, i + 1)
            try:
                end = _EXTENT.raw_decode(text, i)[1]
            except RecursionError:  # too deep to read here: where it ends, counted
                end = _nested_extent(text, i)
            members.append((key, text[i:end]))
            i = _skip(text, end)
            more = text[i:i + 1] == ","
            if more:
                i = _skip(text, i + 1)
            elif text[i:i + 1] != "}":
                return None
        if _skip(text, i + 1) != len(text):
            return None
    except (ValueError, RecursionError):
        return None
    request: dict[str, Any] = {}
    for key_text, value_text in members:
        key = _strict(key_text)
        if key in request:
            raise MalformedJsonError("duplicate_key", f"duplicate key {key[:40]!r}")
        # A member lies one level inside the request: deeper than MAX_DEPTH - 1 in it is
        # deeper than MAX_DEPTH in the request, as loads() counts.
        value_bytes = value_text.encode("utf-8")
        deep = _too_deep(value_bytes, MAX_DEPTH - 1)
        if deep and key == "body":
            request[key] = value_text  # the engine reads this text as in process
        elif deep:
            raise MalformedJsonError("too_deep", f"the JSON nests deeper than {MAX_DEPTH}")
        elif key == "body":
            try:
                request[key] = _strict(value_text)
            except MalformedJsonError as exc:
                if exc.code not in _AMBIGUOUS:
                    raise
                request[key] = value_text  # the engine refuses this text
        else:
            request[key] = _strict(value_text)
    return request


def _strict(text: str | bytes) -> Any:
    """Strict decoding, each refusal mapped to its wire code; the depth check is the
    caller's (:func:`loads` checks the whole request, a member is checked one level in)."""
    try:
        return strict_json.loads(text, decimal=True)
    except strict_json.AmbiguousJsonError as exc:
        raise MalformedJsonError(exc.code, exc.message) from None
    except UnicodeDecodeError:
        raise MalformedJsonError("malformed_json", "the body is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise MalformedJsonError("malformed_json", f"the body is not JSON: {exc}") from None


def tool_body(body: Any) -> Any:
    """A tool call's ``body`` (a value of a request :func:`loads` read) for the engine:
    as it is, or, when it holds a number that is infinite as a double (``1e400``, read
    here as the finite ``Decimal("1E+400")``), its JSON text. The agent sends the body on
    to an upstream that reads that number as infinity; the engine refuses such text
    (``invalid_request``, diagnostic ``ambiguous_body``) as it refuses it from an
    in-process caller, so the service never decides on the one reading while the upstream
    acts on the other. Only such a body, rare, is written out again."""
    if strict_json.infinite_as_double(body) is None:
        return body
    return strict_json.dumps(body)


def decimal_number(value: Decimal) -> int | float | str:
    """A ``Decimal`` as the JSON number with the same value: an ``int`` when integral; a
    ``float`` only when its shortest text reads back as exactly ``value``; otherwise the
    digits as a string (more precision than any money amount has). A value whose adjusted
    exponent is beyond ``MAX_EXPONENT`` (never an amount the engine gives; no request
    holds one) is its scientific text: its plain digits would take gigabytes."""
    if not -strict_json.MAX_EXPONENT <= value.adjusted() <= strict_json.MAX_EXPONENT:
        return str(value)
    if value == value.to_integral_value():
        return int(value)
    as_float = float(value)
    if Decimal(repr(as_float)) == value:
        return as_float
    return format(value, "f")
