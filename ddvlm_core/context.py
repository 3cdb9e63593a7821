"""Dialogue context -> text prompt (paper Section 3.3, "Text modality").

All utterances of a dialogue, in order, each prefixed with its speaker token, followed by the emotion
prompt ``Now <si> feels <mask>``:

    "<s1>: utt_1 <s2>: utt_2 ... <si>: utt_k Now <si> feels <mask>"

limited to ``max_tokens`` (511) tokens including the tokenizer's own special tokens; when longer, the
earliest utterances are dropped first, whole, and the current one never. If the current utterance alone
does not fit, its tail is kept (with its speaker prefix) and the prompt says so (``truncated_current``).

Speaker tokens ``<s1>``, ``<s2>``, ... are given in order of first appearance and stay fixed for the whole
dialogue, including after the speaker's earlier turns were dropped from the window and when a speaker
leaves and comes back (TelME numbers speakers inside the truncated window, so a returning speaker can
change token; we number them over the whole dialogue). A turn with no speaker gets ``<s0>``, one stable
unknown-speaker token. The tokenizer knows ``<s1>``..``<s9>`` (MELD dialogues have at most 9 speakers); a
robot's conversation can meet more people than that, and ``<s10>`` would reach the model as the pieces
``<``, ``s``, ``##10``, ``>`` it never saw. So a 10th speaker takes over the token of the speaker heard least
recently, who gets a token afresh if they speak again.
"""
from __future__ import annotations

import re
import unicodedata
from collections import abc, deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence

from ddvlm_core.arrival_order import turns_ended_after

DEFAULT_MAX_TOKENS = 511
N_SPEAKER_TOKENS = 9  # MELD dialogues have at most 9 speakers
UNKNOWN_SPEAKER_TOKEN = "<s0>"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile("[\ud800-\udfff]")  # half of a UTF-16 pair: no character (json.loads('"\\ud83d"') gives one)


def speaker_token(index: int) -> str:
    """Token of the index-th speaker of a dialogue (1-based); 0 is the unknown speaker."""
    return f"<s{index}>"


def speaker_token_names(n_speakers: int = N_SPEAKER_TOKENS) -> list[str]:
    """The speaker tokens added to a tokenizer as special tokens: <s0> (unknown) and <s1>..<sN>."""
    return [speaker_token(i) for i in range(n_speakers + 1)]


def normalize_utterance(text: str | bytes) -> str:
    """Clean transcript text: UTF-8 only, control characters removed, whitespace collapsed, non-empty.

    Raises ValueError with the reason for bytes that are not UTF-8, for a str that UTF-8 cannot hold (a lone
    surrogate: half an emoji from text cut in UTF-16, or JSON's "\\ud83d") and for text that is empty after
    cleaning; TypeError for anything that is not text.
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"utterance is not valid UTF-8 (byte {e.start}: {e.reason})") from None
    if not isinstance(text, str):
        raise TypeError(f"utterance must be str or UTF-8 bytes, got {type(text).__name__}")
    if bad := _SURROGATE.search(text):
        raise ValueError(f"utterance is not valid Unicode (a lone surrogate, U+{ord(bad.group()):04X}, at character "
                         f"{bad.start()})")
    text = unicodedata.normalize("NFC", _CONTROL.sub(" ", text))
    text = " ".join(text.split())
    if not text:
        raise ValueError("utterance text is empty")
    return text


def has_text(text) -> bool:
    """Whether ``normalize_utterance`` takes this text: what the node classifies (a blank ASR hypothesis, or
    control characters only, it skips)."""
    try:
        normalize_utterance(text)
    except (ValueError, TypeError):
        return False
    return True


_ANNOTATIONS = re.compile(r"(\s*(\[[^\[\]]*\]|\([^()]*\)|\*[^*]+\*|<[^<>]*>|[♪♫]+))+\s*")


# What Whisper writes when nobody speaks, besides annotations: it learnt from subtitled videos, and on silence and
# noise it writes their outros and subtitle credits (openai/whisper discussion #679; "Thanks for watching!",
# "Subtitles by the Amara.org community", Japanese and Korean "thank you for watching", the ZDF's German credit).
# Only boilerplate that nobody says to a robot: a lone "Thank you." (also one of them) stays an utterance.
_BOILERPLATE = re.compile(
    r"(thanks|thank you)( so much| very much)? for watching( this video| and see you next time)?"
    r"|(please )?(don't forget to )?(like and |like & )?subscribe( to (my|our|the) channel)?"
    r"|(subtitles?|captions?) (by|made by|created by|provided by|submitted by) .+"
    r"|untertitel(ung)? (im auftrag )?des zdf.*"
    r"|ご視聴ありがとうございました|시청해 ?주셔서 감사합니다")
_SENTENCE_END = re.compile(r"[.!?。！？]+")


def asr_boilerplate(text: str) -> bool:
    """Whether a transcript is only a video outro or a subtitle credit (one or repeated), what Whisper writes for
    silence and noise: "Thanks for watching!", "Please subscribe.", "Subtitles by the Amara.org community"."""
    text = _ANNOTATIONS.sub(" ", text).lower().replace("’", "'")
    if "amara.org" in text:  # the subtitle community's credit, in any language
        return True
    sentences = [" ".join(re.sub(r"[,;:\-–—\"]", " ", s).split()) for s in _SENTENCE_END.split(text)]
    sentences = [s for s in sentences if s]
    return bool(sentences) and all(_BOILERPLATE.fullmatch(s) for s in sentences)


def non_speech(text) -> bool:
    """Whether a transcript holds nothing that was said: empty or blank (what many ASR wrappers publish when their
    VAD fired on noise), or as Whisper writes it for silence, music or noise: annotations only (``[BLANK_AUDIO]``,
    ``(upbeat music)``, ``♪``, ``*laughs*``, ``<noise>``), or a video outro or subtitle credit only
    (``asr_boilerplate``). There is nothing to classify (no MELD utterance is either). Text that is not a string
    (bytes) is no transcript at all: False, for the caller to reject."""
    if not isinstance(text, str):
        return False
    if not text.strip():
        return True
    return _ANNOTATIONS.fullmatch(text) is not None or asr_boilerplate(text)


SENTENCE_PUNCTUATION = ".,!?;:…—–。，！？；："
UNPUNCTUATED_MIN_WORDS = 3
UNPUNCTUATED_FLAG = "transcript-unpunctuated"  # on an answer to a transcript ``unpunctuated`` holds for


def unpunctuated(text: str, min_words: int = UNPUNCTUATED_MIN_WORDS) -> bool:
    """Whether a transcript of at least ``min_words`` words has none of ``SENTENCE_PUNCTUATION``: what an ASR
    that does not punctuate gives (Vosk, Kaldi recipes, many streaming ASRs). The model learnt from MELD's
    punctuated subtitles, where fewer than 1 % of the utterances of 3 words or more have none, and it scores
    far lower on text without it (``bench/asr_noise.py``: reports/replay_asr_noise.md)."""
    return len(text.split()) >= min_words and not any(c in SENTENCE_PUNCTUATION for c in text)


_WORD_CHARACTER = re.compile(r"\w")


def end_sentence(text: str) -> str:
    """``text`` with a full stop after it when it has a word but none of ``SENTENCE_PUNCTUATION``, else as it is:
    a turn of an ASR that does not punctuate, ended as MELD's subtitles end nearly all of theirs (. ! ? ...). The
    model then reads where each turn ends; which mark it was (an exclamation mark carries emotion) cannot be told
    from the words. ``EmotionRecognizer.end_unpunctuated_turns`` (the node's parameter of that name) writes the
    turns of its prompts so (reports/turn_ends.md)."""
    if not unpunctuated(text, min_words=1) or not _WORD_CHARACTER.search(text):
        return text
    return text.rstrip() + "."


# An ASR repetition loop: Whisper, on noise or when its own previous text misleads it, repeats a word or a sentence
# until its 30 s window ends ("Thank you. Thank you. ..." 40 times; its transcribe() retries a window whose text
# compresses more than 2.4 times, other wrappers do not). People repeat themselves too: MELD's utterances repeat a
# unit of up to 6 words at most 10 times, over at most 18 words ("Not yet!" x8, "Go!" x10). A unit of up to
# LOOP_MAX_UNIT words repeated LOOP_MIN_REPEATS+ times over LOOP_MIN_WORDS+ words is a loop, beyond any of MELD's
# (a window of about 150 words holds 3 repeats of a unit of 50).
LOOP_MIN_REPEATS, LOOP_MIN_WORDS, LOOP_KEEP, LOOP_MAX_UNIT = 3, 24, 3, 50
REPETITION_LOOP_FLAG = "transcript-repetition-loop"  # on an answer to a transcript whose loop was cut
_WORD_WITH_SPACE = re.compile(r"\S+\s*")


def _word_key(word: str) -> str:
    """What two repeats of a word share: "Joey!" and "joey." are one word."""
    return re.sub(r"[^\w']", "", word.lower()) or word.strip()


def _loop_at(keys: list[str], i: int) -> tuple[int, int]:
    """(unit length n, repeats r) of the loop that covers most words from ``keys[i]`` on ((0, 0): none)."""
    best, covered = (0, 0), 0
    for n in range(1, min(LOOP_MAX_UNIT, (len(keys) - i) // LOOP_MIN_REPEATS) + 1):
        if keys[i + n] != keys[i]:
            continue
        unit, r = keys[i:i + n], 1
        while keys[i + r * n:i + (r + 1) * n] == unit:
            r += 1
        if r >= LOOP_MIN_REPEATS and r * n >= LOOP_MIN_WORDS and r * n > covered:
            best, covered = (n, r), r * n
    return best


def collapse_repetition_loops(text: str) -> tuple[str, int]:
    """``text`` with each ASR repetition loop cut to its first LOOP_KEEP repeats, and how many repeats were cut.
    A loop left unfinished at the end of the text (the ASR's window ended mid-repeat) goes with it. No MELD
    utterance is changed: training and the robot see the same text."""
    words = _WORD_WITH_SPACE.findall(text)
    if len(words) < LOOP_MIN_WORDS:
        return text, 0
    keys = [_word_key(w) for w in words]
    kept, cut, i = [], 0, 0
    while i < len(words):
        n, r = _loop_at(keys, i)
        if not r:
            kept.append(words[i])
            i += 1
            continue
        kept += words[i:i + LOOP_KEEP * n]
        cut += r - LOOP_KEEP
        i += r * n
        rest = keys[i:]
        if len(rest) < n and rest == keys[i - n:i - n + len(rest)]:  # a last repeat cut short by the window
            i = len(words)
    return ("".join(kept).strip(), cut) if cut else (text, 0)


@dataclass(frozen=True)
class Turn:
    """One utterance of a dialogue with the speaker token it was given."""

    speaker_token: str
    text: str
    speaker: str = ""
    language: str = ""  # the ASR's language tag, e.g. "en-GB" ("" = not given): see ddvlm_core.language
    repeats_cut: int = 0  # repeats of an ASR repetition loop cut from the text (collapse_repetition_loops)

    @classmethod
    def of(cls, speaker_token: str, text: str | bytes, speaker: str | None = None, language: str = "") -> Turn:
        """A turn as an utterance enters a dialogue: text cleaned (``normalize_utterance``), repetition loops
        cut (``collapse_repetition_loops``)."""
        text, cut = collapse_repetition_loops(normalize_utterance(text))
        return cls(speaker_token, text, (speaker or "").strip(), (language or "").strip(), cut)


class SpeakerRegistry:
    """Speaker name -> <si>, in order of first appearance, never renumbered while at most ``n_tokens``
    speakers have spoken; past that, a new speaker takes the token of the one heard least recently."""

    def __init__(self, n_tokens: int = N_SPEAKER_TOKENS) -> None:
        if n_tokens < 1:
            raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
        self.n_tokens = n_tokens
        self._tokens: dict[str, str] = {}  # ordered from the speaker heard least recently to the latest
        self.reused = 0  # tokens taken over from another speaker (more than n_tokens speakers)

    def token(self, speaker: str | None) -> str:
        key = (speaker or "").strip()
        if not key:
            return UNKNOWN_SPEAKER_TOKEN
        if key in self._tokens:
            token = self._tokens.pop(key)
        elif len(self._tokens) < self.n_tokens:
            token = speaker_token(len(self._tokens) + 1)
        else:
            token = self._tokens.pop(next(iter(self._tokens)))
            self.reused += 1
        self._tokens[key] = token  # now the latest heard
        return token

    def __len__(self) -> int:
        return len(self._tokens)


def make_turns(utterances: Iterable) -> list[Turn]:
    """Utterances of one dialogue, in order -> Turns with stable speaker tokens. Each is a (speaker, text)
    pair, a mapping with "text" (and "speaker", "language": the ASR's language tag), or a bare text (no
    speaker); see ``speaker_and_text``."""
    registry = SpeakerRegistry()
    turns = []
    for index, item in enumerate(utterances):
        speaker, text = speaker_and_text(item, index)
        language = (item.get("language") or "") if isinstance(item, abc.Mapping) else ""
        if not isinstance(language, str):
            raise TypeError(f"utterance {index}: language must be a str (a tag such as 'en-GB'), got "
                            f"{type(language).__name__}")
        turns.append(Turn.of(registry.token(speaker), text, speaker, language))
    return turns


def speaker_and_text(item, index: int = 0) -> tuple[str | None, str | bytes]:
    """One utterance as (speaker, text); TypeError naming the utterance for anything else. A speaker is a
    str, an int (turned into its str) or None; a mapping must have "text" (a dict unpacked as a pair would
    silently give its keys)."""
    if isinstance(item, (str, bytes)):
        speaker, text = None, item
    elif isinstance(item, abc.Mapping):
        if "text" not in item:
            raise TypeError(f"utterance {index}: a mapping needs a 'text' key, got keys {sorted(item)}")
        speaker, text = item.get("speaker"), item["text"]
    elif isinstance(item, abc.Sequence) and len(item) == 2:
        speaker, text = item
    else:
        raise TypeError(f"utterance {index}: expected (speaker, text), {{'speaker': ..., 'text': ...}} or a "
                        f"text, got {item!r:.80}")
    if isinstance(speaker, int) and not isinstance(speaker, bool):
        speaker = str(speaker)
    if speaker is not None and not isinstance(speaker, str):
        raise TypeError(f"utterance {index}: speaker must be a str, an int or None, got {type(speaker).__name__}")
    return speaker, text


class Dialogue:
    """Rolling context of one conversation, as a robot hears it.

    Keeps the last ``max_turns`` turns (None: all). Speaker tokens come from a registry that outlives
    the window, so a speaker keeps their token after their early turns are forgotten.
    """

    def __init__(self, max_turns: int | None = None) -> None:
        if max_turns is not None and max_turns < 1:
            raise ValueError("max_turns must be >= 1 or None")
        self.speakers = SpeakerRegistry()
        self._turns: deque[Turn] = deque(maxlen=max_turns)
        self._ends: deque[float | None] = deque(maxlen=max_turns)  # each turn's end stamp (None: not stamped)

    def add(self, speaker: str | None, text: str | bytes, language: str = "") -> Turn:
        return self.append(self.new_turn(speaker, text, language))

    def new_turn(self, speaker: str | None, text: str | bytes, language: str = "") -> Turn:
        """The turn of ``speaker`` saying ``text`` in this dialogue (its speaker token given), not added yet."""
        return Turn.of(self.speakers.token(speaker), text, speaker, language)

    def append(self, turn: Turn, replacing: Turn | None = None, end: float | None = None) -> Turn:
        """Add ``turn`` as the latest; in the place of ``replacing`` when that is the latest turn (an earlier
        version of it, e.g. an ASR's partial result: ``ddvlm_core.partial_results``), so that no earlier turn leaves
        a full window for it. With its utterance's ``end`` stamp: before the latest turns that ended after it
        (``ddvlm_core.arrival_order``: a transcript that arrived late)."""
        if replacing is not None and self._turns and self._turns[-1] is replacing:
            self._turns[-1], self._ends[-1] = turn, end
            return turn
        later = turns_ended_after(self._ends, end) if end is not None else 0
        if not later:
            self._turns.append(turn)
            self._ends.append(end)
            return turn
        if len(self._turns) == self._turns.maxlen:  # a full window: its earliest turn leaves, as for one appended
            self._turns.popleft()
            self._ends.popleft()
        place = max(0, len(self._turns) - later)
        self._turns.insert(place, turn)
        self._ends.insert(place, end)
        return turn

    def until(self, turn: Turn) -> tuple[Turn, ...]:
        """The turns up to ``turn`` (included): the context its answer is read from; all of them when ``turn`` is
        the latest, or not in the dialogue."""
        turns, k = tuple(self._turns), self.index(turn)
        return turns if k is None else turns[:k + 1]

    def index(self, turn: Turn) -> int | None:
        """Where ``turn`` itself is (not an equal turn: the same words said again), None when it is not here."""
        for k in range(len(self._turns) - 1, -1, -1):
            if self._turns[k] is turn:
                return k
        return None

    def take_back(self, turn: Turn) -> None:
        """Remove ``turn``: an utterance that could not be answered, kept out of the context of the next ones. A
        turn it pushed out of a full window stays out."""
        k = self.index(turn)
        if k is not None:
            del self._turns[k]
            del self._ends[k]

    @property
    def turns(self) -> tuple[Turn, ...]:
        return tuple(self._turns)

    def __len__(self) -> int:
        return len(self._turns)


@dataclass(frozen=True)
class Prompt:
    """A tokenized prompt for the current (last) turn."""

    input_ids: tuple[int, ...]
    text: str
    mask_index: int
    speaker_token: str
    n_turns_used: int
    n_turns_dropped: int
    truncated_current: bool


def add_speaker_tokens(tokenizer, n_speakers: int = N_SPEAKER_TOKENS) -> list[int]:
    """Add <s0>..<sN> to the tokenizer as special tokens (idempotent); returns their ids in order.

    Like RoBERTa's <mask>, they absorb the space before them (lstrip), so a byte-level BPE does not
    emit a lone space token before each speaker token and the prompt text tokenizes to the same ids
    the builder assembles.
    """
    from tokenizers import AddedToken

    names = speaker_token_names(n_speakers)
    missing = [t for t in names if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, lstrip=True, normalized=False) for t in missing],
                             special_tokens=True)
    return tokenizer.convert_tokens_to_ids(names)


def special_token_template(tokenizer) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The special ids a tokenizer puts before and after a single sequence (e.g. <s> ... </s>)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return tuple(full[:start]), tuple(full[start + len(plain):])
    raise ValueError(f"cannot find the special-token template of {type(tokenizer).__name__}")


class PromptBuilder:
    """Builds prompts with one tokenizer; identical for training, evaluation and the robot.

    ``speaker_tokens=False`` is the "text without speaker tokens" ablation: lines carry no speaker
    prefix and the query is ``Now the speaker feels <mask>``.
    """

    def __init__(self, tokenizer, max_tokens: int = DEFAULT_MAX_TOKENS, speaker_tokens: bool = True):
        if tokenizer.mask_token is None:
            raise ValueError(f"{type(tokenizer).__name__} has no mask token; a masked-LM tokenizer is needed")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.speaker_tokens = speaker_tokens
        self.special_prefix, self.special_suffix = special_token_template(tokenizer)
        self.n_special = len(self.special_prefix) + len(self.special_suffix)
        self._ids = lru_cache(maxsize=8192)(self._tokenize)
        self._added_spellings = {t.content.lower() for t in tokenizer.added_tokens_decoder.values()}

    def _tokenize(self, text: str, after_text: bool, literal: bool = False) -> tuple[int, ...]:
        """Ids of one prompt part; ``after_text``: it follows earlier text and a space, as in the prompt
        string (a byte-level BPE codes a word after a space differently from one at the start).
        ``literal``: the part is what someone said, so a special token's spelling in it (``<mask>``,
        ``</s>``, ``<s2>``, as typed text or an ASR's ``<unk>`` may hold) is coded as the characters it is
        made of, never as that special token."""
        # verbose=False: a long utterance is cut to the budget below, not by the tokenizer (no length warning)
        text = " " + text if after_text else text
        return tuple(self.tokenizer(text, add_special_tokens=False, verbose=False,
                                    split_special_tokens=literal)["input_ids"])

    def _line_ids(self, turn: Turn, after_text: bool) -> tuple[int, ...]:
        """Ids of ``line(turn)``. An utterance that spells one of the tokenizer's added tokens (none of
        MELD's does) is coded apart from its speaker token, literally, so that a ``<mask>``, ``</s>`` or
        ``<s2>`` someone typed, or an ASR's ``<unk>``, cannot end the sequence, add a mask or a speaker."""
        if not any(t in turn.text.lower() for t in self._added_spellings):
            return self._ids(self.line(turn), after_text)
        if not self.speaker_tokens:
            return self._ids(turn.text, after_text, True)
        return self._ids(turn.speaker_token, after_text) + self._ids(f": {turn.text}", False, True)

    def line(self, turn: Turn) -> str:
        return f"{turn.speaker_token}: {turn.text}" if self.speaker_tokens else turn.text

    def query(self, speaker_tok: str) -> str:
        who = speaker_tok if self.speaker_tokens else "the speaker"
        return f"Now {who} feels {self.tokenizer.mask_token}"

    def build(self, turns: Sequence[Turn]) -> Prompt:
        """Prompt for the last turn of ``turns``, using only it and the turns before it."""
        if not turns:
            raise ValueError("empty dialogue: nothing to predict")
        current = turns[-1]
        query = self.query(current.speaker_token)
        query_ids = self._ids(query, True)
        budget = self.max_tokens - self.n_special - len(query_ids)
        if budget < 1:
            raise ValueError(f"max_tokens={self.max_tokens} leaves no room for an utterance")

        lines = [self.line(t) for t in turns]
        # the longest run of latest lines that fits: lines[first:], the first coded as text-initial
        first, used = len(turns), 0
        while first > 0:
            cost = used + len(self._line_ids(turns[first - 1], False))
            if cost > budget:
                break
            first -= 1
            used += len(self._line_ids(turns[first], True))
        truncated = first == len(turns)
        if truncated:
            first = len(turns) - 1
            tail_ids, lines[first] = self._keep_tail(current, self._line_ids(current, False), budget)
        body: list[int] = []
        for k in range(first, len(turns)):
            body += tail_ids if truncated else self._line_ids(turns[k], k > first)
        input_ids = list(self.special_prefix) + body + list(query_ids) + list(self.special_suffix)
        mask_index = len(input_ids) - 1 - input_ids[::-1].index(self.tokenizer.mask_token_id)
        assert len(input_ids) <= self.max_tokens
        return Prompt(
            input_ids=tuple(input_ids),
            text=" ".join(lines[first:] + [query]),
            mask_index=mask_index,
            speaker_token=current.speaker_token,
            n_turns_used=len(turns) - first,
            n_turns_dropped=first,
            truncated_current=truncated,
        )

    def build_all(self, turns: Sequence[Turn]) -> list[Prompt]:
        """One prompt per turn of a dialogue, each seeing only itself and earlier turns (causal)."""
        return [self.build(turns[: k + 1]) for k in range(len(turns))]

    def _keep_tail(self, turn: Turn, line_ids: tuple[int, ...], budget: int) -> tuple[tuple[int, ...], str]:
        """Speaker prefix + the last tokens of an utterance too long for the budget alone."""
        prefix = self._ids(f"{turn.speaker_token}:", False) if self.speaker_tokens else ()
        if line_ids[: len(prefix)] != prefix:
            prefix = ()
        tail = line_ids[len(line_ids) - (budget - len(prefix)):]
        ids = prefix + tail
        return ids, self.tokenizer.decode(list(ids))
