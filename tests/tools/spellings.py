"""What the deny-route spelling tests share: asking one HTTP tool call of an engine,
spelling a text in another case or percent-encoded, as a client may send it, and the
NTFS stream suffixes that name (an attribute of) the segment they end. Each test
file keeps its own policy and its own model of what the upstream takes a path for
(Java's case folding, Win32 trimming, NTFS streams and short names)."""

from __future__ import annotations

from hypothesis import strategies as st

from policyengine.decision import ToolDecision
from policyengine.engine import Engine

HOST = "api.example.com"

#: One tool allowing every call but those to ``/admin``: the files that ask how the
#: spellings of one denied path fare start from it (``.replace('"/admin"', ...)`` for
#: another deny route).
DENY_ADMIN = """role r: x:*
agent "bot": r
tool up: http "api.example.com" {
  ANY "/**" -> x:any
  deny "/admin"
}
"""


def http_call(engine: Engine, path: str, method: str = "GET") -> ToolDecision:
    """The decision on ``method path`` to :data:`HOST` by the agent ``bot``."""
    return engine.tool_authorize("bot", transport="http", method=method, host=HOST,
                                 path=path)


def outcome(engine: Engine, path: str, method: str = "GET") -> str:
    """The outcome of :func:`http_call` (``route_deny``, ``policy_allow`` ...)."""
    return http_call(engine, path, method).outcome


@st.composite
def spelled(draw: st.DrawFn, text: str) -> str:
    """``text`` with each character kept, in the other case, or percent-encoded."""
    out = []
    for c in text:
        form = draw(st.integers(0, 2))
        out.append(c.swapcase() if form == 1 else f"%{ord(c):02x}" if form == 2 else c)
    return "".join(out)


#: The NTFS attribute type names ([MS-FSCC] 5.1 "NTFS Streams"; a volume's ``$AttrDef``).
#: A stream is ``name:stream-name:$TYPE``; types compare case-insensitively.
NTFS_TYPES = ("$STANDARD_INFORMATION", "$ATTRIBUTE_LIST", "$FILE_NAME", "$OBJECT_ID",
              "$SECURITY_DESCRIPTOR", "$VOLUME_NAME", "$VOLUME_INFORMATION", "$DATA",
              "$INDEX_ROOT", "$INDEX_ALLOCATION", "$BITMAP", "$REPARSE_POINT",
              "$EA_INFORMATION", "$EA", "$PROPERTY_SET", "$LOGGED_UTILITY_STREAM")


@st.composite
def own_stream(draw: st.DrawFn) -> str:
    """A stream suffix (spelt by :func:`spelled`) that names an attribute of the segment
    it ends, so a deny route of the segment must cover it: ``::$TYPE`` (the unnamed
    stream of any type: ``::$DATA`` the file, ``::$INDEX_ALLOCATION`` the directory,
    ``::$INDEX_ROOT`` ... parts of it) or ``:NAME:$TYPE`` of a type other than ``$DATA``
    (``:$I30:$INDEX_ALLOCATION`` the directory, ``:$I30:$BITMAP`` its index bitmap)."""
    kind = draw(st.sampled_from(NTFS_TYPES))
    names = ["", "$I30", "$I30", "x"] if kind != "$DATA" else [""]
    return draw(spelled(f":{draw(st.sampled_from(names))}:{kind}"))


@st.composite
def other_stream(draw: st.DrawFn) -> str:
    """A ``:`` suffix that names another stream, or nothing NTFS knows (an API's custom
    method): ``:NAME`` and ``:NAME:$DATA`` (a named data stream, ``:$I30`` and
    ``:$INDEX_ALLOCATION`` too), ``:search``. A deny route of the segment does not
    cover it."""
    name = draw(st.sampled_from(["$I30", "$INDEX_ALLOCATION", "$BITMAP", "search", "x"]))
    return draw(spelled(f":{name}" + draw(st.sampled_from(["", ":$DATA"]))))
