"""Approvals: what a ``pending_approval`` decision waits for, bound to the exact call.

A pending decision records an :class:`Approval` in an :class:`ApprovalStore`. The record
holds a digest (:func:`request_digest`) over a canonical form of everything that was
decided on: principal, permission, the delegation it acts for, the context, and for a tool
call the tool, route, method, host, path, query and body. A person approves or rejects
it; the agent then asks again with ``approval_id=...``. The approval counts only for a
request with the *same* digest, before it expires, and at most ``uses`` times (one by
default); each allowed request consumes one use atomically. Forbids, limits and budgets
still apply. docs/approvals.md is the user's view.

Ids are 128 random bits from ``os.urandom`` (the kernel's generator: unguessable, and
different in every forked worker, unlike a per-process seed).

:class:`MemoryApprovalStore` is the default; any object implementing
:class:`ApprovalStore` can be passed to the engine (``approvals=``). This module is a leaf.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Protocol

from policyengine.errors import PolicyEngineError

__all__ = [
    "DEFAULT_APPROVAL_EXPIRES",
    "DEFAULT_APPROVAL_USES",
    "MAX_APPROVAL_EXPIRES",
    "MAX_APPROVAL_USES",
    "Approval",
    "ApprovalError",
    "ApprovalStore",
    "MemoryApprovalStore",
    "UnboundRequestError",
    "approval_terms_problems",
    "as_approval_store",
    "new_approval_id",
    "own_clock_of",
    "request_digest",
]

#: A granted approval lapses this many seconds after the request that asked for it,
#: unless the approval rule says ``expires DURATION``.
DEFAULT_APPROVAL_EXPIRES = 3600
#: How many allowed requests one approval unlocks, unless the rule says ``uses N``.
DEFAULT_APPROVAL_USES = 1
#: Bounds of a rule's ``expires`` (seconds) and ``uses`` (docs/approvals.md).
MAX_APPROVAL_EXPIRES = 30 * 86400
MAX_APPROVAL_USES = 1000


def approval_terms_problems(expires: int | None, uses: int | None) -> list[tuple[str, str]]:
    """What is wrong with an approval rule's ``expires`` / ``uses``: ``(field, message)``
    pairs, none when both are absent or in bounds (1 s to 30 days; 1 to
    :data:`MAX_APPROVAL_USES`). The checker reports these (E125, E140)."""
    found: list[tuple[str, str]] = []
    if expires is not None and not 1 <= expires <= MAX_APPROVAL_EXPIRES:
        found.append(("expires", f"an approval expires between 1s and "
                                 f"{MAX_APPROVAL_EXPIRES // 86400}d"))
    if uses is not None and not 1 <= uses <= MAX_APPROVAL_USES:
        found.append(("uses", f"'uses' must be between 1 and {MAX_APPROVAL_USES}"))
    return found


#: Statuses. ``expired`` is derived: a pending or approved record read at or after its
#: ``expires_at`` is reported as expired (stores need not write it).
STATUSES = ("pending", "approved", "rejected", "used", "expired")

# Values nested deeper than this cannot be bound (the request is not approvable).
_MAX_DEPTH = 100


class ApprovalError(PolicyEngineError, LookupError):
    """A store operation refused, with a stable ``code``:

    ``unknown_approval`` (no such id), ``approval_final`` (approve/reject of an approval
    already decided), ``approval_expired``, ``approval_pending`` (not yet approved),
    ``approval_rejected``, ``approval_used`` (no uses left), ``approval_mismatch`` (the
    request differs from the one approved), ``duplicate_approval`` (an id added twice).
    """


@dataclass(frozen=True)
class Approval:
    """One approval record. Immutable: a store replaces it on every change.

    ``digest`` is :func:`request_digest` of the request that asked; ``expires_at`` is
    POSIX seconds; ``uses_left`` counts the allowed requests it may still unlock.
    """

    id: str
    principal: str
    permission: str
    digest: str
    rules: tuple[str, ...]
    status: str  # one of STATUSES
    created_at: float
    expires_at: float
    uses_left: int = DEFAULT_APPROVAL_USES
    decided_at: float | None = None
    decided_by: str | None = None
    note: str | None = None

    def at(self, now: float) -> Approval:
        """This record as seen at ``now``: pending or approved past its expiry is
        ``expired``."""
        if self.status in ("pending", "approved") and now >= self.expires_at:
            return replace(self, status="expired")
        return self

    def to_wire(self) -> dict[str, Any]:
        return {"approvalId": self.id, "principal": self.principal,
                "permission": self.permission, "rules": list(self.rules),
                "status": self.status, "createdAt": self.created_at,
                "expiresAt": self.expires_at, "usesLeft": self.uses_left,
                "decidedAt": self.decided_at, "decidedBy": self.decided_by, "note": self.note}


def new_approval_id() -> str:
    """``apr_`` and 32 hex digits from ``os.urandom`` (128 bits; fork-safe)."""
    return "apr_" + os.urandom(16).hex()


# ---- the digest --------------------------------------------------------------------------

class UnboundRequestError(PolicyEngineError, ValueError):
    """``approval_unbindable``: a request holding a value the canonical form cannot
    represent (an arbitrary object, a set, nesting deeper than 100) cannot be bound to an
    approval."""

    def __init__(self, message: str) -> None:
        super().__init__("approval_unbindable", message)


def _encode(value: Any, out: list[bytes], depth: int) -> None:
    """Append a canonical, unambiguous, typed encoding of ``value`` to ``out``.

    Every value is tagged with its JSON kind, so ``1``, ``1.0``, ``Decimal("1")``,
    ``"1"`` and ``true`` all differ, and so do ``Decimal("400")`` and ``Decimal("400.00")``
    (a different request, even if the same money). Strings and bytes carry their length,
    object members are sorted by their encoded key, so two equal objects built in a
    different order encode the same. Subclasses of ``str`` and ``int`` encode as their
    value.
    """
    if depth > _MAX_DEPTH:
        raise UnboundRequestError("the request is nested too deeply to be approved")
    if value is None:
        out.append(b"n")
    elif value is True:
        out.append(b"t")
    elif value is False:
        out.append(b"f")
    elif isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
        out.append(b"s%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, int):
        out.append(b"i" + format(int(value), "x").encode("ascii") + b";")
    elif isinstance(value, Decimal):
        out.append(b"d" + str(value).encode("ascii") + b";")
    elif isinstance(value, float):
        out.append(b"F" + value.hex().encode("ascii") + b";")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        out.append(b"b%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, (list, tuple)):
        out.append(b"[")
        for item in value:
            _encode(item, out, depth + 1)
        out.append(b"]")
    elif isinstance(value, Mapping):
        members = []
        for key, item in value.items():
            kout: list[bytes] = []
            _encode(key, kout, depth + 1)
            vout: list[bytes] = []
            _encode(item, vout, depth + 1)
            members.append((b"".join(kout), b"".join(vout)))
        members.sort()
        out.append(b"{")
        for k, v in members:
            out.append(k)
            out.append(v)
        out.append(b"}")
    else:
        raise UnboundRequestError(f"a {type(value).__name__} in the request cannot be bound to "
                             "an approval")


def request_digest(principal: str, permission: str, context: Mapping[str, Any] | None,
                   call: Mapping[str, Any] | None = None, acting_for: str | None = None
                   ) -> str:
    """SHA-256 (hex) over the canonical form of one request.

    ``call`` describes a tool call (tool, route, method, host, path, query, body); it is
    None for a plain ``authorize``, so an approval for one never unlocks the other.
    Raises :class:`UnboundRequestError` when a value has no canonical form.
    """
    out: list[bytes] = [b"policyengine approval v1\x00"]
    try:
        _encode([principal, permission, acting_for, context or {}, call], out, 0)
    except RecursionError:
        raise UnboundRequestError("the request is nested too deeply to be approved") from None
    except (ValueError, TypeError) as exc:  # a hostile __iter__/items/keys, a bad buffer
        if isinstance(exc, UnboundRequestError):
            raise
        raise UnboundRequestError(f"the request cannot be bound to an approval: {exc}") from None
    return hashlib.sha256(b"".join(out)).hexdigest()


# ---- stores ------------------------------------------------------------------------------

class ApprovalStore(Protocol):
    """Where approvals live. Six operations; each must be atomic on its own record.

    * ``add(approval)``: store a new record (the engine made its id, digest, expiry and
      uses). An id already present raises ``ApprovalError("duplicate_approval")``. A
      store on its own clock returns the record as stored (its times its own); None
      means stored as given.
    * ``get(id)``: the record as seen now (see :meth:`Approval.at`); unknown id raises
      ``ApprovalError("unknown_approval")``.
    * ``list(status=None)``: records as seen now, optionally only those with ``status``.
    * ``approve(id, by=None, note=None)`` / ``reject(...)``: a pending record becomes
      approved / rejected (``decided_at`` = now). Raises ``unknown_approval``,
      ``approval_expired`` (at or past ``expires_at``) or ``approval_final`` (already
      decided or used).
    * ``consume(id, digest, now)``: the one operation that lets a request through, so it
      must be a single atomic compare-and-decrement (a transaction / a Lua script / a
      ``SELECT ... FOR UPDATE``): if the record exists, its digest equals ``digest``
      (compare in constant time), ``now < expires_at``, its status is ``approved`` and
      ``uses_left >= 1``, then decrement ``uses_left`` (status becomes ``used`` at 0) and
      return the updated record. Otherwise change nothing and raise ``ApprovalError``
      with, in this order of checks: ``unknown_approval``, ``approval_mismatch``,
      ``approval_expired``, ``approval_pending``, ``approval_rejected``, ``approval_used``.
      Two concurrent consumes of a one-use approval: exactly one succeeds.

    "Now" for ``get``, ``list``, ``approve`` and ``reject`` is the store's own clock;
    ``consume`` gets the engine's time of the decision. A store shared by hosts whose
    clocks may disagree decides by its own clock instead, in ``add`` (created now, lasting
    ``expires_at - created_at``) and ``consume`` alike, and says so with a true
    ``own_clock`` attribute (the shared PostgreSQL and Redis stores do): then no host's
    clock decides whether an approval may still be used. A store fault raises; the engine
    then does not honour the approval (fail closed).

    A store may subclass ``ApprovalStore`` (the built-in ones do) and so inherit
    ``own_clock``'s default; one that only has the methods is taken alike, as on the
    engine's clock (:func:`own_clock_of`). :func:`as_approval_store` is the one check of
    this protocol.
    """

    #: The store decides every expiry by its own clock (see above); False: the engine's.
    own_clock: bool = False

    def add(self, approval: Approval) -> Approval | None: ...
    def get(self, approval_id: str) -> Approval: ...
    def list(self, status: str | None = None) -> list[Approval]: ...
    def approve(self, approval_id: str, by: str | None = None,
                note: str | None = None) -> Approval: ...
    def reject(self, approval_id: str, by: str | None = None,
               note: str | None = None) -> Approval: ...
    def consume(self, approval_id: str, digest: str, now: float) -> Approval: ...


#: The operations the pipeline and the approval API call on a store: the protocol's
#: methods, read from it so that one added there is checked too.
APPROVAL_METHODS = tuple(name for name, member in vars(ApprovalStore).items()
                         if not name.startswith("_") and callable(member))
#: The protocol's attributes, each with the default a store that declares none reads as.
_APPROVAL_ATTRIBUTES: dict[str, Any] = {name: getattr(ApprovalStore, name)
                                        for name in ApprovalStore.__annotations__}


def own_clock_of(store: object) -> bool:
    """``store``'s :attr:`ApprovalStore.own_clock`, or the protocol's default where the
    store declares none (a store checked by :func:`as_approval_store` has a bool there).
    Read once where a pipeline is built, never per request."""
    value: bool = getattr(store, "own_clock", ApprovalStore.own_clock)
    return value is True


def as_approval_store(store: object, where: str = "approvals", *,
                      refuse: Callable[[str], PolicyEngineError]) -> ApprovalStore:
    """``store`` if it keeps the :class:`ApprovalStore` protocol: every method of it
    callable, and each attribute it declares of the protocol's type (an ``own_clock``
    of ``"no"`` or a method would read as true). Else ``refuse(message)`` is raised:
    the caller chooses its error (an ``Engine``, ``invalid_option``), as
    ``as_budget_store`` does for budget stores. Taken as it is, a store lacking one
    would deny ``approval_store_error`` on every request an approval rule covers."""
    missing = [m for m in APPROVAL_METHODS if not callable(getattr(store, m, None))]
    if missing:
        lacks = "" if len(missing) == len(APPROVAL_METHODS) else \
            f" (it has no {', '.join(missing)})"
        raise refuse(f"{where} must be an ApprovalStore ({', '.join(APPROVAL_METHODS)}) "
                     f"or its URL, not {type(store).__name__}{lacks}")
    for name, default in _APPROVAL_ATTRIBUTES.items():
        value = getattr(store, name, default)
        if type(value) is not type(default):
            raise refuse(f"{where}: {type(store).__name__}.{name} must be True or False "
                         f"(left out, it is {default!r}), not {value!r}")
    return store  # type: ignore[return-value]


class MemoryApprovalStore(ApprovalStore):
    """Thread-safe in-memory approvals (lost on restart; plug in a durable store).

    Records expired for longer than ``keep_expired`` seconds are dropped as new ones are
    added, so a stream of pending requests cannot grow memory without bound.
    """

    def __init__(self, clock: Callable[[], float] = time.time, *,
                 keep_expired: float = 86400) -> None:
        self._items: dict[str, Approval] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self._keep_expired = keep_expired
        self._sweep_at = 1024

    def add(self, approval: Approval) -> None:
        with self._lock:
            if approval.id in self._items:
                raise ApprovalError("duplicate_approval", f"approval {approval.id} exists")
            self._items[approval.id] = approval
            if len(self._items) >= self._sweep_at:
                horizon = self._clock() - self._keep_expired
                for key in [k for k, v in self._items.items() if v.expires_at < horizon]:
                    del self._items[key]
                self._sweep_at = max(1024, 2 * len(self._items))

    def _record(self, approval_id: str) -> Approval:
        item = self._items.get(approval_id) if type(approval_id) is str else None
        if item is None:
            raise ApprovalError("unknown_approval", "no such approval")
        return item

    def get(self, approval_id: str) -> Approval:
        return self._record(approval_id).at(self._clock())

    def list(self, status: str | None = None) -> list[Approval]:
        now = self._clock()
        with self._lock:
            items = [i.at(now) for i in self._items.values()]
        return [i for i in items if status is None or i.status == status]

    def _decide(self, approval_id: str, status: str, by: str | None, note: str | None
                ) -> Approval:
        with self._lock:
            now = self._clock()
            item = self._record(approval_id).at(now)
            if item.status == "expired":
                raise ApprovalError("approval_expired", f"approval {approval_id} has expired")
            if item.status != "pending":
                raise ApprovalError("approval_final",
                                    f"approval {approval_id} is already {item.status}")
            item = replace(item, status=status, decided_at=now, decided_by=by, note=note)
            self._items[approval_id] = item
            return item

    def approve(self, approval_id: str, by: str | None = None, note: str | None = None
                ) -> Approval:
        return self._decide(approval_id, "approved", by, note)

    def reject(self, approval_id: str, by: str | None = None, note: str | None = None
               ) -> Approval:
        return self._decide(approval_id, "rejected", by, note)

    def consume(self, approval_id: str, digest: str, now: float) -> Approval:
        with self._lock:
            item = self._record(approval_id)
            if not hmac.compare_digest(item.digest.encode("ascii"), digest.encode("ascii")):
                raise ApprovalError("approval_mismatch",
                                    "the approval was granted for a different request")
            item = item.at(now)
            if item.status != "approved" or item.uses_left < 1:
                if item.status == "expired":
                    code = "approval_expired"
                elif item.status == "pending":
                    code = "approval_pending"
                elif item.status == "rejected":
                    code = "approval_rejected"
                else:
                    code = "approval_used"
                raise ApprovalError(code, f"approval {approval_id} is {item.status}")
            left = item.uses_left - 1
            item = replace(item, uses_left=left, status="approved" if left else "used")
            self._items[approval_id] = item
            return item
