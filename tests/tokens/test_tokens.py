"""Delegation tokens: keys, mint / attenuate / verify, revocation, cache, CLI."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from policyengine.money import Money, StaticRates
from policyengine.tokens import (
    AttenuationError,
    KeySet,
    MemoryRevocationStore,
    TokenError,
    attenuate,
    mint,
    revoke,
    verify,
)
from policyengine.tokens._cli import main as cli_main
from policyengine.tokens._jws import MAX_TOKEN_LENGTH, b64encode

NOW = 1767225600.0
ISS = "https://auth.example"


@pytest.fixture(scope="module")
def keys() -> KeySet:
    return KeySet.generate()


def root(keys: KeySet, **kw: object) -> str:
    args: dict[str, object] = dict(
        issuer=ISS, acting_for="besar", agent="travel-agent",
        permissions=["flights:*", "payments:refund"], max_amount=("500", "EUR"),
        ttl=3600, now=NOW,
    )
    args.update(kw)
    return mint(keys, **args)  # type: ignore[arg-type]


def code_of(fn: object, *a: object, **kw: object) -> str:
    with pytest.raises(TokenError) as info:
        fn(*a, **kw)  # type: ignore[operator]
    return info.value.code


# --------------------------------------------------------------------------- keys
def test_generate_each_algorithm_roundtrip() -> None:
    for alg in ("EdDSA", "ES256", "RS256"):
        keys = KeySet.generate(alg)
        grant = verify(keys, root(keys), now=NOW)
        assert grant.subject == "travel-agent"
        assert keys.active_key.alg == alg


def test_rsa_below_2048_bits_refused() -> None:
    assert code_of(KeySet.generate, "RS256", rsa_bits=1024) == "weak_key"
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = small.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    assert code_of(KeySet.load_pem, pem) == "weak_key"


def test_hmac_is_opt_in_and_never_crosses_key_types(keys: KeySet) -> None:
    assert code_of(KeySet.hmac, b"short", kid="h") == "weak_key"
    assert code_of(KeySet.generate, "HS256") == "hmac_not_enabled"
    hkeys = KeySet.hmac(b"s" * 32, kid="h1")
    assert verify(hkeys, root(hkeys), now=NOW).issuer == ISS
    # JWKS with an oct key needs allow_hmac
    jwks = hkeys.to_jwks(private=True)
    assert code_of(KeySet.load_jwks, jwks) == "hmac_not_enabled"
    assert KeySet.load_jwks(jwks, allow_hmac=True).kids == ("h1",)
    # an HS256 header naming an Ed25519 kid never verifies
    both = keys.bound_to(ISS).merge(hkeys.bound_to(ISS))
    ed_token = root(keys)
    header = b64encode(json.dumps({"alg": "HS256", "typ": "delegation+jwt",
                                   "kid": keys.active_kid}).encode())
    forged = header + "." + ed_token.split(".")[1] + "." + ed_token.split(".")[2]
    assert code_of(verify, both, forged, now=NOW) == "alg_key_mismatch"
    assert code_of(verify, keys, forged, now=NOW) == "alg_not_allowed"
    assert "h1" not in [k["kid"] for k in both.public_jwks()["keys"]]


def test_jwks_and_pem_roundtrip(tmp_path: Path, keys: KeySet) -> None:
    path = tmp_path / "keys.json"
    keys.save(path)
    loaded = KeySet.from_file(path)
    assert loaded.active_kid == keys.active_kid
    token = root(loaded)
    assert verify(keys, token, now=NOW).jti
    public = KeySet.load_jwks(json.dumps(keys.public_jwks()))
    assert public.active_kid is None
    assert all("d" not in k for k in keys.public_jwks()["keys"])
    assert verify(public, token, now=NOW).subject == "travel-agent"
    assert code_of(root, public) == "no_signing_key"
    pem = tmp_path / "key.pem"
    keys.save(pem)
    assert KeySet.from_file(pem).active_kid == keys.active_kid
    pub_pem = KeySet.load_pem(keys.to_pem(private=False))
    assert verify(pub_pem, token, now=NOW).depth == 0


def test_rotation_keeps_old_keys_verifying(keys: KeySet) -> None:
    old_token = root(keys)
    rotated = keys.rotate()
    assert rotated.active_kid != keys.active_kid and len(rotated) == 2
    new_token = root(rotated)
    assert verify(rotated, old_token, now=NOW) and verify(rotated, new_token, now=NOW)
    retired = rotated.without(keys.active_kid)  # type: ignore[arg-type]
    assert code_of(verify, retired, old_token, now=NOW) == "unknown_kid"
    assert code_of(verify, keys, new_token, now=NOW) == "unknown_kid"


def test_jwk_alg_must_fit_key_type(keys: KeySet) -> None:
    jwk = keys.public_jwks()["keys"][0] | {"alg": "HS256"}
    assert code_of(KeySet.load_jwks, {"keys": [jwk]}) == "alg_key_mismatch"
    assert code_of(KeySet.load_jwks, {"keys": [{"kty": "EC", "crv": "P-384", "x": "AA",
                                                "y": "AA"}]}) == "unsupported_key"


# --------------------------------------------------------------------------- verify
def test_grant_fields(keys: KeySet) -> None:
    g = verify(keys, root(keys, audience="payments-api", max_depth=2), now=NOW,
               issuer=ISS, audience="payments-api")
    assert (g.issuer, g.subject, g.audience, g.acting_for) == (
        ISS, "travel-agent", "payments-api", "besar")
    assert g.chain == ("besar", "travel-agent") and g.depth == 0 and g.max_depth == 2
    assert g.max_amount == Money(Decimal("500.00"), "EUR")
    assert g.expires_at == int(NOW) + 3600 and len(g.hops) == 1
    assert g.covers("flights:book") and not g.covers("flightsx:book")
    assert g.amount_fits(Money.parse("500", "EUR"))
    assert not g.amount_fits(Money.parse("500.01", "EUR"))
    assert code_of(g.amount_fits, Money.parse("1", "USD")) == "amount_unconvertible"
    rates = StaticRates("EUR", {"USD": "0.92"})
    assert g.amount_fits(Money.parse("543.47", "USD"), rates)
    assert not g.amount_fits(Money.parse("543.49", "USD"), rates)


def test_time_window_and_leeway(keys: KeySet) -> None:
    token = root(keys)
    assert verify(keys, token, now=NOW + 3600 + 59)
    assert code_of(verify, keys, token, now=NOW + 3600 + 60) == "expired"
    assert code_of(verify, keys, token, now=NOW + 3600, leeway=0) == "expired"
    assert code_of(verify, keys, token, now=NOW - 61) == "not_yet_valid"
    assert code_of(verify, keys, token, now=NOW, leeway=61) == "invalid_option"


def test_cache_still_honours_expiry_and_revocation(keys: KeySet) -> None:
    store = MemoryRevocationStore()
    token = root(keys)
    child = attenuate(keys, token, agent="hotel-agent", permissions=["flights:book"], now=NOW)
    g1 = verify(keys, child, now=NOW, revocations=store)
    assert verify(keys, child, now=NOW + 1, revocations=store) is g1  # cached
    assert code_of(verify, keys, child, now=NOW + 7200, revocations=store) == "expired"
    revoke(store, verify(keys, token, now=NOW).grant_id)
    assert code_of(verify, keys, child, now=NOW, revocations=store) == "revoked"
    assert code_of(verify, keys, token, now=NOW, revocations=store) == "revoked"
    assert verify(keys, child, now=NOW)  # another verifier without that store


def test_issuer_audience_exact(keys: KeySet) -> None:
    token = root(keys, audience="api")
    assert code_of(verify, keys, token, now=NOW, audience="ap") == "audience_mismatch"
    assert code_of(verify, keys, token, now=NOW) == "audience_mismatch"
    assert code_of(verify, keys, token, now=NOW, audience="api",
                   issuer=ISS + "/") == "issuer_mismatch"


def test_policy_ceilings(keys: KeySet) -> None:
    token = root(keys)
    child = attenuate(keys, token, agent="b", permissions=["flights:book"], now=NOW)
    assert code_of(verify, keys, child, now=NOW, max_depth=0) == "depth_exceeded"
    assert verify(keys, child, now=NOW, max_depth=1).depth == 1
    assert code_of(verify, keys, token, now=NOW, max_ttl=3599) == "ttl_exceeded"


def test_oversized_and_non_string(keys: KeySet) -> None:
    assert code_of(verify, keys, "a" * (MAX_TOKEN_LENGTH + 1)) == "token_too_large"
    assert code_of(verify, keys, None) == "malformed"  # type: ignore[arg-type]
    assert code_of(verify, keys, b"x.y.z") == "malformed"  # type: ignore[arg-type]


# --------------------------------------------------------------------------- attenuate
def test_three_hop_chain(keys: KeySet) -> None:
    t0 = root(keys)
    t1 = attenuate(keys, t0, agent="b", permissions=["flights:*"], max_amount=("300", "EUR"),
                   ttl=1800, now=NOW)
    t2 = attenuate(keys, t1, agent="c", permissions=["flights:intl:*"], now=NOW)
    g = verify(keys, t2, now=NOW)
    assert g.chain == ("besar", "travel-agent", "b", "c") and g.depth == 2
    assert g.max_amount == Money.parse("300", "EUR") and g.expires_at == int(NOW) + 1800
    assert [h.subject for h in g.hops] == ["travel-agent", "b", "c"]
    assert g.covers("flights:intl:book") and not g.covers("flights:book")
    assert not g.covers("payments:refund")


@pytest.mark.parametrize(
    ("kw", "code"),
    [
        ({"permissions": ["hotels:book"]}, "permission_widened"),
        ({"permissions": ["flightsx:a"]}, "permission_widened"),
        ({"permissions": ["*"]}, "permission_widened"),
        ({"max_amount": ("500.01", "EUR")}, "amount_widened"),
        ({"max_amount": ("1", "USD")}, "amount_unconvertible"),
        ({"ttl": 3601}, "expiry_widened"),
        ({"max_depth": 4}, "max_depth_raised"),
        ({"agent": "travel-agent"}, "chain_cycle"),
        ({"agent": "besar"}, "chain_cycle"),
        ({"audience": "other"}, "audience_changed"),
    ],
)
def test_attenuation_refuses_widening(keys: KeySet, kw: dict[str, object], code: str) -> None:
    args: dict[str, object] = {"agent": "b", "permissions": ["flights:book"], "now": NOW}
    args.update(kw)
    token = root(keys, audience="api") if "audience" in kw else root(keys)
    with pytest.raises(AttenuationError) as info:
        attenuate(keys, token, **args)  # type: ignore[arg-type]
    assert info.value.code == code


def test_attenuation_depth_limit(keys: KeySet) -> None:
    t = root(keys, max_depth=1)
    t1 = attenuate(keys, t, agent="b", permissions=["flights:book"], now=NOW)
    with pytest.raises(AttenuationError) as info:
        attenuate(keys, t1, agent="c", permissions=["flights:book"], now=NOW)
    assert info.value.code == "depth_exceeded"


def test_cross_currency_attenuation_rounds_against_child(keys: KeySet) -> None:
    rates = StaticRates("EUR", {"USD": "0.92"})
    t = root(keys)  # 500 EUR; 543.478... USD
    ok = attenuate(keys, t, agent="b", permissions=["flights:book"],
                   max_amount=("543.47", "USD"), rates=rates, now=NOW)
    assert verify(keys, ok, now=NOW, rates=rates).max_amount == Money.parse("543.47", "USD")
    assert code_of(verify, keys, ok, now=NOW) == "amount_unconvertible"
    with pytest.raises(AttenuationError) as info:
        attenuate(keys, t, agent="b", permissions=["flights:book"],
                  max_amount=("543.48", "USD"), rates=rates, now=NOW)
    assert info.value.code == "amount_widened"


def test_revoked_or_expired_parent_cannot_attenuate(keys: KeySet) -> None:
    t = root(keys)
    store = MemoryRevocationStore()
    revoke(store, verify(keys, t, now=NOW).jti)
    assert code_of(attenuate, keys, t, agent="b", permissions=["flights:book"], now=NOW,
                   revocations=store) == "revoked"
    assert code_of(attenuate, keys, t, agent="b", permissions=["flights:book"],
                   now=NOW + 4000) == "expired"


def test_chain_size_cap_is_enforced_on_mint_side(keys: KeySet) -> None:
    t = root(keys, max_depth=8, permissions=[f"ns{i}:*" for i in range(30)])
    with pytest.raises(TokenError) as info:
        for i in range(8):
            t = attenuate(keys, t, agent=f"agent-{i}", permissions=["ns1:*"], now=NOW)
    assert info.value.code == "token_too_large"


# --------------------------------------------------------------------------- CLI
def test_cli_roundtrip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kf, rf = str(tmp_path / "keys.json"), str(tmp_path / "revoked.json")
    assert cli_main(["token", "keygen", "--keys", kf]) == 0
    capsys.readouterr()
    assert cli_main(["token", "mint", "--keys", kf, "--issuer", ISS, "--acting-for", "besar",
                     "--agent", "a", "--permission", "flights:*,payments:refund",
                     "--ttl", "1h", "--max-amount", "500 EUR"]) == 0
    token = json.loads(capsys.readouterr().out)["token"]
    assert cli_main(["token", "attenuate", "--keys", kf, "--token", token, "--agent", "b",
                     "--permission", "flights:book"]) == 0
    child = json.loads(capsys.readouterr().out)["token"]
    assert cli_main(["token", "verify", "--keys", kf, "--token", child,
                     "--revocations", rf]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["chain"] == ["besar", "a", "b"]
    assert cli_main(["token", "revoke", out["hops"][0]["grant_id"], "--revocations", rf]) == 0
    capsys.readouterr()
    assert cli_main(["token", "verify", "--keys", kf, "--token", child,
                     "--revocations", rf]) == 1
    assert "revoked" in capsys.readouterr().err
    assert cli_main(["token", "jwks", "--keys", kf]) == 0
    assert "d" not in json.loads(capsys.readouterr().out)["keys"][0]
    assert cli_main(["token", "keygen", "--keys", kf, "--rotate", "--alg", "ES256"]) == 0
    assert len(json.loads(capsys.readouterr().out)["kids"]) == 2
    assert cli_main(["token", "verify", "--keys", kf, "--token", "x.y.z"]) == 1
    assert "error: " in capsys.readouterr().err


def test_cli_codes_a_file_it_cannot_write_io_error(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A key file that cannot be written is a file error of the operating system
    (io_error, as every command codes one), one line with the reason, exit 1; a token
    error keeps its own code through the same table."""
    missing = tmp_path / "no-such-dir" / "keys.json"
    assert cli_main(["token", "keygen", "--keys", str(missing)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("policyengine token keygen: error: io_error: [Errno 2] "), err
    assert not missing.parent.exists()
    kf = str(tmp_path / "keys.json")
    assert cli_main(["token", "keygen", "--keys", kf]) == 0
    capsys.readouterr()
    assert cli_main(["token", "keygen", "--keys", kf]) == 1
    assert capsys.readouterr().err == (f"policyengine token keygen: error: invalid_option: "
                                       f"{kf} exists; pass --rotate to add a new key\n")


def test_cache_is_bounded(keys: KeySet) -> None:
    bound = 4096  # entries per cache, as docs/delegation.md ("Cache") promises
    fresh = KeySet.generate()
    token = root(fresh)
    for i in range(bound + 10):
        verify(fresh, token, now=NOW, issuer=ISS, max_ttl=10_000 + i)
    assert 0 < fresh.cached_verifications <= bound
    fresh.clear_cache()
    assert fresh.cached_verifications == 0


def test_cli_revokes_every_id_mint_makes(keys: KeySet, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Generated ids go to command lines as they are: none may read as an option (with
    base64url ids, one in 64 started with '-' and `token revoke` failed on it)."""
    rf = str(tmp_path / "revoked.json")
    ids: list[str] = []
    for _ in range(300):
        grant = verify(keys, root(keys), now=NOW)
        ids += [grant.grant_id, grant.jti]
    for gid in ids:
        assert cli_main(["token", "revoke", gid, "--revocations", rf]) == 0
    capsys.readouterr()
    assert set(json.loads(Path(rf).read_text())["revoked"]) >= set(ids)
