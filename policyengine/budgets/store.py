"""The :class:`BudgetStore` protocol: what a ledger backend must do, and nothing more.

The ledger does all the arithmetic (matching, windows, conversion, overage rules) and
hands the store plain integers. The store answers two kinds of call:

* reads: :meth:`~BudgetStore.usage`, :meth:`~BudgetStore.get_reservation`,
  :meth:`~BudgetStore.get_idempotency`, :meth:`~BudgetStore.list_reservations`;
* one write, :meth:`~BudgetStore.apply`, which evaluates every :class:`Guard` of a
  :class:`Transaction` and, only if all pass and its preconditions hold, applies all of
  its effects, in one atomic step.

A store on a database server may also offer ``live_reservation(id, now)``: a reservation
this process saw live, unexpired at ``now`` as far as it knows, or None, with no round
trip. The ledger builds commit, release and extend transactions from it; the store
re-checks the reservation inside ``apply`` (``require_active``), so a stale answer only
ever costs a refused apply (and the error the real state calls for).

``apply`` is the whole concurrency story: "check every budget, then debit every budget"
is a single store operation, so it maps onto one SQL transaction (SQLite ``BEGIN
IMMEDIATE``, PostgreSQL ``SERIALIZABLE`` or row locks ``FOR UPDATE``) or one Redis Lua
script. A new backend implements these five methods; the ledger does not change.

Semantics every store must implement exactly (``tests/test_budgets*.py`` run the same
suite against each store):

* *spent* of a calendar bucket ``(budget, subject, window)`` is the sum of its
  :class:`Spend` amounts; of a rolling bucket (``Bucket.since`` set), the sum of spends
  of ``(budget, subject)`` recorded at a time ``> since``.
* *reserved* is the sum of the amounts of lines of *live* reservations held on the
  bucket; a reservation is live while ``status == "active"`` and ``now < expires_at``.
  Expiry is a time comparison; sweeping expired rows is an optimisation.
* a guard passes when ``spent + reserved + add <= ceiling`` and, if ``debt_above`` is
  set, ``spent <= debt_above``. With ``require_active`` set, that reservation's own
  holds are left out of *reserved*.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple, Protocol

import orjson

__all__ = [
    "ACTIVE",
    "COMMITTED",
    "RELEASED",
    "Bucket",
    "BudgetStore",
    "Guard",
    "IdempotencyRecord",
    "Line",
    "Outcome",
    "RecentReservations",
    "ReservationRecord",
    "Spend",
    "Transaction",
    "Usage",
    "compact_bytes",
    "compact_json",
    "json_loads",
    "listing_key",
    "record_from_json",
    "record_to_json",
]

ACTIVE = "active"
COMMITTED = "committed"
RELEASED = "released"


class Bucket(NamedTuple):
    """One budget's counter for one subject in one window.

    ``window`` is the calendar window start (POSIX seconds), or 0 for a rolling window,
    whose spend is counted from ``since`` (exclusive) to now.
    """

    budget: str
    subject: str
    window: int
    since: float | None = None


class Usage(NamedTuple):
    """Quanta spent in, and reserved on, a bucket."""

    spent: int
    reserved: int


class Guard(NamedTuple):
    """Condition of a :class:`Transaction`: ``spent + reserved + add <= ceiling``."""

    bucket: Bucket
    add: int
    ceiling: int
    debt_above: int | None = None


class Line(NamedTuple):
    """One budget a reservation holds (or a spend charged), amounts in quanta."""

    budget: str
    subject: str
    window: int  # window start; 0 for a rolling window
    window_end: int  # 0 for a rolling window
    rolling: bool
    amount: int
    rate: str | None  # the conversion rate used, as a decimal string
    counts_call: bool  # a ``calls`` line counting the operation itself (1 per op)


class ReservationRecord(NamedTuple):
    """A reservation as stored. ``status`` is active, committed or released; "expired"
    is derived (``active`` and ``now >= expires_at``)."""

    id: str
    status: str
    principal: str
    permission: str
    unit: str | None
    amount: str
    acting_for: str | None
    tenant: str | None
    created_at: float
    expires_at: float
    lines: tuple[Line, ...]
    committed: tuple[int, ...] | None = None
    committed_amount: str | None = None
    committed_unit: str | None = None
    finalized_at: float | None = None
    #: Seconds after the lease ends during which a commit is still accepted; the hold
    #: lasts as long, so ``expires_at`` (what stores compare) is the lease end plus this.
    grace: float = 0.0
    #: ``provider/model`` of a usage priced by the price table (money and tokens lines).
    priced: str | None = None
    #: A commit whose charge was capped at what was available (``allow_if_available``).
    capped: bool = False
    #: The overage policy a commit follows when it names none (set at reserve).
    overage: str | None = None
    #: Text the caller attached at reserve and reads back (a wire keeps its request's
    #: subject, action, metadata and idempotency key there); opaque to the ledger.
    note: str | None = None


class IdempotencyRecord(NamedTuple):
    """What an idempotent operation returned, kept until ``expires_at``."""

    key: str
    fingerprint: str
    result: ReservationRecord
    expires_at: float


class Spend(NamedTuple):
    """Add ``amount`` quanta to the spent total of a bucket (rolling: recorded at now)."""

    budget: str
    subject: str
    window: int
    rolling: bool
    amount: int


class Transaction(NamedTuple):
    """Everything one ledger operation changes; applied all-or-nothing by the store.

    ``require_active``: id of a reservation that must be live at ``now``.
    ``create``: a new reservation (its lines are held if it is active).
    ``finalize``: the new state of ``require_active`` (committed / released); its holds
    are dropped. ``extend_to``: new ``expires_at`` of ``require_active``.
    ``idempotency``: stored only if no live record has the same key.
    """

    guards: tuple[Guard, ...] = ()
    require_active: str | None = None
    create: ReservationRecord | None = None
    finalize: ReservationRecord | None = None
    extend_to: float | None = None
    spends: tuple[Spend, ...] = ()
    idempotency: IdempotencyRecord | None = None


class Outcome(NamedTuple):
    """Result of :meth:`BudgetStore.apply`.

    ``reason`` when not ``ok``: ``"guard"`` or ``"debt"`` (``index`` is the failing guard;
    ``usage[failed]`` its usage), ``"reservation"`` (``reservation`` is its current state
    or None), or ``"idempotency"`` (``idempotency`` is the existing record).
    """

    ok: bool
    reason: str | None = None
    failed: int = -1
    usage: tuple[Usage, ...] = ()
    reservation: ReservationRecord | None = None
    idempotency: IdempotencyRecord | None = None


OK = Outcome(True)


class BudgetStore(Protocol):
    """Backend of a :class:`~policyengine.budgets.Ledger`. See the module docstring."""

    def usage(self, buckets: tuple[Bucket, ...], now: float) -> tuple[Usage, ...]:
        """Current usage of each bucket (read-only)."""
        ...

    def get_reservation(self, reservation_id: str) -> ReservationRecord | None:
        """The stored reservation, or None (never existed, or purged after retention)."""
        ...

    def get_idempotency(self, key: str, now: float) -> IdempotencyRecord | None:
        """The unexpired idempotency record for ``key``, or None."""
        ...

    def list_reservations(self, tenant: str, after: str | None, limit: int
                          ) -> list[ReservationRecord]:
        """Up to ``limit`` stored reservations of ``tenant`` (``""``: made without one)
        whose :func:`listing_key` is above ``after`` (None: from the first), in key
        order: every reservation created ``active`` (by ``reserve``; not the spends
        ``record`` writes) and still kept (read-only)."""
        ...

    def apply(self, tx: Transaction, now: float) -> Outcome:
        """Check every guard and precondition; if all hold, apply every effect. Atomic."""
        ...

    def close(self) -> None:
        """Release resources (connections). Idempotent."""
        ...


# JSON encoding of records, shared by stores that keep them as text.
#
# orjson writes and reads a record in about 2 us where the standard library takes 10
# (encode) and 7 (decode), several times per reserve + commit. What orjson refuses to
# write (an integer past 64 bits, a lone surrogate) is written by the standard library.
# What orjson refuses to read is read by the standard library, and so is anything it may
# have read differently: it reads an integer literal past 64 bits as a float, so a
# result holding a float of magnitude 2**63 or more is read again by ``json.loads``.
# Every text reads back exactly as ``json.loads`` reads it.

#: Compact JSON text of a value, with the standard library's encoder as the fallback
#: (built once: ``json.dumps`` with arguments builds an encoder per call).
_stdlib_json = json.JSONEncoder(separators=(",", ":")).encode
_new = tuple.__new__
_dumps = orjson.dumps
_loads = orjson.loads
_OrjsonDecodeError = orjson.JSONDecodeError
_BIG = 2.0**63


def _suspect(value: Any) -> bool:
    """Whether an orjson result holds a float that may have been an integer literal."""
    kind = type(value)
    if kind is float:
        return not -_BIG < value < _BIG
    if kind is list:
        for item in value:
            if _suspect(item):
                return True
    elif kind is dict:
        for item in value.values():
            if _suspect(item):
                return True
    return False


def _as_array(value: object) -> tuple[Any, ...]:
    """orjson's ``default``: a named tuple (a record, a line) as an array, as the standard
    library writes it; anything else is refused as the standard library refuses it."""
    if isinstance(value, tuple):
        return tuple(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def compact_bytes(value: Any) -> bytes:
    """Compact JSON of ``value`` as UTF-8 bytes (tuples and named tuples as arrays)."""
    try:
        return _dumps(value, default=_as_array)
    except TypeError:  # orjson.JSONEncodeError is one: huge integers, lone surrogates
        return _stdlib_json(value).encode("utf-8", "surrogatepass")


def compact_json(value: Any) -> str:
    """Compact JSON text of ``value`` (tuples and named tuples as arrays)."""
    try:
        return _dumps(value, default=_as_array).decode()
    except TypeError:
        return _stdlib_json(value)


def json_loads(text: str | bytes) -> Any:
    """``json.loads``, read by orjson where that reads the same."""
    try:
        value = _loads(text)
    except _OrjsonDecodeError:  # e.g. an escaped lone surrogate, which json.loads keeps
        return json.loads(text)
    return json.loads(text) if _suspect(value) else value


def record_to_json(record: ReservationRecord) -> str:
    """Compact JSON array of a record's fields (tuples encode as arrays; amounts are
    integers or decimal strings, never floats)."""
    return compact_json(record)


#: Fields added after the first layout, with their defaults: a record stored before they
#: existed reads with these.
_LATER_FIELDS = (0.0, None, False, None, None)
_FIELDS = len(ReservationRecord._fields)


def record_from_json(text: str) -> ReservationRecord:
    try:
        data: list[Any] = _loads(text)
    except _OrjsonDecodeError:
        data = json.loads(text)
    else:
        # Its integers: each line's window, window end and amount, and what was
        # committed (floats elsewhere are times, which orjson reads as json does).
        for line in data[10]:
            if type(line[2]) is not int or type(line[3]) is not int or type(
                    line[5]) is not int:
                data = json.loads(text)
                break
        else:
            if data[11] is not None and _suspect(data[11]):
                data = json.loads(text)
    if len(data) < _FIELDS:
        data.extend(_LATER_FIELDS[len(data) - _FIELDS:])
    data[10] = tuple([_new(Line, line) for line in data[10]])
    if data[11] is not None:
        data[11] = tuple(data[11])
    return _new(ReservationRecord, data)


def listing_key(created_at: float, reservation_id: str) -> str:
    """Where a reservation sorts in :meth:`BudgetStore.list_reservations`: its creation
    time in whole microseconds (17 digits), ``:``, its id. Text, so every store orders
    it alike (bytes, SQL ``text``, a Redis sorted set by lex), and it is the listing's
    cursor."""
    return f"{int(created_at * 1e6):017d}:{reservation_id}"


#: Longest listing key (an id is at most 64 characters).
LISTING_KEY_MAX = 18 + 64


class RecentReservations:
    """The reservations this process created on a shared store and has not seen finish,
    as it last saw them: commit, release and extend then skip a read before their write
    (the store's ``live_reservation``). The write re-checks the reservation on the server,
    so a stale entry costs only a refused write with the right error. Bounded."""

    __slots__ = ("_by_id",)
    LIMIT = 100_000

    def __init__(self) -> None:
        self._by_id: dict[str, ReservationRecord] = {}

    def get(self, reservation_id: str) -> ReservationRecord | None:
        return self._by_id.get(reservation_id)

    def live(self, reservation_id: str, now: float) -> ReservationRecord | None:
        """The reservation if it is live by this process's last view."""
        rec = self._by_id.get(reservation_id)
        return rec if rec is not None and rec.expires_at > now else None

    def forget(self, reservation_id: str | None) -> None:
        if reservation_id is not None:
            self._by_id.pop(reservation_id, None)

    def note(self, tx: Transaction) -> None:
        """Take in what an applied ``tx`` did: an extension moves the expiry, a commit or
        release finishes the reservation, a new active reservation is kept."""
        recent = self._by_id
        rid = tx.require_active
        if rid is not None:
            if tx.extend_to is not None and rid in recent:
                recent[rid] = recent[rid]._replace(expires_at=tx.extend_to)
            else:
                recent.pop(rid, None)
        created = tx.create
        if created is not None and created.status == ACTIVE:
            if len(recent) >= self.LIMIT:
                recent.clear()
            recent[created.id] = created
