"""Runner for ``kind: token`` conformance cases (``conformance/tokens/*.json``).

A fixture holds ``now`` (RFC 3339), ``keys`` (a JWKS, private keys included so mint and
attenuate cases are reproducible), optional ``allow_hmac`` and ``rates``
(``{"base": "EUR", "rates": {"USD": "0.92"}}``). Each case's ``request.op`` is
``verify``, ``mint`` or ``attenuate``; ``expect`` is ``{"error": code}`` or
``{"grant": {...subset of Grant.to_dict()...}}`` with optional ``covers``
(``{permission: bool}``) and ``amount_fits`` (``[{"value", "currency", "fits"}]``).
The format is described in docs/delegation.md.
"""

from __future__ import annotations

from typing import Any

from policyengine.money._money import Money, MoneyError
from policyengine.money._rates import RateError, StaticRates, parse_rfc3339
from policyengine.tokens.errors import TokenError
from policyengine.tokens.grants import Grant, attenuate, mint, verify
from policyengine.tokens.keys import KeySet
from policyengine.tokens.revocation import MemoryRevocationStore

__all__ = ["run_token_case"]


def _time(value: Any) -> float:
    return parse_rfc3339(value) if isinstance(value, str) else float(value)


def _rates(spec: Any) -> StaticRates | None:
    if not spec:
        return None
    return StaticRates(spec["base"], spec["rates"])


def _run(fixture: dict[str, Any], req: dict[str, Any]) -> Grant:
    keys = KeySet.load_jwks(fixture["keys"], allow_hmac=bool(fixture.get("allow_hmac")))
    now = _time(req.get("now", fixture["now"]))
    rates = _rates(req.get("rates", fixture.get("rates")))
    revocations = MemoryRevocationStore(req.get("revoked", []))
    op = req.get("op")
    if op == "verify":
        return verify(
            keys, req["token"], now=now, issuer=req.get("issuer"),
            audience=req.get("audience"), leeway=req.get("leeway", 60),
            revocations=revocations, rates=rates, max_depth=req.get("max_depth"),
            max_ttl=req.get("max_ttl"),
        )
    if op == "mint":
        token = mint(
            keys, issuer=req["issuer"], acting_for=req["acting_for"], agent=req["agent"],
            permissions=req["permissions"], ttl=req["ttl"], max_amount=req.get("max_amount"),
            audience=req.get("audience"), max_depth=req.get("max_depth", 3), now=now,
            grant_id=req.get("grant_id"), jti=req.get("jti"),
        )
    elif op == "attenuate":
        token = attenuate(
            keys, req["parent"], agent=req["agent"], permissions=req["permissions"],
            max_amount=req.get("max_amount"), ttl=req.get("ttl"),
            max_depth=req.get("max_depth"), audience=req.get("audience"), now=now,
            rates=rates, revocations=revocations, grant_id=req.get("grant_id"),
            jti=req.get("jti"),
        )
    else:
        raise ValueError(f"unknown op {op!r}")
    return verify(keys, token, now=now, audience=req.get("audience") or _aud(keys, token),
                  rates=rates)


def _aud(keys: KeySet, token: str) -> str | None:
    from policyengine.tokens.grants import load_hop

    return load_hop(keys, token).audience


def run_token_case(fixture: dict[str, Any], case: dict[str, Any]) -> str | None:
    """Run one case; None when it passes, else a one-line failure message."""
    expect = case.get("expect", {})
    try:
        grant = _run(fixture, case["request"])
    except TokenError as exc:
        if "error" in expect:
            if exc.code == expect["error"]:
                return None
            return f"expected error {expect['error']!r}, got {exc.code!r} ({exc.message})"
        return f"unexpected error {exc.code!r}: {exc.message}"
    except (KeyError, TypeError, ValueError) as exc:
        return f"bad case or uncaught error: {type(exc).__name__}: {exc}"
    if "error" in expect:
        return f"expected error {expect['error']!r}, but the token verified"
    got = grant.to_dict()
    for field, want in expect.get("grant", {}).items():
        if got.get(field) != want:
            return f"grant.{field}: expected {want!r}, got {got.get(field)!r}"
    for permission, want in expect.get("covers", {}).items():
        if grant.covers(permission) is not want:
            return f"covers({permission!r}) should be {want}"
    for item in expect.get("amount_fits", []):
        try:
            fits = grant.amount_fits(Money.parse(item["value"], item["currency"]),
                                     _rates(case["request"].get("rates", fixture.get("rates"))))
        except (TokenError, MoneyError, RateError) as exc:
            return f"amount_fits({item}) raised {exc}"
        if fits is not item["fits"]:
            return f"amount_fits({item['value']} {item['currency']}) should be {item['fits']}"
    return None
