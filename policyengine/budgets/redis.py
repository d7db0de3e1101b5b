"""Shared :class:`~policyengine.budgets.store.BudgetStore` on Redis.

Every atomic operation is one server-side Lua script, loaded once and called by its
SHA (``EVALSHA``; reloaded by itself after a server restart): Redis runs a script to the
end before anything else, so "check every budget, then debit every one" cannot
interleave with another host's operation. One round trip per operation.

Keys (all under ``prefix``, default ``policyengine:budgets:``); a bucket's name holds its
budget id's length, so no subject can forge another bucket's key:

* ``layout``: the layout version and a random id of this dataset, ``"3:<hex>"``;
* ``b:<len>:<budget><subject>:<window>``: hash ``{s: spent, r: reserved}`` of a bucket
  (expires 32 days after its window starts, set by the write that makes the key);
* ``e:<len>:<budget><subject>``: sorted set of rolling spend (``seq:amount`` by time);
* ``r:<id>``: hash of a reservation: ``st`` status, ``x`` expiry (the decimal Python
  wrote), ``held`` (``1`` while its holds count), ``h`` its holds (JSON ``[[bucket key,
  amount], ...]``) and ``d`` its record (JSON text, read by Python alone);
* ``x``: sorted set of reservations whose holds count, by expiry in whole milliseconds
  (``floor(expires_at * 1000)``: an integer score is stored and compared as one, where a
  time with a fraction is printed and parsed as a 17-digit decimal at every insert), and
  one long member that keeps it a skiplist (:data:`_SKIPLIST`). Every script first gives
  back the holds of those expired by its ``now``; the ones due in ``now``'s own
  millisecond are compared by their exact ``x``: exact expiry, no sweeper;
* ``i:<key>``: string ``<expires_at>\\n<result record JSON>\\n<fingerprint>`` of an
  idempotency record (expires with it; a record's JSON never holds a raw newline);
* ``l:<tenant>``: sorted set (by lex) of the listing keys of the tenant's reservations
  (:func:`~policyengine.budgets.store.listing_key`); an entry outlives its reservation's
  hash until a reserve of that tenant finds it at the head, or a listing skips it;
* ``q:<len>:<rate limit><subject>``: ``"<tat_us> <tat_frac>"``, the theoretical arrival
  time of a rate-limit key (``policyengine.budgets.ratelimit``; expires a minute after
  it passes, when the key has long been at rest: the minute covers a caller whose
  explicit time runs behind the server's).

Amounts are integer quanta up to 10^18: the scripts add and compare them exactly, as
Lua numbers (doubles) while every value has at most 15 characters (sums of three stay
below 2^53), else as two base-10^9 limbs, and let Redis's ``HINCRBY`` keep them as 64-bit
integers. Times travel as the decimal strings Python wrote, never re-printed by Lua.

What a script is handed is built for it to read cheaply: the transaction's parts are one
flat JSON array of short strings (bucket keys made, and a reservation's and an
idempotency record's TTLs worked out, by Python), and the records it stores travel as
arguments of their own, never escaped inside that JSON; what it answers is a nil (done)
or a short text whose first letter says why not.

A lost dataset is refused, not silently restarted: each store remembers the layout id it
opened; when the server restarts without persistence (or the keys are flushed) the id
is gone and every call fails with ``store_unavailable`` (``dataset_lost``) instead of
granting budgets afresh. Nor does a store opened afterwards start one: a prefix without
a ``layout`` key is refused with ``store_uninitialized`` unless the store is opened with
``create=True`` (``?create=true``, ``policyengine store init URL``), an operator's act,
for a lost dataset as for a first one. A running store whose call finds another dataset
of its layout version in place of the one it opened (an operator created it after the
loss) adopts it and runs the call there: it never made one itself, so the new dataset
is the operator's choice (see docs/deployment.md).

Key names are made by the store and the scripts, not declared to Redis, so this store
needs a standalone Redis (or a cluster where the prefix is one hash slot, e.g.
``{budgets}:``).
"""

from __future__ import annotations

import math
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

import orjson

from policyengine._storeurl import REDIS_TIMEOUT
from policyengine.budgets._options import check_store_options
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
    compact_bytes,
    listing_key,
    record_from_json,
)

__all__ = ["LAYOUT_VERSION", "RedisStore"]

#: Version of the key layout above; the ``layout`` key starts with it. 3: idempotency
#: records are strings, the expiry set's scores whole milliseconds (2: hashes, seconds).
LAYOUT_VERSION = 3


#: A member of the expiry set ``x`` (score +inf: never due) longer than Redis keeps in a
#: listpack (``zset-max-listpack-value``, 64 bytes by default), so the set is a skiplist
#: from its first write and stays one: a listpack insert scans and compares every entry
#: (with the few dozen reservations a busy service holds, more than all the rest of the
#: insert), a skiplist's is O(log n). Not a reservation id (those are at most 64 ASCII
#: characters, and no id starts with a space). Performance only: the set is read by score.
_SKIPLIST = " keeps this set a skiplist: " + "-" * 60

# Shared by both scripts: ARGV[1] prefix, ARGV[2] layout id, ARGV[3] max skew ('' for
# none), ARGV[4] retention, ARGV[5] rolling span, ARGV[6] now, ARGV[7] floor(now * 1000);
# the script's own arguments from ARGV[8].
_PRELUDE = r"""
local P = ARGV[1]
local layout = redis.call('GET', P .. 'layout')
if layout ~= ARGV[2] then return 'L' .. (layout or '') end
local NOW_S = ARGV[6]
local now = tonumber(NOW_S)
if ARGV[3] ~= '' then
  local t = redis.call('TIME')
  local server = tonumber(t[1]) + tonumber(t[2]) / 1000000
  if math.abs(server - now) > tonumber(ARGV[3]) then
    return 'C' .. string.format('%.6f', server)
  end
end
local NULL = cjson.null

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
  if type(a) == 'number' then return string.format('%d', a) end
  if a[1] < 0 then return '-' .. S(neg(a)) end
  if a[1] == 0 then return string.format('%d', a[2]) end
  return string.format('%d%09d', a[1], a[2])
end
local function ttl(seconds)
  local t = math.ceil(seconds)
  if t < 1 then return 1 end
  return t
end
-- A calendar bucket expires 32 days after its window starts (its key ends in the start;
-- a rolling budget's, in 0: kept), set by the write that makes the key: one a guard of
-- this script found missing, or (no guard read it) one whose field the write left at
-- the amount it added, as it leaves a new key. Never moves an expiry once set.
local function expire_bucket(fresh, k, got, amount)
  local f = fresh[k]
  if f or (f == nil and got == tonumber(amount)) then
    fresh[k] = false
    local w = tonumber(string.match(k, ':(%d+)$'))
    if w and w > 0 then redis.call('EXPIRE', k, ttl(w + 2764800 - now), 'NX') end  -- 32 days
  end
end

-- Give back the holds of every reservation expired by now (scores are whole
-- milliseconds: one due in now's own millisecond is compared by its exact expiry).
local due = redis.call('ZRANGEBYSCORE', P .. 'x', '-inf', ARGV[7])
for _, id in ipairs(due) do
  local rk = P .. 'r:' .. id
  local r = redis.call('HMGET', rk, 'h', 'x')
  local x = tonumber(r[2])
  if not r[1] then
    redis.call('ZREM', P .. 'x', id)
  elseif not x or x <= now then
    for _, hold in ipairs(cjson.decode(r[1])) do
      redis.call('HINCRBY', hold[1], 'r', '-' .. hold[2])
    end
    redis.call('HSET', rk, 'held', '0')
    redis.call('EXPIRE', rk, ttl((x or now) + tonumber(ARGV[4]) - now))
    redis.call('ZREM', P .. 'x', id)
  end
end

local function rolling_spent(ek, since)
  local total = {0, 0}
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', ek, '(' .. since, '+inf')) do
    total = add(total, N(string.sub(m, string.find(m, ':', 1, true) + 1)))
  end
  return total
end
"""

# ARGV[8]: JSON array, per bucket: its key, since (null for a calendar bucket) and, for
# a rolling one, its spend set's key. Answers "spent reserved spent reserved ...".
_USAGE = _PRELUDE + r"""
local T = cjson.decode(ARGV[8])
local out = {}
local j = 1
while j <= #T do
  local v = redis.call('HMGET', T[j], 's', 'r')
  local since = T[j + 1]
  if since == NULL then
    out[#out + 1] = v[1] or '0'
    j = j + 2
  else
    out[#out + 1] = S(rolling_spent(T[j + 2], since))
    j = j + 3
  end
  out[#out + 1] = v[2] or '0'
end
return table.concat(out, ' ')
"""

# ARGV[8]: JSON array (strings unless said), in order (_encode writes it):
#   idempotency key | null, then if a key: its ttl;
#   require_active id | null;
#   number of guards, then each: bucket key, since | null, (if since: spend set key),
#     room (ceiling - add: the guard passes while spent + reserved <= room),
#     debt_above | null;
#   created id | null, then if one: status, expires_at, score, ttl, tenant,
#     listing key | null, number of holds, then each: bucket key, amount;
#   finished status | null, then if one: ttl;
#   extended expires_at | null, then if one: score, ttl;
#   number of spends, then each: key (a rolling one's spend set), rolling (boolean),
#     amount.
# ARGV[9]: the created record's JSON; ARGV[10]: the finished one's; ARGV[11]: the
# idempotency record to store, as stored (made by Python: no text is built here).
# Answers nil when applied, else: L<layout found>, C<server time>, I<idempotency record>,
# R<expires_at>\n<record> (either may be empty), G|D<index> <spent> <reserved>...
# (guard, debt: the usage of each guard up to the failing one), U (duplicate).
_APPLY = _PRELUDE + r"""
local T = cjson.decode(ARGV[8])
local ik, ittl = nil, nil
local j = 2
if T[1] ~= NULL then
  ik = P .. 'i:' .. T[1]
  local v = redis.call('GET', ik)
  if v then
    local nl = string.find(v, '\n', 1, true)
    if not nl then return redis.error_reply('malformed idempotency record') end
    if tonumber(string.sub(v, 1, nl - 1)) > now then return 'I' .. v end
  end
  ittl = T[2]
  j = 3
end
local rid = T[j]
j = j + 1
local own, own_holds = nil, nil  -- bucket key -> amount this reservation holds there
if rid ~= NULL then
  local rk = P .. 'r:' .. rid
  local r = redis.call('HMGET', rk, 'st', 'x', 'held', 'h')
  -- Not held while unexpired: a host whose clock is ahead expired it.
  if r[1] ~= 'active' or r[3] ~= '1' or tonumber(r[2]) <= now then
    return 'R' .. (r[2] or '') .. '\n' .. (redis.call('HGET', rk, 'd') or '')
  end
  own_holds = cjson.decode(r[4])
  own = {}
  for _, hold in ipairs(own_holds) do own[hold[1]] = hold[2] end
end
local spent_of, reserved_of = {}, {}
local fresh = {}  -- bucket key -> whether it did not exist (as a guard read it)
for i = 1, T[j] do
  local k, since = T[j + 1], T[j + 2]
  local ek = nil
  if since ~= NULL then
    ek = T[j + 3]
    j = j + 1
  end
  local room, debt = T[j + 3], T[j + 4]
  j = j + 4
  local v = redis.call('HMGET', k, 's', 'r')
  local sp, rs = v[1] or '0', v[2] or '0'
  fresh[k] = not v[1] and not v[2]
  local mine = own and own[k]
  local reason = nil
  if not ek and #sp < 16 and #rs < 16 and #room < 16
      and (debt == NULL or #debt < 16) and (not mine or #mine < 16) then
    -- Every value below 10^15: a sum of three stays exact in a double.
    local spent, reserved = tonumber(sp), tonumber(rs)
    if mine then reserved = reserved - tonumber(mine) end
    spent_of[i], reserved_of[i] = spent, reserved
    if debt ~= NULL and spent > tonumber(debt) then
      reason = 'D'
    elseif spent + reserved > tonumber(room) then
      reason = 'G'
    end
  else
    local spent, reserved = N(sp), N(rs)
    if ek then spent = rolling_spent(ek, since) end
    if mine then reserved = add(reserved, neg(N(mine))) end
    spent_of[i], reserved_of[i] = spent, reserved
    if debt ~= NULL and gt(spent, N(debt)) then
      reason = 'D'
    elseif gt(add(spent, reserved), N(room)) then
      reason = 'G'
    end
  end
  if reason then
    local out = {reason .. (i - 1)}
    for u = 1, i do
      out[#out + 1] = S(spent_of[u])
      out[#out + 1] = S(reserved_of[u])
    end
    return table.concat(out, ' ')
  end
end
j = j + 1
local cid, ca = T[j], j
if cid ~= NULL then
  if redis.call('EXISTS', P .. 'r:' .. cid) == 1 then
    return 'U'  -- never hold one reservation twice
  end
  j = j + 8 + 2 * T[j + 7]
else
  j = j + 1
end
local fin, fa = T[j], j
if fin ~= NULL then j = j + 2 else j = j + 1 end
local ext, xa = T[j], j
if ext ~= NULL then j = j + 3 else j = j + 1 end
-- Every check passed: apply every effect.
if rid ~= NULL then
  local rk = P .. 'r:' .. rid
  if fin ~= NULL then
    for _, hold in ipairs(own_holds) do
      redis.call('HINCRBY', hold[1], 'r', '-' .. hold[2])
    end
    redis.call('HSET', rk, 'st', fin, 'held', '0', 'd', ARGV[10])
    redis.call('ZREM', P .. 'x', rid)
    redis.call('EXPIRE', rk, T[fa + 1])
  elseif ext ~= NULL then
    redis.call('HSET', rk, 'x', ext)
    redis.call('ZADD', P .. 'x', T[xa + 1], rid)
    redis.call('EXPIRE', rk, T[xa + 2])
  end
end
if cid ~= NULL then
  local rk = P .. 'r:' .. cid
  local holds = {}
  local b = ca + 8
  for h = 1, T[ca + 7] do
    local k, amount = T[b], T[b + 1]
    expire_bucket(fresh, k, redis.call('HINCRBY', k, 'r', amount), amount)
    holds[h] = {k, amount}
    b = b + 2
  end
  local active = T[ca + 1] == 'active'
  redis.call('HSET', rk, 'st', T[ca + 1], 'x', T[ca + 2], 'd', ARGV[9],
             'h', cjson.encode(holds), 'held', active and '1' or '0')
  redis.call('EXPIRE', rk, T[ca + 4])
  if active then
    redis.call('ZADD', P .. 'x', T[ca + 3], cid)
    local listed = T[ca + 6]
    if listed ~= NULL then
      local lk = P .. 'l:' .. T[ca + 5]
      redis.call('ZADD', lk, 0, listed)
      -- Drop the oldest entries if their reservations are no longer kept (one EXISTS
      -- for both: when both are kept, as they mostly are, nothing more is asked).
      local head = redis.call('ZRANGE', lk, 0, 1)
      local keys = {}
      for i, m in ipairs(head) do keys[i] = P .. 'r:' .. string.sub(m, 19) end
      if redis.call('EXISTS', unpack(keys)) < #keys then
        for i, m in ipairs(head) do
          if redis.call('EXISTS', keys[i]) == 0 then redis.call('ZREM', lk, m) end
        end
      end
    end
  end
end
for s = 1, T[j] do
  local k, amount = T[j + 1], T[j + 3]
  if T[j + 2] then
    local seq = redis.call('INCR', P .. 'seq')
    local rolling = tonumber(ARGV[5])
    redis.call('ZADD', k, NOW_S, seq .. ':' .. amount)
    redis.call('ZREMRANGEBYSCORE', k, '-inf', string.format('%.3f', now - rolling))
    redis.call('EXPIRE', k, ttl(rolling))
  else
    expire_bucket(fresh, k, redis.call('HINCRBY', k, 's', amount), amount)
  end
  j = j + 3
end
if ik then redis.call('SET', ik, ARGV[11], 'EX', ittl) end
return false
"""


def _ttl(seconds: float) -> str:
    """Whole seconds a key lives (at least one), as the scripts' ``EXPIRE`` takes it."""
    t = math.ceil(seconds)
    return str(t) if t > 1 else "1"


def _score(at: float) -> str:
    """A time's score in the expiry set: whole milliseconds, rounded down (monotonic,
    so a score below ``now``'s means expired, and one above it, live)."""
    return str(math.floor(at * 1000))


#: A time as the shortest decimal that reads back as the same double (what ``repr``
#: writes, a few times faster; the scripts and Python only ever parse it).
_decimal = orjson.dumps


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


def _idempotency(key: str, value: str) -> IdempotencyRecord:
    """An ``i:`` value read back: ``<expires_at>\\n<result>\\n<fingerprint>``."""
    x, result, fingerprint = value.split("\n", 2)
    return IdempotencyRecord(key, fingerprint, record_from_json(result), float(x))


class RedisStore:
    """Budget store in Redis, shared by every process and host that opens ``url``.

    >>> store = RedisStore("redis://cache:6379/0", prefix="policyengine:budgets:")  # doctest: +SKIP

    ``prefix``: every key's prefix (one ledger per prefix). ``max_clock_skew``: seconds
    the ``now`` of a call may differ from the server's ``TIME`` before it is refused with
    ``clock_skew`` (``None``: trust the caller's clock, for tests that set the time).
    ``retention``: seconds finished reservations are kept. ``pool_size``: most
    connections per process for the budget scripts, and as many for the other calls.
    ``timeout``: seconds to wait for a connection and for each reply (``?timeout=`` in
    its URL; default 5): a server that stops answering fails the call with
    ``store_unavailable`` after it (a budgeted request is denied, never allowed). A URL
    that gives redis-py's ``socket_timeout`` or ``socket_connect_timeout`` beside a
    given ``timeout`` is refused (``invalid_store_url``); alone, each sets its wait.
    Raises ``BudgetStoreError`` ``store_unavailable`` when the
    server cannot be reached, ``store_incompatible`` when the prefix holds another
    layout, and ``store_uninitialized`` when it holds none: ``create=True`` makes it
    then (a first use, a test; after a restart without persistence, the operator's
    decision to accept the loss). Workers sharing a deployment's URL should not carry
    ``create``: one restarted after a loss would grant every budget afresh.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "policyengine:budgets:",
        max_clock_skew: float | None = 2.0,
        retention: float = 86400.0,
        pool_size: int = 16,
        timeout: float = REDIS_TIMEOUT,
        host_clock: Callable[[], float] = time.time,
        create: bool = False,
    ) -> None:
        try:
            import redis
        except ImportError as exc:  # pragma: no cover - the extra is part of dev
            raise BudgetStoreError(
                "store_unavailable", "RedisStore needs redis: pip install 'policyengine[redis]'"
            ) from exc
        check_store_options("RedisStore", prefix=prefix, max_clock_skew=max_clock_skew,
                            retention=retention, pool_size=pool_size, timeout=timeout,
                            create=create)
        from policyengine._storeurl import StoreUrlError, check_redis_url
        from policyengine.budgets._options import store_url_error
        try:
            check_redis_url(url, timeout_given=timeout is not REDIS_TIMEOUT)
        except StoreUrlError as exc:
            raise store_url_error(url, str(exc)) from None
        self.url = url
        self.prefix = prefix
        self.max_clock_skew = max_clock_skew
        self.retention = retention
        self.timeout = timeout
        self._skew = "" if max_clock_skew is None else repr(float(max_clock_skew))
        self._retention_s = float(retention)
        self._retention = repr(self._retention_s)
        self._retention_ttl = _ttl(self._retention_s)
        self._rolling = str(MAX_ROLLING_SECONDS + 60)
        #: Bucket keys by (budget, subject, window): made once, not per call.
        self._bkeys: dict[tuple[str, str, int], str] = {}
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
        self._packed: dict[str, tuple[str, bytes, bytes]] = {}
        self._recent = RecentReservations()
        self._layout = self._open_layout(create)
        self.clock = ServerClock(self.server_time, host=host_clock)
        """Host time corrected to the server's: the ledger's default clock."""

    def _open_layout(self, create: bool) -> str:
        """The dataset's layout id, checked; made first (``SET NX``: never over another
        host's) only with ``create``."""
        import redis
        key = self.prefix + "layout"
        fresh = f"{LAYOUT_VERSION}:{secrets.token_hex(8)}"
        try:
            if create:
                self._redis.set(key, fresh, nx=True)
            found = self._redis.get(key)
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc
        if found is None:
            raise BudgetStoreError(
                "store_uninitialized",
                f"redis prefix {self.prefix!r} holds no budget dataset. On first use, "
                "create it once: policyengine store init URL (or open the store with "
                "create=True). If it held one, the server lost it (a restart without "
                "persistence, a flush) with every spend recorded there: create a new "
                "one the same way only once you accept that loss; until then every host "
                "refuses budgeted calls rather than grant them afresh",
                {"reason": "no_dataset", "prefix": self.prefix},
            )
        if not isinstance(found, str) or found.split(":", 1)[0] != str(LAYOUT_VERSION):
            raise BudgetStoreError(
                "store_incompatible",
                f"redis prefix {self.prefix!r} holds budget layout {found!r}, this "
                f"policyengine reads version {LAYOUT_VERSION}: use another prefix",
            )
        try:
            self._redis.zadd(self.prefix + "x", {_SKIPLIST: math.inf})
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc
        return found

    def reinitialize(self) -> None:
        """Accept that the server lost this dataset (a restart without persistence, a
        flush): start an empty one, or adopt the one another host (or ``policyengine
        store init``) started. Until a new dataset exists, every store on the prefix
        refuses every call with ``store_unavailable`` (``dataset_lost``); once one
        does, running stores adopt it at their next call (see the module docstring)."""
        self._layout = self._open_layout(True)
        self._recent = RecentReservations()

    def _adopt(self, found: str) -> bool:
        """Take ``found``, the layout a script saw in place of the one this store opened,
        as this store's dataset when it is one of this layout version: made after the
        loss by an operator (``create``, ``reinitialize``, ``store init``), since no store
        makes one otherwise. False (refuse the call) when the dataset is simply gone."""
        if not found.startswith(f"{LAYOUT_VERSION}:") or found == self._layout:
            return False
        self._layout = found
        self._recent = RecentReservations()  # reservations of the lost dataset are gone
        return True

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

    def _run(self, script: Any, now: float, args: tuple[bytes, ...]) -> bytes | None:
        """One budget script's reply: its text, or None for Lua's ``false``. The command's
        fixed parts (the script, prefix, layout, skew, retention, rolling span) are packed
        once per layout; then ``now``, its millisecond and ``args``, in one format."""
        fixed = self._packed.get(script.sha)
        if fixed is None or fixed[0] != self._layout:
            head = _pack_args(("EVALSHA", script.sha, "0", self.prefix, self._layout,
                               self._skew, self._retention, self._rolling))
            fixed = self._packed[script.sha] = (
                self._layout, b"*%d\r\n%s" % (10 + len(args), head),
                b"$%d\r\n%s\r\n" * (2 + len(args)))
        at = _decimal(now)
        ms = b"%d" % math.floor(now * 1000)
        if len(args) == 4:
            a, b, c, d = args
            tail = fixed[2] % (len(at), at, len(ms), ms, len(a), a, len(b), b, len(c), c,
                               len(d), d)
        else:
            (a,) = args
            tail = fixed[2] % (len(at), at, len(ms), ms, len(a), a)
        text = self._eval.call(script, fixed[1] + tail)
        if (text is not None and text[:1] == b"L"
                and self._adopt(text[1:].decode("utf-8", "replace"))):
            return self._run(script, now, args)  # refused before it did anything
        return text

    def _bkey(self, budget: str, subject: str, window: int) -> str:
        """A bucket's key: ``b:<len>:<budget><subject>:<window>`` (the budget id's
        length in bytes first, so no subject can forge another budget's bucket)."""
        found = self._bkeys.get((budget, subject, window))
        if found is None:
            if len(self._bkeys) >= 4096:
                self._bkeys.clear()
            found = self._bkeys[budget, subject, window] = (
                f"{self.prefix}b:{len(budget.encode('utf-8', 'surrogatepass'))}:"
                f"{budget}{subject}:{window}")
        return found

    def _ekey(self, budget: str, subject: str) -> str:
        """A rolling budget's spend set: ``e:<len>:<budget><subject>``."""
        return (f"{self.prefix}e:{len(budget.encode('utf-8', 'surrogatepass'))}:"
                f"{budget}{subject}")

    def _encode(self, tx: Transaction, now: float) -> tuple[bytes, bytes, bytes, bytes]:
        """The apply script's arguments for ``tx`` (see ``_APPLY``): the flat JSON array of
        its parts, the created record, the finished record, the idempotency record's
        value (its result's JSON made once when it is the record written)."""
        idem = tx.idempotency
        t: list[Any] = [None] if idem is None else [idem.key, _ttl(idem.expires_at - now)]
        t.append(tx.require_active)
        guards = tx.guards
        t.append(len(guards))
        bkey = self._bkey
        for g in guards:
            b = g[0]
            debt = g[3]
            if b[3] is None:
                t += (bkey(b[0], b[1], b[2]), None, str(g[2] - g[1]),
                      None if debt is None else str(debt))
            else:
                t += (bkey(b[0], b[1], b[2]), _decimal(b[3]).decode(),
                      self._ekey(b[0], b[1]), str(g[2] - g[1]),
                      None if debt is None else str(debt))
        created = tx.create
        created_data = b""
        if created is None:
            t.append(None)
        else:
            created_data = compact_bytes(created)
            x = created.expires_at
            if created.status == ACTIVE:
                holds = [ln for ln in created.lines if ln[5]]
                t += (created.id, ACTIVE, _decimal(x).decode(), _score(x),
                      _ttl(x - now + self._retention_s), created.tenant or "",
                      listing_key(created.created_at, created.id), len(holds))
                for ln in holds:
                    t += (bkey(ln[0], ln[1], ln[2]), str(ln[5]))
            else:
                t += (created.id, created.status, _decimal(x).decode(), None,
                      self._retention_ttl, created.tenant or "", None, 0)
        fin = tx.finalize
        fin_data = b""
        if fin is None:
            t.append(None)
        else:
            fin_data = compact_bytes(fin)
            t += (fin.status, self._retention_ttl)
        ext = tx.extend_to
        if ext is None:
            t.append(None)
        else:
            t += (_decimal(ext).decode(), _score(ext), _ttl(ext - now + self._retention_s))
        spends = tx.spends
        t.append(len(spends))
        for s in spends:
            if s[3]:
                t += (self._ekey(s[0], s[1]), True, str(s[4]))
            else:
                t += (bkey(s[0], s[1], s[2]), False, str(s[4]))
        stored = b""
        if idem is not None:
            result = idem.result
            stored = b"%s\n%s\n%s" % (
                _decimal(idem.expires_at),
                fin_data if result is fin else created_data if result is created
                else compact_bytes(result),
                idem.fingerprint.encode("utf-8", "surrogatepass"))
        return compact_bytes(t), created_data, fin_data, stored

    def _refused(self, text: bytes, now: float) -> BudgetStoreError:
        """The error of a script's ``C<server time>`` (clock skew) or ``L<layout found>``
        (the dataset is gone) answer."""
        if text[:1] == b"C":
            server = float(text[1:])
            return BudgetStoreError(
                "clock_skew",
                f"this host's time is {now - server:+.3f} s from the budget store's, more "
                f"than the {self.max_clock_skew} s allowed: use the store's clock (the "
                "ledger's default) or fix the host clock (NTP)",
                {"skew": round(now - server, 3), "maxSkew": self.max_clock_skew},
            )
        found = text[1:].decode("utf-8", "replace")
        return BudgetStoreError(
            "store_unavailable",
            f"the budget data under redis prefix {self.prefix!r} is gone (found layout "
            f"{found!r}, opened {self._layout!r}): the server restarted without "
            "persistence or was flushed. Spend recorded there is lost; refusing rather than "
            "granting budgets afresh until an operator accepts the loss and creates a new "
            "dataset (policyengine store init URL, or reinitialize()); every store on "
            "the prefix then uses it from its next call",
            {"reason": "dataset_lost"},
        )

    # -- reads -------------------------------------------------------------------------

    def usage(self, buckets: tuple[Bucket, ...], now: float) -> tuple[Usage, ...]:
        t: list[str | None] = []
        for b in buckets:
            if b[3] is None:
                t += (self._bkey(b[0], b[1], b[2]), None)
            else:
                t += (self._bkey(b[0], b[1], b[2]), _decimal(b[3]).decode(),
                      self._ekey(b[0], b[1]))
        text = self._run(self._usage_script, now, (compact_bytes(t),))
        try:
            if text is None:
                raise ValueError("the usage script answered nothing")
            if text[:1] in (b"L", b"C"):
                raise self._refused(text, now)
            counts = text.split(b" ") if text else []
            if len(counts) != 2 * len(buckets):
                raise ValueError(f"{len(counts)} counts for {len(buckets)} buckets")
            return tuple([Usage(int(counts[i]), int(counts[i + 1]))
                          for i in range(0, len(counts), 2)])
        except ValueError as exc:
            raise _unavailable(f"unexpected reply from the usage script: {exc}") from exc

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
            value = self._redis.get(self.prefix + "i:" + key)
            if value is None:
                return None
            found = _idempotency(key, str(value))
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc
        except (ValueError, IndexError, TypeError) as exc:  # malformed: fail closed
            raise _unavailable(f"malformed idempotency record {key!r}: {exc}") from exc
        return None if found.expires_at <= now else found

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
            if refused == -2 and self._adopt(str(wait)):
                args[1] = self._layout  # refused before it did anything: run it there
                refused, wait, now = self._rate_script(args=args)
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc
        if refused == -1:
            raise self._refused(b"C%.6f" % (wait / 1e6),
                                now_us / 1e6)  # type: ignore[operator]
        if refused == -2:  # the layout the script found, in place of a wait
            raise self._refused(b"L" + str(wait).encode("utf-8", "replace"), 0.0)
        if refused == 0:
            return RateOutcome(True, -1, 0, int(now))
        return RateOutcome(False, int(refused) - 1, int(wait), int(now))

    # -- the one write -----------------------------------------------------------------

    def apply(self, tx: Transaction, now: float) -> Outcome:
        text = self._run(self._apply_script, now, self._encode(tx, now))
        if text is None:
            self._recent.note(tx)
            return OK
        try:
            return self._refusal(tx, text, now)
        except (ValueError, IndexError, TypeError) as exc:
            raise _unavailable(f"unexpected reply from the apply script: {exc}") from exc

    def _refusal(self, tx: Transaction, text: bytes, now: float) -> Outcome:
        """The outcome of an ``apply`` the script refused (its answer's first letter says
        why); anything else is ``ValueError``."""
        kind, body = text[:1], text[1:].decode("utf-8", "surrogatepass")
        if kind in (b"G", b"D"):
            counts = [int(n) for n in body.split(" ")]
            failed, pairs = counts[0], counts[1:]
            if len(pairs) != 2 * (failed + 1) or failed >= len(tx.guards):
                raise ValueError(f"usage of {len(pairs)} counts for guard {failed}")
            usages = tuple([Usage(pairs[i], pairs[i + 1]) for i in range(0, len(pairs), 2)])
            return Outcome(False, "guard" if kind == b"G" else "debt", failed, usages)
        if kind == b"I" and tx.idempotency is not None:
            return Outcome(False, "idempotency",
                           idempotency=_idempotency(tx.idempotency.key, body))
        if kind == b"R":
            self._recent.forget(tx.require_active)
            x, record = body.split("\n", 1)
            return Outcome(False, "reservation", reservation=_record(record, x))
        if kind == b"U" and not body:
            return Outcome(False, "duplicate")
        if kind in (b"L", b"C"):
            raise self._refused(text, now)
        raise ValueError(f"{text[:40]!r}")


# Rate limits: ARGV[1] prefix, ARGV[2] layout id, ARGV[3] now_us ('' for the server's
# TIME), ARGV[4] max skew in us ('' for none), ARGV[5] '1' to count the call, then per key
# (sorted) key, count, period_us, burst. Returns {refused index (1-based; 0 admitted),
# retry_after_us, now_us}, {-1, server_us, 0} for a skewed caller, {-2, layout found
# ('' for none), 0} when the dataset is not the one opened (the store adopts the layout
# found if an operator made it, and runs the script once more: no other command). Every
# number stays below 2**53 (exact in Lua's doubles).
_RATE = r"""
local P = ARGV[1]
local layout = redis.call('GET', P .. 'layout')
if layout ~= ARGV[2] then return {-2, layout or '', 0} end
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
