"""policyengine: policy-as-code authorization for AI agents.

>>> import policyengine as pe
>>> engine = pe.Engine.from_source('role reader: docs:*\\nagent "bot": reader')
>>> engine.authorize("bot", "docs:read").status
'allowed'

The public API is what this module exports; everything else may change.
"""

from typing import TYPE_CHECKING

from policyengine._lazy import lazy_getattr
from policyengine.errors import PolicyEngineError  # a leaf: cheap, and what callers catch

if TYPE_CHECKING:  # the names below load on first use (PEP 562): see __getattr__
    from policyengine import tokens
    from policyengine.decide import (
        Access,
        Approval,
        ApprovalError,
        ApprovalStore,
        Explanation,
        FilteredTools,
        MemoryApprovalStore,
        Permissions,
        Principals,
        ToolAccess,
    )
    from policyengine.decision import (
        ApprovalRequired,
        Decision,
        Diagnostic,
        NotAuthorized,
        Obligations,
        ShadowOutcome,
        ToolDecision,
        ToolDenied,
    )
    from policyengine.engine import Engine, QueryError
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
    "Access",
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
    "ApprovalStore",
    "AttenuationError",
    "CallableRates",
    "Currency",
    "Decision",
    "Diagnostic",
    "Engine",
    "Explanation",
    "FilteredTools",
    "Grant",
    "InvalidPermission",
    "JsonFileRates",
    "KeySet",
    "MemoryApprovalStore",
    "Money",
    "MoneyError",
    "NotAuthorized",
    "Obligations",
    "Permissions",
    "PolicyEngineError",
    "PolicyError",
    "Principals",
    "Problem",
    "QueryError",
    "RateError",
    "RateSource",
    "ShadowOutcome",
    "StaticRates",
    "TokenError",
    "ToolAccess",
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

# Where each public name lives. Nothing is imported until a name is first read, so
# ``import policyengine`` stays cheap: JWT, cryptography and httpx load only for the
# features that use them.
_EXPORTS: dict[str, str] = {
    "Access": "policyengine.decide",
    "Approval": "policyengine.decide",
    "ApprovalError": "policyengine.decide",
    "ApprovalRequired": "policyengine.decision",
    "ApprovalStore": "policyengine.decide",
    "async_governed_client": "policyengine.tools",
    "AsyncGovernedTransport": "policyengine.tools",
    "AttenuationError": "policyengine.tokens",
    "CallableRates": "policyengine.money",
    "convert": "policyengine.money",
    "Currency": "policyengine.money",
    "Decision": "policyengine.decision",
    "Diagnostic": "policyengine.decision",
    "Engine": "policyengine.engine",
    "Explanation": "policyengine.decide",
    "FilteredTools": "policyengine.decide",
    "format_source": "policyengine.lang",
    "get_currency": "policyengine.money",
    "governed_client": "policyengine.tools",
    "GovernedTransport": "policyengine.tools",
    "Grant": "policyengine.tokens",
    "InvalidPermission": "policyengine.permissions",
    "is_valid_pattern": "policyengine.permissions",
    "is_valid_permission": "policyengine.permissions",
    "JsonFileRates": "policyengine.money",
    "KeySet": "policyengine.tokens",
    "MemoryApprovalStore": "policyengine.decide",
    "Money": "policyengine.money",
    "MoneyError": "policyengine.money",
    "NotAuthorized": "policyengine.decision",
    "Obligations": "policyengine.decision",
    "parse": "policyengine.lang",
    "Permissions": "policyengine.decide",
    "Principals": "policyengine.decide",
    "parse_amount": "policyengine.money",
    "permission_matches": "policyengine.permissions",
    "PolicyError": "policyengine.lang",
    "Problem": "policyengine.lang",
    "QueryError": "policyengine.engine",
    "RateError": "policyengine.money",
    "RateSource": "policyengine.money",
    "redact": "policyengine.tools",
    "RedactionResult": "policyengine.tools",
    "RedactionRule": "policyengine.tools",
    "ShadowOutcome": "policyengine.decision",
    "StaticRates": "policyengine.money",
    "subsumes": "policyengine.permissions",
    "TokenError": "policyengine.tokens",
    "tokens": "policyengine.tokens",
    "ToolAccess": "policyengine.decide",
    "ToolDecision": "policyengine.decision",
    "ToolDenied": "policyengine.decision",
}


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
