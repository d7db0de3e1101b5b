"""Adversarial: ``matches()`` globs against hostile subjects.

A glob compiled to a backtracking regular expression (``.*@.*\\.corp\\.example``) takes
seconds against a long run of ``@``; the matcher must be linear in its input and still
agree with the glob's meaning (``*`` any run, ``?`` one character, all else literal).
"""

from __future__ import annotations

import re
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine._glob import Glob
from policyengine.engine import Engine


def reference(glob: str, subject: str) -> bool:
    """The glob's meaning as a regular expression (fine for short inputs only)."""
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    return re.fullmatch(rx, subject, re.DOTALL) is not None


class TestGlobMeaning:
    """Tries small globs over a tiny alphabet (where every corner case is dense: runs of
    stars, ``?`` next to stars, literal ``?``-free segments repeated) against the
    regular-expression reading of the same glob."""

    @settings(max_examples=1500)
    @given(st.text("ab?*.", max_size=8), st.text("ab.?*\n", max_size=12))
    def test_agrees_with_the_regex_reading(self, glob: str, subject: str) -> None:
        assert Glob(glob).match(subject) == reference(glob, subject)

    @given(st.text(max_size=6), st.text(max_size=10))
    def test_agrees_on_any_characters(self, glob: str, subject: str) -> None:
        assert Glob(glob).match(subject) == reference(glob, subject)

    def test_regex_metacharacters_are_literal(self) -> None:
        assert Glob("(a|b)+").match("(a|b)+")
        assert not Glob("(a|b)+").match("a")
        assert not Glob("[abc]").match("a")
        assert Glob("a*").match("a\nb")


class TestLinearTime:
    """Tries subjects built to make a backtracking matcher try every split: many
    candidate places for each middle segment, near-misses at the end, ``?`` segments
    whose literal part occurs everywhere."""

    CASES = [
        ("*@*.corp.example", "a" + "@x" * 40_000),
        ("*@*.corp.example", "@" * 80_000),
        ("*a*a*a*a*a*b", "a" * 80_000),
        ("*a?a?a?ab*", "a" * 80_000),
        ("?*?*?*?*?*?*z", "y" * 80_000),
    ]

    def test_each_decision_is_fast(self) -> None:
        for glob, subject in self.CASES:
            start = time.process_time()
            Glob(glob).match(subject)
            # CPU time, not wall time: a busy machine cannot fail it. A backtracking
            # matcher needs seconds here; linear work is well under 50 ms
            assert time.process_time() - start < 0.05, glob

    def test_through_authorize(self) -> None:
        engine = Engine.from_source(
            'permit base: mail:send\n'
            'forbid internal: mail:send when matches(context.to, "*@*.corp.example")\n')
        start = time.process_time()
        hostile = engine.authorize("bot", "mail:send", {"to": "a" + "@x" * 40_000})
        took = time.process_time() - start
        assert hostile.allowed and took < 0.05
        assert engine.authorize("bot", "mail:send", {"to": "x@" + "y" * 40_000 +
                                                     ".corp.example"}).code == "forbidden"
