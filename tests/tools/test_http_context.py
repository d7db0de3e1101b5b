"""The governed client passes a context, per client and per request, so policies that
read ``context.*`` work through it (driven against the real engine with an in-process
transport that records what would leave)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from policyengine import async_governed_client, governed_client
from policyengine.decision import ToolDenied
from policyengine.engine import Engine
from policyengine.tools import CONTEXT_EXTENSION, TOKEN_EXTENSION

POLICY = """namespace ctx
role r: trips:*
agent "bot": r

forbid blocked-ticket: trips:book when context.ticket == "blocked"
forbid other-trip: trips:book when context.trip != "T-1"
forbid spoofed-city: trips:book when context.city == "Nowhere"

tool trips: http "api.example.com" {
  POST "/v1/book" -> trips:book { city = $.city }
}
"""


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_source(POLICY)


def _recording() -> tuple[list[httpx.Request], httpx.MockTransport]:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(204)

    return sent, httpx.MockTransport(handler)


def test_without_a_context_a_context_forbid_fails_closed(engine: Engine) -> None:
    sent, inner = _recording()
    with governed_client(engine, "bot", inner=inner) as client, \
            pytest.raises(ToolDenied) as err:
        client.post("https://api.example.com/v1/book", json={"city": "Porto"})
    assert err.value.code == "missing_attribute"
    assert sent == []


def test_client_context_reaches_the_policy(engine: Engine) -> None:
    sent, inner = _recording()
    with governed_client(engine, "bot", inner=inner,
                         context={"trip": "T-1", "ticket": "ok"}) as client:
        client.post("https://api.example.com/v1/book", json={"city": "Porto"})
        with pytest.raises(ToolDenied) as err:  # per request, merged over the client's
            client.post("https://api.example.com/v1/book", json={"city": "Porto"},
                        extensions={CONTEXT_EXTENSION: {"ticket": "blocked"}})
        assert err.value.code == "forbidden"
        assert err.value.decision.rules == ("ctx.blocked-ticket",)
        with pytest.raises(ToolDenied):
            client.post("https://api.example.com/v1/book", json={"city": "Porto"},
                        extensions={CONTEXT_EXTENSION: {"trip": "T-2"}})
    assert len(sent) == 1


def test_extracted_values_win_over_any_context(engine: Engine) -> None:
    sent, inner = _recording()
    context = {"trip": "T-1", "ticket": "ok", "city": "Porto"}
    with governed_client(engine, "bot", inner=inner, context=context) as client, \
            pytest.raises(ToolDenied) as err:
        client.post("https://api.example.com/v1/book", json={"city": "Nowhere"},
                    extensions={CONTEXT_EXTENSION: {"city": "Porto"}})
    assert err.value.decision.rules == ("ctx.spoofed-city",)
    assert sent == []


def test_client_context_is_copied_and_bad_extensions_are_refused(engine: Engine) -> None:
    sent, inner = _recording()
    context: dict[str, Any] = {"trip": "T-1", "ticket": "ok"}
    with governed_client(engine, "bot", inner=inner, context=context) as client:
        context["ticket"] = "blocked"  # later changes to the caller's dict do not leak in
        client.post("https://api.example.com/v1/book", json={"city": "Porto"})
        with pytest.raises(ToolDenied) as err:
            client.post("https://api.example.com/v1/book", json={"city": "Porto"},
                        extensions={CONTEXT_EXTENSION: ["not", "a", "dict"]})
        assert err.value.outcome == "invalid_request"
    assert len(sent) == 1
    with pytest.raises(TypeError):
        governed_client(engine, "bot", context=["x"])  # type: ignore[arg-type]


def test_token_per_request_reaches_the_engine() -> None:
    seen: list[dict[str, Any]] = []

    class Spy:
        def tool_authorize(self, principal: str, **kw: Any) -> Any:
            seen.append(kw)
            return Engine.from_source(POLICY).tool_authorize(principal, **kw)

    _, inner = _recording()
    with governed_client(Spy(), "bot", inner=inner, token="client-token",
                         context={"trip": "T-1", "ticket": "ok"}) as client:
        for ext in ({}, {TOKEN_EXTENSION: "request-token"}):
            with pytest.raises(ToolDenied):  # neither is a valid token: denied
                client.post("https://api.example.com/v1/book", json={"city": "Porto"},
                            extensions=ext)
    assert [kw["token"] for kw in seen] == ["client-token", "request-token"]
    assert seen[0]["context"] == {"trip": "T-1", "ticket": "ok"}


def test_async_client_passes_the_context(engine: Engine) -> None:
    sent: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(204)

    async def run() -> None:
        async with async_governed_client(engine, "bot", inner=httpx.MockTransport(handler),
                                         context={"trip": "T-1"}) as client:
            await client.post("https://api.example.com/v1/book", json={"city": "Porto"},
                              extensions={CONTEXT_EXTENSION: {"ticket": "ok"}})
            with pytest.raises(ToolDenied):
                await client.post("https://api.example.com/v1/book", json={"city": "Porto"},
                                  extensions={CONTEXT_EXTENSION: {"ticket": "blocked"}})

    asyncio.run(run())
    assert len(sent) == 1
