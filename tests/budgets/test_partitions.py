"""``Engine.authorize(..., partition=)``: the tenant whose counters a decision's budget
check and rate limits read. Every bucket the request's own values name (``per
context.NAME``, ``per tenant``, the hierarchy levels) is the partition's, so the same
policy and the same context under two partitions never share a counter; the empty
partition ``""`` is the empty tenant's (``tenant:/NAME:VALUE``, where the budget wires
charge a key without a tenant); no partition (None) reads the values as sent, today's
buckets exactly. The rules read the context as sent either way."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import policyengine as pe
from policyengine.budgets.spec import dimension, partitioned, scope_path

POLICY = """
currency USD
role r: llm:*
agent "bot": r
forbid banned: llm:ban when context.run_id == "banned"
budget per-ban: llm:ban limit 1 USD per day per context.run_id
budget per-run: llm:run limit 1 USD per day per context.run_id
budget per-tenant: llm:team limit 1 USD per day per tenant
budget per-ws: llm:ws limit 1 USD per day per workspace
ratelimit run-rate: llm:run 2 per hour per context.run_id
ratelimit tenant-rate: llm:team 2 per hour per tenant
ratelimit ws-rate: llm:ws 2 per hour per workspace
"""
CTX = {"amount": "0.80", "currency": "USD", "run_id": "r-1", "tenant": "globex",
       "workspace": "w"}


def engine() -> pe.Engine:
    return pe.Engine.from_source(POLICY)


def spend(e: pe.Engine, permission: str, partition: str | None, context: dict[str, Any]
          ) -> None:
    """Record $0.80 where a budget wire of tenant ``partition`` charges it (``""``: a key
    without a tenant; None: the values as sent)."""
    given = {k: v for k, v in context.items() if type(v) is str}
    if partition is not None:
        scope: dict[str, Any] = partitioned(partition, e.budgets.scope_fields, given)
        tenant: str | None = partition or None
    else:
        scope = {f: given[f] for f in e.budgets.scope_fields if f in given}
        tenant = given.get("tenant")
    e.budgets.record("bot", permission, "0.80", "USD", tenant=tenant, scope=scope)


@pytest.mark.parametrize("permission", ["llm:run", "llm:team", "llm:ws"])
def test_two_partitions_keep_their_own_budgets(permission: str) -> None:
    e = engine()
    spend(e, permission, "acme", CTX)
    assert e.authorize("bot", permission, CTX, partition="acme").code == "budget_exceeded"
    assert e.authorize("bot", permission, CTX, partition="globex").allowed
    # no partition reads the values as sent: acme's spend is not there either
    assert e.authorize("bot", permission, CTX).allowed
    spend(e, permission, None, CTX)
    assert e.authorize("bot", permission, CTX).code == "budget_exceeded"
    assert e.authorize("bot", permission, CTX, partition="initech").allowed
    assert e.authorize("bot", permission, CTX, partition="acme").code == "budget_exceeded"


@pytest.mark.parametrize("permission", ["llm:run", "llm:team", "llm:ws"])
def test_two_partitions_keep_their_own_rate_limits(permission: str) -> None:
    e = engine()
    ctx = {"run_id": "r-1", "tenant": "globex", "workspace": "w"}
    assert [e.authorize("bot", permission, ctx, partition="acme").code
            for _ in range(3)] == ["permitted", "permitted", "rate_limited"]
    for partition in ("initech", "", None):
        assert [e.authorize("bot", permission, ctx, partition=partition).code
                for _ in range(3)] == ["permitted", "permitted", "rate_limited"]


def test_a_context_tenant_never_reaches_another_partitions_counters() -> None:
    e = engine()
    spend(e, "llm:team", "globex", CTX)  # globex's own tenant budget is full
    # acme's caller names globex as its tenant: its counter is still acme's own
    assert e.authorize("bot", "llm:team", {**CTX, "tenant": "globex"},
                       partition="acme").allowed
    assert e.authorize("bot", "llm:team", CTX, partition="globex").code == "budget_exceeded"
    # acme's second call (the first took one), naming globex again
    assert e.authorize("bot", "llm:team", {"tenant": "globex"}, partition="acme").allowed
    for _ in range(2):  # globex's own two calls are untouched
        assert e.authorize("bot", "llm:team", {}, partition="globex").allowed
    # the subject the decision names is the partition's
    d = e.authorize("bot", "llm:team", {"tenant": "globex"}, partition="acme")
    assert d.code == "rate_limited" and d.rate_limit is not None
    assert d.rate_limit.subject == "acme"


def test_the_subjects_are_the_budget_wires_buckets() -> None:
    e = engine()
    checks = {"llm:run": dimension("acme", "run_id", "r-1"), "llm:team": "acme",
              "llm:ws": scope_path("workspace", "bot", {"tenant": "acme", "workspace": "w"})}
    for permission, subject in checks.items():
        d = e.authorize("bot", permission, CTX, partition="acme")
        assert d.budget is not None and d.budget.subject == subject
    missing = e.authorize("bot", "llm:run", {"amount": "0.10", "currency": "USD"},
                          partition="acme")
    assert missing.budget is not None and missing.budget.subject == "tenant:acme/run_id:"


def test_no_partition_keeps_todays_keys_exactly() -> None:
    e = engine()
    for permission, subject in (("llm:run", "r-1"), ("llm:team", "globex"),
                                ("llm:ws", "tenant:globex/workspace:w")):
        for d in (e.authorize("bot", permission, CTX),
                  e.authorize("bot", permission, CTX, partition=None)):
            assert d.budget is not None and d.budget.subject == subject
    ctx = {"run_id": "r-1"}
    e.authorize("bot", "llm:run", ctx)
    e.authorize("bot", "llm:run", ctx)
    d = e.authorize("bot", "llm:run", ctx)
    assert d.rate_limit is not None and d.rate_limit.subject == "r-1"


def test_rules_read_the_context_as_sent() -> None:
    e = engine()
    d = e.authorize("bot", "llm:ban", {**CTX, "run_id": "banned"}, partition="acme")
    assert (d.status, d.code) == ("denied", "forbidden")
    d = e.authorize("bot", "llm:ban", CTX, partition="acme")
    assert d.allowed and d.budget is not None
    assert d.budget.subject == "tenant:acme/run_id:r-1"


def test_explain_and_tools_take_the_partition() -> None:
    e = engine()
    spend(e, "llm:run", "acme", CTX)
    assert e.explain("bot", "llm:run", CTX, partition="acme").decision.code == (
        "budget_exceeded")
    assert e.explain("bot", "llm:run", CTX, partition="globex").decision.allowed
    # explain counts nothing: globex still has both calls
    ctx = {"run_id": "r-9"}
    for _ in range(3):
        e.explain("bot", "llm:run", ctx, partition="globex")
    assert e.authorize("bot", "llm:run", ctx, partition="globex").allowed


def test_tool_authorize_counts_in_the_partition() -> None:
    e = pe.Engine.from_source("""
role r: tools:*
agent "bot": r
tool search: mcp "search" -> tools:search { run_id = $.run }
ratelimit s: tools:search 1 per hour per context.run_id
""")
    call = {"transport": "mcp", "tool_name": "search", "body": {"run": "r-1"}}
    assert e.tool_authorize("bot", partition="acme", **call).allowed  # type: ignore[arg-type]
    assert e.tool_authorize("bot", partition="acme", **call).code == (  # type: ignore[arg-type]
        "rate_limited")
    assert e.tool_authorize("bot", partition="globex", **call).allowed  # type: ignore[arg-type]
    assert e.explain_tool("bot", partition="acme", **call).decision.code == (  # type: ignore[arg-type]
        "rate_limited")
    assert e.tool_authorize("bot", **call).allowed  # type: ignore[arg-type]


def test_a_partition_that_is_no_string_is_an_invalid_request() -> None:
    e = engine()
    d = e.authorize("bot", "llm:run", CTX, partition=7)  # type: ignore[arg-type]
    assert (d.status, d.code) == ("denied", "invalid_request")
    assert "partition" in d.reason


def test_the_decision_log_records_the_partition(tmp_path: Any) -> None:
    import json
    path = tmp_path / "log.jsonl"
    e = pe.Engine.from_source(POLICY, decision_log=str(path))
    e.authorize("bot", "llm:run", CTX, partition="acme")
    e.authorize("bot", "llm:run", CTX)
    assert e.close()
    inputs = [json.loads(line)["input"] for line in path.read_text().splitlines()
              if json.loads(line).get("kind") == "authorize"]
    assert [i.get("partition") for i in inputs] == ["acme", None]


_names = st.text(st.characters(codec="ascii", exclude_characters="\0"), max_size=300)


@settings(max_examples=150, deadline=None)
@given(a=_names.filter(bool), b=_names.filter(bool),
       va=_names.filter(bool), vb=_names.filter(bool))
def test_partitions_never_share_a_bucket(a: str, b: str, va: str, vb: str) -> None:
    """Two partitions (with ``/``, ``%``, ``#``, ``:`` and names past 256 characters)
    never make one bucket of a request field, a tenant or a hierarchy level, whatever
    values their requests carry; one partition's two values are two buckets."""
    fields = ("run_id", "workspace")
    pa = partitioned(a, fields, {"run_id": va, "workspace": va})
    pb = partitioned(b, fields, {"run_id": vb, "workspace": vb})
    if a != b:
        assert pa["run_id"] != pb["run_id"]
        assert scope_path("workspace", "bot", {"tenant": a, "workspace": va}) != (
            scope_path("workspace", "bot", {"tenant": b, "workspace": vb}))
    elif va != vb:
        assert pa["run_id"] != pb["run_id"]
    assert pa["workspace"] == va  # a level is its value, written under the tenant


@settings(max_examples=40, deadline=None)
@given(a=_names.filter(bool).map(lambda s: s[:40]), b=_names.filter(bool).map(lambda s: s[:40]),
       value=_names.filter(bool).map(lambda s: s[:40]))
def test_partitions_never_share_a_counter_in_the_engine(a: str, b: str, value: str) -> None:
    """End to end: with one partition's budget and rate limit exhausted, another
    partition's request with the very same context is admitted."""
    if a == b:
        return
    e = engine()
    ctx = {"amount": "0.80", "currency": "USD", "run_id": value}
    spend(e, "llm:run", a, ctx)
    assert e.authorize("bot", "llm:run", ctx, partition=a).code == "budget_exceeded"
    d = e.authorize("bot", "llm:run", ctx, partition=b)
    assert d.allowed, (d.code, d.reason)
    e.authorize("bot", "llm:run", ctx, partition=b)
    assert e.authorize("bot", "llm:run", ctx, partition=b).code == "rate_limited"
    assert e.authorize("bot", "llm:run", {"run_id": value}, partition=a).allowed


def test_replay_decides_again_in_the_logged_partition(tmp_path: Any) -> None:
    from policyengine.budgets import MemoryStore
    from policyengine.replay import replay
    store = MemoryStore()
    path = tmp_path / "log.jsonl"
    e = pe.Engine.from_source(POLICY, budget_store=store, decision_log=str(path))
    spend(e, "llm:run", None, CTX)  # the run id as sent is full; acme's is not
    assert e.authorize("bot", "llm:run", CTX, partition="acme").allowed
    assert e.close()
    report = replay([str(path)], pe.Engine.from_source(POLICY, budget_store=store))
    assert report.replayed == 1 and report.changes == []


def test_shadow_budgets_count_in_the_partition() -> None:
    e = pe.Engine.from_source(POLICY + "budget shadow-run: llm:sh limit 1 USD per day "
                              "per context.run_id mode warn\n")
    spend(e, "llm:sh", "acme", CTX)  # the shadow line is charged beside the enforced ones
    acme = e.authorize("bot", "llm:sh", CTX, partition="acme")
    assert acme.allowed and [(s.id, s.code) for s in acme.shadow] == [
        ("default.shadow-run", "budget_exceeded")]
    assert e.authorize("bot", "llm:sh", CTX, partition="globex").shadow == ()
    assert e.authorize("bot", "llm:sh", CTX).shadow == ()


def test_the_empty_partition_is_the_empty_tenants() -> None:
    """``""`` is the partition of a caller without a tenant: its buckets are the ones the
    budget wires charge a key without a tenant (``tenant:/run_id:r-1``, no ``per tenant``
    tenant, a level with no tenant above it), never the values as sent: a sent
    ``context.tenant`` or a value spelling a tenant's bucket reaches nobody's counter."""
    e = engine()
    for permission, subject in (("llm:run", "tenant:/run_id:r-1"), ("llm:team", ""),
                                ("llm:ws", "workspace:w")):
        d = e.authorize("bot", permission, CTX, partition="")
        assert d.budget is not None and d.budget.subject == subject, (permission, d.budget)
    spend(e, "llm:run", "acme", CTX)
    forged = {**CTX, "run_id": dimension("acme", "run_id", "r-1")}
    assert e.authorize("bot", "llm:run", forged, partition="").allowed
    assert e.authorize("bot", "llm:run", CTX, partition="acme").code == "budget_exceeded"


@settings(max_examples=120, deadline=None)
@given(tenant=st.one_of(st.just(""), _names.map(lambda s: s[:40])),
       run=_names.map(lambda s: s[:40]), plan=st.one_of(st.none(), _names.map(lambda s: s[:40])))
def test_a_wires_decision_reads_what_its_ledger_charges(tenant: str, run: str,
                                                        plan: str | None) -> None:
    """For any key tenant (``""``: none) and any client ids, the budget wires' ledger
    names (server/_budgetwire.tenant_fields, the key's tenant or None) are the names
    the decision of the same request reads in the key's partition: the wire's spend
    shows in its next decision, and no other tenant's does."""
    from policyengine.server._budgetwire import tenant_fields
    e = pe.Engine.from_source("""
currency USD
role r: llm:*
agent "bot": r
budget per-run: llm:run limit 1 USD per day per context.run_id
budget per-plan: llm:run limit 5 USD per day per context.plan_key
budget per-tenant: llm:run limit 9 USD per day per tenant
""")
    given_ids = {"run_id": run} if plan is None else {"run_id": run, "plan_key": plan}
    scope = tenant_fields(e.budgets.scope_fields, tenant, given_ids)
    e.budgets.record("bot", "llm:run", "0.80", "USD", tenant=tenant or None, scope=scope)
    ctx: dict[str, Any] = {**given_ids, "amount": "0.80", "currency": "USD"}
    d = e.authorize("bot", "llm:run", ctx, partition=tenant)
    assert (d.code, d.budget.budget if d.budget else None) == (
        "budget_exceeded", "default.per-run"), d.reason
    other = tenant + "x"
    assert e.authorize("bot", "llm:run", ctx, partition=other).allowed


AGENT_POLICY = """
currency USD
role r: doc:*
agent "alice": r
budget per-agent: doc:pay limit 1 USD per day per agent
budget per-person: doc:pay limit 5 USD per day per acting_for
ratelimit agent-rate: doc:read 2 per hour per agent
"""


def test_partition_agent_counts_the_principal_in_the_partition(tmp_path: Any) -> None:
    """``partition_agent``: a principal the caller chose (an AuthZEN subject) is counted
    in the partition too: ``per agent`` and ``per acting_for`` are
    ``tenant:acme/agent:alice``, each partition's own; the rules still read
    ``alice``; without it the principal is one counter in every partition."""
    import json
    path = tmp_path / "log.jsonl"
    e = pe.Engine.from_source(AGENT_POLICY, decision_log=str(path))
    pay = {"amount": "0.80", "currency": "USD"}
    d = e.authorize("alice", "doc:pay", pay, partition="acme", partition_agent=True)
    assert d.allowed and d.budget is not None
    assert d.budget.subject == "tenant:acme/agent:alice"
    e.budgets.record("tenant:acme/agent:alice", "doc:pay", "0.80", "USD")
    assert e.authorize("alice", "doc:pay", pay, partition="acme",
                       partition_agent=True).code == "budget_exceeded"
    for partition in ("globex", ""):
        assert e.authorize("alice", "doc:pay", pay, partition=partition,
                           partition_agent=True).allowed
    assert e.authorize("alice", "doc:pay", pay, partition="acme").allowed  # alice's own
    for partition in ("acme", "globex", ""):
        assert [e.authorize("alice", "doc:read", {}, partition=partition,
                            partition_agent=True).code for _ in range(3)] == [
            "permitted", "permitted", "rate_limited"]
    assert e.authorize("alice", "doc:read", {}, partition="acme").allowed
    d = e.authorize("alice", "doc:read", {}, partition_agent=True)
    assert (d.status, d.code) == ("denied", "invalid_request")
    assert e.explain("alice", "doc:read", {}, partition="acme",
                     partition_agent=True).decision.code == "rate_limited"
    assert e.close()
    logged = [json.loads(line)["input"] for line in path.read_text().splitlines()
              if json.loads(line).get("kind") == "authorize"]
    assert logged[0]["partition_agent"] is True and logged[0]["partition"] == "acme"
    assert "partition_agent" not in logged[-2]


@settings(max_examples=100, deadline=None)
@given(a=_names.map(lambda s: s[:60]), b=_names.map(lambda s: s[:60]),
       sa=_names.filter(bool).map(lambda s: s[:60]), sb=_names.filter(bool).map(lambda s: s[:60]))
def test_partitioned_agents_never_share_a_name(a: str, b: str, sa: str, sb: str) -> None:
    """Two (partition, subject) pairs are two counted names, never a credentials
    agent's (no credentials agent is named ``tenant:...``); in a tenant's partition the
    name is that tenant's Cycles-only agent of the same name (one agent of the tenant's
    that no credentials name, on both wires)."""
    from policyengine.decide._pipeline import _counted
    from policyengine.server._cycles import _tenant_agent
    if (a, sa) != (b, sb):
        assert _counted(a, sa) != _counted(b, sb)
    assert _counted(a, sa).startswith("tenant:")
    if a:
        assert _counted(a, sa) == _tenant_agent(sa, a)


PERSON_POLICY = """
currency USD
role r: llm:*
agent "bot": r
budget per-person: llm:pay limit 1 USD per day per acting_for
ratelimit person-rate: llm:read 2 per hour per acting_for
"""


def test_acting_for_is_the_name_per_acting_for_counts(tmp_path: Any) -> None:
    """``acting_for`` without a token (a wire that binds the person itself, actguard's
    ``user_id``): ``per acting_for`` budgets and rate limits count that name, the one the
    ledger charges; without it, the agent. A token with it, an empty or non-string one:
    ``invalid_request``. The log records it and replay decides with it."""
    import json

    from policyengine.budgets import MemoryStore
    from policyengine.replay import replay
    store = MemoryStore()
    path = tmp_path / "log.jsonl"
    e = pe.Engine.from_source(PERSON_POLICY, budget_store=store, decision_log=str(path))
    alice, bob = "tenant:acme/user_id:alice", "tenant:acme/user_id:bob"
    pay = {"amount": "0.30", "currency": "USD"}
    e.budgets.record("bot", "llm:pay", "0.80", "USD", acting_for=alice)
    d = e.authorize("bot", "llm:pay", pay, partition="acme", acting_for=alice)
    assert (d.code, d.acting_for) == ("budget_exceeded", alice), d
    assert d.budget is not None and d.budget.subject == alice
    assert d.budget.spent == Decimal("0.80")
    assert e.authorize("bot", "llm:pay", pay, partition="acme", acting_for=bob).allowed
    d = e.authorize("bot", "llm:pay", pay, partition="acme")  # the agent's own bucket
    assert d.allowed and d.budget is not None and d.budget.subject == "bot"
    assert e.explain("bot", "llm:pay", pay, acting_for=alice
                     ).decision.code == "budget_exceeded"
    assert [e.authorize("bot", "llm:read", {}, acting_for=alice).code
            for _ in range(3)] == ["permitted", "permitted", "rate_limited"]
    assert e.authorize("bot", "llm:read", {}, acting_for=bob).allowed
    for bad in ("", 7):
        d = e.authorize("bot", "llm:pay", pay, acting_for=bad)  # type: ignore[arg-type]
        assert (d.code, "acting_for" in d.reason) == ("invalid_request", True), d
    d = e.authorize("bot", "llm:pay", pay, token="x.y.z", acting_for=alice)
    assert (d.code, "acting_for" in d.reason) == ("invalid_request", True), d
    assert e.close()
    records = [r for r in map(json.loads, path.read_text().splitlines())
               if r.get("kind") == "authorize"]
    logged = [r["input"] for r in records]
    assert logged[0]["acting_for"] == alice and logged[1]["acting_for"] == bob
    assert "acting_for" not in logged[2]
    e.budgets.record("bot", "llm:pay", "0.80", "USD", acting_for=bob)  # bob's now full
    report = replay([str(path)], pe.Engine.from_source(PERSON_POLICY, budget_store=store))
    changed = {c.decision_id: c.new_code for c in report.changes}
    assert changed[records[1]["decision_id"]] == "budget_exceeded"  # bob's, in his bucket
    assert records[0]["decision_id"] not in changed  # alice's: refused as before
    assert records[2]["decision_id"] not in changed  # the agent's: allowed as before


TOOL_PERSON_POLICY = """
currency USD
role r: tools:*
agent "bot": r
tool pay: mcp "pay" -> tools:pay { amount = $.amount, currency = $.currency }
tool read: mcp "read" -> tools:read
egress { allow "*.internal.example" }
budget per-person: tools:pay limit 1 USD per day per acting_for
ratelimit person-rate: tools:read 2 per hour per acting_for
"""


def test_tool_calls_take_acting_for_as_authorize(tmp_path: Any) -> None:
    """``tool_authorize`` and ``explain_tool`` take ``acting_for`` as ``authorize``
    does: the same per acting_for budget and rate-limit counters for the same request
    (a tool call and an authorize share the person's bucket), the name reported and
    logged, the same ``invalid_request`` with a token, empty or not a string (a call no
    route governs too)."""
    import json

    path = tmp_path / "log.jsonl"
    e = pe.Engine.from_source(TOOL_PERSON_POLICY, decision_log=str(path))
    alice, bob = "tenant:acme/user_id:alice", "tenant:acme/user_id:bob"
    pay = {"transport": "mcp", "tool_name": "pay",
           "body": {"amount": "0.30", "currency": "USD"}}
    read = {"transport": "mcp", "tool_name": "read", "body": {}}
    e.budgets.record("bot", "tools:pay", "0.80", "USD", acting_for=alice)
    d = e.tool_authorize("bot", acting_for=alice, **pay)  # type: ignore[arg-type]
    assert (d.code, d.decision.acting_for) == ("budget_exceeded", alice), d
    assert d.decision.budget is not None and d.decision.budget.subject == alice
    asked = e.authorize("bot", "tools:pay", {"amount": "0.30", "currency": "USD"},
                        acting_for=alice)
    assert asked.budget is not None
    assert (asked.code, asked.budget.subject) == (d.code, alice)
    assert e.explain_tool("bot", acting_for=alice, **pay  # type: ignore[arg-type]
                          ).decision.code == "budget_exceeded"
    assert e.tool_authorize("bot", acting_for=bob, **pay).allowed  # type: ignore[arg-type]
    d = e.tool_authorize("bot", **pay)  # type: ignore[arg-type]  # the agent's bucket
    assert d.allowed and d.decision.budget is not None
    assert d.decision.budget.subject == "bot"
    # one counter per person, whether the call comes as a tool call or an authorize
    assert e.tool_authorize("bot", acting_for=alice, **read).allowed  # type: ignore[arg-type]
    assert e.authorize("bot", "tools:read", {}, acting_for=alice).allowed
    d = e.tool_authorize("bot", acting_for=alice, **read)  # type: ignore[arg-type]
    assert d.code == "rate_limited" and d.decision.rate_limit is not None
    assert d.decision.rate_limit.subject == alice
    assert e.explain_tool("bot", acting_for=alice, **read  # type: ignore[arg-type]
                          ).decision.code == "rate_limited"
    assert e.tool_authorize("bot", acting_for=bob, **read).allowed  # type: ignore[arg-type]
    unbound = {"transport": "http", "method": "GET", "host": "a.internal.example",
               "path": "/"}
    d = e.tool_authorize("bot", acting_for=alice, **unbound)  # type: ignore[arg-type]
    assert (d.outcome, d.decision.acting_for) == ("egress_allow", alice), d
    for bad in ("", 7):
        for call in (pay, unbound):
            for how in (e.tool_authorize,
                        lambda *a, **k: e.explain_tool(*a, **k).decision):
                d = how("bot", acting_for=bad, **call)
                assert (d.code, "acting_for" in d.reason) == ("invalid_request", True), d
    for call in (pay, unbound):
        d = e.tool_authorize("bot", token="x.y.z", acting_for=alice,  # type: ignore[arg-type]
                             **call)
        assert (d.code, "acting_for" in d.reason) == ("invalid_request", True), d
    assert e.ensure_authorized("bot", "tools:read", {}, acting_for=bob).allowed
    assert e.close()
    logged = [r["input"] for r in map(json.loads, path.read_text().splitlines())
              if r.get("kind") == "tool_authorize"]
    assert logged[0]["acting_for"] == alice and "acting_for" not in logged[2]
