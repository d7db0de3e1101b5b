"""The Cycles wire's fast readers of create and commit bodies (``_cycles_fast``) against
the general reading (the strict decoder, then the request models): over random, near
miss and hostile bodies, a body the fast reader accepts is one the models accept with the
same values; and over the service, the same requests answer the same statuses, error
codes and bodies with the fast readers as without them."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

import policyengine as pe
from policyengine.server import Credentials, CyclesKey, ServiceConfig, create_app, hash_secret
from policyengine.server import _cycles as cy
from policyengine.server._cycles_fast import commit_body, create_body
from policyengine.server._cycles_models import CommitRequest, ReservationCreateRequest
from policyengine.server._wirejson import MalformedJsonError, loads

I64 = 9_223_372_036_854_775_807
# The models' own reading of a body, as the general path validates it.
CREATE_IN = TypeAdapter(ReservationCreateRequest)
COMMIT_IN = TypeAdapter(CommitRequest)


def _general(raw: bytes, adapter: Any) -> Any:
    """The model the general path makes of ``raw``, or None when it refuses it."""
    try:
        return adapter.validate_python(loads(raw))
    except (MalformedJsonError, ValidationError):
        return None


def _fields(value: Any) -> Any:
    """A body's values as plain data: attribute by attribute for the fast reader's
    objects and the models alike (every field of the model, defaults included)."""
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, dict):
        return {k: _fields(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fields(v) for v in value]
    names = {"ReservationCreateRequest": cy.cm.ReservationCreateRequest,
             "FastCreate": cy.cm.ReservationCreateRequest, "CommitRequest": cy.cm.CommitRequest,
             "FastCommit": cy.cm.CommitRequest, "Subject": cy.cm.Subject,
             "FastSubject": cy.cm.Subject, "Action": cy.cm.Action, "FastAction": cy.cm.Action,
             "Amount": cy.cm.Amount, "FastAmount": cy.cm.Amount}
    model = names[type(value).__name__]
    return {name: _fields(getattr(value, name)) for name in model.model_fields}


def _same(raw: bytes, fast: Any, adapter: Any) -> None:
    accepted = fast(raw)
    if accepted is None:
        return
    general = _general(raw, adapter)
    assert general is not None, raw
    assert _fields(accepted) == _fields(general), raw


# ---------------------------------------------------------------------- bodies
_SHORT = st.text(min_size=1, max_size=12)
_EDGE_TEXT = st.one_of(
    _SHORT, st.just(""), st.text(alphabet=":a\"\\é\U0001f600\x00\x1f", max_size=6),
    *(st.just("x" * n) for n in (63, 64, 65, 127, 128, 129, 255, 256, 257)))
_EDGE_INT = st.one_of(
    st.integers(-5, 5), st.sampled_from([
        -1, 999, 1_000, 60_000, 60_001, 86_400_000, 86_400_001, I64, I64 + 1, 2**64 - 1,
        2**64, 2**70, -(2**63) - 1]), st.integers())
_ANY = st.one_of(st.none(), st.booleans(), _EDGE_INT, st.floats(allow_nan=False),
                 _EDGE_TEXT, st.lists(st.integers(), max_size=2),
                 st.dictionaries(_SHORT, st.integers(), max_size=2))
_UNIT = st.sampled_from(["TOKENS", "CREDITS", "RISK_POINTS", "USD_MICROCENTS", "tokens",
                         "USD", ""])
_LEVEL = st.sampled_from(["tenant", "workspace", "app", "workflow", "agent", "toolset",
                          "dimensions", "other"])


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a valid-looking value, sometimes anything at all."""
    return st.one_of(strategy, strategy, strategy, _ANY)


def _amount() -> st.SearchStrategy[Any]:
    base = st.fixed_dictionaries({"unit": _UNIT, "amount": _EDGE_INT})
    return _maybe(base | st.fixed_dictionaries(
        {}, optional={"unit": _UNIT, "amount": _EDGE_INT, "extra": _ANY}))


def _create() -> st.SearchStrategy[dict[str, Any]]:
    subject = _maybe(st.dictionaries(_LEVEL, _maybe(_EDGE_TEXT), max_size=4))
    action = _maybe(st.fixed_dictionaries(
        {"kind": _maybe(_EDGE_TEXT), "name": _maybe(_EDGE_TEXT)},
        optional={"tags": _maybe(st.lists(_SHORT, max_size=2))}))
    return st.fixed_dictionaries(
        {"idempotency_key": _maybe(_EDGE_TEXT), "subject": subject, "action": action,
         "estimate": _amount()},
        optional={"ttl_ms": _maybe(_EDGE_INT), "grace_period_ms": _maybe(_EDGE_INT),
                  "overage_policy": _maybe(st.sampled_from(
                      ["REJECT", "ALLOW_IF_AVAILABLE", "ALLOW_WITH_OVERDRAFT", "reject"])),
                  "dry_run": _maybe(st.booleans()), "metadata": _ANY, "extra": _ANY})


def _commit() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"idempotency_key": _maybe(_EDGE_TEXT), "actual": _amount()},
        optional={"metrics": _ANY, "metadata": _ANY, "extra": _ANY})


def _texts(doc: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """The document as JSON text, then sometimes damaged: a key repeated (with another
    value, or spelt with an escape), a value nulled, the text cut short or followed by
    more, escapes in place of letters, other spacing."""
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = draw(doc)
        text = json.dumps(data, ensure_ascii=draw(st.booleans()),
                          separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
        how = draw(st.sampled_from(["as is", "as is", "repeat", "repeat escaped", "cut",
                                    "trail", "escape", "null", "nested repeat"]))
        if how in ("repeat", "repeat escaped") and data:
            name = draw(st.sampled_from(sorted(data)))
            spelt = json.dumps(name) if how == "repeat" else (
                '"\\u00' + format(ord(name[0]), "02x") + json.dumps(name)[2:])
            value = json.dumps(draw(_ANY | st.just(data[name])))
            text = text[:-1] + ("," if len(data) else "") + f"{spelt}:{value}}}"
        elif how == "nested repeat":
            text = re.sub(r'("unit": ?"[A-Z_]+")', r'\1,"unit":"TOKENS"', text, count=1)
        elif how == "cut":
            text = text[:draw(st.integers(0, max(0, len(text) - 1)))]
        elif how == "trail":
            text += draw(st.sampled_from(["x", "{}", " ", "\x00", ",", "]"]))
        elif how == "escape":
            text = text.replace('"a', '"\\u0061', 1)
        elif how == "null" and data:
            name = draw(st.sampled_from(sorted(data)))
            text = json.dumps({**data, name: None})
        raw = text.encode("utf-8", "surrogatepass")
        if draw(st.integers(0, 20)) == 0:
            raw = b"\xef\xbb\xbf" + raw
        return raw
    return build()


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(_texts(_create()))
def test_a_create_body_the_fast_reader_accepts_is_the_models_reading(raw: bytes) -> None:
    _same(raw, create_body, CREATE_IN)


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(_texts(_commit()))
def test_a_commit_body_the_fast_reader_accepts_is_the_models_reading(raw: bytes) -> None:
    _same(raw, commit_body, COMMIT_IN)


_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.:/ é", min_size=1,
                max_size=20)
_COMMON_CREATE = st.fixed_dictionaries(
    {"idempotency_key": _NAME,
     "subject": st.dictionaries(st.sampled_from(["tenant", "workspace", "app", "workflow",
                                                 "agent", "toolset"]), _NAME, max_size=6),
     "action": st.fixed_dictionaries({"kind": _NAME, "name": _NAME}),
     "estimate": st.fixed_dictionaries({"unit": st.sampled_from(["TOKENS", "CREDITS"]),
                                        "amount": st.integers(0, I64)})},
    optional={"ttl_ms": st.integers(1_000, 86_400_000),
              "grace_period_ms": st.integers(0, 60_000),
              "overage_policy": st.sampled_from(["REJECT", "ALLOW_IF_AVAILABLE"]),
              "dry_run": st.booleans()})
_COMMON_COMMIT = st.fixed_dictionaries(
    {"idempotency_key": _NAME,
     "actual": st.fixed_dictionaries({"unit": st.sampled_from(["TOKENS", "CREDITS"]),
                                      "amount": st.integers(0, I64)})})


@st.composite
def _one_leaf_off(draw: st.DrawFn, doc: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A body of the common shape with one value (at any depth) swapped for anything."""
    data = draw(doc)
    target = data
    path = [draw(st.sampled_from(sorted(data)))]
    while isinstance(target[path[-1]], dict) and target[path[-1]] and draw(st.booleans()):
        target = target[path[-1]]
        path.append(draw(st.sampled_from(sorted(target))))
    target[path[-1]] = draw(_ANY)
    return data


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(_texts(_COMMON_CREATE | _one_leaf_off(_COMMON_CREATE)))
def test_near_misses_of_the_common_create_shape(raw: bytes) -> None:
    _same(raw, create_body, CREATE_IN)


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(_texts(_COMMON_COMMIT | _one_leaf_off(_COMMON_COMMIT)))
def test_near_misses_of_the_common_commit_shape(raw: bytes) -> None:
    _same(raw, commit_body, COMMIT_IN)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=64).map(lambda t: t.encode()))
def test_any_bytes_at_all(raw: bytes) -> None:
    _same(raw, create_body, CREATE_IN)
    _same(raw, commit_body, COMMIT_IN)


@settings(max_examples=300, deadline=None)
@given(_COMMON_CREATE)
def test_the_common_shape_takes_the_fast_path(data: dict[str, Any]) -> None:
    """The shapes clients send (no escapes, no metadata) are read fast, as the models
    read them: the fast path is not a path nothing takes."""
    raw = json.dumps(data, ensure_ascii=False).encode()
    accepted = create_body(raw)
    assert accepted is not None
    assert _fields(accepted) == _fields(CREATE_IN.validate_python(loads(raw)))
    commit = json.dumps({"idempotency_key": data["idempotency_key"],
                         "actual": data["estimate"]}, ensure_ascii=False).encode()
    assert _fields(commit_body(commit)) == _fields(COMMIT_IN.validate_python(
        loads(commit)))


@pytest.mark.parametrize("raw", [
    b'{"idempotency_key":"k","actual":{"unit":"TOKENS","amount":1},"idempotency_key":"j"}',
    b'{"idempotency_key":"k","actual":{"unit":"TOKENS","amount":1,"amount":2}}',
    b'{"idempotency_key":"k","actual":{"unit":"TOKENS","amount":1},"\\u0069dempotency_key":"j"}',
    b'{"idempotency_key":"a:b","actual":{"unit":"TOKENS","amount":1,"unit":"TOKENS"}}',
    b'{"idempotency_key":"k","actual":{"unit":"TOKENS","amount":1.0}}',
    b'{"idempotency_key":"k","actual":{"unit":"TOKENS","amount":true}}',
    b'{"idempotency_key":"k","actual":{"unit":"TOKENS","amount":9223372036854775808}}',
    b'{"idempotency_key":"k","actual":{"unit":"TOKENS","amount":-1}}',
    b'{"idempotency_key":"","actual":{"unit":"TOKENS","amount":1}}',
    b'{"idempotency_key":null,"actual":{"unit":"TOKENS","amount":1}}',
    b'{"idempotency_key":"k","actual":{"unit":"TOKENS","amount":1},"metadata":null}',
    b'{"idempotency_key":"\\ud800","actual":{"unit":"TOKENS","amount":1}}',
    b'["idempotency_key","actual"]',
])
def test_hostile_commit_bodies_are_left_to_the_models(raw: bytes) -> None:
    assert commit_body(raw) is None


@pytest.mark.parametrize("raw", [
    b'{"idempotency_key":"k","subject":{"agent":"a","agent":"b"},"action":{"kind":"k",'
    b'"name":"n"},"estimate":{"unit":"TOKENS","amount":1}}',
    b'{"idempotency_key":"k","subject":{"agent":"a:","agent":"b"},"action":{"kind":"k",'
    b'"name":"n"},"estimate":{"unit":"TOKENS","amount":1}}',
    b'{"idempotency_key":"k","subject":{"agent":null},"action":{"kind":"k","name":"n"},'
    b'"estimate":{"unit":"TOKENS","amount":1}}',
    b'{"idempotency_key":"k","subject":{"agent":"a"},"action":{"kind":"k","name":"n"},'
    b'"estimate":{"unit":"TOKENS","amount":1},"ttl_ms":999}',
    b'{"idempotency_key":"k","subject":{"agent":"a"},"action":{"kind":"k","name":"n"},'
    b'"estimate":{"unit":"TOKENS","amount":1},"dry_run":0}',
    b'{"idempotency_key":"k","subject":{"agent":"a"},"action":{"kind":"k","name":"n"},'
    b'"estimate":{"unit":"TOKENS","amount":1},"grace_period_ms":null}',
    b'{"idempotency_key":"k","subject":{"agent":"a"},"action":{"kind":"","name":"n"},'
    b'"estimate":{"unit":"TOKENS","amount":1}}',
    b'{"idempotency_key":"k","subject":{"agent":"a"},"action":{"kind":"k","name":"n"},'
    b'"estimate":{"unit":"TOKENS","amount":1},"overage_policy":"reject"}',
])
def test_hostile_create_bodies_are_left_to_the_models(raw: bytes) -> None:
    assert create_body(raw) is None


# ---------------------------------------------------------------------- over the wire
def _exchange(app: Any, method: str, path: str, body: bytes,
              headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "method": method, "path": path, "headers": headers,
                     "query_string": b""}, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"])


def _app() -> Any:
    engine = pe.Engine.from_source(
        "namespace t\nbudget b: llm.completion:* limit 1000000 tokens per day per agent\n")
    return create_app(engine, credentials=Credentials(cycles_keys=(
        CyclesKey("acme", hash_secret("k-acme"), "acme"),)),
        config=ServiceConfig(access_log=False, watch_interval=None))


_HOSTILE = [
    (b"application/json", b'{"idempotency_key":"h1","subject":{"agent":"a","agent":"b"},'
     b'"action":{"kind":"llm.completion","name":"n"},"estimate":{"unit":"TOKENS","amount":5}}'),
    (b"application/json", b'{"idempotency_key":"h2","subject":{"agent":null},'
     b'"action":{"kind":"llm.completion","name":"n"},"estimate":{"unit":"TOKENS","amount":5}}'),
    (b"application/json", b'{"idempotency_key":"h3","subject":{"agent":"a"},'
     b'"action":{"kind":"llm.completion","name":"n"},"estimate":{"unit":"TOKENS","amount":"5"}}'),
    (b"application/json", b'{"idempotency_key":"h4","subject":{"agent":"a"},'
     b'"action":{"kind":"llm.completion","name":"n"},"estimate":{"unit":"TOKENS","amount":5.0}}'),
    (b"application/json", b'{"idempotency_key":"h5",'),
    (b"application/json", b'{"idempotency_key":"h6","subject":{"agent":"a"},'
     b'"action":{"kind":"llm.completion","name":"n"},"estimate":{"unit":"TOKENS","amount":5},'
     b'"ttl_ms":NaN}'),
    (b"text/plain", b'{"idempotency_key":"h7","subject":{"agent":"a"},'
     b'"action":{"kind":"llm.completion","name":"n"},"estimate":{"unit":"TOKENS","amount":5}}'),
    (b"application/json", b'{"idempotency_key":"h8","subject":{},'
     b'"action":{"kind":"llm.completion","name":"n"},"estimate":{"unit":"TOKENS","amount":5}}'),
    (b"application/json", b'{"idempotency_key":"h9","subject":{"tenant":"globex"},'
     b'"action":{"kind":"llm.completion","name":"n"},"estimate":{"unit":"TOKENS","amount":5}}'),
    (b"application/json", b'{"idempotency_key":"h10","subject":{"agent":"a"},'
     b'"action":{"kind":"llm.completion","name":"n"},"estimate":{"unit":"TOKENS","amount":5},'
     b'"extra":1}'),
    (b"application/json", b'{"idempotency_key":"h11","subject":{"agent":"a"},'
     b'"action":{"kind":"other","name":"n"},"estimate":{"unit":"TOKENS","amount":5}}'),
    (b"application/json", b'{"idempotency_key":"h12","subject":{"agent":"a"},'
     b'"action":{"kind":"llm.completion","name":"n"},"estimate":{"unit":"USD_MICROCENTS",'
     b'"amount":5}}'),
    (b"application/json", b'\xef\xbb\xbf{"idempotency_key":"h13"}'),
    (b"application/json", b'{"idempotency_key":"h14","subject":{"agent":"a"},'
     b'"action":{"kind":"llm.completion","name":"n"},"estimate":{"unit":"TOKENS","amount":5}}'
     b'{}'),
    (b"application/json; charset=utf-8", b'{"idempotency_key":"h15","subject":{"agent":"a"},'
     b'"action":{"kind":"llm.completion","name":"n"},"estimate":{"unit":"TOKENS",'
     b'"amount":5}}'),
]


def _masked(body: dict[str, Any]) -> dict[str, Any]:
    """An answer without what differs from run to run (ids, times)."""
    return {k: ("*" if k in ("request_id", "reservation_id", "expires_at_ms",
                             "remaining_ttl_ms") else
                re.sub(r"rsv_[0-9a-f]+", "rsv_*", v) if k == "message" else v)
            for k, v in body.items()}


def _run_wire(app: Any) -> list[tuple[int, dict[str, Any]]]:
    out = []
    auth = (b"x-cycles-api-key", b"k-acme")
    for ctype, raw in _HOSTILE:
        out.append(_exchange(app, "POST", "/v1/reservations", raw,
                             [(b"content-type", ctype), auth]))
    status, made = _exchange(app, "POST", "/v1/reservations", (
        b'{"idempotency_key":"c0","subject":{"agent":"a"},"action":{"kind":"llm.completion",'
        b'"name":"n"},"estimate":{"unit":"TOKENS","amount":50}}'),
        [(b"content-type", b"application/json"), auth])
    assert status == 200, made
    rid = made["reservation_id"]
    for raw in [b'{"idempotency_key":"m1","actual":{"unit":"TOKENS","amount":1},'
                b'"actual":{"unit":"TOKENS","amount":2}}',
                b'{"idempotency_key":"m2","actual":{"unit":"CREDITS","amount":1}}',
                b'{"idempotency_key":"m3","actual":{"unit":"TOKENS","amount":null}}',
                b'{"idempotency_key":"m4","actual":{"unit":"TOKENS","amount":30}}',
                b'{"idempotency_key":"m4","actual":{"unit":"TOKENS","amount":30}}',
                b'{"idempotency_key":"m4","actual":{"unit":"TOKENS","amount":31}}',
                b'{"idempotency_key":"m5","actual":{"unit":"TOKENS","amount":30}}']:
        out.append(_exchange(app, "POST", f"/v1/reservations/{rid}/commit", raw,
                             [(b"content-type", b"application/json"), auth]))
    return [(s, _masked(b)) for s, b in out]


def test_the_wire_answers_the_same_with_and_without_the_fast_readers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fast = _run_wire(_app())
    monkeypatch.setattr(cy, "create_body", lambda raw: None)
    monkeypatch.setattr(cy, "commit_body", lambda raw: None)
    general = _run_wire(_app())
    assert fast == general
    statuses = [s for s, _ in fast]
    assert 400 in statuses and 403 in statuses and 409 in statuses and 200 in statuses
    codes = {b.get("error") for _, b in fast}
    assert {"INVALID_REQUEST", "FORBIDDEN", "IDEMPOTENCY_MISMATCH",
            "RESERVATION_FINALIZED"} <= codes, codes
