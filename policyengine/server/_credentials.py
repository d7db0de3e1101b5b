"""Who may talk to the service: agent client credentials and admin credentials.

A credentials file is JSON::

    {"agents": [{"clientId": "key_travel", "secretHash": "scrypt$...",
                 "agent": "travel-agent", "permissions": ["flights:*"],
                 "ingestKeyHash": "scrypt$...", "tenant": "acme"}],
     "admins": [{"name": "ops", "secretHash": "scrypt$..."}],
     "authzenClients": [{"name": "todo-backend", "secretHash": "scrypt$...",
                         "tenant": "acme"}],
     "apiKeys": [{"name": "ledger-prod", "keyHash": "scrypt$...", "agent": "travel-agent",
                  "tenant": "acme"}],
     "cyclesKeys": [{"name": "acme-prod", "keyHash": "scrypt$...", "tenant": "acme"}]}

Only hashes are stored (scrypt, RFC 7914, with a random salt per secret; make one with
``policyengine serve --hash-secret``). Checks compare in constant time and spend the same
work on an unknown client id as on a known one, so timing does not tell which ids exist.
``permissions`` are what the agent's access token carries for the SDK's *local*
``has_permission`` hint; every request is still decided by the policy.
``authzenClients`` are the PEPs allowed to ask AuthZEN questions (their key as the
``Authorization`` header, bare or after ``Bearer``); without any, the AuthZEN routes are
open to whoever reaches the port. ``apiKeys`` are the bare API keys of the budget wires
(actguard's bearer key, agent-ledger's ``x-api-key``): each binds one agent principal
and, optionally, a tenant. ``cyclesKeys`` are the API keys of the Cycles budget wire
(``X-Cycles-API-Key``), each bound to the one tenant it may spend for.
An ``agents`` or ``authzenClients`` entry's optional ``tenant`` is the partition its
decisions count in (``Engine.authorize(..., partition=)``): the budgets and rate limits
read every value a request names under that tenant; without one, the empty tenant's
partition ``""`` (``tenant:/NAME:VALUE``, as the budget wires charge a key without a
tenant: no value a caller sends names another tenant's counter). Every ``agents`` entry of
one agent gives it the same tenant.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import policyengine as pe
from policyengine.permissions import MAX_PRINCIPAL_ID

__all__ = ["AgentCredential", "ApiKey", "Credentials", "CredentialsError", "CyclesKey",
           "hash_secret",
           "verify_secret"]

# scrypt cost: about 15-40 ms a check here; token requests happen once per agent per
# ~15 minutes, so this buys brute-force resistance at no cost to decisions.
_N, _R, _P = 2**14, 8, 1
_MAXMEM = 64 * 1024 * 1024


class CredentialsError(pe.PolicyEngineError, ValueError):
    """A credentials file that cannot be used (``code``: ``invalid_credentials_file``)."""

    def __init__(self, message: str) -> None:
        super().__init__("invalid_credentials_file", message)


def _store_text(where: str, value: str) -> None:
    """Refuse an agent or tenant name no request can use: empty or longer than
    ``MAX_PRINCIPAL_ID`` characters (a longer agent makes every request
    ``invalid_request``, as the checker's E117 says; a budget keeps a tenant of at most
    as many), or no budget store keeps it (a NUL character or a lone surrogate, which
    JSON writes as a ``\\u`` escape): every request made with it that a budget counts
    would be refused ``invalid_subject``, as the policy checker's E118 says of an
    ``agent`` id."""
    if not value or len(value) > MAX_PRINCIPAL_ID:
        raise CredentialsError(f"{where} has {len(value)} characters: an agent or tenant "
                               f"name has 1 to {MAX_PRINCIPAL_ID} (a longer agent id makes "
                               "every request it makes invalid_request, as the checker's "
                               "E117 says)")
    if not value.isascii() or "\0" in value:
        from policyengine.budgets.ledger import is_store_text
        if not is_store_text(value):
            raise CredentialsError(f"{where} holds a NUL character or a lone surrogate, "
                                   "which no budget store keeps: every request it makes "
                                   "that a budget counts would be refused invalid_subject")


def _tenant_text(where: str, value: object) -> None:
    """A ``tenant`` of an ``agents`` or ``authzenClients`` entry: a non-empty string
    every store keeps (:func:`_store_text`)."""
    if type(value) is not str:
        raise CredentialsError(f"{where} must be a string")
    _store_text(where, value)


#: The sections of named secrets (``{"name", "secretHash"}`` entries) -> the optional keys
#: an entry of it may have beside those: what sets the sections apart is data here, read
#: by the one loop that checks them (a new optional key is a new entry, not a branch).
_NAMED_SECTIONS: dict[str, tuple[str, ...]] = {
    "admins": (),
    "authzenClients": ("tenant",),  # the partition its evaluations count in
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r, p=p,
                          maxmem=_MAXMEM, dklen=32)


def hash_secret(secret: str) -> str:
    """``scrypt$N$r$p$salt$hash`` for a credentials file.

    >>> hash_secret("s3cret").startswith("scrypt$16384$8$1$")
    True
    """
    if not secret:
        raise ValueError("an empty secret cannot be hashed")
    salt = secrets.token_bytes(16)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(_scrypt(secret, salt, _N, _R, _P))}"


def _parse_hash(text: object) -> tuple[int, int, int, bytes, bytes]:
    if type(text) is not str:
        raise CredentialsError("a secret hash must be a string")
    parts = text.split("$")
    try:
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        raise CredentialsError("a secret hash must look like scrypt$N$r$p$salt$hash "
                               "(policyengine serve --hash-secret)") from None
    if not (2**10 <= n <= 2**20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16
            and len(salt) >= 8 and len(digest) == 32):
        raise CredentialsError("scrypt parameters out of range")
    return n, r, p, salt, digest


def verify_secret(secret: str, stored: str) -> bool:
    """Constant-time check of ``secret`` against a :func:`hash_secret` value."""
    n, r, p, salt, digest = _parse_hash(stored)
    return hmac.compare_digest(_scrypt(secret, salt, n, r, p), digest)


# Checked when a client id is unknown, so an unknown id costs what a known one costs.
_DUMMY = hash_secret("policyengine-dummy-secret")


@dataclass(frozen=True)
class AgentCredential:
    client_id: str
    secret_hash: str
    agent: str
    permissions: tuple[str, ...]
    ingest_key_hash: str | None = None
    tenant: str | None = None


@dataclass(frozen=True)
class ApiKey:
    """An API key of the budget wires: the agent it acts as, and its tenant (or None)."""

    name: str
    key_hash: str
    agent: str
    tenant: str | None = None


@dataclass(frozen=True)
class CyclesKey:
    """A Cycles API key (its hash) bound to the tenant it acts for."""

    name: str
    key_hash: str
    tenant: str


class Credentials:
    """Agents and admins loaded from a credentials file (or built in code)."""

    def __init__(self, agents: tuple[AgentCredential, ...] = (),
                 admins: Mapping[str, str] | None = None,
                 authzen_clients: Mapping[str, str] | None = None,
                 api_keys: tuple[ApiKey, ...] = (),
                 cycles_keys: tuple[CyclesKey, ...] = (),
                 authzen_tenants: Mapping[str, str] | None = None) -> None:
        self._agents = {a.client_id: a for a in agents}
        if len(self._agents) != len(agents):
            raise CredentialsError("two agents share a clientId")
        self._admins = dict(admins or {})
        self._authzen = dict(authzen_clients or {})
        self._authzen_tenants = dict(authzen_tenants or {})
        # Agent principal -> the tenant its decisions count in (its agents entries').
        self._decides_in: dict[str, str] = {}
        for a in agents:
            if self._decides_in.setdefault(a.agent, a.tenant or "") != (a.tenant or ""):
                raise CredentialsError(f"agent {a.agent[:64]!r}: its agents entries give "
                                       "it two tenants (an agent's decisions count in "
                                       "one)")
        self._cycles = tuple(cycles_keys)
        if len({k.name for k in self._cycles}) != len(self._cycles):
            raise CredentialsError("two cyclesKeys share a name")
        self._cycles_by_name = {k.name: k for k in self._cycles}
        self._ingest = tuple(a for a in agents if a.ingest_key_hash is not None)
        self._api_keys = tuple(api_keys)
        if len({k.name for k in self._api_keys}) != len(self._api_keys):
            raise CredentialsError("two apiKeys share a name")
        # Agent principal -> the tenants its apiKeys entries bind it to (empty: named
        # by an entry without a tenant, or by an agent credential only).
        tenants: dict[str, set[str]] = {a.agent: set() for a in agents}
        for k in self._api_keys:
            tenants.setdefault(k.agent, set())
            if k.tenant is not None:
                tenants[k.agent].add(k.tenant)
        self._agent_tenants = {agent: frozenset(ts) for agent, ts in tenants.items()}
        # ``tenant:...`` principals are the Cycles wire's: a tenant's own and the agents
        # named on that wire only (``tenant:acme/agent:bot``). An agent named so would
        # spend (and read) such a tenant's budgets from the other wires.
        taken = sorted(a for a in self._agent_tenants if a.startswith("tenant:"))
        if taken:
            raise CredentialsError(f"agent {taken[0][:64]!r}: a name starting with "
                                   "'tenant:' is a tenant's principal on the Cycles wire, "
                                   "never an agent's")
        # Verified admin headers and ingest keys, by SHA-256 of the presented secret, for
        # a minute: a console polling approvals does not pay scrypt on every call.
        self._recent: dict[bytes, tuple[str, float]] = {}
        # Secrets just refused, by SHA-256, for a minute: a client retrying a stale or
        # wrong key in a loop costs one hash a request, not a scrypt check per entry
        # (which an attacker could otherwise ask for at will: 15-40 ms of CPU each).
        self._refused: dict[bytes, float] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Credentials:
        try:
            data = json.loads(Path(path).read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise CredentialsError(f"cannot read credentials file {path}: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> Credentials:
        if not isinstance(data, dict) or set(data) - {"agents", "admins", "authzenClients",
                                                      "apiKeys", "cyclesKeys"}:
            raise CredentialsError("a credentials file is an object with 'agents', "
                                   "'admins', 'authzenClients', 'apiKeys' and 'cyclesKeys' "
                                   "lists")
        agents = []
        for n, item in enumerate(data.get("agents", [])):
            if not isinstance(item, dict) or not {"clientId", "secretHash", "agent"} <= set(
                    item) or set(item) - {"clientId", "secretHash", "agent", "permissions",
                                          "ingestKeyHash", "tenant"}:
                raise CredentialsError("an agent needs clientId, secretHash and agent "
                                       "(optional: permissions, ingestKeyHash, tenant)")
            perms = item.get("permissions", [])
            if not isinstance(perms, list) or not all(pe.is_valid_pattern(p) for p in perms):
                raise CredentialsError(f"agent {item['clientId']!r}: permissions must be a "
                                       "list of permission patterns")
            if type(item["clientId"]) is not str or type(item["agent"]) is not str:
                raise CredentialsError("clientId and agent must be strings")
            _store_text(f"agents[{n}].agent", item["agent"])
            if "tenant" in item:
                _tenant_text(f"agents[{n}].tenant", item["tenant"])
            _parse_hash(item["secretHash"])
            if item.get("ingestKeyHash") is not None:
                _parse_hash(item["ingestKeyHash"])
            agents.append(AgentCredential(item["clientId"], item["secretHash"], item["agent"],
                                          tuple(perms), item.get("ingestKeyHash"),
                                          item.get("tenant")))
        # admins and authzenClients: named secrets (name -> hash) and, where the section
        # takes one, each name's tenant (name -> tenant).
        named: dict[str, dict[str, str]] = {kind: {} for kind in _NAMED_SECTIONS}
        tenants: dict[str, dict[str, str]] = {kind: {} for kind in _NAMED_SECTIONS}
        for kind, optional in _NAMED_SECTIONS.items():
            shape = ("{\"name\", \"secretHash\""
                     + "".join(f", \"{key}\"?" for key in optional) + "}")
            for n, item in enumerate(data.get(kind, [])):
                if not isinstance(item, dict) or not {"name", "secretHash"} <= set(
                        item) or set(item) - {"name", "secretHash", *optional} or type(
                        item["name"]) is not str:
                    raise CredentialsError(f"an entry of {kind} is {shape}")
                _parse_hash(item["secretHash"])
                named[kind][item["name"]] = item["secretHash"]
                if "tenant" in item:
                    _tenant_text(f"{kind}[{n}].tenant", item["tenant"])
                    tenants[kind][item["name"]] = item["tenant"]
        api_keys = []
        for n, item in enumerate(data.get("apiKeys", [])):
            if not isinstance(item, dict) or not {"name", "keyHash", "agent"} <= set(
                    item) or set(item) - {"name", "keyHash", "agent", "tenant"} or any(
                    type(item.get(k, "")) is not str or not item.get(k, "x")
                    for k in ("name", "agent", "tenant")):
                raise CredentialsError("an entry of apiKeys is {\"name\", \"keyHash\", "
                                       "\"agent\", \"tenant\"?} (non-empty strings)")
            for field in ("agent", "tenant"):
                if field in item:
                    _store_text(f"apiKeys[{n}].{field}", item[field])
            _parse_hash(item["keyHash"])
            api_keys.append(ApiKey(item["name"], item["keyHash"], item["agent"],
                                   item.get("tenant")))
        cycles = []
        for n, item in enumerate(data.get("cyclesKeys", [])):
            if not isinstance(item, dict) or set(item) != {"name", "keyHash", "tenant"} or any(
                    type(item[k]) is not str or not item[k] for k in ("name", "tenant")):
                raise CredentialsError('an entry of cyclesKeys is {"name", "keyHash", '
                                       '"tenant"} (non-empty strings)')
            if len(item["tenant"]) > 128:
                raise CredentialsError("a Cycles tenant has at most 128 characters")
            _store_text(f"cyclesKeys[{n}].tenant", item["tenant"])
            _parse_hash(item["keyHash"])
            cycles.append(CyclesKey(item["name"], item["keyHash"], item["tenant"]))
        return cls(tuple(agents), named["admins"], named["authzenClients"], tuple(api_keys),
                   tuple(cycles), tenants["authzenClients"])

    def check_client(self, client_id: str, secret: str) -> AgentCredential | None:
        """The agent whose client credentials these are, or None (same work either way)."""
        presented = f"client\0{client_id}\0{secret}".encode("utf-8", "surrogatepass")
        if self._refused_lately(presented):
            return None
        entry = self._agents.get(client_id)
        ok = verify_secret(secret, entry.secret_hash if entry is not None else _DUMMY)
        if ok and entry is not None:
            return entry
        self._refuse(presented)
        return None

    def _recall(self, presented: bytes) -> str | None:
        digest = hashlib.sha256(presented).digest()
        hit = self._recent.get(digest)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        return None

    def _remember(self, presented: bytes, who: str) -> None:
        digest = hashlib.sha256(presented).digest()
        with self._lock:
            if len(self._recent) > 1024:
                self._recent.clear()
            self._recent[digest] = (who, time.monotonic() + 60.0)

    def _refused_lately(self, presented: bytes) -> bool:
        until = self._refused.get(hashlib.sha256(presented).digest())
        return until is not None and until > time.monotonic()

    def _refuse(self, presented: bytes) -> None:
        digest = hashlib.sha256(presented).digest()
        with self._lock:
            if len(self._refused) > 4096:
                self._refused.clear()
            self._refused[digest] = time.monotonic() + 60.0

    def check_admin(self, name: str, secret: str) -> bool:
        """True when ``name``/``secret`` is an admin credential."""
        presented = f"admin\0{name}\0{secret}".encode("utf-8", "surrogatepass")
        if self._recall(presented) == name:
            return True
        if self._refused_lately(presented):
            return False
        stored = self._admins.get(name)
        ok = verify_secret(secret, stored if stored is not None else _DUMMY)
        if ok and stored is not None:
            self._remember(presented, name)
            return True
        self._refuse(presented)
        return False

    def check_ingest_key(self, key: str) -> str | None:
        """The agent bound to a legacy ``X-Ingest-Key``, or None."""
        presented = f"ingest\0{key}".encode("utf-8", "surrogatepass")
        hit = self._recall(presented)
        if hit is not None:
            return hit
        if self._refused_lately(presented):
            return None
        found = None
        for entry in self._ingest:  # every entry is checked: no early exit on a match
            if verify_secret(key, entry.ingest_key_hash or _DUMMY) and found is None:
                found = entry.agent
        if found is not None:
            self._remember(presented, found)
        else:
            self._refuse(presented)
        return found

    def check_api_key(self, key: str) -> ApiKey | None:
        """The :class:`ApiKey` this bare key is, or None (every entry is checked)."""
        presented = f"api\0{key}".encode("utf-8", "surrogatepass")
        hit = self._recall(presented)
        if hit is not None:
            return next((k for k in self._api_keys if k.name == hit), None)
        if self._refused_lately(presented):
            return None
        found = None
        for entry in self._api_keys:  # every entry: no early exit on a match
            if verify_secret(key, entry.key_hash) and found is None:
                found = entry
        if found is not None:
            self._remember(presented, found.name)
        else:
            self._refuse(presented)
        return found

    def agent_tenants(self, agent: str) -> frozenset[str] | None:
        """The tenants the credentials bind the principal ``agent`` to (the ``tenant`` of
        its ``apiKeys`` entries); an empty set for an agent they name without a tenant
        (an agent credential, an API key without one); None for an agent they never
        name."""
        return self._agent_tenants.get(agent)

    def partition_of(self, agent: str) -> str:
        """The partition the decisions of the principal ``agent`` count in on the
        tracengent wire: the ``tenant`` of its ``agents`` entries, ``""`` (the empty
        tenant's, ``tenant:/NAME:VALUE``, where the budget wires charge a key without a
        tenant) when they give none or do not name it."""
        return self._decides_in.get(agent, "")

    def authzen_partition(self, name: str | None) -> str:
        """The partition an AuthZEN client's evaluations and searches count in: its
        entry's ``tenant``, ``""`` (the empty tenant's) without one (or with the routes
        open: ``name`` None)."""
        return self._authzen_tenants.get(name, "") if name is not None else ""

    @property
    def has_api_keys(self) -> bool:
        return bool(self._api_keys)

    def check_authzen_client(self, key: str) -> str | None:
        """The name of the AuthZEN client (PEP) whose key this is, or None."""
        presented = f"authzen\0{key}".encode("utf-8", "surrogatepass")
        hit = self._recall(presented)
        if hit is not None:
            return hit
        if self._refused_lately(presented):
            return None
        found = None
        for name, stored in self._authzen.items():  # every entry: no early exit
            if verify_secret(key, stored) and found is None:
                found = name
        if found is not None:
            self._remember(presented, found)
        else:
            self._refuse(presented)
        return found

    def check_cycles_key(self, key: str) -> CyclesKey | None:
        """The Cycles API key entry (name, tenant) whose key this is, or None. Every entry
        is checked on a first sight (no early exit); a verified key is remembered for a
        minute by its SHA-256, so the hot path costs one hash."""
        presented = f"cycles\0{key}".encode("utf-8", "surrogatepass")
        hit = self._recall(presented)
        if hit is not None:
            return self._cycles_by_name.get(hit)
        if self._refused_lately(presented):
            return None
        found = None
        for entry in self._cycles or (CyclesKey("", _DUMMY, ""),):
            if verify_secret(key, entry.key_hash) and found is None and entry.name:
                found = entry
        if found is not None:
            self._remember(presented, found.name)
        else:
            self._refuse(presented)
        return found

    @property
    def has_cycles_keys(self) -> bool:
        return bool(self._cycles)

    @property
    def has_authzen_clients(self) -> bool:
        return bool(self._authzen)

    @property
    def has_admins(self) -> bool:
        return bool(self._admins)
