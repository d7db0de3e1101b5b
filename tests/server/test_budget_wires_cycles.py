"""All three budget wires at once on one budget: runcycles reservations, actguard runs
(separate processes) and tracengent decisions of one agent share its budget, and nothing
is admitted over the limit when they arrive together (the real SDKs, one live service)."""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from decimal import Decimal
from typing import Any

import actguard
from actguard.exceptions import BudgetExceededError
from runcycles import CyclesClient, CyclesConfig
from tracengent import TracengentClient, TracengentOptions

import policyengine as pe
from policyengine.server import (
    AgentCredential,
    ApiKey,
    Credentials,
    CyclesKey,
    ServiceConfig,
    create_app,
    hash_secret,
)

from .budget_harness import POLICY
from .service_harness import serving

SHARED = "budget shared: llm:* limit 2 USD per day per agent\n"
RUNS, RESERVATIONS = 4, 4  # 8 holds of $0.40 against $2: exactly 5 fit


def agent_process(gateway: str, i: int, held: Any, outcomes: Any) -> None:
    """An actguard agent process: a run of $0.40 held until ``held`` releases it."""
    # budget_timeout_s: the SDK runs unreserved when a reserve times out (default 3 s).
    c = actguard.Client(api_key="ag-key", gateway_url=gateway, budget_max_retries=0,
                        budget_timeout_s=60)
    outcome = "refused"
    try:
        with c.run(run_id=f"run-{i}"), c.budget_guard(cost_limit=400):
            outcome = "admitted"
            held.wait(60)
            held.wait(60)
    except BudgetExceededError:
        held.wait(60)
        held.wait(60)
    finally:
        c.close()
        outcomes.put(outcome)


def test_cycles_actguard_and_tracengent_never_pass_one_shared_limit(tmp_path: Any) -> None:
    creds = Credentials(
        agents=(AgentCredential("tc", hash_secret("tc-secret"), "ag-agent", ("llm:*",)),),
        api_keys=(ApiKey("ag-key", hash_secret("ag-key"), "ag-agent"),),
        cycles_keys=(CyclesKey("cy", hash_secret("cy-key"), "acme"),))
    engine = pe.Engine.from_source(POLICY + SHARED)
    app = create_app(engine, credentials=creds, config=ServiceConfig(
        access_log=False, prefixes={"actguard": "/ag", "agent-ledger": "/ledger"}))
    ctx = multiprocessing.get_context("spawn")
    with serving(app) as port:
        url = f"http://127.0.0.1:{port}"
        held, outcomes = ctx.Barrier(RUNS + 1), ctx.Queue()
        procs = [ctx.Process(target=agent_process, args=(f"{url}/ag", i, held, outcomes))
                 for i in range(RUNS)]
        cycles_ids: list[str] = []
        cycles_refused: list[str] = []
        config = CyclesConfig(base_url=url, api_key="cy-key", tenant="acme",
                              retry_enabled=False, journal_dir=str(tmp_path))

        def reserve() -> None:
            with CyclesClient(config) as client:
                res = client.create_reservation({
                    "idempotency_key": uuid.uuid4().hex,
                    "subject": {"tenant": "acme", "agent": "ag-agent"},
                    "action": {"kind": "llm", "name": "chat"},
                    "estimate": {"unit": "USD_MICROCENTS", "amount": 40_000_000}})
                if res.status == 200:
                    cycles_ids.append(res.body["reservation_id"])
                else:
                    cycles_refused.append(res.body["error"])

        threads = [threading.Thread(target=reserve) for _ in range(RESERVATIONS)]
        tc = TracengentClient(TracengentOptions(agent_id="ag-agent", base_url=url,
                                                client_id="tc", client_secret="tc-secret"))
        try:
            for p in procs:
                p.start()
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            held.wait(120)  # every actguard run holds (or was refused) now
            (b,) = engine.budgets.balances("ag-agent")
            assert b.reserved == Decimal("2.00") and b.spent == 0
            assert set(cycles_refused) <= {"BUDGET_EXCEEDED"}
            d = tc.authorize("llm:call", {"amount": Decimal("0.01"), "currency": "USD"})
            assert not d.allowed and "shared" in d.reason  # no room left for any wire
            held.wait(60)
            for p in procs:
                p.join(60)
            runs = [outcomes.get(timeout=5) for _ in procs]
            assert runs.count("admitted") + len(cycles_ids) == 5
            with CyclesClient(config) as client:
                for rid in cycles_ids:
                    assert client.release_reservation(
                        rid, {"idempotency_key": uuid.uuid4().hex}).status == 200
            (b,) = engine.budgets.balances("ag-agent")
            assert b.reserved == 0 and b.spent == 0
            assert tc.authorize("llm:call", {"amount": Decimal("0.01"),
                                             "currency": "USD"}).allowed
        finally:
            tc.close()
            for p in procs:
                if p.is_alive():
                    p.kill()
