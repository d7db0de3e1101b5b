"""Engine API: construction, reload (atomic, keeps old policy on error), ensure_authorized,
explain, wire shape, decision ids."""

from __future__ import annotations

import re
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import Clock
from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine.decision import ApprovalRequired, NotAuthorized
from policyengine.engine import Engine
from policyengine.lang import PolicyError

ROLES = 'role r: docs:*\nagent "bot": r\n'


def test_public_api_exports() -> None:
    import policyengine

    for name in ("Engine", "PolicyError", "NotAuthorized", "ApprovalRequired", "Decision",
                 "permission_matches", "subsumes"):
        assert hasattr(policyengine, name), name


def test_from_source(make_engine) -> None:  # type: ignore[no-untyped-def]
    eng = make_engine(ROLES)
    assert eng.authorize("bot", "docs:read").allowed
    assert not eng.authorize("bot", "mail:read").allowed


def test_from_source_bytes_and_error() -> None:
    assert Engine.from_source(ROLES.encode()).authorize("bot", "docs:x").allowed
    with pytest.raises(PolicyError) as info:
        Engine.from_source("role r: docs:*\nagent \"bot\": q", name="bad.policy")
    assert (info.value.code, info.value.file, info.value.line) == ("E103", "bad.policy", 2)


def test_from_sources_merges() -> None:
    eng = Engine.from_sources({"a.policy": "role r: docs:*", "b.policy": 'agent "bot": r'})
    assert eng.authorize("bot", "docs:read").allowed


def test_from_path_dir_file_and_several(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "roles.policy").write_text("role r: docs:*\n")
    (tmp_path / "sub" / "agents.policy").write_text('agent "bot": r\n')
    (tmp_path / "ignored.txt").write_text("garbage")
    assert Engine.from_path(tmp_path).authorize("bot", "docs:read").allowed
    assert Engine.from_path(str(tmp_path)).authorize("bot", "docs:read").allowed
    eng = Engine.from_path(tmp_path / "roles.policy", tmp_path / "sub" / "agents.policy")
    assert eng.authorize("bot", "docs:read").allowed
    with pytest.raises(PolicyError) as info:
        Engine.from_path(tmp_path / "sub" / "agents.policy")  # role r is elsewhere
    assert info.value.code == "E103"


def test_from_path_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        Engine.from_path(tmp_path / "missing.policy")
    assert info.value.code == "E010"
    with pytest.raises(PolicyError) as info:
        Engine.from_path(tmp_path)  # empty dir
    assert info.value.code == "E010"
    with pytest.raises(TypeError):
        Engine.from_path()


def test_shipped_policies_load() -> None:
    root = Path(__file__).resolve().parent.parent / "policies"
    Engine.from_path(root)  # all example sets load together
    eng = Engine.from_path(root / "travel")
    d = eng.authorize("travel-agent", "payments:refund",
                      {"amount": "280", "currency": "USD", "country": "FR"})
    assert d.allowed
    assert eng.authorize("travel-agent", "payments:refund",
                         {"amount": "280", "currency": "USD", "country": "KP"}).status == "denied"


def test_warnings_exposed(make_engine) -> None:  # type: ignore[no-untyped-def]
    eng = make_engine(ROLES + "role unused: x:y")
    assert [w.code for w in eng.warnings] == ["W202"]


def test_reload_picks_up_changes_and_keeps_old_on_error(tmp_path: Path) -> None:
    f = tmp_path / "p.policy"
    f.write_text(ROLES)
    eng = Engine.from_path(f)
    assert eng.authorize("bot", "docs:read").allowed
    f.write_text(ROLES + "forbid no: docs:read\n")
    eng.reload()
    assert not eng.authorize("bot", "docs:read").allowed
    f.write_text(ROLES + "forbid no: docs:read when\n")
    with pytest.raises(PolicyError):
        eng.reload()
    assert not eng.authorize("bot", "docs:read").allowed  # old policy still in force
    assert eng.authorize("bot", "docs:write").allowed
    f.unlink()
    with pytest.raises(PolicyError):
        eng.reload()
    assert eng.authorize("bot", "docs:write").allowed


def test_reload_is_atomic_under_concurrent_reads(tmp_path: Path) -> None:
    f = tmp_path / "p.policy"
    version_a = ROLES + "permit a1: t:x\npermit a2: t:x\n"
    version_b = ROLES + "permit b1: t:x\npermit b2: t:x\n"
    f.write_text(version_a)
    eng = Engine.from_path(f)
    seen: set[tuple[str, ...]] = set()
    problems: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                d = eng.authorize("bot", "t:x")
                seen.add(d.rules)
        except BaseException as exc:
            problems.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(40):
            f.write_text(version_b if i % 2 == 0 else version_a)
            eng.reload()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert problems == []
    assert seen <= {("default.a1", "default.a2"), ("default.b1", "default.b2")}
    assert len(seen) == 2


def test_ensure_authorized(make_engine) -> None:  # type: ignore[no-untyped-def]
    eng = make_engine(ROLES + "approval big: docs:delete when context.n > 5")
    assert eng.ensure_authorized("bot", "docs:read").allowed
    with pytest.raises(NotAuthorized) as info:
        eng.ensure_authorized("bot", "mail:read")
    assert not isinstance(info.value, ApprovalRequired)
    assert info.value.decision.status == "denied"
    assert info.value.code == "no_permit"
    with pytest.raises(ApprovalRequired) as info2:
        eng.ensure_authorized("bot", "docs:delete", {"n": 9})
    assert info2.value.approval_id
    assert info2.value.decision.status == "pending_approval"
    assert isinstance(info2.value, NotAuthorized)


def test_explain_says_which_condition_failed(make_engine) -> None:  # type: ignore[no-untyped-def]
    eng = make_engine('agent "bot"\npermit p: docs:read when context.a == 1 and context.b == 2'
                      "\nforbid f: docs:* when context.c == 3")
    exp = eng.explain("bot", "docs:read", {"a": 1, "b": 5, "c": 0})
    assert exp.decision.status == "denied"
    by_rule = {r["rule"]: r for r in exp.rules}
    assert by_rule["default.p"]["result"] == "does not apply"
    assert by_rule["default.p"]["conditions"] == [
        {"kind": "when", "text": "context.a == 1 and context.b == 2", "result": "fails"}]
    assert by_rule["default.f"]["result"] == "does not apply"
    text = str(exp)
    assert "default.p" in text and "context.a == 1 and context.b == 2" in text
    assert "fails" in text
    exp2 = eng.explain("bot", "docs:read", {"a": 1, "b": 2})
    by_rule = {r["rule"]: r for r in exp2.rules}
    assert by_rule["default.f"]["conditions"][0]["result"].startswith("error missing_attribute")
    assert by_rule["default.f"]["result"] == "applies"
    assert exp2.to_dict()["decision"]["status"] == "denied"


def test_explain_scope(make_engine) -> None:  # type: ignore[no-untyped-def]
    eng = make_engine(ROLES + 'role q: z:z\nagent "other": q\npermit p: docs:read for role q')
    exp = eng.explain("bot", "docs:read")
    by_rule = {r["rule"]: r for r in exp.rules}
    assert by_rule["default.p"]["result"].startswith("not in scope")
    assert by_rule["role:r"]["result"] == "applies"


def test_to_wire_keys_are_camel_case(make_engine) -> None:  # type: ignore[no-untyped-def]
    eng = make_engine("currency EUR\n" + ROLES + "limit cap: docs:buy amount <= 10 EUR")
    d = eng.authorize("bot", "docs:buy", {"amount": "5", "currency": "EUR"})
    wire = d.to_wire()
    for key in ("allowed", "status", "reason", "decisionId", "approvalId", "actingFor",
                "chain", "obligations"):
        assert key in wire
    camel = re.compile(r"[a-z]+([A-Z][a-z0-9]*)*")
    assert all(camel.fullmatch(k) for k in wire)
    assert all(camel.fullmatch(k) for k in wire["obligations"])
    assert set(wire["obligations"]) == {"maxAmount", "requireApprovalOver", "redactFields",
                                        "currency"}
    assert wire["allowed"] is True and wire["status"] == "allowed"
    assert Decimal(wire["obligations"]["maxAmount"]) == 10
    assert wire["decisionId"] == d.decision_id
    import json
    json.dumps(wire)


def test_pending_wire_has_approval_id(make_engine) -> None:  # type: ignore[no-untyped-def]
    eng = make_engine(ROLES + "approval all: docs:*")
    wire = eng.authorize("bot", "docs:read").to_wire()
    assert wire["status"] == "pending_approval" and wire["allowed"] is False
    assert isinstance(wire["approvalId"], str) and wire["approvalId"]


def test_decision_ids_are_lazy_and_unique(make_engine) -> None:  # type: ignore[no-untyped-def]
    eng = make_engine(ROLES)
    d = eng.authorize("bot", "docs:read")
    later = eng.authorize("bot", "docs:read")
    # Ids count up as they are made: one made on first read comes after a later
    # decision's if that one was read first.
    assert int(later.decision_id.rsplit("_", 1)[1]) < int(d.decision_id.rsplit("_", 1)[1])
    first = d.decision_id
    assert d.decision_id == first
    ids: list[str] = []

    def work() -> None:
        ids.extend(eng.authorize("bot", "docs:read").decision_id for _ in range(2000))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids.append(first)
    assert len(set(ids)) == len(ids) == 8001


# ---- options of the wrong kind: refused when the engine is built, never per request ----

TOKEN_POLICY = 'role r: docs:*\nagent "bot": r\n'
BAD_KEYS = [{"keys": []}, "keys.json", 42, [], b"secret", object()]


def _token() -> str:
    from policyengine import tokens
    keys = tokens.KeySet.generate()
    return tokens.mint(keys, issuer="https://auth.example", acting_for="alice",
                       agent="bot", permissions=["docs:*"], ttl=600)


@pytest.mark.parametrize("keys", BAD_KEYS, ids=lambda k: type(k).__name__)
def test_keys_of_the_wrong_kind_are_refused_at_construction(keys: object) -> None:
    from policyengine import PolicyEngineError
    from policyengine.engine import EngineOptionError
    with pytest.raises(EngineOptionError) as info:
        Engine.from_source(TOKEN_POLICY, keys=keys)
    assert isinstance(info.value, PolicyEngineError) and isinstance(info.value, TypeError)
    assert info.value.code == "invalid_option" and "KeySet" in info.value.message
    # replacing the keys of a running engine is refused the same way, and changes nothing
    engine = Engine.from_source(TOKEN_POLICY)
    with pytest.raises(EngineOptionError):
        engine.keys = keys
    assert engine.keys is None
    token = _token()
    for decide in (engine.authorize, engine.explain):
        d = decide("bot", "docs:read", {}, token=token)
        d = getattr(d, "decision", d)
        assert (d.status, d.code, d.diagnostics[0].code) == ("denied", "invalid_token",
                                                              "no_keys")
    with pytest.raises(NotAuthorized):
        engine.ensure_authorized("bot", "docs:read", {}, token=token)


@pytest.mark.parametrize("clock", ["x", 1700000000, 1.5, None.__class__, lambda: "now",
                                   lambda: True, lambda: None])
def test_a_clock_of_the_wrong_kind_is_refused_at_construction(clock: object) -> None:
    from policyengine.engine import EngineOptionError
    with pytest.raises(EngineOptionError) as info:
        Engine.from_source(TOKEN_POLICY, clock=clock)
    assert info.value.code == "invalid_option" and "clock" in info.value.message


def test_a_usable_clock_and_keys_are_taken() -> None:
    from policyengine import tokens
    keys = tokens.KeySet.generate()
    engine = Engine.from_source(TOKEN_POLICY, keys=keys, clock=lambda: 1_700_000_000)
    token = tokens.mint(keys, issuer="https://auth.example", acting_for="alice",
                        agent="bot", permissions=["docs:*"], ttl=600, now=1_700_000_000)
    assert engine.authorize("bot", "docs:read", token=token).allowed
    assert Engine.from_source(TOKEN_POLICY, clock=lambda: 1.5).authorize("bot",
                                                                         "docs:x").allowed


@pytest.mark.parametrize("store", [{"revoked": []}, ["grant-1"], 7, object()],
                         ids=lambda s: type(s).__name__)
def test_a_revocation_store_of_the_wrong_kind_is_refused(store: object) -> None:
    from policyengine.engine import EngineOptionError
    with pytest.raises(EngineOptionError) as info:
        Engine.from_source(TOKEN_POLICY, revocations=store)
    assert info.value.code == "invalid_option"
    engine = Engine.from_source(TOKEN_POLICY)
    before = engine.revocations
    with pytest.raises(EngineOptionError):
        engine.revocations = store
    assert engine.revocations is before


def test_a_decision_log_of_the_wrong_kind_is_a_coded_error() -> None:
    from policyengine.engine import EngineOptionError
    with pytest.raises(EngineOptionError) as info:
        Engine.from_source(TOKEN_POLICY, decision_log=42)
    assert info.value.code == "invalid_option"


APPROVAL_POLICY = '''namespace docs
agent "bot"
approval ap: docs:read
permit p: docs:read
'''


@pytest.mark.parametrize("store", [5, "", object(), {"add": 1}, ["approvals"]],
                         ids=lambda s: type(s).__name__)
def test_an_approval_store_of_the_wrong_kind_is_refused(store: object) -> None:
    """Before, ``approvals=5`` was taken and every approval rule then denied
    ``approval_store_error``; an empty string is no URL either."""
    from policyengine.engine import EngineOptionError
    from policyengine.errors import PolicyEngineError
    with pytest.raises(PolicyEngineError) as info:
        Engine.from_source(APPROVAL_POLICY, approvals=store)
    if not isinstance(store, str):
        assert isinstance(info.value, EngineOptionError)
        assert info.value.code == "invalid_option" and "ApprovalStore" in info.value.message


def test_a_usable_approval_store_is_taken_even_when_empty() -> None:
    """A store with no records (which may be falsy) is the caller's, not replaced."""
    from policyengine.decide import MemoryApprovalStore

    class Empty(MemoryApprovalStore):
        def __len__(self) -> int:
            return 0

    store = Empty(Clock(1_700_000_000.0))
    engine = Engine.from_source(APPROVAL_POLICY, approvals=store)
    assert engine.approvals is store
    d = engine.authorize("bot", "docs:read", {})
    assert d.status == "pending_approval" and store.list()


@pytest.mark.parametrize("store", [5, None, object(), {"add": 1}, ["approvals"]],
                         ids=lambda s: type(s).__name__)
def test_replacing_the_approval_store_with_the_wrong_kind_is_refused(store: object) -> None:
    """``engine.approvals = x`` is checked as at construction (as ``keys`` and
    ``revocations`` are): before, it was a plain attribute that took anything."""
    from policyengine.engine import EngineOptionError
    engine = Engine.from_source(APPROVAL_POLICY)
    before = engine.approvals
    with pytest.raises(EngineOptionError) as info:
        engine.approvals = store  # type: ignore[assignment]
    assert info.value.code == "invalid_option" and "ApprovalStore" in info.value.message
    assert engine.approvals is before
    assert engine.authorize("bot", "docs:read", {}).status == "pending_approval"
    assert len(before.list()) == 1


@pytest.mark.parametrize("url", [False, True], ids=["store", "url"])
def test_a_replaced_approval_store_is_the_one_decisions_use(url: bool) -> None:
    from policyengine.decide import MemoryApprovalStore
    engine = Engine.from_source(APPROVAL_POLICY)
    old = engine.approvals
    first = engine.authorize("bot", "docs:read", {})
    if url:
        engine.approvals = "memory:"
        new = engine.approvals
        assert isinstance(new, MemoryApprovalStore) and new is not old
    else:
        new = MemoryApprovalStore()
        engine.approvals = new
        assert engine.approvals is new
    d = engine.authorize("bot", "docs:read", {})
    assert d.status == "pending_approval"
    assert [a.id for a in new.list()] == [d.approval_id]
    assert [a.id for a in old.list()] == [first.approval_id]
    new.approve(d.approval_id, by="carol")
    assert engine.authorize("bot", "docs:read", {}, approval_id=d.approval_id).allowed
    # the old store's approval, granted there, no longer unlocks anything here
    old.approve(first.approval_id, by="carol")
    denied = engine.authorize("bot", "docs:read", {}, approval_id=first.approval_id)
    assert not denied.allowed


def test_a_replaced_approval_store_is_still_logged() -> None:
    """With a decision log, approval operations on the new store are recorded as they
    were on the old; assigning the engine's own store back does not log twice."""
    from policyengine.audit import CallbackSink, DecisionLog
    from policyengine.decide import MemoryApprovalStore
    records: list[dict[str, Any]] = []
    engine = Engine.from_source(APPROVAL_POLICY,
                                decision_log=DecisionLog(CallbackSink(records.append)))
    new = MemoryApprovalStore()
    engine.approvals = new
    engine.approvals = engine.approvals
    d = engine.authorize("bot", "docs:read", {})
    engine.approvals.approve(d.approval_id, by="carol")
    engine.close()
    assert [a.id for a in new.list()] == [d.approval_id]
    assert [r["kind"] for r in records if r["kind"].startswith("approval.")] == [
        "approval.request", "approval.approve"]


@pytest.mark.parametrize("rates", [5, "fx.json", {"EUR": {"USD": "1.1"}}, object()],
                         ids=lambda r: type(r).__name__)
def test_rates_of_the_wrong_kind_are_refused(rates: object) -> None:
    from policyengine.engine import EngineOptionError
    with pytest.raises(EngineOptionError) as info:
        Engine.from_source(APPROVAL_POLICY, rates=rates)
    assert info.value.code == "invalid_option" and "RateSource" in info.value.message


@pytest.mark.parametrize("key", [b"short", "a string of 16+ chars", 5, bytearray(3)],
                         ids=repr)
def test_a_short_or_non_bytes_hmac_key_is_refused(key: object) -> None:
    """docs/tools.md: an HMAC key is bytes of at least 16; the engine checks it when
    built instead of failing every ``hash`` redaction later."""
    from policyengine.tools import RedactionError
    with pytest.raises(RedactionError) as info:
        Engine.from_source(APPROVAL_POLICY, hmac_key=key)
    assert info.value.code == "invalid_hash_key"
    assert Engine.from_source(APPROVAL_POLICY, hmac_key=b"k" * 16).hmac_key == b"k" * 16


# ---- one check of the ApprovalStore protocol ----------------------------------------------

#: The ApprovalStore protocol's methods, as the pipeline and the approval API call them.
APPROVAL_PROTOCOL = ("add", "get", "list", "approve", "reject", "consume")


def _approvals_like(missing: frozenset[str] = frozenset(),
                    not_callable: frozenset[str] = frozenset(), clock: Any = None,
                    **attributes: Any) -> Any:
    """A store passing each protocol method to a MemoryApprovalStore (on ``clock``), less
    those in ``missing``, those in ``not_callable`` plain values, with ``attributes`` on
    its class: no ApprovalStore subclass, only its shape."""
    from policyengine.decide import MemoryApprovalStore
    inner = MemoryApprovalStore(clock or Clock(1_700_000_000.0))
    members: dict[str, Any] = {
        name: (lambda self, *args, _name=name, **kwargs: getattr(inner, _name)(*args,
                                                                             **kwargs))
        for name in APPROVAL_PROTOCOL if name not in missing}
    members.update(dict.fromkeys(not_callable, "not a method"))
    members.update(attributes)
    return type("NearlyApprovals", (), members)()


@settings(max_examples=40, deadline=None)
@given(st.sets(st.sampled_from(APPROVAL_PROTOCOL), min_size=1).flatmap(
    lambda lacking: st.tuples(st.just(frozenset(lacking)),
                              st.sets(st.sampled_from(sorted(lacking))).map(frozenset))))
def test_an_approval_store_lacking_a_protocol_method_is_refused(
        lacking: tuple[frozenset[str], frozenset[str]]) -> None:
    """The engine's check is the protocol's (``as_approval_store``, the methods read from
    ``ApprovalStore``): ``invalid_option``, at construction and on replacement, naming
    what is lacking."""
    from policyengine.engine import EngineOptionError
    gone, plain = lacking
    store = _approvals_like(gone - plain, plain)
    engine = Engine.from_source(APPROVAL_POLICY)
    for attempt in (lambda: Engine.from_source(APPROVAL_POLICY, approvals=store),
                    lambda: setattr(engine, "approvals", store)):
        with pytest.raises(EngineOptionError) as info:
            attempt()
        assert info.value.code == "invalid_option"
        assert "must be an ApprovalStore" in info.value.message
        if len(gone) < len(APPROVAL_PROTOCOL):
            lacks = ", ".join(m for m in APPROVAL_PROTOCOL if m in gone)
            assert f"(it has no {lacks})" in info.value.message


def test_own_clock_is_an_attribute_of_the_protocol() -> None:
    """Declared on ``ApprovalStore`` with its default, and inherited by the built-in
    stores, which are its subclasses; the methods checked are the protocol's."""
    from policyengine.decide import (
        ApprovalStore,
        MemoryApprovalStore,
        PostgresApprovalStore,
        RedisApprovalStore,
    )
    from policyengine.decide._approvals import APPROVAL_METHODS
    assert ApprovalStore.own_clock is False
    assert ApprovalStore.__annotations__["own_clock"] == "bool"
    assert MemoryApprovalStore.own_clock is False
    assert PostgresApprovalStore.own_clock is True and RedisApprovalStore.own_clock is True
    for store in (MemoryApprovalStore, PostgresApprovalStore, RedisApprovalStore):
        assert ApprovalStore in store.__mro__
    assert APPROVAL_METHODS == APPROVAL_PROTOCOL


@pytest.mark.parametrize("value", ["no", "false", 1, 0, None, lambda self: False],
                         ids=["no", "false", "1", "0", "None", "method"])
def test_an_own_clock_that_is_no_bool_is_refused(value: Any) -> None:
    """Before, the pipeline read it with ``getattr(store, "own_clock", False)`` on every
    explain: ``"no"`` or a method read as true (the engine's clock then ignored)."""
    from policyengine.engine import EngineOptionError
    with pytest.raises(EngineOptionError) as info:
        Engine.from_source(APPROVAL_POLICY, approvals=_approvals_like(own_clock=value))
    assert info.value.code == "invalid_option" and "own_clock" in info.value.message


@pytest.mark.parametrize("own_clock", [True, False, None], ids=["own", "engine", "undeclared"])
def test_own_clock_is_read_once_and_decides_which_clock_explain_uses(
        own_clock: bool | None) -> None:
    """The store's clock says the approval is live, the engine's (an hour later) that it
    expired: explain takes the store's status only from a store on its own clock; a store
    that declares none is on the engine's (the protocol's default). The attribute is read
    when the engine is built, not per request."""
    reads = []

    def read(self: Any) -> Any:
        reads.append(1)
        return own_clock

    start = 1_700_000_000.0
    attributes = {} if own_clock is None else {"own_clock": property(read)}
    store = _approvals_like(clock=Clock(start), **attributes)
    asked = Engine.from_source(APPROVAL_POLICY, approvals=store,
                               clock=Clock(start)).authorize("bot", "docs:read", {})
    store.approve(asked.approval_id, by="carol")
    later = Engine.from_source(APPROVAL_POLICY, approvals=store, clock=Clock(start + 7200))
    built = len(reads)
    for _ in range(3):
        d = later.explain("bot", "docs:read", {}, approval_id=asked.approval_id).decision
        assert d.allowed is (own_clock is True), d.reason
    assert len(reads) == built  # none per request


# ---- a call of the wrong shape: denied (or, where Python cannot bind it, a TypeError), ----
# ---- the reason naming the argument at fault                                          ----

TOOLS = ROLES + ('tool pay: mcp "pay" -> docs:pay {}\n'
                 'tool api: http "api.example.com" {\n  POST "/pay" -> docs:pay\n}\n')
MCP: dict[str, Any] = {"transport": "mcp", "toolName": "pay"}
HTTP: dict[str, Any] = {"transport": "http", "method": "POST", "host": "api.example.com",
                        "path": "/pay"}

#: (args, keywords, code, the exact reason, the argument it must name) for authorize,
#: explain and ensure_authorized alike.
DECISION_CALLS: list[tuple[tuple[Any, ...], dict[str, Any], str, str, str]] = [
    ((5, "docs:read"), {}, "invalid_request", "principal must be a string, not int",
     "principal"),
    (("bot", None), {}, "invalid_request", "permission must be a string, not None",
     "permission"),
    ((None, b"docs:read"), {}, "invalid_request",
     "principal must be a string, not None; permission must be a string, not bytes",
     "permission"),
    (("bot", "docs:read", ["a"]), {}, "invalid_request",
     "context must be an object (a dict), not list", "context"),
    (("bot", "docs:read"), {"token": 5}, "invalid_token",
     "token must be a string (a delegation token), not int", "token"),
    (("bot", "docs:read"), {"approval_id": 5}, "invalid_request",
     "approval_id must be a string, not int", "approval_id"),
    (("bot", "docs:read"), {"partition": b"acme"}, "invalid_request",
     "partition must be a string, not bytes", "partition"),
    (("bot", "docs:read"), {"partition": "acme", "partition_agent": "yes"},
     "invalid_request", "partition_agent must be True or False, not str", "partition_agent"),
    (("bot", "docs:read"), {"partition_agent": 0}, "invalid_request",
     "partition_agent must be True or False, not int", "partition_agent"),
    (("bot", "docs:read"), {"acting_for": 7}, "invalid_request",
     "acting_for must be a non-empty string, not int", "acting_for"),
    (("bot", "docs:read"), {"acting_for": ""}, "invalid_request",
     "acting_for must be a non-empty string, not ''", "acting_for"),
]


def _decided(engine: Engine, method: str, args: tuple[Any, ...],
             keywords: dict[str, Any]) -> Any:
    """The decision ``method`` answers (``explain``: its decision; ``ensure_authorized``:
    the one its NotAuthorized carries)."""
    if method == "ensure_authorized":
        with pytest.raises(NotAuthorized) as info:
            engine.ensure_authorized(*args, **keywords)
        return info.value.decision
    answer = getattr(engine, method)(*args, **keywords)
    return answer.decision if method in ("explain", "explain_tool") else answer


@pytest.mark.parametrize("method", ["authorize", "explain", "ensure_authorized"])
@pytest.mark.parametrize(("args", "keywords", "code", "reason", "culprit"), DECISION_CALLS,
                         ids=[f"{row[4]}-{i}" for i, row in enumerate(DECISION_CALLS)])
def test_a_malformed_decision_call_is_denied_naming_the_argument(
        method: str, args: tuple[Any, ...], keywords: dict[str, Any], code: str,
        reason: str, culprit: str) -> None:
    d = _decided(Engine.from_source(ROLES), method, args, keywords)
    assert (d.status, d.code, d.reason) == ("denied", code, reason)
    assert culprit in d.reason


#: (keywords over a well-formed call, the base call, code, the exact reason, the culprit)
#: for tool_authorize and explain_tool alike.
TOOL_CALLS: list[tuple[dict[str, Any], dict[str, Any], str, str, str]] = [
    ({"partition_agent": True}, MCP, "invalid_request",
     "{m}() got an unknown keyword 'partition_agent' ({m} takes no partition_agent: "
     "authorize and explain do)", "partition_agent"),
    ({"tool_nmae": "pay"}, MCP, "invalid_request",
     "{m}() got an unknown keyword 'tool_nmae' (did you mean 'tool_name'?)", "tool_nmae"),
    ({"parttion": "acme"}, MCP, "invalid_request",
     "{m}() got an unknown keyword 'parttion' (did you mean 'partition'?)", "parttion"),
    ({"zzz": 1}, MCP, "invalid_request",
     "{m}() got an unknown keyword 'zzz'; it takes transport, method, host, path, query, "
     "headers, body, tool_name, function_name, token, context, approval_id, scheme, "
     "redaction_check, partition, acting_for, toolName, functionName, approvalId, traceId",
     "zzz"),
    ({"a1": 1, "b2": 2, "c3": 3, "d4": 4}, MCP, "invalid_request",
     "{m}() got unknown keywords 'a1', 'b2', 'c3' and 1 more; it takes transport, method, "
     "host, path, query, headers, body, tool_name, function_name, token, context, "
     "approval_id, scheme, redaction_check, partition, acting_for, toolName, functionName, "
     "approvalId, traceId", "a1"),
    ({"transport": 5}, MCP, "invalid_request",
     "transport must be one of http, mcp, function, not int", "transport"),
    ({"transport": "smtp"}, MCP, "invalid_request",
     "transport must be one of http, mcp, function, not 'smtp'", "transport"),
    ({"toolName": 5}, MCP, "invalid_request",
     "tool_name (toolName) must be a non-empty string for transport 'mcp', not int",
     "tool_name"),
    ({"toolName": ""}, MCP, "invalid_request",
     "tool_name (toolName) must be a non-empty string for transport 'mcp', not ''",
     "tool_name"),
    ({"transport": "function"}, MCP, "invalid_request",
     "function_name (functionName) must be a non-empty string for transport 'function', "
     "not None", "function_name"),
    ({"context": 5}, MCP, "invalid_request", "context must be an object (a dict), not int",
     "context"),
    ({"query": [1]}, MCP, "invalid_request",
     "query must be an object (a mapping), not list", "query"),
    ({"headers": "x"}, MCP, "invalid_request",
     "headers must be an object (a mapping), not str", "headers"),
    ({"headers": {5: "x"}}, MCP, "invalid_request",
     "a header name must be a string, not int", "header name"),
    ({"redaction_check": 5}, MCP, "invalid_request",
     "redaction_check must be a callable (body, redacted) or None, not int",
     "redaction_check"),
    ({"token": 5}, MCP, "invalid_token",
     "token must be a string (a delegation token), not int", "token"),
    ({"approvalId": 5}, MCP, "invalid_request", "approval_id must be a string, not int",
     "approval_id"),
    ({"partition": 5}, MCP, "invalid_request", "partition must be a string, not int",
     "partition"),
    ({"acting_for": 5}, MCP, "invalid_request",
     "acting_for must be a non-empty string, not int", "acting_for"),
    ({"method": None}, HTTP, "invalid_request",
     "method must be a string for transport 'http', not None", "method"),
    ({"host": 5}, HTTP, "invalid_request",
     "host must be a string for transport 'http', not int", "host"),
    ({"path": None}, HTTP, "invalid_request",
     "path must be a string for transport 'http', not None", "path"),
    ({"scheme": 443}, HTTP, "invalid_request",
     "scheme must be 'https', 'http' or None, not int", "scheme"),
]


@pytest.mark.parametrize("method", ["tool_authorize", "explain_tool"])
@pytest.mark.parametrize(("keywords", "base", "code", "reason", "culprit"), TOOL_CALLS,
                         ids=[f"{row[4]}-{i}" for i, row in enumerate(TOOL_CALLS)])
def test_a_malformed_tool_call_is_denied_naming_the_argument(
        method: str, keywords: dict[str, Any], base: dict[str, Any], code: str, reason: str,
        culprit: str) -> None:
    """Before, an unknown keyword (``partition_agent=True``, which ``authorize`` takes)
    was denied "principal must be a string"; a host of None "host None: empty"."""
    engine = Engine.from_source(TOOLS)
    assert _decided(engine, method, ("bot",), base).allowed  # the call it spoils is good
    d = _decided(engine, method, ("bot",), {**base, **keywords})
    assert (d.status, d.code, d.reason) == ("denied", code, reason.format(m=method))
    assert culprit in d.reason
    assert d.principal == "bot"  # the principal given is kept, though the call is refused


def test_a_malformed_principal_of_a_tool_call_is_named() -> None:
    engine = Engine.from_source(TOOLS)
    for method in ("tool_authorize", "explain_tool"):
        d = _decided(engine, method, (5,), MCP)
        assert (d.code, d.reason) == ("invalid_request", "principal must be a string, not int")


@pytest.mark.parametrize("method", ["authorize", "explain", "ensure_authorized"])
def test_a_call_python_cannot_bind_raises_type_error_naming_it(method: str) -> None:
    """authorize, explain and ensure_authorized take no wire fields as keywords: a call
    Python cannot bind raises its TypeError (a caller's bug, never a decision), which names
    the method called and the argument."""
    call = getattr(Engine.from_source(ROLES), method)
    with pytest.raises(TypeError, match=rf"{method}\(\) got an unexpected keyword "
                                        r"argument 'partiton'"):
        call("bot", "docs:read", partiton="acme")
    with pytest.raises(TypeError, match=rf"{method}\(\) missing 1 required positional "
                                        r"argument: 'permission'"):
        call("bot")


@pytest.mark.parametrize("method", ["tool_authorize", "explain_tool"])
def test_a_tool_call_without_its_transport_raises_type_error_naming_it(method: str) -> None:
    call = getattr(Engine.from_source(TOOLS), method)
    with pytest.raises(TypeError, match=r"missing 1 required keyword-only argument: "
                                        r"'transport'"):
        call("bot", toolName="pay")


#: The keywords the tool methods take (``self`` and ``principal`` Python binds: given again
#: by keyword, its TypeError names them).
_TAKEN = frozenset({"self", "principal", "transport", "method", "host", "path", "query", "headers",
                    "body", "tool_name", "function_name", "token", "context", "approval_id",
                    "scheme", "redaction_check", "partition", "acting_for", "toolName",
                    "functionName", "approvalId", "traceId"})
_TOOL_ENGINE = Engine.from_source(TOOLS)  # one for every example: each is denied unrun


@settings(max_examples=150, deadline=None)
@given(name=st.text(min_size=1, max_size=140).filter(lambda n: n not in _TAKEN),
       value=st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5)))
def test_any_unknown_keyword_is_denied_and_named(name: str, value: Any) -> None:
    for method in ("tool_authorize", "explain_tool"):
        d = _decided(_TOOL_ENGINE, method, ("bot",), {**MCP, name: value})
        assert not d.allowed
        assert (d.status, d.code) == ("denied", "invalid_request")
        assert d.reason.startswith(f"{method}() got an unknown keyword {name[:100]!r}")


def test_a_well_formed_call_builds_no_diagnosis(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reasons above are worked out only once a check has failed: a good call of
    each method never asks for one."""
    import policyengine.decide._evaluator as evaluator
    import policyengine.decide._pipeline as pipeline
    import policyengine.decision as decision
    import policyengine.engine as engine_module
    import policyengine.tools._egress as egress

    def asked(*args: Any) -> str:
        raise AssertionError(f"a diagnosis was built for a good call: {args}")

    for module in (decision, evaluator, pipeline, egress):
        monkeypatch.setattr(module, "wrong_type", asked)
    monkeypatch.setattr(pipeline, "not_strings", asked)
    monkeypatch.setattr(engine_module, "_unknown_keywords", asked)
    monkeypatch.setattr(egress, "_not_a_string", asked)
    monkeypatch.setattr(egress, "_bad_transport", asked)
    engine = Engine.from_source(TOOLS)
    assert engine.authorize("bot", "docs:read", {}, partition="acme",
                            partition_agent=True, acting_for="alice").allowed
    assert engine.explain("bot", "docs:read").decision.allowed
    assert engine.ensure_authorized("bot", "docs:read", approval_id=None).allowed
    assert engine.tool_authorize("bot", **MCP, traceId="t", partition="").allowed
    assert engine.tool_authorize("bot", **HTTP, redaction_check=lambda a, b: []).allowed
    assert engine.explain_tool("bot", **HTTP).decision.allowed
    assert not engine.authorize("bot", "mail:read").allowed  # a denial of a good call
