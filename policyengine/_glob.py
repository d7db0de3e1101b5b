"""Glob matching in time linear in the subject: ``*`` any run, ``?`` one character.

A regular expression built from a glob (``.*@.*\\.corp\\.example``) backtracks: against
a long subject of ``@`` characters it tries every split and takes seconds. A glob needs
no backtracking at all. Split it at its stars into segments; the first segment must sit
at the start, the last at the end, and each middle segment can take its *leftmost*
place after the one before it (a later place never leaves more room for the rest). Each
segment is found with ``str.find`` (``?`` wildcards are checked around the longest
literal run), so a match costs at most ``O(len(subject) * len(glob))`` and the glob is
a policy literal of bounded length. This module is a leaf.
"""

from __future__ import annotations

__all__ = ["Glob"]


class _Segment:
    """A run of the glob without ``*``: literal characters and ``?`` wildcards."""

    __slots__ = ("anchor", "anchor_at", "chunks", "size", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.size = len(text)
        chunks: list[tuple[int, str]] = []
        at = 0
        for piece in text.split("?"):
            if piece:
                chunks.append((at, piece))
            at += len(piece) + 1
        #: the literal runs between the ``?``s, with their offsets in the segment
        self.chunks = tuple(chunks)
        longest = max(chunks, key=lambda c: len(c[1]), default=(0, ""))
        self.anchor_at, self.anchor = longest

    def at(self, subject: str, i: int) -> bool:
        """Does the segment match ``subject`` at index ``i``? (The caller checks room.)"""
        return all(subject.startswith(piece, i + off) for off, piece in self.chunks)

    def find(self, subject: str, start: int, end: int) -> int:
        """The leftmost ``i >= start`` with the segment matching ``subject[i:i+size]``
        and ``i + size <= end``; -1 if none."""
        last = end - self.size  # the last index the segment may start at
        if last < start:
            return -1
        anchor = self.anchor
        if not anchor:  # only '?': any position with room
            return start
        if len(self.chunks) == 1 and self.size == len(anchor):  # no '?' at all
            return subject.find(anchor, start, end)
        off = self.anchor_at
        j = subject.find(anchor, start + off, last + off + len(anchor))
        while j >= 0:
            i = j - off
            if self.at(subject, i):
                return i
            j = subject.find(anchor, j + 1, last + off + len(anchor))
        return -1


class Glob:
    """A compiled glob. ``Glob("*@*.corp.example").match(s)`` in linear time.

    >>> Glob("*.env").match("prod.env"), Glob("a?c").match("abbc")
    (True, False)
    """

    __slots__ = ("_head", "_middle", "_min", "_tail", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        parts = text.split("*")
        self._head = _Segment(parts[0])
        self._tail: _Segment | None = _Segment(parts[-1]) if len(parts) > 1 else None
        self._middle = tuple(_Segment(p) for p in parts[1:-1] if p)
        self._min = sum(len(p) for p in parts)

    def match(self, subject: str) -> bool:
        """Does the whole of ``subject`` match the glob?"""
        n = len(subject)
        head, tail = self._head, self._tail
        if tail is None:
            return n == head.size and head.at(subject, 0)
        if n < self._min or not head.at(subject, 0):
            return False
        end = n - tail.size
        if not tail.at(subject, end):
            return False
        pos = head.size
        for seg in self._middle:
            found = seg.find(subject, pos, end)
            if found < 0:
                return False
            pos = found + seg.size
        return True

    def __repr__(self) -> str:
        return f"Glob({self.text!r})"
