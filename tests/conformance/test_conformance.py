"""Every conformance fixture (``conformance/**/*.json``) passes, one test per file.

The fixtures and their format are specified in ``conformance/README.md``; this runs them
through :func:`policyengine._conformance.run_paths`, the runner behind ``policyengine test``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from policyengine._conformance import run_paths

ROOT = Path(__file__).resolve().parents[2] / "conformance"
FIXTURES = sorted(ROOT.rglob("*.json"))


def _cases(path: Path) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads(path.read_text("utf-8")).get("cases", [])
    return cases


def test_fixtures_exist() -> None:
    assert FIXTURES, f"no fixtures under {ROOT}"


def test_core_suite_is_big_enough() -> None:
    core = [c for p in FIXTURES if p.parent.name == "core" for c in _cases(p)]
    assert len(core) >= 120


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_fixture(path: Path) -> None:
    cases = _cases(path)
    assert len(cases) > 0, f"{path.name} has no cases"
    names = [c.get("name") for c in cases]
    assert len(set(names)) == len(names), f"{path.name} repeats a case name"
    report = run_paths([path])
    assert len(report.results) == len(cases)
    failed = [r for r in report.results if not r.passed]
    assert not failed, f"{len(failed)} of {len(cases)} cases failed:\n" + "\n".join(
        f"  - {r.case}: {r.message}" for r in failed)
