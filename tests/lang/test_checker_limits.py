"""The checker reports every request-time limit a leaf owns, with the caret on the value
(issue 10 item 5): a budget's window, limit, unit, overdraft, zone and caps; a price's
token count; an approval's ``expires`` and ``uses``; an agent id longer than a request's
principal may be; a budget or rate limit id (``namespace.id``) longer than a store
takes; an agent id holding text no store keeps (a NUL character, a lone surrogate). What
passes ``check`` loads and is decided on."""

from __future__ import annotations

import json

import pytest
from conftest import Clock, codes_of
from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine.engine import Engine

HEAD = "namespace t\ncurrency EUR\n"


def _at(line: str, needle: str) -> int:
    """1-based column of ``needle`` in ``line``."""
    return line.index(needle) + 1


@pytest.mark.parametrize(("line", "code", "needle"), [
    ("budget b: payments:* limit 100 EUR per rolling 60d per agent", "E125", "60d"),
    ("budget c: payments:* limit 100 credits per day per agent overdraft 0.0000001",
     "E123", "0.0000001"),
    ("budget d: payments:* limit 0 EUR per day", "E123", "0 EUR"),
    ("budget e: payments:* limit 1.5 calls per day", "E123", "1.5"),
    ('budget g: payments:* limit 10 EUR per day tz "Mars/Base"', "E124", '"Mars/Base"'),
    ('price "o" "m": input 1 EUR, output 1 EUR per 0 tokens', "E141", "0 tokens"),
    ("approval a: payments:* expires 40d", "E125", "40d"),
    ("approval a: payments:* uses 5000", "E140", "5000"),
    ("approval a: payments:* expires 40d uses 5000", "E140", "5000"),
    ("approval a: payments:* expires 1h uses 0", "E140", "0"),
    ("approval a: payments:* over 10 EUR expires 31d", "E125", "31d"),
    ('role r: x:y\nagent "' + "a" * 257 + '": r', "E117", '"'),
    ('role r: x:y\nagent "": r', "E117", '"'),
    ('role r: x:y\nagent "bot\\u0000": r', "E118", '"'),
    ('role r: x:y\nagent "bot\\udc00x": r', "E118", '"'),
    ("ratelimit r: payments:* 10 per second burst 2000000", "E142", "2000000"),
    ("budget " + "b" * 300 + ": payments:* limit 100 EUR per day", "E123", "b" * 300),
    ("ratelimit " + "r" * 300 + ": payments:* 10 per second", "E142", "r" * 300),
    ('price "' + "p" * 300 + '" "m": input 1 EUR, output 1 EUR per 1M tokens', "E141",
     '"p'),
    ('price "" "m": input 1 EUR, output 1 EUR per 1M tokens', "E141", '""'),
    ('price "p" "' + "m" * 300 + '": input 1 EUR, output 1 EUR per 1M tokens', "E141",
     '"mm'),
])
def test_a_bad_value_is_reported_at_the_value(line: str, code: str, needle: str) -> None:
    found = codes_of(("t.policy", HEAD + line + "\n"))
    last = line.splitlines()[-1]
    row = 2 + len(line.splitlines())
    assert (code, row, _at(last, needle)) in found, found


def test_an_agent_id_as_long_as_a_principal_may_be_is_fine() -> None:
    name = "a" * 256
    engine = Engine.from_source(HEAD + f'permit p: payments:*\nagent "{name}"\n')
    assert engine.authorize(name, "payments:pay", {}).allowed
    found = codes_of(("t.policy", HEAD + f'permit p: payments:*\nagent "{name}x"\n'))
    assert [c for c, _, _ in found] == ["E117"]


@pytest.mark.parametrize("statement", [
    "budget {id}: payments:* limit 100 EUR per day",
    "ratelimit {id}: payments:* 10 per second",
])
def test_an_id_too_long_for_a_store_is_a_problem_not_a_crash(statement: str) -> None:
    """``namespace.id`` names a budget's buckets in every store (at most 256
    characters): one longer is reported where it is declared, with the caret on the id,
    not raised as a bare budget error when the policy loads."""
    code = "E123" if statement.startswith("budget") else "E142"
    column = statement.index("{id}") + 1
    fits = "b" * (256 - len("t."))
    assert codes_of(("t.policy", HEAD + statement.format(id=fits) + "\n")) == []
    found = codes_of(("t.policy", HEAD + statement.format(id=fits + "b") + "\n"))
    assert found == [(code, 3, column)]
    long_ns = "namespace " + "n" * 250 + "\ncurrency EUR\n" + statement.format(id="abcdefgh")
    assert codes_of(("t.policy", long_ns + "\n")) == [(code, 3, column)]


def test_what_passes_check_is_decided_on() -> None:
    """The audit's policy: with the agent's id at the bound it loads and decides; the
    problems above are the only ones reported."""
    name = "x" * 256
    src = (HEAD + "role payer: payments:*\n" + f'agent "{name}": payer\n'
           "budget daily: payments:* limit 100 EUR per day per agent\n"
           "ratelimit rl: payments:* 10 per second\n")
    assert codes_of(("t.policy", src)) == []
    d = Engine.from_source(src).authorize(name, "payments:pay",
                                          {"amount": "10", "currency": "EUR"})
    assert d.allowed, d.reason


#: Agent ids as a policy writes them (``json.dumps`` escapes NUL and lone surrogates as
#: ``\\u`` escapes, which the language takes): mostly plain text, now and then one of
#: the characters no store keeps.
_IDS = st.text(st.one_of(st.sampled_from("ab-_.@é€\0\ud800\udfff"),
                         st.characters(codec="utf-8")), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(_IDS)
def test_an_agent_id_passes_check_exactly_when_a_budget_can_count_its_requests(
        agent_id: str) -> None:
    """E118 is reported for exactly the ids the budget stores refuse (invalid_subject):
    an id that passes ``check`` is decided on by a policy with a budget per agent."""
    line = f"agent {json.dumps(agent_id)}: r"
    found = [c for c in codes_of(("t.policy", HEAD + "role r: payments:*\n" + line + "\n"))
             if c[0] not in ("W207", "W208", "W209")]  # (look-alikes: warnings, decided on)
    engine = Engine.from_source(HEAD + "permit p: payments:*\n"
                                "budget d: payments:* limit 100 EUR per day per agent\n")
    d = engine.authorize(agent_id, "payments:pay", {"amount": "1", "currency": "EUR"})
    if found:
        assert found == [("E118", 4, _at(line, '"'))], found
        assert not d.allowed and d.code == "invalid_subject", d.reason
    else:
        assert d.allowed, d.reason


# -- a delegation block: the tokens leaf's ceilings ------------------------------------
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_KEYS = None


def _keys() -> object:
    global _KEYS
    if _KEYS is None:
        from policyengine.tokens import KeySet
        _KEYS = KeySet.generate()
    return _KEYS


def _leaf_refuses(max_depth: int | None, max_ttl: int | None,
                  child_max_ttl: int | None) -> set[str]:
    """The settings the tokens leaf refuses: ``mint`` with the block's ``max_depth``,
    ``verify`` with the block's ceilings (``invalid_option``)."""
    from policyengine.tokens import TokenError, mint, verify
    refused = set()
    try:
        tok = mint(_keys(), issuer="i", acting_for="u", agent="a", permissions=["p:*"],  # type: ignore[arg-type]
                   ttl=1, max_depth=0 if max_depth is None else max_depth, now=1000)
    except TokenError as exc:
        assert exc.code == "invalid_claim", exc
        refused.add("max_depth")
        tok = mint(_keys(), issuer="i", acting_for="u", agent="a", permissions=["p:*"],  # type: ignore[arg-type]
                   ttl=1, max_depth=0, now=1000)
    for name, value in (("max_depth", max_depth), ("max_ttl", max_ttl),
                        ("child_max_ttl", child_max_ttl)):
        try:
            verify(_keys(), tok, now=1000, **{name: value})  # type: ignore[arg-type]
        except TokenError as exc:
            assert exc.code == "invalid_option", exc
            refused.add(name)
    return refused


_DURATIONS = st.one_of(st.none(), st.tuples(st.integers(0, 400), st.sampled_from("smhd")))


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.integers(0, 40), st.just(10**9)), _DURATIONS, _DURATIONS)
def test_check_accepts_a_delegation_block_exactly_when_the_tokens_leaf_does(
        max_depth: int | None, max_ttl: tuple[int, str] | None,
        child_max_ttl: tuple[int, str] | None) -> None:
    """``delegation { max_depth N max_ttl D child_max_ttl D }`` passes ``check`` exactly
    when ``mint`` takes that ``max_depth`` and ``verify`` takes those ceilings; each value
    the leaf refuses is one problem (E126 for the depth, E125 for a ttl)."""
    settings_ = [(name, value) for name, value in (
        ("max_depth", None if max_depth is None else str(max_depth)),
        ("max_ttl", None if max_ttl is None else f"{max_ttl[0]}{max_ttl[1]}"),
        ("child_max_ttl", None if child_max_ttl is None
         else f"{child_max_ttl[0]}{child_max_ttl[1]}")) if value is not None]
    src = "delegation { " + " ".join(f"{n} {v}" for n, v in settings_) + " }\n"
    found = sorted(c for c, _, _ in codes_of(("t.policy", src)))

    def seconds(d: tuple[int, str] | None) -> int | None:
        return None if d is None else d[0] * _UNIT[d[1]]

    refused = _leaf_refuses(max_depth, seconds(max_ttl), seconds(child_max_ttl))
    expected = sorted("E126" if name == "max_depth" else "E125" for name in refused)
    assert found == expected, (src, found, refused)


def test_a_delegation_block_the_leaf_takes_is_decided_on() -> None:
    """The audit's cases: ``max_depth 20`` passed ``check`` while ``mint`` refused it;
    ``max_depth 0`` (root tokens only) is what the leaf takes and now passes too, and an
    engine with it accepts a root token and refuses a child."""
    from policyengine.tokens import KeySet, attenuate, mint
    assert [c for c, _, _ in codes_of(("t.policy", "delegation { max_depth 20 }\n"))] == [
        "E126"]
    assert codes_of(("t.policy", "delegation { max_depth 0 max_ttl 366d }\n")) == []
    keys = KeySet.generate()
    engine = Engine.from_source(HEAD + "permit p: payments:*\ndelegation { max_depth 0 }\n",
                                keys=keys, clock=Clock(1000.0))
    root = mint(keys, issuer="i", acting_for="u", agent="a", permissions=["payments:*"],
                ttl=3600, max_depth=1, now=1000)
    assert engine.authorize("a", "payments:pay", token=root).allowed
    child = attenuate(keys, root, agent="b", permissions=["payments:*"], now=1000)
    d = engine.authorize("b", "payments:pay", token=child)
    assert not d.allowed and d.code == "invalid_token" and "depth_exceeded" in d.reason


def test_the_literal_and_approval_bounds_are_the_leaves_own() -> None:
    """The checker holds no copy: the widest literal is money's ``MAX_AMOUNT``, the
    approval bounds the approvals leaf's."""
    from policyengine.decide._approvals import MAX_APPROVAL_EXPIRES, MAX_APPROVAL_USES
    from policyengine.money import MAX_AMOUNT
    at = HEAD + "limit c: payments:* amount <= {} EUR\n"
    assert codes_of(("t.policy", at.format(MAX_AMOUNT))) == []
    assert [c for c, _, _ in codes_of(("t.policy", at.format(MAX_AMOUNT + 1)))] != []
    ok = HEAD + f"approval a: payments:* expires {MAX_APPROVAL_EXPIRES}s uses {MAX_APPROVAL_USES}\n"
    assert codes_of(("t.policy", ok)) == []
    bad = (HEAD + f"approval a: payments:* expires {MAX_APPROVAL_EXPIRES + 1}s "
           f"uses {MAX_APPROVAL_USES + 1}\n")
    assert [c for c, _, _ in codes_of(("t.policy", bad))] == ["E125", "E140"]


@pytest.mark.parametrize("line", [
    "limit c: payments:* amount <= 1000000000000001 EUR",
    "approval a: payments:* over 1000000000000001 EUR",
    "permit p: payments:* when amount < 1000000000000001 EUR",
])
def test_a_money_literal_out_of_range_is_e135_not_a_type_mismatch(line: str) -> None:
    """E108 is a type mismatch; an amount above money's MAX_AMOUNT has its own code,
    with the caret on the literal."""
    found = codes_of(("t.policy", HEAD + line + "\n"))
    assert found == [("E135", 3, _at(line, "1000000000000001"))], found


def test_a_cap_of_zero_is_an_error_at_each_zero() -> None:
    """``cap max_tokens 0`` admitted calls told to use no tokens (which providers refuse,
    and which a client reading 0 as unset runs uncapped): E123 at each such value, as
    ``BudgetSpec`` refuses it (``invalid_budget``); 1 is the least cap."""
    from decimal import Decimal

    from policyengine.budgets import BudgetInputError, BudgetSpec
    line = ("budget f: llm:* limit 10 tokens per day cap cooldown_ms 0 cap max_tokens 1 "
            "cap max_steps_remaining 0")
    found = codes_of(("t.policy", HEAD + line + "\n"))
    assert found == [("E123", 3, _at(line, "0 cap")), ("E123", 3, len(line))], found
    assert codes_of(("t.policy", HEAD + "budget f: llm:* limit 10 tokens per day "
                     "cap max_tokens 1 cap cooldown_ms 1\n")) == []
    for name in ("max_tokens", "max_steps_remaining", "cooldown_ms"):
        with pytest.raises(BudgetInputError) as err:
            BudgetSpec("t.f", ("llm:*",), Decimal(10), "tokens", "day", caps=((name, 0),))
        assert err.value.code == "invalid_budget" and "at least 1" in err.value.message
