"""Strict JSON decoding: a document two parsers could read differently is refused.

Python's ``json`` keeps the *last* of duplicate keys (many parsers keep the first),
accepts ``NaN`` and ``Infinity``, turns ``1e400`` into ``inf`` and refuses integers
longer than the interpreter's digit limit with a bare ``ValueError``; read as a
``Decimal``, ``1e99999999999`` is a finite number whose digits, written out, would take
100 GB. A decision taken on
one reading of a document while another component acts on another reading is a bypass,
so every place that decides on JSON (tool-call bodies, the governed client, token headers
and claims, rate tables) decodes through here. A leaf: it imports nothing from the engine.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any, Final

from policyengine.errors import PolicyEngineError

__all__ = ["MAX_EXPONENT", "AmbiguousJsonError", "decimal_text", "loads", "utf8_charset"]

#: The widest adjusted exponent (the power of ten of the leading digit: 3 for ``1234``,
#: -3 for ``0.00123``, -5000 for ``0e-5000``) of a number read as a ``Decimal``: beyond
#: it, the number written out has more digits than the interpreter's default limit for
#: integers (4300), so it is refused like such an integer (``number_too_long``).
MAX_EXPONENT: Final = 4300


class AmbiguousJsonError(PolicyEngineError, ValueError):
    """``code`` is ``duplicate_key``, ``non_finite_number`` (``NaN``, ``Infinity``, or a
    number such as ``1e400`` that is infinite as a double) or ``number_too_long`` (an
    integer over the interpreter's conversion limit, 4300 digits by default: parsers
    read such numbers exactly, rounded to a double, or not at all; with ``decimal=True``
    also a number whose adjusted exponent is beyond :data:`MAX_EXPONENT`, ``1e5000`` or
    ``1e-5000``, which would be as long written out) or ``lone_surrogate``
    (a ``\\u`` escape of half a surrogate pair: kept, replaced or refused)."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # rare: find the repeated key for the message
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise AmbiguousJsonError("duplicate_key", f"duplicate key {key[:40]!r}")
            seen.add(key)
    return out


# A \uD800-\uDBFF escape not followed by a \uDC00-\uDFFF one, or a low one not preceded
# by a high one: parsers keep it, replace it with U+FFFD or fail.
_LONE_SURROGATE = re.compile(
    r"(?<!\\)(?:\\\\)*\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})(?<!\\)(?:\\\\)*\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def _no_constant(name: str) -> Any:
    raise AmbiguousJsonError("non_finite_number", f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise AmbiguousJsonError("non_finite_number",
                                 f"{text[:40]} is not finite as a double")
    return value


def _bounded_decimal(text: str) -> Decimal:
    value = Decimal(text)
    # adjusted() is O(1): the check costs one call per fraction, none per integer.
    if -MAX_EXPONENT <= value.adjusted() <= MAX_EXPONENT:
        return value
    raise AmbiguousJsonError("number_too_long", f"{text[:40]} has exponent "
                             f"{value.adjusted()}: written out it would have more than "
                             f"{MAX_EXPONENT} digits")


def decimal_text(value: Decimal) -> str:
    """``value`` in plain notation (``format(value, "f")``: ``1000``, ``0.001``) when its
    adjusted exponent is within :data:`MAX_EXPONENT`, as every number :func:`loads`
    reads is; beyond, in scientific notation (``1E+99999999999``), whose length is that
    of its digits: the plain text of such a number would take gigabytes."""
    if -MAX_EXPONENT <= value.adjusted() <= MAX_EXPONENT:
        return format(value, "f")
    return str(value)


# Decoders are built once: json.loads(..., object_pairs_hook=...) builds one per call.
_STRICT = json.JSONDecoder(object_pairs_hook=_unique, parse_constant=_no_constant,
                           parse_float=_finite_float)
_STRICT_DECIMAL = json.JSONDecoder(object_pairs_hook=_unique, parse_constant=_no_constant,
                                   parse_float=_bounded_decimal)


def loads(data: str | bytes, *, decimal: bool = False) -> Any:
    """Decode ``data`` (bytes must be UTF-8, without a byte order mark). ``decimal=True``
    reads fractions as ``Decimal``, and refuses those whose adjusted exponent is beyond
    :data:`MAX_EXPONENT`. Raises :class:`AmbiguousJsonError` for duplicate keys,
    non-finite numbers and over-long numbers, ``ValueError`` for anything that is not
    JSON, ``RecursionError`` for absurd nesting.
    """
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    if "\\u" in text and _LONE_SURROGATE.search(text):
        raise AmbiguousJsonError("lone_surrogate", "a \\u escape of half a surrogate pair")
    try:
        return (_STRICT_DECIMAL if decimal else _STRICT).decode(text)
    except ValueError as exc:
        if isinstance(exc, (json.JSONDecodeError, AmbiguousJsonError)):
            raise
        # int() refused a literal over the digit limit (checked by the C scanner, which
        # is why this is not a parse_int hook: that would slow every integer down).
        raise AmbiguousJsonError("number_too_long", f"a number too long to read: {exc}"
                                 ) from None


def utf8_charset(content_type: object) -> bool:
    """Whether a ``Content-Type`` value leaves a body UTF-8, as :func:`loads` reads it: no
    ``charset`` parameter, or ``utf-8`` / ``us-ascii``. Any other charset (``utf-16``,
    ``latin-1``), or a value that is not a string, means the upstream decodes the bytes
    otherwise."""
    if content_type is None:
        return True
    if type(content_type) is not str:
        return False
    lowered = content_type.lower()
    if "charset" not in lowered:
        return True
    for param in lowered.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip() == "charset" and value.strip().strip('"') not in (
                "utf-8", "utf8", "us-ascii"):
            return False
    return True
