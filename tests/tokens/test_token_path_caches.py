"""What the cached-token path keeps between requests may never outlive what it depends on:
the engine's keys, its revocation store, the policy after a reload, and the permission
asked (issue 10, item 8: a decision under a cached token costs about a plain one)."""

from __future__ import annotations

from pathlib import Path

from policyengine import tokens
from policyengine.engine import Engine

ISSUER = "https://auth.example"
POLICY = ('namespace t\ncurrency EUR\nrole r: pay:*, docs:*\nagent "bot": r\n'
          f'delegation {{ issuer "{ISSUER}" }}\n')


def mint(keys: tokens.KeySet, permissions: list[str], agent: str = "bot",
         acting_for: str = "owner", **kw: object) -> str:
    return tokens.mint(keys, issuer=ISSUER, acting_for=acting_for, agent=agent,
                       permissions=permissions, ttl=3600, **kw)  # type: ignore[arg-type]


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
    keys = tokens.KeySet.generate()
    path = tmp_path / "p.policy"
    path.write_text(POLICY)
    engine = Engine.from_path(path, keys=keys)
    token = mint(keys, ["pay:*"])
    assert engine.authorize("bot", "pay:send", token=token).allowed
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
