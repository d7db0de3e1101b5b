"""``policyengine replay LOG... --policy NEW``: re-decide logged requests under another
policy and report every decision that would change (docs/decision-log.md, "Replay").

Each ``authorize`` record of a decision log holds the request as it was decided (after
masking) and the result. Replay rebuilds the request from the record, decides it again
with the new policy at the record's own time, and compares status and reason code. It
is dry: the engine it decides with has no decision log, a fresh in-memory budget store
that nothing is charged to (a decision never charges a budget; spend is recorded by
separate calls replay never makes), and registers no approval request.

A record that cannot be replayed faithfully is reported as ``not_replayable`` with the
reason, never guessed at: its input was masked or erased (the logged value is not what
was decided), it was made under a delegation token (the log holds the token's ids, not
the token) or with an approval id (the approval's state then is not in the log), it is a
tool call (decided from headers and the body before redaction, which the log never
holds), its decision was a budget or rate-limit refusal (it depended on the balance or
the calls counted at that moment), or the log itself refused it
(``decision_log_unavailable``). Rate limits are asked without counting a call, as
``explain`` asks them: replay never refuses for a rate limit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from policyengine._visible import one_line

__all__ = ["ReplayChange", "ReplayReport", "ReplaySkip", "log_set", "new_clock", "replay"]

#: Reason codes of decisions that depended on a budget's balance at the time.
_BUDGET_CODES = frozenset({"budget_exceeded", "debt_outstanding", "budget_unavailable"})
_DECISION_KINDS = ("authorize", "tool_authorize")


@dataclass(frozen=True)
class ReplayChange:
    """One logged decision the new policy decides differently."""

    file: str
    line: int
    seq: Any
    decision_id: Any
    principal: Any
    permission: Any
    old_status: Any
    old_code: Any
    new_status: str
    new_code: str
    new_rules: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "seq": self.seq,
                "decision_id": self.decision_id, "principal": self.principal,
                "permission": self.permission,
                "old": {"status": self.old_status, "reason_code": self.old_code},
                "new": {"status": self.new_status, "reason_code": self.new_code,
                        "rules": list(self.new_rules)}}

    def render(self) -> str:
        # Every field a record gave (anything: a log is input) is one line.
        return (f"{one_line(self.file)}:{self.line} {one_line(self.decision_id)} (seq "
                f"{one_line(self.seq)}): {one_line(self.principal)} "
                f"{one_line(self.permission)}: {one_line(self.old_status)} "
                f"({one_line(self.old_code)}) -> {self.new_status} ({self.new_code})")


@dataclass(frozen=True)
class ReplaySkip:
    """A decision record that cannot be replayed faithfully, and why."""

    file: str
    line: int
    seq: Any
    decision_id: Any
    reason: str  # masked | token | approval | tool_call | budget | rate_limit | log_refusal
    #             | no_input
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "seq": self.seq,
                "decision_id": self.decision_id, "reason": self.reason,
                "detail": self.detail}

    def render(self) -> str:
        return (f"{one_line(self.file)}:{self.line} {one_line(self.decision_id)} (seq "
                f"{one_line(self.seq)}): not_replayable: {self.reason}: "
                f"{one_line(self.detail)}")


@dataclass
class ReplayReport:
    """What a replay found: decisions replayed, changed, not replayable; lines that are
    not records (``malformed``: not JSON, or not an object)."""

    replayed: int = 0
    unchanged: int = 0
    changes: list[ReplayChange] = field(default_factory=list)
    skipped: list[ReplaySkip] = field(default_factory=list)
    malformed: list[tuple[str, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        reasons: dict[str, int] = {}
        for s in self.skipped:
            reasons[s.reason] = reasons.get(s.reason, 0) + 1
        return {"replayed": self.replayed, "changed": len(self.changes),
                "unchanged": self.unchanged, "not_replayable": len(self.skipped),
                "not_replayable_reasons": reasons,
                "malformed": [{"file": f, "line": n} for f, n in self.malformed],
                "changes": [c.to_dict() for c in self.changes],
                "skipped": [s.to_dict() for s in self.skipped]}


class _Clock:
    """The replaying engine's clock: each record is decided at its own timestamp."""

    __slots__ = ("t",)

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def log_set(path: str | os.PathLike[str]) -> list[str]:
    """``path`` and the files it was rotated into, oldest first, as a file sink writes
    them (``decisions.000001.jsonl`` ... numbered upwards, or ``decisions.1.jsonl``
    newest ... with ``keep``), the live file last. Just ``[path]`` without rotations."""
    live = Path(path)
    stem, suffix = live.stem, live.suffix
    found: list[tuple[int, str, Path]] = []
    if suffix and live.parent.is_dir():
        for p in live.parent.glob(f"{stem}.*{suffix}"):
            middle = p.name[len(stem) + 1:len(p.name) - len(suffix)]
            if middle.isdigit():
                found.append((int(middle), middle, p))
    padded = [f for f in found if len(f[1]) == 6]  # keep=0: 000001 is the oldest
    counted = [f for f in found if len(f[1]) != 6]  # keep=N: .1 is the newest
    ordered = [p for _, _, p in sorted(padded)] + [
        p for _, _, p in sorted(counted, key=lambda f: -f[0])]
    return [os.fspath(p) for p in ordered] + [os.fspath(live)]


def _records(paths: Iterable[str], report: ReplayReport
             ) -> Iterator[tuple[str, int, dict[str, Any]]]:
    for name in paths:
        with open(name, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except ValueError:
                    report.malformed.append((name, number))
                    continue
                if not isinstance(record, dict):
                    report.malformed.append((name, number))
                    continue
                yield name, number, record


def _why_not(record: dict[str, Any]) -> tuple[str, str] | None:
    """(reason, detail) when the record cannot be replayed faithfully, else None."""
    if record.get("kind") == "tool_authorize":
        return ("tool_call", "a tool call is decided from its headers and unredacted body, "
                "which the log does not hold")
    inp = record.get("input")
    masked = [p for p in record.get("masked") or () if isinstance(p, str)]
    erased = [p for p in record.get("erased") or () if isinstance(p, str)]
    if masked or erased or record.get("mask_errors"):
        paths = ", ".join(masked + erased) or "the whole input"
        return "masked", f"the logged input is not what was decided ({paths})"
    if not isinstance(inp, dict) or "principal" not in inp or "permission" not in inp:
        return "no_input", "the record holds no request input"
    if record.get("token") is not None:
        return "token", "decided under a delegation token; the log holds its ids only"
    if inp.get("approval_id") is not None:
        return "approval", "decided with an approval id; the approval's state then is " \
            "not in the log"
    result = record.get("result")
    code = result.get("reason_code") if isinstance(result, dict) else None
    if code in _BUDGET_CODES:
        return "budget", f"{code}: decided by the budget balance at the time"
    if code == "rate_limited":
        return "rate_limit", "rate_limited: decided by the calls counted at the time"
    if code == "decision_log_unavailable":
        return "log_refusal", "refused by the decision log, not by the policy"
    if not isinstance(result, dict):
        return "no_input", "the record holds no result"
    return None


def _timestamp(value: Any) -> float | None:
    """POSIX seconds of a record's RFC 3339 ``timestamp`` (nanoseconds dropped below
    the microsecond), or None."""
    if not isinstance(value, str) or not value.endswith("Z"):
        return None
    head, _, frac = value[:-1].partition(".")
    try:
        base = datetime.fromisoformat(head + "+00:00").timestamp()
    except ValueError:
        return None
    return base + (int(frac[:6].ljust(6, "0")) / 1e6 if frac.isdigit() else 0.0)


def replay(paths: Iterable[str], engine: Any, clock: _Clock | None = None) -> ReplayReport:
    """Re-decide every ``authorize`` record of the decision-log files ``paths`` (in
    order) with ``engine`` (built with ``clock``, a :func:`new_clock`, to decide each
    record at its own time) and compare. Dry: no approval is registered; the engine
    should have no decision log and a budget store nothing else uses."""
    report = ReplayReport()
    pipeline = engine.pipeline
    for name, number, record in _records(paths, report):
        if record.get("kind") not in _DECISION_KINDS:
            continue  # operations, events, log.* records: nothing was decided
        seq, decision_id = record.get("seq"), record.get("decision_id")
        why = _why_not(record)
        if why is not None:
            report.skipped.append(ReplaySkip(name, number, seq, decision_id, *why))
            continue
        inp, result = record["input"], record["result"]
        if clock is not None:
            at = _timestamp(record.get("timestamp"))
            if at is not None:
                clock.t = at
        partition = inp.get("partition")
        new = pipeline.run(inp.get("principal"), inp.get("permission"), inp.get("context"),
                           None, None, register=False,
                           partition=partition if type(partition) is str else None,
                           partition_agent=inp.get("partition_agent") is True
                           and type(partition) is str,
                           acting_for=inp.get("acting_for"))
        report.replayed += 1
        old_status, old_code = result.get("status"), result.get("reason_code")
        if (new.status, new.code) == (old_status, old_code):
            report.unchanged += 1
            continue
        report.changes.append(ReplayChange(
            name, number, seq, decision_id, inp.get("principal"), inp.get("permission"),
            old_status, old_code, new.status, new.code, new.rules))
    return report


def new_clock() -> _Clock:
    """A clock to build the replaying engine with (``Engine(..., clock=new_clock())``)."""
    return _Clock()
