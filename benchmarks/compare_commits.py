"""p50 of the hot paths, this tree against another commit, side by side in one run.

    python benchmarks/compare_commits.py                 # against 57552d9, 3 rounds
    python benchmarks/compare_commits.py --base main --rounds 5
    python benchmarks/compare_commits.py --quick         # smoke run

The other commit is checked out into a temporary git worktree (removed afterwards). Each
round starts one fresh Python process per tree; the order of the two trees alternates
from round to round (A B, B A, A B ...), so drift in the machine's load weighs on both.
Every process imports ``policyengine`` from its own tree and the scenarios, requests and
timing method (``_common.measure``) from *this* tree's ``benchmarks/``, so both trees
answer exactly the same requests, timed the same way:

* ``authorize base`` / ``authorize +10,000``: the six base requests of
  ``bench_authorize.py`` without and with 10,000 extra rules, roles and agents;
* ``authorize converted``: its three USD refunds against EUR limit and approval rules;
* ``budget`` / ``budget converted``: ``authorize`` of the budgeted payment of
  ``bench_decision_cost.py`` (a USD budget, MemoryStore) with its amount in USD, and in
  EUR (converted at the policy's ``rate EUR 1.08``);
* ``tool_authorize http``: the POST /v1/refunds call of ``bench_tool_authorize.py``
  (extraction, a limit, an approval threshold, three redactions);
* ``reserve+commit``: one ``Ledger.reserve`` + ``commit`` pair on a MemoryStore over
  the two budgets of ``bench_budgets.py``, rotating over its 100 agents.

A tree's figure is the median of its per-round p50s; the ratio is after / before (this
tree / the other commit): below 1 is faster. The target for a change that must not slow
the hot paths is every ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_BASE = "57552d9"  # the commit before the decision-pipeline work
SCENARIOS = ("authorize base", "authorize +10,000", "authorize converted",
             "budget", "budget converted", "tool_authorize http", "reserve+commit")
TARGET_RATIO = 1.10


# ---- worker: runs inside one tree ------------------------------------------------------

def _worker(tree: str, quick: bool, scenarios: list[str]) -> dict[str, float]:
    # policyengine first, from the tree under test; the benchmark modules below add this
    # checkout to sys.path, but the package is already imported by then.
    sys.path.insert(0, tree)
    import policyengine as pe
    if not Path(pe.__file__).resolve().is_relative_to(Path(tree).resolve()):
        raise SystemExit(f"imported policyengine from {pe.__file__}, not from {tree}")
    sys.path.insert(0, str(HERE))
    import bench_authorize as ba
    import bench_tool_authorize as bt
    from _common import call, measure, settings

    cfg = settings(quick)
    out: dict[str, float] = {}

    def authorize_calls(engine: Any, requests: Any) -> list[Any]:
        return [call(engine.authorize, r.principal, r.permission, r.context)
                for r in requests]

    base = pe.Engine.from_sources(ba.policyengine_sources(0))
    if "authorize base" in scenarios:
        out["authorize base"] = measure(authorize_calls(base, ba.BASE_REQUESTS), cfg).p50_us
    if "authorize converted" in scenarios:
        out["authorize converted"] = measure(
            authorize_calls(base, ba.CONVERTED_REQUESTS), cfg).p50_us
    if "authorize +10,000" in scenarios:
        big = pe.Engine.from_sources(ba.policyengine_sources(1_000 if quick else 10_000))
        out["authorize +10,000"] = measure(authorize_calls(big, ba.BASE_REQUESTS),
                                           cfg).p50_us
        del big
    if "budget" in scenarios or "budget converted" in scenarios:
        import bench_decision_cost as bd
        paying = pe.Engine.from_sources(bd.sources(0))
        for name, context in (("budget", bd.PAY_CONTEXT), ("budget converted", bd.FX_CONTEXT)):
            if name in scenarios:
                out[name] = measure([call(paying.authorize, "payer", "pay:send", context)],
                                    cfg).p50_us
    if "tool_authorize http" in scenarios:
        tools = pe.Engine.from_source(bt.POLICY, hmac_key=bt.HMAC_KEY)
        case = bt.CASES[0]
        out["tool_authorize http"] = measure(
            [call(tools.tool_authorize, "refund-agent", **case.kwargs)], cfg).p50_us
    if "reserve+commit" in scenarios:
        import bench_budgets as bb

        from policyengine.budgets import Ledger, MemoryStore
        ledger = Ledger(bb.SPECS, MemoryStore())
        agents = bb.AGENTS
        counter = iter(range(1 << 62))

        def pair() -> None:
            agent, amount, actual = agents[next(counter) % len(agents)]
            r = ledger.reserve(agent, "payments:refund", amount, "EUR")
            ledger.commit(r.id, actual)

        out["reserve+commit"] = measure([pair], cfg).p50_us
    return out


# ---- driver ----------------------------------------------------------------------------

def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def _run_worker(tree: Path, quick: bool, scenarios: list[str]) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(tree),
           "--scenarios", json.dumps(scenarios)]
    if quick:
        cmd.append("--quick")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env,
                          cwd=str(tree))
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("--base", default=DEFAULT_BASE, help="the commit to compare against "
                    f"(default {DEFAULT_BASE})")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per tree (default 3)")
    ap.add_argument("--quick", action="store_true", help="short smoke run (+1,000 rules "
                    "instead of +10,000)")
    ap.add_argument("--only", action="append", choices=SCENARIOS, help="run only this "
                    "scenario (repeatable)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--scenarios", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.quick, json.loads(args.scenarios))))
        return 0

    sys.path.insert(0, str(HERE))
    from _common import machine_line, print_table

    scenarios = list(args.only or SCENARIOS)
    base_sha = _git("rev-parse", "--short", args.base)
    head = _git("rev-parse", "--short", "HEAD")
    dirty = " (with uncommitted changes)" if _git("status", "--porcelain", "--",
                                                  "policyengine") else ""
    print("compare_commits:", machine_line())
    print(f"before: {base_sha}   after: this tree, {head}{dirty}   rounds: {args.rounds}"
          f"{'   (quick)' if args.quick else ''}")
    samples: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    with tempfile.TemporaryDirectory(prefix="pe-compare-") as tmp:
        old_tree = Path(tmp) / "before"
        _git("worktree", "add", "--detach", str(old_tree), base_sha)
        try:
            trees = {"before": old_tree, "after": ROOT}
            for rnd in range(args.rounds):
                order = ("before", "after") if rnd % 2 == 0 else ("after", "before")
                for label in order:
                    print(f"  round {rnd + 1}/{args.rounds}: {label} ...", file=sys.stderr,
                          flush=True)
                    for name, p50 in _run_worker(trees[label], args.quick,
                                                 scenarios).items():
                        samples[label].setdefault(name, []).append(p50)
        finally:
            _git("worktree", "remove", "--force", str(old_tree))

    rows = []
    worst = 0.0
    for name in scenarios:
        before = statistics.median(samples["before"][name])
        after = statistics.median(samples["after"][name])
        ratio = after / before
        worst = max(worst, ratio)
        rows.append([name, f"{before:.2f}", f"{after:.2f}", f"{ratio:.3f}",
                     " ".join(f"{x:.2f}" for x in samples["before"][name]),
                     " ".join(f"{x:.2f}" for x in samples["after"][name])])
    print()
    print_table(["scenario", "before p50 us", "after p50 us", "after/before",
                 "before per round", "after per round"], rows, left=1)
    print(f"\ntarget: every ratio <= {TARGET_RATIO:.2f}: worst {worst:.3f} "
          f"{'met' if worst <= TARGET_RATIO else 'MISSED'}")
    print("load average after the run:", machine_line().rsplit("load average ", 1)[-1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
