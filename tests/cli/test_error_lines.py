"""Every error line of the command line reads one way,
``policyengine COMMAND: error: CODE: MESSAGE`` (serve's own errors read ``serve: CODE``
beside its usage errors' ``policyengine serve: error: usage_error``), and a failure that
stops ``eval`` and ``serve`` is coded alike by both; a missing or
unreadable policy path is E010 at no fake ``:1:1`` position; ``diff`` reports the
problems of both versions before it stops."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import run_cli

import policyengine as pe

BROKEN = 'role r: docs:*\nagent "bot": rr\n'
LINE = re.compile(r"policyengine [a-z]+( [a-z]+)?: error: [a-z_]+: \S")


@pytest.fixture(autouse=True)
def here(cli_dir: Path) -> Path:
    (cli_dir / "bad.policy").write_text(BROKEN)
    return cli_dir


# --------------------------------------------------------------- one format for every line
@pytest.mark.parametrize(("argv", "status", "start"), [
    (["serve", "p.policy", "--credentials", "nope.json"], 1,
     "policyengine serve: error: invalid_credentials_file: cannot read credentials file "
     "nope.json"),
    (["serve", "p.policy", "--keys", "nope.json"], 1,
     "policyengine serve: error: invalid_key: cannot read key file 'nope.json'"),
    (["serve"], 2, "policyengine serve: error: usage_error: give at least one policy"),
    (["token", "verify", "--keys", "nope.json", "--token", "x"], 1,
     "policyengine token verify: error: invalid_key: cannot read key file 'nope.json'"),
    (["log", "verify", "missing.jsonl"], 2, "policyengine log verify: error: log_unreadable: "),
    (["replay", "missing.jsonl", "--policy", "p.policy"], 2,
     "policyengine replay: error: log_unreadable: "),
    (["store", "init", "sqlite:///nodir/x/y.db?bogus=1"], 1, "policyengine store init: error: "),
    (["eval", "p.policy", "--principal", "bot", "--permission", "docs:read", "--store",
      "redis://127.0.0.1:1/0"], 2, "policyengine eval: error: store_unavailable: --store: "),
    (["eval", "p.policy", "--principal", "bot", "--permission", "docs:read",
      "--revocations", "mysql://x/y"], 2,
     "policyengine eval: error: invalid_revocations: --revocations: "),
    (["eval", "p.policy", "--principal", "bot", "--permission", "docs:read",
      "--approvals", "mysql://x/y"], 2,
     "policyengine eval: error: invalid_approval_store: --approvals: "),
    (["eval", "p.policy", "--principal", "bot", "--permission", "docs:read",
      "--context", "[1]"], 2, "policyengine eval: error: usage_error: --context: "),
])
def test_every_error_line_reads_the_same(capsys: pytest.CaptureFixture[str],
                                         argv: list[str], status: int, start: str) -> None:
    if argv[0] == "serve":
        pytest.importorskip("uvicorn")
    code, out, err = run_cli(capsys, argv)
    assert (code, out) == (status, ""), err
    assert err.startswith(start), err
    assert LINE.match(err) and len(err.splitlines()) == 1, err


class _RefusedError(pe.PolicyEngineError, ValueError):
    """An error of the package that is also a ValueError (as MoneyError is)."""


@pytest.mark.parametrize(("exc", "code", "message"), [
    (PermissionError(13, "Permission denied", "p.policy"), "io_error",
     "[Errno 13] Permission denied: 'p.policy'"),
    (_RefusedError("some_code", "what was refused"), "some_code", "what was refused"),
    (ValueError("not a value"), "usage_error", "not a value"),
])
def test_eval_and_serve_code_a_failure_alike(capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch,
                                             exc: Exception, code: str, message: str) -> None:
    """A failure loading the policy is coded by one table (an error of the package by
    its own code, a file error of the operating system io_error, other bad input
    usage_error), whichever command meets it: serve (which stops on the first two only;
    the third is no failure it expects) as eval."""
    def fail(*_args: object, **_kwargs: object) -> None:
        raise exc
    monkeypatch.setattr(pe.Engine, "from_path", fail)
    status, out, err = run_cli(capsys, ["eval", "p.policy", "--principal", "bot",
                                    "--permission", "docs:read"])
    assert (status, out, err) == (
        2, "", f"policyengine eval: error: {code}: bad request: {message}\n")
    if isinstance(exc, (OSError, pe.PolicyEngineError)):
        pytest.importorskip("uvicorn")
        status, out, err = run_cli(capsys, ["serve", "p.policy"])
        assert (status, out, err) == (1, "", f"policyengine serve: error: {code}: {message}\n")


# ------------------------------------------------------------------- E010 at no position
@pytest.mark.parametrize(("path", "message"), [
    ("nosuch", "no such policy file or directory: nosuch"),
    ("empty", "no .policy files in empty"),
])
def test_a_missing_path_has_no_fake_position(capsys: pytest.CaptureFixture[str], here: Path,
                                             path: str, message: str) -> None:
    (here / "empty").mkdir()
    code, out, err = run_cli(capsys, ["check", path])
    assert (code, out) == (1, "")
    assert err == f"{path}: error[E010]: {message}\n"
    code, out, _ = run_cli(capsys, ["check", path, "--format", "json"])
    report = json.loads(out)
    assert code == 1 and report["errors"] == [{
        "code": "E010", "severity": "error", "message": message, "file": path,
        "line": None, "column": None, "hint": None}]


def test_an_unreadable_policy_file_is_e010(capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A file the operating system will not read (permissions; tests run as root, so a
    read is made to fail) is E010 with its reason, never a traceback."""
    real = Path.read_bytes

    def refuse(self: Path) -> bytes:
        if self.name == "p.policy":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)
    monkeypatch.setattr(Path, "read_bytes", refuse)
    for target in ("p.policy", "."):
        code, out, err = run_cli(capsys, ["check", target])
        assert (code, out) == (1, "")
        assert err == "p.policy: error[E010]: cannot read p.policy: Permission denied\n"
    code, out, err = run_cli(capsys, ["fmt", "p.policy"])
    assert (code, out) == (1, "")
    assert err == "p.policy: error[E010]: cannot read p.policy: Permission denied\n"


def test_a_positioned_problem_keeps_its_position(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, ["check", "bad.policy", "--format", "json"])
    first = json.loads(out)["errors"][0]
    assert code == 1 and (first["code"], first["line"], first["column"]) == ("E103", 2, 14)


# ------------------------------------------------------------------ diff: both sides
@pytest.mark.parametrize("command", ["diff", "analyze"])
def test_diff_reports_the_problems_of_both_versions(capsys: pytest.CaptureFixture[str],
                                                    command: str) -> None:
    argv = ["diff", "bad.policy", "missing/"] if command == "diff" else \
        ["analyze", "--diff", "bad.policy", "missing/"]
    code, out, err = run_cli(capsys, argv)
    assert (code, out) == (1, "")
    assert "bad.policy:2:14: error[E103]: unknown role 'rr'" in err
    assert "missing: error[E010]: no such policy file or directory: missing" in err
    assert err.index("bad.policy:2:14") < err.index("missing: error[E010]")


def test_diff_reports_a_second_broken_version_alone(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, ["diff", "p.policy", "bad.policy"])
    assert (code, out) == (1, "")
    assert err.startswith("bad.policy:2:14: error[E103]")
