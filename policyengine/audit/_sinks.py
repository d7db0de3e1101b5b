"""Where decision-log records go: a :class:`Sink` takes batches of encoded lines.

Every sink gets the same bytes (one JSON record per line, newline-terminated, already
masked, chained and hashed); ``write`` raises on failure and may block; the log's
overflow policy (``block``, ``spill``, ``deny``, ``drop``) decides what a failing or slow
sink means for decisions (docs/decision-log.md).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

import orjson

from policyengine._storeurl import redact_url
from policyengine.audit.errors import DecisionLogError

__all__ = [
    "CallbackSink",
    "HttpSink",
    "JsonlFileSink",
    "Sink",
    "StdoutSink",
    "sink_from_url",
]


@runtime_checkable
class Sink(Protocol):
    """A destination for records. ``write`` is called from the log's shipping thread
    only (never concurrently) with a non-empty batch of lines; it returns once they are
    delivered and raises on failure (the batch is then retried, spilled or counted,
    never silently lost)."""

    def write(self, lines: Sequence[bytes]) -> None: ...

    def close(self) -> None: ...


class JsonlFileSink:
    """JSON Lines in a file, rotated by size: ``decisions.jsonl`` is the live file,
    ``decisions.1.jsonl`` ... the rotated ones (``keep`` of them; ``keep=0`` keeps all,
    numbered upwards: ``decisions.000001.jsonl``, oldest first).

    ``fsync=True`` syncs every batch to disk (slower; survives a power cut). The chain
    continues across restarts: :meth:`resume` reads the last record of the live file.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = 100 * 2**20,
                 keep: int = 0, fsync: bool = False) -> None:
        if type(max_bytes) is not int or max_bytes < 1024:
            raise DecisionLogError("invalid_log_config", "max_bytes must be a whole number "
                                   ">= 1024")
        if type(keep) is not int or keep < 0:
            raise DecisionLogError("invalid_log_config", "keep must be a whole number >= 0")
        if not isinstance(path, (str, os.PathLike)):
            raise DecisionLogError("invalid_log_config", "a decision log file is a str or "
                                   f"os.PathLike path, not {type(path).__name__}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.fsync = fsync
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: IO[bytes] = open(self.path, "ab")  # noqa: SIM115 - kept open
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise DecisionLogError("invalid_log_config", "cannot open the decision log file "
                                   f"{str(path)[:200]!r}: {reason}") from None
        self._size = self._file.tell()

    def resume(self) -> tuple[int, str] | None:
        """(seq, hash) of the last whole record of the live file, or None (no record;
        or a torn last line, in which case the file is rotated away first)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(0, os.SEEK_END)
                end = f.tell()
                f.seek(max(0, end - 65536))
                tail = f.read()
        except OSError:
            return None
        if not tail.strip():
            return None
        last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        try:
            record = orjson.loads(last)
            seq, digest = record["seq"], record["hash"]
            if type(seq) is int and type(digest) is str and tail.endswith(b"\n"):
                return seq, digest
        except (orjson.JSONDecodeError, KeyError, TypeError):
            pass
        self._rotate()  # a torn or foreign last line: the chain starts anew, elsewhere
        return None

    def rotated(self) -> list[Path]:
        """The rotated files, oldest first, then the live file: the order to verify."""
        stem, suffix = self.path.stem, self.path.suffix
        found = []
        for p in self.path.parent.glob(f"{stem}.*{suffix}"):
            middle = p.name[len(stem) + 1:len(p.name) - len(suffix)]
            if middle.isdigit():
                found.append((int(middle), p))
        if self.keep:
            found.sort(key=lambda x: -x[0])  # .3 is older than .1
        else:
            found.sort()
        return [p for _, p in found] + [self.path]

    def _rotate(self) -> None:
        self._file.close()
        stem, suffix = self.path.stem, self.path.suffix
        if self.keep:
            oldest = self.path.with_name(f"{stem}.{self.keep}{suffix}")
            with contextlib.suppress(FileNotFoundError):
                oldest.unlink()
            for n in range(self.keep - 1, 0, -1):
                src = self.path.with_name(f"{stem}.{n}{suffix}")
                if src.exists():
                    src.rename(self.path.with_name(f"{stem}.{n + 1}{suffix}"))
            self.path.rename(self.path.with_name(f"{stem}.1{suffix}"))
        else:
            numbers = [int(p.name[len(stem) + 1:len(p.name) - len(suffix)])
                       for p in self.path.parent.glob(f"{stem}.*{suffix}")
                       if p.name[len(stem) + 1:len(p.name) - len(suffix)].isdigit()]
            n = max(numbers, default=0) + 1
            self.path.rename(self.path.with_name(f"{stem}.{n:06d}{suffix}"))
        self._file = open(self.path, "ab")  # noqa: SIM115 - kept open
        self._size = 0

    def write(self, lines: Sequence[bytes]) -> None:
        data = b"".join(lines)
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        self._file.write(data)
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        self._size += len(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()


class StdoutSink:
    """JSON Lines on standard output (or any binary stream), e.g. for a log collector."""

    def __init__(self, stream: IO[bytes] | None = None) -> None:
        self._stream = stream

    def write(self, lines: Sequence[bytes]) -> None:
        stream = self._stream if self._stream is not None else sys.stdout.buffer
        stream.write(b"".join(lines))
        stream.flush()

    def close(self) -> None:
        pass


class CallbackSink:
    """Calls ``callback(record)`` with each record as a ``dict`` (in order, from the
    shipping thread). An exception from the callback is a sink failure."""

    def __init__(self, callback: Callable[[dict[str, Any]], Any]) -> None:
        self._callback = callback

    def write(self, lines: Sequence[bytes]) -> None:
        callback = self._callback
        for line in lines:
            callback(orjson.loads(line))

    def close(self) -> None:
        pass


class HttpSink:
    """POST batches of records to a collector over HTTP (httpx): the body is the JSON
    Lines (``application/x-ndjson``), gzip-compressed when ``gzip`` (the default) and
    larger than 1 KiB; a 2xx is delivery. A network error, a 429 or a 5xx is retried
    ``retries`` times with exponential backoff and jitter (``backoff`` seconds, doubled,
    at most ``max_backoff``), then :meth:`write` raises and the log's policy applies.
    Any other status is a failure at once. ``headers`` (e.g. an ``Authorization``) go with
    every request and are never logged; a message shows the URL with its user
    information and query values masked (``_storeurl.redact_url``: a token)."""

    def __init__(self, url: str, *, headers: dict[str, str] | None = None,
                 timeout: float = 10.0, retries: int = 3, backoff: float = 0.2,
                 max_backoff: float = 5.0, gzip: bool = True, client: Any = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        import httpx
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise DecisionLogError("invalid_log_config", "an http sink needs an http(s) URL")
        self.url = url
        self._headers = {"content-type": "application/x-ndjson", **(headers or {})}
        self._retries = retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._gzip = gzip
        self._sleep = sleep
        self._client = client or httpx.Client(timeout=timeout)
        self._own = client is None
        self._lock = threading.Lock()

    def write(self, lines: Sequence[bytes]) -> None:
        import httpx
        body = b"".join(lines)
        headers = self._headers
        if self._gzip and len(body) > 1024:
            body = gzip.compress(body, compresslevel=5)
            headers = {**headers, "content-encoding": "gzip"}
        delay = self._backoff
        for attempt in range(self._retries + 1):
            try:
                reply = self._client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}"
            else:
                if 200 <= reply.status_code < 300:
                    return
                problem = f"HTTP {reply.status_code}"
                if reply.status_code != 429 and reply.status_code < 500:
                    break
            if attempt < self._retries:
                self._sleep(min(delay, self._max_backoff) * (0.5 + random.random() / 2))
                delay *= 2
        raise DecisionLogError("sink_failed", f"http sink {redact_url(self.url)}: {problem}")

    def close(self) -> None:
        if self._own:
            self._client.close()


def sink_from_url(url: str, **options: Any) -> Sink:
    """``file:///var/log/pe/decisions.jsonl`` (or a plain path), ``stdout:``,
    ``http://...`` / ``https://...``; ``options`` go to the sink's constructor."""
    if not isinstance(url, str):
        raise DecisionLogError("invalid_log_config", "a decision log sink URL is a string, "
                               f"not {type(url).__name__}")
    if url in ("stdout:", "-"):
        return StdoutSink()
    if url.startswith(("http://", "https://")):
        return HttpSink(url, **options)
    if url.startswith("file://"):
        url = url[len("file://"):]
    scheme = url.split("/", 1)[0]
    if not url or (":" in scheme and len(scheme) > 2):  # an unknown scheme (C: is a drive)
        raise DecisionLogError("invalid_log_config", "unknown decision log sink "
                               f"{redact_url(url)!r}: "
                               "use a file path, file://PATH, stdout: or http(s)://URL")
    return JsonlFileSink(url, **options)
