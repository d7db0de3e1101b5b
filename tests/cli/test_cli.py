"""The ``policyengine`` command line, called in-process through ``cli.main``."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from policyengine.cli import main

GOOD = 'role r: docs:*\nagent "bot": r\nforbid no: docs:delete when context.n > 3\n'


@pytest.fixture
def good(tmp_path: Path) -> Path:
    p = tmp_path / "good.policy"
    p.write_text(GOOD)
    return p


def test_check_ok(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(good)]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("ok: 1 file")


def test_check_errors_compiler_style(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                     ) -> None:
    bad = tmp_path / "bad.policy"
    bad.write_text('role r: docs:*\nagent "bot": rr\npermit p: a:b when context.a & 1\n')
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    # a syntax error stops before the checker: only E001 is reported
    col = len("permit p: a:b when context.a ") + 1
    assert f"{bad}:3:{col}: error[E001]: " in err
    assert re.search(r"^\s+\^$", err, re.MULTILINE)


def test_check_reports_all_checker_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    bad = tmp_path / "bad.policy"
    bad.write_text('role r: docs:*\nagent "bot": rr\npermit p: a:b for agent "bto"\n')
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:2:14: error[E103]: " in err
    assert f"{bad}:3:25: error[E104]: " in err
    assert "did you mean 'r'?" in err
    assert "2 errors" in err


def test_check_warnings_exit_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "w.policy"
    p.write_text(GOOD + "role unused: x:y\n")
    assert main(["check", str(p)]) == 0
    out = capsys.readouterr()
    assert f"{p}:4:1: warning[W202]: " in out.err
    assert "1 warning" in out.out


def test_check_directory_and_missing(tmp_path: Path, good: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path)]) == 0
    assert main(["check", str(tmp_path / "nope.policy")]) == 1
    assert "E010" in capsys.readouterr().err


def test_check_shipped_policies(capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(__file__).resolve().parents[2] / "policies"
    assert main(["check", str(root)]) == 0


def test_fmt_check_and_rewrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "messy.policy"
    p.write_text("role   r :docs:*\nagent \"bot\" : r\n")
    assert main(["fmt", "--check", str(p)]) == 1
    assert f"would reformat {p}" in capsys.readouterr().out
    assert p.read_text() == "role   r :docs:*\nagent \"bot\" : r\n"  # untouched
    assert main(["fmt", str(p)]) == 0
    assert p.read_text() == 'role r: docs:*\nagent "bot": r\n'
    assert main(["fmt", "--check", str(p)]) == 0


def test_fmt_of_a_lone_surrogate_escape_rewrites_the_file(tmp_path: Path) -> None:
    # "\ud800" is valid policy text (an escape); fmt wrote it back as the raw surrogate,
    # which UTF-8 cannot encode: the file was truncated to nothing and fmt crashed.
    p = tmp_path / "s.policy"
    p.write_text('role r: a:*\nforbid f:   a:b when context.a == "\\ud800"\n', "utf-8")
    assert main(["fmt", str(p)]) == 0
    assert p.read_text("utf-8") == 'role r: a:*\nforbid f: a:b when context.a == "\\ud800"\n'
    assert main(["fmt", "--check", str(p)]) == 0


def test_fmt_never_truncates_a_file_it_cannot_write(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "s.policy"
    p.write_text("role   r: a:*\n", "utf-8")
    monkeypatch.setattr("policyengine.lang.format_source", lambda text, name: "role r: \ud800\n")
    with pytest.raises(UnicodeEncodeError):
        main(["fmt", str(p)])
    assert p.read_text("utf-8") == "role   r: a:*\n"


def test_fmt_broken_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "bad.policy"
    p.write_text("permit p: a:b when\n")
    assert main(["fmt", "--check", str(p)]) == 1
    assert "error[E003]" in capsys.readouterr().err


def test_fmt_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
                   ) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("role r :a:b   # c\n"))
    assert main(["fmt", "-"]) == 0
    assert capsys.readouterr().out == "role r: a:b  # c\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("rol r: a:b\n"))
    assert main(["fmt", "-"]) == 1
    assert "<stdin>:1:1: error[E005]" in capsys.readouterr().err


def test_eval_prints_wire_json(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(good), "--principal", "bot", "--permission", "docs:read"]) == 0
    wire = json.loads(capsys.readouterr().out)
    assert wire["allowed"] is True and wire["status"] == "allowed"
    assert wire["rules"] == ["role:r"]
    assert {"decisionId", "approvalId", "obligations", "reason"} <= set(wire)


def test_eval_request_json_and_exit_code(good: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    req = {"principal": "bot", "permission": "docs:delete", "context": {"n": 5}}
    assert main(["eval", str(good), "--request", json.dumps(req)]) == 0
    wire = json.loads(capsys.readouterr().out)
    assert (wire["status"], wire["rules"]) == ("denied", ["default.no"])
    assert main(["eval", str(good), "--request", json.dumps(req), "--exit-code"]) == 1
    capsys.readouterr()
    f = tmp_path / "req.json"
    f.write_text(json.dumps({**req, "context": {"n": 1}}))
    assert main(["eval", str(good), "--request", f"@{f}", "--exit-code"]) == 0
    assert json.loads(capsys.readouterr().out)["allowed"] is True


def test_eval_context_flag_and_bad_json(good: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    assert main(["eval", str(good), "--principal", "bot", "--permission", "docs:delete",
                 "--context", '{"n": 9}']) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "denied"
    assert main(["eval", str(good), "--principal", "bot", "--permission", "docs:x",
                 "--context", "{not json"]) == 2


def test_explain(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", str(good), "--principal", "bot", "--permission", "docs:delete",
                 "--context", '{"n": 5}']) == 0
    out = capsys.readouterr().out
    assert "denied" in out and "default.no" in out and "context.n > 3" in out
    assert main(["explain", str(good), "--principal", "bot", "--permission", "docs:delete",
                 "--context", '{"n": 1}', "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["decision"]["status"] == "allowed"
    no = next(r for r in data["rules"] if r["rule"] == "default.no")
    assert no["conditions"][0]["result"] == "fails"


FIXTURE = {
    "name": "cli-smoke",
    "now": "2026-01-01T00:00:00Z",
    "policies": {"main.policy": GOOD},
    "cases": [
        {"name": "role grant", "kind": "authorize",
         "request": {"principal": "bot", "permission": "docs:read", "context": {}},
         "expect": {"decision": {"status": "allowed", "reasonCode": "permitted",
                                 "rules": ["role:r"]}}},
        {"name": "forbid", "kind": "authorize",
         "request": {"principal": "bot", "permission": "docs:delete", "context": {"n": 4}},
         "expect": {"decision": {"status": "denied", "reasonCode": "forbidden",
                                 "rules": ["default.no"]}}},
        {"name": "deliberately wrong", "kind": "authorize",
         "request": {"principal": "bot", "permission": "mail:read", "context": {}},
         "expect": {"decision": {"status": "allowed", "reasonCode": "permitted",
                                 "rules": ["role:r"]}}},
    ],
}


def test_test_command_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "fx.json"
    f.write_text(json.dumps(FIXTURE))
    assert main(["test", str(f)]) == 1
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == "2 passed, 1 failed"
    assert "deliberately wrong" in out
    FIXTURE_OK = {**FIXTURE, "cases": FIXTURE["cases"][:2]}  # noqa: N806
    f.write_text(json.dumps(FIXTURE_OK))
    assert main(["test", str(f)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "2 passed, 0 failed"


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["nonsense"])
    assert info.value.code == 2


BUDGETED = ('currency EUR\nrole r: docs:*, pay:*\nagent "bot": r\n'
            'budget small: pay:* limit 10 EUR per day per agent\n'
            'tool pay: function "pay_out" -> pay:out {\n'
            '  amount = $.amount, currency = $.currency\n}\n')
OVER = {"amount": "11", "currency": "EUR"}


@pytest.mark.parametrize("args", [
    ["--principal", "bot", "--permission", "pay:out", "--context", json.dumps(OVER)],
    ["--principal", "bot", "--permission", "docs:read", "--token", "garbage"],
    ["--request", json.dumps({"principal": "bot", "transport": "function",
                              "functionName": "pay_out", "body": OVER})],  # a tool call
])
def test_explain_decides_as_eval_and_honours_exit_code(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    p = tmp_path / "b.policy"
    p.write_text(BUDGETED)
    assert main(["eval", str(p), *args, "--exit-code"]) == 1
    evaluated = json.loads(capsys.readouterr().out)
    assert main(["explain", str(p), *args, "--exit-code", "--json"]) == 1
    explained = json.loads(capsys.readouterr().out)["decision"]
    assert evaluated["status"] == explained["status"] == "denied"
    assert evaluated["reasonCode"] == explained["reasonCode"]
    assert explained["reasonCode"] in ("budget_exceeded", "invalid_token")
    assert main(["explain", str(p), *args]) == 0  # without --exit-code
    assert "decision: denied" in capsys.readouterr().out
