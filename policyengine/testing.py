"""Policy tests users write: ``*.test.json`` files beside their ``.policy`` files.

``policyengine test PATH`` runs them (and the conformance fixtures, every other
``*.json``). A test file names its policies, then lists named cases, each a request and
a *partial* expectation: only the keys the case gives are compared (``status``,
``reasonCode``, a ``rule`` that must have decided, ``obligations`` ...). docs/testing.md
is the reference of the format; this module is its implementation, with ``--run``
filtering, JUnit XML and coverage of rules and condition branches.

Coverage compiles the policy's conditions a second time with a recorder around each
rule's guard and each atom of its conditions (:func:`~policyengine.decide._compiled.
instrument_rules`), only when asked: the engine's own code is never instrumented.
"""

from __future__ import annotations

import difflib
import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from policyengine._conformance import CaseResult, parse_now
from policyengine._visible import one_line
from policyengine.decision import acting_for_problem
from policyengine.errors import PolicyEngineError

__all__ = ["TEST_SUFFIX", "Coverage", "TestFileError", "add_untested_policies",
           "checked_test_data", "is_test_file", "junit_xml", "run_test_file", "run_tests"]

#: The file name ending that makes a JSON file a policy test file (not a fixture).
TEST_SUFFIX = ".test.json"

_FILE_KEYS = frozenset({"description", "policies", "now", "defaults", "tests"})
_REQUEST_KEYS = frozenset({"principal", "permission", "context", "tool", "partition",
                           "partition_agent", "acting_for"})
_CASE_KEYS = _REQUEST_KEYS | {"name", "expect"}
_EXPECT_KEYS = frozenset({"status", "allowed", "reasonCode", "rule", "rules", "obligations",
                          "diagnostic", "permission", "tool", "body", "shadow"})
_OBLIGATION_KEYS = frozenset({"maxAmount", "requireApprovalOver", "redactFields",
                              "currency"})


class TestFileError(PolicyEngineError, ValueError):
    """``invalid_test_file``: a test file that does not follow the format (reported as
    the file's failed ``<load>``)."""

    __test__ = False  # not a pytest test class

    def __init__(self, message: str) -> None:
        super().__init__("invalid_test_file", message)


def is_test_file(path: Path) -> bool:
    return path.name.endswith(TEST_SUFFIX)


def _unknown(keys: Iterable[str], known: frozenset[str], where: str) -> None:
    for key in keys:
        if key not in known:
            near = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise TestFileError(f"{where}: unknown key {key!r}{hint}; known: "
                                f"{', '.join(sorted(known))}")


def _counting(request: dict[str, Any], where: str) -> None:
    """A request's ``partition``, ``partition_agent`` and ``acting_for``, checked as the
    engine checks them (docs/engine.md, "Partitions"): a string (``""`` is the empty
    tenant's partition), a boolean, and what ``acting_for`` may be without a token
    (:func:`~policyengine.decision.acting_for_problem`, the engine's own check), each or
    null (none). A wrong one is the file's error, not a decision: the test would
    otherwise pass on ``invalid_request`` it did not mean."""
    partition = request.get("partition")
    if partition is not None and type(partition) is not str:
        raise TestFileError(f"{where}: \"partition\" must be a string (\"\" is the empty "
                            f"tenant's) or null, not {json.dumps(partition, default=str)}")
    agent = request.get("partition_agent")
    if agent is not None and type(agent) is not bool:
        raise TestFileError(f"{where}: \"partition_agent\" must be true, false or null, "
                            f"not {json.dumps(agent, default=str)}")
    acting_for = request.get("acting_for")
    if acting_for is not None and acting_for_problem(acting_for, None) is not None:
        raise TestFileError(f"{where}: \"acting_for\" must be a non-empty string or null, "
                            f"not {json.dumps(acting_for, default=str)}")


def _partition_agent(request: dict[str, Any], where: str) -> None:
    """A request (its test's keys over the defaults) with ``partition_agent: true`` names
    a partition and is an ``authorize`` request, as the engine takes it: without a
    partition the engine answers ``invalid_request``, and ``tool_authorize`` takes no
    ``partition_agent`` (the AuthZEN wire, which sets it, asks ``authorize``). Either is
    the file's error, not a decision a test could expect by mistake."""
    if request.get("partition_agent") is not True:
        return
    if request.get("partition") is None:
        raise TestFileError(f"{where}: \"partition_agent\" needs a \"partition\" (the "
                            "tenant the principal is counted in)")
    if "tool" in request:
        raise TestFileError(f"{where}: \"partition_agent\" is for a request with a "
                            "\"permission\", not a \"tool\" call (tool_authorize takes none)")


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TestFileError(f"{where} must be a JSON object")
    return value


# ---- coverage ---------------------------------------------------------------------------

@dataclass
class _Outcomes:
    """One thing that can come out several ways, and how often each way did."""

    file: str
    line: int
    column: int
    text: str
    rule: str
    counts: dict[str, int] = field(default_factory=dict)

    def note(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1


class Coverage:
    """Which rules held and which condition branches went which way, over every test
    run with it. Rules held at least once count one item each; each atom of a
    condition counts two (seen true, seen false); a ``limit`` / ``approval ... over``
    counts two more (the amount over, within)."""

    def __init__(self) -> None:
        self.rules: dict[tuple[str, int, int, str], _Outcomes] = {}
        self.branches: dict[tuple[str, int, int, str], _Outcomes] = {}
        self.amounts: dict[tuple[str, int, int, str], _Outcomes] = {}
        #: Per rule key, whether its guard held in the request being decided now.
        self._now: dict[tuple[str, int, int, str], bool] = {}
        self._amount_rules: dict[tuple[str, int, int, str], str] = {}  # key -> qid
        self._shadow_rules: set[tuple[str, int, int, str]] = set()  # mode warn / log

    # -- what instrument_rules calls (a CoverageSink)
    def sink(self) -> Any:
        from policyengine.decide._compiled import CoverageSink

        cov = self

        class _Sink(CoverageSink):
            def rule(self, rule: Any) -> Callable[[Callable[[], Any]], Any]:
                return cov._rule_recorder(rule)

            def branch(self, rule: Any, expr: Any, text: str
                       ) -> Callable[[Callable[[], Any]], Any]:
                return cov._branch_recorder(rule, expr, text)

        return _Sink()

    def _rule_recorder(self, rule: Any) -> Callable[[Callable[[], Any]], Any]:
        span = rule.span
        key = (_display(span.file), span.line, span.column, rule.qid)
        what = {"limit": "limit", "approval_over": "approval over"}.get(rule.kind, rule.effect)
        entry = self.rules.setdefault(key, _Outcomes(key[0], span.line, span.column,
                                                     f"{what} {rule.qid}", rule.qid))
        if rule.kind in ("limit", "approval_over"):
            self._amount_rules[key] = rule.qid
            if rule.mode != "enforce":
                self._shadow_rules.add(key)
            self.amounts.setdefault(key, _Outcomes(key[0], span.line, span.column,
                                                   f"amount vs {rule.qid}", rule.qid))
        now = self._now

        def record(thunk: Callable[[], Any]) -> Any:
            try:
                value = thunk()
            except BaseException:
                entry.note("error")
                now[key] = False
                raise
            entry.note("held" if value is True else "not held")
            now[key] = value is True
            return value
        return record

    def _branch_recorder(self, rule: Any, expr: Any, text: str
                         ) -> Callable[[Callable[[], Any]], Any]:
        span = expr.span
        key = (_display(span.file), span.line, span.column, rule.qid)
        entry = self.branches.setdefault(key, _Outcomes(key[0], span.line, span.column,
                                                        text, rule.qid))

        def record(thunk: Callable[[], Any]) -> Any:
            try:
                value = thunk()
            except BaseException:
                entry.note("error")
                raise
            entry.note("true" if value else "false")
            return value
        return record

    # -- around each decision
    def begin(self) -> None:
        self._now.clear()

    def decided(self, wire: dict[str, Any]) -> None:
        """After a decision: the amount branch of each limit / approval-over rule whose
        guard held in this request, read from the decision (over: the rule decided;
        within: it did not, and nothing but the rules decided)."""
        rules = wire.get("rules") or []
        diag_rules = {d.get("rule") for d in wire.get("diagnostics") or ()}
        shadow = {s["id"]: s["code"] for s in wire.get("shadowAll") or ()}
        for key, qid in self._amount_rules.items():
            if not self._now.get(key):
                continue
            entry = self.amounts[key]
            if key in self._shadow_rules:  # reported, never deciding: read its outcome
                code = shadow.get(qid)
                entry.note("within" if code is None else "over" if code in (
                    "limit_exceeded", "approval_required") else "error")
            elif qid in diag_rules:
                entry.note("error")
            elif qid in rules:
                entry.note("over")
            elif (wire.get("status") in ("allowed", "pending_approval")
                  or wire.get("reasonCode") in ("forbidden", "limit_exceeded", "no_permit")):
                entry.note("within")

    # -- policy files no test loads
    def files(self) -> set[str]:
        """The policy files (as the report names them) with at least one item."""
        return {key[0] for table in (self.rules, self.branches, self.amounts)
                for key in table}

    def add_unexercised(self, policy: Any, files: Iterable[str] | None = None) -> None:
        """Count the rules, branches and amount checks of ``policy`` (a compiled policy,
        instrumented here and not used for decisions afterwards) as never exercised,
        where no test has counted them yet: a policy file under the tested path that no
        test file loads is uncovered, not absent from the total. With ``files``, only
        the items of those files are added (the others were loaded only so that these
        compile)."""
        from policyengine.decide._compiled import instrument_rules
        scratch = Coverage()
        instrument_rules(policy, scratch.sink())
        wanted = None if files is None else {_display(f) for f in files}
        for mine, theirs in ((self.rules, scratch.rules), (self.branches, scratch.branches),
                             (self.amounts, scratch.amounts)):
            for key, entry in theirs.items():
                if wanted is None or key[0] in wanted:
                    mine.setdefault(key, entry)

    # -- the report
    def items(self) -> tuple[int, int]:
        """(covered, total) over rules, branch outcomes and amount outcomes."""
        covered = sum(1 for r in self.rules.values() if r.counts.get("held"))
        total = len(self.rules)
        for b in self.branches.values():
            covered += bool(b.counts.get("true")) + bool(b.counts.get("false"))
            total += 2
        for a in self.amounts.values():
            covered += bool(a.counts.get("over")) + bool(a.counts.get("within"))
            total += 2
        return covered, total

    def percent(self) -> float:
        covered, total = self.items()
        return 100.0 if total == 0 else 100.0 * covered / total

    def to_dict(self) -> dict[str, Any]:
        files: dict[str, dict[str, Any]] = {}
        for kind, table, wanted in (("rule", self.rules, ("held",)),
                                    ("branch", self.branches, ("true", "false")),
                                    ("amount", self.amounts, ("over", "within"))):
            for o in table.values():
                f = files.setdefault(o.file, {"file": o.file, "items": []})
                f["items"].append({
                    "kind": kind, "line": o.line, "column": o.column, "rule": o.rule,
                    "text": o.text, "counts": dict(sorted(o.counts.items())),
                    "missing": [w for w in wanted if not o.counts.get(w)]})
        out = []
        for name in sorted(files):
            f = files[name]
            f["items"].sort(key=lambda i: (i["line"], i["column"], i["kind"] != "rule"))
            items = f["items"]
            want = sum(1 if i["kind"] == "rule" else 2 for i in items)
            missing = sum(len(i["missing"]) for i in items)
            f["covered"], f["total"] = want - missing, want
            out.append(f)
        covered, total = self.items()
        return {"covered": covered, "total": total, "percent": round(self.percent(), 1),
                "files": out}

    def render(self) -> str:
        """Per file, line by line: what was exercised and what was not."""
        data = self.to_dict()
        lines = []
        for f in data["files"]:
            pct = 100.0 if f["total"] == 0 else 100.0 * f["covered"] / f["total"]
            lines.append(f"{one_line(f['file'])}: {f['covered']}/{f['total']} ({pct:.1f}%)")
            for i in f["items"]:
                counts = ", ".join(f"{k} {v}" for k, v in i["counts"].items()) or "never run"
                mark = "  " if not i["missing"] else "!!"
                missing = f"  -- never {', '.join(i['missing'])}" if i["missing"] else ""
                lead = "" if i["kind"] == "rule" else "    "
                lines.append(f"  {mark} {i['line']:>4}:{i['column']:<3} {lead}{i['text']}"
                             f"  [{counts}]{missing}")
        lines.append(f"coverage: {data['covered']}/{data['total']} ({data['percent']}%) "
                     "of rules held, condition branches and amount checks")
        return "\n".join(lines)


def _display(name: str) -> str:
    """A policy file's name as the report shows it: relative to the working directory
    when it is below it."""
    p = Path(name)
    try:
        return p.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except (ValueError, OSError):
        return p.as_posix()


# ---- running ----------------------------------------------------------------------------

def _rule_matches(decided: str, wanted: str) -> bool:
    """``travel.weekday-booking`` is named by itself or by ``weekday-booking``."""
    return decided == wanted or decided.endswith("." + wanted)


def compare_partial(wire: dict[str, Any], expect: dict[str, Any]) -> str | None:
    """None when every key ``expect`` gives matches the wire decision, else why not."""
    problems = []
    rules = wire.get("rules") or []
    for key, want in expect.items():
        if key == "rule":
            ok = any(_rule_matches(r, want) for r in rules)
            got: Any = rules
        elif key == "rules":
            ok = len(rules) == len(want) and all(_rule_matches(r, w)
                                                 for r, w in zip(rules, want, strict=True))
            got = rules
        elif key == "diagnostic":
            got = [d.get("code") for d in wire.get("diagnostics") or ()]
            ok = want in got
        elif key == "shadow":  # the shadow statements that would have acted, any mode
            got = [s["id"] for s in wire.get("shadowAll") or ()]
            ok = (isinstance(want, list) and len(got) == len(want)
                  and all(_rule_matches(g, w) for g, w in zip(got, want, strict=True)))
        elif key == "obligations" and isinstance(want, dict):
            got = wire.get("obligations")
            ok = isinstance(got, dict) and all(got.get(k) == v for k, v in want.items())
        else:
            got = wire.get(key, "<missing>")
            ok = got == want
        if not ok:
            problems.append(f"{key}: expected {json.dumps(want, default=str)}, got "
                            f"{json.dumps(got, default=str)}")
    if problems:
        problems.append(f"(decision: {wire.get('status')} {wire.get('reasonCode')}: "
                        f"{wire.get('reason')})")
    return "; ".join(problems) or None


def _check_case(case: Any, i: int) -> dict[str, Any]:
    where = f"tests[{i}]"
    checked = _object(case, where)
    case = checked
    _unknown(case, _CASE_KEYS, where)
    name = case.get("name")
    if not isinstance(name, str) or not name:
        raise TestFileError(f"{where}: every test needs a \"name\" (a non-empty string)")
    expect = _object(case.get("expect"), f"{where} ({name}): \"expect\"")
    if not expect:
        raise TestFileError(f"{where} ({name}): \"expect\" gives nothing to compare")
    _unknown(expect, _EXPECT_KEYS, f"{where} ({name}): expect")
    _counting(case, f"{where} ({name})")
    ob = expect.get("obligations")
    if isinstance(ob, dict):
        _unknown(ob, _OBLIGATION_KEYS, f"{where} ({name}): expect.obligations")
    return checked


def _load(path: Path) -> dict[str, Any]:
    try:
        from policyengine import _json as strict_json
        raw: Any = strict_json.loads(path.read_text("utf-8"), decimal=True)
    except (OSError, UnicodeError) as exc:
        raise TestFileError(f"cannot read: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise TestFileError(f"not valid JSON: {exc}") from None
    return checked_test_data(raw)


def checked_test_data(raw: Any) -> dict[str, Any]:
    """A test file's content (parsed JSON) checked against the format; raises
    :class:`TestFileError` naming what is wrong."""
    data = dict(_object(raw, "a test file"))
    _unknown(data, _FILE_KEYS, "the test file")
    tests = data.get("tests")
    if not isinstance(tests, list) or not tests:
        raise TestFileError("\"tests\" must be a non-empty list")
    cases = [_check_case(c, i) for i, c in enumerate(tests)]
    names = [c["name"] for c in cases]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TestFileError(f"test names must be unique; repeated: {', '.join(dupes)}")
    data["tests"] = cases
    defaults = _object(data.get("defaults", {}), "\"defaults\"")
    _unknown(defaults, _REQUEST_KEYS, "defaults")
    _counting(defaults, "defaults")
    for i, case in enumerate(cases):
        _partition_agent(_request(case, defaults), f"tests[{i}] ({case['name']})")
    return data


def _engine(data: dict[str, Any], base: Path) -> Any:
    from policyengine.engine import Engine
    policies = data.get("policies", ["."])
    if (not isinstance(policies, list) or not policies
            or not all(isinstance(p, str) for p in policies)):
        raise TestFileError("\"policies\" must be a non-empty list of paths (relative to "
                            "the test file)")
    options: dict[str, Any] = {"base_dir": str(base)}
    if "now" in data:
        try:
            now = parse_now(data["now"])
        except (ValueError, TypeError, AttributeError) as exc:
            raise TestFileError(f"\"now\": {exc}") from None
        options["clock"] = lambda: now
    return Engine.from_path(*(str(base / p) for p in policies), **options)


def _request(case: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    req = {k: v for k, v in defaults.items() if k in _REQUEST_KEYS}
    for key in _REQUEST_KEYS:
        if key in case:
            req[key] = case[key]
    if isinstance(defaults.get("context"), dict) and isinstance(case.get("context"), dict):
        req["context"] = {**defaults["context"], **case["context"]}
    return req


def _decide(engine: Any, req: dict[str, Any]) -> dict[str, Any]:
    if "tool" in req:
        call = _object(req["tool"], "\"tool\"")
        given = {k: req[k] for k in ("partition", "acting_for") if k in req}
        twice = sorted(set(given) & set(call))
        if twice:
            raise TestFileError(f"{', '.join(twice)}: give it beside \"tool\" or in it, "
                                "not both")
        result = engine.tool_authorize(req.get("principal"), context=req.get("context"),
                                       **given, **call)
        wire: dict[str, Any] = result.to_wire()
        wire["body"] = result.body
        wire["shadowAll"] = [s.to_wire() for s in result.shadow]
        return wire
    decision = engine.authorize(req.get("principal"), req.get("permission"),
                                req.get("context"), partition=req.get("partition"),
                                partition_agent=req.get("partition_agent") is True,
                                acting_for=req.get("acting_for"))
    out: dict[str, Any] = decision.to_wire()
    # in process, a test sees mode log outcomes too (the wire carries mode warn only)
    out["shadowAll"] = [s.to_wire() for s in decision.shadow]
    return out


def run_test_file(path: Path, run: re.Pattern[str] | None = None,
                  coverage: Coverage | None = None) -> list[CaseResult]:
    """Run the tests of one ``*.test.json`` file (those whose name ``run`` finds)."""
    from policyengine.lang._source import PolicyError
    name = str(path)
    start = time.perf_counter()
    try:
        data = _load(path)
        engine = _engine(data, path.parent)
    except TestFileError as exc:
        return [CaseResult(name, "<load>", False, str(exc))]
    except PolicyError as err:
        return [CaseResult(name, "<load>", False, f"the policy does not load:\n{err.render()}")]
    return run_tests(data, engine, name, run, coverage, time.perf_counter() - start)


def run_tests(data: dict[str, Any], engine: Any, name: str,
              run: re.Pattern[str] | None = None, coverage: Coverage | None = None,
              load_time: float = 0.0) -> list[CaseResult]:
    """Run checked test data (:func:`checked_test_data`) against ``engine``; with
    ``coverage``, the engine's rules are instrumented first."""
    if coverage is not None:
        from policyengine.decide._compiled import instrument_rules
        instrument_rules(engine.policy, coverage.sink())
    defaults = data.get("defaults", {})
    results = []
    for case in data["tests"]:
        label = case["name"]
        if run is not None and run.search(label) is None:
            continue
        t0 = time.perf_counter()
        try:
            if coverage is not None:
                coverage.begin()
            wire = _decide(engine, _request(case, defaults))
            if coverage is not None:
                coverage.decided(wire)
            msg = compare_partial(wire, case["expect"])
        except TestFileError as exc:
            msg = str(exc)
        except Exception as exc:
            msg = f"raised {type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - t0 + load_time
        load_time = 0.0
        results.append(CaseResult(name, label, msg is None, msg or "", elapsed))
    return results


def add_untested_policies(coverage: Coverage, policy_files: Iterable[Path]
                          ) -> list[CaseResult]:
    """Count every policy file of ``policy_files`` that no test loaded as never exercised
    (:meth:`Coverage.add_unexercised`), so that an untested file lowers the total
    instead of vanishing from it. A file is compiled alone, or, when it does not compile
    alone (it names roles or settings of its neighbours), with every policy file of its
    directory, as a test file beside it would load it. One that compiles neither way
    cannot be counted: it is reported as a failure (``<coverage>``), never skipped."""
    from policyengine.engine import Engine
    from policyengine.lang._source import PolicyError
    failures = []
    seen = coverage.files()
    for path in policy_files:
        if _display(str(path)) in seen:
            continue
        try:
            engine = Engine.from_path(str(path))
        except PolicyError:
            try:
                engine = Engine.from_path(str(path.parent))
            except PolicyError as err:
                failures.append(CaseResult(
                    str(path), "<coverage>", False,
                    "no test loads this policy and it does not load, so its rules cannot "
                    f"be counted:\n{err.render()}"))
                continue
        coverage.add_unexercised(engine.policy, [str(path)])
        seen = coverage.files()
    return failures


def junit_xml(results: Sequence[CaseResult]) -> str:
    """JUnit XML: one ``testsuite`` per file, one ``testcase`` per case."""
    suites: dict[str, list[CaseResult]] = {}
    for r in results:
        suites.setdefault(r.fixture, []).append(r)
    root = ElementTree.Element("testsuites", {
        "name": "policyengine", "tests": str(len(results)),
        "failures": str(sum(not r.passed for r in results)),
        "time": f"{sum(r.time for r in results):.6f}"})
    for fixture, cases in suites.items():
        suite = ElementTree.SubElement(root, "testsuite", {
            "name": _xml_text(fixture), "tests": str(len(cases)),
            "failures": str(sum(not r.passed for r in cases)), "errors": "0",
            "skipped": "0", "time": f"{sum(r.time for r in cases):.6f}"})
        for r in cases:
            case = ElementTree.SubElement(suite, "testcase", {
                "classname": _xml_text(fixture), "name": _xml_text(r.case),
                "time": f"{r.time:.6f}"})
            if not r.passed:
                failure = ElementTree.SubElement(case, "failure", {
                    "message": _xml_text(r.message.splitlines()[0] if r.message
                                         else "failed"),
                    "type": "AssertionError"})
                failure.text = _xml_text(r.message)
    ElementTree.indent(root)
    text: str = ElementTree.tostring(root, encoding="unicode", xml_declaration=True)
    return text + "\n"


_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: str) -> str:
    """``text`` without the characters XML 1.0 cannot hold (a control character in a
    test name would make the whole report unreadable)."""
    return _NOT_XML.sub("\ufffd", text)
