"""Delegation tokens: signed, attenuable grants an agent carries for a principal.

>>> from policyengine import tokens
>>> keys = tokens.KeySet.generate()                       # Ed25519
>>> tok = tokens.mint(keys, issuer="https://auth.example", acting_for="besar",
...                   agent="travel-agent", permissions=["flights:*"], ttl=3600)
>>> child = tokens.attenuate(keys, tok, agent="hotel-agent", permissions=["flights:book"])
>>> tokens.verify(keys, child).chain
('besar', 'travel-agent', 'hotel-agent')

Format, rules and error codes: docs/delegation.md.
"""

from typing import TYPE_CHECKING

from policyengine._lazy import lazy_getattr
from policyengine.tokens.errors import AttenuationError, TokenError
from policyengine.tokens.revocation import (
    JsonFileRevocationStore,
    MemoryRevocationStore,
    RevocationStore,
    revoke,
)

if TYPE_CHECKING:  # loaded on first use (PEP 562): see __getattr__
    from policyengine.tokens._jws import MAX_TOKEN_LENGTH
    from policyengine.tokens._shared_revocation import (
        PostgresRevocationStore,
        RedisRevocationStore,
        revocations_from_url,
    )
    from policyengine.tokens.grants import (
        MAX_DEPTH,
        MAX_LEEWAY,
        TYP,
        Grant,
        Hop,
        attenuate,
        mint,
        verify,
    )
    from policyengine.tokens.keys import ALGORITHMS, Key, KeySet

__all__ = [
    "ALGORITHMS",
    "MAX_DEPTH",
    "MAX_LEEWAY",
    "MAX_TOKEN_LENGTH",
    "TYP",
    "AttenuationError",
    "Grant",
    "Hop",
    "JsonFileRevocationStore",
    "Key",
    "KeySet",
    "MemoryRevocationStore",
    "PostgresRevocationStore",
    "RedisRevocationStore",
    "RevocationStore",
    "TokenError",
    "attenuate",
    "mint",
    "revocations_from_url",
    "revoke",
    "verify",
]

# Names whose modules import heavy dependencies load on first use.
_LAZY: dict[str, str] = {
    "ALGORITHMS": "policyengine.tokens.keys",
    "attenuate": "policyengine.tokens.grants",
    "Grant": "policyengine.tokens.grants",
    "Hop": "policyengine.tokens.grants",
    "Key": "policyengine.tokens.keys",
    "KeySet": "policyengine.tokens.keys",
    "MAX_DEPTH": "policyengine.tokens.grants",
    "MAX_LEEWAY": "policyengine.tokens.grants",
    "MAX_TOKEN_LENGTH": "policyengine.tokens._jws",
    "mint": "policyengine.tokens.grants",
    "PostgresRevocationStore": "policyengine.tokens._shared_revocation",
    "RedisRevocationStore": "policyengine.tokens._shared_revocation",
    "revocations_from_url": "policyengine.tokens._shared_revocation",
    "TYP": "policyengine.tokens.grants",
    "verify": "policyengine.tokens.grants",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
