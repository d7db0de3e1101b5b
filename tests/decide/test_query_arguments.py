"""The reverse queries' arguments: what they cannot take is a ``QueryError`` with a stable
code (``invalid_principal``, ``invalid_argument``), as ``principals_with`` gives
``invalid_permission``; and their text names an undeclared principal, and a tool given
without a name, for what they are."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import policyengine as pe
from policyengine.cli import main

POLICY = """role reader: docs:*
agent "bot": reader
permit open: public:read
tool read: mcp "read_*" -> docs:read
"""


@pytest.fixture(scope="module")
def engine() -> pe.Engine:
    return pe.Engine.from_source(POLICY)


@pytest.mark.parametrize(("call", "code"), [
    (lambda e: e.permissions_of(5), "invalid_principal"),
    (lambda e: e.permissions_of(""), "invalid_principal"),
    (lambda e: e.permissions_of("x" * 257), "invalid_principal"),
    (lambda e: e.permissions_of(role=""), "invalid_principal"),
    (lambda e: e.permissions_of(role=5), "invalid_principal"),
    (lambda e: e.permissions_of(), "invalid_argument"),
    (lambda e: e.permissions_of("bot", role="reader"), "invalid_argument"),
    (lambda e: e.permissions_of("bot", limit=-1), "invalid_argument"),
    (lambda e: e.permissions_of("bot", limit=True), "invalid_argument"),
    (lambda e: e.principals_with("docs:read", limit=-1), "invalid_argument"),
    (lambda e: e.principals_with(5), "invalid_permission"),
    (lambda e: e.filter_tools(None, []), "invalid_principal"),
    (lambda e: e.filter_tools("", []), "invalid_principal"),
    (lambda e: e.filter_tools("bot", 5), "invalid_argument"),
    (lambda e: e.filter_tools("bot", None), "invalid_argument"),
    (lambda e: e.filter_tools("bot", "read_a"), "invalid_argument"),  # not its letters
    (lambda e: e.filter_tools("bot", {"tools": []}), "invalid_argument"),
    (lambda e: e.filter_tools("bot", [], transport="http"), "invalid_argument"),
])
def test_a_bad_argument_gives_a_coded_error(engine: pe.Engine,
                                            call: Callable[[pe.Engine], Any],
                                            code: str) -> None:
    with pytest.raises(pe.PolicyEngineError) as info:
        call(engine)
    assert info.value.code == code
    assert str(info.value) == f"{code}: {info.value.message}"


def test_the_error_is_still_what_callers_caught() -> None:
    assert issubclass(pe.QueryError, TypeError) and issubclass(pe.QueryError, ValueError)


@given(st.one_of(st.integers(), st.floats(), st.binary(), st.lists(st.text()),
                 st.text(max_size=300)))
def test_any_principal_value_answers_or_gives_the_code(value: object) -> None:
    engine = pe.Engine.from_source(POLICY)
    for call in (lambda: engine.permissions_of(value),  # type: ignore[arg-type]
                 lambda: engine.filter_tools(value, ["read_a"])):  # type: ignore[arg-type]
        try:
            call()
        except pe.PolicyEngineError as err:
            assert err.code == "invalid_principal"
            assert not (type(value) is str and 1 <= len(value) <= 256)
        else:
            assert type(value) is str and 1 <= len(value) <= 256


def test_a_generator_of_tools_is_read_once(engine: pe.Engine) -> None:
    answer = engine.filter_tools("bot", (t for t in ["read_a", "write_b"]))
    assert answer.kept == ("read_a",) and len(answer.tools) == 2


def test_an_undeclared_principal_is_labelled_so(engine: pe.Engine) -> None:
    assert str(engine.permissions_of("ghost")).splitlines() == [
        'undeclared principal "ghost": 1 entry', "  allowed public:read"]
    assert str(engine.permissions_of("bot")).splitlines()[0] == 'agent "bot": 2 entries'
    assert str(engine.filter_tools("ghost", ["read_a"])).splitlines()[0] == (
        'undeclared principal "ghost": 0 of 1 tools callable')


def test_a_tool_without_a_name_is_shown_by_its_place(engine: pe.Engine) -> None:
    text = str(engine.filter_tools("bot", ["read_a", {"title": "x"}, 5, {"name": ""}]))
    assert text.splitlines() == [
        'agent "bot": 1 of 4 tools callable',
        "  read_a -> docs:read: allowed",
        "  tool #1 (no name): dropped (no mcp tool binds it)",
        "  tool #2 (no name): dropped (no mcp tool binds it)",
        "  tool #3 (no name): dropped (no mcp tool binds it)",
    ]
    assert "None" not in text


def test_the_cli_labels_and_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "p.policy"
    policy.write_text(POLICY)
    assert main(["query", str(policy), "--principal", "ghost"]) == 0
    assert capsys.readouterr().out.startswith('undeclared principal "ghost": ')
    tools = json.dumps([{"title": "no name"}, {"name": "read_x"}])
    assert main(["query", str(policy), "--principal", "bot", "--tools", tools]) == 0
    assert "  tool #0 (no name): dropped" in capsys.readouterr().out
    assert main(["query", str(policy), "--principal", ""]) == 2
    assert "invalid_principal" in capsys.readouterr().err
