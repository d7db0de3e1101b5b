"""No text output of the command line sends a terminal a control or format character.

A policy string may hold any character as an escape (``agent "bot\\u001b[2J"``), and so
may a request, a context, a token's claims, a decision-log record or a file's name. What
``explain``, ``query``, ``analyze``, ``diff``, ``test`` (results and coverage),
``replay``, ``log verify``, ``token`` errors, ``fmt`` and the usage errors print as text
goes through one function (policyengine._visible.say): ESC (a terminal escape sequence:
clear the screen, hide text), a bidirectional override and a zero-width character are
shown as ``<U+001B>``, ``<U+202E>``, ``<U+200B>``. JSON output stays exact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from policyengine import Engine
from policyengine._visible import HIDDEN
from policyengine.audit import DecisionLog, JsonlFileSink
from policyengine.cli import main
from policyengine.lang.ast import quote
from policyengine.tokens import TokenError

#: ESC [2J (clears the screen), a right-to-left override, a zero-width space.
EVIL = "\x1b[2J\u202e\u200b"
SHOWN = "<U+001B>[2J<U+202E><U+200B>"
BOT = "bo" + EVIL + "t"
BOT_SHOWN = "bo" + SHOWN + "t"


def unshown(text: str) -> list[str]:
    """Characters of ``text`` a terminal would not show as they are (lines end at \\n)."""
    return [ch for ch in text if HIDDEN.match(ch) or ch in "\r\x85\u2028\u2029"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def shown(text: str, *wanted: str) -> None:
    """``text`` holds no raw character and each of ``wanted``."""
    assert unshown(text) == [], text
    for w in wanted:
        assert w in text, (w, text)


def policy(tmp_path: Path, body: str = "", name: str = "p.policy") -> str:
    path = tmp_path / name
    path.write_text(f"namespace shop\ncurrency EUR\nrole buyer: shop:*\n"
                    f"agent {quote(BOT)}: buyer\n{body}", "utf-8")
    return str(path)


PERMIT = f"permit buy: shop:buy for agent {quote(BOT)} when context.note == {quote(EVIL)}\n"


def test_the_fixture_really_holds_the_characters(tmp_path: Path) -> None:
    text = Path(policy(tmp_path, PERMIT)).read_text("utf-8")
    assert unshown(text) == []  # the policy writes them as escapes...
    e = Engine.from_path(policy(tmp_path, PERMIT))
    assert e.authorize(BOT, "shop:buy", {"note": EVIL}).allowed  # ...and means them


def test_explain_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = policy(tmp_path, PERMIT)
    status, out, err = run(capsys, "explain", p, "--principal", "gh" + EVIL,
                           "--permission", "shop:buy")
    assert status == 0 and err == ""
    shown(out, f"no rule permits shop:buy for gh{SHOWN}")
    run(capsys, "explain", p, "--principal", BOT, "--permission", "shop:buy", "--context",
        json.dumps({"note": EVIL}))
    status, out, _ = run(capsys, "explain", p, "--principal", "gh" + EVIL, "--permission",
                         "shop:buy", "--json")
    assert out.isascii() and json.loads(out)["decision"]["reason"].endswith("gh" + EVIL)


def test_eval_json_is_exact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "eval", policy(tmp_path, PERMIT), "--principal",
                         "gh" + EVIL, "--permission", "shop:buy")
    assert status == 0 and out.isascii() and json.loads(out)["reason"].endswith("gh" + EVIL)


def test_query_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = policy(tmp_path, PERMIT)
    status, out, _ = run(capsys, "query", p, "--permission", "shop:buy")
    assert status == 0
    # (the answer quotes an id as JSON does, ESC as \u001b; the format characters, which
    # JSON leaves as they are, are shown)
    shown(out, 'agent "bo\\u001b[2J<U+202E><U+200B>t": allowed')
    status, out, _ = run(capsys, "query", p, "--permission", "shop:buy", "--json")
    assert out.isascii() and json.loads(out)["entries"][0]["principal"] == BOT
    # A usage error names the value it could not use: shown too.
    status, _, err = run(capsys, "query", p, "--principal", BOT, "--tools",
                         f"@{tmp_path}/missing{EVIL}.json")
    assert status == 2
    shown(err, f"--tools @{tmp_path}/missing{SHOWN}.json")


def test_diff_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tool = 'tool web: http "api.example.com" {{\n  POST "/pay" -> shop:buy,\n' \
           '  redact {path} {how}\n}}\n'
    old = policy(tmp_path, PERMIT + tool.format(path=quote(f"$['c{EVIL}']"), how="mask"),
                 "old.policy")
    new = policy(tmp_path, PERMIT + tool.format(path=quote(f"$['c{EVIL}']"), how="hash"),
                 "new.policy")
    status, out, _ = run(capsys, "diff", old, new, "--max-requests", "1")
    assert status == 1
    shown(out, f"redact $['c{SHOWN}'] mask", f"redact $['c{SHOWN}'] hash",
          f"{BOT_SHOWN} on shop:buy: more than 1 requests")  # (NOT exhaustive: ...)
    status, out, _ = run(capsys, "diff", old, new, "--max-requests", "1", "--json")
    data = json.loads(out)
    assert out.isascii() and data["changes"][0]["new"]["obligations"]["redactions"] == [
        f"$['c{EVIL}'] hash"]
    assert any(BOT in why for why in data["inexact"])


def test_analyze_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = (PERMIT + f"permit never: shop:buy for agent {quote(BOT)} when context.note == "
            f"{quote(EVIL)} and context.note == \"x\"\n"
            f"forbid all: shop:buy when principal.id == {quote(BOT)}\n")
    status, out, _ = run(capsys, "analyze", policy(tmp_path, body), "--fail-on", "none")
    assert status == 0 and "W301" in out and "W302" in out
    shown(out)


def test_test_results_and_coverage(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                   ) -> None:
    name = f"p{EVIL}.policy"  # a file name may hold them too
    policy(tmp_path, PERMIT, name)
    tests = tmp_path / f"t{EVIL}.test.json"
    tests.write_text(json.dumps({"policies": [name], "tests": [
        {"name": f"buys {EVIL}", "principal": BOT, "permission": "shop:buy",
         "context": {"note": EVIL}, "expect": {"status": "allowed"}},
        {"name": f"wrong {EVIL}", "principal": BOT, "permission": "shop:buy",
         "context": {"note": EVIL}, "expect": {"status": "denied"}}]}))
    status, out, err = run(capsys, "test", str(tests), "-v", "--coverage")
    assert status == 1
    shown(out + err, f"ok   {tmp_path}/t{SHOWN}.test.json :: buys {SHOWN}",
          f"FAIL {tmp_path}/t{SHOWN}.test.json :: wrong {SHOWN}",
          f"p{SHOWN}.policy: ", 'context.note == "\\u001b[2J\\u202e\\u200b"')


def test_replay_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = policy(tmp_path, "", "old.policy")
    new = policy(tmp_path, "forbid none: shop:*\n", "new.policy")
    log = tmp_path / f"d{EVIL}.jsonl"
    e = Engine.from_path(old, decision_log=DecisionLog(JsonlFileSink(str(log))))
    assert e.authorize(BOT, "shop:buy", {"note": EVIL}).allowed
    e.close()
    with log.open("a", encoding="utf-8") as f:
        f.write("[1]\n")  # a malformed line: named by its file
    status, out, _ = run(capsys, "replay", str(log), "--policy", new, "--no-rotated")
    assert status == 0
    shown(out, f"{BOT_SHOWN} shop:buy: allowed (permitted) -> denied",
          f"d{SHOWN}.jsonl:4: malformed")
    status, out, _ = run(capsys, "replay", str(log), "--policy", new, "--no-rotated",
                         "--json")
    assert out.isascii() and json.loads(out)["changes"][0]["principal"] == BOT


def test_log_verify_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / f"d{EVIL}.jsonl"
    e = Engine.from_path(policy(tmp_path), decision_log=DecisionLog(JsonlFileSink(str(log))))
    e.authorize(BOT, "shop:buy", {})
    e.close()
    log.write_text(log.read_text("utf-8").replace("shop:buy", "shop:bux"), "utf-8")
    status, out, _ = run(capsys, "log", "verify", str(log))
    assert status == 1
    shown(out, f"d{SHOWN}.jsonl:2 (seq 2): record_changed")
    status, out, _ = run(capsys, "log", "verify", str(log), "--json")
    assert out.isascii() and json.loads(out)["problems"][0]["file"] == str(log)


def test_token_output(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                      monkeypatch: pytest.MonkeyPatch) -> None:
    keys = str(tmp_path / "k.json")
    assert main(["token", "keygen", "--keys", keys]) == 0
    capsys.readouterr()
    status, out, _ = run(capsys, "token", "mint", "--keys", keys, "--issuer", "iss" + EVIL,
                         "--acting-for", "ann" + EVIL, "--agent", BOT, "--permission",
                         "shop:buy", "--ttl", "1h")
    token = json.loads(out)["token"]
    status, out, _ = run(capsys, "token", "verify", "--keys", keys, "--token", token)
    grant = json.loads(out)
    assert status == 0 and out.isascii()  # JSON: exact, every character escaped
    assert (grant["issuer"], grant["acting_for"], grant["subject"]) == (
        "iss" + EVIL, "ann" + EVIL, BOT)
    # An error message that quotes a claim as it is (the codes' messages use repr(),
    # which escapes these; a message that did not would still be shown, not obeyed).
    from policyengine import tokens

    def refuse(*_: Any, **__: Any) -> Any:
        raise TokenError("issuer_mismatch", f"issued by iss{EVIL}")
    monkeypatch.setattr(tokens, "verify", refuse)
    status, out, err = run(capsys, "token", "verify", "--keys", keys, "--token", token)
    assert status == 1
    shown(err, f"error: issuer_mismatch: issued by iss{SHOWN}")


def test_fmt_names_a_file_as_shown(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                   ) -> None:
    path = tmp_path / f"f{EVIL}.policy"
    path.write_text("role   r: x:*\n", "utf-8")
    status, out, _ = run(capsys, "fmt", "--check", str(path))
    assert status == 1
    shown(out, f"would reformat {tmp_path}/f{SHOWN}.policy")


def test_eval_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "eval", policy(tmp_path), "--request",
                         f"@{tmp_path}/r{EVIL}.json")
    assert status == 2
    shown(err, f"--request @{tmp_path}/r{SHOWN}.json: cannot read")


# ---- any string at all -------------------------------------------------------------------

ANY = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
              min_size=1, max_size=24)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(agent=ANY, value=ANY)
def test_no_text_output_prints_a_hidden_character(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], agent: str, value: str) -> None:
    """Whatever string an agent id or a request attribute is, the text the commands print
    about it holds no control or format character but the newlines between lines."""
    path = tmp_path / "h.policy"
    path.write_text(f"namespace h\nrole r: h:*\nagent {quote(agent)}: r\n"
                    f"permit p: h:do for agent {quote(agent)} when context.a == {quote(value)}\n"
                    f"forbid f: h:do when context.a == {quote(value + value)}\n", "utf-8")
    context = json.dumps({"a": value})
    out = ""
    # (--option=VALUE: a value may start with "-")
    for argv in (["explain", str(path), f"--principal={agent}", "--permission=h:do",
                  f"--context={context}"],
                 ["explain", str(path), f"--principal={agent + value}",
                  f"--permission={value}"],
                 ["query", str(path), "--permission=h:do"],
                 ["query", str(path), f"--principal={agent}"],
                 ["analyze", str(path), "--fail-on", "none"]):
        main(argv)
        printed = capsys.readouterr()
        out += printed.out + printed.err
    assert unshown(out) == []


# ---- a line break inside one field ---------------------------------------------------------
# A value the output prints as one field of a line (an id, a name, a path, a reason quoting
# a request) shows a line feed as U+240A and a tab as <U+0009>: printed raw, a line feed
# in an agent id (written "\n" in the policy), a test's name or a log record's principal
# faked a line of the command's own output ("ok   ..." after a FAIL, a decision line).

BREAKS = "\n\t\r"
BREAKS_SHOWN = "\u240a<U+0009>\u240d"


def test_explain_shows_a_line_feed_in_the_principal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = policy(tmp_path, PERMIT)
    status, out, _ = run(capsys, "explain", p, f"--principal=gh{BREAKS}x",
                         "--permission=shop:buy")
    assert status == 0
    assert out.splitlines()[0] == f"decision: denied (no_permit): no rule permits shop:buy " \
                                  f"for gh{BREAKS_SHOWN}x"
    assert "\t" not in out


def test_test_output_shows_a_line_feed_in_a_test_name(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy(tmp_path, PERMIT)
    tests = tmp_path / "t.test.json"
    fake = "wrong\nok   t.test.json :: fine"
    tests.write_text(json.dumps({"policies": ["p.policy"], "tests": [
        {"name": fake, "principal": BOT, "permission": "shop:buy",
         "context": {"note": EVIL}, "expect": {"status": "denied"}}]}))
    status, out, _ = run(capsys, "test", str(tests), "-v")
    assert status == 1
    lines = out.splitlines()
    assert [line[:4] for line in lines[:-1]] == ["FAIL"], out
    assert "wrong\u240aok   t.test.json :: fine" in lines[0]


def test_replay_shows_a_line_feed_in_a_record(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A log is input: a record's principal, decision id or file name is one field."""
    old = policy(tmp_path, "", "old.policy")
    new = policy(tmp_path, "forbid none: shop:*\n", "new.policy")
    log = tmp_path / "d.jsonl"
    e = Engine.from_path(old, decision_log=DecisionLog(JsonlFileSink(str(log))))
    assert e.authorize(BOT, "shop:buy", {}).allowed
    e.close()
    records = [json.loads(x) for x in log.read_text("utf-8").splitlines()]
    for r in records:
        if r["kind"] == "authorize":
            r["decision_id"] += "\n3 decisions replayed: 0 changed"
    log.write_text("".join(json.dumps(r) + "\n" for r in records), "utf-8")
    status, out, _ = run(capsys, "replay", str(log), "--policy", new, "--no-rotated")
    assert status == 0
    lines = out.splitlines()
    assert len(lines) == 2 and lines[-1].startswith("1 decisions replayed"), out
    assert "\u240a3 decisions replayed: 0 changed" in lines[0]


def test_query_shows_a_line_feed_in_a_tool_name(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([{"name": "a\n  b -> shop:buy: allowed"}]))
    status, out, _ = run(capsys, "query", policy(tmp_path), f"--principal={BOT}",
                         f"--tools=@{tools}")
    assert status == 0
    assert len(out.splitlines()) == 2, out
    assert "a\u240a  b -> shop:buy: allowed" in out


#: Mostly line breaks and tabs, which ANY draws seldom.
BROKEN = st.text(st.sampled_from("a-\n\t\r\x0b\x85\u2028 "), min_size=1, max_size=8)


def _line_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str], agent: str,
                 value: str) -> list[int]:
    path = tmp_path / "n.policy"
    path.write_text(f"namespace h\nrole r: h:*\nagent {quote(agent)}: r\n"
                    f"permit p: h:do for agent {quote(agent)} when context.a == {quote(value)}\n"
                    f"forbid f: h:do when context.a == {quote(value + value)}\n", "utf-8")
    counts = []
    for argv in (["explain", str(path), f"--principal={agent}", "--permission=h:do",
                  f"--context={json.dumps({'a': value})}"],
                 ["explain", str(path), f"--principal=_{agent}{value}", "--permission=h:do",
                  f"--context={json.dumps({'a': agent})}"],
                 ["query", str(path), "--permission=h:do"],
                 ["query", str(path), f"--principal={agent}"]):
        main(argv)
        printed = capsys.readouterr()
        assert printed.err == "", (argv, printed.err)
        counts.append(len(printed.out.split("\n")))
    return counts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(agent=ANY | BROKEN, value=ANY | BROKEN)
@example(agent="--", value="--")  # argparse drops a "--" value: --principal=-- is the id "--"
def test_explain_and_query_print_as_many_lines_whatever_the_id(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], agent: str, value: str) -> None:
    """Whatever an agent id or a request attribute holds (line feeds, tabs, any
    character), explain and query print the lines they print for a plain id."""
    assert _line_counts(tmp_path, capsys, agent, value) == _line_counts(
        tmp_path, capsys, "bot", "v")


@pytest.mark.parametrize("command", ["query", "explain"])
def test_an_option_given_the_text_dashdash_reads_it_as_text(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    """``--principal=--`` names the agent ``--`` (argparse alone hands the command an
    empty list, which the engine refuses as no string)."""
    path = tmp_path / "d.policy"
    path.write_text('namespace h\nrole r: h:*\nagent "--": r\npermit p: h:do for agent "--"\n',
                    "utf-8")
    argv = [command, str(path), "--principal=--"]
    if command == "explain":
        argv.append("--permission=h:do")
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert printed.err == ""
    assert ("decision: allowed" if command == "explain" else 'agent "--": 1 entry') in printed.out
