"""A shared store's URL split into the store's own options and the driver's URL.

Budget, approval and revocation stores all open from ``postgresql://...?schema=...`` or
``redis://...?prefix=...``: the options a store reads are taken out of the query (each at
most once, converted), the rest stays for the driver. One parser, so the three kinds read
a URL alike; each caller turns :class:`StoreUrlError` into its own error code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["StoreUrlError", "check_memory_url", "check_redis_url", "scheme_of",
           "split_store_url"]


class StoreUrlError(ValueError):
    """Why a store URL cannot be read (the caller raises it again under its own code)."""


def scheme_of(url: object) -> str:
    """The lower-cased scheme of ``url`` (``""`` for a non-string or no scheme)."""
    return url.split(":", 1)[0].lower() if isinstance(url, str) and ":" in url else ""


def split_store_url(url: str, own: Mapping[str, Callable[[str], Any]]
                    ) -> tuple[str, dict[str, Any]]:
    """``(url without the store's options, those options converted)``: ``own`` maps each
    option the store reads to its conversion. An option given twice, a value its
    conversion refuses or a URL ``urlsplit`` cannot read raise :class:`StoreUrlError`.
    Blank values are kept (``?prefix=`` is refused by the store, never silently lost)."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise StoreUrlError(str(exc)) from None
    mine: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        convert = own.get(name)
        if convert is None:
            rest.append((name, value))
            continue
        if name in mine:
            raise StoreUrlError(f"option {name} given twice")
        try:
            mine[name] = convert(value)
        except ValueError:
            raise StoreUrlError(f"option {name}={value!r} is not a value it takes"
                                ) from None
    return urlunsplit(parts._replace(query=urlencode(rest))), mine


def check_memory_url(plain: str) -> None:
    """Refuse anything after ``memory:`` once the store's own options are taken out (a
    typo such as ``memory:?durability=full`` or ``memory:ledger`` would otherwise open a
    store that silently ignores it)."""
    rest = plain.split(":", 1)[1] if ":" in plain else plain
    if rest.rstrip("?"):
        raise StoreUrlError(f"memory: takes no {rest.lstrip('?')!r} (write memory:, "
                            "with only the options the store reads)")


def _positive(kind: type) -> Callable[[str], Any]:
    def convert(value: str) -> Any:
        number = kind(value)
        if not math.isfinite(number) or number <= 0 or number > 315_360_000:
            raise ValueError(value)
        return number
    return convert


def _flag(value: str) -> bool:
    if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
        raise ValueError(value)
    return value.lower() in ("true", "yes", "1")


def _choice(*names: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        if value.lower() not in names:
            raise ValueError(value)
        return value
    return convert


def _nonnegative_int(value: str) -> int:
    if not value.isdigit() or len(value) > 6:
        raise ValueError(value)
    return int(value)


def _text(value: str) -> str:
    if not value:
        raise ValueError(value)
    return value


#: The redis-py URL options a store passes on (to ``redis.Redis.from_url``), with what
#: each must read as. redis-py hands any other query option to its connection class as a
#: keyword argument, which fails with a ``TypeError`` at the first command, not at
#: construction: every other option is refused here.
_REDIS_OPTIONS: dict[str, Callable[[str], Any]] = {
    "db": _nonnegative_int,
    "socket_timeout": _positive(float),
    "socket_connect_timeout": _positive(float),
    "socket_keepalive": _flag,
    "health_check_interval": _positive(int),
    "client_name": _text,
}
_REDISS_OPTIONS: dict[str, Callable[[str], Any]] = {
    "ssl_cert_reqs": _choice("none", "optional", "required"),
    "ssl_check_hostname": _flag,
    "ssl_ca_certs": _text,
    "ssl_ca_path": _text,
    "ssl_certfile": _text,
    "ssl_keyfile": _text,
}


def check_redis_url(plain: str) -> None:
    """Refuse a Redis URL (the store's own options already taken out) that redis-py would
    read other than as written, or fail on only at the first command: a query option it
    does not know (``?foo=1``: a ``TypeError`` from its connection class), a value that
    option cannot take, an option given twice, a database that is no number
    (``redis://host/notadb`` silently meant database 0), or a database given both in the
    path and as ``?db=``. ``unix://`` takes the socket's path and ``?db=``; the TLS
    options are ``rediss://``'s alone."""
    try:
        parts = urlsplit(plain)
        parts.port  # noqa: B018 - read for its ValueError (a port that is no number)
    except ValueError as exc:
        raise StoreUrlError(str(exc)) from None
    scheme = parts.scheme.lower()
    known = {**_REDIS_OPTIONS, **(_REDISS_OPTIONS if scheme == "rediss" else {})}
    seen: set[str] = set()
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        convert = known.get(name)
        if convert is None:
            names = ", ".join(sorted(known))
            raise StoreUrlError(f"unknown option {name!r} (the store's own options, and "
                                f"for the Redis client: {names})")
        if name in seen:
            raise StoreUrlError(f"option {name} given twice")
        seen.add(name)
        try:
            convert(value)
        except ValueError:
            raise StoreUrlError(f"option {name}={value!r} is not a value it takes"
                                ) from None
    if scheme == "unix":
        if not parts.path:
            raise StoreUrlError("unix:// needs the socket's path (unix:///path/to.sock)")
        return
    path = parts.path.strip("/")
    if path:
        if "db" in seen:
            raise StoreUrlError("the database is given twice (in the path and as ?db=)")
        try:
            _nonnegative_int(path)
        except ValueError:
            raise StoreUrlError(f"database {path!r} is not a number (write "
                                "redis://host:6379/0)") from None
