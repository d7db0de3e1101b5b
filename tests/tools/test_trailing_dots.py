"""Trailing dots and spaces for deny routes: Windows path normalisation (the Win32 path
APIs, which IIS and any upstream serving files or routes through them use) removes the
trailing periods and spaces of each path segment, so ``/admin.``, ``/admin%2e`` and
``/admin%20`` reach ``/admin`` there. Deny routes match after that trim (on the request
path and on the deny route); allow routes stay exact; a segment of only dots and spaces
is ``path_traversal``.

The reference here is a Windows-style normaliser modelled independently of the
implementation: split on ``/``, percent-decode each segment, strip its trailing ``.``
and ``' '``, then compare case-insensitively (ASCII here, the existing case rule).
"""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from policyengine.engine import Engine
from policyengine.lang import PolicyError
from policyengine.tools import ToolRequestError, fold_path, normalize_path

from .spellings import DENY_ADMIN, http_call, spelled

POLICY = DENY_ADMIN


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_source(POLICY)


def decide(engine: Engine, path: str, method: str = "GET") -> tuple[str, list[str]]:
    d = http_call(engine, path, method)
    return d.outcome, [x.code for x in d.diagnostics]


@pytest.mark.parametrize("path", [
    "/admin.", "/admin%2e", "/admin%2E", "/admin%20", "/admin ", "/admin. ", "/admin...",
    "/admin.%20.", "/ADMIN%2e%20", "/Admin%2E/", "/admin%20/", "/admin. . ",
])
def test_the_audited_spellings_of_a_denied_path_are_denied(engine: Engine, path: str) -> None:
    assert decide(engine, path)[0] == "route_deny", path


@pytest.mark.parametrize("path", [
    "/admin.x", "/admins.", "/adm.in", "/x/admin.", "/.admin", "/admin%20x", "/admin/x.",
])
def test_controls_next_to_the_denied_path_are_allowed(engine: Engine, path: str) -> None:
    assert decide(engine, path)[0] == "policy_allow", path


@pytest.mark.parametrize("path", [
    "/...", "/admin/...", "/admin/. ", "/admin/.%20", "/admin/.%2E%20", "/%20", "/%20/admin",
    "/a/..%20/admin", "/a/ ./b", "/a/%20%20/",
])
def test_a_segment_of_only_dots_and_spaces_is_path_traversal(engine: Engine,
                                                             path: str) -> None:
    """Windows trims it to ``.``, ``..`` or nothing: it could reach another route."""
    with pytest.raises(ToolRequestError) as info:
        normalize_path(path)
    assert info.value.code == "path_traversal"
    assert decide(engine, path) == ("invalid_request", ["path_traversal"])


@pytest.mark.parametrize("path", ["/a/.b", "/a/b.", "/a/%20b", "/a/b%20", "/a/.b./", "/a.."])
def test_dots_and_spaces_beside_other_characters_are_still_accepted(path: str) -> None:
    normalize_path(path)


def test_a_deny_route_is_trimmed_too() -> None:
    engine = Engine.from_source(POLICY.replace('"/admin"', '"/v1/report. /x"'))
    for path in ("/v1/report/x", "/v1/report./x", "/v1/REPORT%20/x.", "/v1/report. /x"):
        assert decide(engine, path)[0] == "route_deny", path
    assert decide(engine, "/v1/reports/x")[0] == "policy_allow"


def test_a_deny_route_of_only_dots_and_spaces_does_not_compile() -> None:
    with pytest.raises(PolicyError, match="E122"):
        Engine.from_source(POLICY.replace('"/admin"', '"/v1/..."'))


def test_fold_path_trims_each_segment() -> None:
    assert fold_path("/Admin.%20/x../y%20") == "/admin/x/y"
    assert fold_path("/a.b/.c") == "/a.b/.c"
    assert fold_path("/adm%C4%B1n./") == "/admin/"


# ---------------------------------------------------------- the Windows model (reference)

def windows_key(path: str) -> tuple[str, ...]:
    """What a Windows upstream compares (modelled apart from the implementation):
    segments percent-decoded, trailing dots and spaces stripped, ASCII case ignored; a
    trailing ``/`` names the same resource."""
    segments = path[1:].split("/")
    if len(segments) > 1 and segments[-1] == "":
        segments.pop()
    return tuple(unquote(s).rstrip(". ").lower() for s in segments)


_SEGMENT = st.text(st.sampled_from("abcXYZ09-_. "), min_size=1, max_size=6).filter(
    lambda s: s.rstrip(". ") != "")
_TRAILER = st.lists(st.sampled_from([".", " ", "%2e", "%2E", "%20"]), max_size=3).map("".join)


@st.composite
def _spelling(draw: st.DrawFn, segment: str) -> str:
    """``segment`` with some letters in another case or percent-encoded, and a run of
    trailing dots and spaces (raw or encoded) added."""
    return draw(spelled(segment)) + draw(_TRAILER)


@settings(max_examples=200, deadline=None)
@example(deny=["admin"], data=None)
@given(deny=st.lists(_SEGMENT, min_size=1, max_size=3), data=st.data())
def test_what_windows_takes_for_a_denied_path_is_denied(deny: list[str],
                                                        data: st.DataObject | None) -> None:
    """For any deny route and any path the Windows model takes for it (trailing dots and
    spaces per segment, raw or encoded, letters in any case, a trailing ``/``): the call
    is denied."""
    route = "/v1/" + "/".join(deny)
    engine = Engine.from_source(POLICY.replace('"/admin"', f'"{route}"'))
    if data is None:  # the audited case
        path = "/v1/admin%2e"
    else:
        path = "/v1/" + "/".join(data.draw(_spelling(s)) for s in deny)
        if data.draw(st.booleans()):
            path += "/"
    assert windows_key(path) == windows_key(route)
    assert decide(engine, path)[0] == "route_deny", (route, path)


@settings(max_examples=200, deadline=None)
@given(allow=st.lists(_SEGMENT, min_size=1, max_size=3), data=st.data())
def test_allow_routes_stay_exact(allow: list[str], data: st.DataObject) -> None:
    """An allow-only policy answers as before: a path is allowed exactly when, decoded, it
    is the route (no trimming, no case folding); another spelling has no route."""
    route = "/v1/" + "/".join(allow)
    engine = Engine.from_source('role r: x:*\nagent "bot": r\ntool up: http '
                                f'"api.example.com" {{\n  GET "{route}" -> x:one\n}}\n')
    path = "/v1/" + "/".join(data.draw(_spelling(s)) for s in allow)
    outcome = decide(engine, path)[0]
    if unquote(path) == route:
        assert outcome == "policy_allow", (route, path)
    else:
        assert outcome == "route_deny", (route, path)
