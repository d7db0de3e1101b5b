"""Hostile inputs around delegation tokens that are not the token itself: the clock a
caller hands ``verify``, the JSON a command line or a key file is given, what a grant's
``repr`` shows, and how a key file is written. Each must be refused with a stable code
(never a crash), and never answered by letting an expired token through; a repr never
shows a token, and private keys are never readable by others, not even for a moment."""

from __future__ import annotations

import io
import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyengine.permissions import InvalidPermission
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
    assert capsys.readouterr().err.startswith(
        "policyengine token verify: error: invalid_option: now must be")


# --------------------------------------------------------------------------- JSON
DEEP = '{"token": ' + "[" * 100_000


def test_cli_token_of_deeply_nested_json_is_malformed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keys.json"
    KEYS.save(path)
    assert cli_main(["token", "verify", "--keys", str(path), "--token", DEEP]) == 1
    assert capsys.readouterr().err.startswith(
        "policyengine token verify: error: malformed: --token:")
    monkeypatch.setattr("sys.stdin", io.StringIO(DEEP))
    assert cli_main(["token", "verify", "--keys", str(path), "--token", "-"]) == 1
    assert capsys.readouterr().err.startswith(
        "policyengine token verify: error: malformed: --token:")


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


# --------------------------------------------------------------------------- key files
@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("name", ["keys.json", "key.pem"])
def test_private_keys_are_never_written_to_a_readable_file(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask_022: None) -> None:
    # No chmod after the write: the file must be 0600 while the secret goes in (a
    # file opened while it was 0644 stays readable through its descriptor).
    monkeypatch.setattr(Path, "chmod", lambda self, mode: None)
    monkeypatch.setattr(os, "chmod", lambda *a, **kw: None)
    path = tmp_path / name
    KEYS.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert KeySet.from_file(path).active_kid == KEYS.active_kid
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary left


def test_a_reader_of_the_old_key_file_never_sees_the_new_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text("{}")
    path.chmod(0o644)
    with path.open() as before:  # opened while readable by others
        KEYS.save(path)
        assert before.read() == "{}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert KeySet.from_file(path).active_kid == KEYS.active_kid


def test_a_failed_save_leaves_the_old_file_and_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keys.json"
    path.write_text("{}")

    def refuse(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError):
        KEYS.save(path)
    assert path.read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]


def test_public_keys_keep_the_umask(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "public.json"
    KEYS.save(path, private=False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


# --------------------------------------------------------------------------- Grant API
STAR = mint(KEYS, issuer=ISS, acting_for="besar", agent="travel-agent", permissions=["*"],
            ttl=3600, now=NOW, max_amount=("5", "EUR"))


@pytest.mark.parametrize("permission", [None, ["flights:book"], 7, b"flights:book"])
def test_covers_refuses_what_is_no_permission(permission: object) -> None:
    grant = verify(KEYS, STAR, now=NOW)
    # "*" == "*" decided before the type was looked at: a list or None was covered
    with pytest.raises(InvalidPermission) as info:
        grant.covers(permission)  # type: ignore[arg-type]
    assert info.value.code == "invalid_permission"
    assert grant.covers("flights:book") is True


@pytest.mark.parametrize("money", ["5 EUR", None, 5, ("5", "EUR")])
def test_amount_fits_refuses_what_is_no_money(money: object) -> None:
    grant = verify(KEYS, STAR, now=NOW)
    with pytest.raises(TokenError) as info:
        grant.amount_fits(money)  # type: ignore[arg-type]
    assert info.value.code == "invalid_amount"


def test_cli_duration_too_long_to_read(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.json"
    KEYS.save(path)
    assert cli_main(["token", "mint", "--keys", str(path), "--issuer", ISS,
                     "--acting-for", "besar", "--agent", "a", "--permission", "x:y",
                     "--ttl", "9" * 5000]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "policyengine token mint: error: invalid_option: bad duration '999") and len(err) < 200
    assert cli_main(["token", "verify", "--keys", str(path), "--token", LIVE,
                     "--max-ttl", "1" * 4400 + "d"]) == 1
    assert capsys.readouterr().err.startswith(
        "policyengine token verify: error: invalid_option: bad duration")


@pytest.mark.parametrize("text", ["é", KEYS.to_pem().decode("ascii").replace(
    "-----END", "é\n-----END")])
def test_pem_text_with_a_non_ascii_character_is_an_invalid_key(text: str) -> None:
    with pytest.raises(TokenError) as info:
        KeySet.load_pem(text)
    assert info.value.code == "invalid_key"
    assert KeySet.load_pem(KEYS.to_pem().decode("ascii")).active_kid == KEYS.active_kid
