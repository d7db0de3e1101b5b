"""JSONPath extraction and redaction (policyengine.tools)."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from decimal import Decimal
from typing import Any

import pytest
from jsonpath_ng.ext import parse as jp_parse

from policyengine.tools import (
    MASK,
    MISSING,
    JsonPath,
    RedactionError,
    RedactionRule,
    check_hmac_key,
    redact,
)

KEY = b"k" * 32

BODY: dict[str, Any] = {
    "amount": 1250,
    "currency": "EUR",
    "card": {"number": "4111111111111111", "cvc": "123"},
    "x-y": "dash",
    "customer": {"email": "ana@example.com", "contacts": [{"email": "b@example.com"}]},
    "items": [{"card": "4000000000000002", "sku": "a"}, {"card": 4242, "sku": "b"}],
}


def test_simple_paths_use_the_fast_path_and_agree_with_jsonpath_ng() -> None:
    for text in ["$.amount", "$.card.number", "$.items[1].sku", "$.items[-1].card",
                 "$['x-y']", '$["currency"]', "$.items[*].card", "$..email", "$.card.*",
                 "$.customer..email"]:
        path = JsonPath.compile(text)
        assert path.is_native
        assert path.find(BODY) == [d.value for d in jp_parse(text).find(BODY)], text


def test_jsonpath_ng_paths() -> None:
    assert not JsonPath.compile("$.items[0:1].sku").is_native
    assert JsonPath.compile("$.items[0:1].sku").find(BODY) == ["a"]
    assert JsonPath.compile("$.items[?(@.sku == 'b')].card").find(BODY) == [4242]
    assert JsonPath.compile("$..*").first(BODY) == 1250


def test_first_and_missing() -> None:
    assert JsonPath.compile("$.amount").first(BODY) == 1250
    assert JsonPath.compile("$.nope").first(BODY) is MISSING
    assert JsonPath.compile("$.nope").first(BODY, None) is None
    assert JsonPath.compile("$.amount.x").find(BODY) == []
    assert JsonPath.compile("$.currency[0]").find(BODY) == []  # strings are not indexed
    assert JsonPath.compile("$.items.sku").find(BODY) == []    # names select objects only
    assert JsonPath.compile("$.items[5]").find(BODY) == []
    assert JsonPath.compile("$").first(BODY) is BODY


@pytest.mark.parametrize("bad", ["", "amount", "$.", "$.[", "$$", "$.a[", "$.a b",
                                 "$.a|$.b", "$.a.`len`", "$.a[1:2:0]", "$." + "a" * 2000,
                                 "$[?(@.x ==", None, 5])
def test_invalid_paths(bad: Any) -> None:
    with pytest.raises(RedactionError) as info:
        JsonPath.compile(bad)
    assert info.value.code == "invalid_jsonpath"


@pytest.mark.parametrize("kwargs,code", [
    ({"path": "$.a", "strategy": "shred"}, "invalid_rule"),
    ({"path": "$.a", "strategy": "partial"}, "invalid_rule"),
    ({"path": "$.a", "strategy": "partial", "keep": -1}, "invalid_rule"),
    ({"path": "$.a", "strategy": "mask", "keep": 2}, "invalid_rule"),
    ({"path": "$.a", "strategy": "partial", "keep": True}, "invalid_rule"),
    ({"path": "$", "strategy": "mask"}, "invalid_jsonpath"),
    ({"path": "$.[", "strategy": "mask"}, "invalid_jsonpath"),
])
def test_invalid_rules(kwargs: dict[str, Any], code: str) -> None:
    with pytest.raises(RedactionError) as info:
        RedactionRule(**kwargs)
    assert info.value.code == code


def test_strategies() -> None:
    rules = [RedactionRule("$.card.number", "partial", keep=4),
             RedactionRule("$.card.cvc", "remove"),
             RedactionRule("$.customer.email", "hash"),
             RedactionRule("$['x-y']", "sha256"),
             RedactionRule("$.currency", "mask"),
             RedactionRule("$.items[*].card", "partial", keep=2)]
    before = copy.deepcopy(BODY)
    result = redact(BODY, rules, hmac_key=KEY)
    assert before == BODY
    body = result.body
    assert body["card"] == {"number": "************1111"}
    expected = hmac.new(KEY, b"ana@example.com", hashlib.sha256).hexdigest()
    assert body["customer"]["email"] == "hmac-sha256:" + expected
    assert body["x-y"] == "sha256:" + hashlib.sha256(b"dash").hexdigest()
    assert body["currency"] == MASK
    assert [i["card"] for i in body["items"]] == ["**************02", "**42"]
    assert result.redactions == [{"field": r.path, "strategy": r.strategy} for r in rules]
    assert result.diagnostics == [] and result.ok
    # untouched sub-trees are shared, changed ones are copies
    assert body["customer"]["contacts"] is BODY["customer"]["contacts"]
    assert body["card"] is not BODY["card"]


def test_hash_is_stable_keyed_and_type_aware() -> None:
    rule = [RedactionRule("$.v", "hash")]
    a = redact({"v": "x"}, rule, hmac_key=KEY).body["v"]
    assert a == redact({"v": "x"}, rule, hmac_key=KEY).body["v"]
    assert a != redact({"v": "x"}, rule, hmac_key=b"j" * 32).body["v"]
    nested = redact({"v": {"b": 1, "a": [1, "é"]}}, rule, hmac_key=KEY).body["v"]
    canon = json.dumps({"a": [1, "é"], "b": 1}, sort_keys=True, separators=(",", ":"),
                       ensure_ascii=False).encode()
    assert nested == "hmac-sha256:" + hmac.new(KEY, canon, hashlib.sha256).hexdigest()
    assert (redact({"v": 12345}, rule, hmac_key=KEY).body
            == redact({"v": "12345"}, rule, hmac_key=KEY).body)
    assert redact({"v": Decimal("1.50")}, [RedactionRule("$.v", "partial", keep=2)]).body == \
        {"v": "**50"}


def test_a_decimal_with_a_huge_exponent_is_hashed_by_its_scientific_text() -> None:
    # its plain text would be 100 GB: scientific beyond an exponent of +-4300
    huge = Decimal("1e99999999999")
    body = redact({"v": huge, "w": [huge], "p": Decimal("-1e99999999999"),
                   "s": Decimal("1e-4301")}, [
        RedactionRule("$.v", "hash"), RedactionRule("$.w", "sha256"),
        RedactionRule("$.p", "partial", keep=3), RedactionRule("$.s", "sha256")],
        hmac_key=KEY).body
    assert body["v"] == "hmac-sha256:" + hmac.new(KEY, b"1E+99999999999",
                                                  hashlib.sha256).hexdigest()
    assert body["w"] == "sha256:" + hashlib.sha256(b'["1E+99999999999"]').hexdigest()
    assert body["p"] == "*" * 12 + "999"
    assert body["s"] == "sha256:" + hashlib.sha256(b"1E-4301").hexdigest()
    within = redact({"v": Decimal("1e-4300")}, [RedactionRule("$.v", "sha256")]).body
    assert within["v"] == "sha256:" + hashlib.sha256(
        format(Decimal("1e-4300"), "f").encode()).hexdigest()


def test_partial_short_values_are_fully_masked() -> None:
    assert redact({"v": "123"}, [RedactionRule("$.v", "partial", keep=4)]).body == {"v": "***"}
    assert redact({"v": None}, [RedactionRule("$.v", "partial", keep=4)]).body == {"v": "****"}


def test_hash_without_key_is_a_diagnostic_and_the_body_is_unchanged() -> None:
    body = {"email": "a@b.c", "card": "4111"}
    result = redact(body, [RedactionRule("$.email", "hash"), RedactionRule("$.card", "mask")])
    assert result.body == {"email": "a@b.c", "card": MASK}
    assert [d.code for d in result.diagnostics] == ["hash_key_missing"]
    assert result.diagnostics[0].startswith("hash_key_missing: ")
    assert result.diagnostics[0].field == "$.email"
    assert not result.ok
    assert result.redactions == [{"field": "$.card", "strategy": "mask"}]
    weak = redact(body, [RedactionRule("$.email", "hash")], hmac_key=b"short")
    assert [d.code for d in weak.diagnostics] == ["invalid_hash_key"]
    assert weak.body is body
    with pytest.raises(RedactionError):
        check_hmac_key(b"short")
    assert check_hmac_key(bytearray(KEY)) == KEY


def test_non_matching_rules_are_not_listed_and_body_is_returned_as_is() -> None:
    body = {"a": 1}
    result = redact(body, [RedactionRule("$.b", "mask"), RedactionRule("$..c", "remove")])
    assert result.body is body and result.redactions == [] and result.ok


@pytest.mark.parametrize("body,code", [
    ("not json", "unparsed_body"), (b'{"card": "4111"}', "unparsed_body"),
    (bytearray(b"{"), "unparsed_body"), (42, "not_json_container"),
    (True, "not_json_container"),
])
def test_non_container_bodies(body: Any, code: str) -> None:
    result = redact(body, [RedactionRule("$.card", "mask")])
    assert result.body is body
    assert [d.code for d in result.diagnostics] == [code]


def test_none_body_and_no_rules() -> None:
    assert redact(None, [RedactionRule("$.a", "mask")]).diagnostics == []
    assert redact({"a": 1}, []).body == {"a": 1}


def test_one_failing_rule_does_not_corrupt_the_body() -> None:
    body = {"a": {"v": object()}, "b": "secret", "c": [1, 2]}
    result = redact(body, [RedactionRule("$.b", "mask"), RedactionRule("$.a", "sha256"),
                           RedactionRule("$.c[*]", "remove")])
    assert result.body["a"] is body["a"]
    assert result.body["b"] == MASK and result.body["c"] == []
    assert [d.code for d in result.diagnostics] == ["value_error"]


def test_remove_in_arrays_and_nested_matches() -> None:
    body = {"a": [{"x": 1}, {"x": 2}, {"x": 3}], "x": {"x": {"x": 0}}}
    r = redact(body, [RedactionRule("$.a[0:3:2]", "remove")])
    assert r.body["a"] == [{"x": 2}]
    r = redact(body, [RedactionRule("$..x", "remove")])
    assert r.body == {"a": [{}, {}, {}]}
    r = redact(body, [RedactionRule("$..x", "mask")])
    assert r.body == {"a": [{"x": MASK}] * 3, "x": MASK}
    assert redact(body, [RedactionRule("$.a[-1]", "remove")]).body["a"] == [{"x": 1}, {"x": 2}]
    assert body == {"a": [{"x": 1}, {"x": 2}, {"x": 3}], "x": {"x": {"x": 0}}}


def test_shared_subobjects_are_redacted_at_every_place() -> None:
    shared = {"email": "e"}
    body = {"a": shared, "b": shared}
    out = redact(body, [RedactionRule("$..email", "mask")]).body
    assert out == {"a": {"email": MASK}, "b": {"email": MASK}}
    assert shared == {"email": "e"}


def _deep(levels: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    cur = root
    for _ in range(levels):
        cur["n"] = {}
        cur = cur["n"]
    cur["email"] = "deep@example.com"
    return root


def test_deep_nesting_does_not_crash() -> None:
    doc = _deep(10_000)
    native = redact(doc, [RedactionRule("$..email", "mask")])
    assert native.ok and native.redactions == [{"field": "$..email", "strategy": "mask"}]
    assert JsonPath.compile("$..email").first(doc) == "deep@example.com"
    via_ng = redact(doc, [RedactionRule("$..*", "mask")])
    assert via_ng.body is doc
    assert [d.code for d in via_ng.diagnostics] == ["path_eval_error"]
    hashed = redact(doc, [RedactionRule("$.n", "sha256")])
    assert hashed.body is doc and [d.code for d in hashed.diagnostics] == ["path_eval_error"]
    with pytest.raises(RedactionError) as info:
        JsonPath.compile("$..*").find(doc)
    assert info.value.code == "path_eval_error"


def test_jsonpath_ng_never_rewrites_the_callers_document() -> None:
    # jsonpath-ng's filter stores an object back wrapped in a list when it searches it.
    body: dict[str, Any] = {"a": {}}
    assert redact(body, [RedactionRule("$..a[?(@.b)]", "remove")]).body == {"a": {}}
    assert JsonPath.compile("$.a[?(@.b)]").find(body) == []
    assert body == {"a": {}}
