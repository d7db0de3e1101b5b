"""An agent or tenant name in a credentials file is text every budget store keeps: one
holding a NUL character or a lone surrogate (JSON's ``\\u0000`` / ``\\ud800``) is refused
when the file is loaded, as the policy checker refuses such an ``agent`` id (E118).
Before, the file loaded and every request made with that key that a budget counts was
refused ``invalid_subject``."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from policyengine.budgets import BudgetInputError, BudgetSpec, Ledger, store_from_url
from policyengine.server import Credentials, CredentialsError, hash_secret

HASH = hash_secret("the-key")
BAD = ["acme\u0000", "\ud800acme"]


def _file(section: str, field: str, value: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "agents": {"clientId": "c", "secretHash": HASH, "agent": "bot"},
        "apiKeys": {"name": "k", "keyHash": HASH, "agent": "bot", "tenant": "acme"},
        "cyclesKeys": {"name": "k", "keyHash": HASH, "tenant": "acme"},
    }[section]
    return {section: [{**entry, field: value}]}


PLACES = [("agents", "agent"), ("apiKeys", "agent"), ("apiKeys", "tenant"),
          ("cyclesKeys", "tenant")]


@pytest.mark.parametrize("value", BAD, ids=["nul", "lone-surrogate"])
@pytest.mark.parametrize(("section", "field"), PLACES)
def test_a_name_no_store_keeps_is_refused_with_where_it_is(
        tmp_path: Path, section: str, field: str, value: str) -> None:
    Credentials.from_dict(_file(section, field, "acme-bot"))  # the same entry, plain
    path = tmp_path / "credentials.json"
    path.write_text(json.dumps(_file(section, field, value)), "utf-8")  # \u escapes
    with pytest.raises(CredentialsError) as info:
        Credentials.from_file(path)
    assert info.value.code == "invalid_credentials_file"
    assert f"{section}[0].{field} holds a NUL character or a lone surrogate" in \
        info.value.message


@pytest.mark.parametrize("value", BAD, ids=["nul", "lone-surrogate"])
@pytest.mark.parametrize("role", ["principal", "tenant"])
def test_such_a_name_is_what_a_budget_refuses(role: str, value: str) -> None:
    """Why: a budget refuses every spend naming it (on every store)."""
    ledger = Ledger([BudgetSpec("t.daily", ("x:*",), Decimal(10), "calls", "day",
                                subject="tenant" if role == "tenant" else "agent")],
                    store_from_url("memory:"))
    who = {"principal": value, "tenant": "acme"} if role == "principal" else {
        "principal": "bot", "tenant": value}
    with pytest.raises(BudgetInputError) as info:
        ledger.check(who["principal"], "x:y", 1, tenant=who["tenant"])
    assert info.value.code == "invalid_subject"
    assert ledger.check("bot", "x:y", 1, tenant="acme").allowed
