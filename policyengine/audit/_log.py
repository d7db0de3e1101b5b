"""The decision log: a bounded queue the hot path appends to, a writer thread that builds,
masks, chains and encodes records, and a shipping thread that hands them to the sink.

The hot path only captures references (the immutable decision, a shallow copy of the
context, the token, the policy's :class:`LogView`) and appends one tuple to a
``collections.deque``; everything else happens on the writer thread. When the queue is
full or the sink is failing, the configured ``overflow`` policy decides, and nothing is
ever lost without being counted (docs/decision-log.md, "Never silent"):

* ``block``: the caller waits for room (backpressure); with ``block_timeout`` a caller
  that waited that long gets a denial instead (fail closed): that long in all for one
  decision, the wait of :meth:`DecisionLog.refusal` counting toward the wait of
  :meth:`DecisionLog.decision` that follows it, and for everything a thread does inside
  :meth:`DecisionLog.one_wait` (an AuthZEN search: a run per candidate, then its
  record); each such caller that waited counts once in ``stats()["blocked"]``;
* ``spill``: batches the sink cannot take go to a local spill file, shipped (in order)
  once the sink is back; callers wait only if even the spill cannot keep up;
* ``deny``: no decision without a record: while the queue is full or the sink failing or
  stalled, decisions are denied (``decision_log_unavailable``); the denials themselves
  are recorded when there is room, else counted;
* ``drop``: only when chosen: a record that does not fit is dropped at once (nobody
  waits, whatever ``block_timeout`` says), counted in :meth:`DecisionLog.stats` and in
  the ``dropped`` field of the next record written.

An operation (:meth:`DecisionLog.event`) already happened and cannot be denied: under
``block`` and ``spill`` one that finds no room within ``block_timeout`` (``stall_after``
under ``deny``) is dropped and counted the same way; under ``drop`` it is dropped at
once, as a decision's record is.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from time import perf_counter_ns
from typing import Any, Final, Literal

from policyengine.audit._chain import ZERO_HASH, encode, seal, sign_checkpoint
from policyengine.audit._record import LogView, decision_record, event_record
from policyengine.audit._sinks import Sink, sink_from_url
from policyengine.audit.errors import DecisionLogError
from policyengine.decision import Decision, ToolDecision

__all__ = ["INGEST_KINDS", "OVERFLOW_POLICIES", "DecisionLog", "Overflow"]

Overflow = Literal["block", "spill", "deny", "drop"]
OVERFLOW_POLICIES: Final = ("block", "spill", "deny", "drop")

#: What :meth:`DecisionLog.ingest` accepts per source: the event kinds of each wire;
#: ``custom`` is an event whose wire kind the source does not define (kept as sent).
INGEST_KINDS: Final[Mapping[str, frozenset[str]]] = {
    # tracengent: an event's ``type`` (POST /v1/ingest/events), or a trace close.
    "tracengent": frozenset({"action", "tool_call", "llm_call", "decision", "error",
                             "lifecycle", "trace.close", "custom"}),
    # actguard's event taxonomy (an envelope's ``name``).
    "actguard": frozenset({"run.start", "run.end", "llm.usage", "tool.invoke",
                           "tool.failure", "guard.blocked", "guard.intervention",
                           "budget.limit_exceeded", "budget.blocked", "custom"}),
    # agent-ledger: an event's ``type``, and its sessions.
    "agent-ledger": frozenset({"llm_call", "tool_call", "tool_result", "session.start",
                               "session.end", "custom"}),
}

# A queued item is a tuple of 7 (a decision: kind, handed-over ``perf_counter_ns``,
# started ``perf_counter_ns``, decision, input, token, view) or of 4 (an operation: kind,
# ``perf_counter_ns``, fields, view). The hot path reads one clock; the writer turns that
# reading into wall-clock time once per batch (:meth:`DecisionLog._encode`).
_DECISION_ITEM: Final = 7
#: A batch's wall-clock reading is taken between two monotonic ones at most this far
#: apart (else read again, up to :data:`_CLOCK_TRIES` times): see ``_wall_offset``.
_CLOCK_GAP_NS: Final = 100_000
_CLOCK_TRIES: Final = 4

_live: weakref.WeakSet[DecisionLog] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:  # records still queued at exit are written, not lost
    for log in list(_live):
        with contextlib.suppress(Exception):
            log.close(timeout=5.0)


def _seconds(value: object) -> bool:
    return type(value) in (int, float) and 0 <= value < math.inf  # type: ignore[operator]


def _check_options(block_timeout: object, stall_after: object, retry_backoff: object,
                   max_retry_backoff: object, spill_path: object, keys: object,
                   clock_ns: object) -> None:
    """Refuse an option of the wrong kind when the log is made: its threads would fail
    on it later, with nothing to report to."""
    for name, value in (("stall_after", stall_after), ("retry_backoff", retry_backoff),
                        ("max_retry_backoff", max_retry_backoff)):
        if not _seconds(value):
            raise DecisionLogError("invalid_log_config", f"{name} must be a number of "
                                   "seconds >= 0")
    if block_timeout is not None and not _seconds(block_timeout):
        raise DecisionLogError("invalid_log_config", "block_timeout must be None or a "
                               "number of seconds >= 0")
    if spill_path is not None and not isinstance(spill_path, (str, os.PathLike)):
        raise DecisionLogError("invalid_log_config", "spill_path must be a path, not "
                               f"{type(spill_path).__name__}")
    if not callable(clock_ns):
        raise DecisionLogError("invalid_log_config", "clock_ns must be a callable returning "
                               "nanoseconds")
    if keys is not None:
        from policyengine.tokens.keys import KeySet
        if not isinstance(keys, KeySet):
            raise DecisionLogError("invalid_log_config", "keys must be a KeySet or None, "
                                   f"not {type(keys).__name__}")


class DecisionLog:
    """A decision log over one sink.

    >>> records = []
    >>> log = DecisionLog(CallbackSink(records.append))        # doctest: +SKIP

    ``sink``: a :class:`Sink` or a URL (``file:///path/decisions.jsonl`` or a path,
    ``stdout:``, ``http(s)://collector/...``). ``overflow``: ``block`` (default),
    ``spill``, ``deny`` or ``drop``. ``capacity``: records the queue holds.
    ``batch_size``: records per sink write. ``spill_path``: the spill file (default:
    beside a file sink; ``spill`` needs one), also where :meth:`close` leaves what the
    sink did not take in time. ``block_timeout``: how long a caller may wait for room,
    in all for one decision (None: as long as it takes; never under ``drop``, which waits
    for nothing). ``stall_after``: seconds a
    sink write may take before it counts as stalled. ``checkpoint_every``: records
    between signed checkpoints. ``keys``: the ``KeySet`` that signs checkpoints (an
    engine gives its own when this is None).
    """

    def __init__(self, sink: Sink | str, *, overflow: Overflow = "block",
                 capacity: int = 65_536, batch_size: int = 1024,
                 spill_path: str | os.PathLike[str] | None = None,
                 spill_max_bytes: int = 1 << 30, block_timeout: float | None = None,
                 stall_after: float = 1.0, checkpoint_every: int = 10_000,
                 keys: Any = None, retry_backoff: float = 0.05, max_retry_backoff: float = 2.0,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        if not isinstance(overflow, str) or overflow not in OVERFLOW_POLICIES:
            raise DecisionLogError("invalid_log_config", f"overflow must be one of "
                                   f"{', '.join(OVERFLOW_POLICIES)}, not {overflow!r}"[:300])
        for name, value in (("capacity", capacity), ("batch_size", batch_size),
                            ("checkpoint_every", checkpoint_every),
                            ("spill_max_bytes", spill_max_bytes)):
            if type(value) is not int or value < 1:
                raise DecisionLogError("invalid_log_config", f"{name} must be an int >= 1")
        _check_options(block_timeout, stall_after, retry_backoff, max_retry_backoff,
                       spill_path, keys, clock_ns)
        if isinstance(sink, str):
            sink = sink_from_url(sink)
        elif not all(callable(getattr(sink, m, None)) for m in ("write", "close")):
            raise DecisionLogError("invalid_log_config", "sink must be a Sink (write(lines), "
                                   f"close()) or a sink URL, not {type(sink).__name__}")
        self.sink = sink
        #: The policy in force (revision, ``log redact`` rules): the engine sets it on
        #: load and reload; records offered without their own view use it.
        self.view: LogView | None = None
        self.overflow: Overflow = overflow
        self.keys = keys
        self._capacity = capacity
        self._batch = batch_size
        self._block_timeout = block_timeout
        self._stall_after = stall_after
        self._checkpoint_every = checkpoint_every
        self._backoff = (retry_backoff, max_retry_backoff)
        self._clock_ns = clock_ns
        self._queue: deque[tuple[Any, ...]] = deque()
        self._wake = threading.Event()
        self._idle = False
        self._open = True   # False: closed, or (deny) the sink is failing or stalled
        self._closed = False
        self._stopped = False  # the writer has taken its last record (set under _lock)
        self._close_lock = threading.Lock()  # one close() at a time
        self._sink_closed = False
        #: Notified by close() when it sets the give-up time: wakes a retry's backoff.
        self._closing = threading.Condition(threading.Lock())
        self._lock = threading.Lock()               # counters of the slow paths
        self._stall_lock = threading.Lock()         # a write's end against the stall mark
        self._room = threading.Condition(self._lock)  # callers waiting for room
        self._waiting = 0
        #: Per thread: ``last``, the last wait of :meth:`refusal` (``perf_counter_ns``
        #: when it began, nanoseconds waited); the decision handed over next on that
        #: thread (one that started before the wait began) waits only what is left of
        #: ``block_timeout`` (:meth:`_left`): one decision waits that long in all.
        #: ``scope``, inside :meth:`one_wait`: (``perf_counter_ns`` when it began, the
        #: ``time.monotonic()`` deadline of every wait in it, or None). ``counted``:
        #: ``perf_counter_ns`` of the last wait counted in ``blocked`` (:meth:`_first`).
        self._waited = threading.local()
        self._progress = threading.Condition()
        self._busy = False
        # Counters (docs/decision-log.md, "Metrics").
        self._taken = 0
        self._produced = 0
        self._written = 0
        self._spilled = 0
        self._dropped = 0
        self._dropped_unreported = 0
        self._denied = 0
        self._unrecorded_denials = 0
        self._blocked = 0
        self._sink_errors = 0
        self._stalls = 0
        self._checkpoints = 0
        self._record_errors = 0
        self._failing = False
        self._stalled = False
        self._write_started = 0.0
        # The chain.
        self._seq = 0
        self._prev = ZERO_HASH
        self._since_checkpoint = 0
        self.log_id = os.urandom(8).hex()
        resumed = None
        resume = getattr(sink, "resume", None)
        if callable(resume):
            resumed = resume()
        # Shipping: the writer hands batches over; spill keeps order while the sink lags.
        self._ship: queue.Queue[tuple[list[bytes], int] | None] = queue.Queue(maxsize=4)
        self._spill_lock = threading.Lock()
        if spill_path is None and isinstance(getattr(sink, "path", None), Path):
            spill_path = sink.path.with_suffix(".spill.jsonl")  # type: ignore[attr-defined]
        if spill_path is None and overflow == "spill":
            raise DecisionLogError("invalid_log_config", "overflow='spill' needs a "
                                   "spill_path (a file sink has one beside it)")
        self._has_spill = spill_path is not None
        self._spill_path = Path(spill_path if spill_path is not None else os.devnull)
        self._spill_max = spill_max_bytes
        self._spill_offset = 0
        self._spill_lines = 0
        # A spill left by an earlier run (any policy) is shipped before anything new.
        self._spilling = self._has_spill and self._spill_path.exists() \
            and self._spill_path.stat().st_size > 0
        if self._spilling:
            with open(self._spill_path, "rb") as f:
                self._spill_lines = sum(1 for _ in f)
        self._spill_size = self._spill_path.stat().st_size if self._spilling else 0
        # At close, lines the sink will not be asked to take, for the spill (_rescue):
        # the shipper's batch whose write failed (older than anything spilled) and the
        # writer's lines it never handed over (newer than anything spilled or shipped).
        self._rescued: list[bytes] = []
        self._kept: list[bytes] = []
        self._rescue_lock = threading.Lock()
        if resumed is not None:
            self._seq, self._prev = resumed
        self._queue.append(("log.resume" if resumed is not None else "log.start",
                            perf_counter_ns(),
                            {"log": {"id": self.log_id, "overflow": overflow}}, None))
        self._writer = threading.Thread(target=self._run_writer, name="decision-log-writer",
                                        daemon=True)
        self._shipper = threading.Thread(target=self._run_shipper,
                                         name="decision-log-shipper", daemon=True)
        self._writer.start()
        self._shipper.start()
        _live.add(self)

    # ------------------------------------------------------------------ hot path
    def decision(self, kind: str, decision: Decision | ToolDecision, inp: dict[str, Any],
                 token: Any, view: LogView | None, started_ns: int
                 ) -> Decision | ToolDecision:
        """Record one decision; returns what the caller gets: ``decision``, or a denial
        when the ``deny`` policy refuses a decision it cannot record."""
        # One clock read and one tuple: the time stamp and the latency are worked out
        # from it by the writer. The decision id is made here, once, before the caller
        # can read it: made on the writer's thread, the two could make two ids.
        item = (kind, perf_counter_ns(), started_ns, decision, inp, token, view)
        decision.decision_id  # noqa: B018
        q = self._queue
        if self._open and len(q) < self._capacity:
            q.append(item)
            if self._idle:
                self._wake.set()
            if self._closed and self._orphaned():
                return self._deny(decision, item, record=False)
            return decision
        return self._overflowing(item, started_ns)

    def check(self, decision: Decision | ToolDecision, started_ns: int | None = None
              ) -> Decision | ToolDecision:
        """What :meth:`decision` would return for ``decision`` now, recording nothing
        (a denial it gives is not counted in ``denied``): for a dry run (``explain``), so
        that it is denied exactly when the log would refuse the real one. Under
        ``block`` with the queue full it waits for room as a caller would (up to
        ``block_timeout``; with ``started_ns``, what :meth:`decision` would pass, less
        what :meth:`refusal` already waited for this run), taking none; the wait counts
        in ``blocked`` unless this run's question already did."""
        if self._open and len(self._queue) < self._capacity:
            return decision
        refused = self._refused(
            self._capped(self._block_timeout) if started_ns is None
            else self._left(started_ns), started_ns)
        return decision if refused is None else self._denial(decision)

    def refusal(self) -> str | None:
        """None when :meth:`decision` would take a decision now; else why it would refuse
        it (the reason of its ``decision_log_unavailable`` denial). Records nothing;
        under ``block`` with the queue full it waits for room as a caller would (up to
        ``block_timeout``, or what is left of it inside :meth:`one_wait`), taking none,
        and the wait counts in ``blocked`` (once for the decision it is asked for). The
        engine's pipeline asks this before a run takes anything (a rate-limit call, an
        approval's use, a new approval request), so a decision the log refuses has
        taken nothing. A log that fails between this answer and :meth:`decision` still
        refuses the decision then (fail closed), after the run took what it took. The
        time waited here counts toward ``block_timeout`` for the :meth:`decision` that
        follows on this thread: one decision waits at most ``block_timeout`` in all."""
        if self._open and len(self._queue) < self._capacity:
            return None
        began = time.perf_counter_ns()
        refused = self._refused(self._capped(self._block_timeout), None)
        self._waited.last = (began, time.perf_counter_ns() - began)
        return refused

    def _refused(self, timeout: float | None, since_ns: int | None) -> str | None:
        """:meth:`refusal` with the queue full or the log not open, waiting (under
        ``block``) up to ``timeout`` for room; ``since_ns``: when the caller began, as
        :meth:`_first` takes it."""
        if self._closed or self.overflow == "deny":
            return self._refusal_reason()
        if self.overflow == "drop" or self._wait_for_room(None, timeout, since_ns):
            return None
        return self._refusal_reason()

    def _left(self, started_ns: int) -> float | None:
        """What is left of ``block_timeout`` for the decision started at ``started_ns``
        (``perf_counter_ns``): less what :meth:`refusal` waited on this thread since,
        and no more than what is left inside :meth:`one_wait`."""
        timeout = self._block_timeout
        last: tuple[int, int] | None = getattr(self._waited, "last", None)
        if timeout is None or last is None or last[0] < started_ns:
            return self._capped(timeout)
        return self._capped(max(0.0, timeout - last[1] / 1e9))

    @contextlib.contextmanager
    def one_wait(self) -> Iterator[None]:
        """Inside it, every wait of this thread for room (each run's question, a dry
        run's check, a hand-over, an event under ``block`` or ``spill``) shares one
        ``block_timeout``, counted from when it was entered: a request that runs many
        decisions (an AuthZEN search, one run per candidate and then its record) waits
        at most that long in all, as one decision does, and counts once in
        ``blocked``. Entered again inside itself, the outer one holds."""
        w = self._waited
        if getattr(w, "scope", None) is not None:
            yield
            return
        timeout = self._block_timeout
        w.scope = (time.perf_counter_ns(),
                   None if timeout is None else time.monotonic() + timeout)
        try:
            yield
        finally:
            w.scope = None

    def _capped(self, timeout: float | None) -> float | None:
        """``timeout``, no more than what is left of this thread's :meth:`one_wait`."""
        scope: tuple[int, float | None] | None = getattr(self._waited, "scope", None)
        if scope is None or scope[1] is None:
            return timeout
        left = max(0.0, scope[1] - time.monotonic())
        return left if timeout is None else min(timeout, left)

    def _first(self, since_ns: int | None) -> bool:
        """Whether a wait beginning now is the first of its caller (then it is counted
        in ``blocked``, and marked): a caller is one call (``since_ns`` None), one
        decision from the question before its run to its hand-over (``since_ns``: when
        the run began, ``perf_counter_ns``), or everything inside :meth:`one_wait`."""
        w = self._waited
        scope: tuple[int, float | None] | None = getattr(w, "scope", None)
        if scope is not None:
            since_ns = scope[0]
        counted: int | None = getattr(w, "counted", None)
        if since_ns is not None and counted is not None and counted >= since_ns:
            return False
        w.counted = time.perf_counter_ns()
        return True

    def _refusal_reason(self) -> str:
        if self._closed:
            return "the decision log is closed: denied"
        return ("the decision log cannot record this decision (its sink is failing or "
                "full): denied, as the log's 'deny' policy says")

    def event(self, kind: str, fields: Mapping[str, Any], view: LogView | None = None
              ) -> bool:
        """Record an operation (``budget.reserve``, ``approval.approve``,
        ``token.revoke``, ``policy.reload`` ...): ``fields`` become the record's members
        (credentials masked). Returns False when it could not be recorded (counted as
        dropped: an operation already done cannot be denied)."""
        item = (kind, perf_counter_ns(), dict(fields), view or self.view)
        q = self._queue
        if self._open and len(q) < self._capacity:
            q.append(item)
            if self._idle:
                self._wake.set()
            if self._closed and self._orphaned():
                return self._drop(1)
            return True
        if self.overflow == "drop":  # never waits: "drop" chose losing a record (counted)
            return self._drop(1)     # over slowing the caller, whatever block_timeout says
        return self._wait_for_room(item, self._capped(self._block_timeout)
                                   if self.overflow != "deny" else self._stall_after,
                                   None) or self._drop(1)

    def ingest(self, source: str, kind: str, event: Mapping[str, Any], *,
               principal: str | None = None, view: LogView | None = None) -> bool:
        """Record an event received from an agent SDK (``source``: ``tracengent``,
        ``actguard``, ``agent-ledger``) with its ``kind`` (:data:`INGEST_KINDS`).

        Raises ``DecisionLogError("invalid_event")`` for an unknown source or kind or an
        event that is not a JSON object; the public hook every wire calls.
        """
        kinds = INGEST_KINDS.get(source)
        if kinds is None:
            raise DecisionLogError("invalid_event", f"unknown event source {source!r}: "
                                   f"one of {', '.join(sorted(INGEST_KINDS))}")
        if kind not in kinds:
            raise DecisionLogError("invalid_event", f"unknown {source} event kind {kind!r}")
        if not isinstance(event, Mapping):
            raise DecisionLogError("invalid_event", "an event is a JSON object")
        return self.event("event", {"source": source, "event_kind": kind,
                                    "principal": principal, "event": dict(event)}, view)

    # ------------------------------------------------------------------ slow paths
    def _overflowing(self, item: tuple[Any, ...], started_ns: int
                     ) -> Decision | ToolDecision:
        decision = item[3]
        if self._closed:
            return self._deny(decision, item, record=False)
        policy = self.overflow
        if policy == "drop":
            self._drop(1)
            return decision  # type: ignore[no-any-return]
        if policy == "deny":
            return self._deny(decision, item, record=True)
        if self._wait_for_room(item, self._left(started_ns), started_ns):
            return decision  # type: ignore[no-any-return]
        return self._deny(decision, item, record=False)

    def _orphaned(self) -> bool:
        """Whether a record just appended without the lock will never be written; asked
        by a caller that found the log open, appended, and then found it closed.

        The hot path appends without the lock, after reading ``_open``: a ``close()``
        may run between that read and the append, and its writer stop on an empty queue
        before the append lands; the record would then sit in a queue nobody reads,
        neither written nor counted, while its caller got its decision. The writer
        stops only under the lock, after it read ``_closed`` and then, under the lock,
        the queue empty (:meth:`_stop`). So, under the lock: if the writer has not
        stopped, it has yet to look at the queue and will take this record (True would
        count it twice: written and refused); if it has, the record came after its last
        look, and the caller must refuse it (a decision) or count it as dropped (an
        operation). Every record in the queue then is such a one, whose caller does the
        same: the queue is emptied, so that ``queue_depth`` holds nothing unwritable."""
        with self._lock:
            if not self._stopped:
                return False
            self._queue.clear()
            return True

    def _drop(self, n: int) -> bool:
        with self._lock:
            self._dropped += n
            self._dropped_unreported += n
        return False

    def _wait_for_room(self, item: tuple[Any, ...] | None, timeout: float | None,
                       since_ns: int | None) -> bool:
        """Wait until ``item`` fits and append it; True when it did. ``item`` None (the
        question of :meth:`refusal`, a dry run's :meth:`check`): only wait. Counted in
        ``blocked`` when it is its caller's first wait (:meth:`_first` of ``since_ns``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        first = self._first(since_ns)
        q = self._queue
        with self._room:
            if first:
                self._blocked += 1
            self._waiting += 1
            try:
                while len(q) >= self._capacity or (not self._open and not self._closed
                                                   and self.overflow == "deny"):
                    if self._closed:
                        return False
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._wake.set()
                    self._room.wait(0.05 if left is None else min(left, 0.05))
                if self._closed:
                    return False
                if item is not None:
                    q.append(item)
                    self._wake.set()
                return True
            finally:
                self._waiting -= 1

    def _denial(self, decision: Any) -> Decision | ToolDecision:
        """The ``decision_log_unavailable`` denial given in place of ``decision``."""
        tool = decision if isinstance(decision, ToolDecision) else None
        d = tool.decision if tool is not None else decision
        if d.code == "decision_log_unavailable" and d.status == "denied":
            kept: Decision | ToolDecision = decision  # the pipeline's own refusal
            return kept
        denial = Decision.denial("decision_log_unavailable", self._refusal_reason(),
                                 d.principal, d.permission, None, d.acting_for, d.chain)
        return (ToolDecision(denial, "policy_deny", None, (), tool.tool) if tool is not None
                else denial)

    def _deny(self, decision: Any, item: tuple[Any, ...], record: bool
              ) -> Decision | ToolDecision:
        out = self._denial(decision)
        out.decision_id  # noqa: B018
        recorded = False
        if record and not self._closed and len(self._queue) < self._capacity:
            self._queue.append((item[0], item[1], item[2], out, item[4], item[5], item[6]))
            self._wake.set()
            recorded = not (self._closed and self._orphaned())
        with self._lock:
            self._denied += 1
            if not recorded:
                self._unrecorded_denials += 1
        return out

    # ------------------------------------------------------------------ writer thread
    def _run_writer(self) -> None:
        q = self._queue
        wake = self._wake
        while True:
            if not q:
                if self._closed:
                    if self._stop():
                        break
                    continue  # appended since the read above: written before stopping
                self._idle = True
                if not q:
                    wake.wait(0.05)
                wake.clear()
                self._idle = False
                self._watch()
                continue
            self._busy = True
            n = min(len(q), self._batch)
            items = [q.popleft() for _ in range(n)]
            self._taken += n
            if self._waiting:
                with self._room:
                    self._room.notify_all()
            lines: list[bytes] = []
            try:
                lines = self._encode(items)
                self._hand_over(lines)
            except Exception:  # a fault outside any one record: counted, the writer lives on
                if lines:  # not handed over (the spill failed): kept for close(), counted
                    self._keep(lines)
                else:
                    self._drop(n)
            finally:
                self._busy = False
        self._finish()

    def _stop(self) -> bool:
        """The writer's last look, once the log is closed: stop if the queue is empty,
        read under the lock and after ``_closed`` (a record appended before ``close()``
        set it is seen here); ``_stopped`` tells a caller that appended later that its
        record will not be written (:meth:`_orphaned`)."""
        with self._lock:
            if self._queue:
                return False
            self._stopped = True
            return True

    def _wall_offset(self) -> int:
        """Wall-clock ns less ``perf_counter_ns`` now: what turns a monotonic reading of
        the hot path into its wall-clock time. The wall clock is read between two
        monotonic readings, and read again (a few times at most) while they lie far
        apart: a writer paused between its reads (another thread on the interpreter's
        lock, the OS) would otherwise stamp its whole batch early by the pause, and one
        thread's records out of order across batches. The narrowest pair is used."""
        best_gap = best = 0
        for _ in range(_CLOCK_TRIES):
            before = perf_counter_ns()
            wall = self._clock_ns()
            after = perf_counter_ns()
            gap = after - before
            if not best_gap or gap < best_gap:
                best_gap, best = gap or 1, wall - (before + after) // 2
            if gap <= _CLOCK_GAP_NS:
                break
        return best

    def _encode(self, items: list[tuple[Any, ...]]) -> list[bytes]:
        lines: list[bytes] = []
        with self._lock:
            dropped, self._dropped_unreported = self._dropped_unreported, 0
        # The chain's state in locals for the batch (written back before a checkpoint
        # and at the end): this loop runs once per record, on the interpreter's lock.
        seq, prev, since = self._seq, self._prev, self._since_checkpoint
        every = self._checkpoint_every
        produced = 0
        append = lines.append
        build, build_event, encode_, seal_ = decision_record, event_record, encode, seal
        # The hot path read the monotonic clock only: its readings become wall-clock time
        # through one reading of both clocks for the batch (the wall clock as it reads
        # now, less the time each record waited since it was handed over).
        wall = self._wall_offset()
        for item in items:
            seq += 1
            record: dict[str, Any] = {}
            try:
                if len(item) == _DECISION_ITEM:
                    kind, at, started, decision, inp, token, view = item
                    record = build(kind, wall + at, at - started, decision, inp, token, view)
                else:
                    kind, at, fields, view = item
                    record = build_event(kind, wall + at, fields, view)
                record["seq"] = seq
                record["dropped"] = dropped
                record["prev"] = prev
                encoded = encode_(record)
            except Exception as exc:  # never lose a record, nor the writer, to one record
                encoded = encode_(self._record_error(item, record, exc, seq, dropped, prev))
            line, prev = seal_(encoded)
            append(line)
            dropped = 0
            produced += 1
            since += 1
            if since >= every:
                self._seq, self._prev, self._since_checkpoint = seq, prev, since
                append(self._checkpoint_line())
                seq, prev, since = self._seq, self._prev, 0
        self._seq, self._prev, self._since_checkpoint = seq, prev, since
        self._produced += produced
        return lines

    def _record_error(self, item: tuple[Any, ...], record: dict[str, Any],
                      exc: Exception, seq: int, dropped: int, prev: str) -> dict[str, Any]:
        """What stands in the chain for a record that could not be built or encoded: its
        kind, time and decision id (when it got that far) and the exception's name;
        counted in ``record_errors``."""
        with self._lock:
            self._record_errors += 1
        out: dict[str, Any] = {"schema": "policyengine.decision-log/1",
                               "kind": str(item[0])[:64], "timestamp": None}
        for name in ("timestamp", "decision_id"):
            if type(record.get(name)) is str:
                out[name] = record[name][:64]
        out.update(record_error=type(exc).__name__, seq=seq, dropped=dropped, prev=prev)
        return out

    def _chain(self, record: dict[str, Any], dropped: int = 0) -> bytes:
        self._seq += 1
        record["seq"] = self._seq
        record["dropped"] = dropped
        record["prev"] = self._prev
        line, self._prev = seal(encode(record))
        self._produced += 1
        self._since_checkpoint += 1
        return line

    def _checkpoint_line(self) -> bytes:
        now = self._clock_ns()
        jws = sign_checkpoint(self.keys, self._seq, self._prev, now // 1_000_000_000)
        record = {"schema": "policyengine.decision-log/1", "kind": "log.checkpoint",
                  "timestamp": None,
                  "checkpoint": {"seq": self._seq, "hash": self._prev, "jws": jws,
                                 "log_id": self.log_id}}
        from policyengine.audit._record import rfc3339
        record["timestamp"] = rfc3339(now)
        line = self._chain(record)
        self._since_checkpoint = 0
        self._checkpoints += 1
        return line

    def _hand_over(self, lines: list[bytes]) -> None:
        if self._close_deadline_passed():
            self._keep(lines)  # close() gave up on the sink: to the spill, by _rescue
            return
        if self.overflow == "spill" or self._spilling:
            # Once spilling, everything goes to the spill until it is shipped: order kept.
            while True:
                with self._spill_lock:
                    spilling = self._spilling
                if not spilling and (self.overflow != "spill" or not self._ship.full()):
                    break
                if self._spill(lines):
                    return
                if not spilling:
                    break  # a batch larger than the whole spill: wait for the sink
                if self._close_deadline_passed():
                    self._keep(lines)  # the spill full, the sink down, close() gave up
                    return
                time.sleep(0.01)  # the spill is full: wait for the sink (backpressure)
        while True:
            with self._rescue_lock:  # against _rescue emptying the queue: order kept
                if self._close_deadline_passed():
                    self._kept.extend(lines)  # to the spill, by _rescue
                    return
                try:
                    self._ship.put_nowait((lines, len(lines)))
                    return
                except queue.Full:
                    pass
            self._watch()
            time.sleep(0.01)

    def _keep(self, lines: list[bytes]) -> None:
        """The writer's lines the sink will not be asked to take (close() gave up on
        it): :meth:`_rescue` puts them at the end of the spill file (without one they
        stay counted as ``undelivered``)."""
        with self._rescue_lock:
            self._kept.extend(lines)

    def _watch(self) -> None:
        """A sink write that has taken longer than ``stall_after`` is a stall."""
        started = self._write_started
        if started and not self._stalled and time.monotonic() - started > self._stall_after:
            with self._stall_lock:
                # The write may have ended since it was read: only that same write,
                # still running, is a stall (its end clears the mark under this lock).
                if self._write_started != started or self._stalled:
                    return
                self._stalls += 1
                self._stalled = True
                self._set_open()

    def _spill(self, lines: list[bytes]) -> bool:
        data = b"".join(lines)
        with self._spill_lock:
            if self._spill_size + len(data) > self._spill_max:
                return False  # the spill is full too: the writer waits (backpressure)
            with open(self._spill_path, "ab") as f:
                f.write(data)
            self._spill_size += len(data)
            self._spilling = True
            self._spill_lines += len(lines)
            self._spilled += len(lines)
        return True

    def _set_open(self) -> None:
        """Open the log to new records, or not, by its state. Called by the writer and the
        shipper without the lock; ``close()`` sets ``_closed`` and then clears ``_open``.
        A close between this read of ``_closed`` and the write below would be undone (a
        closed log taking records its stopped threads never write, uncounted), so
        ``_closed`` is read again after the write: whichever order they run in, a closed
        log ends closed."""
        self._open = not self._closed and not (
            self.overflow == "deny" and (self._failing or self._stalled))
        if self._closed:
            self._open = False

    def _finish(self) -> None:
        if self._since_checkpoint:
            self._hand_over([self._checkpoint_line()])
        while True:
            try:
                self._ship.put(None, timeout=0.05)
                return
            except queue.Full:
                if self._close_deadline_passed():
                    return  # the shipper stops on its own once it sees the writer gone

    # ------------------------------------------------------------------ shipping thread
    def _run_shipper(self) -> None:
        ship = self._ship
        while True:
            if self._close_deadline_passed():
                # close() gave up on the sink: no new write; the writer moves what it
                # holds to _kept without waiting for anything (bounded), then _rescue
                # below takes the queue and all that was kept to the spill.
                self._writer.join()
                break
            if self._spilling and ship.empty() and self._ship_spill():
                continue
            try:
                item = ship.get(timeout=0.05)
            except queue.Empty:
                continue
            if item is None:
                while (self._spilling and not self._close_deadline_passed()
                       and self._ship_spill()):
                    pass
                break
            if not self._deliver(item[0]):  # False only once close() gave up
                with self._rescue_lock:
                    self._rescued[:0] = item[0]  # the oldest line not delivered
        self._rescue()
        self._close_sink()

    def _close_sink(self) -> None:
        """Close the sink, once: by the shipper when it stops (the log is closed then),
        or by :meth:`close` when both threads have ended."""
        with self._lock:
            if self._sink_closed:
                return
            self._sink_closed = True
        with contextlib.suppress(Exception):
            self.sink.close()

    def _rescue(self) -> None:
        """At close, what the sink did not take goes to the spill file, in order: the
        batch the shipper failed to write and the batches waiting for it before what was
        spilled, the writer's lines it never handed over after: the next log on that
        spill ships them. Called by the shipper when it stops, and by close() when the
        shipper is still in a sink write at the deadline (a write cannot be cut short):
        the shipper then puts that batch, if the write fails, in front when it ends.
        Under ``_rescue_lock``: the writer hands nothing to the shipper meanwhile.
        Spilling at close is not held to ``spill_max_bytes``: the log holds at most
        ``capacity`` records and a few batches, and dropping them would lose them."""
        with self._rescue_lock:
            before, self._rescued = self._rescued, []
            while True:
                try:
                    item = self._ship.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    before.extend(item[0])
            after, self._kept = self._kept, []
            if not (before or after) or not self._has_spill:
                return  # no spill file: they stay counted as ``undelivered``
            try:
                self._spill_rescued(before, after)
            except OSError:  # the spill cannot be written: kept, counted undelivered
                self._rescued[:0] = before
                self._kept[:0] = after

    def _spill_rescued(self, before: list[bytes], after: list[bytes]) -> None:
        with self._spill_lock:
            if before:
                # A spill chunk in flight is never beside a failed batch (the shipper
                # ships the spill only with its queue empty): the offset may restart.
                rest = b""
                if self._spilling:
                    with open(self._spill_path, "rb") as f:
                        f.seek(self._spill_offset)
                        rest = f.read()
                tmp = self._spill_path.with_suffix(".tmp")
                data = b"".join(before) + rest + b"".join(after)
                tmp.write_bytes(data)
                os.replace(tmp, self._spill_path)
                self._spill_offset = 0
                self._spill_size = len(data)
            else:  # only newer lines: at the end, where a chunk in flight is not
                data = b"".join(after)
                with open(self._spill_path, "ab") as f:
                    f.write(data)
                self._spill_size += len(data)
            n = len(before) + len(after)
            self._spill_lines += n
            self._spilled += n
            self._spilling = True

    def _deliver(self, lines: list[bytes]) -> bool:
        """Write ``lines`` to the sink, retrying with backoff; False once close() has
        given up on the sink (the caller keeps the lines for the spill)."""
        delay, most = self._backoff
        while True:
            # No write starts once close() has given up on the sink: the give-up time is
            # read right before each write (and each retry), so a write that starts does
            # so at least the close margin before the deadline, and close() waits for it
            # until then. Before, it was read only at the top of the shipper's loop, a
            # queue wait (up to 0.05 s) away from the write: a write could start at the
            # deadline and still run after close() had returned.
            if self._close_deadline_passed():
                return False
            self._write_started = time.monotonic()
            try:
                self.sink.write(lines)
            except Exception:
                self._write_started = 0.0
                with self._lock:
                    self._sink_errors += 1
                self._failing = True
                self._set_open()
                if self._pause(delay):
                    return False
                delay = min(delay * 2, most)
                continue
            with self._stall_lock:
                self._write_started = 0.0
                if self._failing or self._stalled:
                    self._failing = self._stalled = False
                    self._set_open()
            with self._progress:
                self._written += len(lines)
                self._progress.notify_all()
            return True

    def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` between retries, or less: it ends at close()'s give-up time
        (close() wakes it when it sets that time). True when that time has passed.

        One wait on a condition close() notifies under the lock it sets the give-up time
        with, so the wait cannot miss it. Before, it waited on an event close() left set,
        and so had a second shape once the log was closed (sleeps of 0.05 s), lest it
        spin."""
        end = time.monotonic() + seconds
        with self._closing:
            while True:
                now = time.monotonic()
                by = self._close_by
                if by is not None and now > by:
                    return True
                left = (end if by is None else min(end, by)) - now
                if left <= 0:
                    return False
                self._closing.wait(left)

    def _ship_spill(self) -> bool:
        """Ship the oldest spilled lines; True if something was shipped."""
        with self._spill_lock:
            try:
                with open(self._spill_path, "rb") as f:
                    f.seek(self._spill_offset)
                    chunk = [f.readline() for _ in range(self._batch)]
            except OSError:
                chunk = []
            chunk = [c for c in chunk if c]
            if not chunk:
                self._spill_path.unlink(missing_ok=True)
                self._spill_offset = self._spill_size = 0
                self._spilling = False
                return False
        if not self._deliver(chunk):
            return False
        with self._spill_lock:
            self._spill_offset += sum(len(c) for c in chunk)
            self._spill_lines -= len(chunk)
        return True

    #: When close() gives up on the sink: its deadline less a margin (the smaller of
    #: 0.25 s and a quarter of its timeout), so that what the threads hold then reaches
    #: the spill before close() returns. None: not closing, or no deadline.
    _close_by: float | None = None

    def _close_deadline_passed(self) -> bool:
        by = self._close_by
        return by is not None and time.monotonic() > by

    # ------------------------------------------------------------------ control
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record offered so far has reached the sink (or, under
        ``spill``, the spill file). True when it has, False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._wake.set()
            with self._progress:
                done = (not self._queue and not self._busy and self._ship.empty()
                        and self._written + self._spilled - self._spill_shipped()
                        >= self._produced)
                if done:
                    return True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._progress.wait(0.02 if left is None else min(left, 0.02))

    def _spill_shipped(self) -> int:
        # Lines shipped from the spill count in ``written`` and were counted in
        # ``spilled`` too: count each line once.
        return self._spilled - self._spill_lines

    def close(self, timeout: float | None = 30.0) -> bool:
        """Write everything queued, a final checkpoint, and close the sink. True when the
        sink took everything within ``timeout``; else what it did not take is in the
        spill file (``spill_pending``), or, without one, counted as ``undelivered``.

        Returns within ``timeout``: the log's threads give up on the sink shortly
        before it (:attr:`_close_by`), make no new sink write, move what they hold to
        the spill and stop. Only a sink write already under way then outlives the call
        (it cannot be cut short): its batch counts as ``undelivered`` until it ends,
        and the shipping thread then spills it if it failed, closes the sink and stops.

        One close at a time: a second call, from any thread, waits (up to its own
        ``timeout``) for the first to end and answers what the log's state is then
        (False if the first has not ended). Before, it returned True at once, while
        the first was still writing (a caller reading the sink then found records
        missing), and two calls that both found the log open both closed the sink.
        A call after one that timed out waits again for the log's threads, and closes
        the sink if they have ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._close_lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            return False  # another close() is still at work
        try:
            return self._close(deadline)
        finally:
            self._close_lock.release()

    def _close(self, deadline: float | None) -> bool:
        if not self._closed:
            if deadline is not None:
                with self._closing:
                    self._close_by = deadline - min(
                        0.25, max(0.0, deadline - time.monotonic()) / 4)
                    self._closing.notify_all()
            with self._room:
                self._closed = True
                self._open = False
                self._room.notify_all()
            self._wake.set()

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        self._writer.join(left())
        self._shipper.join(left())
        if self._shipper.is_alive() and self._close_deadline_passed():
            self._rescue()  # the shipper is in a sink write: what waits goes to the spill
        done = not self._writer.is_alive() and not self._shipper.is_alive()
        if done:
            self._close_sink()
        _live.discard(self)
        stats = self.stats()
        return done and stats["undelivered"] == 0 and stats["spill_pending"] == 0

    def stats(self) -> dict[str, int]:
        """Counters (docs/decision-log.md, "Metrics"): ``taken`` records accepted into
        the log, ``written`` lines delivered to the sink, ``spilled`` and
        ``spill_pending``, ``dropped``, ``denied`` (decisions the log turned into
        denials) and ``unrecorded_denials``, ``blocked`` (callers that waited for room,
        each once: a call, a decision from its question to its hand-over, a
        :meth:`one_wait`), ``sink_errors``,
        ``stalls``, ``checkpoints``, ``record_errors`` (records that could not be built
        or encoded: a placeholder with ``record_error`` stands in the chain),
        ``queue_depth``, ``undelivered`` (produced, not yet delivered nor spilled)."""
        with self._lock:
            spill_pending = self._spill_lines
            undelivered = self._produced - (self._written - (self._spilled - spill_pending)) \
                - self._spilled
            return {
                "taken": self._taken, "produced": self._produced, "written": self._written,
                "spilled": self._spilled, "spill_pending": spill_pending,
                "dropped": self._dropped, "denied": self._denied,
                "unrecorded_denials": self._unrecorded_denials, "blocked": self._blocked,
                "sink_errors": self._sink_errors, "stalls": self._stalls,
                "checkpoints": self._checkpoints, "record_errors": self._record_errors,
                "queue_depth": len(self._queue),
                "undelivered": max(0, undelivered), "seq": self._seq,
            }

    @property
    def healthy(self) -> bool:
        """False while the sink is failing or stalled. Under ``deny`` it is the flag the
        log refuses decisions by (one state, not two set one after the other): never
        healthy while the log refuses for its sink, never unhealthy while it accepts."""
        if self.overflow == "deny":
            is_open = self._open  # read first: close() sets _closed before clearing _open
            if not self._closed:
                return is_open
        return not (self._failing or self._stalled)

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
