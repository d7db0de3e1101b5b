"""``has(path)``: attribute presence, the guard that lets a fail-closed forbid be optional."""

from __future__ import annotations

import pytest

from policyengine import Engine, PolicyError

POLICY = """
role r: flights:*, vip:*
agent "a": r { tier = "gold", nested = 1 }
agent "b": r
forbid sanctioned: * when has(context.country) and context.country in ["KP"]
forbid needs-cabin: flights:book unless has(context.cabin)
forbid deep: flights:cancel when has(context.booking.id) and context.booking.id == "locked"
permit gold: perks:claim when has(principal.attributes.tier) and principal.attributes.tier == "gold"
"""


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_source(POLICY)


@pytest.mark.parametrize(("principal", "permission", "context", "status", "rules"), [
    # absent: the guarded forbid does not apply (no missing_attribute error)
    ("a", "flights:search", {}, "allowed", ("role:r",)),
    ("a", "flights:search", {"country": "KP"}, "denied", ("default.sanctioned",)),
    ("a", "flights:search", {"country": "FR"}, "allowed", ("role:r",)),
    ("a", "flights:book", {}, "denied", ("default.needs-cabin",)),
    ("a", "flights:book", {"cabin": "economy"}, "allowed", ("role:r",)),
    # nested paths: every level must be an object holding the key
    ("a", "flights:cancel", {"booking": {"id": "locked"}}, "denied", ("default.deep",)),
    ("a", "flights:cancel", {"booking": "locked"}, "allowed", ("role:r",)),
    ("a", "flights:cancel", {"booking": {}}, "allowed", ("role:r",)),
    ("a", "perks:claim", {}, "allowed", ("default.gold",)),
    ("b", "perks:claim", {}, "denied", ()),
])
def test_has_guards_optional_attributes(engine: Engine, principal: str, permission: str,
                                        context: dict[str, object], status: str,
                                        rules: tuple[str, ...]) -> None:
    d = engine.authorize(principal, permission, context)
    assert (d.status, d.rules) == (status, rules)
    assert d.diagnostics == ()


def test_null_counts_as_present_and_then_fails_closed(engine: Engine) -> None:
    # has() is true for a null, and comparing a null is an evaluation error: the
    # guarded forbid applies by fail closed (a sender cannot dodge it with null)
    d = engine.authorize("a", "flights:search", {"country": None})
    assert (d.status, d.code, d.rules) == ("denied", "type_error", ("default.sanctioned",))
    assert [x.code for x in d.diagnostics] == ["type_error"]


def test_without_has_a_missing_attribute_fails_closed() -> None:
    engine = Engine.from_source('role r: x:*\nagent "a": r\nforbid f: x:y when context.k == 1')
    d = engine.authorize("a", "x:y", {})
    assert (d.status, d.code) == ("denied", "missing_attribute")


@pytest.mark.parametrize("arg", ['"country"', "principal.id", "principal.roles", "context",
                                 "1", "context.a == 1"])
def test_has_takes_a_context_or_attribute_path(arg: str) -> None:
    with pytest.raises(PolicyError) as err:
        Engine.from_source(f"permit p: a:b when has({arg})")
    assert err.value.code == "E108"


def test_has_arity() -> None:
    with pytest.raises(PolicyError) as err:
        Engine.from_source("permit p: a:b when has(context.a, context.b)")
    assert err.value.code == "E107"
