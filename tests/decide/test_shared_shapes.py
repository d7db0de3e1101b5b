"""Rules that differ only in their literals share one compiled condition source (its code,
with each rule's constants put in): every rule must still decide with its own literals,
however many rules share the shape and in whichever order they were compiled."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine.engine import Engine

LEVELS = st.lists(st.integers(min_value=-50, max_value=50), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None)
@given(levels=LEVELS, probe=st.integers(min_value=-60, max_value=60),
       country=st.sampled_from(["FR", "DE", "US"]))
def test_each_rule_reads_its_own_literals(levels: list[int], probe: int, country: str) -> None:
    lines = ["role r: a:*", 'agent "bot": r']
    for i, level in enumerate(levels):
        lines.append(f'forbid f{i}: a:x{i} when context.level > {level} '
                     f'and context.country == "{["FR", "DE", "US"][i % 3]}"')
    engine = Engine.from_source("\n".join(lines) + "\n")
    for i, level in enumerate(levels):
        denied = probe > level and country == ["FR", "DE", "US"][i % 3]
        got = engine.authorize("bot", f"a:x{i}", {"level": probe, "country": country})
        assert got.allowed is not denied, (i, level, probe, country)


def test_rules_of_one_shape_share_compiled_code() -> None:
    text = ('role r: a:*\nagent "bot": r\n'
            "forbid f1: a:one when context.level > 3\n"
            "forbid f2: a:two when context.level > 9\n"
            "forbid f3: a:three when context.level < 9\n")
    rules = {r.qid: r for r in Engine.from_source(text).policy.rules}
    one, two, three = (rules[f"default.{n}"].test for n in ("f1", "f2", "f3"))
    assert one is not None and two is not None and three is not None
    # one compiled source for both, each with its own literal among its code's constants
    assert one.__code__.co_code == two.__code__.co_code
    assert 3 in one.__code__.co_consts and 9 in two.__code__.co_consts
    assert one.__code__.co_code != three.__code__.co_code  # another operator
    bot = Engine.from_source(text)
    assert bot.authorize("bot", "a:one", {"level": 5}).allowed is False
    assert bot.authorize("bot", "a:two", {"level": 5}).allowed is True
    assert bot.authorize("bot", "a:three", {"level": 5}).allowed is False
