"""Adversarial: request data a server reads one way while the policy sees another.

Classes tried here:

* repeated query parameters and headers (``?page=1&page=99``, two ``X-Tenant`` lines):
  first-wins servers act on one value while a list or an ``"a, b"`` string makes ``==``
  and ``in`` quietly false, so a forbid would not apply. Also a header value holding
  ``,``, the same header or query name in two spellings, and values that are not text;
* JSON keys that differ only in letter case (``"amount"`` / ``"AMOUNT"``, ``"card"`` /
  ``"CARD"``), random casings, Unicode letters servers fold to ASCII (long s, Kelvin
  sign, dotted and dotless i), at any depth, under wildcards and recursive descent: a
  limit must not be bypassed and a card number must not leave unredacted.

Every attempt must be refused with a stable code; controls show the plain input passes.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from policyengine.engine import Engine

POLICY = """namespace amb
currency USD
role r: pay:*, crm:*, search:*, tenants:*
agent "bot": r

limit cap: pay:refund amount <= 500 USD
forbid deep-pages: search:run when context.page == "99"
forbid evil-tenant: tenants:read when context.tenant == "evil"

tool pay: http "pay.example.com" {
  POST "/v1/refunds" -> pay:refund { amount = $.amount minor, currency = $.currency }
  GET "/v1/search" -> search:run { page = query "page" }
  GET "/v1/tenants" -> tenants:read { tenant = header "X-Tenant" }
}
tool crm: http "crm.example.com" {
  POST "/**" -> crm:write
  redact $.card mask
  redact $.customer.ssn remove
  redact $..email hash
  redact $.items[*].pan mask
}
tool xfer: function "transfer" -> pay:refund { amount = $.amount minor, currency = $.currency }
"""

KEY = b"ambiguous-input-test-key-0123456"


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_source(POLICY, hmac_key=KEY)


def get(engine: Engine, path: str, **kw: Any) -> Any:
    return engine.tool_authorize("bot", transport="http", method="GET",
                                 host="pay.example.com", path=path, **kw)


def refund(engine: Engine, body: Any, **kw: Any) -> Any:
    return engine.tool_authorize("bot", transport="http", method="POST",
                                 host="pay.example.com", path="/v1/refunds", body=body, **kw)


def contacts(engine: Engine, body: Any) -> Any:
    return engine.tool_authorize("bot", transport="http", method="POST",
                                 host="crm.example.com", path="/contacts", body=body)


def diag(d: Any) -> list[str]:
    return [x.code for x in d.diagnostics]


# ------------------------------------------------------------- repeated query / headers

def test_controls(engine: Engine) -> None:
    assert get(engine, "/v1/search", query={"page": "2"}).allowed
    assert get(engine, "/v1/search", query={"page": "99"}).code == "forbidden"
    assert get(engine, "/v1/tenants", headers={"X-Tenant": "acme"}).allowed
    assert get(engine, "/v1/tenants", headers={"x-tenant": "evil"}).code == "forbidden"
    assert get(engine, "/v1/search", query={"page": ["2"]}).allowed  # one value: fine


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.sampled_from(["1", "2", "99", "evil", ""]), min_size=2,
                       max_size=4).filter(lambda v: "99" in v or "evil" in v))
def test_repeated_values_are_refused_never_compared_as_a_list(engine: Engine,
                                                              values: list[str]) -> None:
    d = get(engine, "/v1/search", query={"page": values})
    assert not d.allowed and diag(d) == ["ambiguous_query"], d.to_wire()
    d = get(engine, "/v1/tenants", headers={"X-Tenant": values})
    assert not d.allowed and diag(d) == ["ambiguous_header"], d.to_wire()


@pytest.mark.parametrize("value", ["evil, acme", "acme,evil", "evil,"])
def test_a_header_value_with_a_comma_is_refused(engine: Engine, value: str) -> None:
    d = get(engine, "/v1/tenants", headers={"X-Tenant": value})
    assert not d.allowed and diag(d) == ["ambiguous_header"], d.to_wire()


def test_two_spellings_of_one_name_are_refused(engine: Engine) -> None:
    d = get(engine, "/v1/tenants", headers={"X-Tenant": "acme", "x-tenant": "evil"})
    assert diag(d) == ["ambiguous_header"]
    for query in ({"page": "1", "PAGE": "99"}, {"Page": "99"}, {"page": "1", "pag\u0130": "9"}):
        d = get(engine, "/v1/search", query=query)
        if "pag\u0130" in query:  # not a spelling of "page": the control
            assert d.allowed, d.to_wire()
            continue
        assert not d.allowed and diag(d) == ["ambiguous_query"], (query, d.to_wire())


@pytest.mark.parametrize("value", [99, 99.0, True, None, {"v": "99"}, ["9", 9]])
def test_values_that_are_not_text_are_refused(engine: Engine, value: Any) -> None:
    d = get(engine, "/v1/search", query={"page": value})
    assert not d.allowed, d.to_wire()
    assert diag(d) in (["invalid_query"], ["ambiguous_query"]), d.to_wire()
    d = get(engine, "/v1/tenants", headers={"X-Tenant": value})
    assert not d.allowed, d.to_wire()
    assert diag(d) in (["invalid_header"], ["ambiguous_header"]), d.to_wire()


# ------------------------------------------------------------------ case-variant keys

def _spell(name: str, flips: list[bool]) -> str:
    return "".join(c.upper() if flips[k % len(flips)] else c for k, c in enumerate(name))


@settings(max_examples=200, deadline=None)
@given(flips=st.lists(st.booleans(), min_size=1, max_size=8),
       with_plain=st.booleans(), order=st.booleans(),
       transport=st.sampled_from(["http", "function"]))
def test_random_key_casings_never_bypass_a_limit(engine: Engine, flips: list[bool],
                                                 with_plain: bool, order: bool,
                                                 transport: str) -> None:
    variant = _spell("amount", flips)
    assume(variant != "amount")
    items = [(variant, 99_999_999)]
    if with_plain:
        items.append(("amount", 100))
    if order:
        items.reverse()
    body = {**dict(items), "currency": "USD"}
    if transport == "http":
        d = refund(engine, body)
    else:
        d = engine.tool_authorize("bot", transport="function", function_name="transfer",
                                  body=body)
    assert not d.allowed, (body, d.to_wire())
    assert diag(d) == ["ambiguous_key"], (body, d.to_wire())


def _placed(field: str, inner: dict[str, Any]) -> Any:
    """``inner`` where the crm tool's redaction of ``field`` looks for it."""
    return {"card": inner, "ssn": {"customer": inner}, "email": {"a": [{"b": inner}]},
            "pan": {"items": [{"ok": 1}, inner]}}[field]


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from(["card", "ssn", "email", "pan"]),
       flips=st.lists(st.booleans(), min_size=1, max_size=6),
       with_plain=st.booleans())
def test_random_key_casings_never_leave_unredacted(engine: Engine, field: str,
                                                   flips: list[bool], with_plain: bool) -> None:
    variant = _spell(field, flips)
    assume(variant != field)
    inner = {variant: "4111111111111111", **({field: "x"} if with_plain else {})}
    body = _placed(field, inner)
    d = contacts(engine, body)
    assert not d.allowed and d.body is None, (body, d.to_wire())
    assert diag(d) == ["ambiguous_key"], (body, d.to_wire())


@pytest.mark.parametrize(("field", "key"), [
    ("ssn", "\u017fsn"), ("ssn", "s\u017fn"), ("ssn", "SS\u0130"[0:2] + "N"),
    ("email", "ema\u0130l"), ("email", "ema\u0131l"), ("email", "EMA\u0131L"),
    ("pan", "PA\u004e"), ("card", "CAR\u0044"),
])
def test_unicode_letters_servers_fold_to_ascii(engine: Engine, field: str, key: str) -> None:
    d = contacts(engine, _placed(field, {key: "secret"}))
    assert not d.allowed and diag(d) == ["ambiguous_key"], (key, d.to_wire())


def test_a_look_alike_that_no_server_folds_is_not_refused(engine: Engine) -> None:
    # 'car' + Kelvin sign folds to "cark", not "card".
    d = contacts(engine, {"car\u212a": "4111111111111111"})
    assert d.allowed, d.to_wire()
    d = contacts(engine, {"ca\u0155d": "x"})
    assert d.allowed, d.to_wire()


def test_plain_keys_and_unrelated_casings_pass(engine: Engine) -> None:
    d = refund(engine, {"amount": 100, "currency": "USD", "Note": "x", "META": {"A": 1}})
    assert d.allowed, d.to_wire()
    d = contacts(engine, {"card": "4111111111111111", "Name": "Ann", "customer": {"SSN2": 1}})
    assert d.allowed and d.body["card"] == "***REDACTED***", d.to_wire()


def test_underscore_spelling_of_a_header_is_refused(engine: Engine) -> None:
    """CGI and WSGI servers read ``X_Tenant`` as ``X-Tenant``."""
    for headers in ({"X-Tenant": "acme", "X_Tenant": "evil"}, {"X_Tenant": "evil"}):
        d = get(engine, "/v1/tenants", headers=headers)
        assert not d.allowed and diag(d) == ["ambiguous_header"], (headers, d.to_wire())
