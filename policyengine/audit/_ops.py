"""Operations the decision log records besides decisions: budget operations through the
engine's ledger and approval changes through the engine's approval store.

:class:`LoggedLedger` is the engine's :class:`~policyengine.budgets.Ledger` when it has a
decision log; :class:`LoggedApprovals` wraps its approval store. Each records the
operation after it happened (or failed) and changes nothing about it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from policyengine.audit._log import DecisionLog
from policyengine.budgets import Ledger
from policyengine.errors import PolicyEngineError

__all__ = ["LoggedApprovals", "LoggedLedger"]

View = Callable[[], Any]


def _reservation(r: Any) -> dict[str, Any]:
    try:
        wire: dict[str, Any] = r.to_wire()
        return wire
    except Exception:  # a reservation that cannot describe itself still has an id
        return {"id": getattr(r, "id", None)}


class LoggedLedger(Ledger):
    """A :class:`Ledger` that records ``budget.reserve``, ``budget.record``,
    ``budget.commit``, ``budget.release`` and ``budget.extend`` (ok or refused, with the
    error code) in a decision log."""

    def __init__(self, *args: Any, log: DecisionLog, view: View, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._audit = log
        self._audit_view = view

    def _logged(self, op: str, call: Callable[[], Any], fields: dict[str, Any]) -> Any:
        try:
            result = call()
        except PolicyEngineError as exc:
            self._audit.event(f"budget.{op}", {**fields, "status": "refused",
                                               "reason_code": exc.code},
                              self._audit_view())
            raise
        self._audit.event(f"budget.{op}", {**fields, "status": "ok",
                                           "reservation": _reservation(result)},
                          self._audit_view())
        return result

    def reserve(self, principal: str, permission: str, amount: object = None,
                currency: str | None = None, **kw: Any) -> Any:
        return self._logged("reserve", lambda: super(LoggedLedger, self).reserve(
            principal, permission, amount, currency, **kw), {
            "principal": principal, "permission": permission, "acting_for":
            kw.get("acting_for"), "operation": {"amount": str(amount), "unit": currency,
                                                "idempotency_key": kw.get("idempotency_key")}})

    def record(self, principal: str, permission: str, amount: object = None,
               currency: str | None = None, **kw: Any) -> Any:
        return self._logged("record", lambda: super(LoggedLedger, self).record(
            principal, permission, amount, currency, **kw), {
            "principal": principal, "permission": permission, "acting_for":
            kw.get("acting_for"), "operation": {"amount": str(amount), "unit": currency,
                                                "idempotency_key": kw.get("idempotency_key")}})

    def commit(self, reservation_id: str, amount: object = None, currency: str | None = None,
               **kw: Any) -> Any:
        return self._logged("commit", lambda: super(LoggedLedger, self).commit(
            reservation_id, amount, currency, **kw), {
            "operation": {"reservation_id": reservation_id, "amount": str(amount),
                          "unit": currency, "idempotency_key": kw.get("idempotency_key")}})

    def release(self, reservation_id: str, **kw: Any) -> Any:
        return self._logged("release", lambda: super(LoggedLedger, self).release(
            reservation_id, **kw), {"operation": {"reservation_id": reservation_id}})

    def extend(self, reservation_id: str, ttl: float | None = None, **kw: Any) -> Any:
        return self._logged("extend", lambda: super(LoggedLedger, self).extend(
            reservation_id, ttl, **kw), {"operation": {"reservation_id": reservation_id,
                                                       "ttl": ttl, "by": kw.get("by")}})


class LoggedApprovals:
    """An approval store that records ``approval.request`` (a pending decision asked
    for one), ``approval.approve``, ``approval.reject`` and ``approval.consume``;
    everything else is the wrapped store's."""

    def __init__(self, store: Any, log: DecisionLog, view: View) -> None:
        self._store = store
        self._audit = log
        self._audit_view = view

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _log(self, op: str, fields: dict[str, Any]) -> None:
        self._audit.event(f"approval.{op}", fields, self._audit_view())

    def add(self, approval: Any) -> Any:
        stored = self._store.add(approval)  # a store on its own clock: its own times
        shown = stored if callable(getattr(stored, "to_wire", None)) else approval
        self._log("request", {"principal": approval.principal,
                              "permission": approval.permission,
                              "approval": shown.to_wire()})
        return stored

    def get(self, approval_id: str) -> Any:
        return self._store.get(approval_id)

    def list(self, status: str | None = None) -> Any:
        return self._store.list(status)

    def _decide(self, op: str, approval_id: str, by: str | None, note: str | None) -> Any:
        try:
            item = getattr(self._store, op)(approval_id, by=by, note=note)
        except PolicyEngineError as exc:
            self._log(op, {"approval": {"approvalId": approval_id}, "status": "refused",
                           "reason_code": exc.code, "by": by})
            raise
        self._log(op, {"principal": item.principal, "permission": item.permission,
                       "status": "ok", "by": by, "approval": item.to_wire()})
        return item

    def approve(self, approval_id: str, by: str | None = None,
                note: str | None = None) -> Any:
        return self._decide("approve", approval_id, by, note)

    def reject(self, approval_id: str, by: str | None = None,
               note: str | None = None) -> Any:
        return self._decide("reject", approval_id, by, note)

    def consume(self, approval_id: str, digest: str, now: float) -> Any:
        try:
            item = self._store.consume(approval_id, digest, now)
        except PolicyEngineError as exc:
            self._log("consume", {"approval": {"approvalId": approval_id},
                                  "status": "refused", "reason_code": exc.code})
            raise
        self._log("consume", {"principal": item.principal, "permission": item.permission,
                              "status": "ok", "approval": item.to_wire()})
        return item
