"""Reverse queries at 1,000 and 10,000 rules: permissions_of, principals_with, filter_tools.

Run from a checkout::

    python benchmarks/bench_query.py                    # sizes 1,000 and 10,000
    python benchmarks/bench_query.py --sizes 1000       # one size
    python benchmarks/bench_query.py --quick            # fewer samples

Not a test: it prints per-query p50 / p99 in microseconds of CPU time (the calling
thread's, ``time.thread_time_ns``, so other processes on a busy machine are not
counted), one query per sample.

The policy at size N has N rules besides the role grants: N roles ``xr<i>`` granting
``xns<i>:*``, N agents ``xa<i>`` (each holding its own role and one of ten roles
``shared<k>`` granting ``docs:*``), and per ``i`` one rule, in turn: an unscoped forbid
of ``xns<i>:delete`` with a condition, a permit of ``xns<i>:admin:*`` for the role with
a condition, an approval of ``xns<i>:pay`` with a condition, a forbid of ``docs:d<i>``
for one shared role with a condition (so every agent meets N/40 rules under ``docs:*``).
Agent ``admin`` holds a role granting ``*``: every rule of the policy is in its answer.
Fifty MCP tools bind ``tool_<j>`` to ``xns<j>:read``. Besides (``shapes.policy``, 164
rules): agent ``admin2`` holds the role granting ``*`` and a role ``ops`` with two
conditional rules of its own under it (a permit and a forbid); agent ``multi`` holds 50
roles ``mr<j>`` (each granting ``mns<j>:*``, with a conditional forbid of its own) and
``shared0``; ``hot:pay`` is decided by 110 conditional rules (a permit
of ``hot:*`` per shared role, a permit per role of 50 ``xr<i>``, 50 unscoped forbids), and
``hot:mine`` by a permit whose condition writes the principal's id into its residual
(``context.owner == principal.id``: agents with the same roles share the lines worked
out, each printed with its own id), ``hot:vip`` by a forbid deciding on the principal
alone (``principal.id == "xa5"``): agents are grouped by their roles and whether their id
is that literal, each group worked out once.

Figures per size:

* ``reverse index build``: what the first question after a load pays once (the rule
  index read backwards: pattern keys sorted per scope; the regions under ``*`` of the
  role granting it and under ``docs:*`` of the ten shared roles, residuals printed).
* ``permissions_of cold``: an answer with nothing cached (a fresh reverse index, built
  before timing), for 20 agents ``xa<i>``: complete (every line decided, with its
  pattern, exclusions, status and rules; ``total`` exact), its ``Access`` lines not yet
  made and its own residual texts not yet printed (both when first read). ``cold,
  printed`` adds reading every line's ``when`` and ``unless``: what printing or
  serialising the whole answer costs on top.
* ``permissions_of miss``: the answer of a principal not asked before, each agent
  ``xa<i>`` once, in turn: what earlier answers worked out is shared (rules' folded
  conditions; the regions under a permit pattern, kept per the scopes that have rules
  there when none of those rules reads the principal: here every agent sampled holds
  ``shared1``, so the ``docs:*`` part is worked out once, and each agent's own
  ``xns<i>:*`` part afresh).
* ``permissions_of hit``: the same queries answered from the cache.
* ``permissions_of admin cold``: the agent whose answer holds every rule (worst case),
  nothing cached but what the index build worked out (``printed``: and every line and
  residual read).
* ``permissions_of admin2 cold``: the second superuser, whose other role has rules
  under ``*``: its answer is the ``*`` regions of the index build with the ``ops`` rules
  laid over them (only the regions under the patterns they name worked out again).
* ``permissions_of multi (51 roles) cold``: an agent holding many roles, nothing cached
  but what the index build worked out.
* ``filter_tools (50 tools) cold``: 50 MCP tool descriptors for one agent, a fresh
  reverse index (every binding looked up, every bound permission's lines worked out).
* ``principals_with hot:pay cold``, ``hot:mine cold`` and ``hot:vip cold``: a fresh
  reverse index; the permission many conditional rules decide, and those whose rule
  reads the principal.
* ``principals_with small`` (``xns<i>:read``: one agent and its role) and ``large``
  (``docs:d<i>``: every agent holds a role granting ``docs:*``, so the answer lists all
  N agents), ``miss`` (worked out: complete, its length exact; the lines of agents that
  share them are made per agent when the answer is first read) and ``hit`` (cached);
  ``large miss, read`` adds reading every line and its residual texts.
* ``filter_tools (50 tools) hit``: 50 MCP tool descriptors for one agent, warm.

``lines`` is the mean size of the answers (lines for permissions_of and principals_with,
tools for filter_tools). Goal: <= 1,000 µs per query at 10,000 rules.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from _common import cpu_samples, fmt_us, machine_line, parser, print_table, timed_build

import policyengine as pe
from policyengine.decide._query import QueryIndex, index_of, paused

RULES_PER_FILE = 1_000  # policy files are limited to 1 MiB
SHARED = 10
TOOLS = 50
MANY_ROLES = 50
HOT = 50


def sources(n: int) -> dict[str, str]:
    out = {"base.policy": "\n".join(
        ["namespace qbase", "role superuser: *", 'agent "admin": superuser',
         *(f"role shared{k}: docs:*" for k in range(SHARED)),
         *(f'tool t{j}: mcp "tool_{j}" -> xns{j}:read' for j in range(TOOLS))]) + "\n"}
    for f, start in enumerate(range(0, n, RULES_PER_FILE)):
        lines = [f"namespace q{f:02d}"]
        for i in range(start, min(n, start + RULES_PER_FILE)):
            lines.append(f"role xr{i}: xns{i}:*")
            lines.append(f'agent "xa{i}": xr{i}, shared{i % SHARED}')
            kind = i % 4
            if kind == 0:
                lines.append(f"forbid xf{i}: xns{i}:delete when context.level > 9")
            elif kind == 1:
                lines.append(f"permit xp{i}: xns{i}:admin:* for role xr{i} "
                             "when context.level > 3")
            elif kind == 2:
                lines.append(f"approval xq{i}: xns{i}:pay when context.risk > 5")
            else:
                lines.append(f"forbid xg{i}: docs:d{i} for role shared{(i // 4) % SHARED} "
                             "when context.level > 5")
        out[f"q{f:02d}.policy"] = "\n".join(lines) + "\n"
    step = max(1, n // MANY_ROLES)
    out["shapes.policy"] = "\n".join([
        "namespace qshapes",
        # a second superuser whose other role has rules of its own under ``*``
        "role ops: ops:*", 'agent "admin2": superuser, ops',
        "permit op1: xns1:admin:x for role ops when context.level > 1",
        "forbid of1: xns2:delete for role ops when context.level > 2",
        # an agent holding many roles, each with a conditional rule of its own
        *(f"role mr{j}: mns{j}:*" for j in range(MANY_ROLES)),
        *(f"forbid mf{j}: mns{j}:delete for role mr{j} when context.level > 2"
          for j in range(MANY_ROLES)),
        'agent "multi": ' + ", ".join([f"mr{j}" for j in range(MANY_ROLES)] + ["shared0"]),
        # one permission many conditional rules decide, for many roles' holders
        *(f"permit hs{k}: hot:* for role shared{k} when context.level > {k}"
          for k in range(SHARED)),
        *(f"permit hp{j}: hot:pay for role xr{j * step} when context.level > {j % 5}"
          for j in range(HOT)),
        *(f"forbid hf{j}: hot:pay when context.risk > {j + 10}" for j in range(HOT)),
        # a permission whose rule writes the principal's id into its residual
        "permit hm: hot:mine for role shared0 when context.owner == principal.id",
        # and one whose rule decides on the principal alone: each agent's lines its own
        'forbid hv: hot:vip for role shared5 when principal.id == "xa5"']) + "\n"
    return out


def _read(lines: Any) -> Any:
    """Every line of an answer and its residual texts, as printing it would read them."""
    for line in lines:
        _ = (line.when, line.unless)
    return lines


def run_size(n: int, rounds: int, rows: list[list[str]]) -> None:
    engine, build_ms = timed_build(lambda: pe.Engine.from_sources(sources(n)))
    policy = engine.policy
    index = index_of(policy)
    agents = [f"xa{i}" for i in range(0, n, max(1, n // 200))]
    print(f"{n:,} rules: engine built in {build_ms:,.0f} ms; "
          f"xa0 has {engine.permissions_of('xa0').total} lines, admin "
          f"{engine.permissions_of('admin').total}")

    def miss(aid: str) -> Callable[[], Any]:
        return lambda: paused(lambda: index.permissions(index.subject("agent", aid)))

    def row(name: str, calls: list[Callable[[], Any]], size: float,
            r: int = rounds, warm: bool = False) -> None:
        if warm:
            for fn in calls:
                fn()
        p50, p99, count = cpu_samples(calls, r)
        rows.append([f"{n:,}", name, f"{size:,.0f}", fmt_us(p50), fmt_us(p99),
                     str(count)])

    def mean(values: list[int]) -> float:
        return sum(values) / len(values)

    sizes_of = [engine.permissions_of(a).total for a in agents]

    def cold(aid: str, printed: bool = False) -> Callable[[], Any]:
        fresh = paused(lambda: QueryIndex(policy))  # built before timing: nothing cached

        def answer() -> Any:
            lines = fresh.permissions(fresh.subject("agent", aid))
            return _read(lines) if printed else lines
        return lambda: paused(answer)

    row("reverse index build", [lambda: paused(lambda: QueryIndex(policy))], 0, 3)
    row("permissions_of cold", [cold(a) for a in agents[:20]], mean(sizes_of), 1)
    row("permissions_of cold, printed", [cold(a, True) for a in agents[:20]],
        mean(sizes_of), 1)
    fresh_agents = [f"xa{i}" for i in range(1, n, max(1, n // 200))]  # never asked
    row("permissions_of miss", [miss(a) for a in fresh_agents], mean(sizes_of), 1)
    row("permissions_of hit", [lambda a=a: engine.permissions_of(a) for a in agents],
        mean(sizes_of), rounds * 20, warm=True)
    row("permissions_of admin cold", [cold("admin") for _ in range(3)],
        engine.permissions_of("admin").total, 1)
    row("permissions_of admin cold, printed", [cold("admin", True) for _ in range(3)],
        engine.permissions_of("admin").total, 1)
    row("permissions_of admin2 cold", [cold("admin2") for _ in range(3)],
        engine.permissions_of("admin2").total, 1)
    row("permissions_of admin2 cold, printed", [cold("admin2", True) for _ in range(3)],
        engine.permissions_of("admin2").total, 1)
    row(f"permissions_of multi ({MANY_ROLES + 1} roles) cold",
        [cold("multi") for _ in range(3)], engine.permissions_of("multi").total, 1)
    tools = [{"name": f"tool_{j}"} for j in range(TOOLS)]

    def fresh(work: Callable[[QueryIndex], Any]) -> Callable[[], Any]:
        """``work`` on a reverse index built before timing (nothing cached)."""
        index = paused(lambda: QueryIndex(policy))

        def run() -> Any:
            policy.query_index = index
            return paused(lambda: work(index))
        return run

    row(f"filter_tools ({TOOLS} tools) cold",
        [fresh(lambda _, a=a: engine.filter_tools(a, tools)) for a in agents[:5]], TOOLS, 1)
    for q in ("hot:pay", "hot:mine", "hot:vip"):
        row(f"principals_with {q} cold", [fresh(lambda i, q=q: i.principals(q))
                                          for _ in range(3)],
            engine.principals_with(q).total, 1)
    policy.query_index = index
    small = [f"xns{i}:read" for i in range(0, n, max(1, n // 100))]
    large = [f"docs:d{i}" for i in range(3, n, max(4, n // 20))]
    for label, perms in (("small", small), ("large", large)):
        size = mean([engine.principals_with(q).total for q in perms])
        row(f"principals_with {label} miss",
            [lambda q=q: paused(lambda: index.principals(q)) for q in perms], size,
            rounds if label == "small" else 1)
        if label == "large":
            row(f"principals_with {label} miss, read",
                [lambda q=q: paused(lambda: _read(index.principals(q))) for q in perms],
                size, 1)
        row(f"principals_with {label} hit", [lambda q=q: engine.principals_with(q)
                                             for q in perms], size, rounds * 20,
            warm=True)
    row("filter_tools (50 tools) hit", [lambda a=a: engine.filter_tools(a, tools)
                                        for a in agents], TOOLS, rounds * 4, warm=True)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rounds = 2 if args.quick else 5
    print(machine_line())
    rows: list[list[str]] = []
    for n in sizes:
        run_size(n, rounds, rows)
    print_table(["rules", "query", "lines", "p50 µs", "p99 µs", "samples"], rows)
    print("cold / miss: the answer complete (every line decided, total exact), its residual "
          "texts not yet printed;\n'printed' / 'read': every line and residual read too.")


if __name__ == "__main__":
    main()
