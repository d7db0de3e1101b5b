"""The budget wires ask the policy in dollars with the batch's ``context.tokens``: a
``tokens`` budget beside a money one counts those tokens at authorize time
(docs/semantics.md, step 4). A budget refusal of a sub-cent dollar spend rounded up is
set aside for the ledger's exact answer -- but only a refusal by a budget that counts
money: a tokens budget refusing the tokens is final (it refuses whatever the dollars),
and no ``authorize.override`` is logged for it."""

from __future__ import annotations

from decimal import Decimal

import policyengine as pe
from policyengine.server._budgetwire import authorize_spend

POLICY = """role r: llm:*
agent "bot": r
budget money: llm:call limit 1 USD per day
budget toks: llm:call limit 100 tokens per day
"""


def test_a_tokens_refusal_of_a_sub_cent_spend_is_not_set_aside() -> None:
    engine = pe.Engine.from_source(POLICY)
    d = authorize_spend(engine, "bot", "llm:call", {"tokens": 500}, Decimal("0.001"))
    assert d is not None and d.code == "budget_exceeded"
    assert d.budget is not None and d.budget.budget == "default.toks"
    assert authorize_spend(engine, "bot", "llm:call", {"tokens": 100},
                           Decimal("0.001")) is None


def test_a_money_refusal_of_the_rounding_is_still_set_aside() -> None:
    engine = pe.Engine.from_source(POLICY.replace("1 USD", "100000 USD_MICROCENTS"))
    # $0.001 is 100000 microcents: exactly the limit; asked as $0.01 it is refused
    assert authorize_spend(engine, "bot", "llm:call", {"tokens": 5},
                           Decimal("0.001")) is None
