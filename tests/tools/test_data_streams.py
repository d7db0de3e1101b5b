"""NTFS default data streams for deny routes: on an NTFS upstream (IIS) ``name::$DATA``
names the unnamed default data stream of ``name``, i.e. the file itself, so
``/admin::$DATA`` (any case, percent-encoded too) reaches ``/admin`` there. Deny routes
match after removing a segment's ``::$data`` suffix, and any other ``::$type`` (the
unnamed stream of another attribute type: an attribute of the file, or an error on
NTFS), with its trailing dots and spaces, on the request path and on the deny route;
other ``:`` suffixes stay (an API's custom method ``/v1/items:search`` is not
``/v1/items``, ``/admin:x:$DATA`` is the data stream ``x``); allow routes stay exact.

The reference here is an NTFS-style model written apart from the implementation: split
on ``/``, percent-decode each segment, ignore ASCII case, strip trailing ``.`` and
``' '``, drop a ``::$type`` stream suffix, strip trailing dots and spaces again.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from policyengine.engine import Engine
from policyengine.tools import fold_path

from .spellings import outcome, spelled

POLICY = """role r: x:*
agent "bot": r
tool up: http "api.example.com" {
  ANY "/**" -> x:any
  deny "/admin"
  deny "/v1/items"
  deny "/v1/keys/**"
}
"""


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_source(POLICY)


@pytest.mark.parametrize("path", [
    "/admin::$DATA", "/admin::$data", "/Admin::$Data", "/admin%3A%3A%24DATA",
    "/admin%3a%3a%24data", "/admin::%24DATA", "/admin::$DATA/", "/admin::$DATA.",
    "/admin::$DATA%20", "/admin.::$DATA", "/admin. ::$DATA", "/ADMIN%2E::$DATA.%20",
    "/v1/keys::$DATA/x", "/v1/keys/k::$DATA", "/v1/items::$DATA",
    # any other type of unnamed stream: an attribute of the file (or an error on NTFS)
    "/admin::$DATAx", "/admin::$DAT", "/admin::$INDEX", "/admin::$EA", "/admin::$BITMAP",
])
def test_the_default_data_stream_of_a_denied_path_is_denied(engine: Engine,
                                                            path: str) -> None:
    assert outcome(engine, path) == "route_deny", path


@pytest.mark.parametrize("path", [
    "/v1/items:search", "/v1/items:batchGet", "/admin:$DATA", "/admin:x:$DATA",
    "/admin:$BITMAP", "/admin::$", "/admin::$DATA%C3%A9", "/admins::$DATA",
    "/x/admin::$DATA", "/admin::$DATA/x",
])
def test_other_colon_suffixes_and_neighbours_are_allowed(engine: Engine, path: str) -> None:
    assert outcome(engine, path) == "policy_allow", path


def test_a_deny_route_with_the_stream_suffix_denies_the_file() -> None:
    engine = Engine.from_source(POLICY.replace('"/admin"', '"/admin::$DATA"'))
    for path in ("/admin", "/ADMIN", "/admin::$data", "/admin.", "/admin/"):
        assert outcome(engine, path) == "route_deny", path
    assert outcome(engine, "/admins") == "policy_allow"


def test_fold_path_drops_the_stream_suffix_only() -> None:
    assert fold_path("/Admin::$DATA/x::$data.%20/y") == "/admin/x/y"
    assert fold_path("/v1/items:search") == "/v1/items:search"
    assert fold_path("/a:$data/b::$datax/c:x:$data") == "/a:$data/b/c:x:$data"


def test_allow_routes_stay_exact() -> None:
    engine = Engine.from_source('role r: x:*\nagent "bot": r\ntool up: http '
                                '"api.example.com" {\n  GET "/admin" -> x:one\n}\n')
    assert outcome(engine, "/admin") == "policy_allow"
    assert outcome(engine, "/admin::$DATA") == "route_deny"  # no route, not a match


# ------------------------------------------------------------ the NTFS model (reference)

def ntfs_key(path: str) -> tuple[str, ...]:
    """What an NTFS upstream compares (modelled apart from the implementation)."""
    segments = path[1:].split("/")
    if len(segments) > 1 and segments[-1] == "":
        segments.pop()
    out = []
    for s in segments:
        name = unquote(s).lower().rstrip(". ")
        stream = re.search(r"::\$[a-z0-9_]+$", name)
        if stream is not None:
            name = name[:stream.start()]
        out.append(name.rstrip(". "))
    return tuple(out)


_SEGMENT = st.text(st.sampled_from("abcXYZ09-_:"), min_size=1, max_size=6).filter(
    lambda s: s[0] != ":" and not s.lower().endswith(("::", ":")))
_DOTS = st.lists(st.sampled_from([".", " ", "%2e", "%20"]), max_size=2).map("".join)


@st.composite
def _segment_spelling(draw: st.DrawFn, segment: str) -> str:
    """A spelling of ``segment`` NTFS takes for it: any case or encoding, trailing dots
    and spaces, maybe the default data stream suffix."""
    out = draw(spelled(segment)) + draw(_DOTS)
    if draw(st.booleans()):
        out += draw(spelled("::$DATA")) + draw(_DOTS)
    return out


@settings(max_examples=200, deadline=None)
@example(deny=["admin"], data=None)
@given(deny=st.lists(_SEGMENT, min_size=1, max_size=3), data=st.data())
def test_what_ntfs_takes_for_a_denied_path_is_denied(deny: list[str],
                                                     data: st.DataObject | None) -> None:
    route = "/v1/" + "/".join(deny)
    engine = Engine.from_source(POLICY.replace('"/admin"', f'"{route}"'))
    if data is None:  # the audited case
        path = "/v1/admin%3A%3A%24DATA"
    else:
        path = "/v1/" + "/".join(data.draw(_segment_spelling(s)) for s in deny)
        if data.draw(st.booleans()):
            path += "/"
    assert ntfs_key(path) == ntfs_key(route)
    assert outcome(engine, path) == "route_deny", (route, path)


@settings(max_examples=200, deadline=None)
@given(deny=_SEGMENT, other=_SEGMENT, suffix=st.sampled_from(
    [":search", ":$data", ":x:$data", ":x::$data", "::$", "::data", "::$dat%C3%A9"]))
def test_what_ntfs_takes_for_another_file_is_not_denied(deny: str, other: str,
                                                        suffix: str) -> None:
    """A path the model keys apart from the deny route is not denied by it."""
    engine = Engine.from_source(POLICY.replace('"/admin"', f'"/v1/d/{deny}"'))
    path = f"/v1/d/{other}{suffix}"
    if ntfs_key(path) != ntfs_key(f"/v1/d/{deny}"):
        assert outcome(engine, path) == "policy_allow", (deny, path)
