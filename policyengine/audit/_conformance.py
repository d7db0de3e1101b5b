"""Conformance kinds of the decision log (conformance/README.md):

* ``decision_log``: run one request (``op``: ``authorize``, ``tool_authorize`` or an
  AuthZEN search, ``search.subject``, ``search.resource``, ``search.action``, whose
  other keys are the search's body) on an engine with a decision log and compare the
  record's fields that the case names (``input``, ``masked``, ``erased``, ``result``,
  ``token``, ``principal`` ...; ``result`` whole but for its human ``reason``);
  per-process values (``decision_id``, ``timestamp``, ``metrics``, ``seq``, ``prev``,
  ``hash``) cannot be pinned;
* ``log_verify``: verify log files (given beside the fixture) and compare the verdict and
  each problem's ``code``, ``line`` and ``seq``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from policyengine.audit._chain import verify_files
from policyengine.audit._log import DecisionLog
from policyengine.audit._sinks import CallbackSink

__all__ = ["run_decision_log_case", "run_log_verify_case"]

_VOLATILE = frozenset({"decision_id", "timestamp", "metrics", "seq", "prev", "hash"})


def run_decision_log_case(make_engine: Any, case: dict[str, Any],
                          searches: Callable[[Any, str, dict[str, Any]], None] | None = None
                          ) -> str | None:
    """``make_engine(decision_log=...)`` builds the fixture's engine with a log.
    ``searches(engine, kind, body)`` runs an AuthZEN search with its record, for a
    request whose ``op`` is ``search.<kind>`` (the service's layer supplies it: the log
    knows nothing of the service)."""
    records: list[dict[str, Any]] = []
    engine = make_engine(DecisionLog(CallbackSink(records.append)))
    req = dict(case["request"])
    op = req.pop("op", "authorize")
    if op == "authorize":
        kwargs = {"token": req["token"]} if "token" in req else {}
        engine.authorize(req.get("principal"), req.get("permission"), req.get("context"),
                         **kwargs)
    elif op == "tool_authorize":
        engine.tool_authorize(req.pop("principal", None), **req)
    elif op.startswith("search.") and searches is not None:
        searches(engine, op.removeprefix("search."), req)
    else:
        return f"unknown op {op!r}"
    if not engine.close():
        return "the log did not close cleanly"
    found = [r for r in records if r["kind"] == op]
    if len(found) != 1:
        return f"expected one {op} record, got {len(found)}"
    record = found[0]
    problems = []
    for key, want in case["expect"]["record"].items():
        if key in _VOLATILE:
            return f"{key} cannot be pinned (it differs per process)"
        got = record.get(key, "<missing>")
        if key == "result" and isinstance(got, dict):
            got = {k: v for k, v in got.items() if k != "reason"}  # human text: not pinned
        if got != want:
            problems.append(f"{key}: expected {json.dumps(want)}, got {json.dumps(got)}")
    return "; ".join(problems) or None


def run_log_verify_case(case: dict[str, Any], base: Path) -> str | None:
    keys = None
    if "keys" in case:
        from policyengine.tokens import KeySet
        keys = KeySet.load_jwks(case["keys"])
    report = verify_files([base / f for f in case["files"]], keys,
                          require_signatures=bool(case.get("require_signatures")))
    want = case["expect"]
    got_problems = [{"code": p.code, "line": p.line, "seq": p.seq} for p in report.problems]
    problems = []
    if report.ok != want["ok"]:
        problems.append(f"ok: expected {want['ok']}, got {report.ok}")
    if got_problems != want.get("problems", []):
        problems.append(f"problems: expected {json.dumps(want.get('problems', []))}, "
                        f"got {json.dumps(got_problems)}")
    for key in ("records", "checkpoints", "signed_checkpoints"):
        if key in want and getattr(report, key) != want[key]:
            problems.append(f"{key}: expected {want[key]}, got {getattr(report, key)}")
    return "; ".join(problems) or None
