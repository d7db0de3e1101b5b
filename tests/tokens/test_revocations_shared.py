"""Revocations shared between hosts (PostgreSQL, Redis): a revocation on one host stops
the token on another within the refresh interval; a host that cannot refresh refuses
tokens after ``max_stale`` instead of trusting its stale list."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
import redis
from conftest import POSTGRES_URL, REDIS_URL, Clock, Relay, require_service, unique_name
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from policyengine.engine import Engine
from policyengine.tokens import (
    KeySet,
    MemoryRevocationStore,
    TokenError,
    mint,
    revocations_from_url,
    verify,
)

ISSUER = "https://auth.example"


@pytest.fixture(params=["postgres", "redis"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A revocation store URL in a namespace of its own, dropped afterwards."""
    require_service(request.param)
    name = unique_name("rev")
    if request.param == "postgres":
        yield f"{POSTGRES_URL}?schema={name}"
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    else:
        url = f"{REDIS_URL}?prefix={name}:"
        revocations_from_url(url, create=True).close()  # a first use: its dataset made
        yield url
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{name}:*", count=500):
            client.delete(key)
        client.close()


def test_a_revocation_on_one_host_stops_the_token_on_another_within_refresh(url: str) -> None:
    clock_a, clock_b = Clock(1000.0), Clock(1000.0)
    host_a = revocations_from_url(url, refresh=1.0, monotonic=clock_a)
    host_b = revocations_from_url(url, refresh=1.0, monotonic=clock_b)
    keys = KeySet.generate()
    token = mint(keys, issuer=ISSUER, acting_for="besar", agent="bot",
                 permissions=["docs:*"], ttl=600)
    grant = verify(keys, token, revocations=host_b)
    host_a.revoke(grant.grant_id)
    with pytest.raises(TokenError) as info:
        verify(keys, token, revocations=host_a)  # at once where it was revoked
    assert info.value.code == "revoked"
    clock_b.t += 0.5
    verify(keys, token, revocations=host_b)  # within the refresh interval: not yet seen
    clock_b.t += 0.5
    with pytest.raises(TokenError) as info:
        verify(keys, token, revocations=host_b)  # refreshed: revoked everywhere
    assert info.value.code == "revoked"
    fresh = revocations_from_url(url)
    assert fresh.is_revoked(grant.grant_id) and len(fresh) == 1


def test_a_query_of_what_is_no_id_is_invalid_claim(url: str) -> None:
    """As the memory store: a list asked about is misuse (``invalid_claim``, as
    ``revoke`` refuses it), not a bare TypeError nor an id that is not revoked."""
    store = revocations_from_url(url)
    try:
        store.revoke("g1")
        for bad in ([1], None, 5):
            with pytest.raises(TokenError) as info:
                store.is_revoked(bad)  # type: ignore[arg-type]
            assert info.value.code == "invalid_claim"
        for bad_ids in (5, None, [["g1"]]):
            with pytest.raises(TokenError) as info:
                store.any_revoked(bad_ids)  # type: ignore[arg-type]
            assert info.value.code == "invalid_claim"
        assert store.is_revoked("g1") and store.any_revoked(["g2", "g1"])
    finally:
        store.close()


def test_a_host_that_cannot_refresh_refuses_tokens_after_max_stale(url: str) -> None:
    clock = Clock(1000.0)
    relay = Relay(url)
    store = revocations_from_url(relay.url(url), refresh=1.0, max_stale=5.0,
                                 monotonic=clock)
    keys = KeySet.generate()
    engine = Engine.from_source(
        'namespace t\nrole reader: docs:*\nagent "bot": reader\n'
        'delegation { issuer "https://auth.example" }\n',
        keys=keys, revocations=store,
    )
    token = mint(keys, issuer=ISSUER, acting_for="besar", agent="bot",
                 permissions=["docs:*"], ttl=600)
    assert engine.authorize("bot", "docs:read", token=token).allowed
    relay.cut()  # the server goes away
    clock.t += 4.0  # refresh fails, but the list is 4 s old: still answered
    assert engine.authorize("bot", "docs:read", token=token).allowed
    clock.t += 2.0  # 6 s since the last refresh
    decision = engine.authorize("bot", "docs:read", token=token)
    assert not decision.allowed and decision.code == "invalid_token"
    assert "revocation_unavailable" in (decision.reason or "")
    with pytest.raises(TokenError) as info:
        store.revoke("grant-x")
    assert info.value.code == "revocation_unavailable"


def test_revocation_urls() -> None:
    assert isinstance(revocations_from_url("memory:"), MemoryRevocationStore)
    for bad in ("", "mysql://x/y", "file:///r.json"):
        with pytest.raises(TokenError) as info:
            revocations_from_url(bad)
        assert info.value.code == "invalid_revocations"


# ---- any change reaches every host within refresh: a lost or rolled-back dataset too ----

class Server:
    """The server side of a store URL, as an operator (or a failure) changes it: lose the
    whole dataset (a Redis restart without persistence, a FLUSH, tables emptied), or
    put back a snapshot taken earlier (a restart from an older RDB file, a database
    restored from a backup)."""

    def __init__(self, url: str) -> None:
        self.url = url
        query = parse_qs(urlsplit(url).query)
        self.redis = url.startswith("redis")
        if self.redis:
            self.prefix = query["prefix"][0]
            self.client = redis.Redis.from_url(REDIS_URL)
        else:
            self.schema = query["schema"][0]
            self.conn = psycopg.connect(POSTGRES_URL, autocommit=True)
            self.tables = [f'"{self.schema}".{t}' for t in
                           ("token_revocations", "token_revocations_version")]

    def _keys(self) -> list[bytes]:
        return sorted(self.client.scan_iter(match=f"{self.prefix}*", count=500))

    def lose(self) -> None:
        if self.redis:
            for key in self._keys():
                self.client.delete(key)
        else:
            for table in self.tables:
                self.conn.execute(f"DELETE FROM {table}")

    def snapshot(self) -> Any:
        if self.redis:
            return {key: self.client.dump(key) for key in self._keys()}
        return [self.conn.execute(f"SELECT * FROM {t}").fetchall() for t in self.tables]

    def restore(self, snapshot: Any) -> None:
        self.lose()
        if self.redis:
            for key, dumped in snapshot.items():
                self.client.restore(key, 0, dumped)
            return
        for table, rows in zip(self.tables, snapshot, strict=True):
            for row in rows:
                marks = ", ".join(["%s"] * len(row))
                self.conn.execute(f"INSERT INTO {table} VALUES ({marks})", row)

    def init(self) -> None:
        """What an operator does once a dataset is gone (policyengine store init
        --revocations): make a new one where there is none."""
        revocations_from_url(self.url, create=True).close()

    def has_dataset(self) -> bool:
        if self.redis:
            return bool(self.client.exists(f"{self.prefix}revoked:version"))
        return self.conn.execute(f"SELECT 1 FROM {self.tables[1]}").fetchone() is not None

    def ids(self) -> set[str]:
        if self.redis:
            return {m.decode() for m in self.client.smembers(f"{self.prefix}revoked")}
        return {r[0] for r in self.conn.execute(f"SELECT id FROM {self.tables[0]}")}

    def close(self) -> None:
        (self.client if self.redis else self.conn).close()


def two_hosts(url: str) -> tuple[Any, Any, Clock]:
    """Two hosts (separate store objects) on one clock; refresh 1 s."""
    clock = Clock(1000.0)
    return (revocations_from_url(url, refresh=1.0, max_stale=5.0, monotonic=clock),
            revocations_from_url(url, refresh=1.0, max_stale=5.0, monotonic=clock), clock)


def test_a_revocation_after_the_dataset_was_lost_reaches_a_running_host(url: str) -> None:
    """Host B has seen one revocation; the server loses its data; host A revokes another
    id, so the server holds one id again. A count cannot tell the difference: B must
    still load the new id within ``refresh`` seconds, and keep the one it had.

    Until an operator makes a new dataset, nothing starts one on its own (a host started
    then would accept the token revoked before): ``revoke`` is refused and a new host
    does not open; the running hosts answer from what they hold. Once it is made, B
    writes back the id the server lost, so a host started afterwards knows it too. (A
    PostgreSQL store made its version row again, in ``revoke`` and in a new host.)"""
    server = Server(url)
    host_a, host_b, clock = two_hosts(url)
    try:
        host_a.revoke("grant-old")
        clock.t += 1.0
        assert host_b.is_revoked("grant-old")
        server.lose()
        with pytest.raises(TokenError) as info:
            host_a.revoke("grant-x")
        assert info.value.code == "revocation_unavailable"
        with pytest.raises(TokenError) as info:
            revocations_from_url(url)
        assert info.value.code == "revocations_uninitialized"
        clock.t += 1.0
        assert host_b.is_revoked("grant-old") and host_a.is_revoked("grant-old")
        assert server.ids() == set()  # nothing made by the running hosts
        assert not server.has_dataset()
        server.init()
        host_a.revoke("grant-x")
        clock.t += 1.0
        assert host_b.is_revoked("grant-x")  # within refresh
        assert host_b.is_revoked("grant-old")  # never forgotten
        assert not host_b.is_revoked("grant-other")
        assert server.ids() == {"grant-x", "grant-old"}  # written back
        late = revocations_from_url(url)
        try:
            assert late.is_revoked("grant-old")
        finally:
            late.close()
    finally:
        server.close()
        host_a.close()
        host_b.close()


def test_a_revocation_after_a_rollback_reaches_a_running_host(url: str) -> None:
    """The server is put back to an older snapshot (same dataset, fewer ids), then as
    many revocations are made as were lost: counter and count are what B saw before."""
    server = Server(url)
    host_a, host_b, clock = two_hosts(url)
    try:
        host_a.revoke("grant-1")
        older = server.snapshot()
        host_a.revoke("grant-2")
        clock.t += 1.0
        assert host_b.is_revoked("grant-2")
        server.restore(older)
        host_a.revoke("grant-3")
        assert server.ids() == {"grant-1", "grant-3"}
        clock.t += 1.0
        assert host_b.is_revoked("grant-3")
    finally:
        server.close()
        host_a.close()
        host_b.close()


_STEPS = st.lists(st.one_of(
    st.tuples(st.just("revoke"), st.sampled_from("ab"), st.integers(0, 3)),
    st.tuples(st.just("lose")), st.tuples(st.just("snapshot")), st.tuples(st.just("restore")),
    st.tuples(st.just("wait"))), min_size=1, max_size=14)


@given(steps=_STEPS)
@example(steps=[("revoke", "a", 0), ("wait",), ("lose",), ("revoke", "a", 1)])
@example(steps=[("revoke", "a", 0), ("snapshot",), ("revoke", "b", 1), ("wait",),
                ("restore",), ("revoke", "a", 2)])
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_host_knows_what_the_server_holds_within_refresh(url: str,
                                                               steps: list[Any]) -> None:
    """Whatever happens to the dataset between two refreshes (revocations on either host,
    loss, rollback to a snapshot, in any order), once ``refresh`` seconds have passed
    each host knows every id the server holds and every id it knew before, and nothing
    that was never revoked."""
    server = Server(url)
    revocations_from_url(url).close()  # the tables exist
    server.lose()  # each example starts from an empty dataset
    server.init()
    host_a, host_b, clock = two_hosts(url)
    hosts = {"a": host_a, "b": host_b}
    known: dict[str, set[str]] = {"a": set(), "b": set()}
    revoked: set[str] = set()
    snapshot = server.snapshot()
    try:
        for step in [*steps, ("wait",)]:
            if step[0] == "revoke":
                hosts[step[1]].revoke(f"grant-{step[2]}")
                known[step[1]].add(f"grant-{step[2]}")
                revoked.add(f"grant-{step[2]}")
            elif step[0] == "lose":
                server.lose()
                server.init()  # Redis: an operator makes a new dataset
            elif step[0] == "snapshot":
                snapshot = server.snapshot()
            elif step[0] == "restore":
                server.restore(snapshot)
                if not server.has_dataset():
                    server.init()
            else:  # a refresh interval passes; each host is asked about every id
                clock.t += 1.0
                on_server = server.ids()
                for name, host in hosts.items():
                    knows = {f"grant-{i}" for i in range(4) if host.is_revoked(f"grant-{i}")}
                    assert on_server <= knows and known[name] <= knows <= revoked
                    known[name] = knows
    finally:
        for host in hosts.values():
            host.close()
        server.close()


@pytest.mark.postgres
@pytest.mark.parametrize("emptied", ["TRUNCATE {versions}, {ids}", "TRUNCATE {versions}",
                                     "DELETE FROM {versions}"])
def test_a_postgres_dataset_emptied_under_the_store_is_not_made_again(
    emptied: str, capsys: pytest.CaptureFixture[str],
) -> None:
    """Someone empties the tables under the store. Before, a host opened afterwards (and
    the next ``revoke``) made the version row again with a new epoch and went on as if
    on a first use: a host started then accepted every token revoked before. Now a store
    opened on them is refused ``revocations_uninitialized`` (nothing written), ``revoke``
    is refused, and ``policyengine store init --revocations URL`` (an operator accepting
    the loss) makes the row; the running host then writes back what it held."""
    require_service("postgres")
    from policyengine.cli import main as cli_main
    schema = unique_name("trunc")
    url = f"{POSTGRES_URL}?schema={schema}"
    versions = f'"{schema}".token_revocations_version'
    ids = f'"{schema}".token_revocations'
    clock = Clock(1000.0)
    running = revocations_from_url(url, monotonic=clock)  # a first use: made
    conn = psycopg.connect(POSTGRES_URL, autocommit=True)
    try:
        running.revoke("grant-old")
        conn.execute(emptied.format(versions=versions, ids=ids))
        with pytest.raises(TokenError) as info:
            revocations_from_url(url)
        assert info.value.code == "revocations_uninitialized"
        assert "store init --revocations" in info.value.message
        with pytest.raises(TokenError) as info:
            running.revoke("grant-new")
        assert info.value.code == "revocation_unavailable"
        assert conn.execute(f"SELECT count(*) FROM {versions}").fetchone() == (0,)
        clock.t += 1.0
        assert running.is_revoked("grant-old")  # a host never forgets one
        assert cli_main(["store", "init", "--revocations", url]) == 0
        assert "created" in capsys.readouterr().out
        clock.t += 1.0
        assert running.is_revoked("grant-old")  # refreshed: and written back
        late = revocations_from_url(url)
        try:
            assert late.is_revoked("grant-old")
        finally:
            late.close()
        assert cli_main(["store", "init", "--revocations", url]) == 0  # changes nothing
        assert "tables exist" in capsys.readouterr().out
    finally:
        running.close()
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.close()


@pytest.mark.postgres
def test_a_postgres_schema_of_an_earlier_version_gets_its_version_row() -> None:
    """``token_revocations`` without the version table (written before it existed) is
    opened, its version made beside it, and its ids kept: not a dataset that was lost."""
    require_service("postgres")
    schema = unique_name("early")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'CREATE TABLE "{schema}".token_revocations (id text PRIMARY KEY, '
                     "revoked_at timestamptz NOT NULL DEFAULT clock_timestamp())")
        conn.execute(f"INSERT INTO \"{schema}\".token_revocations (id) VALUES ('grant-1')")
    try:
        store = revocations_from_url(f"{POSTGRES_URL}?schema={schema}")
        try:
            assert store.is_revoked("grant-1")
            store.revoke("grant-2")
        finally:
            store.close()
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
