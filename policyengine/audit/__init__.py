"""The decision log: every decision and operation recorded, masked, hash-chained and
never dropped silently (docs/decision-log.md).

>>> import policyengine as pe
>>> from policyengine.audit import CallbackSink, DecisionLog
>>> records = []
>>> log = DecisionLog(CallbackSink(records.append))
>>> engine = pe.Engine.from_source('role r: docs:*\\nagent "bot": r', decision_log=log)
>>> engine.authorize("bot", "docs:read").allowed
True
>>> engine.close()
>>> [r["kind"] for r in records]
['log.start', 'authorize', 'log.checkpoint']

This package is a leaf: the engine hands it finished decisions; it imports nothing above.
"""

from policyengine.audit._chain import Problem, VerifyReport, verify_files
from policyengine.audit._log import INGEST_KINDS, OVERFLOW_POLICIES, DecisionLog, Overflow
from policyengine.audit._otel import OTelSink, span_attributes
from policyengine.audit._record import CREDENTIAL_KEYS, SCHEMA, LogView
from policyengine.audit._sinks import (
    CallbackSink,
    HttpSink,
    JsonlFileSink,
    Sink,
    StdoutSink,
    sink_from_url,
)
from policyengine.audit.errors import DecisionLogError, LogVerifyError

__all__ = [
    "CREDENTIAL_KEYS",
    "INGEST_KINDS",
    "OVERFLOW_POLICIES",
    "SCHEMA",
    "CallbackSink",
    "DecisionLog",
    "DecisionLogError",
    "HttpSink",
    "JsonlFileSink",
    "LogVerifyError",
    "LogView",
    "OTelSink",
    "Overflow",
    "Problem",
    "Sink",
    "StdoutSink",
    "VerifyReport",
    "sink_from_url",
    "span_attributes",
    "verify_files",
]
