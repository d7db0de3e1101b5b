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

from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

import policyengine as pe
from policyengine.server import _models as m

if TYPE_CHECKING:
    from policyengine.server._app import PolicyService, _Reply, _Request, _Route

__all__ = ["AuthzenWire"]

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

    # ------------------------------------------------------------------ decide
    def decide(self, subject: dict[str, Any], action: dict[str, Any],
               resource: dict[str, Any], context: dict[str, Any] | None
               ) -> m.AccessEvaluationResponse:
        ctx = dict(context or {})
        clash = [k for k in _RESERVED if k in ctx]
        if clash:
            raise _ItemError(f"context keys {clash} are reserved for the request's own "
                             "subject, resource and action")
        ctx["subject"], ctx["resource"], ctx["action"] = subject, resource, action
        permission = f"{resource['type']}:{action['name']}"
        d = self.service.engine.authorize(subject["id"], permission, ctx)
        self.service.metrics.decision("authzen", d.status)
        return m.AccessEvaluationResponse.model_construct(
            decision=d.status == "allowed",
            context={"id": d.decision_id, "status": d.status, "reasonCode": d.code,
                     "reason_admin": {"en": d.reason}})

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
            out = self.decide(_entity(r.subject) or {}, _entity(r.action) or {},
                              _entity(r.resource) or {}, r.context)
        except _ItemError as exc:
            raise _RefusalError(400, "invalid_request", exc.message) from None
        return _Reply(200, _ONE_OUT.dump_json(out), r.subject.id,
                      "allowed" if out.decision else "denied")

    def evaluations(self, req: _Request) -> _Reply:
        from policyengine.server._app import _json_body, _RefusalError, _Reply, _validate
        r = _validate(_MANY_IN, _json_body(req))
        top_s, top_a, top_r = _entity(r.subject), _entity(r.action), _entity(r.resource)
        if not r.evaluations:  # no list: a single evaluation, answered as one
            try:
                one = self.decide(*self._complete(top_s, top_a, top_r), r.context)
            except _ItemError as exc:
                raise _RefusalError(400, "invalid_request", exc.message) from None
            return _Reply(200, _ONE_OUT.dump_json(one), None,
                          "allowed" if one.decision else "denied")
        semantic = r.options.evaluations_semantic if r.options else "execute_all"
        results: list[m.AccessEvaluationResponse] = []
        for item in r.evaluations:
            context = item.context if item.context is not None else r.context
            try:
                s, a, res = self._complete(
                    _entity(item.subject) if item.subject is not None else top_s,
                    _entity(item.action) if item.action is not None else top_a,
                    _entity(item.resource) if item.resource is not None else top_r)
                out = self.decide(s, a, res, context)
            except _ItemError as exc:
                out = m.AccessEvaluationResponse.model_construct(
                    decision=False, context={"code": 400, "reason_admin": {"en": exc.message}})
            results.append(out)
            if semantic == "deny_on_first_deny" and not out.decision:
                break
            if semantic == "permit_on_first_permit" and out.decision:
                break
        body = _MANY_OUT.dump_json(m.AccessEvaluationsResponse.model_construct(
            evaluations=results))
        return _Reply(200, body, None, f"batch:{len(results)}")

    @staticmethod
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


def is_permission_like(text: str) -> bool:  # pragma: no cover - kept for docs examples
    return pe.is_valid_permission(text)
