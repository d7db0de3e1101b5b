"""Case folding for deny routes and the key guard: one fold (``tools._patterns.fold_case``)
that treats as one every spelling a server comparing text case-insensitively could take
for another.

The reference here is Java's ``String.equalsIgnoreCase`` as its documentation describes
it, modelled independently of the implementation: two strings of the same length are
equal when each pair of characters is the same, or has the same upper case, or the
same lower case, or the same lower case of the upper case (``Character.toUpperCase``
and ``Character.toLowerCase``: single-character mappings). Under it ``adm\u0131n`` (a
dotless i) and ``adm\u0130n`` (an I with dot above) are ``admin``; Unicode case folding
(``str.casefold``) alone says neither is.
"""

from __future__ import annotations

import functools
from collections import defaultdict

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from policyengine.engine import Engine
from policyengine.tools import fold_path, normalize_path
from policyengine.tools._patterns import fold_case
from policyengine.tools._redaction import (
    _LAST_CASED,
    JsonPath,
    KeyCaseGuard,
    _char_cases,
    fold_key,
)

from .spellings import DENY_ADMIN, outcome

POLICY = DENY_ADMIN


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_source(POLICY)


@pytest.mark.parametrize("path", [
    "/adm%C4%B1n", "/adm\u0131n", "/adm\u0130n", "/ADM%C4%B0N", "/ADM\u0131N",
    "/ADMIN", "/ad%6din", "/admi%CC%87n", "/adm\u0131n/",
])
def test_the_audited_spellings_of_a_denied_path_are_denied(engine: Engine, path: str) -> None:
    assert outcome(engine, path) == "route_deny", path


@pytest.mark.parametrize("path", ["/admins", "/adm", "/adm\u0131ns", "/\u0430dmin"])
def test_controls_next_to_the_denied_path_are_allowed(engine: Engine, path: str) -> None:
    # (U+0430 is a Cyrillic a: a look-alike, not another case of a.)
    assert outcome(engine, path) == "policy_allow", path


# ------------------------------------------------------------ the Java model (reference)

def _upper(c: str) -> str:
    """``Character.toUpperCase``: the simple mapping (a single character, or ``c``)."""
    up = c.upper()
    return up if len(up) == 1 else c


def _lower(c: str) -> str:
    """``Character.toLowerCase``: the simple mapping. U+0130 is the one character whose
    full lower case is longer than one character while its simple one is ``i``."""
    if c == "\u0130":
        return "i"
    low = c.lower()
    return low if len(low) == 1 else c


def java_equals_ignore_case(a: str, b: str) -> bool:
    return len(a) == len(b) and all(
        x == y or _upper(x) == _upper(y) or _lower(x) == _lower(y)
        or _lower(_upper(x)) == _lower(_upper(y)) for x, y in zip(a, b, strict=True))


@functools.cache
def _java_partners() -> dict[str, str]:
    """Every character with a case, and the characters the model takes for it."""
    groups: dict[tuple[str, str], set[str]] = defaultdict(set)
    for cp in range(_LAST_CASED + 1):
        c = chr(cp)
        if 0xD800 <= cp <= 0xDFFF:
            continue
        for key in (("u", _upper(c)), ("l", _lower(c)), ("k", _lower(_upper(c)))):
            groups[key].add(c)
    partners: dict[str, set[str]] = defaultdict(set)
    for members in groups.values():
        if len(members) > 1:
            for c in members:
                partners[c] |= members
    return {c: "".join(sorted(m)) for c, m in partners.items()}


def test_the_model_says_what_java_does() -> None:
    # What Java 17 answers for these (String.equalsIgnoreCase).
    assert java_equals_ignore_case("adm\u0131n", "admin")
    assert java_equals_ignore_case("adm\u0130n", "ADMIN")
    assert java_equals_ignore_case("\u017f", "s") and java_equals_ignore_case("\u212a", "k")
    assert java_equals_ignore_case("\u00df", "\u1e9e")
    assert not java_equals_ignore_case("\u00df", "ss")
    assert not java_equals_ignore_case("\u0430", "a")


_NAME = st.text(st.sampled_from(
    "adiksmntuxIKSAß\u00e5\u00b5\u03c3\u03b8\u03b9\u0432\u01c5\u1e61\u1f80-0"),
    min_size=1, max_size=8)


@st.composite
def _java_spelling(draw: st.DrawFn, name: str) -> str:
    partners = _java_partners()
    return "".join(draw(st.sampled_from(partners.get(c, c))) for c in name)


@settings(max_examples=150, deadline=None)
@example(deny="admin", data=None)
@given(deny=_NAME, data=st.data())
def test_what_java_takes_for_a_denied_path_is_denied(deny: str, data: st.DataObject | None
                                                     ) -> None:
    """For any deny route and any path Java's ``equalsIgnoreCase`` calls equal to it,
    raw or percent-encoded, with or without a trailing ``/``: the call is denied."""
    engine = Engine.from_source(POLICY.replace('"/admin"', f'"/v1/{deny}"'))
    if data is None:  # the audited case
        spelled, encoded, slash = "adm\u0131n", True, False
    else:
        spelled = data.draw(_java_spelling(deny))
        encoded, slash = data.draw(st.booleans()), data.draw(st.booleans())
    assert java_equals_ignore_case(spelled, deny)
    path = "/v1/" + spelled + ("/" if slash else "")
    if encoded:
        path = normalize_path(path)
    assert outcome(engine, path) == "route_deny", (deny, path)


@settings(max_examples=300, deadline=None)
@given(text=st.text(st.characters(codec="utf-8", categories=["L", "M", "N"]),
                    min_size=1, max_size=8), data=st.data())
def test_the_fold_keeps_together_what_casefold_and_java_do(text: str,
                                                           data: st.DataObject) -> None:
    """Nothing that Unicode case folding (the fold deny routes used before) or the Java
    model takes for ``text`` folds apart from it: a wider fold only denies more."""
    partners = _java_partners()
    other = "".join(data.draw(st.sampled_from(partners.get(c, c))) for c in text)
    assert fold_case(other) == fold_case(text)
    for a, b in ((text, other), (text, text.casefold()), (text, text.upper()),
                 (text, text.lower())):
        if a.casefold() == b.casefold():
            pa, pb = normalize_path("/" + a + "/"), normalize_path("/" + b + "/")
            assert fold_path(pa) == fold_path(pb), (a, b)


def test_i_with_a_combining_dot_folds_like_the_dotted_capital() -> None:
    # Unicode case folding reads U+0130 as i + U+0307; the Java reading makes it i.
    assert fold_path("/admi%CC%87%CC%87n") == fold_path("/ADM%C4%B0N") == "/admin"
    assert fold_path("/%CC%87i%CC%87") == "/%CC%87i"


def test_allow_routes_stay_case_sensitive() -> None:
    engine = Engine.from_source('role r: x:*\nagent "bot": r\ntool up: http "h.example" {\n'
                                '  GET "/v1/items" -> x:items\n}\n')
    for path in ("/v1/items", "/v1/\u0130tems", "/v1/\u0131tems", "/V1/ITEMS"):
        d = engine.tool_authorize("bot", transport="http", method="GET", host="h.example",
                                  path=path)
        assert d.allowed is (path == "/v1/items"), path


# -------------------------------------------------------------------------- key guard

def test_every_spelling_of_a_character_is_in_its_key_guard_spellings() -> None:
    """The guard spells each name every way :func:`fold_key` folds alike (its fast path
    looks the object's keys up among those spellings); no character past
    ``_LAST_CASED`` folds."""
    classes: dict[str, set[str]] = defaultdict(set)
    for cp in range(0x110000):
        c = chr(cp)
        folded = fold_key(c)
        if folded != c:
            assert cp <= _LAST_CASED, hex(cp)
            classes[folded].add(c)
    for folded, members in classes.items():
        if len(folded) == 1:
            members.add(folded)
        for c in members:
            assert members <= set(_char_cases(c)), (c, sorted(members - set(_char_cases(c))))


@pytest.mark.parametrize(("name", "key"), [
    ("\u03c3um", "\u03c2um"), ("\u03c3um", "\u03a3UM"), ("\u00dfe", "\u1e9ee"),
    ("\u03b8eta", "\u03d1eta"), ("\u0131d", "id"), ("\u0131d", "\u0130D"),
])
def test_key_guard_refuses_other_spellings_of_non_ascii_names(name: str, key: str) -> None:
    guard = KeyCaseGuard([JsonPath.compile(f"$['{name}']")])
    assert guard.clash({key: 1}) == name
    assert guard.clash({name: 1}) is None
