"""An OpenTelemetry exporter for the decision log (the ``otel`` extra): one span per
record, named after its ``kind``, from its ``timestamp`` for ``metrics.timer_decision_ns``,
with the attributes of docs/decision-log.md ("OpenTelemetry span attributes")."""

from __future__ import annotations

import calendar
import time
from collections.abc import Sequence
from typing import Any

import orjson

from policyengine.audit.errors import DecisionLogError

__all__ = ["OTelSink", "span_attributes"]


def _ns(timestamp: Any) -> int | None:
    """POSIX nanoseconds of a record's RFC 3339 ``timestamp`` (None if it has none)."""
    if type(timestamp) is not str or len(timestamp) != 30:
        return None
    try:
        sec = calendar.timegm(time.strptime(timestamp[:19], "%Y-%m-%dT%H:%M:%S"))
        return sec * 1_000_000_000 + int(timestamp[20:29])
    except ValueError:
        return None


def span_attributes(record: dict[str, Any]) -> dict[str, Any]:
    """The span attributes of one record (only those it has, no nulls)."""
    found = record.get("result")
    result: dict[str, Any] = found if isinstance(found, dict) else {}
    bundles = record.get("bundles")
    policy = bundles.get("policy") if isinstance(bundles, dict) else None
    revision = policy.get("revision") if isinstance(policy, dict) else None
    pairs: list[tuple[str, Any]] = [
        ("policyengine.record.kind", record.get("kind")),
        ("policyengine.decision.id", record.get("decision_id")),
        ("gen_ai.agent.id", record.get("principal")),
        ("policyengine.permission", record.get("permission")),
        ("policyengine.decision.status", result.get("status")),
        ("policyengine.decision.reason_code", result.get("reason_code")),
        ("policyengine.decision.rules", result.get("rules")),
        ("gen_ai.tool.name", result.get("tool")),
        ("policyengine.tool.outcome", result.get("outcome")),
        ("policyengine.acting_for", record.get("acting_for")),
        ("policyengine.chain", record.get("chain")),
        ("policyengine.policy.revision", revision),
        ("policyengine.log.seq", record.get("seq")),
        ("policyengine.log.hash", record.get("hash")),
        ("policyengine.decision.shadow", _shadow(record.get("shadow"))),
    ]
    out: dict[str, Any] = {}
    for key, value in pairs:
        if value is None:
            continue
        if isinstance(value, list):
            value = [str(v) for v in value]
        out[key] = value
    return out


def _shadow(found: Any) -> list[str] | None:
    """Shadow outcomes as ``ID=STATUS:CODE`` strings (span attributes hold no objects)."""
    if not isinstance(found, list) or not found:
        return None
    return [f"{s.get('id')}={s.get('status')}:{s.get('code')}" for s in found
            if isinstance(s, dict)]


class OTelSink:
    """Exports each record as a span through ``tracer`` (default: the global tracer
    provider's ``policyengine.audit`` tracer). Needs ``opentelemetry-api``
    (``pip install 'policyengine[otel]'``); the SDK and exporter are the application's."""

    def __init__(self, tracer: Any = None) -> None:
        if tracer is None:
            try:
                from opentelemetry import trace
            except ImportError:
                raise DecisionLogError("invalid_log_config", "OTelSink needs "
                                       "opentelemetry-api: pip install 'policyengine[otel]'"
                                       ) from None
            tracer = trace.get_tracer("policyengine.audit")
        self._tracer = tracer

    def write(self, lines: Sequence[bytes]) -> None:
        for line in lines:
            record = orjson.loads(line)
            start = _ns(record.get("timestamp"))
            metrics = record.get("metrics")
            took = metrics.get("timer_decision_ns") if isinstance(metrics, dict) else None
            span = self._tracer.start_span(str(record.get("kind")), start_time=start,
                                           attributes=span_attributes(record))
            end = start + took if start is not None and type(took) is int else None
            span.end(end_time=end)

    def close(self) -> None:
        pass
