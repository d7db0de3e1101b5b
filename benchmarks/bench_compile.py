"""Benchmark of compile, reload and start-up: every figure from a fresh process.

Run from a checkout (cedarpy comes with the ``bench`` extra)::

    python benchmarks/bench_compile.py            # every row, about two minutes
    python benchmarks/bench_compile.py --quick    # no +100,000 row, fewer repeats
    python benchmarks/bench_compile.py --only import,check

Not a test: it prints figures. Each row runs its work in a new interpreter (``python -c``
through ``subprocess``), so nothing is warm that a real start would not have warm, and
the median of a few runs is printed (peak memory is the child's ``ru_maxrss``). Rows:

* ``import``: ``import policyengine`` against ``import cedarpy`` (wall time of the import
  statement inside the child).
* ``check``: ``policyengine check policies/`` as a user runs it (the whole command, process
  start included), against ``python -c pass`` for the interpreter's own start. The
  package's bytecode is cached, as ``pip install .`` leaves it (pip compiles every module
  at install): the child runs without ``PYTHONDONTWRITEBYTECODE`` and a first, untimed run
  writes the cache of an editable checkout. (An editable checkout run with
  ``PYTHONDONTWRITEBYTECODE=1`` and no cache compiles the package's modules on every
  start: 0.30 - 0.31 s on the machine of benchmarks/README.md, against 0.17 s cached.)
* ``+10k``: 10,000 roles + 10,000 agents + 10,000 rules (the ``bench_authorize`` extras)
  through ``Engine.from_sources``, the grammar load included, against cedarpy's build of
  the same logic (``PolicySet.from_str`` + ``Entities.from_json_str``).
* ``+100k``: the same at 100,000 (time and peak memory of the child).
* ``reload``: 100 files of 100 rules; one file changes on disk; ``engine.reload()``
  against a cold ``Engine.from_path`` of the same set in the same child.
* ``no-namespace``: 10,000 rules in one file without a ``namespace`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine_line, print_table  # noqa: E402

CHILD_PRELUDE = f"""
import json, resource, sys, time
sys.path.insert(0, {str(ROOT / "benchmarks")!r})
def report(**figures):
    figures["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(figures))
"""


def run_child(body: str, env: dict[str, str] | None = None) -> dict[str, float]:
    code = CHILD_PRELUDE + textwrap.dedent(body)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env=env, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])  # type: ignore[no-any-return]
    raise RuntimeError(f"child failed:\n{out.stdout}\n{out.stderr}")


def median_of(runs: int, body: str, key: str) -> tuple[float, dict[str, float]]:
    results = [run_child(body) for _ in range(runs)]
    results.sort(key=lambda r: r[key])
    return statistics.median(r[key] for r in results), results[len(results) // 2]


IMPORT_PE = """
t0 = time.perf_counter(); import policyengine; t = time.perf_counter() - t0
report(s=t)
"""
IMPORT_CEDAR = """
t0 = time.perf_counter(); import cedarpy; t = time.perf_counter() - t0
report(s=t)
"""
COMPILE_PE = """
from bench_authorize import policyengine_sources
sources = policyengine_sources({n})
import policyengine as pe
c0 = time.process_time(); t0 = time.perf_counter()
engine = pe.Engine.from_sources(sources)
t = time.perf_counter() - t0; cpu = time.process_time() - c0
assert engine.authorize("xa1", "xns1:read", {{"country": "FR"}}).allowed
report(s=t, cpu=cpu)
"""
COMPILE_CEDAR = """
from bench_authorize import cedar_entities, cedar_policies
text = cedar_policies({n}); ents = json.dumps(cedar_entities({n}))
import cedarpy
c0 = time.process_time(); t0 = time.perf_counter()
state = (cedarpy.PolicySet.from_str(text), cedarpy.Entities.from_json_str(ents))
t = time.perf_counter() - t0; cpu = time.process_time() - c0
report(s=t, cpu=cpu)
"""
RELOAD_PE = """
import os, tempfile
from bench_authorize import extra_policy
import policyengine as pe
root = tempfile.mkdtemp()
for k in range(100):
    with open(os.path.join(root, f"f{k:03d}.policy"), "w") as fh:
        fh.write(extra_policy(k * 100, k * 100 + 100, f"ns{k:03d}"))
c0 = time.process_time(); t0 = time.perf_counter(); engine = pe.Engine.from_path(root)
cold = time.perf_counter() - t0; cold_cpu = time.process_time() - c0
path = os.path.join(root, "f042.policy")
with open(path, "a") as fh:
    fh.write("permit changed: xns4200:extra\\n")
c0 = time.process_time(); t0 = time.perf_counter(); engine.reload()
warm = time.perf_counter() - t0; warm_cpu = time.process_time() - c0
assert engine.authorize("xa4200", "xns4200:extra").allowed
report(cold=cold, reload=warm, ratio=warm / cold, cpu_ratio=warm_cpu / cold_cpu)
"""
NO_NAMESPACE = """
lines = ["role r: a:*", 'agent "a": r']
lines += [f"permit p{{i}}: x{{i}}:read when context.level > 3" for i in range({n})]
text = "\\n".join(lines) + "\\n"
import policyengine as pe
t0 = time.perf_counter(); pe.Engine.from_source(text); t = time.perf_counter() - t0
report(s=t)
"""
START = """
report(s=0.0)
"""


def run_command(argv: list[str], runs: int, env: dict[str, str] | None = None
                ) -> tuple[float, float]:
    """Median wall time and median CPU time (user + system) of a command, after one
    untimed run (which writes the bytecode cache when ``env`` allows it)."""
    import resource
    import time
    subprocess.run(argv, capture_output=True, cwd=ROOT, env=env, check=True)
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(argv, capture_output=True, cwd=ROOT, env=env, check=True)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="import,check,10k,100k,reload,nons")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    runs = 3 if args.quick else 5
    rows: list[list[str]] = []
    print(machine_line())

    if "import" in only:
        pe, _ = median_of(runs, IMPORT_PE, "s")
        cedar, _ = median_of(runs, IMPORT_CEDAR, "s")
        rows.append(["import policyengine", f"{pe * 1000:.1f} ms",
                     f"import cedarpy {cedar * 1000:.1f} ms", f"{pe / cedar:.2f}x",
                     "<= 2x"])
    if "check" in only:
        exe = str(Path(sys.executable).parent / "policyengine")
        cmd = [exe, "check", "policies/"] if os.path.exists(exe) else [
            sys.executable, "-m", "policyengine", "check", "policies/"]
        cached = {k: v for k, v in os.environ.items()
                  if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
        check, check_cpu = run_command(cmd, runs, cached)
        bare, _ = run_command([sys.executable, "-c", "pass"], runs, cached)
        rows.append(["policyengine check policies/",
                     f"{check * 1000:.0f} ms (cpu {check_cpu * 1000:.0f} ms)",
                     f"python -c pass {bare * 1000:.0f} ms", "", "<= 300 ms"])
    if "10k" in only:
        pe, pres = median_of(runs, COMPILE_PE.format(n=10_000), "s")
        cedar, cres = median_of(runs, COMPILE_CEDAR.format(n=10_000), "s")
        rows.append(["compile +10,000", f"{pe * 1000:.0f} ms (cpu {pres['cpu'] * 1000:.0f})",
                     f"cedarpy build {cedar * 1000:.0f} ms (cpu {cres['cpu'] * 1000:.0f})",
                     f"{pe / cedar:.2f}x (cpu {pres['cpu'] / cres['cpu']:.2f}x)", "<= 1x"])
    if "100k" in only and not args.quick:
        pe, res = median_of(1, COMPILE_PE.format(n=100_000), "s")
        cedar, cres = median_of(1, COMPILE_CEDAR.format(n=100_000), "s")
        rows.append(["compile +100,000",
                     f"{pe:.1f} s (cpu {res['cpu']:.1f} s), {res['peak_mb']:.0f} MB peak",
                     f"cedarpy {cedar:.1f} s, {cres['peak_mb']:.0f} MB", f"{pe / cedar:.2f}x",
                     "<= 15 s, <= 1 GB"])
    if "reload" in only:
        _, res = median_of(runs, RELOAD_PE, "ratio")
        rows.append(["reload, 1 of 100 files changed (10,000 rules)",
                     f"{res['reload'] * 1000:.0f} ms", f"cold {res['cold'] * 1000:.0f} ms",
                     f"{res['ratio']:.3f}x (cpu {res['cpu_ratio']:.3f}x)", "<= 0.1x"])
    if "nons" in only:
        t, _ = median_of(3 if not args.quick else 1, NO_NAMESPACE.format(n=10_000), "s")
        rows.append(["10,000 rules, one file, no namespace line", f"{t * 1000:.0f} ms", "",
                     "", "linear"])
    print_table(["what", "policyengine", "peer / reference", "ratio", "goal"], rows)
    return 0


if __name__ == "__main__":
    tempfile.tempdir = None
    raise SystemExit(main())
