"""Request normalisation and host / route / name patterns (policyengine.tools)."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine.tools import (
    HostPattern,
    NamePattern,
    RoutePattern,
    ToolPatternError,
    ToolRequestError,
    normalize_host,
    normalize_method,
    normalize_path,
)


@pytest.mark.parametrize("raw,expected", [
    ("post", "POST"), ("Get", "GET"), ("PATCH", "PATCH"), ("m-search", "M-SEARCH"),
])
def test_normalize_method(raw: str, expected: str) -> None:
    assert normalize_method(raw) == expected


@pytest.mark.parametrize("raw", ["", "GE T", "GET\n", "PÖST", "a" * 33, "GET/", "(GET)"])
def test_normalize_method_rejects(raw: str) -> None:
    with pytest.raises(ToolRequestError) as info:
        normalize_method(raw)
    assert info.value.code == "invalid_method"


@pytest.mark.parametrize("raw,expected", [
    ("API.Stripe.COM", "api.stripe.com"),
    ("api.stripe.com.", "api.stripe.com"),
    ("127.0.0.1", "127.0.0.1"),
    ("127.0.0.1:08080", "127.0.0.1:8080"),
    ("[::1]", "[::1]"), ("::1", "[::1]"), ("[0:0::1]:443", "[::1]:443"),
    ("[::FFFF:127.0.0.1]", "127.0.0.1"),  # IPv4-mapped: the IPv4 host it reaches
    ("xn--bcher-kva.de", "xn--bcher-kva.de"),
    ("localhost", "localhost"),
])
def test_normalize_host(raw: str, expected: str) -> None:
    assert normalize_host(raw) == expected


@pytest.mark.parametrize("raw", [
    "", ".", "a..b", "api.stripe.com..", "user@api.stripe.com", "user:pw@host",
    "bücher.de", "127.1", "0x7f.0.0.1", "010.0.0.1", "1.2.3.4.5", "256.0.0.1",
    "host:0", "host:65536", "host:", "host:x", "[::1", "[::1]x", "fe80::1%eth0",
    "a b", "-a.com", "a-.com", "a/b", "x" * 64 + ".com", "host\x00",
])
def test_normalize_host_rejects(raw: str) -> None:
    with pytest.raises(ToolRequestError) as info:
        normalize_host(raw)
    assert info.value.code == "invalid_host"


@pytest.mark.parametrize("raw,expected", [
    ("/", "/"), ("/v1/refunds", "/v1/refunds"), ("/v1/refunds/", "/v1/refunds/"),
    ("/v1/refunds?amount=1", "/v1/refunds"), ("/%7Euser/%41", "/~user/A"),
    ("/a%3ab", "/a:b"), ("/a b", "/a%20b"), ("/caf\u00e9", "/caf%C3%A9"),
    ("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
])
def test_normalize_path(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected


@pytest.mark.parametrize("raw,code", [
    ("v1", "invalid_path"), ("", "invalid_path"), ("/a//b", "invalid_path"),
    ("//a", "invalid_path"), ("/a;jsessionid=1", "invalid_path"), ("/a#f", "invalid_path"),
    ("/a\x00", "invalid_path"), ("/%00", "invalid_path"), ("/%zz", "invalid_path"),
    ("/%4", "invalid_path"), ("/a\n", "invalid_path"), ("/" + "a" * 2048, "invalid_path"),
    ("/..", "path_traversal"), ("/a/../b", "path_traversal"), ("/./a", "path_traversal"),
    ("/a/.", "path_traversal"), ("/%2e%2e/a", "path_traversal"), ("/%2E./a", "path_traversal"),
    ("/a%2Fb", "path_traversal"), ("/a%2fb", "path_traversal"), ("/a%5Cb", "path_traversal"),
    ("/a\\b", "path_traversal"), ("/\ud800", "invalid_path"),
])
def test_normalize_path_rejects(raw: str, code: str) -> None:
    with pytest.raises(ToolRequestError) as info:
        normalize_path(raw)
    assert info.value.code == code


def test_host_patterns() -> None:
    exact = HostPattern.compile("API.stripe.com.")
    assert exact.matches("api.stripe.com") and not exact.matches("api.stripe.com:8443")
    wild = HostPattern.compile("*.example.com")
    assert wild.matches("a.example.com") and wild.matches("a.b.example.com")
    assert not wild.matches("example.com") and not wild.matches("badexample.com")
    assert not wild.matches("a.example.com:8443") and not wild.matches("example.com.evil.io")
    ported = HostPattern.compile("*.example.com:8443")
    assert ported.matches("a.example.com:8443") and not ported.matches("a.example.com")
    assert HostPattern.compile("[::1]:8080").matches(normalize_host("[0::1]:8080"))
    for bad in ["*", "*.com", "a.*.com", "*a.com", "**.a.com", "*.1.2.3.4", "", "u@h.com"]:
        with pytest.raises(ToolPatternError):
            HostPattern.compile(bad)


@pytest.mark.parametrize("pattern,path,expected", [
    ("/v1/refunds", "/v1/refunds", {}),
    ("/v1/refunds", "/v1/refunds/", None),
    ("/v1/refunds", "/v1/Refunds", None),
    ("/v1/refunds/{id}", "/v1/refunds/re_1", {"id": "re_1"}),
    ("/v1/refunds/{id}", "/v1/refunds/", None),
    ("/v1/refunds/{id}", "/v1/refunds/a/b", None),
    ("/v1/*/x", "/v1/a/x", {}),
    ("/v1/*/x", "/v1/x", None),
    ("/v1/accounts/**", "/v1/accounts", {}),
    ("/v1/accounts/**", "/v1/accounts/", {}),
    ("/v1/accounts/**", "/v1/accounts/a/b/c", {}),
    ("/v1/accounts/**", "/v1/accountsx", None),
    ("/**/items/{i}", "/items/3", {"i": "3"}),
    ("/**/items/{i}", "/a/b/items/3", {"i": "3"}),
    ("/a/{x}/**/{y}", "/a/1/2/3/4", {"x": "1", "y": "4"}),
    ("/a/{x}/**/{y}", "/a/1", None),
    ("/", "/", {}), ("/", "/a", None), ("/**", "/", {}), ("/**", "/a/b", {}),
    ("/caf\u00e9", "/caf%C3%A9", {}), ("/%7Eu", "/~u", {}),
])
def test_route_patterns(pattern: str, path: str, expected: dict[str, str] | None) -> None:
    assert RoutePattern.compile(pattern).match(path) == expected


def test_route_specificity_prefers_literals() -> None:
    routes = [RoutePattern.compile(p) for p in
              ("/v1/**", "/v1/refunds/{id}", "/v1/refunds/special", "/v1/*/special")]
    path = "/v1/refunds/special"
    best = max((r for r in routes if r.match(path) is not None), key=lambda r: r.specificity)
    assert best.text == "/v1/refunds/special"


@pytest.mark.parametrize("bad", ["v1", "/a/**/b/**", "/a*/b", "/{x}/{x}", "/a/{1x}",
                                 "/a//b", "/a/../b", "/a%2Fb", "/a?x=1", "/{x"])
def test_route_pattern_errors(bad: str) -> None:
    with pytest.raises(ToolPatternError) as info:
        RoutePattern.compile(bad)
    assert info.value.code == "invalid_pattern"


@pytest.mark.parametrize("glob,name,expected", [
    ("transfer_funds", "transfer_funds", True), ("transfer_funds", "Transfer_funds", False),
    ("github.*", "github.create_issue", True), ("github.*", "gitlab.x", False),
    ("*_issue", "create_issue", True), ("a?c", "abc", True), ("a?c", "ac", False),
    ("a*b*c", "axxbyyc", True), ("a*b*c", "axxbyy", False), ("[ab]", "[ab]", True),
    ("[ab]", "a", False), ("*", "", True), ("a.*", "aX", False),
])
def test_name_patterns(glob: str, name: str, expected: bool) -> None:
    assert NamePattern.compile(glob).matches(name) is expected


def test_name_pattern_is_linear_on_adversarial_input() -> None:
    pat = NamePattern.compile("a*a*a*a*a*a*a*a*b")
    assert not pat.matches("a" * 200)  # a backtracking regex would take ages here


# ---------------------------------------------------------------- property tests

PATH_ALPHABET = "ab.%2fFeE5cC/\\?;#~ -_:@é"


@given(st.text(PATH_ALPHABET, max_size=30).map(lambda s: "/" + s))
def test_normalize_path_is_idempotent(raw: str) -> None:
    try:
        once = normalize_path(raw)
    except ToolRequestError:
        return
    assert normalize_path(once) == once


@given(st.text("aB.-_:[]1@é0x", max_size=20))
def test_normalize_host_is_idempotent(raw: str) -> None:
    try:
        once = normalize_host(raw)
    except ToolRequestError:
        return
    assert normalize_host(once) == once
    assert once == once.lower()


@given(st.text("abcdefGHIJ-_.!", min_size=1, max_size=10))
def test_normalize_method_is_idempotent(raw: str) -> None:
    assert normalize_method(normalize_method(raw)) == normalize_method(raw)


def _reference_segments(raw: str) -> list[str] | None:
    """What a server that fully decodes the path sees: ``None`` if it is ambiguous."""
    path = raw.split("?", 1)[0]
    decoded = unquote(path, errors="strict")
    if "\\" in decoded or "\x00" in decoded:
        return None
    return decoded[1:].split("/")


def _reference_match(pattern: str, segs: list[str]) -> bool:
    """Regex reference for a route pattern over decoded segments."""
    parts = []
    for seg in pattern[1:].split("/"):
        if seg == "**":
            parts.append(r"(?:/[^/]*)*")
        elif seg == "*" or seg.startswith("{"):
            parts.append(r"/[^/]+")
        else:
            parts.append("/" + re.escape(unquote(seg)))
    return re.fullmatch("".join(parts), "/" + "/".join(segs)) is not None


DENY = "/v1/accounts/**"
ALLOW = ("/v1/refunds/{id}", "/v1/*/public", "/v1/refunds")
TRICKS = ["/", "..", ".", "%2e", "%2E", "%2f", "%2F", "%5c", "\\", "//", "accounts",
          "Accounts", "refunds", "public", "v1", "x", "%61ccounts", ";", "?q", "%00"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TRICKS), max_size=8))
def test_no_path_trick_reaches_another_route(parts: list[str]) -> None:
    raw = "/v1/" + "".join(parts)
    try:
        path = normalize_path(raw)
    except ToolRequestError:
        return  # rejected: fails closed
    segs = _reference_segments(raw)
    assert segs is not None, "an ambiguous path was accepted"
    assert ".." not in segs and "." not in segs
    # A server decoding the path sees the same route decision we make.
    assert (RoutePattern.compile(DENY).match(path) is not None) == _reference_match(DENY, segs)
    for allow in ALLOW:
        ours = RoutePattern.compile(allow).match(path) is not None
        assert ours == _reference_match(allow, segs), (allow, raw, path)
