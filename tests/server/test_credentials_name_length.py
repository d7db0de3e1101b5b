"""An agent or tenant name in a credentials file is one a request can use: 1 to 256
characters (the engine's ``MAX_PRINCIPAL_ID``, the checker's E117 for an ``agent`` id;
a budget keeps a tenant of at most as many). A longer one is refused when the file is
loaded (``invalid_credentials_file``, naming the entry). Before, the file loaded and
every request made with that agent was ``invalid_request`` (a tenant: ``invalid_subject``
where a budget counts it)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from policyengine import Engine
from policyengine.budgets import BudgetInputError, BudgetSpec, Ledger, store_from_url
from policyengine.permissions import MAX_PRINCIPAL_ID
from policyengine.server import Credentials, CredentialsError, hash_secret

HASH = hash_secret("the-key")
PLACES = [("agents", "agent"), ("apiKeys", "agent"), ("apiKeys", "tenant")]


def _file(section: str, field: str, value: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "agents": {"clientId": "c", "secretHash": HASH, "agent": "bot"},
        "apiKeys": {"name": "k", "keyHash": HASH, "agent": "bot", "tenant": "acme"},
    }[section]
    return {section: [{"clientId": "c0", "secretHash": HASH, "agent": "a0"}] * (
        section == "agents") + [{**entry, field: value}]}


@pytest.mark.parametrize("length", [MAX_PRINCIPAL_ID + 1, 5000])
@pytest.mark.parametrize(("section", "field"), PLACES)
def test_a_name_too_long_is_refused_with_where_it_is(
        tmp_path: Path, section: str, field: str, length: int) -> None:
    n = 1 if section == "agents" else 0
    Credentials.from_dict(_file(section, field, "é" * MAX_PRINCIPAL_ID))  # the longest
    path = tmp_path / "credentials.json"
    path.write_text(json.dumps(_file(section, field, "x" * length)), "utf-8")
    with pytest.raises(CredentialsError) as info:
        Credentials.from_file(path)
    assert info.value.code == "invalid_credentials_file"
    assert f"{section}[{n}].{field} has {length} characters" in info.value.message


def test_an_empty_agent_is_refused() -> None:
    with pytest.raises(CredentialsError) as info:
        Credentials.from_dict(_file("agents", "agent", ""))
    assert "agents[1].agent has 0 characters" in info.value.message


def test_such_an_agent_is_what_every_request_refuses() -> None:
    """Why: the engine takes a principal id of 1 to MAX_PRINCIPAL_ID characters only."""
    engine = Engine.from_source('namespace t\nrole r: docs:*\nagent "a0": r\n'
                                "permit p: docs:* for role r\n")
    for principal in ("", "x" * (MAX_PRINCIPAL_ID + 1)):
        assert engine.authorize(principal, "docs:read").code == "invalid_request"
    assert engine.authorize("x" * MAX_PRINCIPAL_ID, "docs:read").code == "no_permit"


def test_such_a_tenant_is_what_a_budget_refuses() -> None:
    ledger = Ledger([BudgetSpec("t.daily", ("x:*",), Decimal(10), "calls", "day",
                                subject="tenant")], store_from_url("memory:"))
    with pytest.raises(BudgetInputError) as info:
        ledger.check("bot", "x:y", 1, tenant="x" * (MAX_PRINCIPAL_ID + 1))
    assert info.value.code == "invalid_subject"
    assert ledger.check("bot", "x:y", 1, tenant="x" * MAX_PRINCIPAL_ID).allowed
