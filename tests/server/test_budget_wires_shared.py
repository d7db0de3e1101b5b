"""Several wires, one budget: actguard runs, tracengent decisions and agent-ledger
sessions of one agent share its budgets, and nothing is admitted over a limit when they
arrive at once (the real SDKs, one live service)."""

from __future__ import annotations

import multiprocessing
from decimal import Decimal
from typing import Any

import actguard
import pytest
from actguard.exceptions import BudgetExceededError
from agent_ledger_sdk import AgentLedgerClient, BudgetGuardrailError
from tracengent import TracengentClient, TracengentOptions

from .budget_harness import PRICES, TRACENGENT, live

SHARED = "budget shared: llm:* limit 2 USD per day per agent\n" + PRICES
LLM_CALL = {"stepIndex": 0, "provider": "openai", "model": "gpt-4o", "prompt": "p",
            "response": "r", "tokensIn": 1000, "tokensOut": 500, "latencyMs": 5}  # $0.0075


RUNS = 6


def agent_process(gateway: str, i: int, held: Any, outcomes: Any) -> None:
    """One agent process: a run of $0.40 that holds its reservation until ``held``."""
    c = actguard.Client(api_key="ag-key", gateway_url=gateway, budget_max_retries=0)
    outcome = "refused"
    try:
        with c.run(run_id=f"run-{i}"), c.budget_guard(cost_limit=400):
            outcome = "admitted"
            held.wait(60)  # every admitted run holds its $0.40 at once
            held.wait(60)
    except BudgetExceededError as exc:
        outcome = f"refused {exc.status_code}"
        held.wait(60)
        held.wait(60)
    finally:
        c.close()
        outcomes.put(outcome)


def test_concurrent_runs_and_decisions_never_pass_the_shared_limit() -> None:
    ctx = multiprocessing.get_context("spawn")
    with live(SHARED) as svc:
        held, outcomes = ctx.Barrier(RUNS + 1), ctx.Queue()
        procs = [ctx.Process(target=agent_process, args=(f"{svc.url}/ag", i, held, outcomes))
                 for i in range(RUNS)]
        for p in procs:
            p.start()
        tc = TracengentClient(TracengentOptions(agent_id="ag-agent", base_url=svc.url,
                                                client_id=TRACENGENT[0],
                                                client_secret=TRACENGENT[1]))
        lg = AgentLedgerClient("ag-ledger-key", base_url=f"{svc.url}/ledger")
        try:
            held.wait(120)
            # Every admitted run holds its share now: 5 x $0.40 = the whole $2.
            (b,) = svc.engine.budgets.balances("ag-agent")
            assert b.reserved == Decimal("2.00") and b.spent == 0
            d = tc.authorize("llm:call", {"amount": Decimal("0.01"), "currency": "USD"})
            assert not d.allowed and "shared" in d.reason  # no room left for any wire
            session = lg.start_session("ag-agent")
            with pytest.raises(BudgetGuardrailError) as err:
                lg.log_llm_call(session, LLM_CALL)
            assert err.value.details.spent_today_usd == 2.0  # the runs' holds count
            assert err.value.details.remaining_budget_usd == 0
            held.wait(60)
            for p in procs:
                p.join(60)
            got = sorted(outcomes.get(timeout=5) for _ in procs)
            assert got == ["admitted"] * 5 + ["refused 409"]
            (b,) = svc.engine.budgets.balances("ag-agent")
            assert b.reserved == 0 and b.spent == 0  # the runs used nothing: all given back
            lg.log_llm_call(session, LLM_CALL)  # $0.0075: a whole cent of this cent budget
            (b,) = svc.engine.budgets.balances("ag-agent")
            assert b.spent == Decimal("0.01")
            d = tc.authorize("llm:call", {"amount": Decimal("1.99"), "currency": "USD"})
            assert d.allowed, d.reason
            d = tc.authorize("llm:call", {"amount": Decimal("2.00"), "currency": "USD"})
            assert not d.allowed
        finally:
            tc.close()
            lg.close()
            for p in procs:
                if p.is_alive():
                    p.kill()
