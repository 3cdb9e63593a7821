"""Seeded ASR-like corruption of transcripts at a target word error rate (WER).

Robots hear ASR output, not gold transcripts. ``corrupt(text, wer, rng)`` applies word substitutions,
deletions and insertions (default mix 60 / 25 / 15 %, a typical ASR error profile) so that the
expected number of edits is ``wer`` x the number of words; ``word_error_rate`` measures the result
(Levenshtein distance over words / reference length). ``unpunctuate(text)`` writes text as an ASR that does
not punctuate would (Vosk, Kaldi recipes, many streaming ASRs): lower case, no punctuation. ``whisper_loop(text)``
writes it as Whisper in a repetition loop does: its last sentence repeated until the window is full.
"""
from __future__ import annotations

import random
import re
from typing import Sequence

# frequent short words an ASR confuses or inserts; substitutions also draw from the corpus itself
FILLERS = ("uh", "um", "the", "a", "and", "to", "it", "you", "that", "oh", "yeah", "so", "in", "is")


def corrupt(text: str, wer: float, rng: random.Random, vocabulary: Sequence[str] = FILLERS,
            mix: tuple[float, float, float] = (0.6, 0.25, 0.15)) -> str:
    """Each reference word is edited with probability ``wer`` (substituted, deleted, or followed by an
    inserted word, by ``mix``). Never returns an empty string: a fully deleted utterance keeps one word."""
    if not 0.0 <= wer <= 1.0:
        raise ValueError(f"WER must be in [0, 1], got {wer}")
    words = text.split()
    out: list[str] = []
    for word in words:
        if rng.random() >= wer:
            out.append(word)
            continue
        kind = rng.choices(("sub", "del", "ins"), weights=mix)[0]
        if kind == "sub":
            choice = rng.choice(vocabulary)
            out.append(choice if choice.lower() != word.lower() else rng.choice(FILLERS))
        elif kind == "ins":
            out += [word, rng.choice(vocabulary)]
    if not out and words:
        out = [rng.choice(vocabulary)]
    return " ".join(out)


_NOT_IN_WORDS = re.compile(r"[^\w\s']|(?<!\w)'|'(?!\w)")  # punctuation; an apostrophe not inside a word


def unpunctuate(text: str) -> str:
    """``text`` as an ASR without punctuation writes it: lower case, punctuation removed ("you-you" -> "you
    you"), apostrophes inside words kept as ASCII ("Don’t" -> "don't"). Text with no word in it ("...") is
    returned as it is: such an ASR writes nothing for it, and a benchmark still needs an utterance there."""
    words = _NOT_IN_WORDS.sub(" ", text.replace("’", "'").replace("‘", "'")).lower().split()
    return " ".join(words) if words else text


def streaming_partials(text: str, words_per_result: float = 1.25) -> list[str]:
    """The partial results a streaming ASR (Vosk's, every 0.5 s of speech at 2.5 words a second: 1.25 words each)
    publishes before its final result for ``text``: growing prefixes of it, ``unpunctuate``d, each with more words
    than the one before; the whole text is left to the final result. "Oh, I can't!" -> ["oh", "oh i"]."""
    words = unpunctuate(text).split()
    counts, k = [], 1
    while round(k * words_per_result) < len(words):
        n = max(1, round(k * words_per_result))
        if not counts or n > counts[-1]:
            counts.append(n)
        k += 1
    return [" ".join(words[:n]) for n in counts]


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, by word-level edit distance (of the texts as
    given: score normalised texts, e.g. both ``unpunctuate``d, to leave case and punctuation out, as ASR
    evaluations do)."""
    ref, hyp = reference.split(), hypothesis.split()
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / max(1, len(ref))


_SENTENCE = re.compile(r"[^.!?…]+[.!?…]*")


def whisper_loop(text: str, min_words: int = 150) -> str:
    """``text`` as Whisper writes it when it falls into a repetition loop at the end of its 30 s window: the last
    sentence repeated until the transcript has at least ``min_words`` words (its 224-token window: about 150),
    the last repeat cut short by the window (half of it kept). "Oh no. I'm sorry!" -> "Oh no. I'm sorry! I'm
    sorry! ... I'm"."""
    sentences = [m for m in _SENTENCE.findall(text) if re.search(r"\w", m)] or [text]
    unit = sentences[-1].split()
    out = text.split()
    while len(out) < min_words:
        out += unit
    return " ".join(out + unit[:len(unit) // 2])
