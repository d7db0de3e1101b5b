"""Signing and verification keys: :class:`KeySet` (Ed25519, ES256, RS256, opt-in HS256).

Each key has exactly one algorithm; a token's ``alg`` must equal the algorithm of the key
its ``kid`` names (RFC 8725 section 3.1), so a public key can never be used as an HMAC
secret and ``none`` never verifies. Keys never come from a token header.

A key may belong to an issuer (``Key.issuer``, the JWK member ``iss``): it then verifies
only tokens whose ``iss`` is that issuer, and signs only for it, so one key set can hold
several issuers' keys without one issuer speaking for another. A key set either binds
every key or none (a set of unbound keys is one issuer's).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import Algorithm, ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm

from policyengine._files import UnreadableFileError, read_regular_file, shown_path
from policyengine.tokens._jws import b64decode, b64encode
from policyengine.tokens.errors import TokenError

__all__ = ["ALGORITHMS", "Key", "KeySet", "MAX_RSA_BITS", "MIN_HMAC_SECRET", "MIN_RSA_BITS",
           "RSA_GENERATE_BITS"]

#: Every algorithm this package can use. HS256 only with :meth:`KeySet.hmac` or
#: ``allow_hmac=True``.
ALGORITHMS = ("EdDSA", "ES256", "RS256", "HS256")
MIN_RSA_BITS = 2048
#: Largest RSA modulus a loaded key may have. Verifying costs about the square of the
#: size (16384 bits: over 10x a 2048-bit key), and a JWKS or PEM may come from anyone who
#: publishes one; 8192 still loads keys made by tools that offer that size.
MAX_RSA_BITS = 8192
#: Largest RSA public exponent, in bits (FIPS 186-5: e < 2**256). A 2048-bit key with a
#: 2047-bit exponent verifies ~25x slower than one with e = 65537.
MAX_RSA_EXPONENT_BITS = 256
#: The sizes :meth:`KeySet.generate` makes (RFC 8725 section 3.5, NIST SP 800-57:
#: at least 2048); any other is ``invalid_option`` (a size of a million bits would
#: take hours to generate).
RSA_GENERATE_BITS = (2048, 3072, 4096)
MIN_HMAC_SECRET = 32
#: Largest key file :meth:`KeySet.from_file` reads (a JWKS of many keys is a few kB).
MAX_KEY_FILE_BYTES = 1 << 20

_SIGNERS: dict[str, Algorithm] = {
    "EdDSA": OKPAlgorithm(),
    "ES256": ECAlgorithm(ECAlgorithm.SHA256),
    "RS256": RSAAlgorithm(RSAAlgorithm.SHA256),
    "HS256": HMACAlgorithm(HMACAlgorithm.SHA256),
}
_KTY = {"EdDSA": "OKP", "ES256": "EC", "RS256": "RSA", "HS256": "oct"}


def _int_b64(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return b64encode(value.to_bytes(size, "big"))


def _b64_int(jwk: Mapping[str, Any], name: str) -> int:
    return int.from_bytes(_member(jwk, name), "big")


def _member(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if type(value) is not str or not value:
        raise TokenError("invalid_key", f"JWK member {name!r} must be a base64url string")
    try:
        return b64decode(value, f"JWK member {name!r}")
    except TokenError as exc:
        raise TokenError("invalid_key", exc.message) from None


class Key:
    """One key with its ``kid`` and its single algorithm. ``private`` is None for a
    verification-only key. HS256 keys hold the secret bytes in both slots."""

    __slots__ = ("_signer", "alg", "issuer", "kid", "private", "public")

    def __init__(self, alg: str, public: Any, private: Any = None, kid: str | None = None,
                 issuer: str | None = None):
        if type(alg) is not str or alg not in _SIGNERS:
            raise TokenError("unsupported_key", f"unsupported algorithm {alg!r}"[:200])
        self.alg = alg
        self.public = public
        self.private = private
        self._signer = _SIGNERS[alg]
        _check_strength(alg, public)
        if kid is None:
            if alg == "HS256":
                raise TokenError("invalid_key", "an HS256 key needs an explicit kid")
            kid = self.thumbprint()
        if type(kid) is not str or not kid or len(kid) > 128:
            raise TokenError("invalid_key", "kid must be a non-empty string of <= 128 chars")
        self.kid = kid
        if issuer is not None and (type(issuer) is not str or not issuer or len(issuer) > 256):
            raise TokenError("invalid_key", "a key's issuer must be a non-empty string of "
                             "<= 256 chars")
        #: The issuer this key speaks for, or None (a key of a single-issuer set).
        self.issuer = issuer

    def bound_to(self, issuer: str | None) -> Key:
        """This key, belonging to ``issuer`` (a new :class:`Key`; the same crypto)."""
        return Key(self.alg, self.public, self.private, self.kid, issuer)

    @property
    def can_sign(self) -> bool:
        return self.private is not None

    def sign(self, data: bytes) -> bytes:
        if self.private is None:
            raise TokenError("no_signing_key", f"key {self.kid!r} is verification-only")
        return self._signer.sign(data, self.private)

    def verify(self, data: bytes, signature: bytes) -> bool:
        try:
            return bool(self._signer.verify(data, self.public, signature))
        except (ValueError, TypeError):  # malformed signature bytes
            return False

    def public_members(self) -> dict[str, str]:
        """The RFC 7638 required members of the public JWK (HS256: the secret)."""
        key = self.public
        if self.alg == "EdDSA":
            raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            return {"crv": "Ed25519", "kty": "OKP", "x": b64encode(raw)}
        if self.alg == "ES256":
            nums = key.public_numbers()
            return {
                "crv": "P-256",
                "kty": "EC",
                "x": _int_b64(nums.x, 32),
                "y": _int_b64(nums.y, 32),
            }
        if self.alg == "RS256":
            rnums = key.public_numbers()
            return {"e": _int_b64(rnums.e), "kty": "RSA", "n": _int_b64(rnums.n)}
        return {"k": b64encode(key), "kty": "oct"}

    def thumbprint(self) -> str:
        """RFC 7638 JWK thumbprint (SHA-256, base64url): the default ``kid``."""
        members = self.public_members()
        canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
        return b64encode(hashlib.sha256(canonical.encode("utf-8")).digest())

    def to_jwk(self, *, private: bool = False) -> dict[str, str]:
        """The JWK; ``private=True`` adds the private members (when this key has them)."""
        jwk: dict[str, str] = {**self.public_members(), "kid": self.kid, "alg": self.alg,
                               "use": "sig"}
        if self.issuer is not None:
            jwk["iss"] = self.issuer
        if self.alg == "HS256" and not private:
            raise TokenError("hmac_not_exportable", "an HS256 secret has no public form")
        if private and self.private is not None:
            if self.alg == "EdDSA":
                jwk["d"] = b64encode(
                    self.private.private_bytes(
                        serialization.Encoding.Raw,
                        serialization.PrivateFormat.Raw,
                        serialization.NoEncryption(),
                    )
                )
            elif self.alg == "ES256":
                jwk["d"] = _int_b64(self.private.private_numbers().private_value, 32)
            elif self.alg == "RS256":
                pn = self.private.private_numbers()
                jwk.update(
                    d=_int_b64(pn.d), p=_int_b64(pn.p), q=_int_b64(pn.q),
                    dp=_int_b64(pn.dmp1), dq=_int_b64(pn.dmq1), qi=_int_b64(pn.iqmp),
                )
        return jwk

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any], *, allow_hmac: bool = False) -> Key:
        """Build a key from a JWK dict (strict: one algorithm per key type)."""
        if not isinstance(jwk, Mapping):
            raise TokenError("invalid_key", "a JWK must be a JSON object")
        kty = jwk.get("kty")
        use = jwk.get("use")
        if use is not None and use != "sig":
            raise TokenError("invalid_key", f"JWK use {use!r} is not 'sig'")
        kid = jwk.get("kid")
        if kid is not None and type(kid) is not str:
            raise TokenError("invalid_key", "JWK kid must be a string")
        iss = jwk.get("iss")
        if iss is not None and (type(iss) is not str or not iss):
            raise TokenError("invalid_key", "JWK iss must be a non-empty string")
        try:
            key = cls._from_jwk(kty, jwk, allow_hmac, kid)
        except TokenError:
            raise
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise TokenError("invalid_key", f"invalid {kty} JWK: {exc}") from None
        declared = jwk.get("alg")
        if declared is not None and declared != key.alg:
            raise TokenError(
                "alg_key_mismatch", f"JWK alg {declared!r} does not fit a {kty} key ({key.alg})"
            )
        return key.bound_to(iss) if iss is not None else key

    @classmethod
    def _from_jwk(cls, kty: object, jwk: Mapping[str, Any], allow_hmac: bool,
                  kid: str | None) -> Key:
        has_d = "d" in jwk
        if kty == "OKP":
            if jwk.get("crv") != "Ed25519":
                raise TokenError("unsupported_key", f"OKP curve {jwk.get('crv')!r} (want Ed25519)")
            pub = ed25519.Ed25519PublicKey.from_public_bytes(_member(jwk, "x"))
            priv = ed25519.Ed25519PrivateKey.from_private_bytes(_member(jwk, "d")) if has_d \
                else None
            if priv is not None and priv.public_key() != pub:
                raise TokenError("invalid_key", "OKP JWK: d does not match x")
            return cls("EdDSA", pub, priv, kid)
        if kty == "EC":
            if jwk.get("crv") != "P-256":
                raise TokenError("unsupported_key", f"EC curve {jwk.get('crv')!r} (want P-256)")
            pubn = ec.EllipticCurvePublicNumbers(
                _b64_int(jwk, "x"), _b64_int(jwk, "y"), ec.SECP256R1()
            )
            ecpub = pubn.public_key()
            ecpriv = (
                ec.EllipticCurvePrivateNumbers(_b64_int(jwk, "d"), pubn).private_key()
                if has_d else None
            )
            return cls("ES256", ecpub, ecpriv, kid)
        if kty == "RSA":
            rpub = rsa.RSAPublicNumbers(_b64_int(jwk, "e"), _b64_int(jwk, "n"))
            # Sized before anything is built from it (recovering p and q from d costs
            # what the modulus does): Key checks the same again.
            _check_rsa_size(rpub.n.bit_length(), rpub.e)
            rpriv = None
            if has_d:
                d = _b64_int(jwk, "d")
                if "p" in jwk and "q" in jwk:
                    p, q = _b64_int(jwk, "p"), _b64_int(jwk, "q")
                else:
                    p, q = rsa.rsa_recover_prime_factors(rpub.n, rpub.e, d)
                rpriv = rsa.RSAPrivateNumbers(
                    p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q),
                    rsa.rsa_crt_iqmp(p, q), rpub,
                ).private_key()
            return cls("RS256", rpub.public_key(), rpriv, kid)
        if kty == "oct":
            if not allow_hmac:
                raise TokenError(
                    "hmac_not_enabled", "oct (HS256) keys are refused unless allow_hmac=True"
                )
            secret = _member(jwk, "k")
            return cls("HS256", secret, secret, kid)
        raise TokenError("unsupported_key", f"unsupported JWK kty {kty!r}")


def _bad_option(name: str, kind: str, value: object) -> TokenError:
    """``invalid_option``: an argument of the wrong kind (told by its type, never its
    value: that may be anything, of any size)."""
    return TokenError("invalid_option", f"{name} must be {kind}, not {type(value).__name__}")


def _check_strength(alg: str, public: Any) -> None:
    if alg == "EdDSA" and not isinstance(public, ed25519.Ed25519PublicKey):
        raise TokenError("unsupported_key", "EdDSA needs an Ed25519 key")
    if alg == "ES256" and not (
        isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1)
    ):
        raise TokenError("unsupported_key", "ES256 needs a P-256 key")
    if alg == "RS256":
        if not isinstance(public, rsa.RSAPublicKey):
            raise TokenError("unsupported_key", "RS256 needs an RSA key")
        _check_rsa_size(public.key_size, public.public_numbers().e)
    if alg == "HS256" and (type(public) is not bytes or len(public) < MIN_HMAC_SECRET):
        raise TokenError(
            "weak_key", f"an HS256 secret must be at least {MIN_HMAC_SECRET} random bytes"
        )


def _check_rsa_size(bits: int, e: int) -> None:
    """``weak_key`` below :data:`MIN_RSA_BITS`; ``invalid_key`` above
    :data:`MAX_RSA_BITS` or with an exponent of more than 256 bits (each verify would
    cost what its size does)."""
    if bits < MIN_RSA_BITS:
        raise TokenError("weak_key", f"RSA key has {bits} bits; at least {MIN_RSA_BITS} needed")
    if bits > MAX_RSA_BITS:
        raise TokenError("invalid_key", f"RSA key has {bits} bits; at most {MAX_RSA_BITS} "
                         "are accepted")
    if e.bit_length() > MAX_RSA_EXPONENT_BITS:
        raise TokenError("invalid_key", f"RSA public exponent has {e.bit_length()} bits; "
                         f"at most {MAX_RSA_EXPONENT_BITS} are accepted (65537 is usual)")


def _key_from_crypto(obj: Any, kid: str | None) -> Key:
    if isinstance(obj, ed25519.Ed25519PrivateKey):
        return Key("EdDSA", obj.public_key(), obj, kid)
    if isinstance(obj, ed25519.Ed25519PublicKey):
        return Key("EdDSA", obj, None, kid)
    if isinstance(obj, ec.EllipticCurvePrivateKey):
        return Key("ES256", obj.public_key(), obj, kid)
    if isinstance(obj, ec.EllipticCurvePublicKey):
        return Key("ES256", obj, None, kid)
    if isinstance(obj, rsa.RSAPrivateKey):
        return Key("RS256", obj.public_key(), obj, kid)
    if isinstance(obj, rsa.RSAPublicKey):
        return Key("RS256", obj, None, kid)
    raise TokenError("unsupported_key", f"unsupported key type {type(obj).__name__}")


class KeySet:
    """The keys a service signs and verifies delegation tokens with.

    One *active* key signs; every key verifies (rotation: keep retired keys until the
    tokens they signed expire). Immutable: :meth:`rotate`, :meth:`merge` and
    :meth:`without` return new key sets.

    >>> keys = KeySet.generate()            # Ed25519, kid = RFC 7638 thumbprint
    >>> keys.active_key.alg
    'EdDSA'
    """

    def __init__(self, keys: Iterable[Key] = (), *, active: str | None = None) -> None:
        self._keys: dict[str, Key] = {}
        keys = tuple(keys) if isinstance(keys, Iterable) and not isinstance(
            keys, (str, bytes)) else (None,)
        if not all(isinstance(k, Key) for k in keys):
            raise TokenError("invalid_key", "a KeySet is made of Key objects (read a file "
                             "with KeySet.from_file, a JWKS with load_jwks)")
        for key in keys:
            if key.kid in self._keys:
                raise TokenError("duplicate_kid", f"two keys share kid {key.kid!r}")
            self._keys[key.kid] = key
        bound = {k.issuer is not None for k in self._keys.values()}
        if len(bound) > 1:
            # An unbound key would verify tokens of every issuer the bound keys serve.
            unbound = [k.kid for k in self._keys.values() if k.issuer is None]
            raise TokenError("unbound_key", f"key {unbound[0]!r} names no issuer, but other "
                             "keys of the set do: give every key its issuer")
        if active is None:
            active = next((k.kid for k in self._keys.values() if k.can_sign), None)
        elif type(active) is not str or active not in self._keys \
                or not self._keys[active].can_sign:
            raise TokenError("no_signing_key", f"no private key with kid {active!r}"[:200])
        self._active = active
        #: Algorithms any key here accepts: the per-set allowlist checked before the kid.
        self.algorithms = frozenset(k.alg for k in self._keys.values())
        # Per-key-set caches that ``verify`` (tokens/grants.py) reads and fills: a changed
        # key set never reuses them. Not API: public names only because another module of
        # this package reads them on the hot path (an attribute, no accessor call).
        self.verify_cache: dict[Any, Any] = {}
        self.hop_cache: dict[str, Any] = {}

    @property
    def cached_verifications(self) -> int:
        """Verification results cached now (read-only; bounded, see docs/delegation.md)."""
        return len(self.verify_cache)

    def clear_cache(self) -> None:
        """Forget cached verifications (benchmarks; memory pressure)."""
        self.verify_cache.clear()
        self.hop_cache.clear()

    # -- construction -------------------------------------------------------------
    def for_issuer(self, issuer: str | None) -> KeySet:
        """Every key bound to ``issuer`` (a set of unbound keys: all of them); verifying
        only against it is what :func:`verify` does per hop."""
        if issuer is not None and type(issuer) is not str:
            raise _bad_option("issuer", "a string or None", issuer)
        keys = [k for k in self._keys.values() if k.issuer is None or k.issuer == issuer]
        active = self._active if any(k.kid == self._active for k in keys) else None
        return KeySet(keys, active=active)

    def bound_to(self, issuer: str) -> KeySet:
        """This set with every key belonging to ``issuer``."""
        return KeySet([k.bound_to(issuer) for k in self._keys.values()], active=self._active)

    @property
    def issuers(self) -> frozenset[str]:
        """The issuers the keys are bound to (empty for a set of unbound keys)."""
        return frozenset(k.issuer for k in self._keys.values() if k.issuer is not None)

    @classmethod
    def generate(cls, alg: str = "EdDSA", *, kid: str | None = None,
                 rsa_bits: int = 2048, issuer: str | None = None) -> KeySet:
        """A new key set holding one fresh key (``EdDSA``, ``ES256`` or ``RS256``)."""
        obj: Any
        if type(rsa_bits) is not int:  # (not a bool, a float nor a numeric string either)
            raise _bad_option("rsa_bits", "an int", rsa_bits)
        if alg == "EdDSA":
            obj = ed25519.Ed25519PrivateKey.generate()
        elif alg == "ES256":
            obj = ec.generate_private_key(ec.SECP256R1())
        elif alg == "RS256":
            if rsa_bits < MIN_RSA_BITS:
                raise TokenError("weak_key", f"RSA keys need at least {MIN_RSA_BITS} bits")
            if rsa_bits not in RSA_GENERATE_BITS:
                raise TokenError("invalid_option", "rsa_bits must be one of "
                                 f"{', '.join(map(str, RSA_GENERATE_BITS))}")
            obj = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
        elif alg == "HS256":
            raise TokenError("hmac_not_enabled", "use KeySet.hmac(secret, kid=...) for HS256")
        else:
            raise TokenError("unsupported_key", f"cannot generate {alg!r} keys")
        return cls([_key_from_crypto(obj, kid).bound_to(issuer)])

    @classmethod
    def hmac(cls, secret: bytes, *, kid: str, issuer: str | None = None) -> KeySet:
        """An explicit HS256 key set (shared secret of at least 32 bytes)."""
        if type(secret) is not bytes:
            raise TokenError("invalid_key", "the HS256 secret must be bytes")
        return cls([Key("HS256", secret, secret, kid, issuer)])

    @classmethod
    def load_pem(cls, data: bytes | str, *, kid: str | None = None,
                 password: bytes | None = None, issuer: str | None = None) -> KeySet:
        """Load one PEM key (PKCS#8 / traditional private key, or SubjectPublicKeyInfo)."""
        obj: Any
        try:  # (PEM text is ASCII: another character is UnicodeEncodeError, a ValueError)
            raw = data.encode("ascii") if isinstance(data, str) else data
            if b"PRIVATE KEY" in raw:
                obj = serialization.load_pem_private_key(raw, password=password)
            else:
                obj = serialization.load_pem_public_key(raw)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise TokenError("invalid_key", f"cannot read PEM key: {exc}") from None
        return cls([_key_from_crypto(obj, kid).bound_to(issuer)])

    @classmethod
    def load_jwks(cls, data: str | bytes | Mapping[str, Any], *, allow_hmac: bool = False,
                  active: str | None = None, issuer: str | None = None) -> KeySet:
        """Load a JWKS (``{"keys": [...]}``) as a dict or JSON text. The active signing
        key is ``active`` or else the first key with private members. ``issuer`` binds
        every key to that issuer (a key whose ``iss`` member names another is refused);
        without it each key keeps its own ``iss`` member, if any."""
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except (ValueError, RecursionError) as exc:  # deep nesting: RecursionError
                raise TokenError("invalid_key", f"JWKS is not JSON: {exc}") from None
        if not isinstance(data, Mapping) or not isinstance(data.get("keys"), list):
            raise TokenError("invalid_key", 'a JWKS is an object with a "keys" array')
        keys = [Key.from_jwk(j, allow_hmac=allow_hmac) for j in data["keys"]]
        if issuer is not None:
            for key in keys:
                if key.issuer not in (None, issuer):
                    raise TokenError("issuer_key_mismatch", f"key {key.kid!r} belongs to "
                                     f"issuer {key.issuer!r}, not {issuer!r}")
            keys = [k.bound_to(issuer) for k in keys]
        return cls(keys, active=active)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, allow_hmac: bool = False,
                  issuer: str | None = None) -> KeySet:
        """Load a JWKS (``.json``) or PEM file.

        A file that cannot be read (missing, not a regular file, over 1 MiB, a name that
        is no path) raises :class:`TokenError` ``invalid_key``, as one that holds no key.
        """
        try:
            raw = read_regular_file(path, MAX_KEY_FILE_BYTES)
        except UnreadableFileError as exc:
            raise TokenError("invalid_key",
                             f"cannot read key file {shown_path(path)}: {exc}") from None
        if raw.lstrip().startswith(b"{"):
            return cls.load_jwks(raw, allow_hmac=allow_hmac, issuer=issuer)
        return cls.load_pem(raw, issuer=issuer)

    # -- export -------------------------------------------------------------------
    def to_jwks(self, *, private: bool = True) -> dict[str, list[dict[str, str]]]:
        """All keys as a JWKS, the active key first. With ``private=False`` HS256 keys
        are left out (a shared secret has no public form)."""
        ordered = sorted(self._keys.values(), key=lambda k: k.kid != self._active)
        return {"keys": [k.to_jwk(private=private) for k in ordered
                         if private or k.alg != "HS256"]}

    def public_jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWKS to publish for verifiers: public members only, never HS256 secrets."""
        return self.to_jwks(private=False)

    def to_pem(self, kid: str | None = None, *, private: bool = True) -> bytes:
        """One key (default: the active one) as PEM (PKCS#8 or SubjectPublicKeyInfo)."""
        key = self.get(kid) if kid is not None else self.active_key
        if key is None:
            raise TokenError("unknown_kid", f"no key with kid {kid!r}")
        if key.alg == "HS256":
            raise TokenError("hmac_not_exportable", "HS256 secrets have no PEM form")
        if private:
            if key.private is None:
                raise TokenError("no_signing_key", f"key {key.kid!r} has no private part")
            return bytes(key.private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
        return bytes(key.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def save(self, path: str | os.PathLike[str], *, private: bool = True) -> None:
        """Write the set as JWKS JSON, or the active key as PEM if ``path`` ends in .pem."""
        target = Path(path)
        if target.suffix == ".pem":
            data = self.to_pem(private=private)
        else:
            data = (json.dumps(self.to_jwks(private=private), indent=2) + "\n").encode()
        if not private:
            target.write_bytes(data)
            return
        # Private keys go to a new file made 0600 (mkstemp), then moved over the target:
        # they are never readable by others, not even between a write and a chmod (a
        # file opened then stays readable through its descriptor), and a reader that
        # opened the file before sees its old inode, never the new keys.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                   suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # -- rotation -----------------------------------------------------------------
    def rotate(self, alg: str | None = None) -> KeySet:
        """A new set whose active key is fresh; every old key still verifies."""
        current = self.active_key if self._active else None
        fresh = KeySet.generate(alg or (current.alg if current else "EdDSA"),
                                issuer=current.issuer if current else None)
        new = fresh.active_key
        return KeySet([new, *self._keys.values()], active=new.kid)

    def merge(self, other: KeySet) -> KeySet:
        """Both sets' keys; this set's active key stays active.

        Merging is how one verifier trusts several issuers, so every key of both sets
        must name its issuer (``issuer=`` when loading or generating, or
        :meth:`bound_to`): otherwise any key could sign for any issuer. To add a key to
        one issuer's set, use :meth:`rotate` or build the set from its keys."""
        if not isinstance(other, KeySet):
            raise _bad_option("other", "a KeySet", other)
        for key in [*self._keys.values(), *other]:
            if key.issuer is None:
                raise TokenError("unbound_key", f"key {key.kid!r} names no issuer: bind each "
                                 "set to its issuer (KeySet.bound_to) before merging")
        return KeySet([*self._keys.values(), *other], active=self._active)

    def without(self, kid: str) -> KeySet:
        """This set minus one key (retire it once its tokens have expired)."""
        if type(kid) is not str:
            raise _bad_option("kid", "a string", kid)
        rest = [k for k in self._keys.values() if k.kid != kid]
        return KeySet(rest, active=self._active if self._active != kid else None)

    # -- access -------------------------------------------------------------------
    @property
    def active_key(self) -> Key:
        """The key :func:`mint` and :func:`attenuate` sign with."""
        if self._active is None:
            raise TokenError("no_signing_key", "this key set has no private (signing) key")
        return self._keys[self._active]

    @property
    def active_kid(self) -> str | None:
        return self._active

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def get(self, kid: str) -> Key | None:
        """The key with ``kid``, or None. A ``kid`` that is no string is
        ``invalid_option`` (a misuse, not a key that is missing)."""
        if type(kid) is not str:
            raise _bad_option("kid", "a string", kid)
        return self._keys.get(kid)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, kid: object) -> bool:
        return type(kid) is str and kid in self._keys  # (a list: False, not TypeError)

    def __repr__(self) -> str:
        algs = ", ".join(f"{k.kid[:8]}:{k.alg}" + (f"@{k.issuer}" if k.issuer else "")
                         for k in self._keys.values())
        return f"KeySet([{algs}], active={self._active!r})"
