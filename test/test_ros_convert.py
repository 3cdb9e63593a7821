import os
import textwrap

import cv2
import numpy as np
import pytest

from ddvlm_core.child import probe
from ddvlm_ros import convert
from ddvlm_ros.convert import (compressed_to_rgb, image_msg_to_rgb, parse_transcript, raw_image_to_rgb, sec_to_stamp,
                               stamp_to_sec)


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


COLOURS = [(200, 100, 50), (30, 180, 90), (128, 128, 128)]


def yuv_bt601_video_range(rgb):
    """Y, U, V of an RGB colour: ITU-R BT.601, video range (Y 16-235), the range cameras' YUV uses."""
    r, g, b = rgb
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    return [int(round(c)) for c in (y, u, v)]


def yuv_image(encoding, rgb, h=4, w=6, pad=0):
    """A solid-colour image in ``encoding``, rows padded by ``pad`` bytes; (step, bytes)."""
    y, u, v = yuv_bt601_video_range(rgb)
    if encoding in ("uyvy", "yuv422", "yuyv", "yuv422_yuy2"):
        pair = [u, y, v, y] if encoding in ("uyvy", "yuv422") else [y, u, y, v]
        rows = np.tile(np.array(pair, np.uint8), (h, w // 2))
    else:  # nv12 / nv21: the Y plane, then h/2 rows of interleaved chroma
        chroma = [u, v] if encoding == "nv12" else [v, u]
        rows = np.concatenate([np.full((h, w), y, np.uint8), np.tile(np.array(chroma, np.uint8), (h // 2, w // 2))])
    rows = np.concatenate([rows, np.zeros((rows.shape[0], pad), np.uint8)], 1)
    return rows.shape[1], rows.tobytes()


@pytest.mark.parametrize("encoding", ["uyvy", "yuv422", "yuyv", "yuv422_yuy2", "nv12", "nv21"])
def test_yuv_encodings_decode_to_the_colour_they_code(encoding):
    for rgb in COLOURS:
        step, data = yuv_image(encoding, rgb, pad=4)
        out = raw_image_to_rgb(4, 6, encoding, step, data)
        assert out.shape == (4, 6, 3) and out.dtype == np.uint8
        assert np.abs(out.astype(int) - np.array(rgb)).max() <= 3, (encoding, rgb, out[0, 0])


# The encodings cv_bridge's getCvType knows (vision_opencv cv_bridge/src/cv_bridge.cpp; Debian's cv_bridge 1.16.2
# refuses the same ones, and yuv422_yuy2 too): anything else raises "Unrecognized image encoding [...]".
CV_BRIDGE_ENCODINGS = {"bgr8", "mono8", "rgb8", "mono16", "bgr16", "rgb16", "bgra8", "rgba8", "bgra16", "rgba16",
                       *(f"bayer_{p}{bits}" for p in ("rggb", "bggr", "gbrg", "grbg") for bits in (8, 16)),
                       "yuv422", "yuv422_yuy2"}


class CvBridgeError(TypeError):
    pass


class TableBridge:
    """cv_bridge's imgmsg_to_cv2 as far as encodings go: those of its table decoded, the others refused."""

    def __init__(self):
        self.calls = 0

    def imgmsg_to_cv2(self, msg, desired_encoding):
        self.calls += 1
        if msg.encoding not in CV_BRIDGE_ENCODINGS:
            raise CvBridgeError(f"Unrecognized image encoding [{msg.encoding}]")
        return raw_image_to_rgb(msg.height, msg.width, msg.encoding, msg.step, bytes(msg.data))


def image_msg(encoding, step, data, h=4, w=6):
    from sensor_msgs.msg import Image

    return Image(height=h, width=w, encoding=encoding, step=step, data=data)


@pytest.mark.parametrize("encoding", ["uyvy", "yuyv", "nv12", "nv21", "yuv422"])
def test_images_cv_bridge_refuses_are_decoded_without_it(encoding, monkeypatch):
    """A robot with cv_bridge: it does not know uyvy, yuyv, nv12, nv21 (sensor_msgs names USB and Jetson cameras
    use); those frames are decoded by our converter instead of all being counted bad."""
    bridge = TableBridge()
    monkeypatch.setattr(convert, "_BRIDGE", bridge)
    for rgb in COLOURS:
        out = image_msg_to_rgb(image_msg(encoding, *yuv_image(encoding, rgb)))
        assert np.abs(out.astype(int) - np.array(rgb)).max() <= 3, (encoding, rgb, out[0, 0])
    assert bridge.calls == len(COLOURS)  # cv_bridge first, where it imports
    with pytest.raises(ValueError, match=r"cv_bridge cannot convert a 'nv24' image: Unrecognized image encoding"):
        image_msg_to_rgb(image_msg("nv24", 6, bytes(72)))


def test_images_decode_with_the_real_cv_bridge_where_it_works(monkeypatch):
    """On a robot with ROS 2's cv_bridge (not installable here)."""
    pytest.importorskip("cv_bridge")
    if convert.cv_bridge_problem():
        pytest.skip(f"cv_bridge does not work here: {convert.cv_bridge_problem()}")
    monkeypatch.setattr(convert, "_BRIDGE", None)
    assert convert.use_cv_bridge() == "cv_bridge" and convert._BRIDGE is not None
    for encoding in ("rgb8", "uyvy", "yuyv", "nv12", "nv21"):
        if encoding == "rgb8":
            im = np.tile(np.array(COLOURS[0], np.uint8), (4, 6, 1))
            msg = image_msg("rgb8", 18, im.tobytes())
        else:
            msg = image_msg(encoding, *yuv_image(encoding, COLOURS[0]))
        out = image_msg_to_rgb(msg)
        assert np.abs(out.astype(int) - np.array(COLOURS[0])).max() <= 3, encoding


@pytest.mark.parametrize("code, why", [
    ("print('[[[30, 20, 10], [60, 50, 40]]]')", ""),
    ("print('[[[10, 20, 30], [40, 50, 60]]]')", "wrong answer '[[[10, 20, 30], [40, 50, 60]]]'"),
    ("import cv_bridge_that_is_not_there", "ModuleNotFoundError: No module named 'cv_bridge_that_is_not_there'"),
    ("import ctypes; ctypes.string_at(0)", "the process crashed (signal 11)"),
])
def test_a_decoder_is_probed_in_a_child_process_that_may_crash(code, why):
    got = probe(code, convert.CV_BRIDGE_EXPECTED)
    assert got.startswith(why) and bool(got) == bool(why), got


STAND_IN_CV_BRIDGE = {  # cv_bridge packages as a robot may have them: working, and built against another NumPy
    "works": """
        import numpy as np
        class CvBridge:
            def imgmsg_to_cv2(self, msg, desired_encoding):
                bgr = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)
                return bgr[..., ::-1]
    """,
    "crashes": """
        class CvBridge:
            def imgmsg_to_cv2(self, msg, desired_encoding):
                import ctypes
                ctypes.string_at(0)  # what a cv_bridge built against NumPy 1.x does under NumPy 2
    """,
}


@pytest.mark.parametrize("kind, why", [("works", ""), ("crashes", "the process crashed (signal 11)")])
def test_the_cv_bridge_probe_converts_a_known_image_without_risking_the_node(kind, why, tmp_path):
    package = tmp_path / "cv_bridge"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(STAND_IN_CV_BRIDGE[kind]))
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    assert probe(convert.CV_BRIDGE_PROBE, convert.CV_BRIDGE_EXPECTED, env=env) == why


def test_without_cv_bridge_our_converter_decodes_and_says_so(monkeypatch):
    if convert.cv_bridge_problem() != "not installed":
        pytest.skip("cv_bridge is installed here")
    monkeypatch.setattr(convert, "_BRIDGE", object())
    assert convert.use_cv_bridge() == "ddvlm (cv_bridge: not installed)" and convert._BRIDGE is None


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_mosaics_demosaic_to_the_colour_they_sample(pattern):
    rgb = dict(zip("rgb", COLOURS[0]))
    mosaic = np.zeros((8, 10), np.uint8)
    for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):  # the pattern names the 2x2 cell row by row
        mosaic[dy::2, dx::2] = rgb[pattern[k]]
    out = raw_image_to_rgb(8, 10, f"bayer_{pattern}8", 10, mosaic.tobytes())
    assert out.shape == (8, 10, 3) and np.array_equal(out[2:-2, 2:-2].reshape(-1, 3).max(0), COLOURS[0])
    assert np.array_equal(out[2:-2, 2:-2].reshape(-1, 3).min(0), COLOURS[0])
    for order in ("<u2", ">u2"):  # 16 bits: the top 8 decide, in the message's byte order
        wide = ((mosaic.astype(np.uint16) << 8) | 0x7F).astype(order)
        out16 = raw_image_to_rgb(8, 10, f"bayer_{pattern}16", 20, wide.tobytes(), is_bigendian=order == ">u2")
        assert np.array_equal(out16, out)


@pytest.mark.parametrize("args, message", [
    ((4, 5, "nv24", 10, b"\x00" * 60), "unsupported image encoding"),
    ((4, 5, "bayer_rgbg8", 5, b"\x00" * 20), "unsupported image encoding"),
    ((4, 5, "yuyv", 10, b"\x00" * 40), "even width"),
    ((3, 4, "nv12", 4, b"\x00" * 24), "even width and height"),
    ((4, 4, "nv12", 4, b"\x00" * 16), "buffer too small"),  # the Y plane without its chroma rows
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
    assert parse_transcript("[SPEAKER_00]: I got it", "", True) == ("SPEAKER_00", "I got it")  # WhisperX's label
    assert parse_transcript("[ Guest #2 ]: Hi", "", True) == ("Guest #2", "Hi")
    assert parse_transcript("[laughs] Well: so", "", True) == ("", "[laughs] Well: so")  # not a label
    assert parse_transcript("[SPEAKER_00]: I got it", "mic1", False) == ("mic1", "[SPEAKER_00]: I got it")
    assert parse_transcript("no colon here", "", True) == ("", "no colon here")
    from builtin_interfaces.msg import Time

    t = sec_to_stamp(12.25, Time)
    assert (t.sec, t.nanosec) == (12, 250_000_000) and stamp_to_sec(t) == 12.25
    for seconds, expected in [(1.9999999997, (2, 0)), (1.9999999994, (1, 999_999_999)), (-0.5, (-1, 500_000_000)),
                              (-1e-10, (0, 0))]:  # a fraction rounding up to a second carries into sec
        t = sec_to_stamp(seconds, Time)
        assert (t.sec, t.nanosec) == expected, seconds


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


@pytest.mark.parametrize("data, text, final, field", [
    ('{\n  "partial" : "i can\'t"\n}', "i can't", False, "partial"),  # Vosk's PartialResult(), as voskros publishes it
    ('{\n  "text" : "i can\'t believe it"\n}', "i can't believe it", True, "text"),  # Vosk's Result()
    ('{"result": [{"conf": 1.0, "word": "hi"}], "text": "hi"}', "hi", True, "text"),  # with SetWords(True)
    ('{"text": "", "partial": ""}', "", True, "text"),
    ('{"alternatives": [{"confidence": 201.5, "text": "hi there"}, {"text": "high there"}]}', "hi there", True,
     "alternatives"),  # Vosk with SetMaxAlternatives
    ('{"results": [{"alternatives": [{"transcript": "I am", "confidence": 0.9}], "isFinal": true},'
     ' {"alternatives": [{"transcript": " fine."}], "isFinal": true}]}', "I am fine.", True, "results"),  # Google
    ('{"results": [{"alternatives": [{"transcript": "I am"}], "isFinal": false}]}', "I am", False, "results"),
    ('{"transcript": "Sure.", "is_final": false}', "Sure.", False, "transcript"),
])
def test_an_asrs_json_result_object_is_read(data, text, final, field):
    payload = convert.asr_json(data)
    assert (payload.text, payload.final, payload.form, payload.speaker) == (text, final, field, "")
    assert convert.asr_json('{"speaker": " SPEAKER_01 ", "text": "Hi."}').speaker == "SPEAKER_01"


@pytest.mark.parametrize("data, confidence", [
    ('{"text": "hi", "confidence": 0.42}', 0.42),
    ('{"result": [{"conf": 1.0, "word": "i"}, {"conf": 0.5, "word": "can"}, {"conf": 0.3, "word": "go"}], '
     '"text": "i can go"}', 0.6),  # Vosk's Result() with SetWords(True): its words' mean
    ('{"result": [{"conf": 1.0, "word": "i"}, {"word": "go"}], "text": "i go"}', 0.0),  # a word without: not given
    ('{"alternatives": [{"confidence": 201.5, "text": "hi there"}]}', 0.0),  # Vosk's alternatives: a score
    ('{"alternatives": [{"confidence": 0.8, "transcript": "hi"}]}', 0.8),
    ('{"results": [{"alternatives": [{"transcript": "I am", "confidence": 0.9}], "isFinal": true},'
     ' {"alternatives": [{"transcript": " fine.", "confidence": 0.5}], "isFinal": true}]}', 0.7),  # Google: mean
    ('{"results": [{"alternatives": [{"transcript": "I am", "confidence": 0.0}]}]}', 0.0),  # Google's "not set"
    ('{"text": "hi", "confidence": true}', 0.0), ('{"text": "hi", "confidence": "high"}', 0.0),
    ('{"text": "hi", "confidence": NaN}', 0.0), ('{"text": "hi", "confidence": -0.2}', 0.0),
    ('{"text": "hi"}', 0.0),
])
def test_an_asrs_confidence_is_read_from_its_json_result_where_it_is_a_probability(data, confidence):
    assert convert.asr_json(data).confidence == pytest.approx(confidence)


@pytest.mark.parametrize("data", ["I got the job!", "Ross: {laughs}", "{not json}", "[1, 2]", "{}x", '"{}"'])
def test_text_that_is_not_a_json_object_is_plain_text(data):
    assert convert.asr_json(data) is None


def test_a_json_object_without_a_transcript_field_is_refused_with_its_keys():
    with pytest.raises(ValueError, match=r"keys: \['confidence', 'words'\]"):
        convert.asr_json('{"words": ["hi"], "confidence": 0.5}')
    with pytest.raises(ValueError, match="keys"):
        convert.asr_json('{"results": [{"alternatives": []}]}')
    with pytest.raises(ValueError, match="nested too deep"):  # json's RecursionError would stop the node's spin
        convert.asr_json('{"a": ' * 100_000 + "1" + "}" * 100_000)
    deep = '{"alternatives": [' * 100 + '{"text": "hi"}' + "]}" * 100  # read one level deep only
    with pytest.raises(ValueError, match=r"keys: \['alternatives'\]"):
        convert.asr_json(deep)
