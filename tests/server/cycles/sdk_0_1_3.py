"""Run by tests/server/test_cycles_sdk_0_1_3.py in a subprocess whose path starts with
the runcycles 0.1.3 copy (.sdk/runcycles-0.1.3, installed by the test command): the old
client against the live service. Prints one JSON line of what it saw."""

import asyncio
import json
import os
import sys
import time
import uuid

import runcycles
from runcycles import AsyncCyclesClient, BudgetExceededError, CyclesClient, CyclesConfig, cycles

assert runcycles.__file__.startswith(sys.argv[1]), runcycles.__file__
seen: dict[str, object] = {"version_path": runcycles.__file__}
agent = "old-" + uuid.uuid4().hex[:8]
config = CyclesConfig(base_url=os.environ["CYCLES_BASE_URL"],
                      api_key=os.environ["CYCLES_API_KEY"], tenant="acme", agent=agent,
                      retry_enabled=False)
client = CyclesClient(config)


@cycles(estimate=300, actual=lambda r: len(r), unit="TOKENS", action_kind="llm.completion",
        action_name="gpt-4o", client=client)
def answer(prompt: str) -> str:
    return prompt * 5


seen["decorator"] = answer("abc")


@cycles(estimate=6000, unit="TOKENS", action_kind="llm.completion", action_name="gpt-4o",
        client=client)
def too_big() -> None:
    raise AssertionError("must not run")


try:
    too_big()
    seen["exceeded"] = False
except BudgetExceededError:
    seen["exceeded"] = True


@cycles(estimate=20, unit="TOKENS", action_kind="llm.completion", action_name="gpt-4o",
        ttl_ms=2000, client=client)
def beats() -> str:
    # 0.1.3 extends every max(ttl/2, 1 s), a new key each time.
    ctx = runcycles.get_cycles_context()
    first = client.get_reservation(ctx.reservation_id).body["expires_at_ms"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        now = client.get_reservation(ctx.reservation_id).body["expires_at_ms"]
        if now > first:
            return "extended"
        time.sleep(0.05)
    return "not extended"


seen["heartbeat"] = beats()
created = client.create_reservation({
    "idempotency_key": uuid.uuid4().hex, "subject": {"tenant": "acme", "agent": agent},
    "action": {"kind": "llm.completion", "name": "gpt-4o"},
    "estimate": {"unit": "TOKENS", "amount": 100}, "ttl_ms": 30000})
rid = created.body["reservation_id"]
released = client.release_reservation(rid, {"idempotency_key": uuid.uuid4().hex})
seen["release"] = released.status


async def run_async() -> int:
    async with AsyncCyclesClient(config) as aclient:
        r = await aclient.create_reservation({
            "idempotency_key": uuid.uuid4().hex, "subject": {"tenant": "acme", "agent": agent},
            "action": {"kind": "llm.completion", "name": "gpt-4o"},
            "estimate": {"unit": "TOKENS", "amount": 10}})
        c = await aclient.commit_reservation(r.body["reservation_id"], {
            "idempotency_key": uuid.uuid4().hex, "actual": {"unit": "TOKENS", "amount": 10}})
        return c.status


seen["async_commit"] = asyncio.run(run_async())
balances = client.get_balances(tenant="acme", agent=agent).body["balances"]
(mine,) = [b for b in balances
           if b["scope"] == f"agent:{agent}" and b["spent"]["unit"] == "TOKENS"]
seen["spent"] = mine["spent"]["amount"]
seen["reserved"] = mine["reserved"]["amount"]
print(json.dumps(seen))
