"""Approval store URLs: a bad option (``?schema=Bad-Name``, ``?prefix=``) or a URL the
driver cannot read is ``ApprovalError`` ``invalid_approval_store``, never a bare ValueError
(nor an empty prefix silently replaced by the default), and never the outage code
``approval_store_error``: an operator told the URL is wrong fixes the URL, one told the
store is down waits for it."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

import pytest
from conftest import POSTGRES_URL, REDIS_URL, require_service
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine.decide import ApprovalError, approvals_from_url
from policyengine.errors import PolicyEngineError

# Nothing listens on port 1: these are refused before any connection.
NO_PG = "postgresql://u:s3cret@127.0.0.1:1/db"
NO_REDIS = "redis://127.0.0.1:1/0"


@pytest.mark.parametrize(("url", "why"), [
    (f"{NO_PG}?schema=Bad-Name", "schema"), (f"{NO_PG}?schema=", "schema"),
    (f"{NO_PG}?schema=a&schema=b", "twice"), (f"{NO_REDIS}?prefix=", "prefix"),
    ("redis://127.0.0.1:port/0", "port is no number"), ("sqlite:///a.db", "memory:"),
])
def test_a_bad_approval_url_is_refused_with_its_code(url: str, why: str) -> None:
    with pytest.raises(ApprovalError) as info:
        approvals_from_url(url)
    assert info.value.code == "invalid_approval_store", str(info.value)
    assert why in info.value.message  # refused for what it says, not a failed connection
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("kind", ["postgres", "redis"])
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_option_value_opens_or_gives_the_code(kind: str, store_namespace: str,
                                                  data: st.DataObject) -> None:
    require_service(kind)
    name = "schema" if kind == "postgres" else "prefix"
    bad = ["", "Bad-Name", "1abc", "a" * 64] if kind == "postgres" else [""]
    value = data.draw(st.one_of(st.text(max_size=5).map(lambda t: store_namespace + t),
                                st.sampled_from(bad)))
    url = f"{POSTGRES_URL if kind == 'postgres' else REDIS_URL}?{name}={quote(value, safe='')}"
    try:
        store = approvals_from_url(url)
    except PolicyEngineError as err:
        assert isinstance(err, ApprovalError) and err.code == "invalid_approval_store", err
        return
    try:  # it answers (the namespace is dropped after)
        with pytest.raises(ApprovalError) as info:
            store.get("apr_none")
        assert info.value.code == "unknown_approval"
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()


APPROVAL_POLICY = 'namespace t\nrole r: docs:*\nagent "bot": r\napproval del: docs:delete\n'


@pytest.mark.parametrize(("bad", "down"), [
    (f"{NO_PG}?schema=Bad-Name", f"{NO_PG}?connect_timeout=1"),
    (f"{NO_REDIS}?prefix=", NO_REDIS),
])
def test_a_bad_url_and_an_outage_have_different_codes(bad: str, down: str) -> None:
    """Before, both were ``approval_store_error`` (only the message's first words told a
    typo in the URL from a store that is down). The bad URL is refused where the store is
    opened, by ``approvals_from_url`` and the engine alike; the outage is the store's
    ``approval_store_error`` from a call (or from opening it, for PostgreSQL, which
    connects then) and the engine's denial of the request needing approval."""
    from policyengine.engine import Engine

    def code_of(call: Callable[[], object]) -> str:
        with pytest.raises(ApprovalError) as info:
            call()
        return info.value.code

    bad_codes = {code_of(lambda: approvals_from_url(bad)),
                 code_of(lambda: Engine.from_source(APPROVAL_POLICY, approvals=bad))}
    assert bad_codes == {"invalid_approval_store"}
    if down.startswith("postgresql"):
        down_codes = {code_of(lambda: approvals_from_url(down))}
    else:
        store = approvals_from_url(down)
        try:
            engine = Engine.from_source(APPROVAL_POLICY, approvals=store)
            decision = engine.authorize("bot", "docs:delete", {})
            down_codes = {code_of(lambda: store.get("apr_" + "0" * 32)), decision.code}
            assert decision.status == "denied"
        finally:
            store.close()
    assert down_codes == {"approval_store_error"}
    assert bad_codes.isdisjoint(down_codes)
