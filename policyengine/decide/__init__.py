"""Deciding: a checked policy compiled into indexed rules, and requests run against it.

:mod:`._compiled` builds the :class:`CompiledPolicy` (rule index, bounded plan cache, money
per file, tool bindings, budget specs); :mod:`._runtime` is what generated condition code
calls; :mod:`._pipeline` is the one decision pipeline (validate, grant, rules, budgets,
approval) every decision and explanation runs through, :mod:`._evaluator` its rules step;
:mod:`._approvals` holds approval records. Imports :mod:`policyengine.lang` and the
leaves, never the engine.
"""

from policyengine.decide._approvals import (
    Approval,
    ApprovalError,
    ApprovalStore,
    MemoryApprovalStore,
    UnboundRequestError,
    request_digest,
)
from policyengine.decide._compiled import CompiledPolicy, compile_policy
from policyengine.decide._evaluator import Explanation
from policyengine.decide._pipeline import Pipeline, Trace
from policyengine.decide._query import Access, FilteredTools, Permissions, Principals, ToolAccess
from policyengine.decide._shared_approvals import (
    PostgresApprovalStore,
    RedisApprovalStore,
    approvals_from_url,
)

__all__ = [
    "Access",
    "Approval",
    "ApprovalError",
    "ApprovalStore",
    "CompiledPolicy",
    "Explanation",
    "FilteredTools",
    "MemoryApprovalStore",
    "Permissions",
    "Pipeline",
    "PostgresApprovalStore",
    "Principals",
    "RedisApprovalStore",
    "ToolAccess",
    "Trace",
    "UnboundRequestError",
    "approvals_from_url",
    "compile_policy",
    "request_digest",
]
