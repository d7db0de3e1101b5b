"""``policyengine serve --decision-log ...``: the options make the worker's log."""

from __future__ import annotations

import os
from pathlib import Path

import policyengine as pe
from policyengine.cli import _parser
from policyengine.server._serve import _decision_log


def test_serve_flags_make_a_log_per_worker(tmp_path: Path) -> None:
    args = _parser().parse_args([
        "serve", "policies", "--workers", "2", "--decision-log", str(tmp_path / "d.jsonl"),
        "--decision-log-overflow", "deny", "--decision-log-checkpoint", "50"])
    keys = pe.KeySet.generate()
    log = _decision_log(args, keys)
    try:
        assert log.overflow == "deny" and log.keys is keys
        assert log.sink.path == tmp_path / f"d-w{os.getpid()}.jsonl"  # type: ignore[attr-defined]
    finally:
        log.close()


def test_one_worker_writes_the_file_named_and_no_flag_means_no_log(tmp_path: Path) -> None:
    args = _parser().parse_args(["serve", "policies", "--decision-log",
                                 str(tmp_path / "d.jsonl")])
    log = _decision_log(args, None)
    try:
        assert log.overflow == "block"
        assert log.sink.path == tmp_path / "d.jsonl"  # type: ignore[attr-defined]
    finally:
        log.close()
    assert _decision_log(_parser().parse_args(["serve", "policies"]), None) is None
