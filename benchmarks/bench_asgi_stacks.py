"""Which ASGI stack can carry the decision service? (Measured before choosing one.)

Every variant answers the same ``POST /v1/authorize`` body with the same engine call
(``travel-agent`` / ``flights:book`` on policies/travel) and differs only in the stack:

* ``raw``: a bare ASGI callable, stdlib JSON in and out, no pydantic (the floor);
* ``raw-pydantic``: bare ASGI, body decoded by the stdlib (fractions as ``Decimal``,
  duplicate keys refused) then ``TypeAdapter.validate_python``; response serialised by
  pydantic (``TypeAdapter.dump_json``): what ``policyengine.server`` does;
* ``raw-validate-json``: bare ASGI, ``TypeAdapter.validate_json`` on the raw bytes (fast,
  but fractions arrive as floats: shown for scale only, not usable for money);
* ``starlette``: a Starlette ``Route`` with the ``raw-pydantic`` body handling;
* ``fastapi``: a FastAPI route taking the pydantic model as its body parameter (its usual
  style: FastAPI validates and serialises).

Each is served by uvicorn (httptools + uvloop) and by granian, one worker, and driven by
``_loadgen`` (32 keep-alive connections, closed loop) on the same machine.

    python benchmarks/bench_asgi_stacks.py            # 4 s per cell
    python benchmarks/bench_asgi_stacks.py --quick    # 1.5 s per cell
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

BODY = (b'{"permission":"flights:book","context":{"weekday":2,"cabin":"economy",'
        b'"country":"FR","amount":280.10}}')


class AuthorizeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    permission: str
    context: dict[str, Any] | None = None
    trace_id: str | None = Field(None, alias="traceId")


class DecisionOut(BaseModel):
    allowed: bool
    status: str
    reason: str
    decisionId: str  # noqa: N815 - the wire's spelling


_IN = TypeAdapter(AuthorizeIn)
_OUT = TypeAdapter(DecisionOut)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key")
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_unique, parse_float=Decimal)


def _engine() -> Any:
    import policyengine as pe
    return pe.Engine.from_path(str(ROOT / "policies" / "travel"))


def _answer(engine: Any, req: AuthorizeIn) -> bytes:
    d = engine.authorize("travel-agent", req.permission, req.context)
    return _OUT.dump_json(DecisionOut(allowed=d.allowed, status=d.status, reason=d.reason,
                                      decisionId=d.decision_id))


async def _body(receive: Any) -> bytes:
    chunks = []
    while True:
        msg = await receive()
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            return b"".join(chunks)


_HEADERS = [(b"content-type", b"application/json")]


def make_app(kind: str) -> Any:
    engine = _engine()

    if kind in ("raw", "raw-pydantic", "raw-validate-json"):
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                if scope["type"] == "lifespan":
                    while True:
                        msg = await receive()
                        await send({"type": msg["type"] + ".complete"})
                        if msg["type"] == "lifespan.shutdown":
                            return
                return
            raw = await _body(receive)
            if kind == "raw":
                data = _DECODER.decode(raw.decode())
                d = engine.authorize("travel-agent", data["permission"], data.get("context"))
                out = json.dumps({"allowed": d.allowed, "status": d.status,
                                  "reason": d.reason, "decisionId": d.decision_id}).encode()
            elif kind == "raw-pydantic":
                out = _answer(engine, _IN.validate_python(_DECODER.decode(raw.decode())))
            else:
                out = _answer(engine, _IN.validate_json(raw))
            await send({"type": "http.response.start", "status": 200,
                        "headers": [*_HEADERS, (b"content-length", str(len(out)).encode())]})
            await send({"type": "http.response.body", "body": out})
        return app

    if kind == "starlette":
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        async def authorize(request: Request) -> Response:
            raw = await request.body()
            out = _answer(engine, _IN.validate_python(_DECODER.decode(raw.decode())))
            return Response(out, media_type="application/json")
        return Starlette(routes=[Route("/v1/authorize", authorize, methods=["POST"])])

    if kind == "fastapi":
        from fastapi import FastAPI
        api = FastAPI()

        @api.post("/v1/authorize")
        def authorize_route(req: AuthorizeIn) -> DecisionOut:
            d = engine.authorize("travel-agent", req.permission, req.context)
            return DecisionOut(allowed=d.allowed, status=d.status, reason=d.reason,
                               decisionId=d.decision_id)
        return api
    raise SystemExit(f"unknown stack {kind}")


# The servers import ``bench_asgi_stacks:app``; the stack is chosen by this variable.
if os.environ.get("BENCH_STACK"):
    app = make_app(os.environ["BENCH_STACK"])


def _serve(server: str, port: int, stack: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BENCH_STACK": stack}
    if server == "uvicorn":
        cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "--port", str(port),
               "--host", "127.0.0.1", "--no-access-log", "--log-level", "warning",
               "--loop", "uvloop", "--http", "httptools", "bench_asgi_stacks:app"]
    else:
        cmd = [sys.executable, "-m", "granian", "--interface", "asgi", "--working-dir",
               str(HERE), "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--log-level", "warning", "--no-ws", "bench_asgi_stacks:app"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)


def main() -> None:
    import _loadgen

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--stacks", default="raw,raw-pydantic,raw-validate-json,starlette,fastapi")
    ap.add_argument("--servers", default="uvicorn,granian")
    args = ap.parse_args()
    seconds = 1.5 if args.quick else 4.0
    req = _loadgen.build_request("POST", "/v1/authorize", BODY)
    print(f"{'stack':<18} {'server':<8} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}  status")
    for stack in args.stacks.split(","):
        for server in args.servers.split(","):
            port = _loadgen.free_port()
            proc = _serve(server, port, stack)
            try:
                _loadgen.wait_for_port("127.0.0.1", port)
                time.sleep(0.3)
                r = _loadgen.run("127.0.0.1", port, [req], connections=32, seconds=seconds,
                                 warmup=0.5)
            finally:
                proc.terminate()
                proc.wait(10)
            ok = json.loads(r.sample_body).get("allowed") if r.sample_body else None
            print(f"{stack:<18} {server:<8} {r.per_second:>8.0f} {r.p50_ms:>7.2f} "
                  f"{r.p99_ms:>7.2f}  {r.statuses} allowed={ok}", flush=True)


if __name__ == "__main__":
    main()
