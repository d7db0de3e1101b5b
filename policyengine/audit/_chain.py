"""The hash chain and signed checkpoints of a decision log, and their verification.

Every line of a log is one JSON object whose last member is ``"hash"``::

    {...,"seq":7,"prev":"<hash of line 6>","hash":"<sha256 of this line up to ,"hash">"}

``hash`` is the SHA-256 (hex) of the line's bytes before ``,"hash":"``, so any change to a
record changes its hash, and ``prev`` ties each record to the one before it: a record
changed, removed, inserted or moved breaks the chain where it happened. Every
``checkpoint_every`` records (and when the log closes) a ``log.checkpoint`` record holds a
JWS, signed with the engine's key, over the ``seq`` and ``hash`` of the record before it:
rewriting the chain after a checkpoint needs the private key.

This works on bytes, so another implementation verifies a log without re-encoding JSON.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields, is_dataclass
from decimal import Decimal
from enum import Enum
from typing import Any, Final
from uuid import UUID

import orjson

from policyengine._json import decimal_text
from policyengine._visible import one_line
from policyengine.audit.errors import LogVerifyError

__all__ = [
    "CHECKPOINT_TYP",
    "KEY_LEAVES",
    "ZERO_HASH",
    "Problem",
    "VerifyReport",
    "encode",
    "json_form",
    "seal",
    "sign_checkpoint",
    "verify_files",
]

#: ``prev`` of the first record of a chain.
ZERO_HASH: Final = "0" * 64
#: The ``typ`` header of a checkpoint JWS.
CHECKPOINT_TYP: Final = "policyengine-log-checkpoint+jwt"
_HASH_MARK: Final = b',"hash":"'
_OPTS: Final = orjson.OPT_NON_STR_KEYS


def json_form(value: object) -> object:
    """The JSON form the log writes for a value that is not an exact ``str``, ``int``,
    ``float``, ``bool``, ``None``, ``dict``, ``list`` or ``tuple``, one step deep (a
    set's form is a list whose items may need a step of their own).

    The one place that says how such a value is written: it is the encoder's
    ``default`` hook, and the credential scan (``_record.scrub``) replaces every such
    value of an input by its form before looking into it. So the scan looks at exactly
    what is written, whatever the container; before, the scan walked dicts, lists and
    tuples only while the encoder wrote a set as an array, and a JWT in a set was logged.
    What orjson writes natively for a subclass, an enum or a dataclass is what this
    gives (the storage of a ``dict`` or ``list``, an enum's value, a dataclass's
    fields); anything JSON has no form for is ``"<TypeName>"``, never its ``repr``."""
    if isinstance(value, str):
        return str.__str__(value)  # a subclass: its text, whatever ``__str__`` says
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Decimal):
        return decimal_text(value)  # plain; scientific beyond 10**+-4300 (bounded)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, dict):
        return dict(dict.items(value))  # the storage, as orjson reads a subclass
    if isinstance(value, list):
        return list.copy(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int.__int__(value)
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name, None) for f in fields(value)}
    return f"<{type(value).__name__}>"


_default: Final = json_form

#: Key types orjson writes as their text under ``OPT_NON_STR_KEYS`` (digits, ``null``,
#: an ISO date, a UUID: no text of the caller's choosing).
KEY_LEAVES: Final = frozenset({int, float, bool, type(None), UUID, datetime.datetime,
                               datetime.date, datetime.time})


def _safe_key(key: object) -> str:
    if type(key) is str:
        return key
    if type(key) in KEY_LEAVES:
        return str(key)
    form = json_form(key)
    return form if type(form) is str else f"<{type(key).__name__}>"  # never a repr


def _safe(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy for what orjson refuses (huge ints, lone surrogates, deep)."""
    if depth > 200:
        return "<too deep>"
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if -(2**63) <= value < 2**64:
            return value
        try:
            return str(value)
        except ValueError:  # over the interpreter's digit limit for str()
            return f"<int of {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) \
            else str(value)
    if isinstance(value, dict):
        return {_safe(_safe_key(k), depth + 1): _safe(v, depth + 1)
                for k, v in dict.items(value)}
    if type(value) is tuple:
        return [_safe(v, depth + 1) for v in value]
    if isinstance(value, list):
        return [_safe(v, depth + 1) for v in list.__iter__(value)]
    return _safe(_default(value), depth + 1)


def encode(record: dict[str, Any]) -> bytes:
    """The record as compact JSON (orjson; values it cannot take are made safe first:
    the writer never fails on a record).

    Tried first without ``OPT_NON_STR_KEYS``, which takes orjson off its fast path and
    doubled the time of a decision's record (~0.7 -> ~1.4 µs): a record whose dicts all
    have string keys (nearly every one) is written the same either way, and one with
    another key (the option's case: ``{1: ...}`` in a context) fails that first try."""
    try:
        return _dumps(record, default=_default)
    except TypeError:  # orjson.JSONEncodeError is one: a non-string key, or worse
        pass
    try:
        return _dumps(record, default=_default, option=_OPTS)
    except TypeError:
        return _dumps(_safe(record), default=_default, option=_OPTS)


_dumps = orjson.dumps
_sha256 = hashlib.sha256


def seal(encoded: bytes) -> tuple[bytes, str]:
    """(line, hash) for an encoded record (a JSON object) whose members end with
    ``prev``: the hash covers the object without its closing brace, and the line is that
    part, the ``hash`` member, the brace and a newline."""
    body = encoded[:-1]
    digest = _sha256(body).hexdigest()
    return b"".join((body, _HASH_MARK, digest.encode(), b'"}\n')), digest


def sign_checkpoint(keys: Any, seq: int, digest: str, at: int) -> str | None:
    """A compact JWS over ``{"seq", "hash", "iat"}`` with the active key of ``keys``
    (None without a signing key)."""
    if keys is None:
        return None
    from policyengine.tokens._jws import b64encode, encode_json
    try:
        key = keys.active_key
        if not key.can_sign:
            return None
    except Exception:
        return None
    header = {"alg": key.alg, "kid": key.kid, "typ": CHECKPOINT_TYP}
    payload = {"seq": seq, "hash": digest, "iat": at}
    signing_input = f"{b64encode(encode_json(header))}.{b64encode(encode_json(payload))}"
    signature = key.sign(signing_input.encode("ascii"))
    return f"{signing_input}.{b64encode(signature)}"


def _check_jws(keys: Any, jws: str) -> tuple[dict[str, Any] | None, str | None]:
    """(payload, None) when the checkpoint's signature verifies under ``keys``, else
    (None, why). RFC 8725: the key's own algorithm decides, never the header's alone."""
    from policyengine.tokens._jws import split
    from policyengine.tokens.errors import TokenError
    try:
        parsed = split(jws)
    except TokenError as exc:
        return None, f"malformed signature ({exc.code})"
    header = parsed.header
    if header.get("typ") != CHECKPOINT_TYP:
        return None, "not a checkpoint signature (typ)"
    kid = header.get("kid")
    key = keys.get(kid) if type(kid) is str else None
    if key is None:
        return None, f"no key {kid!r} to verify the checkpoint with"
    if header.get("alg") != key.alg:
        return None, "the signature's algorithm is not its key's"
    if not key.verify(parsed.signing_input, parsed.signature):
        return None, "bad signature"
    return parsed.claims, None


@dataclass(frozen=True)
class Problem:
    """One finding: ``code`` (``record_changed``, ``record_removed``, ``record_inserted``,
    ``record_reordered``, ``malformed_record``, ``bad_checkpoint``, ``chain_restarted``),
    where (``file``, ``line``, ``seq``) and what."""

    code: str
    file: str
    line: int
    seq: int | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "file": self.file, "line": self.line, "seq": self.seq,
                "message": self.message}

    def __str__(self) -> str:
        where = f"{one_line(self.file)}:{self.line}" + (
            f" (seq {one_line(self.seq)})" if self.seq else "")
        return f"{where}: {self.code}: {one_line(self.message)}"


@dataclass
class VerifyReport:
    """What :func:`verify_files` found. ``ok`` when no problem is an error; ``notes``
    are not errors (a chain that restarted, records after the last checkpoint)."""

    records: int = 0
    checkpoints: int = 0
    signed_checkpoints: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)
    unsealed_tail: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "checkpoints": self.checkpoints,
                "signed_checkpoints": self.signed_checkpoints,
                "records_after_last_checkpoint": self.unsealed_tail,
                "problems": [p.to_dict() for p in self.problems],
                "notes": [p.to_dict() for p in self.notes]}


def _lines(paths: Iterable[str | os.PathLike[str]]) -> Iterator[tuple[str, int, bytes]]:
    if isinstance(paths, (str, bytes)) or not isinstance(paths, Iterable):
        raise LogVerifyError("log_unreadable", "paths must be a list of log file paths, "
                             f"not {type(paths).__name__}")
    for path in paths:
        if not isinstance(path, (str, os.PathLike)):
            raise LogVerifyError("log_unreadable", "a log file path is a str or "
                                 f"os.PathLike, not {type(path).__name__}")
        name = os.fspath(path)
        try:
            handle = open(name, "rb")  # noqa: SIM115 - closed below
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
            raise LogVerifyError("log_unreadable", f"cannot read {str(name)[:200]}: {exc}"
                                 ) from None
        with handle:
            for number, raw in enumerate(handle, 1):
                yield name, number, raw


def verify_files(paths: Iterable[str | os.PathLike[str]], keys: Any = None,
                 *, require_signatures: bool = False) -> VerifyReport:
    """Check the chain of the log files ``paths`` (in order: rotated files oldest first).

    Each problem says where (file, line, seq): a line whose bytes do not give its
    ``hash`` was changed (``record_changed``); a ``seq`` that jumps ahead over numbers
    found nowhere means records were removed (``record_removed``); a ``seq`` found twice
    means one was inserted (``record_inserted``); a record out of its place was moved
    (``record_reordered``). With ``keys`` every checkpoint's signature is checked;
    ``require_signatures`` makes an unsigned checkpoint, or none at all, a problem.
    """
    report = VerifyReport()
    segment: list[tuple[str, int, int, str, str, dict[str, Any]]] = []
    for name, number, raw in _lines(paths):
        if not raw.strip():
            continue
        line = raw.rstrip(b"\r\n")
        cut = line.rfind(_HASH_MARK)
        if cut < 0 or not line.endswith(b'"}') or len(line) - cut != len(_HASH_MARK) + 66:
            report.problems.append(Problem("malformed_record", name, number, None,
                                           "the line does not end with its hash"))
            continue
        claimed = line[cut + len(_HASH_MARK):-2].decode("ascii", "replace")
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if type(record) is not dict or type(record.get("seq")) is not int \
                or type(record.get("prev")) is not str:
            report.problems.append(Problem("malformed_record", name, number, None,
                                           "not a record of this log (a JSON object with "
                                           "seq and prev)"))
            continue
        seq = record["seq"]
        report.records += 1
        if hashlib.sha256(line[:cut]).hexdigest() != claimed:
            report.problems.append(Problem("record_changed", name, number, seq,
                                           "the record's bytes do not give its hash: it "
                                           "was changed"))
        if seq == 1 and record["prev"] == ZERO_HASH and record.get("kind") == "log.start" \
                and segment:
            _check_segment(segment, keys, require_signatures, report)
            report.notes.append(Problem("chain_restarted", name, number, seq,
                                        "a new chain starts here"))
            segment = []
        segment.append((name, number, seq, record["prev"], claimed, record))
    if segment:
        _check_segment(segment, keys, require_signatures, report)
    if report.unsealed_tail:
        report.notes.append(Problem("unsealed_tail", "", 0, None,
                                    f"{report.unsealed_tail} record(s) after the last "
                                    "checkpoint: their removal would not be seen"))
    if require_signatures and report.records and report.signed_checkpoints == 0:
        report.problems.append(Problem("bad_checkpoint", "", 0, None, "no signed checkpoint"))
    report.problems.sort(key=lambda p: (p.file, p.line))
    return report


def _check_segment(entries: list[tuple[str, int, int, str, str, dict[str, Any]]], keys: Any,
                   require: bool, report: VerifyReport) -> None:
    """One chain (from a start to the next restart): links, order, checkpoints."""
    where: dict[int, list[int]] = {}  # seq -> the entries holding it
    for i, e in enumerate(entries):
        where.setdefault(e[2], []).append(i)
    hashes: dict[int, set[str]] = {}
    first_name, first_line, first_seq, first_prev = entries[0][:4]
    if first_prev != ZERO_HASH:
        report.notes.append(Problem("chain_starts_later", first_name, first_line, first_seq,
                                    f"the first record continues an earlier chain "
                                    f"(seq {first_seq})"))
    prev_seq = first_seq - 1
    last_checkpoint = None
    for i, (name, number, seq, prev, digest, record) in enumerate(entries):
        hashes.setdefault(seq, set()).add(digest)
        expected = prev_seq + 1
        if i and seq < expected:
            others = [entries[j][1] for j in where[seq] if j != i]
            if len(where[seq]) > 1:
                report.problems.append(Problem(
                    "record_inserted", name, number, seq,
                    f"a second record with seq {seq} (also at line(s) "
                    f"{', '.join(map(str, others))}): one of them was inserted"))
            else:
                report.problems.append(Problem(
                    "record_reordered", name, number, seq,
                    f"seq {seq} comes after seq {prev_seq}: the record was moved"))
            continue
        if i and seq > expected:
            missing = range(expected, seq)
            later = [s for s in missing if s in where and where[s][-1] > i]
            unseen = [s for s in missing if s not in where]
            if later:
                report.problems.append(Problem(
                    "record_reordered", name, number, seq,
                    f"seq {seq} comes before seq {later[0]}: the record was moved"))
                continue
            if unseen:
                report.problems.append(Problem(
                    "record_removed", name, number, seq,
                    f"{len(unseen)} record(s) missing before it (seq {unseen[0]}"
                    + (f"..{unseen[-1]})" if len(unseen) > 1 else ")")))
        elif i and prev not in hashes.get(seq - 1, ()):
            pname, pnumber = entries[i - 1][0], entries[i - 1][1]
            report.problems.append(Problem(
                "record_changed", pname, pnumber, seq - 1,
                f"the record with seq {seq} does not point at this one: it was replaced "
                "or changed (its hash was recomputed)"))
        prev_seq = seq
        if record.get("kind") == "log.checkpoint":
            report.checkpoints += 1
            _check_checkpoint(record, keys, require, hashes, report, name, number, seq)
            last_checkpoint = seq
    report.unsealed_tail += prev_seq - (last_checkpoint if last_checkpoint is not None
                                        else first_seq - 1)


def _check_checkpoint(record: dict[str, Any], keys: Any, require: bool,
                      hashes: dict[int, set[str]], report: VerifyReport, name: str,
                      number: int, seq: int) -> None:
    cp = record.get("checkpoint")
    if type(cp) is not dict:
        report.problems.append(Problem("bad_checkpoint", name, number, seq,
                                       "a checkpoint without its checkpoint object"))
        return
    covers, digest, jws = cp.get("seq"), cp.get("hash"), cp.get("jws")
    if type(covers) is not int or digest not in hashes.get(covers, ()):
        report.problems.append(Problem("bad_checkpoint", name, number, seq,
                                       f"covers seq {covers!r}, whose hash is not "
                                       "the one it names"))
    if jws is None:
        if require:
            report.problems.append(Problem("bad_checkpoint", name, number, seq,
                                           "the checkpoint is not signed"))
        return
    if keys is None:
        return
    claims, why = _check_jws(keys, jws) if type(jws) is str else (None, "not a JWS")
    if claims is None:
        report.problems.append(Problem("bad_checkpoint", name, number, seq, str(why)))
    elif claims.get("seq") != covers or claims.get("hash") != digest:
        report.problems.append(Problem("bad_checkpoint", name, number, seq,
                                       "the signature covers another seq or hash"))
    else:
        report.signed_checkpoints += 1
