"""The command line can make every decision the API can (keys, HMAC key, rates, time, a
budget store), refuses bad usage with exit status 2, and fails cleanly on bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from policyengine import __version__
from policyengine.cli import main
from policyengine.tokens import KeySet, mint

POLICY = """namespace shop
currency EUR
role buyer: shop:*
agent "bot": buyer
limit cap: shop:buy amount <= 100 EUR
budget daily: shop:buy limit 2 calls per day per agent
tool t: mcp "pay" -> shop:buy {
  amount = $.amount, currency = $.currency
  redact $.card hash
}
delegation {
  issuer "https://a.example"
}
"""
NOW = "2026-01-01T00:00:00Z"
NOW_S = 1_767_225_600


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    p = tmp_path / "shop.policy"
    p.write_text(POLICY)
    return p


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def decision(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    code, out, err = run(capsys, "eval", *argv)
    assert code == 0, err
    result: dict[str, object] = json.loads(out)
    return result


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"policyengine {__version__}"


@pytest.mark.parametrize("command", ["eval", "explain"])
@pytest.mark.parametrize(("given", "missing"), [
    (["--permission", "shop:buy"], "--principal"),
    (["--principal", "bot"], "--permission"),
    ([], "--principal and --permission"),
])
def test_missing_principal_or_permission_is_a_usage_error(
        capsys: pytest.CaptureFixture[str], policy: Path, command: str, given: list[str],
        missing: str) -> None:
    code, out, err = run(capsys, command, str(policy), *given)
    assert code == 2 and out == ""
    assert f"error: {missing} required" in err
    assert "invalid_request" not in err


@pytest.mark.parametrize("bad", ['{"amount": 1', "[1, 2]", '{"a": 1, "a": 2}', "NaN"])
def test_bad_context_names_the_flag(capsys: pytest.CaptureFixture[str], policy: Path,
                                    bad: str) -> None:
    code, out, err = run(capsys, "eval", str(policy), "--principal", "bot",
                         "--permission", "shop:buy", "--context", bad)
    assert code == 2 and out == ""
    assert err.startswith("policyengine eval: error: usage_error: --context: ")
    assert "Traceback" not in err


def test_json_numbers_are_exact_decimals(capsys: pytest.CaptureFixture[str],
                                         policy: Path) -> None:
    """100.00 is at the cap, 100.01 over it; as floats neither is read at all."""
    at = decision(capsys, str(policy), "--principal", "bot", "--permission", "shop:buy",
                  "--context", '{"amount": 100.00, "currency": "EUR"}')
    assert at["status"] == "allowed"
    over = decision(capsys, str(policy), "--principal", "bot", "--permission", "shop:buy",
                    "--context", '{"amount": 100.01, "currency": "EUR"}')
    assert over["reasonCode"] == "limit_exceeded"
    text = json.dumps(over)
    assert "Decimal" not in text and "float" not in text


def test_keys_and_now_decide_delegated_requests(capsys: pytest.CaptureFixture[str],
                                                policy: Path, tmp_path: Path) -> None:
    keys = KeySet.generate(issuer="https://a.example")
    keys.save(tmp_path / "keys.json")
    token = mint(keys, issuer="https://a.example", acting_for="besar", agent="bot",
                 permissions=["shop:*"], ttl=600, now=NOW_S)
    base = [str(policy), "--principal", "bot", "--permission", "shop:buy", "--token", token,
            "--context", '{"amount": "5", "currency": "EUR"}',
            "--keys", str(tmp_path / "keys.json")]
    ok = decision(capsys, *base, "--now", NOW)
    assert (ok["status"], ok["actingFor"]) == ("allowed", "besar")
    late = decision(capsys, *base, "--now", str(NOW_S + 3600))
    assert late["reasonCode"] == "invalid_token"
    assert late["diagnostics"][0]["code"] == "expired"  # type: ignore[index]
    # Another issuer's key set cannot vouch for a.example.
    other = KeySet.generate(issuer="https://b.example")
    other.save(tmp_path / "other.json")
    foreign = decision(capsys, *base[:-1], str(tmp_path / "other.json"), "--now", NOW)
    assert foreign["reasonCode"] == "invalid_token"


def test_hmac_key_allows_hash_redaction(capsys: pytest.CaptureFixture[str],
                                        policy: Path) -> None:
    call = json.dumps({"principal": "bot", "transport": "mcp", "toolName": "pay",
                       "body": {"card": "4242", "amount": "5", "currency": "EUR"}})
    denied = decision(capsys, str(policy), "--request", call)
    assert denied["reasonCode"] == "redaction_failed"
    allowed = decision(capsys, str(policy), "--request", call,
                       "--hmac-key", "hex:" + "ab" * 32)
    assert allowed["status"] == "allowed"


def test_rates_file_converts(capsys: pytest.CaptureFixture[str], policy: Path,
                             tmp_path: Path) -> None:
    rates = tmp_path / "fx.json"
    rates.write_text(json.dumps({"base": "EUR", "as_of": NOW, "rates": {"USD": "0.5"}}))
    ctx = '{"amount": "150", "currency": "USD"}'  # 75 EUR with these rates
    d = decision(capsys, str(policy), "--principal", "bot", "--permission", "shop:buy",
                 "--context", ctx, "--rates", str(rates), "--now", NOW)
    assert d["status"] == "allowed"
    no_rates = decision(capsys, str(policy), "--principal", "bot", "--permission",
                        "shop:buy", "--context", ctx)
    assert no_rates["status"] == "denied"


def test_store_url_keeps_spend_between_runs(capsys: pytest.CaptureFixture[str],
                                            policy: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'budgets.db'}"
    args = [str(policy), "--principal", "bot", "--permission", "shop:buy",
            "--context", '{"amount": "1", "currency": "EUR"}', "--store", url]
    assert decision(capsys, *args)["status"] == "allowed"
    from policyengine.engine import Engine
    engine = Engine.from_path(str(policy), budget_store=url)
    engine.budgets.record("bot", "shop:buy", 2, "calls")
    assert decision(capsys, *args)["reasonCode"] == "budget_exceeded"


def test_check_reports_engine_warnings_json_and_werror(capsys: pytest.CaptureFixture[str],
                                                       policy: Path) -> None:
    code, out, err = run(capsys, "check", str(policy))
    assert code == 0 and "warning[W204]" in err and "1 warning" in out
    code, out, _ = run(capsys, "check", str(policy), "--werror")
    assert code == 1 and out.startswith("failed (--werror)")
    code, out, _ = run(capsys, "check", str(policy), "--format", "json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True and report["errors"] == []
    assert [(w["code"], w["line"]) for w in report["warnings"]] == [("W204", 9)]
    code, out, _ = run(capsys, "check", str(policy), "--format", "json", "--werror")
    assert code == 1 and json.loads(out)["ok"] is False
    code, out, err = run(capsys, "check", str(policy), "--hmac-key", "x" * 32, "--werror")
    assert code == 0 and "0 warnings" in out


def test_check_json_lists_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.policy"
    bad.write_text('role r: a:*\nagent "bot": rr\n')
    code, out, _ = run(capsys, "check", str(bad), "--format", "json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False
    assert [(e["code"], e["line"], e["column"]) for e in report["errors"]] == [("E103", 2, 14)]


def test_fmt_on_binary_is_a_clean_error(capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    blob = tmp_path / "blob.policy"
    blob.write_bytes(bytes(range(256)) * 4)
    code, out, err = run(capsys, "fmt", str(blob))
    assert code == 1 and out == ""
    assert err.strip() == f"{blob}: error[E008]: not a policy file (binary or not UTF-8 " \
        "text); left unchanged"
    assert blob.read_bytes() == bytes(range(256)) * 4


def test_test_on_a_folder_without_fixtures(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    code, out, err = run(capsys, "test", str(tmp_path))
    assert code == 1 and out == ""
    assert err.startswith(f"policyengine test: error: no_tests: no fixtures (*.json) in "
                          f"{tmp_path}"), err
    code, _, err = run(capsys, "test", str(tmp_path / "nope"))
    assert code == 2 and "no such file" in err


def test_mint_pipes_into_attenuate(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys.json"
    assert main(["token", "keygen", "--keys", str(keys)]) == 0
    capsys.readouterr()
    code, out, _ = run(capsys, "token", "mint", "--keys", str(keys), "--issuer", "I",
                       "--acting-for", "besar", "--agent", "bot", "--permission", "shop:*",
                       "--ttl", "1h")
    minted = json.loads(out)
    assert code == 0 and minted["grant_id"] and minted["jti"]
    assert minted["chain"] == ["besar", "bot"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(out))
    code, out, err = run(capsys, "token", "attenuate", "--keys", str(keys), "--token", "-",
                         "--agent", "sub", "--permission", "shop:buy")
    child = json.loads(out)
    assert code == 0, err
    assert child["chain"] == ["besar", "bot", "sub"] and child["grant_id"] != minted["grant_id"]


def test_token_errors_name_the_hop_and_the_claim(capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    keys = KeySet.generate()
    keys.save(tmp_path / "keys.json")
    token = mint(keys, issuer="I", acting_for="besar", agent="bot", permissions=["a:*"],
                 ttl=600, audience="svc")
    code, _, err = run(capsys, "token", "verify", "--keys", str(tmp_path / "keys.json"),
                       "--token", token)
    assert code == 1
    assert err.strip() == ("policyengine token verify: error: audience_mismatch: claim aud: "
                           "the token is for audience 'svc', and this verifier expects none "
                           "(give that audience to verify it)")
    stranger = KeySet.generate()
    stranger.save(tmp_path / "stranger.json")
    code, _, err = run(capsys, "token", "verify", "--keys", str(tmp_path / "stranger.json"),
                       "--token", token)
    assert code == 1 and err.startswith(
        "policyengine token verify: error: unknown_kid: the token: ")


def test_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """``policyengine check --format json ... | head -c 1`` on an output far larger than a
    pipe buffer: no traceback, no 'Exception ignored', the conventional status 141."""
    many = tmp_path / "many.policy"
    many.write_text("".join(f"role r{i}: a:b\n" for i in range(3000)))  # 3000 x W202
    proc = subprocess.run(
        f"{sys.executable} -m policyengine check --format json {many} | head -c 1; "
        "echo \" ${PIPESTATUS[0]}\"", shell=True, executable="/bin/bash",
        capture_output=True, text=True, timeout=60)
    assert proc.stdout == "{ 141\n"
    assert proc.stderr == ""
