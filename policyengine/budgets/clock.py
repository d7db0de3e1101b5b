"""Which clock decides: for a shared store, the store's.

A ledger reads the time once per operation and hands it to the store: it decides which
calendar window is charged, when a reservation expires, which rolling spend still
counts and how long an idempotency record lives. Hosts sharing one store must therefore
agree on the time, whatever their own clocks say.

:class:`ServerClock` is the default clock of a ledger over a shared store: the host's
clock plus an offset measured against the store server's clock (PostgreSQL
``clock_timestamp()``, Redis ``TIME``), NTP-style: the offset is the server time minus
the midpoint of the round trip that fetched it, so it is off by at most half a round
trip. It is measured when first needed and again every ``resync`` seconds (one extra
round trip, not one per operation), and at once if the host clock is seen to jump
backwards or by more than ``resync`` forwards. Every host using it runs on the server's
time, give or take a millisecond, even when its own clock is hours out.

The stores also refuse, with ``clock_skew``, any call whose time is further than their
``max_clock_skew`` from the server's clock (a ledger given its own ``clock=``, or a
host clock that jumped between resyncs): fail closed rather than charge the wrong window
or expire a hold early.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["ServerClock"]


class ServerClock:
    """The host clock corrected to a server's: ``clock()`` returns POSIX seconds.

    ``read_server`` returns the server's time (one round trip). ``host`` is the local
    clock (``time.time``; tests pass one that runs ahead or behind).
    """

    def __init__(
        self,
        read_server: Callable[[], float],
        *,
        host: Callable[[], float] = time.time,
        resync: float = 30.0,
    ) -> None:
        self._read_server = read_server
        self._host = host
        self.resync = resync
        self.offset = 0.0
        """Server time minus host time, seconds, as last measured."""
        self.error = float("inf")
        """Half the round trip of the last measurement: the most the offset can be off."""
        self._synced_at = float("-inf")
        self._lock = threading.Lock()

    def __call__(self) -> float:
        t = self._host()
        if not 0.0 <= t - self._synced_at < self.resync:
            self.sync()
            t = self._host()
        return t + self.offset

    def sync(self) -> None:
        """Measure the offset now (raises what ``read_server`` raises)."""
        with self._lock:
            before = self._host()
            server = self._read_server()
            after = self._host()
            self.offset = server - (before + after) / 2
            self.error = max(0.0, after - before) / 2
            self._synced_at = after
