"""policyengine: policy-as-code authorization for AI agents."""

from policyengine.decision import (
    ApprovalRequired,
    Decision,
    Diagnostic,
    NotAuthorized,
    Obligations,
    ToolDecision,
    ToolDenied,
)
from policyengine.permissions import permission_matches, subsumes

__version__ = "0.1.0"
__all__ = [
    "ApprovalRequired",
    "Decision",
    "Diagnostic",
    "NotAuthorized",
    "Obligations",
    "ToolDecision",
    "ToolDenied",
    "permission_matches",
    "subsumes",
]
