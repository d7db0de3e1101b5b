"""What generated condition code runs against: the small typed helpers it calls, the
principal it reads, and the one ``compile()`` that turns condition sources into functions.

The code generator (:mod:`policyengine.lang._codegen`) writes calls to the names in
:data:`RUNTIME`; this module is the other half of that contract.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from types import CodeType, FunctionType
from typing import Any

from policyengine._glob import Glob
from policyengine.errors import PolicyEngineError

__all__ = ["RUNTIME", "EvalError", "Principal", "Test", "build_many"]

#: A condition: (context, principal or None when the condition does not read it, request
#: state or None) -> whether it holds.
Test = Callable[[dict[str, Any], "Principal | None", Any], bool]


class EvalError(PolicyEngineError):
    """A condition could not be evaluated for this request (fail closed applies).

    Never leaves the engine: it becomes a diagnostic of the decision."""

    def __init__(self, code: str, message: str, detail: str | None = None) -> None:
        super().__init__(code, message)
        #: The more specific code behind ``code`` (``negative_amount`` behind
        #: ``invalid_amount``), or None.
        self.detail = detail


class Principal:
    """Who is asking, as the policy knows them."""

    __slots__ = ("attributes", "id", "roles")

    def __init__(self, id: str, roles: frozenset[str], attributes: dict[str, Any]) -> None:
        self.id = id
        self.roles = roles
        self.attributes = attributes


# ---- values: what a condition can compare --------------------------------------------------
#
# A value has one of five types: string, number (int, Decimal and finite float, compared
# exactly), boolean, list and record. Lists compare as sets, and every element of a list
# has one type (the list's element type; the empty list fits any); records compare key
# by key and have a type per key. Anything else (None, NaN, an object the policy cannot
# read) is not a value. Comparing values of different types, or anything that is not a
# value, is an evaluation error: a forbid then applies (fail closed) instead of silently
# not matching. docs/semantics.md states the rules.
#
# Subclasses of str, int and float (StrEnum, IntEnum...) are read by their value through
# the base type's own methods, never through anything the subclass overrides; bool is not
# a number. Every walk over a value is linear in its size and stops at MAX_DEPTH levels,
# and integers are bounded (MAX_INT_BITS) so that no comparison can take seconds.

#: Nesting deeper than this is ``too_deep``.
MAX_DEPTH = 32
#: About 4,300 decimal digits, Python's own limit for reading an integer from text;
#: comparing a larger integer with a decimal costs time quadratic in its digits.
MAX_INT_BITS = 14_300

_STRING, _NUMBER, _BOOLEAN = "string", "number", "boolean"
_LIST, _RECORD = "list", "record"
# Types: _STRING | _NUMBER | _BOOLEAN | (_LIST, element type or None when empty)
#        | (_RECORD, ((key, type), ...) sorted by key)
_EMPTY_LIST = (_LIST, None)


def _type_name(t: Any) -> str:
    if type(t) is str:
        return t
    if t[0] == _LIST:
        return "empty list" if t[1] is None else f"list of {_type_name(t[1])}"
    return "record {" + ", ".join(k for k, _ in t[1]) + "}"


def _not_a_value(v: Any) -> EvalError:
    what = "null" if v is None else type(v).__name__
    return EvalError("type_error", f"a {what} cannot be compared")


def _int(v: int) -> int:
    if v.bit_length() > MAX_INT_BITS:
        raise EvalError("number_too_large", f"an integer of {v.bit_length()} bits is too "
                        "large to compare (at most about 4,300 digits)")
    return v


def _scalar(v: Any) -> tuple[str, Any] | None:
    """(type, canonical value) of a string, number or boolean; None for other things."""
    t = type(v)
    if t is str:
        return _STRING, v
    if t is bool:
        return _BOOLEAN, v
    if t is int:
        return _NUMBER, _int(v)
    if t is Decimal:
        if not v.is_finite():
            raise EvalError("type_error", f"a non-finite number ({v}) cannot be compared")
        return _NUMBER, v
    if t is float:
        if not math.isfinite(v):
            raise EvalError("type_error", f"a non-finite number ({v}) cannot be compared")
        # 0.3 from JSON is the binary float 0.30000000000000004...; compare the decimal
        # the sender wrote, so that `risk >= 0.3` holds for 0.3.
        return _NUMBER, Decimal(repr(v))
    if isinstance(v, str):
        return _STRING, str.__str__(v)
    if isinstance(v, int):
        return _NUMBER, _int(int.__int__(v))
    if isinstance(v, float):
        return _scalar(float.__float__(v))
    if isinstance(v, Decimal):
        return _scalar(Decimal(v))
    return None


def _unify(a: Any, b: Any) -> Any:
    """The type that fits both ``a`` and ``b``, or None when they differ."""
    if a == b:
        return a
    if type(a) is not tuple or type(b) is not tuple or a[0] != b[0]:
        return None
    if a[0] == _LIST:
        if a[1] is None:
            return b
        if b[1] is None:
            return a
        element = _unify(a[1], b[1])
        return None if element is None else (_LIST, element)
    fields_a, fields_b = a[1], b[1]
    if len(fields_a) != len(fields_b):
        return None
    fields = []
    for (key, ta), (key_b, tb) in zip(fields_a, fields_b, strict=True):
        t = _unify(ta, tb) if key == key_b else None
        if t is None:
            return None
        fields.append((key, t))
    return (_RECORD, tuple(fields))


def _value(v: Any, depth: int = 0) -> tuple[Any, Any]:
    """(type, canonical value) of ``v``: lists become sorted tuples without repeats,
    records tuples of (key, value) sorted by key. Raises :class:`EvalError` when ``v``
    is not a value (or a list mixes types, or it nests deeper than :data:`MAX_DEPTH`)."""
    found = _scalar(v)
    if found is not None:
        return found
    if depth >= MAX_DEPTH:
        raise EvalError("too_deep", f"a value nested more than {MAX_DEPTH} levels deep")
    if isinstance(v, dict):
        fields = []
        canon = []
        for key, item in dict.items(v):
            if not isinstance(key, str):
                raise EvalError("type_error", f"a record key must be a string, not "
                                f"{type(key).__name__}")
            key = str.__str__(key)
            t, c = _value(item, depth + 1)
            fields.append((key, t))
            canon.append((key, c))
        fields.sort(key=_first)
        canon.sort(key=_first)
        return (_RECORD, tuple(fields)), tuple(canon)
    if isinstance(v, (list, tuple)):
        items: Any = list.__iter__(v) if isinstance(v, list) else tuple.__iter__(v)
    elif isinstance(v, (set, frozenset)):
        items = set.__iter__(v) if isinstance(v, set) else frozenset.__iter__(v)
    else:
        raise _not_a_value(v)
    element = None
    canon_items = []
    for item in items:
        t, c = _value(item, depth + 1)
        if element is None:
            element = t
        elif t != element:
            u = _unify(element, t)
            if u is None:
                raise EvalError("type_error", f"a list holds a {_type_name(element)} and "
                                f"a {_type_name(t)}: lists of mixed types cannot be compared")
            element = u
        canon_items.append(c)
    return (_LIST, element), _as_set(canon_items)


def _first(pair: tuple[str, Any]) -> str:
    return pair[0]


def _as_set(items: list[Any]) -> tuple[Any, ...]:
    """A list's canonical form as a set: sorted, without repeats. Sorting, not hashing:
    integers hash to their value modulo 2**61 - 1, so a list built of colliding integers
    makes a hash set quadratic; the elements share one type, so they sort."""
    items.sort()
    out: list[Any] = []
    for item in items:
        if not out or item != out[-1]:
            out.append(item)
    return tuple(out)


def _mismatch(op: str, ta: Any, tb: Any) -> EvalError:
    return EvalError("type_error", f"'{op}' compares values of one type, not a "
                     f"{_type_name(ta)} with a {_type_name(tb)}")


def _eq(a: Any, b: Any) -> bool:
    """Typed equality: lists as sets, records key by key, numbers exactly; values of
    different types are an error, never simply unequal (see the section comment)."""
    t = type(a)
    if t is type(b) and (t is str or t is int or t is bool):
        # the common cases; two integers compare exactly at any size
        return a == b  # type: ignore[no-any-return]
    return _eq_values(a, b)


def _ne(a: Any, b: Any) -> bool:
    t = type(a)
    if t is type(b) and (t is str or t is int or t is bool):
        return a != b  # type: ignore[no-any-return]
    return not _eq_values(a, b)


def _eq_values(a: Any, b: Any) -> bool:
    ta, ca = _value(a)
    tb, cb = _value(b)
    if ta != tb and _unify(ta, tb) is None:
        raise _mismatch("==", ta, tb)
    return bool(ca == cb)


def _num(v: Any, op: str) -> Any:
    t = type(v)
    if t is int:
        return _int(v)
    if t is Decimal and v.is_finite():
        return v
    found = _scalar(v)
    if found is None or found[0] != _NUMBER:
        name = "null" if v is None else found[0] if found else type(v).__name__
        raise EvalError("type_error", f"'{op}' needs a number, got {name}")
    return found[1]


def _lt(a: Any, b: Any) -> bool:
    if type(a) is int and type(b) is int:
        return a < b
    return bool(_num(a, "<") < _num(b, "<"))


def _le(a: Any, b: Any) -> bool:
    if type(a) is int and type(b) is int:
        return a <= b
    return bool(_num(a, "<=") <= _num(b, "<="))


def _gt(a: Any, b: Any) -> bool:
    if type(a) is int and type(b) is int:
        return a > b
    return bool(_num(a, ">") > _num(b, ">"))


def _ge(a: Any, b: Any) -> bool:
    if type(a) is int and type(b) is int:
        return a >= b
    return bool(_num(a, ">=") >= _num(b, ">="))


def _b(v: Any) -> bool:
    if v is True or v is False:
        return v
    raise EvalError("type_error", f"expected true or false, got "
                    f"{'null' if v is None else type(v).__name__}")


def _member(x: Any, coll: Any, op: str) -> bool:
    """``x in coll`` for a list ``coll``: some element equals ``x``; an element type
    other than ``x``'s is an error (an empty list holds nothing)."""
    tx, cx = _value(x)
    tl, cl = _value(coll)
    if type(tl) is not tuple or tl[0] != _LIST:
        raise EvalError("type_error", f"'{op}' needs a list, got {_type_name(tl)}")
    if tl[1] is None:
        return False
    if tl[1] != tx and _unify(tl[1], tx) is None:
        raise _mismatch(op, tx, tl[1])
    return cx in cl


def _in_lit(x: Any, strings: frozenset[str] | None, items: tuple[Any, ...]) -> bool:
    if strings is not None and type(x) is str:
        return x in strings  # a literal list of strings: the common case
    return _member(x, items, "in")


def _in_dyn(x: Any, coll: Any) -> bool:
    if type(x) is str and (type(coll) is list or type(coll) is frozenset):
        for item in coll:  # a list of plain strings (principal.roles, tags): the common case
            if type(item) is not str:
                return _member(x, coll, "in")
        return x in coll
    return _member(x, coll, "in")


def _str(v: Any, fn: str) -> str:
    if type(v) is str:
        return v
    if isinstance(v, str):
        return str.__str__(v)
    raise EvalError("type_error", f"{fn}() needs a string, got "
                    f"{'null' if v is None else type(v).__name__}")


def _startswith(s: Any, p: Any) -> bool:
    return _str(s, "startswith").startswith(_str(p, "startswith"))


def _endswith(s: Any, p: Any) -> bool:
    return _str(s, "endswith").endswith(_str(p, "endswith"))


def _contains(coll: Any, x: Any) -> bool:
    if isinstance(coll, str):
        return _str(x, "contains") in _str(coll, "contains")
    return _member(x, coll, "contains")


def _has(value: Any, keys: tuple[str, ...]) -> bool:
    """True when every key of the path is present (in nested objects); never an error."""
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return False
        value = value[key]
    return True


def _matches(s: Any, glob: Glob) -> bool:
    return glob.match(_str(s, "matches"))


#: The names generated code calls. The code generator also writes the first branch of
#: ``_eq`` / ``_ne`` (string or integer literal), of ``_lt`` / ``_le`` / ``_gt`` / ``_ge``
#: (integer literal) and of ``_in_lit`` (a list of string literals) inline, behind the
#: same ``type(x) is`` test: change those branches here and there together
#: (tests/decide/test_inline_compare.py checks that both agree).
RUNTIME: dict[str, Any] = {
    "_lt": _lt, "_le": _le, "_gt": _gt, "_ge": _ge, "_eq": _eq, "_ne": _ne, "_b": _b,
    "_in_lit": _in_lit, "_in_dyn": _in_dyn, "_startswith": _startswith,
    "_endswith": _endswith, "_contains": _contains, "_matches": _matches, "_has": _has,
}

#: Distinct condition shapes compiled by one ``compile()`` call.
CHUNK = 1024
#: Shapes whose template is kept between calls (a reload, explain's clauses); past it the
#: table starts again empty (it only saves compile time, never changes a result).
SHAPE_CACHE_SIZE = 4096
_templates: dict[tuple[str, tuple[str, ...]], _Template] = {}
#: Tests kept by (shape, constants) between calls, so that rules alike in every file and
#: every policy loaded share one; past it the table starts again empty (sharing only
#: saves memory and CPU caches, never changes a result).
TESTS_KEPT = 16384
_tests: dict[tuple[Any, ...], Test] = {}

#: What a constant's name becomes in a shape's compiled source: a string no policy can
#: write (a NUL, then the constant's position), replaced in the code object's constants
#: by the rule's own value.
_PLACEHOLDER = "\x00{}"
_NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(\()?")
# (index in co_consts, the constant's position or -1, the slots of a nested code object)
_Slots = tuple[tuple[int, int, Any], ...]


class _Template:
    """One condition shape compiled once: its code, with a placeholder where each of its
    constants goes, and where in ``co_consts`` (of the code or of a lambda nested in it,
    coverage's) each placeholder is."""

    __slots__ = ("code", "namespace", "slots")

    def __init__(self, code: CodeType, namespace: dict[str, Any], count: int) -> None:
        self.code = code
        self.namespace = namespace
        places = {_PLACEHOLDER.format(i): i for i in range(count)}
        self.slots = _slots(code, places)

    def make(self, values: tuple[Any, ...]) -> Test:
        """A rule's test: the shape's code with the rule's constants in place."""
        code = _fill(self.code, self.slots, values)
        return FunctionType(code, self.namespace)


def _slots(code: CodeType, places: dict[str, int]) -> _Slots:
    out: list[tuple[int, int, Any]] = []
    for i, k in enumerate(code.co_consts):
        if type(k) is str and k in places:
            out.append((i, places[k], None))
        elif type(k) is CodeType:
            nested = _slots(k, places)
            if nested:
                out.append((i, -1, nested))
        elif (type(k) is tuple or type(k) is frozenset) and any(
                type(item) is str and item in places for item in k):
            # the compiler folded a display of constants into one: a placeholder inside
            # would never be replaced (the code generator writes no such display)
            raise AssertionError("a condition's constant was folded into another")
    return tuple(out)


def _fill(code: CodeType, slots: _Slots, values: tuple[Any, ...]) -> CodeType:
    consts = list(code.co_consts)
    for i, k, nested in slots:
        consts[i] = values[k] if nested is None else _fill(consts[i], nested, values)
    return code.replace(co_consts=tuple(consts))


def build_many(tests: Sequence[tuple[str, Mapping[str, Any]]]) -> tuple[Test, ...]:
    """Turn ``(source, constants)`` pairs into test functions ``f(c, p, r)``.

    The code generator writes no literal into a source, only the names of its constants
    (``_k0``, ``_k1``...), so the thousands of rules of a large policy have a handful of
    distinct sources (``context.level > K`` is one, whatever K is). Each distinct
    source is compiled once (one ``compile()`` per :data:`CHUNK` new sources) as
    ``def _t(c, p, r): return SOURCE`` with each constant's name turned into a
    placeholder string; a rule's test is a function of that code with the placeholders
    in its ``co_consts`` replaced by the rule's own values. The rule's literals are then
    constants of its code (``LOAD_CONST``), where a closure over them (a factory's
    lambda) read each through a cell and copied the cells into every call's frame,
    about 5% of a condition's cost. The functions' globals are the runtime helpers only.
    """
    keys = [(src, tuple(consts)) for src, consts in tests]
    made: dict[tuple[str, tuple[str, ...]], _Template] = {}
    for key in keys:
        if key not in made:
            found = _templates.get(key)
            if found is not None:
                made[key] = found
    missing = [k for k in dict.fromkeys(keys) if k not in made]
    for start in range(0, len(missing), CHUNK):
        chunk = missing[start:start + CHUNK]
        body = "".join(f"def _t{i}(c, p, r):\n    return {_placeheld(src, names)}\n"
                       for i, (src, names) in enumerate(chunk))
        namespace: dict[str, Any] = dict(RUNTIME)
        exec(compile(body, "<policy conditions>", "exec"), namespace)  # checked AST only
        if len(_templates) + len(chunk) > SHAPE_CACHE_SIZE:
            _templates.clear()
        for i, key in enumerate(chunk):
            made[key] = _templates[key] = _Template(
                namespace.pop(f"_t{i}").__code__, namespace, len(key[1]))
    # Rules whose source and constants are the same get the same test (one function):
    # 100,000 rules ``context.level > i % 7`` hold seven, so deciding for many principals
    # touches a few hot functions instead of one per rule.
    out: list[Test] = []
    for key, (_, consts) in zip(keys, tests, strict=True):
        values = tuple(consts.values())
        same = _constants_key(values)
        if same is None:
            out.append(made[key].make(values))
            continue
        test = _tests.get((key, same))
        if test is None:
            if len(_tests) >= TESTS_KEPT:
                _tests.clear()
            test = _tests[key, same] = made[key].make(values)
        out.append(test)
    return tuple(out)


def _placeheld(src: str, names: tuple[str, ...]) -> str:
    """``src`` with each constant's name (an identifier: the source holds no string
    literal) written as the literal of its placeholder. A constant that is called
    (coverage's recorders) is called through ``.__call__``: a call of a literal is a
    ``SyntaxWarning`` (an error under ``-W error``)."""
    position = {name: i for i, name in enumerate(names)}

    def swap(m: re.Match[str]) -> str:
        i = position.get(m.group(1))
        if i is None:
            return m.group()
        return repr(_PLACEHOLDER.format(i)) + (".__call__(" if m.group(2) else "")

    return _NAME.sub(swap, src)


def _constants_key(values: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """A key equal only for constants no condition can tell apart, or None when they are
    not all plain immutable values (a list, a glob, a file's money, a coverage recorder
    are never shared). Types are part of the key (``1`` is not ``True``), a decimal is
    keyed by its text (``1.0`` is not ``1.00``), and a tuple or frozenset only when it
    holds strings."""
    out: list[Any] = []
    for v in values:
        t = type(v)
        if t is str or t is int:
            out.append((t, v))
        elif t is Decimal:
            out.append((t, str(v)))
        elif (t is tuple or t is frozenset) and all(type(i) is str for i in v):
            out.append((t, v))
        else:
            return None
    return tuple(out)
