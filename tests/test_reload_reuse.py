"""``reload()`` reuses the parse and the compiled rules of unchanged files, and still runs
every check across files: a reload decides exactly as a fresh engine on the same files."""

from __future__ import annotations

import gc
import json
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine import Engine, PolicyError


def write_set(root: Path, n: int) -> None:
    for k in range(n):
        (root / f"f{k}.policy").write_text(
            f"namespace ns{k}\nrole r{k}: a{k}:*\nagent \"bot{k}\": r{k}\n"
            f"forbid big{k}: a{k}:pay when context.n > {k}\n")


def test_reload_parses_and_compiles_only_the_changed_file(tmp_path: Path) -> None:
    write_set(tmp_path, 5)
    engine = Engine.from_path(tmp_path)
    before = engine.policy
    (tmp_path / "f2.policy").write_text(
        "namespace ns2\nrole r2: a2:*\nagent \"bot2\": r2\nforbid big2: a2:pay when "
        "context.n > 100\n")
    engine.reload()
    after = engine.policy
    # Unchanged text parses to the very same file object; its rules keep their tests.
    assert [a is b for a, b in zip(before.files, after.files, strict=True)] == [
        True, True, False, True, True]
    old_tests = {r.qid: r.test for r in before.rules}
    for rule in after.rules:
        if rule.kind == "rule":
            assert (rule.test is old_tests[rule.qid]) == (rule.qid != "ns2.big2")
    # The change took effect, the unchanged files decide as before.
    assert engine.authorize("bot2", "a2:pay", {"n": 50}).allowed
    assert not engine.authorize("bot3", "a3:pay", {"n": 50}).allowed
    assert engine.authorize("bot3", "a3:pay", {"n": 1}).allowed


def test_a_reload_decides_like_a_fresh_engine(tmp_path: Path) -> None:
    write_set(tmp_path, 4)
    engine = Engine.from_path(tmp_path)
    (tmp_path / "f1.policy").write_text("namespace ns1\nrole r1: a1:read\nagent \"bot1\": r1\n")
    engine.reload()
    fresh = Engine.from_path(tmp_path)
    for k in range(4):
        for perm in (f"a{k}:pay", f"a{k}:read", f"a{k}:write"):
            for n in (0, 2, 9):
                got = engine.authorize(f"bot{k}", perm, {"n": n})
                want = fresh.authorize(f"bot{k}", perm, {"n": n})
                assert (got.status, got.code, got.rules) == (want.status, want.code,
                                                             want.rules), (k, perm, n)
    assert [r.qid for r in engine.policy.rules] == [r.qid for r in fresh.policy.rules]
    orders = [r.order for r in engine.policy.rules]
    assert orders == sorted(set(orders)) == [r.order for r in fresh.policy.rules]


def test_checks_across_files_still_run_on_reload(tmp_path: Path) -> None:
    (tmp_path / "roles.policy").write_text("role travel: flights:*\n")
    (tmp_path / "agents.policy").write_text('agent "bot": travel\n')
    engine = Engine.from_path(tmp_path)
    (tmp_path / "roles.policy").write_text("role travel2: flights:*\n")
    with pytest.raises(PolicyError) as info:
        engine.reload()  # agents.policy did not change, but its role is gone
    assert info.value.code == "E103"
    assert info.value.file is not None and info.value.file.endswith("agents.policy")
    assert engine.authorize("bot", "flights:book").allowed  # the old policy stays


def test_a_changed_rates_file_recompiles_an_unchanged_policy(tmp_path: Path) -> None:
    def rates(usd: str) -> None:
        (tmp_path / "fx.json").write_text(json.dumps(
            {"base": "EUR", "as_of": "2026-01-01T00:00:00Z", "rates": {"USD": usd}}))

    rates("0.5")
    (tmp_path / "pay.policy").write_text(
        'currency EUR\nrates "fx.json"\nrole p: pay:*\nagent "bot": p\n'
        "limit cap: pay:send amount <= 100 USD\n")
    engine = Engine.from_path(tmp_path / "pay.policy")
    assert engine.policy.rules[-1].amount_limit == 50
    rates("2")
    before = engine.policy
    engine.reload()
    assert engine.policy.files[0] is before.files[0]  # same text: not parsed again
    assert engine.policy.rules[-1].amount_limit == 200  # but compiled with the new rate


def test_renaming_a_file_is_a_new_file(tmp_path: Path) -> None:
    write_set(tmp_path, 2)
    engine = Engine.from_path(tmp_path)
    before = engine.policy
    (tmp_path / "f1.policy").rename(tmp_path / "g1.policy")
    engine.reload()
    assert engine.policy.files[0] is before.files[0]
    assert engine.policy.files[1] is not before.files[1]
    assert engine.authorize("bot1", "a1:read").allowed
    assert engine.policy.rules[-1].span.file.endswith("g1.policy")


def test_warnings_of_unchanged_files_are_reused_not_recomputed(tmp_path: Path) -> None:
    (tmp_path / "a.policy").write_text("role idle: x:*\nrole used: y:*\nagent \"bot\": used\n")
    (tmp_path / "b.policy").write_text("namespace b\npermit p: y:read\n")
    engine = Engine.from_path(tmp_path)
    (warning,) = engine.warnings  # W202: nobody holds 'idle'
    assert warning.code == "W202"
    (tmp_path / "b.policy").write_text("namespace b\npermit p: y:write\n")
    engine.reload()
    assert engine.warnings[0] is not warning  # the check across files ran again ...
    assert engine.warnings == (warning,)  # ... and found the same
    (tmp_path / "b.policy").write_text("namespace b\npermit p: y:write for role idle\n")
    engine.reload()
    assert engine.warnings == ()  # a rule of another file is now scoped to 'idle'


#: Statements a file of the property below is made of: each declares or names something
#: another file may also declare or need (ids, roles, agents, namespaces, delegation,
#: default currency), so that edits create and remove conflicts across files.
SNIPPETS = [
    "namespace n1", "namespace n2", "role r1: a:*", "role r2: b:*", 'agent "bot": r1',
    'agent "bot2": r2', "permit p: a:read", "permit p: b:read", "forbid p: a:write",
    "forbid stop: a:*", "permit q: a:read for role r2", 'permit q: b:x for agent "bot2"',
    "permit q: a:y for role r3", "delegation {\n  max_depth 3\n}", "default_currency EUR",
    "default_currency USD", "currency EUR", "limit cap: a:pay amount <= 5 EUR",
    "permit w: a:z when context.n > 1",
]
FILE_TEXT = st.lists(st.sampled_from(SNIPPETS), max_size=4).map(
    lambda lines: "\n".join(lines) + "\n")


def _outcome(load: Callable[[], object]) -> object:
    try:
        engine = load()
    except PolicyError as exc:
        return ("error", [(p.code, Path(p.file).name, p.line, p.column, p.message)
                          for p in exc.problems])
    assert isinstance(engine, Engine)
    decisions = [(d.status, d.code, d.rules) for d in (
        engine.authorize(who, perm, {"n": 2}) for who in ("bot", "bot2", "other")
        for perm in ("a:read", "a:write", "a:y", "a:z", "a:pay", "b:read", "b:x"))]
    return ("ok", [(p.code, Path(p.file).name, p.line, p.column, p.message)
                   for p in engine.warnings],
            [(r.qid, r.order) for r in engine.policy.rules], decisions)


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 3), st.none() | FILE_TEXT), min_size=1,
                      max_size=6))
def test_a_reload_reports_and_decides_exactly_as_a_fresh_load(
        steps: list[tuple[int, str | None]]) -> None:
    """Edits, new files and removed files (which move the files after them): after each
    reload, the problems, the rules and the decisions are a fresh engine's."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for k in range(3):
            (root / f"f{k}.policy").write_text(f"namespace base{k}\n")
        engine = Engine.from_path(root)
        for k, text in steps:
            path = root / f"f{k}.policy"
            if text is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(text)
            got = _outcome(lambda: (engine.reload(), engine)[1])
            assert got == _outcome(lambda: Engine.from_path(root))


#: Rules that share permissions, prefixes, ``*`` and scopes, so that the files' indexes
#: overlap on every kind of key.
SHARED_KEYS = [
    "role r1: a:*", "role r2: a:read, b:*", 'agent "bot": r1', 'agent "bot2": r2, r1',
    "permit p1: a:read", "forbid f1: a:write when context.n > 1", "permit p2: *",
    "forbid f2: b:* for role r2", 'permit p3: a:y for agent "bot"', "forbid f3: b:x",
    "approval ap: a:z", "forbid f4: a:read for role r1 when context.n > 5",
]


@settings(max_examples=40, deadline=None)
@given(split=st.lists(st.integers(0, 2), min_size=len(SHARED_KEYS),
                      max_size=len(SHARED_KEYS)),
       n=st.integers(0, 9))
def test_rules_spread_over_files_decide_as_in_one_file(split: list[int], n: int) -> None:
    one = Engine.from_source("\n".join(SHARED_KEYS) + "\n")
    files: dict[str, list[str]] = {}
    for line, k in zip(SHARED_KEYS, split, strict=True):
        files.setdefault(f"f{k}.policy", []).append(line)
    many = Engine.from_sources({name: "\n".join(lines) + "\n"
                                for name, lines in sorted(files.items())})
    for who in ("bot", "bot2", "other"):
        for perm in ("a:read", "a:write", "a:y", "a:z", "b:read", "b:x", "c:x", "a:q"):
            got, want = many.authorize(who, perm, {"n": n}), one.authorize(who, perm, {"n": n})
            assert (got.status, got.code, sorted(got.rules)) == (
                want.status, want.code, sorted(want.rules)), (who, perm)


def test_a_load_leaves_the_collector_on_and_the_programs_frozen_objects_frozen() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self  # a reference cycle: only the cyclic collector frees it

    gc.freeze()
    assert gc.get_freeze_count() > 0
    try:
        Engine.from_source('role r: a:*\nagent "bot": r\n')
        # Still frozen (an unfreeze would leave none; frozen objects that die meanwhile
        # leave the count, so it is not compared exactly).
        assert gc.isenabled() and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    node = Node()
    gone = weakref.ref(node)
    Engine.from_source('role r: a:*\nagent "bot": r\n')  # moves live objects to the
    assert gc.isenabled() and gc.get_freeze_count() == 0  # oldest generation ...
    del node
    gc.collect()
    assert gone() is None  # ... where a full collection still frees their cycles
