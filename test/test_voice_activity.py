"""ddvlm_core.voice_activity: the words' window of a final transcript from a VAD's on/off messages (known answers)."""
import pytest

from ddvlm_core.voice_activity import VoiceActivity


def vad(*changes: tuple[float, bool]) -> VoiceActivity:
    activity = VoiceActivity()
    for t, speaking in changes:
        activity.hear(speaking, t)
    return activity


def test_a_transcript_is_placed_on_the_speech_the_vad_heard_before_it():
    """Speech over [10.0, 12.0] and its transcript at 13.1 (after the ASR's endpoint and decoding): [10.0, 12.0],
    not a window ending when the transcript came."""
    assert vad((10.0, True), (12.0, False)).heard(13.1, endpoint_s=0.5) == (10.0, 12.0)


def test_pauses_shorter_than_the_asr_endpoint_join_one_utterance_and_longer_ones_split():
    """Intervals [10, 11], [11.3, 12] and [13, 14]: the 0.3 s pause is inside one utterance, the 1 s one is where
    the ASR ended the one before: a transcript at 14.8 was said over [13, 14]; with a 1.5 s endpoint over [10, 14]."""
    changes = ((10.0, True), (11.0, False), (11.3, True), (12.0, False), (13.0, True), (14.0, False))
    assert vad(*changes).heard(14.8, endpoint_s=0.5) == (13.0, 14.0)
    assert vad(*changes).heard(14.8, endpoint_s=1.5) == (10.0, 14.0)
    assert vad(*changes[:4]).heard(12.6, endpoint_s=0.5) == (10.0, 12.0)


def test_each_transcript_uses_its_own_speech_and_the_next_begins_after_it():
    """Two utterances, 0.2 s apart (under the endpoint: the VAD cannot tell them apart), each followed by its
    transcript: the second starts where the first one's window ended."""
    activity = vad((10.0, True), (11.0, False))
    assert activity.heard(11.7, 0.5) == (10.0, 11.0)
    activity.hear(True, 11.2)
    activity.hear(False, 12.5)
    assert activity.heard(13.0, 0.5) == (11.2, 12.5)
    assert activity.heard(13.5, 0.5) is None  # nothing heard since: the words' estimate, not the last window again
    assert [on for on, _ in activity.intervals] == []  # the used intervals are gone


def test_speech_still_going_on_when_a_transcript_comes_is_the_next_utterance():
    """The person spoke over [10, 11], paused, and speaks again from 11.8 when the transcript of the first words
    comes at 12.0: it was said over [10, 11]; the next one, heard at 14.0 after the VAD went off at 13.5, over
    [11.8, 13.5]; its partial results meanwhile began at 11.8."""
    activity = vad((10.0, True), (11.0, False), (11.8, True))
    assert activity.heard(12.0, 0.5) == (10.0, 11.0)
    assert activity.began(12.5, 0.5) == 11.8
    activity.hear(False, 13.5)
    assert activity.heard(14.0, 0.5) == (11.8, 13.5)


def test_a_transcript_that_comes_while_the_vad_still_hears_its_speech_ends_when_it_came():
    """The VAD's off comes after the transcript (its hang-over, or the two topics' delivery): the window ends when
    the transcript came. When the off comes, the speech before it is used: the next utterance starts on its own."""
    activity = vad((10.0, True))
    assert activity.heard(12.0, 0.5) == (10.0, 12.0)
    activity.hear(False, 12.2)
    activity.hear(True, 13.0)
    activity.hear(False, 14.0)
    assert activity.heard(14.6, 0.5) == (13.0, 14.0)


def test_without_speech_heard_for_it_there_is_no_window():
    """No message yet; or the VAD's on comes after the transcript: None (the words' estimate is used instead)."""
    assert VoiceActivity().heard(5.0, 0.5) is None
    assert vad((5.2, True)).heard(5.0, 0.5) is None
    assert VoiceActivity().began(5.0, 0.5) is None


def test_repeated_states_change_nothing_and_the_history_is_bounded():
    activity = vad((1.0, True), (1.5, True), (2.0, False), (2.5, False))
    assert [list(i) for i in activity.intervals] == [[1.0, 2.0]] and activity.changes == 2
    assert not activity.speaking
    flicker = VoiceActivity(keep=8)
    for k in range(100):  # a VAD that flickers in noise: 0.1 s on, 0.1 s off
        flicker.hear(True, 0.2 * k)
        flicker.hear(False, 0.2 * k + 0.1)
    assert len(flicker.intervals) == 8
    assert flicker.heard(20.0, 0.5) == (pytest.approx(18.4), pytest.approx(19.9))  # the 8 kept, joined


def test_an_off_stamped_before_its_on_cannot_make_an_interval_end_before_it_begins():
    activity = vad((10.0, True), (9.5, False))  # the clock jumped back between the two messages
    assert [list(i) for i in activity.intervals] == [[10.0, 10.0]]
    assert activity.heard(11.0, 0.5) is None  # no speech time: no window


def test_the_estimate_from_the_words_picks_which_of_the_fresh_utterances_a_transcript_is():
    """The VAD heard [10, 11] and [12, 14] before a transcript came at 14.2. An ASR that fell behind sends the
    first one's transcript now: its estimated window [9.8, 11.2] overlaps [10, 11], which it gets; the next
    transcript gets [12, 14]. Without an estimate, or one that overlaps neither, the latest ([12, 14])."""
    changes = ((10.0, True), (11.0, False), (12.0, True), (14.0, False))
    behind = vad(*changes)
    assert behind.heard(14.2, 0.5, estimate=(9.8, 11.2)) == (10.0, 11.0)
    assert behind.heard(14.6, 0.5, estimate=(12.5, 14.1)) == (12.0, 14.0)
    assert vad(*changes).heard(14.2, 0.5) == (12.0, 14.0)
    assert vad(*changes).heard(14.2, 0.5, estimate=(5.0, 6.0)) == (12.0, 14.0)


def test_a_window_is_at_most_longest_s_long_and_keeps_its_end():
    """A VAD held on by noise from 0 s: a transcript at 20.5 whose words take 1.5 s is placed on [15.5, 20.0] with
    longest_s 4.5 (LONGEST_FACTOR x 1.5 s), not on 20 s of noise."""
    from ddvlm_core.voice_activity import LONGEST_FACTOR

    assert vad((0.0, True), (20.0, False)).heard(20.5, 0.5, longest_s=LONGEST_FACTOR * 1.5) == (15.5, 20.0)


def test_a_vad_held_on_by_noise_places_nothing_until_it_goes_off():
    """The VAD has been on since 0 s (a fan it takes for speech): a transcript at 20.5 whose words take 1.5 s gets
    no window from it (its estimate stays), nor do partial results; once the VAD goes off at 21, a transcript at
    21.6 gets the last 4.5 s (longest_s) of that stretch, which ended with speech."""
    activity = vad((0.0, True))
    assert activity.heard(20.5, 0.5, longest_s=4.5) is None
    assert activity.began(20.5, 0.5, longest_s=4.5) is None and activity.began(3.0, 0.5, longest_s=4.5) == 0.0
    activity.hear(False, 21.0)
    assert activity.heard(21.6, 0.5, longest_s=4.5) == (16.5, 21.0)


def test_what_the_vad_hears_while_the_robot_speaks_is_no_persons_speech():
    """The robot speaks over [9.5, 12.0]; the VAD hears it from 10.0 until 12.1 (its hang-over), then a person over
    [12.4, 14.0]: the person's transcript at 14.6 was said over [12.4, 14.0]. Without the robot's speech told, the
    0.3 s between the two is under the endpoint and the robot's voice joins the person's window: [10.0, 14.0]."""
    changes = ((10.0, True), (12.1, False), (12.4, True), (14.0, False))
    assert vad(*changes).heard(14.6, 0.5) == (10.0, 14.0)
    activity = VoiceActivity()
    activity.robot(True, 9.5)
    for t, speaking in changes[:1]:
        activity.hear(speaking, t)
    assert not activity.speaking and activity.vad_on
    activity.robot(False, 12.0)  # the VAD still hears speech: its hang-over, from 12.0 a person's to it
    for t, speaking in changes[1:]:
        activity.hear(speaking, t)
    assert [list(i) for i in activity.intervals] == [[12.0, 12.1], [12.4, 14.0]]
    assert activity.heard(14.6, 0.5) == (12.0, 14.0)  # hang-over and speech closer than the endpoint: one


def test_a_person_who_speaks_over_the_robot_is_heard_from_when_the_robot_stops():
    """Barge-in: the VAD is on from 10.0 (the robot) and the person starts at 11.0, over the robot until it stops at
    12.0 (the VAD cannot tell voices apart): the person's speech counts from 12.0 to the VAD's off at 13.0. A VAD
    made while the robot speaks starts muted."""
    activity = vad((10.0, True))
    activity.robot(True, 9.0)  # told late: the interval the robot's voice opened is closed when it is told
    activity.robot(False, 12.0)
    activity.hear(False, 13.0)
    assert [list(i) for i in activity.intervals] == [[10.0, 10.0], [12.0, 13.0]]
    assert activity.heard(13.5, 0.5) == (12.0, 13.0)
    muted = VoiceActivity(robot_speaking=True)
    muted.hear(True, 1.0)
    assert not muted.speaking and not muted.intervals
