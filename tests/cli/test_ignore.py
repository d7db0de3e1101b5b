"""``--ignore CODE``: a warning the user has judged (W209 on a real Russian word) is not
reported, nor counted for ``--werror`` (``check``) or ``--fail-on`` (``analyze``), and
only how many were ignored is said. Only a code the command reports may be named: an
error code, another command's code or no code at all is a usage error, one coded line."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine import Engine
from policyengine.analysis import FINDING_CODES
from policyengine.cli import _parser, main
from policyengine.lang import WARNING_CODES

REPO = Path(__file__).resolve().parents[2]
HEAD = 'namespace n\nrole r: docs:*\nagent "bot": r\n'
SUGAR = "\u0441\u0430\u0445\u0430\u0440"  # Russian for sugar, in Cyrillic: reads "caxap" (W209)
#: A policy text that makes each warning a policy load reports (each on its own).
MAKES = {
    "W201": "forbid f1: x:*\npermit p1: x:a\n",
    "W202": "role lonely: y:*\n",
    "W203": "permit c1: z:a when false\n",
    "W204": 'tool t: mcp "pay" -> shop:buy {\n  redact $.card hash\n}\n',
    "W205": "log redact $..email hash\n",
    "W206": 'schema sc:a {\n  country: string\n}\nforbid w: q:a when context.contry == "x"\n',
    "W207": 'agent "\\u0430dmin": r\n',
    "W208": 'agent "\uff41\uff44\uff4d\uff49\uff4e": r\n',
    "W209": f'agent "{SUGAR}": r\n',
}
CHECKS = "W201, W202, W203, W204, W205, W206, W207, W208, W209"
FINDINGS = "W300, W301, W302, W303, W304, W305, W306"


def write(tmp_path: Path, *codes: str, extra: str = "") -> str:
    path = tmp_path / "p.policy"
    path.write_text(HEAD + "".join(MAKES[c] for c in codes) + extra, "utf-8")
    return str(path)


def test_each_warning_has_a_policy_that_makes_it() -> None:
    """The texts below make the warnings they are named for, so every test here ignores
    a warning that is really there."""
    assert set(MAKES) == WARNING_CODES
    for code, text in MAKES.items():
        assert [w.code for w in Engine.from_source(HEAD + text).warnings] == [code]


# ---- check -------------------------------------------------------------------------------

def test_werror_with_its_only_warning_ignored_exits_0(capsys: pytest.CaptureFixture[str],
                                                      tmp_path: Path) -> None:
    policy = write(tmp_path, "W209")
    code, out, err = run_cli(capsys, ["check", policy, "--werror"])
    assert (code, out) == (1, "failed (--werror): 1 file, 1 warning\n")
    assert "warning[W209]" in err
    for ignore in (["--ignore", "W209"], ["--ignore=w209"], ["--ignore", " W209 "],
                   ["--ignore", "W209", "--ignore", "W209"], ["--ignore", "W207,W209"]):
        code, out, err = run_cli(capsys, ["check", policy, "--werror", *ignore])
        assert (code, out, err) == (0, "ok: 1 file, 0 warnings (1 ignored)\n", ""), ignore


def test_only_the_named_codes_are_silenced(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    policy = write(tmp_path, "W209", "W207", "W204")
    code, out, err = run_cli(capsys, ["check", policy, "--ignore", "W209"])
    assert (code, out) == (0, "ok: 1 file, 2 warnings (1 ignored)\n")
    assert re.findall(r"warning\[(W\d+)\]", err) == ["W207", "W204"]
    assert SUGAR not in err
    code, out, err = run_cli(capsys, ["check", policy, "--werror", "--ignore", "W209",
                                      "--ignore", "W204"])
    assert (code, out) == (1, "failed (--werror): 1 file, 1 warning (2 ignored)\n")
    assert re.findall(r"warning\[(W\d+)\]", err) == ["W207"]
    code, out, err = run_cli(capsys, ["check", policy, "--werror", "--ignore",
                                      "W209,W204,W207"])
    assert (code, out, err) == (0, "ok: 1 file, 0 warnings (3 ignored)\n", "")


def test_json_leaves_ignored_warnings_out_and_counts_them(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policy = write(tmp_path, "W209", "W207")
    code, out, _ = run_cli(capsys, ["check", policy, "--format", "json", "--werror"])
    report = json.loads(out)
    assert (code, report["ok"], report["ignored"]) == (1, False, 0)
    assert [w["code"] for w in report["warnings"]] == ["W209", "W207"]
    code, out, err = run_cli(capsys, ["check", policy, "--format", "json", "--werror",
                                      "--ignore", "W209"])
    report = json.loads(out)
    assert (code, report["ok"], report["ignored"], err) == (1, False, 1, "")
    assert [w["code"] for w in report["warnings"]] == ["W207"]
    code, out, _ = run_cli(capsys, ["check", policy, "--format", "json", "--werror",
                                    "--ignore", "W209,W207"])
    assert (code, json.loads(out)) == (0, {"ok": True, "files": 1, "errors": [],
                                           "warnings": [], "ignored": 2})


def test_an_error_is_reported_whatever_is_ignored(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    """Ignoring warnings never lets an error through: the policy's errors are reported
    (its ignored warnings not among them) and the exit status is 1."""
    policy = write(tmp_path, "W209", extra='agent "eve": nosuchrole\n')
    code, out, err = run_cli(capsys, ["check", policy, "--ignore", "W209"])
    assert (code, out) == (1, "")
    assert "error[E103]" in err and "W209" not in err
    code, out, _ = run_cli(capsys, ["check", policy, "--ignore", "W209", "--format", "json"])
    report = json.loads(out)
    assert (code, report["ok"], report["warnings"], report["ignored"]) == (1, False, [], 1)
    assert [e["code"] for e in report["errors"]] == ["E103"]


# ---- analyze -----------------------------------------------------------------------------

def test_analyze_ignores_findings_for_output_and_fail_on(capsys: pytest.CaptureFixture[str],
                                                          tmp_path: Path) -> None:
    policy = write(tmp_path, extra="permit p: docs:x when context.a > 5 and context.a < 3\n"
                   "permit q: docs:y\npermit q2: docs:y\n")
    code, out, _ = run_cli(capsys, ["analyze", policy])
    assert code == 1 and re.findall(r"warning\[(W\d+)\]", out) == ["W301", "W304"]
    code, out, _ = run_cli(capsys, ["analyze", policy, "--ignore", "w301"])
    assert code == 1 and re.findall(r"warning\[(W\d+)\]", out) == ["W304"]
    assert out.endswith(": 1 warnings, 0 notes (1 ignored)\n")
    code, out, err = run_cli(capsys, ["analyze", policy, "--ignore", "W301,W304"])
    assert (code, err) == (0, "") and "warning[" not in out
    assert out.endswith(": 0 warnings, 0 notes (2 ignored)\n")
    code, out, _ = run_cli(capsys, ["analyze", policy, "--json", "--ignore", "W304"])
    report = json.loads(out)
    assert (code, report["ignored"]) == (1, 1)
    assert [f["code"] for f in report["findings"]] == ["W301"]
    code, out, _ = run_cli(capsys, ["analyze", policy, "--json"])
    assert (code, json.loads(out)["ignored"]) == (1, 0)


# ---- refused codes -----------------------------------------------------------------------

@pytest.mark.parametrize(("command", "ignore", "message"), [
    ("check", "E101", f"--ignore E101: an error cannot be ignored, only a warning ({CHECKS})"),
    ("check", "W209,e103", "--ignore e103: an error cannot be ignored, only a warning "
     f"({CHECKS})"),
    ("check", "W999", f"--ignore W999: no such warning code; check's warnings: {CHECKS}"),
    ("check", "W2O9", "--ignore W2O9: no such warning code (did you mean W209?); check's "
     f"warnings: {CHECKS}"),
    ("check", "W301", "--ignore W301: check never reports it (policyengine analyze does); "
     f"check's warnings: {CHECKS}"),
    ("check", "W209,", "--ignore W209,: an empty code (give warning codes, like --ignore "
     "W208,W209)"),
    ("check", "", "--ignore : an empty code (give warning codes, like --ignore W208,W209)"),
    ("check", "W\u0662\u0660\u0669", "--ignore W\u0662\u0660\u0669: no such warning code; "
     f"check's warnings: {CHECKS}"),
    ("check", "W209\nW207", "--ignore W209\u240aW207: no such warning code (did you "
     f"mean W209?); check's warnings: {CHECKS}"),
    ("analyze", "E101", "--ignore E101: an error cannot be ignored, only a finding "
     f"({FINDINGS})"),
    ("analyze", "W209", "--ignore W209: analyze never reports it (policyengine check "
     f"does); analyze's findings: {FINDINGS}"),
    ("analyze", "W310", "--ignore W310: no such finding code (did you mean W306?); "
     f"analyze's findings: {FINDINGS}"),
])
def test_only_a_code_the_command_reports_may_be_ignored(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str, ignore: str,
        message: str) -> None:
    """Refused before the policy is read, as one coded line (exit status 2): an error
    is never silenced, and a mistyped code would silence nothing while a --werror run
    went on failing on the warning it meant."""
    code, out, err = run_cli(capsys, [command, write(tmp_path, "W209"), f"--ignore={ignore}"])
    assert (code, out, err) == (2, "", f"policyengine {command}: error: usage_error: "
                                       f"{message}\n")


def test_a_diff_takes_no_ignore(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A diff reports changed decisions, no findings: --ignore there would silence
    nothing, so analyze --diff refuses it and diff has no such option."""
    policy = write(tmp_path)
    code, out, err = run_cli(capsys, ["analyze", "--diff", policy, policy, "--ignore", "W301"])
    assert (code, out, err) == (2, "", "policyengine analyze: error: usage_error: --ignore "
                                       "silences findings, and a --diff reports none: give "
                                       "policy paths\n")
    code, out, err = run_cli(capsys, ["diff", policy, policy, "--ignore", "W301"])
    assert (code, out) == (2, "")
    assert err.startswith("policyengine diff: error: usage_error: unknown option --ignore")


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from _parsers(sub)


def test_every_command_that_fails_on_warnings_takes_ignore() -> None:
    """A command that can fail on a warning (``--werror``, ``--fail-on``) can be told to
    ignore one; diff's --fail-on is about changed decisions only."""
    for parser in _parsers(_parser()):
        flags = set(parser._option_string_actions)
        if flags & {"--werror", "--fail-on"} and parser.prog != "policyengine diff":
            assert "--ignore" in flags, parser.prog


def _documented(heading: str) -> set[str]:
    """The codes of the table under ``heading`` in docs/errors.md."""
    text = (REPO / "docs" / "errors.md").read_text("utf-8")
    section = text.split(f"\n## {heading}", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| (W\d{3}) \|", section, re.M))


def test_the_codes_ignore_accepts_are_the_documented_warnings() -> None:
    """A warning added to docs/errors.md (every code the package makes is listed there)
    is one --ignore accepts, and nothing else is."""
    assert _documented("Policy text") == WARNING_CODES
    assert _documented("Policy analysis") == FINDING_CODES
    assert "W209" in WARNING_CODES and "W301" in FINDING_CODES


# ---- property ----------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(made=st.sets(st.sampled_from(sorted(MAKES))),
       ignored=st.sets(st.sampled_from(sorted(WARNING_CODES))),
       as_json=st.booleans())
def test_check_reports_exactly_the_warnings_not_ignored(made: set[str], ignored: set[str],
                                                        as_json: bool) -> None:
    """Whatever warnings a policy has and whichever codes are ignored: the warnings
    reported are the engine's without the ignored codes, in its order; the count says
    how many were left out; --werror fails exactly when one is left. Ignoring every code
    present reports none and exits 0."""
    with tempfile.TemporaryDirectory() as tmp:
        policy = write(Path(tmp), *sorted(made))
        present = [w.code for w in Engine.from_path(policy).warnings]
        kept = [c for c in present if c not in ignored]
        argv = ["check", policy, "--werror", *(f"--ignore={c}" for c in sorted(ignored))]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main([*argv, "--format", "json"] if as_json else argv)
    assert status == (1 if kept else 0)
    if as_json:
        report = json.loads(out.getvalue())
        assert [w["code"] for w in report["warnings"]] == kept
        assert report["ignored"] == len(present) - len(kept)
        assert report["ok"] is not bool(kept)
    else:
        assert re.findall(r"warning\[(W\d+)\]", err.getvalue()) == kept
        n = len(present) - len(kept)
        assert out.getvalue().endswith(
            f"{len(kept)} warning{'s' if len(kept) != 1 else ''}"
            + (f" ({n} ignored)" if n else "") + "\n")
    if set(present) <= ignored:
        assert status == 0 and ("warning[" not in err.getvalue())
