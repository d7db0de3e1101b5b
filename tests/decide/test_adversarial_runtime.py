"""Adversarial: request data that attacks the runtime rather than the policy.

Nothing may escape ``authorize``/``explain``: context objects whose ``get``, ``__eq__``,
``__bool__``, ``__hash__`` or ``__getitem__`` raise, deeply nested values on a pending
request, lone surrogates in principals, tenants and keys (no store can encode them), and
a reservation swept as expired before the clock stepped back.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import Clock
from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine.budgets import (
    BudgetInputError,
    BudgetSpec,
    Ledger,
    MemoryStore,
    ReservationError,
    SQLiteStore,
)
from policyengine.decision import Decision
from policyengine.engine import Engine

POLICY = """namespace n
currency EUR
default_currency EUR
role r: shop:*
agent "bot": r
forbid blocked: shop:* when context.user == "blocked"
approval big: shop:pay when context.n > 1
limit cap: shop:pay amount <= 100 EUR
budget per-tenant: shop:* limit 1000 EUR per day per tenant
budget calls: shop:* limit 10 calls per day per agent
"""


class BoomError(Exception):
    pass


class RaisingDict(dict):  # type: ignore[type-arg]
    """A context whose own methods all raise (the engine must read it as a dict)."""

    def get(self, *args: Any) -> Any:
        raise BoomError("get")

    def __getitem__(self, key: Any) -> Any:
        raise BoomError("getitem")

    def __contains__(self, key: object) -> bool:
        raise BoomError("contains")

    def __bool__(self) -> bool:
        raise BoomError("bool")

    def __len__(self) -> int:
        raise BoomError("len")

    def keys(self) -> Any:
        raise BoomError("keys")

    def items(self) -> Any:
        raise BoomError("items")


class Raising:
    """A value whose every comparison, hash and truth test raises."""

    def __eq__(self, other: object) -> bool:
        raise BoomError("eq")

    def __ne__(self, other: object) -> bool:
        raise BoomError("ne")

    def __lt__(self, other: object) -> bool:
        raise BoomError("lt")

    def __hash__(self) -> int:
        raise BoomError("hash")

    def __bool__(self) -> bool:
        raise BoomError("bool")

    def __str__(self) -> str:
        raise BoomError("str")

    def __repr__(self) -> str:
        raise BoomError("repr")


def deep(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = {"k": [value]}
    return value


@pytest.fixture(params=["memory", "sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "b.db")
    return Engine.from_source(POLICY, budget_store=store)


class TestHostileContexts:
    """Tries context objects whose methods raise, in every field the engine reads
    (condition paths, amount, currency, tenant, tokens), on authorize and explain."""

    CONTEXTS = [
        RaisingDict(user="ok", n=0, amount="5"),
        RaisingDict(),
        {"user": Raising(), "n": 0, "amount": "5"},
        {"user": "ok", "n": Raising(), "amount": "5"},
        {"user": "ok", "n": 0, "amount": Raising()},
        {"user": "ok", "n": 0, "amount": "5", "currency": Raising()},
        {"user": "ok", "n": 0, "amount": "5", "tenant": Raising()},
        {"user": "ok", "n": 0, "tokens": Raising()},
        {"user": RaisingDict(), "n": 0, "amount": "5"},
        {"user": [Raising()], "n": 0, "amount": "5"},
    ]

    @pytest.mark.parametrize("index", range(len(CONTEXTS)))
    def test_never_raises_and_never_allows(self, engine: Engine, index: int) -> None:
        context = self.CONTEXTS[index]
        for permission in ("shop:pay", "shop:buy"):
            d = engine.authorize("bot", permission, context)
            assert isinstance(d, Decision)
            # n is read only by shop:pay's approval; a non-string tenant is no tenant,
            # and tokens are not what these budgets count
            if (index, permission) not in ((3, "shop:buy"), (6, "shop:pay"),
                                           (6, "shop:buy"), (7, "shop:buy")):
                assert not d.allowed, (index, permission, d.code)
            explained = engine.explain("bot", permission, context)
            assert explained.decision.status in ("allowed", "denied", "pending_approval")

    def test_a_raising_get_does_not_hide_the_amount(self, engine: Engine) -> None:
        # dict.get reads the real contents: the limit still sees 500 EUR
        d = engine.authorize("bot", "shop:pay", RaisingDict(user="ok", n=0, amount="500"))
        assert d.code in ("limit_exceeded", "missing_attribute")
        assert not d.allowed

    @settings(max_examples=60, deadline=None)
    @given(st.dictionaries(
        st.sampled_from(["user", "n", "amount", "currency", "tenant", "tokens"]),
        st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=3)
                     | st.builds(Raising) | st.floats(),
                     lambda inner: st.lists(inner, max_size=2)
                     | st.dictionaries(st.text(max_size=2), inner, max_size=2),
                     max_leaves=4)))
    def test_any_mixture_never_raises(self, context: dict[str, Any]) -> None:
        for ctx in (context, RaisingDict(context)):
            d = MEMORY_ENGINE.authorize("bot", "shop:pay", ctx)
            assert isinstance(d, Decision)
            if any(isinstance(v, Raising) for v in context.values()):
                assert not d.allowed


MEMORY_ENGINE = Engine.from_source(POLICY)


class TestDeepValues:
    """Tries values nested far deeper than Python's recursion limit on a request that
    turns pending (the approval binds the context) and on conditions that read it."""

    def test_pending_request_with_a_deep_context(self, engine: Engine) -> None:
        context = {"user": "ok", "n": 5, "amount": "5", "blob": deep(50_000)}
        d = engine.authorize("bot", "shop:pay", context)
        assert d.status in ("pending_approval", "denied")

    def test_condition_on_a_deep_value(self, engine: Engine) -> None:
        d = engine.authorize("bot", "shop:pay", {"user": deep(50_000), "n": 0, "amount": "5"})
        assert (d.status, d.code) == ("denied", "too_deep")


class TestSurrogates:
    """Tries lone surrogates (valid Python str, not encodable text) as principal,
    tenant, acting_for, idempotency key and reservation id, on both local stores."""

    def test_authorize_denies(self, engine: Engine) -> None:
        open_policy = Engine.from_source(POLICY.replace('agent "bot": r', 'permit all: shop:*'),
                                         budget_store=engine.budgets.store)
        for principal, tenant in (("\ud800", "t"), ("bot", "\udfff"), ("b\udc80t", None)):
            context = {"user": "ok", "n": 0, "amount": "5"}
            if tenant is not None:
                context["tenant"] = tenant
            d = open_policy.authorize(principal, "shop:pay", context)
            assert (d.status, d.code) == ("denied", "invalid_subject"), (principal, tenant)
        assert open_policy.authorize("bot", "shop:pay",
                                     {"user": "ok", "n": 0, "amount": "5",
                                      "tenant": "t\u00e9"}).allowed

    def test_ledger_refuses_with_a_code(self, engine: Engine) -> None:
        ledger = engine.budgets
        for kwargs in ({"tenant": "\ud800"}, {"acting_for": "\ud800"}):
            with pytest.raises(BudgetInputError) as err:
                ledger.reserve("bot", "shop:buy", "5", "EUR", **kwargs)  # type: ignore[arg-type]
            assert err.value.code == "invalid_subject"
        with pytest.raises(BudgetInputError) as err:
            ledger.reserve("\ud800", "shop:buy", "5", "EUR", tenant="t")
        assert err.value.code == "invalid_subject"
        with pytest.raises(BudgetInputError) as err:
            ledger.reserve("bot", "shop:buy", "5", "EUR", tenant="t",
                           idempotency_key="k\ud800")
        assert err.value.code == "invalid_idempotency_key"
        with pytest.raises(ReservationError) as rerr:
            ledger.commit("rsv_\ud800", "5", "EUR")
        assert rerr.value.code == "unknown_reservation"


class TestClockSteppedBack:
    """Tries a reservation that expired, was swept by a later operation, and then sees
    the clock step back before its expiry: commit, release and extend must refuse it as
    expired (its hold is already gone), not crash or spend it."""

    @pytest.mark.parametrize("kind", ["memory", "sqlite"])
    def test_swept_then_clock_back(self, kind: str, tmp_path: Path, clock: Clock) -> None:
        for op in ("commit", "release", "extend"):
            store = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / f"{op}.db")
            clock.t = 1_767_225_600.0
            spec = BudgetSpec("d.b", ("a:*",), Decimal(100), "EUR", "day")
            ledger = Ledger([spec], store, clock=clock)
            r = ledger.reserve("bot", "a:x", "60", "EUR", ttl=10)
            clock.t += 100
            ledger.reserve("bot", "a:x", "5", "EUR", ttl=1000)  # sweeps the expired one
            clock.t -= 95  # five seconds before the first one's expiry
            with pytest.raises(ReservationError) as err:
                if op == "commit":
                    ledger.commit(r.id, "60", "EUR")
                elif op == "release":
                    ledger.release(r.id)
                else:
                    ledger.extend(r.id, 10)
            assert err.value.code == "reservation_expired", (kind, op)
            # the expired hold is not counted again: 5 reserved, nothing spent
            (balance,) = ledger.balances("bot")
            assert (balance.spent, balance.reserved) == (Decimal(0), Decimal(5))
            store.close()
