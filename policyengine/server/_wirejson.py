"""JSON in and out of the service, with money kept exact.

Requests: the package's one strict decoder reads them, with fractions as ``Decimal``
(``280.10`` stays ``Decimal("280.10")``, never a float); duplicate keys, ``NaN``, lone
surrogates and over-long numbers are refused, so the engine decides on the one reading
every other component would make. Responses: a ``Decimal`` is written as a
JSON *number* (the SDKs read ``maxAmount`` as a number) whose text is exact.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from policyengine import PolicyEngineError
from policyengine import _json as strict_json

__all__ = ["MalformedJsonError", "decimal_number", "loads", "tool_body"]

MAX_DEPTH = 64  # deeper documents are refused before anything walks them


class MalformedJsonError(PolicyEngineError, ValueError):
    """``code``: ``malformed_json``, ``too_deep``, or one of the strict decoder's
    (:class:`policyengine._json.AmbiguousJsonError`): ``duplicate_key``,
    ``non_finite_number``, ``number_too_long``, ``lone_surrogate``."""


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _too_deep(data: bytes) -> bool:
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return False
    # Strings out (C speed), then only the brackets are walked in Python.
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    depth = 0
    for byte in brackets:
        if byte in (0x5B, 0x7B):
            depth += 1
            if depth > MAX_DEPTH:
                return True
        else:
            depth -= 1
    return False


def loads(data: bytes) -> Any:
    """Decode a request body strictly; raise :class:`MalformedJsonError` with a code."""
    if _too_deep(data):
        raise MalformedJsonError("too_deep", f"the JSON nests deeper than {MAX_DEPTH}")
    try:
        return strict_json.loads(data, decimal=True)
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
