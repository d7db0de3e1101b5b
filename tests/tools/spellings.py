"""What the deny-route spelling tests share: asking one HTTP tool call of an engine, and
spelling a text in another case or percent-encoded, as a client may send it. Each test
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
