import cv2
import numpy as np
import pytest

from ddvlm_ros.convert import compressed_to_rgb, parse_transcript, raw_image_to_rgb, sec_to_stamp, stamp_to_sec


def rgb_image(h=4, w=5):
    return np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)


@pytest.mark.parametrize("encoding, make", [
    ("rgb8", lambda im: im),
    ("bgr8", lambda im: im[..., ::-1]),
    ("rgba8", lambda im: np.concatenate([im, np.full(im.shape[:2] + (1,), 7, np.uint8)], -1)),
    ("bgra8", lambda im: np.concatenate([im[..., ::-1], np.full(im.shape[:2] + (1,), 7, np.uint8)], -1)),
])
def test_raw_colour_encodings_round_trip_to_rgb(encoding, make):
    im = rgb_image()
    raw = np.ascontiguousarray(make(im))
    out = raw_image_to_rgb(4, 5, encoding, raw.shape[1] * raw.shape[2], raw.tobytes())
    assert np.array_equal(out, im)


def test_mono_and_padded_rows():
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    padded = np.zeros((4, 8), np.uint8)
    padded[:, :5] = gray
    out = raw_image_to_rgb(4, 5, "mono8", 8, padded.tobytes())
    assert out.shape == (4, 5, 3) and np.array_equal(out[..., 1], gray)
    mono16 = (gray.astype(np.uint16) << 8).astype("<u2")
    assert np.array_equal(raw_image_to_rgb(4, 5, "mono16", 10, mono16.tobytes())[..., 0], gray)


@pytest.mark.parametrize("args, message", [
    ((4, 5, "yuv422", 10, b"\x00" * 40), "unsupported image encoding"),
    ((0, 5, "rgb8", 15, b""), "zero-size"),
    ((4, 5, "rgb8", 15, b"\x00" * 10), "buffer too small"),
])
def test_bad_raw_images_are_clear_errors(args, message):
    with pytest.raises(ValueError, match=message):
        raw_image_to_rgb(*args)


def test_jpeg_and_png_decode_and_garbage_is_refused():
    im = np.zeros((16, 16, 3), np.uint8)
    im[:, :8] = (255, 0, 0)  # red left half, in RGB
    ok, png = cv2.imencode(".png", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    assert np.array_equal(compressed_to_rgb("png", png.tobytes()), im)
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    assert compressed_to_rgb("rgb8; jpeg compressed bgr8", jpg.tobytes())[4, 2, 0] > 200
    with pytest.raises(ValueError, match="could not decode"):
        compressed_to_rgb("jpeg", b"\xff\xd8 this is not a jpeg")
    with pytest.raises(ValueError, match="empty"):
        compressed_to_rgb("jpeg", b"")
    with pytest.raises(ValueError, match="unsupported compressed format"):
        compressed_to_rgb("h264", b"\x00\x01")


def test_transcript_convention_and_stamps():
    assert parse_transcript("Ross: I got it", "", True) == ("Ross", "I got it")
    assert parse_transcript("Ross: I got it", "mic1", False) == ("mic1", "Ross: I got it")
    assert parse_transcript("no colon here", "", True) == ("", "no colon here")
    from builtin_interfaces.msg import Time

    t = sec_to_stamp(12.25, Time)
    assert (t.sec, t.nanosec) == (12, 250_000_000) and stamp_to_sec(t) == 12.25


def test_only_name_like_prefixes_are_speakers_and_every_meld_speaker_is_one():
    from ddvlm_core.meld import dialogues

    for text, expected in [("Dr. Who: hello", ("Dr. Who", "hello")), ("SPEAKER_00: yes", ("SPEAKER_00", "yes")),
                           ("Guest #1: hi", ("Guest #1", "hi")), ("小明: 你好", ("小明", "你好")),
                           ("see http://x.org: now", ("", "see http://x.org: now")),
                           ("Note, this: matters", ("", "Note, this: matters")),
                           ("a" * 40 + ": too long a name", ("", "a" * 40 + ": too long a name"))]:
        assert parse_transcript(text, "", True) == expected, text
    names = {r.speaker for s in ("train", "dev", "test") for rows in dialogues(s).values() for r in rows}
    assert len(names) > 300 and all(parse_transcript(f"{n}: hi", "", True) == (n.strip(), "hi") for n in names)
