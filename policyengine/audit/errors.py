"""Errors of the decision log (codes listed in docs/errors.md)."""

from __future__ import annotations

from policyengine.errors import PolicyEngineError

__all__ = ["DecisionLogError", "LogVerifyError"]


class DecisionLogError(PolicyEngineError):
    """A decision log that cannot be built or used: ``invalid_log_config`` (a bad option
    or sink URL), ``invalid_event`` (an ingested event that is not a JSON object of a
    known kind), ``sink_failed`` (a sink gave up on a batch)."""


class LogVerifyError(PolicyEngineError):
    """A log file that cannot be read for verification (``log_unreadable``)."""
