"""Errors raised by the delegation-token leaf. Every error carries a stable ``code``."""

from __future__ import annotations

from policyengine.errors import PolicyEngineError

__all__ = ["AttenuationError", "TokenError"]


class TokenError(PolicyEngineError, ValueError):
    """A token, key or key set was rejected. ``code`` is stable (see docs/delegation.md).

    >>> TokenError("expired", "token expired at 2026-01-01T00:00:00Z").code
    'expired'
    """


class AttenuationError(TokenError):
    """A child grant would widen its parent (raised by ``attenuate`` and, for a chain
    that violates an attenuation rule, by ``verify``). ``code`` names the rule."""
