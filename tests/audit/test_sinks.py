"""The HTTP and stdout sinks, against a loopback collector (a real HTTP server)."""

from __future__ import annotations

import gzip
import http.server
import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import until

import policyengine as pe
from policyengine.audit import DecisionLog, DecisionLogError, HttpSink, StdoutSink


class Collector:
    """Answers each POST with the next status of ``script`` (then 200), keeping the
    records of every request it answered 2xx. A request waits while ``gate`` is clear
    (set: answered at once)."""

    def __init__(self, script: list[int] | None = None) -> None:
        self.script = list(script or [])
        self.gate = threading.Event()
        self.gate.set()
        self.records: list[dict[str, Any]] = []
        self.requests: list[dict[str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["content-length"]))
                outer.gate.wait(30)
                outer.requests.append(dict(self.headers))
                status = outer.script.pop(0) if outer.script else 200
                if 200 <= status < 300:
                    if self.headers.get("content-encoding") == "gzip":
                        raw = gzip.decompress(raw)
                    outer.records.extend(json.loads(x) for x in raw.splitlines())
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/logs"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def test_http_sink_posts_gzip_ndjson_batches(collector: Collector) -> None:
    sink = HttpSink(collector.url, headers={"authorization": "Bearer collector-secret"})
    engine = pe.Engine.from_source('role r: docs:*\nagent "bot": r',
                                   decision_log=DecisionLog(sink, batch_size=64))
    ids = [engine.authorize("bot", "docs:read", {"n": i}).decision_id for i in range(200)]
    assert engine.close()
    assert [r["decision_id"] for r in collector.records if r["kind"] == "authorize"] == ids
    first = collector.requests[0]
    assert first["content-type"] == "application/x-ndjson"
    assert any(r.get("content-encoding") == "gzip" for r in collector.requests)
    assert first["authorization"] == "Bearer collector-secret"
    assert "collector-secret" not in json.dumps(collector.records)


def test_http_sink_retries_429_and_5xx_with_backoff() -> None:
    collector = Collector([503, 429, 500])
    slept: list[float] = []
    try:
        sink = HttpSink(collector.url, retries=3, backoff=0.2, sleep=slept.append)
        sink.write([b'{"seq":1}\n'])
        assert collector.records == [{"seq": 1}]
        assert len(slept) == 3 and slept[0] < slept[1] < slept[2]  # doubling, with jitter
        assert 0.1 <= slept[0] <= 0.2
    finally:
        collector.close()


@pytest.mark.parametrize(("script", "retries", "attempts"), [
    ([503] * 5, 2, 3),   # still failing after its retries
    ([400], 3, 1),       # a client error is not retried
])
def test_http_sink_fails_the_batch_with_a_code(script: list[int], retries: int,
                                                attempts: int) -> None:
    collector = Collector(script)
    try:
        sink = HttpSink(collector.url, retries=retries, sleep=lambda s: None)
        with pytest.raises(DecisionLogError) as err:
            sink.write([b'{"seq":1}\n'])
        assert err.value.code == "sink_failed"
        assert len(collector.requests) == attempts and not collector.records
    finally:
        collector.close()


def test_a_down_collector_is_a_failing_sink_and_the_policy_applies() -> None:
    # The log learns that the collector is down when its first write fails: a decision
    # made before that is taken (and delivered once the collector is back); after it,
    # decisions are denied. The collector holds that first write (log.start) until the
    # first decision is made, so the order does not depend on the writer's timing
    # (before, under load, log.start's 503 came first and the first decision was denied
    # too); stall_after is long so the held write is not taken for a stall either.
    collector = Collector([503] * 1000)
    collector.gate.clear()
    try:
        log = DecisionLog(HttpSink(collector.url, retries=0), overflow="deny",
                          retry_backoff=0.01, stall_after=60.0)
        engine = pe.Engine.from_source('role r: docs:*\nagent "bot": r', decision_log=log)
        assert engine.authorize("bot", "docs:read").allowed
        collector.gate.set()  # the held write is answered 503: the sink is failing
        until(lambda: log.refusal() is not None, "the log to refuse decisions")
        assert not log.healthy
        assert engine.authorize("bot", "docs:read").code == "decision_log_unavailable"
        collector.script.clear()  # the collector is back
        assert log.flush(20)
        assert engine.authorize("bot", "docs:read").allowed
        engine.close()
        assert [r["result"]["reason_code"] for r in collector.records
                if r["kind"] == "authorize"] == ["permitted", "decision_log_unavailable",
                                                 "permitted"]
    finally:
        collector.gate.set()
        collector.close()


def test_stdout_sink_writes_json_lines() -> None:
    out = io.BytesIO()
    engine = pe.Engine.from_source('role r: docs:*\nagent "bot": r',
                                   decision_log=DecisionLog(StdoutSink(out)))
    engine.authorize("bot", "docs:read")
    engine.close()
    kinds = [json.loads(x)["kind"] for x in out.getvalue().splitlines()]
    assert kinds == ["log.start", "authorize", "log.checkpoint"]


def test_otel_sink_exports_one_span_per_record_with_the_documented_attributes() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from policyengine.audit import OTelSink

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    engine = pe.Engine.from_source(
        'role r: docs:*\nagent "bot": r\nforbid no: docs:delete\n'
        'forbid later: docs:read mode log',
        decision_log=DecisionLog(OTelSink(provider.get_tracer("test"))))
    allowed = engine.authorize("bot", "docs:read")
    denied = engine.authorize("bot", "docs:delete")
    engine.close()
    spans = {s.attributes.get("policyengine.decision.id"): s
             for s in exporter.get_finished_spans()}
    a, d = spans[allowed.decision_id], spans[denied.decision_id]
    assert a.name == "authorize" and a.attributes["gen_ai.agent.id"] == "bot"
    assert a.attributes["policyengine.permission"] == "docs:read"
    assert a.attributes["policyengine.decision.status"] == "allowed"
    assert d.attributes["policyengine.decision.reason_code"] == "forbidden"
    assert tuple(d.attributes["policyengine.decision.rules"]) == ("default.no",)
    assert a.attributes["policyengine.policy.revision"] == engine.revision
    assert tuple(a.attributes["policyengine.decision.shadow"]) == (
        "default.later=denied:forbidden",)
    assert "policyengine.decision.shadow" not in d.attributes
    assert a.end_time > a.start_time > 1_700_000_000 * 10**9
    assert len(a.attributes["policyengine.log.hash"]) == 64
    assert {s.name for s in exporter.get_finished_spans()} >= {"log.start", "log.checkpoint"}
