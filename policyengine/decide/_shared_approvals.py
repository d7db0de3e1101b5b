"""Approvals shared by every host: :class:`PostgresApprovalStore`, :class:`RedisApprovalStore`.

An approval granted through one host unlocks the request on another, and a one-use
approval is used once in all: ``consume`` is one atomic step on the server (a
transaction holding the row lock in PostgreSQL, a Lua script in Redis).

Which clock decides: the server's (``clock_timestamp()``, ``TIME``), in every operation.
``add`` stores the request as created at the server's time, expiring after the duration
the engine gave it (``expires_at - created_at``), and ``consume`` ignores the time the
engine passes: a host whose clock runs ahead or behind can neither use an approval the
others see expired nor record a request nobody could approve (``own_clock`` says so to
the engine, whose explain then takes the status ``get`` read).

Digests are compared in constant time: in Python after ``SELECT ... FOR UPDATE``
(PostgreSQL), and in the script as SHA-1 digests of both sides (Redis), so the time taken
says nothing about how much of a guess matched. A store fault raises
``ApprovalError("approval_store_error")`` whose message names the driver's exception type
only (the backend's address stays in ``__cause__``: the message reaches agents and
admins); the engine never honours an approval then.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

from policyengine._pgtables import missing_columns
from policyengine._storeurl import REDIS_TIMEOUT
from policyengine.decide._approvals import Approval, ApprovalError, ApprovalStore

__all__ = ["PostgresApprovalStore", "RedisApprovalStore", "approvals_from_url"]

_T = TypeVar("_T")
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")
_COLUMNS = ("id, principal, permission, digest, rules, status, created_at, expires_at, "
            "uses_left, decided_at, decided_by, note")


def _store_error(exc: BaseException) -> ApprovalError:
    """The fault as ``approval_store_error``. The driver's text names the server's host
    and port, so it is left to ``__cause__`` (logs), never put in the message."""
    return ApprovalError("approval_store_error",
                         f"the approval store failed ({type(exc).__name__})")


def _from_row(row: tuple[Any, ...] | list[Any]) -> Approval:
    return Approval(row[0], row[1], row[2], row[3], tuple(json.loads(row[4])), row[5],
                    float(row[6]), float(row[7]), int(row[8]),
                    None if row[9] is None else float(row[9]), row[10], row[11])


def _refusal(status: str, approval_id: str) -> ApprovalError:
    """The error ``approve`` / ``reject`` raise for a record whose status (as seen now) is
    not pending: the same words as the in-memory store's, from either shared store."""
    if status == "expired":
        return ApprovalError("approval_expired", f"approval {approval_id} has expired")
    return ApprovalError("approval_final", f"approval {approval_id} is already {status}")


#: The status a consume refusal reports, by its code (the in-memory store's words).
_CONSUME_STATUS = {"approval_expired": "expired", "approval_pending": "pending",
                   "approval_rejected": "rejected", "approval_used": "used"}


def _consume_refusal(code: str, approval_id: str) -> ApprovalError:
    """The error ``consume`` raises for ``code``: the same words from every store."""
    if code == "unknown_approval":
        return ApprovalError(code, "no such approval")
    if code == "approval_mismatch":
        return ApprovalError(code, "the approval was granted for a different request")
    return ApprovalError(code, f"approval {approval_id} is {_CONSUME_STATUS[code]}")


def _consume_code(status: str) -> str:
    return {"expired": "approval_expired", "pending": "approval_pending",
            "rejected": "approval_rejected"}.get(status, "approval_used")


def _check_seconds(name: str, value: object, *, positive: bool) -> None:
    """Refuse a time option no store takes (``_storeurl.seconds_ok``) with
    ``invalid_approval_store``."""
    from policyengine._storeurl import MAX_SECONDS, seconds_ok
    if not seconds_ok(value, positive=positive):
        raise ApprovalError("invalid_approval_store",
                            f"{name}={value!r}: must be a number of seconds "
                            f"{'above 0, at most' if positive else 'from 0 to'} "
                            f"{MAX_SECONDS:,}")


def _url_read(read: Callable[..., _T], *args: Any) -> _T:
    """``read(*args)``, one of ``_storeurl``'s checks or readers of a store URL, its
    refusal (``StoreUrlError``) raised as this store's ``invalid_approval_store``."""
    from policyengine._storeurl import StoreUrlError
    try:
        return read(*args)
    except StoreUrlError as exc:
        raise ApprovalError("invalid_approval_store", f"approval store URL: {exc}") from None


class PostgresApprovalStore(ApprovalStore):
    """Approvals in ``<schema>.approvals`` (created if missing), one connection per
    process and thread. Every time is the server's ``clock_timestamp()``."""

    #: The store reads "now" from its own clock in every operation (see the module).
    own_clock = True

    def __init__(self, url: str, *, schema: str = "policyengine",
                 connect_timeout: float = 5.0) -> None:
        if type(schema) is not str or not _SCHEMA_NAME.match(schema):
            raise ApprovalError("invalid_approval_store", f"schema={schema!r}: must be a "
                                "lower-case SQL name (a-z, 0-9, _; at most 63 characters)")
        _check_seconds("connect_timeout", connect_timeout, positive=True)
        from policyengine._storeurl import check_postgres_url
        _url_read(check_postgres_url, url)
        self.url = url
        self.schema = schema
        self.connect_timeout = connect_timeout
        self._table = f'"{schema}".approvals'
        self._local = threading.local()
        with self._conn() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                         (f"policyengine.approvals.{schema}",))
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._table} (id text PRIMARY KEY, "
                "principal text NOT NULL, permission text NOT NULL, digest text NOT NULL, "
                "rules text NOT NULL, status text NOT NULL, created_at float8 NOT NULL, "
                "expires_at float8 NOT NULL, uses_left integer NOT NULL, decided_at float8, "
                "decided_by text, note text)")
            # A table of that name made by something else is refused here, not found out
            # by the first request (every decision then denied approval_store_error).
            lacking = [column for _, column in missing_columns(
                conn, schema, [("approvals", c) for c in _COLUMNS.split(", ")])]
            if lacking:
                raise ApprovalError(
                    "approval_store_incompatible",
                    f"schema {schema!r} holds an approvals table this policyengine does "
                    f"not recognise (no {', '.join(lacking)}): use another schema")

    @contextmanager
    def _conn(self) -> Iterator[Any]:
        """This thread's connection; a broken one is replaced on the next call."""
        import psycopg
        local = self._local
        try:
            conn = getattr(local, "conn", None)
            if conn is None or conn.closed or getattr(local, "pid", 0) != os.getpid():
                conn = local.conn = psycopg.connect(
                    self.url, autocommit=True,
                    connect_timeout=max(1, round(self.connect_timeout)))
                local.pid = os.getpid()
            yield conn
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.errors.UniqueViolation):
                raise ApprovalError("duplicate_approval", "that approval id exists") from None
            local.conn = None
            raise _store_error(exc) from exc

    def _now(self, conn: Any) -> float:
        return float(conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8"
                                  ).fetchone()[0])

    def add(self, approval: Approval) -> Approval:
        """Store ``approval`` as created now by the server's clock, expiring after the
        duration the engine gave it; returns the record as stored."""
        a = approval
        with self._conn() as conn:
            created, expires = conn.execute(
                f"INSERT INTO {self._table} ({_COLUMNS}) SELECT "
                "%s, %s, %s, %s, %s, %s, s.now, s.now + %s, %s, %s, %s, %s FROM "
                "(SELECT extract(epoch FROM clock_timestamp())::float8 AS now) s "
                "RETURNING created_at, expires_at",
                (a.id, a.principal, a.permission, a.digest, json.dumps(list(a.rules)),
                 a.status, float(a.expires_at - a.created_at), a.uses_left, a.decided_at,
                 a.decided_by, a.note)).fetchone()
        return replace(a, created_at=float(created), expires_at=float(expires))

    def _row(self, conn: Any, approval_id: str, lock: bool = False) -> Approval:
        if type(approval_id) is not str:
            raise ApprovalError("unknown_approval", "no such approval")
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM {self._table} WHERE id = %s"
            + (" FOR UPDATE" if lock else ""), (approval_id,)).fetchone()
        if row is None:
            raise ApprovalError("unknown_approval", "no such approval")
        return _from_row(row)

    def get(self, approval_id: str) -> Approval:
        with self._conn() as conn:
            return self._row(conn, approval_id).at(self._now(conn))

    def list(self, status: str | None = None) -> list[Approval]:
        with self._conn() as conn:
            now = self._now(conn)
            rows = conn.execute(f"SELECT {_COLUMNS} FROM {self._table} ORDER BY created_at"
                                ).fetchall()
        items = [_from_row(row).at(now) for row in rows]
        return [i for i in items if status is None or i.status == status]

    def _decide(self, approval_id: str, status: str, by: str | None, note: str | None
                ) -> Approval:
        with self._conn() as conn, conn.transaction():
            item = self._row(conn, approval_id, lock=True)
            now = self._now(conn)
            if item.at(now).status != "pending":
                raise _refusal(item.at(now).status, approval_id)
            conn.execute(f"UPDATE {self._table} SET status = %s, decided_at = %s, "
                         "decided_by = %s, note = %s WHERE id = %s",
                         (status, now, by, note, approval_id))
            return Approval(item.id, item.principal, item.permission, item.digest, item.rules,
                            status, item.created_at, item.expires_at, item.uses_left, now, by,
                            note)

    def approve(self, approval_id: str, by: str | None = None, note: str | None = None
                ) -> Approval:
        return self._decide(approval_id, "approved", by, note)

    def reject(self, approval_id: str, by: str | None = None, note: str | None = None
               ) -> Approval:
        return self._decide(approval_id, "rejected", by, note)

    def consume(self, approval_id: str, digest: str, now: float) -> Approval:
        """Use one use, deciding expiry by the server's clock read under the row lock
        (``now``, the engine's time, is not used: see the module)."""
        with self._conn() as conn, conn.transaction():
            item = self._row(conn, approval_id, lock=True)
            if not hmac.compare_digest(item.digest.encode(), str(digest).encode()):
                raise _consume_refusal("approval_mismatch", approval_id)
            seen = item.at(self._now(conn))
            if seen.status != "approved" or seen.uses_left < 1:
                raise _consume_refusal(_consume_code(seen.status), approval_id)
            left = item.uses_left - 1
            status = "approved" if left else "used"
            conn.execute(f"UPDATE {self._table} SET uses_left = %s, status = %s WHERE id = %s",
                         (left, status, approval_id))
            return Approval(item.id, item.principal, item.permission, item.digest, item.rules,
                            status, item.created_at, item.expires_at, left, item.decided_at,
                            item.decided_by, item.note)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


# Redis: one hash per approval (``<prefix>a:<id>``), the ids in a set (``<prefix>ids``).
# Scripts return a JSON array: ["ok", fields...] or ["error", code].
_FIELDS = ("id", "principal", "permission", "digest", "rules", "status", "created_at",
           "expires_at", "uses_left", "decided_at", "decided_by", "note")
_LUA_READ = """
local function fields(k)
  return redis.call('HMGET', k, 'id', 'principal', 'permission', 'digest', 'rules',
                    'status', 'created_at', 'expires_at', 'uses_left', 'decided_at',
                    'decided_by', 'note')
end
local t = redis.call('TIME')
local server = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""
_ADD = _LUA_READ + """
local k = KEYS[1]
if redis.call('EXISTS', k) == 1 then return cjson.encode({'error', 'duplicate_approval'}) end
local a = cjson.decode(ARGV[1])
-- Created now by the server's clock; a[7] is how long it lasts.
local created = string.format('%.6f', server)
local expires = string.format('%.6f', server + tonumber(a[7]))
redis.call('HSET', k, 'id', a[1], 'principal', a[2], 'permission', a[3], 'digest', a[4],
           'rules', a[5], 'status', a[6], 'created_at', created, 'expires_at', expires,
           'uses_left', a[8])
local keep = math.ceil(tonumber(a[7]) + tonumber(ARGV[2]))
if keep < 1 then keep = 1 end
redis.call('EXPIRE', k, keep)
redis.call('SADD', KEYS[2], a[1])
return cjson.encode({'ok', created, expires})
"""
_DECIDE = _LUA_READ + """
local k = KEYS[1]
local f = fields(k)
if not f[1] then return cjson.encode({'error', 'unknown_approval'}) end
local status = f[6]
if (status == 'pending' or status == 'approved') and server >= tonumber(f[8]) then
  return cjson.encode({'error', 'approval_expired'})
end
if status ~= 'pending' then return cjson.encode({'error', 'approval_final', status}) end
local when = string.format('%.6f', server)
redis.call('HSET', k, 'status', ARGV[1], 'decided_at', when)
if ARGV[2] ~= '' then redis.call('HSET', k, 'decided_by', string.sub(ARGV[2], 2)) end
if ARGV[3] ~= '' then redis.call('HSET', k, 'note', string.sub(ARGV[3], 2)) end
return cjson.encode({'ok'})
"""
_CONSUME = _LUA_READ + """
local k = KEYS[1]
local f = fields(k)
if not f[1] then return cjson.encode({'error', 'unknown_approval'}) end
-- Compare digests of the digests: the time taken says nothing about a partial match.
if redis.sha1hex(f[4]) ~= redis.sha1hex(ARGV[1]) then
  return cjson.encode({'error', 'approval_mismatch'})
end
local status = f[6]
if (status == 'pending' or status == 'approved') and server >= tonumber(f[8]) then
  return cjson.encode({'error', 'approval_expired'})
end
if status == 'pending' then return cjson.encode({'error', 'approval_pending'}) end
if status == 'rejected' then return cjson.encode({'error', 'approval_rejected'}) end
local left = tonumber(f[9])
if status ~= 'approved' or left < 1 then return cjson.encode({'error', 'approval_used'}) end
left = left - 1
if left == 0 then status = 'used' end
redis.call('HSET', k, 'uses_left', left, 'status', status)
return cjson.encode({'ok'})
"""


class RedisApprovalStore(ApprovalStore):
    """Approvals in Redis under ``prefix``. A record is kept until ``keep_expired``
    seconds after it expires. Redis without persistence forgets approvals on restart:
    pending ones must then be asked for again (never an allow). Every time is the
    server's ``TIME``, read inside the script."""

    #: The store reads "now" from its own clock in every operation (see the module).
    own_clock = True

    def __init__(self, url: str, *, prefix: str = "policyengine:approvals:",
                 keep_expired: float = 86400.0, timeout: float = REDIS_TIMEOUT) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        if type(prefix) is not str or not prefix:
            raise ApprovalError("invalid_approval_store",
                                "prefix must be a non-empty string")
        # checked here, not found out later: a bad keep_expired failed every add (the
        # script's EXPIRE refused it), a bad timeout the first command
        _check_seconds("keep_expired", keep_expired, positive=False)
        _check_seconds("timeout", timeout, positive=True)
        from policyengine._storeurl import check_redis_url
        _url_read(lambda u: check_redis_url(u, timeout_given=timeout is not REDIS_TIMEOUT),
                  url)
        self.url = url
        self.prefix = prefix
        self.keep_expired = keep_expired
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout,
                                           socket_connect_timeout=timeout,
                                           decode_responses=True, retry=Retry(NoBackoff(), 0))
        self._add = self._redis.register_script(_ADD)
        self._decide_script = self._redis.register_script(_DECIDE)
        self._consume = self._redis.register_script(_CONSUME)

    def _key(self, approval_id: str) -> str:
        if type(approval_id) is not str:
            raise ApprovalError("unknown_approval", "no such approval")
        return self.prefix + "a:" + approval_id

    def _run(self, script: Any, keys: list[str], args: list[Any]) -> list[Any]:
        import redis
        try:
            result: list[Any] = json.loads(script(keys=keys, args=args))
        except (redis.RedisError, OSError, TypeError, ValueError) as exc:
            # any fault of the client or a reply it cannot read: the store's code, never a
            # raw exception (the engine then honours no approval)
            raise _store_error(exc) from exc
        return result

    def _call(self, name: str, *args: Any) -> Any:
        import redis
        try:
            return getattr(self._redis, name)(*args)
        except (redis.RedisError, OSError, TypeError, ValueError) as exc:
            raise _store_error(exc) from exc

    def _server_now(self) -> float:
        seconds, micros = self._call("time")
        return float(seconds) + float(micros) / 1e6

    def _read(self, approval_id: str) -> Approval:
        values = self._call("hmget", self._key(approval_id), list(_FIELDS))
        if values[0] is None:
            raise ApprovalError("unknown_approval", "no such approval")
        return _from_row(values)

    def add(self, approval: Approval) -> Approval:
        """Store ``approval`` as created now by the server's clock, expiring after the
        duration the engine gave it; returns the record as stored."""
        a = approval
        result = self._run(self._add, [self._key(a.id), self.prefix + "ids"], [json.dumps([
            a.id, a.principal, a.permission, a.digest, json.dumps(list(a.rules)), a.status,
            repr(float(a.expires_at - a.created_at)), a.uses_left]), repr(self.keep_expired)])
        if result[0] != "ok":
            raise ApprovalError(result[1], f"approval {a.id} exists")
        return replace(a, created_at=float(result[1]), expires_at=float(result[2]))

    def get(self, approval_id: str) -> Approval:
        return self._read(approval_id).at(self._server_now())

    def list(self, status: str | None = None) -> list[Approval]:
        now = self._server_now()
        ids = sorted(self._call("smembers", self.prefix + "ids"))
        items: list[Approval] = []
        gone: list[str] = []
        for approval_id in ids:
            try:
                items.append(self._read(approval_id).at(now))
            except ApprovalError as exc:
                if exc.code != "unknown_approval":
                    raise
                gone.append(approval_id)  # expired away: forget its id
        if gone:
            self._call("srem", self.prefix + "ids", *gone)
        items.sort(key=lambda i: i.created_at)
        return [i for i in items if status is None or i.status == status]

    def _decide(self, approval_id: str, status: str, by: str | None, note: str | None
                ) -> Approval:
        # ``by`` and ``note`` go with a leading "=" so that an empty string stays a value.
        result = self._run(self._decide_script, [self._key(approval_id)],
                           [status, "" if by is None else "=" + by,
                            "" if note is None else "=" + note])
        if result[0] != "ok":
            if result[1] == "unknown_approval":
                raise ApprovalError("unknown_approval", "no such approval")
            raise _refusal("expired" if result[1] == "approval_expired" else result[2],
                           approval_id)
        return self._read(approval_id)

    def approve(self, approval_id: str, by: str | None = None, note: str | None = None
                ) -> Approval:
        return self._decide(approval_id, "approved", by, note)

    def reject(self, approval_id: str, by: str | None = None, note: str | None = None
               ) -> Approval:
        return self._decide(approval_id, "rejected", by, note)

    def consume(self, approval_id: str, digest: str, now: float) -> Approval:
        """Use one use, deciding expiry by the server's ``TIME`` inside the script
        (``now``, the engine's time, is not used: see the module)."""
        result = self._run(self._consume, [self._key(approval_id)], [str(digest)])
        if result[0] != "ok":
            raise _consume_refusal(result[1], approval_id)
        return self._read(approval_id)

    def close(self) -> None:
        self._redis.close()


def approvals_from_url(url: str, **options: Any) -> Any:
    """The approval store ``url`` names: ``memory:``, ``postgresql://...?schema=...``
    (and ``connect_timeout``) or ``redis://...?prefix=...`` (and ``keep_expired``,
    ``timeout``): the constructor's options, in the query. Raises
    ``ApprovalError("invalid_approval_store")`` for another URL, or a bad option (a
    ``schema`` that is no lower-case SQL name, an empty ``prefix``, a time that is no
    number of seconds up to ten years, an option given twice, an option neither the
    store nor its driver reads)."""
    from policyengine._storeurl import open_shared_store
    from policyengine.decide._approvals import MemoryApprovalStore
    return open_shared_store(
        url, options, what="approval store", memory=MemoryApprovalStore,
        postgres=PostgresApprovalStore, redis=RedisApprovalStore,
        refuse=lambda message: ApprovalError("invalid_approval_store", message),
        own=lambda postgres: ({"schema": str, "connect_timeout": float} if postgres
                              else {"prefix": str, "keep_expired": float, "timeout": float}))
