"""Masking in policy: ``log redact`` rules and the built-in credential rule decide what the
decision log never holds."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import policyengine as pe
from policyengine.audit import CallbackSink, DecisionLog

KEY = b"a 32-byte secret, for pseudonyms"
POLICY = """
role r: docs:*, payments:*
agent "bot": r
log redact $.context.card partial 4
log redact $..email hash
log redact $.context.ssn remove
log redact $.body.iban mask
tool bank: mcp "pay" -> payments:pay {
  redact $.cvv remove
}
"""


def run(calls: Any, policy: str = POLICY, **options: Any) -> tuple[pe.Engine, list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    engine = pe.Engine.from_source(policy, decision_log=DecisionLog(CallbackSink(records.append)),
                                   **options)
    calls(engine)
    assert engine.close()
    return engine, [r for r in records if r["kind"] in ("authorize", "tool_authorize", "event")]


def test_each_strategy_applies_to_the_logged_input() -> None:
    _, (r,) = run(lambda e: e.authorize("bot", "docs:read", {
        "card": "4111111111111111", "ssn": "078-05-1120", "who": {"email": "ann@example.org"},
        "n": 1}), hmac_key=KEY)
    context = r["input"]["context"]
    assert context["card"] == "************1111"
    assert "ssn" not in context
    assert context["who"]["email"].startswith("hmac-sha256:")
    assert context["n"] == 1
    assert r["masked"] == ["$.context.card", "$..email"] and r["erased"] == ["$.context.ssn"]
    assert "ann@example.org" not in json.dumps(r) and "078-05-1120" not in json.dumps(r)


def test_the_same_value_gets_the_same_pseudonym() -> None:
    _, records = run(lambda e: [e.authorize("bot", "docs:read", {"email": x})
                                for x in ("a@x.org", "b@x.org", "a@x.org")], hmac_key=KEY)
    first, second, third = (r["input"]["context"]["email"] for r in records)
    assert first == third != second


def test_a_hash_rule_without_a_key_erases_the_whole_input() -> None:
    engine, (plain, matched) = run(lambda e: [
        e.authorize("bot", "docs:read", {"n": 1}),
        e.authorize("bot", "docs:read", {"email": "ann@example.org"})])
    assert [w.code for w in engine.warnings] == ["W205"]
    assert plain["input"]["context"] == {"n": 1}      # nothing to hash: kept
    assert matched["input"] is None and matched["erased"] == ["$"]
    assert matched["mask_errors"] == ["hash_key_missing"]
    assert "ann@example.org" not in json.dumps(matched)


def test_tool_bodies_are_logged_after_the_tool_and_the_log_rules() -> None:
    _, (r,) = run(lambda e: e.tool_authorize(
        "bot", transport="mcp", toolName="pay",
        body={"iban": "FR7630006000011234567890189", "cvv": "123", "amount": "5"}),
        hmac_key=KEY)
    assert r["input"]["body"] == {"iban": "***REDACTED***", "amount": "5"}
    assert r["masked"] == ["$.body.iban"]


def test_ingested_events_are_masked_by_the_same_rules() -> None:
    def ingest(engine: pe.Engine) -> None:
        assert engine.decision_log is not None
        engine.decision_log.ingest("actguard", "tool.invoke", {
            "payload": {"email": "ann@example.org", "api_key": "k-1"}}, principal="bot")

    _, (r,) = run(ingest, hmac_key=KEY)
    assert r["event"]["payload"]["email"].startswith("hmac-sha256:")
    assert r["event"]["payload"]["api_key"] == "***REDACTED***"
    assert sorted(r["masked"]) == ["$.event..email", "$.event.payload.api_key"]


SECRET = st.text(min_size=4, max_size=24).map(lambda s: f"S3cr-{s}-t")
KEYS = st.sampled_from(["password", "API-Key", "Authorization", "client_secret", "token"])


@settings(max_examples=25, deadline=None)
@given(secret=SECRET, key=KEYS, depth=st.integers(0, 3), card=SECRET)
def test_secrets_never_reach_the_log(secret: str, key: str, depth: int, card: str) -> None:
    """A credential under any of the built-in names, at any depth, and a value a ``log
    redact`` rule masks or removes, never appear in what the sink receives."""
    context: dict[str, Any] = {key: secret}
    for _ in range(depth):
        context = {"nested": context, "list": [context]}
    context["card"] = card
    context["ssn"] = secret
    lines: list[str] = []
    log = DecisionLog(CallbackSink(lambda r: lines.append(json.dumps(r))))
    engine = pe.Engine.from_source(
        'role r: docs:*\nagent "bot": r\nlog redact $.context.card mask\n'
        "log redact $.context.ssn remove\n", decision_log=log)
    engine.authorize("bot", "docs:read", context)
    assert engine.close()
    text = "\n".join(lines)
    assert json.dumps(secret)[1:-1] not in text
    assert json.dumps(card)[1:-1] not in text


@pytest.mark.parametrize(("text", "code"), [
    ("log redact $ mask", "E120"),
    ("log redact $.a partial", "E120"),
    ("log redact $.a mask 4", "E120"),
    ("log redact $[?(( mask", "E120"),
    ("log redact $.a scramble", "E002"),
])
def test_bad_log_rules_are_policy_errors(text: str, code: str) -> None:
    with pytest.raises(pe.PolicyError) as err:
        pe.Engine.from_source(f'role r: docs:*\nagent "bot": r\n{text}\n')
    assert code in [p.code for p in err.value.problems]


def test_log_rules_format_canonically_and_log_stays_a_usable_name() -> None:
    source = ('role r: docs:*\nagent "bot": r\nlog   redact  $.context.card   partial 4\n'
              "permit p: docs:read when context.log == 1\n")
    formatted = pe.format_source(source)
    assert "log redact $.context.card partial 4\n" in formatted
    engine = pe.Engine.from_source(formatted)
    assert engine.authorize("bot", "docs:read", {"log": 1}).allowed


# ------------------------------------------------------------------ the key-walk route
# Rules on object keys only are applied by following those keys (LogView.by_key); every
# other rule set takes the general redaction route. Both must log exactly the same.

_NAMES = ("a", "b", "card", "token", "Password", "x-api-key")
_JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXZhbHVl"
_leaf = st.one_of(st.integers(-5, 5), st.booleans(), st.none(), st.just(_JWT),
                  st.text("abc1234", max_size=25), st.decimals(allow_nan=False, places=2))
_doc = st.recursive(_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(_NAMES), inner, max_size=4)),
    max_leaves=12)
_strategy = st.sampled_from(["mask", "partial 2", "sha256", "remove", "hash"])
_rule = st.tuples(st.lists(st.sampled_from(_NAMES), min_size=1, max_size=3), _strategy)


def _reference(inp: dict[str, Any], rules: list[Any], key: bytes | None
               ) -> tuple[Any, list[str], list[str], list[str]]:
    """What the log must hold: the policy's rules applied by ``redact``, then every
    credential removed (written out here from the public pieces)."""
    from policyengine.audit._record import scrub
    from policyengine.tools._redaction import redact
    result = redact(inp, rules, hmac_key=key)
    if result.diagnostics:
        return None, [], ["$"], sorted({d.code for d in result.diagnostics})
    masked = [r["field"] for r in result.redactions if r["strategy"] != "remove"]
    erased = [r["field"] for r in result.redactions if r["strategy"] == "remove"]
    return scrub(result.body, "$", masked), masked, erased, []


@settings(max_examples=400, deadline=None)
@given(context=st.dictionaries(st.sampled_from(_NAMES), _doc, max_size=5),
       rules=st.lists(_rule, min_size=1, max_size=4), with_key=st.booleans())
def test_the_key_walk_logs_what_the_general_route_logs(
        context: dict[str, Any], rules: list[Any], with_key: bool) -> None:
    from policyengine.audit._record import LogView, mask_input
    from policyengine.tools._redaction import RedactionRule
    built = []
    for names, strategy in rules:
        path = "$" + "".join(f"['{n}']" for n in ["context", *names])
        kind, _, keep = strategy.partition(" ")
        built.append(RedactionRule(path, kind, int(keep or 0)))
    key = KEY if with_key else None
    inp = {"principal": "bot", "permission": "docs:read", "context": context}
    before = json.dumps(inp, default=str, sort_keys=True)
    view = LogView("rev", tuple(built), key)
    assert mask_input(inp, view) == _reference(inp, built, key)
    assert json.dumps(inp, default=str, sort_keys=True) == before  # the input is not changed


def test_rules_the_key_walk_cannot_take_use_the_general_route() -> None:
    from policyengine.audit._record import LogView
    from policyengine.tools._redaction import RedactionRule as R
    assert LogView("r", (R("$.context.card", "mask"),)).by_key is not None
    for rules in [(R("$.context.items[0]", "mask"),),             # a list index
                  (R("$..email", "mask"),),                       # a wildcard
                  (R("$.context", "remove"), R("$.context.card", "mask")),  # nested
                  (R("$.context.card", "mask"), R("$.context.card", "sha256")),  # twice
                  (R("$.context.card", "hash"),)]:                # hash without a key
        assert LogView("r", rules).by_key is None, rules


# ------------------------------------------------------------------ the credential walk
# scrub() skips the per-key look-up for a dict whose keys are all known plain names, and
# tests strings before the other types: it must mask exactly what the plain walk below
# (its earlier form, written out) masks, paths and order included.

def _plain_scrub(value: Any, path: str, masked: list[str], depth: int = 0) -> Any:
    from collections.abc import Mapping

    from policyengine.audit._record import CREDENTIAL_KEYS
    from policyengine.tools._redaction import MASK

    def is_jwt(s: str) -> bool:
        return len(s) > 20 and s.startswith("eyJ") and s.count(".") in (2, 4) \
            and " " not in s

    if depth > 64:
        masked.append(path)
        return MASK
    if type(value) is str:
        if is_jwt(value):
            masked.append(path)
            return MASK
        return value
    if isinstance(value, Mapping):
        out = None
        for k, v in value.items():
            if type(k) is str and k.lower().replace("-", "_") in CREDENTIAL_KEYS:
                new: Any = MASK
                masked.append(f"{path}.{k}")
            else:
                new = _plain_scrub(v, f"{path}.{k}", masked, depth + 1)
                if new is v:
                    continue
            if out is None:
                out = dict(value)
            out[k] = new
        return value if out is None else out
    if isinstance(value, (list, tuple)):
        items = None
        for i, v in enumerate(value):
            new = _plain_scrub(v, f"{path}[{i}]", masked, depth + 1)
            if new is not v:
                if items is None:
                    items = list(value)
                items[i] = new
        return value if items is None else items
    return value


def _containers(value: Any) -> set[int]:
    """The ids of the dicts and lists in ``value``, at any depth."""
    out: set[int] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            out.add(id(v))
            stack.extend(dict.keys(v))
            stack.extend(dict.values(v))
        elif isinstance(v, (list, tuple)):
            if isinstance(v, list):
                out.add(id(v))
            stack.extend(v)
    return out


def _deep(levels: int, leaf: Any) -> Any:
    for n in range(levels):
        leaf = {"d": leaf} if n % 2 else [leaf]
    return leaf


_names = st.sampled_from(["a", "card", "Token", "X-Api-Key", "api_key", "password", "n",
                          "\u212aey", "cookie", 1, 2.5, None])
_scalars = st.one_of(st.integers(-3, 3), st.booleans(), st.none(), st.floats(),
                     st.just(_JWT), st.just(_JWT + " x"), st.just("eyJ.a.b"),
                     st.text("ab.eyJ", max_size=30), st.decimals(allow_nan=False, places=1))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.lists(inner, max_size=3).map(tuple),
    st.dictionaries(_names, inner, max_size=4),
    st.dictionaries(_names, inner, max_size=3).map(pe.decision.FrozenDict)),
    max_leaves=14)


@settings(max_examples=500, deadline=None)
@given(value=_values | st.integers(55, 70).map(lambda n: _deep(n, {"token": 1, "s": _JWT})))
def test_the_credential_walk_masks_what_the_plain_walk_masks(value: Any) -> None:
    from policyengine.audit._record import scrub
    for _ in range(2):  # the second time with every key's verdict cached
        masked: list[str] = []
        expected: list[str] = []
        got = scrub(value, "$", masked)
        plain = _plain_scrub(value, "$", expected)
        assert json.dumps(got, default=str) == json.dumps(plain, default=str)  # NaN too
        assert masked == expected
        # what is written is the scan's own: no container of the input (the caller may
        # still change those) is in it
        assert not _containers(got) & _containers(value)


@pytest.mark.parametrize("keep", [1, 2, 4])
@pytest.mark.parametrize("value", ["", "a", "ab", "abcd", "abcde", "4111111111111111",
                                   "é€😀x", 1234567, None, ["x", "y"]])
def test_the_key_walk_writes_a_partial_as_the_rule_does(keep: int, value: Any) -> None:
    """The key walk writes a string's ``partial`` itself (the rule's replacement for
    anything else): the same text as the rule, and as the general route."""
    from policyengine.audit._record import LogView, mask_input
    from policyengine.tools._redaction import RedactionRule
    rule = RedactionRule("$.context.card", "partial", keep)
    view = LogView("rev", (rule,))
    assert view.by_key is not None
    inp = {"principal": "bot", "permission": "docs:read", "context": {"card": value}}
    logged, masked, erased, errors = mask_input(inp, view)
    assert logged["context"]["card"] == rule.replacement(value, None)
    assert (logged, masked, erased, errors) == _reference(inp, [rule], None)


def test_a_container_changed_after_its_scan_is_written_as_scanned() -> None:
    """The scan and the encoder run one after the other on the writer thread, while the
    caller may still hold (and change) the containers of its context: the engine copies
    the context one level deep. What the scan passed must be what is written, so a
    credential put into a nested dict once the scan has been through it never reaches
    the sink. Here the change is made from inside the scan (a set's item whose repr
    the encoder's set form sorts by), after the scan has passed the dict it changes."""
    headers: dict[str, Any] = {"accept": "json"}
    secret = "Bearer s3cret-after-the-scan"

    class Late:
        def __repr__(self) -> str:
            headers["authorization"] = secret
            headers["note"] = _JWT
            return "Late()"

    lines: list[bytes] = []

    class Sink:
        def write(self, batch: Any) -> None:
            lines.extend(batch)

        def close(self) -> None:
            pass

    engine = pe.Engine.from_source('role r: docs:*\nagent "bot": r\n',
                                   decision_log=DecisionLog(Sink()))
    d = engine.authorize("bot", "docs:read", {"headers": headers, "tags": {Late(), Late()}})
    assert d.allowed
    assert engine.close()
    written = b"".join(lines)
    assert b'"authorize"' in written and b"<Late>" in written
    assert secret.encode() not in written and _JWT.encode() not in written
