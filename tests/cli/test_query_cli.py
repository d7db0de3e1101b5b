"""``policyengine query``: the three reverse queries, as text and as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from policyengine.cli import main

POLICY = """currency EUR
role payer: payments:*
agent "bot": payer
forbid no-admin: payments:admin:*
limit cap: payments:* amount <= 500 EUR
tool refund: mcp "refund" -> payments:refund
"""


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    p = tmp_path / "pay.policy"
    p.write_text(POLICY)
    return p


def test_permissions_of_a_principal_as_text(policy: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", str(policy), "--principal", "bot"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        'agent "bot": 1 entry',
        "  allowed payments:* except payments:admin:* unless amount > 500.00 EUR"]


def test_principals_with_as_json(policy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", str(policy), "--permission", "payments:refund", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(e["kind"], e["principal"], e["status"], e["unless"]) for e in data["entries"]] == [
        ("agent", "bot", "allowed", "amount > 500.00 EUR"),
        ("role", "payer", "allowed", "amount > 500.00 EUR")]
    assert (data["total"], data["truncated"]) == (2, False)


def test_role_with_limit_says_it_is_truncated(policy: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", str(policy), "--role", "payer", "--limit", "0", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["entries"], data["total"], data["truncated"]) == ([], 1, True)


def test_tools_from_a_tools_list_result(policy: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    listing = tmp_path / "tools.json"
    listing.write_text(json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": [
        {"name": "refund", "inputSchema": {}}, {"name": "other"}]}}))
    assert main(["query", str(policy), "--principal", "bot", "--tools", f"@{listing}",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kept"] == ["refund"]
    assert [t["callable"] for t in data["tools"]] == [True, False]


@pytest.mark.parametrize("argv", [
    [], ["--principal", "bot", "--role", "payer"], ["--role", "payer", "--tools", "[]"],
    ["--permission", "payments:*"], ["--principal", "bot", "--tools", "{}"],
    ["--principal", "bot", "--limit", "-1"]])
def test_bad_usage_exits_2(policy: Path, argv: list[str],
                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", str(policy), *argv]) == 2
    assert "policyengine query: error:" in capsys.readouterr().err


def test_a_broken_policy_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.policy"
    bad.write_text('agent "bot": nosuchrole\n')
    assert main(["query", str(bad), "--principal", "bot"]) == 1
    assert "error[" in capsys.readouterr().err
