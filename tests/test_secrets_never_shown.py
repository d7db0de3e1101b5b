"""Secrets never reach a text a user, a log or a client sees.

Each test plants a recognisable secret (a store URL's password or query secret, an HTTP
collector's token, an OAuth client secret, an HMAC key) where a message, a repr or a
command's output could echo it, and asserts it is absent. Store URLs are refused before
any connection (a bad option, a port that is no number, nothing listening on port 1).
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from policyengine._storeurl import (
    StoreUrlError,
    check_postgres_url,
    check_redis_url,
    redact_url,
    safe_reason,
    split_store_url,
)
from policyengine.audit import DecisionLogError, HttpSink, sink_from_url
from policyengine.budgets import store_from_url
from policyengine.cli import main
from policyengine.decide import approvals_from_url
from policyengine.errors import PolicyEngineError
from policyengine.server._models import TokenRequest, TokenResponse
from policyengine.tokens import revocations_from_url

SECRET = "Pl4ntedS3cret"

#: Store URLs that are refused before a connection, each with the planted secret where
#: a user may put a password: a password holding an unescaped / # or ? (read by
#: ``urlsplit`` as a port, path or query), ``?password=`` and libpq's other secrets.
REFUSED = [
    f"redis://:{SECRET}/x@127.0.0.1:6379/0",
    f"redis://:x/{SECRET}@127.0.0.1:6379/0",
    f"rediss://:{SECRET}#x@127.0.0.1:6379/0",
    f"redis://:{SECRET}?x@127.0.0.1:6379/0",
    f"redis://u@127.0.0.1:6379/0?password={SECRET}",
    f"redis://:{SECRET}@127.0.0.1:6379/notadb",
    f"postgresql://u:{SECRET}/x@127.0.0.1:5432/db",
    f"postgresql://u@127.0.0.1:5432/db?password={SECRET}&sslmode=requried",
    f"postgresql://u@127.0.0.1:5432/db?sslpassword={SECRET}&bogus=1",
    f"postgresql://u@127.0.0.1:5432/db?oauth_client_secret={SECRET}&prefix=x",
    f"postgres://u:{SECRET}@127.0.0.1:5432/db?sslmdoe=require",
    f"postgresql://u:{SECRET}@[::1/db",
]


def _message(opener: object, url: str) -> str:
    with pytest.raises(PolicyEngineError) as info:
        opener(url)  # type: ignore[operator]
    return f"{info.value} {info.value!r} {info.value.message}"


@pytest.mark.parametrize("url", REFUSED)
@pytest.mark.parametrize("opener", [store_from_url, approvals_from_url, revocations_from_url],
                         ids=["budgets", "approvals", "revocations"])
def test_a_refused_store_url_never_shows_its_secret(opener: object, url: str) -> None:
    message = _message(opener, url)
    assert SECRET not in message
    assert "store_unavailable" not in message  # refused for the URL, not a connection


@pytest.mark.parametrize("opener", [store_from_url, approvals_from_url, revocations_from_url],
                         ids=["budgets", "approvals", "revocations"])
def test_an_unreachable_store_never_shows_its_password(opener: object) -> None:
    for url in (f"postgresql://u:{SECRET}@127.0.0.1:1/db?connect_timeout=1",
                f"redis://:{SECRET}@127.0.0.1:1/0"):
        with pytest.raises(PolicyEngineError) as info:
            store = opener(url)  # type: ignore[operator]
            store.list()  # a Redis approval store connects at its first call
        assert SECRET not in f"{info.value} {info.value!r}"


def test_a_secret_given_where_a_store_url_belongs_is_not_shown() -> None:
    message = _message(store_from_url, SECRET)
    assert SECRET not in message
    assert "no URL scheme" in message


@pytest.mark.parametrize("text", [f"default:{SECRET}", f"user:{SECRET}@db.internal",
                                  f"{SECRET}:x", f"db.internal:{SECRET}"])
def test_a_secret_given_where_a_url_belongs_with_a_colon_is_not_shown(text: str) -> None:
    """A credential pair (``user:password``) or a URL missing its ``scheme://`` holds a
    ``:``, so it looked like a URL with a scheme and was quoted whole."""
    for make in (store_from_url, sink_from_url):
        message = _message(make, text)
        assert SECRET not in message, message
        assert "no URL scheme" in message
    assert redact_url("memory:?durability=full") == "memory:?durability=full"


def test_the_budget_store_url_is_shown_with_what_holds_no_secret() -> None:
    message = _message(store_from_url,
                       f"postgresql://app:{SECRET}@db.internal:5432/ledger"
                       f"?password={SECRET}&sslmode=requried")
    assert "postgresql://app:***@db.internal:5432/ledger?password=***&sslmode=requried" \
        in message


def test_the_cli_never_prints_a_store_password(capsys: pytest.CaptureFixture[str]) -> None:
    for url in (f"redis://:x/{SECRET}@127.0.0.1:6379/0",
                f"postgresql://u@127.0.0.1:1/db?password={SECRET}&bogus=1"):
        for extra in ([], ["--revocations"]):
            code = main(["store", "init", *extra, url])
            out = capsys.readouterr()
            assert code != 0
            assert SECRET not in out.out + out.err


# ------------------------------------------------------------------ property
_USERINFO = st.text(st.sampled_from(
    "abcXYZ0189-._~!$&'()*+,;=:@/?#"), min_size=0, max_size=16)
_QUERY = st.text(st.sampled_from("abcXYZ0189-._~!$'()*,;:@/?"), min_size=0, max_size=16)


def _checks(url: str) -> list[str]:
    """The words of every check and splitter of ``_storeurl`` that refuses ``url``."""
    said = []
    for check in (check_postgres_url, check_redis_url,
                  lambda u: split_store_url(u, {"prefix": int, "schema": int})):
        try:
            check(url)
        except StoreUrlError as exc:
            said.append(str(exc))
    return said


@settings(max_examples=200, deadline=None)
@given(password=_USERINFO, scheme=st.sampled_from(["postgresql", "redis", "rediss"]),
       tail=st.sampled_from(["/db", "/0", ":6379/0", ":x/0", "/0?bogus=1", "/0?prefix=x",
                             "/notadb", ""]))
def test_any_password_in_a_url_never_appears_in_its_refusal(password: str, scheme: str,
                                                            tail: str) -> None:
    secret = SECRET + password
    url = f"{scheme}://user:{secret}@127.0.0.1{tail}"
    for text in [redact_url(url), *_checks(url), safe_reason(url, f"driver said {url}")]:
        assert secret not in text, text


@settings(max_examples=200, deadline=None)
@given(value=_QUERY, name=st.sampled_from(["password", "sslpassword", "oauth_client_secret",
                                           "scram_client_key", "pasword", "api_key"]))
def test_any_secret_query_value_never_appears_in_a_refusal(value: str, name: str) -> None:
    secret = SECRET + value
    url = f"postgresql://u@127.0.0.1/db?{name}={secret}&sslmode=requried"
    for text in [redact_url(url), *_checks(url), safe_reason(url, f"driver said {url}"),
                 safe_reason(url, f"driver said {quote(secret)}")]:
        assert secret not in text, text
        assert quote(secret) not in text, text


# ------------------------------------------------------------------ decision log sinks
def test_an_http_sink_failure_never_shows_the_collector_token() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401)

    client = httpx.Client(transport=httpx.MockTransport(refuse))
    sink = HttpSink(f"https://ingest:{SECRET}@logs.example/v1?api_key={SECRET}x&region=eu",
                    client=client, retries=0)
    with pytest.raises(DecisionLogError) as info:
        sink.write([b"{}\n"])
    assert SECRET not in str(info.value)
    assert "https://***@logs.example/v1?api_key=***&region=***" in str(info.value)
    client.close()


def test_an_unknown_sink_url_never_shows_its_secret() -> None:
    with pytest.raises(DecisionLogError) as info:
        sink_from_url(f"s3://AKIA:{SECRET}@bucket/decisions")
    assert info.value.code == "invalid_log_config"
    assert SECRET not in str(info.value)


# ------------------------------------------------------------------ wire models
def test_a_client_secret_is_in_no_repr_and_no_validation_error() -> None:
    token = TokenRequest.model_validate({"grant_type": "client_credentials",
                                         "client_id": "a", "client_secret": SECRET})
    assert SECRET not in repr(token) + str(token)
    with pytest.raises(ValidationError) as info:
        TokenRequest.model_validate({"grant_type": "client_credentials", "client_id": "a",
                                     "client_secret": SECRET * 100})
    assert SECRET not in str(info.value) + repr(info.value)
    with pytest.raises(ValidationError) as info:
        TokenRequest.model_validate({"grant_type": SECRET, "client_id": "a",
                                     "client_secret": "x"})
    assert SECRET not in str(info.value)
    assert SECRET not in repr(TokenResponse(access_token=SECRET, expires_in=60))


# ------------------------------------------------------------------ HMAC keys
@pytest.mark.parametrize("key", [SECRET[:10], "hex:" + SECRET.encode().hex()[:20],
                                 "base64:UGw0bnRlZFMzY3I="])
def test_a_short_hmac_key_is_a_usage_error_that_never_shows_it(
        key: str, capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    from pathlib import Path
    policy = Path(str(tmp_path)) / "p.policy"
    policy.write_text('namespace shop\nrole buyer: shop:*\nagent "bot": buyer\n')
    code = main(["check", str(policy), "--hmac-key", key])
    out = capsys.readouterr()
    assert code == 2, out.err
    assert "usage_error" in out.err and "at least 16" in out.err
    assert SECRET[:10] not in out.out + out.err and "Pl4ntedS3cr" not in out.err
