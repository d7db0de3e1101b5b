"""Shared stores (PostgreSQL, Redis): chosen by URL, layouts versioned, a lost dataset
refused, which clock decides, and the CI rule that a missing service fails the run."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from conftest import (
    BUDGET_NOW,
    DAILY,
    POSTGRES_URL,
    REDIS_URL,
    Clock,
    SharedStores,
    make_ledger,
    require_service,
    unique_name,
)

from policyengine.budgets import (
    BudgetError,
    BudgetExceeded,
    BudgetInputError,
    BudgetSpec,
    BudgetStoreError,
    Ledger,
    MemoryStore,
    PostgresStore,
    RedisStore,
    ReservationError,
    ServerClock,
    SQLiteStore,
    store_from_url,
)
from policyengine.engine import Engine

SHARED = ["postgres", "redis"]


def _open(shared: SharedStores, kind: str, **options: object) -> PostgresStore | RedisStore:
    return shared.postgres(**options) if kind == "postgres" else shared.redis(**options)


# -- chosen by URL -----------------------------------------------------------------------


def test_memory_and_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(store_from_url("memory:"), MemoryStore)
    assert store_from_url("memory:?retention=60").retention == 60  # type: ignore[attr-defined]
    monkeypatch.chdir(tmp_path)
    rel = store_from_url("sqlite:///rel.db?durability=spend")
    assert isinstance(rel, SQLiteStore) and rel.durability == "spend"
    assert (tmp_path / "rel.db").exists()
    absolute = store_from_url(f"sqlite:///{tmp_path / 'abs.db'}")
    assert isinstance(absolute, SQLiteStore) and (tmp_path / "abs.db").exists()


@pytest.mark.parametrize("url", [
    "", "memory", "mysql://h/db", "sqlite://", "sqlite:///", "file:///x.db",
    "sqlite:///x.db?busy_timeout=soon",
])
def test_unreadable_urls_are_refused_with_a_code(url: str) -> None:
    with pytest.raises(BudgetInputError) as info:
        store_from_url(url)
    assert info.value.code == "invalid_store_url"


def test_a_url_password_is_not_repeated_in_errors() -> None:
    with pytest.raises(BudgetInputError) as info:
        store_from_url("mysql://user:s3cret@db.example/x")
    assert "s3cret" not in str(info.value)


@pytest.mark.postgres
@pytest.mark.redis
def test_postgres_and_redis_urls_carry_store_options(shared_stores: SharedStores) -> None:
    require_service("postgres")
    require_service("redis")
    schema = unique_name("pg")
    pg = store_from_url(f"{POSTGRES_URL}?schema={schema}&durability=spend&max_clock_skew=none"
                        "&connect_timeout=3")
    shared_stores.opened.append(pg)  # type: ignore[arg-type]
    assert isinstance(pg, PostgresStore)
    assert (pg.schema, pg.durability, pg.max_clock_skew) == (schema, "spend", None)
    # the store's own: given to libpq as well, where a driver's copy was overridden
    assert pg.connect_timeout == 3 and "connect_timeout" not in pg.url
    assert "schema" not in pg.url
    prefix = unique_name("redis") + ":"
    rd = store_from_url(f"{REDIS_URL}?prefix={prefix}&max_clock_skew=0.5&create=true")
    shared_stores.opened.append(rd)  # type: ignore[arg-type]
    assert isinstance(rd, RedisStore)
    assert (rd.prefix, rd.max_clock_skew) == (prefix, 0.5)
    for store in (pg, rd):
        ledger = Ledger([DAILY], store)
        ledger.record("bot", "payments:x", "7", "EUR")
        assert ledger.balances("bot")[0].spent == 7


@pytest.mark.parametrize("kind", SHARED)
def test_engine_and_cli_take_a_store_url(
    kind: str, shared_stores: SharedStores, tmp_path: Path
) -> None:
    store = _open(shared_stores, kind, max_clock_skew=2.0)
    url = (f"{POSTGRES_URL}?schema={store.schema}" if isinstance(store, PostgresStore)
           else f"{REDIS_URL}?prefix={store.prefix}")
    policy = tmp_path / "p.policy"
    policy.write_text(
        'namespace t\nrole payer: payments:*\nagent "bot": payer\n'
        "budget daily: payments:* limit 100 EUR per day per agent\n"
    )
    # One host spends through its engine; another host's engine and the CLI see it.
    first = Engine.from_path(policy, budget_store=url)
    first.budgets.record("bot", "payments:refund", "90", "EUR")
    second = Engine.from_path(policy, budget_store=url)
    ctx = {"amount": "20", "currency": "EUR"}
    assert second.authorize("bot", "payments:refund", ctx).code == "budget_exceeded"
    assert second.authorize("bot", "payments:refund", {**ctx, "amount": "10"}).allowed
    out = subprocess.run(
        [sys.executable, "-m", "policyengine", "eval", str(policy), "--principal", "bot",
         "--permission", "payments:refund", "--context", '{"amount": "20", "currency": "EUR"}',
         "--budget-store", url, "--exit-code"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 1 and '"budget_exceeded"' in out.stdout, out.stderr


def test_cli_reports_a_bad_store_url(tmp_path: Path) -> None:
    policy = tmp_path / "p.policy"
    policy.write_text('role r: docs:*\nagent "bot": r\n')
    out = subprocess.run(
        [sys.executable, "-m", "policyengine", "eval", str(policy), "--principal", "bot",
         "--permission", "docs:read", "--budget-store", "mysql://db/x"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2 and "invalid_store_url" in out.stderr


# -- layouts -----------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_refuses_the_layout_before_one_row_holds(
    shared_stores: SharedStores,
) -> None:
    """Layout 2 kept every hold in its own row: its schema is refused with a code, and
    read by nothing (the tables and their data stay as they were)."""
    store = shared_stores.postgres()
    ledger, _ = make_ledger(store, DAILY)
    ledger.reserve("bot", "payments:x", "7", "EUR")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'UPDATE "{store.schema}".budget_layout SET version = 2')
    with pytest.raises(BudgetStoreError) as info:
        PostgresStore(POSTGRES_URL, schema=store.schema)
    assert info.value.code == "store_incompatible" and "version 2" in str(info.value)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        assert conn.execute(f'SELECT count(*) FROM "{store.schema}".budget_reservations'
                            ).fetchone() == (1,)


_EXPIRY_INDEXES = ("budget_reservations_abandoned", "budget_idempotency_by_expiry",
                   "budget_events_by_time")


def _indexes(schema: str) -> set[str]:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        rows = conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s",
                            (schema,)).fetchall()
    return {row[0] for row in rows}


@pytest.mark.postgres
def test_postgres_migrates_layout_3_by_adding_the_expiry_indexes(
    shared_stores: SharedStores,
) -> None:
    """Layout 3 differs from 4 only by the indexes housekeeping finds expired rows by:
    opening it adds them and moves it to 4, and what it held is read as before."""
    store = shared_stores.postgres()
    ledger, _ = make_ledger(store, DAILY)
    held = ledger.reserve("bot", "payments:x", "7", "EUR")
    ledger.record("bot", "payments:x", "2", "EUR")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        for name in _EXPIRY_INDEXES:
            conn.execute(f'DROP INDEX "{store.schema}".{name}')
        conn.execute(f'UPDATE "{store.schema}".budget_layout SET version = 3')
    assert not _indexes(store.schema) & set(_EXPIRY_INDEXES)
    again = shared_stores.postgres(schema=store.schema)
    assert set(_EXPIRY_INDEXES) <= _indexes(store.schema)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        assert conn.execute(f'SELECT version FROM "{store.schema}".budget_layout'
                            ).fetchall() == [(4,)]
    reopened, _ = make_ledger(again, DAILY)
    assert reopened.balances("bot")[0].spent == 2
    assert reopened.commit(held.id, "5").status == "committed"
    assert reopened.balances("bot")[0].spent == 7


@pytest.mark.postgres
def test_postgres_housekeeping_finds_expired_rows_by_index(
    shared_stores: SharedStores,
) -> None:
    """No delete of the housekeeping reads a whole table that grows with the traffic
    kept: each one's plan, as the store runs it (its prepared statement, in its
    transaction's settings), bounds its scan by the expiry it deletes by (an index
    condition), even on tables the planner has no statistics of (never ANALYZEd) and
    thousands of rows to keep, where a scan of the whole table looks cheaper to it.
    (Rate-limit keys, one row per key in use, are the exception.) And it deletes exactly
    what expired."""
    from policyengine.budgets import postgres

    store = shared_stores.postgres()
    make_ledger(store, DAILY)[0].record("bot", "payments:x", "1", "EUR")
    s = f'"{store.schema}"'
    retention = store.retention
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        for at, prefix, n in ((BUDGET_NOW, "kept", 20_000),
                              (BUDGET_NOW - retention - 1, "gone", 3)):
            conn.execute(
                f"INSERT INTO {s}.budget_reservations (id, status, expires_at, nholds, "
                "finished_at, data) SELECT %s || i, 'committed', %s, 1, %s, '[]' "
                "FROM generate_series(1, %s) i", (prefix, at, at, n))
            conn.execute(
                f"INSERT INTO {s}.budget_idempotency SELECT %s || i, '', %s, '[]' "
                "FROM generate_series(1, %s) i",
                (prefix, at + retention if prefix == "kept" else at, n))
            conn.execute(
                f"INSERT INTO {s}.budget_events SELECT 'b', 's', %s, 1 "
                "FROM generate_series(1, %s) i",
                (BUDGET_NOW if prefix == "kept" else 0.0, n))
    expiry = {"events": "(at <", "finished": "(finished_at <",
              "abandoned": "(expires_at <", "idempotency": "(expires_at <=",
              "buckets": "(win <"}
    args = ", ".join(f"'{p.decode()}'" for p in store._housekeep_params(BUDGET_NOW))
    conn = store._checkout()
    try:
        pgconn = conn.pgconn
        assert pgconn.exec_(postgres._HOUSEKEEP_BEGIN).status == postgres._COMMAND_OK
        res = pgconn.exec_(b"EXPLAIN EXECUTE policyengine_budget_housekeep(%s)"
                           % args.encode())
        plan = [res.get_value(i, 0).decode() for i in range(res.ntuples)]
        pgconn.exec_(b"ROLLBACK")
    finally:
        store._checkin(conn)
    sections: dict[str, list[str]] = {}
    name = ""
    for line in plan:
        if line.strip().startswith("CTE "):
            name = line.split()[-1]
        sections.setdefault(name, []).append(line)
    assert set(expiry) <= set(sections), plan
    assert not any(ln.startswith("JIT:") for ln in plan), plan  # compiling costs more
    for cte, bound in expiry.items():
        conds = [ln for ln in sections[cte] if "Index Cond:" in ln]
        assert any(bound in ln for ln in conds), "\n".join(sections[cte])
        assert not any("Seq Scan" in ln for ln in sections[cte]), "\n".join(sections[cte])
    store._housekeep(BUDGET_NOW)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        left = [conn.execute(f"SELECT count(*) FROM {s}.{table} WHERE {where}").fetchone()
                for table, where in (("budget_reservations", "id LIKE 'gone%%'"),
                                     ("budget_reservations", "id LIKE 'kept%%'"),
                                     ("budget_idempotency", "key LIKE 'gone%%'"),
                                     ("budget_idempotency", "key LIKE 'kept%%'"),
                                     ("budget_events", "at = 0"),
                                     ("budget_events", "at > 0"))]
    assert left == [(0,), (20_000,), (0,), (20_000,), (0,), (20_000,)]


def test_postgres_store_compares_libpq_codes_psycopg_names() -> None:
    """The store compares results and connections with libpq's codes as plain ints."""
    from psycopg import pq

    from policyengine.budgets import postgres

    assert postgres._TUPLES_OK == pq.ExecStatus.TUPLES_OK
    assert postgres._IDLE == pq.TransactionStatus.IDLE
    assert postgres._CONNECTION_OK == pq.ConnStatus.OK


@pytest.mark.postgres
def test_postgres_threads_beyond_the_pool_take_turns(shared_stores: SharedStores) -> None:
    """More threads than connections: each waits for one another gives back (woken when
    it is, not failing after ``connect_timeout``), and nobody is left waiting."""
    store = shared_stores.postgres(pool_size=1, connect_timeout=2.0)
    ledger, _ = make_ledger(store, DAILY)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(15):
                r = ledger.reserve("bot", "payments:x", "1", "EUR")
                ledger.commit(r.id, "1")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert ledger.balances("bot")[0].spent == 60
    assert store._waiting == 0 and store._open == 1
    # One thread holds the only connection: another waits, counted (a connection given
    # back wakes a counted waiter at once), and takes it when it comes back.
    conn = store._checkout()
    times: list[float] = []
    waiter = threading.Thread(target=lambda: times.append(store.server_time()))
    waiter.start()
    deadline = time.monotonic() + 5
    while store._waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert store._waiting == 1 and not times
    store._checkin(conn)
    waiter.join(5)
    assert len(times) == 1 and store._waiting == 0


@pytest.mark.postgres
def test_postgres_refuses_another_layout_and_keeps_its_data(
    shared_stores: SharedStores,
) -> None:
    store = shared_stores.postgres()
    ledger, _ = make_ledger(store, DAILY)
    ledger.record("bot", "payments:x", "7", "EUR")
    again, _ = make_ledger(shared_stores.postgres(schema=store.schema), DAILY)
    assert again.balances("bot")[0].spent == 7  # reopening keeps the data
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'UPDATE "{store.schema}".budget_layout SET version = 99')
    with pytest.raises(BudgetStoreError) as info:
        PostgresStore(POSTGRES_URL, schema=store.schema)
    assert info.value.code == "store_incompatible" and "99" in str(info.value)
    foreign = unique_name("pg")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{foreign}"')
        conn.execute(f'CREATE TABLE "{foreign}".budget_buckets (x int)')
    try:
        with pytest.raises(BudgetStoreError) as info:
            PostgresStore(POSTGRES_URL, schema=foreign)
        assert info.value.code == "store_incompatible"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{foreign}" CASCADE')


@pytest.mark.postgres
@pytest.mark.parametrize("ddl", [
    "CREATE TABLE {s}.budget_layout (version int, code text)",  # its row missing
    "CREATE TABLE {s}.budget_layout (v int)",  # another table of that name
    "CREATE TABLE {s}.budget_layout (version int, code text); "
    "INSERT INTO {s}.budget_layout VALUES (NULL, '')",
    "CREATE VIEW {s}.budget_layout AS SELECT 1 AS v",
])
def test_postgres_refuses_a_layout_table_it_cannot_read(ddl: str) -> None:
    """A ``budget_layout`` without a version in it is a layout this policyengine does
    not know: ``store_incompatible`` (as for version 99), not a raw database error from
    creating the table again or reading a column that is not there; nothing is changed."""
    require_service("postgres")
    schema = unique_name("pg")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        for statement in ddl.format(s=f'"{schema}"').split(";"):
            conn.execute(statement)
    try:
        with pytest.raises(BudgetStoreError) as info:
            PostgresStore(POSTGRES_URL, schema=schema)
        assert info.value.code == "store_incompatible"
        assert "budget_layout" in str(info.value)
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            tables = conn.execute("SELECT count(*) FROM pg_class c JOIN pg_namespace n "
                                  "ON n.oid = c.relnamespace WHERE n.nspname = %s",
                                  (schema,)).fetchone()
        assert tables == (1,)  # nothing made beside the layout table found there
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.mark.postgres
def test_postgres_forgets_what_nobody_can_ask_about(shared_stores: SharedStores) -> None:
    """Housekeeping (every 512 writes) drops reservations finished longer than the
    retention ago and buckets of windows long gone, and keeps the rest."""
    store = shared_stores.postgres(retention=60)
    ledger, clock = make_ledger(store, DAILY)
    old = ledger.record("bot", "payments:x", "1", "EUR")
    clock.t = BUDGET_NOW + 40 * 86400
    for _ in range(512):
        ledger.record("bot", "payments:x", "0.01", "EUR")
    with psycopg.connect(POSTGRES_URL) as conn:
        wins = conn.execute(f'SELECT win FROM "{store.schema}".budget_buckets').fetchall()
        kept = conn.execute(
            f'SELECT count(*) FROM "{store.schema}".budget_reservations').fetchone()
    assert len(wins) == 1 and wins[0][0] > BUDGET_NOW + 39 * 86400
    assert kept == (512,)
    assert store.get_reservation(old.id) is None


@pytest.mark.postgres
def test_one_bucket_reserves_and_commits_race_on_two_hosts_without_overspending(
    shared_stores: SharedStores,
) -> None:
    """A reserve on one calendar bucket is one statement (a conditional UPDATE, then the
    inserts), its commit or release one short function; anything else about them falls
    back to the full function. Two stores on one schema (two hosts) x 4 threads reserve,
    commit and release at random against a small limit: spent is exactly the committed
    sum, never above the limit, and nothing stays held."""
    first = shared_stores.postgres()
    second = shared_stores.postgres(schema=first.schema)
    spec = BudgetSpec("t.one", ("payments:*",), Decimal(300), "EUR", "day",
                      subject="global")
    taken: list[bool] = []
    finished: list[bool] = []
    for store in (first, second):
        one, fin = store._reserve, store._finish

        def counted(tx: object, now: float, one: Any = one) -> bool:
            done = bool(one(tx, now))
            taken.append(done)
            return done

        def counted_fin(tx: object, own: object, now: float, fin: Any = fin) -> bool:
            done = bool(fin(tx, own, now))
            finished.append(done)
            return done

        store._reserve = counted  # type: ignore[method-assign]
        store._finish = counted_fin  # type: ignore[method-assign]
    committed: list[Decimal] = []
    errors: list[BaseException] = []

    def worker(store: PostgresStore, seed: int) -> None:
        rng = random.Random(seed)
        ledger, _ = make_ledger(store, spec)
        try:
            for _ in range(40):
                amount = Decimal(rng.randint(1, 4000)) / 100
                try:
                    r = ledger.reserve("bot", "payments:x", amount, "EUR")
                except BudgetExceeded:
                    continue
                if rng.random() < 0.3:
                    ledger.release(r.id)
                else:
                    part = (amount * rng.randint(0, 100) / 100).quantize(Decimal("0.01"))
                    ledger.commit(r.id, part)
                    committed.append(part)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(store, k))
               for k, store in enumerate([first, second] * 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]
    (balance,) = make_ledger(first, spec)[0].balances("bot")
    assert balance.spent == sum(committed) <= Decimal(300)
    assert balance.reserved == 0
    assert any(taken) and not all(taken)  # the statement ran, and declined at times
    assert any(finished)


@pytest.mark.postgres
def test_a_one_bucket_commit_on_a_bucket_with_expired_holds_gives_them_back(
    shared_stores: SharedStores,
) -> None:
    """The one-statement commit declines (rolling its finalization back) when its
    bucket has expired holds to give back; budget_apply then gives them back and
    commits, and the next commit on the swept bucket takes the short path again."""
    store = shared_stores.postgres()
    finished: list[bool] = []
    fin = store._finish

    def counted(tx: object, own: object, now: float) -> bool:
        done = bool(fin(tx, own, now))
        finished.append(done)
        return done

    store._finish = counted  # type: ignore[method-assign]
    ledger, clock = make_ledger(store, DAILY)
    ledger.reserve("bot", "payments:x", "30", "EUR", ttl=10)  # abandoned
    kept = ledger.reserve("bot", "payments:x", "40", "EUR", ttl=60)
    later = ledger.reserve("bot", "payments:x", "5", "EUR", ttl=90)
    clock.t += 20
    assert ledger.commit(kept.id, "25").status == "committed"
    assert finished == [False]  # declined: the abandoned hold was due
    (balance,) = ledger.balances("bot")
    assert (balance.spent, balance.reserved) == (Decimal(25), Decimal(5))
    with psycopg.connect(POSTGRES_URL) as conn:
        row = conn.execute(f'SELECT spent, reserved FROM "{store.schema}".budget_buckets'
                           ).fetchone()
        held = conn.execute(f'SELECT count(*) FROM "{store.schema}".budget_reservations '
                            "WHERE held").fetchone()
    assert row == (2500, 500) and held == (1,)  # stored as given back, not only read so
    ledger.release(later.id)
    assert finished == [False, True]
    (balance,) = ledger.balances("bot")
    assert (balance.spent, balance.reserved) == (Decimal(25), Decimal(0))


@pytest.mark.postgres
def test_an_expired_one_row_hold_locked_elsewhere_stays_counted_until_free(
    shared_stores: SharedStores,
) -> None:
    """Giving back expired one-row holds skips a reservation row another transaction
    holds locked (it locked it before the bucket, so waiting could deadlock): the hold
    stays counted, never given back twice, and the next write gives it back."""
    store = shared_stores.postgres()
    ledger, clock = make_ledger(store, DAILY)
    gone = ledger.reserve("bot", "payments:x", "30", "EUR", ttl=10)
    clock.t += 20
    with psycopg.connect(POSTGRES_URL) as conn:  # a transaction, holding the row
        conn.execute(f'SELECT 1 FROM "{store.schema}".budget_reservations WHERE id = %s '
                     "FOR UPDATE", (gone.id,))
        ledger.record("bot", "payments:x", "1", "EUR")  # sweeps the bucket, skips it
        row = conn.execute(f'SELECT reserved FROM "{store.schema}".budget_buckets'
                           ).fetchone()
        assert row == (3000,)
    ledger.record("bot", "payments:x", "2", "EUR")
    with psycopg.connect(POSTGRES_URL) as conn:
        row = conn.execute(f'SELECT spent, reserved FROM "{store.schema}".budget_buckets'
                           ).fetchone()
    assert row == (300, 0)
    (balance,) = ledger.balances("bot")
    assert (balance.spent, balance.reserved) == (Decimal(3), Decimal(0))


@pytest.mark.postgres
def test_reservations_of_one_and_of_several_buckets_share_the_ledger(
    shared_stores: SharedStores,
) -> None:
    """A one-bucket reservation keeps its hold in its row, one on several buckets in
    hold rows; reads, expiry and commits count both kinds."""
    store = shared_stores.postgres()
    weekly = BudgetSpec("weekly", ("payments:*",), Decimal(1000), "EUR", "week")
    ledger, clock = make_ledger(store, DAILY, weekly)
    both = ledger.reserve("bot", "payments:x", "30", "EUR", ttl=60)
    alone, _ = make_ledger(shared_stores.postgres(schema=store.schema), DAILY, clock=clock)
    one = alone.reserve("bot", "payments:x", "20", "EUR", ttl=10)
    with psycopg.connect(POSTGRES_URL) as conn:
        rows = conn.execute(f'SELECT count(*) FROM "{store.schema}".budget_holds'
                            ).fetchone()
        held = conn.execute(f'SELECT id FROM "{store.schema}".budget_reservations '
                            "WHERE held").fetchall()
    assert rows == (2,) and held == [(one.id,)]
    assert ledger.balances("bot")[0].reserved == Decimal(50)
    clock.t += 20  # the one-row hold expired
    assert ledger.balances("bot")[0].reserved == Decimal(30)
    ledger.commit(both.id, "30")
    with pytest.raises(ReservationError) as info:
        alone.commit(one.id, "20")
    assert info.value.code == "reservation_expired"
    daily, week = ledger.balances("bot")
    assert (daily.spent, daily.reserved, week.spent) == (Decimal(30), 0, Decimal(30))


def test_postgres_schema_names_are_plain_sql_names() -> None:
    with pytest.raises(ValueError, match="schema"):
        PostgresStore(POSTGRES_URL, schema='x"; DROP TABLE y; --')


@pytest.mark.redis
def test_redis_refuses_another_layout(shared_stores: SharedStores) -> None:
    store = shared_stores.redis()
    client = redis.Redis.from_url(REDIS_URL)
    client.set(store.prefix + "layout", "99:abc")
    with pytest.raises(BudgetStoreError) as info:
        RedisStore(REDIS_URL, prefix=store.prefix)
    assert info.value.code == "store_incompatible"


@pytest.mark.redis
def test_a_flushed_redis_is_refused_until_reinitialized(shared_stores: SharedStores) -> None:
    store = shared_stores.redis()
    ledger, _ = make_ledger(store, DAILY)
    ledger.record("bot", "payments:x", "100", "EUR")
    assert not ledger.check("bot", "payments:x", "1", "EUR").allowed
    store.drop()  # what a restart without persistence does to the prefix
    for call in (lambda: ledger.check("bot", "payments:x", "1", "EUR"),
                 lambda: ledger.reserve("bot", "payments:x", "1", "EUR"),
                 lambda: ledger.record("bot", "payments:x", "1", "EUR")):
        with pytest.raises(BudgetStoreError) as info:
            call()
        assert info.value.code == "store_unavailable"
        assert info.value.details == {"reason": "dataset_lost"}
    store.reinitialize()  # an operator accepts the loss
    assert ledger.check("bot", "payments:x", "1", "EUR").allowed


@pytest.mark.redis
def test_redis_loads_a_script_the_server_does_not_know_and_runs_it_once(
        shared_stores: SharedStores) -> None:
    store = shared_stores.redis()
    ledger, _ = make_ledger(store, DAILY)
    client = redis.Redis.from_url(REDIS_URL)
    # The same script under a text (so a SHA) no server has seen: what a restarted or
    # flushed server answers NOSCRIPT to.
    fresh = store._apply_script.script + f"\n-- {unique_name('script')}\n"
    store._apply_script = client.register_script(fresh)
    assert client.script_exists(store._apply_script.sha) == [False]
    ledger.record("bot", "payments:x", "30", "EUR", idempotency_key="once")
    ledger.record("bot", "payments:x", "30", "EUR", idempotency_key="once")  # a replay
    assert client.script_exists(store._apply_script.sha) == [True]
    assert ledger.balances("bot")[0].spent == Decimal(30)


@pytest.mark.redis
def test_a_redis_connection_lost_mid_call_fails_closed_then_reconnects(
        shared_stores: SharedStores) -> None:
    store = shared_stores.redis()
    ledger, _ = make_ledger(store, DAILY)
    ledger.record("bot", "payments:x", "10", "EUR")
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    # Every connection this store has open, as the server lists them, is cut.
    mine = {f"{host}:{port}" for conn in store._eval._idle
            for host, port in [conn._sock.getsockname()[:2]]}
    assert mine
    for addr in mine:
        client.client_kill(addr)
    with pytest.raises(BudgetStoreError) as info:
        ledger.record("bot", "payments:x", "10", "EUR")
    assert info.value.code == "store_unavailable"
    # The broken connection is dropped, never reused: the next call opens a new one.
    ledger.record("bot", "payments:x", "10", "EUR")
    assert ledger.balances("bot")[0].spent == Decimal(20)


@pytest.mark.parametrize("kind", SHARED)
def test_an_engine_denies_when_its_shared_store_fails(
    kind: str, shared_stores: SharedStores
) -> None:
    store = _open(shared_stores, kind)
    engine = Engine.from_source(
        'namespace t\nrole payer: payments:*\nagent "bot": payer\n'
        "budget daily: payments:* limit 100 EUR per day per agent\n",
        budget_store=store, clock=Clock(BUDGET_NOW),
    )
    ctx = {"amount": "5", "currency": "EUR"}
    assert engine.authorize("bot", "payments:x", ctx).allowed
    if isinstance(store, RedisStore):
        store.drop()  # the data is gone
    else:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:  # the tables are gone
            conn.execute(f'DROP SCHEMA "{store.schema}" CASCADE')
    decision = engine.authorize("bot", "payments:x", ctx)
    assert not decision.allowed and decision.code == "store_unavailable"


# -- which clock decides -----------------------------------------------------------------


@pytest.mark.parametrize("kind", SHARED)
def test_hosts_ahead_and_behind_run_on_the_store_clock(
    kind: str, shared_stores: SharedStores
) -> None:
    """Two hosts, one clock an hour ahead and one an hour behind, share a ledger. With
    the default (the store's clock) they agree on time: a hold made on one expires on
    the other exactly when its TTL has passed by the server's clock."""
    spec = BudgetSpec("t.hourly", ("payments:*",), Decimal(100), "EUR", "hour")
    store_ahead = _open(shared_stores, kind, max_clock_skew=2.0,
                        host_clock=lambda: time.time() + 3600)
    name = store_ahead.schema if isinstance(store_ahead, PostgresStore) else store_ahead.prefix
    options = {"schema": name} if kind == "postgres" else {"prefix": name}
    store_behind = _open(shared_stores, kind, max_clock_skew=2.0,
                         host_clock=lambda: time.time() - 3600, **options)
    ahead, behind = Ledger([spec], store_ahead), Ledger([spec], store_behind)
    server = store_ahead.server_time()
    assert abs(ahead.clock() - server) < 0.5 and abs(behind.clock() - server) < 0.5
    r = ahead.reserve("bot", "payments:x", "60", "EUR", ttl=1)
    # Same window for both, so the hold counts on the other host.
    assert r.lines[0].window_start == behind.balances("bot")[0].window_start
    assert not behind.check("bot", "payments:x", "50", "EUR").allowed
    assert behind.get(r.id).status == "active"
    time.sleep(1.2)
    assert behind.check("bot", "payments:x", "100", "EUR").allowed  # expired for everyone
    with pytest.raises(ReservationError) as info:
        ahead.commit(r.id, "60")
    assert info.value.code == "reservation_expired"


@pytest.mark.parametrize("kind", SHARED)
@pytest.mark.parametrize("skew", [+30.0, -30.0])
def test_a_host_clock_out_of_bounds_is_refused_never_trusted(
    kind: str, skew: float, shared_stores: SharedStores
) -> None:
    store = _open(shared_stores, kind, max_clock_skew=2.0)
    honest = Ledger([DAILY], store)
    r = honest.reserve("bot", "payments:x", "60", "EUR", ttl=60)
    skewed = Ledger([DAILY], store, clock=lambda: time.time() + skew)
    for call in (lambda: skewed.check("bot", "payments:x", "1", "EUR"),
                 lambda: skewed.reserve("bot", "payments:x", "1", "EUR"),
                 lambda: skewed.record("bot", "payments:x", "1", "EUR"),
                 lambda: skewed.commit(r.id, "60"),
                 lambda: skewed.release(r.id)):
        with pytest.raises(BudgetStoreError) as info:
            call()
        assert info.value.code == "clock_skew"
        assert abs(info.value.details["skew"] - skew) < 1
    (balance,) = honest.balances("bot")
    assert (balance.spent, balance.reserved) == (Decimal(0), Decimal(60))  # nothing moved
    assert honest.commit(r.id, "60").status == "committed"


def test_server_clock_measures_the_offset_and_resyncs() -> None:
    host = Clock(1000.0)
    server = Clock(5000.0)
    reads: list[float] = []

    def read() -> float:
        reads.append(host.t)
        host.t += 0.002  # a 2 ms round trip
        return server.t

    clock = ServerClock(read, host=host, resync=10)
    # Read at host 1000.001 (the midpoint): host 1000.002 is server 5000.001.
    assert clock() == pytest.approx(5000.001, abs=1e-6)
    assert clock.error == pytest.approx(0.001)
    host.t += 5
    assert len(reads) == 1 and clock() == pytest.approx(5005.001, abs=1e-6)
    host.t -= 100  # the host clock stepped back: measure again at once
    server.t = 5005.0
    clock()
    assert len(reads) == 2
    host.t += 11  # past resync
    clock()
    assert len(reads) == 3


def test_store_errors_stay_budget_errors() -> None:
    assert issubclass(BudgetStoreError, BudgetError)
    assert not issubclass(BudgetStoreError, BudgetExceeded)


# -- CI: a missing service fails the run -------------------------------------------------


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception),
                                             ("", pytest.skip.Exception)])
def test_an_unreachable_service_fails_under_ci_and_skips_otherwise(
    ci: str, outcome: type[BaseException], monkeypatch: pytest.MonkeyPatch
) -> None:
    import conftest
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(conftest, "POSTGRES_URL", "postgresql://postgres@127.0.0.1:1/test")
    monkeypatch.setattr(conftest, "REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setattr(conftest, "_reachable", {})
    for kind in ("postgres", "redis"):
        with pytest.raises(outcome) as info:
            conftest.require_service(kind)
        assert "unreachable at" in str(info.value) and ":1/" in str(info.value)


@pytest.mark.parametrize("kind", SHARED)
def test_a_hold_released_by_a_clock_ahead_is_expired_for_a_clock_behind(
    kind: str, shared_stores: SharedStores
) -> None:
    """Within the allowed skew two hosts may disagree on a reservation's expiry: the
    hold is given back once, and the slower host's commit is refused, never double
    counted."""
    store = _open(shared_stores, kind)
    name = store.schema if isinstance(store, PostgresStore) else store.prefix
    other = _open(shared_stores, kind, **({"schema": name} if kind == "postgres"
                                          else {"prefix": name}))
    behind, _ = make_ledger(store, DAILY)
    ahead = Ledger([DAILY], other, clock=Clock(BUDGET_NOW + 30))
    r = behind.reserve("bot", "payments:x", "40", "EUR", ttl=20)
    ahead.record("bot", "payments:x", "1", "EUR")  # a write at +30 s gives the hold back
    for op in (lambda: behind.commit(r.id, "40"), lambda: behind.extend(r.id, 60),
               lambda: behind.release(r.id)):
        with pytest.raises(ReservationError) as info:
            op()  # still live at BUDGET_NOW by this clock
        assert info.value.code == "reservation_expired"
    (balance,) = behind.balances("bot")
    assert (balance.spent, balance.reserved) == (Decimal(1), Decimal(0))


@pytest.mark.parametrize("kind", SHARED)
def test_a_replayed_idempotency_key_returns_the_original_on_any_host(
    kind: str, shared_stores: SharedStores
) -> None:
    first = _open(shared_stores, kind)
    name = first.schema if isinstance(first, PostgresStore) else first.prefix
    second = _open(shared_stores, kind, **({"schema": name} if kind == "postgres"
                                           else {"prefix": name}))
    host_a, _ = make_ledger(first, DAILY)
    host_b, _ = make_ledger(second, DAILY)
    r = host_a.reserve("bot", "payments:x", "30", "EUR", idempotency_key="r-1")
    again = host_b.reserve("bot", "payments:x", "30", "EUR", idempotency_key="r-1")
    assert again.id == r.id and again.to_wire() == r.to_wire()
    done = host_b.commit(r.id, "25", idempotency_key="c-1")
    assert host_a.commit(r.id, "25", idempotency_key="c-1").to_wire() == done.to_wire()
    with pytest.raises(BudgetError) as info:
        host_a.reserve("bot", "payments:x", "31", "EUR", idempotency_key="r-1")
    assert info.value.code == "idempotency_mismatch"
    (balance,) = host_b.balances("bot")
    assert (balance.spent, balance.reserved) == (Decimal(25), Decimal(0))  # once


@pytest.mark.parametrize("kind", [*SHARED, "sqlite"])
def test_a_replay_after_the_lease_ends_is_the_original_on_any_host(
    kind: str, shared_stores: SharedStores, tmp_path: Path,
) -> None:
    """Two hosts on one store: a reserve committed on one and replayed on the other
    after its lease ended returns what the first call did (``active``, the same wire),
    not ``expired``; both read it ``committed``."""
    first: PostgresStore | RedisStore | SQLiteStore
    if kind == "sqlite":  # two processes' stores on one file
        first, other = (SQLiteStore(tmp_path / "ledger.db"),
                        SQLiteStore(tmp_path / "ledger.db"))
    else:
        first = _open(shared_stores, kind)
        other = (shared_stores.postgres(schema=first.schema)
                 if isinstance(first, PostgresStore)
                 else shared_stores.redis(prefix=first.prefix))
    host_a, clock = make_ledger(first, DAILY)
    host_b, _ = make_ledger(other, DAILY, clock=clock)
    r = host_a.reserve("bot", "payments:x", "10", "EUR", ttl=1, idempotency_key="k1")
    host_a.commit(r.id, "7")
    for later in (0.5, 1.3, 600.0):
        clock.t = BUDGET_NOW + later
        for host in (host_b, host_a):
            again = host.reserve("bot", "payments:x", "10", "EUR", ttl=1,
                                 idempotency_key="k1")
            assert again.status == "active" and again.to_wire() == r.to_wire()
            assert host.get(r.id).status == "committed"
    (balance,) = host_b.balances("bot")
    assert (balance.spent, balance.reserved) == (Decimal(7), Decimal(0))


@pytest.mark.parametrize(("flag", "code"), [("--budget-store", "invalid_store_url"),
                                            ("--approvals", "invalid_approval_store"),
                                            ("--revocations", "invalid_revocations")])
def test_serve_takes_shared_state_urls_and_refuses_bad_ones(
    flag: str, code: str, tmp_path: Path
) -> None:
    (tmp_path / "p.policy").write_text('role r: docs:*\nagent "bot": r\n')
    out = subprocess.run(
        [sys.executable, "-m", "policyengine", "serve", str(tmp_path), flag, "mysql://db/x"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 1 and code in out.stderr, out.stderr


def _same(a: Any, b: Any) -> bool:
    """The same finished reservation: a replay returns what the first call did."""
    return (a.id, a.status, a.committed_amount, a.finalized_at) == (
        b.id, b.status, b.committed_amount, b.finalized_at)


@pytest.mark.parametrize("kind", [*SHARED, "sqlite"])
def test_a_keyed_commit_of_a_reservation_made_here_reads_nothing_before_its_write(
    kind: str, shared_stores: SharedStores, tmp_path: Path,
) -> None:
    first: PostgresStore | RedisStore | SQLiteStore
    if kind == "sqlite":  # two processes' stores on one file
        first, other = (SQLiteStore(tmp_path / "ledger.db"),
                        SQLiteStore(tmp_path / "ledger.db"))
    else:
        first = _open(shared_stores, kind, max_clock_skew=None)
        other = (shared_stores.postgres(schema=first.schema, max_clock_skew=None)
                 if isinstance(first, PostgresStore)
                 else shared_stores.redis(prefix=first.prefix, max_clock_skew=None))
    here, clock = make_ledger(first, DAILY)
    there, _ = make_ledger(other, DAILY, clock=clock)
    reads: list[str] = []
    for name in ("get_reservation", "get_idempotency", "usage"):
        real = getattr(first, name)
        setattr(first, name, lambda *a, _n=name, _f=real: reads.append(_n) or _f(*a))

    r = here.reserve("bot", "payments:x", "10", "EUR", idempotency_key="r1")
    done = here.commit(r.id, "4", idempotency_key="c1")
    assert reads == [] and done.status == "committed"
    assert _same(here.commit(r.id, "4", idempotency_key="c1"), done)  # a replay
    with pytest.raises(BudgetError) as err:
        here.commit(r.id, "5", idempotency_key="c1")
    assert err.value.code == "idempotency_mismatch"

    # This process's view is stale: another host committed the reservation. The write
    # finds out; a retry of that host's commit is its replay, anything else refused.
    r2 = here.reserve("bot", "payments:x", "10", "EUR")
    theirs = there.commit(r2.id, "3", idempotency_key="c2")
    assert _same(here.commit(r2.id, "3", idempotency_key="c2"), theirs)
    with pytest.raises(ReservationError) as final:
        here.commit(r2.id, "3", idempotency_key="c3")
    assert final.value.code == "reservation_final"
    balance = there.balances("bot")[0]
    assert (balance.spent, balance.reserved) == (Decimal(7), Decimal(0))


@pytest.mark.postgres
@pytest.mark.parametrize(("ddl", "kind"), [
    ("CREATE TABLE {s}.approvals (x int)", "approvals"),
    ("CREATE VIEW {s}.approvals AS SELECT 1 AS id", "approvals"),
    ("CREATE TABLE {s}.token_revocations (x int)", "revocations"),
    ("CREATE TABLE {s}.token_revocations_version (x int)", "revocations"),
])
def test_postgres_approval_and_revocation_stores_refuse_a_table_they_cannot_read(
    ddl: str, kind: str,
) -> None:
    """A table of the store's name made by something else is refused when the store is
    opened, with a code that says so: before, the approval store opened and failed every
    request afterwards, the revocation store failed with a raw database error."""
    from policyengine.decide import ApprovalError, PostgresApprovalStore
    from policyengine.tokens import PostgresRevocationStore, TokenError
    require_service("postgres")
    schema = unique_name("pg")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(ddl.format(s=f'"{schema}"'))
    try:
        if kind == "approvals":
            with pytest.raises(ApprovalError) as info:
                PostgresApprovalStore(POSTGRES_URL, schema=schema)
            assert info.value.code == "approval_store_incompatible", str(info.value)
        else:
            with pytest.raises(TokenError) as rinfo:
                PostgresRevocationStore(POSTGRES_URL, schema=schema)
            assert rinfo.value.code == "revocations_incompatible", str(rinfo.value)
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.mark.postgres
def test_missing_columns_names_what_a_schema_lacks_in_order() -> None:
    """The one query the PostgreSQL stores check their tables with: the pairs asked for
    that the schema lacks, in the order asked, a view's columns counted as a table's and
    another schema's never."""
    from policyengine._pgtables import missing_columns
    require_service("postgres")
    schema, other = unique_name("pg"), unique_name("pg")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        try:
            for name in (schema, other):
                conn.execute(f'CREATE SCHEMA "{name}"')
            conn.execute(f'CREATE TABLE "{schema}".t (a int, b int)')
            conn.execute(f'CREATE VIEW "{schema}".v AS SELECT 1 AS a')
            conn.execute(f'CREATE TABLE "{other}".t (c int)')
            conn.execute(f'CREATE TABLE "{other}".v (b int)')
            wanted = [("t", "b"), ("t", "c"), ("v", "a"), ("v", "b"), ("gone", "x"),
                      ("t", "a")]
            assert missing_columns(conn, schema, wanted) == [
                ("t", "c"), ("v", "b"), ("gone", "x")]
            assert missing_columns(conn, schema, iter([("t", "a"), ("v", "a")])) == []
            assert missing_columns(conn, other, [("t", "c"), ("t", "a")]) == [("t", "a")]
        finally:
            for name in (schema, other):
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.mark.postgres
@pytest.mark.parametrize(("kind", "table", "column", "words"), [
    ("budget", "budget_layout", "code", "holds a budget_layout table"),
    ("approvals", "approvals", "note", "not recognise (no note)"),
    ("approvals", "approvals", "status", "not recognise (no status)"),
    ("revocations", "token_revocations_version", "change",
     "not recognise (no token_revocations_version.change)"),
    ("revocations", "token_revocations", "revoked_at",
     "not recognise (no token_revocations.revoked_at)"),
])
def test_postgres_stores_refuse_their_table_without_a_column(
    kind: str, table: str, column: str, words: str,
) -> None:
    """A store's own table that lost one of its columns is refused when the store is
    opened again, each store with its own code, naming what is missing."""
    from policyengine.decide import ApprovalError, PostgresApprovalStore
    from policyengine.tokens import PostgresRevocationStore, TokenError
    require_service("postgres")
    schema = unique_name("pg")
    opens: dict[str, Any] = {
        "budget": lambda: PostgresStore(POSTGRES_URL, schema=schema),
        "approvals": lambda: PostgresApprovalStore(POSTGRES_URL, schema=schema),
        "revocations": lambda: PostgresRevocationStore(POSTGRES_URL, schema=schema),
    }
    code, error = {"budget": ("store_incompatible", BudgetStoreError),
                   "approvals": ("approval_store_incompatible", ApprovalError),
                   "revocations": ("revocations_incompatible", TokenError)}[kind]
    try:
        opens[kind]().close()  # made as the store makes it
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'ALTER TABLE "{schema}".{table} DROP COLUMN {column} CASCADE')
        with pytest.raises(error) as info:
            opens[kind]()
        assert info.value.code == code, str(info.value)
        assert words in info.value.message
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
