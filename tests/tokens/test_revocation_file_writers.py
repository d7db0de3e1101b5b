"""``JsonFileRevocationStore``: several stores (processes, threads, two ``policyengine
token revoke`` at once) writing one file must never lose a revocation. Each store read
the file once, and rewrote it from what it held: the last writer's file dropped every
id revoked by the others since it read, and their tokens verified again."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from policyengine.tokens import (
    JsonFileRevocationStore,
    KeySet,
    TokenError,
    mint,
    revoke,
    verify,
)

NOW = 1767225600


def on_disk(path: Path) -> list[str]:
    ids: list[str] = json.loads(path.read_text())["revoked"]
    return ids


def test_two_stores_on_one_file_keep_each_others_revocations(tmp_path: Path) -> None:
    path = tmp_path / "revoked.json"
    a, b = JsonFileRevocationStore(path), JsonFileRevocationStore(path)
    revoke(a, "grant-1")
    revoke(b, "grant-2")  # b read the file before grant-1 was in it
    assert on_disk(path) == ["grant-1", "grant-2"]
    assert b.is_revoked("grant-1") and b.is_revoked("grant-2")
    assert JsonFileRevocationStore(path).is_revoked("grant-1")


def test_a_token_revoked_by_one_store_stays_revoked_after_another_writes(
        tmp_path: Path) -> None:
    keys = KeySet.generate()
    token = mint(keys, issuer="https://auth.example", acting_for="besar",
                 agent="travel-agent", permissions=["flights:*"], ttl=600, now=NOW)
    grant_id = verify(keys, token, now=NOW).grant_id
    path = tmp_path / "revoked.json"
    late = JsonFileRevocationStore(path)  # e.g. a command started earlier
    revoke(JsonFileRevocationStore(path), grant_id)
    revoke(late, "something-else")
    with pytest.raises(TokenError) as info:
        verify(keys, token, now=NOW, revocations=JsonFileRevocationStore(path))
    assert info.value.code == "revoked"


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "revoked.json"
    stores = [JsonFileRevocationStore(path) for _ in range(16)]  # all read it empty
    start = threading.Barrier(len(stores))
    failures: list[BaseException] = []

    def run(i: int) -> None:
        try:
            start.wait()
            revoke(stores[i], f"grant-{i:02d}")
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not failures
    assert on_disk(path) == [f"grant-{i:02d}" for i in range(16)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["revoked.json",
                                                          "revoked.json.lock"]


def test_a_file_spoilt_meanwhile_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "revoked.json"
    store = JsonFileRevocationStore(path)
    revoke(store, "grant-1")
    path.write_text("{not json")
    with pytest.raises(TokenError) as info:
        revoke(store, "grant-2")
    assert info.value.code == "invalid_revocations"
    assert path.read_text() == "{not json"  # left for its owner, never clobbered


def test_changes_move_once_the_ids_are_in(tmp_path: Path) -> None:
    path = tmp_path / "revoked.json"
    a, b = JsonFileRevocationStore(path), JsonFileRevocationStore(path)
    revoke(a, "grant-1")
    before = b.changes
    revoke(b, "grant-2")
    assert b.changes == before + 1 and len(b) == 2
