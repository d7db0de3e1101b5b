"""A store URL with an option no part of the store reads is refused where the store is
opened, with the store's own code: budget ``invalid_store_url``, approval
``approval_store_error``, revocation ``invalid_revocations``. redis-py hands any query
option it does not know to its connection class, which raised a bare ``TypeError`` at the
first command (``redis://...?foo=1``); ``memory:?durability=full`` and ``memory:anything``
opened a memory store, ignoring what they said; ``redis://host/notadb`` used database 0."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine.budgets import BudgetInputError, store_from_url
from policyengine.decide import ApprovalError, approvals_from_url
from policyengine.engine import Engine
from policyengine.errors import PolicyEngineError
from policyengine.tokens import TokenError, revocations_from_url

# Nothing listens on port 1: a URL that got as far as a connection would fail with the
# store's "unreachable" code or a raw error, not the code asserted.
NO_REDIS = "redis://:s3cret@127.0.0.1:1/0"
KNOWN_REDIS = {"db", "socket_timeout", "socket_connect_timeout", "socket_keepalive",
               "health_check_interval", "client_name", "prefix", "schema", "refresh",
               "max_stale", "max_clock_skew", "pool_size", "retention", "durability"}

OPENERS: list[tuple[str, Callable[[str], Any], type[PolicyEngineError], str]] = [
    ("budget", store_from_url, BudgetInputError, "invalid_store_url"),
    ("approval", approvals_from_url, ApprovalError, "approval_store_error"),
    ("revocation", revocations_from_url, TokenError, "invalid_revocations"),
]

BAD_REDIS = [
    f"{NO_REDIS}?foo=1",
    f"{NO_REDIS}?Prefix=x",  # options are case-sensitive: not the store's prefix
    "redis://127.0.0.1:1/notadb",
    "redis://127.0.0.1:1/0/1",
    "redis://127.0.0.1:1/-1",
    "redis://127.0.0.1:1/0?db=1",
    "redis://127.0.0.1:1?db=x",
    "redis://127.0.0.1:1/0?socket_timeout=abc",
    "redis://127.0.0.1:1/0?socket_timeout=nan",
    "redis://127.0.0.1:1/0?socket_timeout=-1",
    "redis://127.0.0.1:1/0?socket_keepalive=maybe",
    "redis://127.0.0.1:1/0?socket_timeout=1&socket_timeout=2",
    "redis://127.0.0.1:1/0?ssl_certfile=/x",  # TLS options are rediss://'s
    "rediss://127.0.0.1:1/0?ssl_cert_reqs=sometimes",
    "redis://127.0.0.1:1/0?retry_on_error=x",
    "unix://?db=0",
]


@pytest.mark.parametrize("url", BAD_REDIS)
@pytest.mark.parametrize(("kind", "opener", "error", "code"), OPENERS)
def test_a_redis_url_option_redis_py_does_not_take_is_refused(
    url: str, kind: str, opener: Callable[[str], Any], error: type[PolicyEngineError],
    code: str,
) -> None:
    with pytest.raises(error) as info:
        opener(url)
    assert info.value.code == code, str(info.value)
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("url", ["memory:?bogus=1", "memory:?durability=full",
                                 "memory:anything", "memory://x", "memory:?prefix=p"])
@pytest.mark.parametrize(("kind", "opener", "error", "code"), OPENERS)
def test_anything_after_memory_is_refused(
    url: str, kind: str, opener: Callable[[str], Any], error: type[PolicyEngineError],
    code: str,
) -> None:
    with pytest.raises(error) as info:
        opener(url)
    assert info.value.code == code, str(info.value)


@pytest.mark.parametrize(("kind", "opener", "error", "code"), OPENERS)
def test_memory_still_opens(kind: str, opener: Callable[[str], Any],
                            error: type[PolicyEngineError], code: str) -> None:
    assert opener("memory:") is not None
    assert opener("MEMORY:?") is not None


def test_budget_memory_and_sqlite_keep_their_own_options(tmp_path: Path) -> None:
    assert store_from_url("memory:?retention=60") is not None
    with pytest.raises(BudgetInputError) as info:
        store_from_url(f"sqlite:///{tmp_path}/x.db?bogus=1")
    assert info.value.code == "invalid_store_url" and "bogus" in info.value.message
    assert not (tmp_path / "x.db").exists()


@settings(max_examples=60, deadline=None)
@given(name=st.from_regex(r"[a-z_]{1,12}", fullmatch=True).filter(
    lambda n: n not in KNOWN_REDIS and not n.startswith("ssl_")))
def test_any_unknown_redis_option_gets_each_store_its_code(name: str) -> None:
    """Property: whatever option name is not one the stores or redis-py read, each kind of
    store refuses the URL with its code, before any connection."""
    for _kind, opener, error, code in OPENERS:
        with pytest.raises(error) as info:
            opener(f"{NO_REDIS}?{name}=1")
        assert info.value.code == code


def test_an_engine_refuses_such_urls_with_the_stores_codes() -> None:
    src = 'namespace t\nrole r: docs:*\nagent "bot": r\napproval del: docs:delete\n'
    for option, code in (("budget_store", "invalid_store_url"),
                         ("approvals", "approval_store_error"),
                         ("revocations", "invalid_revocations")):
        with pytest.raises(PolicyEngineError) as info:
            Engine.from_source(src, **{option: f"{NO_REDIS}?foo=1"})
        assert info.value.code == code, (option, str(info.value))


def test_cli_eval_reports_the_code_not_a_traceback(tmp_path: Path) -> None:
    policy = tmp_path / "p.policy"
    policy.write_text('role r: docs:*\nagent "bot": r\n')
    out = subprocess.run(
        [sys.executable, "-m", "policyengine", "eval", str(policy), "--principal", "bot",
         "--permission", "docs:read", "--store", f"{NO_REDIS}?foo=1"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2 and "invalid_store_url" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "s3cret" not in out.stderr


def test_a_client_fault_of_the_approval_store_is_its_code() -> None:
    """Whatever the Redis client raises in a call is ``approval_store_error`` (the engine
    honours no approval then), not a raw exception out of ``approve``."""
    from policyengine.decide import RedisApprovalStore
    store = RedisApprovalStore("redis://127.0.0.1:1/0", timeout=0.5)

    def broken(*args: object, **kwargs: object) -> object:
        raise TypeError("unexpected keyword argument 'foo'")

    store._redis.hmget = broken  # type: ignore[method-assign]
    store._redis.time = broken  # type: ignore[method-assign]
    with pytest.raises(ApprovalError) as info:
        store.get("apr_" + "0" * 32)
    assert info.value.code == "approval_store_error"
    with pytest.raises(ApprovalError) as info:
        store.approve("apr_" + "0" * 32)
    assert info.value.code == "approval_store_error"
