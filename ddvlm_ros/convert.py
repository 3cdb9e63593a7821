"""Pure conversions between ROS messages and ddvlm_core objects (no node state).

Images use cv_bridge where it imports and works (``use_cv_bridge``). The small converter below decodes what
cv_bridge refuses (it knows no uyvy, yuyv, nv12 or nv21) and, without a working cv_bridge, every raw encoding
cameras publish (rgb8, bgr8, rgba8, bgra8, mono8, mono16; YUV 4:2:2 uyvy / yuyv and 4:2:0 nv12 / nv21, as USB
and Jetson cameras send them; 8- and 16-bit Bayer mosaics, as industrial cameras send them) with cv_bridge's
OpenCV conversions; JPEG/PNG compressed images are decoded by OpenCV. Anything else is a clear ValueError
(unknown encoding, wrong buffer size, odd sizes a format cannot have, zero-size or undecodable data).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import re
from dataclasses import dataclass

import numpy as np

from ddvlm_core.child import probe

_BRIDGE = None  # the cv_bridge.CvBridge that raw images go through, once use_cv_bridge() found one that works

_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8UC1": 1, "8UC3": 3, "mono16": 1}
# YUV encoding -> (OpenCV conversion, bytes per pixel in a row, rows per image row); yuv422 / yuv422_yuy2 are
# the deprecated names of uyvy / yuyv (sensor_msgs/image_encodings.hpp). OpenCV decodes BT.601 video range.
_YUV = {"uyvy": ("COLOR_YUV2RGB_UYVY", 2, 1.0), "yuv422": ("COLOR_YUV2RGB_UYVY", 2, 1.0),
        "yuyv": ("COLOR_YUV2RGB_YUY2", 2, 1.0), "yuv422_yuy2": ("COLOR_YUV2RGB_YUY2", 2, 1.0),
        "nv12": ("COLOR_YUV2RGB_NV12", 1, 1.5), "nv21": ("COLOR_YUV2RGB_NV21", 1, 1.5)}
# Bayer pattern -> OpenCV conversion, as cv_bridge maps them (OpenCV names a pattern by its second row)
_BAYER = {"rggb": "COLOR_BayerBG2RGB", "bggr": "COLOR_BayerRG2RGB", "gbrg": "COLOR_BayerGR2RGB",
          "grbg": "COLOR_BayerGB2RGB"}
_BAYER_ENCODING = re.compile(rf"bayer_({'|'.join(_BAYER)})(8|16)")
SUPPORTED_ENCODINGS = [*_CHANNELS, *_YUV, *(f"bayer_{p}{bits}" for p in _BAYER for bits in (8, 16))]


def stamp_to_sec(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def sec_to_stamp(seconds: float, stamp_type):
    """Seconds -> builtin_interfaces/Time, to the nearest nanosecond; a fraction that rounds up to a whole
    second carries into ``sec`` (1.9999999997 is 2 s, not 1 s)."""
    sec = int(np.floor(seconds))
    carry, nanosec = divmod(round((seconds - sec) * 1e9), 1_000_000_000)
    return stamp_type(sec=sec + carry, nanosec=nanosec)


def raw_image_to_rgb(height: int, width: int, encoding: str, step: int, data: bytes,
                     is_bigendian: bool = False) -> np.ndarray:
    """sensor_msgs/Image fields -> H x W x 3 uint8 RGB."""
    bayer = _BAYER_ENCODING.fullmatch(encoding)
    if not known_encoding(encoding):
        raise ValueError(f"unsupported image encoding {encoding!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})")
    if height <= 0 or width <= 0:
        raise ValueError(f"zero-size image ({width}x{height})")
    if encoding in _YUV:
        return _yuv_to_rgb(height, width, encoding, step, data)
    wide = encoding == "mono16" or (bayer is not None and bayer[2] == "16")
    channels = _CHANNELS.get(encoding, 1)
    buf = _rows(height, width * channels * (2 if wide else 1), step, data, encoding, width)
    if wide:  # the top 8 bits
        dtype = ">u2" if is_bigendian else "<u2"
        buf = (np.ascontiguousarray(buf).view(dtype).reshape(height, width * channels) >> 8).astype(np.uint8)
    if bayer:
        import cv2

        return cv2.cvtColor(np.ascontiguousarray(buf), getattr(cv2, _BAYER[bayer[1]]))
    img = buf.reshape(height, width, channels)
    if channels == 1:
        return np.repeat(img, 3, axis=-1)
    if encoding.startswith("bgr"):
        img = img[..., 2::-1] if channels == 3 else img[..., [2, 1, 0]]
    return np.ascontiguousarray(img[..., :3])


def _rows(rows: int, row_bytes: int, step: int, data: bytes, encoding: str, width: int) -> np.ndarray:
    """The ``rows`` x ``row_bytes`` pixel bytes of an image buffer whose rows are ``step`` bytes apart."""
    if step < row_bytes or len(data) < step * rows:
        raise ValueError(f"image buffer too small: {len(data)} bytes for {width} pixels x {rows} rows of {encoding} "
                         f"(step {step})")
    return np.frombuffer(bytes(data), dtype=np.uint8)[: step * rows].reshape(rows, step)[:, :row_bytes]


def _yuv_to_rgb(height: int, width: int, encoding: str, step: int, data: bytes) -> np.ndarray:
    import cv2

    code, pixel_bytes, rows_per_row = _YUV[encoding]
    if width % 2 or (rows_per_row != 1 and height % 2):
        raise ValueError(f"a {encoding} image needs an even width{'' if rows_per_row == 1 else ' and height'}, "
                         f"got {width}x{height}")
    rows = int(height * rows_per_row)
    buf = np.ascontiguousarray(_rows(rows, width * pixel_bytes, step, data, encoding, width))
    return cv2.cvtColor(buf.reshape(rows, width, 2) if pixel_bytes == 2 else buf, getattr(cv2, code))


def known_encoding(encoding: str) -> bool:
    """Whether ``raw_image_to_rgb`` decodes this encoding."""
    return encoding in _CHANNELS or encoding in _YUV or _BAYER_ENCODING.fullmatch(encoding) is not None


# A 1 x 2 bgr8 image through cv_bridge, in a child process; it prints the RGB pixels.
CV_BRIDGE_PROBE = """
from cv_bridge import CvBridge
from sensor_msgs.msg import Image
msg = Image(height=1, width=2, encoding="bgr8", step=6, data=bytes([10, 20, 30, 40, 50, 60]))
print(CvBridge().imgmsg_to_cv2(msg, desired_encoding="rgb8").tolist())
"""
CV_BRIDGE_EXPECTED = "[[[30, 20, 10], [60, 50, 40]]]"


@functools.cache
def cv_bridge_problem() -> str:
    """Why cv_bridge cannot decode images here ('' when it can), checked once per process: a known 1 x 2 image
    converted in a child process. A cv_bridge built against NumPy 1.x (Ubuntu's, under which apt's ROS 2 is
    built) imports under NumPy 2 but crashes the process at its first conversion (seen with Debian's cv_bridge
    1.16.2 and NumPy 2.4.6), so it is tried where a crash costs nothing."""
    if importlib.util.find_spec("cv_bridge") is None:
        return "not installed"
    why = probe(CV_BRIDGE_PROBE, CV_BRIDGE_EXPECTED)
    return f"{why} converting a test image (NumPy here: {np.__version__})" if why else ""


def use_cv_bridge() -> str:
    """Decode raw images with cv_bridge if it works here (``cv_bridge_problem``), else with ``raw_image_to_rgb``;
    returns what decodes them, for the node's log and diagnostics."""
    global _BRIDGE
    problem = cv_bridge_problem()
    if problem:
        _BRIDGE = None
        return f"ddvlm (cv_bridge: {problem})"
    from cv_bridge import CvBridge

    _BRIDGE = CvBridge()
    return "cv_bridge"


def image_msg_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/Image -> H x W x 3 uint8 RGB: cv_bridge once ``use_cv_bridge`` found it working, else
    ``raw_image_to_rgb``.

    cv_bridge knows YUV 4:2:2 only by its deprecated names (yuv422, yuv422_yuy2): it refuses uyvy, yuyv, nv12
    and nv21, which sensor_msgs names and USB and Jetson cameras send ("Unrecognized image encoding"). An image
    that cv_bridge refuses in an encoding ``raw_image_to_rgb`` decodes is decoded by it; any other refusal is a
    ValueError with cv_bridge's reason.
    """
    if _BRIDGE is not None:
        try:
            return _BRIDGE.imgmsg_to_cv2(msg, desired_encoding="rgb8")
        except Exception as e:  # noqa: BLE001 - cv_bridge.CvBridgeError, or numpy's on a short buffer
            if not known_encoding(msg.encoding):
                raise ValueError(f"cv_bridge cannot convert a {msg.encoding!r} image: {e}") from None
    return raw_image_to_rgb(msg.height, msg.width, msg.encoding, msg.step, msg.data, bool(msg.is_bigendian))


def compressed_to_rgb(fmt: str, data: bytes) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg / png) -> H x W x 3 uint8 RGB."""
    import cv2

    if not data:
        raise ValueError("empty compressed image")
    if fmt and not any(k in fmt.lower() for k in ("jpeg", "jpg", "png")):
        raise ValueError(f"unsupported compressed format {fmt!r} (jpeg or png)")
    img = cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise ValueError(f"could not decode compressed image ({len(data)} bytes, format {fmt!r})")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def compressed_msg_to_rgb(msg) -> np.ndarray:
    return compressed_to_rgb(msg.format, msg.data)


SPEAKER_LABEL = re.compile(r"[\w.'’#/-]+(?: [\w.'’#/-]+){0,3}")  # "Ross", "Dr. Who", "SPEAKER_00", "Guest #1"


def parse_transcript(text: str, default_speaker: str, speaker_prefix: bool) -> tuple[str, str]:
    """'speaker: text' -> (speaker, text) when the convention is on; else (default_speaker, text).

    Only a name-like label counts as a speaker (at most 4 words of letters, digits and . _ ' ’ # / -, at most
    32 characters; every MELD speaker name passes), so a colon inside speech ("see http://x.org: now",
    "Note, this: ...") stays in the text. A short clause before a colon ("I told him: go") cannot be told
    from a name: set ``speaker_prefix: false`` for ASR output that never carries speakers. The label may be in
    brackets, as WhisperX and other diarizing ASRs write it: '[SPEAKER_00]: text'.
    """
    if speaker_prefix:
        speaker, sep, rest = text.partition(": ")
        speaker = speaker.strip()
        if speaker.startswith("[") and speaker.endswith("]"):
            speaker = speaker[1:-1].strip()
        if sep and len(speaker) <= 32 and SPEAKER_LABEL.fullmatch(speaker):
            return speaker, rest
    return default_speaker, text


@dataclass(frozen=True)
class AsrJson:
    """A transcript an ASR node published as its JSON result object, read."""

    text: str
    final: bool  # False: a partial result (Vosk's {"partial": ...}, a result marked is_final false)
    speaker: str = ""  # its "speaker" field, if any
    form: str = ""  # the field the text came from, e.g. "text" (Vosk's Result()), "partial", "alternatives"
    confidence: float = 0.0  # the ASR's confidence in it, in (0, 1]; 0 = not given (``json_confidence``)

    @property
    def utterance(self) -> bool:
        """Whether the node classifies it: a final result with words (not Vosk's {"text": ""} on silence)."""
        return self.final and bool(self.text.strip())


_FINAL_KEYS = ("is_final", "isFinal", "final")


def asr_json(data: str) -> AsrJson | None:
    """The transcript in ``data`` when it is an ASR's JSON result object published as it is on a String topic (Vosk
    nodes publish ``rec.Result()`` / ``rec.PartialResult()``: ``{"text" : "..."}``, ``{"partial" : "..."}``); None
    when ``data`` is not a JSON object (plain text). Read: "text" or "transcript" (with "is_final" / "isFinal" /
    "final" when given, else final), "partial" (a partial result), "alternatives" (the first), "results" (Google's
    and Riva's: the first alternative of each, final when every result says so), "speaker". A JSON object without
    any of them is a ValueError naming its keys: it is no transcript the node can read."""
    stripped = data.strip()
    if not (stripped.startswith("{") and stripped.endswith("}")):
        return None
    try:
        obj = json.loads(stripped)
    except ValueError:
        return None  # braces around text that is not JSON: plain text
    except RecursionError:
        raise ValueError("a JSON object nested too deep to read") from None
    if not isinstance(obj, dict):
        return None
    speaker = obj.get("speaker") if isinstance(obj.get("speaker"), str) else ""
    found = _json_text(obj)
    if found is None:
        raise ValueError(f"a JSON object without a transcript field the node reads (keys: {sorted(obj)[:8]}); "
                         "publish the transcript's text, or a JSON object with 'text'")
    text, final, form = found
    return AsrJson(text, final, speaker.strip(), form, json_confidence(obj))


def transcript_said(data: str, default_speaker: str, speaker_prefix: bool) -> tuple[str, str] | None:
    """(speaker, text) that the node takes from a transcript message (EmotionNode._on_transcript): plain text as
    ``parse_transcript`` reads it, or an ASR's final JSON result with words; None for what it skips (a JSON partial
    result, an empty one, a JSON object without a transcript field)."""
    try:
        payload = asr_json(data)
    except ValueError:
        return None
    if payload is None:
        return parse_transcript(data, default_speaker, speaker_prefix)
    return (payload.speaker or default_speaker, payload.text) if payload.utterance else None


def _json_final(obj: dict) -> bool:
    flag = next((obj[k] for k in _FINAL_KEYS if isinstance(obj.get(k), bool)), True)
    return bool(flag)


def _json_text(obj: dict) -> tuple[str, bool, str] | None:
    """(text, final, field) of an ASR's JSON result object, None when it has no field read as one."""
    for key in ("text", "transcript"):
        if isinstance(obj.get(key), str):
            return obj[key], _json_final(obj), key
    if isinstance(obj.get("partial"), str):
        return obj["partial"], False, "partial"
    first = _first_alternative(obj)
    if first is not None:
        return first, _json_final(obj), "alternatives"
    results = obj.get("results")
    if isinstance(results, list) and results and all(isinstance(r, dict) for r in results):
        texts = [_first_alternative(r) for r in results]
        if all(t is not None for t in texts):
            return " ".join(t.strip() for t in texts).strip(), all(_json_final(r) for r in results), "results"
    return None


def asr_confidence(value) -> float:
    """An ASR's confidence as the node keeps it: a number in (0, 1], else 0 (not given). 0 is what LiveSpeech,
    Utterance and Google's results hold when the ASR set none; a value above 1 is a score, not a probability
    (Vosk's alternatives: a total log-likelihood)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    return float(value) if 0.0 < value <= 1.0 else 0.0


def json_confidence(obj: dict) -> float:
    """The ASR's confidence in a JSON result object's transcript (0 = not given): its "confidence"; else the mean of
    its words' "conf" (Vosk's Result() with SetWords: "result": [{"word", "conf", ...}]); else the first
    alternative's "confidence"; else the mean over "results" (Google's and Riva's) of their first alternative's.
    Values outside (0, 1] are not read as confidences."""
    if (given := asr_confidence(obj.get("confidence"))) > 0:
        return given
    words = obj.get("result")
    if isinstance(words, list) and words and all(isinstance(w, dict) for w in words):
        confs = [asr_confidence(w.get("conf")) for w in words]
        return sum(confs) / len(confs) if all(confs) else 0.0
    alternatives = obj.get("alternatives")
    if isinstance(alternatives, list) and alternatives and isinstance(alternatives[0], dict):
        return asr_confidence(alternatives[0].get("confidence"))
    results = obj.get("results")
    if isinstance(results, list) and results and all(isinstance(r, dict) for r in results):
        confs = [json_confidence({"alternatives": r.get("alternatives")}) for r in results]
        given = [c for c in confs if c > 0]  # Google sets it on final results only
        return sum(given) / len(given) if given else 0.0
    return 0.0


def _first_alternative(obj: dict) -> str | None:
    """The text of the first of ``obj``'s "alternatives" (its "text" or "transcript"), None without one."""
    alternatives = obj.get("alternatives")
    if not (isinstance(alternatives, list) and alternatives and isinstance(alternatives[0], dict)):
        return None
    return next((alternatives[0][k] for k in ("text", "transcript") if isinstance(alternatives[0].get(k), str)), None)


def prediction_to_msg(prediction, msg_type, header, conversation_id: str, utterance_id: str, speaker_id: str,
                      refined: bool, latency_ms: float, transcript_confidence: float = 0.0):
    """EmotionPrediction -> ddvlm_msgs/EmotionDistribution (header copied from the utterance; the ASR's confidence
    in the transcript, 0 = not given)."""
    return msg_type(
        header=header,
        conversation_id=conversation_id,
        utterance_id=utterance_id,
        speaker_token=prediction.speaker_token,
        speaker_id=speaker_id,
        labels=list(prediction.labels),
        probabilities=[float(p) for p in prediction.probabilities],
        top_label=prediction.top_label,
        confidence=float(prediction.confidence),
        modalities=prediction.modalities,
        refined=refined,
        caption=prediction.caption,
        caption_source=prediction.caption_source,
        latency_ms=float(latency_ms),
        flags=list(prediction.flags),
        transcript_confidence=float(transcript_confidence),
    )


def messages_import(package: str) -> bool:
    """Whether the optional interface package ``package`` (hri_msgs, bond) has a ``msg`` module that imports."""
    try:
        importlib.import_module(f"{package}.msg")
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def whisper_msgs_available() -> bool:
    """Whether whisper_ros' message package imports (whisper_topic is read only then)."""
    return importlib.util.find_spec("whisper_msgs") is not None


def whisper_transcription():
    """whisper_msgs/Transcription (whisper_ros: ``text``, ``audio_time``, ``transcription_time``)."""
    from whisper_msgs.msg import Transcription

    return Transcription
