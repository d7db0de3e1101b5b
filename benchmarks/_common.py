"""Shared timing helpers for the benchmark scripts (not a test module).

Method (also described in benchmarks/README.md):

* Every request of a scenario is turned into a zero-argument callable with
  ``functools.partial`` (a C-level wrapper; its own cost is measured and printed as the
  harness overhead, and it is *included* in the figures, never subtracted).
* Warm-up: each request is called repeatedly for a short while before timing; the
  warm-up also estimates the cost of one call.
* Timing: ``time.perf_counter_ns`` around a *batch* of consecutive calls of one request
  (100 calls for anything under 10 µs a call; fewer for slower engines, down to a single
  call, so that one batch stays around 1 ms). One batch gives one sample, the batch time
  divided by its size. Batches rotate round-robin over the requests of the scenario, so
  every request weighs the same, and sampling continues until a time budget is spent.
* p50 and p99 are the median and 99th percentile of those per-call samples (so p99 is the
  99th percentile of 100-call averages for fast engines: it shows slow batches, e.g. a GC
  pass, not single slow calls). decisions/s is total calls divided by total timed time.
* The garbage collector stays enabled (a real service has it on).
"""

from __future__ import annotations

import argparse
import functools
import gc
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

MAX_BATCH = 100
TARGET_BATCH_NS = 1_000_000  # aim for batches of about 1 ms when calls are slow


@dataclass(frozen=True)
class Settings:
    """How long to warm up and to measure each scenario."""

    quick: bool
    warmup_s: float
    budget_s: float
    min_samples: int


def settings(quick: bool) -> Settings:
    if quick:
        return Settings(quick=True, warmup_s=0.03, budget_s=0.25, min_samples=20)
    return Settings(quick=False, warmup_s=0.2, budget_s=1.5, min_samples=200)


@dataclass(frozen=True)
class Timing:
    """Per-call figures of one scenario, in microseconds."""

    p50_us: float
    p99_us: float
    per_s: float
    samples: int
    calls: int
    batch: int


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[], Any]:
    """A zero-argument callable for one request (``functools.partial``, cheap to call)."""
    return functools.partial(fn, *args, **kwargs)


def _run(fn: Callable[[], Any], n: int) -> int:
    t0 = time.perf_counter_ns()
    for _ in repeat(None, n):
        fn()
    return time.perf_counter_ns() - t0


def cpu_samples(calls: Sequence[Callable[[], Any]], rounds: int) -> tuple[float, float, int]:
    """p50 and p99 (µs of this thread's CPU time) of single calls, ``rounds`` passes over
    ``calls``, and how many calls were timed (CPU time: a loaded machine distorts it
    less than wall time)."""
    times: list[float] = []
    clock = time.thread_time_ns
    for _ in range(rounds):
        for fn in calls:
            t0 = clock()
            fn()
            times.append((clock() - t0) / 1000.0)
    return statistics.median(times), percentile(times, 99), len(times)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between ranks."""
    data = sorted(values)
    if not data:
        return math.nan
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def measure(calls: Sequence[Callable[[], Any]], cfg: Settings) -> Timing:
    """Warm up, then time ``calls`` round-robin in batches until the budget is spent."""
    if not calls:
        raise ValueError("no calls to measure")
    # Warm-up: at least one call each, then round-robin until warmup_s.
    deadline = time.perf_counter_ns() + int(cfg.warmup_s * 1e9)
    while True:
        for fn in calls:
            fn()
        if time.perf_counter_ns() >= deadline:
            break
    # Estimate the warm cost of one call to choose the batch size: the fastest of up to
    # five more rounds (a round hit by a context switch would shrink the batches).
    rounds: list[int] = []
    spent = 0
    while len(rounds) < 5 and (not rounds or spent < 50_000_000):
        t0 = time.perf_counter_ns()
        for fn in calls:
            fn()
        rounds.append(time.perf_counter_ns() - t0)
        spent += rounds[-1]
    est_ns = max(1.0, min(rounds) / len(calls))
    batch = max(1, min(MAX_BATCH, int(TARGET_BATCH_NS / est_ns)))

    samples: list[float] = []
    total_ns = 0
    total_calls = 0
    deadline = time.perf_counter_ns() + int(cfg.budget_s * 1e9)
    while True:
        for fn in calls:
            ns = _run(fn, batch)
            total_ns += ns
            total_calls += batch
            samples.append(ns / batch / 1000.0)
        if time.perf_counter_ns() >= deadline and len(samples) >= min(
            cfg.min_samples, len(calls) * 3
        ):
            break
        # Hard stop for very slow engines: never more than 3x the budget.
        if time.perf_counter_ns() >= deadline + int(2 * cfg.budget_s * 1e9):
            break
    return Timing(
        p50_us=statistics.median(samples),
        p99_us=percentile(samples, 99),
        per_s=total_calls / (total_ns / 1e9) if total_ns else math.nan,
        samples=len(samples),
        calls=total_calls,
        batch=batch,
    )


def timed_build(build: Callable[[], Any]) -> tuple[Any, float]:
    """``(result, milliseconds)`` of one call of ``build`` (a full GC first)."""
    gc.collect()
    t0 = time.perf_counter_ns()
    result = build()
    return result, (time.perf_counter_ns() - t0) / 1e6


def harness_overhead_us(cfg: Settings) -> float:
    """p50 cost of calling a no-op through the same harness (included in all figures)."""

    def noop(a: object, b: object, c: object) -> None:
        return None

    return measure([call(noop, 1, 2, 3)], cfg).p50_us


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="fast smoke run (short budgets)")
    return p


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except (AttributeError, OSError):
        return "n/a"
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine_line() -> str:
    return (
        f"python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {load_average()}"
    )


def fmt_us(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_rate(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 2) -> None:
    """A plain table: the first ``left`` columns left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            out.append(cell.ljust(widths[i]) if i < left else cell.rjust(widths[i]))
        return "  ".join(out)

    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    sys.stdout.flush()


def warn(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr)
    sys.stdout.flush()
