"""JSON the strict reader refuses as ambiguous, inside a tool call's ``body``, is denied
(200) as the engine denies the same body text in process, never answered 400.

A tool-authorize client may take any non-2xx answer for "governance unreachable" and
send the call unchecked (tracengent's ``tool_governance_fail_open``; Python's
``json.dumps`` writes ``float("nan")`` as ``NaN``): a 400 for a body holding ``NaN``
let that body through. In the request's other members (principal fields, transport,
names, context, headers) the same JSON is still a 400 with the strict reader's code, as
on every other route and wire."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine import _json as strict_json
from policyengine.server._wirejson import MAX_COUNTED, _nested_extent

from .test_tool_body_doubles import (
    CALLS,
    Service,
    bodies_holding,
    refused_as_ambiguous,
)

# (body text, the strict reader's code for it): every kind it refuses, at the top of the
# body, nested, and in a key.
AMBIGUOUS_BODIES = [
    ("NaN", "non_finite_number"),
    ('{"n": NaN}', "non_finite_number"),
    ('{"amount": Infinity, "currency": "USD"}', "non_finite_number"),
    ('[1, [{"x": -Infinity}]]', "non_finite_number"),
    ('{"n": 1, "n": 2}', "duplicate_key"),
    ('{"a": [{"k": 1, "k": 1}]}', "duplicate_key"),
    ('{"amount": 5, "currency": "USD", "amount": 5000}', "duplicate_key"),
    ('{"n": ' + "9" * 4301 + "}", "number_too_long"),
    ("-" + "1" * 5000, "number_too_long"),
    ('{"n": [1e5000]}', "number_too_long"),
    ('{"n": 1e-5000}', "number_too_long"),
    ('{"n": 0e99999999999}', "number_too_long"),
    ('"\\ud800"', "lone_surrogate"),
    ('{"n": ["a\\udc00b"]}', "lone_surrogate"),
    ('{"\\ud83d": 1}', "lone_surrogate"),
]


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    s = Service()
    yield s
    s.close()


def post(service: Service, request: str | bytes, path: str = "/v1/tool-authorize"
         ) -> httpx.Response:
    return service._run(service.client.post(path, content=request,
                                            headers=service.headers))


def test_each_body_is_one_the_strict_reader_refuses_with_its_code() -> None:
    """The cases are what they say: the wire read them as 400 with that code."""
    for body, code in AMBIGUOUS_BODIES:
        with pytest.raises(strict_json.AmbiguousJsonError) as err:
            strict_json.loads(body, decimal=True)
        assert err.value.code == code, body


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize(("body", "code"), AMBIGUOUS_BODIES)
def test_an_ambiguous_body_is_denied_as_in_process(
        service: Service, call: str, body: str, code: str) -> None:
    r = service.tool(call, body)
    assert refused_as_ambiguous(r), r.text
    out = r.json()
    assert out["reasonCode"] == "invalid_request" and out["permission"] is None
    d = service.in_process(call, body)  # the same text, in process
    assert not d.allowed and d.outcome == out["outcome"] == "invalid_request"
    assert [x.code for x in d.diagnostics] == ["ambiguous_body"]
    assert out["reason"] == d.reason


def test_the_body_text_is_kept_whatever_the_spacing_and_member_order(
        service: Service) -> None:
    for request in (
            '{"body":{"n":NaN},"transport":"mcp","toolName":"note"}',
            ' \n{ "transport" : "mcp" ,\t"body"\r\n:\n[ 1 , NaN ] , "toolName":"note" }\n ',
            '{"transport":"mcp","toolName":"note","body":{"a":{"b":1,"b":2}},'
            '"context":{"x":"y"},"traceId":"t"}',
            '{"transport":"function","functionName":"note","body":"\\ud800",'
            '"context":{"n":1e400}}'):
        assert refused_as_ambiguous(post(service, request)), request
    # a key spelled with an escape is the member it names
    r = post(service, '{"transport":"mcp","toolName":"note","bod\\u0079":[NaN]}')
    assert refused_as_ambiguous(r), r.text


# The request's other members: (request text, the 400's code).
ENVELOPES = [
    ('{"transport":"mcp","toolName":"note","body":{},"context":{"n":NaN}}',
     "non_finite_number"),
    ('{"transport":"mcp","toolName":"note","body":{"n":NaN},"context":{"n":NaN}}',
     "non_finite_number"),
    ('{"transport":"mcp","toolName":"note","body":{"n":NaN},"context":{"a":1,"a":2}}',
     "duplicate_key"),
    ('{"transport":"mcp","toolName":"note","toolName":"pay","body":{"n":NaN}}',
     "duplicate_key"),
    ('{"transport":"mcp","toolName":"note","body":{"n":1},"body":{"n":NaN}}',
     "duplicate_key"),
    ('{"transport":"mcp","toolName":"note","body":[NaN],"body":[1]}', "duplicate_key"),
    ('{"transport":"mcp","toolName":"no\\ud800te","body":{"n":NaN}}', "lone_surrogate"),
    ('{"transport":"mcp","\\udc00":1,"toolName":"note","body":[NaN]}', "lone_surrogate"),
    ('{"transport":"mcp","toolName":"note","body":[NaN],"context":{"n":' + "1" * 4400
     + "}}", "number_too_long"),
    ('{"transport":"mcp","toolName":"note","body":[NaN],"context":{"n":1e99999}}',
     "number_too_long"),
    ('{"transport":"http","method":"POST","host":"api.example.com","path":"/v1/x",'
     '"headers":{"x-n":NaN},"body":{"n":NaN}}', "non_finite_number"),
    ('{"transport":"http","method":"POST","host":"api.example.com","path":"/v1/x",'
     '"query":{"q":"\\udfff"},"body":{"n":NaN}}', "lone_surrogate"),
    ('[{"transport":"mcp","toolName":"note","body":[NaN]}]', "non_finite_number"),
    ("NaN", "non_finite_number"),
    ('{"transport":"mcp","toolName":"note","body":[NaN]', "non_finite_number"),
    ('{"transport":"mcp","toolName":"note","body":[NaN]} x', "non_finite_number"),
    ('{"transport":"mcp","toolName":"note","body":[NaN],}', "non_finite_number"),
    ('{"transport":"mcp","toolName":"note","body":[NaN],"x"}', "non_finite_number"),
    ('{"transport":"mcp","toolName":"note","body":[NaN] "a":1}', "non_finite_number"),
    ('{"transport":"mcp","toolName":"note","body":[1],"context":{"a":' + "[" * 64
     + "]" * 64 + "}}", "too_deep"),
    ('{"transport":"mcp","toolName":"note","body":' + "[" * 70 + "]" * 70
     + ',"context":{"a":' + "[" * 64 + "]" * 64 + "}}", "too_deep"),
    ('{"transport":"mcp","toolName":"note","body":' + "[" * 70 + "]" * 71 + "}", "too_deep"),
    ('{"transport":"mcp","toolName":"note","body":' + "[" * 5000 + "]" * 4999 + "}",
     "too_deep"),  # a deep body that never ends: no request
    ('{"transport":"mcp","toolName":"note","body":' + "[" * 5000 + '"' + "]" * 5000 + "}",
     "too_deep"),  # a string in it that never ends
]


@pytest.mark.parametrize(("request_text", "code"), ENVELOPES)
def test_ambiguity_in_the_rest_of_the_request_stays_a_400(
        service: Service, request_text: str, code: str) -> None:
    r = post(service, request_text)
    assert r.status_code == 400, r.text
    assert r.json()["allowed"] is False and r.json()["error"]["code"] == code


DEEP_BODIES = [
    "[" * 64 + "]" * 64,  # 65 deep in the request: the service's limit, passed
    "[" * 70 + "NaN" + "]" * 70,
    '{"amount": 5, "currency": "USD", "x": ' + "[" * 100 + "]" * 100 + "}",
    '{"amount": 5, "currency": "USD", "x": ' + "[" * 100 + '{"k":1,"k":2}' + "]" * 100
    + "}",
    *('{"a":' * d + "1" + "}" * d for d in range(65, 201, 27)),
    *("[" * d + "Infinity" + "]" * d for d in range(65, 201, 27)),
    "[" * 200 + "]" * 200,
    "[" * 199 + "NaN" + "]" * 199,
    "[" * 201 + "]" * 201,
    # too deep for any stack to read, in process or on the service: ambiguous, refused
    "[" * 5000 + "]" * 5000,
    '{"amount": 5, "currency": "USD", "x": ' + "[" * 5000 + json.dumps("]\\\"[")
    + "]" * 5000 + "}",
    "[" * 100_000 + "NaN" + "]" * 100_000,
]


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("body", DEEP_BODIES)
def test_a_body_nested_deeper_than_the_limit_is_decided_as_in_process(
        service: Service, call: str, body: str) -> None:
    """A tool's arguments nested deeper than the request limit (64) were a 400
    ``too_deep``, which a fail-open SDK sends on unchecked: the body goes to the engine as
    its text and gets the decision the same text gets in process."""
    r = service.tool(call, body)
    assert r.status_code == 200, r.text
    out = r.json()
    d = service.in_process(call, body)
    assert (out["allowed"], out["outcome"], out["reason"]) == (d.allowed, d.outcome,
                                                               d.reason)
    assert [x["code"] for x in out["diagnostics"]] == [x.code for x in d.diagnostics]


def test_a_deep_request_that_is_not_utf8_stays_a_400(service: Service) -> None:
    """too_deep is found before the bytes are decoded: the second reading must not
    decode them blindly (a 500)."""
    r = post(service, b'{"transport":"mcp","toolName":"note","body":' + b"[" * 70
             + b"]" * 70 + b',"x":"\xff"}')
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_deep", r.text


def test_a_denied_call_with_a_deep_body_is_denied_not_400(service: Service) -> None:
    r = post(service, '{"transport":"http","method":"POST","host":"closed.example.com",'
             '"path":"/x","body":' + "[" * 80 + "]" * 80 + "}")
    assert r.status_code == 200 and r.json()["allowed"] is False, r.text
    assert r.json()["outcome"] != "invalid_request"


def test_a_request_otherwise_invalid_stays_a_400(service: Service) -> None:
    for request in ('{"transport":"smoke","body":[NaN]}',
                    '{"transport":"mcp","toolName":7,"body":[NaN]}',
                    '{"transport":"mcp","toolName":"note","extra":1,"body":[NaN]}'):
        r = post(service, request)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", (
            request, r.text)


@pytest.mark.parametrize(("path", "request_text", "code"), [
    ("/v1/authorize", '{"permission":"payments:note","context":{"n":NaN}}',
     "non_finite_number"),
    ("/v1/authorize", '{"permission":"payments:note","context":{"a":1,"a":1}}',
     "duplicate_key"),
    ("/access/v1/evaluation", '{"subject":{"type":"agent","id":"travel-agent"},'
     '"action":{"name":"payments:note"},"resource":{"type":"r","id":"1",'
     '"properties":{"n":NaN}}}', "non_finite_number"),
])
def test_other_routes_keep_their_400s(service: Service, path: str, request_text: str,
                                      code: str) -> None:
    r = post(service, request_text, path)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code


_NON_FINITE = st.sampled_from(["NaN", "Infinity", "-Infinity"])




@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies_holding(_NON_FINITE), call=st.sampled_from(sorted(CALLS)),
       seed=st.integers(0, 2**32), context=st.booleans())
def test_property_a_body_holding_nan_or_infinity_is_never_allowed_nor_non_2xx(
        service: Service, body: str, call: str, seed: int, context: bool) -> None:
    members = [f"{strict_json.dumps(k)}:{strict_json.dumps(v)}"
               for k, v in CALLS[call].items()]
    members.append('"body":' + body)
    if context:
        members.append('"context":{"amount":5,"currency":"USD"}')
    random.Random(seed).shuffle(members)
    r = post(service, "{" + ",".join(members) + "}")
    assert r.status_code == 200, r.text
    assert r.json()["allowed"] is False, r.text
    assert refused_as_ambiguous(r), r.text


@settings(max_examples=300, deadline=None)
@given(doc=st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text()),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=20).filter(lambda d: isinstance(d, (list, dict))),
       tail=st.sampled_from(["", " ", ",", "}", ' ,"k": [1]}']))
def test_property_the_counted_extent_of_a_container_is_where_json_says_it_ends(
        doc: object, tail: str) -> None:
    """The extent counted without recursion (for a body too deep to decode) ends where
    the decoder ends the same value, strings with brackets, quotes and escapes included."""
    text = json.dumps(doc) + tail
    assert _nested_extent(text, 0) == json.JSONDecoder().raw_decode(text, 0)[1]


@pytest.mark.parametrize("text", ["[[", '["x]', '["x\\"]', "x [1]", '"a"', "", "[" * 9 + "]" * 8])
def test_a_container_that_never_ends_has_no_extent(text: str) -> None:
    with pytest.raises(ValueError):
        _nested_extent(text, 0)


def test_the_count_gives_up_after_its_bound() -> None:
    """A container the count would need more than MAX_COUNTED steps for has no extent
    (the request stays a 400): a request of nothing but brackets costs a bounded time."""
    fits = "[" * (MAX_COUNTED // 2) + "]" * (MAX_COUNTED // 2)
    assert _nested_extent(fits, 0) == len(fits)
    with pytest.raises(ValueError):
        _nested_extent("[" + fits + "]", 0)
