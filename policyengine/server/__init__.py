"""The decision service: policyengine over HTTP for the agent SDKs and AuthZEN clients.

>>> import policyengine as pe
>>> from policyengine.server import create_app
>>> app = create_app(pe.Engine.from_source('role r: docs:*\\nagent "bot": r'))

``app`` is an ASGI application (run it with any ASGI server, or ``policyengine serve``).
It speaks the tracengent wire (``/v1/oauth/token``, ``/v1/authorize``,
``/v1/tool-authorize``, approvals, delegation, ingestion), the Cycles budget protocol
(``/v1/reservations``, ``/v1/decide``, ``/v1/events``, ``/v1/balances``: runcycles) and
AuthZEN 1.0 (``/access/v1/evaluation(s)``). See docs/service.md. Needs ``policyengine[server]``
only to *run* a server; the application itself uses pydantic alone.
"""

from typing import TYPE_CHECKING

from policyengine._lazy import lazy_getattr

if TYPE_CHECKING:  # loaded on first use (PEP 562): `policyengine serve` imports _serve only
    from policyengine.server._app import PolicyService, ServiceConfig, create_app
    from policyengine.server._credentials import (
        AgentCredential,
        ApiKey,
        Credentials,
        CredentialsError,
        CyclesKey,
        hash_secret,
        verify_secret,
    )

__all__ = [
    "AgentCredential",
    "ApiKey",
    "Credentials",
    "CredentialsError",
    "CyclesKey",
    "PolicyService",
    "ServiceConfig",
    "create_app",
    "hash_secret",
    "verify_secret",
]

_LAZY: dict[str, str] = {
    "AgentCredential": "policyengine.server._credentials",
    "ApiKey": "policyengine.server._credentials",
    "create_app": "policyengine.server._app",
    "Credentials": "policyengine.server._credentials",
    "CredentialsError": "policyengine.server._credentials",
    "CyclesKey": "policyengine.server._credentials",
    "hash_secret": "policyengine.server._credentials",
    "PolicyService": "policyengine.server._app",
    "ServiceConfig": "policyengine.server._app",
    "verify_secret": "policyengine.server._credentials",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
