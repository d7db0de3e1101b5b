"""``policyengine serve --decision-log ...``: the options make each worker's log (file,
overflow policy, checkpoint interval, signing keys), and each served worker writes a
chain of its own that verifies."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import policyengine as pe

REQUESTS = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize(("workers", "overflow"), [(1, None), (2, "deny")])
def test_each_served_worker_writes_a_signed_chain_of_its_own(
        tmp_path: Path, workers: int, overflow: str | None) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "main.policy").write_text('role r: docs:read\nagent "bot": r\n')
    keys = pe.KeySet.generate()
    keys.save(tmp_path / "keys.json")
    keys.save(tmp_path / "public.json", private=False)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "policyengine", "serve", str(tmp_path / "p"), "--port",
         str(port), "--workers", str(workers), "--no-access-log", "--watch-interval", "0",
         "--log-level", "warning", "--keys", str(tmp_path / "keys.json"),
         "--decision-log", str(tmp_path / "d.jsonl"), "--decision-log-checkpoint", "3",
         *(["--decision-log-overflow", overflow] if overflow else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not _ready(url):
            assert time.monotonic() < deadline and proc.poll() is None, (
                proc.stderr.read() if proc.stderr else "")
            time.sleep(0.05)
        with httpx.Client(headers={"Connection": "close"}) as client:
            for i in range(REQUESTS):  # a new connection each: the workers share them
                r = client.post(f"{url}/access/v1/evaluation", json={
                    "subject": {"type": "agent", "id": "bot"}, "action": {"name": "read"},
                    "resource": {"type": "docs", "id": str(i)}})
                assert r.json()["decision"] is True
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    files = sorted(tmp_path.glob("d*.jsonl"))
    names = [f.name for f in files]
    if workers == 1:
        assert names == ["d.jsonl"]
    else:  # one file per worker process, never one chain written by two
        assert names and all(re.fullmatch(r"d-w\d+\.jsonl", n) for n in names), names
    decided = 0
    for f in files:
        kinds = [(rec["kind"], rec.get("log")) for rec in map(json.loads,
                                                              f.read_text().splitlines())]
        assert kinds[0][0] == "log.start"
        assert kinds[0][1]["overflow"] == (overflow or "block")  # type: ignore[index]
        mine = sum(kind == "authorize" for kind, _ in kinds)
        assert sum(kind == "log.checkpoint" for kind, _ in kinds) >= mine // 3, f.name
        decided += mine
    assert decided == REQUESTS
    verified = subprocess.run(
        [sys.executable, "-m", "policyengine", "log", "verify", *map(str, files), "--keys",
         str(tmp_path / "public.json"), "--require-signatures"],
        capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stdout + verified.stderr
