"""``engine.authorize(..., token=)``: authority under a delegation grant (issue 5, item 6).

The grant must verify (under the policy's ``delegation`` block), name the principal as its
``sub``, cover the permission at every hop and the amount under every hop's
``max_amount``; base policy must allow the agent too. Expected decisions are derived from
docs/semantics.md and docs/delegation.md, not from engine output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Clock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine import tokens
from policyengine._conformance import run_fixture
from policyengine.decision import NotAuthorized
from policyengine.engine import Engine
from policyengine.money import StaticRates

NOW = 1767225600  # 2026-01-01T00:00:00Z
ISSUER = "https://auth.example"
KEYS = tokens.KeySet.generate()
RATES = StaticRates("EUR", {"USD": "0.92"})

POLICY = """namespace travel
currency EUR
rate USD 0.92
role travel: flights:*, hotels:*, payments:refund
agent "travel-agent": travel
agent "hotel-agent": travel
agent "pay-agent": travel
agent "fourth-agent": travel
forbid no-hotel-cancel: hotels:cancel
limit refund-cap: payments:refund amount <= 300 EUR
tool refunds: function "issue_refund" -> payments:refund {
  amount = $.amount, currency = $.currency
}
"""
BLOCK = 'delegation { max_depth 2  max_ttl 1h  issuer "https://auth.example"  audience "travel" }\n'


def engine(text: str = POLICY, clock: Clock | None = None, **options: Any) -> Engine:
    options.setdefault("keys", KEYS)
    return Engine.from_source(text, name="t.policy", clock=clock or Clock(NOW), **options)


def mint(agent: str = "travel-agent", permissions: tuple[str, ...] = ("flights:*",), *,
         keys: tokens.KeySet = KEYS, now: float = NOW, **kw: Any) -> str:
    kw.setdefault("ttl", 3600)
    return tokens.mint(keys, issuer=kw.pop("issuer", ISSUER), acting_for="besar", agent=agent,
                       permissions=list(permissions), now=now, **kw)


def child_of(parent: str, agent: str, permissions: tuple[str, ...], **kw: Any) -> str:
    return tokens.attenuate(KEYS, parent, agent=agent, permissions=list(permissions), now=NOW,
                            rates=RATES, **kw)


ROOT = mint(permissions=("flights:*", "hotels:*", "payments:refund", "cars:*"),
            max_amount=("500", "EUR"), grant_id="g-root", jti="j-root")
CHILD = child_of(ROOT, "hotel-agent", ("flights:book", "hotels:*", "payments:refund"),
                 max_amount=("200", "EUR"), grant_id="g-child", jti="j-child")
GRAND = child_of(CHILD, "pay-agent", ("payments:refund",), max_amount=("150", "USD"),
                 grant_id="g-grand", jti="j-grand")
CHAIN2 = ["besar", "travel-agent"]
CHAIN3 = ["besar", "travel-agent", "hotel-agent"]
CHAIN4 = ["besar", "travel-agent", "hotel-agent", "pay-agent"]
TEN_EUR = {"amount": "10", "currency": "EUR"}  # payments:refund has a limit: no amount fails closed


def diag_codes(decision: Any) -> list[str]:
    return [d["code"] for d in decision.to_wire()["diagnostics"]]


def expect(decision: Any, status: str, code: str, *, diag: str | None = None,
           chain: list[str] | None = None) -> dict[str, Any]:
    wire = decision.to_wire()
    assert (wire["status"], wire["reasonCode"]) == (status, code), wire
    assert wire["allowed"] is (status == "allowed")
    if diag is not None:
        assert diag_codes(decision) == [diag], wire
    if chain is None:
        assert wire["actingFor"] is None and wire["chain"] is None, wire
    else:
        assert wire["actingFor"] == "besar" and wire["chain"] == chain, wire
    return wire


# --------------------------------------------------------------------------- subject
def test_allowed_under_root_and_child_with_chain_on_the_wire() -> None:
    e = engine()
    wire = expect(e.authorize("travel-agent", "flights:cancel", token=ROOT), "allowed",
                  "permitted", chain=CHAIN2)
    assert wire["rules"] == ["role:travel"]
    expect(e.authorize("hotel-agent", "flights:book", token=CHILD), "allowed", "permitted",
           chain=CHAIN3)
    expect(e.authorize("pay-agent", "payments:refund", {"amount": "10", "currency": "EUR"},
                       token=GRAND), "allowed", "permitted", chain=CHAIN4)


def test_without_token_no_acting_for() -> None:
    expect(engine().authorize("travel-agent", "flights:book"), "allowed", "permitted")


@pytest.mark.parametrize(("principal", "token", "chain"), [
    ("travel-agent", CHILD, CHAIN3),   # the parent agent presents its child's token
    ("hotel-agent", ROOT, CHAIN2),     # the child agent presents its parent's token
    ("mallory", ROOT, CHAIN2),         # an agent outside the chain
    ("besar", ROOT, CHAIN2),           # the principal is not the holder either
    ("Travel-agent", ROOT, CHAIN2),    # exact comparison
])
def test_sub_must_be_the_principal(principal: str, token: str, chain: list[str]) -> None:
    d = engine().authorize(principal, "flights:book", token=token)
    expect(d, "denied", "invalid_token", diag="subject_mismatch", chain=chain)


# --------------------------------------------------------------------------- coverage
def test_every_hop_must_cover_the_permission() -> None:
    e = engine()
    # base policy allows flights:cancel for hotel-agent, the root covers flights:*,
    # but the child hop only holds flights:book
    expect(e.authorize("hotel-agent", "flights:cancel"), "allowed", "permitted")
    expect(e.authorize("hotel-agent", "flights:cancel", token=CHILD), "denied",
           "not_delegated", diag="not_delegated", chain=CHAIN3)
    expect(e.authorize("pay-agent", "hotels:book", token=GRAND), "denied", "not_delegated",
           diag="not_delegated", chain=CHAIN4)


@pytest.mark.parametrize("permission", ["flightsx:a", "flights", "Flights:book", "payments:x"])
def test_coverage_is_segment_aware_and_exact(permission: str) -> None:
    d = engine().authorize("travel-agent", permission, token=ROOT)
    expect(d, "denied", "not_delegated", diag="not_delegated", chain=CHAIN2)


def test_intersection_with_base_policy() -> None:
    e = engine()
    d = e.authorize("travel-agent", "hotels:cancel", token=ROOT)  # token covers hotels:*
    wire = expect(d, "denied", "forbidden", chain=CHAIN2)
    assert wire["rules"] == ["travel.no-hotel-cancel"]
    d = e.authorize("travel-agent", "cars:rent", token=ROOT)  # token covers cars:*
    expect(d, "denied", "no_permit", chain=CHAIN2)
    d = e.authorize("travel-agent", "payments:refund", {"amount": "400", "currency": "EUR"},
                    token=ROOT)  # under the 500 EUR grant, over the 300 EUR policy limit
    wire = expect(d, "denied", "limit_exceeded", chain=CHAIN2)
    assert wire["rules"] == ["travel.refund-cap"]


def test_unknown_principal_with_a_token_for_it() -> None:
    token = mint("ghost", ("flights:*",))
    expect(engine().authorize("ghost", "flights:book", token=token), "denied", "no_permit",
           chain=["besar", "ghost"])


# --------------------------------------------------------------------------- amounts
@pytest.mark.parametrize(("token", "principal", "amount", "currency", "fits", "chain"), [
    (ROOT, "travel-agent", "300", "EUR", True, CHAIN2),
    (ROOT, "travel-agent", "500.01", "EUR", False, CHAIN2),
    (CHILD, "hotel-agent", "200", "EUR", True, CHAIN3),
    (CHILD, "hotel-agent", "200.01", "EUR", False, CHAIN3),      # the root would allow it
    (CHILD, "hotel-agent", "217", "USD", True, CHAIN3),          # 199.64 EUR
    (CHILD, "hotel-agent", "218", "USD", False, CHAIN3),         # 200.56 EUR
    (GRAND, "pay-agent", "150", "USD", True, CHAIN4),
    (GRAND, "pay-agent", "150.01", "USD", False, CHAIN4),
    (GRAND, "pay-agent", "138.01", "EUR", False, CHAIN4),        # 150.02 USD rounded up
    (GRAND, "pay-agent", "160", "EUR", False, CHAIN4),           # 173.92 USD; child allows
    (GRAND, "pay-agent", "1", "EUR", True, CHAIN4),
])
def test_amount_must_fit_every_hop(token: str, principal: str, amount: str, currency: str,
                                   fits: bool, chain: list[str]) -> None:
    d = engine().authorize(principal, "payments:refund",
                           {"amount": amount, "currency": currency}, token=token)
    if fits:
        wire = expect(d, "allowed", "permitted", chain=chain)
        assert wire["obligations"]["maxAmount"] == "300.00"
    else:
        expect(d, "denied", "delegation_amount_exceeded", diag="delegation_amount_exceeded",
               chain=chain)


def test_amount_exactly_at_a_cap_after_inverse_conversion() -> None:
    d = engine().authorize("pay-agent", "payments:refund", {"amount": "138", "currency": "EUR"},
                           token=GRAND)
    expect(d, "allowed", "permitted", chain=CHAIN4)


def test_default_currency_applies_to_the_grant() -> None:
    text = POLICY.replace("currency EUR\n", "currency EUR\ndefault_currency EUR\n")
    e = engine(text)
    assert e.authorize("travel-agent", "payments:refund", {"amount": "250"}).allowed
    d = e.authorize("travel-agent", "payments:refund", {"amount": "250"}, token=ROOT)
    expect(d, "allowed", "permitted", chain=CHAIN2)


@pytest.mark.parametrize(("context", "diag"), [
    ({"amount": "-5", "currency": "EUR"}, "negative_amount"),
    ({"amount": "abc", "currency": "EUR"}, "invalid_amount"),
    ({"amount": 1.5, "currency": "EUR"}, "float_amount"),
    ({"amount": True, "currency": "EUR"}, "bool_amount"),
    ({"amount": "10", "currency": "XYZ"}, "unknown_currency"),
    ({"amount": "10", "currency": "JPY"}, "amount_unconvertible"),  # no JPY rate
])
def test_bad_amount_under_a_capped_grant_is_denied(context: dict[str, Any], diag: str) -> None:
    d = engine().authorize("pay-agent", "payments:refund", context, token=GRAND)
    expect(d, "denied", "invalid_amount", diag=diag, chain=CHAIN4)


def test_grant_without_max_amount_leaves_amounts_to_policy() -> None:
    token = mint(permissions=("payments:refund",))
    e = engine()
    expect(e.authorize("travel-agent", "payments:refund", {"amount": "300", "currency": "EUR"},
                       token=token), "allowed", "permitted", chain=CHAIN2)
    expect(e.authorize("travel-agent", "payments:refund", {"amount": "300.01",
                                                            "currency": "EUR"}, token=token),
           "denied", "limit_exceeded", chain=CHAIN2)


# --------------------------------------------------------------------------- delegation block
def block_token(**kw: Any) -> str:
    kw.setdefault("audience", "travel")
    return mint(permissions=("flights:*",), **kw)


def test_delegation_block_accepts_conforming_chains() -> None:
    e = engine(POLICY + BLOCK)
    root = block_token()
    c1 = child_of(root, "hotel-agent", ("flights:*",))
    c2 = child_of(c1, "pay-agent", ("flights:book",))
    expect(e.authorize("travel-agent", "flights:book", token=root), "allowed", "permitted",
           chain=CHAIN2)
    expect(e.authorize("pay-agent", "flights:book", token=c2), "allowed", "permitted",
           chain=CHAIN4)
    c3 = child_of(c2, "fourth-agent", ("flights:book",))
    expect(e.authorize("fourth-agent", "flights:book", token=c3), "denied", "invalid_token",
           diag="depth_exceeded")


@pytest.mark.parametrize(("kw", "code"), [
    ({"ttl": 3601}, "ttl_exceeded"),
    ({"issuer": "https://auth.example.evil"}, "issuer_mismatch"),
    ({"issuer": "https://auth.exampl"}, "issuer_mismatch"),
    ({"audience": "travel-eu"}, "audience_mismatch"),
    ({"audience": "Travel"}, "audience_mismatch"),
    ({"audience": None}, "audience_mismatch"),
])
def test_delegation_block_rejections(kw: dict[str, Any], code: str) -> None:
    e = engine(POLICY + BLOCK)
    if kw.get("audience", "x") is None:
        kw.pop("audience")
        token = mint(permissions=("flights:*",), **kw)
    else:
        token = block_token(**kw)
    expect(e.authorize("travel-agent", "flights:book", token=token), "denied",
           "invalid_token", diag=code)


def test_max_ttl_applies_to_every_hop() -> None:
    e = engine(POLICY + BLOCK)
    long_root = block_token(ttl=7200)
    short_child = child_of(long_root, "hotel-agent", ("flights:book",), ttl=600)
    expect(e.authorize("hotel-agent", "flights:book", token=short_child), "denied",
           "invalid_token", diag="ttl_exceeded")


def test_token_max_depth_is_enforced_without_a_block() -> None:
    root = mint(permissions=("flights:*",), max_depth=1)
    c1 = child_of(root, "hotel-agent", ("flights:*",))
    expect(engine().authorize("hotel-agent", "flights:book", token=c1), "allowed",
           "permitted", chain=CHAIN3)
    with pytest.raises(tokens.AttenuationError):
        child_of(c1, "pay-agent", ("flights:book",))


# --------------------------------------------------------------------------- revocation
def test_revoking_a_grant_denies_it_and_its_descendants() -> None:
    e = engine()
    # warm the verification cache first: a revocation must still win
    assert e.authorize("hotel-agent", "flights:book", token=CHILD).allowed
    assert e.authorize("pay-agent", "payments:refund", TEN_EUR, token=GRAND).allowed
    e.revoke("g-child")
    expect(e.authorize("hotel-agent", "flights:book", token=CHILD), "denied", "invalid_token",
           diag="revoked")
    expect(e.authorize("pay-agent", "payments:refund", TEN_EUR, token=GRAND), "denied",
           "invalid_token", diag="revoked")
    expect(e.authorize("travel-agent", "flights:book", token=ROOT), "allowed", "permitted",
           chain=CHAIN2)
    e.revoke("j-root")  # by jti
    expect(e.authorize("travel-agent", "flights:book", token=ROOT), "denied",
           "invalid_token", diag="revoked")


def test_revocation_store_is_per_engine() -> None:
    a, b = engine(), engine()
    a.revoke("g-root")
    assert not a.authorize("travel-agent", "flights:book", token=ROOT).allowed
    assert b.authorize("travel-agent", "flights:book", token=ROOT).allowed


# --------------------------------------------------------------------------- time
def test_expiry_and_not_before_follow_the_injected_clock() -> None:
    clock = Clock(NOW)
    e = engine(clock=clock)
    token = mint(permissions=("flights:*",))  # valid [NOW, NOW + 3600), leeway 60
    assert e.authorize("travel-agent", "flights:book", token=token).allowed
    clock.t = NOW + 3600 + 59
    assert e.authorize("travel-agent", "flights:book", token=token).allowed
    clock.t = NOW + 3600 + 60
    expect(e.authorize("travel-agent", "flights:book", token=token), "denied",
           "invalid_token", diag="expired")
    clock.t = NOW - 61
    expect(e.authorize("travel-agent", "flights:book", token=token), "denied",
           "invalid_token", diag="not_yet_valid")
    later = mint(permissions=("flights:*",), not_before=NOW + 600)
    clock.t = NOW
    expect(e.authorize("travel-agent", "flights:book", token=later), "denied",
           "invalid_token", diag="not_yet_valid")
    clock.t = NOW + 600
    assert e.authorize("travel-agent", "flights:book", token=later).allowed


def test_expired_child_inside_a_live_parent() -> None:
    clock = Clock(NOW)
    e = engine(clock=clock)
    short = child_of(ROOT, "hotel-agent", ("flights:book",), max_amount=("10", "EUR"), ttl=60)
    clock.t = NOW + 120
    expect(e.authorize("hotel-agent", "flights:book", token=short), "denied",
           "invalid_token", diag="expired")
    assert e.authorize("hotel-agent", "flights:book", token=CHILD).allowed


# --------------------------------------------------------------------------- bad tokens
OUTSIDER = tokens.KeySet.generate()


def _tampered(token: str) -> str:
    h, p, s = token.split(".")
    flipped = p[:10] + ("A" if p[10] != "A" else "B") + p[11:]
    return f"{h}.{flipped}.{s}"


GARBAGE: list[tuple[Any, str | None]] = [
    ("", "malformed"),
    ("   ", None),
    ("a.b.c", "bad_base64"),
    ("not-a-token", "malformed"),
    (ROOT + ".", "malformed"),
    (ROOT + " ", "bad_base64"),
    (ROOT[:-4], None),
    ("x" * 20000, "token_too_large"),
    (_tampered(ROOT), None),
    (mint(keys=OUTSIDER), "unknown_kid"),
    (42, "malformed"),
    (0, "malformed"),
    (b"eyJ.eyJ.sig", "malformed"),
    (bytearray(b"abc"), "malformed"),
    ([ROOT], "malformed"),
    ({"token": ROOT}, "malformed"),
    (True, "malformed"),
    (1.5, "malformed"),
]


@pytest.mark.parametrize(("token", "diag"), GARBAGE)
def test_garbage_tokens_are_denied_never_raise(token: Any, diag: str | None) -> None:
    d = engine().authorize("travel-agent", "flights:book", token=token)
    wire = expect(d, "denied", "invalid_token")
    if diag is not None:
        assert diag_codes(d) == [diag]
    json.dumps(wire)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
                 st.lists(st.sampled_from(["eyJ", "hbGciOi", ".", "-", "_", "=", "AAAA"]),
                          max_size=40).map("".join)))
def test_random_strings_are_denied(token: str) -> None:
    d = ENGINE.authorize("travel-agent", "flights:book", token=token)
    assert d.status == "denied" and d.code == "invalid_token"


def test_engine_without_keys_denies_tokens() -> None:
    e = Engine.from_source(POLICY, clock=Clock(NOW))
    expect(e.authorize("travel-agent", "flights:book", token=ROOT), "denied", "invalid_token",
           diag="no_keys")
    assert e.authorize("travel-agent", "flights:book").allowed


def test_ensure_authorized_raises_with_the_decision() -> None:
    e = engine()
    with pytest.raises(NotAuthorized) as info:
        e.ensure_authorized("hotel-agent", "flights:cancel", token=CHILD)
    assert info.value.code == "not_delegated"
    assert e.ensure_authorized("hotel-agent", "flights:book", token=CHILD).chain == tuple(CHAIN3)


@pytest.mark.parametrize(("principal", "permission"), [
    ("travel-agent", "bad perm"), ("travel-agent", "trains:"), (42, "flights:book"),
])
def test_request_is_checked_before_the_token(principal: Any, permission: str) -> None:
    d = engine().authorize(principal, permission, token=ROOT)
    assert (d.status, d.code) == ("denied", "invalid_request")


# --------------------------------------------------------------------------- tools
def test_tool_authorize_under_a_grant() -> None:
    e = engine()
    td = e.tool_authorize("pay-agent", transport="function", function_name="issue_refund",
                          body={"amount": "160.00", "currency": "EUR"}, token=GRAND)
    wire = td.to_wire()
    assert (wire["outcome"], wire["reasonCode"]) == ("policy_deny",
                                                     "delegation_amount_exceeded")
    assert wire["chain"] == CHAIN4 and wire["actingFor"] == "besar"
    td = e.tool_authorize("pay-agent", transport="function", function_name="issue_refund",
                          body={"amount": "100.00", "currency": "USD"}, token=GRAND)
    assert td.to_wire()["outcome"] == "policy_allow" and td.decision.chain == tuple(CHAIN4)
    td = e.tool_authorize("hotel-agent", transport="function", function_name="issue_refund",
                          body={"amount": "1.00", "currency": "EUR"}, token=GRAND)
    assert (td.outcome, td.code) == ("policy_deny", "invalid_token")


# --------------------------------------------------------------------------- property
UNIVERSE = ["flights:book", "flights:cancel", "hotels:book", "hotels:cancel", "cars:rent",
            "payments:refund"]
PATTERNS = [*UNIVERSE, "flights:*", "hotels:*", "cars:*", "*"]
BASE_ALLOWS = {"flights:book", "flights:cancel", "hotels:book", "payments:refund"}
ENGINE = engine()


def matches(pattern: str, permission: str) -> bool:
    return pattern == "*" or pattern == permission or (
        pattern.endswith(":*") and permission.startswith(pattern[:-1]))


def narrows(child: str, parent: str) -> bool:
    if parent == "*":
        return True
    if child == "*":
        return False
    if child.endswith(":*"):
        return parent.endswith(":*") and child.startswith(parent[:-1])
    return matches(parent, child)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(root=st.sets(st.sampled_from(PATTERNS), min_size=1, max_size=4),
       pick=st.lists(st.integers(0, 1000), min_size=1, max_size=4),
       permission=st.sampled_from(UNIVERSE))
def test_delegated_allow_iff_base_allows_and_every_hop_covers(
        root: set[str], pick: list[int], permission: str) -> None:
    root_perms = sorted(root)
    allowed_children = [p for p in PATTERNS if any(narrows(p, q) for q in root_perms)]
    child_perms = sorted({allowed_children[i % len(allowed_children)] for i in pick})
    root_tok = mint(permissions=tuple(root_perms))
    child_tok = child_of(root_tok, "hotel-agent", tuple(child_perms))
    covered = (any(matches(p, permission) for p in root_perms)
               and any(matches(p, permission) for p in child_perms))
    d = ENGINE.authorize("hotel-agent", permission, TEN_EUR, token=child_tok)
    assert d.allowed == (covered and permission in BASE_ALLOWS)
    if not covered:
        assert d.code == "not_delegated"
    elif permission == "hotels:cancel":
        assert d.code == "forbidden"
    elif permission not in BASE_ALLOWS:
        assert d.code == "no_permit"
    assert d.acting_for == "besar" and d.chain == tuple(CHAIN3)


# --------------------------------------------------------------------------- conformance
FIXTURES = Path(__file__).resolve().parents[2] / "conformance" / "delegation"


def _results() -> list[Any]:
    out = []
    for path in sorted(FIXTURES.glob("*.json")):
        out.extend(run_fixture(path))
    return out


RESULTS = _results()


def test_delegation_corpus_is_big_enough() -> None:
    fixtures = [json.loads(p.read_text("utf-8")) for p in sorted(FIXTURES.glob("*.json"))]
    cases = [c for f in fixtures for c in f["cases"]]
    with_token = [c for c in cases if c["kind"] == "authorize" and "token" in c["request"]]
    assert len(with_token) >= 25
    assert all("keys" in f for f in fixtures)


@pytest.mark.parametrize("result", [
    pytest.param(r, id=f"{Path(r.fixture).stem}:{r.case}")
    for r in RESULTS
])
def test_delegation_conformance(result: Any) -> None:
    assert result.passed, result.message
