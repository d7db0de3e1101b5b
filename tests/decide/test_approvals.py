"""Pending approvals through the engine: create, list, approve, reject, ask again.

docs/semantics.md step 5: an applying approval rule makes the decision
``pending_approval`` with an ``approvalId`` registered in ``engine.approvals``, unless the
request carries a granted ``approval_id`` for the same principal, permission and context,
not yet used up and not expired (docs/approvals.md). Forbids and limits still apply.
"""

from __future__ import annotations

import pytest
from conftest import Clock

from policyengine import ApprovalError, ApprovalRequired, NotAuthorized
from policyengine.engine import Engine

POLICY = """namespace ap
currency EUR
rate USD 0.92
role payer: payments:*
agent "bot": payer
agent "other": payer
agent "blocked": payer
limit cap: payments:* amount <= 1000 EUR
forbid frozen: payments:* for agent "blocked"
forbid flagged: payments:* when context.flagged == true
approval big: payments:* over 300 EUR
"""


@pytest.fixture
def eng(clock: Clock) -> Engine:
    return Engine.from_source(POLICY, name="ap.policy", clock=clock)


def ctx(amount: str = "400", currency: str = "EUR", **extra: object) -> dict[str, object]:
    return {"amount": amount, "currency": currency, "flagged": False, **extra}


def pending_id(eng: Engine, principal: str = "bot", context: dict[str, object] | None = None,
               permission: str = "payments:pay") -> str:
    d = eng.authorize(principal, permission, ctx() if context is None else context)
    assert (d.status, d.code, d.rules) == ("pending_approval", "approval_required", ("ap.big",))
    assert isinstance(d.approval_id, str) and d.approval_id
    assert d.to_wire()["approvalId"] == d.approval_id
    return d.approval_id


def test_pending_decision_is_listed(eng: Engine, clock: Clock) -> None:
    aid = pending_id(eng)
    listed = eng.approvals.list("pending")
    assert [a.id for a in listed] == [aid]
    item = eng.approvals.get(aid)
    assert (item.principal, item.permission, item.rules, item.status) == (
        "bot", "payments:pay", ("ap.big",), "pending")
    assert item.created_at == clock.t
    assert eng.approvals.list("approved") == []
    assert eng.approvals.list("rejected") == []
    assert [a.id for a in eng.approvals.list()] == [aid]
    wire = item.to_wire()
    assert wire["approvalId"] == aid and wire["status"] == "pending"


def test_allowed_and_denied_decisions_create_no_approval(eng: Engine) -> None:
    assert eng.authorize("bot", "payments:pay", ctx("300")).status == "allowed"
    assert eng.authorize("bot", "payments:pay", ctx("1000.01")).code == "limit_exceeded"
    d = eng.authorize("bot", "payments:pay", ctx("300"))
    assert d.approval_id is None and d.to_wire()["approvalId"] is None
    assert eng.approvals.list() == []


def test_each_pending_request_gets_its_own_id(eng: Engine) -> None:
    first, second = pending_id(eng), pending_id(eng)
    assert first != second
    assert {a.id for a in eng.approvals.list("pending")} == {first, second}


def test_approved_id_allows_the_same_request(eng: Engine, clock: Clock) -> None:
    aid = pending_id(eng)
    clock.t += 60
    item = eng.approvals.approve(aid, by="alice", note="ok")
    assert (item.status, item.decided_by, item.note, item.decided_at) == (
        "approved", "alice", "ok", clock.t)
    assert [a.id for a in eng.approvals.list("approved")] == [aid]
    assert eng.approvals.list("pending") == []

    d = eng.authorize("bot", "payments:pay", ctx(), approval_id=aid)
    assert (d.status, d.code, d.rules) == ("allowed", "permitted", ("role:payer",))
    assert d.approval_id is None
    # The limit that did not fire is still an obligation; the approval threshold fired.
    assert d.obligations is not None
    assert d.obligations.to_wire() == {"maxAmount": "1000.00", "requireApprovalOver": None,
                                       "redactFields": [], "currency": "EUR"}
    # Used once: the very same request is pending again, under a new id.
    assert eng.approvals.get(aid).status == "used"
    again = eng.authorize("bot", "payments:pay", ctx(), approval_id=aid)
    assert again.status == "pending_approval" and again.approval_id not in (None, aid)
    assert [d.code for d in again.diagnostics] == ["approval_used"]


def test_an_equal_context_built_in_another_order_is_the_same_request(eng: Engine) -> None:
    aid = pending_id(eng)
    eng.approvals.approve(aid)
    reordered = dict(reversed(list(ctx().items())))
    assert list(reordered) != list(ctx())
    assert eng.authorize("bot", "payments:pay", reordered, approval_id=aid).allowed


@pytest.mark.parametrize("changed", [
    ctx("400.01"),                       # another amount
    ctx("400", "USD"),                   # another currency
    ctx(note="x"),                       # an extra key
    {"amount": "400", "currency": "EUR"},  # a key missing (no flagged): forbid fails closed
])
def test_approved_id_with_a_different_context_is_pending_again(
        eng: Engine, changed: dict[str, object]) -> None:
    aid = pending_id(eng)
    eng.approvals.approve(aid)
    d = eng.authorize("bot", "payments:pay", changed, approval_id=aid)
    if "flagged" not in changed:
        assert (d.status, d.code) == ("denied", "missing_attribute")
        return
    assert d.status == "pending_approval"
    assert d.approval_id and d.approval_id != aid
    assert [x.code for x in d.diagnostics] == ["approval_mismatch"]
    assert eng.approvals.get(d.approval_id).status == "pending"
    assert eng.approvals.get(aid).status == "approved"


def test_approved_id_for_another_principal_or_permission_is_pending(eng: Engine) -> None:
    aid = pending_id(eng)
    eng.approvals.approve(aid)
    d = eng.authorize("other", "payments:pay", ctx(), approval_id=aid)
    assert d.status == "pending_approval" and d.approval_id not in (None, aid)
    d = eng.authorize("bot", "payments:refund", ctx(), approval_id=aid)
    assert d.status == "pending_approval" and d.approval_id not in (None, aid)


def test_rejected_id_stays_pending(eng: Engine) -> None:
    aid = pending_id(eng)
    item = eng.approvals.reject(aid, by="bob", note="no")
    assert (item.status, item.decided_by, item.note) == ("rejected", "bob", "no")
    assert [a.id for a in eng.approvals.list("rejected")] == [aid]
    d = eng.authorize("bot", "payments:pay", ctx(), approval_id=aid)
    assert d.status == "pending_approval"
    assert d.approval_id and d.approval_id != aid
    assert [x.code for x in d.diagnostics] == ["approval_rejected"]
    assert eng.approvals.get(aid).status == "rejected"


@pytest.mark.parametrize(("first", "second"), [
    ("approve", "approve"), ("approve", "reject"), ("reject", "approve"), ("reject", "reject"),
])
def test_deciding_twice_is_approval_final(eng: Engine, first: str, second: str) -> None:
    aid = pending_id(eng)
    getattr(eng.approvals, first)(aid)
    with pytest.raises(ApprovalError) as info:
        getattr(eng.approvals, second)(aid)
    assert info.value.code == "approval_final"
    assert eng.approvals.get(aid).status == ("approved" if first == "approve" else "rejected")


@pytest.mark.parametrize("op", ["get", "approve", "reject"])
def test_unknown_id_raises_unknown_approval(eng: Engine, op: str) -> None:
    with pytest.raises(ApprovalError) as info:
        getattr(eng.approvals, op)("apr_does_not_exist")
    assert info.value.code == "unknown_approval"


@pytest.mark.parametrize("bogus", ["apr_does_not_exist", "", "x" * 1000])
def test_unknown_id_is_not_granted(eng: Engine, bogus: str) -> None:
    d = eng.authorize("bot", "payments:pay", ctx(), approval_id=bogus)
    assert d.status == "pending_approval"
    assert d.approval_id and d.approval_id != bogus
    assert [x.code for x in d.diagnostics] == ["unknown_approval"]


def test_pending_id_is_not_granted(eng: Engine) -> None:
    aid = pending_id(eng)
    d = eng.authorize("bot", "payments:pay", ctx(), approval_id=aid)
    assert d.status == "pending_approval" and d.approval_id != aid
    assert [x.code for x in d.diagnostics] == ["approval_pending"]


def test_forbids_and_limits_deny_even_with_an_approved_id(eng: Engine) -> None:
    aid = pending_id(eng)
    eng.approvals.approve(aid)
    # A forbid on the context denies whatever the approval says.
    d = eng.authorize("bot", "payments:pay", ctx(flagged=True), approval_id=aid)
    assert (d.status, d.code, d.rules) == ("denied", "forbidden", ("ap.flagged",))

    blocked = eng.authorize("blocked", "payments:pay", ctx())
    assert (blocked.status, blocked.code) == ("denied", "forbidden")
    assert blocked.approval_id is None


def test_forbid_denies_with_an_approved_id_for_the_same_request(clock: Clock) -> None:
    """Approve a request, then reload a policy that forbids it: the approval does not help."""
    eng = Engine.from_source(POLICY, name="ap.policy", clock=clock)
    aid = pending_id(eng)
    eng.approvals.approve(aid)
    assert eng.authorize("bot", "payments:pay", ctx(), approval_id=aid).allowed
    stricter = Engine.from_source(
        POLICY + 'forbid no-bot: payments:* for agent "bot"\n'
        "limit tight: payments:pay amount <= 350 EUR\n",
        name="ap.policy", clock=clock, approvals=eng.approvals)
    d = stricter.authorize("bot", "payments:pay", ctx(), approval_id=aid)
    assert (d.status, d.code, d.rules) == ("denied", "forbidden", ("ap.no-bot", "ap.tight"))


def test_limit_denies_with_an_approved_id(clock: Clock) -> None:
    eng = Engine.from_source(POLICY, name="ap.policy", clock=clock)
    aid = pending_id(eng)
    eng.approvals.approve(aid)
    tighter = Engine.from_source(POLICY + "limit tight: payments:pay amount <= 350 EUR\n",
                                 name="ap.policy", clock=clock, approvals=eng.approvals)
    d = tighter.authorize("bot", "payments:pay", ctx(), approval_id=aid)
    assert (d.status, d.code, d.rules) == ("denied", "limit_exceeded", ("ap.tight",))


def test_approval_does_not_bypass_a_failing_amount(eng: Engine) -> None:
    """An id approved for a request with a bad amount still fails closed on the limit."""
    d = eng.authorize("bot", "payments:pay", ctx("NaN"))
    assert (d.status, d.code) == ("denied", "invalid_amount")
    assert d.approval_id is None


def test_ensure_authorized_raises_approval_required(eng: Engine) -> None:
    with pytest.raises(ApprovalRequired) as info:
        eng.ensure_authorized("bot", "payments:pay", ctx())
    err = info.value
    assert isinstance(err, NotAuthorized)
    assert err.code == "approval_required"
    assert err.approval_id and err.approval_id == err.decision.approval_id
    assert eng.approvals.get(err.approval_id).status == "pending"

    eng.approvals.approve(err.approval_id)
    d = eng.ensure_authorized("bot", "payments:pay", ctx(), approval_id=err.approval_id)
    assert d.allowed

    with pytest.raises(NotAuthorized) as denied:
        eng.ensure_authorized("bot", "payments:pay", ctx("1000.01"))
    assert not isinstance(denied.value, ApprovalRequired)
    assert denied.value.code == "limit_exceeded"


def test_converted_amount_context_is_matched_as_sent(eng: Engine) -> None:
    """The approval binds the context as sent (USD 400), not its EUR conversion."""
    usd = ctx("400", "USD")  # 368.00 EUR > 300
    aid = pending_id(eng, context=usd)
    eng.approvals.approve(aid)
    assert eng.authorize("bot", "payments:pay", usd, approval_id=aid).allowed
    # 368 EUR is the same money, but not the same request.
    d = eng.authorize("bot", "payments:pay", ctx("368.00"), approval_id=aid)
    assert d.status == "pending_approval"


def test_approvals_survive_reload(eng: Engine) -> None:
    aid = pending_id(eng)
    eng.approvals.approve(aid)
    eng.reload()
    assert eng.authorize("bot", "payments:pay", ctx(), approval_id=aid).allowed
