"""Budget store options, by URL or by keyword: a bad one is refused where the store is
opened, with ``invalid_store_url``, never a bare ValueError and never later (a pool of 0
connections made every request wait and fail ``store_unavailable``; a NaN
``max_clock_skew`` silently turned the skew guard off). A ``Ledger`` or ``Engine`` given
a URL opens it; given something that is no store, it refuses at construction."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import DAILY, POSTGRES_URL, REDIS_URL, require_service
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine.budgets import (
    BudgetInputError,
    BudgetStoreError,
    Ledger,
    MemoryStore,
    PostgresStore,
    RedisStore,
    SQLiteStore,
    store_from_url,
)
from policyengine.engine import Engine
from policyengine.errors import PolicyEngineError

# Nothing listens on port 1: a store that tried to connect would fail store_unavailable,
# so these show the option is refused before any connection.
NO_PG = "postgresql://u:s3cret@127.0.0.1:1/db"
NO_REDIS = "redis://:s3cret@127.0.0.1:1/0"


@pytest.mark.parametrize("url", [
    f"{NO_PG}?schema=Bad-Name",
    f"{NO_PG}?schema=",
    f"{NO_PG}?schema={'a' * 64}",
    f"{NO_PG}?durability=bogus",
    f"{NO_PG}?pool_size=-3",
    f"{NO_PG}?pool_size=0",
    f"{NO_PG}?pool_size=2.5",
    f"{NO_PG}?max_clock_skew=nan",
    f"{NO_PG}?max_clock_skew=inf",
    f"{NO_PG}?max_clock_skew=-1",
    f"{NO_PG}?max_clock_skew=0",
    f"{NO_PG}?retention=-5",
    f"{NO_PG}?retention=1e300",
    f"{NO_PG}?pool_size=2&pool_size=3",
    f"{NO_REDIS}?prefix=",
    f"{NO_REDIS}?pool_size=0",
    f"{NO_REDIS}?pool_size=-3",
    f"{NO_REDIS}?max_clock_skew=nan",
    f"{NO_REDIS}?retention=nan",
    f"{NO_REDIS}?retention=1e300",
    "redis://127.0.0.1:port/0",
    "sqlite:///x.db?durability=bogus",
    "sqlite:///x.db?busy_timeout=nan",
    "sqlite:///x.db?busy_timeout=-1",
    "sqlite:///x.db?retention=inf",
    "memory:?retention=nan",
    "memory:?retention=-1",
])
def test_a_bad_option_is_refused_with_the_url_code(url: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BudgetInputError) as info:
        store_from_url(url)
    assert info.value.code == "invalid_store_url", str(info.value)
    assert "s3cret" not in str(info.value)
    assert not (tmp_path / "x.db").exists()  # refused before the file is made


@pytest.mark.parametrize(("make", "option"), [
    (lambda: PostgresStore(NO_PG, schema="Bad-Name"), "schema"),
    (lambda: PostgresStore(NO_PG, durability="bogus"), "durability"),  # type: ignore[arg-type]
    (lambda: PostgresStore(NO_PG, pool_size=0), "pool_size"),
    (lambda: PostgresStore(NO_PG, max_clock_skew=float("nan")), "max_clock_skew"),
    (lambda: RedisStore(NO_REDIS, prefix=""), "prefix"),
    (lambda: RedisStore(NO_REDIS, pool_size=-3), "pool_size"),
    (lambda: RedisStore(NO_REDIS, max_clock_skew=float("nan")), "max_clock_skew"),
    (lambda: SQLiteStore(":memory:", durability="bogus"), "durability"),  # type: ignore[arg-type]
    (lambda: SQLiteStore(":memory:", busy_timeout=float("nan")), "busy_timeout"),
    (lambda: MemoryStore(retention=float("nan")), "retention"),
    (lambda: MemoryStore(retention=True), "retention"),
])
def test_store_constructors_refuse_the_same_options(make: Any, option: str) -> None:
    with pytest.raises(BudgetInputError) as info:
        make()
    assert info.value.code == "invalid_store_url" and option in info.value.message


def test_an_error_shows_the_url_as_typed_without_its_password() -> None:
    with pytest.raises(BudgetInputError) as info:
        store_from_url("sqlite:///")
    assert "'sqlite:///'" in info.value.message
    with pytest.raises(BudgetInputError) as info:
        store_from_url(f"{NO_PG}?schema=Bad-Name")
    assert "'postgresql://u:***@127.0.0.1:1/db?schema=Bad-Name'" in info.value.message


# -- a store, a URL, or neither -----------------------------------------------------------


def test_a_ledger_opens_a_store_url() -> None:
    ledger = Ledger([DAILY], "memory:?retention=60")  # type: ignore[arg-type]
    assert isinstance(ledger.store, MemoryStore) and ledger.store.retention == 60
    ledger.record("bot", "payments:x", "7", "EUR")
    assert ledger.balances("bot")[0].spent == Decimal(7)


class _HalfStore:
    def usage(self, *args: object) -> object:
        return ()


@pytest.mark.parametrize("store", [5, b"memory:", object(), _HalfStore(), "mysql://x/y"])
def test_a_ledger_and_an_engine_refuse_what_is_no_store(store: object) -> None:
    with pytest.raises(BudgetInputError) as info:
        Ledger([DAILY], store)  # type: ignore[arg-type]
    assert info.value.code == "invalid_store_url"
    with pytest.raises(PolicyEngineError) as err:
        Engine.from_source("budget d: payments:* limit 10 EUR per day\n", budget_store=store)
    # a URL it cannot open is the URL's code; anything else is a wrong Engine option
    assert err.value.code == ("invalid_store_url" if isinstance(store, str)
                              else "invalid_option")


# The BudgetStore protocol's methods, as a Ledger calls them (store.py).
PROTOCOL = ("usage", "get_reservation", "get_idempotency", "list_reservations", "apply",
            "close")


def _store_without(missing: frozenset[str], not_callable: frozenset[str]) -> object:
    """A store passing each protocol method to a MemoryStore, less those in ``missing``
    and with those in ``not_callable`` plain values: nearly, but not, a store."""
    inner = MemoryStore()
    members: dict[str, Any] = {
        name: (lambda self, *args, _name=name: getattr(inner, _name)(*args))
        for name in PROTOCOL if name not in missing}
    members.update(dict.fromkeys(not_callable, "not a method"))
    return type("NearlyAStore", (), members)()


@settings(max_examples=40, deadline=None)
@given(st.sets(st.sampled_from(PROTOCOL), min_size=1).flatmap(
    lambda lacking: st.tuples(st.just(frozenset(lacking)),
                              st.sets(st.sampled_from(sorted(lacking))).map(frozenset))))
def test_a_store_lacking_a_protocol_method_is_refused_by_both(
        lacking: tuple[frozenset[str], frozenset[str]]) -> None:
    """One check of the protocol, two codes: the Ledger's ``invalid_store_url`` and the
    Engine's ``invalid_option``; each message names what is lacking."""
    from policyengine.engine import EngineOptionError
    gone, plain = lacking
    store = _store_without(gone - plain, plain)
    with pytest.raises(BudgetInputError) as info:
        Ledger([DAILY], store)  # type: ignore[arg-type]
    assert info.value.code == "invalid_store_url"
    with pytest.raises(EngineOptionError) as err:
        Engine.from_source("budget d: payments:* limit 10 EUR per day\n", budget_store=store)
    assert err.value.code == "invalid_option"
    for message in (info.value.message, err.value.message):
        assert "must be a BudgetStore" in message
        if len(gone) < len(PROTOCOL):
            assert f"it has no {', '.join(m for m in PROTOCOL if m in gone)})" in message


def test_a_store_with_every_protocol_method_is_taken_by_both() -> None:
    store = _store_without(frozenset(), frozenset())
    assert Ledger([DAILY], store).store is store  # type: ignore[arg-type]
    engine = Engine.from_source("budget d: payments:* limit 10 EUR per day\n",
                                budget_store=store)
    assert engine.budgets.store is store


def test_the_cli_prints_a_store_code_once(tmp_path: Path) -> None:
    policy = tmp_path / "p.policy"
    policy.write_text('role r: docs:*\nagent "bot": r\n')
    out = subprocess.run(
        [sys.executable, "-m", "policyengine", "eval", str(policy), "--principal", "bot",
         "--permission", "docs:read", "--budget-store", "redis://127.0.0.1:1/0"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.startswith("policyengine eval: error: store_unavailable: --store: "), \
        out.stderr
    assert out.stderr.count("store_unavailable") == 1, out.stderr


# -- every option value: opens, or the code ------------------------------------------------

_NUMBERS = st.one_of(
    st.sampled_from(["nan", "NaN", "inf", "-inf", "1e999", "-1", "0", "-0", "1", "2.5",
                     "0.001", "1e300", "315360000", "315360001", "none", "None", "",
                     " 3", "1_0", "0x10", "true", "3 ", "1024", "1025"]),
    st.integers(-10, 2000).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=6),
)
_DURABILITY = st.one_of(st.sampled_from(["process", "spend", "full", "bogus", "", "FULL"]),
                        st.text(max_size=6))


def _names(base: str, bad: list[str]) -> st.SearchStrategy[str]:
    """A schema / prefix: ours (valid or not after the suffix), or a known bad one (no
    valid name outside ours: what opens is dropped with the namespace)."""
    return st.one_of(st.text(max_size=5).map(lambda t: base + t), st.sampled_from(bad))


def _options(kind: str, base: str) -> st.SearchStrategy[dict[str, str]]:
    values: dict[str, st.SearchStrategy[str]] = {
        "memory": {"retention": _NUMBERS},
        "sqlite": {"durability": _DURABILITY, "busy_timeout": _NUMBERS,
                   "retention": _NUMBERS},
        "postgres": {"schema": _names(base, ["", "Bad-Name", "1abc", "a" * 64, "a b"]),
                     "durability": _DURABILITY,
                     "pool_size": _NUMBERS, "max_clock_skew": _NUMBERS,
                     "retention": _NUMBERS},
        "redis": {"prefix": _names(base, [""]), "max_clock_skew": _NUMBERS, "pool_size": _NUMBERS,
                  "retention": _NUMBERS,
                  "create": st.sampled_from(["true", "false", "0", "yes", "maybe", ""])},
    }[kind]
    return st.fixed_dictionaries({}, optional=values)


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres", "redis"])
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_option_value_opens_or_gives_the_code(kind: str, store_namespace: str,
                                                  tmp_path: Path, data: st.DataObject) -> None:
    if kind in ("postgres", "redis"):
        require_service(kind)
    options = data.draw(_options(kind, store_namespace))
    if kind == "postgres":
        options.setdefault("schema", store_namespace)
    elif kind == "redis":
        options.setdefault("prefix", store_namespace + ":")
        options.setdefault("create", "true")  # a prefix of the test's own: made here
    base = {"memory": "memory:", "sqlite": f"sqlite:///{tmp_path / 'opt.db'}",
            "postgres": POSTGRES_URL, "redis": REDIS_URL}[kind]
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in options.items())
    url = f"{base}?{query}" if query else base
    try:
        store = store_from_url(url)
    except PolicyEngineError as err:
        if err.code == "store_uninitialized":  # a new prefix, opened without create
            assert options.get("create") in ("false", "0"), err
            return
        assert isinstance(err, BudgetInputError) and err.code == "invalid_store_url", err
        return
    try:  # what opened is usable: a spend goes through (the namespace is dropped after)
        ledger = Ledger([DAILY], store)
        try:  # each call is refused alike when the allowed skew is below the round trip
            ledger.record("bot", "payments:x", "1", "EUR")
            spent = ledger.balances("bot")[0].spent
        except BudgetStoreError as err:  # a skew allowed below a millisecond or so
            skew = getattr(store, "max_clock_skew", None)
            assert err.code == "clock_skew" and skew is not None and skew < 1, err
        else:
            assert spent >= Decimal(1)
    finally:
        store.close()
