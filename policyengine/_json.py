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

__all__ = ["MAX_EXPONENT", "AmbiguousJsonError", "decimal_text", "dumps",
           "infinite_as_double", "loads", "loads_exact", "utf8_charset"]

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


_ASCII_STRING: Final = json.encoder.encode_basestring_ascii
_STRING: Final = json.encoder.encode_basestring


def dumps(value: Any, *, sort_keys: bool = False, ensure_ascii: bool = True) -> str:
    """Compact JSON of a document :func:`loads` gave, ``Decimal`` fractions included: each
    is written as the number it is, digit for digit and in the form it was read
    (``str``: ``280.10``, ``1E+300``, a fraction to a reader of doubles still), where the
    standard library refuses a ``Decimal`` and a detour through ``float`` would change
    the number (``12345678901234567.89`` is ``12345678901234568.0`` as a double): a
    document read exactly and written again must say the same amounts. Otherwise the
    text ``json.dumps(value, separators=(",", ":"), sort_keys=..., ensure_ascii=...,
    allow_nan=False)`` writes. Raises ``ValueError`` for a NaN or infinity, ``TypeError``
    for a value JSON has no form for, ``RecursionError`` for absurd nesting."""
    parts: list[str] = []
    _write(value, parts.append, sort_keys, _ASCII_STRING if ensure_ascii else _STRING)
    return "".join(parts)


def _write(value: Any, out: Any, sort_keys: bool, string: Any) -> None:
    if isinstance(value, str):
        out(string(value))
    elif value is None:
        out("null")
    elif value is True:
        out("true")
    elif value is False:
        out("false")
    elif isinstance(value, int):
        out(int.__repr__(value))
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} is not a JSON number")
        out(Decimal.__str__(value))  # JSON's number grammar, for every finite Decimal
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a JSON number")
        out(float.__repr__(value))
    elif isinstance(value, dict):
        items = list(value.items())
        for key, _ in items:
            if not isinstance(key, str):
                raise TypeError(f"keys must be str, not {type(key).__name__}")
        if sort_keys:
            items.sort(key=lambda item: item[0])
        out("{")
        for n, (key, item) in enumerate(items):
            out(("," if n else "") + string(key) + ":")
            _write(item, out, sort_keys, string)
        out("}")
    elif isinstance(value, (list, tuple)):
        out("[")
        for n, item in enumerate(value):
            if n:
                out(",")
            _write(item, out, sort_keys, string)
        out("]")
    else:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


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


def loads_exact(data: str | bytes) -> Any:
    """A body another party reads and forwards: refused as :func:`loads` refuses it (so
    also a number that is infinite as a double, ``1e400``: the upstream's reading of the
    same bytes), then read with fractions as ``Decimal`` (``280.10`` is the amount
    280.10, as the service wire reads it, never the float a money rule refuses). Bodies
    without a fraction, most, are decoded once."""
    value = loads(data)
    return loads(data, decimal=True) if _has_float(value) else value


def _has_float(value: Any) -> bool:
    kind = type(value)
    if kind is float:
        return True
    if kind is dict:
        return any(_has_float(v) for v in value.values())
    if kind is list:
        return any(_has_float(v) for v in value)
    return False


def infinite_as_double(value: Any) -> Decimal | None:
    """The first ``Decimal`` in a document read with ``decimal=True`` (dicts, lists) that
    is infinite as a double (``1e400``, ``-1E+999``, ``1.7976931348623159e308``), else
    None. Read as ``Decimal`` such a number is finite, read as a double (by the upstream a
    body goes on to, and by :func:`loads_exact`) it is infinity: a document that holds one
    is read two ways, and a caller deciding on it refuses it as :func:`loads_exact`
    refuses its text. Integers are not looked at (``loads`` reads them exactly up to the
    digit limit, and refuses them beyond), nor strings."""
    kind = type(value)
    if kind is dict:
        value = value.values()
    elif kind is not list:
        if kind is Decimal and _wide(value):
            return value  # type: ignore[no-any-return]
        return None
    for item in value:  # leaves checked here: a call per container, not per value
        kind = type(item)
        if kind is Decimal:
            if _wide(item):
                return item  # type: ignore[no-any-return]
        elif kind is dict or kind is list:
            found = infinite_as_double(item)
            if found is not None:
                return found
    return None


def _wide(value: Decimal) -> bool:
    # adjusted() is O(1); float() only for a number at the edge of a double's range.
    return value.adjusted() >= 308 and math.isinf(float(value))


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
