"""Run the language-neutral conformance fixtures (``conformance/**/*.json``).

The format is specified in ``conformance/README.md``; this module is one implementation
of that spec, used by ``policyengine test`` and by the test suite. It is the package's own
(no API): ``policyengine test PATH`` is how users run fixtures. A fixture pins the whole
wire decision; fields a case leaves out take the documented defaults (``rules: []``,
``obligations: null``, ``diagnostics: []`` ...), so a case cannot pass by saying little.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["CaseResult", "Report", "run_fixture", "run_paths"]

# Wire keys every authorize expectation pins, with the default a case may omit.
_DECISION_DEFAULTS: dict[str, Any] = {
    "approvalId": None, "actingFor": None, "chain": None, "rules": [], "obligations": None,
    "diagnostics": [], "shadow": None,
}
_TOOL_DEFAULTS: dict[str, Any] = {**_DECISION_DEFAULTS, "redactions": [], "permission": None,
                                  "tool": None}
_NOT_PINNED = ("reason", "decisionId")  # human text and per-process ids


@dataclass
class CaseResult:
    fixture: str
    case: str
    passed: bool
    message: str = ""
    time: float = 0.0  # seconds (JUnit reports)


@dataclass
class Report:
    results: list[CaseResult] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def failed(self) -> int:
        return sum(not r.passed for r in self.results)

    def summary(self) -> str:
        return f"{self.passed} passed, {self.failed} failed"


def parse_now(text: str) -> float:
    """RFC 3339 (``2026-01-01T00:00:00Z``) -> POSIX seconds."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"'now' needs a time zone: {text!r}")
    return dt.timestamp()


def _policies(fixture: dict[str, Any], case: dict[str, Any], base: Path) -> dict[str, str]:
    sources: dict[str, str] = {}
    spec = case.get("policies", fixture.get("policies"))
    paths = case.get("policy_paths", fixture.get("policy_paths"))
    if spec:
        sources.update(spec)
    for rel in paths or ():
        p = (base / rel).resolve()
        files = sorted(p.rglob("*.policy")) if p.is_dir() else [p]
        for f in files:
            sources[f.name if len(files) == 1 else f"{p.name}/{f.name}"] = f.read_text("utf-8")
    return sources


def _engine(fixture: dict[str, Any], case: dict[str, Any], base: Path,
            clock: Callable[[], float] | None = None, decision_log: Any = None) -> Any:
    from policyengine.engine import Engine
    now = parse_now(fixture["now"]) if "now" in fixture else 0.0
    options: dict[str, Any] = {"clock": clock or (lambda: now), "base_dir": str(base)}
    if decision_log is not None:
        options["decision_log"] = decision_log
    hook = fixture.get("engine_options") or {}
    if "hmac_key" in hook:
        options["hmac_key"] = hook["hmac_key"].encode("utf-8")
    if "keys" in fixture:
        from policyengine.tokens import KeySet
        options["keys"] = KeySet.load_jwks(fixture["keys"])
    return Engine.from_sources(_policies(fixture, case, base), **options)


def _normalise_diags(diags: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"code": d.get("code"), "rule": d.get("rule")} for d in diags]


def compare_decision(actual: dict[str, Any], expected: dict[str, Any],
                     defaults: dict[str, Any]) -> str | None:
    """None if ``actual`` (a wire dict) matches ``expected`` (with defaults), else why."""
    want = {**defaults, **expected}
    if "allowed" not in want and "status" in want:
        want["allowed"] = want["status"] == "allowed"
    problems = []
    for key, value in want.items():
        if key in _NOT_PINNED:
            continue
        got = actual.get(key, "<missing>")
        if key == "approvalId":
            ok = (got is None) if value is None else (isinstance(got, str) and bool(got))
        elif key == "diagnostics":
            ok = _normalise_diags(got if isinstance(got, list) else []) == _normalise_diags(value)
        elif key == "shadow" and value is None:  # no `mode warn` outcome: no key at all
            ok = "shadow" not in actual
        else:
            ok = got == value
        if not ok:
            shown = json.dumps(got, default=str)
            problems.append(f"{key}: expected {json.dumps(value)}, got {shown}")
    if not isinstance(actual.get("decisionId"), str):
        problems.append("decisionId: missing")
    return "; ".join(problems) or None


def _run_authorize(engine: Any, case: dict[str, Any]) -> str | None:
    req = case["request"]
    kwargs = {}
    if "token" in req:
        kwargs["token"] = req["token"]
    if "approvalId" in req:
        kwargs["approval_id"] = req["approvalId"]
    decision = engine.authorize(req.get("principal"), req.get("permission"),
                                req.get("context"), **kwargs)
    return compare_decision(decision.to_wire(), case["expect"]["decision"], _DECISION_DEFAULTS)


def _run_tool(engine: Any, case: dict[str, Any]) -> str | None:
    req = dict(case["request"])
    principal = req.pop("principal", None)
    td = engine.tool_authorize(principal, **req)
    expect = case["expect"]
    msg = compare_decision(td.to_wire(), expect["decision"], _TOOL_DEFAULTS)
    if msg is None and "body" in expect and td.body != expect["body"]:
        msg = f"body: expected {json.dumps(expect['body'])}, got {json.dumps(td.body, default=str)}"
    return msg


def _run_approval(fixture: dict[str, Any], case: dict[str, Any], base: Path) -> str | None:
    """Steps against one engine whose clock moves only with ``advance``: ask (``authorize``
    / ``tool_authorize``, naming the approval id with ``as``), ``approve`` / ``reject``,
    ``get``, ``advance``. An ``approvalId`` arg naming an earlier ``as`` is replaced by
    that id; any other string is passed as written."""
    now = [parse_now(case.get("now", fixture["now"]))]
    engine = _engine(fixture, case, base, lambda: now[0])
    named: dict[str, str] = {}
    for i, step in enumerate(case["steps"]):
        op, args, expect = step["op"], dict(step.get("args", {})), step.get("expect", {})
        where = f"step {i} ({op})"
        if op == "advance":
            now[0] += args["seconds"]
            continue
        if op in ("authorize", "tool_authorize"):
            ref = args.pop("approvalId", None)
            approval_id = named.get(ref, ref) if isinstance(ref, str) else ref
            if op == "authorize":
                result = engine.authorize(args.get("principal"), args.get("permission"),
                                          args.get("context"), approval_id=approval_id)
                defaults = _DECISION_DEFAULTS
            else:
                principal = args.pop("principal", None)
                result = engine.tool_authorize(principal, approval_id=approval_id, **args)
                defaults = _TOOL_DEFAULTS
            if "as" in step:
                if not result.approval_id:
                    return f"{where}: no approvalId to name {step['as']!r}"
                named[step["as"]] = result.approval_id
            msg = compare_decision(result.to_wire(), expect["decision"], defaults)
            if msg is not None:
                return f"{where}: {msg}"
            continue
        from policyengine.decide import ApprovalError
        ref = args["approval"]
        approval_id = named.get(ref, ref)
        try:
            if op == "get":
                item = engine.approvals.get(approval_id)
            elif op in ("approve", "reject"):
                item = getattr(engine.approvals, op)(approval_id, by=args.get("by"))
            else:
                return f"{where}: unknown op"
        except ApprovalError as exc:
            if expect.get("error") != exc.code:
                return f"{where}: raised {exc.code}, expected {expect}"
            continue
        if "error" in expect:
            return f"{where}: expected error {expect['error']}, got {item.status}"
        wire = item.to_wire()
        for key, value in expect.items():
            if wire.get(key) != value:
                return f"{where}: {key}: expected {json.dumps(value)}, got {wire.get(key)!r}"
    return None


def _run_check(fixture: dict[str, Any], case: dict[str, Any], base: Path) -> str | None:
    from policyengine.engine import load_policy
    from policyengine.lang import PolicyError
    sources = _policies(fixture, case, base)
    try:
        _, warnings = load_policy(list(sources.items()),
                                  base_dirs={name: str(base) for name in sources})
        problems: tuple[Any, ...] = warnings
    except PolicyError as err:
        problems = err.problems
    expect = case["expect"]

    def shape(items: Iterable[Any]) -> list[dict[str, Any]]:
        return [{"code": p.code, "file": p.file, "line": p.line, "column": p.column}
                for p in items]

    got_errors = shape(p for p in problems if p.severity == "error")
    got_warnings = shape(p for p in problems if p.severity == "warning")
    want_errors = [{"file": "main.policy", **e} for e in expect.get("errors", [])]
    want_warnings = [{"file": "main.policy", **w} for w in expect.get("warnings", [])]
    out = []
    if got_errors != want_errors:
        out.append(f"errors: expected {want_errors}, got {got_errors}")
    if got_warnings != want_warnings:
        out.append(f"warnings: expected {want_warnings}, got {got_warnings}")
    return "; ".join(out) or None


def _run_analyze(fixture: dict[str, Any], case: dict[str, Any], base: Path) -> str | None:
    """``policyengine analyze`` on the case's policies (findings: code, rule, file, line,
    column, related; each counterexample replayed and its decision compared), or, with
    ``against``, the diff to that second policy set (the changed pairs of declared
    agents and named permissions, and whether the diff was exhaustive)."""
    from policyengine.analysis import analyze, diff
    expect = case["expect"]
    engine = _engine(fixture, case, base)
    out = []
    if "against" in case:
        other = _engine(fixture, {"policies": case["against"]}, base)
        # Entries [principal, permission, old status, new status] pin the status-only
        # diff; a fifth element (the kinds of change) pins the whole diff.
        whole = any(len(e) > 4 for e in expect["changes"])
        result = diff(engine, other, status_only=not whole)
        named = {p for e in (engine, other) for r in e.policy.rules for p in r.patterns}
        named |= {route.permission for e in (engine, other) if e.policy.tools is not None
                  for b in e.policy.tools.http for route in b.routes}
        named |= {n.permission for e in (engine, other) if e.policy.tools is not None
                  for n in e.policy.tools.named}
        declared = set(engine.policy.principals) | set(other.policy.principals)
        # one entry per direction of status and kinds (a diff lists a direction once per
        # pair of reason codes too: those are checked on replay, not counted here)
        entries = {json.dumps([who, c.request["permission"], c.old[0], c.new[0],
                               *([list(c.kinds)] if whole else []),
                               *([c.request["tool"]] if "tool" in c.request else [])])
                   for c in result.changes for who in (c.request["principal"], *c.alike)
                   if who in declared and c.request["permission"] in named}
        got = sorted(json.loads(e) for e in entries)
        for c in result.changes:  # every example really changes decision as reported
            out.extend(_replay_change(engine, other, c, whole))
        if got != sorted(expect["changes"]):
            out.append(f"changes: expected {sorted(expect['changes'])}, got {got}")
        if result.exhaustive != expect.get("exhaustive", True):
            out.append(f"exhaustive: expected {expect.get('exhaustive', True)}, got "
                       f"{result.exhaustive} ({'; '.join(result.inexact)})")
        return "; ".join(out) or None
    analysis = analyze(engine)
    got_findings = [{"code": f.code, "rule": f.rule, "file": f.file, "line": f.line,
                     "column": f.column, "related": list(f.related)}
                    for f in analysis.findings]
    want = [{"file": "main.policy", "related": [], **{k: v for k, v in f.items()
                                                       if k != "decision"}}
            for f in expect["findings"]]
    if got_findings != want:
        out.append(f"findings: expected {want}, got {got_findings}")
    for f, w in zip(analysis.findings, expect["findings"], strict=False):
        if "decision" not in w:
            continue
        if f.counterexample is None:
            out.append(f"{f.code} {f.rule}: no counterexample")
            continue
        ce = f.counterexample
        d = engine.authorize(ce["principal"], ce["permission"], ce["context"])
        if {"status": d.status, "reasonCode": d.code} != w["decision"]:
            out.append(f"{f.code} {f.rule}: counterexample {ce} is {d.status} ({d.code}), "
                       f"expected {w['decision']}")
    return "; ".join(out) or None


def _replay_change(old: Any, new: Any, change: Any, whole: bool) -> list[str]:
    """Problems with one change a diff reports: each side's status, reason code, rules
    and obligations must be what ``authorize`` answers for the example (for a call
    through a tool, the tool's redactions aside), and the kinds of change exactly the
    parts that differ (the status alone in a status-only diff)."""
    r = change.request
    out = []
    sides = []
    for engine, (status, code), rules, ob in (
            (old, change.old, change.old_rules, change.old_obligations),
            (new, change.new, change.new_rules, change.new_obligations)):
        d = engine.authorize(r["principal"], r["permission"], r["context"])
        wire = None if d.obligations is None else d.obligations.to_wire()
        if "tool" in r and ob is not None:  # the tool's redactions, on top
            ob = {k: v for k, v in ob.items() if k != "redactions"}
            ob["redactFields"] = wire["redactFields"] if wire is not None else []
            if wire is None and not any(ob.values()):
                ob = None
        if (d.status, d.code, tuple(d.rules), wire) != (status, code, tuple(rules), ob):
            out.append(f"example {r} is {d.status} ({d.code}) {list(d.rules)} {wire}, "
                       f"reported {status} ({code}) {list(rules)} {ob}")
        sides.append((status, code, ob, tuple(rules)))
    kinds = [k for k, x, y in zip(("status", "reason", "obligations", "rules"), *sides,
                                  strict=True) if x != y]
    if not whole:
        kinds = kinds[:1] if kinds[:1] == ["status"] else []
    if "tool" in r:  # the redactions differ, whatever else does
        kinds = [k for k in ("status", "reason", "obligations", "rules")
                 if k in kinds or k == "obligations"]
    if kinds != list(change.kinds) or not kinds:
        out.append(f"example {r}: changed {list(change.kinds)}, but {kinds} differ")
    return out


def _run_policy_test(fixture: dict[str, Any], case: dict[str, Any], base: Path
                     ) -> str | None:
    """A policy test file (docs/testing.md) run against the case's policies: which tests
    pass, and the coverage they reach (items compared by kind, line and column)."""
    from policyengine.testing import Coverage, TestFileError, checked_test_data, run_tests
    expect = case["expect"]
    try:
        data = checked_test_data(case["test_file"])
    except TestFileError as exc:
        return None if expect.get("error") == exc.code else f"raised {exc}"
    if "error" in expect:
        return f"expected error {expect['error']}, the test file loaded"
    coverage = Coverage()
    results = run_tests(data, _engine(fixture, case, base), "case", None, coverage)
    if "untested" in case:  # policy files beside the tested ones that no test loads
        from policyengine.engine import Engine
        coverage.add_unexercised(Engine.from_sources(case["untested"],
                                                     base_dir=str(base)).policy)
    got = {r.case: r.passed for r in results}
    out = []
    if got != expect["results"]:
        out.append(f"results: expected {expect['results']}, got {got}")
    want_cov = expect.get("coverage")
    if want_cov is not None:
        cov = coverage.to_dict()
        items = [{"kind": i["kind"], "line": i["line"], "column": i["column"],
                  "counts": i["counts"]} for f in cov["files"] for i in f["items"]]
        shown = {"covered": cov["covered"], "total": cov["total"], "items": items}
        if shown != want_cov:
            out.append(f"coverage: expected {json.dumps(want_cov)}, got {json.dumps(shown)}")
    return "; ".join(out) or None


def _run_replay(fixture: dict[str, Any], case: dict[str, Any], base: Path) -> str | None:
    """``kind: replay``: the case's ``log`` (decision-log records: objects, or strings
    written as they are) re-decided by ``policyengine replay`` under ``new_policies``;
    ``expect`` pins the report (``ReplayReport.to_dict()``, each change and skip matched
    as a subset, without file names). The policy that made the log (the case's or the
    fixture's ``policies``) must decide every replayable record as logged."""
    import tempfile

    from policyengine.engine import Engine
    from policyengine.replay import new_clock, replay

    def report(sources: dict[str, str], path: str) -> dict[str, Any]:
        clock = new_clock()
        engine = Engine.from_sources(sources, clock=clock, base_dir=str(base))
        found: dict[str, Any] = replay([path], engine, clock).to_dict()
        return found

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "decisions.jsonl")
        with open(path, "w", encoding="utf-8") as out:
            for item in case["log"]:
                out.write((item if isinstance(item, str) else json.dumps(item)) + "\n")
        got = report(dict(case["new_policies"]), path)
        same = report(_policies(fixture, case, base), path)
    if same["changed"]:
        return ("the log's own policy decides differently: "
                + json.dumps([c["line"] for c in same["changes"]]))
    problems = []
    for key, want in case["expect"].items():
        have = got.get(key, "<missing>")
        if key in ("changes", "skipped") and isinstance(have, list):
            if len(have) != len(want) or any(
                    _subset_of(w, h) is not None for w, h in zip(want, have, strict=True)):
                problems.append(f"{key}: expected {json.dumps(want)}, got "
                                f"{json.dumps(have)}")
        elif have != want:
            problems.append(f"{key}: expected {json.dumps(want)}, got {json.dumps(have)}")
    return "; ".join(problems) or None


def _subset_of(want: Any, have: Any) -> str | None:
    """None when every key of ``want`` (nested objects too) is in ``have`` and equal."""
    if isinstance(want, dict):
        if not isinstance(have, dict):
            return "not an object"
        for k, v in want.items():
            if k not in have or _subset_of(v, have[k]) is not None:
                return str(k)
        return None
    return None if want == have else "differs"


def _run_query(engine: Any, case: dict[str, Any]) -> str | None:
    """A reverse query (docs/queries.md): ``permissions_of`` (a principal), ``role``,
    ``principals_with`` (a permission) or ``filter_tools`` (tools for ``principal``);
    every line of the answer compared, in order."""
    q, expect = case["query"], case["expect"]
    limit = q.get("limit")
    if "filter_tools" in q:
        got = engine.filter_tools(q["principal"], q["filter_tools"],
                                  transport=q.get("transport", "mcp"))
        names = [t.name for t in got.tools if t.callable]
        out = [] if names == expect["kept"] else [
            f"kept: expected {json.dumps(expect['kept'])}, got {json.dumps(names)}"]
        for i, want in enumerate(expect.get("tools", [])):
            have = got.tools[i].to_dict() if i < len(got.tools) else {}
            for key, value in want.items():
                if have.get(key, "<missing>") != value:
                    out.append(f"tools[{i}].{key}: expected {json.dumps(value)}, got "
                               f"{json.dumps(have.get(key, '<missing>'))}")
        return "; ".join(out) or None
    if "principals_with" in q:
        answer = engine.principals_with(q["principals_with"], limit=limit)
        defaults: dict[str, Any] = {"pattern": q["principals_with"]}
    elif "role" in q:
        answer = engine.permissions_of(role=q["role"], limit=limit)
        defaults = {"principal": q["role"], "kind": "role"}
    else:
        answer = engine.permissions_of(q["permissions_of"], limit=limit)
        defaults = {"principal": q["permissions_of"], "kind": "agent"}
    want_entries = [{"excluding": [], "when": None, "unless": None, **defaults, **e}
                    for e in expect["entries"]]
    got_entries = [{k: v for k, v in a.to_dict().items() if k in want or k != "rules"}
                   for a, want in zip(answer.entries, want_entries, strict=False)]
    got_entries += [a.to_dict() for a in answer.entries[len(want_entries):]]
    out = []
    if got_entries != want_entries:
        out.append(f"entries: expected {json.dumps(want_entries)}, got "
                   f"{json.dumps(got_entries)}")
    total = expect.get("total", len(want_entries))
    truncated = expect.get("truncated", False)
    if (answer.total, answer.truncated) != (total, truncated):
        out.append(f"total/truncated: expected {total}/{truncated}, got "
                   f"{answer.total}/{answer.truncated}")
    return "; ".join(out) or None


def run_fixture(path: Path) -> list[CaseResult]:
    """Run every case of one fixture file."""
    name = str(path)
    try:
        fixture = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        return [CaseResult(name, "<load>", False, f"cannot read fixture: {exc}")]
    if not isinstance(fixture, dict):
        return [CaseResult(name, "<load>", False, "a fixture is a JSON object (see "
                           "conformance/README.md), not a " + type(fixture).__name__)]
    base = path.parent
    results: list[CaseResult] = []
    engine: Any = None
    for i, case in enumerate(fixture.get("cases", [])):
        label = case.get("name", f"case {i}")
        kind = case.get("kind")
        start = time.perf_counter()
        try:
            if kind == "check":
                msg = _run_check(fixture, case, base)
            elif kind == "policy_test":
                msg = _run_policy_test(fixture, case, base)
            elif kind == "analyze":
                msg = _run_analyze(fixture, case, base)
            elif kind == "token":
                from policyengine.tokens._conformance import run_token_case
                msg = run_token_case(fixture, case)
            elif kind == "approval":
                msg = _run_approval(fixture, case, base)
            elif kind == "replay":
                msg = _run_replay(fixture, case, base)
            elif kind == "budget":
                from policyengine.budgets._conformance import run_budget_case

                def ledger(clock: Callable[[], float], c: dict[str, Any] = case) -> Any:
                    return _engine(fixture, c, base, clock)  # authorize steps need it

                msg = run_budget_case(ledger, case, fixture.get("now"))
            elif kind == "decision_log":
                from policyengine.audit._conformance import run_decision_log_case

                def logged(log: Any, c: dict[str, Any] = case) -> Any:
                    return _engine(fixture, c, base, decision_log=log)

                from policyengine.server._authzen import run_logged_search
                msg = run_decision_log_case(logged, case, run_logged_search)
            elif kind == "log_verify":
                from policyengine.audit._conformance import run_log_verify_case
                msg = run_log_verify_case(case, base)
            elif kind == "cycles":
                from policyengine.server._cycles import run_cycles_case
                start_at = parse_now(fixture["now"]) if "now" in fixture else 0.0
                moved = [0.0]

                def advance(seconds: float, moved: list[float] = moved) -> None:
                    moved[0] += seconds

                def clock(moved: list[float] = moved, t: float = start_at) -> float:
                    return t + moved[0]

                eng = _engine(fixture, case, base, clock)
                msg = run_cycles_case(eng, case, advance)
            elif kind == "authzen":
                from policyengine.server._authzen import run_authzen_case
                if engine is None:
                    engine = _engine(fixture, {}, base)
                msg = run_authzen_case(engine, case)
            elif kind in ("query", "authorize", "tool_authorize"):
                if "policies" in case or "policy_paths" in case:  # the case's own policy
                    eng = _engine(fixture, case, base)
                else:
                    if engine is None:
                        engine = _engine(fixture, {}, base)
                    eng = engine
                msg = (_run_query(eng, case) if kind == "query"
                       else _run_authorize(eng, case) if kind == "authorize"
                       else _run_tool(eng, case))
            else:
                msg = f"unknown case kind {kind!r}"
        except Exception as exc:
            msg = f"raised {type(exc).__name__}: {exc}"
        results.append(CaseResult(name, label, msg is None, msg or "",
                                  time.perf_counter() - start))
    return results


def run_paths(paths: Iterable[str | Path]) -> Report:
    """Run all fixtures under the given files or directories."""
    report = Report()
    for raw in paths:
        p = Path(raw)
        # ``*.test.json`` files are users' policy tests (policyengine.testing), not fixtures
        files = (sorted(f for f in p.rglob("*.json") if not f.name.endswith(".test.json"))
                 if p.is_dir() else [p])
        for f in files:
            report.results.extend(run_fixture(f))
    return report
