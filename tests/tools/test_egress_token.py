"""A call let through by an egress ``allow`` list (outcome ``egress_allow``: no route,
so no permission) still goes through the pipeline's grant step: a delegation token it
carries is verified and bound to the principal, as on every other call."""

from __future__ import annotations

from typing import Any

import pytest

from policyengine import tokens
from policyengine.engine import Engine

NOW = 1773144000.0  # 2026-03-10T12:00:00Z
ISSUER = "https://auth.example"
KEYS = tokens.KeySet.generate()
POLICY = """namespace n
role r: a:*
agent "bot": r
agent "other": r
delegation { issuer "https://auth.example" }
egress { allow "example.com" }
"""


def engine() -> Engine:
    return Engine.from_source(POLICY, keys=KEYS, clock=lambda: NOW)


def mint(agent: str, keys: tokens.KeySet = KEYS) -> str:
    return tokens.mint(keys, issuer=ISSUER, acting_for="alice", agent=agent,
                       permissions=["a:*"], now=NOW, ttl=3600)


def call(e: Engine, token: Any, explain: bool = False) -> Any:
    ask = e.explain_tool if explain else e.tool_authorize
    return ask("bot", transport="http", method="GET", host="example.com", path="/x",
               body={"q": 1}, token=token)


@pytest.mark.parametrize(("token", "diagnostic"), [
    ("garbage", None),
    ("a.b.c", None),
    (mint("other"), "subject_mismatch"),
    (mint("bot", tokens.KeySet.generate()), None),
])
def test_a_bad_token_is_refused_on_an_egress_allowed_host(token: str,
                                                           diagnostic: str | None) -> None:
    e = engine()
    d = call(e, token)
    assert (d.allowed, d.status, d.code) == (False, "denied", "invalid_token")
    assert d.outcome == "policy_deny" and d.body is None
    if diagnostic is not None:
        assert [x.code for x in d.diagnostics] == [diagnostic]
    explained = call(e, token, explain=True).decision
    assert (explained.status, explained.code, explained.reason) == (d.status, d.code,
                                                                   d.reason)


def test_a_revoked_token_is_refused_on_an_egress_allowed_host() -> None:
    e = engine()
    token = mint("bot")
    assert call(e, token).allowed
    e.revoke(e.verify_token(token).grant_id)
    d = call(e, token)
    assert d.code == "invalid_token" and d.outcome == "policy_deny"


def test_a_valid_token_acts_for_its_principal_on_an_egress_allowed_host() -> None:
    e = engine()
    d = call(e, mint("bot"))
    assert (d.allowed, d.outcome, d.code) == (True, "egress_allow", "egress_allowed")
    assert d.body == {"q": 1}
    assert d.decision.acting_for == "alice" and d.decision.chain
    without = call(e, None)
    assert (without.allowed, without.outcome) == (True, "egress_allow")
    assert without.decision.acting_for is None
