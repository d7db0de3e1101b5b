"""A live service over a budget policy for the budget wires' SDK tests: its own engine
(fresh in-memory budgets) per test, API keys for the actguard and agent-ledger wires."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import policyengine as pe
from policyengine.server import (
    AgentCredential,
    ApiKey,
    Credentials,
    CyclesKey,
    PolicyService,
    ServiceConfig,
    create_app,
    hash_secret,
)

from .service_harness import serving

# One hash per key for the whole run (scrypt is slow on purpose).
KEYS = {"ag-key": ("ag-agent", None), "ledger-key": ("ledger-agent", None),
        "acme-key": ("ag-agent", "acme"), "other-key": ("other-agent", None),
        "ag-ledger-key": ("ag-agent", None)}
#: tracengent client credentials (client id, secret) of "ag-agent".
TRACENGENT = ("tc-client", "tc-secret")
#: The Cycles API key of tenant "acme" (runcycles names the agent in each subject).
CYCLES_KEY = "cycles-acme-key"
_HASHES: dict[str, str] = {}

POLICY = """
namespace wires
currency USD

role llm: llm:*
agent "ag-agent": llm
agent "ledger-agent": llm
agent "other-agent": llm

forbid banned-plan: llm:run when has(context.plan_key) and context.plan_key == "banned"
"""
#: LLM prices (per 1M tokens) a test adds to its budgets.
PRICES = """
price "openai" "gpt-4o": input 2.50 USD, cached_input 1.25 USD, output 10 USD per 1M tokens
price "openai" "*": input 0.15 USD, output 0.60 USD per 1M tokens
"""


def credentials() -> Credentials:
    if not _HASHES:
        _HASHES.update({k: hash_secret(k) for k in (*KEYS, TRACENGENT[1], CYCLES_KEY)})
    return Credentials(
        agents=(AgentCredential(TRACENGENT[0], _HASHES[TRACENGENT[1]], "ag-agent",
                                ("llm:*",)),),
        api_keys=tuple(ApiKey(name, _HASHES[name], agent, tenant)
                       for name, (agent, tenant) in KEYS.items()),
        cycles_keys=(CyclesKey("cycles-acme", _HASHES[CYCLES_KEY], "acme"),))


@dataclass
class Live:
    app: PolicyService
    engine: pe.Engine
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def live(budgets: str, prefixes: dict[str, str] | None = None, store: Any = None,
         **config: Any) -> Iterator[Live]:
    """The service over POLICY plus ``budgets`` (policy lines), on a free port (its
    budgets in ``store``, a store or URL; default: its own memory store)."""
    engine = pe.Engine.from_source(POLICY + budgets, budget_store=store)
    app = create_app(engine, credentials=credentials(), config=ServiceConfig(
        access_log=False, prefixes=prefixes if prefixes is not None else {
            "actguard": "/ag", "agent-ledger": "/ledger", "cycles": "/cycles"}, **config))
    with serving(app) as port:
        yield Live(app, engine, port)
