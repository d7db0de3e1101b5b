"""Adversarial tests: an approval unlocks exactly the request that was approved, a bounded
number of times, for a bounded time (docs/approvals.md).

Each class names the attack it tries. The approval under attack is always a real one:
asked for by a pending request, approved through the store, then replayed with a change.
"""

from __future__ import annotations

import json
import os
import threading
from decimal import Decimal
from typing import Any

import pytest
from conftest import Clock, codes_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine import Approval, ApprovalError, MemoryApprovalStore
from policyengine.decide import request_digest
from policyengine.engine import Engine
from policyengine.lang import format_source

EXTRACT = "amount = $.amount, currency = $.currency, to = $.to"
POLICY = """namespace pay
currency EUR
role payer: payments:*
agent "bot": payer
agent "other": payer
approval big: payments:* over 300 EUR
tool bank: http "bank.example" {
  POST "/v1/transfers" -> payments:transfer { EXTRACT }
  POST "/v1/transfers/{kind}" -> payments:transfer { EXTRACT }
  PUT "/v1/transfers" -> payments:transfer { EXTRACT }
}
tool bank2: http "bank2.example" {
  POST "/v1/transfers" -> payments:transfer { EXTRACT }
}
tool mcp_pay: mcp "transfer" -> payments:transfer {
  EXTRACT
}
""".replace("EXTRACT", EXTRACT)

BODY = {"amount": "400", "currency": "EUR", "to": "alice"}
CALL: dict[str, Any] = {"transport": "http", "method": "POST", "host": "bank.example",
                        "path": "/v1/transfers", "body": BODY}


def engine(clock: Clock, extra: str = "", **options: Any) -> Engine:
    return Engine.from_source(POLICY + extra, name="pay.policy", clock=clock, **options)


def approved_call(eng: Engine, call: dict[str, Any] | None = None) -> str:
    """Ask for ``call`` (pending), approve it, return the approval id."""
    d = eng.tool_authorize("bot", **(call or CALL))
    assert d.outcome == "pending_approval", d.reason
    assert d.approval_id is not None
    eng.approvals.approve(d.approval_id, by="alice")
    return d.approval_id


def approved_request(eng: Engine, context: dict[str, Any], principal: str = "bot",
                     permission: str = "payments:transfer") -> str:
    d = eng.authorize(principal, permission, context)
    assert d.status == "pending_approval" and d.approval_id
    eng.approvals.approve(d.approval_id)
    return d.approval_id


def refused(decision: Any, code: str) -> None:
    """Not allowed: pending again under a new id, saying why the approval did not count."""
    assert decision.status == "pending_approval", (decision.status, decision.code)
    assert code in [d.code for d in decision.diagnostics]


class TestToolCallBinding:
    """A tool-call approval replayed on another call: another body, route, method, tool,
    host, transport, query, or as a plain ``authorize`` with the extracted context."""

    @pytest.mark.parametrize("change", [
        {"body": {**BODY, "to": "mallory"}},
        {"body": {**BODY, "amount": "4000"}},
        {"body": {**BODY, "memo": "extra field"}},
        {"body": json.dumps({**BODY, "to": "mallory"}).encode()},
        {"path": "/v1/transfers/instant"},
        {"path": "/v1/transfers/"},
        {"method": "PUT"},
        {"host": "bank2.example"},
        {"query": {"dry_run": "false"}},
    ], ids=["body-to", "body-amount", "body-extra", "bytes-body", "route", "slash", "method",
            "tool", "query"])
    def test_changed_http_call_is_not_approved(self, clock: Clock,
                                               change: dict[str, Any]) -> None:
        eng = engine(clock)
        aid = approved_call(eng)
        d = eng.tool_authorize("bot", **{**CALL, **change}, approval_id=aid)
        assert d.outcome in ("pending_approval", "route_deny"), d.reason
        if d.outcome == "pending_approval":
            refused(d.decision, "approval_mismatch")
        # The approval is still there, for the call that was approved.
        assert eng.tool_authorize("bot", **CALL, approval_id=aid).outcome == "policy_allow"

    def test_same_json_bytes_with_other_spacing_are_the_same_call(self, clock: Clock) -> None:
        eng = engine(clock)
        aid = approved_call(eng, {**CALL, "body": json.dumps(BODY).encode()})
        compact = json.dumps(BODY, separators=(",", ":")).encode()
        d = eng.tool_authorize("bot", **{**CALL, "body": compact}, approval_id=aid)
        assert d.outcome == "policy_allow", d.reason

    def test_another_transport_or_plain_authorize_is_not_approved(self, clock: Clock) -> None:
        eng = engine(clock)
        aid = approved_call(eng)
        mcp = eng.tool_authorize("bot", transport="mcp", toolName="transfer", body=BODY,
                                 approval_id=aid)
        refused(mcp.decision, "approval_mismatch")
        plain = eng.authorize("bot", "payments:transfer", dict(BODY), approval_id=aid)
        refused(plain, "approval_mismatch")

    def test_plain_approval_does_not_unlock_a_tool_call(self, clock: Clock) -> None:
        eng = engine(clock)
        aid = approved_request(eng, dict(BODY))
        d = eng.tool_authorize("bot", **CALL, approval_id=aid)
        refused(d.decision, "approval_mismatch")

    def test_headers_outside_the_extraction_are_not_bound(self, clock: Clock) -> None:
        """Documented: a tracing header may change per call; only extracted values bind."""
        eng = engine(clock)
        aid = approved_call(eng, {**CALL, "headers": {"x-request-id": "1"}})
        d = eng.tool_authorize("bot", **CALL, headers={"x-request-id": "2"}, approval_id=aid)
        assert d.outcome == "policy_allow"

    @settings(max_examples=60, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(key=st.sampled_from(["amount", "currency", "to", "memo"]),
           value=st.one_of(st.text(max_size=8), st.integers(), st.booleans(), st.none(),
                           st.decimals(allow_nan=False, allow_infinity=False, places=2)))
    def test_any_body_change_is_not_approved(self, clock: Clock, key: str, value: Any) -> None:
        changed = {**BODY, key: value}
        if changed == BODY and type(BODY.get(key)) is type(value):
            return  # not a change
        eng = engine(clock)
        aid = approved_call(eng)
        d = eng.tool_authorize("bot", **{**CALL, "body": changed}, approval_id=aid)
        # The approval plays no part: the changed call is decided as if it carried none
        # (a small amount needs no approval), and the approval is not used up.
        alone = eng.tool_authorize("bot", **{**CALL, "body": changed})
        assert d.outcome == alone.outcome
        assert eng.approvals.get(aid).uses_left == 1


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(),
                         st.decimals(allow_nan=False, allow_infinity=False),
                         st.text(max_size=6))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=8)


class TestRequestBinding:
    """An ``authorize`` approval replayed with another principal, permission, acting-for,
    or any change to the context: a value, its type (``1`` / ``"1"`` / ``1.0`` /
    ``Decimal("1.00")``), a key added or removed."""

    @settings(max_examples=80, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(extra=st.dictionaries(st.text(min_size=1, max_size=4), JSON_VALUES, max_size=3),
           key=st.text(min_size=1, max_size=4), new=JSON_VALUES)
    def test_any_context_change_is_not_approved(self, clock: Clock, extra: dict[str, Any],
                                                 key: str, new: Any) -> None:
        base = {"amount": "400", "currency": "EUR", **{f"x{k}": v for k, v in extra.items()}}
        changed = {**base, f"x{key}": new}
        if request_digest("bot", "payments:transfer", changed) == request_digest(
                "bot", "payments:transfer", base):
            # Only when nothing changed (same key, same value, same types).
            assert json.dumps(changed, default=repr) == json.dumps(base, default=repr)
            return
        eng = engine(clock)
        aid = approved_request(eng, base)
        refused(eng.authorize("bot", "payments:transfer", changed, approval_id=aid),
                "approval_mismatch")
        assert eng.authorize("bot", "payments:transfer", base, approval_id=aid).allowed

    @pytest.mark.parametrize("amount", [400, 400.0, Decimal("400"), Decimal("400.00"), "400.00"])
    def test_same_money_written_differently_is_another_request(self, clock: Clock,
                                                               amount: Any) -> None:
        eng = engine(clock)
        aid = approved_request(eng, {"amount": "400", "currency": "EUR"})
        d = eng.authorize("bot", "payments:transfer", {"amount": amount, "currency": "EUR"},
                          approval_id=aid)
        refused(d, "approval_mismatch")

    def test_other_principal_or_permission(self, clock: Clock) -> None:
        eng = engine(clock)
        aid = approved_request(eng, dict(BODY))
        refused(eng.authorize("other", "payments:transfer", dict(BODY), approval_id=aid),
                "approval_mismatch")
        refused(eng.authorize("bot", "payments:refund", dict(BODY), approval_id=aid),
                "approval_mismatch")
        assert eng.authorize("bot", "payments:transfer", dict(BODY), approval_id=aid).allowed

    @pytest.mark.parametrize("bogus", ["", "a" * 129])
    def test_malformed_approval_ids_are_not_honoured(self, clock: Clock, bogus: Any) -> None:
        eng = engine(clock)
        refused(eng.authorize("bot", "payments:transfer", dict(BODY), approval_id=bogus),
                "unknown_approval")

    @pytest.mark.parametrize("bogus", [["apr_x"], {"id": 1}, 7, b"apr"])
    def test_approval_ids_that_are_not_strings_are_invalid(self, clock: Clock,
                                                          bogus: Any) -> None:
        d = engine(clock).authorize("bot", "payments:transfer", dict(BODY), approval_id=bogus)
        assert (d.status, d.code) == ("denied", "invalid_request")

    def test_digest_separates_kinds(self) -> None:
        values = [1, "1", 1.0, Decimal("1"), Decimal("1.0"), True, None, [1], {"1": 1},
                  b"1", [], {}, "", [[]], ["", ""], [""]]
        digests = {request_digest("p", "a:b", {"v": v}) for v in values}
        assert len(digests) == len(values)
        # Strings carry their length: no two splits of the same text collide.
        assert request_digest("p", "a:b", {"a": "bc"}) != request_digest("p", "a:b",
                                                                          {"ab": "c"})
        assert request_digest("ab", "c:d", None) != request_digest("a", "bc:d", None)


class TestSingleUse:
    """Replaying a consumed approval; racing threads over a one-use approval; a request
    denied by something else must not burn the use."""

    def test_consumed_never_allows_twice(self, clock: Clock) -> None:
        eng = engine(clock)
        aid = approved_call(eng)
        assert eng.tool_authorize("bot", **CALL, approval_id=aid).outcome == "policy_allow"
        for _ in range(3):
            d = eng.tool_authorize("bot", **CALL, approval_id=aid)
            refused(d.decision, "approval_used")
        assert eng.approvals.get(aid).status == "used"

    def test_uses_n_allows_exactly_n(self, clock: Clock) -> None:
        eng = Engine.from_source(POLICY.replace("over 300 EUR", "over 300 EUR uses 3"),
                                 name="pay.policy", clock=clock)
        aid = approved_request(eng, dict(BODY))
        results = [eng.authorize("bot", "payments:transfer", dict(BODY),
                                 approval_id=aid).status for _ in range(5)]
        assert results == ["allowed"] * 3 + ["pending_approval"] * 2

    def test_strictest_rule_decides_uses_and_expiry(self, clock: Clock) -> None:
        eng = Engine.from_source(
            POLICY.replace("over 300 EUR", "over 300 EUR uses 5 expires 2h")
            + "approval all: payments:* uses 2 expires 10m\n", name="pay.policy", clock=clock)
        d = eng.authorize("bot", "payments:transfer", dict(BODY))
        assert d.rules == ("pay.big", "pay.all") and d.approval_id
        item = eng.approvals.get(d.approval_id)
        assert (item.uses_left, item.expires_at - item.created_at) == (2, 600)

    def test_racing_threads_consume_once(self, clock: Clock) -> None:
        eng = engine(clock)
        aid = approved_request(eng, dict(BODY))
        barrier = threading.Barrier(8)
        statuses: list[str] = []

        def go() -> None:
            barrier.wait()
            statuses.append(eng.authorize("bot", "payments:transfer", dict(BODY),
                                          approval_id=aid).status)

        threads = [threading.Thread(target=go) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(statuses) == ["allowed"] + ["pending_approval"] * 7

    def test_forbid_or_budget_denial_does_not_consume(self, clock: Clock) -> None:
        eng = engine(clock, 'budget daily: payments:* limit 1 calls per day per agent\n')
        aid = approved_request(eng, dict(BODY))
        eng.budgets.record("bot", "payments:transfer", 1, "calls")  # budget exhausted
        d = eng.authorize("bot", "payments:transfer", dict(BODY), approval_id=aid)
        assert (d.status, d.code) == ("denied", "budget_exceeded")
        assert eng.approvals.get(aid).uses_left == 1

    def test_store_fault_is_not_an_allow(self, clock: Clock) -> None:
        class Broken(MemoryApprovalStore):
            def consume(self, approval_id: str, digest: str, now: float) -> Approval:
                raise ConnectionError("store down")

        eng = engine(clock, approvals=Broken(clock))
        aid = approved_request(eng, dict(BODY))
        refused(eng.authorize("bot", "payments:transfer", dict(BODY), approval_id=aid),
                "approval_store_error")

    def test_store_that_cannot_record_denies(self, clock: Clock) -> None:
        class Full(MemoryApprovalStore):
            def add(self, approval: Approval) -> None:
                raise OSError("disk full")

        eng = engine(clock, approvals=Full(clock))
        d = eng.authorize("bot", "payments:transfer", dict(BODY))
        assert (d.status, d.code, d.approval_id) == ("denied", "approval_store_error", None)
        # the driver's exception type, never its message (which may name the store)
        assert d.reason == "cannot record the approval: OSError", d.reason


class TestExpiry:
    """Using an approval at and after its expiry (default and ``expires``), approving an
    expired request, and a clock that moves between approval and use."""

    def test_default_expiry_is_one_hour_from_the_request(self, clock: Clock) -> None:
        eng = engine(clock)
        start = clock.t
        aid = approved_request(eng, dict(BODY))
        assert eng.approvals.get(aid).expires_at == start + 3600
        clock.t = start + 3600
        refused(eng.authorize("bot", "payments:transfer", dict(BODY), approval_id=aid),
                "approval_expired")
        assert eng.approvals.get(aid).status == "expired"
        clock.t = start + 3599.999
        assert eng.authorize("bot", "payments:transfer", dict(BODY), approval_id=aid).allowed

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(minutes=st.integers(1, 600), later=st.floats(0, 100_000, allow_nan=False))
    def test_expired_never_allows(self, clock: Clock, minutes: int, later: float) -> None:
        eng = Engine.from_source(POLICY.replace("over 300 EUR", f"over 300 EUR expires {minutes}m"),
                                 name="pay.policy", clock=clock)
        start = clock.t
        aid = approved_request(eng, dict(BODY))
        clock.t = start + later
        d = eng.authorize("bot", "payments:transfer", dict(BODY), approval_id=aid)
        assert d.allowed == (later < minutes * 60)
        if not d.allowed:
            refused(d, "approval_expired")

    def test_expired_request_cannot_be_approved(self, clock: Clock) -> None:
        eng = engine(clock)
        d = eng.authorize("bot", "payments:transfer", dict(BODY))
        assert d.approval_id
        clock.t += 3600
        with pytest.raises(ApprovalError) as info:
            eng.approvals.approve(d.approval_id)
        assert info.value.code == "approval_expired"
        assert eng.approvals.list("expired")[0].id == d.approval_id

    def test_long_expired_records_are_dropped(self, clock: Clock) -> None:
        """A stream of pending requests nobody answers keeps memory bounded."""
        store = MemoryApprovalStore(clock, keep_expired=10)
        for i in range(5000):
            clock.t += 1
            store.add(Approval(f"apr_{i}", "bot", "a:b", "0" * 64, (), "pending", clock.t,
                               clock.t + 1))
        kept = store.list()
        assert len(kept) <= 1024
        assert kept[-1].id == "apr_4999" and store.get("apr_4999").status == "pending"


class TestIds:
    """Guessing or colliding approval ids, including across forked workers."""

    def test_ids_are_128_random_bits(self, clock: Clock) -> None:
        eng = engine(clock)
        ids = {eng.authorize("bot", "payments:transfer", dict(BODY)).approval_id
               for _ in range(200)}
        assert len(ids) == 200
        for aid in ids:
            assert aid is not None and aid.startswith("apr_") and len(aid) == 36
            int(aid[4:], 16)

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
    def test_forked_workers_make_different_ids(self, clock: Clock) -> None:
        eng = engine(clock)
        eng.authorize("bot", "payments:transfer", dict(BODY))  # warm the parent
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one id down the pipe, then exit at once
            try:
                aid = eng.authorize("bot", "payments:transfer", dict(BODY)).approval_id
                os.write(write, str(aid).encode())
            finally:
                os._exit(0)
        os.close(write)
        child = os.read(read, 100).decode()
        os.close(read)
        os.waitpid(pid, 0)
        parent = eng.authorize("bot", "payments:transfer", dict(BODY)).approval_id
        assert child.startswith("apr_") and parent != child


class TestPolicyOptions:
    """``expires`` / ``uses`` in policy text: bounds, placement, formatting."""

    def test_options_round_trip_through_fmt(self) -> None:
        text = ('approval big: payments:* over 300 EUR when context.x == 1 '
                'expires 30m uses 2\n')
        assert format_source("currency EUR\n" + text).endswith(text)

    @pytest.mark.parametrize(("line", "code"), [
        ("permit p: payments:* uses 2", "E140"),
        ("forbid f: payments:* expires 1h", "E140"),
        ("approval a: payments:* uses 0", "E140"),
        ("approval a: payments:* uses 1001", "E140"),
        ("approval a: payments:* expires 31d", "E125"),
        ("approval a: payments:* expires 0s", "E125"),
        ("approval a: payments:* uses 1 uses 2", "E009"),
    ])
    def test_bad_options_are_positioned_errors(self, line: str, code: str) -> None:
        found = codes_of(("main.policy", f"role r: payments:*\nagent \"a\": r\n{line}\n"))
        assert [c for c, _, _ in found if c.startswith("E")] == [code]
        assert all(ln == 3 for c, ln, _ in found if c.startswith("E"))
