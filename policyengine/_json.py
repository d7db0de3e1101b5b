"""Strict JSON decoding: a document two parsers could read differently is refused.

Python's ``json`` keeps the *last* of duplicate keys (many parsers keep the first) and
accepts ``NaN`` and ``Infinity``. A decision taken on one reading of a document while
another component acts on another reading is a bypass, so every place that decides on
JSON (tool-call bodies, the governed client, token headers and claims, rate tables)
decodes through here. A leaf: it imports nothing from the engine.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from policyengine.errors import PolicyEngineError

__all__ = ["AmbiguousJsonError", "loads"]


class AmbiguousJsonError(PolicyEngineError, ValueError):
    """``code`` is ``duplicate_key`` or ``non_finite_number``."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # rare: find the repeated key for the message
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise AmbiguousJsonError("duplicate_key", f"duplicate key {key[:40]!r}")
            seen.add(key)
    return out


def _no_constant(name: str) -> Any:
    raise AmbiguousJsonError("non_finite_number", f"{name} is not a JSON number")


# Decoders are built once: json.loads(..., object_pairs_hook=...) builds one per call.
_STRICT = json.JSONDecoder(object_pairs_hook=_unique, parse_constant=_no_constant)
_STRICT_DECIMAL = json.JSONDecoder(object_pairs_hook=_unique, parse_constant=_no_constant,
                                   parse_float=Decimal)


def loads(data: str | bytes, *, decimal: bool = False) -> Any:
    """Decode ``data`` (bytes must be UTF-8). ``decimal=True`` reads fractions as
    ``Decimal``. Raises :class:`AmbiguousJsonError` for duplicate keys or NaN/Infinity,
    ``ValueError`` for anything that is not JSON, ``RecursionError`` for absurd nesting.
    """
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    return (_STRICT_DECIMAL if decimal else _STRICT).decode(text)
