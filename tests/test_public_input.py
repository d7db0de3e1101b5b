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


# ---- every public callable, given hostile values ------------------------------------
# Each name in the ``__all__`` of the package and its stages and leaves that can be
# called (functions, constructors, public class and static methods) is called with each
# hostile value in each parameter in turn (the others given usable values where the
# parameter's name says what one is, else left at their defaults, else hostile too).
# It may answer, or raise a PolicyEngineError: nothing else. Calls that do not bind to
# the signature are not made (a wrong signature is Python's own TypeError).

FUZZED_MODULES = ("policyengine", "policyengine.money", "policyengine.budgets",
                  "policyengine.tokens", "policyengine.tools", "policyengine.audit",
                  "policyengine.lang", "policyengine.decide", "policyengine.permissions",
                  "policyengine.decision")

#: Public names that take what the package itself built, not user input: called with
#: hostile values they may fail as Python fails (listed, so a new name is fuzzed).
NOT_USER_INPUT = {
    "Overflow": "a typing.Literal alias, not a callable",
    "Overage": "a typing.Literal alias, not a callable",
    "span_attributes": "reads a decision-log record the log made",
    "Reservation": "the ledger's answer",
    "Pipeline": "the engine's own decision pipeline over a compiled policy",
    "compile_policy": "compiles checked ASTs the parser made",
    "check": "checks ASTs the parser made",
    "format_file": "formats an AST the parser made",
    "format_expr": "formats an AST the parser made",
    "parse_many": "the engine's parser entry (pairs the engine checked, a SourceSet)",
    "CompiledTools": "compiled tool bindings (compile_tools makes them)",
    "compile_tools": "compiles checked ASTs",
    "tool_authorize": "the tool stage over compiled tools (Engine.tool_authorize checks)",
    "build_tool_request": "reads an httpx.Request inside the governed transport",
    "FrozenList": "a decision's read-only list",
    "ToolDecision": "the engine's answer to a tool call",
    "Explanation": "the engine's answer to explain (a decision and what its run traced)",
    "LogView": "what the engine tells its decision log about the policy in force",
    "HostPattern": "a compiled form: HostPattern.compile checks the text",
    "RoutePattern": "a compiled form: RoutePattern.compile checks the text",
    "JsonPath": "a compiled form: JsonPath.compile checks the text",
}

#: Constructors that connect to a server: given only values that are no URL at all, so
#: that no call reaches the network (their URL checks have their own tests).
CONNECTING = frozenset({"PostgresStore", "RedisStore", "PostgresRevocationStore",
                        "RedisRevocationStore", "PostgresApprovalStore",
                        "RedisApprovalStore"})


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


HOSTILE: tuple[object, ...] = (None, 5, -1, True, 1.5, "", "\x00", "a\x00b", "x" * 100_000,
                               {"a": {"b": {"c": {}}}}, [], [None], b"\xff", _Opaque())
NOT_A_URL: tuple[object, ...] = (None, 5, {"a": {}}, [], b"\xff", _Opaque())


def _public_callables() -> dict[str, Callable[..., Any]]:
    import importlib
    import inspect
    found: dict[str, Callable[..., Any]] = {}
    seen: set[int] = set()
    for module_name in FUZZED_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if id(obj) in seen or inspect.ismodule(obj) or name in NOT_USER_INPUT:
                continue
            seen.add(id(obj))
            if inspect.isclass(obj):
                if issubclass(obj, BaseException) or getattr(obj, "_is_protocol", False):
                    continue  # errors, and protocols (nothing to build)
                found[f"{module_name}.{name}"] = obj
                for attr, raw in vars(obj).items():
                    if not attr.startswith("_") and isinstance(raw, (classmethod, staticmethod)):
                        found[f"{module_name}.{name}.{attr}"] = getattr(obj, attr)
            elif callable(obj):
                found[f"{module_name}.{name}"] = obj
    return found


PUBLIC = _public_callables()


def _usable(tmp: Path) -> dict[str, object]:
    """A usable value for a parameter of this name."""
    policy = _write(tmp, b'namespace n\ncurrency EUR\nrole r: docs:*\nagent "bot": r\n',
                    "p.policy")
    keys = tokens.KeySet.generate()
    return {
        "principal": "bot", "agent": "bot", "permission": "docs:read", "pattern": "docs:*",
        "narrow": "docs:*", "wide": "*", "text": SRC, "name": "a.policy", "code": "USD",
        "currency": "USD", "to_code": "EUR", "amount": "1", "value": "1",
        "money": pe.Money.parse("1", "USD"), "rates": pe.StaticRates("EUR", {"USD": "0.9"}),
        "base": "EUR", "engine": _engine(), "keys": keys, "path": str(policy),
        "paths": [str(policy)], "issuer": "iss", "acting_for": "alice",
        "permissions": ["docs:*"], "ttl": 60, "kind": "day", "rolling_seconds": None,
        "tz": "UTC", "sources": {"a.policy": SRC},
    }


def _calls(fn: Callable[..., Any], usable: dict[str, object], values: tuple[object, ...]
           ) -> list[tuple[list[object], dict[str, object]]]:
    import inspect
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    except (TypeError, ValueError):  # pragma: no cover - no signature
        return []
    out = []
    for value in values:
        # every parameter without a default hostile; then one parameter at a time
        every: dict[str, object] = {p.name: value for p in params if p.default is p.empty}
        out.append(_split(params, every))
        for i, target in enumerate(params):
            chosen: dict[str, object] = {}
            for j, p in enumerate(params):
                if j == i:
                    chosen[p.name] = value
                elif p.name in usable:
                    chosen[p.name] = usable[p.name]
                elif p.default is p.empty:
                    chosen[p.name] = value
            if target.name in chosen:
                out.append(_split(params, chosen))
    return out


def _split(params: list[Any], chosen: dict[str, object]
           ) -> tuple[list[object], dict[str, object]]:
    args: list[object] = []
    kwargs: dict[str, object] = {}
    positional = True
    for p in params:
        if p.name not in chosen:
            positional = False
            continue
        if p.kind == p.POSITIONAL_ONLY or (positional and p.kind == p.POSITIONAL_OR_KEYWORD):
            args.append(chosen[p.name])
        else:
            kwargs[p.name] = chosen[p.name]
    return args, kwargs


def test_the_fuzzed_names_include_the_entry_points() -> None:
    for name in ("policyengine.permission_matches", "policyengine.subsumes",
                 "policyengine.convert", "policyengine.StaticRates.from_json",
                 "policyengine.KeySet.from_file", "policyengine.budgets.Window",
                 "policyengine.governed_client", "policyengine.Engine.from_path",
                 "policyengine.Engine.from_source", "policyengine.Engine.from_sources",
                 "policyengine.audit.sink_from_url", "policyengine.tokens.mint",
                 "policyengine.budgets.PostgresStore"):
        assert name in PUBLIC, name
    assert len(PUBLIC) > 100


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_hostile_values_raise_only_package_errors(name: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect
    monkeypatch.chdir(tmp_path)  # a sink or store given a relative name makes it here
    fn = PUBLIC[name]
    short = name.rsplit(".", 1)[-1]
    values = NOT_A_URL if short in CONNECTING else HOSTILE
    wrong: list[str] = []
    for args, kwargs in _calls(fn, _usable(tmp_path), values):
        try:
            inspect.signature(fn).bind(*args, **kwargs)
        except TypeError:  # pragma: no cover - the calls are built from the signature
            continue
        try:
            made = fn(*args, **kwargs)
        except PolicyEngineError:
            continue
        except Exception as exc:  # what this test is for
            shown = ", ".join([repr(a)[:30] for a in args]
                              + [f"{k}={v!r}"[:40] for k, v in kwargs.items()])
            wrong.append(f"{short}({shown}): {type(exc).__name__}: {str(exc)[:100]}")
            continue
        close = getattr(made, "close", None)
        if callable(close) and not inspect.isclass(made):
            # a decision log, sink, store or client it made: closing it must work too
            # (a log whose threads failed on a value it took would wait; bounded here)
            timeout = {"timeout": 2.0} if "timeout" in inspect.signature(close).parameters \
                else {}
            try:
                close(**timeout)
            except Exception as exc:
                wrong.append(f"{short}(...).close(): {type(exc).__name__}: {str(exc)[:100]}")
    assert not wrong, "\n".join(wrong[:10])


def test_log_verify_with_an_unreadable_key_file_prints_the_key_code(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``log verify --keys`` prints the documented ``invalid_key`` (it printed
    ``invalid_keys``, a code no page lists, and a missing file was an OSError)."""
    from policyengine.cli import main
    log = _write(tmp_path, b"", "decisions.jsonl")
    assert main(["log", "verify", "--keys", str(tmp_path / "missing.json"), str(log)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("policyengine log verify: error: invalid_key: --keys: cannot read "
                          "key file "), err
