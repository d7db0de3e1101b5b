"""Shared helpers for the language-core tests (parser, checker, semantics, engine, CLI)
and the budget tests (both stores, a settable clock)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from policyengine.budgets import BudgetSpec, Ledger, MemoryStore, SQLiteStore
from policyengine.engine import Engine, load_policy
from policyengine.lang import PolicyError, Problem


def problems_of(*files: tuple[str, str | bytes]) -> list[Problem]:
    """Every error and warning ``load_policy`` reports for ``files`` (empty when clean)."""
    try:
        _, warnings = load_policy(list(files))
    except PolicyError as err:
        return list(err.problems)
    return list(warnings)


def codes_of(*files: tuple[str, str | bytes]) -> list[tuple[str, int, int]]:
    """(code, line, column) of every problem, in reported order."""
    return [(p.code, p.line, p.column) for p in problems_of(*files)]


@pytest.fixture
def make_engine() -> Callable[..., Engine]:
    """``make_engine(text)`` compiles inline policy text into an :class:`Engine`."""

    def make(text: str, **options: object) -> Engine:
        return Engine.from_source(text, name="t.policy", **options)

    return make


class Clock:
    """An injectable clock: call it for the time, set ``t`` to move it."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    """A :class:`Clock` at 2026-01-01T00:00:00Z; tests move it by setting ``clock.t``."""
    return Clock(1_767_225_600.0)


def ast_key(node: object) -> object:
    """A strict, span-free structural key for AST nodes: type names and value types count.

    Dataclass equality alone would treat ``Literal(True)`` and ``Literal(1)`` as equal;
    this key does not.
    """
    import dataclasses
    from decimal import Decimal

    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        fields = tuple(
            (f.name, ast_key(getattr(node, f.name)))
            for f in dataclasses.fields(node)
            if f.compare and f.name != "span"
        )
        return (type(node).__name__, fields)
    if isinstance(node, (tuple, list)):
        return tuple(ast_key(x) for x in node)
    if isinstance(node, Decimal):
        return ("Decimal", str(node))
    return (type(node).__name__, node)


# -- budgets -----------------------------------------------------------------------------


def ts(text: str) -> float:
    """POSIX seconds of an RFC 3339 time (``Z`` accepted)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


BUDGET_NOW = ts("2026-03-10T12:00:00Z")
DAILY = BudgetSpec("t.daily", ("payments:*",), Decimal(100), "EUR", "day")


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> object:
    """Each budget store in turn (SQLite on a fresh file)."""
    return MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "b.db")


def make_ledger(
    store: object, *specs: BudgetSpec, rates: object = None
) -> tuple[Ledger, list[float]]:
    """A ledger over ``store`` and its clock, a one-item list starting at BUDGET_NOW."""
    clock = [BUDGET_NOW]
    return Ledger(specs, store, rates=rates, clock=lambda: clock[0]), clock  # type: ignore[arg-type]
