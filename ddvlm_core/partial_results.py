"""Transcripts that are an ASR's partial results: the same utterance again, longer, a moment later.

A streaming ASR publishes what it has heard so far while a person speaks, then the final result: Vosk's ROS nodes
publish both as ``std_msgs/String`` (ros-vosk: ``speech_recognition/partial_result`` and ``final_result``;
voskros: ``~partial`` and ``~result``), cloud ASRs send "interim results". Remapped onto the node's ``transcript``
(the partial topic taken for the final one, or a bridge that forwards both), every partial result is a turn of its
own: the node answers "I", "I can't", "I can't believe" ... from a fraction of the words, and the dialogue context
fills with copies of one utterance, pushing the earlier turns out of the 511-token prompt.

Such a transcript can be told: it follows the previous turn of the dialogue within ``PARTIAL_GAP_S``, from the same
speaker; that turn does not end a sentence (``ends_sentence``: a partial result stops mid-sentence, and Vosk's
have no punctuation at all); and the transcript begins with that turn's words (``extends``; case and punctuation
aside, that turn's last word may have been revised or cut while spoken, and an unchanged partial result published
again counts). The node then puts it in the place of the earlier one in the context (``Dialogue.append`` with
``replacing``: it holds its words), and flags the answer ``PARTIAL_FLAG`` (it replaces the answer to the earlier
one); once such transcripts recur, it says the transcripts are partial results.

People repeat and extend themselves too ("No!" then "No, I won't." a second later). With MELD's own times, none of
MELD's utterances is taken so in its text (the turn before ends a sentence); written as an ASR without punctuation
writes them, 0.28 % (train), 0.54 % (dev) and 0.65 % (test) are (``python bench/asr_partials.py``,
``reports/asr_partials.md``), and what they lose is the earlier turn's copy of their own words.
"""
from __future__ import annotations

import re

from ddvlm_core.context import Turn
from ddvlm_core.self_echo import echo_words

PARTIAL_FLAG = "transcript-extends-previous"
PARTIAL_GAP_S = 2.0  # the earlier result ended at most this long before (a streaming ASR: every 0.1-0.5 s of speech)

_SENTENCE_END = re.compile(r"[.!?…。！？][\"'”’)\]]*\s*$")  # . ! ? … 。！？, closing quotes


def ends_sentence(text: str) -> bool:
    """Whether ``text`` ends a sentence (. ! ? …, maybe closed by a quote or bracket): a final result of an ASR
    that punctuates; a partial result stops mid-sentence, and Vosk's have no punctuation at all."""
    return bool(_SENTENCE_END.search(text))


def extends(earlier: str, later: str) -> bool:
    """Whether ``later`` is ``earlier`` again or longer, as an ASR's next partial (or final) result writes it: its
    words begin with the earlier one's (``echo_words``: lower case, no punctuation), all of them; or all but the
    last when the earlier one has 2+ and that word was revised as more came ("i want to" -> "i want two coffees") or
    was cut while spoken ("i can" -> "i can't"; not "thank you" -> "thank god")."""
    before, after = echo_words(earlier), echo_words(later)
    n = len(before)
    if not before or len(after) < n:
        return False
    if after[:n] == before:
        return True
    return n >= 2 and after[:n - 1] == before[:-1] and (len(after) > n or after[n - 1].startswith(before[-1]))


def is_partial_of(previous: Turn, current: Turn, gap_s: float, max_gap_s: float = PARTIAL_GAP_S) -> bool:
    """Whether ``previous`` (the dialogue's turn just before ``current``, ended ``gap_s`` seconds before it) is an
    earlier partial result of ``current``: same speaker, 0 <= gap_s <= ``max_gap_s``, ``previous`` does not end a
    sentence, and ``current`` ``extends`` it."""
    return (previous.speaker_token == current.speaker_token and previous.speaker == current.speaker
            and 0.0 <= gap_s <= max_gap_s and not ends_sentence(previous.text) and extends(previous.text, current.text))
