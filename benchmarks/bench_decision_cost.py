"""What a decision costs as the policy grows and as more agents are active (issue 10, item 8).

Run from a checkout::

    python benchmarks/bench_decision_cost.py                      # sizes 1,000 10,000 100,000
    python benchmarks/bench_decision_cost.py --sizes 1000,10000   # skip the slow 100k build
    python benchmarks/bench_decision_cost.py --quick              # short budgets

Not a test: it prints figures, each a ratio measured in this one run.

The policy at size N is the shape that used to make decisions depend on the policy: N
roles, N agents (one role each) and N rules, every rule naming the same permissions
(``docs:*``) and scoped to its own role, with a condition on ``context.level``; plus a
small base file with a budget and a delegation block. Figures per size:

* ``floor``: ``dict.get`` of one key, through the same harness (the unit of cost).
* ``hit``: ``authorize`` of a (principal, permission) pair whose plan is cached.
* ``miss``: ``authorize`` of a pair never asked before (each call a new permission under
  ``docs:``): the plan is resolved from the rule index. Goal: miss <= 5x hit.
* ``active``: 100,000 distinct pairs asked in uniformly random order (more than the
  65,536 plans the cache keeps), averaged per call, after one warm-up pass. Goal: <= 1.5x
  hit. Skipped when a miss costs more than ``--max-miss-us`` (it would take minutes).
* ``condition``: one rule's generated condition, called as the evaluator calls it, spread
  over 64 rules across the policy. Goal: <= 2.5x the floor at every size.
* ``budget``: ``authorize`` of a permission a budget covers (MemoryStore, read-only check)
  against the same request under a permission no budget covers. Goal: <= 2x plain.
* ``token``: ``authorize`` with a delegation token already verified once (the cached path)
  against the same request without one. Goal: <= 1.5x plain.

Method: ``floor``, ``condition``, ``budget``, ``token`` and their ``plain`` use
``_common.measure`` (functools.partial calls, batches, p50). ``hit``, ``miss`` and
``active`` iterate a list of requests in the same loop (so the loop's cost is the same
for all three) in batches of consecutive calls; p50 of per-call batch averages.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from _common import (
    Settings,
    call,
    fmt_us,
    machine_line,
    measure,
    parser,
    print_table,
    settings,
    timed_build,
)

import policyengine as pe
from policyengine.tokens import KeySet, mint

ISSUER = "https://auth.example"
ACTIVE_PAIRS = 100_000
RULES_PER_FILE = 1_000  # policy files are limited to 1 MiB
CONTEXT = {"level": 9}
PAY_CONTEXT = {"amount": "5.00", "currency": "USD"}

BASE_POLICY = f"""\
namespace costbase
currency USD
role payer: pay:*
agent "payer": payer
budget spend: pay:send limit 1000000000 USD per day per agent
delegation {{ max_depth 2  max_ttl 1h  issuer "{ISSUER}" }}
"""


def rules_file(start: int, stop: int, namespace: str) -> str:
    lines = [f"namespace {namespace}", ""]
    for i in range(start, stop):
        lines.append(f"role r{i}: docs:*")
        lines.append(f'agent "a{i}": r{i}')
        lines.append(f"permit p{i}: docs:* for role r{i} when context.level > {i % 7}")
    return "\n".join(lines) + "\n"


def sources(n: int) -> dict[str, str]:
    out = {"base.policy": BASE_POLICY}
    for k, start in enumerate(range(0, n, RULES_PER_FILE)):
        out[f"rules{k:03d}.policy"] = rules_file(start, min(n, start + RULES_PER_FILE),
                                                 f"rules{k:03d}")
    return out


# ---- a loop over a stream of requests -------------------------------------------------------

Batch = list[tuple[str, str]]


def stream_p50_ns(authorize: Callable[..., Any], batches: Iterator[Batch],
                  budget_s: float, min_batches: int) -> float:
    """p50 over batches of the per-call time of ``authorize(p, perm, CONTEXT)``, calling
    each batch's requests in order (a batch is built before its timing starts)."""
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    ctx = CONTEXT
    for batch in batches:
        t0 = time.perf_counter_ns()
        for principal, permission in batch:
            authorize(principal, permission, ctx)
        samples.append((time.perf_counter_ns() - t0) / len(batch))
        if len(samples) >= min_batches and time.perf_counter() >= deadline:
            break
    samples.sort()
    return samples[len(samples) // 2]


def hot_batches(n: int, size: int) -> Iterator[Batch]:
    batch = [(f"a{i % n}", f"docs:m{i}") for i in range(size)]
    while True:
        yield batch


def fresh_batches(n: int, size: int) -> Iterator[Batch]:
    """Every request a pair never asked before (a new permission under ``docs:``)."""
    j = 10_000_000
    while True:
        yield [(f"a{k % n}", f"docs:f{k}") for k in range(j, j + size)]
        j += size


def active_pair(n: int, k: int) -> tuple[str, str]:
    return f"a{k % n}", f"docs:v{k // n}"


def active_batches(n: int, size: int, rng: random.Random) -> Iterator[Batch]:
    while True:
        yield [active_pair(n, rng.randrange(ACTIVE_PAIRS)) for _ in range(size)]


def batch_size(authorize: Callable[..., Any], batches: Iterator[Batch]) -> int:
    """About 1 ms of calls per batch, at most 100 (as ``_common.measure`` does)."""
    probe = next(batches)[:10]
    t0 = time.perf_counter_ns()
    for p, perm in probe:
        authorize(p, perm, CONTEXT)
    per_call = max(1.0, (time.perf_counter_ns() - t0) / len(probe))
    return max(1, min(100, int(1_000_000 / per_call)))


# ---- one size ---------------------------------------------------------------------------------

def run_size(n: int, cfg: Settings, max_miss_us: float) -> list[str]:
    keys = KeySet.generate()
    engine, build_ms = timed_build(lambda: pe.Engine.from_sources(sources(n), keys=keys))
    authorize = engine.authorize

    # answers first: a benchmark of wrong decisions measures nothing
    assert authorize("a1", "docs:read", CONTEXT).allowed
    assert not authorize("a1", "files:read", CONTEXT).allowed
    assert not authorize("nobody", "docs:read", CONTEXT).allowed
    assert authorize(f"a{n - 1}", "docs:read", {"level": 0}).allowed  # role grant
    assert authorize("payer", "pay:send", PAY_CONTEXT).allowed
    token = mint(keys, issuer=ISSUER, acting_for="owner", agent="payer",
                 permissions=["pay:*"], ttl=3600)
    assert authorize("payer", "pay:view", PAY_CONTEXT, token=token).allowed

    floor_table = {("a1", "docs:read"): 1}
    floor = measure([call(floor_table.get, ("a1", "docs:read"))], cfg).p50_us

    # hit, miss: the same loop over requests
    budget = cfg.budget_s
    hit = stream_p50_ns(authorize, hot_batches(n, 100), budget, 20) / 1000
    fresh = fresh_batches(n, 10)
    size = batch_size(authorize, fresh)
    miss = stream_p50_ns(authorize, fresh_batches(n, size), budget, 3) / 1000

    active = "-"
    if miss <= max_miss_us:
        rng = random.Random(7)
        for k in range(ACTIVE_PAIRS):  # warm-up: every pair asked once
            authorize(*active_pair(n, k), CONTEXT)
        for batch in active_batches(n, 1000, rng):  # then random order until steady
            for p, perm in batch:
                authorize(p, perm, CONTEXT)
            break
        avg = stream_p50_ns(authorize, active_batches(n, 100, rng), budget * 2, 50) / 1000
        active = f"{avg / hit:.2f}x"

    conditional = [r for r in engine.policy.rules if r.test is not None]
    picked = conditional[:: max(1, len(conditional) // 64)][:64] + [conditional[-1]]
    principal = engine.policy.principals["a1"]
    cond = measure([call(r.test, CONTEXT, principal, None) for r in picked], cfg).p50_us

    plain = measure([call(authorize, "payer", "pay:view", PAY_CONTEXT)], cfg).p50_us
    budgeted = measure([call(authorize, "payer", "pay:send", PAY_CONTEXT)], cfg).p50_us
    tokened = measure([call(authorize, "payer", "pay:view", PAY_CONTEXT, token=token)],
                      cfg).p50_us

    return [
        f"{n:,}", f"{build_ms / 1000:.1f}", fmt_us(floor * 1000), fmt_us(hit),
        fmt_us(miss), f"{miss / hit:.1f}x", active,
        fmt_us(cond * 1000), f"{cond / floor:.2f}x",
        fmt_us(plain), f"{budgeted / plain:.2f}x", f"{tokened / plain:.2f}x",
    ]


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000,100000",
                   help="comma-separated rule counts (default 1000,10000,100000)")
    p.add_argument("--max-miss-us", type=float, default=200.0,
                   help="skip the active-pairs run when a miss costs more (default 200)")
    args = p.parse_args()
    cfg = settings(args.quick)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    print(machine_line())
    print("floor and condition in ns; hit, miss, plain in us; ratios from this run")
    headers = ["rules", "build s", "floor ns", "hit us", "miss us", "miss/hit",
               "active/hit", "cond ns", "cond/floor", "plain us", "budget/plain",
               "token/plain"]
    rows = [run_size(n, cfg, args.max_miss_us) for n in sizes]
    print_table(headers, rows, left=1)
    print("goals: miss/hit <= 5, active/hit <= 1.5, cond/floor <= 2.5, budget/plain <= 2, "
          "token/plain <= 1.5")


if __name__ == "__main__":
    main()
