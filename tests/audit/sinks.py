"""What the decision-log tests share: a sink the test holds, stalled or failing, that
keeps every line it took, and a call made on a thread of its own (to see whether it
waits)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import Any


class GateSink:
    """Blocks in ``write`` while ``gate`` is clear (a stalled collector), or raises
    ``OSError`` while ``failing`` (a collector that is down); keeps every line it took.

    ``GateSink("stall")`` starts stalled, ``GateSink("fail")`` failing, ``GateSink()``
    taking every write; :meth:`heal` lets the writes through again."""

    def __init__(self, mode: str | None = None) -> None:
        self.gate = threading.Event()
        if mode != "stall":
            self.gate.set()
        self.failing = mode == "fail"
        self.lines: list[bytes] = []

    def write(self, lines: Sequence[bytes]) -> None:
        self.gate.wait()
        if self.failing:
            raise OSError("collector down")
        self.lines.extend(lines)

    def heal(self) -> None:
        """The collector back: a failing sink takes writes, a stalled one is let go."""
        self.failing = False
        self.gate.set()

    def close(self) -> None:
        pass

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.lines]


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """``call()`` started on a daemon thread: the thread, and a list that holds what the
    call returned once it has (empty while it waits)."""
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    return thread, out
