"""Rate limits (GCRA): every store against a reference model in exact arithmetic, all or
nothing over several limits, the store's clock deciding, concurrency on the shared
stores, the policy statement and the decision pipeline's order."""

from __future__ import annotations

import multiprocessing
import threading
from fractions import Fraction
from math import ceil
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    POSTGRES_URL,
    REDIS_URL,
    STORE_KINDS,
    Clock,
    SharedStores,
    open_store,
    own_connection,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine import Engine
from policyengine.budgets import (
    BudgetInputError,
    BudgetStoreError,
    MemoryStore,
    PostgresStore,
    RedisStore,
)
from policyengine.budgets.ratelimit import (
    MAX_BURST,
    PERIODS,
    RateKey,
    RateLimiter,
    RateLimitSpec,
)
from policyengine.lang import PolicyError
from policyengine.lang._fastparse import read_statement
from policyengine.lang._fmt import format_source
from policyengine.lang._parser import parse

T0 = 1_773_144_000_000_000  # 2026-03-10T12:00:00Z in microseconds


class Reference:
    """GCRA as written in the literature, in exact fractions of a microsecond: the TAT
    is a Fraction, T = period / count, tau = (burst - 1) * T."""

    def __init__(self) -> None:
        self.tat: dict[str, Fraction] = {}

    def admit(self, keys: tuple[RateKey, ...], now: int) -> tuple[bool, int, int]:
        waits = []
        new = {}
        for i, (key, count, period, burst) in enumerate(keys):
            t = Fraction(period, count)
            tat = max(self.tat.get(key, Fraction(0)), Fraction(now))
            tau = (burst - 1) * t
            if tat - now > tau:
                waits.append((ceil(tat - tau - now), i))
            else:
                new[key] = tat + t
        if waits:
            wait, index = max(waits, key=lambda w: (w[0], -w[1]))
            return False, index, wait
        self.tat.update(new)
        return True, -1, 0


limits = st.tuples(st.integers(1, 50), st.sampled_from(sorted(PERIODS.values())),
                   st.integers(1, 12))
arrivals = st.lists(st.integers(0, 400_000), min_size=1, max_size=40)


def _keys(params: list[tuple[int, int, int]]) -> tuple[RateKey, ...]:
    return tuple(RateKey(f"k{i}", c, p, b) for i, (c, p, b) in enumerate(params))


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_admissions_match_the_exact_reference_on_random_arrivals(
        kind: str, tmp_path: Path, shared_stores: SharedStores) -> None:
    stores: list[Any] = []

    @settings(max_examples=60 if kind in ("memory", "sqlite") else 15, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(limits, min_size=1, max_size=3), arrivals, st.randoms())
    def run(params: list[tuple[int, int, int]], gaps: list[int], rnd: Any) -> None:
        store = (open_store(kind, tmp_path / str(len(stores)), shared_stores)
                 if kind != "postgres" or not stores else stores[0])
        if kind == "postgres":
            with own_connection(store) as conn:
                conn.execute(f'DELETE FROM "{store.schema}".budget_rates')
        stores.append(store)
        (tmp_path / str(len(stores))).mkdir(exist_ok=True)
        keys = _keys(params)
        ref = Reference()
        now = T0
        for gap in gaps:
            now += gap
            subset = tuple(k for k in keys if rnd.random() < 0.7) or keys
            got = store.rate_admit(subset, now, True)
            assert (got.ok, got.refused, got.retry_after_us) == ref.admit(subset, now)
            assert got.now_us == now

    (tmp_path / "0").mkdir(exist_ok=True)
    run()


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_burst_then_one_per_interval_and_the_exact_wait(kind: str, tmp_path: Path,
                                                        shared_stores: SharedStores) -> None:
    store: Any = open_store(kind, tmp_path, shared_stores)
    key = (RateKey("search", 4, 1_000_000, 3),)  # 4 per second: T = 250 ms, burst 3
    assert [store.rate_admit(key, T0, True).ok for _ in range(4)] == [True, True, True, False]
    refused = store.rate_admit(key, T0, True)
    # TAT = T0 + 750 ms; tolerance 2 x 250 ms: 250 ms early
    assert (refused.ok, refused.refused, refused.retry_after_us) == (False, 0, 250_000)
    assert not store.rate_admit(key, T0 + 249_999, True).ok
    assert store.rate_admit(key, T0 + 250_000, True).ok
    assert not store.rate_admit(key, T0 + 250_000, True).ok
    # Rested for a while: the burst again, never more.
    later = T0 + 10_000_000
    assert [store.rate_admit(key, later, True).ok for _ in range(4)] == [True, True, True, False]


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_several_limits_admit_together_or_not_at_all(kind: str, tmp_path: Path,
                                                     shared_stores: SharedStores) -> None:
    store: Any = open_store(kind, tmp_path, shared_stores)
    wide, narrow = RateKey("a", 100, 1_000_000, 100), RateKey("b", 1, 60_000_000, 1)
    assert store.rate_admit((wide, narrow), T0, True).ok
    refused = store.rate_admit((wide, narrow), T0, True)
    assert (refused.ok, refused.refused, refused.retry_after_us) == (False, 1, 60_000_000)
    # The refused call took nothing from ``a``: 99 of its 100 remain.
    assert sum(store.rate_admit((wide,), T0, True).ok for _ in range(100)) == 99
    # A peek answers without counting.
    assert store.rate_admit((narrow,), T0 + 60_000_000, False).ok
    assert store.rate_admit((narrow,), T0 + 60_000_000, True).ok
    assert not store.rate_admit((narrow,), T0 + 60_000_000, False).ok


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_the_shared_store_clock_decides(kind: str, shared_stores: SharedStores) -> None:
    store: Any = (shared_stores.postgres(max_clock_skew=2.0) if kind == "postgres"
                  else shared_stores.redis(max_clock_skew=2.0))
    server_us = store.server_time() * 1e6
    key = (RateKey("x", 1, 3_600_000_000, 1),)
    got = store.rate_admit(key, None, True)  # no time from this host: the server's
    assert got.ok and abs(got.now_us - server_us) < 2_000_000
    # A host whose clock runs an hour ahead or behind changes nothing: its time is not
    # asked. Given explicitly, a time that far off is refused.
    spec = RateLimitSpec("x", ("tools:*",), 1, "hour", 1)
    ahead = RateLimiter([spec], store, clock=Clock(server_us / 1e6 + 3600))
    with pytest.raises(BudgetStoreError) as err:
        ahead.admit("bot", "tools:a")
    assert err.value.code == "clock_skew"
    host_free = RateLimiter([spec], store)
    assert host_free.admit("bot", "tools:a") is None
    refused = host_free.admit("bot", "tools:a")
    assert refused is not None and 3_590_000_000 < refused.retry_after_us <= 3_600_000_000


def _hammer(kind: str, name: str, seconds: float, threads: int, out: Any,
            start: Any) -> None:
    store: Any = (PostgresStore(POSTGRES_URL, schema=name) if kind == "postgres"
                  else RedisStore(REDIS_URL, prefix=name, create=True))
    key = (RateKey("hot", 200, 1_000_000, 20),)  # 200 per second, burst 20
    admitted: list[int] = []
    lock = threading.Lock()
    # Every process starts together (a slow spawn on a loaded machine would otherwise
    # leave a gap in which nobody asks, and nothing can be admitted), and all stop at
    # the same server time.
    store.server_time()
    start.wait(60)
    stop = store.server_time() + seconds

    def work() -> None:
        mine = []
        while True:
            got = store.rate_admit(key, None, True)
            if got.ok:
                mine.append(got.now_us)
            if got.now_us / 1e6 > stop:
                break
        with lock:
            admitted.extend(mine)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    store.close()
    out.put(admitted)


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_processes_and_threads_never_pass_burst_plus_rate_times_elapsed(
        kind: str, shared_stores: SharedStores) -> None:
    store: Any = shared_stores.postgres() if kind == "postgres" else shared_stores.redis()
    name = store.schema if kind == "postgres" else store.prefix
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_hammer, args=(kind, name, 0.5, 4, out, start))
             for _ in range(2)]
    for p in procs:
        p.start()
    times = sorted(t for _ in procs for t in out.get(timeout=60))
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert times, "nothing admitted"
    # Over any stretch of server time [a, b] at most burst + rate x (b - a) pass: check
    # every stretch that starts and ends on an admission.
    for i in range(len(times)):
        for j in range(i, len(times)):
            assert j - i + 1 <= 20 + (times[j] - times[i]) * 200 // 1_000_000 + 1
    # ... and the limiter is not merely refusing: a busy second admits about the rate.
    span = (times[-1] - times[0]) / 1e6
    assert len(times) >= 20 + 200 * span * 0.5


# ---- the policy statement -------------------------------------------------------------

def test_statement_parses_formats_and_the_fast_reader_defers_to_lark() -> None:
    text = ("ratelimit search: tools:search, tools:fetch 10 per second burst 20 per agent\n"
            "ratelimit runs: llm:* 3 per minute per context.run_id\n"
            "ratelimit slow: * 100 per hour\n")
    pf = parse(text, "r.policy")
    first, second, third = pf.statements
    assert (first.id, first.patterns, first.count, first.per, first.burst, first.subject) == (
        "search", ("tools:search", "tools:fetch"), 10, "second", 20, "agent")
    assert (second.burst, second.subject, third.per, third.subject) == (
        None, "context.run_id", "hour", "agent")
    formatted = format_source(text, "r.policy")
    assert parse(formatted, "r.policy").statements == pf.statements
    assert format_source(formatted, "r.policy") == formatted
    assert read_statement(text.splitlines()[0], "r.policy", 0) is None


@pytest.mark.parametrize(("text", "column", "words"), [
    ("ratelimit a: tools:x 0 per second", 22, "from 1"),
    ("ratelimit a: tools:x 5 per second burst 0", 41, "burst"),
    (f"ratelimit a: tools:x 5 per second burst {MAX_BURST + 1}", 41, "burst"),
    ("ratelimit a: tools:x 2000000 per minute", 22, "from 1"),
])
def test_bad_values_are_reported_where_they_are(text: str, column: int, words: str) -> None:
    with pytest.raises(PolicyError) as err:
        Engine.from_sources({"r.policy": "permit p: tools:*\n" + text + "\n"})
    problem = next(p for p in err.value.problems if p.code == "E142")
    assert (problem.line, problem.column) == (2, column)
    assert words in problem.message


def test_a_rate_limit_takes_an_id_no_other_statement_has() -> None:
    with pytest.raises(PolicyError) as err:
        Engine.from_sources({"r.policy": "permit p: tools:*\nratelimit p: tools:x 1 per hour\n"})
    assert [p.code for p in err.value.problems] == ["E101"]


def test_spec_refuses_bad_values_with_a_code() -> None:
    with pytest.raises(BudgetInputError) as err:
        RateLimitSpec("x", ("tools:*",), 5, "day")
    assert err.value.code == "invalid_rate_limit"
    assert RateLimitSpec("x", ("tools:*",), 5, "minute").burst == 5


# ---- the decision pipeline -------------------------------------------------------------

POLICY = """
permit p: tools:*
approval big: payments:* over 100 EUR
currency EUR
permit pay: payments:*
ratelimit calls: tools:*, payments:* 1 per hour burst 2
budget daily: tools:* limit 1 calls per day
"""


SMALL = {"amount": "5", "currency": "EUR"}


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_only_calls_that_may_go_ahead_take_a_token(kind: str, tmp_path: Path,
                                                   shared_stores: SharedStores) -> None:
    engine = Engine.from_sources({"p.policy": POLICY}, clock=Clock(T0 / 1e6),
                                 budget_store=open_store(kind, tmp_path, shared_stores))
    # A pending approval is not a call made: no token.
    for _ in range(3):
        assert engine.authorize("bot", "payments:x", {"amount": "500"}).status == \
            "pending_approval"
    engine.budgets.record("bot", "tools:a", 1, "calls")
    for _ in range(3):  # refused by the budget: no token
        assert engine.authorize("bot", "tools:a").code == "budget_exceeded"
    for _ in range(3):  # explain counts nothing
        assert engine.explain("bot", "payments:x", SMALL).decision.code == "permitted"
    assert engine.authorize("bot", "payments:x", SMALL).allowed
    assert engine.authorize("bot", "payments:x", SMALL).allowed
    refused = engine.authorize("bot", "payments:x", SMALL)
    wire = refused.to_wire()
    assert (refused.status, refused.code, wire["rules"]) == (
        "denied", "rate_limited", ["default.calls"])
    # TAT = t0 + 2 h; tolerance 1 h: an hour early.
    assert wire["rateLimit"] == {"rateLimit": "default.calls", "subject": "bot", "limit": 1,
                                 "per": "hour", "burst": 2, "retryAfterMs": 3_600_000}
    assert refused.rate_limit is not None and refused.rate_limit.retry_after == 3600.0
    with pytest.raises(AttributeError):
        refused.rate_limit.retry_after_us = 0  # type: ignore[misc]


def test_a_store_fault_denies_with_its_code() -> None:
    class Broken(MemoryStore):
        def rate_admit(self, *args: object) -> object:
            raise BudgetStoreError("store_unavailable", "down")

    engine = Engine.from_sources({"p.policy": POLICY}, budget_store=Broken())
    decision = engine.authorize("bot", "payments:x", SMALL)
    assert (decision.status, decision.code) == ("denied", "store_unavailable")


def test_an_unusable_subject_value_denies() -> None:
    engine = Engine.from_sources({"p.policy": (
        "permit p: tools:*\nratelimit r: tools:* 5 per second per context.run_id\n")})
    assert engine.authorize("bot", "tools:a", {"run_id": "é" * 3}).code == "invalid_subject"
    assert engine.authorize("bot", "tools:a", {"run_id": "r1"}).allowed
    assert engine.authorize("bot", "tools:a", {"run_id": 5}).allowed  # not a string: ""


def test_the_authorize_wire_keeps_the_retry_after() -> None:
    from pydantic import TypeAdapter

    from policyengine.server._models import AuthorizeResponse
    engine = Engine.from_sources({"p.policy": POLICY})
    adapter = TypeAdapter(AuthorizeResponse)
    wires = [adapter.dump_python(adapter.validate_python(
        engine.authorize("bot", "payments:x", SMALL).to_wire())) for _ in range(3)]
    assert [w["reasonCode"] for w in wires] == ["permitted", "permitted", "rate_limited"]
    assert wires[0]["rateLimit"] is None
    assert wires[2]["rateLimit"]["retryAfterMs"] > 3_590_000
    # as the service writes it (no rateLimit key unless rate-limited):
    # tests/server/test_ratelimit_wire.py


def test_memory_keys_at_rest_are_forgotten() -> None:
    store: Any = open_store("memory", Path("."), SharedStores())
    for i in range(5000):
        assert store.rate_admit((RateKey(f"k{i}", 1, 1_000_000, 1),), T0, True).ok
    assert not store.rate_admit((RateKey("k1", 1, 1_000_000, 1),), T0, True).ok
    tats = store._rates._tats
    # New keys a second later: the map is swept once it has doubled, and the sweep drops
    # exactly the keys at rest (every k*), keeping the live ones.
    n = 0
    while "k0" in tats and n < 30_000:
        assert store.rate_admit((RateKey(f"n{n}", 1, 1_000_000, 1),), T0 + 2_000_000, True).ok
        n += 1
    assert "k0" not in tats and len(tats) == n
    assert all(key.startswith("n") for key in tats)
    # forgetting changed nothing: k1 admits as from rest
    assert store.rate_admit((RateKey("k1", 1, 1_000_000, 1),), T0 + 2_000_000, True).ok


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_keys_at_rest_are_forgotten(kind: str, tmp_path: Path,
                                    shared_stores: SharedStores) -> None:
    store: Any = open_store(kind, tmp_path, shared_stores)
    for i in range(511):
        assert store.rate_admit((RateKey(f"k{i}", 1, 1_000_000, 1),), T0, True).ok
    # the 512th write sweeps: every key above has been at rest for over a minute
    assert store.rate_admit((RateKey("last", 1, 1_000_000, 1),), T0 + 120_000_000, True).ok
    table = "budget_rates" if kind == "sqlite" else f'"{store.schema}".budget_rates'
    with own_connection(store) as conn:
        rows = conn.execute(f"SELECT key FROM {table}").fetchall()
    assert [r[0] for r in rows] == ["last"]
    # forgetting them changed nothing: each admits as from rest
    assert store.rate_admit((RateKey("k0", 1, 1_000_000, 1),), T0 + 120_000_000, True).ok


def _put_tat(store: Any, key: str, tat_us: int, frac: int) -> None:
    """Write a key's TAT straight into the store's own layout."""
    if hasattr(store, "_rates"):
        store._rates._tats[key] = (tat_us, frac)
    elif hasattr(store, "schema"):
        with own_connection(store) as conn:
            conn.execute(f'INSERT INTO "{store.schema}".budget_rates VALUES (%s, %s, %s)',
                         (key, tat_us, frac))
    elif hasattr(store, "prefix"):
        import redis
        redis.Redis.from_url(REDIS_URL).set(store.prefix + "q:" + key, f"{tat_us} {frac}",
                                            px=600_000)
    else:
        with own_connection(store) as conn:
            conn.execute("INSERT INTO budget_rates VALUES (?, ?, ?)", (key, tat_us, frac))


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_waits_near_the_largest_values_stay_exact(kind: str, tmp_path: Path,
                                                  shared_stores: SharedStores) -> None:
    store: Any = open_store(kind, tmp_path, shared_stores)
    # 10**15 us (31 years) owed plus 3/7 us, burst 1: the wait is 10**15 + 1 us (a
    # division in floating point, or in numeric with 16 digits, loses the last one).
    _put_tat(store, "deep", T0 + 10**15, 3)
    got = store.rate_admit((RateKey("deep", 7, 3_600_000_000, 1),), T0, True)
    assert (got.ok, got.retry_after_us) == (False, 10**15 + 1)


def test_a_tool_call_over_the_rate_is_outcome_rate_limited() -> None:
    engine = Engine.from_sources({"t.policy": (
        'permit p: search:*\ntool s: function "web_search" -> search:web\n'
        "ratelimit searches: search:* 1 per minute burst 1\n")})
    first = engine.tool_authorize("bot", transport="function", function_name="web_search",
                                  body={"q": "x"})
    second = engine.tool_authorize("bot", transport="function", function_name="web_search",
                                   body={"q": "x"})
    assert (first.outcome, second.outcome) == ("policy_allow", "rate_limited")
    assert 59_000 < second.to_wire()["rateLimit"]["retryAfterMs"] <= 60_000
    assert second.body is None  # a refused call's body is not handed back


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_shadow_rate_limits_count_and_report_but_never_refuse(
        kind: str, tmp_path: Path, shared_stores: SharedStores) -> None:
    engine = Engine.from_sources({"s.policy": (
        "permit p: tools:*\nforbid f: tools:x when context.no == true\n"
        "ratelimit trial: tools:* 1 per hour burst 1 mode warn\n"
        "ratelimit quiet: tools:x 2 per hour burst 2 mode log\n"
        "ratelimit real: tools:x 3 per hour burst 3\n")}, clock=Clock(T0 / 1e6),
        budget_store=open_store(kind, tmp_path, shared_stores))

    def shadow(context: dict[str, Any] | None = None) -> tuple[str, list[tuple[str, str]]]:
        d = engine.authorize("bot", "tools:x", context or {"no": False})
        return d.code, [(s.id, s.mode) for s in d.shadow if s.kind == "rate_limit"]

    assert engine.explain("bot", "tools:x", {"no": False}).decision.shadow == ()  # no count
    assert shadow({"no": True}) == ("forbidden", [])  # refused by a rule: not counted
    assert shadow() == ("permitted", [])
    assert shadow() == ("permitted", [("default.trial", "warn")])
    # each judged alone: quiet (burst 2) is over only now; trial's refusals took nothing
    assert shadow() == ("permitted", [("default.trial", "warn"), ("default.quiet", "log")])
    # the enforced one refuses the fourth call: the shadows are not asked
    assert shadow() == ("rate_limited", [])
    wire = engine.authorize("helper", "tools:y").to_wire()
    assert "shadow" not in wire
    assert engine.authorize("helper", "tools:y").to_wire()["shadow"] == [
        {"id": "default.trial", "kind": "rate_limit", "mode": "warn", "status": "denied",
         "code": "rate_limited"}]
