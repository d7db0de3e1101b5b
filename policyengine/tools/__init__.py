"""Tool calls: request normalisation and patterns, JSONPath and redaction, tool governance
(``tool_authorize``) and the governed httpx client.

:mod:`._patterns` and :mod:`._redaction` are leaves (the checker uses them too);
:mod:`._egress` compiles ``tool`` statements and decides tool calls; :mod:`._http` wraps
httpx around any object with ``tool_authorize``. See ``docs/tools.md``.
"""

from typing import TYPE_CHECKING

from policyengine._lazy import lazy_getattr
from policyengine.tools._egress import CompiledTools, compile_tools, tool_authorize
from policyengine.tools._patterns import (
    MAX_HOST_LENGTH,
    MAX_METHOD_LENGTH,
    MAX_PATH_LENGTH,
    HostPattern,
    NamePattern,
    RoutePattern,
    ToolPatternError,
    ToolRequestError,
    fold_path,
    normalize_host,
    normalize_method,
    normalize_path,
    normalize_scheme,
    split_path,
)
from policyengine.tools._redaction import (
    MASK,
    MISSING,
    STRATEGIES,
    JsonPath,
    RedactionDiagnostic,
    RedactionError,
    RedactionResult,
    RedactionRule,
    check_hmac_key,
    redact,
)

if TYPE_CHECKING:  # loaded on first use (PEP 562): see __getattr__
    from policyengine.tools._http import (
        CONTEXT_EXTENSION,
        DROPPED_HEADERS,
        MAX_BODY_BYTES,
        TOKEN_EXTENSION,
        AsyncGovernedTransport,
        ClientOptionError,
        GovernedTransport,
        ToolAuthorizer,
        async_governed_client,
        build_tool_request,
        governed_client,
    )

__all__ = [
    "CONTEXT_EXTENSION",
    "DROPPED_HEADERS",
    "MASK",
    "MAX_BODY_BYTES",
    "TOKEN_EXTENSION",
    "MAX_HOST_LENGTH",
    "MAX_METHOD_LENGTH",
    "MAX_PATH_LENGTH",
    "MISSING",
    "STRATEGIES",
    "AsyncGovernedTransport",
    "ClientOptionError",
    "CompiledTools",
    "GovernedTransport",
    "HostPattern",
    "JsonPath",
    "NamePattern",
    "RedactionDiagnostic",
    "RedactionError",
    "RedactionResult",
    "RedactionRule",
    "RoutePattern",
    "ToolAuthorizer",
    "ToolPatternError",
    "ToolRequestError",
    "async_governed_client",
    "build_tool_request",
    "check_hmac_key",
    "compile_tools",
    "fold_path",
    "governed_client",
    "normalize_host",
    "normalize_method",
    "normalize_path",
    "normalize_scheme",
    "redact",
    "split_path",
    "tool_authorize",
]

# Names whose modules import heavy dependencies load on first use.
_LAZY: dict[str, str] = {
    "async_governed_client": "policyengine.tools._http",
    "AsyncGovernedTransport": "policyengine.tools._http",
    "build_tool_request": "policyengine.tools._http",
    "ClientOptionError": "policyengine.tools._http",
    "CONTEXT_EXTENSION": "policyengine.tools._http",
    "DROPPED_HEADERS": "policyengine.tools._http",
    "governed_client": "policyengine.tools._http",
    "GovernedTransport": "policyengine.tools._http",
    "MAX_BODY_BYTES": "policyengine.tools._http",
    "TOKEN_EXTENSION": "policyengine.tools._http",
    "ToolAuthorizer": "policyengine.tools._http",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
