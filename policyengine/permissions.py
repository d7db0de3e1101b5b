"""Permission names, the matcher the agent SDKs use, and subsumption between patterns.

A permission is a ``:``-separated name such as ``payments:refund``. A *pattern* is ``*``,
a permission, or a permission prefix ending in ``:*`` (``flights:*``).

:func:`permission_matches` is deliberately identical, string for string, to the
``permission_matches`` of the agent SDKs this engine serves: a service answering those
SDKs must never disagree with the client about what a granted pattern covers. Validation
of *requested* permissions is a separate, stricter step (:func:`validate_permission`).

This module is a leaf: it imports nothing from the engine.
"""

from __future__ import annotations

import re

from policyengine.errors import PolicyEngineError

__all__ = [
    "InvalidPermission",
    "is_valid_pattern",
    "is_valid_permission",
    "permission_matches",
    "subsumes",
    "validate_permission",
]

# One segment: letters, digits, and ``_ . -``. Case is significant (the SDK matcher
# compares strings exactly), so ``Flights:book`` and ``flights:book`` are different.
_SEGMENT = r"[A-Za-z0-9_.\-]+"
_PERMISSION_RE = re.compile(rf"{_SEGMENT}(?::{_SEGMENT})*")
_PATTERN_RE = re.compile(rf"\*|{_SEGMENT}(?::{_SEGMENT})*(?::\*)?")

#: Longest permission or pattern accepted anywhere (requests, policies, tokens).
MAX_PERMISSION_LENGTH = 256
#: Longest principal id a request may name (1 to this many characters): ``authorize``
#: refuses a longer one as ``invalid_request``, so the checker refuses an ``agent`` whose
#: id no request could carry (E117), and the reverse queries take the same bound.
MAX_PRINCIPAL_ID = 256


class InvalidPermission(PolicyEngineError, ValueError):  # noqa: N818 - reads as a verdict
    """A requested permission or pattern is malformed. ``code`` is stable."""


def permission_matches(pattern: str, permission: str) -> bool:
    """Return True when ``pattern`` grants ``permission``, exactly as the agent SDKs do.

    A pattern matches when it is ``*``, equal to the permission, or ends in ``:*`` and
    the permission starts with the pattern minus its final ``*``. Both must be strings:
    anything else raises :class:`InvalidPermission` (``invalid_permission``).

    >>> permission_matches("flights:*", "flights:book")
    True
    >>> permission_matches("flights:*", "flightsx:book")
    False
    """
    if not isinstance(pattern, str) or not isinstance(permission, str):
        raise _not_strings(pattern=pattern, permission=permission)
    return matches(pattern, permission)


def subsumes(narrow: str, wide: str) -> bool:
    """Return True when pattern ``narrow`` grants no more than pattern ``wide``.

    That is: every permission ``narrow`` matches, ``wide`` matches too. This is the
    relation attenuation checks (a child's pattern must be subsumed by a parent's).
    Both must be strings: anything else raises :class:`InvalidPermission`.

    >>> subsumes("flights:intl:*", "flights:*")
    True
    >>> subsumes("flights:*", "flights:book")
    False
    """
    if not isinstance(narrow, str) or not isinstance(wide, str):
        raise _not_strings(narrow=narrow, wide=wide)
    return pattern_subsumes(narrow, wide)


def _not_strings(**values: object) -> InvalidPermission:
    name, value = next((n, v) for n, v in values.items() if not isinstance(v, str))
    return InvalidPermission("invalid_permission",
                             f"{name} must be a string, not {type(value).__name__}")


def matches(pattern: str, permission: str) -> bool:
    """:func:`permission_matches` without the type check, for strings the package has
    already checked (the decision path calls it for every rule and budget)."""
    if pattern == "*" or pattern == permission:
        return True
    return pattern.endswith(":*") and permission.startswith(pattern[:-1])


def pattern_subsumes(narrow: str, wide: str) -> bool:
    """:func:`subsumes` without the type check, for patterns already checked."""
    if wide == "*":
        return True
    if narrow == "*":
        return False
    if narrow.endswith(":*"):
        # ``narrow`` covers every string starting with ``narrow[:-1]``; only a wider
        # prefix pattern can cover an infinite set like that.
        return wide.endswith(":*") and narrow[:-1].startswith(wide[:-1])
    # ``narrow`` matches exactly one string: itself.
    return matches(wide, narrow)


def is_valid_permission(permission: object) -> bool:
    """True for a well-formed concrete permission (no wildcard, no empty segment)."""
    return (
        type(permission) is str
        and len(permission) <= MAX_PERMISSION_LENGTH
        and _PERMISSION_RE.fullmatch(permission) is not None
    )


def is_valid_pattern(pattern: object) -> bool:
    """True for ``*``, a valid permission, or a valid permission prefix ending in ``:*``."""
    return (
        type(pattern) is str
        and len(pattern) <= MAX_PERMISSION_LENGTH
        and _PATTERN_RE.fullmatch(pattern) is not None
    )


def validate_permission(permission: object) -> str:
    """Return ``permission`` if it is a well-formed concrete permission, else raise.

    Raises :class:`InvalidPermission` with code ``invalid_permission``.
    """
    if is_valid_permission(permission):
        return permission  # type: ignore[return-value]
    if type(permission) is not str:
        raise InvalidPermission(
            "invalid_permission",
            f"permission must be a string, got {type(permission).__name__}",
        )
    shown = permission if len(permission) <= 60 else permission[:57] + "..."
    raise InvalidPermission(
        "invalid_permission",
        f"malformed permission {shown!r}: expected segments of letters, digits, '_', '.', '-' "
        "separated by ':' (no wildcard, no empty segment)",
    )
