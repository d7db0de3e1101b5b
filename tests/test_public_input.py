"""Bad input to the public API raises the package's own error, never a built-in one.

Each public function and constructor given a value it cannot use raises its stage's
:class:`~policyengine.PolicyEngineError` with a stable code (docs/errors.md); a call with
the wrong *signature* (a missing argument, an unknown keyword to a plain function) is
Python's own ``TypeError`` and stays one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import policyengine as pe
from policyengine import PolicyEngineError, tokens, tools
from policyengine.budgets import BudgetInputError, BudgetSpec, Window
from policyengine.engine import EngineOptionError

SRC = 'role reader: docs:*\nagent "bot": reader'
RATES = pe.StaticRates("USD", {"EUR": "1.1"})
ONE_EUR = pe.Money.parse("1", "EUR")


def _engine() -> pe.Engine:
    return pe.Engine.from_source(SRC)


# (what is called, the call, the error class, its code)
CASES: list[tuple[str, Callable[[Path], Any], type[PolicyEngineError], str]] = [
    ("permission_matches(5, ...)", lambda _: pe.permission_matches(5, "a:b"),  # type: ignore[arg-type]
     pe.InvalidPermission, "invalid_permission"),
    ("permission_matches(..., 5)", lambda _: pe.permission_matches("a:b", 5),  # type: ignore[arg-type]
     pe.InvalidPermission, "invalid_permission"),
    ("permission_matches('*', None)", lambda _: pe.permission_matches("*", None),  # type: ignore[arg-type]
     pe.InvalidPermission, "invalid_permission"),
    ("subsumes(5, ...)", lambda _: pe.subsumes(5, "a:*"),  # type: ignore[arg-type]
     pe.InvalidPermission, "invalid_permission"),
    ("subsumes(..., b'*')", lambda _: pe.subsumes("a:*", b"*"),  # type: ignore[arg-type]
     pe.InvalidPermission, "invalid_permission"),
    ("convert(5, ...)", lambda _: pe.convert(5, "USD", RATES),  # type: ignore[arg-type]
     pe.RateError, "invalid_argument"),
    ("convert(..., rates=5)", lambda _: pe.convert(ONE_EUR, "USD", 5),  # type: ignore[arg-type]
     pe.RateError, "invalid_argument"),
    ("convert(..., rates={})", lambda _: pe.convert(ONE_EUR, "USD", {}),  # type: ignore[arg-type]
     pe.RateError, "invalid_argument"),
    ("fits(..., cap=5)", lambda _: pe.money.fits(ONE_EUR, 5, RATES),  # type: ignore[arg-type]
     pe.RateError, "invalid_argument"),
    ("StaticRates.from_json(5)", lambda _: pe.StaticRates.from_json(5),  # type: ignore[arg-type]
     pe.RateError, "invalid_rate_table"),
    ("JsonFileRates(None)", lambda _: pe.JsonFileRates(None),  # type: ignore[arg-type]
     pe.RateError, "invalid_rate_table"),
    ("KeySet.from_file(missing)", lambda tmp: tokens.KeySet.from_file(tmp / "missing.json"),
     pe.TokenError, "invalid_key"),
    ("KeySet.from_file(directory)", lambda tmp: tokens.KeySet.from_file(tmp),
     pe.TokenError, "invalid_key"),
    ("KeySet.from_file(NUL)", lambda _: tokens.KeySet.from_file("a\x00b"),
     pe.TokenError, "invalid_key"),
    ("KeySet.from_file(None)", lambda _: tokens.KeySet.from_file(None),  # type: ignore[arg-type]
     pe.TokenError, "invalid_key"),
    ("KeySet.from_file(garbage)", lambda tmp: tokens.KeySet.from_file(_write(tmp, b"\xff\x00")),
     pe.TokenError, "invalid_key"),
    ("Window('fortnight')", lambda _: Window("fortnight", None),
     BudgetInputError, "invalid_budget"),
    ("Window(tz='Mars/X')", lambda _: Window("day", None, tz="Mars/X"),
     BudgetInputError, "invalid_budget"),
    ("Window(tz=None)", lambda _: Window("day", None, tz=None),  # type: ignore[arg-type]
     BudgetInputError, "invalid_budget"),
    ("Window(tz=huge)", lambda _: Window("day", None, tz="x" * 10_000),
     BudgetInputError, "invalid_budget"),
    ("Window('rolling', None)", lambda _: Window("rolling", None),
     BudgetInputError, "invalid_budget"),
    ("BudgetSpec(subject={})", lambda _: BudgetSpec("b", ("a:*",), 1, "calls", "day",  # type: ignore[arg-type]
                                                    subject={}),  # type: ignore[arg-type]
     BudgetInputError, "invalid_budget"),
    ("BudgetSpec(window={})", lambda _: BudgetSpec("b", ("a:*",), 1, "calls", {}),  # type: ignore[arg-type]
     BudgetInputError, "invalid_budget"),
    ("governed_client(context=5)", lambda _: tools.governed_client(_engine(), "bot", context=5),  # type: ignore[arg-type]
     tools.ClientOptionError, "invalid_option"),
    ("async_governed_client(context=5)",
     lambda _: tools.async_governed_client(_engine(), "bot", context=5),  # type: ignore[arg-type]
     tools.ClientOptionError, "invalid_option"),
    ("governed_client(engine=5)", lambda _: tools.governed_client(5, "bot"),  # type: ignore[arg-type]
     tools.ClientOptionError, "invalid_option"),
    ("governed_client(principal=5)", lambda _: tools.governed_client(_engine(), 5),  # type: ignore[arg-type]
     tools.ClientOptionError, "invalid_option"),
    ("governed_client(max_body_bytes='1')",
     lambda _: tools.governed_client(_engine(), "bot", max_body_bytes="1"),  # type: ignore[arg-type]
     tools.ClientOptionError, "invalid_option"),
    ("governed_client(transport=...)",
     lambda _: tools.governed_client(_engine(), "bot", transport=object()),
     tools.ClientOptionError, "invalid_option"),
    ("Engine.from_path()", lambda _: pe.Engine.from_path(), EngineOptionError, "invalid_option"),
    ("Engine.from_path(5)", lambda _: pe.Engine.from_path(5),  # type: ignore[arg-type]
     EngineOptionError, "invalid_option"),
    ("Engine.from_path(b'x')", lambda _: pe.Engine.from_path(b"x"),  # type: ignore[arg-type]
     EngineOptionError, "invalid_option"),
    ("Engine.from_source(name=5)", lambda _: pe.Engine.from_source(SRC, name=5),  # type: ignore[arg-type]
     EngineOptionError, "invalid_option"),
    ("Engine.from_source(nope=1)", lambda _: pe.Engine.from_source(SRC, nope=1),
     EngineOptionError, "invalid_option"),
    ("Engine.from_path(p, budget_stroe=...)",
     lambda tmp: pe.Engine.from_path(_write(tmp, SRC.encode(), "p.policy"), budget_stroe="memory:"),
     EngineOptionError, "invalid_option"),
    ("Engine.from_sources(None)", lambda _: pe.Engine.from_sources(None),  # type: ignore[arg-type]
     EngineOptionError, "invalid_option"),
    ("Engine.from_sources({5: src})", lambda _: pe.Engine.from_sources({5: SRC}),  # type: ignore[dict-item]
     EngineOptionError, "invalid_option"),
    ("Engine(None)", lambda _: pe.Engine(None),  # type: ignore[arg-type]
     EngineOptionError, "invalid_option"),
]


def _write(folder: Path, data: bytes, name: str = "keys.json") -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("what", "call", "error", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_the_stage_error(tmp_path: Path, what: str,
                                          call: Callable[[Path], Any],
                                          error: type[PolicyEngineError], code: str) -> None:
    with pytest.raises(PolicyEngineError) as info:
        call(tmp_path)
    err = info.value
    assert type(err) is error, (what, type(err))
    assert err.code == code, (what, err.code, err.message)
    assert str(err) == f"{code}: {err.message}"
    assert "\x00" not in err.message and len(err.message) < 1000


def test_option_errors_are_still_type_errors() -> None:
    """Callers that caught the TypeError these calls raised before still catch it."""
    for call in (lambda: pe.Engine.from_path(), lambda: pe.Engine.from_source(SRC, nope=1),
                 lambda: tools.governed_client(_engine(), "bot", context=5)):
        with pytest.raises(TypeError):
            call()


def test_an_unknown_engine_option_is_told_the_one_it_resembles() -> None:
    with pytest.raises(EngineOptionError, match="did you mean budget_store"):
        pe.Engine.from_source(SRC, budget_stroe="memory:")


def test_every_engine_option_is_taken_by_name() -> None:
    """The known options are the constructor's: each passes the name check."""
    import inspect
    names = [n for n in inspect.signature(pe.Engine.__init__).parameters
             if n not in ("self", "files", "paths")]
    assert "budget_store" in names and "decision_log" in names
    for name in names:
        pe.Engine.from_source(SRC, **{name: None})


def test_good_input_still_works(tmp_path: Path) -> None:
    assert pe.permission_matches("docs:*", "docs:read")
    assert not pe.permission_matches("docs:*", "doc:read")
    assert pe.subsumes("docs:a:*", "docs:*") and not pe.subsumes("*", "docs:*")
    assert str(pe.convert(ONE_EUR, "USD", RATES)) == "1.10 USD"
    keys = tokens.KeySet.generate()
    keys.save(tmp_path / "k.json")
    assert tokens.KeySet.from_file(tmp_path / "k.json").kids == keys.kids
    assert Window("day", None, "Europe/Paris").tz == "Europe/Paris"
    policy = _write(tmp_path, SRC.encode(), "p.policy")
    assert pe.Engine.from_path(Path(policy)).authorize("bot", "docs:read").allowed
    assert pe.Engine.from_sources({"a.policy": SRC}).authorize("bot", "docs:read").allowed
    assert os.path.exists(policy)
