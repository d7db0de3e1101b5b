r"""Look-alike letters: a word of an identifier string that mixes scripts (W207), an
identifier string that Unicode's NFKC normalisation changes (W208), and a word wholly
of letters of another script that look Latin (W209).

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

A word of one script can look Latin as a whole, with no letter out of place: Cyrillic
``"\u0440\u0430\u0443\u0440\u0430\u04cf"`` reads "paypal", Greek ``"\u039a\u0391\u0399"``
reads "KAI" (TS #39 calls such strings whole-script confusables). A word whose every
letter is in :data:`LOOK_ALIKES` (the Cyrillic and Greek letters drawn like a Latin one
in common fonts, a subset of Unicode's confusables data) is W209, and the message says
the Latin it reads as. A real Russian or Greek word spelled only with such letters is
warned about too (``"\u0441\u0430\u0445\u0430\u0440"``, "sugar", reads "caxap"), as a
browser shows such a domain name as punycode: whether it is meant is for a reader to
say; a word with one letter outside the table (``"\u0431\u043e\u0442"``) is not. Other
scripts' look-alikes (Armenian, Cherokee...) and look-alikes inside Latin (``rn`` for
``m``, ``l`` for ``I``) are out of the table's scope.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["LOOK_ALIKES", "latin_look_alike", "mixed_script", "not_nfkc"]

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


def _word_spans(text: str) -> list[tuple[int, int]]:
    """Where the words of ``text`` are: runs of letters, marks and digits."""
    spans, start = [], -1
    for at, ch in enumerate(text):
        if unicodedata.category(ch)[0] in "LMN":
            if start < 0:
                start = at
        elif start >= 0:
            spans.append((start, at))
            start = -1
    if start >= 0:
        spans.append((start, len(text)))
    return spans


def _words(text: str) -> list[str]:
    return [text[start:end] for start, end in _word_spans(text)]


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


#: Cyrillic and Greek letters drawn like a Latin letter in common fonts, and the Latin
#: letter each reads as: W209's table (a word wholly of them looks Latin). Each is one of
#: Unicode's confusables (TS #39, confusables.txt) of a Latin letter (the palochka's
#: prototype there is "i", but undotted it reads as the "l" given here), taken only where
#: the glyphs are alike in a sans-serif face: not Greek small alpha, iota, upsilon, gamma,
#: which the data pairs with a, i, u, y. Only the two scripts most often seen beside Latin;
#: no compatibility form (the lunate sigma symbols, which NFKC makes a sigma: W208).
LOOK_ALIKES: Mapping[str, str] = MappingProxyType({
    # Cyrillic small letters: a c d e h i j l o p q s v w x y y
    "\u0430": "a", "\u0441": "c", "\u0501": "d", "\u0435": "e", "\u04bb": "h",
    "\u0456": "i", "\u0458": "j", "\u04cf": "l", "\u043e": "o", "\u0440": "p",
    "\u051b": "q", "\u0455": "s", "\u0475": "v", "\u051d": "w", "\u0445": "x",
    "\u0443": "y", "\u04af": "y",
    # Cyrillic capitals: A B C E H I I J K M O P S T V W X Y Y
    "\u0410": "A", "\u0412": "B", "\u0421": "C", "\u0415": "E", "\u041d": "H",
    "\u0406": "I", "\u04c0": "I", "\u0408": "J", "\u041a": "K", "\u041c": "M",
    "\u041e": "O", "\u0420": "P", "\u0405": "S", "\u0422": "T", "\u0474": "V",
    "\u051c": "W", "\u0425": "X", "\u0423": "Y", "\u04ae": "Y",
    # Greek capitals: A B E H I J K M N O P T X Y Z
    "\u0391": "A", "\u0392": "B", "\u0395": "E", "\u0397": "H", "\u0399": "I",
    "\u037f": "J", "\u039a": "K", "\u039c": "M", "\u039d": "N", "\u039f": "O",
    "\u03a1": "P", "\u03a4": "T", "\u03a7": "X", "\u03a5": "Y", "\u0396": "Z",
    # Greek small letters: j o p v
    "\u03f3": "j", "\u03bf": "o", "\u03c1": "p", "\u03bd": "v",
})
_AS_LATIN = str.maketrans(dict(LOOK_ALIKES))


def latin_look_alike(text: str) -> tuple[str, str, str] | None:
    """None unless a word of ``text`` has letters and every one is in
    :data:`LOOK_ALIKES`; else that word (the first such), its scripts as a warning says
    them (``Cyrillic``, ``Greek``, ``Cyrillic and Greek``) and ``text`` as a reader sees
    it: every such word in the Latin letters it looks like (``"ops-paypal"``)."""
    if text.isascii():
        return None
    found = [(start, end) for start, end in _word_spans(text)
             if _wholly_look_alike(text[start:end])]
    if not found:
        return None
    start, end = found[0]
    word = text[start:end]
    names = sorted({unicodedata.name(ch).split(" ")[0].title()
                    for ch in word if ch in LOOK_ALIKES})
    reads, at = [], 0
    for start, end in found:
        reads += [text[at:start], text[start:end].translate(_AS_LATIN)]
        at = end
    return word, " and ".join(names), "".join(reads) + text[at:]


def _wholly_look_alike(word: str) -> bool:
    letters = [ch for ch in word if unicodedata.category(ch).startswith("L")]
    return bool(letters) and all(ch in LOOK_ALIKES for ch in letters)


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
