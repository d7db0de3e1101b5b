"""Access tokens and issuer-bound keys: a service whose key set also trusts an identity
provider's key (bound to that provider's issuer, to verify its delegation grants) must
never take that key's signature on an access token. The provider holds its private key;
before, it could sign ``typ: at+jwt`` claims naming the service's issuer and any agent,
and the service answered as that agent."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

import policyengine as pe
from policyengine.server import Credentials, ServiceConfig, create_app
from policyengine.server._access import ACCESS_TYP, AccessTokens
from policyengine.tokens._jws import b64decode, b64encode

from .service_harness import POLICIES, SECRETS, serving

SERVICE = "policyengine"  # the service's issuer (ServiceConfig's default)
IDP = "https://idp.example"


def service_keys() -> tuple[pe.KeySet, pe.KeySet]:
    """(the service's key set, which also trusts the provider's public key; the
    provider's own set, private key included)."""
    own = pe.KeySet.generate(issuer=SERVICE)
    idp = pe.KeySet.generate(issuer=IDP)
    return own.merge(pe.KeySet.load_jwks(idp.public_jwks())), idp


def access_token(signer: pe.tokens.Key, agent: str, issuer: str = SERVICE) -> str:
    now = int(time.time())
    header = {"alg": signer.alg, "kid": signer.kid, "typ": ACCESS_TYP}
    claims = {"iss": issuer, "sub": agent, "client_id": "x", "iat": now,
              "exp": now + 600, "jti": "j", "permissions": []}
    signing_input = (f"{b64encode(json.dumps(header).encode())}."
                     f"{b64encode(json.dumps(claims).encode())}")
    return f"{signing_input}.{b64encode(signer.sign(signing_input.encode('ascii')))}"


def test_a_key_of_another_issuer_does_not_vouch_for_an_access_token() -> None:
    keys, idp = service_keys()
    access = AccessTokens(keys, issuer=SERVICE)
    assert access.agent_of(access.issue("travel-agent", "key_travel", [])) == "travel-agent"
    forged = access_token(idp.active_key, "travel-agent")
    assert access.agent_of(forged) is None
    assert access.cached_agent(forged) is None
    # the service's own key, by hand, still verifies (the refusal is the binding's)
    assert access.agent_of(access_token(keys.active_key, "hotel-agent")) == "hotel-agent"


def test_issue_signs_with_a_key_of_the_service_issuer() -> None:
    # a set whose active key belongs to another issuer, with a signing key of ours
    other = pe.KeySet.generate(issuer="https://other.example")
    ours = pe.KeySet.generate(issuer=SERVICE)
    both = other.merge(ours)
    assert both.active_key.issuer == "https://other.example"
    access = AccessTokens(both, issuer=SERVICE)
    token = access.issue("travel-agent", "key_travel", [])
    header = json.loads(b64decode(token.split(".")[0]))
    assert header["kid"] == ours.active_key.kid
    assert access.agent_of(token) == "travel-agent"


def test_issue_refuses_without_a_key_of_the_service_issuer() -> None:
    access = AccessTokens(pe.KeySet.generate(issuer=IDP), issuer=SERVICE)
    with pytest.raises(pe.TokenError) as info:
        access.issue("travel-agent", "key_travel", [])
    assert info.value.code == "issuer_key_mismatch"


@pytest.fixture
def two_issuers(credentials: Credentials) -> Iterator[tuple[str, pe.KeySet]]:
    keys, idp = service_keys()
    engine = pe.Engine.from_path(str(POLICIES), keys=keys)
    app = create_app(engine, credentials=credentials, keys=keys, paths=[str(POLICIES)],
                     config=ServiceConfig(access_log=False))
    try:
        with serving(app) as port:
            yield f"http://127.0.0.1:{port}", idp
    finally:
        engine.close()


def test_over_http_the_provider_cannot_act_as_an_agent(
        two_issuers: tuple[str, pe.KeySet]) -> None:
    url, idp = two_issuers
    body = {"permission": "flights:book", "context": {"country": "FR"}}
    forged = access_token(idp.active_key, "travel-agent")
    r = httpx.post(f"{url}/v1/authorize", json=body,
                   headers={"authorization": f"Bearer {forged}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    token = httpx.post(f"{url}/v1/oauth/token", data={
        "grant_type": "client_credentials", "client_id": "key_travel",
        "client_secret": SECRETS["key_travel"]}).json()["access_token"]
    r = httpx.post(f"{url}/v1/authorize", json=body,
                   headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json()["allowed"] is True
    # the provider's delegation grants still verify: its key is trusted for its issuer
    grant = pe.tokens.mint(idp, issuer=IDP, acting_for="besar", agent="travel-agent",
                           permissions=["flights:*"], ttl=600)
    r = httpx.post(f"{url}/v1/authorize", json=body,
                   headers={"authorization": f"Bearer {grant}"})
    assert r.status_code == 200 and r.json()["allowed"] is True, r.text
    assert r.json()["actingFor"] == "besar"
