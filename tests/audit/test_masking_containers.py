"""The credential rule looks into every container the log's encoder writes: a set, a
frozenset, a dataclass, an enum's value, a subclass of ``str`` / ``dict`` / ``list``, a
dict's keys. Before, the scan walked dicts, lists and tuples only, while the encoder wrote
a set as an array (and a dataclass as an object, an enum as its value): a JWT in a set of
a context reached the sink as sent. Each test reads the bytes the sink was handed."""

from __future__ import annotations

import collections
import dataclasses
import enum
import json
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import policyengine as pe
from policyengine.audit import DecisionLog, _chain
from policyengine.audit._record import LogView, mask_input, scrub
from policyengine.tools._redaction import MASK, RedactionRule
from tests.audit.sinks import GateSink

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2VjcmV0LXNpZ25hdHVyZQ"
JWT2 = "eyJhbGciOiJFUzI1NiJ9.eyJqdGkiOiJ5In0.YW5vdGhlci1zaWduYXR1cmU"


class Colour(enum.Enum):
    TOKEN = JWT


class Text(str):
    pass


class Hidden(dict):  # type: ignore[type-arg]
    """A dict that hides its items from ``items()``: the encoder reads the storage."""

    def items(self) -> Any:
        return []


class Sly(list):  # type: ignore[type-arg]
    """A list that hides its items from iteration: the encoder reads the storage."""

    def __iter__(self) -> Any:
        return iter([])


@dataclasses.dataclass(frozen=True)
class Grant:
    who: str
    proof: Any


class Shows:
    """Not JSON at all: written as ``"<Shows>"``, its ``repr`` (which holds the JWT) never."""

    def __repr__(self) -> str:
        return f"Shows({JWT})"


def logged_bytes(context: dict[str, Any], policy: str = 'role r: docs:*\nagent "bot": r\n'
                 ) -> tuple[bytes, dict[str, Any]]:
    """What the sink was handed for one decision on ``context``, and that record."""
    sink = GateSink()
    engine = pe.Engine.from_source(policy, decision_log=DecisionLog(sink))
    engine.authorize("bot", "docs:read", context)
    assert engine.close()
    (line,) = [x for x in sink.lines if b'"kind":"authorize"' in x]
    return b"".join(sink.lines), json.loads(line)


@pytest.mark.parametrize("value", [
    {JWT},
    frozenset({JWT, "x"}),
    {("a", JWT)},
    frozenset({frozenset({JWT})}),
    [{1, (2, JWT)}],
    ({JWT},),
    Colour.TOKEN,
    Text(JWT),
    [Text(JWT)],
    Hidden(a=JWT),
    Sly([JWT]),
    Grant("bot", JWT),
    Grant("bot", frozenset({JWT})),
    collections.OrderedDict(a={JWT}),
    Shows(),
    orjson.Fragment(json.dumps([JWT]).encode()),
], ids=repr)
def test_a_jwt_in_any_container_the_encoder_writes_is_masked(value: Any) -> None:
    text, record = logged_bytes({"v": value, "n": 1})
    assert JWT.encode() not in text
    assert record["input"]["context"]["n"] == 1


@pytest.mark.parametrize("context", [
    {JWT: 1},
    {"a": {JWT: {"b": JWT2}}},
    {(JWT, 1): "x"},
    {frozenset({JWT}): "x"},
    {Text(JWT): "x"},
    {Colour.TOKEN: "x"},
    {7: {JWT}, None: JWT, 2.5: [JWT], True: {JWT}},
], ids=repr)
def test_a_jwt_as_a_dict_key_is_masked(context: dict[Any, Any]) -> None:
    text, record = logged_bytes(context)
    assert JWT.encode() not in text and JWT2.encode() not in text
    assert record["masked"]  # said where
    assert not any(JWT in p for p in record["masked"])  # and not by naming it


def test_a_key_json_has_no_form_for_is_its_type_name_never_its_repr() -> None:
    """Bytes and objects are written by size or type name, as keys too (before, a key
    the encoder could not take was written as ``str(key)``, which held the JWT)."""
    text, record = logged_bytes({JWT.encode(): "x", Shows(): "y"})
    assert JWT.encode() not in text
    assert record["input"]["context"] == {f"<{len(JWT)} bytes>": "x", "<Shows>": "y"}


def test_a_credential_name_as_a_str_subclass_or_an_enum_key_masks_its_value() -> None:
    class Name(enum.Enum):
        PASSWORD = "password"

    text, record = logged_bytes({Text("api_key"): "k-123456", Name.PASSWORD: "hunter22"})
    assert b"k-123456" not in text and b"hunter22" not in text
    assert record["input"]["context"] == {"api_key": MASK, "password": MASK}


def test_what_is_not_a_credential_is_written_as_before() -> None:
    """Sets stay arrays (items sorted by ``repr``), a dataclass an object, an enum its
    value, bytes their length, anything else its type's name."""
    _, record = logged_bytes({
        "set": {"b", "a"}, "frozen": frozenset({2, 1}), "grant": Grant("bot", ("x",)),
        "colour": Colour.TOKEN, "amount": Decimal("1.50"), "raw": b"abc", "what": Shows(),
        "tuple": (1, "a"), "keys": {(1, "a"): 1, 7: 2}})
    context = record["input"]["context"]
    assert context["set"] == ["a", "b"] and context["frozen"] == [1, 2]
    assert context["grant"] == {"who": "bot", "proof": ["x"]}
    assert context["colour"] == MASK  # the enum's value is a JWT
    assert context["amount"] == "1.50" and context["raw"] == "<3 bytes>"
    assert context["what"] == "<Shows>" and context["tuple"] == [1, "a"]
    assert context["keys"] == {'[1,"a"]': 1, "7": 2}


# ------------------------------------------------------------------ log redact rules

@pytest.mark.parametrize("value", [
    {"4111111111111111"}, frozenset({"4111111111111111"}), ("4111111111111111",),
    Sly(["4111111111111111"]), [{("4111111111111111",)}],
], ids=repr)
def test_a_log_redact_rule_reaches_into_sets_and_tuples(value: Any) -> None:
    """``$.context.cards[*]`` names the items of the array the log writes, whatever
    container the caller used."""
    text, record = logged_bytes({"cards": value}, 'role r: docs:*\nagent "bot": r\n'
                                "log redact $.context.cards[*] mask\n"
                                "log redact $..cards..* mask\n")
    assert b"4111111111111111" not in text
    assert record["masked"]


def test_a_log_redact_rule_on_a_dataclass_field() -> None:
    text, record = logged_bytes({"grant": Grant("bot", "4111111111111111")},
                                'role r: docs:*\nagent "bot": r\n'
                                "log redact $.context.grant.proof partial 4\n")
    assert b"4111111111111111" not in text
    assert record["input"]["context"]["grant"] == {"who": "bot", "proof": "************1111"}
    assert record["masked"] == ["$.context.grant.proof"]


def test_an_ingested_event_is_masked_in_its_sets_too() -> None:
    sink = GateSink()
    log = DecisionLog(sink)
    pe.Engine.from_source('role r: docs:*\nagent "bot": r\n', decision_log=log)
    log.ingest("actguard", "tool.invoke", {"payload": {"seen": {JWT}, JWT2: 1}})
    assert log.close()
    assert not any(JWT.encode() in x or JWT2.encode() in x for x in sink.lines)


# ------------------------------------------------------------------ the property

_CREDENTIAL_NAMES = ("password", "Api-Key", "token", "Authorization")
_PLANTED: list[str] = []


def _secret(n: int) -> str:
    return f"eyJ{n:04d}aGVhZGVy.cGF5bG9hZA.c2ln{n:04d}"


_leaves = st.one_of(
    st.integers(-3, 3), st.booleans(), st.none(), st.decimals(allow_nan=False, places=2),
    st.text("abc. ", max_size=6), st.integers(0, 9999).map(lambda n: ("jwt", n)))
_keys = st.one_of(st.sampled_from(["a", "b", *_CREDENTIAL_NAMES]),
                  st.integers(0, 9999).map(lambda n: ("jwt", n)))


def _build(shape: Any, planted: list[str]) -> Any:
    """The value a shape stands for, with each ``("jwt", n)`` a planted JWT and each
    value under a credential's name a planted secret (both collected in ``planted``)."""
    if isinstance(shape, tuple) and len(shape) == 2 and shape[0] == "jwt":
        planted.append(_secret(shape[1]))
        return planted[-1]
    kind, items = shape if isinstance(shape, tuple) and len(shape) == 2 and \
        shape[0] in ("dict", "list", "tuple", "set", "frozenset") else (None, shape)
    if kind is None:
        return shape
    if kind == "dict":
        out = {}
        for k, v in items:
            key = _build(k, planted)
            if key in _CREDENTIAL_NAMES:
                secret = f"pw-{len(planted):04d}-{v!r}"[:40]
                planted.append(secret)
                out[key] = secret
            else:
                out[key] = _build(v, planted)
        return out
    built = [_build(v, planted) for v in items]
    if kind in ("set", "frozenset"):
        try:
            hash(tuple(built))
        except TypeError:
            return built  # unhashable items: a list
        return (set if kind == "set" else frozenset)(built)
    return tuple(built) if kind == "tuple" else built


_shapes = st.recursive(_leaves, lambda inner: st.one_of(
    st.tuples(st.just("dict"), st.lists(st.tuples(_keys, inner), max_size=3)),
    st.tuples(st.sampled_from(["list", "tuple", "set", "frozenset"]),
              st.lists(inner, max_size=3))), max_leaves=14)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=_shapes, rules=st.booleans())
def test_no_planted_credential_reaches_the_encoded_record(shape: Any, rules: bool) -> None:
    """Arbitrary nesting of dicts, lists, tuples, sets and frozensets of strings,
    numbers, decimals, None and booleans, with JWTs planted anywhere (keys too) and
    secrets under credentials' names: the encoded record holds none of them."""
    planted: list[str] = []
    context = {"v": _build(shape, planted)}
    view = LogView("rev", (RedactionRule("$.context.nothing[*]", "mask"),) if rules else ())
    logged, masked, _, errors = mask_input(
        {"principal": "bot", "permission": "docs:read", "context": context}, view)
    assert not errors
    line = _chain.encode({"input": logged, "masked": masked})
    for secret in planted:
        assert secret.encode() not in line, secret


def test_scrub_writes_only_what_it_walked() -> None:
    """The structural guarantee: what comes out of the scan is made of exact JSON types
    (and dicts and lists, read from their storage as the encoder reads them), so the
    encoder's ``default`` hook is never reached for an input value."""
    reached: list[Any] = []

    def default(value: object) -> object:
        reached.append(value)
        return _chain.json_form(value)

    value = {"s": {JWT, 1}, "g": Grant("a", frozenset({2})), "e": Colour.TOKEN,
             "b": b"x", "t": Text("y"), "k": {(1, 2): Shows()}, "d": Decimal("1")}
    out = scrub(value, "$", [])
    orjson.dumps(out, default=default, option=orjson.OPT_NON_STR_KEYS)
    assert reached == [Decimal("1")]  # a number's text: no container, no free text


class NoRepr:
    """A set item whose ``repr`` (the sort key of a set's form) raises."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_a_set_that_cannot_be_written_is_a_placeholder_and_the_log_goes_on() -> None:
    """Fail closed, as before: a value whose form cannot be made is neither written
    unmasked nor lost silently; its record is a placeholder in the chain (counted in
    ``record_errors``) and the next record is written."""
    sink = GateSink()
    log = DecisionLog(sink)
    engine = pe.Engine.from_source('role r: docs:*\nagent "bot": r\n', decision_log=log)
    engine.authorize("bot", "docs:read", {"s": {NoRepr(), JWT}})
    good = engine.authorize("bot", "docs:read", {"s": {JWT}}).decision_id
    assert log.flush(20.0)
    assert log.stats()["record_errors"] == 1
    assert engine.close()
    records = [json.loads(x) for x in sink.lines]
    (placeholder,) = [r for r in records if "record_error" in r]
    assert placeholder["record_error"] == "RuntimeError" and "input" not in placeholder
    assert placeholder["kind"] == "authorize"
    (written,) = [r for r in records if r.get("decision_id") == good]
    assert written["input"]["context"]["s"] == [MASK]
    assert not any(JWT.encode() in x for x in sink.lines)
