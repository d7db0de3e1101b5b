"""Shared helpers for the language-core tests (parser, checker, semantics, engine, CLI)
and the budget tests (every store, a settable clock, the database services)."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from policyengine.budgets import (
    BudgetSpec,
    Ledger,
    MemoryStore,
    PostgresStore,
    RedisStore,
    SQLiteStore,
)
from policyengine.engine import Engine, load_policy
from policyengine.lang import PolicyError, Problem


def problems_of(*files: tuple[str, str | bytes]) -> list[Problem]:
    """Every error and warning ``load_policy`` reports for ``files`` (empty when clean)."""
    try:
        _, warnings = load_policy(list(files))
    except PolicyError as err:
        return list(err.problems)
    return list(warnings)


def codes_of(*files: tuple[str, str | bytes]) -> list[tuple[str, int, int]]:
    """(code, line, column) of every problem, in reported order."""
    return [(p.code, p.line, p.column) for p in problems_of(*files)]


@pytest.fixture
def make_engine() -> Callable[..., Engine]:
    """``make_engine(text)`` compiles inline policy text into an :class:`Engine`."""

    def make(text: str, **options: object) -> Engine:
        return Engine.from_source(text, name="t.policy", **options)

    return make


def until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait, polling, for ``check()`` to hold (for what another thread does); fail the
    test saying ``what`` after ``timeout`` seconds (generous: the suite shares two
    cores)."""
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class Clock:
    """An injectable clock: call it for the time, set ``t`` to move it. The one kind of
    test clock: the ``clock`` fixture is one; ``Clock(t)`` is one at a test's own time
    (a file's ``NOW``, a hypothesis example, which cannot take a fixture)."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    """A :class:`Clock` at 2026-01-01T00:00:00Z; tests move it by setting ``clock.t``."""
    return Clock(1_767_225_600.0)


def ast_key(node: object) -> object:
    """A strict, span-free structural key for AST nodes: type names and value types count.

    Dataclass equality alone would treat ``Literal(True)`` and ``Literal(1)`` as equal;
    this key does not.
    """
    import dataclasses
    from decimal import Decimal

    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        fields = tuple(
            (f.name, ast_key(getattr(node, f.name)))
            for f in dataclasses.fields(node)
            if f.compare and f.name != "span"
        )
        return (type(node).__name__, fields)
    if isinstance(node, (tuple, list)):
        return tuple(ast_key(x) for x in node)
    if isinstance(node, Decimal):
        return ("Decimal", str(node))
    return (type(node).__name__, node)


# -- the command line ---------------------------------------------------------------------

#: The policy a command-line test names as ``p.policy`` (the ``cli_dir`` fixture's).
CLI_POLICY = 'role r: docs:*\nagent "bot": r\n'


def run_cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    """``policyengine ARGV`` in process: (exit status, stdout, stderr). argparse's own
    errors exit (``SystemExit``) instead of returning: their status is returned too, so
    a test compares every mistake's status and lines one way."""
    from policyengine.cli import main
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def cli_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory of the test's own holding ``p.policy`` (:data:`CLI_POLICY`),
    so a command line names its files as a user types them, relative."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.policy").write_text(CLI_POLICY)
    return tmp_path


# -- budgets -----------------------------------------------------------------------------


def ts(text: str) -> float:
    """POSIX seconds of an RFC 3339 time (``Z`` accepted)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


BUDGET_NOW = ts("2026-03-10T12:00:00Z")
DAILY = BudgetSpec("t.daily", ("payments:*",), Decimal(100), "EUR", "day")


# -- database services -------------------------------------------------------------------

@contextmanager
def own_connection(store: PostgresStore | SQLiteStore) -> Iterator[Any]:
    """A connection of the test's own to the database ``store`` uses (autocommit): its
    rows read and written as any client would, not through the store's own connection."""
    if isinstance(store, PostgresStore):
        import psycopg
        with psycopg.connect(store.url, autocommit=True) as conn:
            yield conn
        return
    import sqlite3
    conn = sqlite3.connect(store.path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


POSTGRES_URL = os.environ.get("POLICYENGINE_TEST_POSTGRES",
                              "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("POLICYENGINE_TEST_REDIS", "redis://127.0.0.1:6379/0")
_reachable: dict[str, str | None] = {}


def require_service(kind: str) -> None:
    """Skip the test when the PostgreSQL / Redis service is unreachable, with why; with
    ``CI=true`` fail instead (CI has the services: missing is a broken run)."""
    if kind not in _reachable:
        try:
            if kind == "postgres":
                import psycopg
                psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
            else:
                import redis
                redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
            _reachable[kind] = None
        except Exception as exc:
            _reachable[kind] = f"{type(exc).__name__}: {exc}"
    problem = _reachable[kind]
    if problem is not None:
        url = POSTGRES_URL if kind == "postgres" else REDIS_URL
        message = f"{kind} unreachable at {url} ({problem})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)


def unique_name(kind: str) -> str:
    """A schema / key-prefix name no other test run uses."""
    return f"pe_test_{kind}_{os.getpid()}_{secrets.token_hex(4)}"


def drop_namespace(kind: str, base: str) -> None:
    """Drop every PostgreSQL schema (``kind="postgres"``) or Redis key (``"redis"``) whose
    name starts with ``base``: the teardown of tests that open stores by URL themselves.
    Any other kind keeps nothing outside the test's own files. An unreachable service
    skips (fails with ``CI=true``) as :func:`require_service` does, never an error."""
    if kind in ("postgres", "redis"):
        require_service(kind)
    if kind == "postgres":
        import psycopg
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            rows = conn.execute("SELECT nspname FROM pg_namespace").fetchall()
            for name in [r[0] for r in rows if r[0].startswith(base)]:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    elif kind == "redis":
        import redis
        client = redis.Redis.from_url(REDIS_URL)
        try:
            keys = list(client.scan_iter(match=base + "*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


CLOSED_PORT_POSTGRES = "postgresql://postgres@127.0.0.1:1/test"  # nothing listens on 1


@contextmanager
def unreachable_postgres_approvals() -> Iterator[Any]:
    """A PostgreSQL approval store opened as any user opens one (its table made in a
    schema of its own), whose server then goes away: its connection closed, its ``url``
    pointed at a closed port. The schema is dropped afterwards."""
    from policyengine.decide import PostgresApprovalStore
    require_service("postgres")
    schema = unique_name("apr_down")
    store = PostgresApprovalStore(POSTGRES_URL, schema=schema, connect_timeout=1)
    try:
        store.close()
        store.url = CLOSED_PORT_POSTGRES
        yield store
    finally:
        drop_namespace("postgres", schema)


class Relay:
    """A TCP relay in front of a service: a store opened on :meth:`url` talks to the
    service through it until :meth:`cut`, when the server goes away for the store as in
    an outage (its connections dropped, new ones refused), and again after
    :meth:`restore`, when it is back on the same address; or until :meth:`stall`, when
    it stops answering (connections stay open, and new ones are taken, but nothing gets
    through: a network partition, a server hung)."""

    def __init__(self, service_url: str) -> None:
        parts = urlsplit(service_url)
        self._service = (parts.hostname or "127.0.0.1", parts.port or 0)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._cut = False
        self._stalled = threading.Event()
        self._listen()

    def url(self, url: str) -> str:
        """``url`` (of the service) with its host and port made the relay's."""
        parts = urlsplit(url)
        user = parts.netloc.rpartition("@")[0]
        return urlunsplit(parts._replace(
            netloc=(user + "@" if user else "") + f"127.0.0.1:{self.port}"))

    def _listen(self) -> None:
        self._listener.settimeout(0.05)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:  # until ``listener`` is closed (a cut)
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self._service, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if listener is not self._listener or self._cut:  # cut meanwhile
                    client.close()
                    server.close()
                    return
                self._open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if not self._stalled.is_set():  # stalled: what comes in is dropped
                    sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def stall(self) -> None:
        """The server stops answering: bytes either way are no longer passed on, and
        every connection stays open (a client waits until its own timeout)."""
        self._stalled.set()

    def cut(self) -> None:
        """The server goes away: every connection through the relay is dropped and the
        relay's port refuses new ones."""
        with self._lock:
            self._cut = True
            self._listener.close()
            for end in self._open:
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()
            self._open = []

    def restore(self) -> None:
        """The server is back after a :meth:`cut`: the relay's port accepts again (the
        connections the cut dropped stay dropped)."""
        with self._lock:
            self._listener = socket.create_server(("127.0.0.1", self.port))
            self._cut = False
        self._listen()


@pytest.fixture
def store_namespace(request: pytest.FixtureRequest) -> Iterator[str]:
    """A schema / key-prefix base of this test's own, for a test parametrised by ``kind``
    (``memory``, ``sqlite``, ``postgres``, ``redis``) that opens stores by URL under it:
    every schema and key under the base is dropped afterwards. A PostgreSQL / Redis kind
    whose service is unreachable skips (fails with ``CI=true``) before the test runs, so
    the teardown never connects to a service that is not there."""
    kind = request.node.callspec.params["kind"]
    if kind in ("postgres", "redis"):
        require_service(kind)
    base = unique_name("ns")
    yield base
    drop_namespace(kind, base)


class SharedStores:
    """Opens PostgreSQL / Redis stores in a namespace of their own, and drops them all."""

    def __init__(self) -> None:
        self.opened: list[PostgresStore | RedisStore] = []

    def postgres(self, schema: str | None = None, **options: object) -> PostgresStore:
        require_service("postgres")
        options.setdefault("max_clock_skew", None)  # tests set the time
        store = PostgresStore(POSTGRES_URL, schema=schema or unique_name("pg"),
                              **options)  # type: ignore[arg-type]
        self.opened.append(store)
        return store

    def redis(self, prefix: str | None = None, **options: object) -> RedisStore:
        require_service("redis")
        options.setdefault("max_clock_skew", None)
        options.setdefault("create", True)  # a prefix of the test's own: made here
        store = RedisStore(REDIS_URL, prefix=prefix or unique_name("redis") + ":",
                           **options)  # type: ignore[arg-type]
        self.opened.append(store)
        return store

    def fresh(self, kind: str) -> PostgresStore | RedisStore:
        """An empty store, cheaply (for each hypothesis example): Redis under a new
        prefix; PostgreSQL in this test's one schema, its tables emptied."""
        if kind == "redis":
            return self.redis()
        for store in self.opened:
            if isinstance(store, PostgresStore):
                with own_connection(store) as conn:
                    for table in ("buckets", "holds", "events", "reservations",
                                  "idempotency"):  # DELETE: quicker than TRUNCATE when small
                        conn.execute(f'DELETE FROM "{store.schema}".budget_{table}')
                return store
        return self.postgres()

    def drop(self) -> None:
        dropped: set[str] = set()
        for store in self.opened:
            name = store.schema if isinstance(store, PostgresStore) else store.prefix
            if name not in dropped:
                dropped.add(name)
                store.drop()
            store.close()


@pytest.fixture
def shared_stores() -> Iterator[SharedStores]:
    """Factory of PostgreSQL / Redis stores, each in a fresh schema / key prefix, dropped
    after the test."""
    stores = SharedStores()
    try:
        yield stores
    finally:
        stores.drop()


STORE_KINDS = ["memory", "sqlite", "postgres", "redis"]


def open_store(kind: str, tmp_path: Path, shared: SharedStores) -> object:
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SQLiteStore(tmp_path / "b.db")
    return shared.postgres() if kind == "postgres" else shared.redis()


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path,
          shared_stores: SharedStores) -> object:
    """Each budget store in turn (SQLite on a fresh file, PostgreSQL in a fresh schema,
    Redis under a fresh key prefix)."""
    return open_store(request.param, tmp_path, shared_stores)


def make_ledger(
    store: object, *specs: BudgetSpec, rates: object = None, clock: Clock | None = None
) -> tuple[Ledger, Clock]:
    """A ledger over ``store`` and its :class:`Clock` (the ``clock`` fixture when given,
    else a new one), set to BUDGET_NOW."""
    if clock is None:
        clock = Clock(BUDGET_NOW)
    clock.t = BUDGET_NOW
    return Ledger(specs, store, rates=rates, clock=clock), clock  # type: ignore[arg-type]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test parametrised with a PostgreSQL or Redis store kind, so that
    ``pytest -m "not postgres and not redis"`` runs everything else on a machine without
    the services (tests that call :func:`require_service` directly carry the mark)."""
    for item in items:
        spec = getattr(item, "callspec", None)
        if spec is None:
            continue
        kinds = [v for v in spec.params.values() if isinstance(v, str)]
        for kind in ("postgres", "redis"):
            if kind in kinds:
                item.add_marker(getattr(pytest.mark, kind))
