"""policyengine: policy-as-code authorization for AI agents.

>>> import policyengine as pe
>>> engine = pe.Engine.from_source('role reader: docs:*\\nagent "bot": reader')
>>> engine.authorize("bot", "docs:read").status
'allowed'

The public API is what this module exports; everything else may change.
"""

from policyengine import tokens
from policyengine.decide import Approval, ApprovalError, Explanation, MemoryApprovalStore
from policyengine.decision import (
    ApprovalRequired,
    Decision,
    Diagnostic,
    NotAuthorized,
    Obligations,
    ToolDecision,
    ToolDenied,
)
from policyengine.engine import Engine
from policyengine.errors import PolicyEngineError
from policyengine.lang import PolicyError, Problem, format_source, parse
from policyengine.money import (
    CallableRates,
    Currency,
    JsonFileRates,
    Money,
    MoneyError,
    RateError,
    RateSource,
    StaticRates,
    convert,
    get_currency,
    parse_amount,
)
from policyengine.permissions import (
    InvalidPermission,
    is_valid_pattern,
    is_valid_permission,
    permission_matches,
    subsumes,
)
from policyengine.tokens import AttenuationError, Grant, KeySet, TokenError
from policyengine.tools import (
    AsyncGovernedTransport,
    GovernedTransport,
    RedactionResult,
    RedactionRule,
    async_governed_client,
    governed_client,
    redact,
)

__version__ = "0.1.0"
__all__ = [
    "Approval",
    "AsyncGovernedTransport",
    "GovernedTransport",
    "RedactionResult",
    "RedactionRule",
    "async_governed_client",
    "governed_client",
    "redact",
    "ApprovalError",
    "ApprovalRequired",
    "AttenuationError",
    "CallableRates",
    "Currency",
    "Decision",
    "Diagnostic",
    "Engine",
    "Explanation",
    "Grant",
    "InvalidPermission",
    "JsonFileRates",
    "KeySet",
    "MemoryApprovalStore",
    "Money",
    "MoneyError",
    "NotAuthorized",
    "Obligations",
    "PolicyEngineError",
    "PolicyError",
    "Problem",
    "RateError",
    "RateSource",
    "StaticRates",
    "TokenError",
    "ToolDecision",
    "ToolDenied",
    "convert",
    "format_source",
    "get_currency",
    "is_valid_pattern",
    "is_valid_permission",
    "parse",
    "parse_amount",
    "permission_matches",
    "subsumes",
    "tokens",
]
