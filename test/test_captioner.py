import numpy as np
import pytest
from transformers import AutoTokenizer

from ddvlm_core.captioner import (ANNOTATOR_PROMPT, EMOTION_WORDS, Caption, Captioner, CueCaptioner, Frame,
                                  QwenVLCaptioner, check_image, filter_emotion_words, select_window_frames)
from ddvlm_core.labels import LABELS


def test_filter_removes_emotion_words_and_tidies_punctuation():
    result = filter_emotion_words("She looks happy, and is smiling.")
    assert (result.text, result.removed) == ("She looks, and is smiling.", ("happy",))
    assert filter_emotion_words("The eyes are wide, surprised, and the jaw drops.").text == \
        "The eyes are wide, and the jaw drops."
    assert filter_emotion_words("Angrily, he points at the door.").text == "he points at the door."
    # whole words only: 'made', 'sadden...' stems inside other words are left alone
    assert filter_emotion_words("He made a gesture toward the madras shirt.").removed == ()


def test_mood_words_a_vlm_uses_for_faces_are_filtered():
    """Words a VLM reaches for when it reads a face ('appears tense', 'looks concerned') name a mood, not an
    action: the annotator prompt forbids them, and the filter removes them when the model uses them anyway."""
    caption = ("The man appears tense and uneasy, brows drawn together; the woman looks concerned, then "
               "horrified, hand over her mouth, and later distressed and agitated, sitting back, defeated.")
    result = filter_emotion_words(caption)
    assert result.removed == ("tense", "uneasy", "concerned", "horrified", "distressed", "agitated", "defeated")
    assert result.text == ("The man appears and, brows drawn together; the woman looks, then, hand over her "
                           "mouth, and later and, sitting back.")


def test_caption_with_only_emotion_words_or_garbage_becomes_empty():
    assert filter_emotion_words("Happy. SAD! angry, scared").text == ""
    assert filter_emotion_words("\x01\ufffd ;; .").text == ""
    assert filter_emotion_words("She looks very happy and excited.").text == ""


def test_every_label_name_is_filtered():
    for name in LABELS:
        assert name in EMOTION_WORDS or name == "sadness" and "sad" in EMOTION_WORDS
        assert filter_emotion_words(f"He shows {name}.").text == "He shows."


def test_annotator_prompt_is_the_papers():
    assert ANNOTATOR_PROMPT.startswith(
        "You are an annotator who concisely describes observable actions and facial states")
    for cue in ("eyes", "eyebrows", "lips", "jaw", "head", "gaze", "hand", "posture", "present progressive"):
        assert cue in ANNOTATOR_PROMPT
    assert "forbidden" in ANNOTATOR_PROMPT


def frames(n, start=0.0, step=0.1, size=112, seed=0):
    rng = np.random.default_rng(seed)
    return [Frame(start + k * step, rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for k in range(n)]


def test_window_selection_is_in_time_order_and_uniform():
    fs = frames(11)[::-1]  # arrive out of order
    picked = select_window_frames(fs, (0.2, 0.8), 3)
    assert [round(f.stamp, 2) for f in picked] == [0.2, 0.5, 0.8]
    assert len(select_window_frames(fs, (0.2, 0.35), 8)) == 2
    assert select_window_frames(fs, (5.0, 6.0), 4) == []


def test_bad_frames_are_refused_clearly():
    for bad in (np.zeros((0, 10, 3), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 4), np.uint8)):
        with pytest.raises(ValueError, match="frame"):
            check_image(bad)
    assert check_image(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)


def test_cue_fallback_reports_motion_and_is_labelled_fallback():
    cap = CueCaptioner(frames_per_window=6)
    assert isinstance(cap, Captioner)
    still = [Frame(k * 0.1, np.full((120, 160, 3), 90, np.uint8)) for k in range(6)]
    moving = []
    for k in range(6):
        im = np.zeros((120, 160, 3), np.uint8)
        im[20:100, 10 + 25 * k: 50 + 25 * k] = 255
        moving.append(Frame(k * 0.1, im))
    a, b = cap.caption(still, (0, 1)), cap.caption(moving, (0, 1))
    assert a.text == "No face is visible. Movement in the scene is small."
    assert "large" in b.text and "small" not in b.text
    assert a.source == "cue-fallback" and "fallback-captioner" in a.flags
    empty = cap.caption(still, (9, 10))
    assert empty.text == "" and empty.n_frames == 0 and "no-frames-in-window" in empty.flags


def test_qwen_captioner_runs_a_tiny_random_qwen25vl_end_to_end(tiny_qwen_dir):
    cap = QwenVLCaptioner(tiny_qwen_dir, frames_per_window=3, max_new_tokens=8, max_pixels=112 * 112)
    assert "video_processor" not in type(cap.processor).get_attributes()  # no torchvision here
    fs = frames(6)
    inputs = cap.inputs([f.image for f in fs[:3]])
    tok = AutoTokenizer.from_pretrained(tiny_qwen_dir)
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(tok.convert_tokens_to_ids("<|vision_start|>")) == 3  # one image block per frame
    assert ids.count(tok.convert_tokens_to_ids("<|image_pad|>")) == 3 * 16  # 112x112 -> 16 tokens each
    assert "You are an annotator" in tok.decode(ids)
    first, second = cap.caption(fs, (0.0, 0.5)), cap.caption(fs, (0.0, 0.5))
    assert isinstance(first, Caption) and first.source == "qwen2.5-vl" and first.n_frames == 3
    assert first == second  # greedy decoding is deterministic
    assert first.text == filter_emotion_words(first.raw_text).text
    assert 1 <= len(cap.new_tokens([f.image for f in fs[:3]])) <= 8
    assert cap.caption(fs, (7.0, 8.0)).flags == ("no-frames-in-window",)


def test_qwen_captioner_batches_windows_of_different_lengths_as_it_captions_them_one_by_one(tiny_qwen_dir):
    """Batch captioning (training.captions): windows of 3 and 1 frames are one left-padded batch, and greedy
    decoding gives each the caption it gets alone; a window without frames is answered without the model."""
    cap = QwenVLCaptioner(tiny_qwen_dir, frames_per_window=3, max_new_tokens=8, max_pixels=112 * 112)
    fs = frames(6)
    windows = [(0.0, 0.5), (7.0, 8.0), (fs[4].stamp, fs[4].stamp)]
    batch = cap.caption_batch([fs] * 3, windows)
    assert [c.n_frames for c in batch] == [3, 0, 1]
    assert batch == [cap.caption(fs, w) for w in windows]
    side = cap.processor.tokenizer.padding_side
    ids = cap.batch_inputs([[f.image for f in fs[:3]], [fs[4].image]])["input_ids"]
    pad = cap.processor.tokenizer.pad_token_id
    assert ids[1, 0] == pad and ids[0, 0] != pad and ids[1, -1] == ids[0, -1]  # padded on the left
    assert cap.processor.tokenizer.padding_side == side  # the caller's side is restored


def test_a_folder_that_is_not_a_qwen_model_or_an_unknown_dtype_is_refused_by_name(tmp_path, tiny_qwen_dir):
    with pytest.raises(FileNotFoundError, match="not a local directory"):
        QwenVLCaptioner(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="has no config.json"):  # e.g. the folder above the weights
        QwenVLCaptioner(str(tmp_path))
    with pytest.raises(ValueError, match="torch dtype name"):
        QwenVLCaptioner(tiny_qwen_dir, dtype="float17")
    other = tmp_path / "roberta"  # another model's folder, e.g. the text backbone's, given by mistake
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "roberta"}')
    with pytest.raises(ValueError, match="holds a roberta, not Qwen2.5-VL"):
        QwenVLCaptioner(str(other))
    (other / "config.json").write_text("not json")
    with pytest.raises(ValueError, match="holds a model of unknown type"):
        QwenVLCaptioner(str(other))
