"""What a client is told of a store fault: its code and a fixed message.

A budget, rate-limit or revocation store that cannot answer fails with its driver's
text (``Error 111 connecting to 10.0.0.7:6379``, ``connection to server at "db"
(10.1.2.3), port 5432 failed``, a SQLite file's path). The engine keeps that text in
the decision's reason and the decision log, which is where it belongs; a wire answer
carries the code and a fixed message instead, and the text goes to the service's log.
Every wire's refusal renderer and decision answer passes through here, and so do the
routes that raise a store's outage themselves (a revocation store that cannot verify a
grant, an approval store that cannot answer): :data:`FAULT_MESSAGES` is the one place a
store fault's public text is written.

One code is told by its fixed message in a refusal only, never in a decision:
``approval_store_error`` (the approval routes' 503). This is on purpose. Its text is
made safe where it is made, not here: the engine writes a decision's reason for it (or
a ``pending_approval`` diagnostic's message) without the store's text, naming the step
that failed and the driver's exception type or a shared store's own code ("cannot
record the approval: ConnectionError"; the shared stores' own ``approval_store_error``
names the type only, ``decide._shared_approvals``), and the decision log keeps the same
words. So the fixed message would hide nothing and tell the agent less: tracengent
shows that reason to the user (tests/server/test_tracengent_approval_outage.py), who
learns the request was never recorded, not merely that a store was down. (A custom
store that raises an ``ApprovalError`` of its own is told in its author's words, as for
every approval code.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

__all__ = ["FAULT_MESSAGES", "public_decision", "public_message", "public_reason"]

log = logging.getLogger("policyengine.server")

#: Codes of a store that could not answer -> all a client is told of it: a refusal's
#: message, and for the codes of :data:`_DECISION_FAULTS` a decision's reason and
#: diagnostic message too.
FAULT_MESSAGES = {
    "store_unavailable": "store_unavailable: a budget or rate-limit store is unavailable; retry",
    "budget_unavailable": "budget_unavailable: the budget store is unavailable; retry",
    "store_incompatible": "store_incompatible: the budget store cannot be used by this service",
    "revocation_unavailable": "revocation_unavailable: the revocation store is unavailable; "
                              "retry",
    "approval_store_error": "the approval store is unavailable; retry",
}

#: The faults a decision is told of by the fixed message: all but ``approval_store_error``,
#: whose reason the engine already writes without the store's text (module docstring).
_DECISION_FAULTS = frozenset(FAULT_MESSAGES) - {"approval_store_error"}


def public_message(code: str, message: str) -> str:
    """``message`` of a refusal with ``code``, or, for a store fault, its fixed message
    (the store's own text logged, once: a message already the fixed one is not)."""
    fixed = FAULT_MESSAGES.get(code)
    if fixed is None or message == fixed:
        return message
    log.warning("store fault answered as %s: %s", code, message)
    return fixed


def public_reason(code: str, reason: str, diagnostic_codes: Iterable[str]) -> str:
    """A decision's reason for a client: the fixed message of its store fault when its
    code or one of its diagnostics' is one (a token refused because the revocation store
    failed is ``invalid_token`` with a ``revocation_unavailable`` diagnostic). A reason
    for ``approval_store_error`` is kept as the engine wrote it: it never holds the
    store's text, and says which step failed (module docstring)."""
    fault = code if code in _DECISION_FAULTS else next(
        (c for c in diagnostic_codes if c in _DECISION_FAULTS), None)
    if fault is None:
        return reason
    log.warning("store fault answered as %s: %s", fault, reason)
    return FAULT_MESSAGES[fault]


def public_decision(wire: dict[str, Any]) -> dict[str, Any]:
    """A decision's wire dict (``Decision.to_wire()``) with store faults told as
    :func:`public_reason` tells them, in its reason and its diagnostics' messages."""
    diagnostics = wire.get("diagnostics")
    code = wire.get("reasonCode")
    if code not in _DECISION_FAULTS and not diagnostics:  # the common case: nothing to do
        return wire
    codes = [d.get("code") for d in diagnostics or ()]
    reason = public_reason(code or "", wire.get("reason") or "",
                           [c for c in codes if type(c) is str])
    if reason is not wire.get("reason"):
        wire["reason"] = reason
        wire["diagnostics"] = [
            {**d, "message": FAULT_MESSAGES[d["code"]]} if d.get("code") in _DECISION_FAULTS
            else d
            for d in diagnostics or ()]
    return wire
