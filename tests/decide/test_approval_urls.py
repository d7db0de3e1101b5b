"""Approval store URLs: a bad option (``?schema=Bad-Name``, ``?prefix=``) or a URL the
driver cannot read is ``ApprovalError`` ``approval_store_error``, never a bare ValueError
(nor an empty prefix silently replaced by the default)."""

from __future__ import annotations

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
    ("redis://127.0.0.1:port/0", "cast"), ("sqlite:///a.db", "memory:"),
])
def test_a_bad_approval_url_is_refused_with_its_code(url: str, why: str) -> None:
    with pytest.raises(ApprovalError) as info:
        approvals_from_url(url)
    assert info.value.code == "approval_store_error", str(info.value)
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
        assert isinstance(err, ApprovalError) and err.code == "approval_store_error", err
        return
    try:  # it answers (the namespace is dropped after)
        with pytest.raises(ApprovalError) as info:
            store.get("apr_none")
        assert info.value.code == "unknown_approval"
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()
