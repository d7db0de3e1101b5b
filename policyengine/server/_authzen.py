"""AuthZEN Authorization API 1.0: the OpenID standard access evaluation wire.

The mapping onto the engine (docs/service.md, "AuthZEN"):

* ``subject.id`` is the principal (its roles and attributes come from the policy);
* ``resource.type`` and ``action.name`` make the permission ``"{type}:{name}"``
  (``todo:can_update_todo``), so patterns like ``todo:*`` work;
* the request ``context`` is the engine's context, and ``subject``, ``resource`` and
  ``action`` are added to it as they arrived (so a condition reads
  ``context.resource.properties.ownerID``); a request context that already uses one of
  those three keys is refused rather than guessed at;
* ``decision`` is true only when the engine says ``allowed`` (``pending_approval`` is
  false: AuthZEN has no third answer); the response ``context`` carries the decision id,
  the engine's status and reason code, and the reason as ``reason_admin`` (and, for
  ``rate_limited``, ``rateLimit`` with ``retryAfterMs``);
* a resource the policy declares (``resource TYPE "id" { ... }``) gets its declared
  attributes in ``resource.properties`` (they win over the same keys sent): the policy is
  the PIP for resources as its ``agent`` lines are for subjects.

The search endpoints (subject, resource, action) answer with every entity whose
evaluation would be true. The engine's reverse queries say who may hold the permission
(``principals_with``) and what the subject may do (``permissions_of``), each line with the
conditions it still depends on; what the policy knows (its agents, its declared resources
of the type, the actions its patterns name for the type) is narrowed by them, and each
remaining candidate's conditions are decided by the same pipeline as an evaluation,
without side effects (no approval is registered, no candidate's decision is logged).
Answers are complete; a page is cut only with a ``page`` object whose ``next_token``
says so (docs/service.md, "AuthZEN search"). Each answer the service gives is one
decision-log record of kind ``search.<kind>`` (docs/decision-log.md). Under the log's
``block`` policy a search waits for the log at most ``block_timeout`` in all, its
candidates' runs and its record together (``DecisionLog.one_wait``), as one decision
does; so does a batch of evaluations (``POST /access/v1/evaluations``), all its
evaluations together.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, TypeAdapter, ValidationError

import policyengine as pe
from policyengine.permissions import is_valid_permission
from policyengine.server import _models as m
from policyengine.server._faults import public_reason

if TYPE_CHECKING:
    from policyengine.server._app import PolicyService, Reply, Request, Route

__all__ = ["AuthzenWire", "evaluate", "evaluate_batch", "logged_search",
           "run_authzen_case", "run_logged_search", "search", "search_record"]

_RESERVED = ("subject", "resource", "action")
_ONE_IN = TypeAdapter(m.AccessEvaluation)
_ONE_OUT = TypeAdapter(m.AccessEvaluationResponse)
_MANY_IN = TypeAdapter(m.AccessEvaluations)
_MANY_OUT = TypeAdapter(m.AccessEvaluationsResponse)
_CONFIG_OUT = TypeAdapter(m.AuthzenConfiguration)
#: Per search kind: the request model, the response model, the route's path and summary.
_SEARCH: dict[str, tuple[Any, Any, str, str]] = {
    "subject": (TypeAdapter(m.SubjectSearch), TypeAdapter(m.SubjectSearchResponse),
                "/access/v1/search/subject", "AuthZEN subject search"),
    "resource": (TypeAdapter(m.ResourceSearch), TypeAdapter(m.ResourceSearchResponse),
                 "/access/v1/search/resource", "AuthZEN resource search"),
    "action": (TypeAdapter(m.ActionSearch), TypeAdapter(m.ActionSearchResponse),
               "/access/v1/search/action", "AuthZEN action search"),
}
_SEARCH_MODELS: dict[str, tuple[type[BaseModel], type[BaseModel]]] = {
    "subject": (m.SubjectSearch, m.SubjectSearchResponse),
                  "resource": (m.ResourceSearch, m.ResourceSearchResponse),
                  "action": (m.ActionSearch, m.ActionSearchResponse)}


class _ItemError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AuthzenWire:
    """The three AuthZEN endpoints of one service, under ``prefix``."""

    def __init__(self, service: PolicyService, prefix: str) -> None:
        self.service = service
        self.prefix = prefix

    def routes(self) -> list[Route]:
        from policyengine.server._app import Route
        p = self.prefix
        guarded = "authzen" if self.service.credentials.has_authzen_clients else None
        return [
            Route("authzen_configuration", "GET", f"{p}/.well-known/authzen-configuration",
                   self.configuration, None, m.AuthzenConfiguration,
                   "AuthZEN PDP metadata"),
            Route("authzen_evaluation", "POST", f"{p}/access/v1/evaluation", self.evaluation,
                   m.AccessEvaluation, m.AccessEvaluationResponse,
                   "AuthZEN access evaluation", guarded),
            Route("authzen_evaluations", "POST", f"{p}/access/v1/evaluations",
                   self.evaluations, m.AccessEvaluations, m.AccessEvaluationsResponse,
                   "AuthZEN batch access evaluations", guarded),
            *(Route(f"authzen_search_{kind}", "POST", f"{p}{path}", self._searcher(kind),
                     _SEARCH_MODELS[kind][0], _SEARCH_MODELS[kind][1], summary, guarded)
              for kind, (_, _, path, summary) in _SEARCH.items()),
        ]

    # ------------------------------------------------------------------ endpoints
    def configuration(self, req: Request) -> Reply:
        from policyengine.server._app import Reply
        base = self._base_url(req)
        out = m.AuthzenConfiguration(
            policy_decision_point=base,
            access_evaluation_endpoint=f"{base}{self.prefix}/access/v1/evaluation",
            access_evaluations_endpoint=f"{base}{self.prefix}/access/v1/evaluations",
            search_subject_endpoint=f"{base}{self.prefix}{_SEARCH['subject'][2]}",
            search_resource_endpoint=f"{base}{self.prefix}{_SEARCH['resource'][2]}",
            search_action_endpoint=f"{base}{self.prefix}{_SEARCH['action'][2]}")
        return Reply(200, _CONFIG_OUT.dump_json(out))

    def _base_url(self, req: Request) -> str:
        host = req.headers.get(b"host", b"localhost").decode("latin-1")
        safe = all(c.isalnum() or c in ".-:[]" for c in host) and host
        return f"http://{host if safe else 'localhost'}"

    def _pep(self, req: Request) -> str | None:
        """The AuthZEN client asking, when clients are configured (else None: open)."""
        from policyengine.server._app import RefusalError
        credentials = self.service.credentials
        if not credentials.has_authzen_clients:
            return None
        raw = req.headers.get(b"authorization", b"").decode("latin-1").strip()
        if raw[:7].lower() == "bearer ":
            raw = raw[7:].strip()
        name = credentials.check_authzen_client(raw) if raw else None
        if name is None:
            raise RefusalError(401, "unauthorized", "an AuthZEN client key is required",
                                ((b"www-authenticate", b'Bearer realm="authzen"'),))
        return name

    def _partition(self, req: Request) -> str:
        """The partition the asking client's decisions count in: its entry's tenant
        (``""`` without one, or with the routes open), never one the request names."""
        return self.service.credentials.authzen_partition(self._pep(req))

    def evaluation(self, req: Request) -> Reply:
        from policyengine.server._app import RefusalError, Reply, json_body, validate
        partition = self._partition(req)
        data = json_body(req)
        r = validate(_ONE_IN, data)
        try:
            out = _ONE_OUT.validate_python(evaluate(self.service.engine, data, self._count,
                                                    partition))
        except _ItemError as exc:
            raise RefusalError(400, "invalid_request", exc.message) from None
        return Reply(200, _ONE_OUT.dump_json(out), r.subject.id,
                      "allowed" if out.decision else "denied")

    def evaluations(self, req: Request) -> Reply:
        from policyengine.server._app import RefusalError, Reply, json_body, validate
        partition = self._partition(req)
        data = json_body(req)
        validate(_MANY_IN, data)
        try:
            out = evaluate_batch(self.service.engine, data, self._count, partition)
        except _ItemError as exc:
            raise RefusalError(400, "invalid_request", exc.message) from None
        if "evaluations" not in out:  # no list: answered as one evaluation
            one = _ONE_OUT.validate_python(out)
            return Reply(200, _ONE_OUT.dump_json(one), None,
                          "allowed" if one.decision else "denied")
        many = _MANY_OUT.validate_python(out)
        return Reply(200, _MANY_OUT.dump_json(many), None,
                      f"batch:{len(many.evaluations)}")

    def _searcher(self, kind: str) -> Callable[[Request], Reply]:
        def handler(req: Request) -> Reply:
            from policyengine.server._app import RefusalError, Reply, json_body, validate
            client = self._pep(req)
            data = json_body(req)
            adapter_in, adapter_out = _SEARCH[kind][0], _SEARCH[kind][1]
            validate(adapter_in, data)
            engine = self.service.engine
            try:
                answer, recorded = logged_search(
                    engine, kind, data, client,
                    self.service.credentials.authzen_partition(client))
            except _ItemError as exc:
                raise RefusalError(400, "invalid_request", exc.message) from None
            log = engine.decision_log
            if not recorded and log is not None and log.overflow == "deny":
                raise RefusalError(503, "decision_log_unavailable",
                                    "the decision log cannot record this search now; "
                                    "retry")
            out = adapter_out.validate_python(answer)
            subject = data["subject"].get("id") if kind != "subject" else None
            return Reply(200, adapter_out.dump_json(out, exclude_none=True), subject,
                          f"search:{len(out.results)}")
        return handler

    def _count(self, status: str) -> None:
        self.service.metrics.decision("authzen", status)


def _complete(subject: Any, action: Any, resource: Any
              ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    if not subject or subject.get("type") is None or subject.get("id") is None:
        raise _ItemError("subject needs a type and an id")
    if not action or action.get("name") is None:
        raise _ItemError("action needs a name")
    if not resource or resource.get("type") is None or resource.get("id") is None:
        raise _ItemError("resource needs a type and an id")
    return subject, action, resource


def _known(engine: pe.Engine, resource: dict[str, Any]) -> dict[str, Any]:
    """``resource`` with the attributes the policy declares for it (if it declares it)
    in its ``properties``; a declared attribute wins over a sent property."""
    declared = engine.policy.resources.get(resource["type"])
    attrs = declared.get(resource["id"]) if declared else None
    if attrs is None:
        return resource
    sent = resource.get("properties")
    return {**resource, "properties": {**sent, **attrs} if sent else dict(attrs)}


def _base_context(context: dict[str, Any] | None) -> dict[str, Any]:
    ctx = dict(context) if context else {}
    if ctx and ("subject" in ctx or "resource" in ctx or "action" in ctx):
        clash = [k for k in _RESERVED if k in ctx]
        raise _ItemError(f"context keys {clash} are reserved for the request's own "
                         "subject, resource and action")
    return ctx


def _decide(engine: pe.Engine, subject: dict[str, Any], action: dict[str, Any],
            resource: dict[str, Any], context: dict[str, Any] | None,
            count: Callable[[str], None] | None, partition: str) -> dict[str, Any]:
    ctx = _base_context(context)
    ctx["subject"], ctx["resource"], ctx["action"] = subject, _known(engine, resource), action
    d = engine.authorize(subject["id"], f"{resource['type']}:{action['name']}", ctx,
                         partition=partition, partition_agent=True)
    if count is not None:
        count(d.status)
    answer: dict[str, Any] = {"id": d.decision_id, "status": d.status, "reasonCode": d.code,
                              "reason_admin": {"en": public_reason(
                                  d.code, d.reason, [x.code for x in d.diagnostics])}}
    if d.shadow:
        warned = [s.to_wire() for s in d.shadow if s.mode == "warn"]
        if warned:  # mode warn outcomes reach the caller; mode log ones only the log
            answer["shadow"] = warned
    if d.rate_limit is not None:  # rate_limited: which limit, and when to retry
        answer["rateLimit"] = d.rate_limit.to_wire()
    return {"decision": d.status == "allowed", "context": answer}


def evaluate(engine: pe.Engine, data: dict[str, Any],
             count: Callable[[str], None] | None = None, partition: str = ""
             ) -> dict[str, Any]:
    """One AuthZEN access evaluation (a body already validated as
    :class:`AccessEvaluation`), mapped onto ``engine.authorize`` in ``partition`` (the
    asking client's tenant), the subject counted in it too (``partition_agent``: the
    PEP chose the subject id, so its ``per agent`` and ``per acting_for`` counters are
    the client's tenant's, ``tenant:acme/agent:alice``); the response as a dict of
    :class:`AccessEvaluationResponse`'s shape."""
    return _decide(engine, data["subject"], data["action"], data["resource"],
                   data.get("context"), count, partition)


def evaluate_batch(engine: pe.Engine, data: dict[str, Any],
                   count: Callable[[str], None] | None = None, partition: str = ""
                   ) -> dict[str, Any]:
    """``evaluations`` (a body already validated as :class:`AccessEvaluations`) with
    their semantic; without a list, a single evaluation. An item that cannot be evaluated
    is ``decision: false`` with ``context.code`` 400. Works on the validated dicts: the
    models forbid extra fields, so they hold exactly what was checked. Under the
    decision log's ``block`` policy the whole request waits for the log at most
    ``block_timeout`` in all (``DecisionLog.one_wait``), not that long per evaluation,
    and counts once in ``blocked``."""
    log = engine.decision_log
    with log.one_wait() if log is not None else contextlib.nullcontext():
        return _evaluate_batch(engine, data, count, partition)


def _evaluate_batch(engine: pe.Engine, data: dict[str, Any],
                    count: Callable[[str], None] | None, partition: str
                    ) -> dict[str, Any]:
    top_s, top_a, top_r = data.get("subject"), data.get("action"), data.get("resource")
    top_ctx = data.get("context")
    items = data.get("evaluations")
    if not items:
        return _decide(engine, *_complete(top_s, top_a, top_r), top_ctx, count, partition)
    options = data.get("options") or {}
    semantic = options.get("evaluations_semantic") or "execute_all"
    stop_on = {"deny_on_first_deny": False, "permit_on_first_permit": True}.get(semantic)
    results: list[dict[str, Any]] = []
    for item in items:
        get = item.get
        context = get("context")
        try:
            s, a, res = _complete(get("subject") or top_s, get("action") or top_a,
                                  get("resource") or top_r)
            out = _decide(engine, s, a, res, top_ctx if context is None else context, count,
                          partition)
        except _ItemError as exc:
            out = {"decision": False, "context": {"code": 400,
                                                  "reason_admin": {"en": exc.message}}}
        results.append(out)
        if stop_on is not None and out["decision"] is stop_on:
            break
    return {"evaluations": results}


def run_authzen_case(engine: pe.Engine, case: dict[str, Any]) -> str | None:
    """Conformance kind ``authzen``: ``request`` is an evaluation (or an evaluations
    batch, when it has ``evaluations``); ``expect`` is ``{"decision": bool}`` or
    ``{"evaluations": [{"decision": bool}, ...]}``. Decisions are compared, the response
    context is not. A case with ``search`` (``subject``, ``resource`` or ``action``) is a
    search: see :func:`_run_search_case`. None when it matches, else why not."""
    if "search" in case:
        return _run_search_case(engine, case["search"], case["request"], case["expect"])
    request, expect = case["request"], case["expect"]
    if "evaluations" in request:
        _MANY_IN.validate_python(request)
        batch = evaluate_batch(engine, request)
        got = ({"evaluations": [{"decision": e["decision"]} for e in batch["evaluations"]]}
               if "evaluations" in batch else {"decision": batch["decision"]})
    else:
        _ONE_IN.validate_python(request)
        got = {"decision": evaluate(engine, request)["decision"]}
    return None if got == expect else f"expected {expect}, got {got}"


def run_logged_search(engine: pe.Engine, kind: str, data: dict[str, Any]) -> None:
    """A ``decision_log`` conformance case's ``op: search.<kind>``: the request validated
    as the service validates it, then searched and recorded as the service records it
    (no AuthZEN client)."""
    if kind not in _SEARCH:
        raise ValueError(f"unknown search {kind!r}")
    _SEARCH[kind][0].validate_python(data)
    logged_search(engine, kind, data, None)


def _run_search_case(engine: pe.Engine, kind: str, request: dict[str, Any],
                     expect: dict[str, Any]) -> str | None:
    """``expect`` is one of: ``{"results": [...]}``: the whole answer, results compared
    in any order (as the interop runner compares them), and no ``page`` in it;
    ``{"pages": [[...], ...]}``: following ``next_token`` from ``request`` gives exactly
    these pages, results in this order, each ``page`` counting its results and the total;
    ``{"error": "invalid_request"}``: the request is refused."""
    if kind not in _SEARCH:
        return f"unknown search {kind!r}"
    adapter_in = _SEARCH[kind][0]
    try:
        adapter_in.validate_python(request)
        first = search(engine, kind, request)
    except (ValidationError, _ItemError):
        got_error = "invalid_request"
        return None if expect == {"error": got_error} else f"expected {expect}, refused"
    if "error" in expect:
        return f"expected {expect}, got {first}"
    if "results" in expect:
        want = sorted(json.dumps(x, sort_keys=True) for x in expect["results"])
        got = sorted(json.dumps(x, sort_keys=True) for x in first["results"])
        if "page" in first or got != want:
            return f"expected {expect}, got {first}"
        return None
    pages, answer = [], first
    while True:
        pages.append(answer)
        token = answer.get("page", {}).get("next_token")
        if not token or len(pages) > len(expect["pages"]):
            break
        answer = search(engine, kind, {**request, "page": {**request.get("page", {}),
                                                           "token": token}})
    total = sum(len(p) for p in expect["pages"])
    want_pages = [{"page": {"count": len(p), "total": total}, "results": p}
                  for p in expect["pages"]]
    got_pages = [{"page": {"count": a.get("page", {}).get("count"),
                           "total": a.get("page", {}).get("total")},
                  "results": a["results"]} for a in pages]
    if got_pages != want_pages or pages[-1].get("page", {}).get("next_token") != "":
        return f"expected pages {expect['pages']}, got {pages}"
    return None


# --------------------------------------------------------------------------- search
def logged_search(engine: pe.Engine, kind: str, data: dict[str, Any],
                  client: str | None, partition: str = "") -> tuple[dict[str, Any], bool]:
    """One search (:func:`search`) and its decision-log record (:func:`search_record`),
    written under the policy revision that was searched; the service's handler and the
    conformance fixtures (``decision_log`` cases with ``op: search.<kind>``) both take
    this path, so the fixtures pin the records the service writes. Returns the answer
    and whether a record was written (True when the engine has no log: nothing was
    asked of it); what to do when it was not is the caller's (the log's ``overflow``).
    The candidates' runs and the record wait for the log at most ``block_timeout`` in
    all (``DecisionLog.one_wait``)."""
    log = engine.decision_log
    if log is None:
        return search(engine, kind, data, partition), True
    view = log.view  # the revision searched under
    with log.one_wait():
        started = time.perf_counter_ns()
        answer = search(engine, kind, data, partition)
        fields = search_record(kind, data, answer, client,
                               time.perf_counter_ns() - started)
        return answer, log.event(f"search.{kind}", fields, view)


def search_record(kind: str, data: dict[str, Any], answer: dict[str, Any],
                  client: str | None, latency_ns: int) -> dict[str, Any]:
    """The decision-log fields of one search answer (kind ``search.<kind>``,
    docs/decision-log.md): who is searched for or may act (``principal``: the subject's
    id, None in a subject search), the permission asked about (None in an action
    search), the AuthZEN client that asked (None when the service has no clients), the
    ``input`` in a decision's shape (``principal``, ``permission``, ``context`` with the
    request's subject, resource and action in it, as an evaluation's, and ``page``), so
    the same ``log redact`` rules mask it, and how many results the answer carries."""
    subject, resource, action = data.get("subject"), data.get("resource"), data.get("action")
    principal = subject.get("id") if kind != "subject" and subject else None
    permission = (f"{resource['type']}:{action['name']}"
                  if kind != "action" and resource and action else None)
    context = dict(data.get("context") or {})
    for key, value in (("subject", subject), ("resource", resource), ("action", action)):
        if value is not None:
            context[key] = value
    inp: dict[str, Any] = {"principal": principal, "permission": permission,
                           "context": context}
    if data.get("page") is not None:
        inp["page"] = data["page"]
    page = answer.get("page")
    results = len(answer["results"])
    return {"principal": principal, "permission": permission, "client": client,
            "input": inp,
            "result": {"results": results,
                       "total": page["total"] if page is not None else results,
                       "more": bool(page is not None and page["next_token"])},
            "metrics": {"timer_search_ns": latency_ns}}


def _allowed(engine: pe.Engine, principal: str, permission: str,
             ctx: dict[str, Any], partition: str) -> bool:
    """Would an evaluation of this be true? The decision pipeline's own run, without
    its side effects: a pending approval registers nothing, the decision log takes no
    record (a search is not an access)."""
    run = engine.pipeline.run
    return run(principal, permission, ctx, None, None, False,
               partition=partition, partition_agent=True).status == "allowed"


def _action_names(engine: pe.Engine, rtype: str) -> list[str]:
    """The actions the policy names for resources of ``rtype``: every permission
    ``rtype:NAME`` its roles and rules spell out, in declaration order (a wildcard such
    as ``rtype:*`` names none: the vocabulary is what the policy writes)."""
    prefix = rtype + ":"
    seen: dict[str, None] = {}
    for rule in engine.policy.rules:
        for pattern in rule.patterns:
            if pattern.startswith(prefix) and not pattern.endswith("*"):
                seen.setdefault(pattern[len(prefix):], None)
    return list(seen)


def _request_digest(kind: str, data: dict[str, Any]) -> str:
    """What a page token is bound to: the search kind and the request without its
    ``page.token`` (the spec: every other value must stay the same across pages)."""
    rest = {k: v for k, v in data.items() if k != "page"}
    page = data.get("page") or {}
    rest["page"] = {k: v for k, v in page.items() if k != "token"}
    text = json.dumps([kind, rest], sort_keys=True, default=_exact, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def _exact(value: Any) -> Any:
    """A JSON number read as a Decimal, told apart from the string of its digits."""
    return {"decimal": str(value)}


def _token(offset: int, digest: str) -> str:
    raw = json.dumps({"o": offset, "q": digest}, separators=(",", ":")).encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _offset(token: str, digest: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        found = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        found = None
    if (type(found) is not dict or type(found.get("o")) is not int
            or found.get("q") != digest or not 0 < found["o"] < 1 << 31):
        raise _ItemError("page.token is not a token this service gave for this search "
                         "(every value but the token must stay the same across pages)")
    offset: int = found["o"]
    return offset


def _paged(kind: str, data: dict[str, Any], found: list[dict[str, Any]]) -> dict[str, Any]:
    """The answer: every result, or one page of them with a ``page`` object that says
    how to get the rest (never cut short silently)."""
    page = data.get("page")
    total = len(found)
    limit = (page or {}).get("limit") or m.MAX_SEARCH_PAGE
    digest = _request_digest(kind, data) if page is not None or total > limit else ""
    token = (page or {}).get("token")
    start = _offset(token, digest) if token is not None else 0
    chunk = found[start:start + limit]
    if page is None and total <= limit:
        return {"results": chunk}
    end = start + len(chunk)
    return {"page": {"next_token": _token(end, digest) if end < total else "",
                     "count": len(chunk), "total": total},
            "results": chunk}


def _lines_of(engine: pe.Engine, principal: str) -> Sequence[Any]:
    """``permissions_of(principal)``'s lines; none for an id the reverse query does not
    take (empty, over 256 characters): no evaluation would allow such a principal
    anything either."""
    try:
        return engine.permissions_of(principal).entries
    except ValueError:
        return ()


def _may(lines: Iterable[Any], permission: str) -> bool:
    """Some ``allowed`` line of a reverse query covers ``permission`` (its residual
    conditions, if any, are left to the decision)."""
    return any(a.status == "allowed" and a.covers(permission) for a in lines)


def _subjects(engine: pe.Engine, data: dict[str, Any], ctx: dict[str, Any],
              permission: str, partition: str) -> list[dict[str, Any]]:
    """The agents ``principals_with(permission)`` lists as allowed (on conditions or
    not), in the policy's declaration order, whose decision here is allowed."""
    candidates = {a.principal for a in engine.principals_with(permission).entries
                  if a.kind == "agent" and a.status == "allowed"}
    stype = data["subject"]["type"]
    ctx["resource"], ctx["action"] = _known(engine, data["resource"]), data["action"]
    out = []
    for principal in engine.policy.principals:
        if principal not in candidates:
            continue
        ctx["subject"] = {"type": stype, "id": principal}
        if _allowed(engine, principal, permission, dict(ctx), partition):
            out.append({"type": stype, "id": principal})
    return out


def _resources(engine: pe.Engine, data: dict[str, Any], ctx: dict[str, Any],
               permission: str, partition: str) -> list[dict[str, Any]]:
    """Nothing unless ``permissions_of(subject)`` has an allowed line for the permission;
    then the declared resources of the type whose decision is allowed."""
    principal = data["subject"]["id"]
    if not _may(_lines_of(engine, principal), permission):
        return []
    rtype = data["resource"]["type"]
    ctx["subject"], ctx["action"] = data["subject"], data["action"]
    out = []
    for rid, attrs in engine.policy.resources.get(rtype, {}).items():
        ctx["resource"] = {"type": rtype, "id": rid, "properties": dict(attrs)}
        if _allowed(engine, principal, permission, dict(ctx), partition):
            out.append({"type": rtype, "id": rid})
    return out


def _actions(engine: pe.Engine, data: dict[str, Any], ctx: dict[str, Any],
             partition: str) -> list[dict[str, Any]]:
    """The actions of the type's vocabulary that an allowed line of
    ``permissions_of(subject)`` covers and whose decision is allowed."""
    resource = data["resource"]
    principal = data["subject"]["id"]
    lines = _lines_of(engine, principal)
    ctx["subject"], ctx["resource"] = data["subject"], _known(engine, resource)
    out = []
    for name in _action_names(engine, resource["type"]):
        permission = f"{resource['type']}:{name}"
        if not is_valid_permission(permission) or not _may(lines, permission):
            continue
        ctx["action"] = {"name": name}
        if _allowed(engine, principal, permission, dict(ctx), partition):
            out.append({"name": name})
    return out


def search(engine: pe.Engine, kind: str, data: dict[str, Any], partition: str = ""
           ) -> dict[str, Any]:
    """One AuthZEN search (``kind`` subject, resource or action; ``data`` a body already
    validated as its request model): every entity an evaluation would allow, paged as
    the request's ``page`` asks; the response as a dict of the response model's shape.
    A type or action that is no permission of the policy answers no results. Under the
    decision log's ``block`` policy the candidates' runs wait for it at most
    ``block_timeout`` in all (``DecisionLog.one_wait``), not that long each."""
    log = engine.decision_log
    with log.one_wait() if log is not None else contextlib.nullcontext():
        return _search(engine, kind, data, partition)


def _search(engine: pe.Engine, kind: str, data: dict[str, Any], partition: str
            ) -> dict[str, Any]:
    ctx = _base_context(data.get("context"))
    found: Iterable[dict[str, Any]]
    if kind == "action":
        found = _actions(engine, data, ctx, partition)
    else:
        permission = f"{data['resource']['type']}:{data['action']['name']}"
        if not is_valid_permission(permission):
            found = []
        elif kind == "subject":
            found = _subjects(engine, data, ctx, permission, partition)
        else:
            found = _resources(engine, data, ctx, permission, partition)
    return _paged(kind, data, list(found))
