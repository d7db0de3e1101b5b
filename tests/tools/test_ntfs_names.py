"""NTFS spellings of a denied path that deny routes must still match, and one they must
not take for it:

* a directory's default index stream: on NTFS ``dir::$INDEX_ALLOCATION`` and
  ``dir:$I30:$INDEX_ALLOCATION`` name the directory ``dir`` itself ([MS-FSCC] 5.1
  "NTFS Streams"), so ``/admin::$INDEX_ALLOCATION/users`` reaches ``/admin/users`` on an
  NTFS upstream (IIS); stream type names are case-insensitive;
* 8.3 short names: with short names enabled, ``/ADMINI~1`` opens ``/administrator``; a
  segment shaped like a short name a denied literal segment may have been given is
  denied at that position (allow routes stay exact);
* leading spaces are *not* removed: Win32 path normalisation trims a segment's trailing
  dots and spaces only (.NET "File path formats on Windows systems", *Trim characters*),
  so ``/ admin`` is another name on every back end we know of, and is not denied.

The references here are models written apart from the implementation: ``ntfs_key``
(what NTFS compares for a name) and ``short_names`` (the names NTFS may give a long one).
"""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from policyengine.engine import Engine
from policyengine.tools import RoutePattern, fold_path

from .spellings import outcome, spelled

POLICY = """role r: x:*
agent "bot": r
tool up: http "api.example.com" {
  ANY "/**" -> x:any
  GET "/administrator" -> x:one
  deny "/admin/**"
  deny "/administrator"
  deny "/v1/keys/**"
  deny "/v1/web.config"
  deny "/v1/a+b/x"
}
"""


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_source(POLICY)


# ------------------------------------------------------------ directory index streams

@pytest.mark.parametrize("path", [
    "/admin::$INDEX_ALLOCATION/users", "/admin::$index_allocation/users",
    "/Admin::$Index_Allocation/users", "/admin:$I30:$INDEX_ALLOCATION/users",
    "/admin:$i30:$index_allocation/users", "/admin%3A%3A%24INDEX_ALLOCATION/users",
    "/admin%3a%24I30%3a%24INDEX_ALLOCATION/users", "/admin::%24INDEX%5FALLOCATION/users",
    "/admin::$INDEX_ALLOCATION", "/admin::$INDEX_ALLOCATION/", "/admin.::$INDEX_ALLOCATION/u",
    "/admin::$INDEX_ALLOCATION.%20/u", "/admin::$INDEX_ALLOCATION::$DATA/u",
    "/v1/keys::$INDEX_ALLOCATION/k", "/v1/keys:$I30:$INDEX_ALLOCATION",
    "/adm%C4%B1n::$%C4%B1ndex_allocation/u",  # dotless i folds to i (Java, NTFS upcase)
])
def test_the_index_stream_of_a_denied_directory_is_denied(engine: Engine,
                                                          path: str) -> None:
    assert outcome(engine, path) == "route_deny", path


@pytest.mark.parametrize("path", [
    "/admins::$INDEX_ALLOCATION/u", "/x/admin::$INDEX_ALLOCATION", "/admin:$I30/u",
    "/admin:$I30:$DATA/u", "/admin::$INDEX_ALLOCATIONS/u", "/admin::$INDEX_ROOT/u",
    "/admin:x:$INDEX_ALLOCATION/u", "/admin:$I31:$INDEX_ALLOCATION/u",
    "/admin:$INDEX_ALLOCATION/u",
])
def test_other_streams_and_neighbours_are_allowed(engine: Engine, path: str) -> None:
    assert outcome(engine, path) == "policy_allow", path


def test_a_deny_route_with_the_index_stream_denies_the_directory() -> None:
    engine = Engine.from_source(POLICY.replace('"/admin/**"',
                                               '"/admin:$I30:$INDEX_ALLOCATION/**"'))
    for path in ("/admin", "/ADMIN/x", "/admin::$index_allocation/x", "/admin./"):
        assert outcome(engine, path) == "route_deny", path
    assert outcome(engine, "/admins") == "policy_allow"


def test_fold_path_drops_the_index_stream_suffixes_only() -> None:
    assert fold_path("/A::$INDEX_ALLOCATION/b:$I30:$Index_Allocation./c") == "/a/b/c"
    assert fold_path("/a:$i30/b::$index_root") == "/a:$i30/b::$index_root"


# ------------------------------------------------------------------- leading spaces

@pytest.mark.parametrize("path", ["/%20admin", "/ admin", "/%20%20admin/x",
                                  "/%20administrator", "/v1/%20keys/k"])
def test_leading_spaces_are_kept(engine: Engine, path: str) -> None:
    """Not trimmed by Win32 or .NET path normalisation: another name, not denied."""
    assert outcome(engine, path) == "policy_allow", path
    assert fold_path("/%20Admin%20./x") == "/%20admin/x"


# ------------------------------------------------------------------------ short names

@pytest.mark.parametrize("path", [
    "/ADMINI~1", "/admini~1", "/Admini~2", "/ADMINI~1/", "/ADMINI~1.", "/ADMINI~1%20",
    "/ADMINI~1::$DATA", "/ADMINI%7E1", "/ADMIN~12", "/ADMI~123", "/A~123456", "/AD~1",
    "/ADMINI~1.TXT", "/AD1F2E~1", "/AD7E~12", "/ADM%C4%B0N~1",
    "/ADMIN~1/users", "/ADMIN~1::$INDEX_ALLOCATION/u", "/A~1/x",  # deny "/admin/**"
    "/v1/KEYS~1/k", "/v1/k~1", "/V1/KE~1", "/v1/WEB~1.CON", "/v1/WEBCON~1",
    "/v1/A_B~1/x", "/v1/A~1/x", "/v1/A1234~1/x",
])
def test_a_short_name_of_a_denied_segment_is_denied(engine: Engine, path: str) -> None:
    assert outcome(engine, path) == "route_deny", path


@pytest.mark.parametrize("path", [
    "/~user/", "/~admin", "/v1/~keys/k", "/admin~", "/a~b", "/admini~x", "/admini~",
    "/~1", "/A~1234567", "/ADMINIS~1", "/ADMINI~12", "/XDMINI~1", "/ADMINX~1",
    "/ADMINI~1.TEXT",
    "/AD1F2G~1", "/v1/WEB~1X.CON", "/v1/A_B~1/y", "/v1/AX~1/x", "/v1/AG~1/x",
    "/v1/x/KEYS~1",
    "/administrator~1", "/%20ADMINI~1",
])
def test_other_tilde_paths_are_allowed(engine: Engine, path: str) -> None:
    assert outcome(engine, path) == "policy_allow", path


def test_a_short_name_of_a_non_ascii_segment_is_denied() -> None:
    engine = Engine.from_source(POLICY.replace('"/v1/a+b/x"', '"/Stra%C3%9Fe"'))
    for path in ("/STRA%C3%9FE~1", "/STRASS~1", "/STRA_E~1", "/STRAXE~1", "/ST9A0C~1"):
        assert outcome(engine, path) == "route_deny", path
    assert outcome(engine, "/STRBSS~1") == "policy_allow"


def test_allow_routes_stay_exact() -> None:
    engine = Engine.from_source('role r: x:*\nagent "bot": r\ntool up: http '
                                '"api.example.com" {\n  GET "/administrator" -> x:one\n}\n')
    assert outcome(engine, "/administrator") == "policy_allow"
    assert outcome(engine, "/ADMINI~1") == "route_deny"  # no route, not a match
    assert RoutePattern.compile("/administrator").covers_short_name("/admini~1") is False


def test_the_rule_is_per_position() -> None:
    deny = RoutePattern.compile("/v1/keys/{id}/secret", fold=True)
    assert deny.covers_short_name("/v1/keys~1/k_1/secret")
    assert deny.covers_short_name("/v1/keys/k_1/secret~1")
    assert not deny.covers_short_name("/v1/keys~1/k_1/public")
    assert not deny.covers_short_name("/v1/keys~1/k_1")


# ------------------------------------------------------- NTFS models (the references)

_STREAMS = ("::$data", "::$index_allocation", ":$i30:$index_allocation")


def ntfs_key(path: str) -> tuple[str, ...]:
    """What an NTFS upstream compares for a path without short names."""
    segments = path[1:].split("/")
    if len(segments) > 1 and segments[-1] == "":
        segments.pop()
    out = []
    for s in segments:
        name = unquote(s).lower().rstrip(". ")
        for stream in _STREAMS:
            if name.endswith(stream):
                name = name[:-len(stream)].rstrip(". ")
        out.append(name)
    return tuple(out)


def short_names(long: str, number: int, hash_hex: str) -> list[str]:
    """Short names NTFS may give ``long`` (upper case): ``BASE~N[.EXT]`` with BASE the
    first six characters left after dropping spaces and dots (``+,;=[]`` written ``_``),
    N up to 4; and from the fifth collision on the first two of those and four hex
    digits of a hash (``hash_hex``), the base shortened as the number grows."""
    name = long.lstrip(".")
    base_part, dot, ext_part = name.rpartition(".")
    if not dot:
        base_part, ext_part = name, ""
    chars = "".join("_" if c in "+,;=[]" else c for c in base_part.replace(" ", "")
                    .replace(".", "")).upper()
    ext = "".join("_" if c in "+,;=[]" else c for c in ext_part.replace(" ", ""))[:3]
    suffix = f".{ext.upper()}" if ext else ""
    if not chars:
        return []
    out = [f"{chars[:6]}~{min(number, 4)}{suffix}"]
    tail = f"~{number}"
    hashed = (chars[:2] + hash_hex.upper())[:8 - len(tail)]
    out.append(f"{hashed}{tail}{suffix}")
    return [n for n in out if n[0] != "~"]


_NAME = st.text(st.sampled_from("abcdmnXYZ019-_+ ."), min_size=1, max_size=14).filter(
    lambda s: s.strip(". ") != "" and s[-1] not in ". " and not s.startswith(" "))


_DOTS = st.lists(st.sampled_from([".", "%2e", "%20"]), max_size=2).map("".join)


@settings(max_examples=200, deadline=None)
@example(deny="administrator", data=None)
@given(deny=_NAME, data=st.data())
def test_any_short_name_of_a_denied_segment_is_denied(deny: str,
                                                      data: st.DataObject | None) -> None:
    """Every short name the model gives a denied segment, in any case or encoding, with
    trailing dots, spaces or a stream suffix, is denied; under a ``**`` deny too."""
    literal = deny.replace(" ", "%20")
    engine = Engine.from_source(POLICY.replace('"/v1/a+b/x"', f'"/v2/{literal}/x/**"'))
    if data is None:  # the audited case
        assert outcome(engine, "/ADMINI~1") == "route_deny"
        return
    number = data.draw(st.integers(1, 9999999))
    hash_hex = data.draw(st.text(st.sampled_from("0123456789abcdef"), min_size=4,
                                 max_size=4))
    for short in short_names(deny, number, hash_hex):
        segment = data.draw(spelled(short)) + data.draw(_DOTS)
        if data.draw(st.booleans()):
            segment += data.draw(st.sampled_from(["::$DATA", "::$index_allocation"]))
        path = f"/v2/{segment}/x" + data.draw(st.sampled_from(["", "/", "/y/z"]))
        assert outcome(engine, path) == "route_deny", (deny, short, path)


@settings(max_examples=200, deadline=None)
@given(deny=_NAME, other=_NAME, number=st.integers(1, 9999999),
       hash_hex=st.text(st.sampled_from("0123456789abcdef"), min_size=4, max_size=4))
def test_a_short_name_of_another_name_is_not_denied(deny: str, other: str, number: int,
                                                    hash_hex: str) -> None:
    """The short names the model gives a name that starts with another character than
    the denied one (after the characters short names drop) are not denied."""
    def first(name: str) -> str:
        kept = name.replace(" ", "").replace(".", "")
        return "_" if kept[:1] in "+,;=[]" else kept[:1].lower()
    if first(other) in (first(deny), "_"):
        return
    literal = deny.replace(" ", "%20")
    engine = Engine.from_source(POLICY.replace('"/v1/a+b/x"', f'"/v2/{literal}"'))
    for short in short_names(other, number, hash_hex):
        assert outcome(engine, f"/v2/{short}") == "policy_allow", (deny, short)


@settings(max_examples=200, deadline=None)
@given(segment=st.text(st.sampled_from("abcd~1.-_"), min_size=1, max_size=10))
def test_tilde_segments_that_are_not_short_names_are_allowed(segment: str) -> None:
    """A segment with '~' is only taken for a denied one when it has the short-name
    shape (base 1-6, '~', digits, at most 8 in all, extension 1-3) and a fitting base."""
    if segment.strip(".") == "" or segment.endswith("."):
        return
    engine = Engine.from_source(POLICY.replace('"/v1/a+b/x"', '"/v2/abcdab"'))
    name, dot, ext = segment.partition(".")
    base, tilde, number = name.rpartition("~")
    shaped = (bool(tilde) and 1 <= len(base) <= 6 and number.isdigit()
              and len(base) + 1 + len(number) <= 8 and (not dot or 1 <= len(ext) <= 3)
              and "." not in ext)
    fits = segment == "abcdab" or (shaped and ("abcdab".startswith(base) or any(
        len(base) > k and base[:k] == "abcdab"[:k]
        and all(c in "0123456789abcdef" for c in base[k:]) for k in (1, 2))))
    expected = "route_deny" if fits else "policy_allow"
    assert outcome(engine, f"/v2/{segment}") == expected, segment


@settings(max_examples=200, deadline=None)
@given(deny=st.lists(st.text(st.sampled_from("abcXYZ09-_"), min_size=1, max_size=6),
                     min_size=1, max_size=3), data=st.data())
def test_what_ntfs_takes_for_a_denied_directory_is_denied(deny: list[str],
                                                          data: st.DataObject) -> None:
    """Any case or encoding, trailing dots and spaces and a stream suffix naming the
    segment itself (``::$DATA``, ``::$INDEX_ALLOCATION``, ``:$I30:$INDEX_ALLOCATION``)."""
    route = "/v1/" + "/".join(deny)
    engine = Engine.from_source(POLICY.replace('"/v1/a+b/x"', f'"{route}/**"'))
    parts = []
    for s in deny:
        out = data.draw(spelled(s)) + data.draw(_DOTS)
        if data.draw(st.booleans()):
            out += data.draw(spelled(data.draw(st.sampled_from(_STREAMS)).upper()))
            out += data.draw(_DOTS)
        parts.append(out)
    path = "/v1/" + "/".join(parts) + data.draw(st.sampled_from(["", "/", "/sub"]))
    assert ntfs_key(path)[:len(deny) + 1] == ntfs_key(route)
    assert outcome(engine, path) == "route_deny", (route, path)
