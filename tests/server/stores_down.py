"""Revocation stores whose server is gone, for the tests that a store fault is a deny
or a coded error on the wire and never shows the store's own text."""

from __future__ import annotations

from typing import Any, NoReturn

#: What a Redis client raises when its server refuses: it names the host and port,
#: which no answer may carry.
REFUSED = "Error 111 connecting to 10.0.0.7:6379. Connection refused."


class DownRevocations:
    """A custom revocation store that raises what a client library raises (``message``),
    not a TokenError, on every call."""

    def __init__(self, message: str = REFUSED) -> None:
        self.message = message

    def _down(self, *args: Any) -> NoReturn:
        raise RuntimeError(self.message)

    revoke = is_revoked = any_revoked = _down


class DownAfter(DownRevocations):
    """A store that answers ``answers`` checks (nothing revoked), then is gone."""

    def __init__(self, answers: int, message: str = REFUSED) -> None:
        super().__init__(message)
        self.answers = answers

    def any_revoked(self, identifiers: object) -> bool:
        if self.answers > 0:
            self.answers -= 1
            return False
        self._down()
