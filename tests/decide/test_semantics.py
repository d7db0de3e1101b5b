"""Authorize semantics: default deny, precedence, fail closed, scopes, roles, money, approvals."""

from __future__ import annotations

from decimal import Decimal

import pytest

POLICY = '''namespace shop
currency EUR
rate USD 0.5

role clerk: orders:read, orders:write, payments:*
role auditor: orders:read
agent "clerk-bot": clerk { tier = "gold" }
agent "audit-bot": auditor
agent "both-bot": clerk, auditor

forbid blocked: orders:write when context.blocked == true
forbid region: * when context.region in ["XX"]
approval big-order: orders:write when context.count > 10
permit read-anyone: catalog:read
permit night: reports:read for role auditor when context.hour < 6
permit special: reports:export for agent "clerk-bot"
limit refund-cap: payments:refund amount <= 500 EUR
approval refund-review: payments:refund over 300 EUR
'''


@pytest.fixture
def eng(make_engine):  # type: ignore[no-untyped-def]
    return make_engine(POLICY)


def test_default_deny(eng) -> None:  # type: ignore[no-untyped-def]
    d = eng.authorize("clerk-bot", "unknown:thing", {"region": "EU"})
    assert (d.status, d.allowed, d.code, d.rules) == ("denied", False, "no_permit", ())
    d = eng.authorize("nobody", "orders:read", {"region": "EU"})
    assert d.status == "denied"


def test_role_grant_is_an_unconditional_permit(eng) -> None:  # type: ignore[no-untyped-def]
    d = eng.authorize("clerk-bot", "orders:read", {"region": "EU"})
    assert (d.status, d.code, d.rules) == ("allowed", "permitted", ("role:clerk",))
    d = eng.authorize("audit-bot", "orders:write", {"region": "EU"})
    assert d.status == "denied"


def test_role_pattern_prefix(eng) -> None:  # type: ignore[no-untyped-def]
    assert eng.authorize("clerk-bot", "payments:capture", {"region": "EU"}).allowed
    assert not eng.authorize("clerk-bot", "paymentsx:capture", {"region": "EU"}).allowed


def test_unscoped_permit_applies_to_anyone(eng) -> None:  # type: ignore[no-untyped-def]
    d = eng.authorize("stranger", "catalog:read", {"region": "EU"})
    assert (d.status, d.rules) == ("allowed", ("shop.read-anyone",))


def test_forbid_overrides_permit(eng) -> None:  # type: ignore[no-untyped-def]
    d = eng.authorize("clerk-bot", "orders:write", {"blocked": True, "region": "EU",
                                                    "count": 1})
    assert (d.status, d.code, d.rules) == ("denied", "forbidden", ("shop.blocked",))


def test_forbid_overrides_approval(eng) -> None:  # type: ignore[no-untyped-def]
    d = eng.authorize("clerk-bot", "orders:write", {"blocked": True, "region": "EU",
                                                    "count": 50})
    assert (d.status, d.code) == ("denied", "forbidden")
    assert d.approval_id is None


def test_approval_overrides_permit(eng) -> None:  # type: ignore[no-untyped-def]
    d = eng.authorize("clerk-bot", "orders:write", {"blocked": False, "region": "EU",
                                                    "count": 50})
    assert (d.status, d.code, d.rules) == ("pending_approval", "approval_required",
                                           ("shop.big-order",))
    assert d.allowed is False
    assert d.approval_id


def test_approval_alone_does_not_allow(eng) -> None:  # type: ignore[no-untyped-def]
    # big-order applies but audit-bot has no permit for orders:write: default deny wins.
    d = eng.authorize("audit-bot", "orders:write", {"blocked": False, "region": "EU",
                                                    "count": 50})
    assert (d.status, d.code) == ("denied", "no_permit")


def test_global_forbid(eng) -> None:  # type: ignore[no-untyped-def]
    d = eng.authorize("clerk-bot", "orders:read", {"region": "XX"})
    assert (d.status, d.rules) == ("denied", ("shop.region",))


def test_forbid_error_fails_closed_with_diagnostic(eng) -> None:  # type: ignore[no-untyped-def]
    d = eng.authorize("clerk-bot", "orders:read", {})  # region missing
    assert d.status == "denied"
    assert d.rules == ("shop.region",)
    assert [(x.code, x.rule) for x in d.diagnostics] == [("missing_attribute", "shop.region")]
    assert "fail closed" in d.diagnostics[0].effect


def test_approval_error_fails_closed(eng) -> None:  # type: ignore[no-untyped-def]
    d = eng.authorize("clerk-bot", "orders:write", {"blocked": False, "region": "EU",
                                                    "count": "many"})
    assert d.status == "pending_approval"
    assert [(x.code, x.rule) for x in d.diagnostics] == [("type_error", "shop.big-order")]


def test_permit_error_skips_the_permit(eng) -> None:  # type: ignore[no-untyped-def]
    d = eng.authorize("audit-bot", "reports:read", {"region": "EU"})  # hour missing
    assert (d.status, d.code) == ("denied", "no_permit")
    assert [(x.code, x.rule, x.effect) for x in d.diagnostics] == [
        ("missing_attribute", "shop.night", "skipped")]


def test_condition_error_never_turns_deny_into_allow(eng) -> None:  # type: ignore[no-untyped-def]
    for ctx in ({"region": "EU", "count": 1},                    # blocked missing
                {"blocked": False, "count": 1},                  # region missing
                {"region": "EU", "blocked": False},              # count missing
                {"region": "EU", "blocked": False, "count": None},
                {"region": "EU", "blocked": False, "count": float("nan")}):
        assert eng.authorize("clerk-bot", "orders:write", ctx).status != "allowed", ctx


def test_equality_across_types_is_an_error_and_fails_closed(eng) -> None:  # type: ignore[no-untyped-def]
    # ``"yes" == true`` compares a string with a boolean: an evaluation error, so the
    # forbid applies (a sender cannot dodge it by changing the type of a value).
    d = eng.authorize("clerk-bot", "orders:write", {"region": "EU", "blocked": "yes",
                                                    "count": 1})
    assert (d.status, d.code, d.rules) == ("denied", "type_error", ("shop.blocked",))


def test_scope_role(eng) -> None:  # type: ignore[no-untyped-def]
    assert eng.authorize("audit-bot", "reports:read", {"hour": 3, "region": "EU"}).allowed
    assert not eng.authorize("clerk-bot", "reports:read", {"hour": 3, "region": "EU"}).allowed
    assert eng.authorize("both-bot", "reports:read", {"hour": 3, "region": "EU"}).allowed
    assert not eng.authorize("audit-bot", "reports:read", {"hour": 7, "region": "EU"}).allowed


def test_scope_agent(eng) -> None:  # type: ignore[no-untyped-def]
    assert eng.authorize("clerk-bot", "reports:export", {"region": "EU"}).allowed
    assert not eng.authorize("both-bot", "reports:export", {"region": "EU"}).allowed
    # an undeclared principal that happens to be named like a role gets nothing
    assert not eng.authorize("clerk", "orders:read", {"region": "EU"}).allowed


def refund(eng, amount, currency="EUR", **extra):  # type: ignore[no-untyped-def]
    return eng.authorize("clerk-bot", "payments:refund",
                         {"amount": amount, "currency": currency, "region": "EU", **extra})


def test_limit_and_approval_over_obligations(eng) -> None:  # type: ignore[no-untyped-def]
    d = refund(eng, "280")
    assert d.status == "allowed"
    ob = d.obligations
    assert (ob.max_amount, ob.require_approval_over, ob.currency) == (
        Decimal(500), Decimal(300), "EUR")
    wire = d.to_wire()["obligations"]
    assert (Decimal(wire["maxAmount"]), Decimal(wire["requireApprovalOver"])) == (500, 300)
    assert (wire["redactFields"], wire["currency"]) == ([], "EUR")


def test_amount_at_cap_and_threshold_boundaries(eng) -> None:  # type: ignore[no-untyped-def]
    assert refund(eng, "300").status == "allowed"
    assert refund(eng, "300.01").status == "pending_approval"
    assert refund(eng, "500").status == "pending_approval"
    d = refund(eng, "500.01")
    assert (d.status, d.code, d.rules) == ("denied", "limit_exceeded", ("shop.refund-cap",))


def test_amount_converted_with_file_rates(eng) -> None:  # type: ignore[no-untyped-def]
    # 1 USD = 0.5 EUR: 580 USD = 290 EUR (allowed), 1000 USD = 500 EUR, 1002 USD = 501 EUR
    assert refund(eng, "580", "USD").status == "allowed"
    assert refund(eng, "1000", "USD").status == "pending_approval"
    assert refund(eng, "1002", "USD").status == "denied"


@pytest.mark.parametrize(
    ("amount", "currency", "code"),
    [
        ("NaN", "EUR", "invalid_amount"),
        ("Infinity", "EUR", "invalid_amount"),
        ("-5", "EUR", "invalid_amount"),
        (12.5, "EUR", "invalid_amount"),
        (True, "EUR", "invalid_amount"),
        ("10", "JPY", "no_rate"),
        ("10", 42, "unknown_currency"),
    ],
)
def test_bad_amounts_fail_closed(eng, amount, currency, code) -> None:  # type: ignore[no-untyped-def]
    d = refund(eng, amount, currency)
    assert d.status == "denied"
    assert "shop.refund-cap" in d.rules
    assert code in [x.code for x in d.diagnostics]


def test_missing_amount_fails_closed(eng) -> None:  # type: ignore[no-untyped-def]
    d = eng.authorize("clerk-bot", "payments:refund", {"region": "EU"})
    assert d.status == "denied"
    assert "missing_amount" in [x.code for x in d.diagnostics]


def test_invalid_request_is_denied_with_diagnostic(eng) -> None:  # type: ignore[no-untyped-def]
    for principal, permission in ((None, "orders:read"), ("clerk-bot", 5), ("", "orders:read"),
                                  ("clerk-bot", ""), ("clerk-bot", "orders:*"),
                                  ("x" * 300, "orders:read")):
        d = eng.authorize(principal, permission, {"region": "EU"})
        assert (d.status, d.code) == ("denied", "invalid_request")
        assert d.diagnostics and d.diagnostics[0].code == "invalid_request"


# ---- approvals store ----------------------------------------------------------------

def big_order(count: int = 50) -> dict[str, object]:
    return {"blocked": False, "region": "EU", "count": count}


def test_approval_flow(eng) -> None:  # type: ignore[no-untyped-def]
    d = eng.authorize("clerk-bot", "orders:write", big_order())
    assert d.status == "pending_approval"
    aid = d.approval_id
    item = eng.approvals.get(aid)
    assert (item.status, item.principal, item.permission, item.rules) == (
        "pending", "clerk-bot", "orders:write", ("shop.big-order",))
    # asking again before the approval is decided is still pending
    assert eng.authorize("clerk-bot", "orders:write", big_order(),
                         approval_id=aid).status == "pending_approval"
    eng.approvals.approve(aid, by="alice")
    assert eng.approvals.get(aid).status == "approved"
    d2 = eng.authorize("clerk-bot", "orders:write", big_order(), approval_id=aid)
    assert (d2.status, d2.code) == ("allowed", "permitted")
    # a different context is a different request
    d3 = eng.authorize("clerk-bot", "orders:write", big_order(51), approval_id=aid)
    assert d3.status == "pending_approval"
    assert d3.approval_id != aid
    # another principal or permission cannot reuse it
    assert eng.authorize("both-bot", "orders:write", big_order(),
                         approval_id=aid).status == "pending_approval"
    # forbids still apply to an approved request
    d4 = eng.authorize("clerk-bot", "orders:write", {**big_order(), "blocked": True},
                       approval_id=aid)
    assert d4.status == "denied"


def test_approval_reject(eng) -> None:  # type: ignore[no-untyped-def]
    from policyengine.decide import ApprovalError

    aid = eng.authorize("clerk-bot", "orders:write", big_order()).approval_id
    eng.approvals.reject(aid, by="bob", note="no")
    assert eng.approvals.get(aid).status == "rejected"
    assert not eng.authorize("clerk-bot", "orders:write", big_order(),
                             approval_id=aid).allowed
    with pytest.raises(ApprovalError) as info:
        eng.approvals.approve(aid)
    assert info.value.code == "approval_final"


def test_unknown_approval_id_is_not_an_approval(eng) -> None:  # type: ignore[no-untyped-def]
    from policyengine.decide import ApprovalError

    d = eng.authorize("clerk-bot", "orders:write", big_order(), approval_id="apr_nope")
    assert d.status == "pending_approval"
    with pytest.raises(ApprovalError) as info:
        eng.approvals.get("apr_nope")
    assert info.value.code == "unknown_approval"


def test_approval_does_not_help_without_permit(eng) -> None:  # type: ignore[no-untyped-def]
    aid = eng.authorize("clerk-bot", "orders:write", big_order()).approval_id
    eng.approvals.approve(aid)
    assert not eng.authorize("audit-bot", "orders:write", big_order(),
                             approval_id=aid).allowed


def test_approval_over_with_approval_id(eng) -> None:  # type: ignore[no-untyped-def]
    d = refund(eng, "400")
    assert d.status == "pending_approval"
    eng.approvals.approve(d.approval_id)
    ctx = {"amount": "400", "currency": "EUR", "region": "EU"}
    d2 = eng.authorize("clerk-bot", "payments:refund", ctx, approval_id=d.approval_id)
    assert d2.status == "allowed"
    assert d2.obligations.max_amount == Decimal(500)
