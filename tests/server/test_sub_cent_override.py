"""The budget wires set aside a budget refusal of a dollar spend rounded up to the cent
(the exact amount may still fit; the ledger decides on it). That refusal ends the
decision before its rate-limit and approval steps, so setting it aside admitted the
spend without them: a call over a rate limit, or one an approval rule holds, went
through whenever a microcent budget had less left than the rounded amount and no less
than the exact one. With an approval or a rate limit on the permission the refusal now
stands. Driven through the real agent-ledger and actguard SDKs."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import actguard
import pytest
from actguard.exceptions import BudgetExceededError
from agent_ledger_sdk import AgentLedgerClient, AgentLedgerError, BudgetGuardrailError

from .budget_harness import PRICES, Live, live

#: $1 in microcents, of which $0.493 is spent beforehand: $0.507 left, so $0.505 fits
#: exactly and $0.51 (rounded up to the cent) does not.
MICRO = "budget micro: llm:* limit 100000000 USD_MICROCENTS per day per agent\n"
SPENT = 49_300_000
#: 202,000 input tokens of gpt-4o at $2.50 per 1M: $0.505.
CALL = {"stepIndex": 0, "provider": "openai", "model": "gpt-4o", "prompt": "p",
        "response": "r", "tokensIn": 202_000, "tokensOut": 0, "latencyMs": 1}


def _spent(svc: Live, agent: str) -> Decimal:
    (b,) = [b for b in svc.engine.budgets.balances(agent) if b.budget == "wires.micro"]
    return b.spent


def _ledger_call(svc: Live, **extra: Any) -> None:
    with AgentLedgerClient("ledger-key", base_url=f"{svc.url}/ledger") as lg:
        sid = lg.start_session("ledger-agent")
        lg.log_llm_call(sid, {**CALL, **extra})


@pytest.mark.parametrize("rule", [
    "approval review: llm:call over 0.10 USD\n",
    "ratelimit slow: llm:call 1 per hour per agent\n",
])
def test_agent_ledger_a_sub_cent_batch_keeps_approvals_and_rate_limits(rule: str) -> None:
    with live(MICRO + rule + PRICES) as svc:
        if rule.startswith("ratelimit"):  # the hour's one call, taken
            _ledger_call(svc, tokensIn=1000)
        before = _spent(svc, "ledger-agent")
        svc.engine.budgets.record("ledger-agent", "llm:call", SPENT - int(before),
                                  "USD_MICROCENTS")
        with pytest.raises((AgentLedgerError, BudgetGuardrailError)):
            _ledger_call(svc)
        assert _spent(svc, "ledger-agent") == SPENT  # nothing charged


def test_agent_ledger_a_sub_cent_batch_still_fits_without_them() -> None:
    with live(MICRO + PRICES) as svc:
        svc.engine.budgets.record("ledger-agent", "llm:call", SPENT, "USD_MICROCENTS")
        _ledger_call(svc)  # $0.505 of the $0.507 left: the ledger takes it exactly
        assert _spent(svc, "ledger-agent") == SPENT + 50_500_000


def test_actguard_a_sub_cent_run_keeps_its_approval() -> None:
    with live(MICRO + "approval review: llm:run over 0.10 USD\n") as svc:
        svc.engine.budgets.record("ag-agent", "llm:call", SPENT, "USD_MICROCENTS")
        c = actguard.Client(api_key="ag-key", gateway_url=f"{svc.url}/ag",
                            budget_max_retries=0, budget_timeout_s=60)
        try:
            with pytest.raises(BudgetExceededError), c.run(run_id="r1"), \
                    c.budget_guard(cost_limit=505):  # $0.505
                pytest.fail("the run needs an approval")
        finally:
            c.close()
        (b,) = svc.engine.budgets.balances("ag-agent")
        assert (b.spent, b.reserved) == (SPENT, 0)
