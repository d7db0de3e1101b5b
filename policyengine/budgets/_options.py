"""The checks of a budget store's options, shared by every store and by store URLs.

A bad option must fail where the store is opened, with ``invalid_store_url``, and never
later: a ``pool_size`` of 0 would make every request wait for a connection and fail
``store_unavailable``; a ``max_clock_skew`` of NaN would compare false and silently turn
the skew guard off. Checked once per store, at construction (never on a request).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from policyengine._storeurl import MAX_SECONDS, redact_url, safe_reason, seconds_ok
from policyengine.budgets.errors import BudgetInputError

__all__ = ["DURABILITIES", "SCHEMA_NAME", "check_store_options", "store_url_error"]

DURABILITIES = ("process", "spend", "full")
#: A lower-case SQL name PostgreSQL takes without quoting rules to worry about.
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")
#: A pool larger than this is a typo, not a deployment (each is a server connection).
MAX_POOL_SIZE = 1024
def _seconds(value: object, *, none: bool = False, zero: bool = True) -> bool:
    """A finite number of seconds from 0 (above 0 without ``zero``; None with ``none``)
    to :data:`MAX_SECONDS` (``_storeurl.seconds_ok``)."""
    if value is None:
        return none
    return seconds_ok(value, positive=not zero)


_SECONDS = f"must be a number of seconds from 0 to {MAX_SECONDS:,}"
_POSITIVE = f"must be a number of seconds above 0, at most {MAX_SECONDS:,}"
#: Per option: whether a value is good, and what a good one is.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "durability": (lambda v: v in DURABILITIES, "must be one of " + ", ".join(DURABILITIES)),
    "schema": (lambda v: type(v) is str and SCHEMA_NAME.match(v) is not None,
               "must be a lower-case SQL name (a-z, 0-9, _; at most 63 characters)"),
    "prefix": (lambda v: type(v) is str and v != "", "must be a non-empty string"),
    "create": (lambda v: type(v) is bool, "must be true or false"),
    "pool_size": (lambda v: type(v) is int and 1 <= v <= MAX_POOL_SIZE,
                  f"must be a whole number from 1 to {MAX_POOL_SIZE}"),
    # 0 would refuse every call (no two clocks agree to the microsecond).
    "max_clock_skew": (lambda v: _seconds(v, none=True, zero=False), _POSITIVE + ", or none"),
    "retention": (_seconds, _SECONDS),
    "busy_timeout": (_seconds, _SECONDS),
    "connect_timeout": (lambda v: _seconds(v, zero=False), _POSITIVE),
    "timeout": (lambda v: _seconds(v, zero=False), _POSITIVE),
}


def check_store_options(where: str = "budget store", **options: Any) -> None:
    """Raise ``BudgetInputError`` ``invalid_store_url`` for the first bad option;
    ``where`` starts the message (the store, or the URL the options came from)."""
    for name, value in options.items():
        rule = _RULES.get(name)
        if rule is not None and not rule[0](value):
            raise BudgetInputError("invalid_store_url",
                                   f"{where}: option {name}={value!r} {rule[1]}")


def store_url_error(url: str, why: str) -> BudgetInputError:
    """``invalid_store_url`` for the budget store URL ``url``: the URL and ``why`` with
    the URL's secrets masked (``_storeurl.safe_reason``: ``why`` may quote the driver)."""
    return BudgetInputError("invalid_store_url",
                            f"budget store URL {redact_url(url)!r}: {safe_reason(url, why)}")
