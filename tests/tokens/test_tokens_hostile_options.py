"""Hostile inputs around delegation tokens that are not the token itself: the clock a
caller hands ``verify``, the JSON a command line or a key file is given, and what a
grant's ``repr`` shows. Each must be refused with a stable code (never a crash), and
never answered by letting an expired token through; a repr never shows a token."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest

from policyengine.tokens import KeySet, TokenError, attenuate, mint, verify
from policyengine.tokens._cli import main as cli_main

NOW = 1767225600  # 2026-01-01T00:00:00Z
ISS = "https://auth.example"
KEYS = KeySet.generate()
EXPIRED = mint(KEYS, issuer=ISS, acting_for="besar", agent="travel-agent",
               permissions=["flights:*"], ttl=60, now=NOW - 3600)
LIVE = mint(KEYS, issuer=ISS, acting_for="besar", agent="travel-agent",
            permissions=["flights:*"], ttl=3600, now=NOW)


def code_of(token: str, now: object) -> str:
    with pytest.raises(TokenError) as info:
        verify(KEYS, token, now=now)  # type: ignore[arg-type]
    return info.value.code


# --------------------------------------------------------------------------- now
def test_a_nan_clock_does_not_let_an_expired_token_through() -> None:
    # NaN compares false with every bound: nothing said "expired" before.
    assert code_of(EXPIRED, math.nan) == "invalid_option"
    assert code_of(EXPIRED, NOW) == "expired"


def test_a_nan_clock_is_refused_on_the_cached_path_too() -> None:
    assert verify(KEYS, LIVE, now=NOW).subject == "travel-agent"  # now cached
    assert code_of(LIVE, math.nan) == "invalid_option"


@pytest.mark.parametrize("now", [math.nan, math.inf, -math.inf, -1, -0.5, 253402300800,
                                 10**30, True, False, "1767225600", b"1",
                                 [NOW], None.__class__])
def test_a_clock_that_is_no_posix_second_is_refused(now: object) -> None:
    assert code_of(LIVE, now) == "invalid_option"
    assert code_of(EXPIRED, now) == "invalid_option"


def test_an_int_too_long_to_write_out_is_refused_by_kind() -> None:
    with pytest.raises(TokenError) as info:
        verify(KEYS, LIVE, now=10**5000)
    assert info.value.code == "invalid_option"
    assert info.value.message.endswith("got an int out of range")


def test_the_clock_bounds_themselves_are_accepted() -> None:
    assert code_of(LIVE, 0) == "not_yet_valid"
    assert code_of(LIVE, 253402300799) == "expired"
    assert verify(KEYS, LIVE, now=float(NOW)).subject == "travel-agent"


class Seconds(float):
    """A float subclass, as a clock (numpy's float64 is one) may return."""


def test_a_float_subclass_is_a_clock_but_not_its_nan() -> None:
    assert verify(KEYS, LIVE, now=Seconds(NOW)).subject == "travel-agent"
    assert code_of(EXPIRED, Seconds(NOW)) == "expired"
    assert code_of(EXPIRED, Seconds(math.nan)) == "invalid_option"


def test_attenuate_refuses_a_nan_clock_before_verifying_the_parent() -> None:
    with pytest.raises(TokenError) as info:
        attenuate(KEYS, EXPIRED, agent="hotel-agent", permissions=["flights:book"],
                  now=math.nan)
    assert info.value.code == "invalid_option"


def test_cli_verify_now_nan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.json"
    KEYS.save(path)
    assert cli_main(["token", "verify", "--keys", str(path), "--token", EXPIRED,
                     "--now", "nan"]) == 1
    assert capsys.readouterr().err.startswith("error: invalid_option: now must be")


# --------------------------------------------------------------------------- JSON
DEEP = '{"token": ' + "[" * 100_000


def test_cli_token_of_deeply_nested_json_is_malformed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keys.json"
    KEYS.save(path)
    assert cli_main(["token", "verify", "--keys", str(path), "--token", DEEP]) == 1
    assert capsys.readouterr().err.startswith("error: malformed: --token:")
    monkeypatch.setattr("sys.stdin", io.StringIO(DEEP))
    assert cli_main(["token", "verify", "--keys", str(path), "--token", "-"]) == 1
    assert capsys.readouterr().err.startswith("error: malformed: --token:")


@pytest.mark.parametrize("text", [DEEP, '{"keys": ' + "[" * 100_000,
                                  '{"keys": [' + '{"a":' * 100_000])
def test_a_deeply_nested_jwks_is_an_invalid_key(text: str, tmp_path: Path) -> None:
    with pytest.raises(TokenError) as info:
        KeySet.load_jwks(text)
    assert info.value.code == "invalid_key"
    path = tmp_path / "keys.json"
    path.write_text(text)
    with pytest.raises(TokenError) as info:
        KeySet.from_file(path)
    assert info.value.code == "invalid_key"


# --------------------------------------------------------------------------- repr
def test_a_grant_repr_holds_no_bearer_token() -> None:
    child = attenuate(KEYS, LIVE, agent="hotel-agent", permissions=["flights:book"],
                      now=NOW)
    grant = verify(KEYS, child, now=NOW)
    assert grant.token == child and grant.hops[1].parent == LIVE  # still there
    for shown in (repr(grant), str(grant), repr(grant.hops), f"{grant!s}"):
        assert child not in shown and LIVE not in shown
        assert "eyJ" not in shown  # no compact JWS of any hop (they start {"alg"...)
    assert "grant_id=" in repr(grant) and "chain=('besar', 'travel-agent', 'hotel-agent')" \
        in repr(grant)
