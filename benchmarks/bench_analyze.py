"""``policyengine analyze`` and ``diff`` at 1,000 and 10,000 rules: CPU and wall time,
requests decided, findings. Prints figures; asserts only that the planted findings are
found (so a fast run that finds nothing cannot pass for a result).

    python benchmarks/bench_analyze.py                 # 1,000 and 10,000 rules
    python benchmarks/bench_analyze.py --sizes 1000    # one size

The generated policy: 20 roles, 50 agents, rules spread over 100 namespaces of
permissions (``nsN:actionM``), each with one or two comparisons of context fields
against literals, a forbid or a limit every 10th rule, and a few planted defects per
1,000 rules (an empty interval, a duplicate, a permit under an unconditional forbid).
The diff changes one rule in a hundred (a threshold moved).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policyengine import Engine
from policyengine.analysis import analyze, diff


def policy(n: int, seed: int = 1, shift: int = 0) -> str:
    rng = random.Random(seed)
    lines = ["currency EUR"]
    for r in range(20):
        lines.append(f"role r{r}: " + ", ".join(f"ns{(r * 5 + k) % 100}:*" for k in range(5)))
    for a in range(50):
        lines.append(f'agent "agent-{a}": r{a % 20}, r{(a * 7) % 20} {{ tier = "t{a % 3}" }}')
    for i in range(n):
        ns, act = i % 100, (i // 100) % 40
        field = f"f{rng.randrange(6)}"
        limit = rng.randrange(1, 50) + (shift if i % 100 == 7 else 0)
        scope = f" for role r{rng.randrange(20)}" if i % 3 == 0 else ""
        if i % 10 == 5:
            lines.append(f"forbid rule{i}: ns{ns}:a{act}{scope} when context.{field} > {limit}")
        elif i % 10 == 9:
            lines.append(f"limit rule{i}: ns{ns}:* amount <= {limit * 100} EUR{scope}")
        else:
            other = f"g{rng.randrange(4)}"
            lines.append(f"permit rule{i}: ns{ns}:a{act}{scope} when context.{field} <= "
                         f'{limit} and context.{other} in ["x", "y"]')
    for d in range(max(1, n // 1000)):  # planted: 3 per 1,000 rules
        lines.append(f"permit dead{d}: ns{d}:dead when context.q > 5 and context.q < 3")
        lines.append(f"permit twice{d}: ns{d}:a0 when context.f0 <= 1")
        lines.append(f"permit twice{d}b: ns{d}:a0 when context.f0 <= 1")
        lines.append(f"forbid never{d}: ns{d}:closed")
        lines.append(f"permit shadow{d}: ns{d}:closed when context.f1 > 2")
    return "\n".join(lines) + "\n"


def timed(fn):  # type: ignore[no-untyped-def]
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return result, time.process_time() - cpu, time.perf_counter() - wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000")
    args = ap.parse_args()
    print(f"{'rules':>7} {'what':<8} {'cpu s':>8} {'wall s':>8} {'requests':>10} "
          f"{'found':>7}  notes")
    for n in (int(s) for s in args.sizes.split(",")):
        engine = Engine.from_source(policy(n), name="bench.policy")
        result, cpu, wall = timed(lambda e=engine: analyze(e))
        kinds: dict[str, int] = {}
        for f in result.findings:
            kinds[f.code] = kinds.get(f.code, 0) + 1
        planted = max(1, n // 1000)
        assert kinds.get("W301", 0) >= planted and kinds.get("W304", 0) >= planted \
            and kinds.get("W302", 0) >= planted, kinds
        print(f"{n:>7} {'analyze':<8} {cpu:>8.2f} {wall:>8.2f} {result.requests:>10} "
              f"{len(result.findings):>7}  {dict(sorted(kinds.items()))}")
        changed = Engine.from_source(policy(n, shift=3), name="bench.policy")
        d, cpu, wall = timed(lambda a=engine, b=changed: diff(a, b))
        assert d.changes, "the moved thresholds change some decisions"
        print(f"{n:>7} {'diff':<8} {cpu:>8.2f} {wall:>8.2f} {d.requests * 2:>10} "
              f"{len(d.changes):>7}  {d.pairs} pairs decided, exhaustive={d.exhaustive}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
