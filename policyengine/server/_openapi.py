"""The service's OpenAPI 3.1 document, generated from its routes and pydantic models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from policyengine.server import _cycles_models as cm
from policyengine.server import _models as m

if TYPE_CHECKING:
    from policyengine.server._app import PolicyService

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{model}"


def openapi_document(service: PolicyService) -> dict[str, Any]:
    import policyengine as pe

    models: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        (m.ErrorResponse, "serialization"), (m.IngestEvent, "validation"),
        (cm.CyclesError, "serialization")]
    for r in service.routes:
        if r.request is not None:
            models.append((r.request, "validation"))
        if r.response is not None:
            models.append((r.response, "serialization"))
    keys, schema = models_json_schema(models, ref_template=_REF)
    components: dict[str, Any] = dict(schema.get("$defs", {}))

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return dict(keys[(model, mode)])  # type: ignore[index]

    error = {"description": "refused (always allowed: false)",
             "content": {"application/json": {"schema": ref(m.ErrorResponse,
                                                              "serialization")}}}
    cycles_error = {"description": "refused (the Cycles protocol's error envelope)",
                    "content": {"application/json": {"schema": ref(cm.CyclesError,
                                                                   "serialization")}}}
    paths: dict[str, Any] = {}
    for r in service.routes:
        op: dict[str, Any] = {"operationId": r.name, "summary": r.summary, "responses": {}}
        ok_code = ("202" if r.name.startswith("ingest") else
                   "201" if r.name == "cycles_event" else "200")
        if r.response is not None:
            op["responses"][ok_code] = {
                "description": "OK",
                "content": {"application/json": {"schema": ref(r.response,
                                                                "serialization")}}}
        elif r.name == "metrics":
            op["responses"]["200"] = {"description": "Prometheus text format",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}}
        else:
            op["responses"]["200"] = {"description": "JSON document",
                                      "content": {"application/json": {"schema": {
                                          "type": "object"}}}}
        if r.request is not None or r.name == "ingest_events":
            if r.name == "ingest_events":
                body_schema: dict[str, Any] = {
                    "type": "array", "items": ref(m.IngestEvent, "validation")}
            else:
                body_schema = ref(r.request, "validation")  # type: ignore[arg-type]
            op["requestBody"] = {"required": r.name not in ("admin_approve", "admin_reject"),
                                 "content": {r.content_type: {"schema": body_schema}}}
        params = [part[1:-1] for part in r.path.split("/") if part.startswith("{")]
        if params:
            op["parameters"] = [{"name": p, "in": "path", "required": True,
                                 "schema": {"type": "string"}} for p in params]
        if r.name == "admin_approvals":
            op["parameters"] = [{"name": "status", "in": "query", "required": False,
                                 "schema": {"type": "string",
                                            "enum": ["pending", "approved", "rejected", "used",
                                                     "expired"]}}]
        refused = cycles_error if r.error_body is not None else error
        if r.security is not None:
            scheme = {"admin": "adminBasic", "apikey_header": "apiKeyHeader",
                      "apikey_bearer": "apiKeyBearer", "cycles": "cyclesApiKey"}.get(
                r.security, "bearer")
            op["security"] = [{scheme: []}]
            op["responses"]["401"] = refused
        if r.request is not None or r.name == "ingest_events":
            op["responses"]["400"] = refused
            op["responses"]["413"] = refused
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "policyengine decision service", "version": pe.__version__,
                 "description": "tracengent, AuthZEN 1.0 and Cycles wires over a policyengine "
                                "Engine. Every response carries x-policy-revision."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "adminBasic": {"type": "http", "scheme": "basic"},
                "apiKeyBearer": {"type": "http", "scheme": "bearer",
                                 "description": "an API key of the credentials' apiKeys"},
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                "cyclesApiKey": {"type": "apiKey", "in": "header",
                                 "name": "X-Cycles-API-Key"},
            },
        },
    }
