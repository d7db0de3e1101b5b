"""Run every ``conformance/budgets/*.json`` case through ``run_budget_case``.

TEST SHIM: until the policy compiler can build budgets, ``_specs_from_policy`` below
reads only the ``namespace``, ``currency``, ``rate`` and ``budget`` lines of a fixture
with a small regex. It is not the language; the real runner compiles the policies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import STORE_KINDS, SharedStores, open_store

from policyengine.budgets import BudgetSpec, Ledger
from policyengine.budgets._conformance import run_budget_case
from policyengine.money import StaticRates

FIXTURES = sorted((Path(__file__).resolve().parents[2] / "conformance" / "budgets").glob("*.json"))

_BUDGET = re.compile(
    r'budget (?P<id>[\w.-]+): (?P<patterns>.+?) limit (?P<limit>[\d.]+) (?P<unit>\w+)'
    r' per (?P<window>rolling \d+[smhd]|\w+)(?: per (?P<subject>\w+))?'
    r'(?: tz "(?P<tz>[^"]+)")?(?: overdraft (?P<overdraft>[\d.]+))?$'
)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _specs_from_policy(text: str) -> tuple[list[BudgetSpec], StaticRates | None]:
    namespace, currency, rates = "default", None, {}
    specs = []
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "namespace":
            namespace = words[1]
        elif words[0] == "currency":
            currency = words[1]
        elif words[0] == "rate":
            rates[words[1]] = words[2]
        elif words[0] == "budget":
            m = _BUDGET.match(line.strip())
            assert m, f"shim cannot read {line!r}"
            window, rolling = m["window"], None
            if window.startswith("rolling"):
                span = window.split()[1]
                window, rolling = "rolling", int(span[:-1]) * _SECONDS[span[-1]]
            specs.append(
                BudgetSpec(
                    id=f"{namespace}.{m['id']}",
                    patterns=tuple(p.strip() for p in m["patterns"].split(",")),
                    limit=Decimal(m["limit"]),
                    unit=m["unit"],
                    window=window,
                    rolling_seconds=rolling,
                    subject=m["subject"] or "agent",
                    tz=m["tz"] or "UTC",
                    overdraft_limit=Decimal(m["overdraft"] or 0),
                )
            )
    return specs, (StaticRates(currency, rates) if currency else None)


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
) -> Callable[..., Ledger]:
    text = "\n".join(doc["policies"].values())
    specs, rates = _specs_from_policy(text)

    def build(clock: Callable[[], float]) -> Ledger:
        backend = open_store(store, tmp_path, shared)
        return Ledger(specs, backend, rates=rates, clock=clock)  # type: ignore[arg-type]

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
