"""A newcomer's mistakes on the command line get one line each, with a code and, where
one helps, a did-you-mean hint: a mistyped command, option or choice, a missing
argument, a policy file given to ``test``, a port that is no port, a socket that cannot
be bound. Never a usage dump, never a traceback."""

from __future__ import annotations

import pydoc
import socket
from pathlib import Path

import pytest
from conftest import run_cli

import policyengine as pe


@pytest.fixture
def policy(cli_dir: Path) -> Path:
    return cli_dir / "p.policy"


@pytest.mark.parametrize(("argv", "line"), [
    (["chek", "p.policy"], "policyengine: error: usage_error: unknown command 'chek' (did "
     "you mean 'check'?); commands: check, fmt, eval, explain, store, test, analyze, diff, "
     "replay, query, token, log, serve; see 'policyengine --help'"),
    (["--verison"], "policyengine: error: usage_error: unknown option --verison (did you "
     "mean --version?); see 'policyengine --help'"),
    ([], "policyengine: error: usage_error: the following arguments are required: a "
     "command (check, fmt, eval, explain, store, test, analyze, diff, replay, query, token, "
     "log, serve); see 'policyengine --help'"),
    (["check", "--formt", "json", "p.policy"], "policyengine check: error: usage_error: "
     "unknown option --formt (did you mean --format?); see 'policyengine check --help'"),
    (["check", "--format", "jsn", "p.policy"], "policyengine check: error: usage_error: "
     "argument --format: 'jsn' is not one of text, json (did you mean 'json'?); see "
     "'policyengine check --help'"),
    (["fmt", "p.policy", "stray", "--chek"], "policyengine fmt: error: usage_error: "
     "unknown option --chek (did you mean --check?); see 'policyengine fmt --help'"),
    (["token", "mnt"], "policyengine token: error: usage_error: unknown command 'mnt' (did "
     "you mean 'mint'?); commands: keygen, mint, attenuate, verify, revoke, jwks; see "
     "'policyengine token --help'"),
    (["token"], "policyengine token: error: usage_error: the following arguments are "
     "required: a command (keygen, mint, attenuate, verify, revoke, jwks); see "
     "'policyengine token --help'"),
    (["diff", "p.policy"], "policyengine diff: error: usage_error: the following "
     "arguments are required: NEW; see 'policyengine diff --help'"),
    (["serve", "p.policy", "--port", "99999"], "policyengine serve: error: usage_error: "
     "argument --port: '99999': a whole number from 0 to 65535; see 'policyengine serve "
     "--help'"),
    (["test", "p.policy"], "policyengine test: error: usage_error: p.policy is a policy "
     "file: give its tests (*.test.json) or the directory holding both (policyengine check "
     "reads policies)"),
    (["eval", "p.policy", "--principal", "bot"], "policyengine eval: error: usage_error: "
     "--permission required (or a --request with them, or a tool call with transport)"),
    (["serve", "p.policy", "--hmac-key-file", "missing"], "policyengine serve: error: "
     "usage_error: --hmac-key-file missing: cannot read: No such file or directory"),
    (["serve", "p.policy", "--prefix", "pdp=/x"], "policyengine serve: error: "
     "usage_error: bad --prefix 'pdp=/x': use WIRE=/path (tracengent, authzen, actguard, "
     "agent-ledger, cycles)"),
])
def test_a_usage_error_is_one_line_with_its_code(
        capsys: pytest.CaptureFixture[str], policy: Path, argv: list[str], line: str) -> None:
    code, out, err = run_cli(capsys, argv)
    assert (code, out, err) == (2, "", line + "\n")


def test_serve_workers_on_a_port_in_use_is_one_line(
        capsys: pytest.CaptureFixture[str], policy: Path) -> None:
    pytest.importorskip("uvicorn")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, out, err = run_cli(capsys, ["serve", "p.policy", "--port", str(port),
                                      "--workers", "2", "--watch-interval", "0"])
    assert (code, out) == (1, "")
    assert err.startswith(f"policyengine serve: error: listen_failed: cannot listen on "
                          f"127.0.0.1:{port}: "), err
    assert len(err.splitlines()) == 1, err


def test_a_widened_attenuation_says_what_it_is_measured_against(
        capsys: pytest.CaptureFixture[str], policy: Path) -> None:
    keys = pe.KeySet.generate()
    tok = pe.tokens.mint(keys, issuer="https://a.example", acting_for="besar", agent="a",
                         permissions=["flights:*"], ttl=600)
    keys.save("keys.json")
    code, out, err = run_cli(capsys, ["token", "attenuate", "--keys", "keys.json", "--token",
                                  tok, "--agent", "b", "--permission", "hotels:book"])
    assert (code, out) == (1, "")
    assert err == ("policyengine token attenuate: error: permission_widened: permission "
                   "'hotels:book' is not covered by any of the parent's permissions\n")


@pytest.mark.parametrize("cls", [pe.Decision, pe.ToolDecision, pe.Obligations,
                                 pe.Diagnostic])
def test_help_describes_every_field(cls: type) -> None:
    """help() on an answer says what each field is (not operator.attrgetter's text)."""
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    assert "attrgetter" not in text
    for name, value in vars(cls).items():
        if isinstance(value, property) and not name.startswith("_"):
            assert value.__doc__, f"{cls.__name__}.{name} has no doc"


def test_a_missing_hmac_key_says_how_the_command_line_gives_one(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The README's first command (check policies/) warns W204 on the shipped policies:
    the hint names the flag that silences it, not only the Python option."""
    (tmp_path / "t.policy").write_text('tool t: mcp "x" -> a:b {\n  redact $.card hash\n}\n')
    code, out, err = run_cli(capsys, ["check", str(tmp_path / "t.policy")])
    assert (code, out.strip()) == (0, "ok: 1 file, 1 warning")
    assert "  = hint: Engine.from_path(..., hmac_key=secret_bytes); on the command line, " \
           "--hmac-key KEY (serve: --hmac-key-file FILE)" in err
    code, out, err = run_cli(capsys, ["check", str(tmp_path / "t.policy"), "--hmac-key",
                                  "a 32-byte secret, for pseudonyms"])
    assert (code, out.strip(), err) == (0, "ok: 1 file, 0 warnings", "")


# What a mistake echoes of the command line is one line too: argparse's messages (through
# the parser's error()), the usage errors and serve's own lines show a line feed or a tab
# in an option, a path or a value (U+240A, <U+0009>) instead of starting a new line with
# it: "--fo\nrmat" printed "rmat (did you mean --format?)" as a line of its own.
@pytest.mark.parametrize(("argv", "line"), [
    (["check", "--fo\nrmat", "p.policy"], "policyengine check: error: usage_error: unknown "
     "option --fo\u240armat (did you mean --format?); see 'policyengine check --help'"),
    (["check", "--a\tb=1", "p.policy"], "policyengine check: error: usage_error: unknown "
     "option --a<U+0009>b; see 'policyengine check --help'"),
    (["eval", "p.policy", "--request", "@r\nx.json"], "policyengine eval: error: "
     "usage_error: --request @r\u240ax.json: cannot read: [Errno 2] No such file or "
     "directory: 'r\\nx.json'"),
    (["serve", "p.policy", "--hmac-key-file", "no\nfile"], "policyengine serve: error: "
     "usage_error: --hmac-key-file no\u240afile: cannot read: No such file or directory"),
    (["ch\neck"], "policyengine: error: usage_error: unknown command 'ch\\neck' (did you "
     "mean 'check'?); commands: check, fmt, eval, explain, store, test, analyze, diff, "
     "replay, query, token, log, serve; see 'policyengine --help'"),
    (["check", "--format", "js\ton", "p.policy"], "policyengine check: error: "
     "usage_error: argument --format: 'js\\ton' is not one of text, json (did you mean "
     "'json'?); see 'policyengine check --help'"),
    (["serve", "p.policy", "--credentials", "c\nx.json"], "policyengine serve: error: "
     "invalid_credentials_file: cannot read credentials file c\u240ax.json: [Errno 2] No "
     "such file or directory: 'c\\nx.json'"),
])
def test_a_line_feed_on_the_command_line_stays_in_its_line(
        capsys: pytest.CaptureFixture[str], policy: Path, argv: list[str], line: str) -> None:
    code, out, err = run_cli(capsys, argv)
    assert out == "" and err == line + "\n", err
    assert code in (1, 2)
