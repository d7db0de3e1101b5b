"""Reverse-query answers: :class:`Access` lines, :class:`Entries` (an answer's lines,
made when first read), and what each query returns (:class:`Permissions`,
:class:`Principals`, :class:`FilteredTools`). See the package docstring."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import FrozenInstanceError, dataclass
from itertools import islice
from typing import Any

from policyengine._visible import one_line
from policyengine.decide._query.folding import Folder, Rows, Text
from policyengine.permissions import matches

__all__ = ["STATUSES", "Access", "Entries", "FilteredTools", "Permissions", "Principals",
           "ToolAccess", "made", "renamed", "written"]

STATUSES = ("allowed", "pending_approval")


# ---- answers ---------------------------------------------------------------------------------

class Access:
    """One line of a reverse-query answer: ``principal`` (of ``kind`` ``agent``, ``role``
    or ``anyone``) gets ``status`` for every permission ``pattern`` matches and no pattern
    of ``excluding`` matches, when ``when`` holds and ``unless`` does not (policy text;
    None: no such condition).

    Immutable. The residual texts are printed from each rule's guard when first read
    (then kept): working an answer out decides every line, its status and the rules its
    residuals are made of, without printing any policy text."""

    __slots__ = ("_unless", "_when", "excluding", "kind", "pattern", "principal", "rules",
                 "status")

    principal: str
    kind: str
    pattern: str
    excluding: tuple[str, ...]
    status: str
    rules: tuple[str, ...]
    _when: str | Text | None
    _unless: str | Text | None

    def __init__(self, principal: str, kind: str, pattern: str, excluding: tuple[str, ...],
                 status: str, when: str | Text | None, unless: str | Text | None,
                 rules: tuple[str, ...]) -> None:
        _set(self, "principal", principal)
        _set(self, "kind", kind)
        _set(self, "pattern", pattern)
        _set(self, "excluding", excluding)
        _set(self, "status", status)
        _set(self, "_when", when)
        _set(self, "_unless", unless)
        _set(self, "rules", rules)

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    @property
    def when(self) -> str | None:
        w = self._when
        return w if w is None or type(w) is str else str(w)

    @property
    def unless(self) -> str | None:
        u = self._unless
        return u if u is None or type(u) is str else str(u)

    def _fields(self) -> tuple[Any, ...]:
        return (self.principal, self.kind, self.pattern, self.excluding, self.status,
                self.when, self.unless, self.rules)

    def __eq__(self, other: object) -> bool:
        if type(other) is not Access:
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        names = ("principal", "kind", "pattern", "excluding", "status", "when", "unless",
                 "rules")
        return "Access(" + ", ".join(
            f"{n}={v!r}" for n, v in zip(names, self._fields(), strict=True)) + ")"

    def __reduce__(self) -> tuple[Any, ...]:
        return Access, self._fields()  # copied or pickled with its texts printed

    def replace(self, principal: str, kind: str) -> Access:
        """This line for another principal (its residual texts shared, printed once)."""
        return Access(principal, kind, self.pattern, self.excluding, self.status,
                      self._when, self._unless, self.rules)

    def covers(self, permission: str) -> bool:
        """Whether this line speaks for ``permission``: its pattern matches it and none of
        the narrower patterns it excludes does."""
        return matches(self.pattern, permission) and not any(
            matches(x, permission) for x in self.excluding)

    @property
    def unconditional(self) -> bool:
        """True when the line depends on nothing a request carries."""
        return self._when is None and self._unless is None

    def to_dict(self) -> dict[str, Any]:
        return {"principal": self.principal, "kind": self.kind, "pattern": self.pattern,
                "excluding": list(self.excluding), "status": self.status,
                "when": self.when, "unless": self.unless, "rules": list(self.rules)}

    def __str__(self) -> str:
        text = f"{self.status} {self.pattern}"
        if self.excluding:
            text += " except " + ", ".join(self.excluding)
        if self._when is not None:
            text += f" when {self.when}"
        if self._unless is not None:
            text += f" unless {self.unless}"
        return text


_set = object.__setattr__
_new = object.__new__
_SET_PRINCIPAL, _SET_KIND, _SET_PATTERN, _SET_EXCLUDING, _SET_STATUS, _SET_WHEN, \
    _SET_UNLESS, _SET_RULES = (Access.__dict__[name].__set__ for name in (
        "principal", "kind", "pattern", "excluding", "status", "_when", "_unless", "rules"))


def renamed(lines: Iterable[Access], name: str, kind: str) -> Iterator[Access]:
    """``lines`` for another principal (as :meth:`Access.replace`, slot by slot)."""
    for line in lines:
        a = _new(Access)
        _SET_PRINCIPAL(a, name)
        _SET_KIND(a, kind)
        _SET_PATTERN(a, line.pattern)
        _SET_EXCLUDING(a, line.excluding)
        _SET_STATUS(a, line.status)
        _SET_WHEN(a, line._when)
        _SET_UNLESS(a, line._unless)
        _SET_RULES(a, line.rules)
        yield a


def made(name: str, kind: str, parts: list[Rows]) -> Iterator[Access]:
    """The lines of ``parts`` for one principal, as :class:`Access` objects: each set
    slot by slot, as ``Access(...)`` would, without the call of its ``__init__`` (an
    answer read through makes thousands)."""
    for part in parts:
        for key, ex, region_lines in part.rows:
            for status, when, unless, rule_ids in region_lines:
                a = _new(Access)
                _SET_PRINCIPAL(a, name)
                _SET_KIND(a, kind)
                _SET_PATTERN(a, key)
                _SET_EXCLUDING(a, ex)
                _SET_STATUS(a, status)
                _SET_WHEN(a, when)
                _SET_UNLESS(a, unless)
                _SET_RULES(a, rule_ids)
                yield a


def _subject_text(kind: str, name: str, declared: bool = True) -> str:
    if kind == "agent":
        # An id no agent statement declares holds no role: only rules for anyone apply.
        return f"agent {_quote(name)}" if declared else f"undeclared principal {_quote(name)}"
    if kind == "role":
        return f"role {name}"
    return "anyone else"


def _quote(s: str) -> str:
    import json
    return json.dumps(s, ensure_ascii=False)


class Entries(Sequence[Access]):
    """The lines of an answer, complete and immutable: its length is exact from the
    start, every line decided; the :class:`Access` objects, which carry the principal's
    name, are made when it is first read (then kept), so a 10,000-line answer whose
    regions were worked out before costs no per-line work until it is read. Compares
    equal to a tuple of the same lines."""

    __slots__ = ("_items", "_length", "_make")

    def __init__(self, length: int, make: Callable[[], Iterable[Access]]) -> None:
        self._length = length
        self._make: Callable[[], Iterable[Access]] | None = make
        self._items: tuple[Access, ...] | None = None

    def _all(self) -> tuple[Access, ...]:
        items = self._items
        if items is None:
            make = self._make
            items = tuple(make()) if make is not None else ()
            self._items = items
            self._make = None
        return items

    def head(self, n: int) -> tuple[Access, ...]:
        """The first ``n`` lines, made without the rest when not read yet."""
        make = self._make
        if self._items is None and make is not None:
            return tuple(islice(make(), n))
        return self._all()[:n]

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i: Any) -> Any:
        return self._all()[i]

    def __iter__(self) -> Iterator[Access]:
        return iter(self._all())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Entries):
            return self._all() == other._all()
        if isinstance(other, tuple):
            return self._all() == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._all())

    def __repr__(self) -> str:
        return repr(self._all())

    def __reduce__(self) -> tuple[Any, ...]:
        return tuple, (self._all(),)  # copied or pickled as the tuple of its lines


@dataclass(frozen=True, slots=True)
class Permissions:
    """What ``engine.permissions_of`` answers: every line of what ``principal`` may do.
    ``total`` counts every line; ``truncated`` is True when a ``limit`` left some out.
    ``entries`` is an immutable sequence of the lines, made when first read (a tuple of
    the first lines with a ``limit``)."""

    principal: str
    kind: str
    entries: Sequence[Access]
    total: int
    truncated: bool
    #: False for a principal id no agent statement declares (its text says so).
    declared: bool = True

    def lookup(self, permission: str) -> tuple[Access, ...]:
        """The lines that speak for ``permission`` (an allowed line, a pending one, both
        or none)."""
        return tuple(a for a in self.entries if a.covers(permission))

    def to_dict(self) -> dict[str, Any]:
        return {"principal": self.principal, "kind": self.kind,
                "entries": [a.to_dict() for a in self.entries], "total": self.total,
                "truncated": self.truncated}

    def __str__(self) -> str:
        head = f"{_subject_text(self.kind, self.principal, self.declared)}: {self.total} " + (
            "entry" if self.total == 1 else "entries")
        if self.truncated:
            head += f" (truncated to {len(self.entries)})"
        return "\n".join([head, *(f"  {a}" for a in self.entries)])


@dataclass(frozen=True, slots=True)
class Principals:
    """What ``engine.principals_with`` answers: every principal that may exercise
    ``permission`` (declared agents by id, then roles, then ``anyone`` for the principals
    the policy does not declare), each line with its status and residual."""

    permission: str
    entries: Sequence[Access]
    total: int
    truncated: bool

    def to_dict(self) -> dict[str, Any]:
        return {"permission": self.permission, "entries": [a.to_dict() for a in self.entries],
                "total": self.total, "truncated": self.truncated}

    def __str__(self) -> str:
        head = f"{one_line(self.permission)}: {self.total} " + (
            "entry" if self.total == 1 else "entries")
        if self.truncated:
            head += f" (truncated to {len(self.entries)})"
        lines = [head]
        for a in self.entries:
            cond = str(a)[len(a.status) + 1 + len(a.pattern):]
            lines.append(f"  {_subject_text(a.kind, a.principal)}: {a.status}{cond}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class ToolAccess:
    """One tool given to ``filter_tools``: its ``name``, the tool statement binding it
    (``tool``: its qualified id, None when none does), the ``permission`` it is bound to
    and the principal's lines for that permission (empty: it may not call it)."""

    name: str | None
    tool: str | None
    permission: str | None
    access: tuple[Access, ...]

    @property
    def callable(self) -> bool:
        return bool(self.access)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "tool": self.tool, "permission": self.permission,
                "callable": self.callable, "access": [a.to_dict() for a in self.access]}


@dataclass(frozen=True, slots=True)
class FilteredTools:
    """What ``engine.filter_tools`` answers: ``kept``, the tools given (the same objects,
    in order) that ``principal`` may call; ``tools``, one :class:`ToolAccess` per tool
    given, kept or not."""

    principal: str
    transport: str
    kept: tuple[Any, ...]
    tools: tuple[ToolAccess, ...]
    #: False for a principal id no agent statement declares (its text says so).
    declared: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"principal": self.principal, "transport": self.transport,
                "kept": [t.name for t in self.tools if t.callable],
                "tools": [t.to_dict() for t in self.tools]}

    def __str__(self) -> str:
        lines = [f"{_subject_text('agent', self.principal, self.declared)}: "
                 f"{len(self.kept)} of {len(self.tools)} tools callable"]
        for i, t in enumerate(self.tools):
            # A tool given without a usable name is shown by its place in the list.
            name = one_line(t.name) if t.name else f"tool #{i} (no name)"
            if t.permission is None:
                lines.append(f"  {name}: dropped (no {self.transport} tool binds it)")
            elif not t.access:
                lines.append(f"  {name} -> {t.permission}: dropped")
            else:
                for a in t.access:
                    cond = str(a)[len(a.status) + 1 + len(a.pattern):]
                    lines.append(f"  {name} -> {t.permission}: {a.status}{cond}")
        return "\n".join(lines)


def written(lines: Sequence[Access], aid: str, folder: Folder) -> Iterator[Access]:
    """``lines`` (worked out for another agent with the same roles, see
    ``QueryIndex.written_in``) for the agent ``aid`` (``folder``: its folder): the same
    lines, their residuals printed with its own values when read."""
    for line in lines:
        yield Access(aid, "agent", line.pattern, line.excluding, line.status,
                     _rewritten(line._when, folder), _rewritten(line._unless, folder),
                     line.rules)


def _rewritten(text: str | Text | None, folder: Folder) -> str | Text | None:
    """A residual's text printed with ``folder``'s principal (see
    QueryIndex._written)."""
    if isinstance(text, Text):
        return Text(folder, text.first, text.second)
    return text
