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

from policyengine.tokens._jws import MAX_TOKEN_LENGTH
from policyengine.tokens.errors import AttenuationError, TokenError
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
from policyengine.tokens.revocation import (
    JsonFileRevocationStore,
    MemoryRevocationStore,
    RevocationStore,
    revoke,
)

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
    "RevocationStore",
    "TokenError",
    "attenuate",
    "mint",
    "revoke",
    "verify",
]
