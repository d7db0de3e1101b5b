"""A token's header is read before its signature is checked, so its ``kid``, ``alg`` and
member names are anyone's text, up to the size cap. An error quotes only a bounded,
repr'd head of each (``MAX_SHOWN`` characters, ``...`` when cut): the message is repeated
in a decision's reason, the service's answers and its logs, and a 12 KB ``kid`` copied
into each made every refused token kilobytes of echo."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from conftest import Clock

from policyengine import tokens
from policyengine.engine import Engine
from policyengine.tokens import MAX_TOKEN_LENGTH, TokenError, verify
from policyengine.tokens._jws import MAX_SHOWN, shown

NOW = 1767225600  # 2026-01-01T00:00:00Z
KEYS = tokens.KeySet.generate()
TOKEN = tokens.mint(KEYS, issuer="https://auth.example", acting_for="besar",
                    agent="travel-agent", permissions=["flights:*"], ttl=3600, now=NOW)
_, PAYLOAD, SIGNATURE = TOKEN.split(".")
POLICY = 'namespace t\nrole r: flights:*\nagent "travel-agent": r\n'


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _with_header(header: dict[str, Any]) -> str:
    return f"{_b64(header)}.{PAYLOAD}.{SIGNATURE}"




def _filled(header: dict[str, Any], field: str) -> dict[str, Any]:
    """``header`` with ``field`` (a member's value, or a member name when its value is
    ``None``) as long as a token of the size cap has room for."""
    def build(n: int) -> dict[str, Any]:
        if header.get(field, 0) is None:
            return {**{k: v for k, v in header.items() if k != field}, "Z" * n: 1}
        return {**header, field: "Q" * n}
    n = (MAX_TOKEN_LENGTH - len(PAYLOAD) - len(SIGNATURE) - 2) * 3 // 4
    while len(_with_header(build(n))) > MAX_TOKEN_LENGTH:
        n -= 8
    return build(n)


def _largest(field: str) -> dict[str, Any]:
    return _filled({"alg": "EdDSA", "typ": "delegation+jwt", "kid": KEYS.active_kid}, field)


def _error(token: str) -> TokenError:
    with pytest.raises(TokenError) as info:
        verify(KEYS, token, now=NOW)
    return info.value


HOSTILE = [
    pytest.param(_largest("kid"), "unknown_kid", id="kid"),
    pytest.param(_largest("alg"), "alg_not_allowed", id="alg"),
    pytest.param(_filled({"alg": "EdDSA", "typ": "delegation+jwt", "kid": KEYS.active_kid,
                          "name": None}, "name"), "header_invalid", id="member-name"),
    pytest.param({"alg": "EdDSA", "typ": "delegation+jwt", "kid": KEYS.active_kid,
                  **{f"m{i:03}" + "Z" * 40: 1 for i in range(200)}}, "header_invalid",
                 id="many-members"),
]


@pytest.mark.parametrize(("header", "code"), HOSTILE)
def test_a_huge_header_value_is_quoted_in_part(header: dict[str, Any], code: str) -> None:
    token = _with_header(header)
    assert len(token) <= MAX_TOKEN_LENGTH  # it reaches the header check
    exc = _error(token)
    assert exc.code == code
    assert len(exc.message) < 200, exc.message
    assert "QQQQ" in exc.message or "ZZZZ" in exc.message  # a head of it, to know it by
    assert "..." in exc.message


@pytest.mark.parametrize(("header", "code"), HOSTILE)
def test_a_decision_reason_quotes_it_in_part_too(header: dict[str, Any], code: str) -> None:
    engine = Engine.from_source(POLICY, name="t.policy", keys=KEYS, clock=Clock(NOW))
    d = engine.authorize("travel-agent", "flights:book", token=_with_header(header))
    assert not d.allowed
    wire = json.dumps(d.to_wire())
    assert code in wire
    assert len(wire) < 2000, wire


def test_a_16_kb_kid_is_refused_by_size_and_never_echoed() -> None:
    header = {"alg": "EdDSA", "typ": "delegation+jwt", "kid": "K" * 16384}
    exc = _error(_with_header(header))
    assert exc.code == "token_too_large"
    assert "KKKK" not in exc.message and len(exc.message) < 200


def test_short_values_are_quoted_whole() -> None:
    exc = _error(_with_header({"alg": "EdDSA", "typ": "delegation+jwt", "kid": "nope"}))
    assert exc.code == "unknown_kid" and "'nope'" in exc.message
    exc = _error(_with_header({"alg": "none", "typ": "delegation+jwt", "kid": "k"}))
    assert exc.code == "alg_not_allowed" and "'none'" in exc.message


@pytest.mark.parametrize("value", ["K" * 16384, "k" * MAX_SHOWN, "\n" * 100, 10**50,
                                   ["x" * 100] * 100, None, "short"])
def test_shown_is_bounded(value: object) -> None:
    text = shown(value)
    assert len(text) <= MAX_SHOWN
    whole = repr(value)
    assert text == whole if len(whole) <= MAX_SHOWN else (
        text.endswith("...") and whole.startswith(text[:-3]))
