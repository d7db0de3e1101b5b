"""Helpers for the service tests: a live decision service on 127.0.0.1 (a free port,
uvicorn in a thread, always stopped) over tests/server/policies."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

import policyengine as pe
from policyengine.server import (
    ApiKey,
    Credentials,
    CyclesKey,
    PolicyService,
    ServiceConfig,
    create_app,
    hash_secret,
)

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

# The loopback upstream listens on one port for the whole run, and the service's policy
# names it: the tool wire's host carries the port (taken from the Host header).
_POLICY_SOURCE = Path(__file__).parent / "policies"
_POLICY_COPY = tempfile.TemporaryDirectory(prefix="pe-service-policies-")
POLICIES = Path(_POLICY_COPY.name)
HMAC_KEY = b"a 32-byte secret for pseudonyms!"

SECRETS = {"key_travel": "travel-secret", "key_hotel": "hotel-secret",
           "key_demo": "demo-secret"}
ADMIN = ("ops", "ops-secret")
INGEST_KEY = "ingest-key-travel"
API_KEY = "api-key-travel"  # the budget wires' key of travel-agent


@dataclass
class Running:
    app: PolicyService
    port: int
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


UPSTREAM_PORT = free_port()
for _source in _POLICY_SOURCE.glob("*.policy"):
    (POLICIES / _source.name).write_text(_source.read_text().replace(
        'tool upstream: http "127.0.0.1"', f'tool upstream: http "127.0.0.1:{UPSTREAM_PORT}"'))


@contextlib.contextmanager
def serving(app: Any, port: int | None = None, http: str | None = None) -> Iterator[int]:
    """Run ``app`` under uvicorn in a thread until the block ends: a service with its
    own HTTP protocol, as ``policyengine serve`` runs it (``http="uvicorn"``, or the
    environment's ``PE_TEST_HTTP=uvicorn``: uvicorn's protocol over the ASGI app)."""
    port = port or free_port()
    extra: dict[str, Any] = {}
    if isinstance(app, PolicyService) and (http or os.environ.get(
            "PE_TEST_HTTP", "service")) == "service":
        from policyengine.server._http import ServiceProtocol
        extra["http"] = ServiceProtocol
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False,
                                           lifespan="on", **extra))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("the service did not start")
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(15)


_HASHED: dict[str, str] = {}


def hashed(secret: str) -> str:
    """``hash_secret(secret)``, made once per process: the tenancy tests name the same
    few secrets in many credentials, and each hash is a deliberately slow one."""
    made = _HASHED.get(secret)
    if made is None:
        made = _HASHED[secret] = hash_secret(secret)
    return made


@contextlib.contextmanager
def tenant_service(policy: str, cycles: dict[str, str],
                   api_keys: Iterable[tuple[str, str, str, str | None]],
                   prefixes: dict[str, str], journal: Path) -> Iterator[tuple[str, pe.Engine]]:
    """A live service over ``policy`` for the tenancy tests, until the block ends: each
    tenant's Cycles key is ``cycles[tenant]`` (the secret the SDK sends), each API key
    ``(name, secret, agent, tenant)``, the wires under ``prefixes``; yields its base URL
    and engine. The runcycles SDK's journal goes under ``journal`` unless the
    environment names one."""
    os.environ.setdefault("CYCLES_JOURNAL_DIR", str(journal))
    creds = Credentials(
        cycles_keys=tuple(CyclesKey(t, hashed(secret), t) for t, secret in cycles.items()),
        api_keys=tuple(ApiKey(name, hashed(secret), agent, tenant)
                       for name, secret, agent, tenant in api_keys))
    engine = pe.Engine.from_source(policy)
    app = create_app(engine, credentials=creds, config=ServiceConfig(
        access_log=False, prefixes=prefixes))
    with serving(app) as port:
        yield f"http://127.0.0.1:{port}", engine


def make_service(credentials: Credentials, **config: Any) -> PolicyService:
    keys = pe.KeySet.generate()
    engine = pe.Engine.from_path(str(POLICIES), keys=keys, hmac_key=HMAC_KEY)
    return create_app(engine, credentials=credentials, keys=keys, paths=[str(POLICIES)],
                      config=ServiceConfig(**{"access_log": False, **config}))


class Upstream:
    """A loopback HTTP server standing in for a tool's API: records what arrives."""

    def __init__(self, port: int | None = None) -> None:
        self.received: list[tuple[str, str, Any]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.received.append(("POST", self.path, json.loads(raw) if raw else None))
                body = b'{"ok":true}'
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port or UPSTREAM_PORT), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()




@dataclass
class Recorded:
    """A live service whose engine keeps every decision a wire asked of it."""

    url: str
    engine: pe.Engine
    decisions: list[pe.Decision] = field(default_factory=list)


@contextlib.contextmanager
def recording(policy: str, credentials: Credentials, prefixes: dict[str, str]
              ) -> Iterator[Recorded]:
    """Serve ``policy`` with ``credentials`` on a free loopback port until the block
    ends, recording in ``decisions`` what each wire's ``authorize`` decided (the
    read-only budget check a wire asks before it reserves)."""
    engine = pe.Engine.from_source(policy)
    live = Recorded("", engine)
    asked = engine.authorize

    def recorded(*args: Any, **kwargs: Any) -> pe.Decision:
        d = asked(*args, **kwargs)
        live.decisions.append(d)
        return d

    engine.authorize = recorded  # type: ignore[method-assign]
    app = create_app(engine, credentials=credentials,
                     config=ServiceConfig(access_log=False, prefixes=prefixes))
    with serving(app) as port:
        live.url = f"http://127.0.0.1:{port}"
        yield live
