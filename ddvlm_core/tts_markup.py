"""The robot's speech as people hear it: its TTS input without the markup that tells the TTS how to say it.

A robot's own turns join the dialogue context (``context_only_speakers``), published from what it sends its TTS.
That text often carries markup the TTS reads and nobody hears, which MELD's subtitles never had:

- SSML (Amazon Polly, Google, Azure, Acapela ...): ``<speak>Hi <break time="500ms"/> there!</speak>``, whose text
  content is kept (``<sub alias="World Wide Web">WWW</sub>`` -> "WWW") and whose entities are unescaped;
- NAOqi's ALTextToSpeech tags (Pepper, NAO): ``\\pau=500\\``, ``\\rspd=80\\``, ``\\style=joyful\\``, ``\\rst\\``;
- NAOqi's ALAnimatedSpeech annotations: ``^start(animations/Stand/Gestures/Hey_1)``, ``^wait(...)``, ``^mode(...)``.

``strip_tts_markup`` removes them; text without markup is returned as it is (a person's "I <3 you" is not SSML).
"""
from __future__ import annotations

import html
import re

_SSML_ROOT = re.compile(r"<\s*speak\b", re.IGNORECASE)
_SSML_TAGS = ("speak", "break", "prosody", "emphasis", "say-as", "phoneme", "sub", "audio", "mark", "voice",
              "lang", "p", "s", "w", "amazon:[\\w-]+", "mstts:[\\w-]+", "google:[\\w-]+")
_SSML_TAG = re.compile(r"<\s*/?\s*(?:%s)\b[^<>]{0,500}?/?\s*>" % "|".join(_SSML_TAGS), re.IGNORECASE)
_ANY_TAG = re.compile(r"<[^<>]{0,500}>")
_NAOQI_TAG = re.compile(r"\\\\?(?:pau|rspd|vct|vol|mrk|emph|style|readmode|wait|bound|rst|eos|toi|audio)"
                        r"(?:=[^\\\s]*)?\\\\?", re.IGNORECASE)
_NAOQI_ANIMATION = re.compile(r"\^(?:start|stop|wait|run|call|mode|pCall)\([^()]*\)")


def has_tts_markup(text: str) -> bool:
    """Whether ``text`` carries SSML, NAOqi tags or NAOqi animation annotations."""
    return bool(_SSML_ROOT.search(text) or _SSML_TAG.search(text) or _NAOQI_TAG.search(text)
                or _NAOQI_ANIMATION.search(text))


def strip_tts_markup(text: str) -> str:
    """``text`` as the TTS speaks it: SSML tags removed (every tag inside ``<speak>``, else SSML's own tag names
    only) and its entities unescaped, NAOqi's ``\\tag=value\\`` and ``^start(...)`` annotations removed,
    whitespace collapsed. Text without markup comes back unchanged."""
    tags = _ANY_TAG if _SSML_ROOT.search(text) else _SSML_TAG
    out, n_tags = tags.subn(" ", text)
    out = _NAOQI_ANIMATION.sub(" ", _NAOQI_TAG.sub(" ", html.unescape(out) if n_tags else out))
    if out == text:  # no markup: every match is replaced by a space, so a text with any would differ
        return text
    return re.sub(r"\s+([,.!?;:])", r"\1", " ".join(out.split()))  # "there !" where a tag stood before the "!"
