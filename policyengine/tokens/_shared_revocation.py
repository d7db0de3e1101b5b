"""Revocations shared by every host: :class:`PostgresRevocationStore`,
:class:`RedisRevocationStore`.

``any_revoked`` is on the hot path of every token check, so it answers from a set held
in memory, like :class:`~policyengine.tokens.MemoryRevocationStore`. The set is brought
up to date from the server at most every ``refresh`` seconds (default 1), inside the
first check after that time: one cheap round trip reading the dataset's version, and a
full reload only when it changed.

The version is not the number of revocations: a count comes back to a value a host has
seen when the dataset is lost or rolled back and then written again (a Redis restart
without persistence or from an older snapshot, a database restored from a backup), and
that host would never load the new revocations. It is (epoch, counter, change, count):
a random id of the dataset made when its version record is created, a counter and a
random id of the last change, both moved by every ``revoke`` in the same atomic step that
adds the id (one Lua script; one SQL statement), and the number of ids (which also sees
writers that predate the version record). Any change, the loss of the dataset included,
gives a pair the host has never seen, so it reloads within ``refresh`` seconds; a host
keeps every id it ever loaded (revocations are only ever added).

The bound, documented in docs/deployment.md: a revocation made on one host stops the
token on every host within ``refresh`` seconds plus a round trip. If a host cannot reach
the server, it keeps answering from its set for at most ``max_stale`` seconds (default
5) after its last successful refresh; after that every check fails with
``revocation_unavailable`` (a denied request), never with a possibly stale "not
revoked". ``revoke`` writes to the server before it returns (and fails with
``revocation_unavailable`` when it cannot).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from policyengine._pgtables import missing_columns
from policyengine._storeurl import REDIS_TIMEOUT
from policyengine.tokens.errors import TokenError
from policyengine.tokens.revocation import check_id, not_an_id, not_ids

__all__ = ["PostgresRevocationStore", "RedisRevocationStore", "revocations_from_url"]

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")
#: The PostgreSQL columns this store reads and writes, by table.
_PG_COLUMNS = (("token_revocations", "id"), ("token_revocations", "revoked_at"),
               ("token_revocations_version", "id"), ("token_revocations_version", "epoch"),
               ("token_revocations_version", "version"),
               ("token_revocations_version", "change"))




def _check_times(positive: bool = False, **values: object) -> None:
    """Refuse a time option that is not a number of seconds from 0 (above 0 with
    ``positive``) to ten years: a NaN ``refresh`` or ``max_stale`` compares false
    everywhere, an infinite ``max_stale`` trusts a stale list forever (never fails
    closed)."""
    from policyengine._storeurl import MAX_SECONDS, seconds_ok
    for name, value in values.items():
        if not seconds_ok(value, positive=positive):
            raise TokenError("invalid_revocations", f"{name}={value!r}: must be a number "
                             f"of seconds {'above' if positive else 'from'} 0 "
                             f"{'at most' if positive else 'to'} {MAX_SECONDS:,}")


def _check_refresh(refresh: float, max_stale: float) -> None:
    _check_times(refresh=refresh, max_stale=max_stale)
    if not refresh <= max_stale:
        raise TokenError("invalid_revocations",
                         f"refresh ({refresh}) must not exceed max_stale ({max_stale})")


def _unavailable(exc: BaseException) -> TokenError:
    return TokenError("revocation_unavailable", f"the revocation store failed: {exc}")


class _CachedRevocations:
    """The in-memory set and its refresh; subclasses read and write the server."""

    def __init__(self, refresh: float, max_stale: float,
                 monotonic: Callable[[], float]) -> None:
        _check_refresh(refresh, max_stale)
        self.refresh = refresh
        self.max_stale = max_stale
        self._monotonic = monotonic
        self._ids: frozenset[str] = frozenset()
        self._version: object = None  # the server's version when last loaded
        self._checked = float("-inf")  # last attempt
        self._synced = float("-inf")  # last success
        self._lock = threading.Lock()
        self._sync()  # fail now, at construction, if the server is not there

    # -- subclasses -------------------------------------------------------------------

    def _server_version(self) -> object:
        raise NotImplementedError

    def _server_ids(self) -> Iterable[str]:
        raise NotImplementedError

    def _server_add(self, identifier: str) -> None:
        """Add ``identifier`` and move the version, in one atomic step."""
        raise NotImplementedError

    def _server_restore(self, identifiers: frozenset[str]) -> None:
        """Write back ids this host holds and the server lacks (its dataset was lost or
        rolled back); a store whose server cannot lose them does nothing."""

    # -- the protocol -----------------------------------------------------------------

    def _sync(self) -> None:
        with self._lock:
            now = self._monotonic()
            self._checked = now
            version = self._server_version()
            if version != self._version:
                ids = frozenset(self._server_ids())
                missing = self._ids - ids
                self._ids = ids | self._ids  # never forget one (only ever added)
                self._version = version
                if missing:  # the server lost them: give them back (best effort)
                    with contextlib.suppress(TokenError):
                        self._server_restore(missing)
            self._synced = now

    def _current(self) -> frozenset[str]:
        now = self._monotonic()
        if now - self._checked >= self.refresh:
            with contextlib.suppress(TokenError):  # judged below by the last success
                self._sync()
        if now - self._synced > self.max_stale:
            raise TokenError(
                "revocation_unavailable",
                f"revocations could not be refreshed for {now - self._synced:.1f} s (more "
                f"than {self.max_stale} s): refusing tokens rather than trusting a stale list",
            )
        return self._ids

    def any_revoked(self, identifiers: Iterable[str]) -> bool:
        current = self._current()
        try:  # (a try costs nothing until it catches)
            return not current.isdisjoint(identifiers)
        except TypeError:  # not iterable, or an unhashable member
            raise not_ids(identifiers) from None

    def is_revoked(self, identifier: str) -> bool:
        if type(identifier) is not str:
            return not_an_id()
        return identifier in self._current()

    def revoke(self, identifier: str) -> None:
        identifier = check_id(identifier)
        self._server_add(identifier)
        with self._lock:
            self._ids = self._ids | {identifier}

    def __len__(self) -> int:
        return len(self._ids)


class PostgresRevocationStore(_CachedRevocations):
    """Revoked grant ids and jtis in ``<schema>.token_revocations``, and the dataset's
    version in the one row of ``<schema>.token_revocations_version``.

    A schema without these tables gets them, the version row with them (a first use;
    the version table, added later, is likewise made beside a ``token_revocations`` of an
    earlier version). Where the version table exists but its row is gone (the tables were
    emptied: a ``TRUNCATE``, a ``DELETE`` by hand), the revocations it held are gone too,
    and a host started now would accept every token revoked before: the store is refused
    with ``revocations_uninitialized`` unless ``create=True`` (``policyengine store init
    --revocations URL``, an operator's act), as a Redis prefix whose dataset is lost is;
    ``revoke`` then refuses to run (``revocation_unavailable``) instead of making a new
    row. Hosts already running keep every id they loaded and, once an operator has made
    the row again, write back at their next refresh the ids the server lacks (so too
    after a restore from an older backup).

    One connection per process (revocations are rare; refreshes once per ``refresh``).
    """

    def __init__(self, url: str, *, schema: str = "policyengine", refresh: float = 1.0,
                 max_stale: float = 5.0, connect_timeout: float = 5.0,
                 monotonic: Callable[[], float] = time.monotonic,
                 create: bool = False) -> None:
        if type(create) is not bool:
            raise TokenError("invalid_revocations", f"create={create!r}: must be true or "
                             "false")
        if type(schema) is not str or not _SCHEMA_NAME.match(schema):
            raise TokenError("invalid_revocations", f"schema={schema!r}: must be a lower-case "
                             "SQL name (a-z, 0-9, _; at most 63 characters)")
        _check_times(connect_timeout=connect_timeout, positive=True)
        _check_refresh(refresh, max_stale)  # before the schema is created
        from policyengine._storeurl import StoreUrlError, check_postgres_url
        try:
            check_postgres_url(url)
        except StoreUrlError as exc:
            raise TokenError("invalid_revocations", f"revocation store URL: {exc}"
                             ) from None
        self.url = url
        self.schema = schema
        self.connect_timeout = connect_timeout
        self._table = f'"{schema}".token_revocations'
        #: One row (id 1): the dataset's epoch, and the counter and id of its last change.
        self._versions = f'"{schema}".token_revocations_version'
        self._conn: Any = None
        self._pid = 0
        self._conn_lock = threading.Lock()
        self._open(create)
        super().__init__(refresh, max_stale, monotonic)

    def _open(self, create: bool) -> None:
        """Make the tables where missing and check them, in one transaction that
        processes opening the schema at once take in turns (none sees another's tables
        without their version row)."""
        import psycopg
        schema = self.schema
        with self._conn_lock:
            try:
                conn = self._connection()
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                                 (f"policyengine.revocations.{schema}",))
                    had_versions = conn.execute(
                        "SELECT to_regclass(%s) IS NOT NULL", (self._versions,)
                    ).fetchone()[0]
                    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                    conn.execute(f"CREATE TABLE IF NOT EXISTS {self._table} (id text "
                                 "PRIMARY KEY, revoked_at timestamptz NOT NULL DEFAULT "
                                 "clock_timestamp())")
                    conn.execute(f"CREATE TABLE IF NOT EXISTS {self._versions} (id int "
                                 "PRIMARY KEY CHECK (id = 1), epoch text NOT NULL, "
                                 "version bigint NOT NULL, change text NOT NULL)")
                    # Tables of those names made by something else are refused by name,
                    # not met as a database error at the first refresh.
                    lacking = [f"{t}.{c}" for t, c in missing_columns(conn, schema,
                                                                       _PG_COLUMNS)]
                    if lacking:
                        raise TokenError(
                            "revocations_incompatible",
                            f"schema {schema!r} holds revocation tables this policyengine "
                            f"does not recognise (no {', '.join(lacking)}): use another "
                            "schema")
                    # The row is made with its table, or when asked to: a table that lost
                    # it lost its revocations with it (see the class).
                    if create or not had_versions:
                        conn.execute(f"INSERT INTO {self._versions} VALUES (1, %s, 0, %s) "
                                     "ON CONFLICT (id) DO NOTHING", (_new_id(), _new_id()))
                    elif conn.execute(f"SELECT 1 FROM {self._versions} WHERE id = 1"
                                      ).fetchone() is None:
                        raise TokenError(
                            "revocations_uninitialized",
                            f"schema {schema!r} holds no revocation dataset (its "
                            "token_revocations_version row is gone: the tables were "
                            "emptied). A host started now would accept every token revoked "
                            "before: create a new dataset once you accept that, with "
                            "policyengine store init --revocations URL (or create=True); "
                            "hosts still running write back the ids they hold")
            except psycopg.Error as exc:
                if self._conn is not None and self._conn.broken:
                    self._conn = None
                raise _unavailable(exc) from exc

    def _connection(self) -> Any:
        """This process's connection (made again after a fork or a failure); the caller
        holds ``_conn_lock``."""
        import psycopg
        if self._conn is None or self._pid != os.getpid() or self._conn.closed:
            self._conn = psycopg.connect(self.url, autocommit=True,
                                         connect_timeout=max(1, round(self.connect_timeout)))
            self._pid = os.getpid()
        return self._conn

    def _execute(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        import psycopg
        with self._conn_lock:
            try:
                cur = self._connection().execute(sql, params)
                return cur.fetchall() if cur.description is not None else []
            except psycopg.Error as exc:
                if self._conn is not None and self._conn.broken:
                    self._conn = None
                raise _unavailable(exc) from exc

    def _server_version(self) -> object:
        # a missing version row reads as NULLs: a version no host has loaded
        return tuple(self._execute(
            f"SELECT v.epoch, v.version, v.change, (SELECT count(*) FROM {self._table}) "
            f"FROM (SELECT 1) AS one LEFT JOIN {self._versions} AS v ON v.id = 1", ())[0])

    def _server_ids(self) -> Iterable[str]:
        return [row[0] for row in self._execute(f"SELECT id FROM {self._table}", ())]

    def _server_add(self, identifier: str) -> None:
        if not self._write([identifier]):
            raise TokenError(
                "revocation_unavailable",
                f"the revocations in schema {self.schema!r} are gone (their version row "
                "was emptied with the tables): not revoked. Refusing to start a new "
                "dataset on its own; an operator makes one (policyengine store init "
                "--revocations URL) once the loss is accepted, then revoke again")

    def _server_restore(self, identifiers: frozenset[str]) -> None:
        self._write(sorted(identifiers))  # nothing without a dataset: only an operator

    def _write(self, identifiers: list[str]) -> bool:
        """Add ``identifiers`` and move the version, in one statement (so one
        transaction: the ids and the new version land together); False, writing nothing,
        when the version row is gone."""
        rows = self._execute(
            f"WITH v AS (UPDATE {self._versions} SET version = version + 1, change = %s "
            f"WHERE id = 1 RETURNING 1), "
            f"added AS (INSERT INTO {self._table} (id) SELECT x FROM v, unnest(%s::text[]) "
            f"AS x ON CONFLICT DO NOTHING) SELECT count(*) FROM v",
            (_new_id(), identifiers))
        return bool(rows[0][0])

    def close(self) -> None:
        with self._conn_lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None


class RedisRevocationStore(_CachedRevocations):
    """Revoked grant ids and jtis in the Redis set ``<prefix>revoked``, and the set's
    version in the hash ``<prefix>revoked:version`` (``epoch``, ``version``, ``change``).

    Redis without persistence forgets revocations on restart (use AOF, or PostgreSQL),
    and a host that started afresh would then accept every token revoked before it. So
    the version hash marks the dataset: a store is opened only where it exists (or
    where the set does, written before the hash was), else ``revocations_uninitialized``
    unless ``create=True`` (``policyengine store init --revocations URL``, an operator's
    act); and ``revoke`` refuses to run where it is gone (``revocation_unavailable``),
    never making a new one. Hosts already running keep every id they loaded and answer
    from them; once an operator has made a new dataset, each writes back at its next
    refresh the ids the server lacks, and loads every later revocation. ``revoke`` runs
    one script over both keys: a Redis cluster needs the prefix to be one hash slot
    (e.g. ``{revocations}:``).
    """

    def __init__(self, url: str, *, prefix: str = "policyengine:tokens:",
                 refresh: float = 1.0, max_stale: float = 5.0,
                 timeout: float = REDIS_TIMEOUT,
                 monotonic: Callable[[], float] = time.monotonic,
                 create: bool = False) -> None:
        import redis
        if type(create) is not bool:
            raise TokenError("invalid_revocations", f"create={create!r}: must be true or "
                             "false")
        if type(prefix) is not str or not prefix:
            raise TokenError("invalid_revocations", "prefix must be a non-empty string")
        _check_times(timeout=timeout, positive=True)
        from policyengine._storeurl import StoreUrlError, check_redis_url
        try:
            check_redis_url(url, timeout_given=timeout is not REDIS_TIMEOUT)
        except StoreUrlError as exc:
            raise TokenError("invalid_revocations", f"revocation store URL: {exc}"
                             ) from None
        self.url = url
        self.prefix = prefix
        self._key = prefix + "revoked"
        self._version_key = prefix + "revoked:version"
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout,
                                           socket_connect_timeout=timeout,
                                           decode_responses=True)
        self._add = self._redis.register_script(_REDIS_ADD)
        _check_refresh(refresh, max_stale)  # before anything is written
        try:
            opened = self._redis.register_script(_REDIS_OPEN)(
                keys=[self._key, self._version_key],
                args=["1" if create else "0", _new_id(), _new_id()])
        except (redis.RedisError, OSError, TypeError, ValueError) as exc:
            raise _unavailable(exc) from exc
        if not opened:
            raise TokenError(
                "revocations_uninitialized",
                f"redis prefix {prefix!r} holds no revocations. On first use, create them "
                "once: policyengine store init --revocations URL (or open the store with "
                "create=True). If it held some, the server lost them (a restart without "
                "persistence, a flush): a host started now would accept every token "
                "revoked before; create a new dataset the same way only once you accept "
                "that (hosts still running write back the ids they hold)")
        super().__init__(refresh, max_stale, monotonic)

    def _call(self, name: str, *args: Any) -> Any:
        import redis
        try:
            return getattr(self._redis, name)(*args)
        except (redis.RedisError, OSError, TypeError, ValueError) as exc:
            raise _unavailable(exc) from exc

    def _server_version(self) -> object:
        import redis
        try:  # one round trip
            pipe = self._redis.pipeline(transaction=True)
            pipe.hmget(self._version_key, "epoch", "version", "change")
            pipe.scard(self._key)
            fields, count = pipe.execute()
        except (redis.RedisError, OSError, TypeError, ValueError) as exc:
            raise _unavailable(exc) from exc
        return (*fields, count)

    def _server_ids(self) -> Iterable[str]:
        members: set[str] = self._call("smembers", self._key)
        return members

    def _server_add(self, identifier: str) -> None:
        if not self._write([identifier]):
            raise TokenError(
                "revocation_unavailable",
                f"the revocations under redis prefix {self.prefix!r} are gone (a restart "
                "without persistence, a flush): not revoked. Refusing to start a new "
                "dataset on its own; an operator makes one (policyengine store init "
                "--revocations URL) once the loss is accepted, then revoke again")

    def _server_restore(self, identifiers: frozenset[str]) -> None:
        ids = sorted(identifiers)
        for i in range(0, len(ids), 1000):
            if not self._write(ids[i:i + 1000]):
                return  # no dataset to write into: only an operator makes one

    def _write(self, identifiers: list[str]) -> bool:
        """Add ``identifiers`` and move the version in one script; False, writing
        nothing, when the dataset's version hash is gone."""
        import redis
        try:
            return bool(self._add(keys=[self._key, self._version_key],
                                  args=[_new_id(), *identifiers], client=self._redis))
        except (redis.RedisError, OSError, TypeError, ValueError) as exc:
            raise _unavailable(exc) from exc

    def close(self) -> None:
        self._redis.close()


#: Add ids and move the set's version, atomically; nothing when the version hash is gone
#: (the dataset was lost: only an operator makes a new one, :data:`_REDIS_OPEN`).
#: KEYS: the set, the version hash; ARGV: a change id, then the ids.
_REDIS_ADD = """
if redis.call('HEXISTS', KEYS[2], 'epoch') == 0 then return 0 end
redis.call('SADD', KEYS[1], unpack(ARGV, 2))
redis.call('HINCRBY', KEYS[2], 'version', 1)
redis.call('HSET', KEYS[2], 'change', ARGV[1])
return 1
"""

#: Open the dataset: 1 when its version hash exists, or is made now (ARGV[1] '1': create;
#: or the set exists, written by a version before the hash), with a new epoch ARGV[2]
#: and change id ARGV[3]; 0 when there is none. KEYS: the set, the version hash.
_REDIS_OPEN = """
if redis.call('HEXISTS', KEYS[2], 'epoch') == 1 then return 1 end
if ARGV[1] ~= '1' and redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSETNX', KEYS[2], 'epoch', ARGV[2])
redis.call('HSETNX', KEYS[2], 'version', 0)
redis.call('HSETNX', KEYS[2], 'change', ARGV[3])
return 1
"""


def _new_id() -> str:
    """A random id of a dataset or of one change (``revoke`` only, never a check)."""
    return os.urandom(12).hex()


def revocations_from_url(url: str, **options: Any) -> Any:
    """The revocation store ``url`` names: ``memory:``, ``postgresql://...?schema=...``
    (and ``connect_timeout``) or ``redis://...?prefix=...`` (and ``timeout``;
    ``refresh``, ``max_stale`` and ``create`` ride in the query too: ``create`` makes a
    dataset where there is none, see the stores). A URL or option it cannot use (one
    neither the store nor its driver reads included) raises ``TokenError``
    ``invalid_revocations``."""
    from policyengine._storeurl import flag, open_shared_store
    from policyengine.tokens.revocation import MemoryRevocationStore
    return open_shared_store(
        url, options, what="revocation store", memory=MemoryRevocationStore,
        postgres=PostgresRevocationStore, redis=RedisRevocationStore,
        refuse=lambda message: TokenError("invalid_revocations", message),
        own=lambda postgres: {"refresh": float, "max_stale": float, "create": flag,
                              **({"schema": str, "connect_timeout": float} if postgres
                                 else {"prefix": str, "timeout": float})})
