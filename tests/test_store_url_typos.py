"""A store URL with an option no part of the store reads is refused where the store is
opened, with the store's own code: budget ``invalid_store_url``, approval
``invalid_approval_store``, revocation ``invalid_revocations``. redis-py hands any query
option it does not know to its connection class, which raised a bare ``TypeError`` at the
first command (``redis://...?foo=1``); ``memory:?durability=full`` and ``memory:anything``
opened a memory store, ignoring what they said; ``redis://host/notadb`` used database 0.
libpq refuses a query option it does not know when it parses the URL, which the stores
reported as an unreachable server (``store_unavailable``, ``revocation_unavailable``,
``approval_store_error`` "the approval store failed"), and a value it does not take
(``sslmode=requried``) at the first connection, the same way."""

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
    ("approval", approvals_from_url, ApprovalError, "invalid_approval_store"),
    ("revocation", revocations_from_url, TokenError, "invalid_revocations"),
]

NO_PG = "postgresql://u:s3cret@127.0.0.1:1/db"
#: libpq's connection parameters and the options the PostgreSQL stores' URLs take.
KNOWN_PG = {
    "host", "hostaddr", "port", "dbname", "user", "password", "passfile", "require_auth",
    "channel_binding", "connect_timeout", "client_encoding", "options", "application_name",
    "fallback_application_name", "keepalives", "keepalives_idle", "keepalives_interval",
    "keepalives_count", "tcp_user_timeout", "replication", "gssencmode", "sslmode",
    "sslnegotiation", "sslcompression", "sslcert", "sslkey", "sslkeylogfile", "sslpassword",
    "sslcertmode", "sslrootcert", "sslcrl", "sslcrldir", "sslsni", "requirepeer",
    "ssl_min_protocol_version", "ssl_max_protocol_version", "min_protocol_version",
    "max_protocol_version", "krbsrvname", "gsslib", "gssdelegation", "scram_client_key",
    "scram_server_key", "service", "target_session_attrs", "load_balance_hosts",
    "oauth_issuer", "oauth_client_id", "oauth_client_secret", "oauth_scope",
    "schema", "durability", "pool_size", "max_clock_skew", "retention", "refresh",
    "max_stale", "create"}
#: What each kind's refusal of a URL says first (an outage has its own code and words).
URL_REFUSAL = {"budget": "budget store URL", "approval": "approval store URL",
               "revocation": "revocation store URL"}

BAD_PG = [
    f"{NO_PG}?bogus=1",
    f"{NO_PG}?sslmdoe=require",  # a typo of libpq's sslmode
    f"{NO_PG}?SSLMODE=require",  # libpq's names are case-sensitive
    f"{NO_PG}?application-name=x",
    f"{NO_PG}?sslmode=requried",  # a value libpq refuses only when it connects
    f"{NO_PG}?sslmode=REQUIRE",
    f"{NO_PG}?keepalives=yes",
    f"{NO_PG}?keepalives_idle=-1",
    f"{NO_PG}?target_session_attrs=writable",
    f"{NO_PG}?gssencmode=on",
    f"{NO_PG}?sslmode=require&sslmode=disable",
    f"{NO_PG}?prefix=x",  # Redis's option, not PostgreSQL's
    f"{NO_PG}?replication=database",
    f"{NO_PG}?connect_timeout=soon",
    f"{NO_PG}?port=5432,x",
    "postgresql://u:s3cret@127.0.0.1:abc/db",
    "postgresql://u:s3cret@127.0.0.1:70000/db",
    "postgresql://u:s3cret%zz@127.0.0.1:1/db",  # libpq's own parser refuses it
    "postgres://u:s3cret@127.0.0.1:1/db?bogus=1",
]


@pytest.mark.parametrize("url", BAD_PG)
@pytest.mark.parametrize(("kind", "opener", "error", "code"), OPENERS)
def test_a_postgres_url_option_libpq_does_not_take_is_refused(
    url: str, kind: str, opener: Callable[[str], Any], error: type[PolicyEngineError],
    code: str,
) -> None:
    """Before any connection (nothing listens on port 1), with the store's bad-input
    code and a message about the URL, never the password."""
    with pytest.raises(error) as info:
        opener(url)
    assert info.value.code == code, str(info.value)
    assert info.value.message.startswith(URL_REFUSAL[kind]), str(info.value)
    assert "s3cret" not in str(info.value)


@settings(max_examples=60, deadline=None)
@given(name=st.from_regex(r"[a-z_]{1,16}", fullmatch=True).filter(
    lambda n: n not in KNOWN_PG))
def test_any_unknown_postgres_option_gets_each_store_its_code(name: str) -> None:
    """Property: whatever option name is neither libpq's nor one the stores read, each
    kind of store refuses the URL with its code, before any connection."""
    for kind, opener, error, code in OPENERS:
        with pytest.raises(error) as info:
            opener(f"{NO_PG}?{name}=1")
        assert info.value.code == code
        assert info.value.message.startswith(URL_REFUSAL[kind]), str(info.value)


def test_a_typo_is_told_the_option_it_resembles() -> None:
    with pytest.raises(BudgetInputError) as info:
        store_from_url(f"{NO_PG}?sslmdoe=require")
    assert "did you mean 'sslmode'?" in info.value.message
    with pytest.raises(ApprovalError) as approval:
        approvals_from_url(f"{NO_PG}?schem=x")
    assert "did you mean 'schema'?" in approval.value.message


@pytest.mark.postgres
@pytest.mark.parametrize("kind", ["budget", "approval", "revocation"])
def test_libpq_options_reach_the_server_and_connect_timeout_is_the_stores(
    kind: str,
) -> None:
    """libpq's parameters still pass (sslmode, application_name, keepalives...), and a
    ``connect_timeout`` in the URL is the store's (before, libpq's was overridden by the
    store's own default of 5 s)."""
    from conftest import POSTGRES_URL, drop_namespace, require_service, unique_name
    require_service("postgres")  # skips (fails with CI=true) without the service
    schema = unique_name("pgopt")
    opener = {"budget": store_from_url, "approval": approvals_from_url,
              "revocation": revocations_from_url}[kind]
    url = (f"{POSTGRES_URL}?schema={schema}&sslmode=disable&application_name=pe_{kind}"
           "&keepalives=1&keepalives_idle=30&target_session_attrs=any&connect_timeout=3")
    try:
        store = opener(url)
        try:
            assert store.connect_timeout == 3
            if kind == "budget":
                name = store._call("SELECT current_setting('application_name')", ())
            elif kind == "approval":
                with store._conn() as conn:
                    name = conn.execute("SELECT current_setting('application_name')"
                                        ).fetchone()[0]
            else:
                name = store._execute("SELECT current_setting('application_name')",
                                      ())[0][0]
            assert name == f"pe_{kind}"
        finally:
            store.close()
    finally:
        drop_namespace("postgres", schema)


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
#: ``memory:`` takes nothing after it (these opened a memory store, ignoring what they
#: said).
BAD_MEMORY = ["memory:?bogus=1", "memory:?durability=full", "memory:anything",
              "memory://x", "memory:?prefix=p"]


@pytest.mark.parametrize("url", BAD_REDIS + BAD_MEMORY)
@pytest.mark.parametrize(("kind", "opener", "error", "code"), OPENERS)
def test_a_redis_or_memory_url_the_store_does_not_take_is_refused(
    url: str, kind: str, opener: Callable[[str], Any], error: type[PolicyEngineError],
    code: str,
) -> None:
    """An option redis-py does not take, or anything after ``memory:``: refused with the
    store's code, never showing the password."""
    with pytest.raises(error) as info:
        opener(url)
    assert info.value.code == code, str(info.value)
    assert "s3cret" not in str(info.value)


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


@pytest.mark.parametrize("url", [f"{NO_REDIS}?foo=1", f"{NO_PG}?foo=1"])
def test_an_engine_refuses_such_urls_with_the_stores_codes(url: str) -> None:
    src = 'namespace t\nrole r: docs:*\nagent "bot": r\napproval del: docs:delete\n'
    for option, code in (("budget_store", "invalid_store_url"),
                         ("approvals", "invalid_approval_store"),
                         ("revocations", "invalid_revocations")):
        with pytest.raises(PolicyEngineError) as info:
            Engine.from_source(src, **{option: url})
        assert info.value.code == code, (option, str(info.value))
        assert "unknown option 'foo'" in info.value.message


@pytest.mark.parametrize("url", [f"{NO_REDIS}?foo=1", f"{NO_PG}?bogus=1"])
def test_cli_eval_reports_the_code_not_a_traceback(tmp_path: Path, url: str) -> None:
    policy = tmp_path / "p.policy"
    policy.write_text('role r: docs:*\nagent "bot": r\n')
    out = subprocess.run(
        [sys.executable, "-m", "policyengine", "eval", str(policy), "--principal", "bot",
         "--permission", "docs:read", "--store", url],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2 and "invalid_store_url" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "s3cret" not in out.stderr


@pytest.mark.parametrize(("flag", "code"), [("--budget-store", "invalid_store_url"),
                                            ("--approvals", "invalid_approval_store"),
                                            ("--revocations", "invalid_revocations")])
def test_serve_reports_a_bad_postgres_option_with_its_code(
    tmp_path: Path, flag: str, code: str,
) -> None:
    """``serve`` prints the code and what is wrong with the URL, and exits 1: no
    traceback, no password, no claim that the server is down."""
    (tmp_path / "p.policy").write_text('role r: docs:*\nagent "bot": r\n')
    out = subprocess.run(
        [sys.executable, "-m", "policyengine", "serve", str(tmp_path), "--port", "1",
         flag, f"{NO_PG}?sslmdoe=require"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 1, out.stderr
    assert f"{code}: " in out.stderr and "unknown option 'sslmdoe'" in out.stderr, out.stderr
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


# -- the approval and revocation stores open their URLs alike -----------------------------

SHARED_OPENERS = [
    ("approval", approvals_from_url, ApprovalError, "invalid_approval_store",
     "an approval store URL"),
    ("revocation", revocations_from_url, TokenError, "invalid_revocations",
     "a revocation store URL"),
]


@pytest.mark.parametrize(("url", "says"), [
    ("mysql://u:s3cret@x/y", "{a} is memory:, postgresql://... or redis://..."),
    (42, "{a} is memory:, postgresql://... or redis://..."),
    ("", "{a} is memory:, postgresql://... or redis://..."),
    ("unix:///tmp/redis.sock", "{a} is memory:, postgresql://... or redis://..."),
    ("memory:x", "{kind} store URL: memory: takes no 'x'"),
    ("MEMORY:?prefix=p:", "{kind} store URL: memory: takes no 'prefix=p:'"),
    (f"{NO_REDIS}?prefix=a:&prefix=b:", "{kind} store URL: option prefix given twice"),
    (f"{NO_REDIS}?timeout=soon", "{kind} store URL: option timeout='soon' is not a value"),
    (f"{NO_PG}?connect_timeout=1&connect_timeout=2",
     "{kind} store URL: option connect_timeout given twice"),
    ("redis://:s3cret@127.0.0.1:port/0", "{kind} store URL: "),
    (f"{NO_REDIS}?schema=x", "{kind} store URL: unknown option 'schema'"),
    (f"{NO_PG}?schema=Bad-Name", "schema='Bad-Name': must be a lower-case SQL name"),
    (f"{NO_REDIS}?prefix=p:&timeout=0", "timeout=0.0: must be a number of seconds above 0"),
])
@pytest.mark.parametrize(("kind", "opener", "error", "code", "a"), SHARED_OPENERS)
def test_the_approval_and_revocation_urls_are_read_alike(
    url: object, says: str, kind: str, opener: Callable[[object], Any],
    error: type[PolicyEngineError], code: str, a: str,
) -> None:
    """One reading of a shared store's URL for both kinds: the same refusals, each
    with its store's code and name (a store's own refusal of an option as it is, without
    the URL's words), before any connection and never with the password."""
    with pytest.raises(error) as info:
        opener(url)
    assert info.value.code == code, str(info.value)
    assert info.value.message.startswith(says.format(a=a, kind=kind)), str(info.value)
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(("kind", "opener", "error", "code", "a"), SHARED_OPENERS)
def test_a_keyword_overrides_the_shared_store_urls_option(
    kind: str, opener: Callable[..., Any], error: type[PolicyEngineError], code: str,
    a: str,
) -> None:
    """A keyword argument is taken over the URL's option (here a bad one over a good
    one, so the store refuses it before connecting) and passes to the memory store's
    check of its URL untouched."""
    with pytest.raises(error) as info:
        opener(f"{NO_REDIS}?prefix=p:&timeout=2", timeout=-1)
    assert info.value.code == code and "timeout=-1" in info.value.message
    assert type(opener("memory:")).__name__.startswith("Memory")


# -- redis-py's waits beside a Redis store's own timeout ----------------------------------
# A Redis store's ``timeout`` (``?timeout=`` or the argument) sets redis-py's
# ``socket_timeout`` and ``socket_connect_timeout``; redis-py lets the URL's own win over
# what the store passes, so ``?timeout=1&socket_timeout=30`` waited 30 s for each reply
# without a word. Both given is refused with the store's code; either alone is read as
# written.

#: (URL, keyword arguments): redis-py's wait and the store's timeout, both given.
BOTH_WAITS = [
    (f"{NO_REDIS}?timeout=1&socket_timeout=30", {}),
    (f"{NO_REDIS}?socket_connect_timeout=30&timeout=1", {}),
    (f"{NO_REDIS}?socket_timeout=30", {"timeout": 1}),
    # the default's value, given: given all the same
    (f"{NO_REDIS}?socket_timeout=30&socket_connect_timeout=3", {"timeout": 5.0}),
]


@pytest.mark.parametrize(("url", "kwargs"), BOTH_WAITS)
@pytest.mark.parametrize(("kind", "opener", "error", "code"), OPENERS)
def test_a_redis_wait_beside_the_stores_timeout_is_refused(
    url: str, kwargs: dict[str, Any], kind: str, opener: Callable[..., Any],
    error: type[PolicyEngineError], code: str,
) -> None:
    with pytest.raises(error) as info:
        opener(url, **kwargs)
    assert info.value.code == code, str(info.value)
    assert "beside the store's timeout" in info.value.message, str(info.value)
    assert "s3cret" not in str(info.value)


def _redis_stores() -> list[tuple[type, type[PolicyEngineError], str]]:
    from policyengine.budgets import RedisStore
    from policyengine.decide import RedisApprovalStore
    from policyengine.tokens._shared_revocation import RedisRevocationStore
    return [(RedisStore, BudgetInputError, "invalid_store_url"),
            (RedisApprovalStore, ApprovalError, "invalid_approval_store"),
            (RedisRevocationStore, TokenError, "invalid_revocations")]


@pytest.mark.parametrize("wait", ["socket_timeout", "socket_connect_timeout"])
@pytest.mark.parametrize(("store", "error", "code"), _redis_stores(),
                         ids=lambda v: getattr(v, "__name__", str(v)))
def test_a_redis_stores_constructor_refuses_a_wait_beside_its_timeout(
    wait: str, store: type, error: type[PolicyEngineError], code: str,
) -> None:
    with pytest.raises(error) as info:
        store(f"{NO_REDIS}?{wait}=30", timeout=1)
    assert info.value.code == code, str(info.value)
    assert f"option {wait} is given beside the store's timeout" in info.value.message


@pytest.mark.parametrize(("kind", "opener", "error", "code"), OPENERS)
def test_a_redis_wait_or_the_stores_timeout_alone_is_read_as_written(
    kind: str, opener: Callable[..., Any], error: type[PolicyEngineError], code: str,
) -> None:
    """``socket_timeout`` alone sets the wait for a reply (the store's default 5 s the
    connection's); ``timeout`` alone sets both. Opened on a live server, each store's
    client holds those waits."""
    from conftest import REDIS_URL, drop_namespace, require_service, unique_name
    from redis_waits import client_waits
    require_service("redis")
    base = unique_name("waits")
    create = "" if kind == "approval" else "&create=true"
    try:
        for query, waits in (("socket_timeout=30", (30.0, 5.0)),
                             ("socket_connect_timeout=3", (5.0, 3.0)),
                             ("timeout=2", (2.0, 2.0))):
            store = opener(f"{REDIS_URL}?prefix={base}:{kind}:{create}&{query}")
            try:
                assert client_waits(store) == waits, query
            finally:
                store.close()
    finally:
        drop_namespace("redis", base)
