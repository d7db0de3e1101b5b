r"""Look-alike letters: a word of an identifier string that mixes scripts (W207), and an
identifier string that Unicode's NFKC normalisation changes (W208).

``agent "\u0430dmin": superuser``, written with a Cyrillic a (U+0430) as it is, declares
a principal that is not ``admin``, while a reviewer reads ``admin``. Names are ASCII
(E001 otherwise), but strings naming a principal or a resource hold any letter, and
non-Latin ids are legitimate, so this is a warning, not an error. The rule approximates
Unicode TS #39's "highly restrictive" level with the Unicode database alone: in one word
(a run of letters, marks and digits), every letter is of one script, or the scripts are
Latin with Han and Hiragana and Katakana, Latin with Han and Bopomofo, or Latin with Han
and Hangul. A letter's script is the first word of its Unicode name (``CYRILLIC SMALL
LETTER A``); marks and digits take any script.

Compatibility forms of the same script (fullwidth ``"\uff41dmin"``, mathematical bold
``"\U0001d41admin"``, the Kelvin sign, ligatures, halfwidth kana) and letters written
with a separate combining mark (``"nai\u0308ve"`` beside the precomposed ``"na\u00efve"``)
are W208: NFKC changes the string, naming the first characters it changes and what they
become. Text in any script as it is normally typed is NFKC-stable.

Not caught: a word wholly of look-alikes of another script (``"\u0430\u0441\u0435"``,
Cyrillic "ace"). A list of Cyrillic and Greek letters that look Latin would flag it, but
also real words spelled only with such letters (Russian ``"\u0441\u0430\u0445\u0430\u0440"``
"sugar", read "caxap"; Greek capitals ``"\u039a\u0391\u0399"`` "and", read "KAI"), so
telling the attack from a Russian or Greek id needs Unicode's confusables data and the
ids a reader expects, which a policy does not have.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter

__all__ = ["mixed_script", "not_nfkc"]

#: Scripts one word may combine (TS #39, "highly restrictive").
_TOGETHER = (frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
             frozenset({"LATIN", "HAN", "BOPOMOFO"}),
             frozenset({"LATIN", "HAN", "HANGUL"}))
#: First words of names of letters that belong to no one script (Unicode's Common:
#: modifier letters, the kana prolonged sound mark).
_COMMON = frozenset({"", "MODIFIER", "KATAKANA-HIRAGANA", "VERTICAL"})
#: Letters of no script by where they are: the ordinal indicators and the micro sign,
#: the spacing modifier letters, the letterlike symbols (the Kelvin sign, the script l)
#: and the mathematical alphanumerics (bold A...): the first word of their names is not
#: a script's. They stand beside any script (Unicode's confusables data would be needed
#: to tell that a mathematical or fullwidth A is an A).
_COMMON_RANGES = ((0xAA, 0xAA), (0xB5, 0xB5), (0xBA, 0xBA), (0x2B0, 0x2FF),
                  (0x2100, 0x214F), (0x1D400, 0x1D7FF))


def script(ch: str) -> str | None:
    """The script of a letter (``LATIN``, ``CYRILLIC``, ``HAN``...), None for a character
    of any script (not a letter, or a letter Unicode counts as Common)."""
    if not unicodedata.category(ch).startswith("L"):
        return None
    code = ord(ch)
    if any(lo <= code <= hi for lo, hi in _COMMON_RANGES):
        return None
    words = unicodedata.name(ch, "").split(" ")
    first = words[0]
    if first in ("HALFWIDTH", "FULLWIDTH") and len(words) > 1:
        first = words[1]
    if first in ("CJK", "IDEOGRAPHIC"):
        return "HAN"
    return None if first in _COMMON else first


def _words(text: str) -> list[str]:
    words, word = [], []
    for ch in text:
        if unicodedata.category(ch)[0] in "LMN":
            word.append(ch)
        elif word:
            words.append("".join(word))
            word = []
    if word:
        words.append("".join(word))
    return words


def mixed_script(text: str) -> tuple[str, str] | None:
    """None when every word of ``text`` is of one script (or an allowed mix); else the
    first mixed word and what a warning says of it: its letters of other scripts than
    the word's most letters, as ``CYRILLIC SMALL LETTER A (U+0430) among LATIN
    letters``."""
    if text.isascii():
        return None
    for word in _words(text):
        scripts = [s for s in map(script, word) if s is not None]
        found = set(scripts)
        if len(found) < 2 or any(found <= ok for ok in _TOGETHER):
            continue
        main = Counter(scripts).most_common(1)[0][0]
        # The letters shown: those of a script no allowed mix puts beside the word's
        # main one (the Cyrillic a of "山田ivan\u0430", not the Han), else every other.
        beside = {main}.union(*(ok for ok in _TOGETHER if main in ok))
        odd = list(dict.fromkeys(ch for ch in word if script(ch) not in (None, *beside)))
        odd = odd or list(dict.fromkeys(ch for ch in word if script(ch) not in (None, main)))
        shown = ", ".join(f"{unicodedata.name(ch)} (U+{ord(ch):04X})" for ch in odd[:3])
        more = f" and {len(odd) - 3} more" if len(odd) > 3 else ""
        return word, f"{shown}{more} among {main} letters"
    return None


def _joins(ch: str) -> bool:
    """Whether ``ch`` goes with the character before it (a combining mark, or any
    character of a nonzero combining class), so a change NFKC makes is shown whole."""
    return unicodedata.category(ch).startswith("M") or unicodedata.combining(ch) != 0


def _named(text: str) -> str:
    return " + ".join(f"{unicodedata.name(ch, 'an unnamed character')} (U+{ord(ch):04X})"
                      for ch in text)


def not_nfkc(text: str) -> tuple[str, str] | None:
    """None when NFKC normalisation leaves ``text`` as it is; else what a warning says of
    the first characters it changes (``FULLWIDTH LATIN SMALL LETTER A (U+FF41)
    normalises to "a"``) and the whole normalised text."""
    if text.isascii():
        return None
    norm = unicodedata.normalize("NFKC", text)
    if norm == text:
        return None
    at = 0
    while at < min(len(text), len(norm)) and text[at] == norm[at]:
        at += 1
    at = min(at, len(text) - 1)
    while at > 0 and _joins(text[at]):  # back to the letter a mark goes with
        at -= 1
    end = at + 1
    while end < len(text) and _joins(text[end]):
        end += 1
    # Rarely a change needs the next letters too (Hangul jamo compose into a syllable).
    while end < len(text) and unicodedata.normalize("NFKC", text[at:end]) == text[at:end]:
        end += 1
        while end < len(text) and _joins(text[end]):
            end += 1
    part = text[at:end]
    became = unicodedata.normalize("NFKC", part)
    shown = json.dumps(became, ensure_ascii=False)
    if not became.isascii():  # (a precomposed letter looks like the letter and its mark)
        shown += " (" + " ".join(f"U+{ord(ch):04X}" for ch in became) + ")"
    return f"{_named(part)} normalises to {shown}", norm
