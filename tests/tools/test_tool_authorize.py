"""``Engine.tool_authorize`` at the API level: properties the conformance fixtures cannot
express (bytes bodies, huge and deeply nested bodies, mutation, generated path tricks)."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import posixpath
import re
import sys
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine.engine import Engine
from policyengine.tools import MASK
from policyengine.tools._egress import MAX_BODY_BYTES

KEY = b"test-hmac-key-0123456789"

POLICY = """namespace t
currency USD
rate EUR 1.10
role r: files:read, pay:refund, crm:write, code:write, fn:call, search:run
agent "bot": r

limit cap: pay:refund amount <= 500 USD
forbid deep: search:run when context.page == "99"
permit leak-auth: creds:auth when context.authorization == "Bearer sk_live_x"
permit leak-cookie: creds:cookie when context.cookie == "session=abc"
permit leak-proxy: creds:proxy when context.proxy == "Basic cHJveHk="
forbid seen-auth: creds:forbid when context.authorization == "Bearer sk_live_x"
permit creds-forbid: creds:forbid

tool files: http "files.example.com" {
  GET "/**" -> files:read
  POST "/**" -> files:read
  deny "/v1/accounts/**"
}
tool pay: http "pay.example.com" {
  POST "/v1/refunds" -> pay:refund { amount = $.amount minor, currency = $.currency }
  GET "/v1/search" -> search:run { page = query "page" }
  GET "/creds/auth" -> creds:auth { authorization = header "Authorization" }
  GET "/creds/cookie" -> creds:cookie { cookie = header "cookie" }
  GET "/creds/proxy" -> creds:proxy { proxy = header "Proxy-Authorization" }
  GET "/creds/forbid" -> creds:forbid { authorization = header "authorization" }
  GET "/creds/auth-ctl" -> creds:auth { authorization = header "X-Auth" }
  GET "/creds/cookie-ctl" -> creds:cookie { cookie = header "X-Cookie" }
  GET "/creds/proxy-ctl" -> creds:proxy { proxy = header "X-Proxy" }
  GET "/creds/forbid-ctl" -> creds:forbid { authorization = header "X-Auth" }
}
tool crm: http "crm.example.com" {
  POST "/**" -> crm:write
  redact $.card mask
  redact $.ssn remove
  redact $.phone partial 4
  redact $..email hash
  redact $.items[*].secret sha256
  redact $.tags[0] remove
}
tool gh: mcp "github.*" -> code:write { redact $.token remove }
tool fn: function "do_*" -> fn:call { redact $.password mask }
"""


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_source(POLICY, hmac_key=KEY)


def http(engine: Engine, method: str, host: str, path: str, **kw: Any) -> Any:
    return engine.tool_authorize("bot", transport="http", method=method, host=host, path=path,
                                 **kw)


# ---------------------------------------------------------------------- body never mutated

JSON_KEYS = st.sampled_from(["card", "ssn", "phone", "email", "items", "secret", "tags",
                             "token", "password", "a", "b"])
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                         st.text(max_size=12))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(JSON_KEYS, inner, max_size=5)),
    max_leaves=25)
JSON_BODIES = st.one_of(st.dictionaries(JSON_KEYS, JSON_VALUES, max_size=6),
                        st.lists(JSON_VALUES, max_size=4))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=JSON_BODIES)
def test_caller_body_never_mutated_http(engine: Engine, body: Any) -> None:
    before = copy.deepcopy(body)
    d = http(engine, "POST", "crm.example.com", "/contacts", body=body)
    assert body == before
    assert d.outcome in ("policy_allow", "policy_deny")
    if d.allowed:
        # Redacted fields are gone from the copy, whatever the caller still holds.
        assert "card" not in d.body or not isinstance(d.body, dict) or d.body["card"] == MASK
        assert not (isinstance(d.body, dict) and "ssn" in d.body)


@settings(max_examples=60, deadline=None)
@given(body=JSON_BODIES)
def test_caller_body_never_mutated_named(engine: Engine, body: Any) -> None:
    for kwargs in ({"transport": "mcp", "toolName": "github.x"},
                   {"transport": "function", "functionName": "do_it"}):
        before = copy.deepcopy(body)
        engine.tool_authorize("bot", body=body, **kwargs)
        assert body == before


def test_redacted_copy_is_not_the_callers_object(engine: Engine) -> None:
    body = {"card": "4111", "ssn": "1", "phone": "+1 555 123 4567",
            "user": {"email": "a@example.com"}, "items": [{"secret": "s"}], "tags": ["x", "y"]}
    before = copy.deepcopy(body)
    d = http(engine, "POST", "crm.example.com", "/contacts", body=body)
    assert d.allowed and d.body is not body
    assert body == before
    email = "hmac-sha256:" + hmac.new(KEY, b"a@example.com", hashlib.sha256).hexdigest()
    assert d.body == {"card": MASK, "phone": "***********4567", "user": {"email": email},
                      "items": [{"secret": "sha256:" + hashlib.sha256(b"s").hexdigest()}],
                      "tags": ["y"]}
    assert [r["field"] for r in d.redactions] == ["$.card", "$.ssn", "$.phone", "$..email",
                                                 "$.items[*].secret", "$.tags[0]"]
    assert d.obligations.redact_fields == ("$.card", "$.ssn", "$.phone", "$..email",
                                           "$.items[*].secret", "$.tags[0]")


# ---------------------------------------------------------------- path tricks (hypothesis)

SEGMENTS = st.sampled_from([
    "v1", "accounts", "acct_1", "x", "..", ".", "%2e%2e", "%2E%2e", ".%2e", "%2e", "%2F",
    "%2f", "accounts%2Facct_1", "%5C", "%5c..", "\\", "..\\accounts", "", "%61ccounts",
    "%61%63counts", "accounts;x=1", ";", "%3B", "accounts%00", "%20", "accounts?q=1",
    "accounts#f", "%252e%252e", "%", "%zz",
])


def server_resolutions(path: str) -> set[str]:
    """Paths a lenient server could route ``path`` to: query and fragment dropped, raw
    ``;params`` stripped (or not), percent-decoded once (``%2F`` and ``%5C`` included) or
    not, backslashes read as slashes or not, ``//`` collapsed and dot segments resolved."""
    out = set()
    raw = re.split(r"[?#]", path, maxsplit=1)[0]
    for stripped in (raw, re.sub(r";[^/]*", "", raw)):
        for decoded in (stripped, unquote(stripped)):
            for p in (decoded, decoded.replace("\\", "/")):
                out.add(posixpath.normpath("/" + p.lstrip("/")).replace("//", "/"))
    return out


def reaches_accounts(path: str) -> bool:
    return any(p == "/v1/accounts" or p.startswith("/v1/accounts/")
               for p in server_resolutions(path))


@settings(max_examples=600, deadline=None)
@given(prefix=st.lists(SEGMENTS, max_size=3), tail=st.lists(SEGMENTS, max_size=4),
       method=st.sampled_from(["GET", "get", "Post", "POST"]))
def test_no_path_trick_reaches_a_denied_route(engine: Engine, prefix: list[str],
                                              tail: list[str], method: str) -> None:
    path = "/" + "/".join([*prefix, "v1", "accounts", *tail])
    d = http(engine, method, "files.example.com", path)
    assert d.outcome in ("route_deny", "invalid_request", "policy_allow")
    if reaches_accounts(path):
        assert d.outcome != "policy_allow", (path, d.to_wire())


@settings(max_examples=400, deadline=None)
@given(segs=st.lists(SEGMENTS, min_size=1, max_size=6))
def test_generated_paths_never_allowed_into_accounts(engine: Engine, segs: list[str]) -> None:
    path = "/" + "/".join(segs)
    d = http(engine, "GET", "files.example.com", path)
    if reaches_accounts(path):
        assert d.outcome != "policy_allow", (path, d.to_wire())


@pytest.mark.parametrize("path", [
    "/v1/accounts", "/v1/accounts/", "/v1/accounts/a", "/v1/x/../accounts/a",
    "/v1/%2e%2e/v1/accounts", "/v1/accounts%2Fa", "/v1%2Faccounts", "/v1/%61ccounts/a",
    "/v1//accounts", "/v1/accounts;a", "/v1\\accounts", "/x/..%2Fv1/accounts",
    "/v1/./accounts", "/v1/accounts/%2e%2e/../x",
])
def test_known_tricks(engine: Engine, path: str) -> None:
    assert reaches_accounts(path)
    assert http(engine, "GET", "files.example.com", path).outcome in ("route_deny",
                                                                       "invalid_request")


def test_allowed_neighbours_still_allowed(engine: Engine) -> None:
    for path in ("/v1/accountsX", "/v1/files/accounts", "/v1/x?next=/v1/accounts"):
        assert http(engine, "GET", "files.example.com", path).outcome == "policy_allow", path


# ------------------------------------------------------------------- credential headers

CRED_CASES = [
    ("/creds/auth", "Authorization", "Bearer sk_live_x", "t.leak-auth", "X-Auth"),
    ("/creds/cookie", "Cookie", "session=abc", "t.leak-cookie", "X-Cookie"),
    ("/creds/proxy", "Proxy-Authorization", "Basic cHJveHk=", "t.leak-proxy", "X-Proxy"),
]


@pytest.mark.parametrize(("path", "header", "value", "rule", "plain"), CRED_CASES)
def test_credential_headers_never_reach_conditions(engine: Engine, path: str, header: str,
                                                   value: str, rule: str, plain: str) -> None:
    # The permit holds exactly when the credential reached the context: it must not.
    for name in (header, header.lower(), header.upper()):
        d = http(engine, "GET", "pay.example.com", path, headers={name: value})
        assert d.code == "no_permit", d.to_wire()
        assert [(x.code, x.rule) for x in d.diagnostics] == [("missing_attribute", rule)]
    # Control: the same value in a plain header does reach it (the test can fail).
    d = http(engine, "GET", "pay.example.com", path + "-ctl", headers={plain: value})
    assert d.allowed, d.to_wire()


def test_forbid_on_a_credential_never_sees_it(engine: Engine) -> None:
    d = http(engine, "GET", "pay.example.com", "/creds/forbid",
             headers={"Authorization": "Bearer sk_live_x"})
    # Not "forbidden": the forbid's condition could not read the header (fail closed).
    assert d.code == "missing_attribute"
    assert d.code != "forbidden"
    leaked = http(engine, "GET", "pay.example.com", "/creds/forbid-ctl",
                  headers={"X-Auth": "Bearer sk_live_x"})
    assert leaked.code == "forbidden"  # control


@settings(max_examples=80, deadline=None)
@given(name=st.sampled_from(["authorization", "cookie", "proxy-authorization"]),
       flips=st.lists(st.booleans(), min_size=20, max_size=20),
       value=st.text(min_size=1, max_size=20))
def test_credential_header_case_variants(engine: Engine, name: str, flips: list[bool],
                                         value: str) -> None:
    spelled = "".join(c.upper() if f else c for c, f in zip(name, flips + [False] * 20,
                                                             strict=False))
    d = http(engine, "GET", "pay.example.com", "/creds/auth",
             headers={spelled: "Bearer sk_live_x", "X-Other": value})
    assert not d.allowed


# --------------------------------------------------------------------------- big bodies

def test_bytes_body_at_the_cap_is_inspected(engine: Engine) -> None:
    pad = MAX_BODY_BYTES - len(b'{"a":""}')
    body = b'{"a":"' + b"x" * pad + b'"}'
    assert len(body) == MAX_BODY_BYTES
    d = http(engine, "POST", "files.example.com", "/up", body=body)
    assert d.outcome == "policy_allow"


def test_bytes_body_over_the_cap_is_invalid(engine: Engine) -> None:
    body = b'{"a":"' + b"x" * MAX_BODY_BYTES + b'"}'
    d = http(engine, "POST", "files.example.com", "/up", body=body)
    assert d.outcome == "invalid_request"
    assert d.code == "invalid_request"
    assert [x.code for x in d.diagnostics] == ["body_too_large"]
    assert d.body is None


def test_huge_bytes_on_an_extraction_route(engine: Engine) -> None:
    body = json.dumps({"amount": 100, "currency": "USD", "pad": "x" * (2 << 20)}).encode()
    d = http(engine, "POST", "pay.example.com", "/v1/refunds", body=body)
    assert d.outcome == "invalid_request"


def test_huge_ascii_text_body_is_invalid(engine: Engine) -> None:
    d = http(engine, "POST", "files.example.com", "/up", body="x" * (MAX_BODY_BYTES + 1))
    assert d.outcome == "invalid_request"


def test_huge_multibyte_text_body_is_invalid(engine: Engine) -> None:
    body = "\u00e9" * 700_000
    assert len(body.encode("utf-8")) > MAX_BODY_BYTES
    d = http(engine, "POST", "files.example.com", "/up", body=body)
    assert d.outcome == "invalid_request"


# ------------------------------------------------------------------ deeply nested bodies

def _nested(depth: int, leaf: Any, email_every: int = 0) -> Any:
    doc: Any = leaf
    for i in range(depth):
        if i % 2:
            doc = {"n": doc}
            if email_every and i % email_every == 1:
                doc["email"] = "e@example.com"
        else:
            doc = [doc]
    return doc


@pytest.mark.parametrize(("depth", "email_every"), [(1_000, 2), (50_000, 10_001)])
def test_deeply_nested_parsed_body_does_not_crash(engine: Engine, depth: int,
                                                  email_every: int) -> None:
    # Every match of ``$..email`` costs O(depth), so a match at every level of a very deep
    # document is quadratic: the deep case has a few matches, the dense case is shallow.
    body = _nested(depth, {"card": "4111", "email": "x@example.com"}, email_every)
    d = http(engine, "POST", "crm.example.com", "/contacts", body=body)
    assert d.outcome == "policy_allow", d.to_wire()
    assert {"field": "$..email", "strategy": "hash"} in d.redactions
    d.to_wire()


def test_deeply_nested_bytes_body_does_not_crash(engine: Engine) -> None:
    depth = 200_000
    raw = b"[" * depth + b"]" * depth
    d = http(engine, "POST", "crm.example.com", "/contacts", body=raw)
    # Too deep for this stack to read, but not for another parser: ambiguous, refused on
    # every route (passed on unread, whether it is refused would depend on the caller's
    # stack), the route that reads no body included.
    for host, path in (("crm.example.com", "/contacts"), ("pay.example.com", "/v1/refunds"),
                       ("files.example.com", "/up")):
        d = http(engine, "POST", host, path, body=raw)
        assert not d.allowed and d.outcome == "invalid_request", (host, d.to_wire())
        assert [x.code for x in d.diagnostics] == ["ambiguous_body"], host


def test_a_body_too_deep_for_the_stack_is_refused_whatever_the_callers_depth(
        engine: Engine) -> None:
    """The same deep body holding NaN, asked from a shallow and from a deep stack, on a
    route that reads no body: refused both times (it was passed on unread from the deep
    stack, where the parser ran out of stack before it met the NaN)."""
    body = "[" * 400 + "NaN" + "]" * 400

    def ask(depth: int) -> Any:
        if depth:
            return ask(depth - 1)
        return http(engine, "POST", "files.example.com", "/up", body=body)

    for depth in (0, sys.getrecursionlimit() - 200):
        d = ask(depth)
        assert not d.allowed, (depth, d.to_wire())
        assert [x.code for x in d.diagnostics] == ["ambiguous_body"], depth


def test_deep_body_with_amount_on_top(engine: Engine) -> None:
    body = {"amount": 1500, "currency": "USD", "deep": _nested(20_000, 1)}
    d = http(engine, "POST", "pay.example.com", "/v1/refunds", body=body)
    assert d.allowed, d.to_wire()


# ------------------------------------------------------------------------ body encodings

def test_json_bytes_are_parsed_for_extraction(engine: Engine) -> None:
    ok = http(engine, "POST", "pay.example.com", "/v1/refunds",
              body=b'{"amount": 1500, "currency": "USD"}')
    assert ok.allowed
    over = http(engine, "POST", "pay.example.com", "/v1/refunds",
                body=b'{"amount": 50001, "currency": "USD"}')
    assert over.code == "limit_exceeded"


def test_non_utf8_bytes_fail_closed_on_extraction(engine: Engine) -> None:
    d = http(engine, "POST", "pay.example.com", "/v1/refunds",
             body=b'{"amount": 1500, "currency": "\xff"}')
    assert not d.allowed


def test_duplicate_keys_fail_closed(engine: Engine) -> None:
    body = b'{"amount": 99999999, "amount": 100, "currency": "USD"}'
    d = http(engine, "POST", "pay.example.com", "/v1/refunds", body=body)
    assert not d.allowed, d.to_wire()


# ------------------------------------------------------------------- wire spellings etc.

def test_tool_name_wire_spellings(engine: Engine) -> None:
    a = engine.tool_authorize("bot", transport="mcp", toolName="github.x",
                              body={"token": "t", "k": 1})
    b = engine.tool_authorize("bot", transport="mcp", tool_name="github.x",
                              body={"token": "t", "k": 1})
    for d in (a, b):
        assert d.allowed and d.permission == "code:write" and d.tool == "t.gh"
        assert d.body == {"k": 1}
    c = engine.tool_authorize("bot", transport="function", functionName="do_x",
                              body={"password": "p"})
    e = engine.tool_authorize("bot", transport="function", function_name="do_x",
                              body={"password": "p"})
    for d in (c, e):
        assert d.allowed and d.permission == "fn:call" and d.body == {"password": MASK}
    wrong = engine.tool_authorize("bot", transport="function", toolName="do_x")
    assert wrong.outcome == "invalid_request"


def test_wire_shape(engine: Engine) -> None:
    w = engine.tool_authorize("bot", transport="mcp", toolName="github.x",
                              body={"token": "t"}).to_wire()
    assert set(w) >= {"allowed", "status", "outcome", "reason", "reasonCode", "permission",
                      "tool", "decisionId", "approvalId", "rules", "redactions",
                      "obligations", "diagnostics"}
    assert w["redactions"] == [{"field": "$.token", "strategy": "remove"}]
    assert w["obligations"]["redactFields"] == ["$.token"]


@pytest.mark.parametrize("bad", [
    {"transport": "smtp"}, {"transport": None}, {"transport": "http", "context": [1]},
    {"transport": "http", "query": "page=1", "method": "GET", "host": "pay.example.com",
     "path": "/v1/search"},
    {"transport": "mcp"}, {"transport": "mcp", "toolName": ""},
    {"transport": "http", "method": "GET", "host": "pay.example.com", "path": "/x",
     "unknown": 1},
])
def test_invalid_requests(engine: Engine, bad: dict[str, Any]) -> None:
    d = engine.tool_authorize("bot", **bad)
    assert d.outcome == "invalid_request" and d.code == "invalid_request"
    assert not d.allowed and d.body is None


@settings(max_examples=200, deadline=None)
@given(method=st.one_of(st.none(), st.text(max_size=8)),
       host=st.one_of(st.none(), st.text(max_size=20)),
       path=st.one_of(st.none(), st.text(max_size=30)),
       body=st.one_of(st.none(), st.binary(max_size=40), st.text(max_size=20), JSON_BODIES))
def test_never_raises(engine: Engine, method: Any, host: Any, path: Any, body: Any) -> None:
    d = engine.tool_authorize("bot", transport="http", method=method, host=host, path=path,
                              body=body)
    assert d.outcome in ("policy_allow", "policy_deny", "egress_deny", "egress_allow",
                         "route_deny", "pending_approval", "invalid_request", "budget_deny")
    json.dumps(d.to_wire(), default=str)


# -------------------------------------------------------------- approvals and redaction

APPROVAL_POLICY = """namespace n
role r: a:*
agent "bot": r
approval always: a:x
tool t: mcp "t" -> a:x { redact $.e hash }
"""


def test_pending_call_carries_an_approval() -> None:
    engine = Engine.from_source(APPROVAL_POLICY)
    d = engine.tool_authorize("bot", transport="mcp", toolName="t", body={"f": 1})
    assert d.outcome == "pending_approval" and d.approval_id
    assert [a.id for a in engine.approvals.list("pending")] == [d.approval_id]
    assert d.body == {"f": 1} and d.obligations.redact_fields == ("$.e",)


def test_denied_for_redaction_leaves_no_pending_approval() -> None:
    engine = Engine.from_source(APPROVAL_POLICY)  # no hmac_key: hash cannot be applied
    d = engine.tool_authorize("bot", transport="mcp", toolName="t", body={"e": "secret"})
    assert d.code == "redaction_failed" and d.approval_id is None
    assert engine.approvals.list("pending") == []
