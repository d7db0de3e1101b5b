"""Runner for ``kind: budget`` conformance cases (``conformance/budgets/*.json``).

A case is a sequence of steps run against one fresh ledger whose clock starts at the
fixture's ``now`` and moves only with ``advance`` steps::

    {"name": "...", "kind": "budget", "steps": [
        {"op": "reserve", "args": {"principal": "bot", "permission": "payments:refund",
                                   "amount": "80", "currency": "EUR", "as": "r1"},
         "expect": {"status": "active", "lines": [{"budget": "default.daily",
                                                   "amount": "80.00"}]}},
        {"op": "commit", "args": {"reservation": "r1", "amount": "75"},
         "expect": {"status": "committed"}},
        {"op": "check", "args": {...}, "expect": {"allowed": false,
                                                 "code": "budget_exceeded"}},
        {"op": "advance", "args": {"seconds": 3600}}]}

Ops: ``reserve``, ``record``, ``commit``, ``release``, ``extend``, ``check``,
``admit`` (the check ``authorize`` makes: every covering budget, whatever the amount;
no ``amount`` is a request without one), ``balances``, ``price`` (the price table:
``provider``, ``model``, ``inputTokens``, ``cachedInputTokens``, ``outputTokens``;
``expect`` matches ``Price.to_wire()``, or ``{"unpriced": true}``), ``advance`` (``seconds`` or
``to``: an RFC 3339 UTC time), ``reservations`` (a listing page: ``tenant``, ``status``,
``principal``, ``limit``, ``after``: the name a previous page's ``as`` gave its cursor;
``expect`` is ``{"reservations": [names, in order], "more": bool}``), ``remember``
(``key``, ``text``, ``ttl``) and ``recall`` (``key``), whose ``expect`` is ``{"text":
the text kept, or null}``. Argument keys are
camelCase (``idempotencyKey``,
``actingFor``); ``usage`` (reserve, record, check, admit, commit) is an LLM usage
``{"provider", "model", "inputTokens", "cachedInputTokens", "outputTokens"}`` priced by
the policy's price table (anything but an object is passed as it is, to be refused);
``scope`` is an object of request fields (``{"workspace": "w1", "run_id": "r1"}``) for
budgets per hierarchy level or per ``context.NAME``; ``as`` names
the returned reservation and ``reservation`` refers to a
name (or is taken as a literal id).

Two ops run the whole decision pipeline of the engine the factory built (it may return
the ``Engine`` rather than its ledger): ``authorize`` (``principal``, ``permission``,
``context``, and the engine's ``partition``, ``partition_agent`` (a boolean; camelCase
``partitionAgent`` too), ``acting_for`` and ``token``; ``expect`` matches
``Decision.to_wire()``: ``reasonCode``, ``rateLimit`` with ``retryAfterMs`` ...;
``"shadow": null`` means no ``shadow`` key) and ``explain`` (the same, counting
nothing): rate limits and their order with budgets, and what shadow
budgets hold, are pinned this way.

``expect`` is matched as a subset of the step's wire result (``Reservation.to_wire()``,
``BudgetCheck.to_wire()`` for ``check`` and ``admit``, or ``{"balances":
[Balance.to_wire(), ...]}`` where each expected balance is matched to the actual one with
the same ``budget`` and ``subject``): every expected key must be present and equal;
lists must have the same length. Special keys: ``error`` (the expected error code;
``details`` then matches the error's details), ``sameAs`` (the result's id equals that of
a named reservation), ``count`` (number of balances), ``caps`` (on a reservation: the
Cycles caps its budgets declare, ``ledger.caps_of``). A step without ``expect`` must
succeed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from policyengine.budgets.errors import BudgetError
from policyengine.budgets.ledger import Ledger
from policyengine.budgets.pricing import LLMUsage

__all__ = ["run_budget_case"]

#: Builds the ledger (or the engine holding it, for ``authorize`` steps) for a clock.
LedgerFactory = Callable[[Callable[[], float]], Any]

_ARG_NAMES = {
    "idempotencyKey": "idempotency_key",
    "actingFor": "acting_for",
    "partitionAgent": "partition_agent",
    "inputTokens": "input_tokens",
    "cachedInputTokens": "cached_input_tokens",
    "outputTokens": "output_tokens",
}
_SPEND_ARGS = frozenset({"principal", "permission", "amount", "currency", "acting_for",
                         "tenant", "scope", "usage"})
_ALLOWED_ARGS: dict[str, frozenset[str]] = {
    "reserve": _SPEND_ARGS | {"ttl", "idempotency_key", "grace", "overage", "note"},
    "record": _SPEND_ARGS | {"idempotency_key", "overage"},
    "check": _SPEND_ARGS,
    "admit": _SPEND_ARGS,
    "commit": frozenset({"amount", "currency", "idempotency_key", "overage", "usage"}),
    "price": frozenset({"provider", "model", "input_tokens", "cached_input_tokens",
                        "output_tokens"}),
    "release": frozenset({"idempotency_key"}),
    "extend": frozenset({"ttl", "by", "idempotency_key"}),
    "balances": frozenset({"principal", "acting_for", "tenant", "scope", "level"}),
    "reservations": frozenset({"tenant", "status", "principal", "limit", "after"}),
    "remember": frozenset({"key", "text", "ttl"}),
    "recall": frozenset({"key"}),
    "authorize": frozenset({"principal", "permission", "context", "partition",
                            "partition_agent", "acting_for", "token"}),
    "explain": frozenset({"principal", "permission", "context", "partition",
                          "partition_agent", "acting_for", "token"}),
}


def _time(value: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    raise ValueError(f"bad time {value!r}")


def _subset(expected: object, actual: object, path: str) -> str | None:
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            return f"{path}: expected an object, got {actual!r}"
        for key, value in expected.items():
            if key not in actual:
                return f"{path}.{key}: missing (got keys {sorted(actual)})"
            problem = _subset(value, actual[key], f"{path}.{key}")
            if problem:
                return problem
        return None
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return f"{path}: expected {len(expected)} items, got {actual!r}"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            problem = _subset(e, a, f"{path}[{i}]")
            if problem:
                return problem
        return None
    if expected != actual or type(expected) is not type(actual):
        return f"{path}: expected {expected!r}, got {actual!r}"
    return None


def _balances(expected: Mapping[str, Any], actual: list[dict[str, Any]]) -> str | None:
    if "count" in expected and expected["count"] != len(actual):
        return f"balances: expected {expected['count']} entries, got {len(actual)}"
    for i, want in enumerate(expected.get("balances", [])):
        match = [
            a for a in actual
            if a["budget"] == want.get("budget") and a["subject"] == want.get("subject")
        ]
        if not match:
            return f"balances[{i}]: no balance for {want.get('budget')}/{want.get('subject')}"
        problem = _subset(want, match[0], f"balances[{i}]")
        if problem:
            return problem
    return None


def run_budget_case(
    ledger_factory: LedgerFactory, case: Mapping[str, Any], now: object = None
) -> str | None:
    """Run one ``kind: budget`` case; return None if it passes, else why it failed.

    ``ledger_factory(clock)`` builds the ledger for the fixture's policies with the given
    clock. ``now`` is the fixture's start time (RFC 3339 or POSIX seconds); a case may
    override it with its own ``now``.
    """
    start = case.get("now", now)
    if start is None:
        return "no start time: pass the fixture's 'now'"
    clock = [_time(start)]
    built = ledger_factory(lambda: clock[0])
    engine = built if hasattr(built, "authorize") else None
    ledger = built.budgets if engine is not None else built
    names: dict[str, str] = {}
    for n, step in enumerate(case.get("steps", [])):
        where = f"step {n} ({step.get('op')})"
        try:
            if step.get("op") in ("authorize", "explain"):
                problem = _decide(engine, step)
            else:
                problem = _run_step(ledger, step, names, clock)
        except (KeyError, TypeError, ValueError) as exc:
            # BudgetErrors are handled per step; these mean the fixture itself is broken.
            return f"{where}: malformed step: {exc!r}"
        if problem:
            return f"{where}: {problem}"
    return None


def _decide(engine: Any, step: Mapping[str, Any]) -> str | None:
    if engine is None:
        return "an authorize step needs the engine (the factory returned a ledger)"
    args: dict[str, Any] = {_ARG_NAMES.get(k, k): v for k, v in step.get("args", {}).items()}
    unknown = set(args) - _ALLOWED_ARGS["authorize"]
    if unknown:
        return f"unknown args {sorted(unknown)}"
    # absent: None, as the engine's defaults (no partition, no acting_for, no token)
    given = {k: args.get(k) for k in ("partition", "acting_for", "token")}
    # partition_agent is a flag the engine reads by truth: a fixture's "false" or 1
    # would count in the partition unmeant, so anything but a boolean (or null, absent)
    # is the fixture's fault, not a decision to compare.
    agent = args.get("partition_agent")
    if agent is not None and type(agent) is not bool:
        return f"partition_agent: true, false or null, not {agent!r}"
    if agent:
        given["partition_agent"] = True
    if step["op"] == "explain":
        decision = engine.explain(args["principal"], args["permission"],
                                  args.get("context"), **given).decision.to_wire()
    else:
        decision = engine.authorize(args["principal"], args["permission"],
                                    args.get("context"), **given).to_wire()
    want = dict(step.get("expect", {}))
    if "shadow" in want and want["shadow"] is None:  # no `mode warn` outcome: no key
        del want["shadow"]
        if "shadow" in decision:
            return f"decision: expected no shadow, got {decision['shadow']}"
    return _subset(want, decision, "decision")


def _run_step(
    ledger: Ledger, step: Mapping[str, Any], names: dict[str, str], clock: list[float]
) -> str | None:
    op = step["op"]
    raw: dict[str, Any] = dict(step.get("args", {}))
    expect: Mapping[str, Any] = step.get("expect", {})
    if op == "advance":
        if "to" in raw:
            clock[0] = _time(raw["to"])
        else:
            clock[0] += float(raw["seconds"])
        return None
    alias = raw.pop("as", None)
    ref = raw.pop("reservation", None)
    kwargs = {_ARG_NAMES.get(k, k): v for k, v in raw.items()}
    unknown = set(kwargs) - _ALLOWED_ARGS.get(op, frozenset())
    if op not in _ALLOWED_ARGS:
        return f"unknown op {op!r}"
    if unknown:
        return f"unknown args {sorted(unknown)}"
    rid = names.get(ref, ref) if isinstance(ref, str) else ref
    if isinstance(kwargs.get("usage"), Mapping):
        kwargs["usage"] = {_ARG_NAMES.get(k, k): v for k, v in kwargs["usage"].items()}
    result: Any
    try:
        if isinstance(kwargs.get("usage"), Mapping):  # else as it is (a refusal)
            kwargs["usage"] = LLMUsage(**kwargs["usage"])
        if op == "price":
            if ledger.prices is None:
                return "the policy has no price table"
            price = ledger.prices.price(**kwargs)
            got = None if price is None else price.to_wire()
            if expect.get("unpriced"):
                return None if got is None else f"expected no price, got {got}"
            return "no price" if got is None else _subset(dict(expect), got, "result")
        if op == "reserve":
            result = ledger.reserve(**kwargs)
        elif op == "record":
            result = ledger.record(**kwargs)
        elif op == "check":
            result = ledger.check(**kwargs)
        elif op == "admit":  # what authorize asks; ``currency`` is the amount's unit
            unit = kwargs.pop("currency", None)
            result = ledger.admit(**kwargs, unit=unit)
        elif op == "commit":
            result = ledger.commit(rid, **kwargs)
        elif op == "release":
            result = ledger.release(rid, **kwargs)
        elif op == "extend":
            result = ledger.extend(rid, **kwargs)
        elif op in ("remember", "recall"):
            kept = ledger.remember(**kwargs) if op == "remember" else ledger.recall(**kwargs)
            return _subset(dict(expect), {"text": kept}, "result")
        elif op == "reservations":
            after = kwargs.pop("after", None)
            if after is not None:
                kwargs["cursor"] = names.get(after, after)
            result = ledger.reservations(**kwargs)
        else:
            result = ledger.balances(**kwargs)
    except BudgetError as exc:
        if "error" not in expect:
            return f"unexpected error {exc.code}: {exc.message}"
        if exc.code != expect["error"]:
            return f"expected error {expect['error']}, got {exc.code}: {exc.message}"
        if "details" in expect:
            return _subset(expect["details"], exc.details, "details")
        return None
    if "error" in expect:
        return f"expected error {expect['error']}, but the step succeeded"
    if op == "balances":
        return _balances(expect, [b.to_wire() for b in result])
    if op == "reservations":
        if alias is not None and result.cursor is not None:
            names[alias] = result.cursor
        named = {rid: name for name, rid in names.items()}
        got = {"reservations": [named.get(r.id, r.id) for r in result.reservations],
               "more": result.cursor is not None}
        return _subset(dict(expect), got, "result")
    wire = result.to_wire()
    if alias is not None:
        names[alias] = wire["id"]
    want = dict(expect)
    same = want.pop("sameAs", None)
    if "caps" in want and op in ("reserve", "record", "commit", "extend"):
        caps = want.pop("caps")
        if ledger.caps_of(result) != caps:
            return f"caps: expected {caps}, got {ledger.caps_of(result)}"
    if same is not None and wire.get("id") != names.get(same):
        return f"expected the result of {same!r} ({names.get(same)}), got {wire.get('id')}"
    return _subset(want, wire, "result")
