"""Shared :class:`~policyengine.budgets.store.BudgetStore` on Redis.

Every atomic operation is one server-side Lua script, loaded once and called by its
SHA (``EVALSHA``; reloaded by itself after a server restart): Redis runs a script to the
end before anything else, so "check every budget, then debit every one" cannot
interleave with another host's operation. One round trip per operation.

Keys (all under ``prefix``, default ``policyengine:budgets:``), names built by the
scripts with length-prefixed budget ids so no subject can forge another bucket's key:

* ``layout``: the layout version and a random id of this dataset, ``"2:<hex>"``;
* ``b:<len>:<budget><subject>:<window>``: hash ``{s: spent, r: reserved}`` of a bucket
  (expires 32 days after its window starts);
* ``e:<len>:<budget><subject>``: sorted set of rolling spend (``seq:amount`` by time);
* ``r:<id>``: hash of a reservation (status, expiry, holds, record);
* ``x``: sorted set of reservations whose holds count, by expiry. Every script first
  gives back the holds of those expired by its ``now``: exact expiry, no sweeper;
* ``i:<key>``: hash of an idempotency record (expires with it);
* ``l:<tenant>``: sorted set (by lex) of the listing keys of the tenant's reservations
  (:func:`~policyengine.budgets.store.listing_key`); an entry outlives its reservation's
  hash until a reserve of that tenant finds it at the head, or a listing skips it;
* ``q:<len>:<rate limit><subject>``: ``"<tat_us> <tat_frac>"``, the theoretical arrival
  time of a rate-limit key (``policyengine.budgets.ratelimit``; expires a minute after
  it passes, when the key has long been at rest: the minute covers a caller whose
  explicit time runs behind the server's).

Amounts are integer quanta up to 10^18: the scripts add and compare them exactly as
two base-10^9 limbs (Lua numbers are doubles) and let Redis's ``HINCRBY`` keep them as
64-bit integers. Times travel as the decimal strings Python wrote, never re-printed by
Lua.

A lost dataset is refused, not silently restarted: each store remembers the layout id it
opened; when the server restarts without persistence (or the keys are flushed) the id
is gone and every call fails with ``store_unavailable`` instead of granting budgets
afresh. :meth:`RedisStore.reinitialize` accepts the loss (see docs/deployment.md).

Keys are built inside the scripts, so this store needs a standalone Redis (or a
cluster where the prefix is one hash slot, e.g. ``{budgets}:``).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

from policyengine.budgets.clock import ServerClock
from policyengine.budgets.errors import BudgetStoreError
from policyengine.budgets.ratelimit import RateKey, RateOutcome
from policyengine.budgets.spec import MAX_ROLLING_SECONDS
from policyengine.budgets.store import (
    ACTIVE,
    OK,
    Bucket,
    IdempotencyRecord,
    Outcome,
    RecentReservations,
    ReservationRecord,
    Transaction,
    Usage,
    compact_json,
    listing_key,
    record_from_json,
)

__all__ = ["LAYOUT_VERSION", "RedisStore"]

#: Version of the key layout above; the ``layout`` key starts with it.
LAYOUT_VERSION = 2

# Shared by both scripts: ARGV[1] prefix, ARGV[2] layout id, ARGV[3] now, ARGV[4] max
# skew ('' for none), ARGV[5] the JSON argument, ARGV[6] retention, ARGV[7] rolling span.
_PRELUDE = r"""
local P = ARGV[1]
local layout = redis.call('GET', P .. 'layout')
if layout ~= ARGV[2] then
  return cjson.encode({reason = 'layout', found = layout or ''})
end
local NOW_S = ARGV[3]
local now = tonumber(NOW_S)
if ARGV[4] ~= '' then
  local t = redis.call('TIME')
  local server = tonumber(t[1]) + tonumber(t[2]) / 1000000
  if math.abs(server - now) > tonumber(ARGV[4]) then
    return cjson.encode({reason = 'clock', server = string.format('%.6f', server)})
  end
end
local RETENTION = tonumber(ARGV[6])
local ROLLING = tonumber(ARGV[7])

-- Exact integers up to ~10^27 as {hi, lo} = hi * 10^9 + lo, 0 <= lo < 10^9.
local E9 = 1000000000
local function N(s)
  if not s then return {0, 0} end
  local neg = string.sub(s, 1, 1) == '-'
  if neg then s = string.sub(s, 2) end
  local n = #s
  local v
  if n <= 9 then v = {0, tonumber(s)} else
    v = {tonumber(string.sub(s, 1, n - 9)), tonumber(string.sub(s, n - 8))}
  end
  if neg then
    if v[2] == 0 then return {-v[1], 0} end
    return {-v[1] - 1, E9 - v[2]}
  end
  return v
end
local function add(a, b)
  local lo, hi = a[2] + b[2], a[1] + b[1]
  if lo >= E9 then lo = lo - E9; hi = hi + 1 end
  return {hi, lo}
end
local function neg(a)
  if a[2] == 0 then return {-a[1], 0} end
  return {-a[1] - 1, E9 - a[2]}
end
local function gt(a, b) return a[1] > b[1] or (a[1] == b[1] and a[2] > b[2]) end
local function S(a)
  if a[1] < 0 then return '-' .. S(neg(a)) end
  if a[1] == 0 then return string.format('%d', a[2]) end
  return string.format('%d%09d', a[1], a[2])
end

local function bkey(b, s, w) return P .. 'b:' .. #b .. ':' .. b .. s .. ':' .. w end
local function ekey(b, s) return P .. 'e:' .. #b .. ':' .. b .. s end
local function ttl(seconds)
  local t = math.ceil(seconds)
  if t < 1 then return 1 end
  return t
end

-- Give back the holds of every reservation expired by now.
local due = redis.call('ZRANGEBYSCORE', P .. 'x', '-inf', NOW_S)
for _, id in ipairs(due) do
  local rk = P .. 'r:' .. id
  local h = redis.call('HGET', rk, 'h')
  if h then
    for _, hold in ipairs(cjson.decode(h)) do
      redis.call('HINCRBY', hold[1], 'r', '-' .. hold[2])
    end
    redis.call('HSET', rk, 'held', '0')
    local x = tonumber(redis.call('HGET', rk, 'x'))
    redis.call('EXPIRE', rk, ttl(x + RETENTION - now))
  end
  redis.call('ZREM', P .. 'x', id)
end

local function rolling_spent(b, s, since)
  local total = {0, 0}
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', ekey(b, s), '(' .. since, '+inf')) do
    total = add(total, N(string.sub(m, string.find(m, ':', 1, true) + 1)))
  end
  return total
end

-- {spent, reserved} of a bucket, as limbs.
local function counts(g)
  local v = redis.call('HMGET', bkey(g[1], g[2], g[3]), 's', 'r')
  local spent = N(v[1])
  if g[4] ~= cjson.null then spent = rolling_spent(g[1], g[2], g[4]) end
  return spent, N(v[2])
end
"""

_USAGE = _PRELUDE + r"""
local out = {}
for i, g in ipairs(cjson.decode(ARGV[5])) do
  local spent, reserved = counts(g)
  out[i] = {S(spent), S(reserved)}
end
return cjson.encode(out)
"""

# ARGV[5]: {"g": [[budget, subject, win, since|null, add, ceiling, debt_above|null]...],
#  "r": id|null,
#  "c": [id, status, expires_at, [[b, s, w, amount]...], data, tenant, listed|null]|null,
#  "f": [status, data]|null, "x": expires_at|null, "s": [[b, s, w, rolling, amount]...],
#  "i": [key, fingerprint, expires_at, result]|null}; numbers as decimal strings.
_APPLY = _PRELUDE + r"""
local tx = cjson.decode(ARGV[5])
local idem = tx.i
if idem ~= cjson.null then
  local found = redis.call('HMGET', P .. 'i:' .. idem[1], 'f', 'x', 'd')
  if found[2] and tonumber(found[2]) > now then
    return cjson.encode({reason = 'idempotency', f = found[1], x = found[2], d = found[3]})
  end
end
local rid = tx.r
local own = {}  -- bucket key -> amount this reservation holds there
local own_holds = nil
if rid ~= cjson.null then
  local rk = P .. 'r:' .. rid
  local r = redis.call('HMGET', rk, 'st', 'x', 'held', 'd', 'h')
  -- Not held while unexpired: a host whose clock is ahead expired it.
  if not r[1] or r[1] ~= 'active' or tonumber(r[2]) <= now or r[3] ~= '1' then
    return cjson.encode({reason = 'reservation', d = r[4] or '', x = r[2] or ''})
  end
  own_holds = cjson.decode(r[5])
  for _, hold in ipairs(own_holds) do own[hold[1]] = hold[2] end
end
local usages = {}
for i, g in ipairs(tx.g) do
  local spent, reserved = counts(g)
  local mine = own[bkey(g[1], g[2], g[3])]
  if mine then reserved = add(reserved, neg(N(mine))) end
  usages[i] = {S(spent), S(reserved)}
  local reason = nil
  if g[7] ~= cjson.null and gt(spent, N(g[7])) then
    reason = 'debt'
  elseif gt(add(add(spent, reserved), N(g[5])), N(g[6])) then
    reason = 'guard'
  end
  if reason then return cjson.encode({reason = reason, i = i - 1, u = usages}) end
end
if tx.c ~= cjson.null and redis.call('EXISTS', P .. 'r:' .. tx.c[1]) == 1 then
  return cjson.encode({reason = 'duplicate'})  -- never hold one reservation twice
end
-- Every check passed: apply every effect.
if rid ~= cjson.null then
  local rk = P .. 'r:' .. rid
  if tx.f ~= cjson.null then
    for _, hold in ipairs(own_holds) do
      redis.call('HINCRBY', hold[1], 'r', '-' .. hold[2])
    end
    redis.call('HSET', rk, 'st', tx.f[1], 'held', '0', 'd', tx.f[2])
    redis.call('ZREM', P .. 'x', rid)
    redis.call('EXPIRE', rk, ttl(RETENTION))
  elseif tx.x ~= cjson.null then
    redis.call('HSET', rk, 'x', tx.x)
    redis.call('ZADD', P .. 'x', tx.x, rid)
    redis.call('EXPIRE', rk, ttl(tonumber(tx.x) - now + RETENTION))
  end
end
local c = tx.c
if c ~= cjson.null then
  local rk = P .. 'r:' .. c[1]
  local holds = {}
  for i, hold in ipairs(c[4]) do
    local k = bkey(hold[1], hold[2], hold[3])
    redis.call('HINCRBY', k, 'r', hold[4])
    local w = tonumber(hold[3])
    if w > 0 then redis.call('EXPIRE', k, ttl(w + 32 * 86400 - now), 'NX') end
    holds[i] = {k, hold[4]}
  end
  local active = c[2] == 'active'
  redis.call('HSET', rk, 'st', c[2], 'x', c[3], 'd', c[5],
             'h', cjson.encode(holds), 'held', active and '1' or '0')
  if active then
    redis.call('ZADD', P .. 'x', c[3], c[1])
    redis.call('EXPIRE', rk, ttl(tonumber(c[3]) - now + RETENTION))
    if c[7] ~= cjson.null then
      local lk = P .. 'l:' .. c[6]
      redis.call('ZADD', lk, 0, c[7])
      -- Drop the oldest entries if their reservations are no longer kept.
      for _, m in ipairs(redis.call('ZRANGE', lk, 0, 1)) do
        if redis.call('EXISTS', P .. 'r:' .. string.sub(m, 19)) == 0 then
          redis.call('ZREM', lk, m)
        end
      end
    end
  else
    redis.call('EXPIRE', rk, ttl(RETENTION))
  end
end
for _, s in ipairs(tx.s) do
  if s[4] then
    local k = ekey(s[1], s[2])
    local seq = redis.call('INCR', P .. 'seq')
    redis.call('ZADD', k, NOW_S, seq .. ':' .. s[5])
    redis.call('ZREMRANGEBYSCORE', k, '-inf', string.format('%.3f', now - ROLLING))
    redis.call('EXPIRE', k, ttl(ROLLING))
  else
    local k = bkey(s[1], s[2], s[3])
    redis.call('HINCRBY', k, 's', s[5])
    local w = tonumber(s[3])
    if w > 0 then redis.call('EXPIRE', k, ttl(w + 32 * 86400 - now), 'NX') end
  end
end
if idem ~= cjson.null then
  local ik = P .. 'i:' .. idem[1]
  redis.call('HSET', ik, 'f', idem[2], 'x', idem[3], 'd', idem[4])
  redis.call('EXPIRE', ik, ttl(tonumber(idem[3]) - now))
end
return false
"""


def _n(value: float | int | None) -> str | None:
    """A number as the decimal string the scripts read (floats exactly, via repr)."""
    return None if value is None else repr(value)


def _encode(tx: Transaction) -> str:
    created = tx.create
    fin = tx.finalize
    idem = tx.idempotency
    c: list[Any] | None = None
    # The record an operation writes is also its idempotency record's result: its JSON
    # is made once.
    written: tuple[Any, str] | None = None
    if created is not None:
        holds = (
            [[ln[0], ln[1], str(ln[2]), str(ln[5])] for ln in created.lines if ln[5]]
            if created.status == ACTIVE else []
        )
        written = (created, compact_json(created))
        c = [created.id, created.status, repr(created.expires_at), holds, written[1],
             created.tenant or "",
             listing_key(created.created_at, created.id) if created.status == ACTIVE
             else None]
    f: list[str] | None = None
    if fin is not None:
        written = (fin, compact_json(fin))
        f = [fin.status, written[1]]
    i: list[str] | None = None
    if idem is not None:
        result = idem.result
        i = [idem.key, idem.fingerprint, repr(idem.expires_at),
             written[1] if written is not None and written[0] is result
             else compact_json(result)]
    return compact_json({
        "g": [[g[0][0], g[0][1], str(g[0][2]), _n(g[0][3]), str(g[1]), str(g[2]),
               _n(g[3])] for g in tx.guards],
        "r": tx.require_active,
        "c": c,
        "f": f,
        "x": _n(tx.extend_to),
        "s": [[s[0], s[1], str(s[2]), s[3], str(s[4])] for s in tx.spends],
        "i": i,
    })


def _record(data: str | bytes | None, expires_at: str | bytes | None
            ) -> ReservationRecord | None:
    """A stored reservation; the hash's ``x`` is authoritative (``extend`` moves it
    without rewriting the record)."""
    if not data:
        return None
    rec = record_from_json(data.decode() if isinstance(data, bytes) else data)
    if expires_at and rec.status == ACTIVE:
        x = float(expires_at)
        if x != rec.expires_at:
            rec = rec._replace(expires_at=x)
    return rec


class RedisStore:
    """Budget store in Redis, shared by every process and host that opens ``url``.

    >>> store = RedisStore("redis://cache:6379/0", prefix="policyengine:budgets:")  # doctest: +SKIP

    ``prefix``: every key's prefix (one ledger per prefix). ``max_clock_skew``: seconds
    the ``now`` of a call may differ from the server's ``TIME`` before it is refused with
    ``clock_skew`` (``None``: trust the caller's clock, for tests that set the time).
    ``retention``: seconds finished reservations are kept. ``pool_size``: most
    connections per process for the budget scripts, and as many for the other calls.
    Raises ``BudgetStoreError`` ``store_unavailable`` when the
    server cannot be reached and ``store_incompatible`` when the prefix holds another
    layout.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "policyengine:budgets:",
        max_clock_skew: float | None = 2.0,
        retention: float = 86400.0,
        pool_size: int = 16,
        timeout: float = 5.0,
        host_clock: Callable[[], float] = time.time,
    ) -> None:
        try:
            import redis
        except ImportError as exc:  # pragma: no cover - the extra is part of dev
            raise BudgetStoreError(
                "store_unavailable", "RedisStore needs redis: pip install 'policyengine[redis]'"
            ) from exc
        if not prefix:
            raise ValueError("prefix must not be empty")
        self.url = url
        self.prefix = prefix
        self.max_clock_skew = max_clock_skew
        self.retention = retention
        self._skew = "" if max_clock_skew is None else repr(float(max_clock_skew))
        self._retention = repr(float(retention))
        self._rolling = str(MAX_ROLLING_SECONDS + 60)
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        # No client-side retries: a script whose reply was lost may have run, and running
        # it again could apply a direct debit twice. A failed call is store_unavailable.
        self._redis = redis.Redis.from_url(
            url, max_connections=pool_size, socket_timeout=timeout,
            socket_connect_timeout=timeout, decode_responses=True,
            retry=Retry(NoBackoff(), 0),
        )
        self._apply_script = self._redis.register_script(_APPLY)
        self._usage_script = self._redis.register_script(_USAGE)
        self._rate_script = self._redis.register_script(_RATE)
        self._eval = _Eval(url, pool_size, timeout, self._redis.script_load)
        self._packed: dict[str, tuple[str, bytes, bytes, bytes]] = {}
        self._layout = self._open_layout()
        self._recent = RecentReservations()
        self.clock = ServerClock(self.server_time, host=host_clock)
        """Host time corrected to the server's: the ledger's default clock."""

    def _open_layout(self) -> str:
        import redis
        key = self.prefix + "layout"
        fresh = f"{LAYOUT_VERSION}:{secrets.token_hex(8)}"
        try:
            self._redis.set(key, fresh, nx=True)
            found = self._redis.get(key)
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc
        if not isinstance(found, str) or found.split(":", 1)[0] != str(LAYOUT_VERSION):
            raise BudgetStoreError(
                "store_incompatible",
                f"redis prefix {self.prefix!r} holds budget layout {found!r}, this "
                f"policyengine reads version {LAYOUT_VERSION}: use another prefix",
            )
        return found

    def reinitialize(self) -> None:
        """Accept that the server lost this dataset (a restart without persistence, a
        flush): start an empty one, or adopt the one another host started. Until this
        is called, such a store refuses every call with ``store_unavailable``."""
        self._layout = self._open_layout()

    def server_time(self) -> float:
        """The server's clock (``TIME``), POSIX seconds."""
        import redis
        try:
            seconds, micros = self._redis.time()
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc
        return seconds + micros / 1e6

    def close(self) -> None:
        self._eval.close()
        self._redis.close()
        self._redis.connection_pool.disconnect()

    def drop(self) -> None:
        """Delete every key under the prefix (tests, and tearing a ledger down)."""
        import redis
        try:
            # The layout key first: from then on every call is refused, never run on a
            # half-deleted dataset.
            self._redis.delete(self.prefix + "layout")
            keys = list(self._redis.scan_iter(match=_glob(self.prefix) + "*", count=1000))
            for i in range(0, len(keys), 500):
                self._redis.delete(*keys[i:i + 500])
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc

    def _run(self, script: Any, now: float, arg: str) -> bytes | None:
        """One budget script's reply: its JSON text, or None for Lua's ``false``. The
        command's fixed parts (the script, prefix, layout, skew, retention, rolling span)
        are packed once per layout."""
        fixed = self._packed.get(script.sha)
        if fixed is None or fixed[0] != self._layout:
            head = _pack_args(("EVALSHA", script.sha, "0", self.prefix, self._layout))
            fixed = self._packed[script.sha] = (
                self._layout, b"*10\r\n" + head, _pack_args((self._skew,)),
                _pack_args((self._retention, self._rolling)))
        at = repr(now).encode()
        data = arg.encode()
        return self._eval.call(script, b"%s$%d\r\n%s\r\n%s$%d\r\n%s\r\n%s" % (
            fixed[1], len(at), at, fixed[2], len(data), data, fixed[3]))

    def _refused(self, refusal: dict[str, Any], now: float) -> BudgetStoreError:
        if refusal["reason"] == "clock":
            server = float(refusal["server"])
            return BudgetStoreError(
                "clock_skew",
                f"this host's time is {now - server:+.3f} s from the budget store's, more "
                f"than the {self.max_clock_skew} s allowed: use the store's clock (the "
                "ledger's default) or fix the host clock (NTP)",
                {"skew": round(now - server, 3), "maxSkew": self.max_clock_skew},
            )
        return BudgetStoreError(
            "store_unavailable",
            f"the budget data under redis prefix {self.prefix!r} is gone (found layout "
            f"{refusal['found']!r}, opened {self._layout!r}): the server restarted without "
            "persistence or was flushed. Spend recorded there is lost; refusing rather than "
            "granting budgets afresh until an operator calls reinitialize()",
            {"reason": "dataset_lost"},
        )

    # -- reads -------------------------------------------------------------------------

    def usage(self, buckets: tuple[Bucket, ...], now: float) -> tuple[Usage, ...]:
        arg = compact_json([[b[0], b[1], str(b[2]), _n(b[3])] for b in buckets])
        text = self._run(self._usage_script, now, arg)
        if text is None:  # pragma: no cover - the script always answers a JSON text
            raise _unavailable("the usage script answered nothing")
        result = json.loads(text)
        if type(result) is dict:
            raise self._refused(result, now)
        return tuple([Usage(int(sp), int(rs)) for sp, rs in result])

    def get_reservation(self, reservation_id: str) -> ReservationRecord | None:
        import redis
        try:
            data, x = self._redis.hmget(self.prefix + "r:" + reservation_id, ["d", "x"])
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc
        return _record(data, x)

    def get_idempotency(self, key: str, now: float) -> IdempotencyRecord | None:
        import redis
        try:
            f, x, d = self._redis.hmget(self.prefix + "i:" + key, ["f", "x", "d"])
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc
        if f is None or x is None or d is None or float(x) <= now:
            return None
        return IdempotencyRecord(key, str(f), record_from_json(str(d)), float(x))

    def list_reservations(self, tenant: str, after: str | None, limit: int
                          ) -> list[ReservationRecord]:
        import redis
        index = self.prefix + "l:" + tenant
        low = "-" if after is None else "(" + after
        out: list[ReservationRecord] = []
        try:
            while len(out) < limit:
                keys: list[str] = self._redis.zrangebylex(  # type: ignore[assignment]
                    index, low, "+", start=0, num=limit - len(out))
                if not keys:
                    break
                pipe = self._redis.pipeline(transaction=False)
                for key in keys:
                    pipe.hmget(self.prefix + "r:" + key[18:], ["d", "x"])
                for data, x in pipe.execute():
                    rec = _record(data, x)
                    if rec is not None:  # else no longer kept: skipped
                        out.append(rec)
                low = "(" + keys[-1]
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc
        return out

    def live_reservation(self, reservation_id: str, now: float) -> ReservationRecord | None:
        """This process's last view of a reservation it created, if live by that view
        (no round trip; ``apply`` re-checks it)."""
        return self._recent.live(reservation_id, now)

    # -- rate limits -------------------------------------------------------------------

    def rate_admit(self, keys: tuple[RateKey, ...], now_us: int | None,
                   consume: bool = True) -> RateOutcome:
        """Rate limits (:mod:`policyengine.budgets.ratelimit`): one script: all of
        ``keys`` admit one call and count it, or none does, at the server's ``TIME`` (or
        ``now_us``, within ``max_clock_skew``)."""
        import redis
        args: list[str] = [self.prefix, self._layout, "" if now_us is None else str(now_us),
                           "" if now_us is None or self.max_clock_skew is None
                           else str(int(self.max_clock_skew * 1_000_000)),
                           "1" if consume else "0"]
        for key, count, period_us, burst in keys:
            args += (key, str(count), str(period_us), str(burst))
        try:
            refused, wait, now = self._rate_script(args=args)
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc
        if refused == -1:
            raise self._refused({"reason": "clock", "server": wait / 1e6},
                                now_us / 1e6)  # type: ignore[operator]
        if refused == -2:
            raise self._refused({"reason": "layout", "found": "(not the one opened)"}, 0.0)
        if refused == 0:
            return RateOutcome(True, -1, 0, int(now))
        return RateOutcome(False, int(refused) - 1, int(wait), int(now))

    # -- the one write -----------------------------------------------------------------

    def apply(self, tx: Transaction, now: float) -> Outcome:
        text = self._run(self._apply_script, now, _encode(tx))
        if text is None:
            self._recent.note(tx)
            return OK
        refusal: dict[str, Any] = json.loads(text)
        reason = refusal["reason"]
        if reason in ("clock", "layout"):
            raise self._refused(refusal, now)
        if reason == "idempotency":
            found = IdempotencyRecord(tx.idempotency.key,  # type: ignore[union-attr]
                                      refusal["f"], record_from_json(refusal["d"]),
                                      float(refusal["x"]))
            return Outcome(False, "idempotency", idempotency=found)
        if reason == "reservation":
            self._recent.forget(tx.require_active)
            return Outcome(False, "reservation",
                           reservation=_record(refusal["d"], refusal["x"]))
        usages = tuple([Usage(int(sp), int(rs)) for sp, rs in refusal["u"]])
        return Outcome(False, reason, refusal["i"], usages)


# Rate limits: ARGV[1] prefix, ARGV[2] layout id, ARGV[3] now_us ('' for the server's
# TIME), ARGV[4] max skew in us ('' for none), ARGV[5] '1' to count the call, then per key
# (sorted) key, count, period_us, burst. Returns {refused index (1-based; 0 admitted),
# retry_after_us, now_us}, {-1, server_us, 0} for a skewed caller, {-2, 0, 0} for a lost
# dataset. Every value stays below 2**53 (exact in Lua's doubles).
_RATE = r"""
local P = ARGV[1]
if redis.call('GET', P .. 'layout') ~= ARGV[2] then return {-2, 0, 0} end
local t = redis.call('TIME')
local server = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = server
if ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
  if ARGV[4] ~= '' and math.abs(server - now) > tonumber(ARGV[4]) then
    return {-1, server, 0}
  end
end
local n = (#ARGV - 5) / 4
local tu, tf = {}, {}
local worst, refused = 0, 0
for j = 1, n do
  local b = 5 + (j - 1) * 4
  local c, p, burst = tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local u, f = 0, 0
  local v = redis.call('GET', P .. 'q:' .. ARGV[b + 1])
  if v then
    local su, sf = string.match(v, '^(%d+) (%d+)$')
    u, f = tonumber(su), tonumber(sf)
  end
  if u < now then u, f = now, 0 end
  local d = (u - now) * c + f
  local tol = (burst - 1) * p
  if d > tol then
    local over = d - tol
    local w = math.floor(over / c)
    while w * c < over do w = w + 1 end
    while w > 0 and (w - 1) * c >= over do w = w - 1 end
    if w > worst then worst, refused = w, j end
  else
    local r = p % c
    f = f + r
    u = u + (p - r) / c
    if f >= c then f, u = f - c, u + 1 end
    tu[j], tf[j] = u, f
  end
end
if refused > 0 then return {refused, worst, now} end
if ARGV[5] == '1' then
  for j = 1, n do
    local b = 5 + (j - 1) * 4
    local ttl = math.floor((tu[j] - now) / 1000) + 60000
    redis.call('SET', P .. 'q:' .. ARGV[b + 1],
               string.format('%.0f %.0f', tu[j], tf[j]), 'PX', string.format('%.0f', ttl))
  end
end
return {0, 0, now}
"""


class _Eval:
    """``EVALSHA`` of the budget scripts on connections of its own, without the client
    library's per-command machinery (on a budget write it cost more CPU than the rest of
    the store): the command is packed with one join, the reply read off the socket.

    The connections speak RESP2 (made by the client library from the same URL: TLS,
    password and database as configured), so the server never pushes anything unasked
    onto them, and every reply of these scripts is one bulk string, a nil (Lua
    ``false``) or an error. A connection that fails, times out or answers anything else
    is closed, never reused, and the call is ``store_unavailable``: no retry, as a
    script whose reply was lost may have run. ``NOSCRIPT`` (the server restarted or its
    scripts were flushed) loads the script and sends the call once more: the server ran
    nothing. At most ``size`` idle connections are kept; a forked child opens its own.
    """

    def __init__(self, url: str, size: int, timeout: float,
                 load: Callable[[str], Any]) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        pool = redis.Redis.from_url(url, protocol=2, socket_timeout=timeout,
                                    socket_connect_timeout=timeout,
                                    retry=Retry(NoBackoff(), 0)).connection_pool
        self._make: Callable[[], Any] = lambda: pool.connection_class(
            **pool.connection_kwargs)
        self._size = size
        self._load = load
        self._idle: list[Any] = []
        self._pid = os.getpid()

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.disconnect()

    def call(self, script: Any, packed: bytes) -> bytes | None:
        """Send ``packed`` (the ``EVALSHA`` of ``script``, :func:`_pack_args`) and
        return the reply."""
        import redis
        if self._pid != os.getpid():  # forked: the parent's sockets are not ours
            self._idle, self._pid = [], os.getpid()
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = None
        try:
            if conn is None:
                conn = self._make()
                conn.connect()
            reply = _exchange(conn._sock, packed)
            if isinstance(reply, str) and reply.startswith("NOSCRIPT"):
                self._load(script.script)
                reply = _exchange(conn._sock, packed)
        except (OSError, ValueError, IndexError, redis.RedisError) as exc:
            if conn is not None:
                conn.disconnect()
            raise _unavailable(exc) from exc
        if isinstance(reply, str):
            # An error reply: the connection is in step and is kept.
            self._keep(conn)
            raise _unavailable(reply)
        self._keep(conn)
        return reply

    def _keep(self, conn: Any) -> None:
        if len(self._idle) < self._size:
            self._idle.append(conn)
        else:
            conn.disconnect()


def _pack_args(args: tuple[str, ...]) -> bytes:
    """RESP bulk strings of ``args`` (a command is ``*<count>`` and then these)."""
    out = []
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


#: Longest first line of a reply read before giving up on its end (an error's text
#: included).
_MAX_REPLY_LINE = 65536
#: Largest reply a budget script may give (its JSON is a record or a few numbers).
_MAX_REPLY = 64 << 20


def _exchange(sock: Any, packed: bytes) -> bytes | str | None:
    """Send one command and read its reply: a bulk string's bytes, None for a nil, the
    text of an error reply (a ``str``). Anything else, or a reply followed by more
    bytes, is ``ValueError`` (the caller closes the connection)."""
    sock.sendall(packed)
    data = b""
    while True:
        more: bytes = sock.recv(65536)
        if not more:  # closed, before or in the middle of the reply's first line
            raise ConnectionError("the connection was closed by the server")
        data += more
        end = data.find(b"\r\n")
        if end >= 0:
            break
        if len(data) > _MAX_REPLY_LINE:
            raise ValueError("a reply line without an end")
    kind = data[0]
    if kind == 45:  # '-': an error reply
        if len(data) != end + 2:
            raise ValueError("unexpected bytes after a reply")
        return data[1:end].decode("utf-8", "replace")
    if kind != 36:  # not '$': no script here answers anything else
        raise ValueError(f"unexpected reply {data[:20]!r}")
    length = data[1:end]
    if length == b"-1":  # a nil
        if len(data) != end + 2:
            raise ValueError("unexpected bytes after a reply")
        return None
    if not length.isdigit() or len(length) > 12:  # only plain decimal digits
        raise ValueError(f"unexpected reply {data[:20]!r}")
    size = int(length)
    if size > _MAX_REPLY:
        raise ValueError(f"a reply of {size} bytes")
    need = end + 2 + size + 2
    if len(data) < need:
        chunks = [data]
        have = len(data)
        while have < need:
            more = sock.recv(min(max(65536, need - have), 1 << 20))
            if not more:
                raise ConnectionError("the connection was closed by the server")
            chunks.append(more)
            have += len(more)
        data = b"".join(chunks)
    if len(data) != need or data[need - 2:need] != b"\r\n":
        raise ValueError("unexpected bytes after a reply")
    return data[end + 2:need - 2]


def _glob(text: str) -> str:
    """``text`` with Redis glob characters escaped."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def _unavailable(exc: BaseException | str) -> BudgetStoreError:
    return BudgetStoreError("store_unavailable", f"budget store error: {exc}")
