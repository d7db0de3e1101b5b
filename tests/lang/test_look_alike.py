"""W207: a string naming a principal or a resource whose word mixes scripts.

``agent "\\u0430dmin": superuser`` (a Cyrillic a among Latin letters) declares a principal
that is not the ``admin`` a reviewer reads. Names are ASCII already (E001); ids are
strings, where non-Latin letters are legitimate, so a word that mixes scripts is a
warning (Unicode TS #39 "highly restrictive", approximated with the Unicode database),
never an error: the policy loads and decides as before. W208 is such a string that NFKC
changes (fullwidth, mathematical letters); W209 one with a word wholly of Cyrillic or
Greek letters that look Latin (``"\\u0440\\u0430\\u0443\\u0440\\u0430\\u04cf"`` reads
"paypal"), which no letter out of place gives away.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine import Engine, PolicyError
from policyengine.cli import main
from policyengine.lang import ast
from policyengine.lang._scripts import LOOK_ALIKES, latin_look_alike, mixed_script, not_nfkc

CYR_A = "\u0430"  # CYRILLIC SMALL LETTER A, as "a"
ADMIN = CYR_A + "dmin"
HEAD = "namespace n\nrole superuser: x:*\nrole r: x:read\n"


def coded(code: str, text: str) -> list[tuple[int, int, str]]:
    """(line, column, message) of each warning ``code`` of a policy (one with errors too:
    a scope naming an agent no statement declares is also E104)."""
    try:
        problems = Engine.from_source(text).warnings
    except PolicyError as err:
        problems = err.problems
    return [(p.line, p.column, p.message) for p in problems if p.code == code]


def warnings_of(text: str) -> list[tuple[int, int, str]]:
    """(line, column, message) of each W207 (a word mixing scripts) of a policy."""
    return coded("W207", text)


def test_the_attack_is_warned_about_and_still_decided_as_written() -> None:
    text = HEAD + f'agent "{ADMIN}": superuser\nagent "admin": r\n'
    assert warnings_of(text) == [
        (4, 7, f'agent id "{ADMIN}" mixes scripts: CYRILLIC SMALL LETTER A (U+0430) among '
               "LATIN letters; it is not the id it looks like")]
    e = Engine.from_source(text)
    assert [w.code for w in e.warnings] == ["W207"]
    assert e.authorize(ADMIN, "x:delete", {}).allowed  # a warning: nothing else changes
    assert not e.authorize("admin", "x:delete", {}).allowed


# Where a string names a principal or a resource: (statement, the string's column).
PLACES = [
    ('agent "{s}": r', 7),
    ('agent "bob": r\npermit p: x:read for agent "{s}"', 28),
    ('permit p: x:read for role r, agent "{s}"', 36),
    ('resource doc "{s}" {{ owner = "bob" }}', 1),
    ('forbid f: x:read when principal.id == "{s}"', 39),
    ('forbid f: x:read when "{s}" != principal.id', 23),
    ('forbid f: x:read when principal.id in ["bob", "{s}"]', 47),
    ('forbid f: x:read when grant.acting_for == "{s}"', 43),
]


@pytest.mark.parametrize(("statement", "column"), PLACES)
@pytest.mark.parametrize("written", ["raw", "escape"])
def test_every_place_a_string_names_an_id(statement: str, column: int, written: str) -> None:
    s = ADMIN if written == "raw" else "\\u0430dmin"
    text = HEAD + 'agent "bob": r\n' * ("agent" not in statement) + statement.format(s=s)
    found = warnings_of(text + "\n")
    last = text.count("\n") + 1
    assert [(line, col) for line, col, _ in found] == [(last, column)], found
    assert "CYRILLIC SMALL LETTER A (U+0430) among LATIN letters" in found[0][2]


@pytest.mark.parametrize("statement", [
    'permit p: x:read when context.user == "{s}"',  # a context value: not an id
    'permit p: x:read when principal.attributes.nick == "{s}"',
    'agent "bob": r {{ nick = "{s}" }}',  # an attribute value
    'permit p: x:read when principal.id == context["{s}"]',
])
def test_strings_that_name_no_principal_are_left_alone(statement: str) -> None:
    assert warnings_of(HEAD + statement.format(s=ADMIN) + "\n") == []


@pytest.mark.parametrize("ident", [
    "admin", "бот", "Αλέξης", "山田", "山田taro", "東京タワー", "やまだ太郎", "서울Seoul",
    "台北ㄅㄆ", "محمد", "देवनागरी", "Nguyễn", "Müller", "ŁÓDŹ", "nai\u0308ve", "ǅemal",
    "admin-бот", "bot_Ωμέγα", "agent 7 агент", "\u02bcokina", "x\u02bcy", "\uff11\uff12\uff13",
])
def test_one_script_per_word_is_fine(ident: str) -> None:
    assert mixed_script(ident) is None
    assert warnings_of(HEAD + f"agent {ast.quote(ident)}: r\n") == []


@pytest.mark.parametrize(("ident", "word", "letters"), [
    (ADMIN, ADMIN, "CYRILLIC SMALL LETTER A (U+0430) among LATIN letters"),
    ("\u0391lice", "\u0391lice", "GREEK CAPITAL LETTER ALPHA (U+0391) among LATIN letters"),
    ("ops-p\u0430yp\u0430l", "p\u0430yp\u0430l",
     "CYRILLIC SMALL LETTER A (U+0430) among LATIN letters"),
    ("\u13aadmin", "\u13aadmin", "CHEROKEE LETTER GO (U+13AA) among LATIN letters"),
    ("\u0431\u043e\u0442o", "\u0431\u043e\u0442o",
     "LATIN SMALL LETTER O (U+006F) among CYRILLIC letters"),
    ("山田ivan\u0430", "山田ivan\u0430", "CYRILLIC SMALL LETTER A (U+0430) among LATIN letters"),
    ("p\u0430\u0435\u043e\u0441xyzw", "p\u0430\u0435\u043e\u0441xyzw",
     "CYRILLIC SMALL LETTER A (U+0430), CYRILLIC SMALL LETTER IE (U+0435), CYRILLIC SMALL "
     "LETTER O (U+043E) and 1 more among LATIN letters"),
])
def test_the_message_names_the_odd_letters(ident: str, word: str, letters: str) -> None:
    assert mixed_script(ident) == (word, letters)
    where = "" if word == ident else f' in the word "{word}"'
    assert warnings_of(HEAD + f"agent {ast.quote(ident)}: r\n") == [
        (4, 7, f"agent id {ast.quote(ident)} mixes scripts{where}: {letters}; it is not the "
               "id it looks like")]


def test_check_reports_it_and_werror_fails(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.policy"
    path.write_text(f'role superuser: x:*\nagent "{ADMIN}": superuser\n', "utf-8")
    assert main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "ok: 1 file, 1 warning" in out and "warning[W207]" in err
    assert main(["check", str(path), "--werror"]) == 1


LATIN = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"),
                min_size=1, max_size=12)
ODD_LETTERS = st.sampled_from("\u0430\u0435\u043e\u0440\u0441\u0445\u0443\u0456\u0391"
                              "\u0392\u0395\u039f\u03bf\u03c1")


@settings(max_examples=200, deadline=None)
@given(word=LATIN, at=st.integers(0, 12), odd=ODD_LETTERS)
def test_a_look_alike_inside_a_latin_word_is_always_found(word: str, at: int, odd: str
                                                         ) -> None:
    mixed = word[:at] + odd + word[at:]
    found = mixed_script(f"team-{mixed}.bot")
    assert found is not None and found[0] == mixed


# Letters of one script each: a word of any of them alone, or several such words.
SCRIPTS = [st.characters(min_codepoint=lo, max_codepoint=hi, categories=("Ll", "Lu", "Lo"))
           for lo, hi in ((0x41, 0x24F), (0x400, 0x4FF), (0x391, 0x3C9), (0x4E00, 0x9FFF),
                          (0x5D0, 0x5EA), (0x627, 0x64A), (0xAC00, 0xD7A3), (0x905, 0x939))]
ONE_SCRIPT_WORD = st.one_of(*[st.text(s, min_size=1, max_size=10) for s in SCRIPTS])


@settings(max_examples=200, deadline=None)
@given(words=st.lists(ONE_SCRIPT_WORD, min_size=1, max_size=4),
       sep=st.sampled_from(["-", "_", " ", ".", "@", "/"]))
def test_words_each_in_one_script_are_never_warned_about(words: list[str], sep: str) -> None:
    assert mixed_script(sep.join(words)) is None


# -- W208: a string naming a principal or a resource that NFKC normalisation changes ---

FULL_ADMIN = "\uff41\uff44\uff4d\uff49\uff4e"  # FULLWIDTH LATIN SMALL LETTER A, D, M, I, N


def nfkc_warnings_of(text: str) -> list[tuple[int, int, str]]:
    """(line, column, message) of each W208 of a policy (one with errors too)."""
    return coded("W208", text)


def test_a_fullwidth_admin_is_warned_about_and_still_decided_as_written() -> None:
    text = HEAD + f'agent "{FULL_ADMIN}": superuser\nagent "admin": r\n'
    assert nfkc_warnings_of(text) == [
        (4, 7, f'agent id "{FULL_ADMIN}" changes under Unicode NFKC normalisation: '
               'FULLWIDTH LATIN SMALL LETTER A (U+FF41) normalises to "a"; it is not the id '
               '"admin" it looks like')]
    e = Engine.from_source(text)
    assert [(w.code, w.hint) for w in e.warnings] == [
        ("W208", 'write "admin" (its NFKC form) if that is the id meant')]
    assert e.authorize(FULL_ADMIN, "x:delete", {}).allowed  # a warning: nothing else changes
    assert not e.authorize("admin", "x:delete", {}).allowed


@pytest.mark.parametrize(("statement", "column"), PLACES)
@pytest.mark.parametrize("written", ["raw", "escape"])
def test_every_place_a_string_names_an_id_is_checked_for_nfkc(statement: str, column: int,
                                                               written: str) -> None:
    s = "\U0001d41admin" if written == "raw" else "\\ud835\\udc1admin"  # MATHEMATICAL BOLD a
    text = HEAD + 'agent "bob": r\n' * ("agent" not in statement) + statement.format(s=s)
    found = nfkc_warnings_of(text + "\n")
    last = text.count("\n") + 1
    assert [(line, col) for line, col, _ in found] == [(last, column)], found
    assert 'MATHEMATICAL BOLD SMALL A (U+1D41A) normalises to "a"; it is not the id "admin"' \
        in found[0][2]


@pytest.mark.parametrize("statement", [
    'permit p: x:read when context.user == "{s}"',  # a context value: not an id
    'agent "bob": r {{ nick = "{s}" }}',  # an attribute value
])
def test_nfkc_leaves_strings_that_name_no_principal_alone(statement: str) -> None:
    assert nfkc_warnings_of(HEAD + statement.format(s=FULL_ADMIN) + "\n") == []


@pytest.mark.parametrize(("ident", "first", "norm"), [
    (FULL_ADMIN, 'FULLWIDTH LATIN SMALL LETTER A (U+FF41) normalises to "a"', "admin"),
    ("\U0001d41a\U0001d41d\U0001d426\U0001d422\U0001d427",
     'MATHEMATICAL BOLD SMALL A (U+1D41A) normalises to "a"', "admin"),
    ("ad\U0001d592in", 'MATHEMATICAL BOLD FRAKTUR SMALL M (U+1D592) normalises to "m"',
     "admin"),
    ("\u210cal", 'BLACK-LETTER CAPITAL H (U+210C) normalises to "H"', "Hal"),
    ("\u212aelvin", 'KELVIN SIGN (U+212A) normalises to "K"', "Kelvin"),
    ("\ufb01nance", 'LATIN SMALL LIGATURE FI (U+FB01) normalises to "fi"', "finance"),
    ("root\u00b2", 'SUPERSCRIPT TWO (U+00B2) normalises to "2"', "root2"),
    ("\u00aadmin", 'FEMININE ORDINAL INDICATOR (U+00AA) normalises to "a"', "admin"),
    ("\u017fvc", 'LATIN SMALL LETTER LONG S (U+017F) normalises to "s"', "svc"),
    ("\u01c5emal", "LATIN CAPITAL LETTER D WITH SMALL LETTER Z WITH CARON (U+01C5) "
     'normalises to "D\u017e" (U+0044 U+017E)', "D\u017eemal"),
    ("\uff11\uff12\uff13", 'FULLWIDTH DIGIT ONE (U+FF11) normalises to "1"', "123"),
    ("\u2460bot", 'CIRCLED DIGIT ONE (U+2460) normalises to "1"', "1bot"),
    ("\uff83\uff7d\uff84", "HALFWIDTH KATAKANA LETTER TE (U+FF83) normalises to "
     '"\u30c6" (U+30C6)', "\u30c6\u30b9\u30c8"),
    ("\u00b5svc", 'MICRO SIGN (U+00B5) normalises to "\u03bc" (U+03BC)', "\u03bcsvc"),
    ("nai\u0308ve", "LATIN SMALL LETTER I (U+0069) + COMBINING DIAERESIS (U+0308) "
     'normalises to "\u00ef" (U+00EF)', "na\u00efve"),
    ("bo\u0301\u0316t", "LATIN SMALL LETTER O (U+006F) + COMBINING ACUTE ACCENT (U+0301) + "
     'COMBINING GRAVE ACCENT BELOW (U+0316) normalises to "\u00f3\u0316" (U+00F3 U+0316)',
     "b\u00f3\u0316t"),  # (marks out of canonical order: the change starts at a mark)
    ("x\u0301\u0316", "LATIN SMALL LETTER X (U+0078) + COMBINING ACUTE ACCENT (U+0301) + "
     'COMBINING GRAVE ACCENT BELOW (U+0316) normalises to "x\u0316\u0301" '
     "(U+0078 U+0316 U+0301)", "x\u0316\u0301"),
    ("\u1112\u1161\u11ab-kim", "HANGUL CHOSEONG HIEUH (U+1112) + HANGUL JUNGSEONG A (U+1161)"
     ' normalises to "\ud558" (U+D558)', "\ud55c-kim"),
])
def test_the_nfkc_message_names_the_first_change(ident: str, first: str, norm: str) -> None:
    assert not_nfkc(ident) == (first, norm)
    assert nfkc_warnings_of(HEAD + f"agent {ast.quote(ident)}: r\n") == [
        (4, 7, f"agent id {ast.quote(ident)} changes under Unicode NFKC normalisation: "
               f"{first}; it is not the id {ast.quote(norm)} it looks like")]


@pytest.mark.parametrize("ident", [
    "admin", "бот", "Москва", "Αλέξης", "Ελληνικά", "山田", "山田taro", "東京タワー",
    "やまだ太郎", "がぎぐ", "서울Seoul", "한국어", "台北ㄅㄆ", "محمد", "שלום", "देवनागरी",
    "Nguyễn", "Müller", "ŁÓDŹ", "admin-бот", "bot_Ωμέγα", "\u02bcokina", "ไทย",
    # A word wholly of look-alikes of Latin letters: one script, NFKC-stable (it is W209).
    "\u0441\u0430\u0445\u0430\u0440", "\u039a\u0391\u0399",
])
def test_text_as_normally_typed_in_any_script_is_not_warned_about(ident: str) -> None:
    assert not_nfkc(ident) is None
    assert warnings_of(HEAD + f"agent {ast.quote(ident)}: r\n") == []
    assert nfkc_warnings_of(HEAD + f"agent {ast.quote(ident)}: r\n") == []


@settings(max_examples=300, deadline=None)
@given(ident=st.text(st.characters(max_codepoint=0x7F), max_size=20))
def test_ascii_is_never_warned_about(ident: str) -> None:
    assert not_nfkc(ident) is None and mixed_script(ident) is None


@settings(max_examples=100, deadline=None)
@given(ident=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                   exclude_characters='"\\'), min_size=1, max_size=20))
def test_an_ascii_id_declared_or_compared_is_never_warned_about(ident: str) -> None:
    text = (HEAD + f'agent "{ident}": r\npermit p: x:read for agent "{ident}" '
            f'when principal.id != "{ident}"\n')
    assert warnings_of(text) == [] and nfkc_warnings_of(text) == []
    assert latin_warnings_of(text) == []


#: Every character NFKC changes on its own (compatibility forms, singletons such as the
#: Kelvin sign, composition exclusions; some 4,900): any text holding one changes too.
UNSTABLE = st.sampled_from([chr(c) for c in range(0x80, 0x110000) if not 0xD800 <= c < 0xE000
                            and unicodedata.normalize("NFKC", chr(c)) != chr(c)])
ANY_TEXT = st.text(st.characters(categories=("L", "M", "N", "S", "P", "Zs")), max_size=8)


@settings(max_examples=300, deadline=None)
@given(before=ANY_TEXT, odd=UNSTABLE, after=ANY_TEXT)
def test_any_nfkc_unstable_id_is_warned_about(before: str, odd: str, after: str) -> None:
    ident = before + odd + after
    found = not_nfkc(ident)
    assert found is not None and found[1] == unicodedata.normalize("NFKC", ident)
    assert len(nfkc_warnings_of(HEAD + f"agent {ast.quote(ident)}: r\n")) == 1


@settings(max_examples=300, deadline=None)
@given(ident=st.text(max_size=12))
def test_not_nfkc_is_exactly_a_change_under_nfkc(ident: str) -> None:
    found = not_nfkc(ident)
    norm = unicodedata.normalize("NFKC", ident)
    assert (found is None) == (norm == ident)
    if found is not None:  # the characters named are the text's, and NFKC changes them
        named = found[0].split(" normalises to ")[0]
        codes = "".join(chr(int(c, 16)) for c in re.findall(r"\(U\+([0-9A-F]+)\)", named))
        assert codes in ident and unicodedata.normalize("NFKC", codes) != codes


# -- W209: a word wholly of Cyrillic or Greek letters that look Latin ------------------

PAYPAL = "\u0440\u0430\u0443\u0440\u0430\u04cf"  # Cyrillic er a u er a palochka: "paypal"


def latin_warnings_of(text: str) -> list[tuple[int, int, str]]:
    """(line, column, message) of each W209 of a policy (one with errors too)."""
    return coded("W209", text)


def test_a_cyrillic_paypal_is_warned_about_and_still_decided_as_written() -> None:
    text = HEAD + f'agent "{PAYPAL}": superuser\nagent "paypal": r\n'
    assert latin_warnings_of(text) == [
        (4, 7, f'agent id "{PAYPAL}" is written wholly in Cyrillic letters that look Latin: '
               'it reads as "paypal" and is not that id')]
    e = Engine.from_source(text)
    assert [(w.code, w.hint) for w in e.warnings] == [
        ("W209", 'write "paypal" if that is the id meant; a real Cyrillic word keeps the '
                 "warning, which tells a reader it is not Latin (policyengine check "
                 "--ignore W209 lets it through --werror)")]
    assert e.authorize(PAYPAL, "x:delete", {}).allowed  # a warning: nothing else changes
    assert not e.authorize("paypal", "x:delete", {}).allowed


@pytest.mark.parametrize(("statement", "column"), PLACES)
@pytest.mark.parametrize("written", ["raw", "escape"])
def test_every_place_a_string_names_an_id_is_checked_for_latin_look_alikes(
        statement: str, column: int, written: str) -> None:
    s = PAYPAL if written == "raw" else "".join(f"\\u{ord(c):04x}" for c in PAYPAL)
    text = HEAD + 'agent "bob": r\n' * ("agent" not in statement) + statement.format(s=s)
    found = latin_warnings_of(text + "\n")
    last = text.count("\n") + 1
    assert [(line, col) for line, col, _ in found] == [(last, column)], found
    assert 'Cyrillic letters that look Latin: it reads as "paypal"' in found[0][2]


@pytest.mark.parametrize("statement", [
    'permit p: x:read when context.user == "{s}"',  # a context value: not an id
    'agent "bob": r {{ nick = "{s}" }}',  # an attribute value
])
def test_latin_look_alikes_in_strings_that_name_no_principal_are_left_alone(
        statement: str) -> None:
    assert latin_warnings_of(HEAD + statement.format(s=PAYPAL) + "\n") == []


@pytest.mark.parametrize(("ident", "where", "scripts", "reads"), [
    (PAYPAL, "is", "Cyrillic", "paypal"),
    ("\u0441\u0430\u0445\u0430\u0440", "is", "Cyrillic", "caxap"),  # also Russian "sugar"
    ("\u0410\u0412\u0421\u0415\u041d\u0406\u04c0\u0408\u041a\u041c\u041e\u0420\u0405\u0422"
     "\u0474\u051c\u0425\u0423\u04ae", "is", "Cyrillic", "ABCEHIIJKMOPSTVWXYY"),
    ("\u039a\u0391\u0399", "is", "Greek", "KAI"),
    ("\u03c1\u03bf\u03bd", "is", "Greek", "pov"),
    ("\u0441\u039f\u0440", "is", "Cyrillic and Greek", "cOp"),  # (W207 too: two scripts)
    ("\u0440\u0430\u0443\u0440\u0430\u04cf2", "is", "Cyrillic", "paypal2"),  # digits: any
    ("\u0441\u043e\u0301\u0440", "is", "Cyrillic", "co\u0301p"),  # a mark goes along
    (f"ops-{PAYPAL}", f'has the word "{PAYPAL}"', "Cyrillic", "ops-paypal"),
    (f"{PAYPAL} \u0431\u043e\u0442 \u0441\u0435\u0440", f'has the word "{PAYPAL}"',
     "Cyrillic", "paypal \u0431\u043e\u0442 cep"),  # every such word reads Latin
    ("\u0431\u043e\u0442_\u0445\u043e\u0440", 'has the word "\u0445\u043e\u0440"',
     "Cyrillic", "\u0431\u043e\u0442_xop"),  # (the o of the first word is left)
])
def test_the_latin_message_names_the_word_and_how_it_reads(ident: str, where: str,
                                                           scripts: str, reads: str) -> None:
    found = latin_look_alike(ident)
    assert found is not None and found[1:] == (scripts, reads)
    assert latin_warnings_of(HEAD + f"agent {ast.quote(ident)}: r\n") == [
        (4, 7, f"agent id {ast.quote(ident)} {where} written wholly in {scripts} letters "
               f"that look Latin: it reads as {ast.quote(reads)} and is not that id")]


def test_a_look_alike_word_beside_a_mixed_one_is_both_warnings_in_order() -> None:
    ident = f"p\u0430ypal-{PAYPAL}"  # a Cyrillic a among Latin letters, then a wholly one
    e = Engine.from_source(HEAD + f"agent {ast.quote(ident)}: r\n")
    assert [(w.code, w.line, w.column) for w in e.warnings if w.code != "W202"] == [
        ("W207", 4, 7), ("W209", 4, 7)]  # (W202: role superuser is held by no agent)


@pytest.mark.parametrize("ident", [
    "admin", "\u0431\u043e\u0442", "\u041c\u043e\u0441\u043a\u0432\u0430", "\u0391\u03bb\u03ad"
    "\u03be\u03b7\u03c2", "\u039a\u03b1\u03b9", "\u03ba\u03b1\u03b9", "\u0441\u0430\u0445"
    "\u0430\u0440\u043e\u043a", "\u0440\u0430\u0443\u0440\u0430l", "admin-\u0431\u043e\u0442",
    "山田", "محمد", "\u0565\u0585", "123", "\u0441\u0431-1",
    "\u0440\u0430\u0443\u0440\u0430\u02bc",  # a modifier letter is no look-alike: not all
])
def test_a_word_with_a_letter_outside_the_table_is_not_a_latin_look_alike(ident: str
                                                                          ) -> None:
    assert latin_look_alike(ident) is None
    assert latin_warnings_of(HEAD + f"agent {ast.quote(ident)}: r\n") == []


def test_the_table_is_cyrillic_and_greek_letters_each_read_as_one_latin_letter() -> None:
    for ch, latin in LOOK_ALIKES.items():
        name = unicodedata.name(ch)
        assert name.split(" ")[0] in ("CYRILLIC", "GREEK") and ch.isalpha(), name
        assert len(latin) == 1 and latin.isascii() and latin.isalpha()
        assert ch.isupper() == latin.isupper(), name  # a capital reads as a capital
        assert unicodedata.normalize("NFKC", ch) == ch  # W208's business otherwise
    assert len(set(LOOK_ALIKES.values())) >= 24  # most of the alphabet can be spelled
    # docs/language.md lists the table, so its scope is what a user reads there
    docs = (Path(__file__).parents[2] / "docs" / "language.md").read_text("utf-8")
    scope = docs[docs.index("warning W209"):docs.index("Out of scope")]
    assert f"a table of {len(LOOK_ALIKES)} letters" in scope
    listed = [span.split(" ") for span in re.findall(r"`([^`]+)`", scope)]
    assert {ch for letters in listed if all(len(x) == 1 for x in letters) and len(letters) > 1
            for ch in letters} == set(LOOK_ALIKES)


def test_check_reports_w209_with_its_position_and_werror_fails(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.policy"
    path.write_text(f'role superuser: x:*\nagent "{PAYPAL}": superuser\n', "utf-8")
    assert main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "ok: 1 file, 1 warning" in out
    assert f"p.policy:2:7: warning[W209]: agent id \"{PAYPAL}\" is written wholly" in err
    assert main(["check", str(path), "--werror"]) == 1


TABLE_WORD = st.text(st.sampled_from(sorted(LOOK_ALIKES)), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(word=TABLE_WORD, before=st.sampled_from(["", "ops-", "team.", "7 ", "бот_"]),
       after=st.sampled_from(["", "-bot", "@example", " 2", ".Αλέξης"]))
def test_any_word_built_from_the_table_is_warned_about(word: str, before: str,
                                                        after: str) -> None:
    ident = before + word + after
    found = latin_look_alike(ident)
    assert found is not None
    assert found[0] == word and found[2] == before + word.translate(
        {ord(k): v for k, v in LOOK_ALIKES.items()}) + after
    assert len(latin_warnings_of(HEAD + f"agent {ast.quote(ident)}: r\n")) == 1


@settings(max_examples=300, deadline=None)
@given(ident=st.text(st.characters(max_codepoint=0x7F), max_size=20))
def test_ascii_is_never_a_latin_look_alike(ident: str) -> None:
    assert latin_look_alike(ident) is None
