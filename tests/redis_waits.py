"""What the Redis store tests share: the waits a store's redis-py client was opened with.

A Redis store's ``timeout`` (its URL's ``?timeout=`` or its constructor's argument) sets
redis-py's ``socket_timeout`` (each reply) and ``socket_connect_timeout`` (a connection);
the tests that check how a store reads its time options read them here, from the pool
that makes the client's connections."""

from __future__ import annotations

from typing import Any


def client_waits(store: Any) -> tuple[object, object]:
    """``(socket_timeout, socket_connect_timeout)`` of ``store``'s client connections (a
    budget, approval or revocation ``Redis*Store``)."""
    kwargs = store._redis.connection_pool.connection_kwargs
    return kwargs["socket_timeout"], kwargs["socket_connect_timeout"]
