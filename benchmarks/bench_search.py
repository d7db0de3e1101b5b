"""AuthZEN search (subject, resource, action) at 1,000 and 10,000 entities.

Run from a checkout::

    python benchmarks/bench_search.py                   # sizes 1,000 and 10,000
    python benchmarks/bench_search.py --sizes 1000      # one size
    python benchmarks/bench_search.py --quick           # fewer samples

Not a test: it prints, per search, p50 / p99 of the calling thread's CPU time
(``time.thread_time_ns``: other processes on a busy machine are not counted) for one
whole search (``policyengine.server._authzen.search``, the function behind the HTTP
routes, without HTTP), the number of results, and the CPU time per candidate decided.
Beside it, the same candidates decided one by one with ``engine.authorize`` (the floor
a search cannot beat by much: it decides each candidate with the same pipeline).

The policy at size N is the interop search scenario's rules (view own, view in one's
department, a manager views any, edit own, a manager edits in their department, delete
own, and the forbid on records without an owner) over N agents (one in ten a manager,
ten departments) and N records (owners and departments spread over them).

* ``resource search``: the records agent ``u<i>`` may view (N candidates each).
* ``subject search``: who may edit record ``r<i>`` (N candidate agents each).
* ``action search``: what ``u<i>`` may do on ``r<i>`` (3 candidate actions).
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from _common import cpu_samples, fmt_us, machine_line, parser, print_table, timed_build

import policyengine as pe
from policyengine.server._authzen import search

PER_FILE = 5_000  # policy files are limited to 1 MiB
DEPTS = 10

RULES = """namespace records
role manager: record:view
permit view-own: record:view when context.resource.properties.owner == principal.id
permit view-department: record:view
  when context.resource.properties.department == principal.attributes.department
permit edit-own: record:edit when context.resource.properties.owner == principal.id
permit edit-department: record:edit for role manager
  when context.resource.properties.department == principal.attributes.department
permit delete-own: record:delete when context.resource.properties.owner == principal.id
forbid unknown-record: record:* unless has(context.resource.properties.owner)
"""


def sources(n: int) -> dict[str, str]:
    out = {"rules.policy": RULES}
    for f, start in enumerate(range(0, n, PER_FILE)):
        lines = []
        for i in range(start, min(n, start + PER_FILE)):
            role = ": manager" if i % 10 == 0 else ""
            lines.append(f'agent "u{i}"{role} {{ department = "d{i % DEPTS}" }}')
            lines.append(f'resource record "r{i}" {{ department = "d{(i * 7) % DEPTS}", '
                         f'owner = "u{(i * 13) % n}" }}')
        out[f"e{f:02d}.policy"] = "\n".join(lines) + "\n"
    return out


def run_size(n: int, rounds: int, rows: list[list[str]]) -> None:
    engine, build_ms = timed_build(lambda: pe.Engine.from_sources(sources(n)))
    print(f"{n:,} agents and records: engine built in {build_ms:,.0f} ms")
    picks = [k * (n // 10) + k for k in range(10)]  # one in ten a manager, as the agents
    records = engine.policy.resources["record"]

    def resource_search(i: int) -> Any:
        return search(engine, "resource", {
            "subject": {"type": "user", "id": f"u{i}"}, "action": {"name": "view"},
            "resource": {"type": "record"}, "page": {"limit": 1000}})

    def resource_floor(i: int) -> Any:
        for rid, attrs in records.items():
            engine.authorize(f"u{i}", "record:view", {"resource": {
                "type": "record", "id": rid, "properties": attrs}})

    def subject_search(i: int) -> Any:
        return search(engine, "subject", {
            "subject": {"type": "user"}, "action": {"name": "edit"},
            "resource": {"type": "record", "id": f"r{i}"}, "page": {"limit": 1000}})

    def subject_floor(i: int) -> Any:
        ctx = {"resource": {"type": "record", "id": f"r{i}",
                            "properties": records[f"r{i}"]}}
        for aid in engine.policy.principals:
            engine.authorize(aid, "record:edit", ctx)

    def action_search(i: int) -> Any:
        return search(engine, "action", {
            "subject": {"type": "user", "id": f"u{i}"},
            "resource": {"type": "record", "id": f"r{i}"}})

    def row(name: str, fn: Callable[[int], Any], candidates: int, r: int,
            results: Callable[[int], int] | None = None) -> None:
        for i in picks[:2]:
            fn(i)  # warm the plan cache and the reverse-query cache
        p50, p99, count = cpu_samples([lambda i=i: fn(i) for i in picks], r)
        found = (statistics.mean(results(i) for i in picks) if results else float("nan"))
        rows.append([f"{n:,}", name, f"{candidates:,}",
                     "-" if results is None else f"{found:,.0f}",
                     fmt_us(p50), fmt_us(p99), fmt_us(p50 / candidates), str(count)])

    def total(answer: dict[str, Any]) -> int:
        page = answer.get("page")
        return int(page["total"]) if page else len(answer["results"])

    heavy = 1 if n >= 10_000 else rounds
    row("resource search (view)", resource_search, n, heavy,
        lambda i: total(resource_search(i)))
    row("  floor: authorize each record", resource_floor, n, heavy)
    row("subject search (edit)", subject_search, n, heavy,
        lambda i: total(subject_search(i)))
    row("  floor: authorize each agent", subject_floor, n, heavy)
    row("action search", action_search, 3, rounds * 20,
        lambda i: total(action_search(i)))


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
    print_table(["entities", "search", "candidates", "results", "p50 µs", "p99 µs",
                 "µs/candidate", "samples"], rows)


if __name__ == "__main__":
    main()
