"""Operations: health, metrics, revision, hot reload (file watching and SIGHUP, last good
policy kept), limits, access logs without secrets, prefixes, the serve command."""

from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from tracengent import TracengentClient, TracengentOptions

import policyengine as pe
from policyengine.server import Credentials, ServiceConfig, create_app, hash_secret

from .service_harness import ADMIN, SECRETS, Running, free_port, make_service, serving

ALLOW_READ = 'role reader: docs:read\nagent "bot": reader\n'
ALLOW_WRITE = 'role reader: docs:read, docs:write\nagent "bot": reader\n'


def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def token(url: str, client_id: str = "key_travel") -> str:
    r = httpx.post(f"{url}/v1/oauth/token", data={
        "grant_type": "client_credentials", "client_id": client_id,
        "client_secret": SECRETS[client_id]})
    return str(r.json()["access_token"])


def test_health_readiness_metrics_and_revision(service: Running) -> None:
    for path in ("/healthz", "/readyz"):
        r = httpx.get(service.url + path)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        assert r.json()["revision"] == service.app.revision
        assert service.app.revision.startswith("sha256:")
    auth = {"Authorization": f"Bearer {token(service.url)}"}
    httpx.post(f"{service.url}/v1/authorize", json={"permission": "flights:book"}, headers=auth)
    httpx.post(f"{service.url}/v1/authorize", json={"permission": "x:y"}, headers=auth)
    httpx.post(f"{service.url}/v1/authorize", content=b"{", headers=auth)
    r = httpx.get(f"{service.url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'policyengine_decisions_total{wire="tracengent",status="allowed"}' in text
    assert 'policyengine_decisions_total{wire="tracengent",status="denied"}' in text
    assert 'policyengine_errors_total{code="malformed_json"}' in text
    assert 'policyengine_request_seconds_bucket{route="authorize",le="+Inf"}' in text
    assert "policyengine_reloads_total" in text
    for r in (httpx.get(f"{service.url}/nope"), httpx.get(f"{service.url}/v1/authorize")):
        assert r.headers["x-policy-revision"] == service.app.revision
        assert r.status_code in (404, 405) and r.json()["allowed"] is False


def test_openapi_is_published_and_names_every_route(service: Running) -> None:
    doc = httpx.get(f"{service.url}/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    for path in ("/v1/oauth/token", "/v1/authorize", "/v1/tool-authorize",
                 "/v1/approvals/{approvalId}", "/v1/delegations/{grantId}/attenuate",
                 "/v1/ingest/events", "/v1/ingest/traces", "/access/v1/evaluation",
                 "/access/v1/evaluations", "/.well-known/authzen-configuration"):
        assert path in doc["paths"], path
    money = doc["components"]["schemas"]["ObligationsOut"]["properties"]["maxAmount"]
    assert {"type": "number"} in money["anyOf"]


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    (tmp_path / "main.policy").write_text(ALLOW_READ)
    return tmp_path


@pytest.fixture
def watched(policy_dir: Path) -> Iterator[Running]:
    engine = pe.Engine.from_path(str(policy_dir))
    admins = Credentials((), {ADMIN[0]: hash_secret(ADMIN[1])})
    app = create_app(engine, paths=[str(policy_dir)], credentials=admins,
                     config=ServiceConfig(access_log=False, watch_interval=0.05))
    with serving(app) as port:
        yield Running(app, port)


def basic(name: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{secret}".encode()).decode()}


def authzen(url: str, action: str) -> bool:
    r = httpx.post(f"{url}/access/v1/evaluation", json={
        "subject": {"type": "agent", "id": "bot"}, "action": {"name": action},
        "resource": {"type": "docs", "id": "1"}})
    return bool(r.json()["decision"])


def test_file_watching_reloads_and_keeps_the_last_good_policy(watched: Running,
                                                              policy_dir: Path) -> None:
    first = watched.app.revision
    assert authzen(watched.url, "read") and not authzen(watched.url, "write")
    (policy_dir / "main.policy").write_text(ALLOW_WRITE)
    assert wait_until(lambda: authzen(watched.url, "write"))
    second = httpx.get(f"{watched.url}/readyz").json()["revision"]
    assert second != first
    (policy_dir / "main.policy").write_text("role reader: docs:read\nagent bot: reader\n")
    admin = basic(*ADMIN)
    assert wait_until(lambda: httpx.get(f"{watched.url}/readyz", headers=admin
                                        ).json()["reloadError"])
    ready = httpx.get(f"{watched.url}/readyz", headers=admin)
    assert ready.status_code == 200 and "E002" in ready.json()["reloadError"]
    assert str(policy_dir) in ready.json()["reloadError"]  # the admin's report: the file
    assert ready.json()["revision"] == second
    # Anyone else (a probe, a wrong or foreign credential) gets the status, the revision
    # and nothing of the report: no path, no line of the policy, and never a 401.
    for headers in ({}, basic(ADMIN[0], "wrong"), {"Authorization": "Bearer x.y.z"}):
        probe = httpx.get(f"{watched.url}/readyz", headers=headers)
        assert probe.status_code == 200
        assert probe.json() == {"status": "ok", "revision": second, "reloadError": None}
        assert str(policy_dir) not in probe.text and "agent bot" not in probe.text
    assert authzen(watched.url, "write")  # the last good policy still decides
    assert 'policyengine_reloads_total{result="failed"}' in httpx.get(
        f"{watched.url}/metrics").text
    (policy_dir / "main.policy").write_text(ALLOW_READ)
    assert wait_until(lambda: not authzen(watched.url, "write"))
    assert httpx.get(f"{watched.url}/readyz").json()["reloadError"] is None


def test_limits(service: Running) -> None:
    auth = {"Authorization": f"Bearer {token(service.url)}"}
    big = b'{"permission":"flights:book","context":{"x":"' + b"a" * 1_100_000 + b'"}}'
    r = httpx.post(f"{service.url}/v1/authorize", content=big,
                   headers={**auth, "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["allowed"] is False
    bomb = gzip.compress(b"[" + b" " * 20_000_000 + b"]")
    r = httpx.post(f"{service.url}/v1/ingest/events", content=bomb, headers={
        **auth, "content-type": "application/json", "content-encoding": "gzip"})
    assert r.status_code == 413
    for content, headers in (
        (b"\x1f\x8b not gzip", {"content-encoding": "gzip"}),
        (b"[]", {"content-encoding": "br"}),
    ):
        r = httpx.post(f"{service.url}/v1/ingest/events", content=content,
                       headers={**auth, "content-type": "application/json", **headers})
        assert r.status_code in (400, 415)
    nested = b'{"permission":"a:b","context":' + b'{"a":' * 100 + b"1" + b"}" * 101
    r = httpx.post(f"{service.url}/v1/authorize", content=nested,
                   headers={**auth, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_deep"
    twice = b'{"permission":"a:b","permission":"flights:book"}'
    r = httpx.post(f"{service.url}/v1/authorize", content=twice,
                   headers={**auth, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "duplicate_key"
    # what other parsers read differently is refused too, by the engine's own decoder
    for body, code in ((b'{"permission":"a:b","context":{"to":"\\ud800"}}', "lone_surrogate"),
                       (b'{"permission":"a:b","context":{"n":' + b"9" * 5000 + b"}}",
                        "number_too_long")):
        r = httpx.post(f"{service.url}/v1/authorize", content=body,
                       headers={**auth, "content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == code


def test_access_log_is_structured_and_keeps_secrets_out(
        credentials: Credentials, caplog: pytest.LogCaptureFixture) -> None:
    app = make_service(credentials, access_log=True)
    with serving(app) as port, caplog.at_level(logging.INFO, "policyengine.server.access"):
        url = f"http://127.0.0.1:{port}"
        tok = token(url)
        httpx.post(f"{url}/v1/authorize", json={"permission": "flights:book",
                                                "context": {"card": "4242424242424242"}},
                   headers={"Authorization": f"Bearer {tok}"})
        httpx.post(f"{url}/v1/oauth/token", data={
            "grant_type": "client_credentials", "client_id": "key_travel",
            "client_secret": "a-wrong-secret"})
    lines = [r.getMessage() for r in caplog.records if r.name == "policyengine.server.access"]
    assert len(lines) == 3
    entries = [json.loads(line) for line in lines]
    assert [e["route"] for e in entries] == ["token", "authorize", "token"]
    assert entries[1]["principal"] == "travel-agent" and entries[1]["decision"] == "allowed"
    assert entries[2]["status"] == 401
    blob = "\n".join(lines)
    for secret in (tok, tok.split(".")[1], SECRETS["key_travel"], "a-wrong-secret",
                   "4242424242424242"):
        assert secret not in blob


def test_tracengent_under_a_path_prefix(credentials: Credentials) -> None:
    app = make_service(credentials, prefixes={"tracengent": "/pdp", "authzen": "/az"})
    with serving(app) as port:
        with TracengentClient(TracengentOptions(
                agent_id="travel-agent", base_url=f"http://127.0.0.1:{port}/pdp",
                client_id="key_travel", client_secret=SECRETS["key_travel"])) as c:
            assert c.authorize("flights:book", {"country": "FR"}).allowed
        assert httpx.post(f"http://127.0.0.1:{port}/v1/authorize",
                          json={"permission": "a:b"}).status_code == 404


# ------------------------------------------------------------------ the serve command
def _serve(policy_dir: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "policyengine", "serve", str(policy_dir), "--port", str(port),
         "--no-access-log", "--watch-interval", "0", "--log-level", "warning", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_reloads_on_sighup_and_stops_gracefully(policy_dir: Path, workers: int) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(policy_dir, port, "--workers", str(workers))
    try:
        assert wait_until(lambda: _up(url), 20), proc.stderr.read() if proc.stderr else ""
        assert authzen(url, "read") and not authzen(url, "write")
        (policy_dir / "main.policy").write_text(ALLOW_WRITE)
        proc.send_signal(signal.SIGHUP)
        # every worker reloads: a run of answers all say yes
        assert wait_until(lambda: all(authzen(url, "write") for _ in range(10)))
        (policy_dir / "main.policy").write_text("garbage here\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert all(authzen(url, "write") for _ in range(10))  # last good policy kept
        proc.send_signal(signal.SIGTERM)
        # uvicorn drains, then re-raises the signal it caught: a clean stop ends by it
        assert proc.wait(20) in (0, -signal.SIGTERM)
        assert proc.stderr is not None and b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def test_serve_refuses_a_bad_policy_and_hashes_secrets(tmp_path: Path) -> None:
    (tmp_path / "bad.policy").write_text("permit x: a:b for role nobody\n")
    r = subprocess.run([sys.executable, "-m", "policyengine", "serve", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "E103" in r.stderr
    r = subprocess.run([sys.executable, "-m", "policyengine", "serve", "--hash-secret"],
                       input="s3cret\n", capture_output=True, text=True, timeout=60,
                       env={**os.environ})
    assert r.returncode == 0
    from policyengine.server import verify_secret
    assert verify_secret("s3cret", r.stdout.strip())
    assert not verify_secret("s3cret\n", r.stdout.strip())


def test_an_engine_or_store_fault_is_a_deny_shaped_500(
        credentials: Credentials, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    app = make_service(credentials)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("store unreachable: password=hunter2")

    monkeypatch.setattr(app.engine, "authorize", broken)
    monkeypatch.setattr(app.engine.approvals, "get", broken)
    with serving(app) as port, caplog.at_level(logging.ERROR, "policyengine.server"):
        url = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {token(url)}"}
        for r in (httpx.post(f"{url}/v1/authorize", json={"permission": "flights:book"},
                             headers=auth),
                  httpx.post(f"{url}/access/v1/evaluation", json={
                      "subject": {"type": "agent", "id": "travel-agent"},
                      "action": {"name": "book"}, "resource": {"type": "flights", "id": "1"}})):
            assert r.status_code == 500
            assert r.json() == {"allowed": False, "status": "denied", "error": {
                "code": "internal_error", "message": "internal error"}}
        # the approval store's fault is an outage the agent retries (503), not a 500
        r = httpx.get(f"{url}/v1/approvals/apr_1", headers=auth)
        assert r.status_code == 503 and "hunter2" not in r.text
        assert r.json()["error"]["code"] == "approval_store_error"
    assert any("internal error" in rec.getMessage() for rec in caplog.records)
    assert any("approval store failed" in rec.getMessage() for rec in caplog.records)


@pytest.mark.redis
def test_two_workers_share_approvals_through_redis(tmp_path: Path) -> None:
    """A pending approval created by one worker is polled (and approved) through any
    worker: the approval store is shared, and each worker has its own connection. (With
    the default in-memory store this test fails: each worker knows only its own.)"""
    import threading

    from conftest import REDIS_URL, require_service, unique_name

    from policyengine.server import hash_secret

    require_service("redis")
    import redis
    prefix = unique_name("serve") + ":"
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "p.policy").write_text(
        'currency EUR\nrole pay: payments:*\nagent "travel-agent": pay\n'
        "approval review: payments:refund over 300 EUR\n")
    (tmp_path / "creds.json").write_text(json.dumps({
        "agents": [{"clientId": "key_travel", "secretHash": hash_secret("s1"),
                    "agent": "travel-agent"}],
        "admins": [{"name": "ops", "secretHash": hash_secret("s2")}]}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(tmp_path / "policy", port, "--workers", "2", "--credentials",
                  str(tmp_path / "creds.json"), "--approvals", f"{REDIS_URL}?prefix={prefix}")
    try:
        assert wait_until(lambda: _up(url), 30), proc.stderr.read() if proc.stderr else ""
        result: dict[str, object] = {}
        with TracengentClient(TracengentOptions(agent_id="travel-agent", base_url=url,
                                                client_id="key_travel",
                                                client_secret="s1")) as client:
            def agent() -> None:
                try:
                    client.ensure_authorized("payments:refund",
                                             {"amount": 400, "currency": "EUR"})
                    result["allowed"] = True
                except Exception as exc:
                    result["error"] = exc

            t = threading.Thread(target=agent)
            t.start()
            admin = ("ops", "s2")
            assert wait_until(lambda: bool(httpx.get(
                f"{url}/v1/admin/approvals?status=pending", auth=admin).json()["items"]))
            pending = httpx.get(f"{url}/v1/admin/approvals?status=pending",
                                auth=admin).json()["items"][0]["approvalId"]
            # every worker sees it (several fresh connections spread over both)
            for _ in range(6):
                with httpx.Client() as fresh:
                    r = fresh.get(f"{url}/v1/admin/approvals?status=pending", auth=admin)
                    assert [i["approvalId"] for i in r.json()["items"]] == [pending]
            assert httpx.post(f"{url}/v1/admin/approvals/{pending}/approve",
                              auth=admin).status_code == 200
            t.join(20)
        assert result == {"allowed": True}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        client_r = redis.Redis.from_url(REDIS_URL)
        keys = list(client_r.scan_iter(match=prefix + "*"))
        if keys:
            client_r.delete(*keys)
        client_r.close()


def test_a_sighup_before_the_service_starts_reloads_once_it_has(policy_dir: Path) -> None:
    """A worker that gets SIGHUP while it is still starting (the supervisor forwards it to
    every worker) neither dies of it nor loses it: the reload runs once it has started."""
    import asyncio

    import policyengine as pe
    from policyengine.server import ServiceConfig, create_app
    from policyengine.server._app import note_early_sighup

    app = create_app(pe.Engine.from_path(policy_dir), paths=[str(policy_dir)],
                     config=ServiceConfig(watch_interval=None))  # only the signal reloads
    before = app.revision
    (policy_dir / "main.policy").write_text(ALLOW_WRITE)
    previous = signal.signal(signal.SIGHUP, note_early_sighup)
    try:
        os.kill(os.getpid(), signal.SIGHUP)

        async def start_then_stop() -> None:
            app.start_background()
            for _ in range(200):
                if app.revision != before:
                    break
                await asyncio.sleep(0.01)
            await app.stop_background()

        asyncio.run(start_then_stop())
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert app.revision != before


def test_two_workers_share_agent_ledger_sessions_through_the_budget_store(
        tmp_path: Path) -> None:
    """``--workers 2`` on one SQLite budget file: an agent-ledger session started on
    either worker takes events and ends through both (every request a new connection,
    so both workers answer). With sessions in a worker's memory, about half of these
    requests would be 404."""
    from policyengine.server import hash_secret

    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "p.policy").write_text(
        'currency USD\nrole llm: llm:*\nagent "ledger-agent": llm\n'
        "budget daily: llm:* limit 2 USD per day per agent\n"
        'price "openai" "gpt-4o": input 2.50 USD, output 10 USD per 1M tokens\n')
    (tmp_path / "creds.json").write_text(json.dumps({"apiKeys": [
        {"name": "lk", "keyHash": hash_secret("ledger-secret"), "agent": "ledger-agent"}]}))
    port = free_port()
    url = f"http://127.0.0.1:{port}/ledger"
    proc = _serve(tmp_path / "policy", port, "--workers", "2", "--credentials",
                  str(tmp_path / "creds.json"), "--prefix", "agent-ledger=/ledger",
                  "--budget-store", f"sqlite:///{tmp_path / 'budgets.db'}")
    head = {"x-api-key": "ledger-secret"}
    try:
        assert wait_until(lambda: _up(f"http://127.0.0.1:{port}"), 30), (
            proc.stderr.read() if proc.stderr else "")
        sessions = [httpx.post(f"{url}/v1/sessions", json={"agentName": "ledger-agent"},
                               headers=head).json()["id"] for _ in range(4)]
        call = {"type": "llm_call", "stepIndex": 0, "provider": "openai", "model": "gpt-4o",
                "prompt": "p",
                "response": "r", "tokensIn": 0, "tokensOut": 10_000, "latencyMs": 1}
        for sid in sessions * 3:
            r = httpx.post(f"{url}/v1/events", json={"sessionId": sid, "events": [call]},
                           headers=head)
            assert r.status_code == 200, r.text
        for sid in sessions:
            r = httpx.post(f"{url}/v1/sessions/{sid}/end",
                           json={"status": "success", "errorMessage": None}, headers=head)
            assert r.status_code == 200, r.text
        for sid in sessions * 2:
            r = httpx.post(f"{url}/v1/events", json={"sessionId": sid, "events": [call]},
                           headers=head)
            assert r.status_code == 409 and r.json()["code"] == "session_ended", r.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
