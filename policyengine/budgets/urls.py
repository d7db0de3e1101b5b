"""Choose a budget store by URL: the one setting every host of a deployment shares.

==================================  ======================================================
``memory:``                         :class:`MemoryStore` (one process; the default)
``sqlite:///relative/ledger.db``    :class:`SQLiteStore` (one host); ``sqlite:////abs/path``
``postgresql://user@host/db``       :class:`PostgresStore` (many hosts; ``postgres://`` too)
``redis://host:6379/0``             :class:`RedisStore` (many hosts; ``rediss://`` for TLS)
==================================  ======================================================

Store options go in the query string and are removed before the URL reaches the
driver: ``durability``, ``busy_timeout`` and ``retention`` (SQLite); ``schema``,
``durability``, ``pool_size``, ``max_clock_skew`` and ``retention`` (PostgreSQL);
``prefix``, ``max_clock_skew``, ``pool_size`` and ``retention`` (Redis). Other query
parameters (``sslmode=require``...) are the driver's. Keyword arguments override the
URL's.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from policyengine.budgets.errors import BudgetInputError
from policyengine.budgets.store import BudgetStore

__all__ = ["store_from_url"]

_FLOAT = {"busy_timeout", "retention", "max_clock_skew"}
_INT = {"pool_size"}
_OPTIONS = {
    "sqlite": {"durability", "busy_timeout", "retention"},
    "postgresql": {"schema", "durability", "pool_size", "max_clock_skew", "retention"},
    "redis": {"prefix", "max_clock_skew", "pool_size", "retention"},
    "memory": {"retention"},
}


def _bad(url: str, why: str) -> BudgetInputError:
    shown = urlsplit(url)._replace(netloc=urlsplit(url).hostname or "").geturl()  # no password
    return BudgetInputError("invalid_store_url", f"budget store URL {shown!r}: {why}")


def _split_options(url: str, kind: str) -> tuple[str, dict[str, Any]]:
    parts = urlsplit(url)
    mine: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in _OPTIONS[kind]:
            try:
                if name in _INT:
                    mine[name] = int(value)
                elif name in _FLOAT:
                    mine[name] = None if value.lower() == "none" else float(value)
                else:
                    mine[name] = value
            except ValueError:
                raise _bad(url, f"option {name}={value!r} is not a number") from None
        else:
            rest.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(rest))), mine


def store_from_url(url: str, **options: Any) -> BudgetStore:
    """The budget store ``url`` names (see the module docstring); ``options`` are passed
    to its constructor. Raises ``BudgetInputError`` ``invalid_store_url`` for a URL it
    cannot read, and what the store raises when it cannot open."""
    if type(url) is not str:
        raise BudgetInputError("invalid_store_url", "a budget store URL must be a string")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "memory":
        from policyengine.budgets.memory import MemoryStore
        _, mine = _split_options(url, "memory")
        return MemoryStore(**{**mine, **options})
    if scheme == "sqlite":
        from policyengine.budgets.sqlite import SQLiteStore
        _, mine = _split_options(url, "sqlite")
        path = url.split("?", 1)[0]
        if not path.startswith("sqlite:///") or len(path) == len("sqlite:///"):
            raise _bad(url, "write sqlite:///relative/path or sqlite:////absolute/path")
        return SQLiteStore(path[len("sqlite:///"):], **{**mine, **options})
    if scheme in ("postgresql", "postgres"):
        from policyengine.budgets.postgres import PostgresStore
        plain, mine = _split_options(url, "postgresql")
        return PostgresStore(plain.rstrip("?"), **{**mine, **options})
    if scheme in ("redis", "rediss", "unix"):
        from policyengine.budgets.redis import RedisStore
        plain, mine = _split_options(url, "redis")
        return RedisStore(plain.rstrip("?"), **{**mine, **options})
    raise _bad(url, "use memory:, sqlite:///path, postgresql://... or redis://...")
