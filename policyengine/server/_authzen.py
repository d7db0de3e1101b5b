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


class AuthzenWire:
    """The three AuthZEN endpoints of one service, under ``prefix``."""

    def __init__(self, service: PolicyService, prefix: str) -> None:
        self.service = service
        self.prefix = prefix

    def routes(self) -> list[_Route]:
        from policyengine.server._app import _Route
        p = self.prefix
        guarded = "authzen" if self.service.credentials.has_authzen_clients else None
        return [
            _Route("authzen_configuration", "GET", f"{p}/.well-known/authzen-configuration",
                   self.configuration, None, m.AuthzenConfiguration,
                   "AuthZEN PDP metadata"),
            _Route("authzen_evaluation", "POST", f"{p}/access/v1/evaluation", self.evaluation,
                   m.AccessEvaluation, m.AccessEvaluationResponse,
                   "AuthZEN access evaluation", guarded),
            _Route("authzen_evaluations", "POST", f"{p}/access/v1/evaluations",
                   self.evaluations, m.AccessEvaluations, m.AccessEvaluationsResponse,
                   "AuthZEN batch access evaluations", guarded),
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

    def _pep(self, req: _Request) -> str | None:
        """The AuthZEN client asking, when clients are configured (else None: open)."""
        from policyengine.server._app import _RefusalError
        credentials = self.service.credentials
        if not credentials.has_authzen_clients:
            return None
        raw = req.headers.get(b"authorization", b"").decode("latin-1").strip()
        if raw[:7].lower() == "bearer ":
            raw = raw[7:].strip()
        name = credentials.check_authzen_client(raw) if raw else None
        if name is None:
            raise _RefusalError(401, "unauthorized", "an AuthZEN client key is required",
                                ((b"www-authenticate", b'Bearer realm="authzen"'),))
        return name

    def evaluation(self, req: _Request) -> _Reply:
        from policyengine.server._app import _json_body, _RefusalError, _Reply, _validate
        self._pep(req)
        data = _json_body(req)
        r = _validate(_ONE_IN, data)
        try:
            out = _ONE_OUT.validate_python(evaluate(self.service.engine, data, self._count))
        except _ItemError as exc:
            raise _RefusalError(400, "invalid_request", exc.message) from None
        return _Reply(200, _ONE_OUT.dump_json(out), r.subject.id,
                      "allowed" if out.decision else "denied")

    def evaluations(self, req: _Request) -> _Reply:
        from policyengine.server._app import _json_body, _RefusalError, _Reply, _validate
        self._pep(req)
        data = _json_body(req)
        _validate(_MANY_IN, data)
        try:
            out = evaluate_batch(self.service.engine, data, self._count)
        except _ItemError as exc:
            raise _RefusalError(400, "invalid_request", exc.message) from None
        if "evaluations" not in out:  # no list: answered as one evaluation
            one = _ONE_OUT.validate_python(out)
            return _Reply(200, _ONE_OUT.dump_json(one), None,
                          "allowed" if one.decision else "denied")
        many = _MANY_OUT.validate_python(out)
        return _Reply(200, _MANY_OUT.dump_json(many), None,
                      f"batch:{len(many.evaluations)}")

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


def _decide(engine: pe.Engine, subject: dict[str, Any], action: dict[str, Any],
            resource: dict[str, Any], context: dict[str, Any] | None,
            count: Callable[[str], None] | None) -> dict[str, Any]:
    ctx = dict(context) if context else {}
    if ctx and ("subject" in ctx or "resource" in ctx or "action" in ctx):
        clash = [k for k in _RESERVED if k in ctx]
        raise _ItemError(f"context keys {clash} are reserved for the request's own "
                         "subject, resource and action")
    ctx["subject"], ctx["resource"], ctx["action"] = subject, resource, action
    d = engine.authorize(subject["id"], f"{resource['type']}:{action['name']}", ctx)
    if count is not None:
        count(d.status)
    return {"decision": d.status == "allowed",
            "context": {"id": d.decision_id, "status": d.status, "reasonCode": d.code,
                        "reason_admin": {"en": d.reason}}}


def evaluate(engine: pe.Engine, data: dict[str, Any],
             count: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One AuthZEN access evaluation (a body already validated as
    :class:`AccessEvaluation`), mapped onto ``engine.authorize``; the response as a dict
    of :class:`AccessEvaluationResponse`'s shape."""
    return _decide(engine, data["subject"], data["action"], data["resource"],
                   data.get("context"), count)


def evaluate_batch(engine: pe.Engine, data: dict[str, Any],
                   count: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``evaluations`` (a body already validated as :class:`AccessEvaluations`) with
    their semantic; without a list, a single evaluation. An item that cannot be evaluated
    is ``decision: false`` with ``context.code`` 400. Works on the validated dicts: the
    models forbid extra fields, so they hold exactly what was checked."""
    top_s, top_a, top_r = data.get("subject"), data.get("action"), data.get("resource")
    top_ctx = data.get("context")
    items = data.get("evaluations")
    if not items:
        return _decide(engine, *_complete(top_s, top_a, top_r), top_ctx, count)
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
            out = _decide(engine, s, a, res, top_ctx if context is None else context, count)
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
    context is not. None when it matches, else why not."""
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
