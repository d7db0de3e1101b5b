"""AuthZEN search answers in the decision log, through the live service: one record per
answer (what was asked, by whom, how many results, the policy revision), masked like a
decision's input, in the same hash chain as the evaluations; none for a refused search;
and, under the log's ``deny`` policy, no answer the log cannot record."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

import policyengine as pe
from policyengine.audit import DecisionLog, verify_files
from policyengine.server import Credentials, ServiceConfig, create_app, hash_secret

from .service_harness import serving

REPO = Path(__file__).resolve().parents[2]
POLICY = (REPO / "policies" / "authzen-search" / "search.policy").read_text("utf-8")
#: The policy's own masking rule, which a search's input must honour like a decision's.
LOGGED = POLICY + "\nlog redact $.context.ticket mask\n"
KEY = "search-pep-key"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[str, pe.Engine, Path]]:
    path = tmp_path_factory.mktemp("searchlog") / "decisions.jsonl"
    engine = pe.Engine.from_source(LOGGED, decision_log=str(path))
    creds = Credentials.from_dict({"authzenClients": [
        {"name": "records-pep", "secretHash": hash_secret(KEY)}]})
    app = create_app(engine, credentials=creds, config=ServiceConfig(access_log=False))
    try:
        with serving(app) as port:
            yield f"http://127.0.0.1:{port}", engine, path
    finally:
        engine.close()


def records(engine: pe.Engine, path: Path) -> list[dict[str, Any]]:
    assert engine.decision_log is not None and engine.decision_log.flush(20)
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def post(url: str, what: str, body: dict[str, Any], key: str | None = KEY
         ) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}/access/v1/{what}", json=body, headers=headers)


SUBJECT = {"subject": {"type": "user"}, "action": {"name": "edit"},
           "resource": {"type": "record", "id": "101"}}
RESOURCE = {"subject": {"type": "user", "id": "alice"}, "action": {"name": "view"},
            "resource": {"type": "record"}, "context": {"ticket": "T-42", "api_key": "k"}}
ACTION = {"subject": {"type": "user", "id": "bob"}, "resource": {"type": "record",
                                                                 "id": "102"}}


def test_each_search_answer_is_one_record_in_the_chain(
        live: tuple[str, pe.Engine, Path]) -> None:
    url, engine, path = live
    before = len(records(engine, path))
    answers = {kind: post(url, f"search/{kind}", body) for kind, body in (
        ("subject", SUBJECT), ("resource", RESOURCE), ("action", ACTION))}
    assert all(r.status_code == 200 for r in answers.values())
    evaluation = post(url, "evaluation", {**ACTION, "action": {"name": "view"}})
    assert evaluation.status_code == 200
    written = records(engine, path)[before:]
    assert [r["kind"] for r in written] == ["search.subject", "search.resource",
                                            "search.action", "authorize"]
    by = {r["kind"]: r for r in written}
    for kind, answer in answers.items():
        record = by[f"search.{kind}"]
        results = answer.json()["results"]
        assert results  # each scenario answers something: the count is not trivially 0
        assert record["result"] == {"results": len(results), "total": len(results),
                                    "more": False}
        assert record["client"] == "records-pep"
        assert record["bundles"]["policy"]["revision"] == engine.revision
        assert record["metrics"]["timer_search_ns"] > 0
    subject, resource, action = (by[f"search.{k}"] for k in ("subject", "resource",
                                                              "action"))
    assert (subject["principal"], subject["permission"]) == (None, "record:edit")
    assert (resource["principal"], resource["permission"]) == ("alice", "record:view")
    assert (action["principal"], action["permission"]) == ("bob", None)
    # the input has a decision's shape: the request's subject, resource and action in
    # its context, as an evaluation of the same request is logged
    assert subject["input"]["context"]["resource"] == SUBJECT["resource"]
    assert action["input"]["context"]["subject"] == ACTION["subject"]
    assert by["authorize"]["input"]["context"]["subject"] == ACTION["subject"]
    # masked like a decision's input: the policy's rule and the credential rule
    assert resource["input"]["context"]["ticket"] != "T-42"
    assert resource["input"]["context"]["api_key"] == "***REDACTED***"
    assert sorted(resource["masked"]) == ["$.context.api_key", "$.context.ticket"]
    seqs = [r["seq"] for r in written]
    assert seqs == list(range(seqs[0], seqs[0] + 4))
    assert written[0]["prev"] == records(engine, path)[before - 1]["hash"]
    report = verify_files([path])
    assert report.ok, report.to_dict()


def test_a_page_records_its_own_count_and_that_more_follow(
        live: tuple[str, pe.Engine, Path]) -> None:
    url, engine, path = live
    before = len(records(engine, path))
    first = post(url, "search/resource", {**RESOURCE, "page": {"limit": 1}})
    assert first.status_code == 200
    page = first.json()["page"]
    assert page["count"] == 1 and page["total"] > 1
    [record] = records(engine, path)[before:]
    assert record["result"] == {"results": 1, "total": page["total"], "more": True}
    assert record["input"]["page"] == {"limit": 1}


def test_a_refused_search_writes_nothing(live: tuple[str, pe.Engine, Path]) -> None:
    url, engine, path = live
    before = len(records(engine, path))
    assert post(url, "search/action", ACTION, key=None).status_code == 401
    assert post(url, "search/action", ACTION, key="wrong").status_code == 401
    bad_page = {**RESOURCE, "page": {"token": "not-a-token"}}
    assert post(url, "search/resource", bad_page).status_code == 400
    assert records(engine, path)[before:] == []


class _DownSink:
    """A sink whose collector is down: every write fails."""

    def __init__(self) -> None:
        self.tried = threading.Event()

    def write(self, lines: Sequence[bytes]) -> None:
        self.tried.set()
        raise OSError("collector down")

    def close(self) -> None:
        pass


def test_under_the_deny_policy_a_search_the_log_cannot_record_is_not_answered() -> None:
    sink = _DownSink()
    log = DecisionLog(sink, overflow="deny", stall_after=0.05, retry_backoff=0.01,
                      max_retry_backoff=0.02)
    engine = pe.Engine.from_source(POLICY, decision_log=log)
    app = create_app(engine, config=ServiceConfig(access_log=False))
    try:
        with serving(app) as port:
            url = f"http://127.0.0.1:{port}"
            assert sink.tried.wait(10)  # log.start failed: the log is not taking records
            deadline = time.monotonic() + 10
            while log.healthy and time.monotonic() < deadline:
                time.sleep(0.01)
            r = post(url, "search/action", ACTION, key=None)
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "decision_log_unavailable"
            # as an evaluation is denied: no answer without a record
            e = post(url, "evaluation", {**ACTION, "action": {"name": "view"}}, key=None)
            assert e.json()["context"]["reasonCode"] == "decision_log_unavailable"
    finally:
        engine.close(timeout=0.5)
