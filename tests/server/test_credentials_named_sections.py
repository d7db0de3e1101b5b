"""The two sections of named secrets, ``admins`` and ``authzenClients``, are checked by
one loop that tells them apart by data: an ``authzenClients`` entry may carry a
``tenant`` (the partition its evaluations count in), an ``admins`` entry may not; each
section's refusal names its own shape, and a bad tenant names where it is."""

from __future__ import annotations

from typing import Any

import pytest

from policyengine.server import Credentials, CredentialsError, hash_secret

HASH = hash_secret("right")
SHAPES = {"admins": 'an entry of admins is {"name", "secretHash"}',
          "authzenClients": 'an entry of authzenClients is {"name", "secretHash", '
                            '"tenant"?}'}


def _refusal(data: dict[str, Any]) -> str:
    with pytest.raises(CredentialsError) as info:
        Credentials.from_dict(data)
    assert info.value.code == "invalid_credentials_file"
    return info.value.message


@pytest.mark.parametrize("kind", sorted(SHAPES))
@pytest.mark.parametrize("entry", [
    "ops",  # not an object
    {"name": "ops"},  # no secretHash
    {"secretHash": HASH},  # no name
    {"name": 5, "secretHash": HASH},  # a name that is no string
    {"name": "ops", "secretHash": HASH, "role": "x"},  # a key no section takes
])
def test_a_malformed_entry_is_refused_with_its_sections_shape(kind: str, entry: Any) -> None:
    assert _refusal({kind: [entry]}) == SHAPES[kind]


def test_only_an_authzen_client_has_a_tenant() -> None:
    entry = {"name": "ops", "secretHash": HASH, "tenant": "acme"}
    assert _refusal({"admins": [entry]}) == SHAPES["admins"]
    creds = Credentials.from_dict({
        "authzenClients": [entry, {"name": "pep", "secretHash": HASH}],
        "admins": [{"name": "ops", "secretHash": HASH}]})
    assert (creds.authzen_partition("ops"), creds.authzen_partition("pep")) == ("acme", "")
    assert creds.check_authzen_client("right") == "ops"
    assert creds.check_admin("ops", "right") and creds.has_admins


@pytest.mark.parametrize(("tenant", "says"), [
    (5, "authzenClients[1].tenant must be a string"),
    ("", "authzenClients[1].tenant has 0 characters"),
    ("a\0b", "authzenClients[1].tenant holds a NUL character"),
])
def test_a_bad_authzen_tenant_names_where_it_is(tenant: object, says: str) -> None:
    assert _refusal({"authzenClients": [
        {"name": "pep", "secretHash": HASH},
        {"name": "pep2", "secretHash": HASH, "tenant": tenant}]}).startswith(says)


def test_a_bad_secret_hash_is_refused_in_either_section() -> None:
    for kind in SHAPES:
        assert _refusal({kind: [{"name": "x", "secretHash": "md5$abc"}]}).startswith(
            "a secret hash must look like scrypt$")
