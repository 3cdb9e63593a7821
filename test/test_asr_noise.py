import random

import pytest

from ddvlm_core.asr_noise import corrupt, unpunctuate, whisper_loop, word_error_rate
from ddvlm_core.context import unpunctuated
from ddvlm_core.meld import read_split


def test_word_error_rate_known_answers():
    assert word_error_rate("a b c d", "a b c d") == 0
    assert word_error_rate("a b c d", "a x c d") == 0.25  # one substitution
    assert word_error_rate("a b c d", "a c d") == 0.25  # one deletion
    assert word_error_rate("a b c d", "a b b c d e") == 0.5  # two insertions


@pytest.mark.parametrize("target", [0.1, 0.2, 0.3])
def test_corruption_hits_the_target_wer_on_meld_and_is_seeded(target):
    texts = [u.text for u in read_split("dev")]
    rng = random.Random(0)
    noisy = [corrupt(t, target, rng) for t in texts]
    edits = sum(word_error_rate(r, h) * len(r.split()) for r, h in zip(texts, noisy))
    measured = edits / sum(len(t.split()) for t in texts)
    assert measured == pytest.approx(target, abs=0.02)
    again = random.Random(0)
    assert [corrupt(t, target, again) for t in texts] == noisy
    assert all(n.strip() for n in noisy)


def test_zero_wer_is_identity_and_bad_wer_is_refused():
    assert corrupt("I got the job", 0.0, random.Random(1)) == "I got the job"
    with pytest.raises(ValueError, match="WER"):
        corrupt("x", 1.5, random.Random(1))


def test_unpunctuate_writes_text_as_an_asr_without_punctuation_would():
    assert unpunctuate("Don’t “Aww Pheebs, that sucks!” me yet.") == "don't aww pheebs that sucks me yet"
    assert unpunctuate("You have to—you-you go to the doctor!") == "you have to you you go to the doctor"
    assert unpunctuate("‘Kay, Ross' car… it's 5 o'clock?") == "kay ross car it's 5 o'clock"
    assert unpunctuate("Nestlé Toll House?") == "nestlé toll house"
    assert unpunctuate("...") == "..."  # no word: kept, so that a benchmark still has the utterance
    assert not any(unpunctuated(t) for t in ["Okay.", "I am", "Oh, my god"])  # too short, or punctuated
    assert unpunctuated("i told you so") and unpunctuated(unpunctuate("I told you so!"))


def test_fewer_than_one_percent_of_meld_utterances_of_three_words_or_more_lack_punctuation():
    """What the node's diagnostic and the flag transcript-unpunctuated rest on: MELD's subtitles, the training text,
    are punctuated; the same utterances written as an ASR without punctuation would write them are all flagged."""
    for split in ("train", "dev", "test"):
        texts = [u.text for u in read_split(split) if len(u.text.split()) >= 3]
        assert sum(map(unpunctuated, texts)) < 0.01 * len(texts)
        assert all(unpunctuated(unpunctuate(t)) for t in texts if len(unpunctuate(t).split()) >= 3)


def test_a_whisper_loop_repeats_the_last_sentence_until_the_window_is_full_and_the_node_cuts_every_one():
    from ddvlm_core.context import collapse_repetition_loops

    assert whisper_loop("Oh no. I'm sorry!", 12) == "Oh no. I'm sorry! I'm sorry! I'm sorry! I'm sorry! I'm sorry! I'm"
    kidding = "What?! Are you kidding me?! Are you kidding me?! Are you kidding me?! Are you"
    assert whisper_loop("What?! Are you kidding me?!", 12) == kidding
    assert whisper_loop("Hi", 3) == "Hi Hi Hi"
    texts = [u.text for u in read_split("test")]
    cut = [collapse_repetition_loops(whisper_loop(t)) for t in texts]  # a window of 150+ words
    assert all(n > 0 for _, n in cut)  # each of MELD test's 2,610 utterances, looped, is caught
    assert max(len(t.split()) for t, _ in cut) <= 3 * max(len(t.split()) for t in texts)  # 3 repeats at most
    long = "I told you I was going to the store to buy some milk and some bread and then I was coming right back."
    assert len(long.split()) == 23 and len(whisper_loop(long, 40).split()) == 57
    assert collapse_repetition_loops(whisper_loop(long, 40)) == (whisper_loop(long, 40), 0)  # 2 repeats: no loop
