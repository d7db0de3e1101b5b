"""Run every ``conformance/budgets/*.json`` case through ``run_budget_case``, on every
store: the fixture's policies are compiled by the engine (the language, not a shim) and
its ledger is built over the store under test.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import STORE_KINDS, SharedStores, open_store

from policyengine import Engine
from policyengine.budgets import Ledger
from policyengine.budgets._conformance import run_budget_case

FIXTURES = sorted((Path(__file__).resolve().parents[2] / "conformance" / "budgets").glob("*.json"))


def _cases() -> list[Any]:
    params = []
    for path in FIXTURES:
        doc = json.loads(path.read_text())
        for case in doc["cases"]:
            params.append(pytest.param(doc, case, id=f"{path.stem}: {case['name']}"))
    return params


def test_enough_budget_cases() -> None:
    total = sum(len(json.loads(p.read_text())["cases"]) for p in FIXTURES)
    assert total >= 45
    for path in FIXTURES:
        doc = json.loads(path.read_text())
        assert set(doc) >= {"name", "description", "now", "policies", "cases"}
        assert all(c["kind"] == "budget" for c in doc["cases"])


def _factory(
    doc: dict[str, Any], store: str, tmp_path: Path, shared: SharedStores
) -> Callable[..., Engine]:
    def build(clock: Callable[[], float]) -> Engine:
        backend = open_store(store, tmp_path, shared)
        engine = Engine.from_sources(doc["policies"], budget_store=backend, clock=clock)
        assert isinstance(engine.budgets, Ledger)
        return engine  # authorize steps run the whole pipeline

    return build


@pytest.mark.parametrize("kind", STORE_KINDS)
@pytest.mark.parametrize(("doc", "case"), _cases())
def test_case(doc: dict[str, Any], case: dict[str, Any], kind: str, tmp_path: Path,
              shared_stores: SharedStores) -> None:
    factory = _factory(doc, kind, tmp_path, shared_stores)
    assert run_budget_case(factory, case, doc["now"]) is None


def test_runner_reports_a_wrong_expectation(tmp_path: Path, shared_stores: SharedStores
                                            ) -> None:
    doc = json.loads(FIXTURES[0].read_text())
    case = {
        "name": "wrong on purpose",
        "kind": "budget",
        "steps": [{"op": "check", "args": {"principal": "bot", "permission": "payments:x",
                                           "amount": "1", "currency": "EUR"},
                   "expect": {"allowed": False}}],
    }
    problem = run_budget_case(_factory(doc, "memory", tmp_path, shared_stores), case, doc["now"])
    assert problem is not None and "allowed" in problem


@pytest.mark.parametrize("value", ["false", "yes", 1, 0, [], {}])
def test_runner_refuses_a_partition_agent_that_is_no_boolean(
        tmp_path: Path, shared_stores: SharedStores, value: object) -> None:
    """The engine reads ``partition_agent`` by truth: a fixture's ``"false"`` would count
    the principal in the partition unmeant, and ``0`` would pass without meaning what it
    says. The runner refuses anything but true, false or null, as it refuses an unknown
    argument, before any decision."""
    doc = next(json.loads(p.read_text()) for p in FIXTURES if p.stem == "ratelimits")
    args = {"principal": "bot", "permission": "tools:search", "partition": "acme"}
    factory = _factory(doc, "memory", tmp_path, shared_stores)
    for op in ("authorize", "explain"):
        case = {"name": "bad flag", "kind": "budget", "steps": [
            {"op": op, "args": {**args, "partitionAgent": value},
             "expect": {"allowed": True}}]}
        assert run_budget_case(factory, case, doc["now"]) == (
            f"step 0 ({op}): partition_agent: true, false or null, not {value!r}")
    for flag in (None, False, True):
        case = {"name": "a flag", "kind": "budget", "steps": [
            {"op": "authorize", "args": {**args, "partition_agent": flag},
             "expect": {"allowed": True}}]}
        assert run_budget_case(factory, case, doc["now"]) is None
    case = {"name": "typo", "kind": "budget", "steps": [
        {"op": "authorize", "args": {**args, "partition_agnt": True}}]}
    assert run_budget_case(factory, case, doc["now"]) == (
        "step 0 (authorize): unknown args ['partition_agnt']")
