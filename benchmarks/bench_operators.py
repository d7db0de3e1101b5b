"""A/B benchmark of the condition operators: this checkout's runtime helpers against
those of a git revision, in one process, interleaved.

Run from a checkout::

    python benchmarks/bench_operators.py --ref 0dc9613   # the helpers before typed comparisons
    python benchmarks/bench_operators.py --ref REV       # against any revision
    python benchmarks/bench_operators.py --quick

Not a test. The generated condition code calls the helpers of
``policyengine/decide/_runtime.py`` (``_eq``, ``_in_lit``, ``_lt``...). This script loads
that module as it was at ``--ref`` (``git show``) next to the current one, builds the same
policy twice (once bound to each set of helpers), and times ``authorize`` on both in
alternating rounds, so machine load hits both sides alike. It prints p50 per scenario
and the ratio current / ref. The policies and requests are those of
``bench_authorize.py`` (``base``: role grants, a forbid on ``in`` and a permit on ``<``)
plus ``typed``: ``==`` on strings, numbers and booleans, ``!=`` and ``in`` on a context
list, the operators whose typing changed.
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import call, machine_line, measure, parser, settings  # noqa: E402
from bench_authorize import BASE_POLICY, BASE_REQUESTS  # noqa: E402

import policyengine.decide._runtime as current_runtime  # noqa: E402
from policyengine import Engine  # noqa: E402

TYPED_POLICY = """\
role r: t:*
agent "bot": r
forbid kind: t:x when context.kind == "blocked" or context.level == 7
forbid flag: t:x when context.flag == true
permit tier: t:x when context.tier != "free" and "ops" in context.groups
"""

TYPED_REQUESTS = (
    ("bot", "t:x", {"kind": "doc", "level": 3, "flag": False, "tier": "gold",
                    "groups": ["ops", "dev"]}),
    ("bot", "t:x", {"kind": "blocked", "level": 3, "flag": False, "tier": "gold",
                    "groups": ["ops"]}),
)


def load_ref_runtime(ref: str) -> dict[str, Any]:
    """The RUNTIME helpers of ``policyengine/decide/_runtime.py`` at ``ref``."""
    text = subprocess.run(["git", "show", f"{ref}:policyengine/decide/_runtime.py"],
                          cwd=ROOT, check=True, capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ref_runtime.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location("ref_runtime", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    helpers: dict[str, Any] = dict(module.RUNTIME)
    # Helpers the reference does not have (added since) keep the current ones.
    return {**current_runtime.RUNTIME, **helpers}


def build(policy: str, helpers: dict[str, Any]) -> Engine:
    saved = dict(current_runtime.RUNTIME)
    current_runtime.RUNTIME.clear()
    current_runtime.RUNTIME.update(helpers)
    try:
        return Engine.from_source(policy)
    finally:
        current_runtime.RUNTIME.clear()
        current_runtime.RUNTIME.update(saved)


def main() -> None:
    ap = parser(__doc__ or "")
    ap.add_argument("--ref", default="HEAD~1", help="git revision to compare with")
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds per side")
    args = ap.parse_args()
    cfg = settings(args.quick)
    ref_helpers = load_ref_runtime(args.ref)
    scenarios = {
        "base": (BASE_POLICY, [(r.principal, r.permission, r.context)
                               for r in BASE_REQUESTS]),
        "typed": (TYPED_POLICY, list(TYPED_REQUESTS)),
    }
    print(machine_line())
    print(f"current vs {args.ref}: p50 us of authorize, median over {args.rounds} "
          "alternating rounds\n")
    print(f"{'scenario':<10} {'ref p50':>8} {'current p50':>12} {'ratio':>7}")
    for name, (policy, requests) in scenarios.items():
        engines = {"ref": build(policy, ref_helpers),
                   "current": build(policy, dict(current_runtime.RUNTIME))}
        for p, perm, ctx in requests:  # both sides must decide alike
            a, b = (engines[k].authorize(p, perm, ctx) for k in ("ref", "current"))
            if a.status != b.status:
                print(f"  note: {p} {perm} {ctx}: ref {a.status}, current {b.status}")
        p50s: dict[str, list[float]] = {"ref": [], "current": []}
        for _ in range(args.rounds):
            for side in ("ref", "current"):
                eng = engines[side]
                calls = [call(eng.authorize, p, perm, ctx) for p, perm, ctx in requests]
                p50s[side].append(measure(calls, cfg).p50_us)
        ref, cur = statistics.median(p50s["ref"]), statistics.median(p50s["current"])
        print(f"{name:<10} {ref:>8.3f} {cur:>12.3f} {cur / ref:>7.3f}")


if __name__ == "__main__":
    main()
