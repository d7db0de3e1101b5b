"""Pending approvals: what a ``pending_approval`` decision waits for.

A pending decision records an :class:`Approval` (who, what, a digest of the context) in
an :class:`ApprovalStore`. A person approves or rejects it; the agent then asks again with
``approval_id=...`` and, if the approval is granted for the *same* principal, permission
and context, the approval rules are satisfied (forbids and limits still apply).

:class:`MemoryApprovalStore` is the default; any object with the same methods can be
passed to the engine (``approvals=``). This module is a leaf.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Protocol

from policyengine.decision import new_id
from policyengine.errors import PolicyEngineError

__all__ = ["Approval", "ApprovalError", "ApprovalStore", "MemoryApprovalStore", "context_digest"]


class ApprovalError(PolicyEngineError, LookupError):
    """``unknown_approval`` or ``approval_final`` (already approved or rejected)."""


@dataclass(frozen=True)
class Approval:
    id: str
    principal: str
    permission: str
    context_digest: str
    rules: tuple[str, ...]
    status: str  # pending | approved | rejected
    created_at: float
    decided_at: float | None = None
    decided_by: str | None = None
    note: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"approvalId": self.id, "principal": self.principal,
                "permission": self.permission, "rules": list(self.rules),
                "status": self.status, "createdAt": self.created_at,
                "decidedAt": self.decided_at, "decidedBy": self.decided_by, "note": self.note}


def context_digest(context: dict[str, Any] | None) -> str:
    """A stable digest of a request context; values that are not JSON hash by ``repr``."""
    try:
        text = json.dumps(context or {}, sort_keys=True, separators=(",", ":"), default=repr)
    except (ValueError, RecursionError, TypeError):
        text = repr(context)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class ApprovalStore(Protocol):
    def create(self, principal: str, permission: str, context: dict[str, Any] | None,
               rules: tuple[str, ...]) -> Approval: ...
    def get(self, approval_id: str) -> Approval: ...
    def list(self, status: str | None = None) -> list[Approval]: ...
    def approve(self, approval_id: str, by: str | None = None,
                note: str | None = None) -> Approval: ...
    def reject(self, approval_id: str, by: str | None = None,
               note: str | None = None) -> Approval: ...


class MemoryApprovalStore:
    """Thread-safe in-memory approvals (lost on restart; plug in a durable store)."""

    def __init__(self, clock: Any = time.time) -> None:
        self._items: dict[str, Approval] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def create(self, principal: str, permission: str, context: dict[str, Any] | None,
               rules: tuple[str, ...]) -> Approval:
        item = Approval(new_id("apr"), principal, permission, context_digest(context), rules,
                        "pending", self._clock())
        with self._lock:
            self._items[item.id] = item
        return item

    def get(self, approval_id: str) -> Approval:
        item = self._items.get(approval_id)
        if item is None:
            raise ApprovalError("unknown_approval", f"no approval {approval_id!r}")
        return item

    def list(self, status: str | None = None) -> list[Approval]:
        with self._lock:
            items = list(self._items.values())
        return [i for i in items if status is None or i.status == status]

    def _decide(self, approval_id: str, status: str, by: str | None, note: str | None
                ) -> Approval:
        with self._lock:
            item = self.get(approval_id)
            if item.status != "pending":
                raise ApprovalError("approval_final",
                                    f"approval {approval_id} is already {item.status}")
            item = replace(item, status=status, decided_at=self._clock(), decided_by=by,
                           note=note)
            self._items[approval_id] = item
            return item

    def approve(self, approval_id: str, by: str | None = None, note: str | None = None
                ) -> Approval:
        return self._decide(approval_id, "approved", by, note)

    def reject(self, approval_id: str, by: str | None = None, note: str | None = None
               ) -> Approval:
        return self._decide(approval_id, "rejected", by, note)
