"""The robot's TTS input as people hear it (ddvlm_core.tts_markup): known answers."""
import pytest

from ddvlm_core.tts_markup import has_tts_markup, strip_tts_markup


@pytest.mark.parametrize("said, heard", [
    ('<speak>Hi <break time="500ms"/> there!</speak>', "Hi there!"),
    ('<speak><prosody rate="slow">I am <emphasis level="strong">so</emphasis> sorry.</prosody> Tom &amp; '
     'Jerry &lt;3</speak>', "I am so sorry. Tom & Jerry <3"),  # inside <speak> every tag goes, entities unescaped
    ('Hello <break time="1s"/> there, <say-as interpret-as="digits">123</say-as>.', "Hello there, 123."),
    ('Use <sub alias="World Wide Web">WWW</sub> now <amazon:effect name="whispered">quietly</amazon:effect>.',
     "Use WWW now quietly."),
    ("\\rspd=80\\ Hello \\pau=500\\ my friend!", "Hello my friend!"),  # NAOqi ALTextToSpeech tags
    ("\\style=joyful\\Great news \\emph=2\\ today \\rst\\", "Great news today"),
    ("^start(animations/Stand/Gestures/Hey_1) Hello, human! ^wait(animations/Stand/Gestures/Hey_1)",
     "Hello, human!"),  # NAOqi ALAnimatedSpeech
])
def test_tts_markup_is_removed_and_the_spoken_text_kept(said, heard):
    assert has_tts_markup(said) and strip_tts_markup(said) == heard


@pytest.mark.parametrize("text", ["I <3 you", "a < b and c > d", "x <s2> y <mask>", "Tom & Jerry &amp;", "^_^ (hi)",
                                  "Hi there!"])
def test_text_without_markup_comes_back_unchanged(text):
    assert not has_tts_markup(text) and strip_tts_markup(text) == text


def test_markup_alone_leaves_nothing():
    assert strip_tts_markup("\\pau=1000\\") == "" and strip_tts_markup("<speak><break time='2s'/></speak>") == ""
