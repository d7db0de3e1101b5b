"""What the engine answers: :class:`Decision`, :class:`ToolDecision`, and the exceptions
raised by the ``ensure_*`` helpers and the governed HTTP client.

Decisions are built on the hot path, so they are plain ``__slots__`` classes (no pydantic
validation) and expensive parts such as the decision id are made only when read. Each
answer class refuses every assignment and deletion once built (``AttributeError``, as a
frozen dataclass): the engine fills a writable twin of the same slots
(``_DecisionSlots`` ...) and turns it into the answer class by one ``__class__``
assignment, so building one costs what a plain slots class costs.
``to_wire()`` gives the camelCase shape of the ``/v1/authorize`` and
``/v1/tool-authorize`` responses of the agent SDKs this engine serves.

This module is a leaf: it imports nothing from the engine.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable
from decimal import Decimal
from inspect import Parameter, signature
from operator import attrgetter
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Literal,
    NamedTuple,
    ParamSpec,
    Protocol,
    TypeVar,
)

if TYPE_CHECKING:
    from policyengine.budgets.ledger import BudgetUsage
    from policyengine.budgets.ratelimit import RateLimitUsage

from policyengine.errors import PolicyEngineError

__all__ = [
    "ApprovalRequired",
    "Decision",
    "Diagnostic",
    "FrozenDict",
    "FrozenList",
    "NotAuthorized",
    "Obligations",
    "RuleIds",
    "ShadowOutcome",
    "ToolDecision",
    "ToolDenied",
    "frozen",
    "new_id",
]

Status = Literal["allowed", "denied", "pending_approval"]


class RuleIds(Protocol):
    """What a decision may hold in place of its rule ids until they are read: a shared
    plan-cache entry (``decide._compiled.Entry``), which resolves the ids of a
    principal's rules again when asked. With many principals active, their rule-id
    tuples are spread over memory; a decision that held one would touch it (a reference
    count) on every request, a CPU cache miss, and most callers never read ``rules``."""

    def rule_ids(self, principal: str) -> tuple[str, ...]: ...


# Decision ids: a random per-process prefix plus a counter. ``next()`` on an
# ``itertools.count`` is atomic under the GIL, and this costs ~100 ns, unlike uuid4.
_ID_PREFIX = os.urandom(6).hex()
_counter = itertools.count(1)


def new_id(kind: str = "dec") -> str:
    """Return a process-unique id such as ``dec_3f2a9c1b7e00_42``."""
    return f"{kind}_{_ID_PREFIX}_{next(_counter)}"


def _money_str(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def _refuse_set(self: Any, name: str, value: Any) -> None:
    raise AttributeError(f"a {type(self).__name__} is read-only: cannot set {name!r}")


def _refuse_delete(self: Any, name: str) -> None:
    raise AttributeError(f"a {type(self).__name__} is read-only: cannot delete {name!r}")


_T = TypeVar("_T")


class ReadOnly:
    """What makes an answer class refuse every change once built: ``__setattr__`` and
    ``__delattr__`` raise ``AttributeError`` for every name, public or ``_``-prefixed.

    An answer class is ``class X(_XSlots, ReadOnly)`` with ``__slots__ = ()``: its
    fields live in ``_XSlots``, a plain (writable) slots class with the same layout.
    The engine builds an ``_XSlots``, fills its slots (plain slot stores, which CPython
    specialises) and sets its ``__class__`` to ``X`` (see :func:`build_decision`); from
    then on nothing can be assigned. A field made on first read (the decision id ...) is
    written through its slot's own setter (``_XSlots.__dict__[name].__set__``).

    Not API (a name without ``_`` because explain's ``Explanation`` is one too)."""

    __slots__ = ()
    __setattr__ = _refuse_set
    __delattr__ = _refuse_delete

    def __reduce__(self) -> tuple[Any, ...]:
        """Copied and pickled as its class and the values of its slots."""
        slots = _slots_of(type(self)).__slots__
        return _filled, (type(self), tuple(getattr(self, name) for name in slots))


def _slots_of(cls: type) -> Any:
    """The writable twin of an answer class (or of a subclass of one): the first class
    of its MRO that is not read-only."""
    return next(c for c in cls.__mro__ if not issubclass(c, ReadOnly))


def _filled(cls: type[_T], values: tuple[Any, ...]) -> _T:
    """An answer of class ``cls`` with ``values`` in its slots, in their order (each
    written by its slot's own setter): unpickling, and a subclass's ``__new__``. The
    engine's builders take the faster way (:func:`build_decision`)."""
    made = object.__new__(cls)
    slots = _slots_of(cls)
    for name, value in zip(slots.__slots__, values, strict=True):
        slots.__dict__[name].__set__(made, value)
    return made


def _as(cls: type[_T], made: Any) -> _T:
    """``made``, just built as an answer class, as an instance of ``cls``: ``made``
    itself, unless ``cls`` is a subclass (the same values, in a ``cls``)."""
    if type(made) is cls:
        return made
    slots = _slots_of(type(made)).__slots__
    return _filled(cls, tuple(getattr(made, name) for name in slots))


_P = ParamSpec("_P")


def _field(slot: str, doc: str) -> Any:
    """A read-only field over ``slot``: ``operator.attrgetter`` is a C-level getter, as
    cheap as a slot, and ``doc`` is what ``help()`` shows for it."""
    return property(attrgetter(slot), doc=doc)


def _takes(build: Callable[_P, _T]) -> Callable[[Callable[[type[_T], _T], _T]],
                                                Callable[Concatenate[type[_T], _P], _T]]:
    """Make an answer class's ``__new__(cls, made)`` take the parameters of its builder
    ``build`` (:func:`build_decision` ...), written once, there: ``made`` is what
    ``build`` made of them. Type checkers see ``build``'s parameters, and so do
    ``inspect.signature`` and ``help()``. The engine calls ``build`` itself: its hot
    paths never come here."""

    def decorate(new: Callable[[type[_T], _T], _T]) -> Callable[Concatenate[type[_T], _P], _T]:
        def made_by_build(cls: type[_T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
            return new(cls, build(*args, **kwargs))

        built = signature(build)
        cls = Parameter("cls", Parameter.POSITIONAL_OR_KEYWORD)
        for name in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(made_by_build, name, getattr(new, name))
        setattr(made_by_build, "__signature__",  # noqa: B010 - no such attribute to a type checker
                built.replace(parameters=(cls, *built.parameters.values())))
        return made_by_build

    return decorate


def _of_decision(name: str) -> Any:
    """A tool decision's ``name`` is its decision's: one read-only property, with the
    decision's own attribute named in ``help()``."""
    return property(attrgetter(f"_decision.{name}"),
                    doc=f"The decision's :attr:`Decision.{name}`.")


def wrong_type(name: str, expected: str, value: Any) -> str:
    """``NAME must be EXPECTED, not TYPE``: the reason of an argument of the wrong type,
    naming the argument, what it takes and what it got (the type, never the value, which
    may be long or secret). Built only once a check has failed: a well-formed call never
    formats it."""
    got = ("None" if value is None else "''" if type(value) is str and not value
           else type(value).__name__)  # never value == "": its __eq__ may raise
    return f"{name} must be {expected}, not {got}"


def acting_for_problem(acting_for: Any, token: Any) -> str | None:
    """Why a caller's ``acting_for`` (not None) cannot be used, or None: one check for
    ``authorize``, ``explain``, ``tool_authorize`` and ``explain_tool``. Here, below both
    the decision pipeline and the tool layer, since each refuses a request with it
    before anything else reads the name."""
    if type(acting_for) is not str or not acting_for:
        return wrong_type("acting_for", "a non-empty string", acting_for)
    if token is not None:
        return "acting_for and a token both name whom the agent acts for: give one"
    return None

class _DiagnosticSlots:
    __slots__ = ("_code", "_effect", "_message", "_rule")
    _code: str
    _effect: str
    _message: str
    _rule: str | None


def build_diagnostic(code: str, message: str, rule: str | None = None,
                     effect: str = "") -> Diagnostic:
    """A :class:`Diagnostic`, built as the engine builds one (not API:
    ``Diagnostic(...)`` calls this; see :func:`build_decision`)."""
    d = _DiagnosticSlots()
    d._code = code
    d._message = message
    d._rule = rule
    d._effect = effect
    d.__class__ = Diagnostic
    return d  # type: ignore[return-value]


class Diagnostic(_DiagnosticSlots, ReadOnly):
    """An evaluation problem noted while deciding (never silently dropped).

    ``code`` is stable (``missing_attribute``, ``type_error``, ``unknown_currency`` ...),
    ``rule`` is the qualified id of the rule whose condition failed, or None for the
    request itself, and ``effect`` says what fail-closed did with it.

    Read-only, like the :class:`Decision` it rides on (the decision log records it after
    the call returned, on its own thread): each field is a C-level getter over a
    private slot, and every assignment or deletion raises ``AttributeError``.
    """

    __slots__ = ()

    @_takes(build_diagnostic)
    def __new__(cls, made: Diagnostic) -> Diagnostic:
        return _as(cls, made)

    code: str = _field(
        "_code", "The stable code of the problem (``missing_attribute``, ``no_rate`` ...).")
    message: str = _field("_message", "What went wrong, in words.")
    rule: str | None = _field("_rule", "The qualified id of the rule it happened in, or None.")
    effect: str = _field(
        "_effect", "What it did: ``applied (fail closed)``, ``skipped`` (a permit) or ``denied``.")

    def to_wire(self) -> dict[str, Any]:
        return {"code": self._code, "message": self._message, "rule": self._rule,
                "effect": self._effect}

    def __repr__(self) -> str:
        return f"Diagnostic({self._code!r}, {self._message!r}, rule={self._rule!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Diagnostic) and self.to_wire() == other.to_wire()

    __hash__ = None  # type: ignore[assignment]


def _read_only(self: Any, *args: Any, **kwargs: Any) -> Any:
    raise TypeError(f"a {type(self).__name__} is read-only: it belongs to a decision")


class FrozenDict(dict):  # type: ignore[type-arg]
    """A ``dict`` that refuses every change: what a :class:`ToolDecision` holds (its
    body's objects, its redactions), so the decision log records, on its own thread
    after the call returned, exactly what was decided, and a caller's later change to
    its own input cannot reach it. Reads, ``json.dumps``, equality, ``copy`` and
    pickling work as for a ``dict``; ``dict(d)`` or ``d.copy()`` is a plain, mutable
    copy."""

    __slots__ = ()
    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _read_only
    __ior__ = _read_only

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (dict(self),)


class FrozenList(list):  # type: ignore[type-arg]
    """A ``list`` that refuses every change (see :class:`FrozenDict`)."""

    __slots__ = ()
    __setitem__ = __delitem__ = append = extend = insert = pop = remove = clear = _read_only
    sort = reverse = __iadd__ = __imul__ = _read_only

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (list(self),)


_set_item = dict.__setitem__
_set_index = list.__setitem__


def frozen(value: Any) -> Any:
    """``value`` with every dict, list and tuple in it copied into a :class:`FrozenDict`
    or :class:`FrozenList` (a tuple becomes one too), sharing nothing mutable with it;
    other values (strings, numbers, bytes ...) are kept, and so is a container already
    frozen. A typical tool-call body costs a microsecond or two (one frozen copy per
    container). Without recursion, so any depth is frozen; an object met twice is
    copied once (a cycle stays a cycle, a shared part stays shared)."""
    root = _frozen_one(value)
    if root is value:
        return root
    copies = {id(value): root}
    stack = [root]
    push, pop = stack.append, stack.pop
    while stack:
        container = pop()
        pairs: Iterable[tuple[Any, Any]]
        put: Callable[[Any, Any, Any], None]
        if type(container) is FrozenDict:
            pairs, put = container.items(), _set_item
        else:
            pairs, put = enumerate(container), _set_index
        for key, item in pairs:  # replaces values in place: the size never changes
            kind = type(item)
            if kind is str or kind is int or kind is FrozenDict or kind is FrozenList:
                continue
            copy = copies.get(id(item))
            if copy is None:
                copy = _frozen_one(item)
                if copy is item:
                    continue
                copies[id(item)] = copy
                push(copy)
            put(container, key, copy)
    return root


def _frozen_one(value: Any) -> Any:
    """A shallow frozen copy of one container (its items still to be frozen), or the
    value itself when it is not a dict, list or tuple (or already frozen)."""
    kind = type(value)
    if kind is dict:
        return FrozenDict(value)
    if kind is list or kind is tuple:
        return FrozenList(value)
    if kind is FrozenDict or kind is FrozenList:
        return value
    if isinstance(value, dict):
        return FrozenDict(value)
    if isinstance(value, (list, tuple)):
        return FrozenList(value)
    return value


class ShadowOutcome(NamedTuple):
    """What one shadow statement (``mode warn`` / ``mode log``) would have done to this
    request had it been enforced. Immutable; it never changed the decision it rides on.

    ``id`` is the statement's qualified id; ``kind`` ``rule`` (permit / forbid /
    approval), ``limit``, ``approval_over``, ``budget`` or ``rate_limit``; ``mode``
    ``warn`` (reported to the caller: ``to_wire()`` and the service's responses) or
    ``log`` (the decision log only); ``status`` the status the statement alone would
    have given (``denied``, ``pending_approval`` or ``allowed``); ``code`` the reason code
    it would have given (``forbidden``, ``limit_exceeded``, ``approval_required``,
    ``permitted``, ``budget_exceeded``, ``debt_outstanding``, or the code of the error
    that made a condition fail closed). A named tuple: built on the hot path of a policy
    with shadow statements, so it costs what a tuple costs.
    """

    id: str
    kind: str
    mode: str
    status: str
    code: str

    def to_wire(self) -> dict[str, str]:
        return {"id": self.id, "kind": self.kind, "mode": self.mode, "status": self.status,
                "code": self.code}


class _ObligationsSlots:
    __slots__ = ("_currency", "_max_amount", "_redact_fields", "_require_approval_over")
    _currency: str | None
    _max_amount: Decimal | None
    _redact_fields: tuple[str, ...]
    _require_approval_over: Decimal | None


def build_obligations(max_amount: Decimal | None = None,
                      require_approval_over: Decimal | None = None,
                      redact_fields: tuple[str, ...] = (), currency: str | None = None
                      ) -> Obligations:
    """:class:`Obligations`, built as the engine builds them (not API:
    ``Obligations(...)`` calls this; see :func:`build_decision`)."""
    ob = _ObligationsSlots()
    ob._max_amount = max_amount
    ob._require_approval_over = require_approval_over
    ob._redact_fields = redact_fields
    ob._currency = currency
    ob.__class__ = Obligations
    return ob  # type: ignore[return-value]


class Obligations(_ObligationsSlots, ReadOnly):
    """What an allowed caller must honour. Money values are in ``currency``.

    Read-only, like the :class:`Decision` it rides on: the decision log records it after
    ``authorize`` returns (on its own thread), so a caller that could change it would
    have the log record values the engine never decided. Each field is a C-level getter
    over a private slot (built and read as cheaply as plain slots), and every assignment
    or deletion raises ``AttributeError``.
    """

    __slots__ = ()

    @_takes(build_obligations)
    def __new__(cls, made: Obligations) -> Obligations:
        return _as(cls, made)

    max_amount: Decimal | None = _field(
        "_max_amount", "The cap an allowed amount must stay under (``limit``), in ``currency``.")
    require_approval_over: Decimal | None = _field(
        "_require_approval_over",
        "Amounts over this need approval (``approval ... over``), in ``currency``.")
    redact_fields: tuple[str, ...] = _field("_redact_fields", "The fields the caller must redact.")
    currency: str | None = _field("_currency", "The currency of the money values.")

    def is_empty(self) -> bool:
        return (self._max_amount is None and self._require_approval_over is None
                and not self._redact_fields)

    def to_wire(self) -> dict[str, Any]:
        return {
            "maxAmount": _money_str(self._max_amount),
            "requireApprovalOver": _money_str(self._require_approval_over),
            "redactFields": list(self._redact_fields),
            "currency": self._currency,
        }

    def __repr__(self) -> str:
        return f"Obligations({self.to_wire()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Obligations) and self.to_wire() == other.to_wire()

    __hash__ = None  # type: ignore[assignment]


_MADE: list[Callable[[Any], BudgetUsage]] = []  # budgets.ledger.budget_usage, once read


def _budget_usage(t: tuple[Any, ...]) -> BudgetUsage:
    """The :class:`BudgetUsage` of its tuple (imported when first needed: this module
    imports nothing from the engine when loaded)."""
    if not _MADE:
        from policyengine.budgets.ledger import budget_usage as made
        _MADE.append(made)
    return _MADE[0](t)


class _DecisionSlots:
    __slots__ = (
        "_acting_for",
        "_approval_id",
        "_budget",
        "_chain",
        "_code",
        "_decision_id",
        "_diagnostics",
        "_obligations",
        "_permission",
        "_principal",
        "_rate_limit",
        "_reason",
        "_rules",
        "_shadow",
        "_status",
    )
    _acting_for: str | None
    _approval_id: str | None
    _budget: BudgetUsage | tuple[Any, ...] | None
    _chain: tuple[str, ...] | None
    _code: str
    _decision_id: str | None
    _diagnostics: tuple[Diagnostic, ...]
    _obligations: Obligations | None
    _permission: str | None
    _principal: str | None
    _rate_limit: RateLimitUsage | None
    _reason: str | None
    _rules: tuple[str, ...] | RuleIds
    _shadow: tuple[ShadowOutcome, ...]
    _status: Status


def build_decision(
    status: Status,
    code: str,
    reason: str | None,
    rules: tuple[str, ...] | RuleIds = (),
    obligations: Obligations | None = None,
    diagnostics: tuple[Diagnostic, ...] = (),
    principal: str | None = None,
    permission: str | None = None,
    approval_id: str | None = None,
    acting_for: str | None = None,
    chain: tuple[str, ...] | None = None,
    budget: BudgetUsage | tuple[Any, ...] | None = None,
    shadow: tuple[ShadowOutcome, ...] = (),
    rate_limit: RateLimitUsage | None = None,
) -> Decision:
    """A :class:`Decision`, built as the decision pipeline builds one on every request
    (not API: ``Decision(...)`` takes the same arguments and calls this). Its slots are
    filled in a writable ``_DecisionSlots`` and the finished object becomes a
    ``Decision``, read-only from then on: no ``__setattr__`` call per field."""
    d = _DecisionSlots()
    d._status = status
    d._code = code
    d._reason = reason
    d._rules = rules
    d._obligations = obligations
    d._diagnostics = diagnostics
    d._principal = principal
    d._permission = permission
    d._approval_id = approval_id
    d._acting_for = acting_for
    d._chain = chain
    d._budget = budget
    d._shadow = shadow
    d._rate_limit = rate_limit
    d._decision_id = None
    d.__class__ = Decision
    return d  # type: ignore[return-value]


# The setters of the fields made on first read (a Decision's ``__setattr__`` refuses).
_set_reason = _DecisionSlots.__dict__["_reason"].__set__
_set_rules = _DecisionSlots.__dict__["_rules"].__set__
_set_budget = _DecisionSlots.__dict__["_budget"].__set__
_set_decision_id = _DecisionSlots.__dict__["_decision_id"].__set__


class Decision(_DecisionSlots, ReadOnly):
    """The answer to ``engine.authorize``.

    ``status`` is ``allowed``, ``denied`` or ``pending_approval``; ``code`` is a stable
    reason code (``permitted``, ``forbidden``, ``approval_required``, ``no_permit``,
    ``invalid_request``, ``budget_exceeded``, ``token_*`` ...), ``reason`` the human
    sentence, ``rules`` the qualified ids of the rules that decided.

    A decision is built once, by the last step of the decision pipeline, and never
    changed afterwards: every field is read-only, and assigning or deleting any
    attribute (``_``-prefixed ones too) raises ``AttributeError``. The decision id is
    made on first read, and so is the reason of a decision built without one
    (``permitted by`` its rules): written once, by the engine, through the slot's own
    setter.
    """

    __slots__ = ()

    @_takes(build_decision)
    def __new__(cls, made: Decision) -> Decision:
        return _as(cls, made)

    # Read-only views (``operator.attrgetter`` is a C-level getter, as cheap as a slot).
    status: Status = _field("_status", "``allowed``, ``denied`` or ``pending_approval``.")
    code: str = _field(
        "_code", "The stable reason code (``permitted``, ``forbidden``, ``no_permit`` ...).")

    @property
    def reason(self) -> str:
        """The human sentence. A cached plan's allowed decision leaves it to be spelled
        here, when first read (most decisions are never read that far)."""
        reason = self._reason
        if reason is None:
            reason = "permitted by " + ", ".join(self.rules)
            _set_reason(self, reason)
        return reason

    @property
    def rules(self) -> tuple[str, ...]:
        """The qualified ids of the rules that decided. An allowed decision made from a
        shared plan-cache entry holds the entry instead (:class:`RuleIds`): the ids are
        resolved here when first asked."""
        rules = self._rules
        if type(rules) is not tuple:
            rules = rules.rule_ids(self._principal or "")  # type: ignore[union-attr]
            _set_rules(self, rules)
        return rules

    obligations: Obligations | None = _field(
        "_obligations", "What an allowed caller must honour (:class:`Obligations`), or None.")
    diagnostics: tuple[Diagnostic, ...] = _field(
        "_diagnostics", "Evaluation problems met on the way (:class:`Diagnostic`).")
    principal: str | None = _field("_principal", "The principal asked about.")
    permission: str | None = _field("_permission", "The permission asked for.")
    approval_id: str | None = _field(
        "_approval_id", "The approval this decision registered (``pending_approval`` only).")
    acting_for: str | None = _field(
        "_acting_for", "Under a delegation grant: whom the principal acts for.")
    chain: tuple[str, ...] | None = _field(
        "_chain", "Under a delegation grant: the chain, ``acting_for`` first.")

    @property
    def budget(self) -> BudgetUsage | None:
        """The refusing budget (denied) or the tightest covering budget (otherwise). A
        budget-checked decision may hold the tuple it is made of (``BudgetUsage._t``),
        made into the :class:`BudgetUsage` here when first read."""
        budget = self._budget
        if isinstance(budget, tuple):
            budget = _budget_usage(budget)
            _set_budget(self, budget)
        return budget

    shadow: tuple[ShadowOutcome, ...] = _field(
        "_shadow", "What the shadow statements (``mode warn`` / ``mode log``) would have done, "
        "rules then budgets; empty without any.")

    @property
    def warnings(self) -> tuple[ShadowOutcome, ...]:
        """The ``mode warn`` outcomes of :attr:`shadow`: what the caller is told."""
        return tuple(s for s in self._shadow if s.mode == "warn")
    rate_limit: RateLimitUsage | None = _field(
        "_rate_limit",
        "The rate limit that refused the call (``rate_limited``: its retry-after), or None.")

    @property
    def allowed(self) -> bool:
        """True when :attr:`status` is ``allowed``."""
        return self._status == "allowed"

    @property
    def decision_id(self) -> str:
        """Made on first read: most decisions are never logged by id."""
        made = self._decision_id
        if made is None:
            made = new_id("dec")
            _set_decision_id(self, made)
        return made

    @classmethod
    def denial(cls, code: str, reason: str, principal: Any, permission: Any,
               diagnostic: str | None = None, acting_for: str | None = None,
               chain: tuple[str, ...] | None = None) -> Decision:
        """A denial decided before any rule ran (malformed request, token, egress): one
        diagnostic (code ``diagnostic`` or ``code``) says why. Non-string principals and
        permissions are not echoed back."""
        return _as(cls, build_decision(
            "denied", code, reason, (), None,
            (build_diagnostic(diagnostic or code, reason, None, "denied"),),
            principal if type(principal) is str else None,
            permission if type(permission) is str else None, None, acting_for, chain))

    def to_wire(self) -> dict[str, Any]:
        """The ``POST /v1/authorize`` response shape (camelCase)."""
        wire: dict[str, Any] = {
            "allowed": self._status == "allowed",
            "status": self._status,
            "reason": self.reason,
            "reasonCode": self._code,
            "decisionId": self.decision_id,
            "approvalId": self._approval_id,
            "actingFor": self._acting_for,
            "chain": list(self._chain) if self._chain is not None else None,
            "rules": list(self.rules),
            "obligations": (self._obligations.to_wire() if self._obligations is not None
                            else None),
            "diagnostics": [d.to_wire() for d in self._diagnostics],
        }
        if self._budget is not None:
            wire["budget"] = self.budget.to_wire()  # type: ignore[union-attr]
        if self._shadow:
            warned = [s.to_wire() for s in self._shadow if s.mode == "warn"]
            if warned:  # ``mode log`` outcomes go to the decision log only
                wire["shadow"] = warned
        if self._rate_limit is not None:
            wire["rateLimit"] = self._rate_limit.to_wire()
        return wire

    def __repr__(self) -> str:
        return (f"Decision(status={self._status!r}, code={self._code!r}, "
                f"rules={self.rules!r}, reason={self.reason!r})")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its rule ids, never the plan-cache entry they may be held in."""
        self.rules  # noqa: B018 - read once: the ids replace the entry
        return super().__reduce__()


#: The type of a tuple of redactions that are already read-only (``tools.redact``
#: makes them so, and shares one per (field, strategy)).
_FROZEN_ONLY = frozenset({FrozenDict})


def _frozen_redactions(redactions: Any) -> tuple[FrozenDict, ...]:
    """Each ``{"field", "strategy"}`` as a :class:`FrozenDict`, the same one for the
    same pair (from the one bounded cache of records, ``tools._redaction``)."""
    if type(redactions) is tuple and _FROZEN_ONLY.issuperset(map(type, redactions)):
        return redactions
    from policyengine.tools._redaction import frozen_record  # not on the path above
    return tuple([r if type(r) is FrozenDict else frozen_record(r) for r in redactions])


class _ToolDecisionSlots:
    __slots__ = ("_body", "_decision", "_outcome", "_redactions", "_tool")
    _body: Any
    _decision: Decision
    _outcome: str
    _redactions: tuple[FrozenDict, ...]
    _tool: str | None


def build_tool_decision(decision: Decision, outcome: str, body: Any = None,
                        redactions: tuple[dict[str, str], ...] = (),
                        tool: str | None = None) -> ToolDecision:
    """A :class:`ToolDecision`, built as the tool stage builds one (not API:
    ``ToolDecision(...)`` takes the same arguments and calls this; see
    :func:`build_decision`)."""
    td = _ToolDecisionSlots()
    td._decision = decision
    td._outcome = outcome
    td._body = body
    td._redactions = _frozen_redactions(redactions) if redactions else ()
    td._tool = tool
    td.__class__ = ToolDecision
    return td  # type: ignore[return-value]


class ToolDecision(_ToolDecisionSlots, ReadOnly):
    """The answer to ``engine.tool_authorize``: a :class:`Decision` plus egress facts.

    ``outcome`` is one of ``policy_allow``, ``policy_deny``, ``egress_deny``,
    ``route_deny``, ``pending_approval``, ``invalid_request``, ``budget_deny``,
    ``rate_limited``.
    ``body`` is a redacted copy of the request body; the caller's object is untouched.

    The fields of its :attr:`decision` (``allowed``, ``status``, ``code``, ``principal``,
    ``acting_for``, ``chain``, ``budget``, ``rate_limit`` ...) are read through to it, so
    code given either answer reads them the same way (``ensure_authorized``, a
    ``NotAuthorized`` handler, a caller's own logging); the wire form is the decision's
    with the tool's fields added (:meth:`to_wire`).

    Read-only, as a :class:`Decision` (assigning or deleting any attribute raises
    ``AttributeError``): each of ``redactions`` is a :class:`FrozenDict`.
    ``body`` is the redaction's copy-on-write result: the containers on the way to a
    redacted value are new, the rest are the caller's own objects, shared (treat it as
    read-only). It is not frozen here because a full copy of every body costs about a
    fifth of a ``tool_authorize``; the decision log, which records the body on its own
    thread after the call returned, takes a :func:`frozen` copy of it instead.
    """

    __slots__ = ()

    @_takes(build_tool_decision)
    def __new__(cls, made: ToolDecision) -> ToolDecision:
        return _as(cls, made)

    decision: Decision = _field(
        "_decision", "The authorize :class:`Decision` the call was decided by.")
    outcome: str = _field(
        "_outcome", "``policy_allow``, ``policy_deny``, ``route_deny``, ``egress_deny`` ...: why.")
    body: Any = _field("_body", "The body to send: a redacted copy (the caller's is untouched).")
    redactions: tuple[dict[str, str], ...] = _field(
        "_redactions", "The redactions made: ``{field, strategy}`` each.")
    tool: str | None = _field(
        "_tool", "The qualified id of the tool the call was bound to, or None.")
    allowed: bool = _of_decision("allowed")
    status: Status = _of_decision("status")
    reason: str = _of_decision("reason")
    code: str = _of_decision("code")
    rules: tuple[str, ...] = _of_decision("rules")
    principal: str | None = _of_decision("principal")
    permission: str | None = _of_decision("permission")
    diagnostics: tuple[Diagnostic, ...] = _of_decision("diagnostics")
    obligations: Obligations | None = _of_decision("obligations")
    approval_id: str | None = _of_decision("approval_id")
    decision_id: str = _of_decision("decision_id")
    acting_for: str | None = _of_decision("acting_for")
    chain: tuple[str, ...] | None = _of_decision("chain")
    budget: BudgetUsage | None = _of_decision("budget")
    rate_limit: RateLimitUsage | None = _of_decision("rate_limit")
    shadow: tuple[ShadowOutcome, ...] = _of_decision("shadow")
    warnings: tuple[ShadowOutcome, ...] = _of_decision("warnings")

    def to_wire(self) -> dict[str, Any]:
        """The ``POST /v1/tool-authorize`` response shape (camelCase): the authorize
        shape plus ``outcome``, ``permission``, ``tool`` and ``redactions``."""
        wire = self.decision.to_wire()
        wire["outcome"] = self.outcome
        wire["permission"] = self.decision.permission
        wire["tool"] = self.tool
        wire["redactions"] = [dict(r) for r in self.redactions]
        return wire

    def __repr__(self) -> str:
        return (f"ToolDecision(status={self.status!r}, outcome={self.outcome!r}, "
                f"permission={self.permission!r}, reason={self.reason!r})")


class NotAuthorized(PolicyEngineError):  # noqa: N818 - the name users expect
    """Raised by ``ensure_authorized`` (and the governed client) on a deny; ``code`` is
    the decision's code, ``message`` its reason."""

    def __init__(self, decision: Decision | ToolDecision) -> None:
        super().__init__(decision.code, decision.reason)
        self.decision = decision


class ApprovalRequired(NotAuthorized):
    """Raised when the decision is ``pending_approval``; ``approval_id`` says which."""

    @property
    def approval_id(self) -> str | None:
        return self.decision.approval_id


class ToolDenied(NotAuthorized):
    """Raised by the governed HTTP client before a denied request leaves the process."""

    @property
    def outcome(self) -> str:
        return self.decision.outcome if isinstance(self.decision, ToolDecision) else "policy_deny"

