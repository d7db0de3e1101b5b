"""``policyengine`` command line: check, fmt, eval, explain, test, analyze, diff, replay,
query, token.

Exit codes: 0 success, 1 a finding (policy errors, a denied decision with ``--exit-code``,
failed tests or fixtures, coverage under ``--min-coverage``, unformatted files with
``--check``, warnings with ``--werror``, analysis findings at the ``--fail-on`` level
(the warnings and findings ``--ignore CODE`` names left out),
decisions that a ``diff`` finds changed, or ``replay --exit-code``), 2 bad usage (a
missing or malformed option; for ``replay``, a policy or log that cannot be read). A
closed output pipe (``| head``) ends the command quietly. Every error is one line on
stderr, ``policyengine COMMAND: error: CODE: MESSAGE`` (``_visible.error_line``; a
policy's problems are reported compiler-style, ``FILE:LINE:COLUMN: error[CODE]``).

Every human-readable line goes through ``say`` (policyengine._visible): a control or
format character from a policy string, a request, a token or a log record is shown as
``<U+202E>``, never sent to the terminal raw. JSON output is ``json.dumps``'s (ASCII).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import difflib
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from policyengine._visible import error_of, one_line, say, say_error
from policyengine.errors import PolicyEngineError
from policyengine.lang import PolicyError, Problem

__all__ = ["main"]


class UsageError(PolicyEngineError):
    """``usage_error``: a missing or malformed command-line option (exit status 2, no
    decision)."""

    def __init__(self, message: str) -> None:
        super().__init__("usage_error", message)


def _command_of(args: argparse.Namespace) -> str:
    """The command an error line names: ``check``, or with its sub-command
    (``token mint``, ``log verify``, ``store init``), as argparse's usage errors do."""
    words = [args.command]
    for dest in ("token_command", "log_command", "store_command"):
        if getattr(args, dest, None):
            words.append(getattr(args, dest))
    return " ".join(words)


_CHOICE = re.compile(r"argument (?P<name>\S+): invalid choice: (?P<value>.+?) "
                     r"\(choose from (?P<choices>.*)\)$")


def _typed(shown: str) -> str:
    """The value an invalid-choice message shows, as typed: argparse quotes it with
    repr() (a line feed already ``\\n``), so it is read back, not quoted twice; a value
    shown otherwise loses only its quotes."""
    import ast
    try:
        value = ast.literal_eval(shown)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return shown.strip("'\"")
    return value if type(value) is str else shown.strip("'\"")


class _Store(argparse._StoreAction):
    """``store`` that keeps ``--opt=--`` as the text ``--``. argparse (up to Python 3.12)
    drops a ``--`` from an option's values as if it ended the options, so
    ``--principal=--`` reached the command as an empty list, not a string; for an option
    of one value that list can only come from there."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if type(values) is list and not values and self.nargs is None:
            values = parser._get_value(self, "--")  # converted (and checked) as any value
        setattr(namespace, self.dest, values)


class _Parser(argparse.ArgumentParser):
    """The command line's parser (and every sub-command's): a usage error is one line,
    ``policyengine CMD: error: usage_error: MESSAGE`` (exit status 2), never the usage
    text (``--help`` prints that); a mistyped command, option or choice gets a
    did-you-mean hint, and an unknown option is reported by the sub-command it was given
    to."""

    _given: list[str] = []  # the arguments this parser was given

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", None, _Store)
        self.register("action", "store", _Store)

    def _commands(self) -> dict[str, list[str]]:
        """The dest of each sub-command set of this parser -> its command names."""
        return {a.dest: list(a.choices or ()) for a in self._actions
                if isinstance(a, argparse._SubParsersAction)}

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None,
                         ) -> tuple[argparse.Namespace, list[str]]:
        self._given = list(sys.argv[1:] if args is None else args)
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and not self._commands():  # a leaf command: it names what it was given
            self.error(self._unknown(extras))
        return parsed, extras

    def _unknown(self, extras: list[str]) -> str:
        word = extras[0]
        if not word.startswith("-") or word == "-":
            return f"unexpected argument {word!r}"
        flag = word.split("=", 1)[0]
        close = difflib.get_close_matches(flag, list(self._option_string_actions), n=1)
        return f"unknown option {flag}" + (f" (did you mean {close[0]}?)" if close else "")

    def _explain(self, message: str) -> str:
        commands = self._commands()
        before = self._given[:next((i for i, w in enumerate(self._given)
                                    if not w.startswith("-")), len(self._given))]
        strays = [w for w in before if w.split("=", 1)[0] not in self._option_string_actions]
        if commands and strays and "arguments are required" in message:
            return self._unknown(strays)  # policyengine --verison: the option, not the command
        for dest, names in commands.items():
            message = message.replace(f"arguments are required: {dest}",
                                      f"arguments are required: a command ({', '.join(names)})")
        found = _CHOICE.match(message)
        if found is None:
            return message
        value = _typed(found["value"])
        choices = re.findall(r"'([^']*)'", found["choices"]) or found["choices"].split(", ")
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        if found["name"] in commands:
            return f"unknown command {value!r}{hint}; commands: {', '.join(choices)}"
        return f"argument {found['name']}: {value!r} is not one of {', '.join(choices)}{hint}"

    def error(self, message: str) -> NoReturn:
        # The error line every command prints (say_error: one line, whatever argparse's
        # message echoes of the command line, an unknown option as typed or a value),
        # for the command this parser is: its prog after "policyengine" ("token mint";
        # "" for the top level's own errors, a mistyped command).
        say_error(self.prog.partition(" ")[2], "usage_error",
                  f"{self._explain(message)}; see '{self.prog} --help'")
        sys.exit(2)


def _hmac_key(value: str | None) -> bytes | None:
    """``--hmac-key``: ``@FILE`` (raw bytes), ``hex:...``, ``base64:...`` or text. A key
    too short for ``hash`` is a usage error here, its text never shown (the engine's own
    refusal came out of the command as a traceback)."""
    if value is None:
        return None
    try:
        if value.startswith("@"):
            key = Path(value[1:]).read_bytes()
        elif value.startswith("hex:"):
            key = bytes.fromhex(value[4:])
        elif value.startswith("base64:"):
            key = base64.b64decode(value[7:], validate=True)
        else:
            key = value.encode("utf-8")
    except (OSError, ValueError, binascii.Error) as exc:
        raise UsageError(f"--hmac-key: {exc}") from None
    from policyengine.tools import check_hmac_key
    try:
        return check_hmac_key(key)
    except PolicyEngineError as exc:  # its words say how long a key must be, not the key
        raise UsageError(f"--hmac-key: the key has {len(key)} bytes; {exc.message}"
                         ) from None


def _now(value: str | None) -> float | None:
    """``--now``: RFC 3339 (``2026-01-01T00:00:00Z``) or POSIX seconds."""
    if value is None:
        return None
    from policyengine._conformance import parse_now
    try:
        return float(value) if value.replace(".", "", 1).isdigit() else parse_now(value)
    except ValueError as exc:
        raise UsageError(f"--now: {exc} (give RFC 3339 like 2026-01-01T00:00:00Z, or "
                         "POSIX seconds)") from None


def _engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """Engine options from the flags every deciding command shares."""
    options: dict[str, Any] = {}
    key = _hmac_key(getattr(args, "hmac_key", None))
    if key is not None:
        options["hmac_key"] = key
    if getattr(args, "keys", None):
        from policyengine.tokens import KeySet, TokenError
        try:
            options["keys"] = KeySet.from_file(args.keys, allow_hmac=args.allow_hmac)
        except (OSError, TokenError) as exc:
            raise UsageError(f"--keys {args.keys}: {exc}") from None
    if getattr(args, "rates", None):
        from policyengine.money import JsonFileRates, RateError
        try:
            options["rates"] = JsonFileRates(args.rates)
        except (OSError, RateError) as exc:
            raise UsageError(f"--rates {args.rates}: {exc}") from None
    now = _now(getattr(args, "now", None))
    if now is not None:
        options["clock"] = lambda: now
    store = getattr(args, "budget_store", None)
    if store is not None:
        options["budget_store"] = store
    # The shared stores a decision reads, by URL as serve takes them: the stores are
    # opened here (a bad URL or option fails before the policy loads) and closed when
    # the command ends (``args.opened``).
    opened: list[Any] = getattr(args, "opened", [])
    if getattr(args, "revocations", None) is not None:
        from policyengine.tokens._cli import opened_revocations
        options["revocations"] = opened_revocations(args)
    if getattr(args, "approvals", None) is not None:
        from policyengine.decide import MemoryApprovalStore, approvals_from_url
        approvals = approvals_from_url(args.approvals)
        if not isinstance(approvals, MemoryApprovalStore):  # memory: the engine's own,
            options["approvals"] = approvals  # which reads --now's clock
            opened.append(approvals)
    return options


def _load(paths: Sequence[str], **options: Any) -> Any:
    from policyengine.engine import Engine
    return Engine.from_path(*paths, **options)


def _ignore_arg(parser: argparse.ArgumentParser, what: str, example: str) -> None:
    parser.add_argument("--ignore", action="append", default=[], metavar="CODE",
                        help=f"do not report this {what} code, nor count it for the exit "
                        f"status (repeat, or comma-join: --ignore {example})")


def _ignored(args: argparse.Namespace, reported: frozenset[str],
             what: str = "warning") -> frozenset[str]:
    """``--ignore``'s codes (each option a code or a comma-joined list; ``w209`` is read
    as ``W209``), each one the command reports (``reported``, its ``what``: check's
    warnings, analyze's findings). Anything else is a usage error, before any policy is
    read: an empty code, an error code (errors stop a policy from loading and are never
    silenced), a code only another command reports (named), or no code at all (with a
    did-you-mean hint). A mistyped code would otherwise silence nothing, and a
    ``--werror`` run would go on failing on the warning it meant to let through."""
    listed = ", ".join(sorted(reported))
    codes: set[str] = set()
    for given in args.ignore:
        for item in given.split(","):
            typed = item.strip()
            code = typed.upper() if typed.isascii() else typed
            if code in reported:
                codes.add(code)
                continue
            if not typed:
                raise UsageError(f"--ignore {given}: an empty code (give {what} codes, "
                                 f"like --ignore {','.join(sorted(reported)[-2:])})")
            if re.fullmatch(r"E[0-9]{3}", code):
                raise UsageError(f"--ignore {typed}: an error cannot be ignored, only a "
                                 f"{what} ({listed})")
            from policyengine.analysis import FINDING_CODES
            from policyengine.lang import WARNING_CODES
            for other, owned in (("check", WARNING_CODES), ("analyze", FINDING_CODES)):
                if code in owned:
                    raise UsageError(f"--ignore {typed}: {args.command} never reports it "
                                     f"(policyengine {other} does); {args.command}'s "
                                     f"{what}s: {listed}")
            close = difflib.get_close_matches(code, sorted(reported), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"--ignore {typed}: no such {what} code{hint}; "
                             f"{args.command}'s {what}s: {listed}")
    return frozenset(codes)


def _problem_dict(p: Problem) -> dict[str, Any]:
    return {"code": p.code, "severity": p.severity, "message": p.message, "file": p.file,
            "line": None if p.line == 0 else p.line,
            "column": None if p.line == 0 else p.column, "hint": p.hint}


def _cmd_check(args: argparse.Namespace) -> int:
    """Load the policy as the engine would (engine options included), so every warning
    the engine gives at load (a ``hash`` redaction without a key) is reported here.
    A warning ``--ignore`` names is not reported, nor counted for ``--werror``: only
    how many there were (``ignored``)."""
    from policyengine.engine import read_paths
    from policyengine.lang import WARNING_CODES
    ignore = _ignored(args, WARNING_CODES)
    try:
        files = read_paths(args.paths)
        options = _engine_options(args)
        found: tuple[Problem, ...] = _load(args.paths, **options).warnings
        errors: tuple[Problem, ...] = ()
    except PolicyError as err:
        errors = tuple(p for p in err.problems if p.severity == "error")
        found = tuple(p for p in err.problems if p.severity != "error")
        files = []
    warnings = tuple(p for p in found if p.code not in ignore)
    ignored = len(found) - len(warnings)
    n = len(files)
    failed = bool(errors) or (args.werror and bool(warnings))
    if args.format == "json":
        print(json.dumps({"ok": not failed, "files": n,
                          "errors": [_problem_dict(p) for p in errors],
                          "warnings": [_problem_dict(p) for p in warnings],
                          "ignored": ignored}, indent=2))
        return 1 if failed else 0
    if errors:
        say(PolicyError([*errors, *warnings]).render(), file=sys.stderr)
        return 1
    for w in warnings:
        say(w.render(), file=sys.stderr)
    summary = (f"{n} file{'s' if n != 1 else ''}, {len(warnings)} warning"
               f"{'s' if len(warnings) != 1 else ''}"
               + (f" ({ignored} ignored)" if ignored else ""))
    if failed:
        say(f"failed (--werror): {summary}")
        return 1
    say(f"ok: {summary}")
    return 0


def _cmd_fmt(args: argparse.Namespace) -> int:
    from policyengine.lang import format_source
    status = 0
    targets: list[Path] = []
    for raw in args.paths:
        if raw == "-":
            try:
                sys.stdout.write(format_source(sys.stdin.read(), "<stdin>"))
            except PolicyError as err:
                say(err.render(), file=sys.stderr)
                return 1
            continue
        p = Path(raw)
        targets.extend(sorted(p.rglob("*.policy")) if p.is_dir() else [p])
    for path in targets:
        try:
            raw_bytes = path.read_bytes()
            if b"\x00" in raw_bytes:
                raise UnicodeError("a NUL byte")
            text = raw_bytes.decode("utf-8")
            formatted = format_source(text, str(path))
        except PolicyError as err:
            say(err.render(), file=sys.stderr)
            status = 1
            continue
        except UnicodeError:
            say(f"{one_line(path)}: error[E008]: not a policy file (binary or not UTF-8 "
                "text); left unchanged", file=sys.stderr)
            status = 1
            continue
        except OSError as exc:
            say(one_line(f"{path}: error[E010]: cannot read {path}: {exc.strerror or exc}"),
                file=sys.stderr)
            status = 1
            continue
        if formatted != text:
            if args.check:
                say(f"would reformat {one_line(path)}")
                status = 1
            else:
                # Encoded before the file is opened: a failure leaves it as it was.
                path.write_bytes(formatted.encode("utf-8"))
                say(f"reformatted {one_line(path)}")
    return status


def _json_arg(flag: str, text: str) -> Any:
    """A JSON option value. Numbers are read exactly (``12.10`` stays 12.10, never a
    binary float); duplicate keys and NaN are refused, as for every JSON the engine
    decides on."""
    from policyengine import _json as strict_json
    try:
        return strict_json.loads(text, decimal=True)
    except strict_json.AmbiguousJsonError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"{flag}: not valid JSON ({exc})") from None


def _request(args: argparse.Namespace) -> dict[str, Any]:
    req: dict[str, Any] = {}
    if args.request:
        if args.request.startswith("@"):
            try:
                text = Path(args.request[1:]).read_text("utf-8")
            except (OSError, UnicodeError) as exc:
                raise UsageError(f"--request {args.request}: cannot read: {exc}") from None
        else:
            text = args.request
        req = _json_arg("--request", text)
        if not isinstance(req, dict):
            raise UsageError("--request: must be a JSON object")
    if args.principal is not None:
        req["principal"] = args.principal
    if args.permission is not None:
        req["permission"] = args.permission
    if args.context is not None:
        context = _json_arg("--context", args.context)
        if not isinstance(context, dict):
            raise UsageError("--context: must be a JSON object, like '{\"amount\": \"12.50\"}'")
        req["context"] = context
    if args.token is not None:
        req["token"] = args.token
    if not req.get("transport"):
        missing = [f"--{k}" for k in ("principal", "permission") if req.get(k) is None]
        if missing:
            raise UsageError(f"{' and '.join(missing)} required (or a --request with them, "
                             "or a tool call with transport)")
    return req


def _cmd_eval(args: argparse.Namespace) -> int:
    args.opened = []
    try:
        return _eval(args)
    finally:
        for store in args.opened:  # connections to shared revocation / approval stores
            close = getattr(store, "close", None)
            if close is not None:
                close()


def _eval(args: argparse.Namespace) -> int:
    from policyengine.budgets import BudgetError
    from policyengine.decide import ApprovalError
    from policyengine.tokens import TokenError
    try:
        req = _request(args)
        engine = _load(args.paths, **_engine_options(args))
    except TokenError as exc:  # invalid_revocations, as token verify --revocations
        say_error(args.command, exc.code, f"--revocations: {exc.message}")
        return 2
    except ApprovalError as exc:  # invalid_approval_store, as serve --approvals
        say_error(args.command, exc.code, f"--approvals: {exc.message}")
        return 2
    except UsageError as exc:
        say_error(args.command, exc.code, exc.message)
        return 2
    except PolicyError as err:
        say(err.render(), file=sys.stderr)
        return 1
    except BudgetError as exc:
        say_error(args.command, exc.code, f"--store: {exc.message}")
        return 2
    except (ValueError, OSError) as exc:
        code, message = error_of(exc)
        say_error(args.command, code, f"bad request: {message}")
        return 2
    explaining = args.command == "explain"
    if req.get("transport"):  # a tool call: the tool-authorize request fields
        principal = req.pop("principal", None)
        if explaining:
            result: Any = engine.explain_tool(principal, **req)
        else:
            result = engine.tool_authorize(principal, **req)
    else:
        kwargs = {"token": req.get("token"),
                  "approval_id": req.get("approval_id", req.get("approvalId"))}
        run = engine.explain if explaining else engine.authorize
        result = run(req.get("principal"), req.get("permission"), req.get("context"),
                     **kwargs)
    if explaining:
        if args.json:
            print(json.dumps(result.to_dict(), indent=2))
        else:
            say(str(result))
        decision = result.decision
    else:
        decision = result
        print(json.dumps(decision.to_wire(), indent=2))
    return 0 if decision.allowed or not args.exit_code else 1


def _cmd_test(args: argparse.Namespace) -> int:
    """Run users' policy tests (``*.test.json``, docs/testing.md) and conformance fixtures
    (every other ``*.json``, conformance/README.md) under the given paths."""
    import re

    from policyengine._conformance import Report, run_fixture
    from policyengine.testing import (
        Coverage,
        add_untested_policies,
        is_test_file,
        junit_xml,
        run_test_file,
    )
    run = None
    if args.run is not None:
        try:
            run = re.compile(args.run)
        except re.error as exc:
            raise UsageError(f"--run: not a regular expression: {exc}") from None
    if args.min_coverage is not None and not 0 <= args.min_coverage <= 100:
        raise UsageError("--min-coverage: a percentage from 0 to 100")
    tests: list[Path] = []
    fixtures: list[Path] = []
    policy_files: list[Path] = []  # every policy file under a directory: coverage counts it
    for raw in args.paths:
        p = Path(raw)
        if not p.exists():
            raise UsageError(f"{p}: no such file or directory")
        if p.suffix == ".policy":  # test takes the tests, check the policy
            raise UsageError(f"{p} is a policy file: give its tests (*.test.json) or the "
                             "directory holding both (policyengine check reads policies)")
        found = sorted(p.rglob("*.json")) if p.is_dir() else [p]
        if p.is_dir() and not found:
            say_error("test", "no_tests", f"no fixtures (*.json) in {p}, nor policy tests "
                      "(*.test.json); see conformance/README.md and docs/testing.md for "
                      "the formats")
            return 1
        for f in found:
            (tests if is_test_file(f) else fixtures).append(f)
        if p.is_dir():
            policy_files.extend(sorted(p.rglob("*.policy")))
    want_coverage = args.coverage or args.coverage_json or args.min_coverage is not None
    coverage = Coverage() if want_coverage else None
    report = Report()
    for f in tests:
        report.results.extend(run_test_file(f, run, coverage))
    for f in fixtures:
        report.results.extend(r for r in run_fixture(f)
                              if run is None or r.case == "<load>" or run.search(r.case))
    if coverage is not None:
        report.results.extend(add_untested_policies(coverage, policy_files))
    for r in report.results:
        if not r.passed:
            say(f"FAIL {one_line(r.fixture)} :: {one_line(r.case)}: {r.message}")
        elif args.verbose:
            say(f"ok   {one_line(r.fixture)} :: {one_line(r.case)}")
    say(report.summary())
    if args.junit:
        try:
            Path(args.junit).write_text(junit_xml(report.results), "utf-8")
        except OSError as exc:
            raise UsageError(f"--junit {args.junit}: cannot write: {exc}") from None
    status = 0 if report.failed == 0 and report.passed > 0 else 1
    if report.passed == 0 and report.failed == 0 and run is not None:
        say(f"no test name matches --run {args.run!r}", file=sys.stderr)
    if coverage is not None:
        if args.coverage or args.min_coverage is not None:
            say(coverage.render())
        if args.coverage_json:
            try:
                Path(args.coverage_json).write_text(
                    json.dumps(coverage.to_dict(), indent=2) + "\n", "utf-8")
            except OSError as exc:
                raise UsageError(f"--coverage-json {args.coverage_json}: cannot write: "
                                 f"{exc}") from None
        if args.min_coverage is not None and coverage.percent() < args.min_coverage:
            say(f"coverage {coverage.percent():.1f}% is below --min-coverage "
                  f"{args.min_coverage:g}%")
            status = 1
    return status


def _cmd_analyze(args: argparse.Namespace) -> int:
    """``analyze PATHS`` (findings, docs/analysis.md) or ``analyze --diff OLD NEW`` /
    ``diff OLD NEW`` (the requests whose decision changes)."""
    from policyengine.analysis import FINDING_CODES, analyze, diff
    if args.max_requests is not None and args.max_requests < 1:
        raise UsageError("--max-requests: a positive number")
    bound = {} if args.max_requests is None else {"max_requests": args.max_requests}
    pair = args.diff if args.command == "analyze" else [args.old, args.new]
    if args.command == "analyze" and pair and args.paths:
        raise UsageError("give either policy paths or --diff OLD NEW, not both")
    if args.command == "analyze" and not pair and not args.paths:
        raise UsageError("give the policy files or directories to analyse")
    ignore = (_ignored(args, FINDING_CODES, "finding") if args.command == "analyze"
              else frozenset())
    if pair and ignore:
        raise UsageError("--ignore silences findings, and a --diff reports none: give "
                         "policy paths")
    # Each side is loaded on its own, and every side's problems are reported (each
    # problem names its file) before the command stops: a diff of a broken OLD and a
    # missing NEW says both.
    engines: list[Any] = []
    failed: list[PolicyError] = []
    for paths in ([[p] for p in pair] if pair else [args.paths]):
        try:
            engines.append(_load(paths))
        except PolicyError as err:
            failed.append(err)
    if failed:
        say("\n\n".join(err.render() for err in failed), file=sys.stderr)
        return 1
    if pair:
        result = diff(engines[0], engines[1], status_only=args.status_only, **bound)
        if args.json:
            print(json.dumps(result.to_dict(), indent=2))
        else:
            for change in result.changes:
                say(change.render())
            how = ("exhaustive" if result.exhaustive
                   else "NOT exhaustive:\n  " + "\n  ".join(map(one_line, result.inexact)))
            changed = len({(c.request["principal"], c.request["permission"])
                           for c in result.changes})
            say(f"{len(result.changes)} change{'s' if len(result.changes) != 1 else ''}"
                  f" in {changed} (principal, permission) pair"
                  f"{'s' if changed != 1 else ''} of {result.pairs} decided, "
                  f"{result.requests} requests under each version; {how}")
        return 1 if result.changes and args.fail_on != "none" else 0
    found = analyze(engines[0], **bound)
    # The findings --ignore names are left out of a new answer (never mutated): not
    # printed, not counted for --fail-on; only how many there were is said.
    analysis = dataclasses.replace(
        found, findings=tuple(f for f in found.findings if f.code not in ignore))
    ignored = len(found.findings) - len(analysis.findings)
    if args.json:
        print(json.dumps({**analysis.to_dict(), "ignored": ignored}, indent=2))
    else:
        for f in analysis.findings:
            say(f.render())
        counts = {s: sum(f.severity == s for f in analysis.findings)
                  for s in ("warning", "info")}
        say(f"{analysis.rules} rules analysed ({analysis.requests} requests decided): "
              f"{counts['warning']} warnings, {counts['info']} notes"
              + (f" ({ignored} ignored)" if ignored else ""))
    failing = () if args.fail_on == "none" else analysis.at_least(args.fail_on)
    return 1 if failing else 0


def _cmd_replay(args: argparse.Namespace) -> int:
    """``replay LOG... --policy NEW``: the logged decisions NEW decides differently
    (docs/decision-log.md, "Replay")."""
    from policyengine.replay import log_set, new_clock, replay
    files: list[str] = []
    for log in args.logs:
        for name in (log_set(log) if not args.no_rotated else [log]):
            if name not in files:
                files.append(name)
    clock = new_clock()
    try:
        engine = _load(args.policy, clock=clock)
    except PolicyError as err:
        say(err.render(), file=sys.stderr)
        return 2
    try:
        report = replay(files, engine, clock)
    except OSError as exc:
        say_error(args.command, "log_unreadable", str(exc))
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        for change in report.changes:
            say(change.render())
        for skip in report.skipped:
            say(skip.render())
        for name, line in report.malformed:
            say(f"{one_line(name)}:{line}: malformed: not a JSON object")
        say(f"{report.replayed} decisions replayed: {len(report.changes)} changed, "
              f"{report.unchanged} unchanged; {len(report.skipped)} not replayable"
              + (f"; {len(report.malformed)} malformed lines" if report.malformed else ""))
    return 1 if args.exit_code and report.changes else 0


def _tools_arg(text: str) -> list[Any]:
    """``--tools``: a JSON list of tools (MCP descriptors with a ``name``, or names), an
    MCP ``tools/list`` result (``{"tools": [...]}``) or a JSON-RPC response holding one;
    ``@FILE`` reads the JSON from a file."""
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text("utf-8")
        except (OSError, UnicodeError) as exc:
            raise UsageError(f"--tools {text}: cannot read: {exc}") from None
    data = _json_arg("--tools", text)
    if isinstance(data, dict) and isinstance(data.get("result"), dict):
        data = data["result"]
    if isinstance(data, dict):
        data = data.get("tools")
    if not isinstance(data, list):
        raise UsageError("--tools: a JSON list of tools, or an MCP tools/list result "
                         '({"tools": [...]})')
    return data


def _cmd_query(args: argparse.Namespace) -> int:
    """``query PATHS``: what a principal may do (``--principal``), what a role alone
    grants (``--role``), who may exercise a permission (``--permission``), which tools a
    principal may call (``--principal`` with ``--tools``). docs/queries.md."""
    asked = [f for f, v in (("--principal", args.principal), ("--role", args.role),
                            ("--permission", args.permission)) if v is not None]
    if args.tools is not None and (args.principal is None or len(asked) != 1):
        raise UsageError("--tools needs --principal (and no --role or --permission)")
    if len(asked) != 1:
        raise UsageError("give one of --principal, --role or --permission")
    if args.limit is not None and args.limit < 0:
        raise UsageError("--limit: a number >= 0")
    tools = _tools_arg(args.tools) if args.tools is not None else None
    try:
        engine = _load(args.paths)
    except PolicyError as err:
        say(err.render(), file=sys.stderr)
        return 1
    answer: Any
    try:
        if tools is not None:
            answer = engine.filter_tools(args.principal, tools, transport=args.transport)
        elif args.permission is not None:
            answer = engine.principals_with(args.permission, limit=args.limit)
        elif args.role is not None:
            answer = engine.permissions_of(role=args.role, limit=args.limit)
        else:
            answer = engine.permissions_of(args.principal, limit=args.limit)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(answer.to_dict(), indent=2))
    else:
        say(str(answer))
    return 0


def _cmd_store_init(args: argparse.Namespace) -> int:
    """Create a shared store's dataset, once: the explicit act a Redis store asks for on
    first use and after it lost its data (its stores never make one on their own, or a
    restart without persistence would grant budgets afresh and forget revocations), and
    a PostgreSQL revocation store after its tables were emptied. Opening a PostgreSQL or
    SQLite store makes its tables on first use; on a dataset that exists it changes
    nothing."""
    from policyengine._storeurl import scheme_of
    url: str = args.url
    redis = scheme_of(url) in ("redis", "rediss", "unix")
    what = "revocation" if args.revocations else "budget"
    if scheme_of(url) == "memory":
        raise UsageError("memory: holds nothing beyond one process: nothing to create")
    try:
        if args.revocations:
            from policyengine.tokens import revocations_from_url
            opener: Any = revocations_from_url
        else:
            from policyengine.budgets import store_from_url
            opener = store_from_url
        existed = True
        try:
            store = opener(url)
        except PolicyEngineError as exc:
            if exc.code not in ("store_uninitialized", "revocations_uninitialized"):
                raise
            existed = False
            store = opener(url, create=True)
        close = getattr(store, "close", None)
        if close is not None:
            close()
    except PolicyEngineError as exc:
        say_error("store init", exc.code, exc.message)
        return 1
    say(f"{what} store ready: "
          + ("a new empty dataset was created" if not existed else
             "its dataset exists, nothing changed" if redis else "its tables exist"))
    return 0


def _parser() -> argparse.ArgumentParser:
    from policyengine import __version__
    parser = _Parser(prog="policyengine",
                     description="Policy-as-code authorization for AI agents.")
    parser.add_argument("--version", action="version", version=f"policyengine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="check policy files; compiler-style errors")
    p.add_argument("paths", nargs="+", help="policy files or directories")
    p.add_argument("--format", choices=["text", "json"], default="text",
                   help="json: {ok, files, errors, warnings, ignored} on stdout")
    p.add_argument("--werror", action="store_true", help="exit 1 on warnings too")
    _ignore_arg(p, "warning", "W207,W209")
    p.add_argument("--hmac-key", metavar="KEY",
                   help="the key the engine will have (silences W204): @FILE, hex:..., "
                   "base64:... or text")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("fmt", help="format policy files canonically")
    p.add_argument("paths", nargs="+", help="files, directories, or - for stdin")
    p.add_argument("--check", action="store_true", help="report, do not rewrite; exit 1 "
                   "if a file would change")
    p.set_defaults(func=_cmd_fmt)

    for name, helptext in (("eval", "decide one request; print the wire decision"),
                           ("explain", "decide one request exactly as eval does, and say "
                            "step by step and rule by rule why")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("paths", nargs="+", help="policy files or directories")
        p.add_argument("--principal", help="who asks (an agent id)")
        p.add_argument("--permission", help="what it asks for (payments:refund)")
        p.add_argument("--context", help="the request's context, a JSON object")
        p.add_argument("--token", help="a delegation token")
        p.add_argument("--request", help="the request as JSON, or @file.json "
                       "(principal, permission, context; or a tool call with transport)")
        p.add_argument("--json", action="store_true",
                       help="explain: the explanation as JSON (eval always prints JSON)")
        p.add_argument("--exit-code", action="store_true",
                       help="exit 1 when the decision is not allowed")
        p.add_argument("--store", "--budget-store", dest="budget_store", metavar="URL",
                       help="decide against this budget store: memory: (default), "
                       "sqlite:///path, postgresql://..., redis://...")
        p.add_argument("--revocations", metavar="URL",
                       help="revoked tokens for --token: a store URL as serve takes it "
                       "(postgresql://...?schema=..., redis://...?prefix=..., memory:) or "
                       'a JSON file {"revoked": [...]}, as token revoke writes them')
        p.add_argument("--approvals", metavar="URL",
                       help="approvals for an approval_id: memory: (default), "
                       "postgresql://...?schema=..., redis://...?prefix=..., as serve "
                       "takes them")
        p.add_argument("--keys", metavar="FILE",
                       help="verification keys for --token: a key set / JWKS (.json; a "
                       "JWK's iss binds it to an issuer) or a PEM file")
        p.add_argument("--allow-hmac", action="store_true", help="accept HS256 keys")
        p.add_argument("--hmac-key", metavar="KEY",
                       help="key for 'hash' redaction: @FILE, hex:..., base64:... or text")
        p.add_argument("--rates", metavar="FILE",
                       help="a rates JSON table used for every file's conversions")
        p.add_argument("--now", metavar="TIME",
                       help="decide at this time: RFC 3339 or POSIX seconds")
        p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("store", help="shared stores: create a dataset (store init URL)")
    store_sub = p.add_subparsers(dest="store_command", required=True)
    p = store_sub.add_parser(
        "init", help="create the store's dataset if it has none (a Redis prefix's first "
        "use, or after Redis lost it, or PostgreSQL revocation tables emptied: accepting "
        "that loss); never replaces one")
    p.add_argument("url", metavar="URL", help="the store URL the hosts use "
                   "(redis://..., postgresql://..., sqlite:///...)")
    p.add_argument("--revocations", action="store_true",
                   help="a revocation store URL (default: a budget store)")
    p.set_defaults(func=_cmd_store_init)

    p = sub.add_parser("test", help="run policy tests (*.test.json, docs/testing.md) and "
                       "conformance fixtures (other *.json)")
    p.add_argument("paths", nargs="+", help="test files, fixtures, or directories holding "
                   "them")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="list the tests that passed too")
    p.add_argument("--run", metavar="REGEX",
                   help="run only the tests whose name this regular expression finds")
    p.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML")
    p.add_argument("--coverage", action="store_true",
                   help="report which rules held and which condition branches were taken, "
                   "per policy file and line")
    p.add_argument("--coverage-json", metavar="FILE", help="write the coverage as JSON")
    p.add_argument("--min-coverage", metavar="PERCENT", type=float,
                   help="exit 1 when coverage is below PERCENT (implies --coverage)")
    p.set_defaults(func=_cmd_test)

    for name, helptext in (("analyze", "find rules that never apply, duplicates, permits "
                            "always overridden, limits above budgets; --diff OLD NEW lists "
                            "requests whose decision changes"),
                           ("diff", "requests whose decision differs between two policy "
                            "versions (analyze --diff)")):
        p = sub.add_parser(name, help=helptext)
        if name == "analyze":
            p.add_argument("paths", nargs="*", help="policy files or directories")
            p.add_argument("--diff", nargs=2, metavar=("OLD", "NEW"),
                           help="compare two versions (each a file or directory)")
        else:
            p.add_argument("old", metavar="OLD", help="the old version (a file or directory)")
            p.add_argument("new", metavar="NEW", help="the new version (a file or directory)")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("--fail-on", choices=["info", "warning", "error", "none"],
                       default="warning",
                       help="exit 1 on findings at this severity or above (default "
                       "warning); a diff exits 1 on any change unless 'none'")
        p.add_argument("--max-requests", type=int, default=None, metavar="N",
                       help="requests decided per question before sampling (default "
                       "4096 per rule, 512 per principal and permission of a diff)")
        p.add_argument("--status-only", action="store_true",
                       help="a diff lists only decisions whose status changes (not those "
                       "whose reason code, obligations or rules alone change)")
        if name == "analyze":
            _ignore_arg(p, "finding", "W300,W304")
        p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser("replay", help="re-decide the requests of decision-log files under "
                       "another policy; print every decision that would change")
    p.add_argument("logs", nargs="+", metavar="LOG",
                   help="decision-log files (JSON Lines); a live file brings its rotated "
                   "files, oldest first")
    p.add_argument("--policy", nargs="+", required=True, metavar="PATH",
                   help="the policy to decide with (files or directories)")
    p.add_argument("--no-rotated", action="store_true",
                   help="read only the files given, not their rotated siblings")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--exit-code", action="store_true",
                   help="exit 1 when any decision would change")
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("query", help="reverse queries: what a principal or role may do, "
                       "who may exercise a permission, which tools a principal may call")
    p.add_argument("paths", nargs="+", help="policy files or directories")
    p.add_argument("--principal", help="every permission this principal may exercise "
                   "(with --tools: which of the tools it may call)")
    p.add_argument("--role", help="every permission a principal holding only this role "
                   "may exercise")
    p.add_argument("--permission", help="every principal that may exercise this "
                   "permission")
    p.add_argument("--tools", metavar="JSON", help="with --principal: a JSON list of tools "
                   "(MCP descriptors or names) or a tools/list result; @FILE reads a file")
    p.add_argument("--transport", choices=["mcp", "function"], default="mcp",
                   help="how --tools are bound (tool statements' mcp or function)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="print at most N lines (the answer then says it is truncated)")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.set_defaults(func=_cmd_query)

    try:
        from policyengine.tokens._cli import register
    except ImportError:  # pragma: no cover - tokens ship with the package
        pass
    else:
        register(sub)
    from policyengine.audit._cli import register as register_log
    register_log(sub)
    from policyengine.server._serve import register as register_serve
    register_serve(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "func", None) or args.handler
    try:
        result: int = handler(args)
        sys.stdout.flush()
    except UsageError as exc:
        say_error(_command_of(args), exc.code, exc.message)
        return 2
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly. Point stdout at /dev/null so
        # the interpreter's final flush does not raise again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a real file (tests)
            pass
        return 141  # 128 + SIGPIPE, as a process killed by the signal would report
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
