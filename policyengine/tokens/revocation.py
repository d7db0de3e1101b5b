"""Revocation: a pluggable :class:`RevocationStore` and the in-memory / JSON-file stores.

``verify`` asks the store about every hop's ``grant_id`` and ``jti`` on every call (cached
verifications included), so revoking a grant invalidates all tokens attenuated from it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
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
        return identifier in self._ids

    def any_revoked(self, identifiers: Iterable[str]) -> bool:
        return not self._ids.isdisjoint(identifiers)

    def __len__(self) -> int:
        return len(self._ids)


class JsonFileRevocationStore(MemoryRevocationStore):
    """A memory store persisted to ``{"revoked": [...]}`` (used by the CLI).

    The file is read once at construction and rewritten atomically on each ``revoke``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TokenError("invalid_revocations", "a revocation file is a str or "
                             f"os.PathLike path, not {type(path).__name__}")
        self.path = Path(path)
        ids: list[str] = []
        try:
            text = self.path.read_text(encoding="utf-8") if self.path.exists() else None
        except (OSError, ValueError) as exc:  # a directory, too long, a NUL, not UTF-8
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise TokenError("invalid_revocations", "cannot read revocation file "
                             f"{str(path)[:200]!r}: {reason}") from None
        if text is not None:
            try:
                data = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise TokenError("invalid_revocations", f"{self.path}: {exc}") from None
            if not isinstance(data, dict) or not isinstance(data.get("revoked"), list):
                raise TokenError(
                    "invalid_revocations", f'{self.path}: expected {{"revoked": [ids]}}'
                )
            ids = data["revoked"]
        super().__init__(ids)

    def revoke(self, identifier: str) -> None:
        super().revoke(identifier)
        body = json.dumps({"revoked": sorted(self._ids)}, indent=2) + "\n"
        fd, tmp = tempfile.mkstemp(dir=self.path.parent or Path("."), suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(body)
        os.replace(tmp, self.path)


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
