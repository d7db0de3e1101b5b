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
  the engine's status and reason code, and the reason as ``reason_admin``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

import policyengine as pe
from policyengine.server import _models as m

if TYPE_CHECKING:
    from policyengine.server._app import PolicyService, _Reply, _Request, _Route

__all__ = ["AuthzenWire", "evaluate", "evaluate_batch", "run_authzen_case"]

_RESERVED = ("subject", "resource", "action")
_ONE_IN = TypeAdapter(m.AccessEvaluation)
_ONE_OUT = TypeAdapter(m.AccessEvaluationResponse)
_MANY_IN = TypeAdapter(m.AccessEvaluations)
_MANY_OUT = TypeAdapter(m.AccessEvaluationsResponse)
_CONFIG_OUT = TypeAdapter(m.AuthzenConfiguration)


class _ItemError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _entity(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    dumped: dict[str, Any] = value.model_dump(exclude_none=True)
    return dumped


class AuthzenWire:
    """The three AuthZEN endpoints of one service, under ``prefix``."""

    def __init__(self, service: PolicyService, prefix: str) -> None:
        self.service = service
        self.prefix = prefix

    def routes(self) -> list[_Route]:
        from policyengine.server._app import _Route
        p = self.prefix
        return [
            _Route("authzen_configuration", "GET", f"{p}/.well-known/authzen-configuration",
                   self.configuration, None, m.AuthzenConfiguration,
                   "AuthZEN PDP metadata"),
            _Route("authzen_evaluation", "POST", f"{p}/access/v1/evaluation", self.evaluation,
                   m.AccessEvaluation, m.AccessEvaluationResponse,
                   "AuthZEN access evaluation"),
            _Route("authzen_evaluations", "POST", f"{p}/access/v1/evaluations",
                   self.evaluations, m.AccessEvaluations, m.AccessEvaluationsResponse,
                   "AuthZEN batch access evaluations"),
        ]

    # ------------------------------------------------------------------ endpoints
    def configuration(self, req: _Request) -> _Reply:
        from policyengine.server._app import _Reply
        base = self._base_url(req)
        out = m.AuthzenConfiguration(
            policy_decision_point=base,
            access_evaluation_endpoint=f"{base}{self.prefix}/access/v1/evaluation",
            access_evaluations_endpoint=f"{base}{self.prefix}/access/v1/evaluations")
        return _Reply(200, _CONFIG_OUT.dump_json(out))

    def _base_url(self, req: _Request) -> str:
        host = req.headers.get(b"host", b"localhost").decode("latin-1")
        safe = all(c.isalnum() or c in ".-:[]" for c in host) and host
        return f"http://{host if safe else 'localhost'}"

    def evaluation(self, req: _Request) -> _Reply:
        from policyengine.server._app import _json_body, _RefusalError, _Reply, _validate
        r = _validate(_ONE_IN, _json_body(req))
        try:
            out = evaluate(self.service.engine, r, self._count)
        except _ItemError as exc:
            raise _RefusalError(400, "invalid_request", exc.message) from None
        return _Reply(200, _ONE_OUT.dump_json(out), r.subject.id,
                      "allowed" if out.decision else "denied")

    def evaluations(self, req: _Request) -> _Reply:
        from policyengine.server._app import _json_body, _RefusalError, _Reply, _validate
        r = _validate(_MANY_IN, _json_body(req))
        try:
            out = evaluate_batch(self.service.engine, r, self._count)
        except _ItemError as exc:
            raise _RefusalError(400, "invalid_request", exc.message) from None
        if isinstance(out, m.AccessEvaluationResponse):  # no list: answered as one
            return _Reply(200, _ONE_OUT.dump_json(out), None,
                          "allowed" if out.decision else "denied")
        body = _MANY_OUT.dump_json(out)
        return _Reply(200, body, None, f"batch:{len(out.evaluations)}")

    def _count(self, status: str) -> None:
        self.service.metrics.decision("authzen", status)


def _complete(subject: dict[str, Any] | None, action: dict[str, Any] | None,
              resource: dict[str, Any] | None
              ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    if not subject or "type" not in subject or "id" not in subject:
        raise _ItemError("subject needs a type and an id")
    if not action or "name" not in action:
        raise _ItemError("action needs a name")
    if not resource or "type" not in resource or "id" not in resource:
        raise _ItemError("resource needs a type and an id")
    return subject, action, resource


def _decide(engine: pe.Engine, subject: dict[str, Any], action: dict[str, Any],
            resource: dict[str, Any], context: dict[str, Any] | None,
            count: Callable[[str], None] | None) -> m.AccessEvaluationResponse:
    ctx = dict(context or {})
    clash = [k for k in _RESERVED if k in ctx]
    if clash:
        raise _ItemError(f"context keys {clash} are reserved for the request's own "
                         "subject, resource and action")
    ctx["subject"], ctx["resource"], ctx["action"] = subject, resource, action
    permission = f"{resource['type']}:{action['name']}"
    d = engine.authorize(subject["id"], permission, ctx)
    if count is not None:
        count(d.status)
    return m.AccessEvaluationResponse.model_construct(
        decision=d.status == "allowed",
        context={"id": d.decision_id, "status": d.status, "reasonCode": d.code,
                 "reason_admin": {"en": d.reason}})


def evaluate(engine: pe.Engine, request: m.AccessEvaluation,
             count: Callable[[str], None] | None = None) -> m.AccessEvaluationResponse:
    """One AuthZEN access evaluation, mapped onto ``engine.authorize``."""
    return _decide(engine, _entity(request.subject) or {}, _entity(request.action) or {},
                   _entity(request.resource) or {}, request.context, count)


def evaluate_batch(engine: pe.Engine, request: m.AccessEvaluations,
                   count: Callable[[str], None] | None = None
                   ) -> m.AccessEvaluationsResponse | m.AccessEvaluationResponse:
    """``evaluations`` with their semantic; without a list, a single evaluation. An item
    that cannot be evaluated is ``decision: false`` with ``context.code`` 400."""
    top_s, top_a, top_r = (_entity(request.subject), _entity(request.action),
                           _entity(request.resource))
    if not request.evaluations:
        return _decide(engine, *_complete(top_s, top_a, top_r), request.context, count)
    semantic = request.options.evaluations_semantic if request.options else "execute_all"
    results: list[m.AccessEvaluationResponse] = []
    for item in request.evaluations:
        context = item.context if item.context is not None else request.context
        try:
            s, a, res = _complete(
                _entity(item.subject) if item.subject is not None else top_s,
                _entity(item.action) if item.action is not None else top_a,
                _entity(item.resource) if item.resource is not None else top_r)
            out = _decide(engine, s, a, res, context, count)
        except _ItemError as exc:
            out = m.AccessEvaluationResponse.model_construct(
                decision=False, context={"code": 400, "reason_admin": {"en": exc.message}})
        results.append(out)
        if semantic == "deny_on_first_deny" and not out.decision:
            break
        if semantic == "permit_on_first_permit" and out.decision:
            break
    return m.AccessEvaluationsResponse.model_construct(evaluations=results)


def run_authzen_case(engine: pe.Engine, case: dict[str, Any]) -> str | None:
    """Conformance kind ``authzen``: ``request`` is an evaluation (or an evaluations
    batch, when it has ``evaluations``); ``expect`` is ``{"decision": bool}`` or
    ``{"evaluations": [{"decision": bool}, ...]}``. Decisions are compared, the response
    context is not. None when it matches, else why not."""
    request, expect = case["request"], case["expect"]
    if "evaluations" in request:
        batch = evaluate_batch(engine, _MANY_IN.validate_python(request))
        got = ({"decision": batch.decision}
               if isinstance(batch, m.AccessEvaluationResponse)
               else {"evaluations": [{"decision": e.decision} for e in batch.evaluations]})
    else:
        got = {"decision": evaluate(engine, _ONE_IN.validate_python(request)).decision}
    return None if got == expect else f"expected {expect}, got {got}"
