"""cyclesKeys in a credentials file: each API key bound to one tenant, refused when
malformed (the service never starts on a file it would misread)."""

from __future__ import annotations

from typing import Any

import pytest

from policyengine.server import Credentials, CredentialsError, hash_secret

HASH = hash_secret("the-key")


def test_a_cycles_key_names_its_tenant() -> None:
    creds = Credentials.from_dict({"cyclesKeys": [
        {"name": "acme-prod", "keyHash": HASH, "tenant": "acme"}]})
    found = creds.check_cycles_key("the-key")
    assert found is not None and (found.name, found.tenant) == ("acme-prod", "acme")
    assert creds.check_cycles_key("the-key") == found  # remembered, same answer
    assert creds.check_cycles_key("another-key") is None
    assert Credentials().check_cycles_key("the-key") is None


@pytest.mark.parametrize("entry", [
    {"name": "k", "keyHash": HASH},                                  # no tenant
    {"name": "k", "keyHash": HASH, "tenant": ""},                     # empty tenant
    {"name": "k", "keyHash": HASH, "tenant": "t" * 129},              # over 128
    {"name": "k", "keyHash": "plain-text", "tenant": "acme"},         # not a hash
    {"name": "k", "keyHash": HASH, "tenant": "acme", "agent": "x"},   # unknown key
    {"name": 1, "keyHash": HASH, "tenant": "acme"},
])
def test_malformed_cycles_keys_are_refused(entry: dict[str, Any]) -> None:
    with pytest.raises(CredentialsError):
        Credentials.from_dict({"cyclesKeys": [entry]})


def test_two_cycles_keys_of_one_name_are_refused() -> None:
    entry = {"name": "k", "keyHash": HASH, "tenant": "acme"}
    with pytest.raises(CredentialsError):
        Credentials.from_dict({"cyclesKeys": [entry, dict(entry)]})
