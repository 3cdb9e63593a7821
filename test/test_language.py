"""Transcripts in another language than English: read from the ASR's tag and from the text's script, flagged on
each answer (ddvlm_core.language)."""
import pytest

from ddvlm_core.context import make_turns
from ddvlm_core.inference import EmotionRecognizer
from ddvlm_core.language import NOT_ENGLISH_FLAG, letter_script, main_other_script, not_english, tag_is_english
from ddvlm_core.meld import SPLITS, read_split


@pytest.mark.parametrize("tag, english", [("en", True), ("en-GB", True), ("EN_us", True), ("eng", True),
                                          ("English", True), (" en-Latn-US ", True), ("de-DE", False), ("ja", False),
                                          ("zh-Hant-TW", False), ("fra", False), ("", None), ("und", None),
                                          ("auto", None), ("  ", None)])
def test_language_tags_name_english_another_language_or_none(tag, english):
    assert tag_is_english(tag) is english


def test_the_script_of_letters_and_of_a_text():
    scripts = ["Latin", "Latin", "Han", "Japanese kana", "Japanese kana", "Hangul", "Cyrillic", "Arabic", "", "Greek",
               "Latin", "", ""]
    assert [letter_script(c) for c in "aÉ好カｶ한Жش Ωｏ1!"] == scripts
    assert main_other_script("你好，我很好。") == "Han"
    assert main_other_script("Привет, как дела?") == "Cyrillic"
    assert main_other_script("안녕하세요!") == "Hangul"
    assert main_other_script("OK 好的") == ""  # half of the letters: not most of them
    assert main_other_script("OK 好的吗") == "Han"
    assert main_other_script("Ça va très bien, merci.") == ""  # Latin script (French is not detected without a tag)
    assert main_other_script("1, 2, 3... ♪ :)") == ""  # no letter at all


def test_not_english_says_why_from_the_tag_or_the_script():
    assert not_english("Wie geht's?", "de-DE") == "language tag 'de-DE'"
    assert not_english("Wie geht's?") == ""  # Latin script, no tag: not detected
    assert not_english("Привет, как дела?") == "Cyrillic script"
    assert not_english("Привет, как дела?", "en-US") == "Cyrillic script"  # the text is what the model reads
    assert not_english("How are you?", "en-US") == "" and not_english("How are you?", "und") == ""


def test_no_meld_utterance_is_taken_for_another_language():
    texts = [u.text for split in SPLITS for u in read_split(split)]
    assert len(texts) == 13708
    assert [t for t in texts if not_english(t)] == []


def test_answers_to_other_languages_carry_the_flag(tiny_text_checkpoint):
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    dialogues = [[("a", "I got the job!")],
                 [("a", "I got the job!"), ("b", "本当に？すごい！")],
                 make_turns([("a", "I got the job!"), {"speaker": "b", "text": "Echt? Super!", "language": "de"}]),
                 make_turns([{"speaker": "b", "text": "Really? Great!", "language": "en-GB"}])]
    flagged = [NOT_ENGLISH_FLAG in p.flags for p in rec.predict_batch(dialogues)]
    assert flagged == [False, True, True, False]
    with pytest.raises(TypeError, match="utterance 0: language must be a str"):
        make_turns([{"text": "hi", "language": 7}])
