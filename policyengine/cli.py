"""``policyengine`` command line: check, fmt, eval, explain, test, token.

Exit codes: 0 success, 1 a finding (policy errors, a denied decision with ``--exit-code``,
failed fixtures, unformatted files with ``--check``), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from policyengine.lang._source import PolicyError

__all__ = ["main"]


def _load(paths: Sequence[str], budget_store: str | None = None) -> Any:
    from policyengine.engine import Engine
    return Engine.from_path(*paths, budget_store=budget_store)


def _cmd_check(args: argparse.Namespace) -> int:
    from policyengine.engine import load_policy, read_paths
    try:
        files = read_paths(args.paths)
        _, warnings = load_policy(files, base_dirs={n: str(Path(n).parent) for n, _ in files})
    except PolicyError as err:
        print(err.render(), file=sys.stderr)
        return 1
    for w in warnings:
        print(w.render(), file=sys.stderr)
    n = len(files)
    print(f"ok: {n} file{'s' if n != 1 else ''}, {len(warnings)} warning"
          f"{'s' if len(warnings) != 1 else ''}")
    return 0


def _cmd_fmt(args: argparse.Namespace) -> int:
    from policyengine.lang._fmt import format_source
    status = 0
    targets: list[Path] = []
    for raw in args.paths:
        if raw == "-":
            try:
                sys.stdout.write(format_source(sys.stdin.read(), "<stdin>"))
            except PolicyError as err:
                print(err.render(), file=sys.stderr)
                return 1
            continue
        p = Path(raw)
        targets.extend(sorted(p.rglob("*.policy")) if p.is_dir() else [p])
    for path in targets:
        try:
            text = path.read_text("utf-8")
            formatted = format_source(text, str(path))
        except PolicyError as err:
            print(err.render(), file=sys.stderr)
            status = 1
            continue
        except (OSError, UnicodeDecodeError) as exc:
            print(f"{path}: cannot read: {exc}", file=sys.stderr)
            status = 1
            continue
        if formatted != text:
            if args.check:
                print(f"would reformat {path}")
                status = 1
            else:
                path.write_text(formatted, "utf-8")
                print(f"reformatted {path}")
    return status


def _request(args: argparse.Namespace) -> dict[str, Any]:
    req: dict[str, Any] = {}
    if args.request:
        text = Path(args.request[1:]).read_text("utf-8") if args.request.startswith("@") \
            else args.request
        req = json.loads(text)
        if not isinstance(req, dict):
            raise ValueError("--request must be a JSON object")
    if args.principal is not None:
        req["principal"] = args.principal
    if args.permission is not None:
        req["permission"] = args.permission
    if args.context is not None:
        req["context"] = json.loads(args.context)
    if args.token is not None:
        req["token"] = args.token
    return req


def _cmd_eval(args: argparse.Namespace) -> int:
    from policyengine.budgets import BudgetError
    try:
        engine = _load(args.paths, args.budget_store)
        req = _request(args)
    except PolicyError as err:
        print(err.render(), file=sys.stderr)
        return 1
    except BudgetError as exc:
        print(f"error: budget store: {exc.code}: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"error: bad request: {exc}", file=sys.stderr)
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
        print(json.dumps(result.to_dict(), indent=2) if args.json else str(result))
        decision = result.decision
    else:
        decision = result
        print(json.dumps(decision.to_wire(), indent=2))
    return 0 if decision.allowed or not args.exit_code else 1


def _cmd_test(args: argparse.Namespace) -> int:
    from policyengine.conformance import run_paths
    report = run_paths(args.paths)
    for r in report.results:
        if not r.passed:
            print(f"FAIL {r.fixture} :: {r.case}: {r.message}")
        elif args.verbose:
            print(f"ok   {r.fixture} :: {r.case}")
    print(report.summary())
    return 0 if report.failed == 0 and report.passed > 0 else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="policyengine",
                                     description="Policy-as-code authorization for AI agents.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="check policy files; compiler-style errors")
    p.add_argument("paths", nargs="+")
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
        p.add_argument("--principal")
        p.add_argument("--permission")
        p.add_argument("--context", help="JSON object")
        p.add_argument("--token", help="a delegation token")
        p.add_argument("--request", help="the request as JSON, or @file.json "
                       "(principal, permission, context; or a tool call with transport)")
        p.add_argument("--json", action="store_true", help="explain as JSON")
        p.add_argument("--exit-code", action="store_true",
                       help="exit 1 when the decision is not allowed")
        p.add_argument("--budget-store", metavar="URL",
                       help="decide against this budget store: memory: (default), "
                       "sqlite:///path, postgresql://..., redis://...")
        p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("test", help="run conformance fixtures")
    p.add_argument("paths", nargs="+")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_cmd_test)

    try:
        from policyengine.tokens._cli import register
    except ImportError:  # pragma: no cover - tokens ship with the package
        pass
    else:
        register(sub)
    from policyengine.server._serve import register as register_serve
    register_serve(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "func", None) or args.handler
    result: int = handler(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
