"""Redactions in the form a client applies them itself.

The engine redacts a copy of the body with any rule (JSONPath with wildcards and
descendants, strategies ``mask``, ``remove``, ``hash``, ``partial``). A client such as
tracengent 0.1.0 applies redactions on its side with a tiny grammar (``$.a.b[0].c``: dot
keys and numeric indexes) and two behaviours (``mask`` writes ``***REDACTED***``,
anything else deletes). So the service compares the original body with the engine's
redacted copy, lists each changed place as a concrete path with ``remove`` or ``mask``,
and then replays that list the way the client will: unless the replay gives exactly the
engine's copy, the redactions cannot be expressed for that client and the call is denied.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["MASK", "client_redactions"]

MASK = "***REDACTED***"
_UNSAFE_KEY_CHARS = frozenset(".[]")


class _InexpressibleError(Exception):
    pass


def _key_segment(key: object) -> str:
    if type(key) is not str or not key or key != key.strip() or any(
            c in _UNSAFE_KEY_CHARS for c in key):
        raise _InexpressibleError
    return f".{key}"


def _diff(original: Any, redacted: Any, path: str, out: list[tuple[str, str]]) -> None:
    # isinstance: the decision's copy is read-only (FrozenDict, FrozenList)
    if isinstance(original, dict) and isinstance(redacted, dict):
        if not set(redacted) <= set(original):
            raise _InexpressibleError
        for key, value in original.items():
            where = path + _key_segment(key) if (key not in redacted
                                                  or redacted[key] != value) else ""
            if not where:
                continue
            if key not in redacted:
                out.append((where, "remove"))
            else:
                _diff(value, redacted[key], where, out)
        return
    if isinstance(original, list) and isinstance(redacted, list):
        if len(original) != len(redacted):
            raise _InexpressibleError
        for i, (a, b) in enumerate(zip(original, redacted, strict=True)):
            if a != b or type(a) is not type(b):
                _diff(a, b, f"{path}[{i}]", out)
        return
    if redacted == MASK and type(redacted) is str:
        out.append((path, "mask"))
        return
    raise _InexpressibleError  # a hash, a partial mask, a changed type: not the client's to do


def _replay(body: Any, rules: list[tuple[str, str]]) -> Any:
    """Apply ``rules`` as the client does (paths we generated: keys and indexes only)."""
    root = copy.deepcopy(body)
    for path, strategy in rules:
        segments: list[str | int] = []
        rest = path[1:]
        while rest:
            if rest[0] == ".":
                end = min((i for i in (rest.find(".", 1), rest.find("[", 1)) if i > 0),
                          default=len(rest))
                segments.append(rest[1:end])
                rest = rest[end:]
            else:
                end = rest.index("]")
                segments.append(int(rest[1:end]))
                rest = rest[end + 1:]
        node = root
        for seg in segments[:-1]:
            node = node[seg]
        last = segments[-1]
        if strategy == "mask":
            node[last] = MASK
        else:
            del node[last]
    return root


def client_redactions(original: Any, redacted: Any) -> list[dict[str, str]] | None:
    """The concrete ``{"field", "strategy"}`` list that turns ``original`` into
    ``redacted`` on the client, or None when the client cannot be told how."""
    if original == redacted:
        return []
    if type(original) not in (dict, list):
        return None  # the client redacts only inside an object or array
    rules: list[tuple[str, str]] = []
    try:
        _diff(original, redacted, "$", rules)
        if not rules or _replay(original, rules) != redacted:
            return None
    except (_InexpressibleError, KeyError, IndexError, TypeError, ValueError, RecursionError):
        return None
    return [{"field": path, "strategy": strategy} for path, strategy in rules]
