"""Strict JWS compact serialization: split, base64url and JSON parsed by hand.

pyjwt (and most JOSE libraries) accept duplicate JSON keys (keeping the last one),
padded base64 and stray characters. Each of those lets two parties read one token two
ways, so this module parses every byte itself before any signature check happens.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from policyengine import _json as strict_json
from policyengine.tokens.errors import TokenError

__all__ = [
    "MAX_SHOWN",
    "MAX_TOKEN_LENGTH",
    "Parsed",
    "b64decode",
    "b64encode",
    "encode_json",
    "loads_object",
    "shown",
    "split",
]

#: Longest compact token accepted, parents included (characters == bytes: ASCII only).
MAX_TOKEN_LENGTH = 16384

#: Most characters of an untrusted value (a header's ``kid``, ``alg``, member names) an
#: error message quotes: a token may carry kilobytes of them, and a message is repeated
#: in a decision's reason, the service's answers and logs.
MAX_SHOWN = 64

_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_B64_VALUE = {c: i for i, c in enumerate(_B64_ALPHABET)}
_B64_RE = re.compile(r"[A-Za-z0-9_\-]*")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
# Unused low bits of the last character must be zero, else two strings decode alike.
_TRAILING_MASK = {2: 0x0F, 3: 0x03}


def shown(value: object) -> str:
    """``repr(value)`` cut to :data:`MAX_SHOWN` characters, ending in ``...`` when cut.
    For a str, only its head is repr'd (a 16 KB kid is not copied whole to be cut)."""
    text = repr(value[:MAX_SHOWN + 1] if type(value) is str else value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


def b64encode(data: bytes) -> str:
    """base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str, what: str = "segment") -> bytes:
    """Decode canonical unpadded base64url; anything else raises ``bad_base64``."""
    if _B64_RE.fullmatch(text) is None:
        raise TokenError("bad_base64", f"{what}: characters outside the base64url alphabet")
    rem = len(text) % 4
    if rem == 1:
        raise TokenError("bad_base64", f"{what}: impossible base64url length")
    if rem:
        last = _B64_VALUE.get(text[-1])
        if last is None or last & _TRAILING_MASK[rem]:
            raise TokenError("bad_base64", f"{what}: non-canonical base64url (trailing bits)")
        text += "=" * (4 - rem)
    try:
        # The alphabet was checked by the caller's regex (or by _B64_VALUE for keys).
        return binascii.a2b_base64(text.encode("ascii").translate(_FROM_URLSAFE))
    except ValueError as exc:  # binascii.Error is a ValueError
        raise TokenError("bad_base64", f"{what}: {exc}") from None


def loads_object(raw: bytes, what: str) -> dict[str, Any]:
    """Parse UTF-8 JSON that must be an object, rejecting duplicate members anywhere."""
    try:
        value = strict_json.loads(raw)
    except strict_json.AmbiguousJsonError as exc:
        if exc.code == "duplicate_key":
            raise TokenError("duplicate_key", f"{what}: duplicate JSON member: {exc}") from None
        raise TokenError("bad_json", f"{what}: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise TokenError("bad_json", f"{what} is not valid UTF-8 JSON: {exc}") from None
    if type(value) is not dict:
        raise TokenError("not_object", f"{what} must be a JSON object")
    return value


def encode_json(obj: Any) -> bytes:
    """Compact, deterministic JSON (keys in insertion order, ASCII only)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")


@dataclass(frozen=True)
class Parsed:
    """One compact JWS taken apart; nothing in it is trusted yet."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def split(token: object) -> Parsed:
    """Split and decode a compact JWS; raises :class:`TokenError` on any malformation."""
    if type(token) is not str:
        raise TokenError("malformed", "token must be a string")
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenError(
            "token_too_large", f"token is {len(token)} characters; the cap is {MAX_TOKEN_LENGTH}"
        )
    if not token:
        raise TokenError("malformed", "empty token")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("malformed", f"expected 3 dot-separated segments, got {len(parts)}")
    h64, p64, s64 = parts
    if not h64 or not p64:
        # An empty signature is left to the alg check (``none`` -> ``alg_not_allowed``).
        raise TokenError("malformed", "empty header or payload segment")
    header = loads_object(b64decode(h64, "header"), "header")
    claims = loads_object(b64decode(p64, "payload"), "payload")
    signature = b64decode(s64, "signature")
    return Parsed(header, claims, f"{h64}.{p64}".encode("ascii"), signature)
