"""``policyengine test`` on users' policy tests (``*.test.json``, docs/testing.md):
partial expectations, ``--run``, JUnit XML, coverage and ``--min-coverage``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine import Engine
from policyengine.cli import main
from policyengine.decide._compiled import instrument_rules
from policyengine.testing import Coverage

ROOT = Path(__file__).resolve().parents[2]

POLICY = """namespace shop
currency EUR
role buyer: shop:*
agent "bot": buyer
forbid blocked: shop:buy when context.country in ["KP"] or context.risk > 5
limit cap: shop:buy amount <= 100 EUR
permit night: shop:night when context.hour >= 22
"""


def _write(tmp_path: Path, tests: list[dict[str, Any]], **top: Any) -> Path:
    (tmp_path / "shop.policy").write_text(POLICY)
    path = tmp_path / "shop.test.json"
    path.write_text(json.dumps({"policies": ["shop.policy"], "tests": tests, **top}))
    return path


BUY_OK = {"name": "buys", "principal": "bot", "permission": "shop:buy",
          "context": {"country": "FR", "risk": 1, "amount": "20", "currency": "EUR"},
          "expect": {"status": "allowed"}}


def test_shipped_example_tests_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                   ) -> None:
    cov = tmp_path / "cov.json"
    assert main(["test", str(ROOT / "policies"), "--min-coverage", "90",
                 "--coverage-json", str(cov)]) == 0
    out = capsys.readouterr().out
    assert " 0 failed" in out and "coverage:" in out
    # every shipped policy file with rules is exercised by its own tests
    files = json.loads(cov.read_text())["files"]
    shipped = sorted(p.name for p in (ROOT / "policies").rglob("*.policy"))
    assert sorted(Path(f["file"]).name for f in files) == shipped
    assert all(f["covered"] * 10 >= f["total"] * 9 for f in files), files


def test_partial_expectation_compares_only_the_keys_given(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    over = {**BUY_OK, "name": "over the cap",
            "context": {**BUY_OK["context"], "amount": "150"},  # type: ignore[dict-item]
            "expect": {"reasonCode": "limit_exceeded", "rule": "cap"}}
    capped = {**BUY_OK, "name": "cap as obligation",
              "expect": {"obligations": {"maxAmount": "100.00"}}}
    path = _write(tmp_path, [BUY_OK, over, capped])
    assert main(["test", str(path)]) == 0
    assert "3 passed, 0 failed" in capsys.readouterr().out


@pytest.mark.parametrize(("expect", "why"), [
    ({"status": "denied"}, 'status: expected "denied", got "allowed"'),
    ({"rule": "blocked"}, 'rule: expected "blocked"'),
    ({"reasonCode": "forbidden"}, 'reasonCode: expected "forbidden", got "permitted"'),
    ({"obligations": {"maxAmount": "90.00"}}, "obligations: expected"),
    ({"rules": ["role:buyer", "shop.cap"]}, "rules: expected"),
    ({"diagnostic": "missing_attribute"}, "diagnostic: expected"),
])
def test_a_wrong_expectation_fails_and_says_why(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], expect: dict[str, Any],
        why: str) -> None:
    path = _write(tmp_path, [{**BUY_OK, "expect": expect}])
    assert main(["test", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {path} :: buys: " in out and why in out
    assert "(decision: allowed permitted" in out


def test_unknown_keys_are_refused_with_a_hint(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, [{**BUY_OK, "expect": {"reasoncode": "permitted"}}])
    assert main(["test", str(path)]) == 1
    out = capsys.readouterr().out
    assert ":: <load>: " in out and "did you mean 'reasonCode'?" in out


@pytest.mark.parametrize(("data", "why"), [
    ({"tests": []}, '"tests" must be a non-empty list'),
    ({"tests": [BUY_OK, BUY_OK]}, "repeated: buys"),
    ({"tests": [{**BUY_OK, "name": ""}]}, 'needs a "name"'),
    ({"tests": [{**BUY_OK, "expect": {}}]}, "gives nothing to compare"),
    ({"tests": [BUY_OK], "policies": ["missing.policy"]}, "does not load"),
])
def test_malformed_test_files_fail_to_load(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str],
                                           data: dict[str, Any], why: str) -> None:
    (tmp_path / "shop.policy").write_text(POLICY)
    path = tmp_path / "bad.test.json"
    path.write_text(json.dumps({"policies": ["shop.policy"], **data}))
    assert main(["test", str(path)]) == 1
    assert why in capsys.readouterr().out


def test_defaults_merge_into_each_case(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, [
        {"name": "risky", "context": {"risk": 9}, "expect": {"rule": "blocked"}},
        {"name": "fine", "expect": {"status": "allowed"}}],
        defaults={"principal": "bot", "permission": "shop:buy",
                  "context": {"country": "FR", "risk": 1, "amount": "5",
                              "currency": "EUR"}})
    assert main(["test", str(path)]) == 0
    assert "2 passed" in capsys.readouterr().out


def test_run_filters_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = {**BUY_OK, "name": "broken one", "expect": {"status": "denied"}}
    path = _write(tmp_path, [BUY_OK, broken])
    assert main(["test", str(path), "--run", "^buy"]) == 0
    assert "1 passed, 0 failed" in capsys.readouterr().out
    assert main(["test", str(path), "--run", "broken"]) == 1
    assert "0 passed, 1 failed" in capsys.readouterr().out
    assert main(["test", str(path), "--run", "nothing"]) == 1
    assert "no test name matches" in capsys.readouterr().err
    assert main(["test", str(path), "--run", "("]) == 2


def test_junit_xml(tmp_path: Path) -> None:
    broken = {**BUY_OK, "name": "broken \x01 <one>", "expect": {"status": "denied"}}
    path = _write(tmp_path, [BUY_OK, broken])
    report = tmp_path / "junit.xml"
    assert main(["test", str(path), "--junit", str(report)]) == 1
    root = ElementTree.parse(report).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "2"
    assert root.get("failures") == "1"
    (suite,) = root
    cases = {c.get("name"): c for c in suite}
    assert set(cases) == {"buys", "broken \ufffd <one>"}
    assert cases["buys"].find("failure") is None
    failure = cases["broken \ufffd <one>"].find("failure")
    assert failure is not None and "status: expected" in (failure.text or "")


def _coverage(tmp_path: Path, tests: list[dict[str, Any]]) -> dict[str, Any]:
    path = _write(tmp_path, tests)
    out = tmp_path / "cov.json"
    main(["test", str(path), "--coverage-json", str(out)])
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def test_coverage_counts_rules_branches_and_amounts(tmp_path: Path) -> None:
    data = _coverage(tmp_path, [BUY_OK])
    (f,) = data["files"]
    by = {(i["kind"], i["line"], i["column"]): i for i in f["items"]}
    # forbid blocked (line 5): never held; `country in` false, `risk > 5` false
    assert by[("rule", 5, 1)]["counts"] == {"not held": 1}
    assert by[("branch", 5, 31)]["counts"] == {"false": 1}
    assert by[("branch", 5, 31)]["missing"] == ["true"]
    assert by[("branch", 5, 60)]["counts"] == {"false": 1}
    # limit cap (line 6): held (no condition), amount within
    assert by[("rule", 6, 1)]["counts"] == {"held": 1}
    assert by[("amount", 6, 1)]["counts"] == {"within": 1}
    # permit night (line 7): never reached, so never held
    assert by[("rule", 7, 1)]["counts"] == {}
    assert by[("branch", 7, 31)]["counts"] == {}
    # rules 3 (1 held) + branches 3 x 2 (2 seen) + amount 2 (1 seen)
    assert (data["covered"], data["total"]) == (4, 11)


def test_coverage_sees_the_rules_a_cached_plan_runs_from_its_entry(tmp_path: Path) -> None:
    """A role grant and a conditional permit for that role under one pattern are one
    rule part, whose permits the plan cache keeps as tests and ids from compile time:
    instrumenting must reach those too, or the permit's outcomes go unseen."""
    (tmp_path / "late.policy").write_text(
        'namespace late\nrole owl: late:*\nagent "bot": owl\n'
        "permit night: late:* for role owl when context.hour >= 22\n")
    night = {"name": "night", "principal": "bot", "permission": "late:run",
             "context": {"hour": 23}, "expect": {"rule": "night"}}
    day = {**night, "name": "day", "context": {"hour": 9}, "expect": {"status": "allowed"}}
    path = tmp_path / "late.test.json"
    path.write_text(json.dumps({"policies": ["late.policy"], "tests": [night, day]}))
    out = tmp_path / "cov.json"
    assert main(["test", str(path), "--coverage-json", str(out)]) == 0
    items = json.loads(out.read_text())["files"][0]["items"]
    by = {(i["kind"], i["line"], i["column"]): i for i in items}
    assert by[("rule", 4, 1)]["counts"] == {"held": 1, "not held": 1}
    assert by[("branch", 4, 40)]["counts"] == {"true": 1, "false": 1}


def test_coverage_short_circuit_and_errors(tmp_path: Path) -> None:
    kp = {**BUY_OK, "name": "kp", "context": {"country": "KP", "risk": 1},
          "expect": {"rule": "blocked"}}
    no_risk = {**BUY_OK, "name": "no risk", "context": {"country": "FR"},
               "expect": {"status": "denied", "diagnostic": "missing_attribute"}}
    data = _coverage(tmp_path, [kp, no_risk])
    by = {(i["kind"], i["line"], i["column"]): i for i in data["files"][0]["items"]}
    assert by[("branch", 5, 31)]["counts"] == {"false": 1, "true": 1}
    # `risk > 5` is skipped when KP already holds, and errors without a risk
    assert by[("branch", 5, 60)]["counts"] == {"error": 1}
    assert by[("rule", 5, 1)]["counts"] == {"error": 1, "held": 1}


def test_min_coverage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, [BUY_OK])
    assert main(["test", str(path), "--min-coverage", "36"]) == 0  # 4/11 = 36.4%
    out = capsys.readouterr().out
    assert "coverage: 4/11 (36.4%)" in out
    assert "!!    7:1   permit shop.night" in out
    assert main(["test", str(path), "--min-coverage", "37"]) == 1
    assert "below --min-coverage 37%" in capsys.readouterr().out
    assert main(["test", str(path), "--min-coverage", "101"]) == 2


def test_conformance_fixtures_still_run_beside_tests(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fixture = ROOT / "conformance" / "core" / "scopes.json"
    (tmp_path / "scopes.json").write_text(fixture.read_text())
    _write(tmp_path, [BUY_OK])
    n = len(json.loads(fixture.read_text())["cases"])
    assert main(["test", str(tmp_path)]) == 0
    assert f"{n + 1} passed, 0 failed" in capsys.readouterr().out
    first = json.loads(fixture.read_text())["cases"][0]["name"]
    assert main(["test", str(tmp_path), "--run", f"^{first}$"]) == 0
    assert "1 passed, 0 failed" in capsys.readouterr().out


@settings(max_examples=60, deadline=None)
@given(country=st.sampled_from(["FR", "KP", 3, None]),
       risk=st.one_of(st.integers(-3, 9), st.just("x")),
       hour=st.one_of(st.integers(0, 23), st.just(True)),
       amount=st.sampled_from(["5", "100", "100.01", "-1", "x", None]),
       permission=st.sampled_from(["shop:buy", "shop:night", "other:x"]))
def test_instrumented_rules_decide_exactly_as_plain_ones(
        country: Any, risk: Any, hour: Any, amount: Any, permission: str) -> None:
    context: dict[str, Any] = {"country": country, "risk": risk, "hour": hour}
    if amount is not None:
        context.update(amount=amount, currency="EUR")
    context = {k: v for k, v in context.items() if v is not None}
    plain = Engine.from_source(POLICY)
    probed = Engine.from_source(POLICY)
    instrument_rules(probed.policy, Coverage().sink())
    want = plain.authorize("bot", permission, context).to_wire()
    got = probed.authorize("bot", permission, context).to_wire()
    for wire in (want, got):
        wire.pop("decisionId")
    assert got == want


def test_a_json_file_that_is_no_object_fails_to_load(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "table.json").write_text("[1, 2]")
    assert main(["test", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "table.json :: <load>: a fixture is a JSON object" in out


def _tested_and_untested(root: Path) -> None:
    """``a/`` fully covered by its test file, ``b/`` a policy no test loads, ``c/`` two
    files of which one only compiles with its neighbour (it names the neighbour's role)."""
    (root / "a").mkdir()
    (root / "a" / "a.policy").write_text(
        'role r: docs:*\nagent "bot": r\nforbid f: docs:write when context.level > 2\n')
    (root / "a" / "a.test.json").write_text(json.dumps({"tests": [
        {"name": "high", "principal": "bot", "permission": "docs:write",
         "context": {"level": 3}, "expect": {"status": "denied"}},
        {"name": "low", "principal": "bot", "permission": "docs:write",
         "context": {"level": 1}, "expect": {"status": "allowed"}}]}))
    (root / "b").mkdir()
    (root / "b" / "b.policy").write_text(
        'role s: pay:*\nagent "payer": s\nforbid g: pay:send when context.country == "KP"\n')


def test_a_policy_file_no_test_loads_counts_as_never_exercised(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _tested_and_untested(tmp_path)
    assert main(["test", str(tmp_path / "a"), "--min-coverage", "90"]) == 0
    assert "coverage: 3/3 (100.0%)" in capsys.readouterr().out
    # b's forbid (1 rule, 1 atom: 3 items) was never run: 3 of 6, and the run fails
    assert main(["test", str(tmp_path), "--min-coverage", "90"]) == 1
    out = capsys.readouterr().out
    assert "2 passed, 0 failed" in out
    assert "b.policy: 0/3 (0.0%)" in out
    assert "!!    3:1   forbid default.g  [never run]  -- never held" in out
    assert "coverage: 3/6 (50.0%)" in out and "below --min-coverage 90%" in out
    data_path = tmp_path / "cov.json"
    assert main(["test", str(tmp_path), "--coverage-json", str(data_path)]) == 0
    data = json.loads(data_path.read_text())
    assert (data["covered"], data["total"]) == (3, 6)
    [b] = [f for f in data["files"] if f["file"].endswith("b.policy")]
    assert [(i["kind"], i["line"], i["missing"]) for i in b["items"]] == [
        ("rule", 3, ["held"]), ("branch", 3, ["true", "false"])]


def test_an_untested_file_compiles_with_its_neighbours_or_fails_the_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _tested_and_untested(tmp_path)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "roles.policy").write_text('role clerk: refund:*\nagent "k": clerk\n')
    (tmp_path / "c" / "rules.policy").write_text(
        "permit small: refund:send for role clerk when context.n < 3\n")
    assert main(["test", str(tmp_path), "--coverage"]) == 0
    out = capsys.readouterr().out
    assert "rules.policy: 0/3 (0.0%)" in out and "coverage: 3/9 (33.3%)" in out
    (tmp_path / "c" / "broken.policy").write_text("permit oops: \n")
    assert main(["test", str(tmp_path), "--coverage"]) == 1
    out = capsys.readouterr().out
    assert "broken.policy :: <coverage>: no test loads this policy and it does not load" in out
    # without coverage nothing is counted, so nothing needs to compile
    assert main(["test", str(tmp_path)]) == 0


COUNTED = """namespace c
role r: shop:*
agent "bot": r
tool look: mcp "look" -> shop:tool
ratelimit people: shop:look 1 per hour burst 1 per acting_for
ratelimit tools: shop:tool 1 per hour burst 1 per acting_for
ratelimit runs: shop:run 1 per hour burst 1 per context.run_id
"""


def test_a_test_may_set_the_partition_and_acting_for(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``partition`` and ``acting_for`` are request keys, passed as ``authorize`` and
    ``tool_authorize`` take them: the file's tests share one engine, so its counters
    count per partition and per person exactly as the engine's."""
    (tmp_path / "c.policy").write_text(COUNTED)
    alice, bob = "tenant:acme/user_id:alice", "tenant:acme/user_id:bob"
    ok, limited = {"status": "allowed"}, {"reasonCode": "rate_limited"}
    run = {"permission": "shop:run", "context": {"run_id": "r-1"}}
    look = {"transport": "mcp", "tool_name": "look"}
    tests = [
        {"name": "alice", "permission": "shop:look", "acting_for": alice, "expect": ok},
        {"name": "alice again", "permission": "shop:look", "acting_for": alice,
         "expect": limited},
        {"name": "bob", "permission": "shop:look", "acting_for": bob, "expect": ok},
        {"name": "the agent", "permission": "shop:look", "expect": ok},
        {"name": "the agent named", "permission": "shop:look", "acting_for": "bot",
         "expect": limited},
        {"name": "tool alice", "tool": look, "acting_for": alice, "expect": ok},
        {"name": "tool alice again", "tool": look, "acting_for": alice,
         "expect": limited},
        {"name": "tool bob", "tool": look, "acting_for": bob, "expect": ok},
        {"name": "acme", **run, "expect": ok},
        {"name": "acme again", **run, "expect": limited},
        {"name": "globex", **run, "partition": "globex", "expect": ok},
        {"name": "the empty tenant", **run, "partition": "", "expect": ok},
        {"name": "none", **run, "partition": None, "expect": ok},
        {"name": "none again", **run, "partition": None, "expect": limited},
    ]
    path = tmp_path / "c.test.json"
    path.write_text(json.dumps({"policies": ["c.policy"], "tests": tests,
                                "defaults": {"principal": "bot", "partition": "acme"}}))
    assert main(["test", str(path)]) == 0, capsys.readouterr().out
    assert f"{len(tests)} passed, 0 failed" in capsys.readouterr().out


@pytest.mark.parametrize(("where", "key", "value", "why"), [
    ("test", "partition", 7, '"partition" must be a string'),
    ("test", "partition", ["acme"], '"partition" must be a string'),
    ("defaults", "partition", False, '"partition" must be a string'),
    ("test", "acting_for", "", '"acting_for" must be a non-empty string'),
    ("test", "acting_for", 7, '"acting_for" must be a non-empty string'),
    ("defaults", "acting_for", {"a": 1}, '"acting_for" must be a non-empty string'),
    ("test", "partition_agent", "yes", '"partition_agent" must be true, false or null'),
    ("test", "partition_agent", 1, '"partition_agent" must be true, false or null'),
    ("defaults", "partition_agent", [], '"partition_agent" must be true, false or null'),
    ("test", "partition_agent", True, '"partition_agent" needs a "partition"'),
    ("defaults", "partition_agent", True, '"partition_agent" needs a "partition"'),
])
def test_a_wrong_partition_partition_agent_or_acting_for_is_the_files_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, key: str,
        value: Any, why: str) -> None:
    """Checked as the engine checks them, but a wrong one is the test file's error
    (``invalid_test_file``, the file's ``<load>``), not an ``invalid_request`` decision a
    test could expect by mistake."""
    case = {**BUY_OK, key: value} if where == "test" else BUY_OK
    top = {"defaults": {key: value}} if where == "defaults" else {}
    path = _write(tmp_path, [case], **top)
    assert main(["test", str(path)]) == 1
    out = capsys.readouterr().out
    assert ":: <load>: " in out and why in out and "invalid_test_file" in out, out


def test_a_tool_call_gets_partition_beside_or_in_tool_not_both(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.policy").write_text(COUNTED)
    look = {"transport": "mcp", "tool_name": "look", "acting_for": "alice"}
    path = tmp_path / "c.test.json"
    path.write_text(json.dumps({"policies": ["c.policy"], "tests": [
        {"name": "in tool", "principal": "bot", "tool": look,
         "expect": {"status": "allowed"}},
        {"name": "both", "principal": "bot", "tool": look, "acting_for": "bob",
         "expect": {"status": "allowed"}}]}))
    assert main(["test", str(path)]) == 1
    out = capsys.readouterr().out
    assert "1 passed, 1 failed" in out and 'acting_for: give it beside "tool"' in out, out


def test_a_test_may_set_partition_agent(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """``partition_agent`` is passed as ``authorize`` takes it: the principal is counted
    in the partition too (``per acting_for`` of an agent acting for nobody is the agent:
    ``tenant:acme/agent:bot``), so each partition has its own counter beside the agent's
    own, which ``false`` or ``null`` counts. A default ``true`` is set back by a tool
    call's ``null`` (tool_authorize takes none)."""
    (tmp_path / "c.policy").write_text(COUNTED)
    ok, limited = {"status": "allowed"}, {"reasonCode": "rate_limited"}
    look = {"permission": "shop:look"}
    tests = [
        {"name": "acme's bot", **look, "expect": ok},
        {"name": "acme's bot again", **look, "expect": limited},
        {"name": "globex's bot", **look, "partition": "globex", "expect": ok},
        {"name": "the agent bot", **look, "partition_agent": False, "expect": ok},
        {"name": "the agent bot again", **look, "partition_agent": None,
         "expect": limited},
        {"name": "the agent bot in globex", **look, "partition": "globex",
         "partition_agent": False, "expect": limited},
        {"name": "a tool call", "tool": {"transport": "mcp", "tool_name": "look"},
         "partition_agent": None, "expect": ok},
    ]
    path = tmp_path / "c.test.json"
    path.write_text(json.dumps({"policies": ["c.policy"], "tests": tests, "defaults": {
        "principal": "bot", "partition": "acme", "partition_agent": True}}))
    assert main(["test", str(path)]) == 0, capsys.readouterr().out
    assert f"{len(tests)} passed, 0 failed" in capsys.readouterr().out


def test_partition_agent_on_a_tool_call_is_the_files_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``tool_authorize`` takes no ``partition_agent``: a tool test with it (its own or
    the defaults') fails to load rather than be decided without it."""
    (tmp_path / "c.policy").write_text(COUNTED)
    path = tmp_path / "c.test.json"
    path.write_text(json.dumps({"policies": ["c.policy"], "tests": [
        {"name": "tool", "tool": {"transport": "mcp", "tool_name": "look"},
         "expect": {"status": "allowed"}}],
        "defaults": {"principal": "bot", "partition": "acme", "partition_agent": True}}))
    assert main(["test", str(path)]) == 1
    out = capsys.readouterr().out
    assert (':: <load>: ' in out and 'tests[0] (tool): "partition_agent" is for a request '
            'with a "permission", not a "tool" call' in out and "invalid_test_file" in out), out
