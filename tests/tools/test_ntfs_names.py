"""NTFS spellings of a denied path that deny routes must still match, and one they must
not take for it:

* a directory's default index stream: on NTFS ``dir::$INDEX_ALLOCATION`` and
  ``dir:$I30:$INDEX_ALLOCATION`` name the directory ``dir`` itself ([MS-FSCC] 5.1
  "NTFS Streams"), so ``/admin::$INDEX_ALLOCATION/users`` reaches ``/admin/users`` on an
  NTFS upstream (IIS); stream type names are case-insensitive; the directory's other
  attributes (``dir::$INDEX_ROOT``, ``dir:$I30:$BITMAP``: any ``::$TYPE``, any
  ``:NAME:$TYPE`` but ``$DATA``) are parts of it, denied with it;
* 8.3 short names: with short names enabled, ``/ADMINI~1`` opens ``/administrator``;
  which long name a short one opens cannot be told from the path (the number, the
  hashed form, the code page, names set by hand), so a segment that may be a short
  name (8.3-sized, with ``~`` and a digit) is denied at the position of any literal
  segment of a deny route (allow routes stay exact);
* leading spaces are *not* removed: Win32 path normalisation trims a segment's trailing
  dots and spaces only (.NET "File path formats on Windows systems", *Trim characters*),
  so ``/ admin`` is another name on every back end we know of, and is not denied.

The references here are models written apart from the implementation: ``ntfs_key``
(what NTFS compares for a name), ``short_names`` (the names NTFS may give a long one)
and ``may_be_short`` (what a short name looks like).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from policyengine.engine import Engine
from policyengine.tools import RoutePattern, fold_path
from policyengine.tools._patterns import is_short_name

from .spellings import NTFS_TYPES, other_stream, outcome, own_stream, spelled

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
    # the directory's other attributes: its index root and bitmap (both named $I30) ...
    "/admin::$INDEX_ROOT/u", "/admin:$I30:$INDEX_ROOT/u", "/admin::$BITMAP/u",
    "/admin:$I30:$BITMAP/u", "/admin:$i30:$bitmap", "/admin%3A%24I30%3A%24BITMAP/u",
    "/admin::$INDEX_ROOT.%20/u", "/admin.:$I30:$BITMAP::$DATA/u", "/v1/keys::$BITMAP/k",
    "/admin::$ATTRIBUTE_LIST/u", "/admin::$EA/u", "/admin:$EFS:$LOGGED_UTILITY_STREAM/u",
    # ... and a named index of another name, an unknown type (errors on NTFS)
    "/admin:x:$INDEX_ALLOCATION/u", "/admin:$I31:$INDEX_ALLOCATION/u",
    "/admin::$INDEX_ALLOCATIONS/u",
])
def test_the_index_stream_of_a_denied_directory_is_denied(engine: Engine,
                                                          path: str) -> None:
    assert outcome(engine, path) == "route_deny", path


@pytest.mark.parametrize("path", [
    "/admins::$INDEX_ALLOCATION/u", "/x/admin::$INDEX_ALLOCATION", "/admin:$I30/u",
    "/admin:$I30:$DATA/u", "/admin:$INDEX_ALLOCATION/u", "/admin:$BITMAP/u",
    "/admin:$INDEX_ROOT/u", "/admin:x:$DATA/u", "/admins::$BITMAP/u",
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
    assert fold_path("/a:$i30/b::$index_root/c:$i30:$bitmap/d:x:$data") == "/a:$i30/b/c/d:x:$data"


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
    # a short name whose base no denied segment starts with: the number, the hash, the
    # code page or a name set by hand may give the long name any short one
    "/XDMINI~1", "/ADMINX~1", "/AD1F2G~1", "/XYZ~1", "/~1", "/ADMIN~1X", "/AB~1~2",
    "/v1/AX~1/x", "/v1/AG~1/x", "/v1/WEB~1X.CON", "/v1/A_B~1/y", "/v1/FOO~9.BAR",
    "/admin.~1", "/12345~78.abc", "/Q~1%C3%A9",
])
def test_a_short_name_at_a_denied_position_is_denied(engine: Engine, path: str) -> None:
    assert outcome(engine, path) == "route_deny", path


@pytest.mark.parametrize("path", [
    "/~user/", "/~admin", "/v1/~keys/k", "/admin~", "/a~b", "/admini~x", "/admini~",
    "/A~1234567", "/ADMINIS~1", "/ADMINI~12", "/ADMINI~1.TEXT", "/ADMINI~1.T.X",
    "/v1/x/KEYS~1", "/administrator~1", "/%20ADMINI~1", "/v2/ADMINI~1",
])
def test_other_tilde_paths_are_allowed(engine: Engine, path: str) -> None:
    assert outcome(engine, path) == "policy_allow", path


def test_a_short_name_of_a_non_ascii_segment_is_denied() -> None:
    engine = Engine.from_source(POLICY.replace('"/v1/a+b/x"', '"/Stra%C3%9Fe"'))
    for path in ("/STRA%C3%9FE~1", "/STRASS~1", "/STRA_E~1", "/STRAXE~1", "/ST9A0C~1",
                 "/STRBSS~1",
                 # eight characters as sent, twelve once folded (ß is ss)
                 "/%C3%9F%C3%9F%C3%9F%C3%9F%C3%9F%C3%9F~1"):
        assert outcome(engine, path) == "route_deny", path
    assert outcome(engine, "/STRASSE~1") == "policy_allow"  # nine characters


def test_allow_routes_stay_exact() -> None:
    engine = Engine.from_source('role r: x:*\nagent "bot": r\ntool up: http '
                                '"api.example.com" {\n  GET "/administrator" -> x:one\n}\n')
    assert outcome(engine, "/administrator") == "policy_allow"
    assert outcome(engine, "/ADMINI~1") == "route_deny"  # no route, not a match
    assert RoutePattern.compile("/administrator").covers_short_name("/admini~1") is False


def test_the_rule_is_per_position() -> None:
    deny = RoutePattern.compile("/v1/keys/{id}/secret", fold=True)
    assert deny.covers_short_name("/v1/keys~1/k_1/secret")
    assert deny.covers_short_name("/v1/xyz~1/k_1/secret")
    assert deny.covers_short_name("/v1/keys/k_1/secret~1")
    assert not deny.covers_short_name("/v1/keys~1/k_1/public")
    assert not deny.covers_short_name("/v1/keys~1/k_1")
    assert not deny.covers_short_name("/v1/keys/k~1")


def test_is_short_name() -> None:
    for name in ("admini~1", "ADMINI%7E1", "gi7eba~1.con", "ab~12345", "~1", "a~1b.c~2"):
        assert is_short_name(name), name
    for name in ("~user", "admini~x", "adminis~1", "admini~1.text", "a~1.b.c", "", "a.b~1c"):
        assert not is_short_name(name), name


# ------------------------------------------------------- NTFS models (the references)

#: A stream suffix naming an attribute of the segment it ends (folded): ``::$TYPE`` or
#: ``:NAME:$TYPE`` of a type other than ``$DATA``.
_OWN_STREAM = re.compile(r"(?:::\$[a-z0-9_]+|:[^:]+:\$(?!data$)[a-z0-9_]+)$")


def ntfs_key(path: str) -> tuple[str, ...]:
    """What an NTFS upstream compares for a path without short names."""
    segments = path[1:].split("/")
    if len(segments) > 1 and segments[-1] == "":
        segments.pop()
    out = []
    for s in segments:
        name = unquote(s).lower().rstrip(". ")
        while (stream := _OWN_STREAM.search(name)) is not None:
            name = name[:stream.start()].rstrip(". ")
        out.append(name)
    return tuple(out)


def may_be_short(segment: str) -> bool:
    """An 8.3 name (a base of 1-8 characters, an extension of 1-3 after one dot) with
    ``~`` and a digit in it: what a short name NTFS made, or one set by hand with a
    ``~``, looks like."""
    name = unquote(segment)
    base, dot, ext = name.partition(".")
    return (1 <= len(base) <= 8 and (not dot or 1 <= len(ext) <= 3) and "." not in ext
            and any(name[i] == "~" and name[i + 1] in "0123456789"
                    for i in range(len(name) - 1)))


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
       hash_hex=st.text(st.sampled_from("0123456789abcdef"), min_size=4, max_size=4),
       hand=st.text(st.sampled_from("ABCXYZ019_-~"), min_size=0, max_size=5),
       digit=st.sampled_from("0123456789"))
def test_a_short_name_of_any_name_is_denied_at_a_denied_position(
        deny: str, other: str, number: int, hash_hex: str, hand: str, digit: str) -> None:
    """Which long name a short one opens cannot be told from the path, so every short
    name the model gives any name, and one set by hand (any 8.3 name with '~' and a
    digit), is denied at the position of a denied segment, and only there."""
    literal = deny.replace(" ", "%20")
    engine = Engine.from_source(POLICY.replace('"/v1/a+b/x"', f'"/v2/{literal}/x"'))
    by_hand = (hand + "~" + digit)[-8:]
    for short in [*short_names(other, number, hash_hex), by_hand]:
        assert may_be_short(short), short
        assert outcome(engine, f"/v2/{short}/x") == "route_deny", (deny, short)
        assert outcome(engine, f"/v2/{short}/y") == "policy_allow", (deny, short)
        assert outcome(engine, f"/v3/{short}/x") == "policy_allow", (deny, short)


@settings(max_examples=300, deadline=None)
@given(segment=st.text(st.sampled_from("abcd~1.-_"), min_size=1, max_size=10))
def test_tilde_segments_that_are_not_short_names_are_allowed(segment: str) -> None:
    """A segment is taken for a denied one when it is the denied one, or when it may
    be a short name (:func:`may_be_short`); other segments with '~' are ordinary."""
    if segment.strip(".") == "" or segment.endswith("."):
        return
    engine = Engine.from_source(POLICY.replace('"/v1/a+b/x"', '"/v2/abcdab"'))
    fits = segment == "abcdab" or may_be_short(segment)
    expected = "route_deny" if fits else "policy_allow"
    assert outcome(engine, f"/v2/{segment}") == expected, segment
    assert is_short_name(segment) is may_be_short(segment), segment


@settings(max_examples=200, deadline=None)
@given(deny=st.lists(st.text(st.sampled_from("abcXYZ09-_"), min_size=1, max_size=6),
                     min_size=1, max_size=3), data=st.data())
def test_what_ntfs_takes_for_a_denied_directory_is_denied(deny: list[str],
                                                          data: st.DataObject) -> None:
    """Any case or encoding, trailing dots and spaces and stream suffixes naming (an
    attribute of) the segment itself (``::$DATA``, ``::$INDEX_ALLOCATION``,
    ``:$I30:$INDEX_ALLOCATION``, ``::$INDEX_ROOT``, ``:$I30:$BITMAP`` ...)."""
    route = "/v1/" + "/".join(deny)
    engine = Engine.from_source(POLICY.replace('"/v1/a+b/x"', f'"{route}/**"'))
    parts = []
    for s in deny:
        out = data.draw(spelled(s)) + data.draw(_DOTS)
        for _ in range(data.draw(st.integers(0, 2))):
            out += data.draw(own_stream()) + data.draw(_DOTS)
        parts.append(out)
    path = "/v1/" + "/".join(parts) + data.draw(st.sampled_from(["", "/", "/sub"]))
    assert ntfs_key(path)[:len(deny) + 1] == ntfs_key(route)
    assert outcome(engine, path) == "route_deny", (route, path)


@settings(max_examples=200, deadline=None)
@given(deny=st.text(st.sampled_from("abcXYZ09-_"), min_size=1, max_size=6), data=st.data())
def test_another_stream_of_a_denied_file_is_not_denied(deny: str, data: st.DataObject) -> None:
    """``:NAME`` and ``:NAME:$DATA`` (a named data stream) and an API's custom method
    (``:search``) name another stream or nothing NTFS knows: not denied."""
    engine = Engine.from_source(POLICY.replace('"/v1/a+b/x"', f'"/v2/{deny}"'))
    path = f"/v2/{data.draw(spelled(deny))}{data.draw(other_stream())}"
    assert ntfs_key(path) != ntfs_key(f"/v2/{deny}")
    assert outcome(engine, path) == "policy_allow", (deny, path)


def test_every_ntfs_type_of_a_denied_directory_is_denied(engine: Engine) -> None:
    for kind in NTFS_TYPES:
        for path in (f"/admin::{kind}/u", f"/admin:$I30:{kind.lower()}/u"):
            expected = "policy_allow" if path == "/admin:$I30:$data/u" else "route_deny"
            assert outcome(engine, path) == expected, path
