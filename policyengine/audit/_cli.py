"""``policyengine log verify FILE...``: check a decision log's hash chain and checkpoints.

Prints one line per problem (``FILE:LINE (seq N): code: message``) and a summary; exit
status 0 when the chain is intact, 1 when anything was changed, removed, inserted or
reordered (or a checkpoint does not verify), 2 when a file cannot be read.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from policyengine._visible import one_line, say, say_error

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    p = sub.add_parser("log", help="decision logs: verify the hash chain")
    verbs = p.add_subparsers(dest="log_command", required=True)
    v = verbs.add_parser("verify", help="find records changed, removed, inserted or "
                         "reordered (files in order: rotated files oldest first)")
    v.add_argument("files", nargs="+", metavar="FILE",
                   help="decision-log files (JSON Lines), oldest first")
    v.add_argument("--keys", metavar="JWKS", help="public keys that signed the checkpoints")
    v.add_argument("--require-signatures", action="store_true",
                   help="an unsigned checkpoint, or none at all, is a problem")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from policyengine.audit._chain import verify_files
    from policyengine.audit.errors import LogVerifyError
    keys = None
    if args.keys:
        from policyengine.tokens import KeySet, TokenError
        try:
            keys = KeySet.from_file(args.keys)
        except TokenError as exc:  # (a file that cannot be read too: invalid_key)
            say_error("log verify", exc.code, f"--keys: {exc.message}")
            return 2
    try:
        report = verify_files(args.files, keys, require_signatures=args.require_signatures)
    except LogVerifyError as exc:
        say_error("log verify", exc.code, exc.message)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for p in report.problems:
            say(str(p))
        for n in report.notes:
            say(f"note: {one_line(n)}")
        signed = f" ({report.signed_checkpoints} signature(s) verified)" if keys else ""
        verdict = "ok" if report.ok else f"{len(report.problems)} problem(s)"
        say(f"{report.records} records, {report.checkpoints} checkpoints{signed}: "
              f"{verdict}")
    return 0 if report.ok else 1
