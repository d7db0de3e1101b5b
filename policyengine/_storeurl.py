"""A shared store's URL split into the store's own options and the driver's URL.

Budget, approval and revocation stores all open from ``postgresql://...?schema=...`` or
``redis://...?prefix=...``: the options a store reads are taken out of the query (each at
most once, converted), the rest stays for the driver. One parser, so the three kinds read
a URL alike; each caller turns :class:`StoreUrlError` into its own error code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["StoreUrlError", "scheme_of", "split_store_url"]


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
            raise StoreUrlError(f"option {name}={value!r} is not a number") from None
    return urlunsplit(parts._replace(query=urlencode(rest))), mine
