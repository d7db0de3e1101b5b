"""Adversarial: reaching a denied route, method, host, port or scheme by another spelling.

Each class below tries to make the upstream act on something the policy denies while
the engine decides on something else:

* percent-encoding (random subsets of characters, either hex case, double encoding,
  overlong UTF-8) of a denied path; case changes and a trailing ``/`` that
  case-insensitive or lenient servers route to the same handler;
* method overrides (``X-HTTP-Method-Override`` and siblings, ``_method`` in the query,
  a JSON body or a form body) past a ``deny DELETE`` route;
* another virtual host through ``Host``, ``X-Forwarded-Host``, ``Forwarded`` or an SNI
  override, and another path through ``X-Original-URL`` or the request target;
* an egress deny dodged with a port, or with an IPv6 spelling of the IPv4 address;
* plain ``http://`` to a host the policy binds for HTTPS only.

Every attempt must be refused; a control next to each class shows the plain spelling is
allowed, so the refusals are not an accident of the fixture.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from policyengine import governed_client
from policyengine.decision import ToolDenied
from policyengine.engine import Engine
from policyengine.tools import normalize_path

POLICY = """namespace adv
role r: api:*
agent "bot": r

tool api: http "api.example.com" {
  ANY "/**" -> api:any
  deny "/v1/accounts/**"
  deny "/v1/a:b@c+d$e,f=g!h"
  deny "/v1/admin"
  deny "/v1/caf\u00e9"
  deny DELETE "/v1/charges/**"
}
tool meta: http "metadata.internal:8080", "169.254.169.254:80" {
  GET "/**" -> api:meta
}
tool plain: http "http://legacy.example.com" {
  GET "/**" -> api:legacy
}
egress {
  deny "metadata.internal"
  deny "169.254.169.254"
}
"""

DENIED_PATHS = ("/v1/accounts/acct_1", "/v1/a:b@c+d$e,f=g!h", "/v1/admin", "/v1/caf\u00e9")


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_source(POLICY)


def call(engine: Engine, path: str, method: str = "GET", host: str = "api.example.com",
         **kw: Any) -> Any:
    return engine.tool_authorize("bot", transport="http", method=method, host=host, path=path,
                                 **kw)


def diag(d: Any) -> list[str]:
    return [x.code for x in d.diagnostics]


def test_control_allowed_spellings(engine: Engine) -> None:
    for path in ("/v1/accounts2", "/v1/a:b", "/v1/admins", "/v1/cafe", "/v1/charges/ch_1"):
        assert call(engine, path).allowed, path
    assert call(engine, "/v1/charges/ch_1", "POST").allowed


# ---------------------------------------------------------------- percent-encoding

def _encode(path: str, picks: list[bool], upper: list[bool]) -> str:
    """Percent-encode the characters of ``path`` (not ``/``) whose pick is True."""
    out = []
    for k, c in enumerate(path):
        if c != "/" and picks[k % len(picks)]:
            hexes = "".join(f"%{b:02X}" for b in c.encode("utf-8"))
            out.append(hexes if upper[k % len(upper)] else hexes.lower())
        else:
            out.append(c)
    return "".join(out)


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(DENIED_PATHS),
       picks=st.lists(st.booleans(), min_size=1, max_size=24),
       upper=st.lists(st.booleans(), min_size=1, max_size=8),
       case=st.lists(st.booleans(), min_size=1, max_size=24),
       slash=st.booleans(), method=st.sampled_from(["GET", "get", "Post", "DELETE"]))
def test_no_spelling_of_a_denied_path_is_allowed(engine: Engine, path: str, picks: list[bool],
                                                 upper: list[bool], case: list[bool],
                                                 slash: bool, method: str) -> None:
    cased = "".join(c.upper() if case[k % len(case)] else c for k, c in enumerate(path))
    spelled = _encode(cased, picks, upper) + ("/" if slash else "")
    d = call(engine, spelled, method)
    assert not d.allowed, (spelled, d.to_wire())
    assert d.code == "route_denied", (spelled, d.to_wire())


@settings(max_examples=300, deadline=None)
@given(text=st.text(st.characters(codec="utf-8", exclude_characters="/?#%;\\"),
                    min_size=1, max_size=12),
       picks=st.lists(st.booleans(), min_size=1, max_size=12),
       upper=st.lists(st.booleans(), min_size=1, max_size=4))
def test_decoded_and_raw_spellings_normalise_alike(text: str, picks: list[bool],
                                                   upper: list[bool]) -> None:
    """The path the engine routes on does not depend on which characters were encoded."""
    raw = "/x/" + text
    try:
        plain = normalize_path(raw)
    except ValueError:
        return  # refused as written: nothing to compare
    assert normalize_path(_encode(raw, picks, upper)) == plain


@pytest.mark.parametrize(("path", "code"), [
    ("/v1/%2561ccounts/x", "ambiguous_path"),          # double encoding of 'a'
    ("/v1/accounts%252Fx", "ambiguous_path"),
    ("/v1/%252e%252e/v1/accounts/x", "ambiguous_path"),
    ("/v1/%25%36%31ccounts/x", "ambiguous_path"),        # '%25' then encoded hex digits
    ("/v1/%C0%AE%C0%AE/v1/accounts/x", "ambiguous_path"),  # overlong '.'
    ("/v1/caf%C3", "ambiguous_path"),                   # truncated UTF-8
    ("/v1/%2e%2e/v1/accounts/x", "path_traversal"),
    ("/v1/x/..%2Fv1/accounts", "path_traversal"),
    ("/v1\\accounts\\x", "path_traversal"),
    ("/v1/accounts;x/y", "invalid_path"),
    ("/v1/accounts%3Bx/y", "invalid_path"),
    ("/v1/admin%3B", "invalid_path"),
])
def test_encodings_no_two_servers_read_alike_are_refused(engine: Engine, path: str,
                                                         code: str) -> None:
    d = call(engine, path)
    assert d.outcome == "invalid_request" and diag(d) == [code], d.to_wire()


# ------------------------------------------------------------------ method override

@pytest.mark.parametrize("header", ["X-HTTP-Method-Override", "x-http-method",
                                    "X-Method-Override", "X-HTTP-METHOD-OVERRIDE"])
@pytest.mark.parametrize("value", ["DELETE", "delete", " DELETE "])
def test_method_override_headers_are_refused(engine: Engine, header: str, value: str) -> None:
    d = call(engine, "/v1/charges/ch_1", "POST", headers={header: value})
    assert not d.allowed and diag(d) == ["method_override"], d.to_wire()


@pytest.mark.parametrize("kw", [
    {"query": {"_method": "DELETE"}},
    {"body": {"_method": "delete", "x": 1}},
    {"body": b"_method=DELETE&x=1"},
    {"body": "x=1&_method=DELETE"},
    {"headers": {"X-HTTP-Method-Override": ["DELETE", "POST"]}},
])
def test_method_override_parameters_are_refused(engine: Engine, kw: dict[str, Any]) -> None:
    d = call(engine, "/v1/charges/ch_1", "POST", **kw)
    assert not d.allowed and diag(d) == ["method_override"], d.to_wire()


def test_method_override_naming_the_method_itself_is_harmless(engine: Engine) -> None:
    assert call(engine, "/v1/charges/ch_1", "POST",
                headers={"X-HTTP-Method-Override": "post"}).allowed


# ------------------------------------------------------------- host and path override

@pytest.mark.parametrize("headers", [
    {"Host": "internal.example.com"},
    {"host": "api.example.com.evil.com"},
    {":authority": "internal.example.com"},
    {"X-Forwarded-Host": "internal.example.com"},
    {"X-Host": "internal.example.com"},
    {"X-Original-Host": "internal.example.com"},
    {"Forwarded": "for=1.2.3.4;host=internal.example.com"},
    {"Host": ["api.example.com", "internal.example.com"]},
    {"Host": "api.example.com", "host": "internal.example.com"},
])
def test_another_virtual_host_is_refused(engine: Engine, headers: dict[str, Any]) -> None:
    d = call(engine, "/v1/ping", headers=headers)
    assert not d.allowed
    assert diag(d) in (["host_override"], ["ambiguous_header"]), d.to_wire()


@pytest.mark.parametrize("value", ["api.example.com", "API.Example.COM.", "api.example.com:443",
                                   "api.example.com:8443"])
def test_host_header_naming_the_authorized_host_is_fine(engine: Engine, value: str) -> None:
    # Servers pick the virtual host by name; the port reached is the URL's.
    assert call(engine, "/v1/ping", headers={"Host": value}).allowed


@pytest.mark.parametrize("header", ["X-Original-URL", "X-Rewrite-URL", "X-Original-URI",
                                    "X-Forwarded-URI"])
def test_path_override_headers_are_refused(engine: Engine, header: str) -> None:
    d = call(engine, "/v1/ping", headers={header: "/v1/accounts/acct_1"})
    assert not d.allowed and diag(d) == ["path_override"], d.to_wire()
    assert call(engine, "/v1/ping", headers={header: "/v1/ping"}).allowed  # control


# ------------------------------------------------------------------ ports and schemes

@settings(max_examples=100, deadline=None)
@example(port=8080, host="metadata.internal", scheme="https")  # a tool binds these two
@example(port=80, host="[::ffff:169.254.169.254]", scheme="https")
@given(port=st.integers(min_value=1, max_value=65535),
       host=st.sampled_from(["metadata.internal", "METADATA.internal.", "169.254.169.254",
                             "[::ffff:169.254.169.254]", "[::FFFF:a9fe:a9fe]"]),
       scheme=st.sampled_from(["https", "http"]))
def test_an_egress_deny_without_a_port_covers_every_port(engine: Engine, port: int, host: str,
                                                         scheme: str) -> None:
    d = call(engine, "/latest/meta-data", host=f"{host}:{port}", scheme=scheme)
    assert d.outcome == "egress_deny", d.to_wire()


@pytest.mark.parametrize("host", ["[::a9fe:a9fe]", "[64:ff9b::a9fe:a9fe]",
                                  "[::169.254.169.254]"])
def test_other_ipv6_spellings_of_an_ipv4_address_are_refused(engine: Engine,
                                                             host: str) -> None:
    d = call(engine, "/", host=host)
    assert d.outcome == "invalid_request" and diag(d) == ["invalid_host"], d.to_wire()


def test_the_scheme_is_part_of_the_decision(engine: Engine) -> None:
    assert call(engine, "/v1/ping").allowed  # no scheme given: https
    assert call(engine, "/v1/ping", scheme="HTTPS").allowed
    d = call(engine, "/v1/ping", scheme="http")
    assert d.outcome == "egress_deny", d.to_wire()
    assert call(engine, "/x", host="legacy.example.com", scheme="http").allowed
    assert call(engine, "/x", host="legacy.example.com").outcome == "egress_deny"
    for bad in ("ftp", "ws", "", 7):
        d = call(engine, "/v1/ping", scheme=bad)
        assert d.outcome == "invalid_request" and diag(d) == ["invalid_scheme"], bad


# ------------------------------------------------------------ through the governed client

class _Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                recorder.seen.append((self.command, self.path, self.headers.get("Host", "")))
                self.send_response(204)
                self.end_headers()

            do_GET = do_POST = do_DELETE = _handle  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[Engine, _Recorder]]:
    rec = _Recorder()
    policy = POLICY.replace('"http://legacy.example.com"', f'"http://127.0.0.1:{rec.port}"')
    yield Engine.from_source(policy), rec
    rec.close()


@pytest.mark.parametrize(("kw", "code"), [
    ({"headers": {"Host": "internal.example.com"}}, "host_override"),
    ({"headers": {"X-HTTP-Method-Override": "DELETE"}}, "method_override"),
    ({"headers": {"X-Original-URL": "/admin"}}, "path_override"),
    ({"extensions": {"sni_hostname": "internal.example.com"}}, "host_override"),
    ({"extensions": {"target": b"/admin"}}, "path_override"),
])
def test_governed_client_never_sends_a_retargeted_request(
        live: tuple[Engine, _Recorder], kw: dict[str, Any], code: str) -> None:
    engine, rec = live
    rec.seen.clear()
    with governed_client(engine, "bot") as client, pytest.raises(ToolDenied) as err:
        client.get(f"http://127.0.0.1:{rec.port}/x", **kw)
    codes = [err.value.decision.code, *(x.code for x in err.value.decision.diagnostics)]
    assert code in codes, err.value.decision.to_wire()
    assert rec.seen == []
    with governed_client(engine, "bot") as client:  # control: the plain request leaves
        client.get(f"http://127.0.0.1:{rec.port}/x")
    assert rec.seen == [("GET", "/x", f"127.0.0.1:{rec.port}")]


def test_governed_client_sends_the_scheme() -> None:
    engine = Engine.from_source(POLICY)
    sent: list[httpx.Request] = []
    inner = httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(204))
    with governed_client(engine, "bot", inner=inner) as client:
        assert client.get("https://api.example.com/v1/ping").status_code == 204
        with pytest.raises(ToolDenied) as err:
            client.get("http://api.example.com/v1/ping")
    assert err.value.outcome == "egress_deny"
    assert [str(r.url) for r in sent] == ["https://api.example.com/v1/ping"]
