"""Every ``kind: token`` case in conformance/tokens passes through the runner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from policyengine.tokens._conformance import run_token_case

ROOT = Path(__file__).resolve().parent.parent / "conformance" / "tokens"
CASES = [
    pytest.param(fixture, case, id=f"{path.stem}:{case['name']}")
    for path in sorted(ROOT.glob("*.json"))
    for fixture in [json.loads(path.read_text(encoding="utf-8"))]
    for case in fixture["cases"]
]


def test_corpus_is_big_enough() -> None:
    hostile = [c for _, c, *_ in (p.values for p in CASES) if "error" in c["expect"]]
    assert len(hostile) >= 45
    assert len(CASES) - len(hostile) >= 5


@pytest.mark.parametrize(("fixture", "case"), CASES)
def test_token_case(fixture: dict[str, Any], case: dict[str, Any]) -> None:
    assert case["kind"] == "token"
    assert run_token_case(fixture, case) is None
