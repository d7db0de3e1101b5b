"""Revocations shared by every host: :class:`PostgresRevocationStore`,
:class:`RedisRevocationStore`.

``any_revoked`` is on the hot path of every token check, so it answers from a set held
in memory, like :class:`~policyengine.tokens.MemoryRevocationStore`. The set is brought
up to date from the server at most every ``refresh`` seconds (default 1), inside the
first check after that time: one cheap round trip asking whether anything changed
(revocations are only ever added, so a count tells), and a full reload only when it did.

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

from policyengine.tokens.errors import TokenError
from policyengine.tokens.revocation import check_id

__all__ = ["PostgresRevocationStore", "RedisRevocationStore", "revocations_from_url"]

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")


def _unavailable(exc: BaseException) -> TokenError:
    return TokenError("revocation_unavailable", f"the revocation store failed: {exc}")


class _CachedRevocations:
    """The in-memory set and its refresh; subclasses read and write the server."""

    def __init__(self, refresh: float, max_stale: float,
                 monotonic: Callable[[], float]) -> None:
        if not 0 <= refresh <= max_stale:
            raise ValueError("need 0 <= refresh <= max_stale")
        self.refresh = refresh
        self.max_stale = max_stale
        self._monotonic = monotonic
        self._ids: frozenset[str] = frozenset()
        self._version: object = None  # what the server said last (a count, or more)
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
        raise NotImplementedError

    # -- the protocol -----------------------------------------------------------------

    def _sync(self) -> None:
        with self._lock:
            now = self._monotonic()
            self._checked = now
            version = self._server_version()
            if version != self._version:
                ids = frozenset(self._server_ids())
                self._ids = ids | self._ids  # never forget one (only ever added)
                self._version = version
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
        return not self._current().isdisjoint(identifiers)

    def is_revoked(self, identifier: str) -> bool:
        return identifier in self._current()

    def revoke(self, identifier: str) -> None:
        identifier = check_id(identifier)
        self._server_add(identifier)
        with self._lock:
            self._ids = self._ids | {identifier}

    def __len__(self) -> int:
        return len(self._ids)


class PostgresRevocationStore(_CachedRevocations):
    """Revoked grant ids and jtis in ``<schema>.token_revocations`` (created if missing).

    One connection per process (revocations are rare; refreshes once per ``refresh``).
    """

    def __init__(self, url: str, *, schema: str = "policyengine", refresh: float = 1.0,
                 max_stale: float = 5.0, connect_timeout: float = 5.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise ValueError(f"schema must be a lower-case SQL name, not {schema!r}")
        self.url = url
        self.schema = schema
        self.connect_timeout = connect_timeout
        self._table = f'"{schema}".token_revocations'
        self._conn: Any = None
        self._pid = 0
        self._conn_lock = threading.Lock()
        self._execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"', (), ddl=True)
        self._execute(f"CREATE TABLE IF NOT EXISTS {self._table} (id text PRIMARY KEY, "
                      "revoked_at timestamptz NOT NULL DEFAULT clock_timestamp())", (),
                      ddl=True)
        super().__init__(refresh, max_stale, monotonic)

    def _execute(self, sql: str, params: tuple[Any, ...], ddl: bool = False) -> list[Any]:
        import psycopg
        with self._conn_lock:
            try:
                if self._conn is None or self._pid != os.getpid() or self._conn.closed:
                    self._conn = psycopg.connect(
                        self.url, autocommit=True,
                        connect_timeout=max(1, round(self.connect_timeout)))
                    self._pid = os.getpid()
                if ddl:  # processes creating one table at once take turns
                    with self._conn.transaction():
                        self._conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                                           (f"policyengine.revocations.{self.schema}",))
                        self._conn.execute(sql, params)
                    return []
                cur = self._conn.execute(sql, params)
                return cur.fetchall() if cur.description is not None else []
            except psycopg.Error as exc:
                if self._conn is not None and self._conn.broken:
                    self._conn = None
                raise _unavailable(exc) from exc

    def _server_version(self) -> object:
        return self._execute(f"SELECT count(*) FROM {self._table}", ())[0][0]

    def _server_ids(self) -> Iterable[str]:
        return [row[0] for row in self._execute(f"SELECT id FROM {self._table}", ())]

    def _server_add(self, identifier: str) -> None:
        self._execute(f"INSERT INTO {self._table} (id) VALUES (%s) ON CONFLICT DO NOTHING",
                      (identifier,))

    def close(self) -> None:
        with self._conn_lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None


class RedisRevocationStore(_CachedRevocations):
    """Revoked grant ids and jtis in the Redis set ``<prefix>revoked``.

    Redis without persistence forgets revocations on restart: use AOF, or PostgreSQL.
    """

    def __init__(self, url: str, *, prefix: str = "policyengine:tokens:",
                 refresh: float = 1.0, max_stale: float = 5.0, timeout: float = 5.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        import redis
        self.url = url
        self.prefix = prefix
        self._key = prefix + "revoked"
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout,
                                           socket_connect_timeout=timeout,
                                           decode_responses=True)
        super().__init__(refresh, max_stale, monotonic)

    def _call(self, name: str, *args: Any) -> Any:
        import redis
        try:
            return getattr(self._redis, name)(*args)
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc

    def _server_version(self) -> object:
        return self._call("scard", self._key)

    def _server_ids(self) -> Iterable[str]:
        members: set[str] = self._call("smembers", self._key)
        return members

    def _server_add(self, identifier: str) -> None:
        self._call("sadd", self._key, identifier)

    def close(self) -> None:
        self._redis.close()


def revocations_from_url(url: str, **options: Any) -> Any:
    """The revocation store ``url`` names: ``memory:``, ``postgresql://...?schema=...``
    or ``redis://...?prefix=...`` (``refresh`` and ``max_stale`` ride in the query too)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    from policyengine.tokens.revocation import MemoryRevocationStore
    scheme = url.split(":", 1)[0].lower() if isinstance(url, str) and ":" in url else ""
    if scheme == "memory":
        return MemoryRevocationStore()
    if scheme not in ("postgresql", "postgres", "redis", "rediss"):
        raise TokenError("invalid_revocations",
                         "a revocation store URL is memory:, postgresql://... or redis://...")
    parts = urlsplit(url)
    mine: dict[str, Any] = {}
    rest = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in ("refresh", "max_stale"):
            try:
                mine[name] = float(value)
            except ValueError:
                raise TokenError("invalid_revocations", f"{name} must be a number") from None
        elif name in ("schema", "prefix"):
            mine[name] = value
        else:
            rest.append((name, value))
    plain = urlunsplit(parts._replace(query=urlencode(rest)))
    if scheme.startswith("postgres"):
        return PostgresRevocationStore(plain, **{**mine, **options})
    return RedisRevocationStore(plain, **{**mine, **options})
