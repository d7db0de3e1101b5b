"""Choose a budget store by URL: the one setting every host of a deployment shares.

==================================  ======================================================
``memory:``                         :class:`MemoryStore` (one process; the default)
``sqlite:///relative/ledger.db``    :class:`SQLiteStore` (one host); ``sqlite:////abs/path``
``postgresql://user@host/db``       :class:`PostgresStore` (many hosts; ``postgres://`` too)
``redis://host:6379/0``             :class:`RedisStore` (many hosts; ``rediss://`` for TLS)
==================================  ======================================================

Store options go in the query string and are removed before the URL reaches the
driver: ``durability``, ``busy_timeout`` and ``retention`` (SQLite); ``schema``,
``durability``, ``pool_size``, ``max_clock_skew``, ``retention`` and ``connect_timeout``
(PostgreSQL); ``prefix``, ``max_clock_skew``, ``pool_size``, ``retention``,
``timeout`` (seconds a connection or a reply is waited for) and ``create`` (Redis:
``create=true`` makes the dataset where the prefix holds none; see :class:`RedisStore`).
Other query parameters are the driver's: for PostgreSQL only libpq's connection
parameters (``sslmode=require``, ``application_name``...; see
:func:`policyengine._storeurl.check_postgres_url`), and for Redis only the redis-py
options listed in :func:`policyengine._storeurl.check_redis_url` (``db``, timeouts, TLS
files...; ``socket_timeout`` and ``socket_connect_timeout`` only without the store's own
``timeout``, which sets both); any other is refused, as is anything after
``memory:`` or a query SQLite does not read. Keyword arguments override the URL's. A
bad option is refused here, before any connection, with ``invalid_store_url`` (see
:mod:`policyengine.budgets._options`), and so is a value given where a store is taken
that is neither a store nor a URL (:func:`as_budget_store`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from policyengine._storeurl import (
    StoreUrlError,
    check_memory_url,
    flag,
    redact_url,
    scheme_of,
    split_store_url,
)
from policyengine.budgets._options import check_store_options, store_url_error
from policyengine.budgets.errors import BudgetInputError
from policyengine.budgets.store import BudgetStore
from policyengine.errors import PolicyEngineError

__all__ = ["as_budget_store", "missing_store_methods", "store_from_url"]

_FLOAT = {"busy_timeout", "retention", "max_clock_skew", "connect_timeout", "timeout"}
_INT = {"pool_size"}
_OPTIONS = {
    "sqlite": {"durability", "busy_timeout", "retention"},
    "postgresql": {"schema", "durability", "pool_size", "max_clock_skew", "retention",
                   "connect_timeout"},
    "redis": {"prefix", "max_clock_skew", "pool_size", "retention", "create", "timeout"},
    "memory": {"retention"},
}
#: What a ``Ledger`` calls on its store: the :class:`BudgetStore` protocol's methods, read
#: from the protocol so that a method added there is checked here too.
_STORE_METHODS = tuple(name for name, member in vars(BudgetStore).items()
                       if not name.startswith("_") and callable(member))
_SCHEMES = "memory:, sqlite:///path, postgresql://... or redis://..."


def _float_or_none(value: str) -> float | None:
    return None if value.lower() == "none" else float(value)


def _split_options(url: str, kind: str) -> tuple[str, dict[str, Any]]:
    own = {name: int if name in _INT else _float_or_none if name in _FLOAT
           else flag if name == "create" else str for name in _OPTIONS[kind]}
    try:
        return split_store_url(url, own)
    except StoreUrlError as exc:
        raise store_url_error(url, str(exc)) from None


def store_from_url(url: str, **options: Any) -> BudgetStore:
    """The budget store ``url`` names (see the module docstring); ``options`` are passed
    to its constructor. Raises ``BudgetInputError`` ``invalid_store_url`` for a URL it
    cannot read or a bad option (in the URL or in ``options``), and what the store
    raises when it cannot open (``store_unavailable``, ``store_incompatible``)."""
    if type(url) is not str:
        raise BudgetInputError("invalid_store_url", "a budget store URL must be a string")
    scheme = scheme_of(url)
    kind = {"memory": "memory", "sqlite": "sqlite", "postgresql": "postgresql",
            "postgres": "postgresql", "redis": "redis", "rediss": "redis",
            "unix": "redis"}.get(scheme)
    if kind is None:
        raise store_url_error(url, f"use {_SCHEMES}")
    plain, mine = _split_options(url, kind)
    try:
        if kind == "memory":
            check_memory_url(plain)
        elif kind == "sqlite" and urlsplit(plain).query:
            raise StoreUrlError(f"unknown option(s) {urlsplit(plain).query!r} (SQLite "
                                f"reads {', '.join(sorted(_OPTIONS['sqlite']))})")
    except StoreUrlError as exc:
        raise store_url_error(url, str(exc)) from None
    mine.update(options)
    check_store_options(f"budget store URL {redact_url(url)!r}", **mine)
    try:
        return _open(url, kind, plain, mine)
    except PolicyEngineError:
        raise
    except ValueError as exc:  # the driver cannot read the URL (a port that is no number)
        raise store_url_error(url, str(exc)) from None


def _open(url: str, kind: str, plain: str, options: dict[str, Any]) -> BudgetStore:
    if kind == "memory":
        from policyengine.budgets.memory import MemoryStore
        return MemoryStore(**options)
    if kind == "sqlite":
        from policyengine.budgets.sqlite import SQLiteStore
        path = url.split("?", 1)[0]
        if not path.startswith("sqlite:///") or len(path) == len("sqlite:///"):
            raise store_url_error(url, "write sqlite:///relative/path or sqlite:////absolute/path")
        return SQLiteStore(path[len("sqlite:///"):], **options)
    if kind == "postgresql":
        from policyengine.budgets.postgres import PostgresStore
        return PostgresStore(plain.rstrip("?"), **options)
    from policyengine.budgets.redis import RedisStore
    return RedisStore(plain.rstrip("?"), **options)


def missing_store_methods(store: object) -> list[str]:
    """The :class:`BudgetStore` methods ``store`` lacks (empty: it is usable as one)."""
    return [m for m in _STORE_METHODS if not callable(getattr(store, m, None))]


def _invalid_store_url(message: str) -> PolicyEngineError:
    return BudgetInputError("invalid_store_url", message)


def as_budget_store(store: object, where: str = "budget_store", *,
                    refuse: Callable[[str], PolicyEngineError] = _invalid_store_url
                    ) -> BudgetStore | None:
    """``store`` as a budget store: a URL opened (:func:`store_from_url`), a store as it
    is, None as None. Anything else is refused here, at construction: taken as it is, it
    would fail on the first budgeted request (denied ``budget_unavailable``) and on every
    one after.

    This is the one check of the :class:`BudgetStore` protocol; each caller keeps its own
    error code by choosing the exception: ``refuse(message)`` is raised (default:
    ``BudgetInputError`` ``invalid_store_url``, a ``Ledger``'s; an ``Engine`` passes its
    ``EngineOptionError``, ``invalid_option``). A URL the stores cannot open is
    ``invalid_store_url`` for every caller, from :func:`store_from_url`."""
    if store is None:
        return None
    if isinstance(store, str):
        return store_from_url(store)
    missing = missing_store_methods(store)
    if missing:
        lacks = "" if len(missing) == len(_STORE_METHODS) else \
            f" (it has no {', '.join(missing)})"
        raise refuse(f"{where} must be a BudgetStore ({', '.join(_STORE_METHODS)}) or a "
                     f"store URL ({_SCHEMES}), not {type(store).__name__}{lacks}")
    return store  # type: ignore[return-value]
