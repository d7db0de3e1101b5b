"""Deciding: a checked policy compiled into indexed rules, and requests run against it.

:mod:`._compiled` builds the :class:`CompiledPolicy` (rule index, bounded plan cache, money
per file, tool bindings, budget specs); :mod:`._runtime` is what generated condition code
calls; :mod:`._evaluator` is the hot path (``evaluate``) and ``explain``; :mod:`._approvals`
holds approval records. Imports :mod:`policyengine.lang` and the leaves, never the engine.
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
from policyengine.decide._evaluator import Explanation, evaluate, explain
from policyengine.decide._shared_approvals import (
    PostgresApprovalStore,
    RedisApprovalStore,
    approvals_from_url,
)

__all__ = [
    "Approval",
    "ApprovalError",
    "ApprovalStore",
    "CompiledPolicy",
    "Explanation",
    "MemoryApprovalStore",
    "PostgresApprovalStore",
    "RedisApprovalStore",
    "UnboundRequestError",
    "approvals_from_url",
    "compile_policy",
    "request_digest",
    "evaluate",
    "explain",
]
