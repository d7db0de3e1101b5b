"""Compiled JSONPath extraction and redaction of tool-call bodies.

Paths are compiled once (at policy compile time) by :meth:`JsonPath.compile`. Simple
paths (``$``, ``$.a.b``, ``$.a[0]``, ``$['x-y']``) never touch jsonpath-ng: they are a
tuple of dict keys and list indexes walked directly, which is what keeps
``tool_authorize`` inside its latency budget. Wildcards, slices, filters and recursive
descent (``$..email``, ``$.items[*].card``) are parsed by jsonpath-ng; each of its matches
is turned back into a *concrete location* (a tuple of keys and indexes) and checked
against the document, so both kinds of path share one set of semantics:

* ``.name`` / ``['name']`` selects a key of an object (a ``dict``) only;
* ``[N]`` selects an element of an array (a ``list``) only; negative N counts from the
  end. Strings are never indexed into.

:func:`redact` applies :class:`RedactionRule` s to a body and returns a
:class:`RedactionResult` holding a redacted copy: the caller's object is never mutated.
Only the containers on the way to a changed value are copied (copy-on-write); unchanged
sub-trees are *shared* with the input, so treat the result as read-only (or deep-copy it)
if the input will be mutated later. When nothing is redacted the body is returned as is.

This module is a leaf: it imports nothing from the engine.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import hmac
import json
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, Literal

from policyengine._json import decimal_text
from policyengine.decision import FrozenDict
from policyengine.errors import PolicyEngineError
from policyengine.tools._patterns import ODD_CASES, fold_case

__all__ = [
    "MASK",
    "MISSING",
    "STRATEGIES",
    "JsonPath",
    "RedactionDiagnostic",
    "RedactionError",
    "RedactionPlan",
    "RedactionResult",
    "RedactionRule",
    "KeyCaseGuard",
    "check_hmac_key",
    "fold_key",
    "frozen_record",
    "redact",
]

#: What ``mask`` puts in place of a value.
MASK: Final = "***REDACTED***"

Strategy = Literal["remove", "mask", "hash", "sha256", "partial"]
STRATEGIES: Final = frozenset({"remove", "mask", "hash", "sha256", "partial"})

#: Longest JSONPath text accepted.
MAX_PATH_LENGTH: Final = 1024
#: Shortest HMAC key accepted for the ``hash`` strategy (bytes).
MIN_HMAC_KEY_BYTES: Final = 16

Step = str | int
Location = tuple[Step, ...]


class RedactionError(PolicyEngineError, ValueError):
    """A JSONPath or redaction rule is unusable. ``code`` is stable.

    Codes: ``invalid_jsonpath`` (does not parse, or uses an unsupported feature),
    ``invalid_rule`` (unknown strategy, bad ``keep``), ``invalid_hash_key``,
    ``path_eval_error`` (evaluating a path failed, e.g. a document nested too deep
    for recursive descent).
    """


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


#: Sentinel default of :meth:`JsonPath.first`: "raise nothing, return this".
MISSING: Final = _Missing()


class _Wild:
    """A native wildcard step: ``[*]`` (array elements) or ``.*`` (object values)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class _Descent:
    """A native ``..name`` step: key ``name`` of every object at or below this point."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"..{self.name}"


_ANY_ITEM = _Wild("[*]")
_ANY_VALUE = _Wild(".*")
NativeStep = Step | _Wild | _Descent

#: Most nodes a native recursive descent visits before giving up (``path_eval_error``).
MAX_DESCENT_NODES: Final = 1_000_000

# The native subset: ``$`` then ``.name`` / ``[N]`` / ``['name']`` / ``["name"]`` /
# ``[*]`` / ``.*`` / ``..name`` steps. Anything else goes to jsonpath-ng.
_NATIVE_STEP = re.compile(
    r"""\.\.([A-Za-z_][A-Za-z0-9_]*)    # ..name
      | \.([A-Za-z_][A-Za-z0-9_]*)       # .name
      | \[(-?(?:0|[1-9][0-9]{0,8}))\]     # [N]
      | \['([^'\\]*)'\]                   # ['name']
      | \["([^"\\]*)"\]                   # ["name"]
      | (\[\*\]|\.\*)                      # [*] or .*
    """,
    re.VERBOSE,
)


def _parse_native(text: str) -> tuple[NativeStep, ...] | None:
    """Return the steps of a path in the native subset, or None when jsonpath-ng is needed."""
    if not text.startswith("$"):
        return None
    steps: list[NativeStep] = []
    pos = 1
    n = len(text)
    while pos < n:
        m = _NATIVE_STEP.match(text, pos)
        if m is None:
            return None
        desc, name, index, sq, dq, wild = m.groups()
        if desc is not None:
            steps.append(_Descent(desc))
        elif name is not None:
            steps.append(name)
        elif index is not None:
            steps.append(int(index))
        elif wild is not None:
            steps.append(_ANY_ITEM if wild == "[*]" else _ANY_VALUE)
        else:
            steps.append(sq if sq is not None else dq)
        pos = m.end()
    return tuple(steps)


def _descend(loc: Location, node: Any, name: str, out: list[tuple[Location, Any]]) -> None:
    """Pre-order search for key ``name`` below ``node``; iterative (no recursion limit)."""
    # Locations are linked (parent, step) pairs, materialised only for matches, so a
    # 10,000-level document costs O(depth) per match instead of O(depth^2).
    stack: list[tuple[Any, Any]] = [(node, None)]
    visited = 0
    while stack:
        cur, link = stack.pop()
        visited += 1
        if visited > MAX_DESCENT_NODES:
            raise RedactionError("path_eval_error",
                                 f"..{name}: more than {MAX_DESCENT_NODES} nodes")
        if isinstance(cur, dict):
            if name in cur:
                rel: list[Step] = [name]
                lk = link
                while lk is not None:
                    rel.append(lk[1])
                    lk = lk[0]
                out.append((loc + tuple(reversed(rel)), cur[name]))
            children: Iterable[tuple[Step, Any]] = cur.items()
        elif isinstance(cur, list):
            children = enumerate(cur)
        else:
            continue
        stack.extend((child, (link, step)) for step, child in reversed(list(children)))


def _expand(doc: Any, steps: tuple[NativeStep, ...]) -> list[tuple[Location, Any]]:
    """All (location, value) pairs a native path selects in ``doc``, document order."""
    frontier: list[tuple[Location, Any]] = [((), doc)]
    for step in steps:
        nxt: list[tuple[Location, Any]] = []
        for loc, cur in frontier:
            if isinstance(step, str):
                if isinstance(cur, dict) and step in cur:
                    nxt.append(((*loc, step), cur[step]))
            elif isinstance(step, int):
                if isinstance(cur, list) and -len(cur) <= step < len(cur):
                    idx = step + len(cur) if step < 0 else step
                    nxt.append(((*loc, idx), cur[idx]))
            elif step is _ANY_ITEM:
                if isinstance(cur, list):
                    nxt.extend(((*loc, i), v) for i, v in enumerate(cur))
            elif step is _ANY_VALUE:
                if isinstance(cur, dict):
                    nxt.extend(((*loc, k), v) for k, v in cur.items())
            else:
                assert isinstance(step, _Descent)
                _descend(loc, cur, step.name, nxt)
        if not nxt:
            return nxt
        frontier = nxt
    if len(frontier) > 1:
        frontier = list(dict(frontier).items())  # ``$..a..b`` can reach a place twice
    return frontier


def _walk(doc: Any, steps: Location) -> tuple[bool, Any]:
    """Follow ``steps`` from ``doc``: (found, value). Iterative, so depth is no issue."""
    cur = doc
    for step in steps:
        if isinstance(step, str):
            if not isinstance(cur, dict) or step not in cur:
                return False, None
            cur = cur[step]
        else:
            if not isinstance(cur, list):
                return False, None
            if not -len(cur) <= step < len(cur):
                return False, None
            cur = cur[step]
    return True, cur


def _locate(doc: Any, steps: Location) -> tuple[Location, Any] | None:
    """``steps`` with negative indexes made absolute, and the value there; None if absent."""
    out: list[Step] = []
    cur = doc
    for step in steps:
        if isinstance(step, str):
            if not isinstance(cur, dict) or step not in cur:
                return None
            cur = cur[step]
            out.append(step)
        else:
            if not isinstance(cur, list) or not -len(cur) <= step < len(cur):
                return None
            idx = step + len(cur) if step < 0 else step
            cur = cur[idx]
            out.append(idx)
    return tuple(out), cur


# Node classes whose matches are locations in the document. ``Wildcard`` is how
# jsonpath-ng >= 1.10 spells ``*`` (older versions use ``Fields('*')``).
_ALLOWED_NODES = ("Root", "This", "Child", "Fields", "Index", "Slice", "Descendants", "Filter",
                  "Wildcard")


def _check_nodes(node: Any, text: str) -> None:
    """Reject jsonpath-ng features whose matches are not locations in the document."""
    kind = type(node).__name__
    if kind not in _ALLOWED_NODES:
        raise RedactionError("invalid_jsonpath", f"JSONPath {text!r}: {kind} is not supported; "
                             "use names, indexes, [*], slices, filters and '..'")
    if kind == "Slice" and node.step == 0:
        raise RedactionError("invalid_jsonpath", f"JSONPath {text!r}: slice step must not be 0")
    for attr in ("left", "right"):
        sub = getattr(node, attr, None)
        if sub is not None:
            _check_nodes(sub, text)


def _steps_of(path_node: Any, out: list[Step]) -> None:
    """Append the concrete steps of one jsonpath-ng datum path (Fields/Index/Child)."""
    kind = type(path_node).__name__
    if kind in ("Root", "This"):
        return
    if kind == "Child":
        _steps_of(path_node.left, out)
        _steps_of(path_node.right, out)
        return
    if kind == "Fields" and len(path_node.fields) == 1:
        out.append(str(path_node.fields[0]))
        return
    if kind == "Index":
        indices = getattr(path_node, "indices", None)
        if indices is None:  # jsonpath-ng < 1.7
            indices = (path_node.index,)
        if len(indices) == 1:
            out.append(int(indices[0]))
            return
    raise RedactionError("path_eval_error", f"match at {path_node!r} is not a location")


class JsonPath:
    """A JSONPath compiled once; evaluating it does no parsing.

    >>> JsonPath.compile("$.amount").first({"amount": 1250})
    1250
    >>> JsonPath.compile("$..email").find({"a": {"email": "x"}, "b": [{"email": "y"}]})
    ['x', 'y']
    """

    __slots__ = ("_direct", "_expr", "_native", "text")

    def __init__(self, text: str, native: tuple[NativeStep, ...] | None, expr: Any) -> None:
        self.text = text
        self._native = native
        self._expr = expr
        # Names and indexes only: at most one location, walked without allocating.
        self._direct: Location | None = None
        if native is not None and all(isinstance(x, (str, int)) for x in native):
            self._direct = tuple(x for x in native if isinstance(x, (str, int)))

    @classmethod
    def compile(cls, text: str) -> JsonPath:
        """Compile ``text`` (must start with ``$``).

        Raises ``RedactionError('invalid_jsonpath')``."""
        if not isinstance(text, str) or not text.startswith("$"):
            raise RedactionError("invalid_jsonpath", f"JSONPath {text!r} must start with '$'")
        if len(text) > MAX_PATH_LENGTH:
            raise RedactionError("invalid_jsonpath",
                                 f"JSONPath is longer than {MAX_PATH_LENGTH} characters")
        native = _parse_native(text)
        if native is not None:
            return cls(text, native, None)
        try:
            from jsonpath_ng.ext import parse as _jp_parse  # type: ignore[attr-defined]

            with warnings.catch_warnings():  # unions warn as deprecated; we refuse them
                warnings.simplefilter("ignore", DeprecationWarning)
                expr = _jp_parse(text)
        except Exception as exc:  # jsonpath-ng raises assorted exception types
            raise RedactionError("invalid_jsonpath",
                                 f"JSONPath {text!r} does not parse: {exc}") from None
        _check_nodes(expr, text)
        return cls(text, None, expr)

    @property
    def is_native(self) -> bool:
        """True when evaluated without jsonpath-ng (names, indexes, ``[*]``, ``.*``,
        ``..name``)."""
        return self._native is not None

    @property
    def is_root(self) -> bool:
        """True for ``$`` itself."""
        return self._direct == ()

    @property
    def direct_steps(self) -> Location | None:
        """The keys and indexes of a path made of names and indexes only (at most one
        location in any document), else None."""
        return self._direct

    def locations(self, doc: Any) -> list[Location]:
        """Concrete locations (absolute keys/indexes) this path selects in ``doc``.

        Raises ``RedactionError('path_eval_error')`` when evaluation fails (for instance
        a recursion limit hit on a very deeply nested document).
        """
        return [loc for loc, _ in self._matches(doc)]

    def _matches(self, doc: Any) -> list[tuple[Location, Any]]:
        if self._direct is not None:
            hit = _locate(doc, self._direct)
            return [] if hit is None else [hit]
        if self._native is not None:
            return _expand(doc, self._native)
        try:
            seen: dict[Location, Any] = {}
            # jsonpath-ng's find can rewrite the document it searches (a filter over an
            # object stores the object back wrapped in a list), so it only ever sees a
            # scratch copy; its matches are then located in the real document.
            for datum in self._expr.find(copy.deepcopy(doc)):
                chain: list[Any] = []
                d = datum
                while d is not None:
                    chain.append(d.path)
                    d = d.context
                steps: list[Step] = []
                for node in reversed(chain):
                    _steps_of(node, steps)
                hit = _locate(doc, tuple(steps))
                if hit is not None:  # drop jsonpath-ng quirks such as indexing a string
                    seen[hit[0]] = hit[1]
        except RedactionError:
            raise
        except RecursionError:
            raise RedactionError("path_eval_error",
                                 f"JSONPath {self.text!r}: document nested too deeply") from None
        except Exception as exc:
            raise RedactionError("path_eval_error",
                                 f"JSONPath {self.text!r} failed: {exc}") from None
        return list(seen.items())

    def find(self, doc: Any) -> list[Any]:
        """All values selected in ``doc`` (document order); ``[]`` when none resolve."""
        if self._direct is not None:
            found, value = _walk(doc, self._direct)
            return [value] if found else []
        return [value for _, value in self._matches(doc)]

    def first(self, doc: Any, default: Any = MISSING) -> Any:
        """The first value selected in ``doc``, else ``default`` (``MISSING``)."""
        if self._direct is not None:
            found, value = _walk(doc, self._direct)
            return value if found else default
        values = self.find(doc)
        return values[0] if values else default

    def __repr__(self) -> str:
        return f"JsonPath({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JsonPath) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


@dataclass(frozen=True)
class RedactionRule:
    """``redact PATH STRATEGY``; the path is compiled when the rule is built.

    Strategies: ``remove``, ``mask`` (:data:`MASK`), ``hash`` (``hmac-sha256:<hex>``,
    needs an HMAC key at :func:`redact` time), ``sha256`` (``sha256:<hex>``, unkeyed) and
    ``partial`` (``keep`` >= 1: the last ``keep`` characters stay, the rest become ``*``).

    >>> RedactionRule("$.card", "partial", keep=4).strategy
    'partial'
    """

    path: str
    strategy: str
    keep: int = 0
    compiled: JsonPath = field(init=False, repr=False, compare=False)
    #: The read-only ``{"field", "strategy"}`` record of this rule (shared: frozen_record).
    _rec: FrozenDict = field(init=False, repr=False, compare=False)
    #: The path's steps when it is names and non-negative indexes only: where it finds
    #: a value is then the steps themselves (else None).
    _plain: Location | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if type(self.strategy) is not str or self.strategy not in STRATEGIES:
            raise RedactionError("invalid_rule", f"unknown redaction strategy "
                                 f"{self.strategy!r}; use one of {sorted(STRATEGIES)}")
        if isinstance(self.keep, bool) or not isinstance(self.keep, int):
            raise RedactionError("invalid_rule", "keep must be an integer")
        if self.strategy == "partial":
            if self.keep < 1:
                raise RedactionError("invalid_rule", "partial needs keep >= 1 (e.g. partial 4)")
        elif self.keep != 0:
            raise RedactionError("invalid_rule", f"keep applies only to partial, "
                                 f"not {self.strategy}")
        compiled = JsonPath.compile(self.path)
        if compiled.is_root:
            raise RedactionError("invalid_jsonpath", "cannot redact the document root '$'")
        object.__setattr__(self, "compiled", compiled)
        object.__setattr__(self, "_rec", frozen_record({"field": self.path,
                                                        "strategy": self.strategy}))
        steps = compiled._direct
        object.__setattr__(self, "_plain", steps if steps is not None and not any(
            type(x) is int and x < 0 for x in steps) else None)

    @property
    def needs_key(self) -> bool:
        """True for ``hash``: an engine should check for a key when it is built."""
        return self.strategy == "hash"

    def replacement(self, value: Any, hmac_key: bytes | None) -> Any:
        """What this rule puts in place of ``value`` (not for ``remove``); ``hash`` needs
        a checked key. Raises for a value that cannot be serialised."""
        return _new_value(self, value, hmac_key)


class RedactionDiagnostic(str):
    """A diagnostic line (a ``str``: ``"code: message"``) with ``code`` and ``field``.

    Codes: ``not_json_container`` (body is not an object/array; returned unchanged),
    ``unparsed_body`` (body is ``str``/``bytes``: cannot be inspected),
    ``hash_key_missing``, ``invalid_hash_key``, ``path_eval_error``, ``value_error``
    (a value could not be serialised for hashing), ``rule_failed`` (anything else).
    """

    code: str
    field: str | None

    def __new__(cls, code: str, message: str, field: str | None = None) -> RedactionDiagnostic:
        self = super().__new__(cls, f"{code}: {message}")
        self.code = code
        self.field = field
        return self


@dataclass(frozen=True)
class RedactionResult:
    """``body``: the redacted copy; ``redactions``: ``{"field", "strategy"}`` for each rule
    that matched at least one value (rules that matched nothing are not listed);
    ``diagnostics``: rules that could not be applied (their fields are left as they were).

    ``ok`` is False when anything could not be redacted: a caller that must not leak
    should fail closed on ``not result.ok``.
    """

    body: Any
    redactions: list[dict[str, str]]
    diagnostics: list[RedactionDiagnostic]

    @property
    def ok(self) -> bool:
        return not self.diagnostics


#: Most records :func:`frozen_record` keeps; past that, a new one is made and not kept.
MAX_RECORDS: Final = 4096
#: The one cache of ``{"field", "strategy"}`` records, read-only and shared, by their
#: items: the records of the rules (a rule set names the same few pairs on every call,
#: and a tool decision holds them as they are) and those a ``ToolDecision`` is given
#: as plain mappings. Only string keys and values are kept, so two records whose items
#: are equal but of other types (``1`` and ``True``) never share one.
_RECORDS: dict[tuple[tuple[str, str], ...], FrozenDict] = {}


def frozen_record(record: Any) -> FrozenDict:
    """``record`` (a mapping, such as ``{"field": "$.card", "strategy": "mask"}``) as a
    read-only :class:`~policyengine.decision.FrozenDict`: the same object for the same
    string items, from one cache of at most :data:`MAX_RECORDS`."""
    try:
        key = tuple(record.items())
        kept = all(type(k) is str and type(v) is str for k, v in key)
    except (TypeError, AttributeError, ValueError):  # not a mapping
        kept = False
    if not kept:  # frozen as given, not kept
        return FrozenDict(record)
    found = _RECORDS.get(key)
    if found is None:
        found = FrozenDict(record)
        if len(_RECORDS) < MAX_RECORDS:
            _RECORDS[key] = found
    return found


def check_hmac_key(key: object) -> bytes:
    """Validate an HMAC key for ``hash``: ``bytes`` of at least 16 bytes.

    Raises ``RedactionError('invalid_hash_key')``. Engines call this when built.
    """
    if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_HMAC_KEY_BYTES:
        raise RedactionError("invalid_hash_key",
                             f"the hash strategy needs an HMAC key of at least "
                             f"{MIN_HMAC_KEY_BYTES} bytes")
    return bytes(key)


def _json_default(value: object) -> object:
    # Decimals (from a parser using parse_float=Decimal) hash as their exact text.
    if isinstance(value, Decimal):
        return decimal_text(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _value_bytes(value: Any) -> bytes:
    """What hash/sha256 digest: a string's UTF-8, else the canonical JSON form."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, Decimal):
        return decimal_text(value).encode("ascii")
    return _canonical_json(value).encode("utf-8", "surrogatepass")


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False, default=_json_default)


def _text_form(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Decimal):
        return decimal_text(value)
    return _canonical_json(value)


def _new_value(rule: RedactionRule, value: Any, key: bytes | None) -> Any:
    s = rule.strategy
    if s == "mask":
        return MASK
    if s == "sha256":
        return "sha256:" + hashlib.sha256(_value_bytes(value)).hexdigest()
    if s == "hash":
        assert key is not None
        return "hmac-sha256:" + hmac.digest(key, _value_bytes(value), "sha256").hex()
    # partial
    text = _text_form(value)
    if len(text) <= rule.keep:
        return "*" * len(text)
    return "*" * (len(text) - rule.keep) + text[-rule.keep:]


class _Workspace:
    """The copy-on-write document: the containers already copied, by id (the dict also
    keeps them alive, so their ids stay unique)."""

    __slots__ = ("owned", "root")

    def __init__(self, root: Any) -> None:
        self.root = root
        self.owned: dict[int, Any] = {}

    def parent(self, loc: Location) -> Any:
        """Copy the containers down to the parent of ``loc`` and return that parent."""
        owned = self.owned
        cur = self.root
        if id(cur) not in owned:
            cur = self.root = cur.copy()
            owned[id(cur)] = cur
        for step in loc[:-1]:
            child = cur[step]
            if id(child) not in owned:
                child = cur[step] = child.copy()
                owned[id(child)] = child
            cur = child
        return cur

    def set(self, loc: Location, value: Any) -> bool:
        hit = _locate(self.root, loc)
        if hit is None or hit[0] != loc:
            return False  # gone (e.g. inside a value an earlier match replaced)
        self.parent(loc)[loc[-1]] = value
        return True

    def delete(self, loc: Location) -> bool:
        hit = _locate(self.root, loc)
        if hit is None or hit[0] != loc:
            return False
        del self.parent(loc)[loc[-1]]
        return True


def _no_key(rule: RedactionRule) -> RedactionDiagnostic:
    return RedactionDiagnostic("hash_key_missing", f"{rule.path}: the hash strategy needs "
                               "an HMAC key (configure one, or use sha256 explicitly)",
                               rule.path)


def _rule_failed(rule: RedactionRule, exc: Exception) -> RedactionDiagnostic:
    """Why a rule could not be applied (the body is left as it was before the rule)."""
    if isinstance(exc, RedactionError):
        return RedactionDiagnostic(exc.code, f"{rule.path}: {exc.message}", rule.path)
    if isinstance(exc, RecursionError):
        return RedactionDiagnostic("path_eval_error", f"{rule.path}: value nested too deeply",
                                   rule.path)
    if isinstance(exc, (TypeError, ValueError)):
        return RedactionDiagnostic("value_error", f"{rule.path}: cannot redact value: {exc}",
                                   rule.path)
    return RedactionDiagnostic("rule_failed", f"{rule.path}: {type(exc).__name__}: {exc}",
                               rule.path)


def _hit_key(hit: tuple[Location, Any]) -> tuple[tuple[int, Any], ...]:
    return tuple((0, s) if isinstance(s, int) else (1, s) for s in hit[0])


#: One applied rule: (its path, its strategy).
Applied = tuple[str, str]


def redact(body: Any, rules: Iterable[RedactionRule], *,
           hmac_key: bytes | None = None) -> RedactionResult:
    """Apply ``rules`` in order to a copy of ``body``.

    Total: a path that resolves nowhere is skipped; a rule that fails (no HMAC key for
    ``hash``, a value that cannot be serialised, a path too deep to evaluate) leaves the
    body as it was before that rule and adds a diagnostic; a body that is not a JSON
    object or array comes back unchanged with a diagnostic. ``None`` (no body) and an
    empty rule list give an empty result with no diagnostic.

    >>> r = redact({"card": "4111111111111111", "n": 1}, [RedactionRule("$.card", "mask")])
    >>> r.body, r.redactions
    ({'card': '***REDACTED***', 'n': 1}, [{'field': '$.card', 'strategy': 'mask'}])
    """
    rules = tuple(rules) if isinstance(rules, Iterable) and not isinstance(
        rules, (str, bytes)) else (None,)
    if not all(isinstance(r, RedactionRule) for r in rules):
        raise RedactionError("invalid_rule", "rules must be a list of RedactionRule")
    key, key_problem = _checked_key(hmac_key)
    out, applied, diagnostics = _apply(rules, key, key_problem, body)
    return RedactionResult(out, [r._rec for r in applied], diagnostics)


def redact_records(body: Any, rules: tuple[RedactionRule, ...], hmac_key: bytes | None
                   ) -> tuple[Any, tuple[FrozenDict, ...], list[RedactionDiagnostic]]:
    """:func:`redact` as a tuple (body, redactions, diagnostics), the redactions already
    a tuple of the shared read-only records: what a tool decision holds.

    ``hmac_key`` is None or a key :func:`check_hmac_key` returned, checked once when
    its owner was built (the engine): it is not checked again on each call."""
    out, applied, diagnostics = _apply(rules, hmac_key, None, body)
    return out, tuple([r._rec for r in applied]), diagnostics


def _checked_key(hmac_key: bytes | None) -> tuple[bytes | None, RedactionDiagnostic | None]:
    """(the key to hash with, or the diagnostic every ``hash`` rule gets instead)."""
    if hmac_key is None:
        return None, None
    if type(hmac_key) is bytes and len(hmac_key) >= MIN_HMAC_KEY_BYTES:
        return hmac_key, None  # what check_hmac_key returns for it, without the call
    try:
        return check_hmac_key(hmac_key), None
    except RedactionError as exc:
        return None, RedactionDiagnostic("invalid_hash_key", exc.message)


class RedactionPlan:
    """Redaction rules and their HMAC key, checked once, for bodies redacted over and
    over (a policy's ``log redact`` rules, a tool's ``redact`` rules): ``plan(body)`` is
    exactly ``redact(body, rules, hmac_key=...)`` without re-checking the key and the
    rules on every call. :meth:`apply` is the same without building a result object.
    """

    __slots__ = ("_key_problem", "hmac_key", "rules")

    def __init__(self, rules: Iterable[RedactionRule], *,
                 hmac_key: bytes | None = None) -> None:
        self.rules: tuple[RedactionRule, ...] = tuple(rules)
        #: The checked key (None without one, or when it is unusable).
        self.hmac_key: bytes | None
        self.hmac_key, self._key_problem = _checked_key(hmac_key)

    def __call__(self, body: Any) -> RedactionResult:
        out, applied, diagnostics = _apply(self.rules, self.hmac_key, self._key_problem,
                                           body)
        return RedactionResult(out, [r._rec for r in applied], diagnostics)

    def apply(self, body: Any) -> tuple[Any, list[Applied], list[RedactionDiagnostic]]:
        """(redacted copy, rules applied as (path, strategy), diagnostics): what
        :func:`redact` returns, as a tuple."""
        out, applied, diagnostics = _apply(self.rules, self.hmac_key, self._key_problem,
                                           body)
        return out, [(r.path, r.strategy) for r in applied], diagnostics


def _apply(rules: list[RedactionRule] | tuple[RedactionRule, ...], key: bytes | None,
           key_problem: RedactionDiagnostic | None, body: Any
           ) -> tuple[Any, list[RedactionRule], list[RedactionDiagnostic]]:
    """The one implementation of :func:`redact` and :class:`RedactionPlan`: (the
    redacted copy, the rules applied in order, diagnostics)."""
    if not rules or body is None:
        return body, [], []
    if not isinstance(body, (dict, list)):
        if isinstance(body, (str, bytes, bytearray, memoryview)):
            diag = RedactionDiagnostic("unparsed_body", "body is text/bytes, not parsed JSON; "
                                       "it was not inspected and is returned unchanged")
        else:
            diag = RedactionDiagnostic("not_json_container", f"body is a {type(body).__name__}"
                                       ", not a JSON object or array; returned unchanged")
        return body, [], [diag]
    ws = _Workspace(body)
    redactions: list[RedactionRule] = []
    diagnostics: list[RedactionDiagnostic] = []
    for rule in rules:
        strategy = rule.strategy
        loc = rule._plain
        if loc is not None:
            # Names and non-negative indexes (the common case): the one location is the
            # steps themselves, found and replaced here without allocating.
            found, old = _walk(ws.root, loc)
            if not found:
                continue
        elif (steps := rule.compiled._direct) is not None:
            # Names and indexes, some negative: made absolute where found.
            hit = _locate(ws.root, steps)
            if hit is None:
                continue
            loc, old = hit
        if loc is not None:
            # At most one location: replaced here without the general path's lists and
            # sorting.
            if strategy == "mask":
                value: Any = MASK
            elif strategy != "remove":
                if strategy == "hash" and key is None:
                    diagnostics.append(key_problem or _no_key(rule))
                    continue
                try:
                    value = _new_value(rule, old, key)
                except Exception as exc:
                    diagnostics.append(_rule_failed(rule, exc))
                    continue
            if strategy == "remove":
                del ws.parent(loc)[loc[-1]]
            else:
                ws.parent(loc)[loc[-1]] = value
            redactions.append(rule)
            continue
        # Phase 1 (may fail): find the locations and compute the new values. Nothing
        # in the workspace changes until it succeeds, so a failing rule is a no-op.
        try:
            hits = rule.compiled._matches(ws.root)
            if not hits:
                continue
            if strategy == "hash" and key is None:
                diagnostics.append(key_problem or _no_key(rule))
                continue
            if strategy == "remove":
                new_values: list[Any] = []
                if len(hits) > 1:
                    # Deepest and highest index first, so removing one array element
                    # does not shift the positions of the others still to remove.
                    hits.sort(key=_hit_key, reverse=True)
            else:
                if len(hits) > 1:
                    # Outermost first: a match inside a replaced value then no longer
                    # resolves and is skipped.
                    hits.sort(key=_hit_key)
                new_values = [_new_value(rule, old, key) for _, old in hits]
        except Exception as exc:  # fail safe: never corrupt the body, never raise
            diagnostics.append(_rule_failed(rule, exc))
            continue
        # Phase 2 (cannot fail on dict/list): apply. Locations were found on the current
        # document, so a single one is still valid; several are re-checked one by one.
        if len(hits) == 1:
            loc = hits[0][0]
            if strategy == "remove":
                del ws.parent(loc)[loc[-1]]
            else:
                ws.parent(loc)[loc[-1]] = new_values[0]
            applied = True
        else:
            applied = False
            if strategy == "remove":
                for loc, _ in hits:
                    applied = ws.delete(loc) or applied
            else:
                for (loc, _), value in zip(hits, new_values, strict=True):
                    applied = ws.set(loc, value) or applied
        if applied:
            redactions.append(rule)
    return ws.root, redactions, diagnostics


# ------------------------------------------------------------------ key case guard

def fold_key(key: str) -> str:
    """A JSON key as servers that match keys case-insensitively compare it
    (:func:`~policyengine.tools._patterns.fold_case`: U+017F long s and ``s``, U+212A
    Kelvin sign and ``k``, U+0130 and U+0131 and ``i`` fold alike), so two keys that any
    such server could confuse fold equal."""
    return fold_case(key)


#: Most spellings kept per name; a longer name is checked by folding the keys instead.
MAX_KEY_VARIANTS: Final = 4096


def _char_cases(c: str) -> str:
    """``c`` and every other character that folds like it (:func:`fold_key`): what a
    case-insensitive server takes for ``c``. ASCII from :data:`ODD_CASES`; others from
    :func:`_folded_from` (``\u03c3`` is also ``\u03a3`` and ``\u03c2``)."""
    if c.isascii():
        return "".join(dict.fromkeys(c + c.lower() + c.upper() + ODD_CASES.get(c.lower(), "")))
    folded = fold_key(c)
    return "".join(dict.fromkeys(c + (folded if len(folded) == 1 else "")
                                 + _folded_from().get(folded, "")))


#: Above this code point no character has a case (the tests check every code point).
_LAST_CASED: Final = 0x1FFFF


@functools.cache
def _folded_from() -> dict[str, str]:
    """The characters :func:`fold_key` changes, by what it makes of them: made once,
    the first time a name holds a non-ASCII character (about 0.1 s)."""
    found: dict[str, str] = {}
    for cp in range(_LAST_CASED + 1):
        c = chr(cp)
        folded = fold_key(c)
        if folded != c:
            found[folded] = found.get(folded, "") + c
    return found


def _variants(name: str) -> frozenset[str] | None:
    """Every spelling of ``name`` a case-insensitive server takes for it (itself
    included), or None when there would be more than :data:`MAX_KEY_VARIANTS`."""
    options = [_char_cases(c) for c in name]
    total = 1
    for opt in options:
        total *= len(opt)
        if total > MAX_KEY_VARIANTS:
            return None
    out = [""]
    for opt in options:
        out = [head + c for head in out for c in opt]
    return frozenset(out)


class _KeyNode:
    """One level of the paths a route reads: the names it selects (with the subtree
    below each), a wildcard or index step, and names searched at every depth.

    ``others`` holds every other spelling of the names (``AMOUNT``, ``Amount`` ... for
    ``amount``): an object with a key among them is refused, a test of one set against
    the object's keys, in C."""

    __slots__ = ("deep", "exact", "folded", "inner", "names", "others", "simple", "slow",
                 "wild")

    def __init__(self) -> None:
        self.names: dict[str, _KeyNode] = {}
        self.wild: _KeyNode | None = None
        self.deep: frozenset[str] = frozenset()
        self.exact: frozenset[str] = frozenset()
        self.folded: frozenset[str] = frozenset()
        self.others: frozenset[str] = frozenset()
        self.slow = False  # a name too long to spell out, or two names that fold alike
        self.inner: tuple[tuple[str, _KeyNode], ...] = ()  # children with names below
        self.simple = True  # names only, here and below (no wildcard, no deep search)

    def child(self, name: str) -> _KeyNode:
        node = self.names.get(name)
        if node is None:
            node = self.names[name] = _KeyNode()
        return node

    def any(self) -> _KeyNode:
        if self.wild is None:
            self.wild = _KeyNode()
        return self.wild

    def seal(self) -> None:
        self.exact = frozenset(self.names)
        self.folded = frozenset(fold_key(n) for n in self.names)
        others: set[str] = set()
        self.slow = len(self.folded) != len(self.exact)
        for name in self.names:
            spellings = _variants(name)
            if spellings is None:
                self.slow = True
            else:
                others |= spellings
        self.others = frozenset(others - self.exact)
        for node in self.names.values():
            node.seal()
        if self.wild is not None:
            self.wild.seal()
        self.inner = tuple((n, c) for n, c in self.names.items()
                           if c.names or c.wild is not None or c.deep)
        self.simple = (self.wild is None and not self.deep
                       and all(c.simple for _, c in self.inner))


_EMPTY_NODE: Final = _KeyNode()
#: Words of a jsonpath-ng path (names in steps and filters), checked at every depth.
_PATH_WORDS: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*|'([^'\\]*)'|\"([^\"\\]*)\"")


def _key_clash(d: dict[Any, Any], exact: frozenset[str], folded: frozenset[str],
               strict: bool) -> str | None:
    """A name of ``exact`` that ``d`` holds in another case, or in two; else None.

    Keys equal to a name are fine; any other key that folds like a name is a clash.
    The common case (ASCII keys) runs in C: a set difference and a disjointness test.
    """
    rest = d.keys() - exact
    if rest:
        try:
            if all(map(str.isascii, rest)):
                if folded.isdisjoint(map(str.lower, rest)):
                    rest = set()
            elif not any(fold_key(k) in folded for k in rest):
                rest = set()
        except TypeError:
            return "a key that is not a string"
        for key in rest:
            if fold_key(key) in folded:
                return next(n for n in exact if fold_key(n) == fold_key(key))
    if strict:  # names of the paths themselves fold alike: both keys present is a clash
        seen: dict[str, str] = {}
        for name in exact:
            if name in d:
                other = seen.setdefault(fold_key(name), name)
                if other != name:
                    return name
    return None


class KeyCaseGuard:
    """Refuses bodies a case-insensitive server could read differently from the paths
    a route extracts and redacts: an object holding a key those paths name in another
    case (``"AMOUNT"`` for ``$.amount``), or in two cases (``"card"`` and ``"CARD"``).

    Only the objects the paths can reach are inspected (names, ``[*]``, ``.*``, indexes;
    ``..name`` and jsonpath-ng paths inspect every object below), so the cost follows
    the paths, not the body.
    """

    __slots__ = ("_root",)

    def __init__(self, paths: Iterable[JsonPath]) -> None:
        root = _KeyNode()
        for path in paths:
            if path._native is None:
                words = {m.group(1) or m.group(2) or m.group(0)
                         for m in _PATH_WORDS.finditer(path.text[1:])}
                root.deep = root.deep | {w for w in words if w}
                continue
            node = root
            steps = path._native
            for k, step in enumerate(steps):
                if isinstance(step, str):
                    node = node.child(step)
                elif isinstance(step, _Descent):
                    # Everything below is searched: the names from here on, at any depth.
                    later = {s.name if isinstance(s, _Descent) else s for s in steps[k:]
                             if isinstance(s, (str, _Descent))}
                    node.deep = node.deep | later
                    break
                else:  # [N], [*], .*
                    node = node.any()
        root.seal()
        self._root = root

    @property
    def empty(self) -> bool:
        root = self._root
        return not (root.names or root.wild or root.deep)

    def clash(self, body: Any) -> str | None:
        """The first name ``body`` holds in another case (or in two), else None."""
        root = self._root
        if root.simple:
            return _clash_names(root, body)
        return _clash(root, body, frozenset())


def _clash_names(node: _KeyNode, value: Any) -> str | None:
    """:func:`_clash` for paths of names only (the common case), kept lean: one
    ``isdisjoint`` per object the paths reach."""
    if type(value) is not dict:
        return None
    if node.slow or not node.others.isdisjoint(value):
        found = _key_clash(value, node.exact, node.folded, node.slow)
        if found is not None:
            return found
    for name, child in node.inner:
        if name in value:
            found = _clash_names(child, value[name])
            if found is not None:
                return found
    return None


def _clash(node: _KeyNode, value: Any, deep: frozenset[str]) -> str | None:
    # Recursion follows the paths' own depth (bounded by the path text); only the
    # ``deep`` walk goes as deep as the document, and it is iterative.
    if node.deep:
        deep = deep | node.deep
    if deep:
        return _clash_deep(node, value, deep)
    if type(value) is dict:
        if node.exact:
            if node.slow or not node.others.isdisjoint(value):
                found = _key_clash(value, node.exact, node.folded, node.slow)
                if found is not None:
                    return found
            for name, child in node.names.items():
                if (child.names or child.wild is not None or child.deep) and name in value:
                    found = _clash(child, value[name], deep)
                    if found is not None:
                        return found
        children: Iterable[Any] = value.values()
    elif type(value) is list:
        children = value
    else:
        return None
    wild = node.wild
    if wild is not None:
        for v in children:
            if type(v) is dict or type(v) is list:
                found = _clash(wild, v, deep)
                if found is not None:
                    return found
    return None


def _clash_deep(node: _KeyNode, value: Any, deep: frozenset[str]) -> str | None:
    """Every object at or below ``value`` is checked for the ``deep`` names (and the
    objects the paths reach for theirs)."""
    deep_folded = frozenset(fold_key(n) for n in deep)
    spellings = [_variants(n) for n in deep]
    deep_slow = any(v is None for v in spellings)
    deep_others = frozenset().union(*(v for v in spellings if v is not None)) - deep
    stack: list[tuple[_KeyNode, Any]] = [(node, value)]
    while stack:
        at, cur = stack.pop()
        if type(cur) is dict:
            if (deep_slow or at.slow or not deep_others.isdisjoint(cur)
                    or not at.others.isdisjoint(cur)):
                exact = at.exact | deep
                folded = at.folded | deep_folded
                found = _key_clash(cur, exact, folded, True)
                if found is not None:
                    return found
            for name, child in at.names.items():
                if name in cur:
                    stack.append((child, cur[name]))
            children: Iterable[Any] = cur.values()
        elif type(cur) is list:
            children = cur
        else:
            continue
        for v in children:
            if type(v) is dict or type(v) is list:
                stack.append((at.wild if at.wild is not None else _EMPTY_NODE, v))
                if at.wild is not None:
                    stack.append((_EMPTY_NODE, v))
    return None
