"""Every ``kind: token`` case in conformance/tokens passes through the runner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from policyengine.tokens._conformance import run_token_case

ROOT = Path(__file__).resolve().parents[2] / "conformance" / "tokens"
FIXTURES = [
    (path.stem, json.loads(path.read_text(encoding="utf-8")))
    for path in sorted(ROOT.glob("*.json"))
]
CASES = [
    pytest.param(fixture, case, id=f"{stem}:{case['name']}")
    for stem, fixture in FIXTURES
    for case in fixture["cases"]
]


def test_corpus_is_big_enough() -> None:
    cases = [case for _, fixture in FIXTURES for case in fixture["cases"]]
    hostile = [case for case in cases if "error" in case["expect"]]
    assert len(hostile) >= 45
    assert len(cases) - len(hostile) >= 5


@pytest.mark.parametrize(("fixture", "case"), CASES)
def test_token_case(fixture: dict[str, Any], case: dict[str, Any]) -> None:
    assert case["kind"] == "token"
    assert run_token_case(fixture, case) is None
