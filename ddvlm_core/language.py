"""Whether a transcript is English: the only language the model reads.

Every checkpoint learnt from MELD (English subtitles of Friends) on an English text encoder (MPNet, RoBERTa). A
multilingual robot, or an ASR that detects the language itself (Whisper does, and on short clips now and then
picks the wrong one, then transcribes in it), hands the node text in other languages, and the answer to such text
says nothing about the speaker. Two signs are read:

- the ASR's language tag (ROS4HRI's ``LiveSpeech.locale``, e.g. ``en_GB``, or ``language``, e.g. ``en-GB``; Whisper's
  ``ja``);
- the text's script: mostly letters of another script than Latin (Han, kana, Hangul, Cyrillic, Arabic ...).

Text in another Latin-script language (Spanish, German ...) without a tag is not detected.
"""
from __future__ import annotations

import unicodedata
from collections import Counter

NOT_ENGLISH_FLAG = "transcript-not-english"
UNKNOWN_TAGS = {"", "und", "mul", "zxx", "auto", "unknown", "none"}  # BCP 47's undetermined, multiple, no content
ENGLISH_TAGS = {"en", "eng", "english"}  # ISO 639-1, 639-2/3, and the name some ASR wrappers give
SCRIPT_NAMES = {"CJK": "Han", "HIRAGANA": "Japanese kana", "KATAKANA": "Japanese kana", "HANGUL": "Hangul"}


def tag_is_english(tag: str) -> bool | None:
    """Whether a language tag names English: True for ``en``, ``en-GB``, ``en_US``, ``eng``, ``English``; False for
    any other language; None when it names none (``""``, ``und``, ``auto``)."""
    primary = (tag or "").strip().replace("_", "-").split("-")[0].lower()
    if primary in UNKNOWN_TAGS:
        return None
    return primary in ENGLISH_TAGS


def letter_script(ch: str) -> str:
    """The script of one letter, as Unicode names it: "Latin", "Han", "Japanese kana", "Cyrillic" ... ("" for a
    character that is not a letter)."""
    if not ch.isalpha():
        return ""
    name = unicodedata.name(ch, "")
    if "LATIN" in name:  # also FULLWIDTH LATIN ...
        return "Latin"
    first = name.replace("HALFWIDTH ", "").split(" ")[0]
    return SCRIPT_NAMES.get(first, first.title())


def main_other_script(text: str) -> str:
    """The script of most of the text's letters when it is not Latin ("" when most are Latin, or none is a
    letter): text in another script than English's."""
    scripts = Counter(s for s in map(letter_script, text) if s)
    n_letters = sum(scripts.values())
    other = n_letters - scripts["Latin"]
    if not n_letters or 2 * other <= n_letters:
        return ""
    return max((s for s in scripts if s != "Latin"), key=scripts.__getitem__)


def not_english(text: str, language: str = "") -> str:
    """Why a transcript is not English ("" when nothing says so): the ASR's tag names another language
    ("language tag 'de-DE'"), or most of its letters are of another script ("Han script"). The tag is the ASR's
    word for what it heard; the script is what the model would read, so either is enough."""
    if tag_is_english(language) is False:
        return f"language tag {language.strip()!r}"
    script = main_other_script(text)
    return f"{script} script" if script else ""
