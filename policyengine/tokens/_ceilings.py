"""The bounds a ``delegation`` block's ceilings must keep, owned by the tokens leaf.

Apart from :mod:`policyengine.tokens.grants` (which imports PyJWT and cryptography) so
that the checker can ask them of a policy without loading either: ``policyengine check``
of a policy with a ``delegation`` block pays for no signature library.
"""

from __future__ import annotations

__all__ = ["MAX_DEPTH", "MAX_POLICY_TTL", "ceiling_problems"]

#: Hard ceiling on ``max_depth`` (attenuation hops below the root token).
MAX_DEPTH = 8
#: Longest ``max_ttl`` / ``child_max_ttl`` a policy may set as a ceiling, in seconds
#: (366 days): a longer ceiling bounds nothing a delegation should live.
MAX_POLICY_TTL = 366 * 86400


def ceiling_problems(max_depth: object = None, max_ttl: object = None,
                     child_max_ttl: object = None) -> list[tuple[str, str]]:
    """What is wrong with the policy ceilings ``verify`` takes (a ``delegation``
    block's ``max_depth``, ``max_ttl``, ``child_max_ttl``): ``(field, message)`` pairs,
    none when they are fine. ``max_depth`` is 0..:data:`MAX_DEPTH` (what a token's own
    ``max_depth`` claim may hold, so ``mint`` takes it too); a ttl is 1 s to
    :data:`MAX_POLICY_TTL`. The checker reports these (E126, E125); ``verify`` refuses
    them (``invalid_option``)."""
    found: list[tuple[str, str]] = []
    if max_depth is not None and (type(max_depth) is not int
                                  or not 0 <= max_depth <= MAX_DEPTH):
        found.append(("max_depth", f"max_depth must be between 0 and {MAX_DEPTH}"))
    for name, value in (("max_ttl", max_ttl), ("child_max_ttl", child_max_ttl)):
        if value is not None and not (isinstance(value, (int, float))
                                      and type(value) is not bool
                                      and 1 <= value <= MAX_POLICY_TTL):
            found.append((name, f"{name} must be between 1s and {MAX_POLICY_TTL // 86400}d"))
    return found
