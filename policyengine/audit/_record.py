"""Decision-log records: what the writer thread builds from what the hot path captured.

The hot path captures references to immutable things (the :class:`Decision`, strings, a
shallow copy of the context) and the writer thread, off the hot path, turns them into one
record (a ``dict``): masking, token ids and time formatting all happen here. The schema is
documented, field by field, in docs/decision-log.md; :data:`SCHEMA` names its version.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from decimal import Decimal
from operator import attrgetter
from typing import Any, Final

import orjson

from policyengine._json import decimal_text
from policyengine.audit._chain import KEY_LEAVES, json_form
from policyengine.decision import FrozenDict, FrozenList
from policyengine.tools._redaction import MASK, RedactionPlan, RedactionRule

__all__ = [
    "CREDENTIAL_KEYS",
    "SCHEMA",
    "LogView",
    "decision_record",
    "event_record",
    "mask_input",
    "rfc3339",
    "scrub",
    "token_ids",
]

#: The schema version every record carries in ``schema``.
SCHEMA: Final = "policyengine.decision-log/1"

#: Keys whose values are credentials wherever they appear in an input (compared after
#: lower-casing and ``-`` -> ``_``): the log holds a mask in their place, never the value.
CREDENTIAL_KEYS: Final = frozenset({
    "authorization", "proxy_authorization", "cookie", "set_cookie", "password", "passwd",
    "secret", "client_secret", "token", "access_token", "refresh_token", "id_token",
    "api_key", "apikey", "x_api_key", "private_key", "x_ingest_key", "ingest_key",
    "bearer", "credentials", "session_token",
})


class LogView:
    """What a record needs from the policy in force: its revision and its ``log redact``
    rules (with the engine's HMAC key for ``hash``). One per loaded policy, immutable, so
    the hot path captures one reference."""

    __slots__ = ("bundles", "by_key", "hmac_key", "plan", "revision", "rules")

    def __init__(self, revision: str, rules: tuple[RedactionRule, ...] = (),
                 hmac_key: bytes | None = None) -> None:
        self.revision = revision
        self.rules = rules
        self.hmac_key = hmac_key
        #: The rules with their key, checked once (the writer applies them to every record).
        self.plan = RedactionPlan(rules, hmac_key=hmac_key)
        #: The same rules walked by object key, when they allow it (the common case).
        self.by_key = _KeyRedactions.build(self.plan)
        #: The records' ``bundles`` member, made once (records only read it).
        self.bundles = {"policy": {"revision": revision}}


class _KeyRedactions:
    """``log redact`` rules whose paths are object keys only (``$.context.card``), none
    inside another's value, none twice: applied by following those keys alone, copying
    only the objects on the way to a change. The result equals ``RedactionPlan.apply``
    (a property test holds them equal); anything else takes the plan's general route."""

    __slots__ = ("key", "rules", "trie")

    def __init__(self, plan: RedactionPlan, trie: dict[str, Any], key: bytes | None) -> None:
        self.rules = plan.rules
        self.trie = trie  # key -> (index of the rule ending here, or None; subtrie or None)
        self.key = key

    @classmethod
    def build(cls, plan: RedactionPlan) -> _KeyRedactions | None:
        key = plan.hmac_key
        trie: dict[str, Any] = {}
        for index, rule in enumerate(plan.rules):
            steps = rule.compiled.direct_steps
            names = [s for s in steps or () if type(s) is str]
            if not steps or len(steps) > 32 or len(names) != len(steps):
                return None
            if rule.strategy == "hash" and key is None:
                return None  # the plan reports the missing key
            node = trie
            for step in names[:-1]:
                entry = node.get(step)
                if entry is None:
                    entry = node[step] = (None, {})
                elif entry[0] is not None:
                    return None  # inside the value another rule replaces
                node = entry[1]
            if names[-1] in node:
                return None  # the same path twice, or above another rule
            node[names[-1]] = (index, None)
        return cls(plan, trie, key) if trie else None

    def apply(self, doc: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
        """(redacted copy, masked paths, erased paths) in rule order. Raises what a
        replacement raises (the caller then takes the general route)."""
        hits: list[int] = []  # the indexes of the rules applied, in walk order
        out = self._walk(doc, self.trie, hits)
        masked: list[str] = []
        erased: list[str] = []
        if hits:
            if len(hits) > 1:
                hits.sort()  # rule order (the walk goes key by key)
            rules = self.rules
            for index in hits:
                rule = rules[index]
                (erased if rule.strategy == "remove" else masked).append(rule.path)
        return out, masked, erased

    def _walk(self, doc: dict[str, Any], node: dict[str, Any], hits: list[int]
              ) -> dict[str, Any]:
        out: dict[str, Any] | None = None
        for name, (index, child) in node.items():
            if name not in doc:
                continue
            value = doc[name]
            if index is not None:
                rule = self.rules[index]
                hits.append(index)
                if out is None:
                    out = doc.copy()
                strategy = rule.strategy
                if strategy == "remove":
                    del out[name]
                elif strategy == "mask":
                    out[name] = MASK
                elif strategy == "partial" and type(value) is str:
                    # rule.replacement's partial of a string, without its three calls
                    keep = rule.keep
                    hidden = len(value) - keep
                    out[name] = "*" * len(value) if hidden <= 0 else \
                        "*" * hidden + value[-keep:]
                else:
                    out[name] = rule.replacement(value, self.key)
            elif type(value) is dict or isinstance(value, dict):
                new = self._walk(value, child, hits)
                if new is not value:
                    if out is None:
                        out = doc.copy()
                    out[name] = new
        return doc if out is None else out


_NO_BUNDLES: Final = {"policy": {"revision": None}}


_last_second = -1
_last_prefix = ""


def rfc3339(ns: int) -> str:
    """``2026-01-01T00:00:00.000000000Z`` from POSIX nanoseconds (OPA's ``timestamp``)."""
    global _last_second, _last_prefix
    sec, frac = divmod(ns, 1_000_000_000)
    if sec != _last_second:
        _last_prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
        _last_second = sec
    # The nine digits of the fraction: the digits of 10**9 + frac but its leading 1
    # (cheaper than a format spec on the writer's per-record path).
    return _last_prefix + str(1_000_000_000 + frac)[1:] + "Z"


def _is_jwt(value: str) -> bool:
    # A compact JWS or JWE: base64url segments, the first a JSON header ("eyJ" = '{"').
    return value.startswith("eyJ") and value.count(".") in (2, 4) and " " not in value


#: key -> its verdict (bounded cache): :data:`_PLAIN_KEY`, :data:`_CREDENTIAL_NAME` (its
#: value is masked) or :data:`_JWT_KEY` (the key itself is masked; never cached).
_credential_keys: dict[str, int] = {}
_PLAIN_KEY: Final = 0
_CREDENTIAL_NAME: Final = 1
_JWT_KEY: Final = 2
#: The keys of that cache that are neither: a dict whose keys are all here has none
#: (one C-level ``issuperset`` instead of a look-up per key).
_plain_keys: set[str] = set()
_PLAIN = (int, float, bool, type(None))
#: Exact types the scan leaves as they are: the encoder writes them as text of no one's
#: choosing (digits, an ISO date, a UUID). Every other type that is not a ``str``, a
#: dict, a list or a tuple is replaced by its JSON form (:func:`json_form`) and that is
#: scanned: the scan hands the encoder nothing it has not looked into.
_LEAVES: Final = frozenset({*_PLAIN, Decimal, *KEY_LEAVES})


def _key_verdict(key: str) -> int:
    found = _credential_keys.get(key)
    if found is None:
        if len(key) > 20 and _is_jwt(key):
            return _JWT_KEY
        found = _CREDENTIAL_NAME if key.lower().replace("-", "_") in CREDENTIAL_KEYS \
            else _PLAIN_KEY
        if len(_credential_keys) < 65_536:
            _credential_keys[key] = found
            if not found:
                _plain_keys.add(key)
    return found


def _written_key(key: Any, path: str, masked: list[str], depth: int) -> tuple[Any, int]:
    """(the key as the log writes it, its verdict) for a key that is not a plain ``str``
    of the cache: a JWT is written as the mask; a key of another type as its JSON form
    with the credentials in it masked (text for a container: ``[1,"a"]``), since the
    encoder writes a key as text. Before, such a key was written as its ``repr``."""
    if type(key) is str:
        verdict = _key_verdict(key)
        if verdict != _JWT_KEY:
            return key, verdict
        masked.append(f"{path}.{MASK}")
        return MASK, _PLAIN_KEY
    if type(key) in KEY_LEAVES:
        return key, _PLAIN_KEY
    inside: list[str] = []
    form = scrub(key, path, inside, depth + 1)
    if type(form) in KEY_LEAVES:
        return form, _PLAIN_KEY
    if type(form) is str:
        text = form
    elif type(form) is Decimal:
        text = decimal_text(form)
    else:
        try:
            text = orjson.dumps(form, default=json_form,
                                option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # a huge int in it, a lone surrogate: the type's name only
            text = f"<{type(key).__name__}>"
    verdict = _key_verdict(text) if text is not MASK else _PLAIN_KEY
    if verdict == _JWT_KEY:
        text, verdict = MASK, _PLAIN_KEY
        inside.append(path)
    if inside:
        masked.append(f"{path}.{text}")
    return text, verdict


def scrub(value: Any, path: str, masked: list[str], depth: int = 0,
          forms: list[str] | None = None) -> Any:
    """``value`` with every credential replaced by the mask: values under a
    :data:`CREDENTIAL_KEYS` key and strings that are JWTs (dict keys too). Every dict,
    list and tuple is copied before it is looked into, and the copy is what is
    returned: the caller may still hold (and change) the containers of an input, and
    what the encoder writes must be what was scanned, not a container changed after its
    scan (strings, numbers and the other leaves cannot change). The paths replaced are
    appended to ``masked``.

    The scan looks into exactly what the encoder writes: a ``str``, a dict (its storage,
    as orjson reads a subclass), a list (likewise), a tuple, and the exact types of
    :data:`_LEAVES` are taken as they are; anything else (a set, a frozenset, an enum,
    a dataclass, a ``str`` subclass, bytes, an object) is replaced by
    :func:`json_form`, the encoder's own ``default`` hook, and that form is scanned and
    returned. So what is written is what was scanned, whatever the container. The
    paths where the input was not a dict or list of its own (a form was taken, a tuple,
    a dict or list subclass but the engine's frozen ones) are appended to ``forms`` when
    given: ``log redact`` rules walk dicts and lists only (:func:`mask_input`)."""
    if depth > 64:
        masked.append(path)
        return MASK
    kind = type(value)
    if kind is str:
        if len(value) > 20 and _is_jwt(value):
            masked.append(path)
            return MASK
        return value
    if kind is dict:
        out: dict[Any, Any] = dict(value)  # what is scanned, and written: see above
        if not _plain_keys.issuperset(out):
            return _scrub_dict(out, path, masked, depth, forms)
        # Keys all known plain names (the common case): only the values are looked at.
        for k, v in out.items():
            vk = type(v)
            if vk is str:
                if len(v) <= 20 or not _is_jwt(v):
                    continue
                new: Any = MASK  # a JWT
                masked.append(f"{path}.{k}")
            elif vk in _PLAIN:
                continue
            else:
                new = scrub(v, f"{path}.{k}", masked, depth + 1, forms)
            out[k] = new  # a value of a key already there: the loop goes on
        return out
    if isinstance(value, dict):
        if forms is not None and kind is not FrozenDict:
            forms.append(path)
        return _scrub_dict(dict(dict.items(value)), path, masked, depth, forms)
    if kind is list or kind is tuple or isinstance(value, list):
        if kind is not list and forms is not None and kind is not FrozenList:
            forms.append(path)
        items_ = list(value) if kind is list or kind is tuple else list.copy(value)
        for i, v in enumerate(items_):
            vk = type(v)
            if vk is str:
                if len(v) <= 20 or not _is_jwt(v):
                    continue
            elif vk in _PLAIN:
                continue
            items_[i] = scrub(v, f"{path}[{i}]", masked, depth + 1, forms)
        return items_
    if kind in _LEAVES:
        return value
    # Anything else is written as its JSON form: that is what is scanned, and logged.
    if forms is not None:
        forms.append(path)
    return scrub(json_form(value), path, masked, depth + 1, forms)


def _scrub_dict(out: dict[Any, Any], path: str, masked: list[str], depth: int,
                forms: list[str] | None) -> dict[Any, Any]:
    """:func:`scrub` of a dict with a key not known plain (a credential's name, a JWT, a
    key of another type, a key not seen yet) or of a dict subclass. ``out``: scrub's own
    copy (of a subclass, its storage, as the encoder reads it), changed in place."""
    renamed: dict[Any, Any] | None = None
    for k, v in out.items():
        if type(k) is str:
            verdict = _credential_keys.get(k)
            name = k
            if verdict is None:
                name, verdict = _written_key(k, path, masked, depth)
        else:
            name, verdict = _written_key(k, path, masked, depth)
        if name is not k:
            if renamed is None:
                renamed = {}
            renamed[k] = name
        if verdict == _CREDENTIAL_NAME:
            masked.append(f"{path}.{name}")
            new: Any = MASK
        else:
            vk = type(v)
            if vk is str:
                if len(v) <= 20 or not _is_jwt(v):
                    continue
                new = MASK  # a JWT
                masked.append(f"{path}.{name}")
            elif vk in _PLAIN:
                continue
            else:
                new = scrub(v, f"{path}.{name}", masked, depth + 1, forms)
        out[k] = new  # a value of a key already there: the loop goes on
    if renamed is not None:  # in the same order, under the names written
        return {renamed.get(k, k): v for k, v in out.items()}
    return out


def _json_tree(value: Any, depth: int = 0) -> Any:
    """``value`` with every container that is not a dict or list of its own (a set, a
    tuple, an enum, a dataclass, a subclass) replaced by the JSON form the log writes,
    keys as they are: what ``log redact`` rules, which walk dicts and lists only, are
    applied to when the input holds such a container. Copied only where changed."""
    if depth > 64:
        return value  # the scan masks it
    kind = type(value)
    if kind is str or kind in _LEAVES:
        return value
    if kind is dict or kind is FrozenDict:
        out: dict[Any, Any] | None = None
        for k, v in value.items():
            new = _json_tree(v, depth + 1)
            if new is not v:
                if out is None:
                    out = dict(value)
                out[k] = new
        return value if out is None else out
    if kind is list or kind is FrozenList:
        items: list[Any] | None = None
        for i, v in enumerate(value):
            new = _json_tree(v, depth + 1)
            if new is not v:
                if items is None:
                    items = list(value)
                items[i] = new
        return value if items is None else items
    return _json_tree(list(value) if kind is tuple else json_form(value), depth + 1)


def mask_input(inp: dict[str, Any], view: LogView | None, as_json: bool = False
               ) -> tuple[dict[str, Any] | None, list[str], list[str], list[str]]:
    """Apply the policy's ``log redact`` rules, then remove credentials.

    Returns (input, masked paths, erased paths, errors). A rule that cannot be applied
    (``hash`` without a key, a value that cannot be hashed) leaves nothing to chance:
    the whole input is erased (``erased == ["$"]``) and the error is named.

    The rules walk dicts and lists: when the input holds another container (a set, a
    tuple, a dataclass ...; :func:`scrub` reports them), they are applied again, to the
    JSON form of the input (``as_json``: ``inp`` is that form), so that
    ``$.context.cards[*]`` reaches the items of a set as the log writes them. An input
    of dicts and lists (the common case) is walked once.
    """
    masked: list[str] = []
    erased: list[str] = []
    if view is None or not view.rules:
        return scrub(inp, "$", masked), masked, erased, []
    seen: list[str] | None = None if as_json else []
    if view.by_key is not None and isinstance(inp, dict):
        try:
            out, masked, erased = view.by_key.apply(inp)
            out = scrub(out, "$", masked, 0, seen)
            if seen:
                return mask_input(_json_tree(inp), view, True)
            return out, masked, erased, []
        except Exception:  # the general route below reports what failed
            masked, erased = [], []
    out, applied, diagnostics = view.plan.apply(inp)
    if diagnostics:
        return None, [], ["$"], sorted({d.code for d in diagnostics})
    for path, strategy in applied:
        (erased if strategy == "remove" else masked).append(path)
    out = scrub(out, "$", masked, 0, seen)
    if seen:
        return mask_input(_json_tree(inp), view, True)
    return out, masked, erased, []


def token_ids(token: Any) -> dict[str, Any]:
    """The ids of a delegation token (``grant_id``, ``jti``), read without verifying;
    never the token. ``{}`` for something that is not a readable token."""
    if type(token) is not str:
        return {"present": True}
    from policyengine.tokens._jws import split
    try:
        claims = split(token).claims
    except Exception:  # a malformed token: its presence is all the log says
        return {"present": True}
    out: dict[str, Any] = {"present": True}
    for name in ("grant_id", "jti"):
        value = claims.get(name)
        if type(value) is str and len(value) <= 128:
            out[name] = value
    return out


#: A decision's plain fields, read in one C-level call from their slots (their public
#: names are read-only properties over the same slots, one call each). The fields made
#: on first read (``reason``, ``rules``, ``budget``, ``decision_id``) go through their
#: properties when not made yet.
_decision_fields: Final = attrgetter(
    "_status", "_code", "_reason", "_rules", "_obligations", "_approval_id", "_diagnostics",
    "_decision_id", "_principal", "_acting_for", "_chain", "_permission", "_budget",
    "_shadow")


_obligation_fields: Final = attrgetter("_max_amount", "_require_approval_over",
                                       "_redact_fields", "_currency")


def money_text(value: Decimal) -> str:
    """``format(value, "f")`` (what :meth:`Obligations.to_wire` writes), from ``str()``
    when that has no exponent: the same text (``str`` uses scientific notation only for
    a positive exponent or a small number), at a third of the cost."""
    text = str(value)
    return text if "E" not in text else format(value, "f")


def _obligations_wire(ob: Any) -> dict[str, Any] | None:
    """``ob.to_wire()``, or None when ``ob.is_empty()``: the same members read in one
    call from their slots (a test holds the two equal)."""
    cap, over, fields, currency = _obligation_fields(ob)
    if cap is None and over is None and not fields:
        return None
    return {"maxAmount": None if cap is None else money_text(cap),
            "requireApprovalOver": None if over is None else money_text(over),
            "redactFields": fields, "currency": currency}


def decision_record(kind: str, ts_ns: int, latency_ns: int, decision: Any,
                    inp: dict[str, Any], token: Any, view: LogView | None,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One ``authorize`` / ``tool_authorize`` record (docs/decision-log.md)."""
    d = decision
    tool = None
    if kind == "tool_authorize":
        tool, d = d, d.decision
    logged, masked, erased, errors = mask_input(inp, view)
    (status, code, reason, rules, ob, approval_id, diagnostics, decision_id, principal,
     acting_for, chain, permission, budget, shadow) = _decision_fields(d)
    if reason is None:
        reason = d.reason
    if type(rules) is not tuple:
        rules = d.rules
    if decision_id is None:
        decision_id = d.decision_id
    result: dict[str, Any] = {  # tuples encode as arrays: no list copies
        "allowed": status == "allowed",
        "status": status,
        "reason_code": code,
        "reason": reason,
        "rules": rules,
        "obligations": None if ob is None else _obligations_wire(ob),
        "approval_id": approval_id,
        "diagnostics": [x.code for x in diagnostics] if diagnostics else (),
    }
    if tool is not None:
        result["outcome"] = tool.outcome
        result["tool"] = tool.tool
        result["redactions"] = [dict(r) for r in tool.redactions]
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": kind,
        "decision_id": decision_id,
        "timestamp": rfc3339(ts_ns),
        "bundles": view.bundles if view is not None else _NO_BUNDLES,
        "principal": principal,
        "acting_for": acting_for,
        "chain": chain,
        "permission": permission,
        "input": logged,
        "result": result,
        "metrics": {"timer_decision_ns": latency_ns},
    }
    if budget is not None:
        record["budget"] = d.budget.to_wire()
    if shadow:  # every shadow outcome, ``mode log`` ones included
        record["shadow"] = [s.to_wire() for s in shadow]
    if token is not None:
        record["token"] = token_ids(token)
    if masked:
        record["masked"] = masked
    if erased:
        record["erased"] = erased
    if errors:
        record["mask_errors"] = errors
    if extra:
        record.update(extra)
    return record


def event_record(kind: str, ts_ns: int, fields: Mapping[str, Any],
                 view: LogView | None) -> dict[str, Any]:
    """A record of an operation (budget, approval, token, reload, ingested event): the
    common head plus ``fields``; credentials in them are masked like an input's."""
    masked: list[str] = []
    fields = dict(fields)
    erased: list[str] = []
    event = fields.pop("event", None)
    inp = fields.pop("input", None)
    body = scrub(fields, "$", masked)
    if isinstance(event, dict):  # an ingested event: the policy's rules apply to it too
        event, ev_masked, erased, errors = mask_input(event, view)
        masked.extend(p.replace("$", "$.event", 1) for p in ev_masked)
        erased = [p.replace("$", "$.event", 1) for p in erased]
        if errors:
            body["mask_errors"] = errors
    if "event" in fields or event is not None:
        body["event"] = event
    if isinstance(inp, dict):  # a search's input: masked as a decision's (paths in it)
        inp, in_masked, in_erased, errors = mask_input(inp, view)
        masked.extend(in_masked)
        erased.extend(in_erased)
        if errors:
            body["mask_errors"] = errors
        body["input"] = inp
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": kind,
        "timestamp": rfc3339(ts_ns),
        "bundles": view.bundles if view is not None else _NO_BUNDLES,
    }
    record.update(body)
    if masked:
        record["masked"] = masked
    if erased:
        record["erased"] = erased
    return record
