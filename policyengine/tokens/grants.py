"""Delegation grants: :func:`mint`, :func:`attenuate`, :func:`verify` and :class:`Grant`.

A child token embeds its parent's full compact token (claim ``parent``) plus the parent's
SHA-256 (``parent_hash``), so a verifier holding only the issuer's public keys checks
every hop offline: each signature, each claim set, and every attenuation rule between
neighbours (:func:`_check_link` is the one implementation both ``attenuate`` and
``verify`` use). Format and codes: docs/delegation.md.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from policyengine.money._money import Money, MoneyError
from policyengine.money._rates import RateError, RateSource, convert
from policyengine.permissions import (
    InvalidPermission,
    is_valid_pattern,
    matches,
    pattern_subsumes,
)
from policyengine.tokens._ceilings import MAX_DEPTH, MAX_POLICY_TTL, ceiling_problems
from policyengine.tokens._jws import b64encode, encode_json, shown, split
from policyengine.tokens.errors import AttenuationError, TokenError
from policyengine.tokens.keys import Key, KeySet
from policyengine.tokens.revocation import RevocationStore

__all__ = [
    "DEFAULT_LEEWAY",
    "MAX_DEPTH",
    "MAX_LEEWAY",
    "MAX_POLICY_TTL",
    "TYP",
    "Grant",
    "Hop",
    "attenuate",
    "ceiling_problems",
    "mint",
    "recheck_terms",
    "verify",
]

#: The ``typ`` header every delegation token carries (RFC 8725 section 3.11).
TYP = "delegation+jwt"
#: Largest clock-skew allowance ``verify`` accepts, in seconds.
MAX_LEEWAY = 60
#: The clock-skew allowance ``verify`` applies when given none, in seconds.
DEFAULT_LEEWAY = 60
MAX_PERMISSIONS = 64
_MAX_TIME = 253402300799  # 9999-12-31T23:59:59Z
_MAX_NAME = 256
#: No grant names a principal here: the budget wires' tenant-scoped ones (docs/service.md).
_RESERVED_PREFIX = "tenant:"
_CACHE_SIZE = 4096
#: Permissions whose :meth:`Grant.covers` answer one grant keeps.
_COVERS_KEPT = 256

_HEADER_KEYS = frozenset({"alg", "typ", "kid"})
_KEY_BEARING = frozenset({"jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256"})
_REQUIRED = (
    "iss", "sub", "iat", "nbf", "exp", "jti", "grant_id", "acting_for",
    "delegation_chain", "delegated_permissions", "depth", "max_depth",
)
_ALLOWED = frozenset({*_REQUIRED, "aud", "max_amount", "parent", "parent_hash"})


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Hop:
    """One verified token of a chain (root first). ``max_amount`` is that hop's own cap."""

    grant_id: str
    jti: str
    issuer: str
    subject: str
    audience: str | None
    acting_for: str
    chain: tuple[str, ...]
    permissions: tuple[str, ...]
    max_amount: Money | None
    issued_at: int
    not_before: int
    expires_at: int
    depth: int
    max_depth: int
    #: The parent's compact token: a bearer credential, so never in the repr.
    parent: str | None = field(repr=False)
    parent_hash: str | None


@dataclass(frozen=True)
class Grant:
    """The authority a verified token carries: the leaf's claims plus every hop.

    ``max_amount`` is the tightest cap, in the leaf's currency (attenuation guarantees
    the leaf's cap is <= every ancestor's). ``expires_at`` / ``not_before`` are the leaf's
    (inside every ancestor's window). ``chain`` runs root principal -> ... -> ``subject``.
    The repr leaves out ``token`` and each hop's ``parent``: whoever holds one acts under
    it, and a repr ends up in logs and tracebacks.
    """

    #: The verified token: a bearer credential, so never in the repr.
    token: str = field(repr=False)
    grant_id: str
    jti: str
    issuer: str
    subject: str
    audience: str | None
    acting_for: str
    chain: tuple[str, ...]
    permissions: tuple[str, ...]
    hops: tuple[Hop, ...]
    max_amount: Money | None
    depth: int
    max_depth: int
    issued_at: int
    not_before: int
    expires_at: int
    #: True when some hop carries a ``max_amount`` (a request's amount must be checked).
    capped: bool = False
    #: Answers of :meth:`covers` so far (a grant is cached with its token and asked the
    #: same permissions again and again); at most :data:`_COVERS_KEPT` entries.
    _covered: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    def covers(self, permission: str) -> bool:
        """True when every hop's ``delegated_permissions`` match ``permission``.

        >>> grant.covers("flights:book")   # doctest: +SKIP
        True
        """
        cacheable = type(permission) is str
        if cacheable:
            known = self._covered.get(permission)
            if known is not None:
                return known
        elif not isinstance(permission, str):
            # matches("*", [..]) is True: never answer for what is no permission
            raise InvalidPermission("invalid_permission", "permission must be a string, "
                                    f"not {type(permission).__name__}")
        answer = all(
            any(matches(p, permission) for p in hop.permissions) for hop in self.hops
        )
        if cacheable and len(self._covered) < _COVERS_KEPT:
            self._covered[permission] = answer
        return answer

    def amount_fits(self, money: Money, rates: RateSource | None = None, *,
                    now: float | None = None) -> bool:
        """True when ``money`` is <= every hop's ``max_amount`` (hops without one: no cap).

        An amount in another currency is converted rounding **up** (against the holder).
        Raises :class:`TokenError` ``amount_unconvertible`` when a conversion is needed
        and ``rates`` is None or has no usable rate.
        """
        if not isinstance(money, Money):
            raise _fail("invalid_amount", f"amount_fits takes a Money, not "
                        f"{type(money).__name__}")
        for hop in self.hops:
            cap = hop.max_amount
            if cap is None:
                continue
            if money.currency == cap.currency:
                if money.amount > cap.amount:
                    return False
                continue
            if rates is None:
                raise TokenError(
                    "amount_unconvertible",
                    f"amount in {money.currency} against a cap in {cap.currency}: no rates",
                )
            try:
                converted = convert(money, cap.currency, rates, now=now, rounding="up")
            except (RateError, MoneyError) as exc:
                raise TokenError("amount_unconvertible", exc.message) from exc
            if converted.amount > cap.amount:
                return False
        return True

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (used by the CLI and the conformance runner)."""
        return {
            "grant_id": self.grant_id,
            "jti": self.jti,
            "issuer": self.issuer,
            "subject": self.subject,
            "audience": self.audience,
            "acting_for": self.acting_for,
            "chain": list(self.chain),
            "permissions": list(self.permissions),
            "max_amount": _amount_claim(self.max_amount) if self.max_amount else None,
            "depth": self.depth,
            "max_depth": self.max_depth,
            "issued_at": self.issued_at,
            "not_before": self.not_before,
            "expires_at": self.expires_at,
            "hops": [{"grant_id": h.grant_id, "jti": h.jti, "subject": h.subject,
                      "permissions": list(h.permissions)} for h in self.hops],
        }


# --------------------------------------------------------------------------- helpers
def _fail(code: str, message: str) -> TokenError:
    return TokenError(code, message)


def _name(claims: Mapping[str, Any], field: str) -> str:
    value = claims[field]
    if type(value) is not str or not value or len(value) > _MAX_NAME:
        raise _fail("invalid_claim", f"{field} must be a non-empty string of <= {_MAX_NAME}")
    return value


def _time(claims: Mapping[str, Any], field: str) -> int:
    value = claims[field]
    if type(value) is not int or not 0 <= value <= _MAX_TIME:
        raise _fail(
            "invalid_time_claim",
            f"{field} must be an integer number of seconds in [0, {_MAX_TIME}], got {value!r}",
        )
    return value


def _small_int(claims: Mapping[str, Any], field: str) -> int:
    value = claims[field]
    if type(value) is not int or not 0 <= value <= MAX_DEPTH:
        raise _fail("invalid_claim", f"{field} must be an integer in [0, {MAX_DEPTH}]")
    return value


def _amount_claim(money: Money) -> dict[str, str]:
    return {"value": money.wire_amount(), "currency": money.currency}


def _parse_amount(value: object) -> Money:
    if type(value) is not dict or value.keys() != {"value", "currency"}:
        raise _fail("invalid_amount", 'max_amount must be {"value": "<decimal>", "currency": ..}')
    amount, currency = value["value"], value["currency"]
    if type(amount) is not str or type(currency) is not str:
        raise _fail("invalid_amount", "max_amount value and currency must be strings")
    try:
        money = Money.parse(amount, currency)
    except MoneyError as exc:
        raise _fail("invalid_amount", f"max_amount: {exc.message}") from None
    if money.currency != currency:
        raise _fail("invalid_amount", f"currency must be written {money.currency!r}")
    return money


def _hash(token: str) -> str:
    return b64encode(hashlib.sha256(token.encode("ascii")).digest())


def _hop_from_claims(claims: dict[str, Any]) -> Hop:
    """Validate a claim set's shape (no time or chain-link checks) and build a Hop."""
    if claims.keys() != _ALLOWED:
        for field in _REQUIRED:
            if field not in claims:
                raise _fail("missing_claim", f"required claim {field!r} is missing")
        extra = sorted(claims.keys() - _ALLOWED)
        if extra:
            raise _fail("unknown_claim", f"unknown claim(s) {extra}; refusing to ignore them")
    iat, nbf, exp = _time(claims, "iat"), _time(claims, "nbf"), _time(claims, "exp")
    if nbf > exp or iat > exp:
        raise _fail("invalid_time_claim", "nbf and iat must not be after exp")
    sub, acting_for = _name(claims, "sub"), _name(claims, "acting_for")
    depth, max_depth = _small_int(claims, "depth"), _small_int(claims, "max_depth")
    if depth > max_depth:
        raise _fail("depth_exceeded", f"depth {depth} is beyond max_depth {max_depth}")
    chain = claims["delegation_chain"]
    if type(chain) is not list or not all(
        type(c) is str and c and len(c) <= _MAX_NAME for c in chain
    ):
        raise _fail("invalid_claim", "delegation_chain must be a list of non-empty strings")
    if len(set(chain)) != len(chain):
        raise _fail("chain_cycle", "an agent appears twice in delegation_chain")
    if len(chain) != depth + 2 or chain[0] != acting_for or chain[-1] != sub:
        raise _fail(
            "chain_mismatch",
            "delegation_chain must be [acting_for, ..., sub] with depth + 2 entries",
        )
    for name in chain:
        if name.startswith(_RESERVED_PREFIX):
            # The budget wires' tenant-scoped principals (a Cycles agent
            # ``tenant:acme/agent:bot``, an actguard user ``tenant:acme/user_id:alice``):
            # a grant naming one would let its holder act as or for it elsewhere.
            raise _fail("reserved_principal", f"{shown(name)} is in the 'tenant:' "
                        "namespace, a budget wire's tenant-scoped principals: no grant "
                        "names one")
    perms = claims["delegated_permissions"]
    if type(perms) is not list or not 1 <= len(perms) <= MAX_PERMISSIONS:
        raise _fail("invalid_claim", f"delegated_permissions must be 1..{MAX_PERMISSIONS} patterns")
    for p in perms:
        if not is_valid_pattern(p):
            # The token's own text: quoted in part (shown), never whole.
            raise _fail("invalid_permission", f"malformed permission pattern {shown(p)}")
    aud = claims.get("aud")
    if aud is not None:
        aud = _name(claims, "aud")
    amount = claims.get("max_amount")
    money = None if amount is None else _parse_amount(amount)
    parent, parent_hash = claims.get("parent"), claims.get("parent_hash")
    if depth == 0:
        if parent is not None or parent_hash is not None:
            raise _fail("invalid_claim", "a root token (depth 0) has no parent")
    elif type(parent) is not str or type(parent_hash) is not str:
        raise _fail("missing_claim", "a child token needs parent and parent_hash strings")
    return Hop(
        grant_id=_name(claims, "grant_id"), jti=_name(claims, "jti"),
        issuer=_name(claims, "iss"), subject=sub, audience=aud, acting_for=acting_for,
        chain=tuple(chain), permissions=tuple(perms), max_amount=money, issued_at=iat,
        not_before=nbf, expires_at=exp, depth=depth, max_depth=max_depth,
        parent=parent, parent_hash=parent_hash,
    )


def _check_header(header: dict[str, Any], keys: KeySet) -> Key:
    if header.keys() != _HEADER_KEYS:
        for field in header:
            if field in _KEY_BEARING:
                raise _fail("header_key_not_allowed", f"header {field!r}: keys never come "
                            "from the token (RFC 8725 3.10)")
            if field == "crit":
                raise _fail("crit_not_supported", "no critical header extension is understood")
        extra = sorted(header.keys() - _HEADER_KEYS)
        if extra:
            # The token's own text, unverified: quoted in part (shown), never whole.
            raise _fail("header_invalid", f"{len(extra)} unexpected header member(s): "
                        f"{', '.join(shown(x) for x in extra[:3])}"
                        f"{', ...' if len(extra) > 3 else ''}")
    alg = header.get("alg")
    if type(alg) is not str or alg not in keys.algorithms:
        raise _fail("alg_not_allowed", f"alg {shown(alg)} is not allowed by this key set "
                    f"({sorted(keys.algorithms)})")
    if header.get("typ") != TYP:
        raise _fail("typ_invalid", f"typ must be {TYP!r}")
    kid = header.get("kid")
    if type(kid) is not str:
        raise _fail("header_invalid", "kid must be a string")
    key = keys.get(kid)
    if key is None:
        raise _fail("unknown_kid", f"no verification key with kid {shown(kid)}")
    if key.alg != alg:
        raise _fail("alg_key_mismatch", f"alg {alg!r} does not match key {shown(kid)} "
                    f"({key.alg})")
    return key


def load_hop(keys: KeySet, token: str) -> Hop:
    """Parse, check the header and signature of, and validate one token (cached)."""
    hop: Hop | None = keys.hop_cache.get(token)
    if hop is not None:
        return hop
    parsed = split(token)
    key = _check_header(parsed.header, keys)
    if not key.verify(parsed.signing_input, parsed.signature):
        raise _fail("bad_signature", "signature does not verify")
    hop = _hop_from_claims(parsed.claims)
    if key.issuer is not None and hop.issuer != key.issuer:
        # A key speaks only for its own issuer: issuer B's key cannot vouch for A.
        raise _fail("issuer_key_mismatch", f"the token names issuer {hop.issuer!r} but is "
                    f"signed with key {key.kid!r} of issuer {key.issuer!r}")
    _cache_put(keys.hop_cache, token, hop)
    return hop


def _cache_put(cache: dict[Any, Any], key: Any, value: Any) -> None:
    """Insert, evicting the oldest entry when full (tolerates concurrent evictions)."""
    if len(cache) >= _CACHE_SIZE:
        try:
            del cache[next(iter(cache))]
        except (KeyError, RuntimeError, StopIteration):
            cache.clear()
    cache[key] = value


def _check_link(parent: Hop, parent_token: str, child: Hop, rates: RateSource | None,
                now: float | None) -> bool:
    """Raise :class:`AttenuationError` unless ``child`` only narrows ``parent``.

    Returns True when a currency conversion was needed (the result depends on rates).
    """
    if child.parent_hash != _hash(parent_token):
        raise AttenuationError("parent_hash_mismatch", "parent_hash is not SHA-256(parent)")
    if child.issuer != parent.issuer:
        raise AttenuationError("issuer_changed", "every hop must have the root's issuer")
    if child.acting_for != parent.acting_for:
        raise AttenuationError("acting_for_changed", "acting_for is fixed by the root token")
    if child.subject in parent.chain:
        raise AttenuationError(
            "chain_cycle", f"agent {child.subject!r} is already in the delegation chain"
        )
    if child.chain[:-1] != parent.chain:
        raise AttenuationError("chain_mismatch", "chain must be the parent's plus the holder")
    if parent.depth >= parent.max_depth:
        raise AttenuationError(
            "depth_exceeded", f"the parent is at its max_depth ({parent.max_depth})"
        )
    if child.depth != parent.depth + 1:
        raise AttenuationError("depth_mismatch", "depth must be the parent's depth + 1")
    if child.max_depth > parent.max_depth:
        raise AttenuationError("max_depth_raised", "max_depth can only be lowered")
    if parent.audience is not None and child.audience != parent.audience:
        raise AttenuationError("audience_changed", "a child keeps its parent's audience")
    for p in child.permissions:
        if not any(pattern_subsumes(p, q) for q in parent.permissions):
            raise AttenuationError(
                "permission_widened",
                f"permission {p!r} is not covered by any of the parent's permissions",
            )
    if child.not_before < parent.not_before:
        raise AttenuationError("not_before_widened", "child nbf is before the parent's")
    if child.expires_at > parent.expires_at:
        raise AttenuationError("expiry_widened", "child exp is after the parent's")
    cap = parent.max_amount
    if cap is None:
        return False
    mine = child.max_amount
    if mine is None:
        raise AttenuationError("amount_widened", "the parent has a max_amount; the child must")
    converted = False
    if _converts(parent, child):
        if rates is None:
            raise AttenuationError(
                "amount_unconvertible",
                f"child max_amount in {mine.currency}, parent's in {cap.currency}: no rates",
            )
        try:
            mine = convert(mine, cap.currency, rates, now=now, rounding="up")
        except (RateError, MoneyError) as exc:
            raise AttenuationError("amount_unconvertible", exc.message) from exc
        converted = True
    if mine.amount > cap.amount:
        raise AttenuationError("amount_widened", "child max_amount exceeds the parent's")
    return converted


# --------------------------------------------------------------------------- verify
def _iso(t: float) -> str:
    """POSIX seconds as RFC 3339 UTC (for messages)."""
    try:
        return datetime.fromtimestamp(int(t), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return str(t)


def _located(exc: TokenError, where: str) -> TokenError:
    """The same error (same class and code) with where in the chain it happened. Raise
    it ``from exc.__cause__``: the error it wraps (the RateError of an
    ``amount_unconvertible``, as attenuate and ``Grant.amount_fits`` keep it) stays."""
    return type(exc)(exc.code, f"{where}: {exc.message}")


def _load_at(keys: KeySet, token: str, up: int) -> Hop:
    """:func:`load_hop`, with errors saying which token of the chain failed: the token
    given (``up`` 0) or the ancestor ``up`` levels above it."""
    try:
        return load_hop(keys, token)
    except TokenError as exc:
        where = "the token" if up == 0 else (
            "its parent token" if up == 1 else f"its ancestor {up} levels up")
        raise _located(exc, where) from exc.__cause__


def verify(
    keys: KeySet,
    token: str,
    *,
    now: float | None = None,
    issuer: str | None = None,
    audience: str | None = None,
    leeway: float = DEFAULT_LEEWAY,
    revocations: RevocationStore | None = None,
    rates: RateSource | None = None,
    max_depth: int | None = None,
    max_ttl: float | None = None,
    child_max_ttl: float | None = None,
) -> Grant:
    """Verify ``token`` and every hop of its chain; return the :class:`Grant`.

    ``issuer`` / ``audience`` are compared exactly (a token with ``aud`` needs a matching
    ``audience``). ``leeway`` (0..60 s) widens [nbf, exp). ``max_depth`` / ``max_ttl``
    are policy ceilings (a ``delegation`` block); ``child_max_ttl``, when given, replaces
    ``max_ttl`` for the hops below the root (sub-agents often get shorter lives). Raises
    :class:`TokenError` (or its subclass :class:`AttenuationError` for a hop that widens
    its parent).

    Repeat calls for the same token string and options hit a cache that still compares
    the clock with nbf/exp/iat and asks ``revocations`` about every hop each time. A store
    that fails to answer refuses the token: ``revocation_unavailable`` (whatever it
    raised), never a "not revoked" nor an error of another kind. An option of the wrong
    kind is ``invalid_option``: an ``issuer`` or ``audience`` that is no string,
    ``revocations`` without ``any_revoked``, ``rates`` that is no ``RateSource``. Options
    and the token's type are checked on every call, before the cache is asked, so a
    call answers the same whether the cache holds its token or not.
    """
    if type(leeway) not in (int, float) or not 0 <= leeway <= MAX_LEEWAY:
        raise _fail("invalid_option", f"leeway must be between 0 and {MAX_LEEWAY} seconds")
    # Before the cache: its key compares options by equality, and values the full path
    # refuses equal values it accepts (True == 1, Decimal(3600) == 3600, a str subclass
    # == its text); now, revocations and rates are no part of the key at all.
    _check_options(token, now, issuer, audience, revocations, rates, max_depth, max_ttl,
                   child_max_ttl)
    cache_key = (token, issuer, audience, leeway, max_depth, max_ttl, child_max_ttl)
    try:
        entry = keys.verify_cache.get(cache_key)
    except TypeError:  # unhashable option: fall through to the full (failing) path
        entry = None
    except AttributeError:  # (a try costs nothing until it catches: no check per call)
        raise _not_keys(keys) from None
    if entry is None:
        entry = _verify_uncached(keys, token, now, issuer, audience, rates, max_depth, max_ttl,
                                 child_max_ttl)
        if entry[5]:
            _cache_put(keys.verify_cache, cache_key, entry)
    grant, nbf, exp, iat, ids, _ = entry
    t = time.time() if now is None else now
    # One test written so that NaN fails it (NaN compares false with every bound: as
    # three "refuse if" tests, an expired token passed).
    try:  # (a try costs nothing until it catches)
        inside = nbf - leeway <= t < exp + leeway and iat <= t + leeway
    except TypeError:
        inside = False
    if not inside:
        raise _outside(t, nbf, exp, iat, leeway)
    if revocations is not None:
        try:
            revoked = revocations.any_revoked(ids)
        except TokenError:  # the shared stores' own ``revocation_unavailable``
            raise
        except Exception as exc:  # a custom store's fault: refuse, never "not revoked"
            raise _fail("revocation_unavailable", f"the revocation store failed "
                        f"({type(exc).__name__}: {exc})") from exc
        if revoked:
            raise _fail("revoked", "the token or one of its ancestors has been revoked")
    return grant


_Entry = tuple[Grant, int, int, int, tuple[str, ...], bool]


def _check_leeway(leeway: object) -> None:
    """``invalid_option`` unless ``leeway`` is an int or float in [0, MAX_LEEWAY] (NaN
    is not: it fails the comparison)."""
    if type(leeway) not in (int, float) or not 0 <= leeway <= MAX_LEEWAY:  # type: ignore[operator]
        raise _fail("invalid_option", f"leeway must be between 0 and {MAX_LEEWAY} seconds")


def _outside(t: float, nbf: int, exp: int, iat: int, leeway: float) -> TokenError:
    """Why ``t`` is outside a chain's window [nbf, exp) (with ``leeway``; iat <= t too)."""
    if t >= exp + leeway:
        return _fail("expired", f"claim exp: the token (or a hop of its chain) expired at "
                     f"{_iso(exp)}; it is now {_iso(t)}")
    if t < nbf - leeway:
        return _fail("not_yet_valid", f"claim nbf: the token is not valid before "
                     f"{_iso(nbf)}; it is now {_iso(t)}")
    return _fail("issued_in_future", f"claim iat: the token claims to be issued at "
                 f"{_iso(iat)}, after now ({_iso(t)})")


def _bad_option(name: str, kind: str, value: object) -> TokenError:
    """``invalid_option``: an argument of the wrong kind, told by its type (never its
    value: that may be anything, of any size)."""
    return _fail("invalid_option", f"{name} must be {kind}, not {type(value).__name__}")


def _is_store(revocations: object) -> bool:
    """Can ``verify`` ask ``revocations``: has it a callable ``any_revoked``? (An
    attribute that raises on reading counts as a store, a failing one: its verify is
    refused ``revocation_unavailable``.)"""
    try:
        return callable(getattr(revocations, "any_revoked", None))
    except Exception:
        return True


def _is_rates(rates: object) -> bool:
    """Can ``verify`` ask ``rates`` for a rate: has it a callable ``rate`` (what
    :class:`RateSource` asks, checked in ~0.1 us where ``isinstance`` of the protocol
    takes ~7 us, on every call)? An attribute that raises on reading does not."""
    try:
        return callable(getattr(rates, "rate", None))
    except Exception:
        return False


def _bad_store(revocations: object) -> TokenError:
    return _bad_option("revocations", "a RevocationStore (any_revoked) or None", revocations)


def _check_options(token: object, now: object, issuer: object, audience: object,
                   revocations: object, rates: object, max_depth: object, max_ttl: object,
                   child_max_ttl: object) -> None:
    """Refuse what :func:`verify` is given that is not a token string or options of the
    right kind, on every call (cached or not), before the token is read. Options of the
    wrong kind are misuse (``invalid_option``): compared or called later they would read
    as a token fault (``issuer_mismatch``, ``audience_mismatch``,
    ``revocation_unavailable``). Each test costs nothing for an option left out."""
    if max_depth is not None or max_ttl is not None or child_max_ttl is not None:
        bad = ceiling_problems(max_depth, max_ttl, child_max_ttl)
        if bad:
            raise _fail("invalid_option", bad[0][1])
    if now is not None and not _posix_seconds(now):
        raise _bad_now(now)
    if issuer is not None and type(issuer) is not str:
        raise _bad_option("issuer", "a string or None", issuer)
    if audience is not None and type(audience) is not str:
        raise _bad_option("audience", "a string or None", audience)
    if revocations is not None and not _is_store(revocations):
        raise _bad_store(revocations)
    if rates is not None and not _is_rates(rates):
        raise _bad_option("rates", "a RateSource (rate(from, to, now)) or None", rates)
    if type(token) is not str:
        raise _fail("malformed", "token must be a string")


def _verify_uncached(keys: KeySet, token: str, now: float | None, issuer: str | None,
                     audience: str | None, rates: RateSource | None, max_depth: int | None,
                     max_ttl: float | None, child_max_ttl: float | None = None) -> _Entry:
    """The full verification of ``token`` (options checked by :func:`_check_options`)."""
    hops = [_load_at(keys, token, 0)]
    tokens = [token]
    while True:
        parent_token = hops[-1].parent
        if parent_token is None:
            break
        if len(hops) > MAX_DEPTH:
            raise _fail("depth_exceeded", f"more than {MAX_DEPTH} hops")
        hops.append(_load_at(keys, parent_token, len(hops)))
        tokens.append(parent_token)
    hops.reverse()
    tokens.reverse()
    cacheable = True
    for i in range(1, len(hops)):
        try:
            if _check_link(hops[i - 1], tokens[i - 1], hops[i], rates, now):
                cacheable = False
        except TokenError as exc:
            raise _located(exc, f"hop {i} (held by {hops[i].subject!r}) against its "
                           "parent") from exc.__cause__
    leaf = hops[-1]
    if issuer is not None and leaf.issuer != issuer:
        raise _fail("issuer_mismatch", f"claim iss: the token was issued by {leaf.issuer!r}, "
                    f"but only {issuer!r} is trusted here")
    if leaf.audience != audience:
        if audience is None:
            why = (f"the token is for audience {leaf.audience!r}, and this verifier expects "
                   "none (give that audience to verify it)")
        elif leaf.audience is None:
            why = f"the token names no audience, and this verifier expects {audience!r}"
        else:
            why = f"the token is for audience {leaf.audience!r}, not {audience!r}"
        raise _fail("audience_mismatch", f"claim aud: {why}")
    if max_depth is not None and leaf.depth > max_depth:
        raise _fail("depth_exceeded", f"depth {leaf.depth} exceeds the policy's {max_depth}")
    for i, hop in enumerate(hops):
        ceiling, name = ((max_ttl, "max_ttl") if i == 0 or child_max_ttl is None
                         else (child_max_ttl, "child_max_ttl"))
        if ceiling is not None and hop.expires_at - hop.issued_at > ceiling:
            where = "the root token" if i == 0 else f"hop {i} (held by {hop.subject!r})"
            raise _fail("ttl_exceeded", f"claim exp: {where} lives "
                        f"{hop.expires_at - hop.issued_at}s, longer than the policy's "
                        f"{name} of {ceiling:g}s")
    ids: list[str] = []
    for hop in hops:
        ids.append(hop.grant_id)
        ids.append(hop.jti)
    grant = Grant(
        token=token, grant_id=leaf.grant_id, jti=leaf.jti, issuer=leaf.issuer,
        subject=leaf.subject, audience=leaf.audience, acting_for=leaf.acting_for,
        chain=leaf.chain, permissions=leaf.permissions, hops=tuple(hops),
        max_amount=leaf.max_amount, depth=leaf.depth, max_depth=leaf.max_depth,
        issued_at=leaf.issued_at, not_before=leaf.not_before, expires_at=leaf.expires_at,
        capped=any(hop.max_amount is not None for hop in hops),
    )
    nbf, exp, iat = _bounds(hops)
    return grant, nbf, exp, iat, tuple(ids), cacheable


def _bounds(hops: Sequence[Hop]) -> tuple[int, int, int]:
    """(nbf, exp, iat) of a chain: children sit inside their parents' windows, so the
    leaf's bounds are the chain's; the max/min keep this true even if a future rule
    relaxed that."""
    return (max(h.not_before for h in hops), min(h.expires_at for h in hops),
            max(h.issued_at for h in hops))


def _converts(parent: Hop, child: Hop) -> bool:
    """Does checking ``child``'s cap against ``parent``'s need exchange rates?"""
    cap, mine = parent.max_amount, child.max_amount
    return cap is not None and mine is not None and mine.currency != cap.currency


def recheck_terms(grant: Grant, leeway: float = DEFAULT_LEEWAY
                  ) -> tuple[float, float, tuple[str, ...]] | None:
    """What a caller keeping ``grant`` (returned by :func:`verify` with this ``leeway``)
    between two verifications of its token must still check on every use, as
    :func:`verify`'s own cache does: ``(lo, hi, ids)`` -- the clock ``t`` must satisfy
    ``lo <= t < hi`` (nbf, iat and exp of every hop, with the leeway) and the revocation
    store must know none of ``ids`` (every hop's ``grant_id`` and ``jti``). When either
    check fails, verify the token again: it raises the precise error.

    None when the grant must not be kept: its verification converted a hop's cap with
    exchange rates, so its answer can change while the token does not.
    """
    if not isinstance(grant, Grant):
        raise _fail("invalid_option", f"grant must be a Grant (what verify returns), not "
                    f"{type(grant).__name__}")
    _check_leeway(leeway)
    hops = grant.hops
    if any(_converts(hops[i - 1], hops[i]) for i in range(1, len(hops))):
        return None
    nbf, exp, iat = _bounds(hops)
    ids = tuple(i for hop in hops for i in (hop.grant_id, hop.jti))
    return max(nbf, iat) - leeway, exp + leeway, ids


# --------------------------------------------------------------------------- mint
def _seconds(value: object, what: str) -> int:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if type(value) is int or (type(value) is float and math.isfinite(value)):
        secs = int(value)
        if secs > 0:
            return secs
    raise _fail("invalid_option", f"{what} must be a positive number of seconds")


def _not_keys(keys: object) -> TokenError:
    return _fail("invalid_option", f"keys must be a KeySet, not {type(keys).__name__}")


def _posix_seconds(now: object) -> bool:
    """Is ``now`` POSIX seconds: an int or float (a subclass too, as an engine's clock
    may return; not a bool) in [0, :data:`_MAX_TIME`]? NaN is not."""
    return (isinstance(now, (int, float)) and type(now) is not bool
            and 0 <= now <= _MAX_TIME)


def _bad_now(now: object) -> TokenError:
    # (the repr of a huge int raises: an int is shown by kind only)
    shown = repr(float(now)) if isinstance(now, float) else (
        "an int out of range" if isinstance(now, int) and type(now) is not bool
        else f"a {type(now).__name__}")
    return _fail("invalid_option", f"now must be POSIX seconds in [0, {_MAX_TIME}] "
                 f"(an int or float), got {shown}")


def _now(now: float | None) -> int:
    t = time.time() if now is None else now
    if not _posix_seconds(t):
        raise _bad_now(t)
    return int(t)


def _money_arg(value: object) -> Money | None:
    if value is None or isinstance(value, Money):
        return value
    try:
        if isinstance(value, Mapping):
            return Money.parse(value["value"], value["currency"])
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return Money.parse(value[0], value[1])
    except MoneyError as exc:
        raise _fail("invalid_amount", f"max_amount: {exc.message}") from None
    except KeyError:
        pass
    raise _fail("invalid_amount", 'max_amount is a Money, ("500", "EUR") or {"value", "currency"}')


def _perm_list(permissions: object) -> list[str]:
    if isinstance(permissions, str) or not isinstance(permissions, Sequence):
        raise _fail("invalid_permission", "permissions must be a list of patterns")
    return list(permissions)


def _sign(keys: KeySet, claims: dict[str, Any]) -> str:
    """Sign with the active key, or, when it belongs to another issuer, with a signing
    key of the claims' issuer; a key never signs for an issuer it does not belong to."""
    key = keys.active_key
    issuer = claims["iss"]
    if key.issuer is not None and key.issuer != issuer:
        own = next((k for k in keys if k.issuer == issuer and k.can_sign), None)
        if own is None:
            raise _fail("issuer_key_mismatch", f"no signing key of issuer {issuer!r} "
                        f"(the active key {key.kid!r} belongs to {key.issuer!r})")
        key = own
    header = {"alg": key.alg, "typ": TYP, "kid": key.kid}
    signing_input = f"{b64encode(encode_json(header))}.{b64encode(encode_json(claims))}"
    token = f"{signing_input}.{b64encode(key.sign(signing_input.encode('ascii')))}"
    split(token)  # the size cap and our own strict parser apply to what we emit too
    return token


def _new_id() -> str:
    """A fresh ``jti`` / ``grant_id``: 128 random bits in hex. Hex, not base64url, because
    an id that starts with ``-`` reads as an option on a command line
    (``policyengine token revoke ID``)."""
    return secrets.token_hex(16)


def mint(
    keys: KeySet,
    *,
    issuer: str,
    acting_for: str,
    agent: str,
    permissions: Sequence[str],
    ttl: float | timedelta,
    max_amount: Money | tuple[str, str] | Mapping[str, str] | None = None,
    audience: str | None = None,
    max_depth: int = 3,
    now: float | None = None,
    not_before: int | None = None,
    grant_id: str | None = None,
    jti: str | None = None,
) -> str:
    """Mint a root delegation token: ``acting_for`` grants ``agent`` ``permissions``.

    >>> keys = KeySet.generate()
    >>> tok = mint(keys, issuer="https://auth.example", acting_for="besar",
    ...            agent="travel-agent", permissions=["flights:*"], ttl=3600)
    >>> verify(keys, tok).chain
    ('besar', 'travel-agent')
    """
    if not isinstance(keys, KeySet):
        raise _not_keys(keys)
    iat = _now(now)
    if not_before is not None and (type(not_before) is not int
                                   or not 0 <= not_before <= _MAX_TIME):
        raise _fail("invalid_time_claim", "not_before must be whole POSIX seconds")
    nbf = iat if not_before is None else not_before
    claims: dict[str, Any] = {
        "iss": issuer, "sub": agent, "iat": iat, "nbf": nbf,
        "exp": nbf + _seconds(ttl, "ttl"),
        "jti": jti or _new_id(),
        "grant_id": grant_id or _new_id(),
        "acting_for": acting_for, "delegation_chain": [acting_for, agent],
        "delegated_permissions": _perm_list(permissions),
        "depth": 0, "max_depth": max_depth,
    }
    if audience is not None:
        claims["aud"] = audience
    money = _money_arg(max_amount)
    if money is not None:
        claims["max_amount"] = _amount_claim(money)
    _hop_from_claims(claims)  # one validator for what we sign and what we accept
    return _sign(keys, claims)


def attenuate(
    keys: KeySet,
    parent_token: str,
    *,
    agent: str,
    permissions: Sequence[str],
    max_amount: Money | tuple[str, str] | Mapping[str, str] | None = None,
    ttl: float | timedelta | None = None,
    max_depth: int | None = None,
    audience: str | None = None,
    now: float | None = None,
    rates: RateSource | None = None,
    revocations: RevocationStore | None = None,
    grant_id: str | None = None,
    jti: str | None = None,
) -> str:
    """Derive a narrower child token for ``agent`` from a valid ``parent_token``.

    Omitted ``max_amount`` / ``max_depth`` / ``audience`` are inherited; omitted ``ttl``
    ends the child with its parent. Anything wider than the parent raises
    :class:`AttenuationError` (``permission_widened``, ``amount_widened``,
    ``expiry_widened``, ``depth_exceeded``, ``max_depth_raised``, ``chain_cycle``, ...).
    The parent itself must verify now (same keys, not revoked).
    """
    if not isinstance(keys, KeySet):
        raise _not_keys(keys)
    if not isinstance(parent_token, str):
        raise _fail("malformed", f"a token is a string, not {type(parent_token).__name__}")
    parent_grant = verify(keys, parent_token, now=now, audience=_aud_of(keys, parent_token),
                          rates=rates, revocations=revocations)
    parent = parent_grant.hops[-1]
    if parent.depth >= parent.max_depth:
        raise AttenuationError(
            "depth_exceeded", f"the parent is at its max_depth ({parent.max_depth})"
        )
    iat = _now(now)
    nbf = max(iat, parent.not_before)
    exp = parent.expires_at if ttl is None else nbf + _seconds(ttl, "ttl")
    money = _money_arg(max_amount)
    if money is None:
        money = parent.max_amount
    claims: dict[str, Any] = {
        "iss": parent.issuer, "sub": agent, "iat": iat, "nbf": nbf, "exp": exp,
        "jti": jti or _new_id(),
        "grant_id": grant_id or _new_id(),
        "acting_for": parent.acting_for,
        "delegation_chain": [*parent.chain, agent],
        "delegated_permissions": _perm_list(permissions),
        "depth": parent.depth + 1,
        "max_depth": parent.max_depth if max_depth is None else max_depth,
    }
    aud = audience if audience is not None else parent.audience
    if aud is not None:
        claims["aud"] = aud
    if money is not None:
        claims["max_amount"] = _amount_claim(money)
    claims["parent"] = parent_token
    claims["parent_hash"] = _hash(parent_token)
    try:
        child = _hop_from_claims(claims)
    except TokenError as exc:
        if exc.code in ("chain_cycle", "depth_exceeded"):
            raise AttenuationError(exc.code, exc.message) from None
        raise
    _check_link(parent, parent_token, child, rates, now)
    return _sign(keys, claims)


def _aud_of(keys: KeySet, token: str) -> str | None:
    """The audience a token names (only to re-verify a parent we are about to extend)."""
    return load_hop(keys, token).audience
