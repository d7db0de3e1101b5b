"""Revocation: a pluggable :class:`RevocationStore` and the in-memory / JSON-file stores.

``verify`` asks the store about every hop's ``grant_id`` and ``jti`` on every call (cached
verifications included), so revoking a grant invalidates all tokens attenuated from it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from policyengine.tokens.errors import TokenError

__all__ = ["JsonFileRevocationStore", "MemoryRevocationStore", "RevocationStore", "revoke"]


@runtime_checkable
class RevocationStore(Protocol):
    """Where revoked grant ids and jtis live. ``any_revoked`` is on the hot path: keep it
    O(number of ids) with no I/O when you can (cache, or push updates into memory)."""

    def revoke(self, identifier: str) -> None: ...

    def is_revoked(self, identifier: str) -> bool: ...

    def any_revoked(self, identifiers: Iterable[str]) -> bool: ...


def check_id(identifier: object) -> str:
    """The one check of a revocation id, shared by every store of this package (not API)."""
    if type(identifier) is not str or not identifier or len(identifier) > 256:
        raise TokenError("invalid_claim", "a revocation id is a non-empty grant_id or jti")
    return identifier


def not_an_id() -> bool:
    """``is_revoked`` of what is no string: a misuse, not an id that is not revoked
    (shared by every store, not API)."""
    raise TokenError("invalid_claim", "a revocation id is a non-empty grant_id or jti")


def not_ids(identifiers: object) -> TokenError:
    """``any_revoked`` of what is no iterable of ids (shared by every store, not API)."""
    return TokenError("invalid_claim", "revocation ids are an iterable of grant_id and jti "
                      f"strings, not {type(identifiers).__name__}")


class MemoryRevocationStore:
    """Revocations in a set: O(1) per id. Not shared between processes."""

    def __init__(self, identifiers: Iterable[str] = ()) -> None:
        if isinstance(identifiers, (str, bytes)) or not isinstance(identifiers, Iterable):
            raise TokenError("invalid_revocations", "the revoked ids are a list of strings, "
                             f"not {type(identifiers).__name__}")
        self._ids: set[str] = {check_id(i) for i in identifiers}
        #: Revocations made so far: moved by every ``revoke``, after the id is in. A
        #: caller that found ids unrevoked at one count knows they still are while it
        #: stands (the decision pipeline keeps it with a verified grant).
        self.changes = 0

    def revoke(self, identifier: str) -> None:
        self._ids.add(check_id(identifier))
        self.changes += 1

    def is_revoked(self, identifier: str) -> bool:
        return identifier in self._ids if type(identifier) is str else not_an_id()

    def any_revoked(self, identifiers: Iterable[str]) -> bool:
        try:  # (on verify's path: a try costs nothing until it catches)
            return not self._ids.isdisjoint(identifiers)
        except TypeError:  # not iterable, or an unhashable member
            raise not_ids(identifiers) from None

    def __len__(self) -> int:
        return len(self._ids)


class JsonFileRevocationStore(MemoryRevocationStore):
    """A memory store persisted to ``{"revoked": [...]}`` (used by the CLI).

    The file is read at construction. Each ``revoke`` takes an exclusive lock (``flock``
    on ``<file>.lock`` beside it, where the platform has one), reads the file again,
    adds what other writers revoked meanwhile and the new id, and rewrites it atomically:
    two stores on one file (two ``policyengine token revoke`` at once) never lose each
    other's revocations. Checks answer from memory (what was read, and revoked since).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TokenError("invalid_revocations", "a revocation file is a str or "
                             f"os.PathLike path, not {type(path).__name__}")
        self.path = Path(path)
        super().__init__(self._read())

    def _read(self) -> list[str]:
        """The ids the file holds now (none when it does not exist)."""
        try:
            text = self.path.read_text(encoding="utf-8") if self.path.exists() else None
        except (OSError, ValueError) as exc:  # a directory, too long, a NUL, not UTF-8
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise TokenError("invalid_revocations", "cannot read revocation file "
                             f"{str(self.path)[:200]!r}: {reason}") from None
        if text is None:
            return []
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise TokenError("invalid_revocations", f"{self.path}: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("revoked"), list):
            raise TokenError(
                "invalid_revocations", f'{self.path}: expected {{"revoked": [ids]}}'
            )
        ids: list[str] = data["revoked"]
        return ids

    def revoke(self, identifier: str) -> None:
        identifier = check_id(identifier)
        with _locked(self.path):
            # Another store may have written since this one read: keep its ids (a
            # rewrite from memory alone dropped them, and their tokens verified again).
            known = {check_id(i) for i in self._read()} | self._ids | {identifier}
            body = json.dumps({"revoked": sorted(known)}, indent=2) + "\n"
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.",
                                       suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(body)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        self._ids = known  # every id in before the count moves (see MemoryRevocationStore)
        self.changes += 1


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (a file never replaced, unlike ``path``)
    while the block runs; no lock where the platform has no ``flock``."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def revoke(store: RevocationStore, identifier: str) -> None:
    """Revoke a grant (by ``grant_id``) or a single token (by ``jti``).

    Every token whose chain contains that id stops verifying (code ``revoked``).
    """
    try:
        revoke_in = store.revoke
    except AttributeError:
        raise TokenError("invalid_option", "store must be a RevocationStore (with revoke), "
                         f"not {type(store).__name__}") from None
    revoke_in(check_id(identifier))
