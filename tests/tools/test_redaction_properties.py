"""Property tests for redaction: never mutates, removes, masks, idempotent, local."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine.tools import MASK, JsonPath, RedactionRule, redact

KEYS = st.sampled_from(["a", "b", "card", "email", "x-y"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5),
                    st.floats(allow_nan=False, allow_infinity=False))
JSON = st.recursive(SCALARS, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(KEYS, kids, max_size=4)), max_leaves=25)
BODIES = st.dictionaries(KEYS, JSON, max_size=5)

DICT_PATHS = ["$.a", "$.card", "$.a.b", "$['x-y']", "$.a.card.email", "$..email", "$..card",
              "$.a.*", "$.a[*].email"]
ANY_PATHS = [*DICT_PATHS, "$.a[0]", "$.b[-1]", "$.a[*]", "$.b[0:2]", "$..a[?(@.b)]"]
STRATEGY = st.sampled_from(["remove", "mask", "sha256", "partial", "hash"])
KEY = b"0123456789abcdef"


def _rule(path: str, strategy: str) -> RedactionRule:
    return RedactionRule(path, strategy, keep=2 if strategy == "partial" else 0)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BODIES, st.lists(st.tuples(st.sampled_from(ANY_PATHS), STRATEGY), max_size=4))
def test_never_mutates_input_and_never_raises(body: dict[str, Any],
                                              rules: list[tuple[str, str]]) -> None:
    before = copy.deepcopy(body)
    result = redact(body, [_rule(p, s) for p, s in rules], hmac_key=KEY)
    assert body == before
    assert result.ok
    assert {r["field"] for r in result.redactions} <= {p for p, _ in rules}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BODIES, st.sampled_from(DICT_PATHS))
def test_after_remove_the_path_no_longer_resolves(body: dict[str, Any], path: str) -> None:
    out = redact(body, [_rule(path, "remove")]).body
    assert JsonPath.compile(path).find(out) == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BODIES, st.sampled_from(ANY_PATHS))
def test_after_mask_every_resolved_value_is_the_mask(body: dict[str, Any], path: str) -> None:
    out = redact(body, [_rule(path, "mask")]).body
    assert all(v == MASK for v in JsonPath.compile(path).find(out))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BODIES, st.sampled_from(DICT_PATHS), st.sampled_from(["mask", "remove"]))
def test_mask_and_remove_are_idempotent(body: dict[str, Any], path: str,
                                        strategy: str) -> None:
    rules = [_rule(path, strategy)]
    once = redact(body, rules).body
    assert redact(once, rules).body == once


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BODIES, JSON, STRATEGY)
def test_unrelated_fields_are_unchanged(body: dict[str, Any], other: Any,
                                        strategy: str) -> None:
    body = {**body, "untouched": other}
    out = redact(body, [_rule("$.card", strategy), _rule("$.a.b", strategy)],
                 hmac_key=KEY).body
    assert out["untouched"] == other
    assert {k: v for k, v in out.items() if k not in ("card", "a")} == \
        {k: v for k, v in body.items() if k not in ("card", "a")}
