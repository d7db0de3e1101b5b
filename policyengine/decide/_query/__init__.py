"""Reverse queries: what may a principal do, who may do something, which tools may it call.

The rule index of :class:`~policyengine.decide.CompiledPolicy` is read backwards. The
patterns rules name form a tree (two patterns are nested or disjoint), so the permission
space splits into *regions*: a pattern minus the narrower patterns rules name. Every
permission of a region is decided by the same rules, so one answer per region is exact.
For each region the principal holds a permit in, the rules that can decide it are
partially evaluated: what the policy already knows (the principal's id, roles and
attributes, literals) is folded into true or false, and what only a request can tell
(``context.*``, ``amount``, ``grant.*``) stays as a *residual*, printed as policy text.

An answer line says: a request for a permission the line covers is ``allowed`` (or
``pending_approval``) exactly when its ``when`` holds and its ``unless`` does not. The
equivalence with ``authorize`` holds on every request whose conditions evaluate without
error; an error fails closed in ``authorize`` (a forbid applies, a permit does not), so
``authorize`` may refuse what a line lists, never allow what no line lists. Budgets are
state, not policy: a listed permission may still meet an exhausted budget.

Answers are computed once per principal (per permission for :func:`principals_with`) and
kept with the compiled policy in a bounded table: a reload starts afresh. An answer is
complete when returned (its length exact, every line decided); its :class:`Access` lines,
which carry the principal's name, are made when it is first read, so an answer made of
regions worked out before (at index build: those under ``*`` of every role granted it;
for a principal with other scopes there, those regions with its other rules laid over
them) costs no per-line work until then.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from policyengine.decide._query.answers import (
    Access,
    Entries,
    FilteredTools,
    Permissions,
    Principals,
    ToolAccess,
)
from policyengine.decide._query.folding import Subject
from policyengine.decide._query.index import paused
from policyengine.decide._query.permissions import PermissionQueries
from policyengine.decide._query.principals import PrincipalQueries
from policyengine.permissions import MAX_PRINCIPAL_ID, validate_permission

if TYPE_CHECKING:
    from policyengine.decide._compiled import CompiledPolicy

__all__ = ["Access", "FilteredTools", "Permissions", "Principals", "QueryIndex", "ToolAccess",
           "filter_tools", "index_of", "paused", "permissions_of", "principals_with"]


class QueryIndex(PermissionQueries, PrincipalQueries):
    """The compiled policy's rule index, read backwards; built on first query (see
    :class:`~policyengine.decide._query.index.IndexCore`): what every query reads, with
    the parts of ``permissions_of`` and ``principals_with``. ``prepare``: work out now
    the regions several principals share (see :meth:`prepare`)."""

    def __init__(self, policy: CompiledPolicy, prepare: bool = True) -> None:
        super().__init__(policy)
        if prepare:
            self.prepare()


def index_of(policy: CompiledPolicy) -> QueryIndex:
    found: QueryIndex | None = policy.query_index
    if found is None:
        found = paused(lambda: QueryIndex(policy))
        policy.query_index = found
    return found


# ---- the three queries -----------------------------------------------------------------------

def _check_limit(limit: int | None) -> None:
    if limit is not None and (type(limit) is not int or limit < 0):
        raise ValueError("limit must be a non-negative integer or None")


def _principal_id(principal: Any) -> str:
    if type(principal) is not str:
        raise TypeError(f"principal must be a string, not {type(principal).__name__}")
    if not principal or len(principal) > MAX_PRINCIPAL_ID:
        raise ValueError(f"principal id must be 1 to {MAX_PRINCIPAL_ID} characters")
    return principal


def _cut(entries: Sequence[Access], limit: int | None) -> tuple[Sequence[Access], bool]:
    if limit is None or len(entries) <= limit:
        return entries, False
    if isinstance(entries, Entries):
        return entries.head(limit), True
    return tuple(entries[:limit]), True


def permissions_of(policy: CompiledPolicy, principal: str | None = None, *,
                   role: str | None = None, limit: int | None = None) -> Permissions:
    """Every permission pattern ``principal`` (or a holder of only ``role``) may exercise,
    with status and residual conditions. See the module docstring."""
    _check_limit(limit)
    if (principal is None) == (role is None):
        raise TypeError("give exactly one of principal or role=")
    if principal is not None:
        kind, name = "agent", _principal_id(principal)
    else:
        if type(role) is not str or not role:
            raise TypeError("role must be a non-empty string")
        kind, name = "role", role
    index = index_of(policy)
    key = ("permissions", kind, name)
    entries = index.cached(key)
    if entries is None:
        subject = index.subject(kind, name)
        entries = index.keep(key, paused(lambda: index.permissions(subject)))
    shown, truncated = _cut(entries, limit)
    return Permissions(name, kind, shown, len(entries), truncated,
                       kind != "agent" or name in policy.principals)


def principals_with(policy: CompiledPolicy, permission: str, *, limit: int | None = None
                    ) -> Principals:
    """Every principal that may exercise ``permission``: declared agents, roles (a holder
    of only that role) whose own rules permit it, and ``anyone`` when an unscoped permit
    does."""
    _check_limit(limit)
    validate_permission(permission)
    index = index_of(policy)
    key = ("principals", permission)
    entries = index.cached(key)
    if entries is None:
        entries = index.keep(key, paused(lambda: index.principals(permission)))
    shown, truncated = _cut(entries, limit)
    return Principals(permission, shown, len(entries), truncated)


#: Cached for a tool name no tool statement binds.
_UNBOUND = object()


def _tool_name(tool: Any) -> str | None:
    if type(tool) is str:
        return tool
    name = tool.get("name") if isinstance(tool, dict) else getattr(tool, "name", None)
    return name if type(name) is str else None


def filter_tools(policy: CompiledPolicy, principal: str, tools: Iterable[Any], *,
                 transport: str = "mcp") -> FilteredTools:
    """The tools of ``tools`` that ``principal`` may call through ``transport`` (``mcp``
    or ``function``): bound by a tool statement to a permission the principal has a line
    for (allowed or pending, whatever its residual)."""
    name = _principal_id(principal)
    if transport not in ("mcp", "function"):
        raise ValueError("transport must be 'mcp' or 'function'")
    index = index_of(policy)
    named = policy.tools.named if policy.tools is not None else ()
    kept: list[Any] = []
    out: list[ToolAccess] = []
    subject: Subject | None = None
    for tool in tools:
        tool_name = _tool_name(tool)
        binding = None
        if tool_name is not None:
            bkey = ("tool", transport, tool_name)
            binding = index.cached(bkey)
            if binding is None:
                binding = index.keep(bkey, next(
                    (n for n in named if n.kind == transport and n.name.matches(tool_name)),
                    _UNBOUND))
            if binding is _UNBOUND:
                binding = None
        if binding is None:
            out.append(ToolAccess(tool_name, None, None, ()))
            continue
        key = ("access", name, binding.permission)
        lines = index.cached(key)
        if lines is None:
            if subject is None:
                subject = index.subject("agent", name)
            lines = index.keep(key, index.access(subject, binding.permission))
        out.append(ToolAccess(tool_name, binding.qid, binding.permission, lines))
        if lines:
            kept.append(tool)
    return FilteredTools(name, transport, tuple(kept), tuple(out),
                         name in policy.principals)
