"""Agent access tokens: the JWTs the token endpoint issues and every call presents.

Compact JWS (RFC 7515) signed by the service's :class:`~policyengine.KeySet`, with
``typ: at+jwt`` (RFC 9068) so an access token can never pass for a delegation grant
(``typ: delegation+jwt``) or the other way round. Verification follows RFC 8725: the
header must be exactly ``alg``/``kid``/``typ``, ``alg`` must be the one the ``kid``'s
key has (never ``none``, never taken from the token), the issuer must match and the token
must be unexpired. A verified token is cached until it expires, so the hot path pays
one dict lookup, not a signature check.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import policyengine as pe

__all__ = ["ACCESS_TYP", "AccessTokens", "token_typ"]

ACCESS_TYP = "at+jwt"
MAX_TOKEN_LENGTH = 8192
_CACHE_LIMIT = 65_536


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if "=" in text or "+" in text or "/" in text:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json_segment(text: str) -> Any:
    return json.loads(_unb64(text))


def token_typ(token: str) -> str | None:
    """The ``typ`` of a compact JWS header, unverified (only to route a bearer token to
    the verifier for its kind), or None when it does not parse."""
    head, _, _ = token.partition(".")
    try:
        header = _json_segment(head)
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        return None
    typ = header.get("typ") if isinstance(header, dict) else None
    return typ if type(typ) is str else None


class AccessTokens:
    """Issues and verifies access tokens for one service (its keys, issuer and clock)."""

    def __init__(self, keys: pe.KeySet, *, issuer: str, ttl: int = 900,
                 clock: Callable[[], float] = time.time) -> None:
        self.keys = keys
        self.issuer = issuer
        self.ttl = ttl
        self._clock = clock
        self._verified: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def _signing_key(self) -> pe.tokens.Key:
        """The active key, or, when it belongs to another issuer, a signing key of this
        service's issuer: a key never signs for an issuer it does not belong to (as
        ``tokens.mint`` picks one)."""
        key = self.keys.active_key
        if key.issuer is None or key.issuer == self.issuer:
            return key
        own = next((k for k in self.keys if k.issuer == self.issuer and k.can_sign), None)
        if own is None:
            raise pe.TokenError("issuer_key_mismatch", f"no signing key of issuer "
                                f"{self.issuer!r} for access tokens (the active key "
                                f"{key.kid!r} belongs to {key.issuer!r})")
        return own

    def issue(self, agent: str, client_id: str, permissions: Sequence[str]) -> str:
        key = self._signing_key()
        now = int(self._clock())
        header = {"alg": key.alg, "kid": key.kid, "typ": ACCESS_TYP}
        claims = {"iss": self.issuer, "sub": agent, "client_id": client_id, "iat": now,
                  "exp": now + self.ttl, "jti": secrets.token_urlsafe(16),
                  "permissions": list(permissions)}
        signing_input = (_b64(json.dumps(header, separators=(",", ":")).encode()) + "."
                         + _b64(json.dumps(claims, separators=(",", ":")).encode()))
        return f"{signing_input}.{_b64(key.sign(signing_input.encode('ascii')))}"

    def cached_agent(self, token: str) -> str | None:
        """The agent of an access token verified before and still valid, else None (the
        hot path: one dict lookup, no header parsing)."""
        hit = self._verified.get(token)
        if hit is not None and self._clock() < hit[1]:
            return hit[0]
        return None

    def agent_of(self, token: str) -> str | None:
        """The agent a valid access token was issued to, or None (bad, foreign, expired)."""
        now = self._clock()
        hit = self._verified.get(token)
        if hit is not None:
            return hit[0] if now < hit[1] else None
        agent_exp = self._verify(token, now)
        if agent_exp is None:
            return None
        with self._lock:
            if len(self._verified) >= _CACHE_LIMIT:
                self._verified.clear()
            self._verified[token] = agent_exp
        return agent_exp[0]

    def _verify(self, token: str, now: float) -> tuple[str, float] | None:
        if type(token) is not str or len(token) > MAX_TOKEN_LENGTH:
            return None
        parts = token.split(".")
        if len(parts) != 3:
            return None
        try:
            header = _json_segment(parts[0])
            if not isinstance(header, dict) or set(header) != {"alg", "kid", "typ"}:
                return None
            if header["typ"] != ACCESS_TYP or type(header["kid"]) is not str:
                return None
            key = self.keys.get(header["kid"])
            # A key bound to another issuer (a trusted identity provider's, kept to
            # verify its delegation grants) never vouches for this service's tokens.
            if key is None or header["alg"] != key.alg or key.issuer not in (None,
                                                                             self.issuer):
                return None
            if not key.verify(f"{parts[0]}.{parts[1]}".encode("ascii"), _unb64(parts[2])):
                return None
            claims = _json_segment(parts[1])
        except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
            return None
        if not isinstance(claims, dict) or claims.get("iss") != self.issuer:
            return None
        sub, exp, iat = claims.get("sub"), claims.get("exp"), claims.get("iat")
        if type(sub) is not str or not sub or type(exp) is not int or type(iat) is not int:
            return None
        if not (iat - 60 <= now < exp):
            return None
        return sub, float(exp)
