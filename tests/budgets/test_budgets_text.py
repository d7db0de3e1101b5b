"""Text a store cannot keep is bad input on every store, never an outage on one.

PostgreSQL keeps no NUL character in text or JSON, and no store can write a lone
surrogate as UTF-8: a subject, tenant, scope value, idempotency key or reservation id
holding either is refused by the ledger with the same code whichever store is behind it
(memory, SQLite and Redis would take a NUL; PostgreSQL would fail ``store_unavailable``,
which reads as an outage). A note is JSON text, which keeps a NUL on every store.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import DAILY, SharedStores, make_ledger
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine import Engine
from policyengine.budgets import BudgetSpec, Ledger, MemoryStore
from policyengine.errors import PolicyEngineError

SPECS = (DAILY,
         BudgetSpec("t.tenant", ("payments:*",), Decimal(100), "EUR", "day", subject="tenant"),
         BudgetSpec("t.run", ("payments:*",), Decimal(100), "EUR", "day", subject="context.run"),
         BudgetSpec("t.for", ("payments:*",), Decimal(100), "EUR", "day",
                    subject="acting_for"))

Call = Callable[[Ledger, str], object]

# Each way a string reaches a store, with the code a bad one is refused with.
CALLS: dict[str, tuple[Call, str]] = {
    "agent": (lambda led, s: led.record(s, "payments:x", "1", "EUR"), "invalid_subject"),
    "acting_for": (lambda led, s: led.record("bot", "payments:x", "1", "EUR", acting_for=s),
                   "invalid_subject"),
    "tenant": (lambda led, s: led.record("bot", "payments:x", "1", "EUR", tenant=s),
               "invalid_subject"),
    "scope": (lambda led, s: led.record("bot", "payments:x", "1", "EUR", scope={"run": s}),
              "invalid_subject"),
    "reserve key": (lambda led, s: led.reserve("bot", "payments:x", "1", "EUR",
                                               idempotency_key=s), "invalid_idempotency_key"),
    "record key": (lambda led, s: led.record("bot", "payments:x", "1", "EUR",
                                             idempotency_key=s), "invalid_idempotency_key"),
    "commit key": (lambda led, s: led.commit(
        led.reserve("bot", "payments:x", "1", "EUR").id, "1", idempotency_key=s),
        "invalid_idempotency_key"),
    "release key": (lambda led, s: led.release(
        led.reserve("bot", "payments:x", "1", "EUR").id, idempotency_key=s),
        "invalid_idempotency_key"),
    "reservation_for": (lambda led, s: led.reservation_for(s), "invalid_idempotency_key"),
    "remember": (lambda led, s: led.remember(s, "text", 60), "invalid_idempotency_key"),
    "recall": (lambda led, s: led.recall(s), "invalid_idempotency_key"),
    "commit id": (lambda led, s: led.commit(s, "1"), "unknown_reservation"),
    "release id": (lambda led, s: led.release(s), "unknown_reservation"),
    "extend id": (lambda led, s: led.extend(s, 60), "unknown_reservation"),
    "get id": (lambda led, s: led.get(s), "unknown_reservation"),
    "listed tenant": (lambda led, s: led.reservations(tenant=s), "invalid_subject"),
    "listed agent": (lambda led, s: led.reservations(principal=s), "invalid_subject"),
    "balances agent": (lambda led, s: led.balances(s), "invalid_subject"),
    "balances tenant": (lambda led, s: led.balances("bot", tenant=s), "invalid_subject"),
    "balances scope": (lambda led, s: led.balances("bot", scope={"run": s}),
                       "invalid_subject"),
}


def _outcome(call: Call, ledger: Ledger, text: str) -> str:
    """``ok`` or the code of the error ``call`` raised with ``text``."""
    try:
        call(ledger, text)
    except PolicyEngineError as err:
        return err.code
    return "ok"


@pytest.mark.parametrize("where", sorted(CALLS))
@pytest.mark.parametrize("bad", ["a\x00b", "\x00", "a\ud800"])
def test_text_no_store_keeps_is_refused_alike_on_every_store(store: object, where: str,
                                                            bad: str) -> None:
    ledger, _ = make_ledger(store, *SPECS)
    call, code = CALLS[where]
    assert _outcome(call, ledger, bad) == code
    assert _outcome(call, ledger, "fine") != "store_unavailable"


def test_a_note_keeps_a_nul_on_every_store(store: object) -> None:
    ledger, _ = make_ledger(store, *SPECS)
    held = ledger.reserve("bot", "payments:x", "1", "EUR", note="a\x00b")
    assert ledger.get(held.id).note == "a\x00b"
    assert ledger.remember("key", "c\x00d", 60) == "c\x00d"
    assert ledger.recall("key") == "c\x00d"


POLICY = """namespace t
currency EUR
permit p: payments:*
budget daily: payments:* limit 100 EUR per day per tenant
budget runs: payments:* limit 100 EUR per day per context.run
"""


@pytest.mark.parametrize("context", [{"tenant": "acme\x00"}, {"run": "r\x00"},
                                     {"tenant": "acme\ud800"}])
def test_an_engine_denies_such_text_as_bad_input_on_every_store(store: object,
                                                               context: dict[str, str]
                                                               ) -> None:
    engine = Engine.from_source(POLICY, name="t.policy", budget_store=store)
    body = {"amount": "5", "currency": "EUR", **context}
    d = engine.authorize("bot", "payments:pay", body)
    assert (d.status, d.code) == ("denied", "invalid_subject"), d.reason
    fine = {"amount": "5", "currency": "EUR", "tenant": "acme", "run": "r"}
    assert engine.authorize("bot", "payments:pay", fine).allowed


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(where=st.sampled_from(sorted(CALLS)),
       text=st.text(st.characters(exclude_categories=()), max_size=6)
       | st.sampled_from(["\x00", "a\x00", "\ud800", "x" * 257, ""]))
def test_no_string_is_an_outage_on_postgres(shared_stores: SharedStores, tmp_path: Path,
                                            where: str, text: str) -> None:
    """Whatever string reaches a store, PostgreSQL answers as the memory store does:
    never ``store_unavailable``."""
    call, _ = CALLS[where]
    pg, _ = make_ledger(shared_stores.fresh("postgres"), *SPECS)
    memory, _ = make_ledger(MemoryStore(), *SPECS)
    got = _outcome(call, pg, text)
    assert got != "store_unavailable"
    assert got == _outcome(call, memory, text)
