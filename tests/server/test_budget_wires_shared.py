"""Several wires, one budget: an agent's actguard runs, Cycles reservations and
agent-ledger LLM calls, and its tracengent decisions, share its budgets, and nothing is
admitted over a limit when they arrive at once (the real SDKs, each agent its own
process, one live service)."""

from __future__ import annotations

import multiprocessing
import tempfile
from decimal import Decimal
from typing import Any

import actguard
import pytest
from actguard.exceptions import BudgetExceededError
from agent_ledger_sdk import AgentLedgerClient, BudgetGuardrailError
from runcycles import CyclesClient, CyclesConfig
from tracengent import TracengentClient, TracengentOptions

from .budget_harness import CYCLES_KEY, PRICES, TRACENGENT, Live, live

SHARED = "budget shared: llm:* limit 2 USD per day per agent\n" + PRICES


def llm_call(tokens_out: int) -> dict[str, Any]:
    """A gpt-4o call as agent-ledger logs it: $10 per 1M output tokens."""
    return {"stepIndex": 0, "provider": "openai", "model": "gpt-4o", "prompt": "p",
            "response": "r", "tokensIn": 0, "tokensOut": tokens_out, "latencyMs": 5}


def cycles_client(base: str, journal: str) -> CyclesClient:
    return CyclesClient(CyclesConfig(base_url=f"{base}/cycles", api_key=CYCLES_KEY,
                                     tenant="acme", retry_enabled=False,
                                     retry_flush_timeout=0, journal_dir=journal))


def cycles_reservation(key: str, microcents: int) -> dict[str, Any]:
    return {"idempotency_key": key, "subject": {"tenant": "acme", "agent": "ag-agent"},
            "action": {"kind": "llm", "name": "gpt-4o"}, "ttl_ms": 60_000,
            "estimate": {"unit": "USD_MICROCENTS", "amount": microcents}}


def contender(wire: str, base: str, i: int, held: Any, outcomes: Any,
              journal: str) -> None:
    """One agent process spending $0.40 on ``wire``; what it admitted it holds (or has
    spent) until the main process has looked, at the second ``held``."""
    outcome = "refused"
    try:
        if wire == "actguard":
            # budget_timeout_s: the SDK runs unreserved when a reserve times out
            # (default 3 s), which a loaded machine must not turn into an outcome.
            c = actguard.Client(api_key="ag-key", gateway_url=f"{base}/ag",
                                budget_max_retries=0, budget_timeout_s=60)
            try:
                with c.run(run_id=f"run-{i}"), c.budget_guard(cost_limit=400):
                    outcome = "admitted"
                    held.wait(120)
                    held.wait(120)
                return
            except BudgetExceededError as exc:
                outcome = f"refused {exc.status_code}"
            finally:
                c.close()
        elif wire == "cycles":
            with cycles_client(base, journal) as cc:
                r = cc.create_reservation(cycles_reservation(f"c-{i}", 40_000_000))
                if r.status == 200 and r.body is not None and r.body["decision"] == "ALLOW":
                    outcome = "admitted"
                    held.wait(120)
                    held.wait(120)
                    cc.release_reservation(r.body["reservation_id"],
                                           {"idempotency_key": f"c-{i}-release"})
                    return
                outcome = f"refused {r.status}"
        else:
            with AgentLedgerClient("ag-ledger-key", base_url=f"{base}/ledger") as lg:
                session = lg.start_session("ag-agent")
                try:
                    lg.log_llm_call(session, llm_call(40_000))  # $0.40, spent at once
                    outcome = "admitted"
                except BudgetGuardrailError:
                    outcome = "refused 429"
        held.wait(120)
        held.wait(120)
    finally:
        outcomes.put((wire, outcome))


WIRES = ["actguard"] * 3 + ["cycles"] * 2 + ["agent-ledger"] * 2  # 7 x $0.40 on $2


def balance(svc: Live) -> tuple[Decimal, Decimal]:
    (b,) = svc.engine.budgets.balances("ag-agent")
    return b.spent, b.reserved


def test_three_wires_at_once_never_pass_the_shared_limit() -> None:
    ctx = multiprocessing.get_context("spawn")
    with live(SHARED) as svc, tempfile.TemporaryDirectory() as journal:
        held, outcomes = ctx.Barrier(len(WIRES) + 1), ctx.Queue()
        procs = [ctx.Process(target=contender,
                             args=(wire, svc.url, i, held, outcomes, journal))
                 for i, wire in enumerate(WIRES)]
        for p in procs:
            p.start()
        tc = TracengentClient(TracengentOptions(agent_id="ag-agent", base_url=svc.url,
                                                client_id=TRACENGENT[0],
                                                client_secret=TRACENGENT[1]))
        lg = AgentLedgerClient("ag-ledger-key", base_url=f"{svc.url}/ledger")
        try:
            held.wait(180)
            # Every admitted spend is held or spent now: exactly 5 x $0.40, the whole $2.
            spent, reserved = balance(svc)
            assert spent + reserved == Decimal("2.00")
            d = tc.authorize("llm:call", {"amount": Decimal("0.01"), "currency": "USD"})
            assert not d.allowed and "shared" in d.reason  # no room left for any wire
            session = lg.start_session("ag-agent")
            with pytest.raises(BudgetGuardrailError) as err:
                lg.log_llm_call(session, llm_call(750))  # $0.0075
            assert err.value.details.spent_today_usd == 2.0  # holds of the others count
            assert err.value.details.remaining_budget_usd == 0
            with cycles_client(svc.url, journal) as cc:
                r = cc.create_reservation(cycles_reservation("late", 1_000_000))  # 1 cent
                assert r.status == 409 and r.body is not None
                assert r.body["error"] == "BUDGET_EXCEEDED"
            held.wait(120)
            for p in procs:
                p.join(120)
            got = [outcomes.get(timeout=5) for _ in procs]
            assert [o for _, o in got].count("admitted") == 5
            own = {"actguard": "refused 409", "cycles": "refused 409",
                   "agent-ledger": "refused 429"}  # every refusal is the wire's own
            assert all(o == own[w] for w, o in got if o != "admitted"), got
            ledger_spent = Decimal("0.40") * sum(
                1 for w, o in got if w == "agent-ledger" and o == "admitted")
            assert balance(svc) == (ledger_spent, Decimal("0.00"))  # holds given back
            # What is left is what every wire sees, to the cent.
            room = Decimal("2.00") - ledger_spent
            lg.log_llm_call(session, llm_call(750))  # $0.0075: a whole cent here
            with cycles_client(svc.url, journal) as cc:
                r = cc.create_reservation(cycles_reservation("after", 50_000_000))
                assert r.status == 200, r.body
            room -= Decimal("0.51")
            d = tc.authorize("llm:call", {"amount": room, "currency": "USD"})
            assert d.allowed, d.reason
            d = tc.authorize("llm:call", {"amount": room + Decimal("0.01"),
                                          "currency": "USD"})
            assert not d.allowed
        finally:
            tc.close()
            lg.close()
            for p in procs:
                if p.is_alive():
                    p.kill()
