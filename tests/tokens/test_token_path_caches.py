"""What the cached-token path keeps between requests may never outlive what it depends on:
the engine's keys, its revocation store, the policy after a reload, and the permission
asked (issue 10, item 8: a decision under a cached token costs about a plain one)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine import tokens
from policyengine.decision import NotAuthorized
from policyengine.engine import Engine
from policyengine.money import StaticRates
from policyengine.tokens.grants import recheck_terms as grant_terms

KEYS = tokens.KeySet.generate()

ISSUER = "https://auth.example"
POLICY = ('namespace t\ncurrency EUR\nrole r: pay:*, docs:*\nagent "bot": r\n'
          f'delegation {{ issuer "{ISSUER}" }}\n')


def mint(keys: tokens.KeySet, permissions: list[str], agent: str = "bot",
         acting_for: str = "owner", **kw: object) -> str:
    return tokens.mint(keys, issuer=ISSUER, acting_for=acting_for, agent=agent,
                       permissions=permissions, ttl=3600, **kw)  # type: ignore[arg-type]


def served_from_file(tmp_path: Path) -> tuple[Engine, Path, str]:
    """An engine on a policy file (to reload), and a token it has allowed once (so the
    next request takes the cached-token path)."""
    keys = tokens.KeySet.generate()
    path = tmp_path / "p.policy"
    path.write_text(POLICY)
    engine = Engine.from_path(path, keys=keys)
    token = mint(keys, ["pay:*"])
    assert engine.authorize("bot", "pay:send", token=token).allowed
    return engine, path, token


def test_replacing_the_keys_takes_effect_on_the_next_request() -> None:
    first, second = tokens.KeySet.generate(), tokens.KeySet.generate()
    engine = Engine.from_source(POLICY, keys=first)
    token = mint(first, ["pay:*"])
    assert engine.authorize("bot", "pay:send", token=token).allowed
    engine.keys = second
    decision = engine.authorize("bot", "pay:send", token=token)
    assert decision.code == "invalid_token"
    engine.keys = first
    assert engine.authorize("bot", "pay:send", token=token).allowed


def test_a_revocation_and_a_new_store_take_effect() -> None:
    keys = tokens.KeySet.generate()
    engine = Engine.from_source(POLICY, keys=keys)
    token = mint(keys, ["pay:*"])
    grant = engine.verify_token(token)
    assert engine.authorize("bot", "pay:send", token=token).allowed
    engine.revoke(grant.grant_id)
    assert engine.authorize("bot", "pay:send", token=token).code == "invalid_token"
    engine.revocations = tokens.MemoryRevocationStore()
    assert engine.authorize("bot", "pay:send", token=token).allowed


def test_a_reload_applies_the_new_delegation_block(tmp_path: Path) -> None:
    engine, path, token = served_from_file(tmp_path)
    path.write_text(POLICY.replace(ISSUER, "https://other.example"))
    engine.reload()
    assert engine.authorize("bot", "pay:send", token=token).code == "invalid_token"


def test_covers_answers_the_same_every_time_and_per_permission() -> None:
    keys = tokens.KeySet.generate()
    engine = Engine.from_source(POLICY, keys=keys)
    token = mint(keys, ["pay:*"])
    for _ in range(3):
        assert engine.authorize("bot", "pay:send", token=token).allowed
        assert engine.authorize("bot", "docs:read", token=token).code == "not_delegated"
        assert engine.authorize("bot", "payx:send", token=token).code == "not_delegated"
    grant = engine.verify_token(token)
    for i in range(600):  # more permissions than one grant keeps answers for
        assert grant.covers(f"pay:p{i}")
        assert not grant.covers(f"docs:p{i}")


def test_a_cap_on_any_hop_checks_the_amount() -> None:
    keys = tokens.KeySet.generate()
    engine = Engine.from_source(POLICY, keys=keys)
    capped = mint(keys, ["pay:*"], max_amount=("10", "EUR"))
    root = mint(keys, ["pay:*"], agent="boss", max_amount=("10", "EUR"))
    child = tokens.attenuate(keys, root, agent="bot", permissions=["pay:*"])  # no own cap
    free = mint(keys, ["pay:*"])
    assert engine.verify_token(capped).capped and engine.verify_token(child).capped
    assert not engine.verify_token(free).capped
    over = {"amount": "11", "currency": "EUR"}
    assert engine.authorize("bot", "pay:send", over, token=capped).code == (
        "delegation_amount_exceeded")
    assert engine.authorize("bot", "pay:send", over, token=child).code == (
        "delegation_amount_exceeded")
    assert engine.authorize("bot", "pay:send", over, token=free).allowed
    assert engine.authorize("bot", "pay:send", {"amount": "9", "currency": "EUR"},
                            token=child).allowed


def test_grant_fields_in_rules_follow_each_token() -> None:
    """The ``grant.*`` view is kept per token: two tokens of one agent, acting for two
    people, asked in turn, each read as their own."""
    keys = tokens.KeySet.generate()
    engine = Engine.from_source(
        POLICY + 'forbid not-for-ann: pay:* when grant.delegated and grant.acting_for != "ann"\n',
        keys=keys)
    ann = mint(keys, ["pay:*"], acting_for="ann")
    bob = mint(keys, ["pay:*"], acting_for="bob")
    for _ in range(3):
        assert engine.authorize("bot", "pay:send", token=ann).allowed
        assert engine.authorize("bot", "pay:send", token=bob).code == "forbidden"
        assert engine.authorize("bot", "pay:send").allowed  # no token: not delegated


# ---- a grant kept between requests: the clock, revocations, subject and cap every time ----

def test_revoking_an_ancestor_stops_a_kept_child_token() -> None:
    keys = tokens.KeySet.generate()
    engine = Engine.from_source(POLICY + 'agent "sub": r\n', keys=keys)
    root = mint(keys, ["pay:*"])
    child = tokens.attenuate(keys, root, agent="sub", permissions=["pay:send"])
    for _ in range(3):  # verified once, then kept
        assert engine.authorize("sub", "pay:send", token=child).allowed
    engine.revoke(engine.verify_token(root).grant_id)
    decision = engine.authorize("sub", "pay:send", token=child)
    assert decision.code == "invalid_token"
    assert decision.diagnostics[0].code == "revoked"


class FlakyRevocations(tokens.MemoryRevocationStore):
    """Answers until ``down`` is set, then fails as a shared store that lost its server
    for too long does."""

    down = False

    def any_revoked(self, identifiers: object) -> bool:
        if self.down:
            raise tokens.TokenError("revocation_unavailable", "cannot reach the server")
        return super().any_revoked(identifiers)  # type: ignore[arg-type]


def test_a_revocation_store_that_cannot_answer_denies_a_kept_token() -> None:
    keys = tokens.KeySet.generate()
    store = FlakyRevocations()
    engine = Engine.from_source(POLICY, keys=keys, revocations=store)
    token = mint(keys, ["pay:*"])
    assert engine.authorize("bot", "pay:send", token=token).allowed
    store.down = True
    decision = engine.authorize("bot", "pay:send", token=token)
    assert decision.code == "invalid_token"
    assert decision.diagnostics[0].code == "revocation_unavailable"
    store.down = False
    assert engine.authorize("bot", "pay:send", token=token).allowed


class BrokenRevocations:
    """A custom store (no subclass of the memory stores) whose server is gone: every
    question raises what its client library raises, not a TokenError."""

    def __init__(self) -> None:
        self.down = False
        self.ids: set[str] = set()

    def revoke(self, identifier: str) -> None:
        self.ids.add(identifier)

    def is_revoked(self, identifier: str) -> bool:
        return self.any_revoked([identifier])

    def any_revoked(self, identifiers: object) -> bool:
        if self.down:
            raise RuntimeError("connection reset by peer")
        return not self.ids.isdisjoint(identifiers)  # type: ignore[arg-type]


def _unavailable(decision: object) -> None:
    d = getattr(decision, "decision", decision)
    assert (d.status, d.code) == ("denied", "invalid_token")  # type: ignore[attr-defined]
    assert d.diagnostics[0].code == "revocation_unavailable"  # type: ignore[attr-defined]
    assert "RuntimeError" in d.reason  # type: ignore[attr-defined]


@given(st.booleans(), st.sampled_from(["authorize", "explain", "tool_authorize",
                                       "explain_tool"]))
@settings(max_examples=20, deadline=None)
def test_a_custom_revocation_store_that_raises_denies(kept: bool, how: str) -> None:
    """Fail closed, as a failing budget or approval store does: a denial with a code,
    never an exception out of the request, whether the token was verified before (kept)
    or not; the same token is allowed again once the store answers."""
    store = BrokenRevocations()
    engine = Engine.from_source(POLICY + 'tool pay: mcp "pay" -> pay:send\n', keys=KEYS,
                                revocations=store)
    token = mint(KEYS, ["pay:*"])
    if kept:
        assert engine.authorize("bot", "pay:send", token=token).allowed
    store.down = True
    if how in ("authorize", "explain"):
        decision = getattr(engine, how)("bot", "pay:send", token=token)
    else:
        decision = getattr(engine, how)("bot", transport="mcp", tool_name="pay",
                                        body={}, token=token)
    _unavailable(decision)
    with pytest.raises(NotAuthorized) as info:
        engine.ensure_authorized("bot", "pay:send", token=token)
    assert info.value.code == "invalid_token"
    with pytest.raises(tokens.TokenError) as raised:
        engine.verify_token(token)
    assert raised.value.code == "revocation_unavailable"
    with pytest.raises(tokens.TokenError) as raised:
        tokens.attenuate(KEYS, token, agent="sub", permissions=["pay:send"],
                         revocations=store)
    assert raised.value.code == "revocation_unavailable"
    store.down = False
    assert engine.authorize("bot", "pay:send", token=token).allowed


def test_a_kept_token_is_still_bound_to_its_holder_and_its_permissions() -> None:
    keys = tokens.KeySet.generate()
    engine = Engine.from_source(POLICY + 'agent "other": r\n', keys=keys)
    token = mint(keys, ["pay:send"])
    assert engine.authorize("bot", "pay:send", token=token).allowed
    stolen = engine.authorize("other", "pay:send", token=token)
    assert (stolen.code, stolen.diagnostics[0].code) == ("invalid_token", "subject_mismatch")
    assert engine.authorize("bot", "pay:refund", token=token).code == "not_delegated"
    assert engine.authorize("bot", "pay:send", token=token).allowed


def test_a_kept_capped_token_checks_each_amount() -> None:
    keys = tokens.KeySet.generate()
    engine = Engine.from_source(POLICY, keys=keys)
    capped = mint(keys, ["pay:*"], max_amount=("10", "EUR"))
    for _ in range(3):
        assert engine.authorize("bot", "pay:send", {"amount": "9", "currency": "EUR"},
                                token=capped).allowed
        assert engine.authorize("bot", "pay:send", {"amount": "11", "currency": "EUR"},
                                token=capped).code == "delegation_amount_exceeded"


def test_a_kept_token_answers_to_the_policy_after_a_reload(tmp_path: Path) -> None:
    engine, path, token = served_from_file(tmp_path)
    path.write_text(POLICY + "forbid stop: pay:send when grant.delegated\n")
    engine.reload()
    assert engine.authorize("bot", "pay:send", token=token).code == "forbidden"
    assert engine.authorize("bot", "pay:send").allowed


@settings(max_examples=40, deadline=None)
@given(ttl=st.integers(61, 7200), iat_shift=st.integers(0, 600),
       offset=st.integers(-700, 7900), leeway=st.integers(0, 60))
def test_recheck_terms_accept_exactly_when_verify_does(ttl: int, iat_shift: int,
                                                       offset: int, leeway: int) -> None:
    """What a kept grant is checked against between verifications is what ``verify``
    accepts by the clock (nbf, iat, exp of every hop), with the same leeway, and names
    every hop's ids."""
    keys = KEYS
    now = 1_767_225_600
    # valid from ``now`` but issued later: iat and nbf bound the window separately
    root = tokens.mint(keys, issuer=ISSUER, acting_for="owner", agent="boss",
                       permissions=["pay:*"], ttl=ttl + 600, now=now + iat_shift,
                       not_before=now)
    child = tokens.attenuate(keys, root, agent="bot", permissions=["pay:send"], ttl=ttl,
                             now=now + iat_shift)
    child_exp = now + iat_shift + ttl
    root_grant = tokens.verify(keys, root, now=now + iat_shift)
    for token, exp in ((root, child_exp + 600), (child, child_exp)):
        grant = tokens.verify(keys, token, now=now + iat_shift, leeway=leeway)
        terms = grant_terms(grant, leeway)
        assert terms is not None
        lo, hi, ids = terms
        edges = (now - leeway, now + iat_shift - leeway, exp + leeway)
        for t in (now + offset, *(edge + d for edge in edges for d in (-1, 0, 1))):
            try:
                tokens.verify(keys, token, now=t, leeway=leeway)
                accepted = True
            except tokens.TokenError:
                accepted = False
            assert accepted == (lo <= t < hi), t
    assert set(ids) == {grant.grant_id, grant.jti, root_grant.grant_id, root_grant.jti}


def test_recheck_terms_refuse_a_grant_whose_caps_were_converted() -> None:
    rates = StaticRates("EUR", {"USD": "0.92"})
    root = tokens.mint(KEYS, issuer=ISSUER, acting_for="owner", agent="boss",
                       permissions=["pay:*"], ttl=3600, max_amount=("100", "EUR"))
    same = tokens.attenuate(KEYS, root, agent="bot", permissions=["pay:*"],
                            max_amount=("50", "EUR"))
    converted = tokens.attenuate(KEYS, root, agent="bot", permissions=["pay:*"],
                                 max_amount=("50", "USD"), rates=rates)
    assert grant_terms(tokens.verify(KEYS, same)) is not None
    assert grant_terms(tokens.verify(KEYS, converted, rates=rates)) is None


# ---- a counting revocation store is asked again only after a revocation ---------------

def _counting_engine(store: tokens.MemoryRevocationStore) -> tuple[Engine, str, list[int]]:
    """An engine over ``store`` whose ``any_revoked`` calls are counted (on the instance:
    the store's class is unchanged), and a token it has allowed a few times."""
    keys = tokens.KeySet.generate()
    asked: list[int] = []
    any_revoked = store.any_revoked

    def counted(identifiers: object) -> bool:
        asked.append(1)
        return any_revoked(identifiers)  # type: ignore[arg-type]

    store.any_revoked = counted  # type: ignore[method-assign]
    engine = Engine.from_source(POLICY, keys=keys, revocations=store)
    token = mint(keys, ["pay:*"])
    for _ in range(3):
        assert engine.authorize("bot", "pay:send", token=token).allowed
    return engine, token, asked


def test_a_kept_grant_asks_a_counting_store_again_only_after_a_revocation(
        tmp_path: Path) -> None:
    for store in (tokens.MemoryRevocationStore(),
                  tokens.JsonFileRevocationStore(tmp_path / "revoked.json")):
        engine, token, asked = _counting_engine(store)
        seen = len(asked)
        assert engine.authorize("bot", "pay:send", token=token).allowed
        assert len(asked) == seen  # nothing revoked since: the count stands
        store.revoke("some-other-grant")
        assert engine.authorize("bot", "pay:send", token=token).allowed
        assert len(asked) == seen + 1
        tokens.revoke(store, engine.verify_token(token).jti)  # the store's own revoke
        decision = engine.authorize("bot", "pay:send", token=token)
        assert (decision.code, decision.diagnostics[0].code) == ("invalid_token", "revoked")


def test_a_subclass_answering_otherwise_is_asked_every_time() -> None:
    """A store whose class is not exactly one of the in-memory ones may answer from
    elsewhere: its ``any_revoked`` is asked on every request under a kept grant."""
    class Elsewhere(tokens.MemoryRevocationStore):
        revoked = False

        def any_revoked(self, identifiers: object) -> bool:
            return self.revoked

    store = Elsewhere()
    keys = tokens.KeySet.generate()
    engine = Engine.from_source(POLICY, keys=keys, revocations=store)
    token = mint(keys, ["pay:*"])
    for _ in range(3):
        assert engine.authorize("bot", "pay:send", token=token).allowed
    store.revoked = True  # no revoke(): the count does not move
    assert engine.authorize("bot", "pay:send", token=token).code == "invalid_token"


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(st.sampled_from(["ask", "ask", "other", "leaf", "root"]),
                      min_size=1, max_size=12))
def test_a_kept_token_stops_on_the_request_after_its_revocation(steps: list[str]) -> None:
    """Revocations of other ids, of the token's own jti or of its root grant, in any
    order with requests: a request is allowed exactly while none of its chain's ids is
    revoked, the very next request after a revocation included."""
    keys = tokens.KeySet.generate()
    store = tokens.MemoryRevocationStore()
    engine = Engine.from_source(POLICY + 'agent "sub": r\n', keys=keys, revocations=store)
    root = mint(keys, ["pay:*"])
    child = tokens.attenuate(keys, root, agent="sub", permissions=["pay:send"])
    ids = {"leaf": engine.verify_token(child).jti, "root": engine.verify_token(root).grant_id}
    revoked = False
    for i, step in enumerate(steps):
        if step == "other":
            store.revoke(f"unrelated-{i}")
        elif step in ids:
            store.revoke(ids[step])
            revoked = True
        decision = engine.authorize("sub", "pay:send", token=child)
        assert decision.allowed is not revoked, (steps, i)


@settings(max_examples=40, deadline=None)
@given(ttl=st.integers(61, 7200),
       offsets=st.lists(st.one_of(st.integers(-200, 7400),
                                  st.floats(-200, 7400, allow_nan=False)), max_size=6),
       edge=st.sampled_from([-1.0, -0.5, -1e-6, 0.0, 1e-6, 0.5]))
def test_a_kept_grant_is_accepted_exactly_while_verify_accepts(
        ttl: int, offsets: list[float], edge: float) -> None:
    """A request under a kept grant, at any time (whole or fractional seconds, at and
    around the window's edges with the default leeway), is allowed exactly when
    ``verify`` accepts the token at that time."""
    from conftest import Clock
    now = 1_767_225_600
    clock = Clock(float(now))
    keys = tokens.KeySet.generate()
    engine = Engine.from_source(POLICY, keys=keys, clock=clock)
    token = tokens.mint(keys, issuer=ISSUER, acting_for="owner", agent="bot",
                        permissions=["pay:*"], ttl=ttl, now=now)
    assert engine.authorize("bot", "pay:send", token=token).allowed  # now kept
    for t in (*(now + o for o in offsets), now - 60 + edge, now + ttl + 60 + edge):
        clock.t = t
        try:
            tokens.verify(keys, token, now=t, issuer=ISSUER)
            accepted = True
        except tokens.TokenError:
            accepted = False
        assert engine.authorize("bot", "pay:send", token=token).allowed is accepted, t


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_a_token_altered_before_its_signature_is_verified_itself(
        data: st.DataObject) -> None:
    """A token that differs from a kept one anywhere before the end of its signature -- a
    payload or header altered, the signature kept -- is verified as itself (and refused),
    never served the kept grant; and the kept token, as a new string equal to it (as
    read from a request), still is."""
    engine = Engine.from_source(POLICY, keys=KEYS)
    token = mint(KEYS, ["pay:*"])
    assert engine.authorize("bot", "pay:send", token=token).allowed  # kept now
    at = data.draw(st.integers(0, len(token) - 25), label="position")
    replacement = data.draw(st.sampled_from("AQgw-_.x"), label="character")
    forged = token[:at] + replacement + token[at + 1:]
    if forged == token:
        return
    decision = engine.authorize("bot", "pay:send", token=forged)
    assert not decision.allowed
    assert decision.code == "invalid_token"
    assert engine.authorize("bot", "pay:send", token="".join(list(token))).allowed
