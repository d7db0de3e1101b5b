"""Reading a small file a user names (a rates table, a key set): a regular file of
bounded size, or a reason why not. A leaf: the caller raises its own stage's error.

The file is opened without blocking and checked before reading, so a name that is a
device (``/dev/zero``), a FIFO or a directory is refused at once rather than read
without end; a name no file can have (a NUL, a lone surrogate) or that is not a path at
all (``None``, a number) is refused too.
"""

from __future__ import annotations

import os
import stat

__all__ = ["UnreadableFileError", "read_regular_file", "shown_path"]


class UnreadableFileError(Exception):
    """Why a file could not be read (the message); never leaves the package: each caller
    raises its own stage's error with this reason."""


def shown_path(path: object) -> str:
    """``path`` for a message: quoted, at most 200 characters."""
    try:
        return repr(os.fspath(path))[:200]  # type: ignore[call-overload]
    except TypeError:
        return f"<{type(path).__name__}>"


def read_regular_file(path: object, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them.

    Raises :class:`UnreadableFileError` saying why not.
    """
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise UnreadableFileError(f"a file name is a str or os.PathLike, not {type(path).__name__}")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except (OSError, ValueError, TypeError) as exc:  # ValueError: NUL byte, unencodable
        raise UnreadableFileError(exc.strerror if isinstance(exc, OSError) and exc.strerror
                             else "not a valid file name") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnreadableFileError("not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise UnreadableFileError(exc.strerror or type(exc).__name__) from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise UnreadableFileError(f"larger than {max_bytes} bytes")
    return data
